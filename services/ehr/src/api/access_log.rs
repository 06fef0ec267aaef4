//! Middleware: the access record of every request under `/fhir` made with a valid token,
//! refusals included (see [`crate::audit`]), around the access rules ([`super::access`]):
//! one layer, so a request the rules refuse is recorded too, and the answer leaves only once
//! its record is durable.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, StatusCode, header};
use sen_platform::{
    ApiError, IssueCode,
    auth::{Principal, Role},
    http::REQUEST_ID,
    ratelimit::ClientAddress,
};

use crate::{
    Ehr,
    audit::{Agent, Current, Record},
    definitions::Definitions,
    resource::is_valid_id,
};

pub(super) async fn record(State(ehr): State<Arc<Ehr>>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        // The token check runs first and always leaves one: nothing passes without it.
        return sen_platform::auth::forbidden("no principal").into_response();
    };
    let (interaction, action, fallback) =
        describe(request.method(), request.uri().path(), ehr.defs);
    let address = request
        .extensions()
        .get::<ClientAddress>()
        .map(|a| a.0)
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        });
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let current = Current::new(Record {
        request_id,
        interaction: interaction.to_string(),
        action: action.to_string(),
        agent: agent(&principal),
        address: address.map(|a| a.to_string()),
        purpose: purpose(principal.role).to_string(),
        ..Record::default()
    });
    let response = current
        .scope(async {
            match super::access::decide(&ehr, &principal, request).await {
                Ok(request) => next.run(request).await,
                Err(refused) => refused.into_response(),
            }
        })
        .await;
    if current.recorded_with_a_write() {
        ehr.audit.wake();
        return response;
    }
    let record = current.finish(response.status().as_u16(), fallback);
    match ehr.audit.record(record).await {
        Ok(()) => response,
        // A refusal or a failure showed nothing: it stays what it was.
        Err(_) if !response.status().is_success() => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Transient,
            "the access could not be recorded, so nothing is shown; retry later",
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        .into_response(),
    }
}

fn agent(principal: &Principal) -> Agent {
    let who = match principal.role {
        Role::Patient => principal.patient.as_ref().map(|p| format!("Patient/{p}")),
        _ => principal
            .practitioner
            .as_ref()
            .map(|p| format!("Practitioner/{p}")),
    }
    .filter(|r| r.split('/').nth(1).is_some_and(is_valid_id));
    Agent {
        role: principal.role.as_str().to_string(),
        issuer: principal.issuer.clone(),
        subject: principal.subject.clone(),
        who,
        client_id: principal.client_id.clone(),
    }
}

/// The purpose of use a role's access has (HL7 v3 ActReason): care for practitioners, the
/// patient's own request, operations for the rest.
fn purpose(role: Role) -> &'static str {
    match role {
        Role::Patient => "PATRQT",
        Role::Practitioner => "TREAT",
        Role::ClinicAdmin | Role::OpsViewer | Role::System => "HOPERAT",
    }
}

/// The interaction (`restful-interaction` code) and action of a request, and the resource its
/// URL names (recorded when no handler noted what it read: a refusal, a failure).
fn describe(
    method: &Method,
    path: &str,
    defs: &Definitions,
) -> (&'static str, &'static str, Option<String>) {
    let segments: Vec<&str> = path
        .strip_prefix("/fhir")
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let named = |rt: &str, id: &str| {
        (defs.resource_type(rt).is_some() && is_valid_id(id)).then(|| format!("{rt}/{id}"))
    };
    let operation = |s: &str| s.starts_with('$');
    match (method.as_str(), segments.as_slice()) {
        ("POST", []) => ("transaction", "E", None),
        (_, ["_history"]) => ("history-system", "R", None),
        (_, [s]) if operation(s) => ("operation", "E", None),
        ("GET", [_]) | ("POST", [_, "_search"]) => ("search-type", "R", None),
        ("POST", [_]) => ("create", "C", None),
        ("PUT", [_]) => ("update", "U", None),
        ("PATCH", [_]) => ("patch", "U", None),
        ("DELETE", [_]) => ("delete", "D", None),
        (_, [_, "_history"]) => ("history-type", "R", None),
        (_, [_, s]) if operation(s) => ("operation", "E", None),
        ("GET", [rt, id]) => ("read", "R", named(rt, id)),
        ("PUT", [rt, id]) => ("update", "U", named(rt, id)),
        ("PATCH", [rt, id]) => ("patch", "U", named(rt, id)),
        ("DELETE", [rt, id]) => ("delete", "D", named(rt, id)),
        (_, [rt, id, s]) if operation(s) => ("operation", "E", named(rt, id)),
        (_, [rt, id, "_history"]) => ("history-instance", "R", named(rt, id)),
        (_, [rt, id, "_history", v]) => (
            "vread",
            "R",
            named(rt, id)
                .filter(|_| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() < 19)
                .map(|r| format!("{r}/_history/{v}")),
        ),
        ("GET", [rt, id, _member]) => ("search-type", "R", named(rt, id)),
        _ => ("operation", "E", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_described_by_interaction_action_and_named_resource() {
        let defs = Definitions::r4();
        let d = |m: Method, p: &str| describe(&m, p, defs);
        assert_eq!(
            d(Method::GET, "/fhir/Observation/o1"),
            ("read", "R", Some("Observation/o1".into()))
        );
        assert_eq!(
            d(Method::GET, "/fhir/Observation/o1/_history/3"),
            ("vread", "R", Some("Observation/o1/_history/3".into()))
        );
        assert_eq!(
            d(Method::POST, "/fhir/Observation/_search"),
            ("search-type", "R", None)
        );
        assert_eq!(d(Method::POST, "/fhir/Observation"), ("create", "C", None));
        assert_eq!(
            d(Method::DELETE, "/fhir/Observation"),
            ("delete", "D", None)
        );
        assert_eq!(d(Method::POST, "/fhir"), ("transaction", "E", None));
        assert_eq!(d(Method::POST, "/fhir/$reindex"), ("operation", "E", None));
        assert_eq!(
            d(Method::GET, "/fhir/Patient/p1/Observation"),
            ("search-type", "R", Some("Patient/p1".into()))
        );
        // What is not a resource is not named.
        assert_eq!(d(Method::GET, "/fhir/Nothing/x").2, None);
        assert_eq!(d(Method::GET, "/fhir/Patient/bad%20id").2, None);
    }
}
