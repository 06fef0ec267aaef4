//! What is forwarded: a participant's published track, its legs (one per receiving peer, with
//! the SSRC and payload type that leg uses) and the loop that copies each packet onto them.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use rtc::{
    rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication,
    rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind},
};
use webrtc::{
    media_stream::{
        track_local::{TrackLocal, static_rtp::TrackLocalStaticRTP},
        track_remote::{TrackRemote, TrackRemoteEvent},
    },
    rtp_transceiver::RtpSender,
};

use super::{KEYFRAME_GAP, lock};

/// A track a participant publishes, and the legs it is forwarded on.
pub(super) struct Publication {
    pub(super) id: u64,
    pub(super) publisher: String,
    pub(super) kind: RtpCodecKind,
    pub(super) codec: RTCRtpCodec,
    pub(super) track: Arc<dyn TrackRemote>,
    pub(super) ssrc: u32,
    pub(super) legs: Mutex<Vec<Arc<LegWriter>>>,
    pub(super) last_keyframe_request: Mutex<Option<Instant>>,
}

/// A forwarded track on one receiving peer.
pub(super) struct Leg {
    pub(super) sender: Arc<dyn RtpSender>,
    pub(super) writer: Arc<LegWriter>,
}

/// The sending half of a leg: the local track and what each packet is rewritten to.
pub(super) struct LegWriter {
    pub(super) track: Arc<TrackLocalStaticRTP>,
    pub(super) ssrc: u32,
    /// The publication's codec, whose payload type on this leg the negotiation decides.
    pub(super) mime: String,
    /// The codec's RTP clock (what the receiver's jitter is counted in).
    pub(super) clock_rate: u32,
    /// The payload type negotiated on this leg; 0 until negotiated (packets wait unsent).
    pub(super) payload_type: std::sync::atomic::AtomicU8,
}

pub(super) static PUBLICATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Publication {
    /// Asks the publisher for a keyframe, at most once per [`KEYFRAME_GAP`].
    pub(super) async fn request_keyframe(&self) {
        {
            let mut last = lock(&self.last_keyframe_request);
            if last.is_some_and(|at| at.elapsed() < KEYFRAME_GAP) {
                return;
            }
            *last = Some(Instant::now());
        }
        let _ = self
            .track
            .write_rtcp(vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: self.ssrc,
            })])
            .await;
    }
}

/// Forwards a publication's packets to its legs until the track ends.
pub(super) async fn forward(publication: &Publication) {
    let mut legs: Vec<Arc<LegWriter>> = Vec::new();
    // On `/metrics`: what the forwarding unit of this node sends (one per receiving leg).
    let forwarded = metrics::counter!("telehealth_forwarded_packets_total");
    while let Some(event) = publication.track.poll().await {
        let mut packet = match event {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            TrackRemoteEvent::OnEnded => break,
            _ => continue,
        };
        // The publisher's extension ids mean nothing on the legs (dropped once, so that no
        // leg's copy allocates).
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        legs.clear();
        legs.extend(lock(&publication.legs).iter().cloned());
        let mut sent = 0;
        for leg in &legs {
            let payload_type = leg.payload_type.load(Ordering::Relaxed);
            if payload_type == 0 {
                continue;
            }
            let mut packet = packet.clone();
            packet.header.ssrc = leg.ssrc;
            packet.header.payload_type = payload_type;
            if leg.track.write_rtp(packet).await.is_ok() {
                sent += 1;
            } else {
                // Unbound: the leg was removed; forget it.
                lock(&publication.legs).retain(|l| !Arc::ptr_eq(l, leg));
            }
        }
        forwarded.increment(sent);
    }
}
