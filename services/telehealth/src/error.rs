//! The service's one error type, mapped to HTTP in one exhaustive `match`. Messages name
//! what is wrong with the request, never the content of a record.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use sen_platform::{ApiError, IssueCode, fhir_client::FhirClientError, kv::KvError};

#[derive(Debug, thiserror::Error)]
pub enum TelehealthError {
    #[error("{0}")]
    BadRequest(String),
    /// The thing does not exist, or the caller may not know it does.
    #[error("{0}")]
    NotFound(String),
    /// The caller knows the room but takes no part in it.
    #[error("{0}")]
    Forbidden(String),
    /// The appointment or consultation is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The appointment lacks what a consultation needs.
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Fhir(#[from] FhirClientError),
    #[error(transparent)]
    State(#[from] KvError),
    #[error("a join grant could not be signed")]
    Signing,
}

pub type Result<T, E = TelehealthError> = std::result::Result<T, E>;

impl IntoResponse for TelehealthError {
    fn into_response(self) -> Response {
        let error = match self {
            TelehealthError::BadRequest(m) => ApiError::bad_request(IssueCode::Invalid, m),
            TelehealthError::NotFound(m) => ApiError::not_found(m),
            TelehealthError::Forbidden(m) => {
                ApiError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, m)
            }
            TelehealthError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, IssueCode::Conflict, m)
            }
            TelehealthError::Unprocessable(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueCode::Processing, m)
            }
            // The EHR's own refusal of the caller's request stands as it was answered.
            TelehealthError::Fhir(FhirClientError::Status {
                status,
                diagnostics,
            }) if status.is_client_error() => {
                let code = match status {
                    StatusCode::FORBIDDEN => IssueCode::Forbidden,
                    StatusCode::NOT_FOUND => IssueCode::NotFound,
                    StatusCode::TOO_MANY_REQUESTS => IssueCode::Throttled,
                    _ => IssueCode::Processing,
                };
                ApiError::new(
                    status,
                    code,
                    format!("the health record answered: {diagnostics}"),
                )
            }
            TelehealthError::Fhir(e) => {
                tracing::warn!(error = %e, "the FHIR API failed a telehealth request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    "the health record is unavailable; retry shortly",
                )
            }
            TelehealthError::State(e) => {
                tracing::warn!(error = %e, "consultation state unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    "the consultation state is unavailable; retry shortly",
                )
            }
            TelehealthError::Signing => ApiError::internal(&"grant signing failed"),
        };
        error.into_response()
    }
}
