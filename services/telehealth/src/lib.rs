//! `sen-telehealth`: remote consultations (Circular 30/2023/TT-BYT). A consultation room is
//! bound to a virtual-service Appointment and an Encounter of class `VR`; a patient waits in
//! the room's waiting room until a practitioner admits them, then both (and invited
//! interpreters or family) talk through the server's forwarding unit.
//!
//! What this crate holds so far:
//! - [`rooms`] and its HTTP surface: rooms opened on an appointment (an Encounter of class
//!   `VR` each) and join grants for the appointment's patient, its practitioners and their
//!   invitees, with TURN credentials;
//! - [`grant`]: join grants, the short-lived room tokens saying who may publish, subscribe,
//!   send data, admit and end, expiring no later than the appointment's end plus a grace
//!   period, with the WebSocket close codes a refused grant gets;
//! - [`session`]: the consultation's volatile state (room, participants, waiting room,
//!   presence, revoked grants) on the platform's key-value store — Redis shared by every
//!   node, or memory in the embedded default;
//! - [`turn`]: TURN credentials in coturn's `use-auth-secret` scheme.
//!
//! - [`signaling`]: the WebSocket protocol (join with a grant, waiting room, admit, deny,
//!   remove, end, chat, mute, ping, media negotiation), across nodes through the hub.
//!
//! - the Encounter's progress (`in-progress` when the patient is admitted, `finished` with
//!   its period and practitioners when the consultation ends), as the service itself;
//! - consultation events on the event bus (stream [`EVENTS`]) for the operations center:
//!   arrivals, starts with the wait, departures, ends with the duration — no patient data.
//!
//! - [`media`]: the selective forwarding unit (one server-side peer connection per
//!   participant) and its negotiation, on the node the room is placed on.

mod api;
pub mod client;
pub mod error;
pub mod grant;
mod hub;
pub mod media;
mod placement;
mod progress;
pub mod rooms;
pub mod session;
pub mod signaling;
pub mod turn;

use std::{sync::Arc, time::Duration};

use sen_platform::{
    auth::{Auth, keys::read_or_create_private},
    bus::EventBus,
    config::{Config, TelehealthConfig},
    fhir_client::FhirClient,
    kv::KeyValueStore,
};

/// The service's name for `sen serve --services`.
pub const SERVICE: &str = "telehealth";

/// The event bus stream of consultation events (for the operations center).
pub const EVENTS: &str = "telehealth";

/// The grant secret's file under the data directory (when none is configured).
const SECRET_FILE: &str = "telehealth/grant-secret";

/// The telehealth service.
#[derive(Debug)]
pub struct Telehealth {
    config: TelehealthConfig,
    keys: grant::GrantKeys,
    pub sessions: session::Sessions,
    hub: Arc<hub::Hub>,
    progress: progress::Progress,
    bus: Arc<dyn EventBus>,
    fhir: FhirClient,
    turn: Option<turn::Turn>,
    kv: Arc<dyn KeyValueStore>,
    sfu: Arc<media::Sfu>,
    /// The forwarding unit's messages, until [`Telehealth::start_media`] takes them.
    media_out: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<media::Outgoing>>>,
    media_started: tokio::sync::OnceCell<()>,
}

impl Telehealth {
    /// The service on `kv` (shared with the other nodes), reaching records through `fhir`.
    /// `auth` makes the service's own token for the Encounter's progress (embedded key).
    pub fn new(
        config: &Config,
        kv: Arc<dyn KeyValueStore>,
        bus: Arc<dyn EventBus>,
        fhir: FhirClient,
        auth: Arc<Auth>,
    ) -> anyhow::Result<Arc<Self>> {
        if !config.auth.embedded {
            tracing::warn!(
                "auth.embedded is off: telehealth has no token of its own, so consultation \
                 Encounters will not be moved to in-progress or finished"
            );
        }
        let telehealth = config.telehealth.clone();
        let secret = match &telehealth.secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => read_or_create_private(&config.database.data_dir.join(SECRET_FILE), || {
                let mut secret = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| anyhow::anyhow!("no randomness for the telehealth secret"))?;
                Ok(secret.to_vec())
            })?,
        };
        let keys = grant::GrantKeys::new(&secret)
            .map_err(|e| anyhow::anyhow!("telehealth.secret (SEN_TELEHEALTH_SECRET): {e}"))?;
        let turn = match (&telehealth.turn_urls[..], &telehealth.turn_secret) {
            ([], _) => None,
            (urls, Some(secret)) => Some(turn::Turn::new(
                urls.to_vec(),
                secret.expose().as_bytes(),
                Duration::from_secs(telehealth.turn_ttl_minutes.saturating_mul(60)),
            )),
            (_, None) => anyhow::bail!(
                "telehealth.turn_urls needs telehealth.turn_secret (SEN_TELEHEALTH_TURN_SECRET), the secret shared with coturn"
            ),
        };
        if telehealth.media_port_min > telehealth.media_port_max {
            anyhow::bail!(
                "telehealth.media_port_min ({}) is above telehealth.media_port_max ({})",
                telehealth.media_port_min,
                telehealth.media_port_max
            );
        }
        let (sfu, media_out) = media::Sfu::new(media::MediaSettings {
            bind: telehealth.media_bind,
            ports: (telehealth.media_port_min, telehealth.media_port_max),
            public_ip: telehealth.media_public_ip,
        });
        let hub = hub::Hub::new(kv.clone());
        let held = Arc::downgrade(&sfu);
        let _ = hub.held.set(Box::new(move || {
            held.upgrade().map(|sfu| sfu.rooms()).unwrap_or_default()
        }));
        Ok(Arc::new(Self {
            kv: kv.clone(),
            sfu,
            media_out: std::sync::Mutex::new(Some(media_out)),
            media_started: tokio::sync::OnceCell::new(),
            config: telehealth,
            keys,
            sessions: session::Sessions::new(kv.clone()),
            hub,
            progress: progress::Progress::new(config.auth.embedded.then_some(auth)),
            bus,
            fhir,
            turn,
        }))
    }

    /// The routes under `/telehealth/v1`, behind the token check.
    pub fn router(self: &Arc<Self>, auth: Arc<Auth>) -> axum::Router {
        api::router(self.clone(), auth)
    }

    /// Publishes an event for the operations center on the `telehealth` stream, with its
    /// time: what happened to a consultation, never who the patient is (a room is named by
    /// its Encounter's id; participants by role). Lost with a warning if the bus is down.
    async fn emit(&self, mut event: serde_json::Value) {
        event["at"] = serde_json::json!(sen_platform::unix_micros() / 1_000);
        if let Err(e) = self.bus.publish(EVENTS, &event).await {
            tracing::warn!(error = %e, "a consultation event was not published");
        }
    }

    /// Starts (once) what carries media negotiation between nodes: the forwarding unit's
    /// messages to participants (as room events, whatever node their connection is on) and
    /// the negotiation other nodes relay to this one.
    async fn start_media(self: &Arc<Self>) {
        let started = self
            .media_started
            .get_or_try_init(|| async {
                let mut incoming = self
                    .kv
                    .subscribe(&format!("{}{}", media::MEDIA_TOPIC, self.hub.node))
                    .await?;
                let sfu = Arc::downgrade(&self.sfu);
                tokio::spawn(async move {
                    while let Some((_, payload)) = incoming.recv().await {
                        let Some(sfu) = sfu.upgrade() else { return };
                        if let Ok(relayed) = serde_json::from_slice::<media::Relayed>(&payload) {
                            sfu.handle(relayed).await;
                        }
                    }
                });
                let receiver = self
                    .media_out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(mut receiver) = receiver {
                    let service = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while let Some(out) = receiver.recv().await {
                            let Some(service) = service.upgrade() else {
                                return;
                            };
                            if out.report {
                                let mut event = out.message.clone();
                                event["type"] = serde_json::json!("consultation-quality");
                                event["room"] = serde_json::json!(out.room);
                                service.emit(event).await;
                            }
                            service
                                .hub
                                .publish(
                                    &out.room,
                                    hub::Event::Media {
                                        participant: out.participant,
                                        message: out.message,
                                    },
                                )
                                .await;
                        }
                    });
                }
                Ok::<(), sen_platform::kv::KvError>(())
            })
            .await;
        if let Err(e) = started {
            tracing::warn!(error = %e, "telehealth: media negotiation from other nodes is not received");
        }
    }

    /// A participant's media negotiation: handled here when the room is placed on this
    /// node, relayed to the room's node otherwise.
    async fn media(&self, grant: &grant::Grant, message: media::FromClient) {
        let relayed = media::Relayed {
            room: grant.room.clone(),
            participant: grant.sub.clone(),
            rights: media::MediaRights {
                publish: grant.can.publish,
                subscribe: grant.can.subscribe,
                data: grant.can.data,
            },
            message,
        };
        match self.hub.place(&grant.room).await {
            Some(node) if node != self.hub.node => {
                let payload = serde_json::to_vec(&relayed).unwrap_or_default();
                let topic = format!("{}{node}", media::MEDIA_TOPIC);
                if let Err(e) = self.kv.publish(&topic, &payload).await {
                    tracing::warn!(error = %e, "telehealth: negotiation did not reach the room's node");
                }
            }
            _ => self.sfu.handle(relayed).await,
        }
    }

    /// Checks a join grant's signature, expiry and room (signaling's first step).
    pub fn grant_verify(&self, token: &str, room: &str) -> Result<grant::Grant, grant::Refused> {
        self.keys.verify(token, room)
    }
}
