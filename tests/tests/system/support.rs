//! Running the real `sen` binary as a child process.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use sen_platform::testing::TestDatabase;

/// The `sen` binary of this build: next to the test executable's `deps` folder, built on
/// demand when `cargo test` was not asked to build it.
pub fn sen_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target profile dir");
        let sen = dir.join("sen");
        if !sen.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "sen-server", "--bin", "sen"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the sen binary failed");
        }
        sen
    })
    .clone()
}

/// Whether the tests run under `CI=true` (where nothing may skip).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The directory whose `node_modules` holds the npm `package` (`name@version`), installed
/// there on first use: `$<env_var>`, or `~/.cache/<dir>`. Without npm, or when it cannot
/// install, `None` with a notice for `test` — a panic under CI=true.
pub fn npm_installed(package: &str, env_var: &str, dir: &str, test: &str) -> Option<PathBuf> {
    let cache = std::env::var(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache")
                .join(dir)
        });
    let name = package.rsplit_once('@').map_or(package, |(name, _)| name);
    if cache
        .join("node_modules")
        .join(name)
        .join("package.json")
        .exists()
    {
        return Some(cache);
    }
    std::fs::create_dir_all(&cache).ok()?;
    let installed = Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(&cache)
        .arg(package)
        .output();
    match installed {
        Ok(out) if out.status.success() => Some(cache),
        Ok(out) if ci() => panic!(
            "cannot install {package} under CI=true: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if ci() => panic!("cannot run npm under CI=true: {e}"),
        _ => {
            eprintln!("NOTICE: cannot install {package}; skipping {test}");
            None
        }
    }
}

/// The data directory every test server shares for its embedded signing key, so that one
/// system token serves them all (restarts included).
pub fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sen-system-test-keys")
}

/// `sen token` with `args`, run against [`keys_dir`].
pub fn token(args: &[&str]) -> String {
    let output = Command::new(sen_binary())
        .arg("token")
        .args(args)
        .env("SEN_DATA_DIR", keys_dir())
        .output()
        .expect("run sen token");
    assert!(
        output.status.success(),
        "sen token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

/// A `system` token (every SMART scope) that the test servers accept.
pub fn system_token() -> String {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN
        .get_or_init(|| token(&["--role", "system", "--ttl", "1d"]))
        .clone()
}

/// An HTTP client that sends [`system_token`] with every request.
pub fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", system_token())
            .parse()
            .expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// Where a test's server keeps its data.
pub enum Store {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Store {
    pub fn sqlite() -> Self {
        Store::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    pub async fn postgres() -> Option<Self> {
        TestDatabase::from_env().await.map(Store::Postgres)
    }

    pub fn url(&self) -> String {
        match self {
            Store::Sqlite(dir) => format!("sqlite://{}/sen.db", dir.path().display()),
            Store::Postgres(db) => db.url.clone(),
        }
    }

    /// `sqlite` or `postgres`, for artifact names.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// A running `sen serve`.
pub struct Sen {
    pub child: Child,
    pub base: String,
    /// The line `sen serve` printed when it started listening.
    pub banner: String,
}

impl Sen {
    /// Starts `sen serve --listen 127.0.0.1:0 --migrate` on `database_url` and waits for it
    /// to print its address.
    pub fn start(database_url: &str) -> Self {
        Self::start_with(database_url, &["--migrate"])
    }

    pub fn start_with(database_url: &str, extra: &[&str]) -> Self {
        Self::spawn(database_url, extra, &[])
    }

    /// Starts with `--migrate` and extra environment variables.
    pub fn start_env(database_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(database_url, &["--migrate"], env)
    }

    fn spawn(database_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_logging(database_url, extra, env, Stdio::inherit())
    }

    /// Starts with `--migrate` and `env`, its log (stderr) written to `log`.
    pub fn start_logging_to(
        database_url: &str,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        Self::spawn_logging(database_url, &["--migrate"], env, Stdio::from(file))
    }

    fn spawn_logging(
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Self {
        let mut child = Command::new(sen_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("SEN_DATA_DIR", keys_dir())
            .env("SEN_LOG", "warn")
            .envs(env.iter().copied())
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start sen");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sen printed its address");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("an http:// address in the first line")
            .to_string();
        Sen {
            child,
            base,
            banner: line,
        }
    }

    pub fn fhir(&self) -> String {
        format!("{}/fhir", self.base)
    }

    /// SIGKILL: no chance to flush or finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        // waitpid blocks; a helper thread turns it into a timed receive.
        let mut child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("spawn true"),
        );
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                None
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Sen {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Set in a test run inside the network namespace [`rerun_in_netns`] makes.
const INSIDE_NETNS: &str = "TEST_IN_NETNS";

/// Whether this process is a test run inside its own network namespace.
pub fn inside_netns() -> bool {
    std::env::var_os(INSIDE_NETNS).is_some()
}

/// Runs `test` (this binary's test path) again inside a new network namespace: loopback for
/// HTTP and signaling, and a veth pair 10.99.0.1/24 ↔ 10.99.0.2/24 for media, whose host
/// candidates Chromium and aiortc use (they ignore loopback). Needs root (`unshare -n`);
/// without it the test skips with a notice, except under CI=true. The `sen` binary is built
/// first, out here: inside there is no registry. PostgreSQL and Redis stay outside: the run
/// inside uses the embedded store.
pub async fn rerun_in_netns(test: &str) {
    let unshare = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !unshare {
        let what = "cannot make a network namespace (unshare -n needs root)";
        assert!(!ci(), "{what} under CI=true: {test} must run");
        eprintln!("NOTICE: {what}; skipping {test}");
        return;
    }
    sen_binary();
    let setup = "ip link set lo up \
        && ip link add veth0 type veth peer name veth1 \
        && ip addr add 10.99.0.1/24 dev veth0 && ip addr add 10.99.0.2/24 dev veth1 \
        && ip link set veth0 up && ip link set veth1 up \
        && exec \"$0\" \"$@\"";
    let exe = std::env::current_exe().expect("the test binary");
    let test = test.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("unshare")
            .args(["-n", "--", "sh", "-c", setup])
            .arg(exe)
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(INSIDE_NETNS, "1")
            .output()
            .expect("run unshare")
    })
    .await
    .expect("the run inside");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the run in its network namespace failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
}

/// A virtual environment's python with `packages` installed on first use (kept in
/// `~/.cache/<dir>` or `$<cache_var>`), ready when `import <module>` works; without Python or
/// PyPI, `None` with a notice, except under CI=true, where it fails.
pub fn python_venv(cache_var: &str, dir: &str, packages: &[&str], module: &str) -> Option<PathBuf> {
    let venv = std::env::var(cache_var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
                .join(".cache")
                .join(dir)
        });
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return Some(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = made
        && Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
    match (installed && ready(), ci()) {
        (true, _) => Some(python),
        (false, true) => panic!("cannot install {packages:?} under CI=true"),
        (false, false) => {
            eprintln!("NOTICE: cannot install {packages:?}; skipping the test that needs them");
            None
        }
    }
}
