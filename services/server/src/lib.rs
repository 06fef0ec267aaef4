//! Composition of Sen's services into one HTTP application.
//!
//! Each service is a library that contributes routes; this crate picks the services named on
//! the command line, connects the shared infrastructure (database, key-value store), applies
//! the platform's layer stack and serves. Tests use [`build`] to run the real application on
//! an ephemeral port.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::Router;
use sen_platform::{
    Backend, Config, Database,
    auth::Auth,
    fhir_client::FhirClient,
    http::{HttpLimits, layered, metrics_router},
    kv::{self, KeyValueStore},
    migrate::{self, Migration},
    ratelimit::RateLimiter,
    telemetry::GaugeCollector,
};

/// A service `sen serve --services` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceName {
    Ehr,
    Telehealth,
}

impl ServiceName {
    pub const ALL: &'static [ServiceName] = &[ServiceName::Ehr, ServiceName::Telehealth];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Ehr => sen_ehr::SERVICE,
            ServiceName::Telehealth => sen_telehealth::SERVICE,
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            ServiceName::Ehr => sen_ehr::migrations::MIGRATIONS,
            // Its state is volatile (key-value store); its records are the EHR's.
            ServiceName::Telehealth => &[],
        }
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::ALL
            .iter()
            .copied()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = ServiceName::ALL.iter().map(|n| n.as_str()).collect();
                format!(
                    "unknown service {s:?}; known services: all, {}",
                    known.join(", ")
                )
            })
    }
}

/// Parses `--services`: `all` or a comma-separated list.
pub fn parse_services(list: &str) -> Result<Vec<ServiceName>, String> {
    if list.trim() == "all" {
        return Ok(ServiceName::ALL.to_vec());
    }
    let mut services = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let service = name.parse::<ServiceName>()?;
        if !services.contains(&service) {
            services.push(service);
        }
    }
    if services.is_empty() {
        return Err("--services needs at least one service".into());
    }
    Ok(services)
}

/// Applies every pending migration of `services`.
pub async fn migrate_all(
    db: &Database,
    services: &[ServiceName],
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut applied = Vec::new();
    for service in services {
        for version in migrate::run(db, service.as_str(), service.migrations()).await? {
            applied.push((service.as_str().to_string(), version));
        }
    }
    Ok(applied)
}

/// The composed application, ready to serve.
pub struct App {
    pub router: Router,
    /// `/metrics` alone, to serve on `server.metrics_listen` (`None`: it is in `router`).
    pub metrics: Option<Router>,
    pub auth: Arc<Auth>,
    pub db: Database,
    pub kv: Arc<dyn KeyValueStore>,
    pub bus: Arc<dyn sen_platform::bus::EventBus>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("backend", &self.db.backend())
            .finish_non_exhaustive()
    }
}

fn limits_of(config: &Config) -> HttpLimits {
    HttpLimits {
        body_limit_bytes: config.server.body_limit_bytes,
        request_timeout: Duration::from_secs(config.server.request_timeout_secs),
    }
}

/// Connects the infrastructure and composes `services`. Migrations run first when
/// `migrate` is set (or always on SQLite); otherwise pending migrations stop start-up.
pub async fn build(
    config: &Config,
    services: &[ServiceName],
    migrate: bool,
) -> anyhow::Result<App> {
    let db = Database::connect(config).await.context("database")?;
    let auto_migrate = migrate
        || db.backend() == Backend::Sqlite
        || config.database.migrate_on_start == Some(true);
    if auto_migrate {
        for (service, version) in migrate_all(&db, services).await? {
            tracing::info!(service, version, "applied migration");
        }
    } else {
        for service in services {
            let pending = migrate::pending(&db, service.as_str(), service.migrations()).await?;
            if !pending.is_empty() {
                anyhow::bail!(
                    "the database has {} pending migration(s) for service {}: run `sen migrate` \
                     (or start with `sen serve --migrate`)",
                    pending.len(),
                    service.as_str()
                );
            }
        }
    }
    let redis_url = config.redis.url.as_ref().map(|u| u.expose().to_string());
    let kv = kv::connect(redis_url.as_deref(), "sen")
        .await
        .context("key-value store")?;
    let bus = sen_platform::bus::connect(redis_url.as_deref(), "sen")
        .await
        .context("event bus")?;

    let limiter = Arc::new(RateLimiter::new(&config.rate_limit, kv.clone()));
    let auth = Arc::new(
        Auth::from_config(config)
            .context("auth")?
            .with_limiter(limiter.clone()),
    );
    let mut router = auth.router();
    // The EHR's routes, for services of this process that read and write records.
    let mut ehr_routes = None;
    for service in services {
        router = match service {
            ServiceName::Ehr => {
                let ehr = sen_ehr::Ehr::new(
                    db.clone(),
                    config.fhir.clone(),
                    config.server.public_url.clone(),
                )
                .context("FHIR profiles")?;
                let routes = ehr.router(auth.clone());
                ehr_routes = Some(routes.clone());
                router.merge(routes)
            }
            ServiceName::Telehealth => router,
        };
    }
    if services.contains(&ServiceName::Telehealth) {
        let fhir = match (&config.telehealth.fhir_url, ehr_routes) {
            (Some(url), _) => FhirClient::remote(url).context("telehealth.fhir_url")?,
            (None, Some(routes)) => FhirClient::in_process(routes),
            (None, None) => anyhow::bail!(
                "the telehealth service reads appointments from the EHR: run it with the ehr \
                 service (--services ehr,telehealth) or set telehealth.fhir_url \
                 (SEN_TELEHEALTH_FHIR_URL)"
            ),
        };
        let telehealth =
            sen_telehealth::Telehealth::new(config, kv.clone(), bus.clone(), fhir, auth.clone())
                .context("telehealth")?;
        router = router.merge(telehealth.router(auth.clone()));
    }
    let readiness_kv = config.redis.url.as_ref().map(|_| kv.clone());
    router = router.merge(sen_platform::health::router(db.clone(), readiness_kv));
    let pool_db = db.clone();
    let collect_pool: GaugeCollector = Arc::new(move || {
        let (open, idle) = pool_db.pool_usage();
        metrics::gauge!("db_pool_connections", "state" => "open").set(f64::from(open));
        metrics::gauge!("db_pool_connections", "state" => "idle").set(idle as f64);
    });
    let metrics = metrics_router(vec![collect_pool]);
    // On its own address when configured (an internal interface), else beside the API.
    let metrics = match config.server.metrics_listen {
        Some(_) => Some(layered(metrics, &limits_of(config))),
        None => {
            router = router.merge(metrics);
            None
        }
    };
    let limits = limits_of(config);
    // Outside the services' routes (so unauthenticated floods count too), inside the
    // platform's stack (so a refusal still gets its request id and OperationOutcome form).
    let router = router.layer(axum::middleware::from_fn_with_state(
        limiter,
        sen_platform::ratelimit::limit_addresses,
    ));
    Ok(App {
        router: layered(router, &limits),
        metrics,
        auth,
        db,
        kv,
        bus,
    })
}
