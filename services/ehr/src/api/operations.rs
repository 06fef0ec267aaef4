//! Operations beyond plain CRUD: PATCH (JSON Patch, plain and conditional) and `$validate`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    response::Response,
};
use http::{HeaderMap, StatusCode, header};
use sen_platform::{ApiError, OperationOutcome, OutcomeIssue};

use super::{
    Output, Result, base_url, body_response, check_content_type, check_id, if_match, output,
    params, prefer_return, resource_type, write_response,
};
use crate::{
    Ehr, definitions::ResourceType, error::EhrError, patch::Document, resource::IncomingResource,
};

/// The patch document of a PATCH request: JSON Patch, or FHIRPath Patch as a Parameters
/// resource.
fn patch_document(headers: &HeaderMap, body: &Bytes) -> Result<Document, EhrError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let text = || {
        String::from_utf8(body.to_vec()).map_err(|_| EhrError::PatchMalformed {
            message: "not UTF-8".into(),
        })
    };
    match media.as_deref() {
        Some("application/json-patch+json") => Ok(Document::JsonPatch(text()?)),
        Some("application/fhir+json" | "application/json") => Ok(Document::FhirPath(text()?)),
        _ => Err(EhrError::PatchFormat),
    }
}

/// Applies `document` to the current version and writes the result as a new version. When the
/// client gave no If-Match, a concurrent change is absorbed by patching the newer version.
pub(super) async fn patch_resource(
    ehr: &Ehr,
    rt: ResourceType,
    id: &str,
    document: &Document,
    expected: Option<i64>,
) -> Result<crate::store::Updated, EhrError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = ehr
            .store
            .read(rt, id)
            .await?
            .ok_or_else(|| EhrError::NotFound {
                resource_type: rt.as_str(),
                id: id.to_string(),
            })?;
        if current.deleted {
            return Err(EhrError::Gone {
                resource_type: rt.as_str(),
                id: id.to_string(),
                version: current.version,
            });
        }
        if let Some(expected) = expected
            && expected != current.version
        {
            return Err(EhrError::VersionConflict {
                expected: expected.to_string(),
                current: Some(current.version),
            });
        }
        let resource = ehr.patched(rt, id, &current.content, document)?;
        match ehr
            .store
            .update(rt, id, &resource, Some(current.version))
            .await
        {
            Err(EhrError::VersionConflict { .. }) if expected.is_none() && attempts < 5 => continue,
            other => return other,
        }
    }
}

/// Patches `rt/id` and answers like an update (200, ETag, Location, body per `Prefer`).
async fn patch_and_answer(
    ehr: &Ehr,
    rt: ResourceType,
    id: &str,
    document: &Document,
    expected: Option<i64>,
    headers: &HeaderMap,
    out: &Output,
) -> Result<Response> {
    let updated = patch_resource(ehr, rt, id, document, expected).await?;
    let location = format!(
        "{}/{rt}/{id}/_history/{}",
        base_url(ehr, headers),
        updated.version.version
    );
    Ok(write_response(
        StatusCode::OK,
        &updated.version,
        Some(&location),
        prefer_return(headers),
        out,
        "patched",
    ))
}

pub(super) async fn patch(
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
    let document = patch_document(&headers, &body)?;
    let expected = if_match(&headers)?;
    patch_and_answer(&ehr, rt, &id, &document, expected, &headers, &out).await
}

/// `PATCH /fhir/{type}?criteria`: patches the one resource the criteria match.
pub(super) async fn patch_conditional(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let params = params(query);
    let out = output(&params, &headers, false)?;
    let document = patch_document(&headers, &body)?;
    let criteria = super::conditional_criteria(rt, &params, "patch")?;
    let matches = ehr.store.search(&criteria, 2).await?;
    let id = match matches.as_slice() {
        [] => {
            return Err(EhrError::NotFound {
                resource_type: rt.as_str(),
                id: "(matching the criteria)".into(),
            }
            .into());
        }
        [(id, _)] => id.clone(),
        many => return Err(EhrError::MultipleMatches { count: many.len() }.into()),
    };
    let expected = if_match(&headers)?;
    patch_and_answer(&ehr, rt, &id, &document, expected, &headers, &out).await
}

/// What a `$validate` request carries: the resource (the body itself, or the `resource`
/// parameter of a Parameters body) and the profile to check it against, if one is named (the
/// `profile` parameter, in the body or the query).
struct ToValidate {
    resource: IncomingResource,
    profile: Option<String>,
}

fn profile_in_query(query: &[(String, String)]) -> Option<String> {
    query
        .iter()
        .find(|(k, _)| k == "profile")
        .map(|(_, v)| v.clone())
}

fn resource_to_validate(
    ehr: &Ehr,
    body: &[u8],
    query: &[(String, String)],
) -> Result<ToValidate, EhrError> {
    let parsed: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| EhrError::Invalid {
            message: "the body is not valid JSON".into(),
            expression: None,
        })?;
    if parsed
        .get("resourceType")
        .and_then(serde_json::Value::as_str)
        != Some("Parameters")
    {
        return Ok(ToValidate {
            resource: IncomingResource::parse(body, ehr.defs)?,
            profile: profile_in_query(query),
        });
    }
    let parameters = parsed
        .get("parameter")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let named = |name: &str| {
        parameters
            .iter()
            .find(|p| p.get("name").and_then(serde_json::Value::as_str) == Some(name))
    };
    let profile = match named("profile") {
        None => profile_in_query(query),
        Some(p) => Some(
            p.get("valueUri")
                .or_else(|| p.get("valueCanonical"))
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| EhrError::BadParameter {
                    name: "profile",
                    message: "give the profile as valueUri or valueCanonical".into(),
                })?
                .to_string(),
        ),
    };
    let resource = named("resource")
        .and_then(|p| p.get("resource"))
        .ok_or_else(|| EhrError::Invalid {
            message: "Parameters needs a resource parameter".into(),
            expression: Some("Parameters.parameter".into()),
        })?;
    Ok(ToValidate {
        resource: IncomingResource::parse(resource.to_string().as_bytes(), ehr.defs)?,
        profile,
    })
}

/// The answer of `$validate`: 200 with an OperationOutcome, whatever the verdict; 400 when the
/// profile asked for is unknown or constrains another type.
fn validation_outcome(
    ehr: &Ehr,
    rt: ResourceType,
    request: ToValidate,
    out: &Output,
) -> Result<Response> {
    let ToValidate { resource, profile } = request;
    if resource.resource_type != rt {
        return Err(EhrError::TypeMismatch {
            url: rt.as_str(),
            body: resource.resource_type.as_str(),
        }
        .into());
    }
    if let Some(url) = &profile
        && ehr.profiles.profile(url).is_none()
    {
        return Err(EhrError::BadParameter {
            name: "profile",
            message: format!(
                "unknown profile {url}; known: {}",
                ehr.profiles.urls().join(", ")
            ),
        }
        .into());
    }
    let verdict = resource.validate().and_then(|mut warnings| {
        warnings.extend(ehr.conform(&resource, profile.as_deref())?);
        Ok(warnings)
    });
    let outcome = match verdict {
        Ok(warnings) if warnings.is_empty() => {
            OperationOutcome::new(vec![OutcomeIssue::information(
                "no problems found against the R4 base definitions (structure, cardinality, formats, bindings, invariants) and the profiles that apply",
            )])
        }
        Ok(warnings) => {
            OperationOutcome::new(warnings.iter().map(crate::error::problem_issue).collect())
        }
        Err(error @ EhrError::BadParameter { .. }) => return Err(error.into()),
        Err(error) => {
            let api: ApiError = error.into();
            OperationOutcome::new(api.issues)
        }
    };
    Ok(body_response(StatusCode::OK, outcome.to_json(), out.pretty))
}

/// `POST /fhir/{type}/$validate`.
pub(super) async fn validate_type(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let query = params(query);
    let out = output(&query, &headers, false)?;
    check_content_type(&headers)?;
    let request = resource_to_validate(&ehr, &body, &query)?;
    validation_outcome(&ehr, rt, request, &out)
}

/// `POST /fhir/{type}/{id}/$validate`: the body if there is one, else the stored version.
pub(super) async fn validate_instance(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let query = params(query);
    let out = output(&query, &headers, false)?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        let current = ehr
            .store
            .read(rt, &id)
            .await?
            .filter(|v| !v.deleted)
            .ok_or_else(|| EhrError::NotFound {
                resource_type: rt.as_str(),
                id: id.clone(),
            })?;
        ToValidate {
            resource: IncomingResource::parse(current.content.as_bytes(), ehr.defs)?,
            profile: profile_in_query(&query),
        }
    } else {
        check_content_type(&headers)?;
        resource_to_validate(&ehr, &body, &query)?
    };
    validation_outcome(&ehr, rt, request, &out)
}
