//! An independent WebRTC stack through our signaling and forwarding unit: Python `aiortc`
//! (PyPI) joins a consultation as the patient and a Rust `webrtc` peer
//! (`sen_telehealth::client`) as the doctor, through the real `sen` binary. aiortc sends its
//! synthetic VP8 video and data-channel pings; the Rust peer sends the video it receives back
//! as its own track and answers each ping. aiortc must decode frames of that video (so the
//! forwarding unit's rewriting leaves VP8 decodable both ways) and get every answer, in order.
//!
//! aiortc ignores loopback for its host candidates: the test runs in its own network
//! namespace (`support::rerun_in_netns`), media over a veth pair. aiortc is installed once
//! into `~/.cache/sen-aiortc` (or `$SEN_AIORTC_CACHE`).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sen_telehealth::client::{Peer, Seen, join, next_within, send};
use serde_json::{Value, json};
use webrtc::media_stream::track_local::TrackLocal;

use crate::support::{Sen, Store, http, inside_netns, python_venv, rerun_in_netns};

const AIORTC: [&str; 2] = ["aiortc==1.16.0", "websockets==17.4"];
/// The Rust peer's media address: one end of the namespace's veth pair.
const RUST_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1));
/// Frames aiortc must decode of the Rust peer's video.
const FRAMES: u32 = 30;

pub async fn aiortc_and_a_rust_peer_talk_through_the_server(test: &str) {
    let Some(python) = python_venv("SEN_AIORTC_CACHE", "sen-aiortc", &AIORTC, "aiortc") else {
        return;
    };
    if inside_netns() {
        return in_the_namespace(python).await;
    }
    rerun_in_netns(test).await;
}

async fn in_the_namespace(python: PathBuf) {
    let store = Store::sqlite();
    let sen = Sen::start(&store.url());
    let base = sen.base.clone();
    let (room, doctor_grant, patient_grant) = crate::browser::consultation(&http(), &base).await;

    let (mut doctor_ws, _) = join(&base, &room, &doctor_grant).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/patient.py");
    let ws_url = format!("{}/telehealth/v1/ws", base.replacen("http", "ws", 1));
    let patient = tokio::task::spawn_blocking({
        let room = room.clone();
        move || {
            Command::new(python)
                .arg(script)
                .args([ws_url.as_str(), room.as_str(), patient_grant.as_str()])
                .arg(FRAMES.to_string())
                .output()
                .expect("run python")
        }
    });
    // The patient waits; the doctor admits it and offers its own media.
    let waiting = loop {
        let message = next_within(&mut doctor_ws, Duration::from_secs(30))
            .await
            .expect("the patient arrives");
        if message["event"] == "waiting" {
            break message;
        }
    };
    send(
        &mut doctor_ws,
        json!({"type": "admit", "participant": waiting["participant"]}),
    )
    .await;
    let mut doctor = Peer::new(RUST_PEER).await.unwrap();
    // It passes aiortc's video back without decoding it: aiortc's requests for keyframes end
    // at the doctor, so the doctor asks for them itself.
    doctor.ask_keyframes(Duration::from_millis(500));
    doctor.offer(&mut doctor_ws).await.unwrap();
    let _signals = doctor.drive(doctor_ws);

    // What aiortc sends comes back from the doctor: its video as the doctor's own track
    // (own SSRC, the doctor's VP8 payload type), its pings answered.
    let (video, video_ssrc, channel) = (
        doctor.video.clone(),
        doctor.video_ssrc,
        doctor.channel.clone(),
    );
    let mut seen = std::mem::replace(&mut doctor.seen, tokio::sync::mpsc::unbounded_channel().1);
    // (Until aiortc has what it needs; the task is aborted then.)
    let reflector = tokio::spawn(async move {
        let (mut packets, mut pings) = (0u64, Vec::new());
        while let Some(event) = seen.recv().await {
            match event {
                Seen::Rtp {
                    mut packet,
                    kind: RtpCodecKind::Video,
                    ..
                } => {
                    packets += 1;
                    packet.header.ssrc = video_ssrc;
                    packet.header.payload_type = 96;
                    packet.header.extension = false;
                    packet.header.extensions.clear();
                    let _ = video.write_rtp(packet).await;
                }
                Seen::Data(text) => {
                    let _ = channel.send_text(&text.replace("ping", "pong")).await;
                    pings.push(text);
                }
                _ => {}
            }
        }
        (packets, pings)
    });

    let output = patient.await.unwrap();
    reflector.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "aiortc failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        result["frames"].as_u64() >= Some(u64::from(FRAMES)),
        "{result}"
    );
    // Pings sent before the doctor's channel was there are not answered; from the first
    // answer on, every ping is, in order.
    let replies: Vec<String> = serde_json::from_value(result["replies"].clone()).unwrap();
    let first: u32 = replies[0].trim_start_matches("pong ").parse().unwrap();
    let expected: Vec<String> = (first..first + u32::try_from(replies.len()).unwrap())
        .map(|n| format!("pong {n}"))
        .collect();
    assert_eq!(replies, expected, "every ping answered, in order");
    println!("aiortc: {result}");
    let _ = doctor.pc.close().await;
    drop(sen);
}
