//! Schema migrations: a command (`sen migrate`), not a side effect of a request.
//!
//! Each service owns its migrations, written once per backend, and records them in the shared
//! `sen_migrations` table under its own name, so services migrate independently. A migration
//! that was changed after being applied is refused: the schema on disk would no longer be the
//! one the code describes.

use sqlx::{Acquire, Executor, Row};

use crate::db::{Backend, Database};

/// One migration of one service.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {service} v{version} ({description}) failed: {source}")]
    Apply {
        service: String,
        version: i64,
        description: String,
        source: sqlx::Error,
    },
    #[error(
        "migration {service} v{version} was changed after it was applied; \
         restore it and add a new migration instead"
    )]
    Changed { service: String, version: i64 },
    #[error("database error while migrating: {0}")]
    Db(#[from] sqlx::Error),
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS sen_migrations (
    service TEXT NOT NULL,
    version BIGINT NOT NULL,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (service, version))";

/// FNV-1a: a checksum that stays the same across Rust versions.
fn checksum(sql: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Migrations of `service` not yet applied.
pub async fn pending(
    db: &Database,
    service: &str,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrateError> {
    let mut conn = db.writer().acquire().await?;
    conn.execute(LEDGER).await?;
    let applied = applied_versions(&mut conn, service).await?;
    Ok(migrations
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|(a, _)| a == v))
        .collect())
}

async fn applied_versions(
    conn: &mut sqlx::AnyConnection,
    service: &str,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT version, checksum FROM sen_migrations WHERE service = $1")
        .bind(service)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Applies the pending migrations of `service` in order, each in its own transaction.
/// Returns the versions applied.
pub async fn run(
    db: &Database,
    service: &str,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrateError> {
    let mut conn = db.writer().acquire().await?;
    conn.execute(LEDGER).await?;
    if db.backend() == Backend::Postgres {
        // Two processes starting together must not both migrate.
        conn.execute("SELECT pg_advisory_lock(7265746)").await?;
    }
    let result = run_locked(db, &mut conn, service, migrations).await;
    if db.backend() == Backend::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7265746)").await?;
    }
    result
}

async fn run_locked(
    db: &Database,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    service: &str,
    migrations: &[Migration],
) -> Result<Vec<i64>, MigrateError> {
    let applied = applied_versions(conn, service).await?;
    let mut done = Vec::new();
    for migration in migrations {
        let sql = match db.backend() {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        let sum = checksum(sql);
        if let Some((_, existing)) = applied.iter().find(|(v, _)| *v == migration.version) {
            if *existing != sum {
                return Err(MigrateError::Changed {
                    service: service.into(),
                    version: migration.version,
                });
            }
            continue;
        }
        let apply_error = |source| MigrateError::Apply {
            service: service.into(),
            version: migration.version,
            description: migration.description.into(),
            source,
        };
        let mut tx = conn.begin().await?;
        tx.execute(sql).await.map_err(apply_error)?;
        sqlx::query(
            "INSERT INTO sen_migrations (service, version, description, checksum, applied_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(service)
        .bind(migration.version)
        .bind(migration.description)
        .bind(&sum)
        .bind(now_rfc3339())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            service,
            version = migration.version,
            migration.description,
            "migration applied"
        );
        done.push(migration.version);
    }
    Ok(done)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
