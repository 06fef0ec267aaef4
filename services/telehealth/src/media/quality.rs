//! Each participant's quality, from its peer connection's statistics: what it sends (loss
//! and jitter the server sees) and what it receives (loss, jitter and round trip from its
//! RTCP reports); told to the participant, and now and then to the operations center.

use std::{
    collections::HashMap,
    sync::{Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::json;
use webrtc::peer_connection::{RTCStatsReportEntry, StatsSelector};

use super::{Outgoing, Peer, lock};

/// How often each participant's quality is measured (and told to it).
pub const QUALITY_EVERY: Duration = Duration::from_secs(5);

/// Every how many measurements one goes to the operations center (30 s).
const REPORT_EVERY: u64 = 6;

/// What a quality measurement found, for the participant and the operations center.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quality {
    /// Of the packets the participant sent, the share lost on the way (percent).
    pub uplink_loss_pct: f64,
    /// Interarrival jitter of what the participant sends, in milliseconds.
    pub uplink_jitter_ms: f64,
    /// Of the packets forwarded to the participant, the share it reported lost (percent).
    pub downlink_loss_pct: f64,
    /// Interarrival jitter the participant reported, in milliseconds.
    pub downlink_jitter_ms: f64,
    /// Round-trip time between server and participant, from RTCP, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Measures the participant's quality every [`QUALITY_EVERY`] while its peer lives: sent
/// to the participant, and every [`REPORT_EVERY`]th to the operations center.
pub(super) async fn measure(peer: Weak<Peer>) {
    let mut previous: Option<(u64, i64)> = None;
    for round in 1u64.. {
        tokio::time::sleep(QUALITY_EVERY).await;
        let Some(peer) = peer.upgrade() else { return };
        if peer.closed.load(Ordering::Relaxed) {
            return;
        }
        let report = peer.pc.get_stats(Instant::now(), StatsSelector::None).await;
        // Jitter comes in RTP clock units: each stream's clock turns it into time.
        let clocks: HashMap<u32, u32> = lock(&peer.publications)
            .iter()
            .map(|p| (p.ssrc, p.codec.clock_rate))
            .collect();
        let (mut received, mut lost, mut jitter_up) = (0u64, 0i64, 0f64);
        for entry in report.iter() {
            if let RTCStatsReportEntry::InboundRtp(inbound) = entry {
                let r = &inbound.received_rtp_stream_stats;
                received += r.packets_received;
                lost += r.packets_lost;
                if let Some(&clock) = clocks.get(&r.rtp_stream_stats.ssrc) {
                    jitter_up = jitter_up.max(r.jitter / f64::from(clock.max(1)));
                }
            }
        }
        // What the participant reported about the legs it receives now.
        let legs: Vec<(u32, u32)> = peer
            .legs
            .lock()
            .await
            .values()
            .map(|leg| (leg.writer.ssrc, leg.writer.clock_rate))
            .collect();
        let (mut fraction_down, mut jitter_down, mut rtt, mut downs) = (0f64, 0f64, None, 0u32);
        for (ssrc, clock) in legs {
            let Some(reception) = peer.receptions.of(ssrc) else {
                continue;
            };
            fraction_down = fraction_down.max(reception.fraction_lost);
            jitter_down = jitter_down.max(f64::from(reception.jitter) / f64::from(clock.max(1)));
            if let Some(seconds) = reception.rtt {
                rtt = Some(seconds.max(rtt.unwrap_or(0.0)));
            }
            downs += 1;
        }
        // Loss over the last interval, not since the start.
        let (interval_received, interval_lost) = match previous {
            Some((r, l)) => (received.saturating_sub(r), (lost - l).max(0)),
            None => (received, lost.max(0)),
        };
        previous = Some((received, lost));
        let expected = interval_received as f64 + interval_lost as f64;
        let quality = Quality {
            uplink_loss_pct: round2(if expected > 0.0 {
                100.0 * interval_lost as f64 / expected
            } else {
                0.0
            }),
            uplink_jitter_ms: round2(jitter_up * 1_000.0),
            downlink_loss_pct: round2(if downs > 0 {
                100.0 * fraction_down
            } else {
                0.0
            }),
            downlink_jitter_ms: round2(jitter_down * 1_000.0),
            rtt_ms: rtt.map(|s| round2(s * 1_000.0)),
        };
        let mut message = serde_json::to_value(&quality).unwrap_or_default();
        message["type"] = json!("quality");
        if let Some(sfu) = peer.sfu() {
            let _ = sfu.out.send(Outgoing {
                room: peer.room.clone(),
                participant: peer.participant.clone(),
                message,
                report: round % REPORT_EVERY == 0,
            });
        }
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
