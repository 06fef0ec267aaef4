//! Configuration: built-in defaults, then an optional TOML file, then the environment.
//!
//! Every key has a default, so `sen serve` with nothing configured runs the embedded setup.
//! Unknown keys — in the file or as `SEN_*` environment variables — are refused with a message
//! that names the valid ones, because a typo silently ignored is how production ends up on the
//! embedded SQLite file. Secrets (database and Redis passwords) are redacted wherever the
//! configuration is printed or logged.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize, Serializer};

/// The whole configuration. Each section maps to a `[section]` of the TOML file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub telemetry: TelemetryConfig,
    pub fhir: FhirConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub telehealth: TelehealthConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Base URL clients use to reach the server (for `Location` headers and `fullUrl`s).
    /// Without it, the request's `Host` header is used.
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Time a request may take before it is answered 503 with an OperationOutcome.
    pub request_timeout_secs: u64,
    /// Time in-flight requests get to finish after SIGTERM or Ctrl-C.
    pub shutdown_timeout_secs: u64,
    /// Serve `/metrics` on this address only (e.g. an internal interface for the scraper),
    /// not on `listen`. Unset: `/metrics` is served on `listen`, without a token.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            body_limit_bytes: 8 * 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_timeout_secs: 30,
            metrics_listen: None,
        }
    }
}

/// `synchronous` setting of SQLite in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// fsync on every commit: a committed write survives power loss.
    Full,
    /// fsync at checkpoints: a committed write survives a process crash, not a power loss.
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…`. Without it, `<data_dir>/sen.db` (SQLite) is used.
    pub url: Option<Secret>,
    /// Directory of the embedded SQLite database (and, later, keys).
    pub data_dir: PathBuf,
    /// Connections per pool. Default: four per CPU core (more only adds context switches
    /// when the database shares the host; measured in loadtests/RESULTS.md).
    pub max_connections: u32,
    pub sqlite_synchronous: SqliteSynchronous,
    /// Apply pending migrations when `sen serve` starts. Always on for SQLite; on
    /// PostgreSQL the default is off, so schema changes are a deliberate `sen migrate`.
    pub migrate_on_start: Option<bool>,
    /// Longest a read statement may run before it is cancelled and answered "too costly"
    /// (0: no limit): on PostgreSQL every read (search, history, read), on SQLite searches
    /// (interrupted by SQLite itself). Writes are not limited.
    pub statement_timeout_ms: u64,
}

fn default_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores * 4).unwrap_or(16).clamp(4, 64)
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("./data"),
            max_connections: default_pool_size(),
            sqlite_synchronous: SqliteSynchronous::Full,
            migrate_on_start: None,
            statement_timeout_ms: 15_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…`. Without it, sessions and other volatile state live in memory.
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` filter directives, e.g. `info` or `info,sen_ehr=debug`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint; traces and metrics are exported there when set.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: "sen".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FhirConfig {
    /// Page size when a client gives no `_count`.
    pub default_count: u32,
    /// Largest `_count` honoured; larger values are capped.
    pub max_count: u32,
    /// Most entries accepted in one batch or transaction Bundle.
    pub max_bundle_entries: u32,
    /// A directory of extra profiles, value sets and code systems (`*.json`) loaded at
    /// start-up beside the built-in ones (which it may replace by URL).
    pub profile_dir: Option<std::path::PathBuf>,
    /// Profiles every resource of a type must conform to: `Patient = "<profile URL>"`.
    pub required_profiles: std::collections::BTreeMap<String, String>,
    /// Access records turned into AuditEvent resources per second, at most: every access is
    /// recorded at once (an outbox row); this paces only the indexing of those rows, so a
    /// burst of reads costs the burst little. A search of AuditEvents catches up first.
    pub audit_relay_per_second: u32,
    /// Longest a search or read of AuditEvents waits for the relay to turn the records made
    /// before it into AuditEvents; past it, a search answers what is there with a warning.
    pub audit_catch_up_ms: u64,
}

impl Default for FhirConfig {
    fn default() -> Self {
        Self {
            default_count: 20,
            max_count: 1000,
            max_bundle_entries: 1000,
            profile_dir: None,
            required_profiles: Default::default(),
            audit_relay_per_second: 2_000,
            audit_catch_up_ms: 10_000,
        }
    }
}

/// Who may call the API: bearer JWTs from trusted issuers (see `sen_platform::auth`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The `aud` every token must carry (for an OpenID provider: the client id or API
    /// identifier it issues tokens for).
    pub audience: String,
    /// Trust the key Sen creates in its data directory on first start, under the issuer
    /// `embedded_issuer`; `sen token` signs with it. Turn off where an OpenID provider issues
    /// every token (and with several server processes, which would each create their own key).
    pub embedded: bool,
    /// The `iss` of tokens signed with the embedded key.
    pub embedded_issuer: String,
    /// External issuers: `iss` → the URL of its JWKS document (e.g. Keycloak's
    /// `https://idp/realms/city/protocol/openid-connect/certs`).
    pub issuers: std::collections::BTreeMap<String, String>,
    /// Tolerated difference between our clock and the issuer's for `exp` and `nbf`.
    pub clock_skew_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            audience: "sen".into(),
            embedded: true,
            embedded_issuer: "urn:sen:embedded".into(),
            issuers: Default::default(),
            clock_skew_secs: 60,
        }
    }
}

/// Requests a minute per client address and per authenticated client (0: no limit); see
/// `sen_platform::ratelimit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_ip_per_minute: u64,
    pub per_client_per_minute: u64,
    /// Proxies in front of Sen that append to `X-Forwarded-For` (0: the TCP peer is the
    /// client's address; 1: one ingress, so its entry is the last one; …).
    pub forwarded_for_hops: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 72_000,
            per_client_per_minute: 36_000,
            forwarded_for_hops: 0,
        }
    }
}

/// Remote consultations (`sen-telehealth`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelehealthConfig {
    /// Signs and checks join grants; every telehealth node of a deployment needs the same one
    /// (at least 32 bytes). None: a secret created in the data directory on first start
    /// (one node).
    pub secret: Option<Secret>,
    /// How long after its appointment's end a consultation may go on (and its grants stay
    /// valid).
    pub grace_minutes: u64,
    /// Longest lifetime of a join grant (shorter when the appointment ends sooner).
    pub grant_ttl_minutes: u64,
    /// The FHIR API for appointments and encounters when the EHR runs in another process
    /// (`https://ehr.internal/fhir`); none: the EHR of this process.
    pub fhir_url: Option<String>,
    /// TURN servers announced to participants (`turn:turn.example.vn:3478?transport=udp`).
    pub turn_urls: Vec<String>,
    /// The secret shared with coturn (`static-auth-secret`); required with `turn_urls`.
    pub turn_secret: Option<Secret>,
    /// How long a TURN credential lasts.
    pub turn_ttl_minutes: u64,
    /// The address media sockets bind: `0.0.0.0` is every interface but loopback; a
    /// concrete address binds that interface only (`127.0.0.1` for a test on one machine).
    pub media_bind: IpAddr,
    /// The UDP ports media uses (one per participant), both ends included: the range a
    /// firewall opens.
    pub media_port_min: u16,
    pub media_port_max: u16,
    /// The public address announced in place of the bound one when the node sits behind a
    /// 1:1 NAT (a cloud VM's elastic IP).
    pub media_public_ip: Option<IpAddr>,
}

impl Default for TelehealthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            grace_minutes: 30,
            grant_ttl_minutes: 120,
            fhir_url: None,
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_minutes: 120,
            media_bind: IpAddr::from([0, 0, 0, 0]),
            media_port_min: 40_000,
            media_port_max: 49_999,
            media_public_ip: None,
        }
    }
}

/// A secret value (a URL with a password). Printed and serialised with the password redacted.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with any `user:password@` password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// Redacts the password of `scheme://user:password@host…`; anything unparseable is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_string(),
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(
        "unknown environment variable {name}. Sen reads these: {known}. \
         Remove or rename it."
    )]
    UnknownEnv { name: String, known: String },
    #[error("environment variable {name} must be {expected}, got {value:?}")]
    EnvValue {
        name: String,
        expected: &'static str,
        value: String,
    },
    #[error("invalid configuration{origin}: {message}. See `sen serve --help` for every key.")]
    Invalid { origin: String, message: String },
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// `key=value,key=value`
    Map,
    /// `a,b,c`
    List,
}

/// Environment variables Sen reads, and the key each one sets.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    ("SEN_LISTEN", "server.listen", Kind::Str),
    ("SEN_PUBLIC_URL", "server.public_url", Kind::Str),
    ("SEN_BODY_LIMIT_BYTES", "server.body_limit_bytes", Kind::Int),
    (
        "SEN_REQUEST_TIMEOUT_SECS",
        "server.request_timeout_secs",
        Kind::Int,
    ),
    (
        "SEN_SHUTDOWN_TIMEOUT_SECS",
        "server.shutdown_timeout_secs",
        Kind::Int,
    ),
    ("SEN_METRICS_LISTEN", "server.metrics_listen", Kind::Str),
    ("DATABASE_URL", "database.url", Kind::Str),
    ("SEN_DATABASE_URL", "database.url", Kind::Str),
    ("SEN_DATA_DIR", "database.data_dir", Kind::Str),
    (
        "SEN_DATABASE_MAX_CONNECTIONS",
        "database.max_connections",
        Kind::Int,
    ),
    (
        "SEN_SQLITE_SYNCHRONOUS",
        "database.sqlite_synchronous",
        Kind::Str,
    ),
    (
        "SEN_MIGRATE_ON_START",
        "database.migrate_on_start",
        Kind::Bool,
    ),
    ("REDIS_URL", "redis.url", Kind::Str),
    (
        "SEN_DATABASE_STATEMENT_TIMEOUT_MS",
        "database.statement_timeout_ms",
        Kind::Int,
    ),
    ("SEN_REDIS_URL", "redis.url", Kind::Str),
    ("SEN_LOG", "telemetry.log_filter", Kind::Str),
    ("SEN_LOG_FORMAT", "telemetry.log_format", Kind::Str),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "telemetry.otlp_endpoint",
        Kind::Str,
    ),
    ("OTEL_SERVICE_NAME", "telemetry.service_name", Kind::Str),
    ("SEN_FHIR_DEFAULT_COUNT", "fhir.default_count", Kind::Int),
    ("SEN_FHIR_MAX_COUNT", "fhir.max_count", Kind::Int),
    (
        "SEN_FHIR_MAX_BUNDLE_ENTRIES",
        "fhir.max_bundle_entries",
        Kind::Int,
    ),
    ("SEN_FHIR_PROFILE_DIR", "fhir.profile_dir", Kind::Str),
    (
        "SEN_FHIR_AUDIT_RELAY_PER_SECOND",
        "fhir.audit_relay_per_second",
        Kind::Int,
    ),
    (
        "SEN_FHIR_AUDIT_CATCH_UP_MS",
        "fhir.audit_catch_up_ms",
        Kind::Int,
    ),
    (
        "SEN_FHIR_REQUIRED_PROFILES",
        "fhir.required_profiles",
        Kind::Map,
    ),
    ("SEN_TELEHEALTH_SECRET", "telehealth.secret", Kind::Str),
    (
        "SEN_TELEHEALTH_GRACE_MINUTES",
        "telehealth.grace_minutes",
        Kind::Int,
    ),
    (
        "SEN_TELEHEALTH_GRANT_TTL_MINUTES",
        "telehealth.grant_ttl_minutes",
        Kind::Int,
    ),
    ("SEN_TELEHEALTH_FHIR_URL", "telehealth.fhir_url", Kind::Str),
    (
        "SEN_TELEHEALTH_TURN_URLS",
        "telehealth.turn_urls",
        Kind::List,
    ),
    (
        "SEN_TELEHEALTH_TURN_SECRET",
        "telehealth.turn_secret",
        Kind::Str,
    ),
    (
        "SEN_TELEHEALTH_TURN_TTL_MINUTES",
        "telehealth.turn_ttl_minutes",
        Kind::Int,
    ),
    (
        "SEN_TELEHEALTH_MEDIA_BIND",
        "telehealth.media_bind",
        Kind::Str,
    ),
    (
        "SEN_TELEHEALTH_MEDIA_PORT_MIN",
        "telehealth.media_port_min",
        Kind::Int,
    ),
    (
        "SEN_TELEHEALTH_MEDIA_PORT_MAX",
        "telehealth.media_port_max",
        Kind::Int,
    ),
    (
        "SEN_TELEHEALTH_MEDIA_PUBLIC_IP",
        "telehealth.media_public_ip",
        Kind::Str,
    ),
    ("SEN_AUTH_AUDIENCE", "auth.audience", Kind::Str),
    ("SEN_AUTH_EMBEDDED", "auth.embedded", Kind::Bool),
    ("SEN_AUTH_ISSUERS", "auth.issuers", Kind::Map),
    (
        "SEN_AUTH_CLOCK_SKEW_SECS",
        "auth.clock_skew_secs",
        Kind::Int,
    ),
    (
        "SEN_RATE_LIMIT_PER_IP_PER_MINUTE",
        "rate_limit.per_ip_per_minute",
        Kind::Int,
    ),
    (
        "SEN_RATE_LIMIT_PER_CLIENT_PER_MINUTE",
        "rate_limit.per_client_per_minute",
        Kind::Int,
    ),
    (
        "SEN_RATE_LIMIT_FORWARDED_FOR_HOPS",
        "rate_limit.forwarded_for_hops",
        Kind::Int,
    ),
];

/// `SEN_*` variables that are not configuration keys (read by tests and tools).
const ENV_IGNORED: &[&str] = &["SEN_TARGET_DIR", "SEN_TEST_KEEP"];

impl Config {
    /// Loads defaults, then `file` (if any), then the variables of `env`.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let origin = file
            .map(|p| format!(" in {}", p.display()))
            .unwrap_or_default();
        // Check the file alone first, so an error names the file rather than the environment.
        Self::deserialize(table.clone()).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            message: e.message().into(),
        })?;

        let mut env: Vec<(String, String)> = env.into_iter().collect();
        // DATABASE_URL before SEN_DATABASE_URL: the Sen-specific name wins.
        env.sort();
        for (name, value) in env {
            let Some(&(_, key, kind)) = ENV_KEYS.iter().find(|(n, _, _)| *n == name) else {
                if name.starts_with("SEN_") && !ENV_IGNORED.contains(&name.as_str()) {
                    let known = ENV_KEYS
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(ConfigError::UnknownEnv { name, known });
                }
                continue;
            };
            if value.is_empty() {
                continue;
            }
            let parsed = match kind {
                Kind::Str => toml::Value::String(value),
                Kind::Int => value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::EnvValue {
                        name: name.clone(),
                        expected: "a whole number",
                        value,
                    })?,
                Kind::Bool => value
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| ConfigError::EnvValue {
                        name: name.clone(),
                        expected: "true or false",
                        value,
                    })?,
                Kind::Map => {
                    let mut map = toml::Table::new();
                    for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                        let Some((k, v)) = pair.split_once('=') else {
                            return Err(ConfigError::EnvValue {
                                name: name.clone(),
                                expected: "comma-separated key=value pairs",
                                value,
                            });
                        };
                        map.insert(k.trim().into(), toml::Value::String(v.trim().into()));
                    }
                    toml::Value::Table(map)
                }
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.into()))
                        .collect(),
                ),
            };
            let (section, field) = key.split_once('.').expect("keys are section.field");
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(field.into(), parsed);
            }
        }
        Self::deserialize(table).map_err(|e| ConfigError::Invalid {
            origin: " (from the environment)".into(),
            message: e.message().into(),
        })
    }

    /// The configuration as TOML, secrets redacted: what `sen config` prints.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }

    /// The PostgreSQL or SQLite URL to connect to.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_string(),
            None => format!("sqlite://{}/sen.db", self.database.data_dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn with_nothing_configured_the_embedded_defaults_apply() {
        let config = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url(), "sqlite://./data/sen.db");
        assert!(config.redis.url.is_none());
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sen.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"0.0.0.0:9000\"\nbody_limit_bytes = 10\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), env(&[("SEN_LISTEN", "127.0.0.1:9100")])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.server.body_limit_bytes, 10);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_with_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sen.toml");
        std::fs::write(&path, "[server]\nlisen = \"0.0.0.0:9000\"\n").unwrap();
        let message = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(
            message.contains("lisen") && message.contains("listen"),
            "{message}"
        );
        assert!(message.contains("sen.toml"), "{message}");
    }

    #[test]
    fn auth_and_rate_limits_are_set_from_the_environment() {
        let config = Config::load(
            None,
            env(&[
                ("SEN_AUTH_AUDIENCE", "https://fhir.caolanh.vn"),
                ("SEN_AUTH_EMBEDDED", "false"),
                (
                    "SEN_AUTH_ISSUERS",
                    "https://idp/realms/city=https://idp/realms/city/protocol/openid-connect/certs",
                ),
                ("SEN_AUTH_CLOCK_SKEW_SECS", "30"),
                ("SEN_RATE_LIMIT_PER_IP_PER_MINUTE", "100"),
                ("SEN_RATE_LIMIT_PER_CLIENT_PER_MINUTE", "50"),
                ("SEN_RATE_LIMIT_FORWARDED_FOR_HOPS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.audience, "https://fhir.caolanh.vn");
        assert!(!config.auth.embedded);
        assert_eq!(
            config.auth.issuers["https://idp/realms/city"],
            "https://idp/realms/city/protocol/openid-connect/certs"
        );
        assert_eq!(config.auth.clock_skew_secs, 30);
        assert_eq!(config.rate_limit.per_ip_per_minute, 100);
        assert_eq!(config.rate_limit.per_client_per_minute, 50);
        assert_eq!(config.rate_limit.forwarded_for_hops, 1);
    }

    #[test]
    fn an_unknown_sen_variable_is_refused() {
        let message = Config::load(None, env(&[("SEN_LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("SEN_LISTN") && message.contains("SEN_LISTEN"),
            "{message}"
        );
    }

    #[test]
    fn a_malformed_number_in_the_environment_says_what_was_expected() {
        let message = Config::load(None, env(&[("SEN_BODY_LIMIT_BYTES", "ten")]))
            .unwrap_err()
            .to_string();
        assert!(message.contains("whole number"), "{message}");
    }

    #[test]
    fn passwords_never_appear_when_the_configuration_is_printed() {
        let config = Config::load(
            None,
            env(&[
                ("DATABASE_URL", "postgres://sen:hunter2@db:5432/sen"),
                ("REDIS_URL", "redis://:pw@r:6379/0"),
            ]),
        )
        .unwrap();
        let printed = format!("{} {:?}", config.to_redacted_toml(), config);
        assert!(
            !printed.contains("hunter2") && !printed.contains(":pw@"),
            "{printed}"
        );
        assert!(
            printed.contains("postgres://sen:***@db:5432/sen"),
            "{printed}"
        );
        assert_eq!(config.database_url(), "postgres://sen:hunter2@db:5432/sen");
    }

    #[test]
    fn telehealth_secrets_are_read_and_never_printed() {
        let config = Config::load(
            None,
            env(&[
                (
                    "SEN_TELEHEALTH_SECRET",
                    "grant-secret-of-the-city-0123456789",
                ),
                ("SEN_TELEHEALTH_TURN_SECRET", "coturn-static-auth-secret"),
                (
                    "SEN_TELEHEALTH_TURN_URLS",
                    "turn:turn.caolanh.vn:3478?transport=udp, turns:turn.caolanh.vn:5349",
                ),
                ("SEN_TELEHEALTH_GRACE_MINUTES", "15"),
            ]),
        )
        .unwrap();
        let t = &config.telehealth;
        assert_eq!(
            t.turn_urls,
            vec![
                "turn:turn.caolanh.vn:3478?transport=udp",
                "turns:turn.caolanh.vn:5349"
            ]
        );
        assert_eq!(t.grace_minutes, 15);
        assert_eq!(
            t.secret.as_ref().map(Secret::expose),
            Some("grant-secret-of-the-city-0123456789")
        );
        let printed = format!("{} {:?}", config.to_redacted_toml(), config);
        assert!(
            !printed.contains("grant-secret") && !printed.contains("coturn-static"),
            "{printed}"
        );
    }
}
