//! Access (issue 5): what a valid token may do follows its role and SMART scopes; patients
//! see only their own records; AuditEvents are permanent.

use reqwest::{Method, StatusCode};
use sen_platform::auth::Role;
use serde_json::{Value, json};

use crate::{patient, support::TestApp};

/// Scopes narrower than `*`: each interaction needs its letter on its type, and requests that
/// reach other types need the scope on every type.
async fn scopes_allow_exactly_the_interactions_and_types_they_name(app: TestApp) {
    let (patient_id, _) = app.create(&patient("087090000001")).await;
    let (observation_id, _) = app.create(&observation(&patient_id)).await;
    let token = app.token(
        Role::System,
        None,
        Some("system/Observation.rs system/Patient.read"),
    );
    let cases: Vec<(Method, String, Option<Value>, StatusCode)> = vec![
        (
            Method::GET,
            format!("/fhir/Observation/{observation_id}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/fhir/Observation?subject=Patient/{patient_id}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/fhir/Patient/{patient_id}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/fhir/Observation".into(),
            Some(observation(&patient_id)),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::DELETE,
            format!("/fhir/Observation/{observation_id}"),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/fhir/Encounter".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/fhir/Observation?_include=Observation:subject".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/fhir/Observation?subject:Patient.name=nguyen".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/fhir/_history".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
        // Bundles: each entry needs its own interaction on its own type.
        (
            Method::POST,
            "/fhir".into(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Observation/{observation_id}")}},
                {"request": {"method": "GET", "url": format!("Patient/{patient_id}")}},
                {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{patient_id}")}}
            ]})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/fhir".into(),
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "GET", "url": format!("Patient/{patient_id}")}},
                    {"request": {"method": "POST", "url": "Observation"}, "resource": observation(&patient_id)}
                ]}),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/fhir".into(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "DELETE", "url": format!("Observation/{observation_id}")}}
            ]})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/fhir".into(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Observation?_include=Observation:subject"}}
            ]})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/fhir".into(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("https://elsewhere.test/fhir/Observation/{observation_id}")}}
            ]})),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::POST,
            "/fhir/$reindex".into(),
            None,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (method, path, body, status) in cases {
        let mut request = app.request_as(&token, method.clone(), &path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        if status == StatusCode::FORBIDDEN {
            assert!(
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .contains("insufficient_scope")
            );
        }
    }
    // Nothing was written by the refused requests.
    assert_eq!(app.resource_rows().await, 2);
}

fn observation(patient_id: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": format!("Patient/{patient_id}")},
           "effectiveDateTime": "2026-11-20T08:00:00+07:00",
           "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// A record of `rt` about the patient `patient_id` (a new Patient managed by `org`).
fn record(rt: &str, patient_id: &str, org: &str) -> Value {
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    match rt {
        "Patient" => managed(patient("087090000009"), org),
        "Observation" => observation(patient_id),
        "Encounter" => json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject}),
        "Condition" => json!({"resourceType": "Condition", "subject": subject,
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]}}),
        _ => unreachable!(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Read,
    Search,
    Create,
    Update,
    Delete,
}

impl Act {
    /// Its AuditEvent action code.
    fn action(self) -> &'static str {
        match self {
            Act::Read | Act::Search => "R",
            Act::Create => "C",
            Act::Update => "U",
            Act::Delete => "D",
        }
    }
}

/// `patient` managed by `Organization/{org}`.
fn managed(mut patient: Value, org: &str) -> Value {
    patient["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
    patient
}

/// The rules of issue 5 as far as this version enforces them, one line per role: what each
/// interaction answers on the caller's own records (for practitioners and clinic admins:
/// records of their organization's patients) and on another patient's.
fn expected(role: Role, act: Act, rt: &str, own: bool) -> StatusCode {
    use StatusCode as S;
    let patient_type = rt == "Patient";
    match (role, act) {
        // system: by its scopes (the default `system/*.cruds` allows everything).
        (Role::System, Act::Create) => S::CREATED,
        (Role::System, _) => S::OK,
        // patient: reads and searches its own compartment; another's records do not exist
        // for it (a read answers 404, a search finds nothing); it writes nothing.
        (Role::Patient, Act::Search) => S::OK,
        (Role::Patient, Act::Read) if own => S::OK,
        (Role::Patient, Act::Read) => S::NOT_FOUND,
        (Role::Patient, _) => S::FORBIDDEN,
        // ops-viewer: never a record.
        (Role::OpsViewer, _) => S::FORBIDDEN,
        // practitioner: its organization's patients' records; another patient does not exist
        // for it (a Patient search finds nothing, naming the patient in a search, a read, an
        // update answer 404, creating a Patient another organization manages is refused); it
        // deletes nothing.
        (Role::Practitioner, Act::Delete) => S::FORBIDDEN,
        (Role::Practitioner, Act::Create) if own => S::CREATED,
        (Role::Practitioner, Act::Create) if patient_type => S::FORBIDDEN,
        (Role::Practitioner, Act::Create) => S::NOT_FOUND,
        (Role::Practitioner, _) if own || (patient_type && act == Act::Search) => S::OK,
        (Role::Practitioner, _) => S::NOT_FOUND,
        // clinic-admin: its organization's Patient registrations, no clinical record.
        (Role::ClinicAdmin, _) if !patient_type => S::FORBIDDEN,
        (Role::ClinicAdmin, Act::Delete) => S::FORBIDDEN,
        (Role::ClinicAdmin, Act::Search) => S::OK,
        (Role::ClinicAdmin, Act::Create) if own => S::CREATED,
        (Role::ClinicAdmin, Act::Create) => S::FORBIDDEN,
        (Role::ClinicAdmin, _) if own => S::OK,
        (Role::ClinicAdmin, _) => S::NOT_FOUND,
    }
}

/// Roles × interactions × resource types × own or another patient's record: 200 cases, each
/// on records made for it, checked against [`expected`].
async fn the_authorization_matrix_follows_the_rules(app: TestApp) {
    // Two clinics; the practitioner (and clinic admin) works at the first, which manages the
    // "own" patient; the other clinic manages the other.
    let (clinic, _) = app.create(&organization("Trạm Y tế phường Mỹ Trà")).await;
    let (elsewhere, _) = app.create(&organization("Bệnh viện khác")).await;
    let (doctor, _) = app.create(&json!({"resourceType": "Practitioner"})).await;
    app.create(&practitioner_role(&doctor, &clinic)).await;
    let (own, _) = app.create(&managed(patient("087090000101"), &clinic)).await;
    let (other, _) = app
        .create(&managed(patient("087090000102"), &elsewhere))
        .await;
    let mut cases = 0;
    // (request id, AuditEvent outcome, action) of every request of the matrix.
    let mut recorded: Vec<(String, &str, &str)> = Vec::new();
    for role in Role::ALL {
        let token = match role {
            Role::Practitioner | Role::ClinicAdmin => app.practitioner_token(role, &doctor),
            _ => app.token(role, (role == Role::Patient).then_some(own.as_str()), None),
        };
        for rt in ["Patient", "Observation", "Encounter", "Condition"] {
            for act in [
                Act::Read,
                Act::Search,
                Act::Create,
                Act::Update,
                Act::Delete,
            ] {
                for mine in [true, false] {
                    let (owner, org) = if mine {
                        (&own, &clinic)
                    } else {
                        (&other, &elsewhere)
                    };
                    // The record the request is about: the patient itself (a fresh one where a
                    // system token may change or delete it), or a new record of the patient.
                    let (id, body) = if rt != "Patient" {
                        let (id, body) = app.create(&record(rt, owner, org)).await;
                        (id, Some(body))
                    } else if role == Role::System && matches!(act, Act::Update | Act::Delete) {
                        let (id, body) = app.create(&patient("087090000103")).await;
                        (id, Some(body))
                    } else {
                        (owner.clone(), None)
                    };
                    let rows_before = app.resource_rows().await;
                    let (method, path, send) = match act {
                        Act::Read => (Method::GET, format!("/fhir/{rt}/{id}"), None),
                        Act::Search if rt == "Patient" => {
                            (Method::GET, format!("/fhir/Patient?_id={id}"), None)
                        }
                        Act::Search => (
                            Method::GET,
                            format!("/fhir/{rt}?subject=Patient/{owner}&_id={id}"),
                            None,
                        ),
                        Act::Create => {
                            let body = record(rt, owner, org);
                            (Method::POST, format!("/fhir/{rt}"), Some(body))
                        }
                        Act::Update => {
                            let current = match &body {
                                Some(b) => b.clone(),
                                None => app
                                    .get(&format!("/fhir/Patient/{id}"))
                                    .await
                                    .json()
                                    .await
                                    .unwrap(),
                            };
                            (Method::PUT, format!("/fhir/{rt}/{id}"), Some(current))
                        }
                        Act::Delete => (Method::DELETE, format!("/fhir/{rt}/{id}"), None),
                    };
                    let request_id = format!("matrix-{cases}");
                    let mut request = app
                        .request_as(&token, method.clone(), &path)
                        .header("x-request-id", &request_id);
                    if let Some(send) = send {
                        request = request
                            .header("content-type", "application/fhir+json")
                            .body(send.to_string());
                    }
                    let response = request.send().await.unwrap();
                    let status = response.status();
                    let want = expected(role, act, rt, mine);
                    assert_eq!(
                        status,
                        want,
                        "{} {act:?} {rt} own={mine}: {method} {path}",
                        role.as_str()
                    );
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if act == Act::Search && status == StatusCode::OK {
                        // A search finds the record it is about, except a patient's search for
                        // another's records: that finds nothing.
                        let ids: Vec<&str> = body["entry"]
                            .as_array()
                            .map(|e| {
                                e.iter()
                                    .filter_map(|x| x["resource"]["id"].as_str())
                                    .collect()
                            })
                            .unwrap_or_default();
                        let visible = role == Role::System || mine;
                        assert_eq!(
                            ids.contains(&id.as_str()),
                            visible,
                            "{} search {rt} own={mine}: {ids:?}",
                            role.as_str()
                        );
                    }
                    if want.is_client_error() {
                        assert_eq!(body["resourceType"], "OperationOutcome");
                        assert_eq!(app.resource_rows().await, rows_before, "nothing written");
                    }
                    let outcome = if want.is_success() { "0" } else { "4" };
                    recorded.push((request_id, outcome, act.action()));
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 200);
    // Every request of the matrix, allowed or refused, left exactly one AuditEvent saying
    // what it did and how it ended.
    let events = crate::audit::audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    for (request_id, outcome, action) in recorded {
        let of_request: Vec<&Value> = events
            .iter()
            .filter(|e| crate::audit::request_id(e).as_deref() == Some(request_id.as_str()))
            .collect();
        assert_eq!(of_request.len(), 1, "{request_id}");
        assert_eq!(of_request[0]["outcome"], outcome, "{request_id}");
        assert_eq!(of_request[0]["action"], action, "{request_id}");
    }
}

/// A patient's searches are narrowed to its compartment, whatever the query asks.
async fn a_patient_token_finds_only_its_own_records(app: TestApp) {
    let (own, _) = app.create(&patient("087090000201")).await;
    let (other, _) = app.create(&patient("087090000202")).await;
    let (mine, _) = app.create(&observation(&own)).await;
    let (theirs, _) = app.create(&observation(&other)).await;
    let token = app.token(Role::Patient, Some(&own), None);
    let ids = |body: &Value| -> Vec<String> {
        let mut ids: Vec<String> = body["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|x| x["resource"]["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    };
    for path in [
        "/fhir/Observation".to_string(),
        "/fhir/Observation?code=http://loinc.org|8867-4".to_string(),
        format!("/fhir/Observation?subject=Patient/{other}"),
        format!("/fhir/Observation?_id={mine},{theirs}"),
    ] {
        let body: Value = app
            .request_as(&token, Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = ids(&body);
        assert!(!found.contains(&theirs), "{path}: {found:?}");
        if !path.contains(&other) {
            assert_eq!(found, vec![mine.clone()], "{path}");
        }
    }
    // POST _search too.
    let body: Value = app
        .request_as(&token, Method::POST, "/fhir/Observation/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("_id={mine},{theirs}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body), vec![mine.clone()]);
    let body: Value = app
        .request_as(&token, Method::GET, "/fhir/Patient")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body), vec![own.clone()]);
    // Reading another's record is as if it did not exist; includes are not served yet.
    for (path, status) in [
        (format!("/fhir/Observation/{theirs}"), StatusCode::NOT_FOUND),
        (
            format!("/fhir/Observation/{theirs}/_history/1"),
            StatusCode::NOT_FOUND,
        ),
        (format!("/fhir/Patient/{other}"), StatusCode::NOT_FOUND),
        (format!("/fhir/Observation/{mine}/_history"), StatusCode::OK),
        (
            "/fhir/Observation?_include=Observation:subject".to_string(),
            StatusCode::FORBIDDEN,
        ),
        ("/fhir/Practitioner".to_string(), StatusCode::FORBIDDEN),
        (
            "/fhir/Observation/_history".to_string(),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let response = app
            .request_as(&token, Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
}

on_both_backends!(
    scopes_allow_exactly_the_interactions_and_types_they_name,
    the_authorization_matrix_follows_the_rules,
    a_patient_token_finds_only_its_own_records,
);

/// AuditEvents are permanent: created and read, never updated, patched or deleted, by any
/// path — REST, conditional, JSON Patch, Bundle entries — even with every scope.
async fn audit_events_can_be_created_but_never_changed(app: TestApp) {
    let event = json!({"resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": "R", "recorded": "2026-11-27T09:00:00+07:00", "outcome": "0",
        "agent": [{"requestor": true, "who": {"reference": "Practitioner/p1"}}],
        "source": {"observer": {"display": "Sen"}},
        "entity": [{"what": {"reference": "Patient/p1"}}]});
    let (id, stored) = app.create(&event).await;
    // A PUT to an id no AuditEvent had creates one (a client recording its own event).
    let mut own = event.clone();
    own["id"] = json!("recorded-by-a-client");
    let created = app.put("/fhir/AuditEvent/recorded-by-a-client", &own).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let again = app.put("/fhir/AuditEvent/recorded-by-a-client", &own).await;
    assert_eq!(again.status(), StatusCode::METHOD_NOT_ALLOWED);
    let mut changed = stored.clone();
    changed["outcome"] = json!("8");
    /// A request body and its media type.
    type Sent = Option<(String, &'static str)>;
    let attempts: Vec<(Method, String, Sent)> = vec![
        (
            Method::PUT,
            format!("/fhir/AuditEvent/{id}"),
            Some((changed.to_string(), "application/fhir+json")),
        ),
        (
            Method::PATCH,
            format!("/fhir/AuditEvent/{id}"),
            Some((
                r#"[{"op": "replace", "path": "/outcome", "value": "8"}]"#.into(),
                "application/json-patch+json",
            )),
        ),
        (Method::DELETE, format!("/fhir/AuditEvent/{id}"), None),
        (Method::DELETE, format!("/fhir/AuditEvent?_id={id}"), None),
    ];
    for (method, path, body) in attempts {
        let mut request = app.request(method.clone(), &path);
        if let Some((body, media)) = body {
            request = request.header("content-type", media).body(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["issue"][0]["code"], "not-supported");
    }
    for entry in [
        json!({"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}}),
        json!({"request": {"method": "PUT", "url": format!("AuditEvent/{id}")}, "resource": changed}),
    ] {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
        let response = app.post_raw("/fhir", &bundle.to_string()).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{bundle}"
        );
    }
    let read: Value = app
        .get(&format!("/fhir/AuditEvent/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["meta"]["versionId"], "1");
    assert_eq!(read["outcome"], "0");
    for id in [id.as_str(), "recorded-by-a-client"] {
        let history: Value = app
            .get(&format!("/fhir/AuditEvent/{id}/_history"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(history["entry"].as_array().unwrap().len(), 1, "{history}");
    }
}

on_both_backends!(audit_events_can_be_created_but_never_changed);

fn organization(name: &str) -> Value {
    json!({"resourceType": "Organization", "active": true, "name": name})
}

fn practitioner_role(practitioner: &str, organization: &str) -> Value {
    json!({"resourceType": "PractitionerRole", "active": true,
        "practitioner": {"reference": format!("Practitioner/{practitioner}")},
        "organization": {"reference": format!("Organization/{organization}")}})
}
