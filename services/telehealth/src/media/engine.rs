//! The forwarding unit's media engine: the codecs it forwards and the interceptor chain of
//! every peer connection, with the interceptor that hands keyframe requests to the forwarder
//! and keeps what the participant reports about the legs it receives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use rtc::{
    interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket},
    rtcp::{
        payload_feedbacks::{
            full_intra_request::FullIntraRequest, picture_loss_indication::PictureLossIndication,
        },
        receiver_report::ReceiverReport,
        sender_report::SenderReport,
    },
    rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind},
    sansio::Protocol,
};
use webrtc::peer_connection::{MediaEngine, Registry};

/// Packets of each forwarded stream kept to answer NACKs: a power of two; 256 is about 4 s
/// of 500 kbit/s video, far more than a retransmission can be late.
const NACK_HISTORY: u16 = 256;

/// The codecs forwarded (Opus; VP8 and H.264 video, with NACK, PLI and FIR feedback) and the
/// interceptors: NACK both ways, RTCP reports, and keyframe requests handed to the forwarder.
pub(super) fn media_engine() -> Result<(MediaEngine, Registry, Receptions), String> {
    use rtc::peer_connection::configuration::media_engine::{
        MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
    };
    let mut media = MediaEngine::default();
    let video_feedback = || {
        vec![
            feedback("goog-remb", ""),
            feedback("ccm", "fir"),
            feedback("nack", ""),
            feedback("nack", "pli"),
        ]
    };
    let opus = codec(
        MIME_TYPE_OPUS,
        48_000,
        2,
        "minptime=10;useinbandfec=1",
        vec![],
        111,
    );
    let vp8 = codec(MIME_TYPE_VP8, 90_000, 0, "", video_feedback(), 96);
    let h264 = codec(
        MIME_TYPE_H264,
        90_000,
        0,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        video_feedback(),
        102,
    );
    for (kind, codec) in [
        (RtpCodecKind::Audio, opus),
        (RtpCodecKind::Video, vp8),
        (RtpCodecKind::Video, h264),
    ] {
        media
            .register_codec(codec, kind)
            .map_err(|e| e.to_string())?;
    }
    // The default chain (NACK both ways, simulcast header extensions, transport-wide
    // congestion feedback received, RTCP reports), but a send history of NACK_HISTORY packets
    // per leg instead of 1,024: the history keeps every forwarded packet alive, and with
    // hundreds of legs it was most of the memory. The codecs above carry the NACK feedback.
    use rtc::peer_connection::configuration::interceptor_registry::{
        configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
    };
    let registry = Registry::new()
        .with(
            Slot::NackResponder,
            rtc::interceptor::NackResponderBuilder::new()
                .with_size(NACK_HISTORY)
                .build(),
        )
        .with(
            Slot::NackGenerator,
            rtc::interceptor::NackGeneratorBuilder::new().build(),
        );
    configure_simulcast_extension_headers(&mut media).map_err(|e| e.to_string())?;
    let registry = configure_twcc_receiver_only(registry, &mut media).map_err(|e| e.to_string())?;
    let receptions = Receptions::default();
    let registry = configure_rtcp_reports(registry).with(
        Slot::from(14_000usize),
        Feedback {
            receptions: receptions.clone(),
            read: Default::default(),
            write: Default::default(),
        },
    );
    Ok((media, registry, receptions))
}

fn feedback(typ: &str, parameter: &str) -> rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
    rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
        typ: typ.to_string(),
        parameter: parameter.to_string(),
    }
}

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    rtcp_feedback: Vec<rtc::rtp_transceiver::rtp_sender::RTCPFeedback>,
    payload_type: u8,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_string(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_string(),
            rtcp_feedback,
        },
        payload_type,
    }
}

pub(super) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// What a participant last reported (RTCP reception report blocks, in its sender and receiver
/// reports) about one leg it receives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Reception {
    /// Share of the leg's packets lost since the previous report (0–1).
    pub fraction_lost: f64,
    /// Interarrival jitter, in the leg's RTP clock units.
    pub jitter: u32,
    /// Round trip from the leg's last sender report to this report, in seconds; `None` before
    /// the participant has had a sender report of the server's.
    pub rtt: Option<f64>,
}

/// A peer connection's receptions, by leg SSRC (written by its interceptor chain, read by the
/// quality measurement).
#[derive(Debug, Clone, Default)]
pub(super) struct Receptions(Arc<Mutex<HashMap<u32, Reception>>>);

impl Receptions {
    pub(super) fn of(&self, ssrc: u32) -> Option<Reception> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ssrc)
            .copied()
    }

    fn note(&self, blocks: &[rtc::rtcp::reception_report::ReceptionReport], now_ntp: u64) {
        let mut receptions = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for block in blocks {
            receptions.insert(
                block.ssrc,
                Reception {
                    fraction_lost: f64::from(block.fraction_lost) / 256.0,
                    jitter: block.jitter,
                    rtt: round_trip(block.last_sender_report, block.delay, now_ntp),
                },
            );
        }
    }
}

/// RFC 3550 §6.4.1: the arrival time (middle 32 bits of NTP) less the last sender report's time
/// and the receiver's delay since, in 1/65536 s. `None` without a sender report, or when the
/// clocks give something no path has (a wall-clock step).
fn round_trip(last_sender_report: u32, delay: u32, now_ntp: u64) -> Option<f64> {
    if last_sender_report == 0 {
        return None;
    }
    let now = (now_ntp >> 16) as u32;
    let units = now.wrapping_sub(last_sender_report).wrapping_sub(delay);
    let seconds = f64::from(units) / 65_536.0;
    (seconds < 60.0).then_some(seconds)
}

/// The wall clock as NTP, the clock the sender reports' timestamps are taken from.
fn ntp_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs() + 0x83AA_7E80;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// Passes inbound keyframe requests (PLI, FIR) on to the application, which relays them to
/// the publisher, and notes the reception reports about the legs; the rest of the inbound
/// RTCP stays with the other interceptors. Last in the chain, so they have all seen it.
struct Feedback {
    receptions: Receptions,
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Feedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            for packet in packets {
                let any = packet.as_any();
                if let Some(report) = any.downcast_ref::<SenderReport>() {
                    self.receptions.note(&report.reports, ntp_now());
                } else if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                    self.receptions.note(&report.reports, ntp_now());
                }
            }
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            message.message.packet = Packet::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for Feedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_follow_rfc_3550() {
        // The report left 1.5 s after the sender report it names, and was held 0.25 s by the
        // receiver: the path took 1.25 s there and back.
        let sent = 0x0001_0000_u32 * 1_000; // 1,000 s, middle 32 bits
        let now = (u64::from(sent) + 0x0001_8000) << 16;
        assert_eq!(round_trip(sent, 0x4000, now), Some(1.25));
        // Across the wrap of the middle 32 bits.
        let sent = u32::MAX - 0x7FFF;
        let now = u64::from(0x0000_8000_u32) << 16 | (1u64 << 48);
        assert_eq!(round_trip(sent, 0, now), Some(1.0));
        // No sender report had reached the participant; a clock step backwards.
        assert_eq!(round_trip(0, 0, now), None);
        assert_eq!(
            round_trip(0x0002_0000, 0, u64::from(0x0001_0000_u32) << 16),
            None
        );
    }

    #[test]
    fn the_wall_clock_reads_as_ntp() {
        let ntp = ntp_now();
        // After 2024 (3,913,056,000 s since 1900) and before 2036's wrap.
        assert!(ntp >> 32 > 3_913_056_000, "{ntp:x}");
    }
}
