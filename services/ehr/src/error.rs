//! Errors of the FHIR engine, mapped to HTTP in one exhaustive `match`.

use http::StatusCode;
use sen_platform::{ApiError, IssueCode, OutcomeIssue};

#[derive(Debug, thiserror::Error)]
pub enum EhrError {
    #[error("invalid resource: {message}")]
    Invalid {
        message: String,
        expression: Option<String>,
    },
    #[error("unknown resource type")]
    UnknownType { name: String },
    #[error("the resource does not conform to a profile")]
    ProfileViolation {
        problems: Vec<crate::validation::Problem>,
    },
    #[error("the resource does not conform to its R4 definition")]
    Nonconformant {
        problems: Vec<crate::validation::Problem>,
    },
    /// Circular 30/2023/TT-BYT: a remote examination's diagnosis outside the list.
    #[error("the condition may not be examined remotely")]
    NotRemoteEligible { message: String },
    #[error("unknown resource type in the URL")]
    UnknownEndpointType { name: String },
    #[error("resource type in the body differs from the URL")]
    TypeMismatch {
        url: &'static str,
        body: &'static str,
    },
    #[error("id in the body differs from the URL")]
    IdMismatch,
    #[error("update without an id in the body")]
    IdMissing,
    #[error("invalid id in the URL")]
    InvalidId,
    #[error("resource not found")]
    NotFound {
        resource_type: &'static str,
        id: String,
    },
    #[error("version not found")]
    VersionNotFound {
        resource_type: &'static str,
        id: String,
        version: String,
    },
    #[error("resource deleted")]
    Gone {
        resource_type: &'static str,
        id: String,
        version: i64,
    },
    #[error("version conflict")]
    VersionConflict {
        expected: String,
        current: Option<i64>,
    },
    #[error("malformed If-Match")]
    BadIfMatch,
    #[error("conditional request matched several resources")]
    MultipleMatches { count: usize },
    #[error("unsupported search parameter in a conditional request")]
    UnsupportedCriteria { parameter: String },
    #[error("invalid parameter")]
    BadParameter { name: &'static str, message: String },
    #[error("unsupported format")]
    NotAcceptable { format: String },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("malformed patch")]
    PatchMalformed { message: String },
    #[error("patch does not apply")]
    PatchFailed { message: String },
    #[error("patch changes resourceType or id")]
    PatchChangesIdentity,
    #[error("audit records are permanent")]
    AuditPermanent,
    #[error("unsupported patch format")]
    PatchFormat,
    #[error("too many Bundle entries")]
    TooManyEntries { count: usize, max: usize },
    #[error("concurrent modification, retries exhausted")]
    Contention,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// One validation problem as an OperationOutcome issue.
pub fn problem_issue(p: &crate::validation::Problem) -> OutcomeIssue {
    use crate::validation::{ProblemKind, Severity};
    let code = match p.kind {
        ProblemKind::Structure => IssueCode::Structure,
        ProblemKind::Required => IssueCode::Required,
        ProblemKind::Value => IssueCode::Value,
        ProblemKind::Invariant => IssueCode::Invariant,
    };
    let issue = match p.severity {
        Severity::Error => OutcomeIssue::error(code, p.message.clone()),
        Severity::Warning => OutcomeIssue::warning(code, p.message.clone()),
    };
    issue.at(p.expression.clone())
}

impl From<EhrError> for ApiError {
    fn from(error: EhrError) -> Self {
        use EhrError as E;
        use StatusCode as S;
        match error {
            E::Invalid {
                message,
                expression,
            } => {
                let mut issue = OutcomeIssue::error(IssueCode::Invalid, message);
                issue.expression.extend(expression);
                ApiError::with_issues(S::BAD_REQUEST, vec![issue])
            }
            E::Nonconformant { problems } => {
                const SHOWN: usize = 100;
                let mut issues: Vec<OutcomeIssue> =
                    problems.iter().take(SHOWN).map(problem_issue).collect();
                if problems.len() > SHOWN {
                    issues.push(OutcomeIssue::error(
                        IssueCode::TooCostly,
                        format!("{} more problems not listed", problems.len() - SHOWN),
                    ));
                }
                ApiError::with_issues(S::BAD_REQUEST, issues)
            }
            E::ProfileViolation { problems } => ApiError::with_issues(
                S::UNPROCESSABLE_ENTITY,
                problems.iter().take(100).map(problem_issue).collect(),
            ),
            E::UnknownType { name } => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::NotSupported,
                format!("{name:?} is not an R4 resource type (see /fhir/metadata)"),
            )
            .at("resourceType"),
            E::UnknownEndpointType { name } => ApiError::new(
                S::NOT_FOUND,
                IssueCode::NotSupported,
                format!("{name:?} is not an R4 resource type (see /fhir/metadata)"),
            ),
            E::TypeMismatch { url, body } => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                format!(
                    "the body is {} {body} but the URL is for {url}",
                    article(body)
                ),
            )
            .at("resourceType"),
            E::IdMismatch => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                "the id in the body differs from the id in the URL",
            )
            .at("id"),
            E::IdMissing => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Required,
                "an update must carry the resource's id in the body, equal to the id in the URL",
            )
            .at("id"),
            E::InvalidId => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                "the id in the URL is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')",
            ),
            E::NotFound { resource_type, id } => {
                ApiError::not_found(format!("{resource_type}/{id} does not exist"))
            }
            E::VersionNotFound {
                resource_type,
                id,
                version,
            } => ApiError::not_found(format!("{resource_type}/{id} has no version {version}")),
            E::Gone {
                resource_type,
                id,
                version,
            } => ApiError::new(
                S::GONE,
                IssueCode::Deleted,
                format!("{resource_type}/{id} was deleted (version {version})"),
            ),
            E::VersionConflict { expected, current } => ApiError::new(
                S::PRECONDITION_FAILED,
                IssueCode::Conflict,
                match current {
                    Some(v) => format!(
                        "If-Match asked for version {expected} but the current version is {v}"
                    ),
                    None => format!(
                        "If-Match asked for version {expected} but the resource does not exist"
                    ),
                },
            ),
            E::BadIfMatch => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                "If-Match must be an ETag such as W/\"3\"",
            ),
            E::MultipleMatches { count } => ApiError::new(
                S::PRECONDITION_FAILED,
                IssueCode::MultipleMatches,
                format!("the condition matched {count} resources; it must match at most one"),
            ),
            E::UnsupportedCriteria { parameter } => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::NotSupported,
                format!(
                    "conditional requests support the parameters identifier and _id; {parameter:?} is not supported"
                ),
            ),
            E::BadParameter { name, message } => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                format!("{name}: {message}"),
            ),
            E::NotAcceptable { format } => ApiError::new(
                S::NOT_ACCEPTABLE,
                IssueCode::NotSupported,
                format!("format {format:?} is not supported; Sen serves application/fhir+json"),
            ),
            E::UnsupportedMediaType => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                IssueCode::NotSupported,
                "send the resource as application/fhir+json (or application/json)",
            ),
            E::PatchMalformed { message } => ApiError::new(
                S::BAD_REQUEST,
                IssueCode::Invalid,
                format!("the JSON Patch document is malformed: {message}"),
            ),
            E::PatchFailed { message } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, IssueCode::Processing, message)
            }
            E::AuditPermanent => ApiError::new(
                S::METHOD_NOT_ALLOWED,
                IssueCode::NotSupported,
                "an AuditEvent is a permanent record of access: it can be created and read, \
                 never updated or deleted",
            )
            .header(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            ),
            E::PatchChangesIdentity => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                IssueCode::Processing,
                "a patch may not change the resource's resourceType or id",
            ),
            E::PatchFormat => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                IssueCode::NotSupported,
                "send JSON Patch as application/json-patch+json, or FHIRPath Patch (a \
                 Parameters resource) as application/fhir+json",
            ),
            E::TooManyEntries { count, max } => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                IssueCode::TooLong,
                format!(
                    "the Bundle has {count} entries; this server accepts at most {max} \
                     (fhir.max_bundle_entries); split it into several Bundles"
                ),
            )
            .at("Bundle.entry"),
            E::NotRemoteEligible { message } => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                IssueCode::BusinessRule,
                message.clone(),
            ),
            E::Contention => ApiError::new(
                S::CONFLICT,
                IssueCode::Conflict,
                "the resource is being modified concurrently; retry the request",
            ),
            // Every connection busy for the whole acquire timeout: overload, not a fault.
            E::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("database pool exhausted; answering 503");
                retry_later("the server is busy; retry shortly", "2")
            }
            // The connection to the database broke (a network cut; PostgreSQL shutting down,
            // restarted or terminating the backend: class 57P): that connection leaves the
            // pool; a retry gets another.
            E::Database(e)
                if matches!(e, sqlx::Error::Io(_))
                    || matches!(&e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P"))) =>
            {
                tracing::warn!(error = %db_error_kind(&e), "database connection lost; answering 503");
                retry_later("the database connection was lost; retry the request", "1")
            }
            // A read stopped at the statement timeout: PostgreSQL's query_canceled, SQLite's
            // SQLITE_INTERRUPT (its progress handler, see `Database::sqlite_bounded_read`).
            E::Database(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("57014") | Some("9")) =>
            {
                ApiError::new(
                    S::BAD_REQUEST,
                    IssueCode::TooCostly,
                    "the query ran past the server's statement timeout; narrow it (fewer \
                     alternatives, a more selective parameter, a smaller _count)",
                )
            }
            E::Database(e) => ApiError::internal(&db_error_kind(&e)),
        }
    }
}

/// 503 with `Retry-After: seconds`: a passing condition, not a fault of the request.
fn retry_later(message: &str, seconds: &'static str) -> ApiError {
    ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        IssueCode::Transient,
        message.to_string(),
    )
    .header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static(seconds),
    )
}

/// "a" or "an" before a resource type name.
fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

/// What a database error may say in a log: its kind, code and constraint, never its message,
/// which PostgreSQL fills with the offending values (`Key (id)=(…) already exists`).
pub(crate) fn db_error_kind(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => format!(
            "database error (code {}, constraint {})",
            e.code().as_deref().unwrap_or("none"),
            e.constraint().unwrap_or("none")
        ),
        sqlx::Error::PoolTimedOut => "database pool timed out".into(),
        sqlx::Error::PoolClosed => "database pool closed".into(),
        sqlx::Error::Io(e) => format!("database I/O error ({})", e.kind()),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode database column {index}"),
        sqlx::Error::RowNotFound => "database row not found".into(),
        _ => "database error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_pool_is_a_503_with_retry_after() {
        let api: ApiError = EhrError::Database(sqlx::Error::PoolTimedOut).into();
        assert_eq!(api.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            api.headers
                .iter()
                .any(|(name, _)| name == http::header::RETRY_AFTER)
        );
    }

    #[test]
    fn database_errors_are_described_without_their_message() {
        let described = db_error_kind(&sqlx::Error::Protocol("value 087090001234 rejected".into()));
        assert!(!described.contains("087090001234"), "{described}");
        assert_eq!(
            db_error_kind(&sqlx::Error::PoolTimedOut),
            "database pool timed out"
        );
    }
}
