//! The error model: every error any service returns is a FHIR `OperationOutcome`.
//!
//! Services define their own `thiserror` enums and convert them into [`ApiError`] in one
//! exhaustive `match`; `ApiError` carries the HTTP status and the outcome's issues. Server
//! errors (5xx) never carry detail: the response body says "internal error" and names the
//! request id, and the detail goes to the log (which never holds patient data either).
//!
//! The outcome is serialised with a small local type rather than `fhir-sdk`'s: every crate
//! depends on this one, and `fhir-sdk` costs minutes to compile. The system tests parse these
//! bodies with `fhir-sdk`'s `OperationOutcome` to keep the two in agreement.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Media type of every FHIR JSON body.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// `OperationOutcome.issue.code` (value set `issue-type`), the codes Sen uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    Conflict,
    Exception,
    Timeout,
    TooCostly,
    Throttled,
    Transient,
    /// Not every source answered in time: what is returned may not be complete.
    Incomplete,
    Informational,
    BusinessRule,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeIssue {
    pub severity: IssueSeverity,
    pub code: IssueCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl OutcomeIssue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Error,
            code,
            diagnostics: Some(diagnostics.into()),
            expression: Vec::new(),
        }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Warning,
            ..Self::error(code, diagnostics)
        }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Information,
            code: IssueCode::Informational,
            diagnostics: Some(diagnostics.into()),
            expression: Vec::new(),
        }
    }

    /// Points the issue at an element, as a FHIRPath expression.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }
}

/// A FHIR `OperationOutcome` resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub issue: Vec<OutcomeIssue>,
}

impl OperationOutcome {
    pub fn new(issue: Vec<OutcomeIssue>) -> Self {
        Self {
            resource_type: "OperationOutcome",
            id: None,
            issue,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an OperationOutcome always serialises")
    }
}

/// The one error type handlers return. Build it from a service error with `From`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub issues: Vec<OutcomeIssue>,
    /// Extra response headers (e.g. `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            issues: vec![OutcomeIssue::error(code, diagnostics)],
            headers: Vec::new(),
        }
    }

    pub fn with_issues(status: StatusCode, issues: Vec<OutcomeIssue>) -> Self {
        Self {
            status,
            issues,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueCode::NotFound, diagnostics)
    }

    /// A server-side failure. The cause is logged here, without patient data, and never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueCode::Exception,
            "internal error",
        )
    }

    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The first issue points at this FHIRPath expression.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(first) = self.issues.first_mut() {
            first.expression.push(expression.into());
        }
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self
            .issues
            .first()
            .and_then(|i| i.diagnostics.as_deref())
            .unwrap_or("");
        write!(f, "{}: {first}", self.status)
    }
}

impl std::error::Error for ApiError {}

/// Builds an `OperationOutcome` response with the FHIR JSON media type.
pub fn outcome_response(status: StatusCode, outcome: &OperationOutcome) -> Response {
    let mut response = (status, outcome.to_json()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // 5xx bodies are rewritten with the request id by `http::scrub_server_errors`;
        // this body is what a caller would see if that layer were missing: no detail either.
        let issues = if self.status.is_server_error() {
            vec![OutcomeIssue::error(IssueCode::Exception, "internal error")]
        } else {
            self.issues
        };
        let mut response = outcome_response(self.status, &OperationOutcome::new(issues));
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_serialises_with_kebab_case_codes_and_expressions() {
        let outcome = OperationOutcome::new(vec![
            OutcomeIssue::error(IssueCode::NotSupported, "no").at("Patient.name"),
        ]);
        let json: serde_json::Value = serde_json::from_str(&outcome.to_json()).unwrap();
        assert_eq!(json["resourceType"], "OperationOutcome");
        assert_eq!(json["issue"][0]["code"], "not-supported");
        assert_eq!(json["issue"][0]["expression"][0], "Patient.name");
    }

    #[test]
    fn a_server_error_response_never_carries_its_diagnostics() {
        let error = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueCode::Exception,
            "secret",
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 16));
        let body = String::from_utf8(body.unwrap().to_vec()).unwrap();
        assert!(!body.contains("secret"), "{body}");
    }
}
