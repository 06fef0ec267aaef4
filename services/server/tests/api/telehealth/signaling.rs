//! The signaling WebSocket with a real client (tokio-tungstenite): waiting room, admit,
//! deny, chat, mute, resume, end, and what bad grants and bad messages get.

use std::time::Duration as StdDuration;

use futures::{SinkExt, StreamExt};
use sen_telehealth::grant::{GrantKeys, GrantRequest, ParticipantRole};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Clinic, TestApp, appointment, at, call, clinic, open};

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest wait for a message the test expects (a bound, not a pause).
const WAIT: StdDuration = StdDuration::from_secs(10);

pub(super) async fn connect(app: &TestApp) -> Ws {
    let url = format!("{}/telehealth/v1/ws", app.base.replacen("http", "ws", 1));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub(super) async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// The next JSON message.
pub(super) async fn next(ws: &mut Ws) -> Value {
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
pub(super) async fn close_code(ws: &mut Ws) -> u16 {
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

pub(super) async fn join(app: &TestApp, room: &str, grant: &str) -> (Ws, Value) {
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
pub(super) async fn room(app: &TestApp) -> (Clinic, String) {
    let c = clinic(app).await;
    let appointment = appointment(app, &c, "booked", Some(at(time::Duration::minutes(20)))).await;
    let (_, room) = open(app, &c.doctor, &appointment).await;
    (c, room["room"].as_str().unwrap().to_string())
}

pub(super) async fn grant(app: &TestApp, token: &str, room: &str, body: &str) -> (String, String) {
    let path = format!("/telehealth/v1/rooms/{room}/tokens");
    let (_, issued) = call(app, token, reqwest::Method::POST, &path, Some(body)).await;
    (
        issued["token"].as_str().unwrap().to_string(),
        issued["participant"].as_str().unwrap().to_string(),
    )
}

/// Where a test's consultation events start (the stream is shared on Redis).
pub(super) async fn mark(app: &TestApp) -> String {
    app.bus
        .publish(sen_telehealth::EVENTS, &json!({"type": "test-mark"}))
        .await
        .unwrap()
}

/// The consultation events of `room` published since `mark`, in order.
pub(super) async fn events_of(app: &TestApp, mark: &str, room: &str) -> Vec<Value> {
    app.bus
        .read(
            sen_telehealth::EVENTS,
            Some(mark),
            10_000,
            StdDuration::ZERO,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(_, event)| event)
        .filter(|event| event["room"] == json!(room))
        .collect()
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
    let mark = mark(&app).await;
    let (c, room) = room(&app).await;
    let (doctor_grant, doctor_id) = grant(&app, &c.doctor, &room, "{}").await;
    let (patient_grant, patient_id) = grant(&app, &c.patient, &room, "{}").await;
    let (family_grant, family_id) = grant(&app, &c.patient, &room, r#"{"invite": "family"}"#).await;

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
            "bad-sdp",
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
    let events = events_of(&app, &mark, &room).await;
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
    assert!(position("participant-arrived practitioner") < position("participant-arrived patient"));
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
                limited |= serde_json::from_str::<Value>(&text).unwrap()["code"] == "rate-limited";
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

    // The first node dies (its lease lapses, as 8 s without renewal would): the next
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
    let mark = mark(&app).await;
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
    let ended: Vec<Value> = events_of(&app, &mark, &room)
        .await
        .into_iter()
        .filter(|e| e["type"] == "consultation-ended")
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
