//! Structural validation against the R4 StructureDefinition snapshots committed in
//! `fhir-profiles/r4/elements.json`: element names (unknown elements are errors), choice
//! types, cardinality, JSON kinds, primitive formats, contained and nested resources, and
//! primitive extensions (`_element`). Every problem found is reported, each located by a
//! FHIRPath expression. Terminology bindings and FHIRPath invariants are not checked yet.

use std::{collections::HashMap, sync::OnceLock};

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::{Map, Value};

const ELEMENTS_JSON: &str = include_str!("../../../fhir-profiles/r4/elements.json");

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub severity: Severity,
    pub expression: String,
    pub message: String,
}

/// Errors refuse a write; warnings are reported and never block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Unknown element, wrong JSON kind, wrong cardinality.
    Structure,
    /// A required element is missing.
    Required,
    /// A primitive's value has the wrong format.
    Value,
    /// A FHIRPath invariant of the definitions does not hold.
    Invariant,
}

/// One row of the element table: path below the root, min, max, type codes, content reference,
/// required value set.
type Row = (
    String,
    u32,
    String,
    Vec<String>,
    Option<String>,
    Option<String>,
);

#[derive(Debug, Deserialize)]
struct File {
    types: HashMap<String, Vec<Row>>,
    #[serde(rename = "valueSets")]
    value_sets: HashMap<String, Vec<(String, String)>>,
}

/// The codes of a value set the base specification enumerates.
#[derive(Debug, Default)]
struct ValueSet {
    by_system: HashMap<String, std::collections::HashSet<String>>,
}

impl ValueSet {
    fn has_code(&self, code: &str) -> bool {
        self.by_system.values().any(|codes| codes.contains(code))
    }
}

#[derive(Debug)]
pub(crate) struct Element {
    /// Last path segment, without `[x]`.
    pub(crate) name: String,
    /// Path below the root of the type that defines it (`contact.name`).
    pub(crate) path: String,
    pub(crate) choice: bool,
    min: u32,
    pub(crate) many: bool,
    prohibited: bool,
    pub(crate) types: Vec<String>,
    pub(crate) content_reference: Option<String>,
    /// Defines elements of its own (a backbone element).
    pub(crate) backbone: bool,
    /// Required binding to a value set enumerated in the definitions.
    binding: Option<String>,
}

/// Elements of one type, grouped under their parent path ("" for the root).
#[derive(Debug, Default)]
struct Table {
    children: FxHashMap<String, Vec<Element>>,
}

/// The validator for R4: built once from the committed definitions.
#[derive(Debug)]
pub struct Validator {
    tables: FxHashMap<String, Table>,
    value_sets: HashMap<String, ValueSet>,
}

pub(crate) fn is_primitive(code: &str) -> bool {
    code.starts_with("System.") || code.chars().next().is_some_and(|c| c.is_ascii_lowercase())
}

/// The suffix a choice element takes for a type: `Quantity`, `String`, `DateTime`.
/// Whether `suffix` is the choice suffix of `code` (`Quantity` of `Quantity`, `String` of
/// `string`), without building it.
pub(crate) fn is_choice_suffix(code: &str, suffix: &str) -> bool {
    let (mut c, mut s) = (code.chars(), suffix.chars());
    match (c.next(), s.next()) {
        (Some(a), Some(b)) => a.to_ascii_uppercase() == b && c.as_str() == s.as_str(),
        _ => false,
    }
}

impl Validator {
    pub fn r4() -> &'static Validator {
        static VALIDATOR: OnceLock<Validator> = OnceLock::new();
        VALIDATOR.get_or_init(|| {
            let file: File = serde_json::from_str(ELEMENTS_JSON)
                .expect("fhir-profiles/r4/elements.json is valid (regenerate with scripts/gen-r4-definitions.mjs)");
            let mut tables = FxHashMap::default();
            for (type_name, rows) in file.types {
                let mut table = Table::default();
                for (path, min, max, types, content_reference, binding) in rows {
                    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path.as_str()));
                    let (name, choice) = match last.strip_suffix("[x]") {
                        Some(stem) => (stem.to_string(), true),
                        None => (last.to_string(), false),
                    };
                    table.children.entry(parent.to_string()).or_default().push(Element {
                        name,
                        path: path.clone(),
                        choice,
                        min,
                        many: max == "*" || max.parse::<u32>().is_ok_and(|m| m > 1),
                        prohibited: max == "0",
                        types,
                        content_reference,
                        backbone: false,
                        binding,
                    });
                }
                let parents: Vec<String> = table.children.keys().cloned().collect();
                for elements in table.children.values_mut() {
                    for e in elements.iter_mut() {
                        e.backbone = !e.choice && parents.contains(&e.path);
                    }
                }
                tables.insert(type_name, table);
            }
            let mut value_sets = HashMap::new();
            for (url, codes) in file.value_sets {
                let mut set = ValueSet::default();
                for (system, code) in codes {
                    set.by_system.entry(system).or_default().insert(code);
                }
                value_sets.insert(url, set);
            }
            Validator { tables, value_sets }
        })
    }

    /// The name under which a type's element table is kept, if the type has one.
    pub(crate) fn table_name(&'static self, type_name: &str) -> Option<&'static str> {
        self.tables
            .get_key_value(type_name)
            .map(|(k, _)| k.as_str())
    }

    /// Whether a value set of the base specification is enumerated here.
    pub(crate) fn knows_value_set(&self, url: &str) -> bool {
        self.value_sets.contains_key(url)
    }

    /// Whether a code (of `system`, when given) is in a base value set.
    pub(crate) fn value_set_has(&self, url: &str, system: Option<&str>, code: &str) -> bool {
        self.value_sets.get(url).is_some_and(|set| match system {
            Some(system) => set.by_system.get(system).is_some_and(|c| c.contains(code)),
            None => set.has_code(code),
        })
    }

    /// The elements directly below `parent` ("" for the root) in the table of `type_name`.
    pub(crate) fn elements(&'static self, type_name: &str, parent: &str) -> &'static [Element] {
        self.tables
            .get(type_name)
            .and_then(|t| t.children.get(parent))
            .map_or(&[], Vec::as_slice)
    }

    /// Every problem of `resource` (parsed JSON of a whole resource): structure first; the
    /// invariants only when the structure is sound (they presume it).
    pub fn validate(&self, resource: &Value) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.resource(resource, None, &mut problems);
        if problems.is_empty() {
            crate::invariants::Invariants::r4().check(resource, &mut problems, &mut Vec::new());
        }
        problems
    }

    fn resource(&self, value: &Value, at: Option<&str>, problems: &mut Vec<Problem>) {
        let Some(map) = value.as_object() else {
            problems.push(problem(
                ProblemKind::Structure,
                at.unwrap_or("Resource"),
                "a resource must be a JSON object",
            ));
            return;
        };
        let Some(rt) = map.get("resourceType").and_then(Value::as_str) else {
            problems.push(problem(
                ProblemKind::Structure,
                at.unwrap_or("Resource"),
                "a resource needs a resourceType",
            ));
            return;
        };
        let Some(table) = self
            .tables
            .get(rt)
            .filter(|_| rt.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        else {
            problems.push(problem(
                ProblemKind::Structure,
                at.unwrap_or("Resource"),
                format!("{rt:?} is not an R4 resource type"),
            ));
            return;
        };
        // Nested resources are located from the outer one; FHIRPath names them by type.
        let expression = match at {
            None => rt.to_string(),
            Some(at) => at.to_string(),
        };
        self.object(table, "", map, &expression, true, problems);
    }

    fn object(
        &self,
        table: &Table,
        parent: &str,
        map: &Map<String, Value>,
        at: &str,
        is_resource: bool,
        problems: &mut Vec<Problem>,
    ) {
        let empty = Vec::new();
        let children = table.children.get(parent).unwrap_or(&empty);
        if map.is_empty() {
            problems.push(problem(
                ProblemKind::Structure,
                at,
                "an element may not be an empty object",
            ));
        }
        for (key, value) in map {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, extension) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let found = children.iter().find_map(|e| {
                if e.choice {
                    let suffix = name.strip_prefix(e.name.as_str())?;
                    e.types
                        .iter()
                        .find(|t| is_choice_suffix(t, suffix))
                        .map(|t| (e, Some(t.as_str())))
                } else {
                    (e.name == name).then_some((e, None))
                }
            });
            let here = format!("{at}.{key}");
            let Some((element, chosen)) = found else {
                problems.push(problem(
                    ProblemKind::Structure,
                    &here,
                    format!("unknown element {key:?}"),
                ));
                continue;
            };
            if element.prohibited {
                problems.push(problem(
                    ProblemKind::Structure,
                    &here,
                    "this element is prohibited",
                ));
                continue;
            }
            let codes: Vec<&str> = match chosen {
                Some(t) => vec![t],
                None => element.types.iter().map(String::as_str).collect(),
            };
            if extension {
                self.primitive_extension(value, element, &codes, &here, problems);
                continue;
            }
            match value {
                Value::Array(items) if element.many => {
                    if items.is_empty() {
                        problems.push(problem(
                            ProblemKind::Structure,
                            &here,
                            "an array may not be empty",
                        ));
                    }
                    let paired = map.contains_key(&format!("_{key}"));
                    for (i, item) in items.iter().enumerate() {
                        let item_at = format!("{here}[{i}]");
                        if item.is_null() && paired && codes.iter().all(|c| is_primitive(c)) {
                            continue;
                        }
                        self.value(table, parent, element, &codes, item, &item_at, problems);
                    }
                }
                Value::Array(_) => problems.push(problem(
                    ProblemKind::Structure,
                    &here,
                    "this element takes one value, not an array",
                )),
                _ if element.many => problems.push(problem(
                    ProblemKind::Structure,
                    &here,
                    "this element takes an array",
                )),
                _ => self.value(table, parent, element, &codes, value, &here, problems),
            }
        }
        for element in children.iter().filter(|e| e.choice) {
            let variants: Vec<&String> = map
                .keys()
                .filter(|k| {
                    k.strip_prefix(element.name.as_str())
                        .is_some_and(|s| element.types.iter().any(|t| is_choice_suffix(t, s)))
                })
                .collect();
            if variants.len() > 1 {
                problems.push(problem(
                    ProblemKind::Structure,
                    &format!("{at}.{}[x]", element.name),
                    format!(
                        "only one type of {}[x] may be given, not {variants:?}",
                        element.name
                    ),
                ));
            }
        }
        for element in children.iter().filter(|e| e.min > 0) {
            let present = map.keys().any(|k| {
                let k = k.strip_prefix('_').unwrap_or(k);
                if element.choice {
                    k.strip_prefix(element.name.as_str())
                        .is_some_and(|s| element.types.iter().any(|t| is_choice_suffix(t, s)))
                } else {
                    k == element.name
                }
            });
            if !present {
                let name = if element.choice {
                    format!("{}[x]", element.name)
                } else {
                    element.name.clone()
                };
                problems.push(problem(
                    ProblemKind::Required,
                    &format!("{at}.{name}"),
                    format!("required element {name:?} is missing"),
                ));
            }
        }
    }

    /// `_element`: the id and extensions of a primitive (an array when the element repeats).
    fn primitive_extension(
        &self,
        value: &Value,
        element: &Element,
        codes: &[&str],
        at: &str,
        problems: &mut Vec<Problem>,
    ) {
        if !codes.iter().all(|c| is_primitive(c)) {
            problems.push(problem(
                ProblemKind::Structure,
                at,
                "only primitive elements have an _element form",
            ));
            return;
        }
        let check = |item: &Value, at: &str, problems: &mut Vec<Problem>| match item {
            Value::Object(map) => {
                for (k, v) in map {
                    match k.as_str() {
                        "id" if v.is_string() => {}
                        "extension" => {
                            self.complex_list(v, "Extension", &format!("{at}.extension"), problems)
                        }
                        _ => problems.push(problem(
                            ProblemKind::Structure,
                            &format!("{at}.{k}"),
                            format!("unknown element {k:?}"),
                        )),
                    }
                }
            }
            _ => problems.push(problem(
                ProblemKind::Structure,
                at,
                "expected an object with id or extension",
            )),
        };
        match value {
            Value::Array(items) if element.many => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        check(item, &format!("{at}[{i}]"), problems);
                    }
                }
            }
            _ if element.many => problems.push(problem(
                ProblemKind::Structure,
                at,
                "this element takes an array",
            )),
            other => check(other, at, problems),
        }
    }

    fn complex_list(&self, value: &Value, type_name: &str, at: &str, problems: &mut Vec<Problem>) {
        let Some(table) = self.tables.get(type_name) else {
            return;
        };
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_object() {
                        Some(map) => {
                            self.object(table, "", map, &format!("{at}[{i}]"), false, problems)
                        }
                        None => problems.push(problem(
                            ProblemKind::Structure,
                            &format!("{at}[{i}]"),
                            format!("expected a {type_name} object"),
                        )),
                    }
                }
            }
            _ => problems.push(problem(
                ProblemKind::Structure,
                at,
                "this element takes an array",
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn value(
        &self,
        table: &Table,
        parent: &str,
        element: &Element,
        codes: &[&str],
        value: &Value,
        at: &str,
        problems: &mut Vec<Problem>,
    ) {
        if value.is_null() {
            problems.push(problem(ProblemKind::Structure, at, "null is not a value"));
            return;
        }
        // Elements defined inline (backbone elements) or by reference to another element.
        let own_path = if parent.is_empty() {
            element.name.clone()
        } else {
            format!("{parent}.{}", element.name)
        };
        let inline = match &element.content_reference {
            Some(reference) => Some(reference.clone()),
            None if table.children.contains_key(&own_path) && !element.choice => Some(own_path),
            None => None,
        };
        if let Some(path) = inline {
            match value.as_object() {
                Some(map) => self.object(table, &path, map, at, false, problems),
                None => problems.push(problem(ProblemKind::Structure, at, "expected an object")),
            }
            return;
        }
        let [code] = codes else {
            problems.push(problem(
                ProblemKind::Structure,
                at,
                "a choice element needs its type in the name",
            ));
            return;
        };
        let resource_type = crate::definitions::Definitions::r4()
            .resource_type(code)
            .is_some();
        if *code == "Resource" || resource_type {
            let declared = value.get("resourceType").and_then(Value::as_str);
            if resource_type && declared.is_some_and(|d| d != *code) {
                problems.push(problem(
                    ProblemKind::Structure,
                    at,
                    format!("expected a {code} resource"),
                ));
                return;
            }
            self.resource(value, Some(at), problems);
            return;
        }
        if is_primitive(code) {
            match crate::primitives::check(code, value) {
                Err(message) => problems.push(problem(ProblemKind::Value, at, message)),
                Ok(()) => self.binding(element, code, value, at, problems),
            }
            return;
        }
        match (self.tables.get(*code), value.as_object()) {
            (Some(table), Some(map)) => {
                self.object(table, "", map, at, false, problems);
                self.binding(element, code, value, at, problems);
            }
            (Some(_), None) => problems.push(problem(
                ProblemKind::Structure,
                at,
                format!("expected a {code} object"),
            )),
            (None, _) => {}
        }
    }
}

impl Validator {
    /// A required binding: a `code` must be in the value set; a `Coding` (alone or in a
    /// `CodeableConcept`) whose system belongs to the value set must carry one of its codes.
    /// Codings of other systems are left alone (they may be translations).
    fn binding(
        &self,
        element: &Element,
        code: &str,
        value: &Value,
        at: &str,
        problems: &mut Vec<Problem>,
    ) {
        let Some(set) = element
            .binding
            .as_ref()
            .and_then(|url| self.value_sets.get(url))
        else {
            return;
        };
        let url = element.binding.as_deref().unwrap_or_default();
        let check_coding = |coding: &Value, at: &str, problems: &mut Vec<Problem>| {
            let (Some(system), Some(c)) = (
                coding.get("system").and_then(Value::as_str),
                coding.get("code").and_then(Value::as_str),
            ) else {
                return;
            };
            if let Some(codes) = set.by_system.get(system)
                && !codes.contains(c)
            {
                problems.push(problem(
                    ProblemKind::Value,
                    &format!("{at}.code"),
                    format!(
                        "the code is not one of {system} allowed by the required value set {url}"
                    ),
                ));
            }
        };
        match code {
            "code" => {
                if let Some(c) = value.as_str()
                    && !set.has_code(c)
                {
                    problems.push(problem(
                        ProblemKind::Value,
                        at,
                        format!("the code is not in the required value set {url}"),
                    ));
                }
            }
            "Coding" => check_coding(value, at, problems),
            "CodeableConcept" => {
                for (i, coding) in value
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    check_coding(coding, &format!("{at}.coding[{i}]"), problems);
                }
            }
            _ => {}
        }
    }
}

fn problem(kind: ProblemKind, expression: &str, message: impl Into<String>) -> Problem {
    Problem {
        kind,
        severity: Severity::Error,
        expression: expression.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(resource: Value) -> Vec<(String, ProblemKind)> {
        Validator::r4()
            .validate(&resource)
            .into_iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| (p.expression, p.kind))
            .collect()
    }

    #[test]
    fn required_bindings_are_enforced_on_codes_and_codings() {
        assert!(problems(json!({"resourceType": "Patient", "gender": "female"})).is_empty());
        assert_eq!(
            problems(json!({"resourceType": "Patient", "gender": "nữ"})),
            [("Patient.gender".to_string(), ProblemKind::Value)]
        );
        assert_eq!(
            problems(
                json!({"resourceType": "Observation", "status": "done", "code": {"text": "x"}})
            ),
            [("Observation.status".to_string(), ProblemKind::Value)]
        );
        // A Coding of the bound system must use one of its codes; other systems are left alone.
        let coded = |code: &str, system: &str| json!({"resourceType": "Patient", "communication": [{"language": {"text": "vi"}}], "link": [{"other": {"reference": "Patient/x"}, "type": code}], "contact": [{"relationship": [{"coding": [{"system": system, "code": "N"}]}], "name": {"text": "Lan"}}], "gender": "male"});
        assert!(
            problems(coded(
                "seealso",
                "http://terminology.hl7.org/CodeSystem/v2-0131"
            ))
            .is_empty()
        );
        assert_eq!(
            problems(coded("see-also", "http://example.org")),
            [("Patient.link[0].type".to_string(), ProblemKind::Value)]
        );
    }

    #[test]
    fn invariants_of_resources_backbones_and_datatypes_are_checked_where_they_apply() {
        let all = |resource: Value| -> Vec<(String, Severity, String)> {
            Validator::r4()
                .validate(&resource)
                .into_iter()
                .map(|p| {
                    let key = p.message.split(':').next().unwrap_or_default().to_string();
                    (p.expression, p.severity, key)
                })
                .collect()
        };
        let found = all(json!({
            "resourceType": "Patient",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "contact": [{"gender": "male"}],
            "generalPractitioner": [{"reference": "#missing"}],
            "identifier": [{"period": {"start": "2020-02-01", "end": "2020-01-01"}}],
            "contained": [{"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}, "name": "x"}]
        }));
        let error = |at: &str, key: &str| (at.to_string(), Severity::Error, key.to_string());
        for expected in [
            error("Patient.contact[0]", "pat-1"),
            error("Patient.generalPractitioner[0]", "ref-1"),
            error("Patient.identifier[0].period", "per-1"),
            error("Patient", "dom-4"),
            error("Patient", "dom-3"),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert_eq!(found.len(), 5, "{found:?}");
        // Warnings are reported and do not make a resource invalid.
        assert_eq!(
            all(json!({"resourceType": "Patient"})),
            [(
                "Patient".to_string(),
                Severity::Warning,
                "dom-6".to_string()
            )]
        );
        // Times with offsets are compared on one clock.
        assert!(
            all(json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "VR"},
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                "period": {"start": "2026-01-01T10:00:00+07:00", "end": "2026-01-01T03:30:00Z"}}))
            .is_empty()
        );
    }

    #[test]
    fn unknown_elements_wrong_kinds_and_missing_requirements_are_all_reported() {
        let found = problems(json!({
            "resourceType": "Observation",
            "status": "final",
            "valueQuantity": {"value": "72", "unit": 5},
            "valueString": "both",
            "component": [{"valueBoolean": true}],
            "note": {"text": "not an array"},
            "subject": {"reference": "Patient/1", "extra": 1}
        }));
        for expected in [
            ("Observation.code", ProblemKind::Required),
            ("Observation.valueQuantity.value", ProblemKind::Value),
            ("Observation.valueQuantity.unit", ProblemKind::Value),
            ("Observation.component[0].code", ProblemKind::Required),
            ("Observation.note", ProblemKind::Structure),
            ("Observation.subject.extra", ProblemKind::Structure),
            ("Observation.value[x]", ProblemKind::Structure),
        ] {
            assert!(
                found.contains(&(expected.0.to_string(), expected.1)),
                "{expected:?} not in {found:?}"
            );
        }
    }
}
