//! The FHIR REST surface under `/fhir`: thin handlers that parse HTTP, call the store and
//! shape FHIR responses. No SQL here.

use std::sync::Arc;

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sen_platform::{ApiError, OperationOutcome, OutcomeIssue, auth::Auth};

use crate::{
    Ehr,
    bundle::{bundle, etag, history_entry, link, query_string},
    criteria::Criteria,
    definitions::ResourceType,
    error::EhrError,
    json,
    resource::{ElementFilter, Summary, is_valid_id},
    search::{
        keyset::Position,
        query::{SearchRequest, Total},
    },
    store::{Created, Deleted, Found, HistoryScope, PageStart, Version},
};

mod access;
mod access_log;
mod operations;
mod organizations;
mod queries;

use access::Narrowed;
use queries::*;

/// Media type of every FHIR response.
pub const FHIR_JSON_R4: &str = "application/fhir+json; charset=utf-8; fhirVersion=4.0";

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The routes under `/fhir`: the CapabilityStatement for anyone, everything else for a valid
/// token (`auth`) whose role and scopes allow the request (see [`access`]).
pub fn router(ehr: Arc<Ehr>, auth: Arc<Auth>) -> Router {
    let protected = Router::new()
        .route("/fhir", axum::routing::post(bundle_post))
        .route("/fhir/_history", get(history_system))
        .route("/fhir/$reindex", get(reindex_status).post(reindex_start))
        .route(
            "/fhir/{type}",
            get(search)
                .post(create)
                .put(update_conditional)
                .delete(delete_conditional)
                .patch(operations::patch_conditional),
        )
        .route("/fhir/{type}/_history", get(history_type))
        .route("/fhir/{type}/_search", axum::routing::post(search_post))
        .route(
            "/fhir/{type}/$validate",
            axum::routing::post(operations::validate_type),
        )
        .route(
            "/fhir/{type}/{id}/$validate",
            axum::routing::post(operations::validate_instance),
        )
        .route(
            "/fhir/{type}/{id}",
            get(read)
                .put(update)
                .delete(delete)
                .patch(operations::patch),
        )
        .route("/fhir/{type}/{id}/_history", get(history_instance))
        .route("/fhir/{type}/{id}/{member}", get(compartment_search))
        .route("/fhir/{type}/{id}/_history/{vid}", get(vread))
        .route_layer(axum::middleware::from_fn_with_state(
            ehr.clone(),
            access_log::record,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            sen_platform::auth::require_token,
        ))
        .with_state(ehr.clone());
    Router::new()
        .route("/fhir/metadata", get(metadata))
        .with_state(ehr)
        .merge(protected)
}

/// Query parameters in order, decoded.
fn params(query: Option<String>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// How to render a response body.
#[derive(Debug, Default)]
struct Output {
    pretty: bool,
    filter: ElementFilter,
}

fn is_json_media(media: &str) -> bool {
    let media = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        // An unencoded `+` in `_format=application/fhir+json` arrives as a space.
        .replace(' ', "+");
    matches!(
        media.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir" | "json"
    )
}

/// Checks `_format`, `Accept`, `_pretty`, `_summary` and `_elements`.
fn output(
    params: &[(String, String)],
    headers: &HeaderMap,
    allow_filter: bool,
) -> Result<Output, EhrError> {
    match param(params, "_format") {
        Some(format) if !is_json_media(format) => {
            return Err(EhrError::NotAcceptable {
                format: format.chars().take(64).collect(),
            });
        }
        Some(_) => {}
        None => {
            if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
                let acceptable = accept.split(',').any(|range| {
                    let media = range.split(';').next().unwrap_or("").trim();
                    media.is_empty()
                        || media == "*/*"
                        || media == "application/*"
                        || is_json_media(media)
                });
                if !acceptable {
                    return Err(EhrError::NotAcceptable {
                        format: accept.chars().take(64).collect(),
                    });
                }
            }
        }
    }
    let pretty = match param(params, "_pretty") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(EhrError::BadParameter {
                name: "_pretty",
                message: "must be true or false".into(),
            });
        }
    };
    let mut filter = ElementFilter::All;
    if allow_filter {
        if let Some(value) = param(params, "_summary") {
            let summary = Summary::parse(value).ok_or_else(|| EhrError::BadParameter {
                name: "_summary",
                message: "must be true, text, data, count or false".into(),
            })?;
            filter = ElementFilter::Summary(summary);
        }
        if let Some(value) = param(params, "_elements") {
            if filter != ElementFilter::All {
                return Err(EhrError::BadParameter {
                    name: "_elements",
                    message: "cannot be combined with _summary".into(),
                });
            }
            let names: Vec<String> = value
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if names.is_empty()
                || names
                    .iter()
                    .any(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
            {
                return Err(EhrError::BadParameter {
                    name: "_elements",
                    message: "must be a comma-separated list of element names".into(),
                });
            }
            filter = ElementFilter::Elements(
                names
                    .into_iter()
                    .map(|n| n.rsplit('.').next().unwrap_or("").to_string())
                    .collect(),
            );
        }
    }
    Ok(Output { pretty, filter })
}

fn body_response(status: StatusCode, body: String, pretty: bool) -> Response {
    let body = if pretty { json::pretty(&body) } else { body };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON_R4));
    response
}

fn http_date(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format).unwrap_or_default()
}

fn set_version_headers(response: &mut Response, version: &Version, location: Option<&str>) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(version.version)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(version.last_updated)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
}

/// The base URL clients reach `/fhir` at.
fn base_url(ehr: &Ehr, headers: &HeaderMap) -> String {
    if let Some(public) = &ehr.public_url {
        return format!("{}/fhir", public.trim_end_matches('/'));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

fn resource_type(ehr: &Ehr, name: &str) -> Result<ResourceType, EhrError> {
    ehr.defs
        .resource_type(name)
        .ok_or_else(|| EhrError::UnknownEndpointType {
            name: name.chars().take(64).collect(),
        })
}

fn check_id(id: &str) -> Result<(), EhrError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(EhrError::InvalidId)
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), EhrError> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(media) if is_json_media(media) && !media.trim().eq_ignore_ascii_case("json") => Ok(()),
        _ => Err(EhrError::UnsupportedMediaType),
    }
}

/// `If-Match: W/"3"` (or `"3"`) as a version number.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, EhrError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| EhrError::BadIfMatch)?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or(EhrError::BadIfMatch)?;
    inner
        .parse::<i64>()
        .map(Some)
        .map_err(|_| EhrError::BadIfMatch)
}

/// `Prefer: return=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Representation,
    Outcome,
}

fn prefer_return(headers: &HeaderMap) -> Return {
    let prefer = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    for part in prefer.split([',', ';']) {
        match part
            .trim()
            .strip_prefix("return=")
            .map(|v| v.trim_matches('"'))
        {
            Some("minimal") => return Return::Minimal,
            Some("OperationOutcome") => return Return::Outcome,
            Some("representation") => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

/// The response to a write, shaped by `Prefer`.
fn write_response(
    status: StatusCode,
    version: &Version,
    location: Option<&str>,
    prefer: Return,
    out: &Output,
    message: &str,
) -> Response {
    let mut response = match prefer {
        Return::Minimal => status.into_response(),
        Return::Representation => body_response(status, version.content.clone(), out.pretty),
        Return::Outcome => body_response(
            status,
            OperationOutcome::new(vec![OutcomeIssue::information(message)]).to_json(),
            out.pretty,
        ),
    };
    set_version_headers(&mut response, version, location);
    response
}

/// `POST /fhir`: a batch or transaction Bundle.
async fn bundle_post(
    State(ehr): State<Arc<Ehr>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let params = params(query);
    let out = output(&params, &headers, false)?;
    check_content_type(&headers)?;
    let base = base_url(&ehr, &headers);
    let response = crate::transaction::process(&ehr, &body, &base).await?;
    Ok(body_response(StatusCode::OK, response, out.pretty))
}

async fn metadata(
    State(ehr): State<Arc<Ehr>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let params = params(query);
    let out = output(&params, &headers, false)?;
    Ok(body_response(
        StatusCode::OK,
        ehr.capability.clone(),
        out.pretty,
    ))
}

async fn create(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    check_content_type(&headers)?;
    let resource = ehr.accept(&body, rt, None)?;
    let condition = match headers.get("if-none-exist") {
        Some(value) => {
            let text = value.to_str().map_err(|_| EhrError::BadParameter {
                name: "If-None-Exist",
                message: "must be a query string".into(),
            })?;
            Some(Criteria::parse_query(rt, text)?)
        }
        None => None,
    };
    let base = base_url(&ehr, &headers);
    let prefer = prefer_return(&headers);
    match ehr.store.create(&resource, condition.as_ref()).await? {
        Created::New(version) => {
            let location = format!("{base}/{rt}/{}/_history/{}", version.id, version.version);
            Ok(write_response(
                StatusCode::CREATED,
                &version,
                Some(&location),
                prefer,
                &out,
                "created",
            ))
        }
        Created::Existing(version) => {
            let location = format!("{base}/{rt}/{}/_history/{}", version.id, version.version);
            Ok(write_response(
                StatusCode::OK,
                &version,
                Some(&location),
                prefer,
                &out,
                "a resource matching If-None-Exist already exists; nothing was created",
            ))
        }
    }
}

async fn read(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let params = params(query);
    let out = output(&params, &headers, true)?;
    if out.filter == ElementFilter::Summary(Summary::Count) {
        return Err(EhrError::BadParameter {
            name: "_summary",
            message: "count applies to searches, not reads".into(),
        }
        .into());
    }
    // A read names one AuditEvent: a record not relayed yet is simply not found.
    catch_up_audit(&ehr, rt).await?;
    let version = ehr
        .store
        .read(rt, &id)
        .await?
        .ok_or_else(|| EhrError::NotFound {
            resource_type: rt.as_str(),
            id: id.clone(),
        })?;
    version_response(&ehr, rt, &version, &out)
}

async fn vread(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id, vid)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let params = params(query);
    let out = output(&params, &headers, true)?;
    let not_found = || EhrError::VersionNotFound {
        resource_type: rt.as_str(),
        id: id.clone(),
        version: vid.chars().take(20).collect(),
    };
    let number = vid
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(not_found)?;
    let version = ehr
        .store
        .vread(rt, &id, number)
        .await?
        .ok_or_else(not_found)?;
    version_response(&ehr, rt, &version, &out)
}

/// A read or vread answer: 410 for a deletion, else the (filtered) resource with its ETag.
fn version_response(
    ehr: &Ehr,
    rt: ResourceType,
    version: &Version,
    out: &Output,
) -> Result<Response> {
    if version.deleted {
        return Err(EhrError::Gone {
            resource_type: rt.as_str(),
            id: version.id.clone(),
            version: version.version,
        }
        .into());
    }
    crate::audit::note_resource(crate::store::versioned(version));
    let body = out.filter.apply(&version.content, ehr.defs);
    let mut response = body_response(StatusCode::OK, body, out.pretty);
    set_version_headers(&mut response, version, None);
    Ok(response)
}

async fn update(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    check_content_type(&headers)?;
    let expected = if_match(&headers)?;
    let resource = ehr.accept(&body, rt, Some(&id))?;
    let updated = ehr.store.update(rt, &id, &resource, expected).await?;
    Ok(update_response(
        &ehr,
        &headers,
        &out,
        &updated.version,
        updated.created,
    ))
}

/// The answer to an update: 201 when it created the resource, else 200, with Location, ETag
/// and the body `Prefer` asks for.
fn update_response(
    ehr: &Ehr,
    headers: &HeaderMap,
    out: &Output,
    version: &Version,
    created: bool,
) -> Response {
    let base = base_url(ehr, headers);
    let location = format!(
        "{base}/{}/{}/_history/{}",
        version.resource_type, version.id, version.version
    );
    let (status, message) = if created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, "updated")
    };
    write_response(
        status,
        version,
        Some(&location),
        prefer_return(headers),
        out,
        message,
    )
}

/// The answer to a delete: the OperationOutcome saying what happened (or nothing with
/// `Prefer: return=minimal`), and the deleted version's ETag when one was deleted now.
fn delete_response(
    headers: &HeaderMap,
    out: &Output,
    message: &str,
    deleted: Option<i64>,
) -> Response {
    let mut response = if deleted.is_some() && prefer_return(headers) == Return::Minimal {
        StatusCode::NO_CONTENT.into_response()
    } else {
        body_response(
            StatusCode::OK,
            OperationOutcome::new(vec![OutcomeIssue::information(message)]).to_json(),
            out.pretty,
        )
    };
    if let Some(version) = deleted
        && let Ok(v) = HeaderValue::from_str(&etag(version))
    {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

async fn delete(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    let expected = if_match(&headers)?;
    Ok(match ehr.store.delete(rt, &id, expected).await? {
        Deleted::Now(version) => delete_response(
            &headers,
            &out,
            &format!("{rt}/{id} deleted"),
            Some(version.version),
        ),
        Deleted::Already => delete_response(
            &headers,
            &out,
            &format!("{rt}/{id} was already deleted"),
            None,
        ),
    })
}

/// The search criteria of a conditional interaction: every query parameter but those that
/// shape the response. At least one is needed.
fn conditional_criteria(
    rt: ResourceType,
    params: &[(String, String)],
    what: &str,
) -> Result<Criteria, EhrError> {
    let pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !RESULT_PARAMS.contains(&k.as_str()))
        .cloned()
        .collect();
    if pairs.is_empty() {
        return Err(EhrError::BadParameter {
            name: "criteria",
            message: format!(
                "a conditional {what} needs search criteria (e.g. ?identifier=system|value)"
            ),
        });
    }
    Criteria::parse(rt, &pairs)
}

/// `PUT /fhir/{type}?criteria`: conditional update.
async fn update_conditional(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    check_content_type(&headers)?;
    let criteria = conditional_criteria(rt, &params, "update")?;
    let expected = if_match(&headers)?;
    let (version, created) =
        crate::transaction::conditional_update(&ehr, rt, criteria, &body, expected).await?;
    Ok(update_response(&ehr, &headers, &out, &version, created))
}

/// `DELETE /fhir/{type}?criteria`: conditional delete of the one match.
async fn delete_conditional(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    let criteria = conditional_criteria(rt, &params, "delete")?;
    let expected = if_match(&headers)?;
    let deleted = crate::transaction::conditional_delete(&ehr, rt, criteria, expected).await?;
    let message = match deleted {
        Some(_) => "the matching resource was deleted",
        None => "no resource matched; nothing was deleted",
    };
    Ok(delete_response(&headers, &out, message, deleted))
}
