//! Load on the forwarding unit (issue 6): N one-to-one consultations of Rust `webrtc` peers
//! (the same client as the tests, `sen_telehealth::client`), each side sending Opus-sized
//! audio (50 packets/s) and 500 kbit/s of video both ways through a running `sen` on
//! loopback. Reports, as one JSON line per level:
//! - forwarded packets per second, and per core of the server's CPU time (from /proc);
//! - loss: packets sent in the measured window that never arrived at the other side;
//! - latency from the sender's write to the receiver's read (through the server and both
//!   client stacks: an upper bound of what the server adds), p50/p99;
//! - the server's own hop, p50/p99: from a packet's arrival on loopback to its forwarded copy's
//!   departure, from the kernel's timestamps in a `tcpdump` capture of the window ([`hop`]);
//! - join time: from the signaling socket's opening to the first packet of the other side;
//! - the server's resident memory.
//!
//! Set up by `loadtests/sfu.sh`, which starts the server and mints the tokens:
//!   sen-sfu-load <base URL> <server pid> <levels: 10,50,100> <seconds per level>
//! with SYSTEM_TOKEN, DOCTOR_TOKEN (Practitioner/bench-doctor), PATIENT_TOKEN
//! (Patient/bench-patient) in the environment, and SFU_CAPTURE_DIR where the captures go
//! (without it, or without tcpdump, the hop is not measured).

mod hop;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rtc::rtp::{Packet, header::Header};
use sen_telehealth::client::{Peer, Seen, join, next_within, send};
use serde_json::{Value, json};
use webrtc::media_stream::track_local::TrackLocal;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// One round of sending: an audio packet and a video packet.
const TICK: Duration = Duration::from_millis(20);
const AUDIO_BYTES: usize = 120;
/// 1,250 bytes every 20 ms: 500 kbit/s of video.
const VIDEO_BYTES: usize = 1_250;
const WARM_UP: Duration = Duration::from_secs(3);

/// What all receivers saw.
#[derive(Default)]
struct Tally {
    /// Packets sent in the measured window.
    sent: AtomicU64,
    /// Packets of the window that arrived.
    received: AtomicU64,
    /// Latency of the window's packets, in microseconds.
    latencies: Mutex<Vec<u32>>,
    /// Join times, in milliseconds.
    joins: Mutex<Vec<u32>>,
}

struct Bench {
    base: String,
    http: reqwest::Client,
    epoch: Instant,
    system: String,
    doctor: String,
    patient: String,
}

impl Bench {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    /// The patient, the doctor and their clinic (idempotent: PUT with fixed ids).
    async fn directory(&self) -> Result<()> {
        let put = reqwest::Method::PUT;
        self.call(&self.system, put.clone(), "/fhir/Organization/bench-clinic",
            json!({"resourceType": "Organization", "id": "bench-clinic", "name": "Phòng khám đo tải"})).await?;
        let managed = json!({"reference": "Organization/bench-clinic"});
        self.call(&self.system, put.clone(), "/fhir/Patient/bench-patient",
            json!({"resourceType": "Patient", "id": "bench-patient", "managingOrganization": managed})).await?;
        self.call(
            &self.system,
            put.clone(),
            "/fhir/Practitioner/bench-doctor",
            json!({"resourceType": "Practitioner", "id": "bench-doctor"}),
        )
        .await?;
        self.call(&self.system, put, "/fhir/PractitionerRole/bench-doctor-role",
            json!({"resourceType": "PractitionerRole", "id": "bench-doctor-role", "active": true,
                "practitioner": {"reference": "Practitioner/bench-doctor"}, "organization": managed})).await?;
        Ok(())
    }

    /// A new room (on a new appointment) and its two grants.
    async fn room(&self) -> Result<(String, String, String)> {
        let now = time::OffsetDateTime::now_utc();
        let at = |minutes: i64| {
            (now + time::Duration::minutes(minutes))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let appointment = self
            .call(&self.system, reqwest::Method::POST, "/fhir/Appointment",
                json!({"resourceType": "Appointment", "status": "booked", "start": at(-1), "end": at(60),
                    "participant": [
                        {"actor": {"reference": "Patient/bench-patient"}, "status": "accepted"},
                        {"actor": {"reference": "Practitioner/bench-doctor"}, "status": "accepted"}]}))
            .await?;
        let appointment = format!(
            "Appointment/{}",
            appointment["id"].as_str().unwrap_or_default()
        );
        let room = self
            .call(
                &self.doctor,
                reqwest::Method::POST,
                "/telehealth/v1/rooms",
                json!({"appointment": appointment}),
            )
            .await?;
        let room = room["room"].as_str().context("a room id")?.to_string();
        let tokens = format!("/telehealth/v1/rooms/{room}/tokens");
        let doctor = self
            .call(&self.doctor, reqwest::Method::POST, &tokens, json!({}))
            .await?;
        let patient = self
            .call(&self.patient, reqwest::Method::POST, &tokens, json!({}))
            .await?;
        let grant = |v: &Value| v["token"].as_str().unwrap_or_default().to_string();
        Ok((room, grant(&doctor), grant(&patient)))
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A packet carrying its send time and whether it counts (sent in the measured window).
fn packet(
    ssrc: u32,
    payload_type: u8,
    (sequence_number, timestamp): (u16, u32),
    sent_us: u64,
    counted: bool,
    size: usize,
) -> Packet {
    let mut payload = Vec::with_capacity(size);
    payload.extend_from_slice(&sent_us.to_be_bytes());
    payload.push(u8::from(counted));
    payload.resize(size, 0x5a);
    Packet {
        header: Header {
            version: 2,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// Sends a peer's audio and video every [`TICK`] until `stop`; counts what it sends while
/// `counting`.
fn play(
    bench: Arc<Bench>,
    peer: &Peer,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let (audio, video) = (peer.audio.clone(), peer.video.clone());
    let (audio_ssrc, video_ssrc) = (peer.audio_ssrc, peer.video_ssrc);
    // Each stream starts at a random sequence number and timestamp, as real senders do (and
    // as the hop's capture needs to tell packets apart).
    let start = || -> (u16, u32) { (rand::random(), rand::random()) };
    let (audio_start, video_start) = (start(), start());
    let at = |(sequence, timestamp): (u16, u32), n: u16| {
        (
            sequence.wrapping_add(n),
            timestamp.wrapping_add(u32::from(n).wrapping_mul(1_800)),
        )
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for n in (0..=u16::MAX).cycle() {
            ticks.tick().await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let counted = counting.load(Ordering::Relaxed);
            let now = bench.micros();
            let a = audio
                .write_rtp(packet(
                    audio_ssrc,
                    111,
                    at(audio_start, n),
                    now,
                    counted,
                    AUDIO_BYTES,
                ))
                .await;
            let v = video
                .write_rtp(packet(
                    video_ssrc,
                    96,
                    at(video_start, n),
                    now,
                    counted,
                    VIDEO_BYTES,
                ))
                .await;
            if counted {
                tally.sent.fetch_add(
                    u64::from(a.is_ok()) + u64::from(v.is_ok()),
                    Ordering::Relaxed,
                );
            }
        }
    });
}

/// Reads what a peer receives: the first packet ends its join; counted packets feed the tally.
fn listen(
    bench: Arc<Bench>,
    mut peer_seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    opened: Instant,
    tally: Arc<Tally>,
) {
    tokio::spawn(async move {
        let mut joined = false;
        while let Some(seen) = peer_seen.recv().await {
            let Seen::Rtp { packet, .. } = seen else {
                continue;
            };
            if !joined {
                joined = true;
                let ms = u32::try_from(opened.elapsed().as_millis()).unwrap_or(u32::MAX);
                tally
                    .joins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ms);
            }
            if packet.payload.len() < 9 || packet.payload[8] != 1 {
                continue;
            }
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&packet.payload[..8]);
            let latency = bench.micros().saturating_sub(u64::from_be_bytes(sent));
            tally.received.fetch_add(1, Ordering::Relaxed);
            tally
                .latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(u32::try_from(latency).unwrap_or(u32::MAX));
        }
    });
}

struct Consultation {
    doctor: Peer,
    patient: Peer,
    _signals: Vec<sen_telehealth::client::Driving>,
}

/// Opens one consultation: both join, the doctor admits the patient, both offer.
async fn consultation(bench: &Arc<Bench>, tally: &Arc<Tally>) -> Result<Consultation> {
    let (room, doctor_grant, patient_grant) = bench.room().await?;
    let doctor_opened = Instant::now();
    let (mut doctor_ws, _) = join(&bench.base, &room, &doctor_grant)
        .await
        .map_err(anyhow::Error::msg)?;
    let patient_opened = Instant::now();
    let (mut patient_ws, joined) = join(&bench.base, &room, &patient_grant)
        .await
        .map_err(anyhow::Error::msg)?;
    let patient_id = joined["participant"]
        .as_str()
        .context("patient id")?
        .to_string();
    send(
        &mut doctor_ws,
        json!({"type": "admit", "participant": patient_id}),
    )
    .await;
    loop {
        let message = next_within(&mut patient_ws, Duration::from_secs(10))
            .await
            .context("admission")?;
        if message["type"] == "admitted" {
            break;
        }
    }
    let mut doctor = Peer::new(LOOPBACK).await.map_err(anyhow::Error::msg)?;
    let mut patient = Peer::new(LOOPBACK).await.map_err(anyhow::Error::msg)?;
    doctor
        .offer(&mut doctor_ws)
        .await
        .map_err(anyhow::Error::msg)?;
    patient
        .offer(&mut patient_ws)
        .await
        .map_err(anyhow::Error::msg)?;
    let signals = vec![doctor.drive(doctor_ws), patient.drive(patient_ws)];
    let seen = |peer: &mut Peer| {
        std::mem::replace(&mut peer.seen, tokio::sync::mpsc::unbounded_channel().1)
    };
    listen(
        bench.clone(),
        seen(&mut doctor),
        doctor_opened,
        tally.clone(),
    );
    listen(
        bench.clone(),
        seen(&mut patient),
        patient_opened,
        tally.clone(),
    );
    Ok(Consultation {
        doctor,
        patient,
        _signals: signals,
    })
}

/// The server's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) : utime is the 12th, stime the 13th.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn level(bench: &Arc<Bench>, pid: u32, consultations: usize, seconds: u64) -> Result<Value> {
    let tally = Arc::new(Tally::default());
    let (counting, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut open = Vec::with_capacity(consultations);
    let started = Instant::now();
    for _ in 0..consultations {
        let c = consultation(bench, &tally).await?;
        play(
            bench.clone(),
            &c.doctor,
            counting.clone(),
            stop.clone(),
            tally.clone(),
        );
        play(
            bench.clone(),
            &c.patient,
            counting.clone(),
            stop.clone(),
            tally.clone(),
        );
        open.push(c);
    }
    let opening = started.elapsed();
    tokio::time::sleep(WARM_UP).await;
    let capture = match std::env::var_os("SFU_CAPTURE_DIR") {
        Some(dir) => match hop::Capture::start(dir.as_ref(), &format!("level-{consultations}")) {
            Ok(capture) => Some(capture),
            Err(e) => {
                eprintln!("the server's hop is not measured: {e:#}");
                None
            }
        },
        None => None,
    };
    let cpu_before = cpu_seconds(pid);
    let window = Instant::now();
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let hops = match capture {
        Some(capture) => Some(tokio::task::spawn_blocking(move || capture.finish()).await??),
        None => None,
    };
    // Stragglers of the window arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let rss = rss_mib(pid);
    let sent = tally.sent.load(Ordering::Relaxed);
    let received = tally.received.load(Ordering::Relaxed);
    let mut latencies =
        std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    let mut joins = std::mem::take(&mut *tally.joins.lock().unwrap_or_else(|e| e.into_inner()));
    joins.sort_unstable();
    for c in open {
        let _ = c.doctor.pc.close().await;
        let _ = c.patient.pc.close().await;
    }
    let forwarded = received as f64 / elapsed;
    let cores = cpu / elapsed;
    Ok(json!({
        "consultations": consultations,
        "seconds": seconds,
        "opening_s": (opening.as_secs_f64() * 10.0).round() / 10.0,
        "joined": joins.len(),
        "sent": sent,
        "received": received,
        "loss_pct": if sent > 0 { ((1.0 - received as f64 / sent as f64) * 10_000.0).round() / 100.0 } else { 0.0 },
        "forwarded_per_s": forwarded.round(),
        "server_cores": (cores * 100.0).round() / 100.0,
        "forwarded_per_core_s": if cores > 0.0 { (forwarded / cores).round() } else { 0.0 },
        "latency_p50_ms": f64::from(percentile(&latencies, 0.50)) / 1_000.0,
        "latency_p99_ms": f64::from(percentile(&latencies, 0.99)) / 1_000.0,
        "hop_samples": hops.as_ref().map(|h| h.micros.len()),
        "hop_captured": hops.as_ref().map(|h| h.captured),
        "hop_p50_ms": hops.as_ref().map(|h| f64::from(percentile(&h.micros, 0.50)) / 1_000.0),
        "hop_p99_ms": hops.as_ref().map(|h| f64::from(percentile(&h.micros, 0.99)) / 1_000.0),
        "hop_p999_ms": hops.as_ref().map(|h| f64::from(percentile(&h.micros, 0.999)) / 1_000.0),
        "join_p50_ms": percentile(&joins, 0.50),
        "join_p99_ms": percentile(&joins, 0.99),
        "server_rss_mib": (rss * 10.0).round() / 10.0,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, pid, levels, seconds] = args.as_slice() else {
        bail!("usage: sen-sfu-load <base URL> <server pid> <levels, e.g. 10,50,100> <seconds>");
    };
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let bench = Arc::new(Bench {
        base: base.clone(),
        http: reqwest::Client::new(),
        epoch: Instant::now(),
        system: env("SYSTEM_TOKEN")?,
        doctor: env("DOCTOR_TOKEN")?,
        patient: env("PATIENT_TOKEN")?,
    });
    bench.directory().await?;
    let pid: u32 = pid.parse().context("server pid")?;
    let seconds: u64 = seconds.parse().context("seconds")?;
    for n in levels.split(',') {
        let n: usize = n.trim().parse().context("a level")?;
        let result = level(&bench, pid, n, seconds).await?;
        println!("{result}");
    }
    Ok(())
}
