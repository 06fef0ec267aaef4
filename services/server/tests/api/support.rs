//! `TestApp`: the real application on 127.0.0.1:0 with a database of its own.

#![allow(dead_code)]

use std::time::Duration;

use sen_platform::{
    Config, Database,
    auth::{Role, TokenRequest},
    config::Secret,
    testing::TestDatabase,
};
use serde_json::Value;
use sqlx::Row;

/// Body limit the test app runs with, small enough to test cheaply.
pub const BODY_LIMIT: usize = 256 * 1024;

pub struct TestApp {
    pub base: String,
    /// Sends a `system` token with every request (every SMART scope).
    pub client: reqwest::Client,
    pub auth: std::sync::Arc<sen_platform::auth::Auth>,
    pub db: Database,
    pub bus: std::sync::Arc<dyn sen_platform::bus::EventBus>,
    pub kv: std::sync::Arc<dyn sen_platform::kv::KeyValueStore>,
    pub redis: bool,
    history_table: &'static str,
    resource_table: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    url: String,
    data_dir: std::path::PathBuf,
    _keys: Option<tempfile::TempDir>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<TestDatabase>,
}

impl TestApp {
    pub async fn sqlite() -> Self {
        Self::sqlite_with(|_| {}).await
    }

    /// `None` (with a notice) when `TEST_DATABASE_URL` is unset outside CI.
    pub async fn postgres() -> Option<Self> {
        Self::postgres_with(|_| {}).await
    }

    /// On SQLite, with the configuration changed by `configure`.
    pub async fn sqlite_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/sen.db", dir.path().display());
        Self::start(url, Some(dir), None, None, configure).await
    }

    /// On PostgreSQL, with the configuration changed by `configure`.
    pub async fn postgres_with(configure: impl FnOnce(&mut Config)) -> Option<Self> {
        let pg = TestDatabase::from_env().await?;
        Some(Self::start(pg.url.clone(), None, Some(pg), None, configure).await)
    }

    /// A second node of the same deployment: another application on the same database, data
    /// directory (keys, grant secret) and Redis.
    pub async fn another_node(&self) -> TestApp {
        Self::start(
            self.url.clone(),
            None,
            None,
            Some(self.data_dir.clone()),
            |_| {},
        )
        .await
    }

    async fn start(
        url: String,
        dir: Option<tempfile::TempDir>,
        pg: Option<TestDatabase>,
        data_dir: Option<std::path::PathBuf>,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config::default();
        config.database.url = Some(Secret::new(url.clone()));
        // The embedded signing key lives in the data directory: one per test app (but for
        // another node of the same deployment).
        let keys = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("temp dir for keys")),
        };
        let data_dir =
            data_dir.unwrap_or_else(|| keys.as_ref().expect("keys").path().to_path_buf());
        config.database.data_dir = data_dir.clone();
        config.database.max_connections = 8;
        config.server.body_limit_bytes = BODY_LIMIT;
        config.telemetry.log_filter = "warn".into();
        // Tests share 127.0.0.1 and one Redis: limits are off unless a test turns them on.
        config.rate_limit.per_ip_per_minute = 0;
        config.rate_limit.per_client_per_minute = 0;
        let redis_url = std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty());
        config.redis.url = redis_url.map(Secret::new);
        // Media on loopback: the tests' peers are on this machine.
        config.telehealth.media_bind = std::net::IpAddr::from([127, 0, 0, 1]);
        configure(&mut config);
        let redis = config.redis.url.is_some();
        let app = sen_server::build(&config, sen_server::ServiceName::ALL, true)
            .await
            .expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = app.router;
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let _ =
                sen_platform::http::serve(listener, router, shutdown, Duration::from_secs(5)).await;
        });
        let (history_table, resource_table) = match app.db.backend() {
            sen_platform::Backend::Postgres => ("ehr.resource_history", "ehr.resource"),
            sen_platform::Backend::Sqlite => ("ehr_resource_history", "ehr_resource"),
        };
        let system = app
            .auth
            .mint(&token_request(Role::System, None))
            .expect("system token");
        TestApp {
            base: format!("http://{address}"),
            client: client_with(&system),
            auth: app.auth,
            url,
            data_dir,
            _keys: keys,
            db: app.db,
            bus: app.bus,
            kv: app.kv,
            redis,
            history_table,
            resource_table,
            stop: Some(stop),
            _dir: dir,
            _pg: pg,
        }
    }

    /// A token of `role` signed with the app's embedded key, with `scope` (or the role's
    /// default scopes).
    pub fn token(&self, role: Role, patient: Option<&str>, scope: Option<&str>) -> String {
        let mut request = token_request(role, patient);
        request.scope = scope.map(str::to_string);
        self.auth.mint(&request).expect("token")
    }

    /// A token of a practitioner or clinic admin who is `Practitioner/{practitioner}`.
    pub fn practitioner_token(&self, role: Role, practitioner: &str) -> String {
        let mut request = token_request(role, None);
        request.practitioner = Some(practitioner.to_string());
        self.auth.mint(&request).expect("token")
    }

    /// The app's data directory (its embedded key, telehealth's grant secret).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// A request with no token at all.
    pub fn anonymous(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new().request(method, format!("{}{path}", self.base))
    }

    /// A request with `token` instead of the system token.
    pub fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.anonymous(method, path).bearer_auth(token)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::PUT, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT")
    }

    /// Creates a resource; answers its id and the stored JSON.
    pub async fn create(&self, resource: &Value) -> (String, Value) {
        let rt = resource["resourceType"].as_str().expect("resourceType");
        let response = self
            .post_raw(&format!("/fhir/{rt}"), &resource.to_string())
            .await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::CREATED,
            "create {rt}"
        );
        let body: Value = response.json().await.expect("JSON");
        (body["id"].as_str().expect("id").to_string(), body)
    }

    /// Rows in the history table but AuditEvents (which the relay writes when it will): every
    /// write leaves exactly one.
    pub async fn history_rows(&self) -> i64 {
        self.count_rows(self.history_table).await
    }

    /// Empties the search index, as if every resource had been written before it existed.
    pub async fn drop_search_index(&self) {
        let prefix = match self.db.backend() {
            sen_platform::Backend::Postgres => "ehr.",
            sen_platform::Backend::Sqlite => "ehr_",
        };
        for table in [
            "sp_string",
            "sp_token",
            "sp_reference",
            "sp_date",
            "sp_number",
            "sp_uri",
        ] {
            sqlx::query(&format!("DELETE FROM {prefix}{table}"))
                .execute(self.db.writer())
                .await
                .expect("empty an index table");
        }
    }

    /// Rows in the current-version table but AuditEvents: one per resource ever created.
    pub async fn resource_rows(&self) -> i64 {
        self.count_rows(self.resource_table).await
    }

    async fn count_rows(&self, table: &str) -> i64 {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) FROM {table} WHERE resource_type <> 'AuditEvent'"
        ))
        .fetch_one(self.db.reader())
        .await
        .expect("count history");
        row.try_get::<i64, _>(0).expect("count")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The status of a request with `token`, `headers` and a FHIR JSON `body`.
pub async fn status_as(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> reqwest::StatusCode {
    let mut request = app.request_as(token, method, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    request.send().await.unwrap().status()
}

fn token_request(role: Role, patient: Option<&str>) -> TokenRequest {
    TokenRequest {
        role,
        subject: None,
        patient: patient.map(str::to_string),
        practitioner: None,
        scope: None,
        ttl_secs: 3600,
    }
}

/// A client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}
