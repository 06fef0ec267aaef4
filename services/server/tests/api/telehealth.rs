//! Consultation rooms and join grants (issue 6), through the real HTTP API: a room is opened
//! on a booked appointment by one of its practitioners and is an Encounter of class `VR` in
//! the record; grants go to the appointment's patient and practitioners and to those they
//! invite, and to nobody else.

use reqwest::{Method, StatusCode};
use sen_platform::auth::Role;
use sen_telehealth::grant::{GrantKeys, ParticipantRole};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{patient, support::TestApp};

struct Clinic {
    /// Tokens: the appointment's doctor, a colleague of the same clinic, the patient, another
    /// patient of the clinic.
    doctor: String,
    doctor_id: String,
    colleague: String,
    patient: String,
    patient_id: String,
    stranger: String,
}

async fn clinic(app: &TestApp) -> Clinic {
    let (organization, _) = app
        .create(&json!({"resourceType": "Organization", "active": true, "name": "Trạm Y tế phường Mỹ Trà"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (doctor, _) = app.create(&json!({"resourceType": "Practitioner"})).await;
        app.create(&json!({"resourceType": "PractitionerRole", "active": true,
            "practitioner": {"reference": format!("Practitioner/{doctor}")},
            "organization": {"reference": format!("Organization/{organization}")}}))
            .await;
        ids.push(doctor);
    }
    let mut patients = Vec::new();
    for cccd in ["087090000601", "087090000602"] {
        let mut p = patient(cccd);
        p["managingOrganization"] = json!({"reference": format!("Organization/{organization}")});
        patients.push(app.create(&p).await.0);
    }
    Clinic {
        doctor: app.practitioner_token(Role::Practitioner, &ids[0]),
        colleague: app.practitioner_token(Role::Practitioner, &ids[1]),
        doctor_id: ids[0].clone(),
        patient: app.token(Role::Patient, Some(&patients[0]), None),
        stranger: app.token(Role::Patient, Some(&patients[1]), None),
        patient_id: patients[0].clone(),
    }
}

fn at(offset: Duration) -> String {
    (OffsetDateTime::now_utc() + offset)
        .format(&Rfc3339)
        .unwrap()
}

/// An appointment of the clinic's patient with its doctor, `status`, ending at `end`.
async fn appointment(app: &TestApp, c: &Clinic, status: &str, end: Option<String>) -> String {
    let mut appointment = json!({"resourceType": "Appointment", "status": status,
    "participant": [
        {"actor": {"reference": format!("Patient/{}", c.patient_id)}, "status": "accepted"},
        {"actor": {"reference": format!("Practitioner/{}", c.doctor_id)}, "status": "accepted"}
    ]});
    // R4: start and end both or neither (app-2), start before end (app-3's companion).
    if let Some(end) = end {
        let start = OffsetDateTime::parse(&end, &Rfc3339).unwrap() - Duration::minutes(30);
        appointment["start"] = json!(start.format(&Rfc3339).unwrap());
        appointment["end"] = json!(end);
    }
    app.create(&appointment).await.0
}

async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = app.request_as(token, method, path);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn open(app: &TestApp, token: &str, appointment: &str) -> (StatusCode, Value) {
    let body = json!({"appointment": format!("Appointment/{appointment}")}).to_string();
    call(
        app,
        token,
        Method::POST,
        "/telehealth/v1/rooms",
        Some(&body),
    )
    .await
}

/// Encounters in the record (system token).
async fn encounters(app: &TestApp) -> i64 {
    let bundle: Value = app
        .get("/fhir/Encounter?_summary=count")
        .await
        .json()
        .await
        .unwrap();
    bundle["total"].as_i64().unwrap()
}

async fn a_practitioner_opens_one_room_per_appointment_as_a_virtual_encounter(app: TestApp) {
    let c = clinic(&app).await;
    let appointment = appointment(&app, &c, "booked", Some(at(Duration::minutes(20)))).await;
    let (status, room) = open(&app, &c.doctor, &appointment).await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let id = room["room"].as_str().unwrap().to_string();
    assert_eq!(room["encounter"], json!(format!("Encounter/{id}")));
    assert_eq!(
        room["appointment"],
        json!(format!("Appointment/{appointment}"))
    );
    assert_eq!(room["status"], "planned");
    assert_eq!(room["join"], json!(format!("/consult/{id}")));
    // The room is the record's Encounter.
    let encounter: Value = app
        .get(&format!("/fhir/Encounter/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(encounter["class"]["code"], "VR");
    assert_eq!(encounter["status"], "planned");
    assert_eq!(
        encounter["subject"]["reference"],
        json!(format!("Patient/{}", c.patient_id))
    );
    assert_eq!(
        encounter["participant"][0]["individual"]["reference"],
        json!(format!("Practitioner/{}", c.doctor_id))
    );
    assert_eq!(
        encounter["appointment"][0]["reference"],
        json!(format!("Appointment/{appointment}"))
    );
    // Asked again, the same room.
    let (status, again) = open(&app, &c.doctor, &appointment).await;
    assert_eq!((status, &again["room"]), (StatusCode::OK, &room["room"]));
    assert_eq!(encounters(&app).await, 1);
    // The patient sees it; so does nobody who may not read the record.
    let path = format!("/telehealth/v1/rooms/{id}");
    let (status, seen) = call(&app, &c.patient, Method::GET, &path, None).await;
    assert_eq!((status, &seen["room"]), (StatusCode::OK, &room["room"]));
    let (status, _) = call(&app, &c.stranger, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Opening is the appointment's practitioners' (or a system client's).
    for token in [&c.colleague, &c.patient] {
        let (status, outcome) = open(&app, token, &appointment).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    let unauthenticated = app
        .anonymous(Method::POST, "/telehealth/v1/rooms")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    assert!(unauthenticated.headers().contains_key("www-authenticate"));
    assert_eq!(encounters(&app).await, 1);
}

async fn grants_go_to_the_appointments_patient_and_practitioners_and_their_invitees(app: TestApp) {
    let c = clinic(&app).await;
    let appointment = appointment(&app, &c, "booked", Some(at(Duration::minutes(20)))).await;
    let (_, room) = open(&app, &c.doctor, &appointment).await;
    let id = room["room"].as_str().unwrap().to_string();
    let tokens = format!("/telehealth/v1/rooms/{id}/tokens");
    let secret = std::fs::read(app.data_dir().join("telehealth/grant-secret")).unwrap();
    let keys = GrantKeys::new(&secret).unwrap();

    let (status, issued) = call(&app, &c.patient, Method::POST, &tokens, None).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["role"], "patient");
    assert_eq!(issued["signaling"], "/telehealth/v1/ws");
    let grant = keys.verify(issued["token"].as_str().unwrap(), &id).unwrap();
    assert_eq!(grant.role, ParticipantRole::Patient);
    assert_eq!(grant.who, Some(format!("Patient/{}", c.patient_id)));
    assert!(!grant.can.admit && !grant.can.end);
    assert_eq!(issued["participant"], json!(grant.sub));
    // Never past the appointment's end plus the 30 minutes' grace.
    let closes = OffsetDateTime::parse(issued["closes"].as_str().unwrap(), &Rfc3339).unwrap();
    let expected = OffsetDateTime::now_utc() + Duration::minutes(50);
    assert!(
        (closes - expected).abs() < Duration::seconds(5),
        "{closes} vs {expected}"
    );
    assert!(grant.exp <= closes.unix_timestamp());
    // A grant opens its own room only.
    assert!(
        keys.verify(issued["token"].as_str().unwrap(), "another-room")
            .is_err()
    );

    let (status, issued) = call(&app, &c.doctor, Method::POST, &tokens, Some("{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    let grant = keys.verify(issued["token"].as_str().unwrap(), &id).unwrap();
    assert_eq!(grant.role, ParticipantRole::Practitioner);
    assert!(grant.can.admit && grant.can.end);

    let invite = r#"{"invite": "family"}"#;
    let (status, issued) = call(&app, &c.patient, Method::POST, &tokens, Some(invite)).await;
    assert_eq!(status, StatusCode::CREATED);
    let grant = keys.verify(issued["token"].as_str().unwrap(), &id).unwrap();
    assert_eq!((grant.role, grant.who), (ParticipantRole::Family, None));
    let (status, _) = call(
        &app,
        &c.doctor,
        Method::POST,
        &tokens,
        Some(r#"{"invite": "interpreter"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Nobody else: a patient who may not see the room is told nothing of it; a colleague
    // who may read the record, and a system client, take no part.
    let (status, _) = call(&app, &c.stranger, Method::POST, &tokens, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for token in [c.colleague.clone(), app.token(Role::System, None, None)] {
        let (status, outcome) = call(&app, &token, Method::POST, &tokens, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{outcome}");
    }
    // Bad requests say what was expected.
    for body in [
        "{",
        r#"{"invite": "practitioner"}"#,
        r#"{"invite": "neighbour"}"#,
        r#"{"role": "family"}"#,
    ] {
        let (status, outcome) = call(&app, &c.patient, Method::POST, &tokens, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
    let (status, _) = call(
        &app,
        &c.patient,
        Method::POST,
        "/telehealth/v1/rooms/nothing-here/tokens",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn appointments_that_cannot_hold_a_consultation_are_refused_clearly(app: TestApp) {
    let c = clinic(&app).await;
    let soon = Some(at(Duration::minutes(20)));
    let cancelled = appointment(&app, &c, "cancelled", soon.clone()).await;
    let over = appointment(&app, &c, "booked", Some(at(Duration::hours(-2)))).await;
    // (R4's app-3: only proposed, cancelled and waitlisted appointments go without times.)
    let endless = appointment(&app, &c, "proposed", None).await;
    let (alone, _) = app
        .create(&json!({"resourceType": "Appointment", "status": "booked",
            "start": at(Duration::minutes(-10)), "end": at(Duration::minutes(20)),
            "participant": [{"actor": {"reference": format!("Patient/{}", c.patient_id)}, "status": "accepted"}]}))
        .await;
    let system = app.token(Role::System, None, None);
    for (appointment, expected) in [
        (cancelled.as_str(), StatusCode::CONFLICT),
        (over.as_str(), StatusCode::CONFLICT),
        (endless.as_str(), StatusCode::UNPROCESSABLE_ENTITY),
        (alone.as_str(), StatusCode::UNPROCESSABLE_ENTITY),
        ("no-such-appointment", StatusCode::NOT_FOUND),
    ] {
        let (status, outcome) = open(&app, &system, appointment).await;
        assert_eq!(status, expected, "{outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    for body in [
        "",
        "{",
        "[]",
        r#"{"appointment": "Patient/1"}"#,
        r#"{"appointment": "Appointment/a/_history/1"}"#,
        r#"{"appointment": 7}"#,
    ] {
        let (status, outcome) = call(
            &app,
            &system,
            Method::POST,
            "/telehealth/v1/rooms",
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {outcome}");
    }
    // Nothing was written by any of it.
    assert_eq!(encounters(&app).await, 0);
}

/// The OpenAPI document names every route, and what the routes answer has exactly the
/// fields its schemas require.
async fn the_api_is_described_by_its_openapi_document(app: TestApp) {
    let anonymous = app
        .anonymous(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let c = clinic(&app).await;
    let (status, document) = call(&app, &c.patient, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    let mut paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        vec![
            "/openapi.json",
            "/telehealth/v1/rooms",
            "/telehealth/v1/rooms/{room}",
            "/telehealth/v1/rooms/{room}/tokens",
            "/telehealth/v1/ws"
        ]
    );
    let required = |schema: &str| {
        let mut fields: Vec<String> = document["components"]["schemas"][schema]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        fields.sort();
        fields
    };
    let keys = |value: &Value| {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let appointment = appointment(&app, &c, "booked", Some(at(Duration::minutes(20)))).await;
    let (_, room) = open(&app, &c.doctor, &appointment).await;
    assert_eq!(keys(&room), required("Room"));
    let tokens = format!(
        "/telehealth/v1/rooms/{}/tokens",
        room["room"].as_str().unwrap()
    );
    let (_, issued) = call(&app, &c.patient, Method::POST, &tokens, None).await;
    assert_eq!(keys(&issued), required("Issued"));
    assert_eq!(keys(&issued["can"]), required("Permissions"));
}

/// The browser client is served to anyone (a page opened from a link carries no token): it
/// holds no data, speaks Vietnamese and English, and may load nothing but its own script.
async fn the_consultation_page_is_served_to_browsers(app: TestApp) {
    let page = app
        .anonymous(Method::GET, "/consult/01a2-room")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| page.headers()[name].to_str().unwrap().to_string();
    assert!(header("content-type").starts_with("text/html"));
    let policy = header("content-security-policy");
    assert!(
        policy.contains("script-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/consult/assets/consult.js">"#));
    assert!(html.contains(r#"<html lang="vi">"#));
    let script = app
        .anonymous(Method::GET, "/consult/assets/consult.js")
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let script = script.text().await.unwrap();
    for text in [
        "Phòng chờ",
        "Waiting room",
        "Kết thúc buổi khám",
        "End the consultation",
        "/telehealth/v1/ws",
    ] {
        assert!(script.contains(text), "{text}");
    }
    let odd = app
        .anonymous(Method::GET, "/consult/not%20a%20room")
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), StatusCode::NOT_FOUND);
}

on_both_backends!(
    the_consultation_page_is_served_to_browsers,
    the_api_is_described_by_its_openapi_document,
    a_practitioner_opens_one_room_per_appointment_as_a_virtual_encounter,
    grants_go_to_the_appointments_patient_and_practitioners_and_their_invitees,
    appointments_that_cannot_hold_a_consultation_are_refused_clearly,
);

/// Circular 30/2023/TT-BYT: an encounter diagnosis recorded on a remote examination (class
/// `VR`) must be a condition the circular lists by ICD-10 code; refused with a clear 422
/// otherwise — on create, update and in a Bundle, and when the examination names it as a
/// diagnosis — unless the encounter is typed advice only. Nothing is written when refused.
async fn diagnoses_of_remote_examinations_are_held_to_circular_30(app: TestApp) {
    let icd10 = "http://hl7.org/fhir/sid/icd-10";
    let vr = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"});
    let (patient_id, _) = app.create(&patient("079012345678")).await;
    let subject = json!({"reference": format!("Patient/{patient_id}")});
    let (remote, _) = app
        .create(&json!({"resourceType": "Encounter", "status": "in-progress", "class": vr, "subject": subject}))
        .await;
    let (advice, _) = app
        .create(&json!({"resourceType": "Encounter", "status": "in-progress", "class": vr, "subject": subject,
            "type": [{"coding": [{"system": "http://fhir.sen.vn/CodeSystem/encounter-type", "code": "advice-only"}]}]}))
        .await;
    let diagnosis = |encounter: &str, code: &str| {
        json!({"resourceType": "Condition", "subject": subject,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": icd10, "code": code}]},
            "encounter": {"reference": format!("Encounter/{encounter}")}})
    };
    let before = app.history_rows().await;

    // Listed: obesity (E66 covers E66.0), chronic rhinitis.
    app.create(&diagnosis(&remote, "E66.0")).await;
    app.create(&diagnosis(&remote, "J31.1")).await;
    // Not listed: an acute myocardial infarction is not examined remotely.
    let refused = app
        .post_raw("/fhir/Condition", &diagnosis(&remote, "I21.0").to_string())
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome: Value = refused.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "business-rule", "{outcome}");
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("I21.0") && text.contains("30/2023"), "{text}");
    // No ICD-10 code at all: the list cannot be checked.
    let mut snomed = diagnosis(&remote, "I21.0");
    snomed["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]});
    let refused = app.post_raw("/fhir/Condition", &snomed.to_string()).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Advice only: any condition may be discussed.
    app.create(&diagnosis(&advice, "I21.0")).await;
    assert_eq!(
        app.history_rows().await,
        before + 3,
        "nothing written by a refusal"
    );

    // An update is held to it too.
    let (listed, _) = app.create(&diagnosis(&remote, "M25.5")).await;
    let mut changed = diagnosis(&remote, "I21.0");
    changed["id"] = json!(listed);
    let refused = app
        .put(&format!("/fhir/Condition/{listed}"), &changed)
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // In a transaction, whole: the refused entry takes the Bundle with it.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c3a52-6c4d-4a53-9a43-0d7f0a3c1e01",
         "resource": {"resourceType": "Encounter", "status": "in-progress", "class": vr, "subject": subject},
         "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Condition", "subject": subject,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": icd10, "code": "C34.9"}]},
            "encounter": {"reference": "urn:uuid:6f1c3a52-6c4d-4a53-9a43-0d7f0a3c1e01"}},
         "request": {"method": "POST", "url": "Condition"}}]});
    let rows = app.history_rows().await;
    let refused = app.post_raw("/fhir", &bundle.to_string()).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.history_rows().await, rows, "the Bundle wrote nothing");

    // The examination itself cannot name an unlisted condition as its diagnosis.
    let (other, _) = app
        .create(&json!({"resourceType": "Condition", "subject": subject,
            "code": {"coding": [{"system": icd10, "code": "I21.0"}]}}))
        .await;
    let named = json!({"resourceType": "Encounter", "id": remote, "status": "in-progress", "class": vr,
        "subject": subject, "diagnosis": [{"condition": {"reference": format!("Condition/{other}")}}]});
    let refused = app.put(&format!("/fhir/Encounter/{remote}"), &named).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

on_both_backends!(diagnoses_of_remote_examinations_are_held_to_circular_30);

mod media;
mod signaling;
