//! The HTTP layer stack every service shares, and the server loop with graceful shutdown.
//!
//! Order matters and is fixed here once: request id outermost (so every log line and every
//! error body can name it), then the span, metrics, the rewriting of bare errors into
//! OperationOutcomes, panic catching, the timeout and the body limit.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::{HeaderName, HeaderValue, StatusCode, header};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
};
use tracing::Instrument;

use crate::{
    error::{FHIR_JSON, IssueCode, OperationOutcome, OutcomeIssue, outcome_response},
    telemetry::{GaugeCollector, prometheus},
};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
}

/// Wraps `router` (all services, composed) in the shared layer stack.
pub fn layered(router: Router, limits: &HttpLimits) -> Router {
    let timeout = limits.request_timeout;
    router
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(middleware::from_fn_with_state(timeout, enforce_timeout))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                // The panic message may hold anything; it is not logged verbatim.
                tracing::error!("a request handler panicked");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            },
        ))
        .layer(middleware::from_fn(outcome_for_bare_errors))
        .layer(middleware::from_fn(observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
}

/// A caller's `x-request-id` is kept only when it is a short token; anything else (long, or
/// with characters that could carry data into logs) is replaced by a fresh UUID.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if !usable {
        request.headers_mut().remove(REQUEST_ID);
    }
    next.run(request).await
}

async fn route_not_found() -> Response {
    let outcome = OperationOutcome::new(vec![OutcomeIssue::error(
        IssueCode::NotFound,
        "no such endpoint; the FHIR API is under /fhir (see /fhir/metadata)",
    )]);
    outcome_response(StatusCode::NOT_FOUND, &outcome)
}

async fn enforce_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let outcome = OperationOutcome::new(vec![OutcomeIssue::error(
                IssueCode::Timeout,
                format!(
                    "the request took longer than {} s and was abandoned",
                    timeout.as_secs()
                ),
            )]);
            let mut response = outcome_response(StatusCode::SERVICE_UNAVAILABLE, &outcome);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

fn request_id_of(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("unknown")
        .to_string()
}

/// One span and one metrics sample per request, labelled by route template.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let request_id = request_id_of(&request);
    let span = tracing::info_span!(
        "request",
        http.method = %method,
        http.route = %route,
        request_id = %request_id,
        http.status = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.status", status);
    let elapsed = started.elapsed().as_secs_f64();
    crate::telemetry::record_request(&method, &route, status, elapsed);
    if response.status().is_server_error() {
        span.in_scope(|| tracing::error!(status, "request failed"));
    } else {
        span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed * 1000.0, "request done"));
    }
    response
}

/// Every 4xx/5xx leaves as an OperationOutcome: bodies of framework rejections (body too large,
/// wrong method, …) are replaced, and every 5xx body is reduced to "internal error" and the
/// request id, whatever produced it.
async fn outcome_for_bare_errors(request: Request, next: Next) -> Response {
    let request_id = request_id_of(&request);
    let response = next.run(request).await;
    let status = response.status();
    if status.is_server_error() {
        let diagnostics = if status == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key(header::RETRY_AFTER)
        {
            format!("service temporarily unavailable; retry later (request id {request_id})")
        } else {
            format!("internal error (request id {request_id})")
        };
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            IssueCode::Transient
        } else {
            IssueCode::Exception
        };
        return with_outcome(response, code, diagnostics);
    }
    if !status.is_client_error() {
        return response;
    }
    let is_outcome = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"));
    if is_outcome {
        return response;
    }
    let (code, diagnostics) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            IssueCode::TooLong,
            "request body is larger than the configured limit".to_string(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            IssueCode::NotSupported,
            "this endpoint does not support that HTTP method".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            IssueCode::NotSupported,
            "unsupported media type; send application/fhir+json".to_string(),
        ),
        StatusCode::NOT_FOUND => (IssueCode::NotFound, "not found".to_string()),
        StatusCode::REQUEST_TIMEOUT => (
            IssueCode::Timeout,
            "the request body arrived too slowly".to_string(),
        ),
        StatusCode::UNAUTHORIZED => (IssueCode::Login, "authentication required".to_string()),
        StatusCode::FORBIDDEN => (IssueCode::Forbidden, "forbidden".to_string()),
        StatusCode::TOO_MANY_REQUESTS => (IssueCode::Throttled, "too many requests".to_string()),
        other => (
            IssueCode::Invalid,
            format!(
                "request rejected: {}",
                other.canonical_reason().unwrap_or("client error")
            ),
        ),
    };
    with_outcome(response, code, diagnostics)
}

/// `response` with its status and headers kept and its body replaced by an OperationOutcome.
fn with_outcome(response: Response, code: IssueCode, diagnostics: String) -> Response {
    let (mut parts, _) = response.into_parts();
    let body = OperationOutcome::new(vec![OutcomeIssue::error(code, diagnostics)]).to_json();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// `/metrics` in Prometheus text format; `collectors` refresh gauges before each scrape.
pub fn metrics_router(collectors: Vec<GaugeCollector>) -> Router {
    let handle = prometheus();
    let collectors = Arc::new(collectors);
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            let collectors = collectors.clone();
            async move {
                for collect in collectors.iter() {
                    collect();
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (up to `grace`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop_rx = stop_rx;
    let watchdog = async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(grace).await;
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
    };
    tokio::select! {
        result = server.into_future() => result,
        () = watchdog => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn app(timeout: Duration) -> Router {
        let router = Router::new()
            .route("/slow", get(std::future::pending::<&'static str>))
            .route(
                "/panics",
                get(|| async { panic!("boom with a secret") as &'static str }),
            )
            .route("/ok", get(|| async { "ok" }));
        layered(
            router,
            &HttpLimits {
                body_limit_bytes: 1024,
                request_timeout: timeout,
            },
        )
    }

    async fn call(router: Router, path: &str) -> (StatusCode, HeaderMap, String) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    use http::HeaderMap;

    #[tokio::test]
    async fn a_request_past_the_timeout_gets_503_with_retry_after() {
        // The handler never finishes; only the timeout can answer.
        let (status, headers, body) = call(app(Duration::from_millis(50)), "/slow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(
            body.contains("OperationOutcome") && body.contains("retry later"),
            "{body}"
        );
        let request_id = headers[REQUEST_ID].to_str().unwrap();
        assert!(body.contains(request_id), "{body}");
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_500_naming_only_the_request_id() {
        let (status, headers, body) = call(app(Duration::from_secs(30)), "/panics").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let request_id = headers[REQUEST_ID].to_str().unwrap();
        assert!(
            body.contains(&format!("internal error (request id {request_id})")),
            "{body}"
        );
        assert!(!body.contains("secret") && !body.contains("boom"), "{body}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/fhir+json")
        );
    }

    #[tokio::test]
    async fn a_client_request_id_is_kept_and_one_is_made_when_absent() {
        let request = Request::builder()
            .uri("/ok")
            .header(REQUEST_ID, "abc-123")
            .body(Body::empty())
            .unwrap();
        let response = app(Duration::from_secs(30)).oneshot(request).await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID], "abc-123");
        let (status, headers, _) = call(app(Duration::from_secs(30)), "/ok").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[REQUEST_ID].to_str().unwrap().len(), 36);
        let request = Request::builder()
            .uri("/ok")
            .header(REQUEST_ID, "Nguyen Van An 087090001234")
            .body(Body::empty())
            .unwrap();
        let response = app(Duration::from_secs(30)).oneshot(request).await.unwrap();
        let replaced = response.headers()[REQUEST_ID].to_str().unwrap();
        assert_eq!(
            replaced.len(),
            36,
            "an unusable request id is replaced: {replaced}"
        );
    }
}
