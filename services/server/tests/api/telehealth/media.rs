//! Media through the forwarding unit, with real `webrtc` peers (0.21.1) on 127.0.0.1 as
//! patient and doctor: audio and video RTP and data-channel messages cross the server in
//! order and intact, each leg with its own SSRC; bad negotiation gets an error and the
//! session goes on.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{Value, json};
use webrtc::media_stream::track_local::TrackLocal;

use sen_telehealth::client::{
    Driving, Peer, Seen, Ws, check_numbered as check, next_within, numbered as packet,
};

use super::signaling::{grant, join, next, room, send};
use crate::support::TestApp;

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Payload bytes after the header of each test packet (a small video packet).
const SIZE: usize = 600;
/// Longest the test waits for the media to have crossed.
const WAIT: Duration = Duration::from_secs(30);

/// Sends `who`'s audio and video packets, and a data message every tenth packet once its
/// channel is open, one round every 10 ms until `stop` (media is paced like a real source).
fn play(peer: &Peer, who: &'static str, stop: Arc<AtomicBool>) {
    let (audio, video, channel) = (peer.audio.clone(), peer.video.clone(), peer.channel.clone());
    let (audio_ssrc, video_ssrc) = (peer.audio_ssrc, peer.video_ssrc);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        let mut said = 0u32;
        for n in 0u16.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            ticks.tick().await;
            let _ = audio.write_rtp(packet(audio_ssrc, 111, n, who, 80)).await;
            let _ = video.write_rtp(packet(video_ssrc, 96, n, who, SIZE)).await;
            if n % 10 == 0
                && matches!(
                    channel.ready_state().await,
                    Ok(webrtc::data_channel::RTCDataChannelState::Open)
                )
                && channel
                    .send_text(&format!("{who} says {said}"))
                    .await
                    .is_ok()
            {
                said += 1;
            }
        }
    });
}

/// What one side received of the other: sequence numbers by kind, SSRCs, data messages.
#[derive(Default)]
struct Received {
    numbers: HashMap<RtpCodecKind, Vec<u16>>,
    ssrcs: HashMap<RtpCodecKind, u32>,
    data: Vec<String>,
}

impl Received {
    fn enough(&self) -> bool {
        let count = |kind| self.numbers.get(&kind).map_or(0, Vec::len);
        count(RtpCodecKind::Audio) >= 100
            && count(RtpCodecKind::Video) >= 100
            && self.data.len() >= 5
    }

    fn take(&mut self, seen: Seen, from: &str, from_name: &str) {
        match seen {
            Seen::State(_) => {}
            Seen::Data(text) => self.data.push(text),
            Seen::Rtp {
                kind,
                stream,
                packet,
            } => {
                assert_eq!(stream, from, "the stream is named by its publisher");
                let size = if kind == RtpCodecKind::Audio {
                    80
                } else {
                    SIZE
                };
                let n = check(&packet.payload, from_name, size);
                assert_eq!(packet.header.sequence_number, n);
                let ssrc = self.ssrcs.entry(kind).or_insert(packet.header.ssrc);
                assert_eq!(*ssrc, packet.header.ssrc, "one SSRC per leg");
                assert!(
                    packet.header.extensions.iter().all(|e| e.id != 0),
                    "extensions well formed"
                );
                self.numbers.entry(kind).or_default().push(n);
            }
        }
    }
}

fn in_order(numbers: &[u16]) -> bool {
    numbers.windows(2).all(|w| w[1] > w[0])
}

/// A consultation under way: both admitted, both peers negotiated and sending.
struct Call {
    doctor: Peer,
    patient: Peer,
    doctor_id: String,
    patient_id: String,
    doctor_driving: Driving,
    patient_driving: Driving,
    room: String,
    patient_grant: String,
    stop: Arc<AtomicBool>,
}

/// Opens a consultation with the doctor on `doctor_node` and the patient on `patient_node`
/// (the same deployment), and starts both sides' media.
async fn call(doctor_node: &TestApp, patient_node: &TestApp) -> Call {
    call_losing(doctor_node, patient_node, None).await
}

/// [`call`], with the patient's path losing the first sending of every `losing`-th video
/// packet.
async fn call_losing(doctor_node: &TestApp, patient_node: &TestApp, losing: Option<u16>) -> Call {
    let (c, room) = room(doctor_node).await;
    let (doctor_grant, doctor_id) = grant(doctor_node, &c.doctor, &room, "{}").await;
    let (patient_grant, patient_id) = grant(patient_node, &c.patient, &room, "{}").await;
    let (mut doctor_ws, _) = join(doctor_node, &room, &doctor_grant).await;
    let (mut patient_ws, _) = join(patient_node, &room, &patient_grant).await;
    assert_eq!(next(&mut doctor_ws).await["event"], "waiting");

    // Waiting: no media yet.
    let patient = match losing {
        Some(every) => Peer::losing(LOOPBACK, every).await.unwrap(),
        None => Peer::new(LOOPBACK).await.unwrap(),
    };
    patient.offer(&mut patient_ws).await.unwrap();
    assert_eq!(next(&mut patient_ws).await["code"], "waiting");

    send(
        &mut doctor_ws,
        json!({"type": "admit", "participant": patient_id}),
    )
    .await;
    assert_eq!(next(&mut patient_ws).await["type"], "admitted");
    assert_eq!(next(&mut doctor_ws).await["event"], "joined");

    let doctor = Peer::new(LOOPBACK).await.unwrap();
    let ids = (doctor_id, patient_id);
    start(
        (doctor, doctor_ws),
        (patient, patient_ws),
        ids,
        room,
        patient_grant,
    )
    .await
}

/// Both peers offer over their sockets and are driven, both start sending: a call.
async fn start(
    (doctor, mut doctor_ws): (Peer, Ws),
    (patient, mut patient_ws): (Peer, Ws),
    (doctor_id, patient_id): (String, String),
    room: String,
    patient_grant: String,
) -> Call {
    doctor.offer(&mut doctor_ws).await.unwrap();
    patient.offer(&mut patient_ws).await.unwrap();
    let doctor_driving = doctor.drive(doctor_ws);
    let patient_driving = patient.drive(patient_ws);
    let stop = Arc::new(AtomicBool::new(false));
    play(&doctor, "doctor", stop.clone());
    play(&patient, "patient", stop.clone());
    Call {
        doctor,
        patient,
        doctor_id,
        patient_id,
        doctor_driving,
        patient_driving,
        room,
        patient_grant,
        stop,
    }
}

impl Call {
    /// Waits (at most [`WAIT`]) until each side has received enough of the other's media,
    /// and checks what came: in order, intact, each leg under an SSRC of its own.
    async fn crossed(&mut self) {
        let (mut at_doctor, mut at_patient) = (Received::default(), Received::default());
        let (doctor, patient) = (&mut self.doctor, &mut self.patient);
        let (doctor_id, patient_id) = (&self.doctor_id, &self.patient_id);
        let crossed = tokio::time::timeout(WAIT, async {
            while !(at_doctor.enough() && at_patient.enough()) {
                tokio::select! {
                    Some(seen) = doctor.seen.recv() => at_doctor.take(seen, patient_id, "patient"),
                    Some(seen) = patient.seen.recv() => at_patient.take(seen, doctor_id, "doctor"),
                }
            }
        })
        .await;
        let counts = |r: &Received| {
            (
                r.numbers.get(&RtpCodecKind::Audio).map_or(0, Vec::len),
                r.numbers.get(&RtpCodecKind::Video).map_or(0, Vec::len),
                r.data.len(),
            )
        };
        assert!(
            crossed.is_ok(),
            "media crossed within {WAIT:?}: at the doctor {:?}, at the patient {:?}",
            counts(&at_doctor),
            counts(&at_patient)
        );
        for (received, own) in [(&at_doctor, &*doctor), (&at_patient, &*patient)] {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                assert!(in_order(&received.numbers[&kind]), "{kind} in order");
                let sender_ssrc = if kind == RtpCodecKind::Audio {
                    own.audio_ssrc
                } else {
                    own.video_ssrc
                };
                // The other's packets, under the leg's own SSRC.
                assert_ne!(received.ssrcs[&kind], sender_ssrc);
            }
            let said: Vec<u32> = received
                .data
                .iter()
                .map(|text| text.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(
                said.windows(2).all(|w| w[1] == w[0] + 1),
                "data in order, none lost: {said:?}"
            );
        }
        assert_ne!(
            at_doctor.ssrcs[&RtpCodecKind::Video],
            patient.video_ssrc,
            "rewritten for the leg"
        );
    }

    async fn hang_up(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.doctor_driving.task.abort();
        self.patient_driving.task.abort();
        let _ = self.doctor.pc.close().await;
        let _ = self.patient.pc.close().await;
    }
}

/// A patient and a doctor, each a real `webrtc` peer, talk through the server: what each
/// sends arrives at the other in order and intact, rewritten to the leg's own SSRC.
async fn patient_and_doctor_exchange_audio_video_and_data(app: TestApp) {
    let mut call = call(&app, &app).await;
    call.crossed().await;
    // Each side is told its quality from RTCP: loss, jitter in milliseconds (the test's
    // packets advance their RTP clocks faster than real time, so some tens of ms) and, once
    // a report about the server's sender report has come back, the round trip.
    for driving in [&mut call.doctor_driving, &mut call.patient_driving] {
        let quality = tokio::time::timeout(WAIT, async {
            loop {
                let message = driving.incoming.recv().await.expect("the session goes on");
                if message["type"] == "quality" && message["rttMs"].is_number() {
                    return message;
                }
            }
        })
        .await
        .expect("a quality message with a round trip");
        let ms = |name: &str| quality[name].as_f64().expect(name);
        assert!((0.0..100.0).contains(&ms("rttMs")), "{quality}");
        for jitter in ["uplinkJitterMs", "downlinkJitterMs"] {
            assert!((0.0..200.0).contains(&ms(jitter)), "{quality}");
        }
        assert_eq!(ms("uplinkLossPct"), 0.0, "{quality}");
        assert_eq!(ms("downlinkLossPct"), 0.0, "{quality}");
    }
    call.hang_up().await;
    // The operations team sees the forwarding unit work.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("telehealth_forwarded_packets_total"),
        "{metrics}"
    );
}

/// Two nodes of one deployment (one database, one Redis): the doctor reaches one, the
/// patient the other; the room's media lives on the doctor's node, the patient's
/// negotiation is relayed there, and they still talk.
async fn patient_and_doctor_on_two_nodes_still_talk(app: TestApp) {
    if !app.redis {
        // Nodes share their state through Redis only (under CI=true this fails).
        sen_platform::testing::required_env("TEST_REDIS_URL", "Redis");
        return;
    }
    let other = app.another_node().await;
    let mut call = call(&app, &other).await;
    call.crossed().await;
    call.hang_up().await;
}

/// The patient's signaling connection drops; it comes back with its grant within the
/// resume window, straight to its place (no waiting room), asks for an ICE restart, and its
/// media goes on over the same peer connection with new ICE credentials.
async fn a_dropped_patient_resumes_with_an_ice_restart(app: TestApp) {
    let mut call = call(&app, &app).await;
    call.crossed().await;
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(str::to_string)
    };
    let before = ufrag(&call.patient.pc.remote_description().await.unwrap().sdp);

    // The network goes: the socket is dropped without a word.
    call.patient_driving.task.abort();
    let (patient_ws, joined) = join(&app, &call.room, &call.patient_grant).await;
    assert_eq!(joined["state"], "admitted", "{joined}");
    let mut driving = call.patient.drive(patient_ws);
    driving.outgoing.send(json!({"type": "restart"})).unwrap();
    // The server's ICE-restart offer is answered by the driver; media crosses again.
    call.crossed().await;
    let after = ufrag(&call.patient.pc.remote_description().await.unwrap().sdp);
    assert!(before.is_some() && after.is_some());
    assert_ne!(
        before, after,
        "the server's ICE credentials changed: an ICE restart"
    );
    while let Ok(message) = driving.incoming.try_recv() {
        assert_ne!(message["type"], "error", "{message}");
    }
    call.patient_driving = driving;
    call.hang_up().await;
}

/// The patient's path loses every tenth video packet the first time it is sent. The server
/// notices the gap, asks the patient again (NACK), and forwards what comes back: the doctor
/// still gets every packet, intact, the lost ones after their successors.
async fn lost_packets_are_asked_again_and_still_arrive(app: TestApp) {
    const EVERY: u16 = 10;
    let mut call = call_losing(&app, &app, Some(EVERY)).await;
    // Arrival order of the patient's video at the doctor.
    let mut arrived: Vec<u16> = Vec::new();
    let patient_id = call.patient_id.clone();
    let gathered = tokio::time::timeout(WAIT, async {
        while arrived.len() < 300 {
            let Some(Seen::Rtp {
                kind,
                stream,
                packet,
            }) = call.doctor.seen.recv().await
            else {
                continue;
            };
            if kind != RtpCodecKind::Video {
                continue;
            }
            assert_eq!(stream, patient_id);
            let n = check(&packet.payload, "patient", SIZE);
            assert_eq!(packet.header.sequence_number, n);
            arrived.push(n);
        }
    })
    .await;
    assert!(
        gathered.is_ok(),
        "300 video packets within {WAIT:?}: {}",
        arrived.len()
    );
    // After the start-up (packets sent before the legs were negotiated never cross), a window
    // of 200 packets must be complete, the lost ones included.
    let first = *arrived.iter().min().unwrap();
    let window = (first + 2 * EVERY)..(first + 2 * EVERY + 200);
    let position = |n: u16| arrived.iter().position(|&a| a == n);
    for n in window.clone() {
        let Some(at) = position(n) else {
            panic!(
                "packet {n} never arrived (lost on the way: {})",
                n % EVERY == 0
            );
        };
        if n % EVERY == 0 {
            // It was sent again on request: it came after the packet that followed it.
            let next = position(n + 1).expect("the next packet arrived");
            assert!(at > next, "packet {n} arrived late, after {}", n + 1);
        }
    }
    let lost = call.patient.lost.load(Ordering::Relaxed);
    assert!(lost >= 20, "the patient's path lost packets: {lost}");
    call.hang_up().await;
}

/// Doctor and patient of `room` joined through `app`, the patient admitted by the doctor.
struct Admitted {
    doctor_ws: Ws,
    patient_ws: Ws,
    ids: (String, String),
    patient_grant: String,
    /// What `joined` told the doctor and the patient.
    joined: (Value, Value),
}

async fn admitted(app: &TestApp, c: &super::Clinic, room: &str) -> Admitted {
    let (doctor_grant, doctor_id) = grant(app, &c.doctor, room, "{}").await;
    let (patient_grant, patient_id) = grant(app, &c.patient, room, "{}").await;
    let (mut doctor_ws, doctor_joined) = join(app, room, &doctor_grant).await;
    let (mut patient_ws, patient_joined) = join(app, room, &patient_grant).await;
    assert_eq!(next(&mut doctor_ws).await["event"], "waiting");
    send(
        &mut doctor_ws,
        json!({"type": "admit", "participant": patient_id}),
    )
    .await;
    assert_eq!(next(&mut patient_ws).await["type"], "admitted");
    Admitted {
        doctor_ws,
        patient_ws,
        ids: (doctor_id, patient_id),
        patient_grant,
        joined: (doctor_joined, patient_joined),
    }
}

/// The room's node dies mid-call. Here the room is held by a node that never answers (its
/// lease, 3 s, lapses as a dead node's 8 s would): the node the participants reached places
/// the room again on its next renewal and tells them (`media` `moved`); they open new media
/// connections, and their media crosses through it.
async fn media_follows_the_room_when_its_node_dies(app: TestApp) {
    let (c, room) = room(&app).await;
    let placed = app
        .kv
        .set_if_absent(
            &format!("room:{room}:node"),
            b"a-node-that-died",
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert!(placed);
    let mut a = admitted(&app, &c, &room).await;
    let joined = &a.joined.0;
    assert_eq!(joined["node"], "a-node-that-died", "{joined}");
    assert_eq!(joined["here"], false, "{joined}");

    // Both are told the room moved here, once this node has placed it again.
    for ws in [&mut a.doctor_ws, &mut a.patient_ws] {
        let moved = loop {
            let message = next(ws).await;
            if message["type"] == "media" {
                break message;
            }
        };
        assert_eq!(moved["state"], "moved", "{moved}");
        assert_ne!(moved["node"], "a-node-that-died", "{moved}");
    }
    let doctor = Peer::new(LOOPBACK).await.unwrap();
    let patient = Peer::new(LOOPBACK).await.unwrap();
    let sides = ((doctor, a.doctor_ws), (patient, a.patient_ws));
    let mut call = start(sides.0, sides.1, a.ids, room, a.patient_grant).await;
    call.crossed().await;
    call.hang_up().await;
}

/// A real coturn (`turnserver`, Debian `coturn`) on 127.0.0.1 with `use-auth-secret`, stopped
/// when dropped. `None` (a notice) without the binary; under CI=true that fails.
struct Coturn {
    _process: sen_platform::testing::Helper,
    url: String,
    _dir: tempfile::TempDir,
}

const TURN_SECRET: &str = "the-secret-sen-and-coturn-share";

impl Coturn {
    fn start() -> Option<Self> {
        // A free UDP port for its listener (and, from it, a relay range of its own).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let relay_low = 50_000 + (port % 150) * 100;
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new("turnserver");
        command
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay_low}"))
            .arg(format!("--max-port={}", relay_low + 99))
            .args([
                "--use-auth-secret",
                "--realm=sen.test",
                "--no-tls",
                "--no-dtls",
            ])
            .arg(format!("--static-auth-secret={TURN_SECRET}"))
            // The server's media is on loopback here; coturn refuses such peers by default.
            .args(["--allow-loopback-peers", "--no-cli", "--log-file=stdout"])
            .arg(format!(
                "--pidfile={}",
                dir.path().join("turn.pid").display()
            ))
            .arg(format!("--db={}", dir.path().join("turndb").display()));
        let process = sen_platform::testing::Helper::start(
            command,
            "Total General servers",
            "apt install coturn",
            "TURN",
        )?;
        Some(Coturn {
            _process: process,
            url: format!("turn:127.0.0.1:{port}?transport=udp"),
            _dir: dir,
        })
    }
}

/// The patient can only reach the server through TURN (relay candidates only): with the
/// ephemeral credentials `joined` gives it (coturn's `use-auth-secret` scheme), a real coturn
/// relays its media, and the consultation goes on as usual. TURN involves no database: one
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_crosses_a_real_coturn_with_the_joined_credentials() {
    let Some(coturn) = Coturn::start() else {
        return;
    };
    let app = TestApp::sqlite_with(|config| {
        config.telehealth.turn_urls = vec![coturn.url.clone()];
        config.telehealth.turn_secret =
            Some(sen_platform::config::Secret::new(TURN_SECRET.to_string()));
    })
    .await;
    let (c, room) = room(&app).await;
    let a = admitted(&app, &c, &room).await;
    let servers = a.joined.1["iceServers"].clone();
    assert_eq!(servers[0]["urls"][0], json!(coturn.url), "{}", a.joined.1);

    let patient = Peer::relayed(LOOPBACK, &servers).await.unwrap();
    let doctor = Peer::new(LOOPBACK).await.unwrap();
    let sides = ((doctor, a.doctor_ws), (patient, a.patient_ws));
    let mut call = start(sides.0, sides.1, a.ids, room, a.patient_grant).await;
    call.crossed().await;
    // It went through the relay: the patient had relay candidates only.
    let stats = call
        .patient
        .pc
        .get_stats(
            std::time::Instant::now(),
            webrtc::peer_connection::StatsSelector::None,
        )
        .await;
    let types: Vec<String> = stats
        .iter()
        .filter_map(|entry| match entry {
            webrtc::peer_connection::RTCStatsReportEntry::LocalCandidate(c) => {
                Some(format!("{:?}", c.candidate_type).to_lowercase())
            }
            _ => None,
        })
        .collect();
    assert!(
        !types.is_empty() && types.iter().all(|t| t.contains("relay")),
        "the patient's candidates are relayed: {types:?}"
    );
    call.hang_up().await;
}

/// Bad negotiation gets an error message, and the session goes on.
async fn bad_negotiation_gets_errors_and_the_session_goes_on(app: TestApp) {
    let (c, room) = room(&app).await;
    let (doctor_grant, _) = grant(&app, &c.doctor, &room, "{}").await;
    let (mut ws, _) = join(&app, &room, &doctor_grant).await;
    for (bad, code) in [
        (json!({"type": "offer", "sdp": "v=0 not really"}), "bad-sdp"),
        (json!({"type": "offer", "sdp": ""}), "bad-sdp"),
        (json!({"type": "offer"}), "malformed"),
        (json!({"type": "answer", "sdp": "v=0"}), "no-media"),
        (
            json!({"type": "ice", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}}),
            "no-media",
        ),
        (json!({"type": "ice", "candidate": 42}), "malformed"),
        (json!({"type": "restart"}), "no-media"),
    ] {
        send(&mut ws, bad.clone()).await;
        let answer = next_within(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(
            answer.as_ref().map(|a| a["code"].clone()),
            Some(json!(code)),
            "{bad} → {answer:?}"
        );
    }
    // A good offer still works after all that.
    let peer = Peer::new(LOOPBACK).await.unwrap();
    peer.offer(&mut ws).await.unwrap();
    // (The connection's state may come first.)
    let answer = loop {
        let message = next(&mut ws).await;
        if message["type"] != "media" {
            break message;
        }
    };
    assert_eq!(answer["type"], "answer", "{answer}");
    send(&mut ws, json!({"type": "ping", "id": 7})).await;
    loop {
        let message = next(&mut ws).await;
        if message["type"] == "pong" {
            break;
        }
        assert!(
            matches!(message["type"].as_str(), Some("ice" | "media")),
            "{message}"
        );
    }
    let _ = peer.pc.close().await;
}

on_both_backends!(
    patient_and_doctor_exchange_audio_video_and_data,
    patient_and_doctor_on_two_nodes_still_talk,
    a_dropped_patient_resumes_with_an_ice_restart,
    lost_packets_are_asked_again_and_still_arrive,
    media_follows_the_room_when_its_node_dies,
    bad_negotiation_gets_errors_and_the_session_goes_on,
);
