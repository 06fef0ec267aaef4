//! The forwarding unit's media engine: the codecs it forwards and the interceptor chain of
//! every peer connection, with the interceptor that hands keyframe requests to the forwarder.

use std::time::Instant;

use rtc::{
    interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket},
    rtcp::payload_feedbacks::{
        full_intra_request::FullIntraRequest, picture_loss_indication::PictureLossIndication,
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
pub(super) fn media_engine() -> Result<(MediaEngine, Registry), String> {
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
    let registry =
        configure_rtcp_reports(registry).with(Slot::from(14_000usize), KeyframeRequests::default());
    Ok((media, registry))
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

/// Passes inbound keyframe requests (PLI, FIR) on to the application, which relays them to
/// the publisher; the rest of the inbound RTCP stays with the other interceptors. Last in
/// the chain, so they have all seen it.
#[derive(Default)]
struct KeyframeRequests {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
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

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
