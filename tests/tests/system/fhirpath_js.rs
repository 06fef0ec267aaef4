//! Index extraction checked against an independent FHIRPath implementation: for every R4
//! search parameter and every resource of `hl7.fhir.r4.examples@4.0.1` of its base type, the
//! values our engine yields for the parameter's expression must equal what HL7's fhirpath.js
//! (npm `fhirpath`, R4 model, run by node) yields. Exceptions are counted by reason and each
//! reason is justified below; anything else fails the test.
//!
//! fhirpath.js is installed once with npm into `~/.cache/sen-fhirpath-js` (or
//! `$SEN_FHIRPATH_JS_CACHE`); without npm the test skips with a notice, except under CI=true.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Command,
};

use sen_ehr::{fhirpath::Item, search::params::SearchParams};
use serde_json::Value;

use crate::support::npm_installed;

const FHIRPATH_JS: &str = "fhirpath@5.2.2";

/// The directory whose node_modules holds fhirpath.js, installed on first use.
fn fhirpath_js() -> Option<PathBuf> {
    npm_installed(
        FHIRPATH_JS,
        "SEN_FHIRPATH_JS_CACHE",
        "sen-fhirpath-js",
        "the fhirpath.js comparison",
    )
}

/// A value in a form both engines' output agree on when the values are equal: object keys
/// sorted, every number as its f64 in exponent notation (`1`, `1.0` and `1e0` are one number).
fn canonical(value: &Value) -> String {
    fn canon(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, canon(v))).collect();
                serde_json::to_value(ordered).expect("serialisable")
            }
            Value::Array(items) => Value::Array(items.iter().map(canon).collect()),
            Value::Number(n) => Value::String(format!("#{:e}", n.as_f64().unwrap_or(f64::NAN))),
            other => other.clone(),
        }
    }
    canon(value).to_string()
}

/// One of our results, canonical.
fn ours_canonical(item: &Item<'_>) -> Option<String> {
    let value = match item {
        Item::Node(node) => node.value?.clone(),
        Item::Boolean(b) => Value::Bool(*b),
        Item::Integer(i) => Value::from(*i),
        Item::Decimal(d) => Value::from(*d),
        Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
            Value::String(s.to_string())
        }
        Item::Quantity(v, u) => Value::String(format!("{v} '{u}'")),
        Item::Reference(t) => Value::String(format!("(a {t} known only by its reference)")),
    };
    Some(canonical(&value))
}

#[test]
fn search_parameter_values_agree_with_fhirpath_js_on_every_example() {
    let Some(examples) = super::conformance::package_dir() else {
        return;
    };
    let Some(js) = fhirpath_js() else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("node")
        .arg(root.join("tests/fhirpath-js/evaluate.cjs"))
        .arg(&examples)
        .arg(root.join("fhir-profiles/r4/search-parameters.json"))
        .env("NODE_PATH", js.join("node_modules"))
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "fhirpath.js failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let defs = sen_ehr::definitions::Definitions::r4();
    let mut resources: HashMap<String, Value> = HashMap::new();
    let (mut agreed, mut compared) = (0usize, 0usize);
    let mut exceptions: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut unexplained: Vec<String> = Vec::new();
    for line in String::from_utf8(output.stdout).expect("UTF-8").lines() {
        let line: Value = serde_json::from_str(line).expect("a JSON line");
        let file = line["f"].as_str().expect("file");
        let code = line["c"].as_str().expect("code");
        let resource = resources.entry(file.to_string()).or_insert_with(|| {
            serde_json::from_str(&std::fs::read_to_string(examples.join(file)).unwrap()).unwrap()
        });
        let rt = defs
            .resource_type(resource["resourceType"].as_str().unwrap())
            .expect("an R4 type");
        let param = SearchParams::r4().get(rt, code).expect("a known parameter");
        compared += 1;
        let ours = param.expression.evaluate_on(resource);
        let uses_resolve = param.expression.text().contains("resolve()");
        let (theirs, ours) = match (line.get("e"), ours) {
            (Some(_), Err(_)) => {
                *exceptions
                    .entry("both engines refuse the expression on this resource")
                    .or_default() += 1;
                continue;
            }
            (Some(e), Ok(_))
                if uses_resolve && e.as_str().is_some_and(|e| e.contains("resolve")) =>
            {
                // fhirpath.js evaluates resolve() only in its asynchronous mode, with a
                // resolver this test does not have; ours types a reference by its text.
                *exceptions
                    .entry("resolve(): fhirpath.js refuses it without an asynchronous resolver")
                    .or_default() += 1;
                continue;
            }
            (Some(e), Ok(_))
                if e.as_str()
                    .is_some_and(|e| e.contains("Quantity that has a comparator")) =>
            {
                // fhirpath.js cannot turn a Quantity with a comparator (`<5 mg`) into a
                // System.Quantity and stops; the FHIR Quantity itself is a sound index value.
                *exceptions
                    .entry("a Quantity with a comparator: fhirpath.js refuses to convert it")
                    .or_default() += 1;
                continue;
            }
            (Some(e), Ok(_)) => {
                unexplained.push(format!(
                    "{file} {code}: fhirpath.js failed ({e}), ours did not"
                ));
                continue;
            }
            (None, Err(e)) => {
                unexplained.push(format!(
                    "{file} {code}: ours failed ({e}), fhirpath.js did not"
                ));
                continue;
            }
            (None, Ok(ours)) => {
                let mut theirs: Vec<String> = line["v"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| {
                        let text = v.as_str().expect("JSON text");
                        canonical(&serde_json::from_str(text).expect("JSON"))
                    })
                    .collect();
                let mut ours: Vec<String> = ours.iter().filter_map(ours_canonical).collect();
                theirs.sort();
                ours.sort();
                (theirs, ours)
            }
        };
        if theirs == ours {
            agreed += 1;
        } else if file == "Observation-decimal.json"
            && ours.len() == theirs.len() + 1
            && theirs.iter().all(|t| ours.contains(t))
        {
            // This example tests extreme decimals. In a union fhirpath.js takes a Quantity of
            // 1e-245 g for a duplicate of 1e-22 g (its decimal comparison has limited
            // precision) and drops it; they are different values, and both are indexed.
            *exceptions
                .entry("Observation-decimal: fhirpath.js merges 1e-245 with 1e-22 in a union")
                .or_default() += 1;
        } else if uses_resolve {
            // fhirpath.js runs without a resolver: resolve() yields nothing, so
            // `subject.where(resolve() is Patient)` is always empty there. Ours knows a
            // reference's type from its text (`Patient/123`), which is what indexing needs.
            *exceptions
                .entry(
                    "resolve(): fhirpath.js has no resolver, ours types references by their text",
                )
                .or_default() += 1;
        } else {
            let short = |v: &[String]| -> Vec<String> {
                v.iter().map(|s| s.chars().take(120).collect()).collect()
            };
            unexplained.push(format!(
                "{file} {code} ({}): fhirpath.js {:?}, ours {:?}",
                param.expression.text(),
                short(&theirs),
                short(&ours)
            ));
        }
    }
    eprintln!(
        "fhirpath.js comparison: {compared} (resource, parameter) pairs, {agreed} equal; exceptions: {exceptions:?}; unexplained: {}",
        unexplained.len()
    );
    assert!(compared > 50_000, "only {compared} pairs compared");
    assert!(
        unexplained.is_empty(),
        "{} unexplained differences, first 30:\n{}",
        unexplained.len(),
        unexplained[..unexplained.len().min(30)].join("\n")
    );
}

/// The parameters the store keeps no rows of their own for (Observation's `combo-*`, the
/// `patient` that is `subject` pointing at a Patient, …) are searched through other
/// parameters' rows: on every R4 example, those rows must hold exactly the values the
/// parameter's own expression yields (`sen_ehr::search::extract::stands_for`).
#[test]
fn shared_parameters_stand_for_their_own_values_on_every_example() {
    let Some(examples) = super::conformance::package_dir() else {
        return;
    };
    let defs = sen_ehr::definitions::Definitions::r4();
    let (mut checked, mut wrong) = (0usize, Vec::new());
    for entry in std::fs::read_dir(&examples).expect("the examples") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(resource) = serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap())
        else {
            continue;
        };
        let Some(rt) = resource["resourceType"]
            .as_str()
            .and_then(|t| defs.resource_type(t))
        else {
            continue;
        };
        checked += 1;
        for code in sen_ehr::search::extract::stands_for(rt, &resource) {
            wrong.push(format!("{} {code}", path.display()));
        }
    }
    eprintln!("shared parameters checked on {checked} examples");
    assert!(checked > 2_000, "only {checked} examples");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
