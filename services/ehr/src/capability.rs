//! The CapabilityStatement at `/fhir/metadata`, generated from what is implemented.
//!
//! It is built as JSON rather than with `fhir-sdk`'s R4B model: R4B's resource-type code
//! list lacks R4 types this server serves (e.g. `EffectEvidenceSynthesis`,
//! `MedicinalProduct`), so the typed model cannot describe an R4 server.

use serde_json::{Value, json};

use crate::definitions::Definitions;

/// Instance interactions implemented for every type.
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// Search parameters the basic search answers today.
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    (
        "_id",
        "token",
        "http://hl7.org/fhir/SearchParameter/Resource-id",
    ),
    (
        "identifier",
        "token",
        "http://hl7.org/fhir/SearchParameter/identifier",
    ),
];

pub fn capability_statement(defs: &Definitions, software_version: &str, date: &str) -> Value {
    let resources: Vec<Value> = defs
        .resource_types()
        .map(|rt| {
            let has_identifier = defs.type_def(rt).elements.iter().any(|e| e.name == "identifier");
            let params: Vec<Value> = SEARCH_PARAMS
                .iter()
                .filter(|(name, _, _)| *name != "identifier" || has_identifier)
                .map(|(name, kind, url)| json!({"name": name, "type": kind, "definition": url}))
                .collect();
            let mut conditional: Vec<&str> = vec![];
            if has_identifier {
                conditional.push("identifier");
            }
            json!({
                "type": rt.as_str(),
                "profile": defs.type_def(rt).url,
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": params,
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Sen",
        "kind": "instance",
        "software": {"name": "Sen", "version": software_version},
        "implementation": {"description": "Sen telehealth and electronic health record backend"},
        "fhirVersion": defs.fhir_version,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "history-system"}, {"code": "transaction"}, {"code": "batch"}],
        }],
    })
}
