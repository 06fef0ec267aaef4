//! Database pools: PostgreSQL in production, an embedded SQLite file by default.
//!
//! Both sit behind `sqlx::Any` so a service writes its queries once. SQLite gets two pools:
//! a single-connection writer (SQLite allows one writer at a time; queueing in the pool is
//! cheaper than retrying `SQLITE_BUSY`) and a read-only pool for concurrent readers in WAL
//! mode. PostgreSQL gets a writer pool and a reader pool whose sessions plan every statement
//! for its values and stop at the statement timeout.
//!
//! Searches have their own connections on both engines, with a time limit: on PostgreSQL
//! [`Database::pg_read`] (the reader settings, outside sqlx's pool: see `readers`; reads by
//! id use them too);
//! SQLite has no statement timeout, so searches there take a connection from a native pool
//! ([`Database::sqlite_bounded_read`]) whose statements SQLite itself interrupts past the
//! deadline (a progress handler). A query cut short either way fails at once and frees its
//! connection; the caller answers "too costly".

mod readers;

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

pub use readers::Reader;
use readers::Readers;

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    pool::PoolConnection,
    sqlite::{Sqlite, SqliteConnectOptions, SqlitePool, SqlitePoolOptions},
};

use crate::config::{Config, SqliteSynchronous};

/// A PostgreSQL connection idle longer than this is pinged before it is handed out.
const PING_WHEN_IDLE: Duration = Duration::from_secs(30);

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
    /// SQLite only: read-only connections for searches, and how long a statement may run
    /// on them (zero: no limit).
    bounded: Option<(SqlitePool, Duration)>,
    /// PostgreSQL only: connections for searches and reads by id, outside sqlx's pool (see
    /// `readers`).
    searches: Option<Arc<Readers>>,
}

/// Pool options that matter outside this module.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub sqlite_synchronous: SqliteSynchronous,
    /// Longest a search statement runs (0: no limit): PostgreSQL's reader pool statement
    /// timeout; on SQLite, the bounded read pool's deadline.
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
                // sqlx pings every idle connection it hands out (a round trip per request,
                // as costly on a loopback as the query's own); only one idle long enough to
                // have been dropped by the server or a proxy is checked now. A connection
                // that died sooner fails its query once (503) and leaves the pool.
                let mut pool = AnyPoolOptions::new()
                    .max_connections(settings.max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PING_WHEN_IDLE {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    });
                let setup = pg_session_setup(reads, settings.statement_timeout_ms);
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
                bounded: None,
                searches: Some(Arc::new(Readers::new(
                    options,
                    pg_session_setup(true, settings.statement_timeout_ms),
                    settings.max_connections,
                    Duration::from_secs(10),
                    PING_WHEN_IDLE,
                ))),
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
            let readers = settings.max_connections.max(1);
            let reader = sqlite_pool(path, readers, synchronous, true).await?;
            let bounded = sqlite_bounded_pool(path, readers, synchronous)?;
            Ok(Self {
                backend: Backend::Sqlite,
                writer,
                reader,
                bounded: Some((
                    bounded,
                    Duration::from_millis(settings.statement_timeout_ms),
                )),
                searches: None,
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

    /// SQLite: a read-only connection on which SQLite interrupts any statement still running
    /// when the statement timeout has passed since this call (the statement then fails with
    /// `SQLITE_INTERRUPT`, code 9). `None` on PostgreSQL, whose read sessions have their own
    /// `statement_timeout` (see [`Database::pg_read`]). The deadline is set on every acquire,
    /// so a connection from this pool never runs under a stale one.
    pub async fn sqlite_bounded_read(&self) -> Result<Option<PoolConnection<Sqlite>>, sqlx::Error> {
        let Some((pool, bound)) = &self.bounded else {
            return Ok(None);
        };
        let mut conn = pool.acquire().await?;
        if !bound.is_zero() {
            let deadline = Instant::now() + *bound;
            // Called every ~1,000 virtual-machine steps (microseconds); answering false
            // interrupts the statement.
            conn.lock_handle()
                .await?
                .set_progress_handler(1_000, move || Instant::now() < deadline);
        }
        Ok(Some(conn))
    }

    /// PostgreSQL: a connection for one read statement — a search, a read by id (statement
    /// timeout set) — returned for reuse by [`Reader::done`] once the statement completed,
    /// closed otherwise. `None` on SQLite (see [`Database::sqlite_bounded_read`]).
    pub async fn pg_read(&self) -> Result<Option<Reader<'_>>, sqlx::Error> {
        match &self.searches {
            Some(readers) => readers.acquire().await.map(Some),
            None => Ok(None),
        }
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
            Backend::Postgres => {
                let (open, idle) = self.searches.as_ref().map_or((0, 0), |s| s.usage());
                (
                    self.writer.size() + self.reader.size() + open,
                    self.writer.num_idle() + self.reader.num_idle() + idle,
                )
            }
            Backend::Sqlite => {
                let (open, idle) = self
                    .bounded
                    .as_ref()
                    .map_or((0, 0), |(pool, _)| (pool.size(), pool.num_idle()));
                (
                    self.writer.size() + self.reader.size() + open,
                    self.writer.num_idle() + self.reader.num_idle() + idle,
                )
            }
        }
    }

    /// Waits for connections to be returned and closes the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        if let Some((bounded, _)) = &self.bounded {
            bounded.close().await;
        }
        if let Some(searches) = &self.searches {
            searches.close().await;
        }
    }
}

/// The session settings of a PostgreSQL connection, for reads or for writes.
fn pg_session_setup(reads: bool, statement_timeout_ms: u64) -> String {
    // Set once per connection (no cost per query). JIT compilation and parallel
    // workers are off: the first costs tens of milliseconds on queries the planner
    // merely guesses to be large, the second only moves work between the same two
    // cores when many requests run at once.
    let mut setup = String::from("SET jit = off; SET max_parallel_workers_per_gather = 0");
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
        setup.push_str("; SET plan_cache_mode = force_custom_plan; SET enable_mergejoin = off");
        if statement_timeout_ms > 0 {
            setup.push_str(&format!(
                "; SET statement_timeout = {}",
                statement_timeout_ms
            ));
        }
    }
    setup
}

/// The PRAGMAs every SQLite connection starts with.
fn sqlite_setup(synchronous: &'static str, read_only: bool) -> Vec<String> {
    let mut setup = vec![
        "PRAGMA journal_mode = WAL".to_string(),
        format!("PRAGMA synchronous = {synchronous}"),
        "PRAGMA busy_timeout = 10000".to_string(),
        "PRAGMA foreign_keys = ON".to_string(),
    ];
    if read_only {
        setup.push("PRAGMA query_only = ON".to_string());
    } else {
        // A multi-row INSERT inside a transaction keeps a statement journal (the pages it
        // changes, to undo just that statement); in a file that doubled the bytes a Bundle
        // writes. In memory it is bounded by the statement.
        setup.push("PRAGMA temp_store = MEMORY".to_string());
    }
    setup
}

/// The native read-only pool behind [`Database::sqlite_bounded_read`] (connections open
/// lazily, on first use).
fn sqlite_bounded_pool(
    path: &str,
    max_connections: u32,
    synchronous: &'static str,
) -> Result<SqlitePool, DbError> {
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{path}?mode=rwc")).map_err(|source| {
            DbError::Connect {
                backend: "sqlite",
                source,
            }
        })?;
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                for pragma in sqlite_setup(synchronous, true) {
                    conn.execute(pragma.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options))
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
    // No ping before each acquire: an SQLite connection is a local file and a worker thread;
    // the ping was a round trip to that thread per request.
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .min_connections(if read_only { 0 } else { 1 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                for pragma in sqlite_setup(synchronous, read_only) {
                    conn.execute(pragma.as_str()).await?;
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
