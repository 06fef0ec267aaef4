//! Sen EHR: the FHIR R4 engine (resource store, history, conditional create, basic search)
//! and its HTTP surface under `/fhir`.
//!
//! [`Ehr::new`] builds the service from a database; [`Ehr::router`] returns its routes.

pub mod api;
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
pub mod resource;
pub mod store;
pub mod transaction;
pub mod validation;

use std::sync::Arc;

use sen_platform::{Database, config::FhirConfig};

use crate::{definitions::Definitions, store::ResourceStore};

/// Name under which this service records its migrations.
pub const SERVICE: &str = "ehr";

/// The EHR service.
#[derive(Debug)]
pub struct Ehr {
    pub store: ResourceStore,
    pub defs: &'static Definitions,
    pub fhir: FhirConfig,
    pub public_url: Option<String>,
    /// `/fhir/metadata`, rendered once.
    capability: String,
}

impl Ehr {
    pub fn new(db: Database, fhir: FhirConfig, public_url: Option<String>) -> Arc<Self> {
        let defs = Definitions::r4();
        let started = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let capability =
            capability::capability_statement(defs, env!("CARGO_PKG_VERSION"), &started).to_string();
        Arc::new(Self {
            store: ResourceStore::new(db, defs),
            defs,
            fhir,
            public_url,
            capability,
        })
    }

    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(self.clone())
    }
}
