//! Sen EHR: the FHIR R4 engine (resource store, history, conditional create, basic search)
//! and its HTTP surface under `/fhir`.
//!
//! [`Ehr::new`] builds the service from a database; [`Ehr::router`] returns its routes.

pub mod api;
pub mod audit;
pub mod bundle;
pub mod capability;
pub mod criteria;
pub mod definitions;
pub mod error;
pub mod fhirpath;
pub mod invariants;
pub mod json;
pub mod migrations;
pub mod patch;
pub mod primitives;
pub mod profiles;
pub mod reindex;
pub mod remote;
pub mod resource;
pub mod search;
pub mod store;
pub mod transaction;
pub mod validation;

use std::{collections::HashMap, sync::Arc};

use sen_platform::{Database, config::FhirConfig};

use crate::{
    definitions::{Definitions, ResourceType},
    error::EhrError,
    patch::{Document, PatchError},
    profiles::{ProfileError, Registry},
    resource::IncomingResource,
    store::ResourceStore,
    validation::{Problem, Severity},
};

/// Name under which this service records its migrations.
pub const SERVICE: &str = "ehr";

/// The EHR service.
#[derive(Debug)]
pub struct Ehr {
    pub store: ResourceStore,
    pub defs: &'static Definitions,
    pub fhir: FhirConfig,
    pub public_url: Option<String>,
    /// Profiles, value sets and code systems: built in, plus `fhir.profile_dir`.
    pub profiles: Registry,
    /// The profile each resource of a type must conform to (`fhir.required_profiles`).
    required: HashMap<ResourceType, String>,
    /// The `$reindex` job of this process.
    pub reindex: reindex::Reindex,
    /// `/fhir/metadata`, rendered once.
    capability: String,
    /// The access record: group committer and relay (see [`audit`]).
    pub audit: audit::Audit,
}

impl Ehr {
    /// Builds the service; fails when a profile cannot be loaded or a required profile is
    /// unknown or of another type, naming the file or setting.
    pub fn new(
        db: Database,
        fhir: FhirConfig,
        public_url: Option<String>,
    ) -> Result<Arc<Self>, ProfileError> {
        let defs = Definitions::r4();
        let profiles = Registry::load(fhir.profile_dir.as_deref())?;
        let mut required = HashMap::new();
        for (type_name, url) in &fhir.required_profiles {
            let setting = |message: String| ProfileError {
                file: format!("fhir.required_profiles.{type_name}"),
                message,
            };
            let rt = defs
                .resource_type(type_name)
                .ok_or_else(|| setting(format!("{type_name:?} is not an R4 resource type")))?;
            let profile = profiles.profile(url).ok_or_else(|| {
                setting(format!(
                    "unknown profile {url}; known: {}",
                    profiles.urls().join(", ")
                ))
            })?;
            if profile.type_name != type_name.as_str() {
                return Err(setting(format!(
                    "{url} constrains {}, not {type_name}",
                    profile.type_name
                )));
            }
            required.insert(rt, profile.url.clone());
        }
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let capability =
            capability::capability_statement(defs, env!("CARGO_PKG_VERSION"), &started).to_string();
        let audit = audit::Audit::start(
            db.clone(),
            fhir.audit_relay_per_second,
            std::time::Duration::from_millis(fhir.audit_catch_up_ms),
        );
        let store = ResourceStore::new(db, defs);
        let _ = store.remote_eligible.set(remote::Eligible::new(
            profiles.value_set_codes(remote::VALUE_SET, remote::ICD10),
        ));
        let ehr = Arc::new(Self {
            store,
            defs,
            fhir,
            public_url,
            profiles,
            required,
            reindex: reindex::Reindex::default(),
            capability,
            audit,
        });
        tokio::spawn(audit::relay::run(
            Arc::downgrade(&ehr),
            ehr.audit.wake_handle(),
        ));
        Ok(ehr)
    }

    /// Parses a resource sent for `rt` (and `id`), validates it against the R4 definitions,
    /// then against the profiles it claims that this server knows and the profile required
    /// for its type.
    pub fn accept(
        &self,
        body: &[u8],
        rt: ResourceType,
        id: Option<&str>,
    ) -> Result<IncomingResource, EhrError> {
        let resource = IncomingResource::parse_for(body, self.defs, rt, id)?;
        self.conform(&resource, None)?;
        Ok(resource)
    }

    /// Applies a patch document to the current text of `rt/id`; answers the result, checked
    /// like any write. A patch may not change the resource's type or id.
    pub fn patched(
        &self,
        rt: ResourceType,
        id: &str,
        current: &str,
        document: &Document,
    ) -> Result<IncomingResource, EhrError> {
        let patched = document.apply(current).map_err(|e| match e {
            PatchError::Malformed(message) => EhrError::PatchMalformed { message },
            PatchError::Failed(message) => EhrError::PatchFailed { message },
        })?;
        let resource = IncomingResource::parse(patched.as_bytes(), self.defs)?;
        if resource.resource_type != rt || resource.id.as_deref() != Some(id) {
            return Err(EhrError::PatchChangesIdentity);
        }
        resource.validate()?;
        self.conform(&resource, None)?;
        Ok(resource)
    }

    /// Profile validation of a resource that passed base validation: the profiles it claims
    /// (unknown ones are left alone), the one required for its type, and `extra`. Errors
    /// refuse it (422); warnings are returned.
    pub fn conform(
        &self,
        resource: &IncomingResource,
        extra: Option<&str>,
    ) -> Result<Vec<Problem>, EhrError> {
        let claimed = resource.claimed_profiles();
        let mut urls: Vec<&str> = claimed
            .iter()
            .map(String::as_str)
            .filter(|u| self.profiles.profile(u).is_some())
            .collect();
        urls.extend(
            self.required
                .get(&resource.resource_type)
                .map(String::as_str),
        );
        urls.extend(extra);
        urls.sort_unstable();
        urls.dedup();
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        let value = resource.tree();
        let mut problems = Vec::new();
        for url in urls {
            let profile = self
                .profiles
                .profile(url)
                .ok_or_else(|| EhrError::BadParameter {
                    name: "profile",
                    message: format!("unknown profile {url}"),
                })?;
            if profile.type_name != resource.resource_type.as_str() {
                return Err(EhrError::BadParameter {
                    name: "profile",
                    message: format!(
                        "{url} constrains {}, not {}",
                        profile.type_name, resource.resource_type
                    ),
                });
            }
            problems.extend(self.profiles.check(profile, value));
        }
        if problems.iter().any(|p| p.severity == Severity::Error) {
            return Err(EhrError::ProfileViolation { problems });
        }
        Ok(problems)
    }

    /// The service's routes; every one but the CapabilityStatement requires a token `auth`
    /// accepts.
    pub fn router(self: &Arc<Self>, auth: Arc<sen_platform::auth::Auth>) -> axum::Router {
        api::router(self.clone(), auth)
    }
}
