//! The consultation state on both stores: memory (embedded default) and Redis (shared by
//! nodes). Each test runs the same story on each, in a namespace of its own.

use std::{sync::Arc, time::Duration};

use sen_platform::kv::{KeyValueStore, MemoryStore, RedisStore};
use sen_telehealth::{
    grant::{Grant, GrantKeys, GrantRequest, ParticipantRole, Refused},
    session::{Admission, Arrival, Sessions},
};

const SECRET: &[u8] = b"a telehealth secret of 32+ bytes, for tests";

fn now_s() -> i64 {
    i64::try_from(sen_platform::unix_seconds()).unwrap()
}

async fn stores() -> Vec<Arc<dyn KeyValueStore>> {
    let namespace = format!("telehealth-test-{}", uuid::Uuid::new_v4());
    let mut stores: Vec<Arc<dyn KeyValueStore>> = vec![Arc::new(MemoryStore::new(&namespace))];
    if let Some(url) = sen_platform::testing::required_env("TEST_REDIS_URL", "Redis") {
        stores.push(Arc::new(
            RedisStore::connect(&url, &namespace).await.unwrap(),
        ));
    }
    stores
}

fn grant(room: &str, role: ParticipantRole) -> Grant {
    let t = now_s();
    GrantKeys::new(SECRET)
        .unwrap()
        .issue(
            &GrantRequest {
                room: room.into(),
                role,
                who: None,
                ttl: Duration::from_secs(600),
                room_closes: t + 3_600,
            },
            t,
        )
        .unwrap()
        .0
}

#[tokio::test]
async fn patients_wait_in_arrival_order_until_a_practitioner_admits_them() {
    for kv in stores().await {
        let sessions = Sessions::new(kv.clone());
        let t = now_s() * 1_000;
        let doctor = grant("r1", ParticipantRole::Practitioner);
        let patient = grant("r1", ParticipantRole::Patient);
        let family = grant("r1", ParticipantRole::Family);
        assert_eq!(
            sessions.arrive(&doctor, t).await.unwrap(),
            Arrival::Admitted,
            "{}",
            kv.kind()
        );
        assert_eq!(
            sessions.arrive(&patient, t + 1).await.unwrap(),
            Arrival::Waiting { ahead: 0 }
        );
        assert_eq!(
            sessions.arrive(&family, t + 2).await.unwrap(),
            Arrival::Waiting { ahead: 1 }
        );
        let waiting: Vec<String> = sessions
            .waiting("r1")
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(waiting, vec![patient.sub.clone(), family.sub.clone()]);

        let admitted = sessions
            .admit("r1", &patient.sub, t + 5_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(admitted.admission, Admission::Admitted);
        assert_eq!(admitted.admitted_ms, Some(t + 5_000));
        assert_eq!(admitted.arrived_ms, t + 1, "the wait time stays measurable");
        // Admitting twice, or someone unknown, admits nobody.
        assert!(
            sessions
                .admit("r1", &patient.sub, t)
                .await
                .unwrap()
                .is_none()
        );
        assert!(sessions.admit("r1", "p-nobody", t).await.unwrap().is_none());
        assert_eq!(
            sessions.arrive(&family, t + 6_000).await.unwrap(),
            Arrival::Waiting { ahead: 0 }
        );
        // Another room knows none of them.
        assert!(sessions.participants("r2").await.unwrap().is_empty());
        assert_eq!(sessions.participants("r1").await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn an_admitted_participant_that_comes_back_in_time_skips_the_waiting_room() {
    for kv in stores().await {
        let sessions = Sessions::new(kv.clone());
        let t = now_s() * 1_000;
        let patient = grant("r1", ParticipantRole::Patient);
        sessions.arrive(&patient, t).await.unwrap();
        sessions
            .admit("r1", &patient.sub, t)
            .await
            .unwrap()
            .unwrap();
        assert!(sessions.heartbeat("r1", &patient.sub, t).await.unwrap());
        // The connection dropped; the same grant comes back (presence still alive).
        assert_eq!(
            sessions.arrive(&patient, t + 10_000).await.unwrap(),
            Arrival::Admitted,
            "{}",
            kv.kind()
        );
        // After leaving on purpose, it waits again, in its first arrival's place.
        sessions.leave("r1", &patient.sub).await.unwrap();
        assert_eq!(
            sessions.arrive(&patient, t + 20_000).await.unwrap(),
            Arrival::Waiting { ahead: 0 }
        );
        let p = sessions
            .participant("r1", &patient.sub)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.admission, p.arrived_ms, p.admitted_ms),
            (Admission::Waiting, t, None)
        );
        // Heartbeats of someone the room does not know keep nothing.
        assert!(!sessions.heartbeat("r1", "p-nobody", t).await.unwrap());
    }
}

#[tokio::test]
async fn removed_and_denied_participants_cannot_come_back_with_their_grant() {
    for kv in stores().await {
        let sessions = Sessions::new(kv.clone());
        let t = now_s() * 1_000;
        let patient = grant("r1", ParticipantRole::Patient);
        let guest = grant("r1", ParticipantRole::Interpreter);
        sessions.arrive(&patient, t).await.unwrap();
        sessions.arrive(&guest, t).await.unwrap();
        sessions
            .admit("r1", &patient.sub, t)
            .await
            .unwrap()
            .unwrap();

        assert!(sessions.refuse("r1", &patient.sub, t).await.unwrap());
        assert!(sessions.refuse("r1", &guest.sub, t).await.unwrap());
        assert!(!sessions.refuse("r1", "p-nobody", t).await.unwrap());
        let state = |id: &str| {
            let sessions = sessions.clone();
            let id = id.to_string();
            async move {
                sessions
                    .participant("r1", &id)
                    .await
                    .unwrap()
                    .unwrap()
                    .admission
            }
        };
        assert_eq!(
            state(&patient.sub).await,
            Admission::Removed,
            "{}",
            kv.kind()
        );
        assert_eq!(state(&guest.sub).await, Admission::Denied);
        for g in [&patient, &guest] {
            assert_eq!(
                sessions.arrive(g, t + 1_000).await.unwrap(),
                Arrival::Refused(Refused::Revoked)
            );
        }
        assert!(sessions.waiting("r1").await.unwrap().is_empty());
        // A new grant is a new participant: the practitioner may invite someone again.
        let again = grant("r1", ParticipantRole::Patient);
        assert_eq!(
            sessions.arrive(&again, t + 2_000).await.unwrap(),
            Arrival::Waiting { ahead: 0 }
        );
    }
}

#[tokio::test]
async fn an_ended_consultation_lets_nobody_in() {
    for kv in stores().await {
        let sessions = Sessions::new(kv.clone());
        let t = now_s() * 1_000;
        let doctor = grant("r1", ParticipantRole::Practitioner);
        sessions.arrive(&doctor, t).await.unwrap();
        sessions.end("r1", doctor.closes, t).await.unwrap();
        for role in [ParticipantRole::Practitioner, ParticipantRole::Patient] {
            assert_eq!(
                sessions.arrive(&grant("r1", role), t).await.unwrap(),
                Arrival::Refused(Refused::Ended),
                "{}",
                kv.kind()
            );
        }
        assert_eq!(
            sessions.arrive(&doctor, t).await.unwrap(),
            Arrival::Refused(Refused::Ended)
        );
        // Other rooms go on.
        assert_eq!(
            sessions
                .arrive(&grant("r2", ParticipantRole::Patient), t)
                .await
                .unwrap(),
            Arrival::Waiting { ahead: 0 }
        );
    }
}

#[tokio::test]
async fn nothing_of_a_room_outlives_its_closing_time() {
    for kv in stores().await {
        let sessions = Sessions::new(kv.clone());
        let t = now_s();
        // A room closing one second from now.
        let (patient, _) = GrantKeys::new(SECRET)
            .unwrap()
            .issue(
                &GrantRequest {
                    room: "brief".into(),
                    role: ParticipantRole::Patient,
                    who: None,
                    ttl: Duration::from_secs(600),
                    room_closes: t + 1,
                },
                t,
            )
            .unwrap();
        sessions.arrive(&patient, t * 1_000).await.unwrap();
        assert_eq!(sessions.participants("brief").await.unwrap().len(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sessions.participants("brief").await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: room state kept past its closing",
                kv.kind()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
