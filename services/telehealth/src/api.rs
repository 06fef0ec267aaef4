//! The HTTP surface under `/telehealth/v1`: thin handlers over [`crate::rooms`]. Every route
//! needs a valid bearer token (the platform's check); the records behind a room are read
//! with that same token.
//!
//! - `POST /telehealth/v1/rooms` `{"appointment": "Appointment/ID"}` → 201 (or 200: the
//!   appointment's room was open already) with the room;
//! - `GET /telehealth/v1/rooms/{room}` → the room;
//! - `POST /telehealth/v1/rooms/{room}/tokens` `{}` or `{"invite": "interpreter"|"family"}`
//!   → 201 with a join grant, its ICE servers and the signaling path;
//! - `GET /openapi.json` → the OpenAPI 3.1 document of these routes (`api/openapi.json`).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use sen_platform::{
    auth::{Auth, Principal},
    fhir_client::Caller,
    http::REQUEST_ID,
    ratelimit::ClientAddress,
};
use serde::de::DeserializeOwned;

use crate::{
    Telehealth,
    error::{Result, TelehealthError},
    rooms::{GrantAsked, OpenRoom},
};

pub(crate) fn router(service: Arc<Telehealth>, auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/telehealth/v1/rooms", post(room_open))
        .route("/telehealth/v1/rooms/{room}", get(room_read))
        .route("/telehealth/v1/rooms/{room}/tokens", post(grant_issue))
        .route("/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            sen_platform::auth::require_token,
        ))
        // The signaling socket authenticates with its join grant (a browser's WebSocket
        // cannot carry an Authorization header).
        .route("/telehealth/v1/ws", get(crate::signaling::upgrade))
        // The browser client: static, holding no data (a page opened from a link carries no
        // bearer header either); what it does, it does with the grant in its fragment.
        .route("/consult/{room}", get(consult_page))
        .route("/consult/assets/consult.js", get(consult_script))
        .with_state(service)
}

/// Who the request is for, as the FHIR requests made for it carry it on: the bearer token
/// (present: the token check ran first), the request id and the client address.
fn caller<'a>(headers: &'a HeaderMap, address: Option<&ClientAddress>) -> Caller<'a> {
    Caller {
        bearer: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .map(|(_, token)| token.trim())
            .unwrap_or_default(),
        request_id: headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()),
        address: address.map(|a| a.0),
    }
}

/// A JSON body of shape `T` (an empty body is `{}`), or a 400 saying what was expected.
fn body<T: DeserializeOwned>(bytes: &Bytes, expected: &str) -> Result<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // serde's message may quote the input; only its line and column are shown.
    serde_json::from_slice(bytes).map_err(|e| {
        TelehealthError::BadRequest(format!(
            "the body must be JSON like {expected} (problem at line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

const CONSULT_PAGE: &str = include_str!("../web/consult.html");
const CONSULT_SCRIPT: &str = include_str!("../web/consult.js");

/// What the consultation page may load and where it may connect: itself only.
const CONSULT_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
    connect-src 'self'; media-src 'self' blob: mediastream:; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn consult_page(Path(room): Path<String>) -> Response {
    if !crate::rooms::is_fhir_id(&room) {
        return TelehealthError::NotFound("no consultation room of that name".into())
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONSULT_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        CONSULT_PAGE,
    )
        .into_response()
}

async fn consult_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CONSULT_SCRIPT,
    )
        .into_response()
}

/// The OpenAPI document of the JSON APIs (telehealth's, the only one so far).
const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn room_open(
    State(service): State<Arc<Telehealth>>,
    axum::Extension(principal): axum::Extension<Principal>,
    address: Option<axum::Extension<ClientAddress>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response> {
    let asked: OpenRoom = body(&bytes, r#"{"appointment": "Appointment/ID"}"#)?;
    let (room, new) = service
        .room_open(&principal, &caller(&headers, address.as_deref()), asked)
        .await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = room.tokens.trim_end_matches("/tokens").to_string();
    Ok((status, [(header::LOCATION, location)], Json(room)).into_response())
}

async fn room_read(
    State(service): State<Arc<Telehealth>>,
    address: Option<axum::Extension<ClientAddress>>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response> {
    Ok(Json(
        service
            .room_read(&caller(&headers, address.as_deref()), &room)
            .await?,
    )
    .into_response())
}

async fn grant_issue(
    State(service): State<Arc<Telehealth>>,
    axum::Extension(principal): axum::Extension<Principal>,
    address: Option<axum::Extension<ClientAddress>>,
    headers: HeaderMap,
    Path(room): Path<String>,
    bytes: Bytes,
) -> Result<Response> {
    let asked: GrantAsked = body(&bytes, r#"{} or {"invite": "interpreter"}"#)?;
    let issued = service
        .grant_issue(
            &principal,
            &caller(&headers, address.as_deref()),
            &room,
            asked,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(issued),
    )
        .into_response())
}
