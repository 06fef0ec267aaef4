//! Join grants: a short-lived room token (a JWT signed with the deployment's telehealth
//! secret, HS256: only telehealth nodes issue and check them) saying which room, which
//! participant, in which role, and what it may do there. A grant never outlives its
//! appointment's end plus the grace period, whatever lifetime was asked.
//!
//! A refused grant closes the signaling WebSocket with one of the documented codes of
//! [`Refused::close_code`].

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// The issuer and audience of every grant: a grant is good for telehealth signaling only.
const ISSUER: &str = "sen-telehealth";
const AUDIENCE: &str = "sen-telehealth/ws";

/// Clock difference tolerated between nodes, in seconds.
const LEEWAY: u64 = 5;

/// Shortest secret accepted (HS256 wants at least the hash's length).
pub const MIN_SECRET: usize = 32;

/// Who a participant is in the consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParticipantRole {
    /// The appointment's patient.
    Patient,
    /// One of the appointment's practitioners: runs the consultation.
    Practitioner,
    /// Invited by the patient or a practitioner.
    Interpreter,
    /// Invited by the patient or a practitioner.
    Family,
}

impl ParticipantRole {
    /// The role's name on the wire (`patient`, `practitioner`, `interpreter`, `family`).
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantRole::Patient => "patient",
            ParticipantRole::Practitioner => "practitioner",
            ParticipantRole::Interpreter => "interpreter",
            ParticipantRole::Family => "family",
        }
    }

    /// What the role may do: practitioners everything; everyone else talks, listens and chats.
    pub fn permissions(self) -> Permissions {
        let runs = self == ParticipantRole::Practitioner;
        Permissions {
            publish: true,
            subscribe: true,
            data: true,
            admit: runs,
            end: runs,
        }
    }

    /// Whether the role waits in the waiting room until a practitioner admits it.
    pub fn waits(self) -> bool {
        self != ParticipantRole::Practitioner
    }
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Send audio and video.
    pub publish: bool,
    /// Receive the others' audio and video.
    pub subscribe: bool,
    /// Send chat and data-channel messages.
    pub data: bool,
    /// Admit, deny or remove participants.
    pub admit: bool,
    /// End the consultation for everyone.
    pub end: bool,
}

/// The claims of a join grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    iss: String,
    aud: String,
    /// The participant: an opaque id of this consultation, never a name or a record id.
    pub sub: String,
    /// The room the grant opens, and no other.
    pub room: String,
    pub role: ParticipantRole,
    pub can: Permissions,
    /// The FHIR reference of the person when there is one (`Patient/…`, `Practitioner/…`),
    /// for the Encounter's participants; none for invited guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// The grant's own id: a removed participant's grant is revoked by it.
    pub jti: String,
    /// Unix seconds when the room closes (the appointment's end plus the grace period): no
    /// state of the consultation is kept past it.
    pub closes: i64,
    pub iat: i64,
    pub exp: i64,
}

/// What a grant is asked for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub room: String,
    pub role: ParticipantRole,
    pub who: Option<String>,
    /// The lifetime asked.
    pub ttl: Duration,
    /// Unix seconds after which the room closes: the appointment's end plus the grace period.
    pub room_closes: i64,
}

/// The grant could not be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssueError {
    #[error(
        "the consultation's time is over: its appointment ended more than the grace period ago"
    )]
    RoomClosed,
    #[error("the grant could not be signed")]
    Signing,
}

/// A grant refused at the WebSocket: each has its close code (RFC 6455 leaves 4000–4999 to
/// applications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a grant of this deployment: malformed, bad signature, wrong issuer or audience.
    #[error("the grant is not valid")]
    Invalid,
    #[error("the grant has expired")]
    Expired,
    /// A valid grant for another room.
    #[error("the grant is for another room")]
    Foreign,
    /// The participant was removed from the consultation or denied entry.
    #[error("the grant was revoked")]
    Revoked,
    /// The consultation was ended for everyone.
    #[error("the consultation has ended")]
    Ended,
}

impl Refused {
    /// The WebSocket close code sent with the refusal.
    pub fn close_code(self) -> u16 {
        match self {
            Refused::Invalid => 4001,
            Refused::Expired => 4002,
            Refused::Foreign => 4003,
            Refused::Revoked => 4004,
            Refused::Ended => 4005,
        }
    }
}

/// Issues and checks grants with the deployment's telehealth secret.
#[derive(Clone)]
pub struct GrantKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for GrantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKeys").finish_non_exhaustive()
    }
}

/// The secret is too short to sign grants with.
#[derive(Debug, thiserror::Error)]
#[error("the telehealth secret must be at least {MIN_SECRET} bytes")]
pub struct ShortSecret;

impl GrantKeys {
    pub fn new(secret: &[u8]) -> Result<Self, ShortSecret> {
        if secret.len() < MIN_SECRET {
            return Err(ShortSecret);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// A grant for a new participant of `request.room` at `now` (Unix seconds), and its
    /// token.
    pub fn issue(&self, request: &GrantRequest, now: i64) -> Result<(Grant, String), IssueError> {
        if now >= request.room_closes {
            return Err(IssueError::RoomClosed);
        }
        let ttl = i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX);
        let grant = Grant {
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            sub: format!("p-{}", uuid::Uuid::new_v4().simple()),
            room: request.room.clone(),
            role: request.role,
            can: request.role.permissions(),
            who: request.who.clone(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            closes: request.room_closes,
            iat: now,
            exp: now.saturating_add(ttl).min(request.room_closes),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &grant, &self.encoding)
            .map_err(|_| IssueError::Signing)?;
        Ok((grant, token))
    }

    /// The grant in `token` if it is one of ours, unexpired, for `room`. (Revocation is the
    /// session state's to check: it is shared by every node.)
    pub fn verify(&self, token: &str, room: &str) -> Result<Grant, Refused> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY;
        let grant = jsonwebtoken::decode::<Grant>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refused::Expired,
                _ => Refused::Invalid,
            })?
            .claims;
        if grant.room != room {
            return Err(Refused::Foreign);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a telehealth secret of 32+ bytes, for tests";

    fn now() -> i64 {
        i64::try_from(sen_platform::unix_seconds()).unwrap()
    }

    fn request(role: ParticipantRole, ttl: u64, room_closes: i64) -> GrantRequest {
        GrantRequest {
            room: "r1".into(),
            role,
            who: Some("Patient/p1".into()),
            ttl: Duration::from_secs(ttl),
            room_closes,
        }
    }

    #[test]
    fn a_grant_opens_its_room_with_its_roles_permissions() {
        let keys = GrantKeys::new(SECRET).unwrap();
        let t = now();
        let (grant, token) = keys
            .issue(&request(ParticipantRole::Patient, 600, t + 3_600), t)
            .unwrap();
        assert_eq!(grant.exp, t + 600);
        let checked = keys.verify(&token, "r1").unwrap();
        assert_eq!(checked, grant);
        assert!(checked.can.publish && checked.can.subscribe && checked.can.data);
        assert!(
            !checked.can.admit && !checked.can.end,
            "a patient runs nothing"
        );
        assert!(checked.role.waits());
        let doctor = ParticipantRole::Practitioner.permissions();
        assert!(doctor.admit && doctor.end);
        assert!(!ParticipantRole::Practitioner.waits());
        for role in [
            ParticipantRole::Patient,
            ParticipantRole::Practitioner,
            ParticipantRole::Interpreter,
            ParticipantRole::Family,
        ] {
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        // Every grant is its own participant with its own id.
        let (other, _) = keys
            .issue(&request(ParticipantRole::Patient, 600, t + 3_600), t)
            .unwrap();
        assert_ne!(other.sub, grant.sub);
        assert_ne!(other.jti, grant.jti);
    }

    #[test]
    fn a_grant_never_outlives_its_room() {
        let keys = GrantKeys::new(SECRET).unwrap();
        let t = now();
        let (grant, _) = keys
            .issue(&request(ParticipantRole::Family, 86_400, t + 900), t)
            .unwrap();
        assert_eq!(
            grant.exp,
            t + 900,
            "bounded by the appointment's end + grace"
        );
        assert_eq!(
            keys.issue(&request(ParticipantRole::Family, 600, t), t),
            Err(IssueError::RoomClosed)
        );
    }

    #[test]
    fn refused_grants_say_why_with_their_close_code() {
        let keys = GrantKeys::new(SECRET).unwrap();
        let t = now();
        let (_, token) = keys
            .issue(&request(ParticipantRole::Patient, 600, t + 3_600), t)
            .unwrap();
        assert_eq!(keys.verify(&token, "r2"), Err(Refused::Foreign));
        assert_eq!(Refused::Foreign.close_code(), 4003);

        // Issued long ago: expired (past the leeway).
        let (_, old) = keys
            .issue(&request(ParticipantRole::Patient, 60, t + 3_600), t - 600)
            .unwrap();
        assert_eq!(keys.verify(&old, "r1"), Err(Refused::Expired));
        assert_eq!(Refused::Expired.close_code(), 4002);

        // Another deployment's secret, a tampered payload, garbage: invalid.
        let other = GrantKeys::new(b"another deployment's 32-byte secret!").unwrap();
        assert_eq!(other.verify(&token, "r1"), Err(Refused::Invalid));
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert_eq!(keys.verify(&parts.join("."), "r1"), Err(Refused::Invalid));
        assert_eq!(keys.verify("not a grant", "r1"), Err(Refused::Invalid));
        assert_eq!(Refused::Invalid.close_code(), 4001);
        assert_eq!(Refused::Revoked.close_code(), 4004);
        assert_eq!(Refused::Ended.close_code(), 4005);
    }

    #[test]
    fn an_unsigned_grant_is_refused() {
        let keys = GrantKeys::new(SECRET).unwrap();
        let t = now();
        let (_, token) = keys
            .issue(&request(ParticipantRole::Practitioner, 600, t + 3_600), t)
            .unwrap();
        // Same claims under `alg: none` with no signature.
        let payload = token.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(keys.verify(&none, "r1"), Err(Refused::Invalid));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(GrantKeys::new(b"short").is_err());
    }
}
