//! A consultation's media node is killed mid-call (SIGKILL, the real binary). Two `sen`
//! processes share one PostgreSQL database and one Redis; the doctor reaches the first (the
//! room is placed there: its media is forwarded there), the patient the second (its
//! negotiation relayed to the first). Once the first node is killed, its lease on the room
//! lapses; the second node places the room again on its next renewal and tells the patient
//! (`media` `moved`); both come back to the second node with their grants (resumed, no
//! waiting room) and talk again through it. Rust `webrtc` peers on 127.0.0.1.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sen_telehealth::client::{Peer, Seen, Ws, join, next_within, numbered, send};
use serde_json::{Value, json};
use webrtc::media_stream::track_local::TrackLocal;

use crate::support::{Sen, Store, http};

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Longest the test waits for one step (media crossing, the room moving).
const WAIT: Duration = Duration::from_secs(30);
/// Video packets each side must receive of the other's to count as talking.
const ENOUGH: usize = 50;

pub async fn a_call_goes_on_when_its_media_node_is_killed(store: Store) {
    let Some(redis) = sen_platform::testing::required_env("TEST_REDIS_URL", "Redis") else {
        return;
    };
    let env = [
        ("SEN_REDIS_URL", redis.as_str()),
        ("SEN_TELEHEALTH_MEDIA_BIND", "127.0.0.1"),
    ];
    let mut first = Sen::start_env(&store.url(), &env);
    let second = Sen::start_env(&store.url(), &env);
    let (room, doctor_grant, patient_grant) =
        crate::browser::consultation(&http(), &first.base).await;

    let (mut doctor_ws, joined) = join(&first.base, &room, &doctor_grant).await.unwrap();
    assert_eq!(
        joined["here"], true,
        "the first node places the room: {joined}"
    );
    let first_node = joined["node"].clone();
    let (mut patient_ws, joined) = join(&second.base, &room, &patient_grant).await.unwrap();
    assert_eq!(joined["here"], false, "{joined}");
    assert_eq!(joined["node"], first_node);
    let waiting = until(&mut doctor_ws, |m| m["event"] == "waiting").await;
    send(
        &mut doctor_ws,
        json!({"type": "admit", "participant": waiting["participant"]}),
    )
    .await;
    until(&mut patient_ws, |m| m["type"] == "admitted").await;

    let mut call = Call::start(doctor_ws, patient_ws).await;
    call.talking("through the first node").await;

    first.kill();
    let killed = Instant::now();
    let moved = tokio::time::timeout(WAIT, async {
        loop {
            let message = call
                .patient_signals
                .recv()
                .await
                .expect("the patient's socket");
            // (`media` also reports the connection's states: connecting, connected, …)
            if message["type"] == "media" && message["state"] == "moved" {
                break message;
            }
        }
    })
    .await
    .expect("the patient is told the room moved");
    assert_ne!(moved["node"], first_node, "{moved}");
    let told = killed.elapsed();
    call.hang_up().await;

    // Both come back to the second node with their grants: their places, no waiting room.
    let (doctor_ws, joined) = join(&second.base, &room, &doctor_grant).await.unwrap();
    assert_eq!(joined["state"], "admitted", "{joined}");
    assert_eq!(joined["here"], true, "{joined}");
    let (patient_ws, joined) = join(&second.base, &room, &patient_grant).await.unwrap();
    assert_eq!(joined["state"], "admitted", "{joined}");
    let mut call = Call::start(doctor_ws, patient_ws).await;
    call.talking("through the second node").await;
    println!(
        "failover: told {:.1} s after the kill, talking again {:.1} s after it",
        told.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    call.hang_up().await;
    drop(second);
}

/// The next message on `ws` that `wanted` accepts (within [`WAIT`]).
async fn until(ws: &mut Ws, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = next_within(ws, left).await.expect("the message came");
        if wanted(&message) {
            return message;
        }
    }
}

/// Doctor and patient peers, offered and driven over their sockets, both sending.
struct Call {
    doctor: Peer,
    patient: Peer,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    patient_signals: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// Kept (not read) so that the doctor's socket stays open: its driver closes it when
    /// this is dropped.
    _doctor_signals: tokio::sync::mpsc::UnboundedReceiver<Value>,
    stop: Arc<AtomicBool>,
}

impl Call {
    async fn start(mut doctor_ws: Ws, mut patient_ws: Ws) -> Self {
        let doctor = Peer::new(LOOPBACK).await.unwrap();
        let patient = Peer::new(LOOPBACK).await.unwrap();
        doctor.offer(&mut doctor_ws).await.unwrap();
        patient.offer(&mut patient_ws).await.unwrap();
        let doctor_driving = doctor.drive(doctor_ws);
        let patient_driving = patient.drive(patient_ws);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            doctor_driving.task,
            patient_driving.task,
            play(&doctor, "doctor", stop.clone()),
            play(&patient, "patient", stop.clone()),
        ];
        Self {
            doctor,
            patient,
            tasks,
            patient_signals: patient_driving.incoming,
            _doctor_signals: doctor_driving.incoming,
            stop,
        }
    }

    /// Waits until each side has received [`ENOUGH`] of the other's video packets, intact.
    async fn talking(&mut self, how: &str) {
        let (mut at_doctor, mut at_patient) = (0, 0);
        let (doctor, patient) = (&mut self.doctor, &mut self.patient);
        let crossed = tokio::time::timeout(WAIT, async {
            while at_doctor < ENOUGH || at_patient < ENOUGH {
                tokio::select! {
                    Some(seen) = doctor.seen.recv() => at_doctor += video_of(seen, "patient"),
                    Some(seen) = patient.seen.recv() => at_patient += video_of(seen, "doctor"),
                }
            }
        })
        .await;
        assert!(
            crossed.is_ok(),
            "media {how} within {WAIT:?}: {at_doctor} at the doctor, {at_patient} at the patient"
        );
    }

    async fn hang_up(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.doctor.pc.close().await;
        let _ = self.patient.pc.close().await;
    }
}

/// 1 for a video packet `who` sent (its payload checked), 0 for anything else.
fn video_of(seen: Seen, who: &str) -> usize {
    match seen {
        Seen::Rtp {
            kind: RtpCodecKind::Video,
            packet,
            ..
        } => {
            let prefix = format!("{who}:");
            assert!(
                packet.payload.starts_with(prefix.as_bytes()),
                "a packet of the {who}'s"
            );
            1
        }
        _ => 0,
    }
}

/// Sends `who`'s audio and video packets every 10 ms until `stop`.
fn play(peer: &Peer, who: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (audio, video) = (peer.audio.clone(), peer.video.clone());
    let (audio_ssrc, video_ssrc) = (peer.audio_ssrc, peer.video_ssrc);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        for n in 0u16.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            ticks.tick().await;
            let _ = audio.write_rtp(numbered(audio_ssrc, 111, n, who, 80)).await;
            let _ = video.write_rtp(numbered(video_ssrc, 96, n, who, 400)).await;
        }
    })
}
