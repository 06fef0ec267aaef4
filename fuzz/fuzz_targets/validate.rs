//! Arbitrary bytes through the paths every client write takes: parse, validation (structure,
//! bindings, FHIRPath invariants, the Vietnamese profiles), the stored form, JSON Patch and
//! FHIRPath Patch application, and FHIRPath itself (the bytes as an expression). Nothing here
//! may panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sen_ehr::{
    definitions::Definitions, fhirpath::Expression, patch, profiles::Registry,
    resource::IncomingResource,
};

const PATIENT: &str = r##"{"resourceType":"Patient","id":"p","name":[{"family":"Nguyễn","given":["Hoa"]}],"birthDate":"1990-04-30","deceasedBoolean":false,"contained":[{"resourceType":"Organization","id":"o"}],"managingOrganization":{"reference":"#o"}}"##;

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| Registry::load(None).expect("built-in profiles load"));
    let defs = Definitions::r4();
    if let Ok(resource) = IncomingResource::parse(data, defs) {
        if resource.validate().is_ok() {
            let value = resource.tree();
            for url in registry.urls() {
                let profile = registry.profile(url).expect("listed");
                if profile.type_name == resource.resource_type.as_str() {
                    let _ = registry.check(profile, value);
                }
            }
        }
        let stored = resource.stored_json("fuzz", 1, "2026-01-01T00:00:00.000Z");
        let again =
            IncomingResource::parse(stored.as_bytes(), defs).expect("stored JSON parses again");
        assert_eq!(again.resource_type, resource.resource_type);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The same bytes as patch documents against a fixed resource...
        let _ = patch::Document::JsonPatch(text.to_string()).apply(PATIENT);
        let _ = patch::Document::FhirPath(text.to_string()).apply(PATIENT);
        // ...and as a FHIRPath expression evaluated on it.
        if let Ok(expression) = Expression::parse(text) {
            let patient: serde_json::Value = serde_json::from_str(PATIENT).expect("valid");
            let _ = expression.evaluate_on(&patient);
        }
    }
});
