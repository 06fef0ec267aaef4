//! Sen platform: everything a service needs that is not business logic.
//!
//! Configuration, the error model (every error is a FHIR `OperationOutcome`), request ids,
//! telemetry (tracing, Prometheus, OpenTelemetry), database pools (SQLite or PostgreSQL behind
//! one code path), the key-value store (Redis or memory), health endpoints, the HTTP layer stack
//! and graceful shutdown. Services build on it and never on each other.

pub mod auth;
pub mod bus;
pub mod config;
pub mod db;
pub mod error;
pub mod fhir_client;
pub mod health;
pub mod http;
pub mod kv;
pub mod migrate;
pub mod ratelimit;
pub mod shutdown;
pub mod telemetry;
pub mod testing;

pub use config::Config;
pub use db::{Backend, Database};
pub use error::{ApiError, IssueCode, IssueSeverity, OperationOutcome, OutcomeIssue};

/// Whole seconds since the Unix epoch (token times, rate-limit windows); 0 if the clock is
/// set before 1970.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Microseconds since the Unix epoch (0 before it).
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
