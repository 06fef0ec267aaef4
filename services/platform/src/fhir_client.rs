//! How services other than the EHR read and write health records: through the FHIR REST API,
//! with the caller's own bearer token, so that tokens, scopes, organization rules, consent and
//! the access record apply to a service's requests exactly as to the user's own. Two
//! transports behind one client:
//! - **in process**: the EHR's router called directly (one `sen serve` running both
//!   services): no socket, no serialisation beyond the JSON bodies;
//! - **remote**: HTTP to the EHR's base URL (services deployed apart).

use std::time::Duration;

use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Longest a FHIR request of a service waits for its answer, in process or remote.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What a FHIR request answered, other than success.
#[derive(Debug, thiserror::Error)]
pub enum FhirClientError {
    /// The EHR refused or failed the request: its status and the first issue's diagnostics
    /// (an OperationOutcome's text holds no record content).
    #[error("the FHIR API answered {status}: {diagnostics}")]
    Status {
        status: StatusCode,
        diagnostics: String,
    },
    /// The EHR could not be reached or answered something that is not FHIR JSON.
    #[error("the FHIR API is unavailable: {0}")]
    Unavailable(String),
}

impl FhirClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            FhirClientError::Status { status, .. } => Some(*status),
            FhirClientError::Unavailable(_) => None,
        }
    }
}

#[derive(Clone)]
enum Transport {
    InProcess(Router),
    Remote { base: String, http: reqwest::Client },
}

/// A FHIR REST client for services.
#[derive(Clone)]
pub struct FhirClient {
    transport: Transport,
}

impl std::fmt::Debug for FhirClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            Transport::InProcess(_) => f.write_str("FhirClient(in process)"),
            Transport::Remote { base, .. } => write!(f, "FhirClient({base})"),
        }
    }
}

/// Who a service's FHIR request is made for: the user's token, and what ties the request to
/// the user's own (its request id, its client address) in the access record.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub bearer: &'a str,
    pub request_id: Option<&'a str>,
    pub address: Option<std::net::IpAddr>,
}

/// A FHIR answer: status, headers (`ETag`, `Location`) and the resource.
#[derive(Debug)]
pub struct FhirResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl FhirClient {
    /// Calls `router` (the EHR's routes, without the HTTP server around them) directly.
    pub fn in_process(router: Router) -> Self {
        Self {
            transport: Transport::InProcess(router),
        }
    }

    /// Calls the FHIR API at `base` (`https://ehr.internal/fhir`).
    pub fn remote(base: &str) -> Result<Self, FhirClientError> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| FhirClientError::Unavailable(e.to_string()))?;
        Ok(Self {
            transport: Transport::Remote {
                base: base.trim_end_matches('/').to_string(),
                http,
            },
        })
    }

    /// `GET [type]/[id]`: the resource, or `None` when it does not exist for this caller
    /// (404 or 410).
    pub async fn read(
        &self,
        caller: &Caller<'_>,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Value>, FhirClientError> {
        let path = format!("/{resource_type}/{id}");
        match self.send(caller, Method::GET, &path, None, &[]).await {
            Ok(r) => Ok(Some(r.body)),
            Err(e) if matches!(e.status(), Some(StatusCode::NOT_FOUND | StatusCode::GONE)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `POST [type]`, conditional when `if_none_exist` is given (then an existing match is
    /// answered instead, 200).
    pub async fn create(
        &self,
        caller: &Caller<'_>,
        resource: &Value,
        if_none_exist: Option<&str>,
    ) -> Result<FhirResponse, FhirClientError> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut headers = vec![("prefer", "return=representation")];
        headers.extend(if_none_exist.map(|q| ("if-none-exist", q)));
        self.send(
            caller,
            Method::POST,
            &format!("/{resource_type}"),
            Some(resource),
            &headers,
        )
        .await
    }

    /// `PUT [type]/[id]`, with `If-Match` when a version is given.
    pub async fn update(
        &self,
        caller: &Caller<'_>,
        resource: &Value,
        if_match: Option<&str>,
    ) -> Result<FhirResponse, FhirClientError> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let tag = if_match.map(|v| format!("W/\"{v}\""));
        let mut headers = vec![("prefer", "return=representation")];
        headers.extend(tag.as_deref().map(|t| ("if-match", t)));
        self.send(
            caller,
            Method::PUT,
            &format!("/{resource_type}/{id}"),
            Some(resource),
            &headers,
        )
        .await
    }

    async fn send(
        &self,
        caller: &Caller<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<FhirResponse, FhirClientError> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()));
        let (status, headers, bytes) = match &self.transport {
            Transport::InProcess(router) => {
                let mut request = Request::builder()
                    .method(method)
                    .uri(format!("/fhir{path}"))
                    .header(header::ACCEPT, "application/fhir+json")
                    .header(header::AUTHORIZATION, format!("Bearer {}", caller.bearer));
                if let Some(id) = caller.request_id {
                    request = request.header(crate::http::REQUEST_ID, id);
                }
                if let Some(address) = caller.address {
                    request = request.extension(crate::ratelimit::ClientAddress(address));
                }
                if body.is_some() {
                    request = request.header(header::CONTENT_TYPE, "application/fhir+json");
                }
                for (name, value) in extra {
                    request = request.header(*name, *value);
                }
                let request = request
                    .body(body.map(Body::from).unwrap_or_else(Body::empty))
                    .map_err(|e| FhirClientError::Unavailable(e.to_string()))?;
                // The same bound as a remote call's: a service's request never waits on the
                // EHR for longer (no HTTP server's timeout stands in front of it here).
                let response = tokio::time::timeout(TIMEOUT, router.clone().oneshot(request))
                    .await
                    .map_err(|_| FhirClientError::Unavailable("no answer in time".into()))?
                    .map_err(|e| FhirClientError::Unavailable(e.to_string()))?;
                let (parts, body) = response.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| FhirClientError::Unavailable(e.to_string()))?
                    .to_bytes();
                (parts.status, parts.headers, bytes)
            }
            Transport::Remote { base, http } => {
                let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
                    .map_err(|e| FhirClientError::Unavailable(e.to_string()))?;
                let mut request = http
                    .request(method, format!("{base}{path}"))
                    .header("accept", "application/fhir+json")
                    .bearer_auth(caller.bearer);
                if let Some(id) = caller.request_id {
                    request = request.header("x-request-id", id);
                }
                if let Some(body) = body {
                    request = request
                        .header("content-type", "application/fhir+json")
                        .body(body);
                }
                for (name, value) in extra {
                    request = request.header(*name, *value);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| FhirClientError::Unavailable(e.without_url().to_string()))?;
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let mut headers = HeaderMap::new();
                for (name, value) in response.headers() {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.as_str().as_bytes()),
                        HeaderValue::from_bytes(value.as_bytes()),
                    ) {
                        headers.append(name, value);
                    }
                }
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| FhirClientError::Unavailable(e.without_url().to_string()))?;
                (status, headers, bytes)
            }
        };
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                FhirClientError::Unavailable(format!("a {status} answer that is not JSON"))
            })?
        };
        if !status.is_success() {
            let diagnostics = body
                .pointer("/issue/0/diagnostics")
                .and_then(Value::as_str)
                .unwrap_or("no diagnostics")
                .to_string();
            return Err(FhirClientError::Status {
                status,
                diagnostics,
            });
        }
        Ok(FhirResponse {
            status,
            headers,
            body,
        })
    }
}
