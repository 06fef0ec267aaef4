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
//!   remove, end, chat, mute, ping), one node for now.
//!
//! - the Encounter's progress (`in-progress` when the patient is admitted, `finished` with
//!   its period and practitioners when the consultation ends), as the service itself;
//! - consultation events on the event bus (stream [`EVENTS`]) for the operations center:
//!   arrivals, starts with the wait, departures, ends with the duration — no patient data.
//!
//! Still to come (issue 6): the selective forwarding unit and media negotiation, room
//! placement across nodes, and the browser client.

mod api;
pub mod error;
pub mod grant;
mod hub;
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
        Ok(Arc::new(Self {
            config: telehealth,
            keys,
            sessions: session::Sessions::new(kv.clone()),
            hub: hub::Hub::new(kv.clone()),
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

    /// Checks a join grant's signature, expiry and room (signaling's first step).
    pub fn grant_verify(&self, token: &str, room: &str) -> Result<grant::Grant, grant::Refused> {
        self.keys.verify(token, room)
    }
}
