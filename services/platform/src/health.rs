//! `/health/live` (the process answers) and `/health/ready` (its dependencies answer).

use std::sync::Arc;

use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use http::StatusCode;
use serde_json::json;

use crate::{db::Database, kv::KeyValueStore};

#[derive(Clone, Debug)]
struct Deps {
    db: Database,
    kv: Option<Arc<dyn KeyValueStore>>,
}

/// Health routes. `kv` is checked only when it is Redis: memory is always there.
pub fn router(db: Database, kv: Option<Arc<dyn KeyValueStore>>) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "up"})) }),
        )
        .route("/health/ready", get(ready))
        .with_state(Deps { db, kv })
}

async fn ready(State(deps): State<Deps>) -> impl IntoResponse {
    let database = match deps.db.ping().await {
        Ok(()) => "up",
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            "down"
        }
    };
    let kv = match &deps.kv {
        Some(kv) => match kv.ping().await {
            Ok(()) => kv.kind(),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: key-value store unreachable");
                "down"
            }
        },
        None => "not configured",
    };
    let up = database == "up" && kv != "down";
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if up { "up" } else { "down" },
        "checks": {"database": database, "database_backend": deps.db.backend().as_str(), "kv": kv},
    });
    let retry = [(http::header::RETRY_AFTER, "5")];
    (status, retry, Json(body))
}
