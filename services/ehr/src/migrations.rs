//! Schema of the EHR service, per backend. PostgreSQL keeps it in the `ehr` schema;
//! SQLite, which has no schemas, prefixes the tables with `ehr_`.

use sen_platform::migrate::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "resource store: current versions, history, identifier index",
        sqlite: include_str!("../migrations/sqlite/0001_resource_store.sql"),
        postgres: include_str!("../migrations/postgres/0001_resource_store.sql"),
    },
    Migration {
        version: 2,
        description: "search index: string, token, reference, date, number, uri tables",
        sqlite: include_str!("../migrations/sqlite/0002_search_index.sql"),
        postgres: include_str!("../migrations/postgres/0002_search_index.sql"),
    },
    Migration {
        version: 3,
        description: "search planning: covering resource key index, keys in lookup indexes, multi-column statistics",
        sqlite: include_str!("../migrations/sqlite/0003_resource_key_index.sql"),
        postgres: include_str!("../migrations/postgres/0003_resource_key_index.sql"),
    },
    Migration {
        version: 4,
        description: "drop the resource index no search uses any more (PostgreSQL)",
        sqlite: include_str!("../migrations/sqlite/0004_drop_resource_live.sql"),
        postgres: include_str!("../migrations/postgres/0004_drop_resource_live.sql"),
    },
    Migration {
        version: 5,
        description: "name rows in id order, for name search pages (PostgreSQL)",
        sqlite: include_str!("../migrations/sqlite/0005_name_walk_index.sql"),
        postgres: include_str!("../migrations/postgres/0005_name_walk_index.sql"),
    },
    Migration {
        version: 6,
        description: "name rows in id order, for name search pages (SQLite)",
        sqlite: include_str!("../migrations/sqlite/0006_name_walk_index.sql"),
        postgres: include_str!("../migrations/postgres/0006_name_walk_index.sql"),
    },
    Migration {
        version: 7,
        description: "lookup indexes carry the resource key, token and date probes read no table row (SQLite)",
        sqlite: include_str!("../migrations/sqlite/0007_covering_probe_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0007_covering_probe_indexes.sql"),
    },
    Migration {
        version: 8,
        description: "audit outbox: access records waiting to become AuditEvents",
        sqlite: include_str!("../migrations/sqlite/0008_audit_outbox.sql"),
        postgres: include_str!("../migrations/postgres/0008_audit_outbox.sql"),
    },
];
