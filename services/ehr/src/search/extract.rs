//! Index values of a resource: each search parameter's FHIRPath expression evaluated on it,
//! and the values found turned into rows of the index table of the parameter's type.
//!
//! Extra rows serve modifiers: `{code}:text` (string rows of a token's display text),
//! `{code}:of-type` (an identifier's type with its value), `{code}:identifier` (token rows of a
//! reference's logical identifier).

use serde_json::Value;

use super::{
    dates,
    params::{ParamType, SearchParams, Stored},
    text::fold,
};
use crate::{
    definitions::ResourceType,
    fhirpath::{self, Env, Item, Node},
};

mod check;
pub use check::stands_for;

/// Index rows of one resource, by table. Every row starts with the parameter code; `group`
/// ties the components of one composite value together (0 otherwise).
#[derive(Debug, Default, PartialEq)]
pub struct IndexRows {
    /// (code, group, folded value, exact value)
    pub strings: Vec<(String, i64, String, String)>,
    /// (code, group, system ("" when none), code)
    pub tokens: Vec<(String, i64, String, String)>,
    /// (code, group, target type, target id, url)
    pub references: Vec<(String, i64, String, String, String)>,
    /// (code, group, low ms, high ms)
    pub dates: Vec<(String, i64, i64, i64)>,
    /// (code, group, value, system, unit code) — numbers have empty system and unit
    pub numbers: Vec<(String, i64, f64, String, String)>,
    /// (code, group, uri)
    pub uris: Vec<(String, i64, String)>,
}

impl IndexRows {
    pub fn len(&self) -> usize {
        self.strings.len()
            + self.tokens.len()
            + self.references.len()
            + self.dates.len()
            + self.numbers.len()
            + self.uris.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, mut other: IndexRows) {
        self.strings.append(&mut other.strings);
        self.tokens.append(&mut other.tokens);
        self.references.append(&mut other.references);
        self.dates.append(&mut other.dates);
        self.numbers.append(&mut other.numbers);
        self.uris.append(&mut other.uris);
    }
}

/// Every index row of `resource` (its stored JSON, with `id` and `meta`) the store writes:
/// none for a parameter whose values other parameters' rows hold (see [`Stored`]).
pub fn extract(rt: ResourceType, resource: &Value) -> IndexRows {
    extract_params(rt, resource, true, |_| true)
}

/// The rows of `resource` for each parameter under its own code, as if none were stored
/// through another's: what [`extract`]'s rows stand for. For checking that they do.
pub fn extract_unshared(rt: ResourceType, resource: &Value) -> IndexRows {
    extract_params(rt, resource, false, |_| true)
}

/// The index rows of `resource` for the parameters whose code `wanted` accepts; with
/// `stored`, only the rows the store writes.
fn extract_params(
    rt: ResourceType,
    resource: &Value,
    stored: bool,
    wanted: impl Fn(&str) -> bool,
) -> IndexRows {
    let mut rows = IndexRows::default();
    let root = fhirpath::resource_node(resource);
    let env = Env {
        resource: Some(root.clone()),
        root_resource: None,
        context: Some(root.clone()),
    };
    let mut group = 0;
    let mut params: Vec<_> = SearchParams::r4().of(rt).collect();
    params.sort_by(|a, b| a.code.cmp(&b.code));
    for param in params {
        // Served from the resource row itself (its id and last_updated columns).
        if param.code == "_id" || param.code == "_lastUpdated" || !wanted(&param.code) {
            continue;
        }
        let only_identifiers = match (&param.stored, stored) {
            (Stored::Union(_), true) => continue,
            (Stored::Targets { .. }, true) => true,
            _ => false,
        };
        let Ok(items) = param.expression.evaluate(std::slice::from_ref(&root), &env) else {
            continue;
        };
        if only_identifiers {
            let mut own = IndexRows::default();
            for item in &items {
                add(&mut own, &param.code, param.kind, 0, item, true);
            }
            let code = format!("{}:identifier", param.code);
            rows.tokens
                .extend(own.tokens.into_iter().filter(|row| row.0 == code));
            continue;
        }
        if param.kind == ParamType::Composite {
            // A group is indexed only when every component has a value: a search always
            // names all of them, so a partial group could never match.
            for item in &items {
                group += 1;
                let mut parts = IndexRows::default();
                let mut complete = true;
                for component in &param.components {
                    let before = parts.len();
                    if let Ok(values) = component
                        .expression
                        .evaluate(std::slice::from_ref(item), &env)
                    {
                        for value in &values {
                            add(&mut parts, &param.code, component.kind, group, value, false);
                        }
                    }
                    complete &= parts.len() > before;
                }
                if complete {
                    rows.append(parts);
                }
            }
            continue;
        }
        for item in &items {
            add(&mut rows, &param.code, param.kind, 0, item, true);
        }
    }
    typed_contained(resource, &mut rows);
    dedup(&mut rows);
    rows
}

/// A reference to a contained resource (`#newborn`) gets that resource's type: it has no id
/// in the store, but `subject` pointing at a contained Patient is a patient, as
/// `.where(resolve() is Patient)` says (see [`Stored::Targets`]). Its target id stays empty.
fn typed_contained(resource: &Value, rows: &mut IndexRows) {
    let Some(contained) = resource.get("contained").and_then(Value::as_array) else {
        return;
    };
    for (_, _, target_type, target_id, url) in &mut rows.references {
        let Some(local) = url.strip_prefix('#') else {
            continue;
        };
        if let Some(found) = contained.iter().find(|c| c["id"].as_str() == Some(local))
            && let Some(rt) = found["resourceType"].as_str()
        {
            *target_type = rt.to_string();
            target_id.clear();
        }
    }
}

/// Drops repeated rows (two names with the same family, say): sorted, then deduplicated.
fn dedup(rows: &mut IndexRows) {
    rows.strings.sort_unstable();
    rows.strings.dedup();
    rows.tokens.sort_unstable();
    rows.tokens.dedup();
    rows.references.sort_unstable();
    rows.references.dedup();
    rows.dates.sort_unstable();
    rows.dates.dedup();
    rows.numbers.sort_unstable_by(|a, b| {
        (&a.0, a.1, &a.3, &a.4)
            .cmp(&(&b.0, b.1, &b.3, &b.4))
            .then(a.2.total_cmp(&b.2))
    });
    rows.numbers.dedup();
    rows.uris.sort_unstable();
    rows.uris.dedup();
}

fn text_of<'a>(node: &Node<'a>) -> Option<&'a str> {
    node.value.and_then(Value::as_str)
}

fn field<'a>(node: &Node<'a>, name: &str) -> Option<&'a Value> {
    node.value.and_then(|v| v.get(name))
}

fn field_str<'a>(node: &Node<'a>, name: &str) -> Option<&'a str> {
    field(node, name).and_then(Value::as_str)
}

/// Adds the rows of one value; `extras` adds the rows that serve `:text`, `:of-type` and
/// `:identifier` (not for composite components, which those modifiers never reach).
fn add(
    rows: &mut IndexRows,
    code: &str,
    kind: ParamType,
    group: i64,
    item: &Item<'_>,
    extras: bool,
) {
    let Item::Node(node) = item else {
        // Computed values index as their text: a boolean (`deceased.exists() and …`), a string.
        if let Item::Boolean(b) = item
            && kind == ParamType::Token
        {
            let value = if *b { "true" } else { "false" };
            rows.tokens
                .push((code.into(), group, String::new(), value.into()));
        }
        if let Item::String(s) = item {
            match kind {
                ParamType::String => {
                    rows.strings
                        .push((code.into(), group, fold(s), s.to_string()))
                }
                ParamType::Token => {
                    rows.tokens
                        .push((code.into(), group, String::new(), s.to_string()))
                }
                ParamType::Uri => rows.uris.push((code.into(), group, s.to_string())),
                _ => {}
            }
        }
        return;
    };
    let ty = node.ty.code;
    match kind {
        ParamType::String => {
            let mut push = |s: &str| {
                if !s.is_empty() {
                    rows.strings
                        .push((code.into(), group, fold(s), s.to_string()));
                }
            };
            match ty {
                "HumanName" => {
                    for key in ["family", "given", "prefix", "suffix", "text"] {
                        strings_of(field(node, key), &mut push);
                    }
                }
                "Address" => {
                    for key in [
                        "line",
                        "city",
                        "district",
                        "state",
                        "postalCode",
                        "country",
                        "text",
                    ] {
                        strings_of(field(node, key), &mut push);
                    }
                }
                _ => {
                    if let Some(s) = text_of(node) {
                        push(s);
                    }
                }
            }
        }
        ParamType::Token => {
            let mut token = |system: Option<&str>, value: &str| {
                if !value.is_empty() {
                    rows.tokens.push((
                        code.into(),
                        group,
                        system.unwrap_or_default().to_string(),
                        value.to_string(),
                    ));
                }
            };
            let text_code = format!("{code}:text");
            match ty {
                "Coding" => {
                    if let Some(c) = field_str(node, "code") {
                        token(field_str(node, "system"), c);
                    }
                    if let Some(d) = field_str(node, "display") {
                        rows.strings
                            .push((text_code, group, fold(d), d.to_string()));
                    }
                }
                "CodeableConcept" => {
                    for coding in field(node, "coding")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(c) = coding.get("code").and_then(Value::as_str) {
                            token(coding.get("system").and_then(Value::as_str), c);
                        }
                        if let Some(d) = coding.get("display").and_then(Value::as_str) {
                            rows.strings
                                .push((text_code.clone(), group, fold(d), d.to_string()));
                        }
                    }
                    if let Some(t) = field_str(node, "text") {
                        rows.strings
                            .push((text_code, group, fold(t), t.to_string()));
                    }
                }
                "Identifier" => {
                    if let Some(v) = field_str(node, "value") {
                        token(field_str(node, "system"), v);
                        for coding in field(node, "type")
                            .and_then(|t| t.get("coding"))
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter(|_| extras)
                        {
                            if let Some(c) = coding.get("code").and_then(Value::as_str) {
                                rows.tokens.push((
                                    format!("{code}:of-type"),
                                    group,
                                    coding
                                        .get("system")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default()
                                        .to_string(),
                                    format!("{c}|{v}"),
                                ));
                            }
                        }
                    }
                    if let Some(t) = field(node, "type")
                        .and_then(|t| t.get("text"))
                        .and_then(Value::as_str)
                    {
                        rows.strings
                            .push((text_code, group, fold(t), t.to_string()));
                    }
                }
                "ContactPoint" => {
                    if let Some(v) = field_str(node, "value") {
                        token(None, v);
                    }
                }
                _ => match node.value {
                    Some(Value::String(s)) => token(None, s),
                    Some(Value::Bool(b)) => token(None, if *b { "true" } else { "false" }),
                    Some(Value::Number(n)) => token(None, &n.to_string()),
                    _ => {}
                },
            }
        }
        ParamType::Reference => match ty {
            "Reference" => {
                if let Some(reference) = field_str(node, "reference") {
                    let (target_type, target_id) = split_reference(reference);
                    rows.references.push((
                        code.into(),
                        group,
                        target_type,
                        target_id,
                        reference.to_string(),
                    ));
                }
                if let Some(identifier) = field(node, "identifier").filter(|_| extras)
                    && let Some(v) = identifier.get("value").and_then(Value::as_str)
                {
                    rows.tokens.push((
                        format!("{code}:identifier"),
                        group,
                        identifier
                            .get("system")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        v.to_string(),
                    ));
                }
            }
            _ => {
                if let Some(url) = text_of(node) {
                    let (target_type, target_id) = split_reference(url);
                    rows.references.push((
                        code.into(),
                        group,
                        target_type,
                        target_id,
                        url.to_string(),
                    ));
                }
            }
        },
        ParamType::Date => {
            let mut push = |low: Option<i64>, high: Option<i64>| {
                if low.is_some() || high.is_some() {
                    rows.dates.push((
                        code.into(),
                        group,
                        low.unwrap_or(i64::MIN),
                        high.unwrap_or(i64::MAX),
                    ));
                }
            };
            match ty {
                "Period" => push(
                    field_str(node, "start").and_then(dates::range).map(|r| r.0),
                    field_str(node, "end").and_then(dates::range).map(|r| r.1),
                ),
                "Timing" => {
                    for event in field(node, "event")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some((low, high)) = event.as_str().and_then(dates::range) {
                            push(Some(low), Some(high));
                        }
                    }
                    if let Some(bounds) = field(node, "repeat").and_then(|r| r.get("boundsPeriod"))
                    {
                        push(
                            bounds
                                .get("start")
                                .and_then(Value::as_str)
                                .and_then(dates::range)
                                .map(|r| r.0),
                            bounds
                                .get("end")
                                .and_then(Value::as_str)
                                .and_then(dates::range)
                                .map(|r| r.1),
                        );
                    }
                }
                _ => {
                    if let Some((low, high)) = text_of(node).and_then(dates::range) {
                        push(Some(low), Some(high));
                    }
                }
            }
        }
        ParamType::Number => {
            if let Some(n) = node.value.and_then(Value::as_f64) {
                rows.numbers
                    .push((code.into(), group, n, String::new(), String::new()));
            }
        }
        ParamType::Quantity => {
            if let Some(n) = field(node, "value").and_then(Value::as_f64) {
                let (system, unit) = if ty == "Money" {
                    (
                        "urn:iso:std:iso:4217",
                        field_str(node, "currency").unwrap_or_default(),
                    )
                } else {
                    (
                        field_str(node, "system").unwrap_or_default(),
                        field_str(node, "code")
                            .or_else(|| field_str(node, "unit"))
                            .unwrap_or_default(),
                    )
                };
                rows.numbers
                    .push((code.into(), group, n, system.to_string(), unit.to_string()));
            }
        }
        ParamType::Uri => {
            if let Some(u) = text_of(node) {
                rows.uris.push((code.into(), group, u.to_string()));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn strings_of(value: Option<&Value>, push: &mut impl FnMut(&str)) {
    match value {
        Some(Value::String(s)) => push(s),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(push),
        _ => {}
    }
}

/// `Patient/123`, `http://host/fhir/Patient/123/_history/2` → ("Patient", "123"); other URLs
/// (and contained `#id` references) → ("", "").
fn split_reference(reference: &str) -> (String, String) {
    let path = reference.split(['?', '#']).next().unwrap_or_default();
    let path = match path.find("/_history/") {
        Some(i) => &path[..i],
        None => path,
    };
    let mut segments = path.rsplit('/');
    let (Some(id), Some(rt)) = (segments.next(), segments.next()) else {
        return (String::new(), String::new());
    };
    if crate::definitions::Definitions::r4()
        .resource_type(rt)
        .is_some()
        && !id.is_empty()
    {
        (rt.to_string(), id.to_string())
    } else {
        (String::new(), String::new())
    }
}

/// The patients whose compartment (R4 CompartmentDefinition) a resource of type `rt` with
/// index `rows` belongs to: itself for a Patient, else the Patient targets of its compartment
/// parameters (an Observation's `subject`, `performer`, …). What an access record names.
pub fn compartment_patients(rt: &str, id: &str, rows: &IndexRows) -> Vec<String> {
    if rt == "Patient" {
        return vec![id.to_string()];
    }
    let Some(codes) = crate::search::query::compartment_row_codes("Patient", rt) else {
        return Vec::new();
    };
    let mut patients: Vec<String> = rows
        .references
        .iter()
        .filter(|(code, _, target_type, target_id, _)| {
            target_type == "Patient" && !target_id.is_empty() && codes.contains(code)
        })
        .map(|(_, _, _, target_id, _)| target_id.clone())
        .collect();
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// [`compartment_patients`] of a resource given as JSON, evaluating only its compartment
/// parameters (what a write's access record or a practitioner's access check needs, not the
/// whole index).
pub fn patients_of(rt: ResourceType, id: &str, resource: &Value) -> Vec<String> {
    let codes =
        crate::search::query::compartment_params("Patient", rt.as_str()).unwrap_or_default();
    if rt.as_str() != "Patient" && codes.is_empty() {
        return Vec::new();
    }
    let rows = extract_params(rt, resource, false, |code| codes.iter().any(|c| c == code));
    compartment_patients(rt.as_str(), id, &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_patient_and_an_observation_index_what_clinics_search_for() {
        let defs = crate::definitions::Definitions::r4();
        let patient = json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1", "lastUpdated": "2026-11-26T10:00:00.000Z"},
            "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/national_id", "value": "087090001234",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}}],
            "name": [{"family": "Nguyễn", "given": ["Thị", "Hoa"]}], "gender": "female", "birthDate": "1990-04-30",
            "generalPractitioner": [{"reference": "Practitioner/d1"}]});
        let rows = extract(defs.resource_type("Patient").unwrap(), &patient);
        let has_string =
            |code: &str, folded: &str| rows.strings.iter().any(|r| r.0 == code && r.2 == folded);
        assert!(
            has_string("family", "nguyen")
                && has_string("name", "hoa")
                && has_string("given", "thi")
        );
        assert!(
            rows.tokens
                .contains(&("gender".into(), 0, String::new(), "female".into()))
        );
        assert!(rows.tokens.contains(&(
            "identifier".into(),
            0,
            "http://fhir.ehealth.gov.vn/core/sid/national_id".into(),
            "087090001234".into()
        )));
        assert!(
            rows.tokens
                .iter()
                .any(|r| r.0 == "identifier:of-type" && r.3 == "NI|087090001234")
        );
        assert!(
            !rows.tokens.iter().any(|r| r.0 == "_id"),
            "the resource row serves _id"
        );
        assert!(rows.references.contains(&(
            "general-practitioner".into(),
            0,
            "Practitioner".into(),
            "d1".into(),
            "Practitioner/d1".into()
        )));
        let birth = rows.dates.iter().find(|r| r.0 == "birthdate").unwrap();
        assert_eq!((birth.2, birth.3), dates::range("1990-04-30").unwrap());
        assert!(!rows.dates.iter().any(|r| r.0 == "_lastUpdated"));

        let observation = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-26T08:30:00+07:00",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]});
        let rows = extract(defs.resource_type("Observation").unwrap(), &observation);
        assert!(rows.tokens.contains(&(
            "code".into(),
            0,
            "http://loinc.org".into(),
            "8867-4".into()
        )));
        assert!(
            rows.strings
                .iter()
                .any(|r| r.0 == "code:text" && r.2 == "heart rate")
        );
        assert!(
            rows.references
                .iter()
                .any(|r| r.0 == "subject" && r.3 == "p1")
        );
        // `patient` is `subject` pointing at a Patient: searched through subject's rows.
        assert!(!rows.references.iter().any(|r| r.0 == "patient"));
        assert!(stands_for(defs.resource_type("Observation").unwrap(), &observation).is_empty());
        assert!(rows.numbers.contains(&(
            "value-quantity".into(),
            0,
            72.0,
            "http://unitsofmeasure.org".into(),
            "/min".into()
        )));
        // The composite ties each component's code to its own value.
        let groups: Vec<i64> = rows
            .tokens
            .iter()
            .filter(|r| r.0 == "component-code-value-quantity" && r.3 == "8480-6")
            .map(|r| r.1)
            .collect();
        assert_eq!(groups.len(), 1);
        assert!(
            rows.numbers
                .iter()
                .any(|r| r.0 == "component-code-value-quantity"
                    && r.1 == groups[0]
                    && r.2 == 120.0)
        );
    }

    #[test]
    fn parameters_that_repeat_others_are_searched_through_their_rows() {
        let defs = crate::definitions::Definitions::r4();
        let params = SearchParams::r4();
        let stored = |rt: &str, code: &str| {
            params
                .get(defs.resource_type(rt).unwrap(), code)
                .unwrap()
                .stored
                .clone()
        };
        let union = |codes: &[&str]| Stored::Union(codes.iter().map(|c| c.to_string()).collect());
        assert_eq!(
            stored("Observation", "combo-code"),
            union(&["code", "component-code"])
        );
        assert_eq!(
            stored("Observation", "combo-value-quantity"),
            union(&["component-value-quantity", "value-quantity"])
        );
        assert_eq!(
            stored("Observation", "combo-code-value-quantity"),
            union(&["code-value-quantity", "component-code-value-quantity"])
        );
        let patient_subject = Stored::Targets {
            code: "subject".into(),
            target: "Patient".into(),
        };
        assert_eq!(stored("Observation", "patient"), patient_subject);
        assert_eq!(stored("Encounter", "patient"), patient_subject);
        // Parameters of their own: different expressions, or one not in the other.
        for (rt, code) in [
            ("Observation", "code"),
            ("Observation", "subject"),
            ("Observation", "value-string"),
            ("Patient", "name"),
            ("Patient", "family"),
            ("AllergyIntolerance", "patient"),
        ] {
            assert_eq!(stored(rt, code), Stored::Own, "{rt}.{code}");
        }

        // What the rows stand for, on values that could tell them apart: a Group subject
        // (not a patient), an identifier-only performer, a component code with a text, a
        // value concept.
        let observation = json!({"resourceType": "Observation", "id": "o2", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
            "subject": {"reference": "Group/g1"},
            "performer": [{"identifier": {"system": "urn:x", "value": "n1"}}],
            "valueCodeableConcept": {"coding": [{"system": "urn:c", "code": "pos"}]},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
                    "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "dataAbsentReason": {"coding": [{"system": "urn:d", "code": "error"}]}}]});
        let rt = defs.resource_type("Observation").unwrap();
        assert_eq!(stands_for(rt, &observation), Vec::<String>::new());
        let rows = extract(rt, &observation);
        assert!(!rows.references.iter().any(|r| r.0 == "patient"));
        assert!(!rows.tokens.iter().any(|r| r.0.starts_with("combo-")));
        let encounter = json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:pid", "value": "7"}}});
        let rt = defs.resource_type("Encounter").unwrap();
        assert_eq!(stands_for(rt, &encounter), Vec::<String>::new());
        // The patient's identifier rows stay its own; its reference rows are subject's.
        let rows = extract(rt, &encounter);
        assert!(
            rows.tokens
                .iter()
                .any(|r| r.0 == "patient:identifier" && r.3 == "7")
        );
        assert!(!rows.references.iter().any(|r| r.0 == "patient"));
        assert_eq!(
            compartment_patients("Encounter", "e1", &rows),
            vec!["p1".to_string()]
        );
        // A contained patient is a patient (resolve() finds it) with no id in the store.
        let newborn = json!({"resourceType": "Observation", "id": "o3", "status": "final",
            "contained": [{"resourceType": "Patient", "id": "newborn"}],
            "code": {"text": "Apgar"}, "subject": {"reference": "#newborn"}});
        let rt = defs.resource_type("Observation").unwrap();
        assert_eq!(stands_for(rt, &newborn), Vec::<String>::new());
        let rows = extract(rt, &newborn);
        assert!(
            rows.references
                .iter()
                .any(|r| r.0 == "subject" && r.2 == "Patient" && r.3.is_empty())
        );
        assert!(compartment_patients("Observation", "o3", &rows).is_empty());
    }
}
