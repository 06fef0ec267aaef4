//! A consultation client in Rust: the signaling WebSocket (protocol v1) and a `webrtc` peer
//! that offers an Opus and a VP8 track and a data channel, trickles candidates, answers the
//! server's offers, and hands its user every RTP packet and data message it receives. The
//! tests' patient and doctor, and the forwarding unit's load generator (`loadtests`).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use rtc::{
    rtp::Packet,
    rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    },
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    media_stream::{
        MediaStreamTrack,
        track_local::{TrackLocal, static_rtp::TrackLocalStaticRTP},
        track_remote::{TrackRemote, TrackRemoteEvent},
    },
    peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
        RTCConfigurationBuilder, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
        RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
        register_default_interceptors,
    },
};

/// The signaling WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the signaling socket of the server at `base` (`http://…`) and joins `room` with
/// `grant`; returns the socket and the `joined` message (or the close, as an error).
pub async fn join(base: &str, room: &str, grant: &str) -> Result<(Ws, Value), String> {
    let url = format!("{}/telehealth/v1/ws", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| e.to_string())?;
    send(
        &mut ws,
        json!({"type": "join", "v": 1, "room": room, "grant": grant}),
    )
    .await;
    match next_within(&mut ws, std::time::Duration::from_secs(10)).await {
        Some(joined) => Ok((ws, joined)),
        None => Err("no answer to join".into()),
    }
}

/// What the peer saw, in the order it saw it.
#[derive(Debug)]
pub enum Seen {
    Rtp {
        kind: RtpCodecKind,
        /// The publisher, as the server named the stream.
        stream: String,
        packet: Packet,
    },
    Data(String),
    State(RTCPeerConnectionState),
}

struct Events {
    ice: mpsc::UnboundedSender<RTCIceCandidateInit>,
    seen: mpsc::UnboundedSender<Seen>,
    /// How often to ask for a keyframe of each video received, in milliseconds (0: never).
    keyframes_ms: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(candidate) = event.candidate.to_json() {
            let _ = self.ice.send(candidate);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.seen.send(Seen::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let seen = self.seen.clone();
        let every = self.keyframes_ms.load(std::sync::atomic::Ordering::Relaxed);
        if every > 0 && track.kind().await == RtpCodecKind::Video {
            let asking = track.clone();
            tokio::spawn(async move {
                let Some(ssrc) = asking.ssrcs().await.first().copied() else {
                    return;
                };
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(every)).await;
                    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    if asking.write_rtcp(vec![Box::new(pli)]).await.is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            let kind = track.kind().await;
            let stream = track.stream_id().await.to_string();
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let _ = seen.send(Seen::Rtp {
                        kind,
                        stream: stream.clone(),
                        packet,
                    });
                }
            }
        });
    }
}

/// A peer's negotiation running over a signaling socket (see [`Peer::drive`]).
pub struct Driving {
    pub incoming: mpsc::UnboundedReceiver<Value>,
    pub outgoing: mpsc::UnboundedSender<Value>,
    pub task: tokio::task::JoinHandle<()>,
}

/// A client peer: its connection, its two sending tracks and what it sees.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub audio: Arc<TrackLocalStaticRTP>,
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio_ssrc: u32,
    pub video_ssrc: u32,
    pub channel: Arc<dyn DataChannel>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Video packets a [`Peer::losing`] peer lost on their way out (first sendings only).
    pub lost: Arc<std::sync::atomic::AtomicU64>,
    /// Its gathered candidates, for the signaling connection that drives it (one at a time).
    ice: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<RTCIceCandidateInit>>>,
    events: Arc<Events>,
}

fn track(
    kind: RtpCodecKind,
    mime: &str,
    clock_rate: u32,
    channels: u16,
    ssrc: u32,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "me".to_string(),
        format!("me-{kind}"),
        format!("{kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: mime.to_string(),
                clock_rate,
                channels,
                ..Default::default()
            },
            ..Default::default()
        }],
    )))
}

impl Peer {
    /// A peer on `bind` (an address of this machine: `127.0.0.1` on loopback) with an Opus
    /// and a VP8 track and a data channel `chat`, not yet offered.
    pub async fn new(bind: std::net::IpAddr) -> Result<Peer, String> {
        Self::build(bind, None, &Value::Null).await
    }

    /// A peer that reaches the server only through the TURN servers of `ice_servers` (the
    /// `iceServers` of `joined`: `[{urls, username, credential}]`): relay candidates only, as
    /// behind a firewall that lets nothing else out.
    pub async fn relayed(bind: std::net::IpAddr, ice_servers: &Value) -> Result<Peer, String> {
        Self::build(bind, None, ice_servers).await
    }

    /// A peer on a lossy path: the first sending of every video packet whose sequence number
    /// is a multiple of `every` never reaches the wire (its NACK responder still keeps it, so
    /// a NACK brings it). Counts them in [`Peer::lost`].
    pub async fn losing(bind: std::net::IpAddr, every: u16) -> Result<Peer, String> {
        Self::build(bind, Some(every.max(1)), &Value::Null).await
    }

    async fn build(
        bind: std::net::IpAddr,
        losing: Option<u16>,
        relay_through: &Value,
    ) -> Result<Peer, String> {
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(|e| e.to_string())?;
        let mut registry = register_default_interceptors(Registry::new(), &mut media)
            .map_err(|e| e.to_string())?;
        let (audio_ssrc, video_ssrc) = (rand::random::<u32>(), rand::random::<u32>());
        let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(every) = losing {
            registry = registry.with(
                // Wire-ward of the NACK responder (4_000): lost after it kept the packet.
                rtc::interceptor::Slot::from(500usize),
                Losing {
                    ssrc: video_ssrc,
                    every,
                    lost: lost.clone(),
                    sent: std::collections::HashSet::new(),
                    read: std::collections::VecDeque::new(),
                    write: std::collections::VecDeque::new(),
                },
            );
        }
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let (ice_tx, ice) = mpsc::unbounded_channel();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let events = Arc::new(Events {
            ice: ice_tx,
            seen: seen_tx,
            keyframes_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let mut configuration = RTCConfigurationBuilder::new();
        if let Some(servers) = relay_through.as_array() {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let servers = servers
                .iter()
                .map(|server| rtc::peer_connection::transport::RTCIceServer {
                    urls: match &server["urls"] {
                        Value::Array(urls) => urls.iter().map(text).collect(),
                        url => vec![text(url)],
                    },
                    username: text(&server["username"]),
                    credential: text(&server["credential"]),
                })
                .collect();
            configuration = configuration
                .with_ice_servers(servers)
                .with_ice_transport_policy(
                    rtc::peer_connection::configuration::RTCIceTransportPolicy::Relay,
                );
        }
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration.build())
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(events.clone() as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![std::net::SocketAddr::new(bind, 0)])
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let audio = track(RtpCodecKind::Audio, "audio/opus", 48_000, 2, audio_ssrc);
        let video = track(RtpCodecKind::Video, "video/VP8", 90_000, 0, video_ssrc);
        let failed = |e: webrtc::error::Error| e.to_string();
        pc.add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(failed)?;
        pc.add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(failed)?;
        let channel = pc.create_data_channel("chat", None).await.map_err(failed)?;
        let seen_data = events.seen.clone();
        let reader = channel.clone();
        tokio::spawn(async move {
            while let Some(event) = reader.poll().await {
                if let DataChannelEvent::OnMessage(message) = event {
                    let text = String::from_utf8_lossy(&message.data).into_owned();
                    let _ = seen_data.send(Seen::Data(text));
                }
            }
        });
        Ok(Peer {
            pc,
            audio,
            video,
            audio_ssrc,
            video_ssrc,
            channel,
            seen,
            lost,
            ice: Arc::new(tokio::sync::Mutex::new(ice)),
            events,
        })
    }

    /// Asks for a keyframe of each video it will receive every `every` (a peer that passes
    /// video on without decoding it: its own receivers' requests do not reach the source).
    pub fn ask_keyframes(&self, every: std::time::Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self.events
            .keyframes_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends its offer through `ws`.
    pub async fn offer(&self, ws: &mut Ws) -> Result<(), String> {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(|e| e.to_string())?;
        self.pc
            .set_local_description(offer.clone())
            .await
            .map_err(|e| e.to_string())?;
        send(ws, json!({"type": "offer", "sdp": offer.sdp})).await;
        Ok(())
    }

    /// Plays its part of the negotiation over `ws` from now on, on its own task: answers
    /// and offers of the server, candidates both ways. The other signaling messages come out
    /// of [`Driving::incoming`]; [`Driving::outgoing`] sends messages of the caller's. The
    /// socket closes when `incoming` is dropped; aborting [`Driving::task`] drops it without
    /// a word, as a lost network would (the peer can then be driven over a new socket).
    pub fn drive(&self, mut ws: Ws) -> Driving {
        let (tx, incoming) = mpsc::unbounded_channel();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Value>();
        let ice = self.ice.clone();
        let pc = self.pc.clone();
        let task = tokio::spawn(async move {
            let mut ice = ice.lock().await;
            loop {
                tokio::select! {
                    candidate = ice.recv() => {
                        let Some(candidate) = candidate else { return };
                        send(&mut ws, json!({"type": "ice", "candidate": candidate})).await;
                    }
                    Some(message) = to_send.recv() => send(&mut ws, message).await,
                    message = ws.next() => {
                        let text = match message {
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                            _ => return,
                        };
                        let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                        if let Some(other) = negotiate(pc.as_ref(), &mut ws, message).await
                            && tx.send(other).is_err()
                        {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                }
            }
        });
        Driving {
            incoming,
            outgoing,
            task,
        }
    }

    /// Whether its data channel is open.
    pub async fn channel_open(&self) -> bool {
        matches!(
            self.channel.ready_state().await,
            Ok(webrtc::data_channel::RTCDataChannelState::Open)
        )
    }
}

/// Plays a client's part of the negotiation for one signaling message: the server's answer
/// or offer, a candidate. Returns the message when it is something else.
async fn negotiate(pc: &dyn PeerConnection, ws: &mut Ws, message: Value) -> Option<Value> {
    {
        match message["type"].as_str() {
            Some("answer") => {
                let sdp = message["sdp"].as_str().unwrap_or_default().to_string();
                if let Ok(answer) = RTCSessionDescription::answer(sdp) {
                    let _ = pc.set_remote_description(answer).await;
                }
                None
            }
            Some("offer") => {
                let sdp = message["sdp"].as_str().unwrap_or_default().to_string();
                let Ok(offer) = RTCSessionDescription::offer(sdp) else {
                    return None;
                };
                if pc.set_remote_description(offer).await.is_ok()
                    && let Ok(answer) = pc.create_answer(None).await
                    && pc.set_local_description(answer.clone()).await.is_ok()
                {
                    send(ws, json!({"type": "answer", "sdp": answer.sdp})).await;
                }
                None
            }
            Some("ice") => {
                if let Ok(candidate) =
                    serde_json::from_value::<RTCIceCandidateInit>(message["candidate"].clone())
                {
                    let _ = pc.add_ice_candidate(candidate).await;
                }
                None
            }
            _ => Some(message),
        }
    }
}

/// Sends one protocol message (a closed socket shows on the next read).
pub async fn send(ws: &mut Ws, value: Value) {
    let _ = ws.send(Message::text(value.to_string())).await;
}

/// The next signaling message, if one comes within `wait`.
pub async fn next_within(ws: &mut Ws, wait: std::time::Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(_) => return None,
        }
    }
}

/// A numbered test packet: sequence number `n`, a payload saying who sent it and `n`, then
/// `size` bytes of a pattern [`check_numbered`] verifies byte for byte.
pub fn numbered(ssrc: u32, payload_type: u8, n: u16, who: &str, size: usize) -> Packet {
    let mut payload = bytes::BytesMut::from(format!("{who}:{n}:").as_bytes());
    payload.extend((0..size).map(|i| (i as u16).wrapping_add(n) as u8));
    Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type,
            sequence_number: n,
            timestamp: u32::from(n).wrapping_mul(3_000),
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: payload.freeze(),
    }
}

/// Checks a received payload is one [`numbered`]`(…, who, size)` made, and returns its `n`;
/// panics (these are test and load-tool peers) when it is not.
pub fn check_numbered(payload: &[u8], who: &str, size: usize) -> u16 {
    let head = payload.len().checked_sub(size).unwrap_or_else(|| {
        panic!("a payload of {who}'s, got {} bytes", payload.len());
    });
    let text = String::from_utf8_lossy(&payload[..head]).into_owned();
    let n: u16 = text
        .strip_prefix(&format!("{who}:"))
        .and_then(|rest| rest.strip_suffix(':'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a payload of {who}'s, got {text:?}"));
    let intact = payload[head..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i as u16).wrapping_add(n) as u8);
    assert!(intact, "payload {n} of {who}'s intact");
    n
}

/// The lossy path of [`Peer::losing`]: drops the first sending of the chosen video packets.
struct Losing {
    ssrc: u32,
    every: u16,
    lost: Arc<std::sync::atomic::AtomicU64>,
    /// Sequence numbers lost once already: their retransmissions pass.
    sent: std::collections::HashSet<u16>,
    read: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
    write: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
}

impl rtc::sansio::Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for Losing
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, message: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<rtc::interceptor::TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        if let rtc::interceptor::Packet::Rtp(packet) = &message.message.packet {
            let n = packet.header.sequence_number;
            if packet.header.ssrc == self.ssrc && n % self.every == 0 && self.sent.insert(n) {
                self.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
        }
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<rtc::interceptor::TaggedPacket> {
        self.write.pop_front()
    }
}

impl rtc::interceptor::Interceptor for Losing {
    fn bind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
}
