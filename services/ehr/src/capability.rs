//! The CapabilityStatement at `/fhir/metadata`, generated from what is implemented.
//!
//! It is built as JSON rather than with `fhir-sdk`'s R4B model: R4B's resource-type code
//! list lacks R4 types this server serves (e.g. `EffectEvidenceSynthesis`,
//! `MedicinalProduct`), so the typed model cannot describe an R4 server.

use serde_json::{Value, json};

use crate::{
    definitions::Definitions,
    search::params::{ParamType, SearchParams},
};

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

pub fn capability_statement(defs: &Definitions, software_version: &str, date: &str) -> Value {
    let resources: Vec<Value> = defs
        .resource_types()
        .map(|rt| {
            let mut search: Vec<_> = SearchParams::r4().of(rt).collect();
            search.sort_by(|a, b| a.code.cmp(&b.code));
            let params: Vec<Value> = search
                .iter()
                .map(|p| {
                    let kind = serde_json::to_value(p.kind).unwrap_or(Value::Null);
                    json!({"name": p.code, "type": kind})
                })
                .collect();
            let mut includes: Vec<String> = search
                .iter()
                .filter(|p| p.kind == ParamType::Reference)
                .map(|p| format!("{rt}:{}", p.code))
                .collect();
            includes.push("*".into());
            // AuditEvents are permanent (the store refuses to change or delete one).
            let permanent = rt.as_str() == "AuditEvent";
            let interactions: Vec<Value> = TYPE_INTERACTIONS
                .iter()
                .filter(|code| !(permanent && matches!(**code, "update" | "patch" | "delete")))
                .map(|code| json!({"code": code}))
                .collect();
            json!({
                "type": rt.as_str(),
                "profile": defs.type_def(rt).url,
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": !permanent,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": !permanent,
                "conditionalDelete": if permanent { "not-supported" } else { "single" },
                "searchParam": params,
                "searchInclude": includes,
                "searchRevInclude": ["*"],
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
            "searchParam": [
                {"name": "_sort", "type": "special"}, {"name": "_count", "type": "number"},
                {"name": "_include", "type": "special"}, {"name": "_revinclude", "type": "special"},
                {"name": "_total", "type": "special"}, {"name": "_summary", "type": "special"},
                {"name": "_elements", "type": "special"}],
        }],
    })
}
