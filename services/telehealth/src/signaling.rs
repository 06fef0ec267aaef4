//! Signaling over WebSocket at `/telehealth/v1/ws`: protocol version 1, JSON text frames.
//!
//! The socket authenticates with a join grant, not a bearer header (browsers cannot set one on
//! a WebSocket): the first message must be `join` within [`JOIN_WITHIN`], or the socket
//! closes. Every message is checked (size, shape, what the grant allows, rate); a bad one gets
//! an `error` message and the session goes on; a refused grant closes the socket with its
//! code ([`crate::grant::Refused::close_code`]).
//!
//! Client → server:
//! - `{"type":"join","v":1,"room":"…","grant":"…"}`
//! - `{"type":"ping","id":1}` → `{"type":"pong","id":1}` (keeps the place: presence)
//! - `{"type":"chat","text":"…"}` (admitted, `data` allowed; at most [`CHAT_LIMIT`] chars)
//! - `{"type":"mute","audio":true,"video":false}` (admitted)
//! - `{"type":"admit"|"deny"|"remove","participant":"p-…"}` (`admit` allowed)
//! - `{"type":"end"}` (`end` allowed): the consultation ends for everyone
//! - `{"type":"leave"}`
//! - media negotiation (admitted; see [`crate::media`]):
//!   `{"type":"offer","sdp":"…"}` opens (or replaces) the participant's media connection;
//!   `{"type":"answer","sdp":"…"}` answers an offer of the server;
//!   `{"type":"ice","candidate":{"candidate":"…","sdpMid":"0","sdpMLineIndex":0}}` trickles a
//!   candidate (`null`: no more); `{"type":"restart"}` asks for an ICE restart (after a network
//!   change, or on coming back within the resume window with the same peer connection).
//!
//! Server → client:
//! - `{"type":"joined","v":1,"participant":"p-…","role":"patient","state":"waiting","ahead":0}`
//!   or `"state":"admitted"` with `"participants":[{"participant","role"}…]`; also `node`,
//!   the node the room is placed on, `here`, whether that is the node answering, and
//!   `iceServers` for the media connection (TURN with ephemeral credentials)
//! - `{"type":"admitted"}` (the waiting room is over for this participant)
//! - `{"type":"participant","event":"waiting"|"joined"|"left"|"removed","participant":"p-…","role":"…"}`
//!   (waiting: to those who admit only)
//! - `{"type":"chat","from":"p-…","text":"…"}`, `{"type":"muted","participant":"p-…","audio":…,"video":…}`
//! - `{"type":"answer","sdp":"…"}`, `{"type":"offer","sdp":"…"}` (forwarded tracks changed, or
//!   an ICE restart: answer it), `{"type":"ice","candidate":{…}}`
//! - `{"type":"media","state":"connecting"|"connected"|"disconnected"|"failed"|"closed"}`;
//!   `{"type":"media","state":"moved","node":"…"}` when the room's node died and the room was
//!   placed again: its media connection is gone, open a new one (a fresh `offer`)
//! - `{"type":"quality","uplinkLossPct":…,"uplinkJitterMs":…,"downlinkLossPct":…,
//!   "downlinkJitterMs":…,"rttMs":…}` every 5 s
//! - `{"type":"error","code":"…","message":"…"}` (media: `bad-sdp`, `bad-candidate`,
//!   `no-media`)
//!
//! Close codes: 1000 left, 1009 message too large, 4000 protocol (no join in time, join
//! twice), 4001–4005 grant refused (invalid, expired, foreign, revoked, ended — by a
//! practitioner or by the room's closing time, when the Encounter is finished too), 4008
//! flooding.
//!
//! Participants of a room meet through the node's [`crate::hub::Hub`], which relays room
//! events between nodes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use sen_platform::kv::KvError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{
    Telehealth,
    grant::{Grant, Refused},
    hub::Event,
    media::FromClient,
    progress::Change,
    session::Arrival,
};

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;
/// Largest message accepted, in bytes (an SDP offer with many candidates fits).
pub const MESSAGE_LIMIT: usize = 64 * 1024;
/// Longest chat message, in characters.
pub const CHAT_LIMIT: usize = 2_000;
/// How long a new socket has to send `join`.
pub const JOIN_WITHIN: Duration = Duration::from_secs(10);
/// Messages a second a connection may send on average, and in a burst.
const RATE: f64 = 20.0;
const BURST: f64 = 40.0;
/// How long a closing socket waits for the client's close frame.
const CLOSING: Duration = Duration::from_secs(2);
/// Messages dropped for rate before the connection is closed.
const FLOOD: u32 = 100;

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Incoming {
    Join {
        #[serde(default)]
        v: Option<u32>,
        room: String,
        grant: String,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
    Chat {
        text: String,
    },
    Mute {
        audio: bool,
        video: bool,
    },
    Admit {
        participant: String,
    },
    Deny {
        participant: String,
    },
    Remove {
        participant: String,
    },
    End {},
    Leave {},
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Ice {
        #[serde(default)]
        candidate: Option<webrtc::peer_connection::RTCIceCandidateInit>,
    },
    Restart {},
}

/// `GET /telehealth/v1/ws`: upgrades to the signaling protocol.
pub(crate) async fn upgrade(
    State(service): State<Arc<Telehealth>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MESSAGE_LIMIT)
        .max_frame_size(MESSAGE_LIMIT)
        .on_upgrade(move |socket| async move {
            let mut connection = Connection { socket, service };
            connection.run().await;
        })
}

fn now_ms() -> i64 {
    sen_platform::unix_micros() / 1_000
}

/// What woke a joined connection.
enum Step {
    Message(Option<Result<Message, axum::Error>>),
    Event(Result<Event, broadcast::error::RecvError>),
    /// The room's closing time came.
    Closing,
}

struct Connection {
    socket: WebSocket,
    service: Arc<Telehealth>,
}

/// Why the connection ends.
enum Close {
    Code(u16, &'static str),
    /// The peer went away: nothing to send.
    Gone,
}

impl From<Refused> for Close {
    fn from(refused: Refused) -> Self {
        let reason = match refused {
            Refused::Invalid => "invalid grant",
            Refused::Expired => "grant expired",
            Refused::Foreign => "grant for another room",
            Refused::Revoked => "grant revoked",
            Refused::Ended => "consultation ended",
        };
        Close::Code(refused.close_code(), reason)
    }
}

/// A participant's connection once joined.
struct Joined {
    grant: Grant,
    role: String,
    admitted: bool,
    events: broadcast::Receiver<Event>,
    /// Token bucket: messages allowed now, refilled at [`RATE`].
    allowance: f64,
    refilled: Instant,
    dropped: u32,
}

impl Connection {
    async fn send(&mut self, value: Value) -> Result<(), Close> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(value.to_string())))
            .await
            .map_err(|_| Close::Gone)
    }

    async fn error(&mut self, code: &str, message: &str) -> Result<(), Close> {
        self.send(json!({"type": "error", "code": code, "message": message}))
            .await
    }

    async fn run(&mut self) {
        let outcome = match tokio::time::timeout(JOIN_WITHIN, self.first_join()).await {
            Err(_) => Err(Close::Code(4000, "join expected")),
            Ok(Err(close)) => Err(close),
            Ok(Ok(joined)) => self.serve(joined).await,
        };
        if let Err(Close::Code(code, reason)) = outcome {
            let _ = self
                .socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })))
                .await;
            // The closing handshake: read (and drop) what the client still sends until its
            // close frame, so that the connection is not reset under a frame not yet read
            // (the client would then see a reset, not the code).
            let _ = tokio::time::timeout(CLOSING, async {
                while let Some(Ok(message)) = self.socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Reads until the `join` message; anything else first is a protocol error.
    async fn first_join(&mut self) -> Result<Joined, Close> {
        loop {
            let text = match self.socket.recv().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => return Err(Close::Code(4000, "text frames only")),
                Some(Ok(Message::Close(_))) | None => return Err(Close::Gone),
                Some(Err(_)) => return Err(Close::Code(1009, "message too large or malformed")),
            };
            let Ok(Incoming::Join { v, room, grant }) = serde_json::from_str::<Incoming>(&text)
            else {
                return Err(Close::Code(4000, "the first message must be join"));
            };
            if v.is_some_and(|v| v != VERSION) {
                return Err(Close::Code(4000, "unsupported protocol version"));
            }
            let grant = self.service.grant_verify(&grant, &room)?;
            let arrival = self
                .service
                .sessions
                .arrive(&grant, now_ms())
                .await
                .map_err(|_| Close::Code(1011, "consultation state unavailable"))?;
            self.service.hub.relay().await;
            self.service.start_media().await;
            let events = self.service.hub.room(&grant.room).subscribe();
            let role = grant.role.as_str().to_string();
            let (admitted, ahead) = match arrival {
                Arrival::Refused(refused) => return Err(refused.into()),
                Arrival::Admitted => (true, 0),
                Arrival::Waiting { ahead } => (false, ahead),
            };
            let holder = self.service.hub.place(&grant.room).await;
            let mut joined = json!({"type": "joined", "v": VERSION, "participant": grant.sub,
                "role": role, "state": if admitted { "admitted" } else { "waiting" },
                "node": holder, "here": holder.as_deref() == Some(self.service.hub.node.as_str())});
            // The ICE servers (TURN credentials) for its media connection.
            let ice_servers: Vec<_> = self
                .service
                .turn
                .as_ref()
                .map(|turn| vec![turn.ice_server(&grant.sub, now_ms() / 1_000)])
                .unwrap_or_default();
            joined["iceServers"] = serde_json::to_value(ice_servers).unwrap_or_default();
            if admitted {
                joined["participants"] = present(&self.service, &grant.room, &grant.sub).await;
                if grant.can.admit {
                    joined["waiting"] = waiting(&self.service, &grant.room).await;
                }
            } else {
                joined["ahead"] = json!(ahead);
            }
            let event = if admitted {
                Event::Joined {
                    participant: grant.sub.clone(),
                    role: role.clone(),
                }
            } else {
                Event::Waiting {
                    participant: grant.sub.clone(),
                    role: role.clone(),
                }
            };
            self.service.hub.publish(&grant.room, event).await;
            self.service
                .emit(
                    json!({"type": "participant-arrived", "room": grant.room, "role": role,
                    "state": if admitted { "admitted" } else { "waiting" }}),
                )
                .await;
            // Told last: what its arrival set off has happened when the participant learns
            // it is in.
            self.send(joined).await?;
            return Ok(Joined {
                grant,
                role,
                admitted,
                events,
                allowance: BURST,
                refilled: Instant::now(),
                dropped: 0,
            });
        }
    }

    async fn serve(&mut self, mut joined: Joined) -> Result<(), Close> {
        // A room never outlives its closing (the appointment's end plus the grace period).
        let closing = tokio::time::Instant::now()
            + Duration::from_millis(
                u64::try_from(joined.grant.closes.saturating_mul(1_000) - now_ms()).unwrap_or(0),
            );
        let result = loop {
            let step = tokio::select! {
                message = self.socket.recv() => Step::Message(message),
                event = joined.events.recv() => Step::Event(event),
                () = tokio::time::sleep_until(closing) => Step::Closing,
            };
            match step {
                Step::Closing => {
                    let service = self.service.clone();
                    let _ = conclude(
                        &service,
                        &joined.grant.room,
                        joined.grant.closes,
                        "time-over",
                    )
                    .await;
                    break Err(Close::Code(4005, "the consultation's time is over"));
                }
                Step::Message(message) => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(_))) => {
                            self.error("text-only", "messages are JSON text frames")
                                .await?;
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | None => break Err(Close::Gone),
                        Some(Err(_)) => {
                            break Err(Close::Code(1009, "message too large or malformed"));
                        }
                    };
                    if !take_allowance(&mut joined) {
                        joined.dropped += 1;
                        if joined.dropped > FLOOD {
                            break Err(Close::Code(4008, "too many messages"));
                        }
                        self.error("rate-limited", "too many messages; slow down")
                            .await?;
                        continue;
                    }
                    match self.handle(&mut joined, &text).await {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(close) => break Err(close),
                    }
                }
                Step::Event(event) => {
                    match event {
                        Ok(event) => self.pass_on(&mut joined, event).await?,
                        // Fell behind: the room's state is re-read on the next event anyway.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break Err(Close::Gone),
                    }
                }
            }
        };
        // Leaving on purpose gives the place up; a dropped connection keeps it for the
        // resume window.
        let left_on_purpose = matches!(result, Ok(()));
        // Its media goes with it unless it may come back (a dropped connection resumes,
        // keeping its peer connection through an ICE restart).
        let gone_for_good = left_on_purpose
            || matches!(result, Err(Close::Code(code, _)) if code == Refused::Revoked.close_code() || code == Refused::Ended.close_code());
        if gone_for_good {
            self.service
                .media(&joined.grant, FromClient::Close {})
                .await;
        }
        if left_on_purpose {
            let _ = self
                .service
                .sessions
                .leave(&joined.grant.room, &joined.grant.sub)
                .await;
        }
        self.service
            .hub
            .publish(
                &joined.grant.room,
                Event::Left {
                    participant: joined.grant.sub.clone(),
                    role: joined.role.clone(),
                },
            )
            .await;
        self.service
            .emit(
                json!({"type": "participant-left", "room": joined.grant.room, "role": joined.role,
                "onPurpose": left_on_purpose}),
            )
            .await;
        match result {
            Ok(()) => Err(Close::Code(1000, "left")),
            Err(close) => Err(close),
        }
    }

    /// One message from the client; `Ok(false)` when it leaves.
    async fn handle(&mut self, joined: &mut Joined, text: &str) -> Result<bool, Close> {
        let message = match serde_json::from_str::<Incoming>(text) {
            Ok(message) => message,
            Err(e) => {
                let what = if e.is_syntax() || e.is_eof() {
                    "not JSON"
                } else {
                    "not a message of protocol version 1"
                };
                self.error("malformed", what).await?;
                return Ok(true);
            }
        };
        let room = joined.grant.room.clone();
        let me = joined.grant.sub.clone();
        let service = self.service.clone();
        let sessions = &service.sessions;
        let _ = sessions.heartbeat(&room, &me, now_ms()).await;
        match message {
            Incoming::Join { .. } => return Err(Close::Code(4000, "joined already")),
            Incoming::Ping { id } => self.send(json!({"type": "pong", "id": id})).await?,
            Incoming::Leave {} => return Ok(false),
            Incoming::Chat { .. } | Incoming::Mute { .. } if !joined.admitted => {
                self.error("waiting", "not admitted yet").await?;
            }
            Incoming::Chat { text } => {
                if !joined.grant.can.data {
                    self.error("forbidden", "this grant sends no data").await?;
                } else if text.trim().is_empty() || text.chars().count() > CHAT_LIMIT {
                    self.error("invalid", "a chat message has 1 to 2,000 characters")
                        .await?;
                } else {
                    self.service
                        .hub
                        .publish(&joined.grant.room, Event::Chat { from: me, text })
                        .await;
                }
            }
            Incoming::Mute { audio, video } => {
                self.service
                    .hub
                    .publish(
                        &joined.grant.room,
                        Event::Muted {
                            participant: me,
                            audio,
                            video,
                        },
                    )
                    .await;
            }
            Incoming::Admit { participant }
            | Incoming::Deny { participant }
            | Incoming::Remove { participant }
                if !joined.grant.can.admit || participant == me =>
            {
                let _ = participant;
                self.error(
                    "forbidden",
                    "this grant does not admit or remove participants",
                )
                .await?;
            }
            Incoming::Admit { participant } => {
                match sessions.admit(&room, &participant, now_ms()).await {
                    Ok(Some(p)) => {
                        // The consultation starts with the patient: the record says so before
                        // anyone is told.
                        if p.role == crate::grant::ParticipantRole::Patient {
                            let started = Change::Started { at_ms: now_ms() };
                            service.progress.apply(&service.fhir, &room, &started).await;
                            let waited = p.admitted_ms.unwrap_or(p.arrived_ms) - p.arrived_ms;
                            service
                                .emit(json!({"type": "consultation-started", "room": room,
                                    "waitMs": waited}))
                                .await;
                        }
                        self.service
                            .hub
                            .publish(&joined.grant.room, Event::Admitted { participant })
                            .await;
                    }
                    Ok(None) => self.error("not-waiting", "nobody of that id waits").await?,
                    Err(_) => {
                        self.error("unavailable", "consultation state unavailable")
                            .await?
                    }
                }
            }
            Incoming::Deny { participant } | Incoming::Remove { participant } => {
                let known = sessions
                    .participant(&room, &participant)
                    .await
                    .ok()
                    .flatten();
                match known {
                    Some(p) if sessions.refuse(&room, &participant, now_ms()).await.is_ok() => {
                        let role = p.role.as_str().to_string();
                        self.service
                            .hub
                            .publish(&joined.grant.room, Event::Removed { participant, role })
                            .await;
                    }
                    Some(_) => {
                        self.error("unavailable", "consultation state unavailable")
                            .await?
                    }
                    None => self.error("unknown", "no participant of that id").await?,
                }
            }
            Incoming::End {} if !joined.grant.can.end => {
                self.error("forbidden", "this grant does not end the consultation")
                    .await?;
            }
            Incoming::End {} => {
                if conclude(&service, &room, joined.grant.closes, "ended")
                    .await
                    .is_err()
                {
                    self.error("unavailable", "consultation state unavailable")
                        .await?;
                }
            }
            Incoming::Offer { .. }
            | Incoming::Answer { .. }
            | Incoming::Ice { .. }
            | Incoming::Restart {}
                if !joined.admitted =>
            {
                self.error("waiting", "not admitted yet").await?;
            }
            Incoming::Offer { sdp } | Incoming::Answer { sdp } if sdp.trim().is_empty() => {
                let _ = sdp;
                self.error("bad-sdp", "the session description is empty")
                    .await?;
            }
            Incoming::Offer { sdp } => {
                service
                    .media(&joined.grant, FromClient::Offer { sdp })
                    .await;
            }
            Incoming::Answer { sdp } => {
                service
                    .media(&joined.grant, FromClient::Answer { sdp })
                    .await;
            }
            Incoming::Ice { candidate } => {
                service
                    .media(&joined.grant, FromClient::Ice { candidate })
                    .await;
            }
            Incoming::Restart {} => {
                service.media(&joined.grant, FromClient::Restart {}).await;
            }
        }
        Ok(true)
    }

    /// Passes a room event on to this participant, as far as it concerns it.
    async fn pass_on(&mut self, joined: &mut Joined, event: Event) -> Result<(), Close> {
        let me = joined.grant.sub.clone();
        match event {
            Event::Media {
                participant,
                message,
            } if participant == me => {
                self.send(message).await?;
            }
            Event::Admitted { participant } if participant == me => {
                joined.admitted = true;
                let present = present(&self.service.clone(), &joined.grant.room, &me).await;
                self.send(json!({"type": "admitted", "participants": present}))
                    .await?;
                self.service
                    .hub
                    .publish(
                        &joined.grant.room,
                        Event::Joined {
                            participant: me,
                            role: joined.role.clone(),
                        },
                    )
                    .await;
            }
            Event::Removed { participant, .. } if participant == me => {
                return Err(Refused::Revoked.into());
            }
            Event::Ended => return Err(Refused::Ended.into()),
            _ if !joined.admitted => {}
            Event::Waiting { participant, role } if joined.grant.can.admit => {
                self.send(json!({"type": "participant", "event": "waiting", "participant": participant, "role": role})).await?;
            }
            Event::Joined { participant, role } if participant != me => {
                self.send(json!({"type": "participant", "event": "joined", "participant": participant, "role": role})).await?;
            }
            Event::Left { participant, role } if participant != me => {
                self.send(json!({"type": "participant", "event": "left", "participant": participant, "role": role})).await?;
            }
            Event::Removed { participant, role } => {
                self.send(json!({"type": "participant", "event": "removed", "participant": participant, "role": role})).await?;
            }
            Event::Chat { from, text } => {
                self.send(json!({"type": "chat", "from": from, "text": text}))
                    .await?;
            }
            Event::Muted {
                participant,
                audio,
                video,
            } if participant != me => {
                self.send(json!({"type": "muted", "participant": participant, "audio": audio, "video": video})).await?;
            }
            Event::Moved { node } => {
                self.send(json!({"type": "media", "state": "moved", "node": node}))
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The admitted participants of `room` but `me`.
async fn present(service: &Telehealth, room: &str, me: &str) -> Value {
    let people = service
        .sessions
        .participants(room)
        .await
        .unwrap_or_default();
    Value::Array(
        people
            .into_iter()
            .filter(|(id, p)| id != me && p.admission == crate::session::Admission::Admitted)
            .map(|(id, p)| json!({"participant": id, "role": p.role}))
            .collect(),
    )
}

/// The waiting room of `room`, first arrived first.
async fn waiting(service: &Telehealth, room: &str) -> Value {
    let waiting = service.sessions.waiting(room).await.unwrap_or_default();
    Value::Array(
        waiting
            .into_iter()
            .map(|(id, p)| json!({"participant": id, "role": p.role}))
            .collect(),
    )
}

/// Ends the consultation of `room` (`reason`: `ended` by a practitioner, or `time-over` at the
/// room's closing): the state says so; the first to end it finishes the Encounter and tells
/// the operations center; every connection in the room, on every node, closes (4005).
async fn conclude(
    service: &Telehealth,
    room: &str,
    closes: i64,
    reason: &str,
) -> Result<(), KvError> {
    let sessions = &service.sessions;
    if sessions.end(room, closes, now_ms()).await? {
        let everyone = sessions.participants(room).await.unwrap_or_default();
        // From the patient's admission: the consultation proper.
        let began = everyone
            .iter()
            .filter(|(_, p)| p.role == crate::grant::ParticipantRole::Patient)
            .filter_map(|(_, p)| p.admitted_ms)
            .min();
        let ended_at = now_ms();
        let took_part = everyone
            .iter()
            .filter(|(_, p)| p.admitted_ms.is_some())
            .count();
        service
            .emit(
                json!({"type": "consultation-ended", "room": room, "reason": reason,
                "durationMs": began.map(|b| ended_at - b), "participants": took_part}),
            )
            .await;
        let practitioners = everyone
            .into_iter()
            .filter(|(_, p)| p.admitted_ms.is_some())
            .filter_map(|(_, p)| Some(p.who?.strip_prefix("Practitioner/")?.to_string()))
            .collect();
        let finished = Change::Finished {
            at_ms: ended_at,
            practitioners,
        };
        service.progress.apply(&service.fhir, room, &finished).await;
    }
    service.hub.publish(room, Event::Ended).await;
    service.sfu.close_room(room).await;
    Ok(())
}

/// Takes one message from the connection's allowance; false when it has none left.
fn take_allowance(joined: &mut Joined) -> bool {
    let now = Instant::now();
    let refill = now.duration_since(joined.refilled).as_secs_f64() * RATE;
    joined.allowance = (joined.allowance + refill).min(BURST);
    joined.refilled = now;
    if joined.allowance >= 1.0 {
        joined.allowance -= 1.0;
        true
    } else {
        false
    }
}
