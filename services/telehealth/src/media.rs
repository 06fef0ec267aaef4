//! The selective forwarding unit: one server-side peer connection per participant (the
//! `webrtc` crate, 0.21.1 pinned), forwarding each participant's Opus audio and VP8 (or H.264)
//! video to the others, and their data-channel messages.
//!
//! For each receiving leg the forwarder rewrites what belongs to that leg: the SSRC (one per
//! leg), the payload type negotiated on the leg, and the header extensions (the publisher's are
//! dropped; the leg's own stack adds those it negotiated). Loss is repaired hop by hop: the
//! server answers a receiver's NACKs from its own send history and asks the publisher for what
//! it lost; a receiver's keyframe request (PLI or FIR) goes to the publisher, at most one per
//! [`KEYFRAME_GAP`], and a new receiver gets a keyframe requested for it.
//!
//! Negotiation (protocol v1, see [`crate::signaling`]): the client's `offer` opens (or
//! replaces) its peer, answered `answer`; the server then offers whenever it adds or removes
//! forwarded tracks, and on `restart` (an ICE restart after a network change); the client
//! answers. Candidates trickle both ways (`ice`). Because the client offers only to open a
//! peer, offers never cross.
//!
//! A room's media lives on the node it is placed on (`crate::placement`); a participant who
//! reached another node has its negotiation relayed there ([`MEDIA_TOPIC`]), and the answers
//! come back as room events; its media flows straight to the room's node.

mod engine;
mod forward;
mod legs;
mod quality;
mod shards;

use forward::{Leg, LegWriter, PUBLICATIONS, Publication, forward};

pub use quality::{QUALITY_EVERY, Quality};

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    media_stream::track_remote::TrackRemote,
    peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
        RTCIceCandidateInit, RTCIceCandidateType, RTCPeerConnectionIceEvent,
        RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
    },
};

/// Topic prefix of negotiation relayed to a room's node (`telehealth:media:<node>`).
pub(crate) const MEDIA_TOPIC: &str = "telehealth:media:";

/// Least time between two keyframe requests sent to one publisher.
pub const KEYFRAME_GAP: Duration = Duration::from_millis(500);

/// Where media sockets bind and what they announce.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub bind: IpAddr,
    pub ports: (u16, u16),
    pub public_ip: Option<IpAddr>,
}

/// What a participant's grant lets its media do.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MediaRights {
    pub publish: bool,
    pub subscribe: bool,
    pub data: bool,
}

/// Negotiation from a client (protocol v1 `offer`, `answer`, `ice`, `restart`), as relayed to
/// the room's node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum FromClient {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Ice {
        candidate: Option<RTCIceCandidateInit>,
    },
    Restart {},
    /// The participant is gone for good (left, removed, the consultation ended).
    Close {},
}

/// A negotiation message for the room's node.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Relayed {
    pub room: String,
    pub participant: String,
    pub rights: MediaRights,
    pub message: FromClient,
}

/// A message for one participant's connection, wherever it is; with `report`, a quality
/// measurement for the operations center too.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub room: String,
    pub participant: String,
    pub message: Value,
    pub report: bool,
}

/// The forwarding unit of this node.
pub(crate) struct Sfu {
    settings: MediaSettings,
    next_port: AtomicU32,
    rooms: Mutex<HashMap<String, Arc<MediaRoom>>>,
    out: mpsc::UnboundedSender<Outgoing>,
    /// The threads rooms' media run on.
    shards: shards::Shards,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct MediaRoom {
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

impl MediaRoom {
    fn peers(&self) -> Vec<Arc<Peer>> {
        lock(&self.peers).values().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One participant's server-side peer connection.
struct Peer {
    room: String,
    participant: String,
    rights: MediaRights,
    pc: Arc<dyn PeerConnection>,
    sfu: Weak<Sfu>,
    /// What this participant publishes.
    publications: Mutex<Vec<Arc<Publication>>>,
    /// What it receives: a leg per publication of another participant.
    legs: tokio::sync::Mutex<HashMap<u64, Leg>>,
    negotiation: tokio::sync::Mutex<Negotiation>,
    channel: Mutex<Option<Arc<dyn DataChannel>>>,
    /// Candidates gathered while a description of the server's is being made: held until it
    /// has been sent (a client cannot use a candidate before the description it belongs to).
    held: Mutex<Option<Vec<Value>>>,
    closed: AtomicBool,
    /// What the participant reports about the legs it receives.
    receptions: engine::Receptions,
}

#[derive(Default)]
struct Negotiation {
    /// An offer of the server's waits for the client's answer.
    awaiting_answer: bool,
    /// Tracks changed meanwhile: offer again after the answer.
    again: bool,
    restart: bool,
}

impl Sfu {
    pub(crate) fn new(settings: MediaSettings) -> (Arc<Self>, mpsc::UnboundedReceiver<Outgoing>) {
        let (out, receiver) = mpsc::unbounded_channel();
        let sfu = Arc::new(Self {
            next_port: AtomicU32::new(u32::from(settings.ports.0)),
            settings,
            rooms: Mutex::default(),
            out,
            shards: shards::Shards::new(),
        });
        (sfu, receiver)
    }

    fn send(&self, room: &str, participant: &str, message: Value) {
        let _ = self.out.send(Outgoing {
            room: room.to_string(),
            participant: participant.to_string(),
            message,
            report: false,
        });
    }

    fn error(&self, room: &str, participant: &str, code: &str, message: &str) {
        self.send(
            room,
            participant,
            json!({"type": "error", "code": code, "message": message}),
        );
    }

    fn room(&self, room: &str) -> Arc<MediaRoom> {
        lock(&self.rooms)
            .entry(room.to_string())
            .or_default()
            .clone()
    }

    fn peer(&self, room: &str, participant: &str) -> Option<Arc<Peer>> {
        let rooms = lock(&self.rooms);
        rooms
            .get(room)?
            .peers
            .lock()
            .ok()?
            .get(participant)
            .cloned()
    }

    /// The rooms whose media this node forwards now.
    pub(crate) fn rooms(&self) -> Vec<String> {
        lock(&self.rooms).keys().cloned().collect()
    }

    /// Handles a participant's negotiation message, on the room's media thread.
    pub(crate) async fn handle(self: &Arc<Self>, relayed: Relayed) {
        let shard = self.shards.of(&relayed.room);
        let sfu = self.clone();
        shard
            .run(async move { sfu.handle_here(relayed).await })
            .await;
    }

    async fn handle_here(self: &Arc<Self>, relayed: Relayed) {
        let Relayed {
            room,
            participant,
            rights,
            message,
        } = relayed;
        match message {
            FromClient::Offer { sdp } => {
                if let Err(message) = self.open(&room, &participant, rights, sdp).await {
                    self.error(&room, &participant, "bad-sdp", &message);
                }
            }
            FromClient::Answer { sdp } => {
                let Some(peer) = self.peer(&room, &participant) else {
                    return self.error(&room, &participant, "no-media", "send an offer first");
                };
                if let Err(message) = peer.answered(sdp).await {
                    self.error(&room, &participant, "bad-sdp", &message);
                }
            }
            FromClient::Ice { candidate } => {
                let Some(peer) = self.peer(&room, &participant) else {
                    return self.error(&room, &participant, "no-media", "send an offer first");
                };
                // `null`: the client has no more candidates.
                let Some(candidate) = candidate else { return };
                if peer.pc.add_ice_candidate(candidate).await.is_err() {
                    self.error(
                        &room,
                        &participant,
                        "bad-candidate",
                        "the ICE candidate could not be used",
                    );
                }
            }
            FromClient::Restart {} => {
                let Some(peer) = self.peer(&room, &participant) else {
                    return self.error(&room, &participant, "no-media", "send an offer first");
                };
                {
                    let mut negotiation = peer.negotiation.lock().await;
                    negotiation.restart = true;
                }
                peer.renegotiate().await;
            }
            FromClient::Close {} => self.close(&room, &participant).await,
        }
    }

    /// Closes a participant's peer (its legs on the others go too).
    pub(crate) async fn close(&self, room: &str, participant: &str) {
        let (peer, others) = {
            let mut rooms = lock(&self.rooms);
            let Some(media_room) = rooms.get(room).cloned() else {
                return;
            };
            let peer = lock(&media_room.peers).remove(participant);
            let others = media_room.peers();
            if others.is_empty() {
                rooms.remove(room);
            }
            (peer, others)
        };
        if let Some(peer) = peer {
            peer.shut(&others).await;
        }
    }

    /// Closes every peer of `room` (the consultation ended).
    pub(crate) async fn close_room(&self, room: &str) {
        let media_room = lock(&self.rooms).remove(room);
        if let Some(media_room) = media_room {
            let peers: Vec<_> = lock(&media_room.peers).drain().map(|(_, p)| p).collect();
            for peer in peers {
                peer.shut(&[]).await;
            }
        }
    }

    /// Builds the participant's peer from its offer (replacing one it had) and answers.
    async fn open(
        self: &Arc<Self>,
        room: &str,
        participant: &str,
        rights: MediaRights,
        sdp: String,
    ) -> Result<(), String> {
        let offer = RTCSessionDescription::offer(sdp)
            .map_err(|_| "the offer is not valid SDP".to_string())?;
        // The previous peer of this participant (a reloaded page) goes first.
        self.close(room, participant).await;
        let handler = Arc::new(Handler {
            peer: OnceLock::new(),
        });
        let (pc, receptions) = self
            .build(room, handler.clone())
            .await
            .map_err(|e| format!("no media connection could be made: {e}"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let peer = Arc::new(Peer {
            room: room.to_string(),
            participant: participant.to_string(),
            rights,
            pc: pc.clone(),
            sfu: Arc::downgrade(self),
            publications: Mutex::default(),
            legs: tokio::sync::Mutex::default(),
            negotiation: tokio::sync::Mutex::default(),
            channel: Mutex::default(),
            held: Mutex::new(Some(Vec::new())),
            receptions,
            closed: AtomicBool::new(false),
        });
        let _ = handler.peer.set(Arc::downgrade(&peer));
        let answer = async {
            pc.set_remote_description(offer)
                .await
                .map_err(|_| "the offer could not be applied (malformed or unsupported SDP)")?;
            let answer = pc
                .create_answer(None)
                .await
                .map_err(|_| "no answer could be made to this offer")?;
            pc.set_local_description(answer.clone())
                .await
                .map_err(|_| "no answer could be made to this offer")?;
            Ok::<_, &str>(answer)
        }
        .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(message) => {
                let _ = pc.close().await;
                return Err(message.to_string());
            }
        };
        let media_room = self.room(room);
        lock(&media_room.peers).insert(participant.to_string(), peer.clone());
        peer.described(json!({"type": "answer", "sdp": answer.sdp}));
        // What the others publish is offered to the newcomer.
        if rights.subscribe {
            let others = media_room.peers();
            let mut added = false;
            for other in others.iter().filter(|o| o.participant != participant) {
                let publications: Vec<_> = lock(&other.publications).clone();
                for publication in publications {
                    added |= peer.subscribe(&publication).await;
                }
            }
            if added {
                peer.renegotiate().await;
            }
        }
        let quality = Arc::downgrade(&peer);
        tokio::spawn(async move { quality::measure(quality).await });
        Ok(())
    }

    async fn build(
        &self,
        room: &str,
        handler: Arc<Handler>,
    ) -> Result<(impl PeerConnection, engine::Receptions), String> {
        let (low, high) = self.settings.ports;
        let span = u32::from(high - low) + 1;
        // The next free port of the range, from where the last one was taken.
        let mut last = String::new();
        for _ in 0..span.min(64) {
            let offset = self.next_port.fetch_add(1, Ordering::Relaxed) % span;
            let port = low + u16::try_from(offset).unwrap_or(0);
            let (media, registry, receptions) = engine::media_engine()?;
            let built = PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_setting_engine(self.setting_engine())
                .with_interceptor_registry(registry)
                .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
                // The connection's driver, and what its events spawn, on the room's thread.
                .with_runtime(self.shards.of(room))
                .with_udp_addrs(vec![SocketAddr::new(self.settings.bind, port)])
                .build()
                .await;
            match built {
                Ok(pc) => return Ok((pc, receptions)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("no free media port in {low}–{high}: {last}"))
    }

    /// No mDNS (a server has no multicast route, and names nothing); the public address in
    /// place of the bound one behind a 1:1 NAT; loopback candidates when bound to loopback.
    fn setting_engine(&self) -> webrtc::peer_connection::SettingEngine {
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
        if let Some(public) = self.settings.public_ip {
            settings =
                settings.with_nat_1to1_ips(vec![public.to_string()], RTCIceCandidateType::Host);
        }
        if self.settings.bind.is_loopback() {
            settings = settings.with_include_loopback_candidate(true);
        }
        settings.build()
    }
}

impl Peer {
    fn sfu(&self) -> Option<Arc<Sfu>> {
        self.sfu.upgrade()
    }

    fn send(&self, message: Value) {
        if let Some(sfu) = self.sfu() {
            sfu.send(&self.room, &self.participant, message);
        }
    }

    /// Sends a description of the server's, then the candidates held while it was made.
    fn described(&self, description: Value) {
        self.send(description);
        self.release_candidates();
    }

    fn release_candidates(&self) {
        let held = lock(&self.held).take().unwrap_or_default();
        for candidate in held {
            self.send(candidate);
        }
    }

    /// A candidate of the server's: sent, or held while a description is being made.
    fn candidate(&self, candidate: Value) {
        let mut held = lock(&self.held);
        match held.as_mut() {
            Some(held) => held.push(candidate),
            None => {
                drop(held);
                self.send(candidate);
            }
        }
    }

    fn others(&self) -> Vec<Arc<Peer>> {
        let Some(sfu) = self.sfu() else {
            return Vec::new();
        };
        let room = lock(&sfu.rooms).get(&self.room).cloned();
        room.map(|r| r.peers())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.participant != self.participant)
            .collect()
    }

    /// A track of this participant arrived: it is forwarded to every other participant.
    async fn published(self: &Arc<Self>, track: Arc<dyn TrackRemote>) {
        let Some(ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let kind = track.kind().await;
        let Some(codec) = track.codec(ssrc).await else {
            return;
        };
        if !self.rights.publish {
            // Not this grant's to send: read and drop, forward nothing.
            tokio::spawn(async move { while track.poll().await.is_some() {} });
            return;
        }
        let publication = Arc::new(Publication {
            id: PUBLICATIONS.fetch_add(1, Ordering::Relaxed),
            publisher: self.participant.clone(),
            kind,
            codec,
            track: track.clone(),
            ssrc,
            legs: Mutex::default(),
            last_keyframe_request: Mutex::new(None),
        });
        lock(&self.publications).push(publication.clone());
        for other in self.others() {
            if other.subscribe(&publication).await {
                other.renegotiate().await;
            }
        }
        let owner = Arc::downgrade(self);
        tokio::spawn(async move {
            forward(&publication).await;
            // The track ended: its legs go.
            if let Some(owner) = owner.upgrade() {
                lock(&owner.publications).retain(|p| p.id != publication.id);
                for other in owner.others() {
                    if other.unsubscribe(publication.id).await {
                        other.renegotiate().await;
                    }
                }
            }
        });
    }

    /// A data channel the client opened: its messages go to the others' channels.
    fn channel_opened(self: &Arc<Self>, channel: Arc<dyn DataChannel>) {
        *lock(&self.channel) = Some(channel.clone());
        let peer = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                let DataChannelEvent::OnMessage(message) = event else {
                    continue;
                };
                let Some(peer) = peer.upgrade() else { return };
                if !peer.rights.data {
                    continue;
                }
                for other in peer.others() {
                    let channel = lock(&other.channel).clone();
                    if let Some(channel) = channel {
                        let sent = if message.is_string {
                            match std::str::from_utf8(&message.data) {
                                Ok(text) => channel.send_text(text).await,
                                Err(_) => continue,
                            }
                        } else {
                            channel.send(message.data.clone()).await
                        };
                        if sent.is_err() {
                            continue;
                        }
                    }
                }
            }
        });
    }

    /// Closes the connection; the legs of its publications on `others` go.
    async fn shut(&self, others: &[Arc<Peer>]) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        let publications: Vec<_> = lock(&self.publications).drain(..).collect();
        let _ = self.pc.close().await;
        for other in others {
            let mut changed = false;
            for publication in &publications {
                changed |= other.unsubscribe(publication.id).await;
            }
            if changed {
                other.renegotiate().await;
            }
        }
    }
}

/// The peer connection's events.
struct Handler {
    peer: OnceLock<Weak<Peer>>,
}

impl Handler {
    fn peer(&self) -> Option<Arc<Peer>> {
        self.peer.get()?.upgrade()
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        let Some(peer) = self.peer() else { return };
        if let Ok(candidate) = event.candidate.to_json() {
            peer.candidate(json!({"type": "ice", "candidate": candidate}));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let Some(peer) = self.peer() else { return };
        let name = match state {
            RTCPeerConnectionState::Connecting => "connecting",
            RTCPeerConnectionState::Connected => "connected",
            RTCPeerConnectionState::Disconnected => "disconnected",
            RTCPeerConnectionState::Failed => "failed",
            RTCPeerConnectionState::Closed => "closed",
            _ => return,
        };
        peer.send(json!({"type": "media", "state": name}));
        // A failed connection is not coming back by itself (the client restarts or offers
        // anew); its legs and publications go.
        if state == RTCPeerConnectionState::Failed
            && let Some(sfu) = peer.sfu()
        {
            let current = sfu.peer(&peer.room, &peer.participant);
            if current.is_some_and(|c| Arc::ptr_eq(&c, &peer)) {
                tokio::spawn(async move { sfu.close(&peer.room, &peer.participant).await });
            }
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Never across peers inside a peer's event: two peers publishing at once would each
        // wait on the other's driver.
        if let Some(peer) = self.peer() {
            tokio::spawn(async move { peer.published(track).await });
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if let Some(peer) = self.peer() {
            peer.channel_opened(channel);
        }
    }
}
