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

mod signaling {
    //! The signaling WebSocket with a real client (tokio-tungstenite): waiting room, admit,
    //! deny, chat, mute, resume, end, and what bad grants and bad messages get.

    use std::time::Duration as StdDuration;

    use futures::{SinkExt, StreamExt};
    use sen_telehealth::grant::{GrantKeys, GrantRequest, ParticipantRole};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    use super::{Clinic, TestApp, appointment, at, call, clinic, open};

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Longest wait for a message the test expects (a bound, not a pause).
    const WAIT: StdDuration = StdDuration::from_secs(10);

    async fn connect(app: &TestApp) -> Ws {
        let url = format!("{}/telehealth/v1/ws", app.base.replacen("http", "ws", 1));
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }

    async fn send(ws: &mut Ws, value: Value) {
        ws.send(Message::text(value.to_string())).await.unwrap();
    }

    /// The next JSON message.
    async fn next(ws: &mut Ws) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("a message within 10 s")
                .expect("the socket is open")
                .expect("a frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The close code the server ends the socket with (skipping messages before it).
    async fn close_code(ws: &mut Ws) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("closed within 10 s")
            {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before a close frame: {e}"),
            }
        }
    }

    async fn join(app: &TestApp, room: &str, grant: &str) -> (Ws, Value) {
        let mut ws = connect(app).await;
        send(
            &mut ws,
            json!({"type": "join", "v": 1, "room": room, "grant": grant}),
        )
        .await;
        let joined = next(&mut ws).await;
        (ws, joined)
    }

    /// A room of the clinic, and grants (token, participant) by the caller's token and body.
    async fn room(app: &TestApp) -> (Clinic, String) {
        let c = clinic(app).await;
        let appointment =
            appointment(app, &c, "booked", Some(at(time::Duration::minutes(20)))).await;
        let (_, room) = open(app, &c.doctor, &appointment).await;
        (c, room["room"].as_str().unwrap().to_string())
    }

    async fn grant(app: &TestApp, token: &str, room: &str, body: &str) -> (String, String) {
        let path = format!("/telehealth/v1/rooms/{room}/tokens");
        let (_, issued) = call(app, token, reqwest::Method::POST, &path, Some(body)).await;
        (
            issued["token"].as_str().unwrap().to_string(),
            issued["participant"].as_str().unwrap().to_string(),
        )
    }

    /// The room's Encounter, read with the system token.
    async fn encounter_of(app: &TestApp, room: &str) -> Value {
        app.get(&format!("/fhir/Encounter/{room}"))
            .await
            .json()
            .await
            .unwrap()
    }

    async fn a_patient_waits_until_admitted_then_talks_with_the_doctor(app: TestApp) {
        // Where this test's consultation events start (the stream is shared on Redis).
        let mark = app
            .bus
            .publish(sen_telehealth::EVENTS, &json!({"type": "test-mark"}))
            .await
            .unwrap();
        let (c, room) = room(&app).await;
        let (doctor_grant, doctor_id) = grant(&app, &c.doctor, &room, "{}").await;
        let (patient_grant, patient_id) = grant(&app, &c.patient, &room, "{}").await;
        let (family_grant, family_id) =
            grant(&app, &c.patient, &room, r#"{"invite": "family"}"#).await;

        let (mut doctor, joined) = join(&app, &room, &doctor_grant).await;
        assert_eq!(joined["type"], "joined");
        assert_eq!(
            (joined["state"].as_str(), joined["role"].as_str()),
            (Some("admitted"), Some("practitioner"))
        );
        assert_eq!(joined["participant"], json!(doctor_id));
        assert_eq!(joined["waiting"], json!([]));

        let (mut patient, joined) = join(&app, &room, &patient_grant).await;
        assert_eq!(
            (joined["state"].as_str(), joined["ahead"].as_i64()),
            (Some("waiting"), Some(0))
        );
        let waiting = next(&mut doctor).await;
        assert_eq!(
            waiting,
            json!({"type": "participant", "event": "waiting", "participant": patient_id, "role": "patient"})
        );
        // Waiting: nothing to say yet, nothing to admit.
        send(&mut patient, json!({"type": "chat", "text": "xin chào"})).await;
        assert_eq!(next(&mut patient).await["code"], "waiting");
        send(
            &mut patient,
            json!({"type": "admit", "participant": family_id}),
        )
        .await;
        assert_eq!(next(&mut patient).await["code"], "forbidden");

        send(
            &mut doctor,
            json!({"type": "admit", "participant": patient_id}),
        )
        .await;
        let admitted = next(&mut patient).await;
        assert_eq!(admitted["type"], "admitted");
        // The consultation has started in the record.
        let encounter = encounter_of(&app, &room).await;
        assert_eq!(encounter["status"], "in-progress", "{encounter}");
        assert!(encounter["period"]["start"].is_string());
        assert_eq!(
            admitted["participants"],
            json!([{"participant": doctor_id, "role": "practitioner"}])
        );
        assert_eq!(
            next(&mut doctor).await,
            json!({"type": "participant", "event": "joined", "participant": patient_id, "role": "patient"})
        );

        let text = "Chào bác sĩ, tôi bị sốt từ hôm qua.";
        send(&mut patient, json!({"type": "chat", "text": text})).await;
        assert_eq!(
            next(&mut doctor).await,
            json!({"type": "chat", "from": patient_id, "text": text})
        );
        assert_eq!(
            next(&mut patient).await["type"],
            "chat",
            "its own message comes back in order"
        );
        send(
            &mut patient,
            json!({"type": "mute", "audio": true, "video": false}),
        )
        .await;
        assert_eq!(
            next(&mut doctor).await,
            json!({"type": "muted", "participant": patient_id, "audio": true, "video": false})
        );
        // Bad messages get an error; the session goes on.
        for (bad, code) in [
            (json!("{").to_string(), "malformed"),
            (json!({"type": "dance"}).to_string(), "malformed"),
            (json!({"type": "chat"}).to_string(), "malformed"),
            (
                json!({"type": "chat", "text": "x".repeat(2_001)}).to_string(),
                "invalid",
            ),
            (
                json!({"type": "offer", "sdp": "v=0"}).to_string(),
                "media-unavailable",
            ),
        ] {
            patient.send(Message::text(bad.clone())).await.unwrap();
            assert_eq!(next(&mut patient).await["code"], code, "{bad}");
        }
        send(&mut patient, json!({"type": "ping", "id": 7})).await;
        assert_eq!(next(&mut patient).await, json!({"type": "pong", "id": 7}));

        // A family member waits; the doctor denies it: its grant opens nothing any more.
        let (mut family, joined) = join(&app, &room, &family_grant).await;
        assert_eq!(joined["state"], "waiting");
        assert_eq!(next(&mut doctor).await["event"], "waiting");
        send(
            &mut doctor,
            json!({"type": "deny", "participant": family_id}),
        )
        .await;
        assert_eq!(close_code(&mut family).await, 4004);
        let mut again = connect(&app).await;
        send(
            &mut again,
            json!({"type": "join", "room": room, "grant": family_grant}),
        )
        .await;
        assert_eq!(close_code(&mut again).await, 4004);

        // The patient's connection drops; it comes back with its grant, straight in.
        drop(patient);
        let (mut patient, joined) = join(&app, &room, &patient_grant).await;
        assert_eq!(joined["state"], "admitted", "{joined}");

        // The doctor ends the consultation for everyone; nobody joins again.
        send(&mut doctor, json!({"type": "end"})).await;
        assert_eq!(close_code(&mut patient).await, 4005);
        assert_eq!(close_code(&mut doctor).await, 4005);
        // Finished in the record, with its period and its practitioner.
        let encounter = encounter_of(&app, &room).await;
        assert_eq!(encounter["status"], "finished", "{encounter}");
        let period = &encounter["period"];
        assert!(
            period["start"].as_str() <= period["end"].as_str(),
            "{period}"
        );
        assert_eq!(
            encounter["participant"][0]["individual"]["reference"],
            json!(format!("Practitioner/{}", c.doctor_id))
        );
        let mut late = connect(&app).await;
        send(
            &mut late,
            json!({"type": "join", "room": room, "grant": doctor_grant}),
        )
        .await;
        assert_eq!(close_code(&mut late).await, 4005);

        // The operations center's events: what happened, in order, and nobody's identity.
        let events: Vec<Value> = app
            .bus
            .read(
                sen_telehealth::EVENTS,
                Some(&mark),
                10_000,
                StdDuration::ZERO,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(_, event)| event)
            .filter(|event| event["room"] == json!(room))
            .collect();
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["role"].as_str().unwrap_or("")
                )
            })
            .collect();
        let position = |kind: &str| {
            kinds
                .iter()
                .position(|k| k.trim_end() == kind)
                .unwrap_or_else(|| panic!("{kind} in {kinds:?}"))
        };
        assert!(
            position("participant-arrived practitioner") < position("participant-arrived patient")
        );
        assert!(position("participant-arrived patient") < position("consultation-started"));
        assert!(position("consultation-started") < position("consultation-ended"));
        let started = &events[position("consultation-started")];
        assert!(
            started["waitMs"].as_i64().is_some_and(|w| w >= 0),
            "{started}"
        );
        let ended = &events[position("consultation-ended")];
        assert!(
            ended["durationMs"].as_i64().is_some_and(|d| d >= 0),
            "{ended}"
        );
        assert!(events.iter().all(|e| e["at"].is_i64()));
        let text = serde_json::to_string(&events).unwrap();
        for secret in [&c.patient_id, &patient_grant, &doctor_grant, &patient_id] {
            assert!(
                !text.contains(secret.as_str()),
                "an event names a person or a grant"
            );
        }
    }

    async fn bad_grants_and_bad_messages_close_with_documented_codes(app: TestApp) {
        let (c, room) = room(&app).await;
        let (patient_grant, _) = grant(&app, &c.patient, &room, "{}").await;
        let refused = |grant: String, room: String| {
            let app = &app;
            async move {
                let mut ws = connect(app).await;
                send(
                    &mut ws,
                    json!({"type": "join", "room": room, "grant": grant}),
                )
                .await;
                close_code(&mut ws).await
            }
        };
        assert_eq!(refused("not a grant".into(), room.clone()).await, 4001);
        assert_eq!(
            refused(patient_grant.clone(), "another-room".into()).await,
            4003
        );
        let secret = std::fs::read(app.data_dir().join("telehealth/grant-secret")).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (_, expired) = GrantKeys::new(&secret)
            .unwrap()
            .issue(
                &GrantRequest {
                    room: room.clone(),
                    role: ParticipantRole::Patient,
                    who: None,
                    ttl: StdDuration::from_secs(60),
                    room_closes: now + 3_600,
                },
                now - 600,
            )
            .unwrap();
        assert_eq!(refused(expired, room.clone()).await, 4002);

        // Something else than join first.
        let mut ws = connect(&app).await;
        send(&mut ws, json!({"type": "ping", "id": 1})).await;
        assert_eq!(close_code(&mut ws).await, 4000);

        // Joined: a message over 64 KiB closes the socket (1009).
        let (mut ws, joined) = join(&app, &room, &patient_grant).await;
        assert_eq!(joined["type"], "joined");
        let _ = ws.send(Message::text("x".repeat(70 * 1024))).await;
        assert_eq!(close_code(&mut ws).await, 1009);

        // A flood: errors first, then the socket is closed (4008).
        let (mut ws, _) = join(&app, &room, &patient_grant).await;
        for i in 0..400 {
            if ws
                .send(Message::text(json!({"type": "ping", "id": i}).to_string()))
                .await
                .is_err()
            {
                break;
            }
        }
        let mut limited = false;
        let code = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("answers within 10 s")
            {
                Some(Ok(Message::Text(text))) => {
                    limited |=
                        serde_json::from_str::<Value>(&text).unwrap()["code"] == "rate-limited";
                }
                Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(limited, "rate-limited errors before the close");
        assert_eq!(code, 4008);
    }

    /// Two nodes of one deployment (one database, one Redis): the doctor reaches one, the
    /// patient the other, and the consultation goes on as on one node.
    async fn participants_on_two_nodes_still_meet(app: TestApp) {
        if !app.redis {
            // Nodes share their state through Redis only (under CI=true this fails).
            sen_platform::testing::required_env("TEST_REDIS_URL", "Redis");
            return;
        }
        let other = app.another_node().await;
        let (c, room) = room(&app).await;
        let (doctor_grant, doctor_id) = grant(&app, &c.doctor, &room, "{}").await;
        let (patient_grant, patient_id) = grant(&other, &c.patient, &room, "{}").await;

        let (mut doctor, placed) = join(&app, &room, &doctor_grant).await;
        let (mut patient, joined) = join(&other, &room, &patient_grant).await;
        assert_eq!(joined["state"], "waiting");
        // The room lives on the node the first participant reached; the other node says so.
        assert_eq!(placed["here"], true, "{placed}");
        assert_eq!(joined["here"], false, "{joined}");
        assert_eq!(joined["node"], placed["node"]);
        assert_eq!(next(&mut doctor).await["participant"], json!(patient_id));
        send(
            &mut doctor,
            json!({"type": "admit", "participant": patient_id}),
        )
        .await;
        let admitted = next(&mut patient).await;
        assert_eq!(admitted["type"], "admitted");
        assert_eq!(admitted["participants"][0]["participant"], json!(doctor_id));
        assert_eq!(next(&mut doctor).await["event"], "joined");

        send(
            &mut patient,
            json!({"type": "chat", "text": "Em nghe rõ ạ"}),
        )
        .await;
        assert_eq!(next(&mut doctor).await["text"], "Em nghe rõ ạ");
        assert_eq!(next(&mut patient).await["text"], "Em nghe rõ ạ");
        send(&mut doctor, json!({"type": "chat", "text": "Chào em"})).await;
        assert_eq!(next(&mut patient).await["from"], json!(doctor_id));

        // The first node dies (its lease lapses, as 15 s without renewal would): the next
        // participant to arrive through the other node places the room there.
        assert!(app.kv.delete(&format!("room:{room}:node")).await.unwrap());
        let (family_grant, _) = grant(&other, &c.patient, &room, r#"{"invite": "family"}"#).await;
        let (_family, moved) = join(&other, &room, &family_grant).await;
        assert_eq!(moved["here"], true, "{moved}");
        assert_ne!(moved["node"], placed["node"]);

        send(&mut doctor, json!({"type": "end"})).await;
        assert_eq!(close_code(&mut patient).await, 4005);
        assert_eq!(close_code(&mut doctor).await, 4005);
    }

    /// A room never outlives its closing (the appointment's end plus the grace period): its
    /// participants are closed out, the Encounter is finished and the operations center told
    /// the consultation ran out of time.
    async fn a_consultation_ends_when_its_time_is_over(app: TestApp) {
        let mark = app
            .bus
            .publish(sen_telehealth::EVENTS, &json!({"type": "test-mark"}))
            .await
            .unwrap();
        let c = clinic(&app).await;
        // It ended so long ago that three seconds of the 30 minutes' grace are left.
        let end = at(time::Duration::seconds(3 - 30 * 60));
        let appointment = appointment(&app, &c, "booked", Some(end)).await;
        let (status, room) = open(&app, &c.doctor, &appointment).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{room}");
        let room = room["room"].as_str().unwrap().to_string();
        let (doctor_grant, _) = grant(&app, &c.doctor, &room, "{}").await;
        let (patient_grant, patient_id) = grant(&app, &c.patient, &room, "{}").await;
        let (mut doctor, _) = join(&app, &room, &doctor_grant).await;
        let (mut patient, _) = join(&app, &room, &patient_grant).await;
        assert_eq!(next(&mut doctor).await["event"], "waiting");
        send(
            &mut doctor,
            json!({"type": "admit", "participant": patient_id}),
        )
        .await;
        assert_eq!(next(&mut patient).await["type"], "admitted");
        // Nobody ends it: its time does.
        assert_eq!(close_code(&mut patient).await, 4005);
        assert_eq!(close_code(&mut doctor).await, 4005);
        let encounter = encounter_of(&app, &room).await;
        assert_eq!(encounter["status"], "finished", "{encounter}");
        let ended: Vec<Value> = app
            .bus
            .read(
                sen_telehealth::EVENTS,
                Some(&mark),
                10_000,
                StdDuration::ZERO,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(_, event)| event)
            .filter(|e| e["room"] == json!(room) && e["type"] == "consultation-ended")
            .collect();
        assert_eq!(ended.len(), 1, "ended once: {ended:?}");
        assert_eq!(ended[0]["reason"], "time-over");
    }

    on_both_backends!(
        a_consultation_ends_when_its_time_is_over,
        participants_on_two_nodes_still_meet,
        a_patient_waits_until_admitted_then_talks_with_the_doctor,
        bad_grants_and_bad_messages_close_with_documented_codes,
    );
}
