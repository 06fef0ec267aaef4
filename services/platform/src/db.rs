//! Database pools: PostgreSQL in production, an embedded SQLite file by default.
//!
//! Both sit behind `sqlx::Any` so a service writes its queries once. SQLite gets two pools:
//! a single-connection writer (SQLite allows one writer at a time; queueing in the pool is
//! cheaper than retrying `SQLITE_BUSY`) and a read-only pool for concurrent readers in WAL
//! mode. On PostgreSQL both handles are the same pool.

use std::{str::FromStr, time::Duration};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use crate::config::{Config, SqliteSynchronous};

/// Which database engine is behind the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL scheme (use postgres:// or sqlite://)")]
    Scheme,
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        source: sqlx::Error,
    },
}

/// Connection pools of one database.
#[derive(Clone, Debug)]
pub struct Database {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
}

/// Pool options that matter outside this module.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub sqlite_synchronous: SqliteSynchronous,
    /// PostgreSQL: the reader pool's statement timeout (0: none).
    pub statement_timeout_ms: u64,
}

impl Database {
    /// Connects with the configuration's URL (the embedded SQLite file when none is set).
    pub async fn connect(config: &Config) -> Result<Self, DbError> {
        let settings = PoolSettings {
            max_connections: config.database.max_connections,
            sqlite_synchronous: config.database.sqlite_synchronous,
            statement_timeout_ms: config.database.statement_timeout_ms,
        };
        Self::connect_url(&config.database_url(), &settings).await
    }

    pub async fn connect_url(url: &str, settings: &PoolSettings) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = AnyConnectOptions::from_str(url).map_err(|source| DbError::Connect {
                backend: "postgres",
                source,
            })?;
            let connect = |reads: bool| {
                let mut pool = AnyPoolOptions::new()
                    .max_connections(settings.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10));
                // Set once per connection (no cost per query). JIT compilation and parallel
                // workers are off: the first costs tens of milliseconds on queries the planner
                // merely guesses to be large, the second only moves work between the same two
                // cores when many requests run at once.
                let mut setup =
                    String::from("SET jit = off; SET max_parallel_workers_per_gather = 0");
                if reads {
                    // Every search is planned for its values: search data is skewed (one LOINC
                    // code covers a tenth of the observations, one patient ten of them), and the
                    // generic plan PostgreSQL picks for a prepared statement after five
                    // executions assumes average values — at 1M resources a patient's
                    // observations of one code went from 0.6 ms to 77 ms. Not on the writer:
                    // re-planning its multi-row inserts on every execution cost a fifth of the
                    // ingest rate. Planning is then most of a simple search's cost, and a
                    // third of it went to merge joins, which no search plan chose: costing
                    // one reads the actual ends of the key indexes (get_actual_variable_range)
                    // every time. A count over 100k+ matches takes a hash join instead
                    // (1M observations, one code: 220 -> 380 ms). Reads also get a statement
                    // timeout: a search too costly is cancelled and its connection returned.
                    setup.push_str(
                        "; SET plan_cache_mode = force_custom_plan; SET enable_mergejoin = off",
                    );
                    if settings.statement_timeout_ms > 0 {
                        setup.push_str(&format!(
                            "; SET statement_timeout = {}",
                            settings.statement_timeout_ms
                        ));
                    }
                }
                pool = pool.after_connect(move |conn, _| {
                    let setup = setup.clone();
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, sqlx::raw_sql(&setup))
                            .await
                            .map(drop)
                    })
                });
                pool.connect_with(options.clone())
            };
            let error = |source| DbError::Connect {
                backend: "postgres",
                source,
            };
            let writer = connect(false).await.map_err(error)?;
            let reader = connect(true).await.map_err(error)?;
            Ok(Self {
                backend: Backend::Postgres,
                writer,
                reader,
            })
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| DbError::DataDir {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            let synchronous = match settings.sqlite_synchronous {
                SqliteSynchronous::Full => "FULL",
                SqliteSynchronous::Normal => "NORMAL",
            };
            let writer = sqlite_pool(path, 1, synchronous, false).await?;
            let reader =
                sqlite_pool(path, settings.max_connections.max(1), synchronous, true).await?;
            Ok(Self {
                backend: Backend::Sqlite,
                writer,
                reader,
            })
        } else {
            Err(DbError::Scheme)
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for transactions that write.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// The pool for reads (read-only connections on SQLite).
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// A trivial round trip, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
    }

    /// Connections (open, idle) across the pools, for the pool gauges.
    pub fn pool_usage(&self) -> (u32, usize) {
        match self.backend {
            Backend::Postgres => (self.writer.size(), self.writer.num_idle()),
            Backend::Sqlite => (
                self.writer.size() + self.reader.size(),
                self.writer.num_idle() + self.reader.num_idle(),
            ),
        }
    }

    /// Waits for connections to be returned and closes the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

async fn sqlite_pool(
    path: &str,
    max_connections: u32,
    synchronous: &'static str,
    read_only: bool,
) -> Result<AnyPool, DbError> {
    let url = format!("sqlite://{path}?mode=rwc");
    let options = AnyConnectOptions::from_str(&url).map_err(|source| DbError::Connect {
        backend: "sqlite",
        source,
    })?;
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(if read_only { 0 } else { 1 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                    .await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                if read_only {
                    conn.execute("PRAGMA query_only = ON").await?;
                } else {
                    // A multi-row INSERT inside a transaction keeps a statement journal (the
                    // pages it changes, to undo just that statement); in a file that doubled
                    // the bytes a Bundle writes. In memory it is bounded by the statement.
                    conn.execute("PRAGMA temp_store = MEMORY").await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            backend: "sqlite",
            source,
        })
}
