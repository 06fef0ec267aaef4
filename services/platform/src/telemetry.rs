//! Telemetry: logs and spans with `tracing`, Prometheus metrics, OpenTelemetry over OTLP.
//!
//! Spans and metrics are labelled with route templates (`/fhir/{type}/{id}`), never with the
//! concrete path or query, which may hold identifiers of patients.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetryConfig};

/// Latency buckets in seconds: sub-millisecond reads to multi-second bundles.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Whether OTLP metrics are on; the per-request OTel instrument is skipped otherwise.
static OTLP_METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Handles that must live as long as the process exports telemetry.
#[derive(Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.tracer_provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Flushes what is buffered for export. Called once at shutdown.
    pub fn shutdown(&self) {
        if let Some(provider) = &self.tracer_provider {
            let _ = provider.shutdown();
        }
        if let Some(provider) = &self.meter_provider {
            let _ = provider.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {0:?}")]
    Filter(String),
    #[error("cannot set up OTLP export: {0}")]
    Otlp(String),
}

/// Installs the global subscriber (logs to stderr, spans to OTLP when configured).
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|_| TelemetryError::Filter(config.log_filter.clone()))?;
    let mut telemetry = Telemetry::default();
    let otel_layer = match &config.otlp_endpoint {
        Some(endpoint) => {
            let base = endpoint.trim_end_matches('/');
            let resource = Resource::builder()
                .with_service_name(config.service_name.clone())
                .build();
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/traces"))
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            let tracer_provider = SdkTracerProvider::builder()
                .with_batch_exporter(spans)
                .with_resource(resource.clone())
                .build();
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/metrics"))
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
                .with_interval(Duration::from_secs(15))
                .build();
            let meter_provider = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_meter_provider(meter_provider.clone());
            OTLP_METRICS.store(true, std::sync::atomic::Ordering::Relaxed);
            let tracer = tracer_provider.tracer("sen");
            telemetry.tracer_provider = Some(tracer_provider);
            telemetry.meter_provider = Some(meter_provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init in one process (tests) keeps the first subscriber.
    let _ = result;
    Ok(telemetry)
}

/// The process-wide Prometheus recorder (one per process, shared by every app in it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Something that refreshes gauges just before a scrape (pool usage, queue depth).
pub type GaugeCollector = Arc<dyn Fn() + Send + Sync>;

/// Records one finished HTTP request in Prometheus and, when configured, OpenTelemetry.
pub fn record_request(method: &str, route: &str, status: u16, seconds: f64) {
    let status = status.to_string();
    let labels = [
        ("method", method.to_string()),
        ("route", route.to_string()),
        ("status", status.clone()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(seconds);

    if !OTLP_METRICS.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    static OTEL: OnceLock<opentelemetry::metrics::Histogram<f64>> = OnceLock::new();
    let histogram = OTEL.get_or_init(|| {
        opentelemetry::global::meter("sen")
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build()
    });
    histogram.record(
        seconds,
        &[
            opentelemetry::KeyValue::new("http.request.method", method.to_string()),
            opentelemetry::KeyValue::new("http.route", route.to_string()),
            opentelemetry::KeyValue::new(
                "http.response.status_code",
                i64::from(status.parse::<u16>().unwrap_or(0)),
            ),
        ],
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, extract::Request};
    use http::StatusCode;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_and_metrics_are_exported_over_otlp_when_an_endpoint_is_set() {
        // A stand-in collector that reports the path of every export it receives.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let collector = Router::new().fallback(move |request: Request| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(request.uri().path().to_string());
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, collector).await });

        let config = TelemetryConfig {
            otlp_endpoint: Some(format!("http://{address}")),
            log_filter: "info".into(),
            ..TelemetryConfig::default()
        };
        let telemetry = init(&config).unwrap();
        tracing::info_span!("probe", http.route = "/fhir/{type}")
            .in_scope(|| tracing::info!("inside"));
        record_request("GET", "/fhir/{type}", 200, 0.002);
        // Shutdown flushes both pipelines; the exporters block, so keep them off the runtime.
        tokio::task::spawn_blocking(move || telemetry.shutdown())
            .await
            .unwrap();

        let mut paths = Vec::new();
        while !(paths.iter().any(|p| p == "/v1/traces") && paths.iter().any(|p| p == "/v1/metrics"))
        {
            let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            paths.push(
                next.expect("an export within 10 s")
                    .expect("collector alive"),
            );
        }
    }
}
