//! Profiles: resources claiming one of ours in `meta.profile` are held to it, configuration
//! can require one per type, and `$validate` checks against a named profile.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{CCCD, patient, support::TestApp};

const VN_PATIENT: &str = "http://fhir.sen.vn/StructureDefinition/sen-vn-patient";
const VN_ENCOUNTER: &str = "http://fhir.sen.vn/StructureDefinition/sen-vn-encounter-remote";

on_both_backends!(
    a_claimed_profile_is_enforced_with_422_and_located_issues,
    validate_checks_a_named_profile,
    a_transaction_entry_that_breaks_a_profile_writes_nothing,
);

fn claiming(mut resource: Value, url: &str) -> Value {
    resource["meta"] = json!({"profile": [url]});
    resource
}

async fn a_claimed_profile_is_enforced_with_422_and_located_issues(app: TestApp) {
    // Conforms: created.
    let good = claiming(patient("087090000501"), VN_PATIENT);
    let response = app.post_raw("/fhir/Patient", &good.to_string()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let rows = app.history_rows().await;
    // An 11-digit personal ID and no gender: 422, both located.
    let mut bad = claiming(patient("08709000050"), VN_PATIENT);
    bad.as_object_mut().unwrap().remove("gender");
    let response = app.post_raw("/fhir/Patient", &bad.to_string()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome: Value = response.json().await.unwrap();
    let issues: Vec<(String, String)> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["expression"][0].as_str().unwrap().to_string(),
                i["diagnostics"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        issues
            .iter()
            .any(|(e, d)| e == "Patient" && d.contains("vn-pat-1")),
        "{outcome}"
    );
    assert!(
        issues
            .iter()
            .any(|(e, d)| e == "Patient.gender" && d.contains("at least 1")),
        "{outcome}"
    );
    // The same resource without the claim is a valid R4 Patient.
    let mut unclaimed = bad.clone();
    unclaimed.as_object_mut().unwrap().remove("meta");
    let response = app.post_raw("/fhir/Patient", &unclaimed.to_string()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // An update and a PATCH are held to it too.
    let (id, _) = app
        .create(&claiming(patient("087090000502"), VN_PATIENT))
        .await;
    let mut update = claiming(patient("0870900005"), VN_PATIENT);
    update["id"] = json!(id);
    assert_eq!(
        app.put(&format!("/fhir/Patient/{id}"), &update)
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let patch = app
        .request(reqwest::Method::PATCH, &format!("/fhir/Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"remove","path":"/birthDate"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A profile this server does not know is left alone.
    let foreign = claiming(
        patient("087090000503"),
        "http://example.org/StructureDefinition/x",
    );
    assert_eq!(
        app.post_raw("/fhir/Patient", &foreign.to_string())
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.history_rows().await,
        rows + 3,
        "refused writes wrote nothing"
    );
}

async fn validate_checks_a_named_profile(app: TestApp) {
    let validate = |path: String, body: String| {
        app.request(reqwest::Method::POST, &path)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
    };
    let encounter = json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}});
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": encounter},
        {"name": "profile", "valueUri": VN_ENCOUNTER}]});
    let response = validate("/fhir/Encounter/$validate".into(), parameters.to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let outcome: Value = response.json().await.unwrap();
    let located: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    for expected in [
        "Encounter.class",
        "Encounter.participant",
        "Encounter.serviceProvider",
    ] {
        assert!(located.contains(&expected), "{expected}: {outcome}");
    }
    // The same through the query string; without a profile the encounter is valid R4.
    let by_query = validate(
        format!("/fhir/Encounter/$validate?profile={VN_ENCOUNTER}"),
        encounter.to_string(),
    )
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(by_query["issue"][0]["severity"], "error", "{by_query}");
    let plain: Value = validate("/fhir/Encounter/$validate".into(), encounter.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        plain["issue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["severity"] != "error"),
        "{plain}"
    );
    // Unknown profile, or one of another type: 400.
    for (path, status) in [
        (
            "/fhir/Encounter/$validate?profile=http://example.org/nope".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/fhir/Encounter/$validate?profile={VN_PATIENT}"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = validate(path.clone(), encounter.to_string()).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    assert_eq!(app.history_rows().await, 0);
}

async fn a_transaction_entry_that_breaks_a_profile_writes_nothing(app: TestApp) {
    let entry = |resource: Value| {
        json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]}})
    };
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(claiming(patient("087090000601"), VN_PATIENT)),
        entry(claiming(patient("0870900006"), VN_PATIENT)),
    ]});
    let response = app.post_raw("/fhir", &bundle.to_string()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.history_rows().await, 0);
}

/// `fhir.required_profiles`: every Patient must conform, claimed or not.
async fn a_required_profile_holds_every_resource_of_its_type(app: TestApp) {
    let mut plain = patient("0870900007");
    plain["identifier"] = json!([{"system": CCCD, "value": "0870900007"}]);
    let response = app.post_raw("/fhir/Patient", &plain.to_string()).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let ok = app
        .post_raw("/fhir/Patient", &patient("087090000701").to_string())
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    // Other types are not affected.
    let encounter =
        json!({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}});
    assert_eq!(
        app.post_raw("/fhir/Encounter", &encounter.to_string())
            .await
            .status(),
        StatusCode::CREATED
    );
}

fn require_vn_patient(config: &mut sen_platform::Config) {
    config
        .fhir
        .required_profiles
        .insert("Patient".into(), VN_PATIENT.into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_profile_holds_every_resource_of_its_type_on_sqlite() {
    a_required_profile_holds_every_resource_of_its_type(
        TestApp::sqlite_with(require_vn_patient).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_profile_holds_every_resource_of_its_type_on_postgres() {
    if let Some(app) = TestApp::postgres_with(require_vn_patient).await {
        a_required_profile_holds_every_resource_of_its_type(app).await;
    }
}
