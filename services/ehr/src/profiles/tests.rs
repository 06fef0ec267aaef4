use serde_json::json;

use super::*;

const PATIENT: &str = "http://fhir.sen.vn/StructureDefinition/sen-vn-patient";
const SID: &str = "http://fhir.ehealth.gov.vn/core/sid";

fn problems(url: &str, resource: Value) -> Vec<(String, Severity, String)> {
    let registry = Registry::load(None).unwrap();
    let profile = registry.profile(url).unwrap();
    registry
        .check(profile, &resource)
        .into_iter()
        .map(|p| (p.expression, p.severity, p.message))
        .collect()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [
            {"system": format!("{SID}/national_id"), "value": "087090000123"},
            {"system": format!("{SID}/insurance_number"), "value": "DN4828720000123"}
        ],
        "extension": [{"url": "http://fhir.sen.vn/StructureDefinition/sen-vn-ethnicity",
            "valueCoding": {"system": "http://fhir.sen.vn/CodeSystem/vn-ethnic-groups", "code": "01", "display": "Kinh"}}],
        "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
        "gender": "male",
        "birthDate": "1990-04-30",
        "address": [{"line": ["12 Lê Lợi"], "extension": [{"url": "http://fhir.sen.vn/StructureDefinition/sen-vn-address-ward",
            "valueCoding": {"system": "http://fhir.sen.vn/CodeSystem/vn-administrative-units", "code": "29869"}}]}]
    })
}

#[test]
fn the_builtin_profiles_load_and_match_the_directory() {
    let registry = Registry::load(None).unwrap();
    assert_eq!(registry.urls().len(), 9, "{:?}", registry.urls());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fhir-profiles/vn");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    let mut built_in: Vec<String> = BUILTIN.iter().map(|(f, _)| f.to_string()).collect();
    built_in.sort();
    assert_eq!(
        on_disk, built_in,
        "every file of fhir-profiles/vn is compiled in"
    );
}

#[test]
fn a_conforming_patient_passes_and_each_rule_is_located() {
    assert_eq!(problems(PATIENT, patient()), []);
    let mut bad = patient();
    bad["identifier"][0]["value"] = json!("08709000012");
    bad["identifier"][1]["value"] = json!("DN6828720000123");
    bad["extension"][0]["valueCoding"]["code"] = json!("99");
    bad["address"][0]["extension"][0]["valueCoding"]["code"] = json!("30000");
    bad.as_object_mut().unwrap().remove("gender");
    let found = problems(PATIENT, bad);
    let at = |e: &str, s: Severity, key: &str| {
        assert!(
            found
                .iter()
                .any(|(x, sev, m)| x == e && *sev == s && m.contains(key)),
            "{e} {key} not in {found:#?}"
        )
    };
    at("Patient", Severity::Error, "vn-pat-1");
    at("Patient", Severity::Error, "vn-pat-2");
    at("Patient.gender", Severity::Error, "at least 1");
    at(
        "Patient.extension[0].valueCoding",
        Severity::Error,
        "vn-ethnic-groups",
    );
    // The ward list is published in part: an unknown ward is a warning.
    at(
        "Patient.address[0].extension[0].valueCoding",
        Severity::Warning,
        "dong-thap",
    );
    assert_eq!(found.len(), 5, "{found:#?}");
}

#[test]
fn patterns_cardinality_and_extension_limits() {
    let encounter = "http://fhir.sen.vn/StructureDefinition/sen-vn-encounter-remote";
    let good = json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"},
        "subject": {"reference": "Patient/p1"}, "participant": [{"individual": {"reference": "Practitioner/d1"}}],
        "serviceProvider": {"reference": "Organization/o1"}});
    assert_eq!(problems(encounter, good.clone()), []);
    let mut ambulatory = good.clone();
    ambulatory["class"]["code"] = json!("AMB");
    ambulatory["status"] = json!("finished");
    let found = problems(encounter, ambulatory);
    assert!(
        found
            .iter()
            .any(|(e, _, m)| e == "Encounter.class" && m.contains("must match")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(_, _, m)| m.contains("vn-enc-1")),
        "{found:?}"
    );
    let mut twice = patient();
    let ethnicity = twice["extension"][0].clone();
    twice["extension"].as_array_mut().unwrap().push(ethnicity);
    let found = problems(PATIENT, twice);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "Patient.extension[1]");
}

#[test]
fn broken_profiles_are_refused_with_the_file_and_element_named() {
    let sd = |elements: Value| {
        json!({"resourceType": "StructureDefinition", "url": "http://x/p", "type": "Patient",
            "derivation": "constraint", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": {"element": elements}})
        .to_string()
    };
    let cases = [
        ("{", "not JSON"),
        (
            &sd(json!([{"path": "Patient.gendr", "min": 1}])) as &str,
            "gendr is not an element",
        ),
        (
            &sd(json!([{"path": "Patient.name", "maxLength": 10}])),
            "maxLength is not supported",
        ),
        (
            &sd(
                json!([{"id": "Patient.identifier:cccd", "path": "Patient.identifier", "sliceName": "cccd"}]),
            ),
            "only extensions",
        ),
        (
            &sd(
                json!([{"path": "Patient", "constraint": [{"key": "x-1", "severity": "error", "human": "x", "expression": "name.("}]}]),
            ),
            "x-1",
        ),
        (
            &sd(
                json!([{"path": "Patient.gender", "binding": {"strength": "required", "valueSet": "http://x/vs"}}]),
            ),
            "unknown value set",
        ),
        (
            &sd(
                json!([{"id": "Patient.extension:e", "path": "Patient.extension", "sliceName": "e", "type": [{"code": "Extension", "profile": ["http://x/missing"]}]}]),
            ),
            "unknown extension profile",
        ),
    ];
    for (text, expected) in cases {
        let err = Registry::from_texts(&[("broken.json".into(), text.to_string())]).unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
        assert!(
            err.to_string().contains("broken.json") || err.to_string().contains("http://x/p"),
            "{err}"
        );
    }
}
