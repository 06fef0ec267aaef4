//! The consultation's volatile state, on the platform's key-value store (Redis shared by every
//! node; memory in the embedded default): who is in the room and in which state, the waiting
//! room in arrival order, presence, revoked grants, and whether the consultation was ended.
//! Losing it loses live consultations, not records: the Encounter in the EHR is the record.
//!
//! Keys (under the store's namespace), each expiring when the room closes at the latest:
//! - `room:{room}:people` — a map, participant id → [`Participant`] (JSON);
//! - `room:{room}:here:{participant}` — presence, refreshed by heartbeats, expiring
//!   [`RESUME`] after the last one: within that time a participant that lost its connection
//!   comes back to its place without waiting again;
//! - `room:{room}:ended` — the consultation was ended for everyone;
//! - `grant:{jti}:revoked` — a removed or denied participant's grant.

use std::{sync::Arc, time::Duration};

use sen_platform::kv::{KeyValueStore, KvError};
use serde::{Deserialize, Serialize};

use crate::grant::{Grant, ParticipantRole, Refused};

/// How long a participant's place is kept after its last heartbeat.
pub const RESUME: Duration = Duration::from_secs(30);

/// Where a participant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    Waiting,
    Admitted,
    Denied,
    Removed,
}

/// A participant of one consultation: nothing about the person but its role and, for the
/// Encounter, its FHIR reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub role: ParticipantRole,
    pub admission: Admission,
    /// Unix milliseconds of its first arrival: the waiting room's order and wait time.
    pub arrived_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_ms: Option<i64>,
    /// Its grant's id (revoked when it is removed or denied).
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// Unix seconds when the room closes.
    pub closes: i64,
}

/// What a participant arriving with a checked grant gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// In the waiting room, behind `ahead` others.
    Waiting {
        ahead: usize,
    },
    /// In the consultation (a practitioner, or someone admitted coming back in time).
    Admitted,
    Refused(Refused),
}

/// The state of every consultation a deployment holds.
#[derive(Debug, Clone)]
pub struct Sessions {
    kv: Arc<dyn KeyValueStore>,
}

fn people(room: &str) -> String {
    format!("room:{room}:people")
}

fn presence(room: &str, participant: &str) -> String {
    format!("room:{room}:here:{participant}")
}

fn ended(room: &str) -> String {
    format!("room:{room}:ended")
}

fn revoked(jti: &str) -> String {
    format!("grant:{jti}:revoked")
}

/// Time left until `closes` (Unix seconds) from `now_ms`, at least a second.
fn until(closes: i64, now_ms: i64) -> Duration {
    let ms = closes
        .saturating_mul(1_000)
        .saturating_sub(now_ms)
        .max(1_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl Sessions {
    pub fn new(kv: Arc<dyn KeyValueStore>) -> Self {
        Self { kv }
    }

    /// A participant arrives (or comes back) with `grant`, already checked for signature,
    /// expiry and room.
    pub async fn arrive(&self, grant: &Grant, now_ms: i64) -> Result<Arrival, KvError> {
        if self.kv.get(&ended(&grant.room)).await?.is_some() {
            return Ok(Arrival::Refused(Refused::Ended));
        }
        if self.kv.get(&revoked(&grant.jti)).await?.is_some() {
            return Ok(Arrival::Refused(Refused::Revoked));
        }
        let ttl = until(grant.closes, now_ms);
        let known = self.participant(&grant.room, &grant.sub).await?;
        let here = self
            .kv
            .get(&presence(&grant.room, &grant.sub))
            .await?
            .is_some();
        let participant = match known {
            Some(p) if matches!(p.admission, Admission::Denied | Admission::Removed) => {
                return Ok(Arrival::Refused(Refused::Revoked));
            }
            // Back within the resume window: its place, without the waiting room.
            Some(p) if p.admission == Admission::Admitted && here => p,
            // Gone longer (or still waiting): a waiting role waits again, keeping its
            // first arrival time.
            Some(mut p) => {
                if p.role.waits() {
                    p.admission = Admission::Waiting;
                    p.admitted_ms = None;
                }
                p
            }
            None => Participant {
                role: grant.role,
                admission: if grant.role.waits() {
                    Admission::Waiting
                } else {
                    Admission::Admitted
                },
                arrived_ms: now_ms,
                admitted_ms: (!grant.role.waits()).then_some(now_ms),
                jti: grant.jti.clone(),
                who: grant.who.clone(),
                closes: grant.closes,
            },
        };
        self.put(&grant.room, &grant.sub, &participant, ttl).await?;
        self.kv
            .set(
                &presence(&grant.room, &grant.sub),
                b"1",
                Some(RESUME.min(ttl)),
            )
            .await?;
        Ok(match participant.admission {
            Admission::Admitted => Arrival::Admitted,
            _ => {
                let ahead = self
                    .waiting(&grant.room)
                    .await?
                    .iter()
                    .take_while(|(id, _)| id != &grant.sub)
                    .count();
                Arrival::Waiting { ahead }
            }
        })
    }

    /// The participant is still connected: its place is kept [`RESUME`] longer.
    pub async fn heartbeat(
        &self,
        room: &str,
        participant: &str,
        now_ms: i64,
    ) -> Result<bool, KvError> {
        let Some(p) = self.participant(room, participant).await? else {
            return Ok(false);
        };
        self.kv
            .set(
                &presence(room, participant),
                b"1",
                Some(RESUME.min(until(p.closes, now_ms))),
            )
            .await?;
        Ok(true)
    }

    /// The participant left on purpose: coming back, a waiting role waits again.
    pub async fn leave(&self, room: &str, participant: &str) -> Result<(), KvError> {
        self.kv.delete(&presence(room, participant)).await?;
        Ok(())
    }

    /// Admits a waiting participant; answers it, or `None` when nobody of that id waits.
    pub async fn admit(
        &self,
        room: &str,
        participant: &str,
        now_ms: i64,
    ) -> Result<Option<Participant>, KvError> {
        let Some(mut p) = self.participant(room, participant).await? else {
            return Ok(None);
        };
        if p.admission != Admission::Waiting {
            return Ok(None);
        }
        p.admission = Admission::Admitted;
        p.admitted_ms = Some(now_ms);
        self.put(room, participant, &p, until(p.closes, now_ms))
            .await?;
        Ok(Some(p))
    }

    /// Denies a waiting participant entry, or removes one from the consultation: its grant
    /// is revoked, so it cannot come back with it. Answers whether there was such a
    /// participant.
    pub async fn refuse(
        &self,
        room: &str,
        participant: &str,
        now_ms: i64,
    ) -> Result<bool, KvError> {
        let Some(mut p) = self.participant(room, participant).await? else {
            return Ok(false);
        };
        let ttl = until(p.closes, now_ms);
        // Revoked first: whatever happens next, the grant opens nothing any more.
        self.kv.set(&revoked(&p.jti), b"1", Some(ttl)).await?;
        p.admission = match p.admission {
            Admission::Waiting => Admission::Denied,
            _ => Admission::Removed,
        };
        self.put(room, participant, &p, ttl).await?;
        self.kv.delete(&presence(room, participant)).await?;
        Ok(true)
    }

    /// Ends the consultation for everyone: nobody arrives any more. Answers whether this call
    /// ended it (false: it had ended already), so that what follows an end happens once.
    pub async fn end(&self, room: &str, closes: i64, now_ms: i64) -> Result<bool, KvError> {
        self.kv
            .set_if_absent(&ended(room), b"1", until(closes, now_ms))
            .await
    }

    /// The waiting room, first arrived first.
    pub async fn waiting(&self, room: &str) -> Result<Vec<(String, Participant)>, KvError> {
        let mut waiting: Vec<_> = self
            .participants(room)
            .await?
            .into_iter()
            .filter(|(_, p)| p.admission == Admission::Waiting)
            .collect();
        waiting.sort_by(|a, b| a.1.arrived_ms.cmp(&b.1.arrived_ms).then(a.0.cmp(&b.0)));
        Ok(waiting)
    }

    /// Everyone the room knows, in no particular order.
    pub async fn participants(&self, room: &str) -> Result<Vec<(String, Participant)>, KvError> {
        Ok(self
            .kv
            .map_all(&people(room))
            .await?
            .into_iter()
            .filter_map(|(id, value)| Some((id, serde_json::from_slice(&value).ok()?)))
            .collect())
    }

    /// One participant (read with the whole map: a room holds a handful of people).
    pub async fn participant(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<Option<Participant>, KvError> {
        Ok(self
            .participants(room)
            .await?
            .into_iter()
            .find(|(id, _)| id == participant)
            .map(|(_, p)| p))
    }

    async fn put(
        &self,
        room: &str,
        participant: &str,
        p: &Participant,
        ttl: Duration,
    ) -> Result<(), KvError> {
        let value = serde_json::to_vec(p).unwrap_or_default();
        self.kv
            .map_set(&people(room), participant, &value, ttl)
            .await
    }
}
