//! Who may do what under `/fhir`: every request but the CapabilityStatement carries a valid
//! token (`sen_platform::auth::require_token` runs first), and [`decide`] (run by the
//! access-record middleware) decides from the token's role and SMART scopes before any
//! handler runs.
//!
//! - `system` clients act by their `system/` scopes: each request needs the scope of its
//!   interaction on its resource type. Requests that reach other types than the one in the
//!   URL — Bundles, system history, `_include`, `_revinclude`, `_has` and chained parameters —
//!   need the scope on every type (`*`), since what they bring back is only known after the
//!   search. A Bundle needs, entry by entry, the scope of each entry's interaction and type.
//!   `$reindex` needs `system/*` update.
//! - `patient` tokens read (and search) their own records only: the Patient resource they
//!   name and the resources of its compartment (R4 CompartmentDefinition). A search becomes a
//!   search inside the compartment; a read of anything else answers 404, as if it did not
//!   exist. They write only their own Consent, and cannot `_include` (what an include brings may lie
//!   outside the compartment).
//! - `ops-viewer` reads no record, ever: it sees aggregated indicators elsewhere.
//! - `practitioner` and `clinic-admin` act for the organizations where they hold a
//!   PractitionerRole (see [`super::organizations`]).

use axum::{body::Body, extract::Request};
use http::Method;
use sen_platform::{
    ApiError,
    auth::{Interaction, Principal, Role, forbidden},
};

use crate::{
    Ehr,
    definitions::ResourceType,
    error::EhrError,
    search::query::{SearchRequest, compartment_params},
    store::PageStart,
};

/// What a request under `/fhir` does, as far as access goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// `POST /fhir`: a batch or transaction.
    Bundle,
    /// `GET /fhir/_history`.
    SystemHistory,
    /// `/fhir/$reindex`.
    Reindex,
    /// A request on a type: search (GET, POST `_search`), create, conditional writes, type
    /// history, `$validate`.
    Type {
        rt: String,
        needs: Vec<Interaction>,
        search: bool,
        history: bool,
    },
    /// A request on one resource: read, vread, instance history, update, patch, delete,
    /// `$validate`.
    Instance {
        rt: String,
        id: String,
        interaction: Interaction,
    },
    /// `GET /fhir/{type}/{id}/{member}`: a compartment search.
    Compartment {
        rt: String,
        id: String,
        member: String,
    },
}

impl Target {
    /// The resource type named in the URL (a compartment search: the member type).
    pub(super) fn resource_type(&self) -> Option<&str> {
        match self {
            Target::Type { rt, .. } | Target::Instance { rt, .. } => Some(rt),
            Target::Compartment { member, .. } => Some(member),
            Target::Bundle | Target::SystemHistory | Target::Reindex => None,
        }
    }
}

fn classify(method: &Method, path: &str) -> Option<Target> {
    use Interaction::*;
    let segments: Vec<&str> = path
        .strip_prefix("/fhir")?
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get = method == Method::GET;
    Some(match segments.as_slice() {
        [] if method == Method::POST => Target::Bundle,
        ["_history"] => Target::SystemHistory,
        ["$reindex"] => Target::Reindex,
        [rt] => {
            let (needs, search) = match *method {
                Method::GET => (vec![Search], true),
                Method::POST => (vec![Create], false),
                // Conditional writes find their target by a search.
                Method::PUT => (vec![Update, Create, Search], false),
                Method::PATCH => (vec![Update, Search], false),
                Method::DELETE => (vec![Delete, Search], false),
                _ => return None,
            };
            Target::Type {
                rt: rt.to_string(),
                needs,
                search,
                history: false,
            }
        }
        [rt, "_search"] => Target::Type {
            rt: rt.to_string(),
            needs: vec![Search],
            search: true,
            history: false,
        },
        [rt, "_history"] => Target::Type {
            rt: rt.to_string(),
            needs: vec![Search],
            search: false,
            history: true,
        },
        [rt, "$validate"] => Target::Type {
            rt: rt.to_string(),
            needs: vec![Create],
            search: false,
            history: false,
        },
        [rt, id] => Target::Instance {
            rt: rt.to_string(),
            id: id.to_string(),
            interaction: match *method {
                Method::GET => Read,
                Method::PUT | Method::PATCH => Update,
                Method::DELETE => Delete,
                _ => return None,
            },
        },
        [rt, id, "$validate"] => Target::Instance {
            rt: rt.to_string(),
            id: id.to_string(),
            interaction: Update,
        },
        [rt, id, "_history"] | [rt, id, "_history", _] if get => Target::Instance {
            rt: rt.to_string(),
            id: id.to_string(),
            interaction: Read,
        },
        [rt, id, member] if get => Target::Compartment {
            rt: rt.to_string(),
            id: id.to_string(),
            member: member.to_string(),
        },
        _ => return None,
    })
}

/// Largest `POST _search` form read (a search's parameters, not a document).
const SEARCH_FORM_LIMIT: usize = 1024 * 1024;

/// Whether search parameters reach other resource types than the one searched.
pub(super) fn reaches_other_types(params: &[(String, String)]) -> bool {
    params.iter().any(|(key, _)| {
        key.starts_with("_include")
            || key.starts_with("_revinclude")
            || key.starts_with("_has")
            || key.contains('.')
    })
}

/// For a caller whose records are narrowed (a patient, a practitioner): a conditional
/// create's `If-None-Exist` finds only records of `patients` (ids) — a `patient` or `subject`
/// parameter names one of them and nothing reaches other types — or the create is refused,
/// since an existing match is answered with its content (and its existence told).
pub(super) fn if_none_exist_within(
    headers: &http::HeaderMap,
    patients: &[String],
) -> Result<(), ApiError> {
    let Some(criteria) = headers.get("if-none-exist") else {
        return Ok(());
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(criteria.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let names_one = params.iter().any(|(key, value)| {
        (key == "patient" || key == "subject")
            && patients
                .iter()
                .any(|p| value == p || value.strip_prefix("Patient/") == Some(p.as_str()))
    });
    if names_one && !reaches_other_types(&params) {
        return Ok(());
    }
    Err(forbidden(
        "If-None-Exist with this token must name the record's own patient (patient= or \
         subject=) and reach no other type",
    ))
}

/// The decision: the request goes on (for patients, perhaps narrowed to their compartment)
/// or is answered with the refusal. Run by the access-record middleware
/// (`super::access_log`), which records either.
pub(super) async fn decide(
    ehr: &Ehr,
    principal: &Principal,
    request: Request,
) -> Result<Request, ApiError> {
    let Some(target) = classify(request.method(), request.uri().path()) else {
        // Not a FHIR interaction the router serves: it answers 404/405 itself.
        return Ok(request);
    };
    match principal.role {
        Role::System if target == Target::Bundle && !every_interaction_on_every_type(principal) => {
            bundle_entries(principal, request).await
        }
        Role::System => {
            let (request, params) = search_params(request, &target).await?;
            system(principal, &target, &params)?;
            Ok(request)
        }
        Role::Patient => patient(ehr, principal, target, request).await,
        Role::OpsViewer => Err(forbidden(
            "an ops-viewer token reads aggregated indicators only, never a health record",
        )),
        Role::Practitioner | Role::ClinicAdmin => {
            super::organizations::decide(ehr, principal, target, request).await
        }
    }
}

fn every_interaction_on_every_type(principal: &Principal) -> bool {
    Interaction::ALL
        .into_iter()
        .all(|i| principal.scope_allows(i, "*"))
}

/// What reaching beyond the searched type needs: searching and reading every type.
fn need_every_type_read(principal: &Principal) -> Result<(), ApiError> {
    need(principal, Interaction::Search, "*")?;
    need(principal, Interaction::Read, "*")
}

/// Largest Bundle read here to check its entries one by one (only for tokens whose scopes
/// name types: a token with every scope on `*` is not read here at all).
const BUNDLE_LIMIT: usize = 32 * 1024 * 1024;

/// A Bundle sent with scopes that name types: each entry needs the scope of its own
/// interaction and type. An entry this check cannot read (the handler refuses it or reads it
/// in a way this does not foresee) needs every scope on `*`, so nothing passes unchecked.
async fn bundle_entries(principal: &Principal, request: Request) -> Result<Request, ApiError> {
    use Interaction::*;
    let (parts, bytes) = read_body(request, BUNDLE_LIMIT, "the Bundle").await?;
    let bundle: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    for entry in &entries {
        let method = entry["request"]["method"].as_str().unwrap_or_default();
        let url = entry["request"]["url"].as_str().unwrap_or_default();
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let conditional = !query.is_empty();
        let needs: Option<(&str, Vec<Interaction>)> = match (method, segments.as_slice()) {
            ("GET", [rt, _id]) => Some((rt, vec![Read])),
            ("GET", [rt]) if !reaches_other_types(&params) => Some((rt, vec![Search])),
            ("POST", [rt]) if !conditional => Some((rt, vec![Create])),
            ("PUT", [rt, _id]) if !conditional => Some((rt, vec![Update, Create])),
            ("PUT", [rt]) if conditional => Some((rt, vec![Update, Create, Search])),
            ("PATCH", [rt, _id]) if !conditional => Some((rt, vec![Update])),
            ("PATCH", [rt]) if conditional => Some((rt, vec![Update, Search])),
            ("DELETE", [rt, _id]) if !conditional => Some((rt, vec![Delete])),
            ("DELETE", [rt]) if conditional => Some((rt, vec![Delete, Search])),
            _ => None,
        };
        let (rt, interactions) = match needs {
            Some((rt, interactions)) if rt.chars().all(|c| c.is_ascii_alphanumeric()) => {
                (rt.to_string(), interactions)
            }
            _ => ("*".to_string(), Interaction::ALL.to_vec()),
        };
        interactions
            .into_iter()
            .try_for_each(|i| need(principal, i, &rt))?;
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The search parameters of a search request: the query, and for `POST _search` the form
/// body too (read here and handed on unchanged).
async fn search_params(
    request: Request,
    target: &Target,
) -> Result<(Request, Vec<(String, String)>), ApiError> {
    let posted =
        matches!(target, Target::Type { search: true, .. }) && request.method() == Method::POST;
    request_params(request, posted).await
}

/// The query's parameters, and when `posted` those of the form body too.
pub(super) async fn request_params(
    request: Request,
    posted: bool,
) -> Result<(Request, Vec<(String, String)>), ApiError> {
    let mut params: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if !posted {
        return Ok((request, params));
    }
    // Read here, before any extractor applies the body limit: bounded here too.
    let (parts, bytes) = read_body(request, SEARCH_FORM_LIMIT, "the search form").await?;
    params.extend(form_urlencoded::parse(&bytes).into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), params))
}

/// The request's body, read here (at most `limit` bytes) to decide on it and handed on.
pub(super) async fn read_body(
    request: Request,
    limit: usize,
    what: &str,
) -> Result<(http::request::Parts, axum::body::Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::bad_request(
            sen_platform::IssueCode::TooLong,
            format!("{what} is too large or could not be read"),
        )
    })?;
    Ok((parts, bytes))
}

pub(super) fn need(
    principal: &Principal,
    interaction: Interaction,
    rt: &str,
) -> Result<(), ApiError> {
    if principal.scope_allows(interaction, rt) {
        return Ok(());
    }
    let what = if rt == "*" { "every resource type" } else { rt };
    Err(forbidden(format!(
        "the token's scopes do not allow {} on {what}",
        interaction.as_str()
    )))
}

fn system(
    principal: &Principal,
    target: &Target,
    params: &[(String, String)],
) -> Result<(), ApiError> {
    use Interaction::*;
    match target {
        // With every scope on `*` (narrower tokens have their entries checked one by one).
        Target::Bundle => Interaction::ALL
            .into_iter()
            .try_for_each(|i| need(principal, i, "*")),
        Target::SystemHistory => need(principal, Search, "*"),
        Target::Reindex => need(principal, Update, "*"),
        Target::Type {
            rt, needs, search, ..
        } => {
            needs.iter().try_for_each(|i| need(principal, *i, rt))?;
            if *search && reaches_other_types(params) {
                need_every_type_read(principal)?;
            }
            Ok(())
        }
        Target::Instance {
            rt, interaction, ..
        } => need(principal, *interaction, rt),
        Target::Compartment { rt, member, .. } => {
            need(principal, Read, rt)?;
            need(principal, Search, member)?;
            if reaches_other_types(params) {
                need_every_type_read(principal)?;
            }
            Ok(())
        }
    }
}

/// A patient's request: its own Patient resource and compartment, read-only.
async fn patient(
    ehr: &Ehr,
    principal: &Principal,
    target: Target,
    request: Request,
) -> Result<Request, ApiError> {
    let own = principal.patient.clone().unwrap_or_default();
    let read_only = || forbidden("a patient token reads records; it does not write them");
    match target {
        Target::Instance {
            rt,
            id,
            interaction: Interaction::Read,
        } => {
            need(principal, Interaction::Read, &rt)?;
            let Some(resource_type) = ehr.defs.resource_type(&rt) else {
                return Ok(request);
            };
            if visible_to(ehr, resource_type, &id, &own).await? {
                Ok(request)
            } else {
                Err(EhrError::NotFound {
                    resource_type: resource_type.as_str(),
                    id: id.chars().take(64).collect(),
                }
                .into())
            }
        }
        Target::Type {
            rt, search: true, ..
        } => {
            need(principal, Interaction::Search, &rt)?;
            let posted = request.method() == Method::POST;
            let (request, params) = request_params(request, posted).await?;
            if reaches_other_types(&params) {
                return Err(forbidden(
                    "a patient token cannot use _include, _revinclude, _has or chained parameters yet",
                ));
            }
            narrowed(request, &rt, &own)
        }
        Target::Compartment { rt, id, member } => {
            need(principal, Interaction::Search, &member)?;
            let (request, params) = request_params(request, false).await?;
            if rt != "Patient" || id != own {
                return Err(EhrError::NotFound {
                    resource_type: "Patient",
                    id: id.chars().take(64).collect(),
                }
                .into());
            }
            if reaches_other_types(&params) {
                return Err(forbidden(
                    "a patient token cannot use _include, _revinclude, _has or chained parameters yet",
                ));
            }
            Ok(request)
        }
        // Its own Consent: the one record a patient writes (whom its records are shared with).
        Target::Type {
            rt,
            search: false,
            history: false,
            ..
        } if rt == "Consent" && request.method() == Method::POST => {
            need(principal, Interaction::Create, &rt)?;
            own_consent(ehr, &own, None, request).await
        }
        Target::Instance {
            rt,
            id,
            interaction: Interaction::Update,
        } if rt == "Consent" && request.method() == Method::PUT => {
            need(principal, Interaction::Update, &rt)?;
            own_consent(ehr, &own, Some(&id), request).await
        }
        Target::Instance { .. } | Target::Bundle => Err(read_only()),
        Target::Type {
            search: false,
            history: false,
            ..
        } => Err(read_only()),
        Target::Type { history: true, .. } | Target::SystemHistory | Target::Reindex => {
            Err(forbidden(
                "a patient token reads its records one by one or by search, not by history of a type",
            ))
        }
    }
}

/// A Consent a patient writes: about itself (`patient`), replacing (PUT) only one of its own.
async fn own_consent(
    ehr: &Ehr,
    own: &str,
    id: Option<&str>,
    request: Request,
) -> Result<Request, ApiError> {
    let mine = |consent: &serde_json::Value| {
        consent["patient"]["reference"].as_str() == Some(&format!("Patient/{own}"))
    };
    if let Some(id) = id
        && let Some(current) = super::organizations::current(ehr, "Consent", id).await?
        && !mine(&current)
    {
        return Err(EhrError::NotFound {
            resource_type: "Consent",
            id: id.to_string(),
        }
        .into());
    }
    if_none_exist_within(request.headers(), &[own.to_string()])?;
    let (parts, bytes) = read_body(request, SEARCH_FORM_LIMIT, "the Consent").await?;
    let sent: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !mine(&sent) {
        return Err(forbidden(format!(
            "a patient token writes its own Consent only: patient must be Patient/{own}"
        )));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Whether `rt/id` is the patient's own Patient resource or a current member of its
/// compartment (found by the same search a compartment search runs).
async fn visible_to(
    ehr: &Ehr,
    rt: ResourceType,
    id: &str,
    patient: &str,
) -> Result<bool, ApiError> {
    if rt.as_str() == "Patient" && id == patient {
        return Ok(true);
    }
    if compartment_params("Patient", rt.as_str()).is_none() {
        return Ok(false);
    }
    let Some(patient_type) = ehr.defs.resource_type("Patient") else {
        return Ok(false);
    };
    let mut search = SearchRequest::parse(rt, &[("_id".to_string(), id.to_string())], true)?;
    search.in_compartment(patient_type, patient)?;
    let page = ehr.store.search_page(&search, &PageStart::First, 1).await?;
    Ok(!page.found.is_empty())
}

/// Marks a search the handlers narrow, whatever the query asks. Routing has happened before
/// this middleware runs, so the request itself cannot be redirected.
#[derive(Debug, Clone)]
pub(super) enum Narrowed {
    /// A patient's own records: its Patient resource, or its compartment's members.
    Patient(String),
    /// Parameters AND-ed to the query (a practitioner's patients: `organization=…`).
    Also(Vec<(String, String)>),
}

/// A patient's search of `rt`, marked for the handler to narrow; types outside the Patient
/// compartment are refused.
fn narrowed(mut request: Request, rt: &str, own: &str) -> Result<Request, ApiError> {
    if rt != "Patient" && compartment_params("Patient", rt).is_none() {
        return Err(forbidden(format!(
            "a patient token searches the records of its own compartment; {rt} is not in it"
        )));
    }
    request
        .extensions_mut()
        .insert(Narrowed::Patient(own.to_string()));
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_path() {
        use Interaction::*;
        assert_eq!(classify(&Method::POST, "/fhir"), Some(Target::Bundle));
        assert_eq!(
            classify(&Method::GET, "/fhir/Observation/1/_history/2"),
            Some(Target::Instance {
                rt: "Observation".into(),
                id: "1".into(),
                interaction: Read
            })
        );
        assert_eq!(
            classify(&Method::DELETE, "/fhir/Observation"),
            Some(Target::Type {
                rt: "Observation".into(),
                needs: vec![Delete, Search],
                search: false,
                history: false
            })
        );
        assert_eq!(
            classify(&Method::GET, "/fhir/Patient/1/Observation"),
            Some(Target::Compartment {
                rt: "Patient".into(),
                id: "1".into(),
                member: "Observation".into()
            })
        );
        assert_eq!(classify(&Method::GET, "/other"), None);
    }

    #[test]
    fn includes_has_and_chains_reach_other_types() {
        let p = |k: &str| vec![(k.to_string(), "x".to_string())];
        assert!(reaches_other_types(&p("_include")));
        assert!(reaches_other_types(&p("_revinclude:iterate")));
        assert!(reaches_other_types(&p("_has:Observation:subject:code")));
        assert!(reaches_other_types(&p("subject:Patient.name")));
        assert!(!reaches_other_types(&p("code:not")));
        assert!(!reaches_other_types(&p("_id")));
    }
}
