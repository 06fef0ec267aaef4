//! A participant's receiving legs: one sending track per publication of the others, added
//! and removed with a renegotiation the server offers, and the answers that settle them.

use std::sync::{Arc, atomic::Ordering};

use rtc::{
    peer_connection::configuration::RTCOfferOptions,
    rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind},
};
use serde_json::json;
use webrtc::{
    media_stream::{
        MediaStreamTrack,
        track_local::{TrackLocal, TrackLocalEvent, static_rtp::TrackLocalStaticRTP},
    },
    peer_connection::RTCSessionDescription,
    rtp_transceiver::RtpSender,
};

use super::{Leg, LegWriter, Peer, Publication, engine, lock};

impl Peer {
    /// Adds a leg for `publication`; true when added (a renegotiation is then due).
    pub(super) async fn subscribe(self: &Arc<Self>, publication: &Arc<Publication>) -> bool {
        if !self.rights.subscribe || self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut legs = self.legs.lock().await;
        if legs.contains_key(&publication.id) {
            return false;
        }
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            // The stream is the publisher: a client groups a participant's audio and video.
            publication.publisher.clone(),
            format!("{}-{}", publication.publisher, publication.id),
            format!("{}", publication.kind),
            publication.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: publication.codec.clone(),
                ..Default::default()
            }],
        )));
        let sender = match self
            .pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
        {
            Ok(sender) => sender,
            Err(e) => {
                tracing::warn!(error = %e, "telehealth: a track could not be forwarded");
                return false;
            }
        };
        let writer = Arc::new(LegWriter {
            track: track.clone(),
            ssrc,
            mime: publication.codec.mime_type.clone(),
            clock_rate: publication.codec.clock_rate,
            payload_type: std::sync::atomic::AtomicU8::new(0),
        });
        // The receiver's keyframe requests go to the publisher.
        let requests = Arc::downgrade(publication);
        tokio::spawn(async move {
            while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
                let Some(publication) = requests.upgrade() else {
                    return;
                };
                if packets
                    .iter()
                    .any(|p| engine::is_keyframe_request(p.as_ref()))
                {
                    publication.request_keyframe().await;
                }
            }
        });
        legs.insert(
            publication.id,
            Leg {
                sender,
                writer: writer.clone(),
            },
        );
        lock(&publication.legs).push(writer);
        true
    }

    /// Removes the leg of `publication`; true when there was one.
    pub(super) async fn unsubscribe(&self, publication: u64) -> bool {
        let leg = self.legs.lock().await.remove(&publication);
        match leg {
            Some(leg) => {
                let _ = self.pc.remove_track(&leg.sender).await;
                true
            }
            None => false,
        }
    }

    /// Offers the client the peer's present tracks (now, or after the answer awaited).
    pub(super) async fn renegotiate(&self) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut negotiation = self.negotiation.lock().await;
        if negotiation.awaiting_answer {
            negotiation.again = true;
            return;
        }
        let options = negotiation
            .restart
            .then_some(RTCOfferOptions { ice_restart: true });
        negotiation.restart = false;
        *lock(&self.held) = Some(Vec::new());
        let offer = match self.pc.create_offer(options).await {
            Ok(offer) => offer,
            Err(e) => {
                tracing::warn!(error = %e, "telehealth: no offer could be made");
                self.release_candidates();
                return;
            }
        };
        if let Err(e) = self.pc.set_local_description(offer.clone()).await {
            tracing::warn!(error = %e, "telehealth: the server's offer could not be applied");
            self.release_candidates();
            return;
        }
        negotiation.awaiting_answer = true;
        self.described(json!({"type": "offer", "sdp": offer.sdp}));
    }

    /// The client's answer to the server's offer.
    pub(super) async fn answered(&self, sdp: String) -> Result<(), String> {
        let mut negotiation = self.negotiation.lock().await;
        if !negotiation.awaiting_answer {
            return Err("no offer of the server awaits an answer".into());
        }
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|_| "the answer is not valid SDP".to_string())?;
        if self.pc.set_remote_description(answer).await.is_err() {
            // The offer is withdrawn; the client can try again.
            if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                let _ = self.pc.set_local_description(rollback).await;
            }
            negotiation.awaiting_answer = false;
            return Err("the answer could not be applied (malformed or unsupported SDP)".into());
        }
        negotiation.awaiting_answer = false;
        let again = std::mem::take(&mut negotiation.again);
        drop(negotiation);
        self.settle_legs().await;
        if again {
            Box::pin(self.renegotiate()).await;
        }
        Ok(())
    }

    /// After a negotiation: each new leg learns its payload type, and its publisher is asked
    /// for a keyframe (the receiver can show nothing before one).
    pub(super) async fn settle_legs(&self) {
        let legs: Vec<(Arc<dyn RtpSender>, Arc<LegWriter>)> = self
            .legs
            .lock()
            .await
            .values()
            .map(|leg| (leg.sender.clone(), leg.writer.clone()))
            .collect();
        for (sender, writer) in legs {
            if writer.payload_type.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let Ok(parameters) = sender.get_parameters().await else {
                continue;
            };
            let mime = &writer.mime;
            let negotiated = parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                .map(|c| c.payload_type);
            if let Some(payload_type) = negotiated {
                writer.payload_type.store(payload_type, Ordering::Relaxed);
            }
        }
        for other in self.others() {
            let publications: Vec<_> = lock(&other.publications).clone();
            for publication in publications {
                if publication.kind == RtpCodecKind::Video {
                    publication.request_keyframe().await;
                }
            }
        }
    }
}
