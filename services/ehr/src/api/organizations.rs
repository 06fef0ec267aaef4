//! Organization rules: what practitioners and clinic admins may do. Both act for the
//! organizations where their Practitioner (the token's `practitioner` claim) holds an active
//! PractitionerRole.
//!
//! A patient is **of** an organization when it is the patient's managing organization (home),
//! or when the organization provided one of the patient's encounters (visit) and no active
//! Consent of the patient denies sharing with it (`provision.type = deny`, naming that
//! organization as actor, or no actor: every organization but the home one).
//!
//! - **practitioner**: reads and searches the records (Patient compartment) of its
//!   organizations' patients, one patient at a time (a search names the patient); writes
//!   (create, update, patch) records whose patients are all of its organizations, and Patient
//!   resources its organizations manage; deletes nothing. Directory resources (Organization,
//!   Location, Practitioner, …, anything outside the Patient compartment) it reads. Another
//!   patient's record answers 404. **Break-the-glass**: a read or search with a stated reason
//!   (`X-Break-Glass: <reason>`) passes outside these rules; it is flagged and audited.
//! - **clinic-admin**: registers and reads its organizations' patients (Patient resources
//!   they manage, no clinical record), and manages its organizations' directory: resources
//!   that reference one of them (Location, PractitionerRole, HealthcareService, Endpoint,
//!   sub-Organizations, the Organization itself), and new Practitioners.

use axum::{body::Body, extract::Request};
use http::Method;
use sen_platform::{
    ApiError,
    auth::{Interaction, Principal, Role, forbidden},
};
use serde_json::Value;

use super::access::{Narrowed, Target, need, reaches_other_types, read_body, request_params};
use crate::{
    Ehr,
    definitions::ResourceType,
    error::EhrError,
    search::{
        extract::{extract, patients_of},
        query::{SearchRequest, compartment_params},
    },
    store::PageStart,
};

/// Header by which a practitioner states why it reads outside its organizations.
pub const BREAK_GLASS: &str = "x-break-glass";

/// Longest reason accepted (it is kept in the AuditEvent).
const REASON_LIMIT: usize = 500;

/// Largest write body read here to find the patients it concerns.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The decision for a practitioner's or clinic admin's request.
pub(super) async fn decide(
    ehr: &Ehr,
    principal: &Principal,
    target: Target,
    request: Request,
) -> Result<Request, ApiError> {
    let Some(practitioner) = principal.practitioner.clone() else {
        return Err(forbidden(format!(
            "a {} token must name its Practitioner (practitioner or fhirUser claim)",
            principal.role.as_str()
        )));
    };
    let orgs = organizations_of(ehr, &practitioner).await?;
    if orgs.is_empty() {
        return Err(forbidden(format!(
            "Practitioner/{practitioner} holds no active PractitionerRole in any organization"
        )));
    }
    let rules = Rules {
        ehr,
        principal,
        orgs,
        glass: break_glass(&request)?,
    };
    rules.decide(target, request).await
}

/// The stated break-the-glass reason, if any.
fn break_glass(request: &Request) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get(BREAK_GLASS) else {
        return Ok(None);
    };
    let reason = value.to_str().unwrap_or_default().trim();
    if reason.is_empty() || reason.len() > REASON_LIMIT {
        return Err(EhrError::BadParameter {
            name: "X-Break-Glass",
            message: format!("state the reason, in at most {REASON_LIMIT} characters"),
        }
        .into());
    }
    Ok(Some(reason.to_string()))
}

struct Rules<'a> {
    ehr: &'a Ehr,
    principal: &'a Principal,
    /// Organization ids.
    orgs: Vec<String>,
    glass: Option<String>,
}

/// How a resource type relates to patients.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Patient,
    /// In the Patient compartment: a clinical record.
    Record,
    /// Anything else: directory and administrative resources.
    Directory,
}

fn kind(rt: &str) -> Kind {
    if rt == "Patient" {
        Kind::Patient
    } else if compartment_params("Patient", rt).is_some() {
        Kind::Record
    } else {
        Kind::Directory
    }
}

impl Rules<'_> {
    fn admin(&self) -> bool {
        self.principal.role == Role::ClinicAdmin
    }

    fn org_list(&self) -> String {
        self.orgs
            .iter()
            .map(|o| format!("Organization/{o}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn decide(&self, target: Target, request: Request) -> Result<Request, ApiError> {
        use Interaction::*;
        let principal = self.principal;
        if target.resource_type() == Some("AuditEvent") {
            return Err(forbidden(
                "AuditEvents are read by the patient they concern and by system (admin) clients",
            ));
        }
        match target {
            Target::Instance {
                rt,
                id,
                interaction: Read,
            } => {
                need(principal, Read, &rt)?;
                self.read(&rt, &id).await?;
                Ok(request)
            }
            Target::Type {
                rt, search: true, ..
            } => {
                need(principal, Search, &rt)?;
                let posted = request.method() == Method::POST;
                let (request, params) = request_params(request, posted).await?;
                self.search(&rt, &params, request).await
            }
            Target::Compartment { rt, id, member } => {
                need(principal, Search, &member)?;
                if rt != "Patient" {
                    return Err(forbidden("compartment searches are by Patient"));
                }
                let (request, params) = request_params(request, false).await?;
                self.no_reach(&params)?;
                self.records_of(&member)?;
                self.patient_visible(&id, true).await?;
                Ok(request)
            }
            Target::Type {
                rt,
                search: false,
                history: false,
                ref needs,
            } if needs == &[Create] && request.method() == Method::POST => {
                need(principal, Create, &rt)?;
                self.write(&rt, None, request).await
            }
            Target::Instance {
                rt,
                id,
                interaction: Update,
            } if request.method() == Method::PUT => {
                need(principal, Update, &rt)?;
                self.write(&rt, Some(&id), request).await
            }
            Target::Instance {
                rt,
                id,
                interaction: Delete,
            } if self.admin() && kind(&rt) == Kind::Directory => {
                need(principal, Delete, &rt)?;
                self.directory_of_mine(&rt, Some(&id), None).await?;
                Ok(request)
            }
            _ => Err(forbidden(format!(
                "a {} token reads, searches, creates and updates (PUT) one record at a time; \
                 deletes, patches, conditional writes, Bundles and history of a type are not \
                 open to it",
                principal.role.as_str()
            ))),
        }
    }

    /// No `_include`, `_revinclude`, `_has` or chains: what they bring may lie outside.
    fn no_reach(&self, params: &[(String, String)]) -> Result<(), ApiError> {
        if reaches_other_types(params) {
            return Err(forbidden(format!(
                "a {} token cannot use _include, _revinclude, _has or chained parameters yet",
                self.principal.role.as_str()
            )));
        }
        Ok(())
    }

    /// Clinic admins see no clinical record.
    fn records_of(&self, rt: &str) -> Result<(), ApiError> {
        if self.admin() && kind(rt) == Kind::Record {
            return Err(forbidden(format!(
                "a clinic-admin token manages registrations and the organization's directory; \
                 {rt} is a clinical record"
            )));
        }
        Ok(())
    }

    async fn read(&self, rt: &str, id: &str) -> Result<(), ApiError> {
        self.records_of(rt)?;
        match kind(rt) {
            Kind::Directory => Ok(()),
            Kind::Patient => self.patient_visible(id, true).await,
            Kind::Record => {
                let Some(current) = self.current(rt, id).await? else {
                    // Not there: the handler says so.
                    return Ok(());
                };
                for patient in self.patients_in(rt, id, &current) {
                    self.patient_visible(&patient, true).await?;
                }
                Ok(())
            }
        }
    }

    async fn search(
        &self,
        rt: &str,
        params: &[(String, String)],
        mut request: Request,
    ) -> Result<Request, ApiError> {
        self.no_reach(params)?;
        self.records_of(rt)?;
        match kind(rt) {
            Kind::Directory => Ok(request),
            Kind::Patient if self.glass.is_some() && !self.admin() => {
                crate::audit::note_break_glass(self.glass.clone().unwrap_or_default());
                Ok(request)
            }
            // The organizations' own patients (visits are reached by reading the patient).
            Kind::Patient => {
                request.extensions_mut().insert(Narrowed::Also(vec![(
                    "organization".to_string(),
                    self.org_list(),
                )]));
                Ok(request)
            }
            Kind::Record => {
                // The compartment's parameters, and `subject`/`patient` where the type has
                // them under another compartment name (Condition's compartment is `patient`,
                // clinicians write `subject`).
                let mut codes = compartment_params("Patient", rt).unwrap_or_default();
                codes.extend(["subject".to_string(), "patient".to_string()]);
                codes.dedup();
                let mut named = Vec::new();
                for (key, value) in params {
                    let code = key.split(':').next().unwrap_or_default();
                    if codes.iter().any(|c| c == code) {
                        named.extend(
                            value
                                .split(',')
                                .map(|v| v.strip_prefix("Patient/").unwrap_or(v).to_string()),
                        );
                    }
                }
                if named.is_empty() {
                    return Err(forbidden(format!(
                        "a practitioner searches one patient's records at a time: name the \
                         patient ({})",
                        codes.join(", ")
                    )));
                }
                for patient in &named {
                    self.patient_visible(patient, true).await?;
                }
                Ok(request)
            }
        }
    }

    /// A create (`id` none) or update: the body, and for an update the current version,
    /// must concern only patients of the organizations (or, for the directory, the
    /// organizations themselves).
    async fn write(
        &self,
        rt: &str,
        id: Option<&str>,
        request: Request,
    ) -> Result<Request, ApiError> {
        let (parts, bytes) = read_body(request, BODY_LIMIT, "the resource").await?;
        let sent: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match kind(rt) {
            Kind::Record if self.admin() => {
                self.records_of(rt)?;
                super::access::if_none_exist_within(&parts.headers, &[])?;
            }
            Kind::Record => {
                let mut patients = self.patients_in(rt, id.unwrap_or_default(), &sent);
                if let Some(id) = id
                    && let Some(current) = self.current(rt, id).await?
                {
                    for patient in self.patients_in(rt, id, &current) {
                        self.patient_visible(&patient, false).await?;
                    }
                }
                patients.sort();
                patients.dedup();
                if patients.is_empty() {
                    return Err(forbidden(format!(
                        "a record written by a practitioner names its patient ({rt} names none)"
                    )));
                }
                for patient in &patients {
                    self.patient_of_mine(patient).await?;
                }
                super::access::if_none_exist_within(&parts.headers, &patients)?;
            }
            Kind::Patient => {
                // Its identifier would find patients of other organizations.
                super::access::if_none_exist_within(&parts.headers, &[])?;
                if let Some(id) = id
                    && self.current("Patient", id).await?.is_some()
                {
                    self.patient_visible(id, false).await?;
                }
                let managing = sent["managingOrganization"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Organization/"));
                if !managing.is_some_and(|m| self.orgs.iter().any(|o| o == m)) {
                    return Err(forbidden(
                        "a Patient written with this token is managed by one of its \
                         organizations (managingOrganization)",
                    ));
                }
            }
            Kind::Directory if !self.admin() => {
                return Err(forbidden(format!(
                    "{rt} is directory data: the organization's clinic admin manages it"
                )));
            }
            Kind::Directory => {
                super::access::if_none_exist_within(&parts.headers, &[])?;
                self.directory_of_mine(rt, id, Some(&sent)).await?
            }
        }
        Ok(Request::from_parts(parts, Body::from(bytes)))
    }

    /// A directory resource a clinic admin may write or delete: it references one of its
    /// organizations (or is one), before and after; a new Practitioner references none yet.
    async fn directory_of_mine(
        &self,
        rt: &str,
        id: Option<&str>,
        sent: Option<&Value>,
    ) -> Result<(), ApiError> {
        let current = match id {
            Some(id) => self.current(rt, id).await?,
            None => None,
        };
        let mine = |resource: &Value| {
            let Some(t) = self.ehr.defs.resource_type(rt) else {
                return false;
            };
            let own_id = resource["id"].as_str().unwrap_or_default();
            (rt == "Organization" && self.orgs.iter().any(|o| o == own_id))
                || extract(t, resource)
                    .references
                    .iter()
                    .any(|(_, _, tt, tid, _)| tt == "Organization" && self.orgs.contains(tid))
        };
        let new_practitioner = rt == "Practitioner" && current.is_none() && sent.is_some();
        let ok = new_practitioner || (current.as_ref().is_none_or(&mine) && sent.is_none_or(&mine));
        if ok {
            Ok(())
        } else {
            Err(forbidden(format!(
                "a clinic-admin token manages the directory resources of its organizations; \
                 this {rt} does not reference one of them"
            )))
        }
    }

    async fn current(&self, rt: &str, id: &str) -> Result<Option<Value>, ApiError> {
        current(self.ehr, rt, id).await
    }

    fn patients_in(&self, rt: &str, id: &str, resource: &Value) -> Vec<String> {
        let Some(t) = self.ehr.defs.resource_type(rt) else {
            return Vec::new();
        };
        patients_of(t, id, resource)
    }

    /// `patient` may be seen: of the organizations, or with break-the-glass when `glass_ok`
    /// (reads and searches); else it does not exist for the caller (404).
    async fn patient_visible(&self, patient: &str, glass_ok: bool) -> Result<(), ApiError> {
        if self.patient_of_mine(patient).await.is_ok() {
            return Ok(());
        }
        match &self.glass {
            Some(reason) if glass_ok && !self.admin() => {
                crate::audit::note_break_glass(reason.clone());
                Ok(())
            }
            _ => Err(EhrError::NotFound {
                resource_type: "Patient",
                id: patient.chars().take(64).collect(),
            }
            .into()),
        }
    }

    /// Whether `patient` is of the organizations (see the module's rules); 404 if not.
    async fn patient_of_mine(&self, patient: &str) -> Result<(), ApiError> {
        let not_found = || -> ApiError {
            EhrError::NotFound {
                resource_type: "Patient",
                id: patient.chars().take(64).collect(),
            }
            .into()
        };
        if !crate::resource::is_valid_id(patient) {
            return Err(not_found());
        }
        let orgs = self.org_list();
        let home = find(
            self.ehr,
            "Patient",
            &[("_id", patient.to_string()), ("organization", orgs.clone())],
            1,
        )
        .await?;
        if !home.is_empty() {
            return Ok(());
        }
        // Visits are not open to clinic admins (they see their own registrations).
        if self.admin() {
            return Err(not_found());
        }
        let visits = find(
            self.ehr,
            "Encounter",
            &[
                ("subject", format!("Patient/{patient}")),
                ("service-provider", orgs),
            ],
            100,
        )
        .await?;
        let visited: Vec<String> = visits
            .iter()
            .filter_map(|v| {
                v["serviceProvider"]["reference"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("Organization/"))
                    .map(str::to_string)
            })
            .filter(|o| self.orgs.contains(o))
            .collect();
        if visited.is_empty() {
            return Err(not_found());
        }
        let consents = find(
            self.ehr,
            "Consent",
            &[
                ("patient", format!("Patient/{patient}")),
                ("status", "active".to_string()),
            ],
            100,
        )
        .await?;
        if visited
            .iter()
            .any(|org| !consents.iter().any(|c| consent_denies(c, org)))
        {
            Ok(())
        } else {
            Err(not_found())
        }
    }
}

/// The current content of `rt/id`, if it exists (deleted: none).
pub(super) async fn current(ehr: &Ehr, rt: &str, id: &str) -> Result<Option<Value>, ApiError> {
    let Some(t) = ehr.defs.resource_type(rt) else {
        return Ok(None);
    };
    if !crate::resource::is_valid_id(id) {
        return Ok(None);
    }
    let version = ehr.store.read(t, id).await?;
    Ok(version
        .filter(|v| !v.deleted)
        .and_then(|v| serde_json::from_str(&v.content).ok()))
}

/// Whether an active Consent denies sharing with `org` (not the patient's home organization,
/// which holds the record): a `deny` provision naming it as an actor, or naming no actor.
pub(super) fn consent_denies(consent: &Value, org: &str) -> bool {
    let provision = &consent["provision"];
    if provision["type"] != "deny" {
        return false;
    }
    let actors = provision["actor"].as_array().cloned().unwrap_or_default();
    actors.is_empty()
        || actors
            .iter()
            .any(|a| a["reference"]["reference"].as_str() == Some(&format!("Organization/{org}")))
}

/// The organizations (ids) where `practitioner` holds an active PractitionerRole.
async fn organizations_of(ehr: &Ehr, practitioner: &str) -> Result<Vec<String>, ApiError> {
    if !crate::resource::is_valid_id(practitioner) {
        return Ok(Vec::new());
    }
    let roles = find(
        ehr,
        "PractitionerRole",
        &[
            ("practitioner", format!("Practitioner/{practitioner}")),
            ("active", "true".to_string()),
        ],
        200,
    )
    .await?;
    let mut orgs: Vec<String> = roles
        .iter()
        .filter_map(|r| {
            r["organization"]["reference"]
                .as_str()
                .and_then(|o| o.strip_prefix("Organization/"))
                .filter(|o| crate::resource::is_valid_id(o))
                .map(str::to_string)
        })
        .collect();
    orgs.sort();
    orgs.dedup();
    Ok(orgs)
}

/// The current resources of `rt` matching `params`, at most `limit`, as JSON.
async fn find(
    ehr: &Ehr,
    rt: &str,
    params: &[(&str, String)],
    limit: usize,
) -> Result<Vec<Value>, ApiError> {
    let t: ResourceType = ehr
        .defs
        .resource_type(rt)
        .ok_or_else(|| EhrError::UnknownType { name: rt.into() })?;
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let search = SearchRequest::parse(t, &params, true)?;
    let page = ehr
        .store
        .search_page(&search, &PageStart::First, limit)
        .await?;
    Ok(page
        .found
        .iter()
        .filter_map(|(_, _, content)| serde_json::from_str(content).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deny_consent_names_the_organizations_it_keeps_out() {
        let deny_b = json!({"provision": {"type": "deny",
            "actor": [{"reference": {"reference": "Organization/b"}}]}});
        assert!(consent_denies(&deny_b, "b"));
        assert!(!consent_denies(&deny_b, "c"));
        let deny_all = json!({"provision": {"type": "deny"}});
        assert!(consent_denies(&deny_all, "c"));
        let permit = json!({"provision": {"type": "permit"}});
        assert!(!consent_denies(&permit, "b"));
    }
}
