//! The store's SQL text, built once per backend (table names, locking, the statements that
//! differ between PostgreSQL and SQLite).

use sen_platform::Backend;

use super::{INDEX_TABLES, resource_key};

/// SQL with this backend's table names, built once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) read: String,
    pub(super) read_for_update: String,
    /// `{ids}` stands for the ids' placeholders (`($2), ($3), …` on PostgreSQL, `$2, $3, …`
    /// on SQLite).
    pub(super) read_many_for_update: String,
    pub(super) vread: String,
    pub(super) insert_current: String,
    pub(super) update_current: String,
    /// The history row's own statement, where writing the current version does not write it.
    pub(super) insert_history: Option<String>,
    /// Index table name prefix: `ehr.` or `ehr_`.
    pub(super) index_prefix: &'static str,
    /// A no-op clause that makes a subquery planned on its own (SQLite; none on PostgreSQL).
    pub(super) plan_barrier: &'static str,
    /// Statements deleting a resource's index rows ($1 its resource key): one on PostgreSQL (CTEs),
    /// one per table on SQLite.
    pub(super) delete_index: Vec<String>,
    pub(super) history_system: String,
    pub(super) history_type: String,
    pub(super) history_instance: String,
    pub(super) exists_any_version: String,
}

impl Sql {
    pub(super) fn new(backend: Backend) -> Self {
        let (res, hist, index_prefix, lock) = match backend {
            Backend::Postgres => (
                "ehr.resource",
                "ehr.resource_history",
                "ehr.",
                " FOR UPDATE",
            ),
            Backend::Sqlite => ("ehr_resource", "ehr_resource_history", "ehr_", ""),
        };
        let cols = "resource_type, id, version_id, last_updated, method, deleted, content";
        let rid = resource_key(backend);
        Sql {
            read: format!("SELECT {cols} FROM {res} WHERE resource_type = $1 AND id = $2"),
            read_for_update: format!(
                "SELECT {cols} FROM {res} WHERE resource_type = $1 AND id = $2{lock}"
            ),
            // PostgreSQL looks each id up on its own (a fenced lateral subquery): an `IN`
            // list let a generic plan made while the table was small scan the whole type.
            read_many_for_update: match backend {
                Backend::Postgres => format!(
                    "SELECT r.* FROM (VALUES {{ids}}) w (id) CROSS JOIN LATERAL \
                     (SELECT {cols} FROM {res} WHERE resource_type = $1 AND id = w.id \
                     OFFSET 0{lock}) r"
                ),
                Backend::Sqlite => {
                    format!("SELECT {cols} FROM {res} WHERE resource_type = $1 AND id IN ({{ids}})")
                }
            },
            vread: format!(
                "SELECT {cols} FROM {hist} WHERE resource_type = $1 AND id = $2 AND version_id = $3"
            ),
            // On PostgreSQL the version's history row is written by the same statement (one
            // round trip per version written, its content sent once).
            insert_current: match backend {
                Backend::Postgres => format!(
                    "WITH c AS (INSERT INTO {res} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (resource_type, id) DO NOTHING RETURNING {rid}, {cols}), \
                     h AS (INSERT INTO {hist} ({cols}) SELECT {cols} FROM c) SELECT {rid} FROM c"
                ),
                // One writer: the next key is the largest so far plus one (an index lookup).
                Backend::Sqlite => format!(
                    "INSERT INTO {res} ({cols}, rid) VALUES ($1, $2, $3, $4, $5, $6, $7, \
                     (SELECT IFNULL(MAX(rid), 0) + 1 FROM {res})) \
                     ON CONFLICT (resource_type, id) DO NOTHING RETURNING {rid}"
                ),
            },
            update_current: {
                let update = format!(
                    "UPDATE {res} SET version_id = $3, last_updated = $4, method = $5, deleted = $6, content = $7 \
                     WHERE resource_type = $1 AND id = $2 AND version_id = $8 RETURNING {rid}"
                );
                match backend {
                    Backend::Postgres => format!(
                        "WITH c AS ({update}, {cols}), \
                         h AS (INSERT INTO {hist} ({cols}) SELECT {cols} FROM c) SELECT {rid} FROM c"
                    ),
                    Backend::Sqlite => update,
                }
            },
            insert_history: match backend {
                Backend::Postgres => None,
                Backend::Sqlite => Some(format!(
                    "INSERT INTO {hist} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                )),
            },
            index_prefix,
            plan_barrier: match backend {
                // PostgreSQL plans the page as a whole: with conditions probing by resource
                // key it can walk resources in id order and stop at the page's end.
                Backend::Postgres => "",
                Backend::Sqlite => " LIMIT -1",
            },
            delete_index: {
                let deletes: Vec<String> = INDEX_TABLES
                    .iter()
                    .map(|t| format!("DELETE FROM {index_prefix}{t} WHERE rid = $1"))
                    .collect();
                match backend {
                    Backend::Postgres => {
                        let (last, rest) = deletes.split_last().expect("six tables");
                        let ctes: Vec<String> = rest
                            .iter()
                            .enumerate()
                            .map(|(i, d)| format!("d{i} AS ({d})"))
                            .collect();
                        vec![format!("WITH {} {last}", ctes.join(", "))]
                    }
                    Backend::Sqlite => deletes,
                }
            },
            // The access log is not part of the records' history: every read leaves an
            // AuditEvent, which would bury the changes to records (what a replica follows)
            // under them. It is read as AuditEvents (search, or their type's history).
            history_system: format!(
                "SELECT seq, {cols} FROM {hist} WHERE resource_type <> 'AuditEvent' \
                 AND last_updated >= $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            ),
            history_type: format!(
                "SELECT seq, {cols} FROM {hist} WHERE resource_type = $4 AND last_updated >= $1 AND seq < $2 \
                 ORDER BY seq DESC LIMIT $3"
            ),
            history_instance: format!(
                "SELECT seq, {cols} FROM {hist} WHERE resource_type = $4 AND id = $5 AND last_updated >= $1 \
                 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            ),
            exists_any_version: format!("SELECT 1 FROM {res} WHERE resource_type = $1 AND id = $2"),
        }
    }
}
