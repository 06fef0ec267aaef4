//! A real client: fhirpy (Python, PyPI) runs searches against the running `sen` binary; each
//! must return the ids written here by hand from the fixture and the R4 rules.
//!
//! fhirpy is installed once into a virtual environment in `~/.cache/sen-fhirpy` (or
//! `$SEN_FHIRPY_CACHE`); without Python or PyPI the test skips with a notice, except under
//! CI=true, where it fails.

use std::{path::PathBuf, process::Command};

use serde_json::{Value, json};

use crate::support::{self, Sen, Store};

const FHIRPY: &str = "fhirpy==2.3.1";

/// The virtual environment's python, with fhirpy installed on first use.
fn python() -> Option<PathBuf> {
    support::python_venv("SEN_FHIRPY_CACHE", "sen-fhirpy", &[FHIRPY], "fhirpy")
}

pub async fn fhirpy_finds_what_the_rules_say(store: Store) {
    let Some(python) = python() else { return };
    let sen = Sen::start(&store.url());
    let http = support::http();
    let cccd = "http://fhir.ehealth.gov.vn/core/sid/national_id";
    let patient = |id: &str, family: &str, given: &str, gender: &str, birth: &str, n: &str| {
        json!({"resourceType": "Patient", "id": id, "identifier": [{"system": cccd, "value": n}],
            "name": [{"family": family, "given": [given]}], "gender": gender, "birthDate": birth})
    };
    let observation = |id: &str, subject: &str, code: &str, value: f64, date: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{subject}")}, "effectiveDateTime": date,
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "/min"}})
    };
    let resources = [
        patient("p-an", "Nguyễn", "An", "male", "1980-05-01", "087080000001"),
        patient(
            "p-hoa",
            "Trần",
            "Hoa",
            "female",
            "1990-04-30",
            "087090000002",
        ),
        patient(
            "p-duong",
            "Đường",
            "Đức",
            "male",
            "2001-02-03",
            "087001000003",
        ),
        patient(
            "p-nguyet",
            "Nguyễn",
            "Nguyệt",
            "female",
            "1975-12-24",
            "087075000004",
        ),
        observation("o1", "p-an", "8867-4", 72.0, "2026-11-01"),
        observation("o2", "p-an", "8867-4", 110.0, "2026-11-20"),
        observation("o3", "p-hoa", "8480-6", 120.0, "2026-10-15"),
        observation("o5", "p-hoa", "8867-4", 72.5, "2026-11-02"),
    ];
    for r in &resources {
        let url = format!(
            "{}/{}/{}",
            sen.fhir(),
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let response = http
            .put(&url)
            .header("content-type", "application/fhir+json")
            .body(r.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fhirpy/searches.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(sen.fhir())
        .env("SEN_TOKEN", support::system_token())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "fhirpy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_slice(&output.stdout).expect("JSON from the script");
    let expected = json!({
        "name=nguyen (pages of 1)": ["p-an", "p-nguyet"],
        "family=duong": ["p-duong"],
        "gender=female": ["p-hoa", "p-nguyet"],
        "birthdate ge 1990": ["p-duong", "p-hoa"],
        "identifier": ["p-hoa"],
        "code 8867-4 (pages of 2)": ["o1", "o2", "o5"],
        "code and date ge": ["o2"],
        "value-quantity gt 100": ["o2", "o3"],
        "subject chain name": ["o3", "o5"],
        "sorted by -birthdate": ["p-duong", "p-hoa", "p-an", "p-nguyet"],
        "count": 2,
    });
    assert_eq!(found, expected);
}
