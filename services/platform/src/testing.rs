//! Helpers for tests that need real PostgreSQL and Redis.
//!
//! The PostgreSQL and Redis variants of a suite run when `TEST_DATABASE_URL` /
//! `TEST_REDIS_URL` are set, skip with a visible notice when they are not, and fail when
//! `CI=true` says they must run.

use sqlx::{Connection, Executor};

/// The value of `var`, or `None` with a notice on stderr; panics under `CI=true`.
pub fn required_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{var} is required when CI=true: the {what} variant of this test must run");
            }
            eprintln!("NOTICE: {var} is not set; skipping the {what} variant of this test");
            None
        }
    }
}

/// A program a test runs beside the server (a Redis, a coturn), killed when dropped.
#[derive(Debug)]
pub struct Helper(std::process::Child);

impl Helper {
    /// Starts `command` and returns once a line of its standard output contains `ready`.
    /// Without the program: `None` with a notice naming `install`, for the `what` test; a
    /// panic under `CI=true`, where that test must run.
    pub fn start(
        mut command: std::process::Command,
        ready: &str,
        install: &str,
        what: &str,
    ) -> Option<Self> {
        use std::io::BufRead;
        let child = command.stdout(std::process::Stdio::piped()).spawn();
        let mut child = match child {
            Ok(child) => Helper(child),
            Err(e) => {
                let program = command.get_program().to_string_lossy().into_owned();
                let missing = format!("no {program} ({e}; {install})");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{missing} under CI=true: the {what} test must run");
                }
                eprintln!("NOTICE: {missing}; skipping the {what} test");
                return None;
            }
        };
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let started = lines.any(|line| line.is_ok_and(|line| line.contains(ready)));
        // Kept draining, so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        assert!(
            started,
            "{what}: the helper stopped before saying {ready:?}"
        );
        Some(child)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL database created for one test and dropped when this guard is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database next to the one `admin_url` points at.
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("sen_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        conn.close().await?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) if !base.ends_with('/') => format!("{base}/{name}"),
            _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
        };
        Ok(Self {
            url,
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// Creates a database when `TEST_DATABASE_URL` is set (see [`required_env`]).
    pub async fn from_env() -> Option<Self> {
        let admin = required_env("TEST_DATABASE_URL", "PostgreSQL")?;
        Some(Self::create(&admin).await.expect("create a test database"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var("SEN_TEST_KEEP").is_ok() {
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside async; a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}
