//! PostgreSQL connections for searches, kept outside sqlx's pool.
//!
//! sqlx's pool pings a connection when it is returned (a Sync round trip per request, on a
//! loopback as costly as the search's own) to catch one left mid-result by a cancelled
//! query. Here a connection goes back only when its statement completed ([`Reader::done`]);
//! one dropped earlier — the request cancelled, the statement failed, the connection broken —
//! is closed instead, so nothing half-read is ever reused and no ping is needed. A connection
//! idle longer than `ping_when_idle` is pinged before use, as the server or a proxy may have
//! dropped it.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use sqlx::{AnyConnection, Connection, Executor, any::AnyConnectOptions};
use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug)]
pub(super) struct Readers {
    options: AnyConnectOptions,
    /// Run once on each new connection (session settings).
    setup: String,
    idle: Mutex<Vec<(AnyConnection, Instant)>>,
    permits: Semaphore,
    max_connections: usize,
    acquire_timeout: Duration,
    ping_when_idle: Duration,
}

/// A search connection; [`Reader::done`] gives it back for reuse.
#[derive(Debug)]
pub struct Reader<'a> {
    conn: Option<AnyConnection>,
    readers: &'a Readers,
    reusable: bool,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub(super) fn new(
        options: AnyConnectOptions,
        setup: String,
        max_connections: u32,
        acquire_timeout: Duration,
        ping_when_idle: Duration,
    ) -> Self {
        Self {
            options,
            setup,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max_connections.max(1) as usize),
            max_connections: max_connections.max(1) as usize,
            acquire_timeout,
            ping_when_idle,
        }
    }

    pub(super) async fn acquire(&self) -> Result<Reader<'_>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = loop {
            let popped = self.idle.lock().expect("reader list").pop();
            match popped {
                Some((mut conn, since)) => {
                    if since.elapsed() <= self.ping_when_idle || conn.ping().await.is_ok() {
                        break conn;
                    }
                }
                None => {
                    let mut conn = AnyConnection::connect_with(&self.options).await?;
                    conn.execute(sqlx::raw_sql(&self.setup)).await?;
                    break conn;
                }
            }
        };
        Ok(Reader {
            conn: Some(conn),
            readers: self,
            reusable: false,
            _permit: permit,
        })
    }

    /// Connections (open, idle), for the pool gauges.
    pub(super) fn usage(&self) -> (u32, usize) {
        let idle = self.idle.lock().expect("reader list").len();
        let in_use = self.max_connections - self.permits.available_permits();
        (u32::try_from(in_use + idle).unwrap_or(u32::MAX), idle)
    }

    /// Closes the idle connections (those in use close when dropped).
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle: Vec<_> = std::mem::take(&mut *self.idle.lock().expect("reader list"));
        for (conn, _) in idle {
            let _ = conn.close().await;
        }
    }
}

impl Reader<'_> {
    /// The connection, for one statement.
    pub fn conn(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("a reader holds its connection until dropped")
    }

    /// The statement completed (all rows read or an error the server answered in full):
    /// the connection may serve another search.
    pub fn done(mut self) {
        self.reusable = true;
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && !self.readers.permits.is_closed()
        {
            self.readers
                .idle
                .lock()
                .expect("reader list")
                .push((conn, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::Row;

    use super::*;
    use crate::testing::TestDatabase;

    async fn backend_pid(reader: &mut Reader<'_>) -> i32 {
        sqlx::query("SELECT pg_backend_pid()")
            .fetch_one(reader.conn())
            .await
            .unwrap()
            .get(0)
    }

    async fn statement_timeout(reader: &mut Reader<'_>) -> String {
        sqlx::query("SHOW statement_timeout")
            .fetch_one(reader.conn())
            .await
            .unwrap()
            .get(0)
    }

    /// A connection comes back only after `done`; one abandoned mid-statement (a cancelled
    /// request) is closed, and the next reader gets a fresh session with the setup applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_completed_statements_give_their_connection_back() {
        let Some(pg) = TestDatabase::from_env().await else {
            return;
        };
        sqlx::any::install_default_drivers();
        let readers = Readers::new(
            AnyConnectOptions::from_str(&pg.url).unwrap(),
            "SET statement_timeout = 4321".into(),
            1,
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        let mut reader = readers.acquire().await.unwrap();
        let first = backend_pid(&mut reader).await;
        assert_eq!(statement_timeout(&mut reader).await, "4321ms");
        reader.done();
        let mut reader = readers.acquire().await.unwrap();
        assert_eq!(backend_pid(&mut reader).await, first, "reused after done");

        // Abandon a statement once it is on its way (polled until the server runs it).
        {
            let conn = reader.conn();
            let mut slow = Box::pin(sqlx::query("SELECT pg_sleep(30)").fetch_all(conn));
            let watcher = AnyConnection::connect_with(&readers.options).await;
            let mut watcher = watcher.unwrap();
            loop {
                tokio::select! {
                    _ = &mut slow => panic!("pg_sleep(30) finished"),
                    running = sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                    )
                    .fetch_one(&mut watcher) => {
                        if running.unwrap() == 1 {
                            break;
                        }
                    }
                }
            }
        }
        drop(reader);
        let mut reader = readers.acquire().await.unwrap();
        assert_ne!(backend_pid(&mut reader).await, first, "a fresh connection");
        assert_eq!(statement_timeout(&mut reader).await, "4321ms");
        reader.done();
        readers.close().await;
        assert!(matches!(
            readers.acquire().await,
            Err(sqlx::Error::PoolClosed)
        ));
    }
}
