//! Consultation rooms: opened on a booked Appointment by one of its practitioners (or a
//! system client), each room is an Encounter of class `VR` (virtual) referring to the
//! Appointment — the room's id is the Encounter's id, so a room lost with the volatile
//! state is found again from the record. Join grants go to the appointment's patient, its
//! practitioners, and whoever those two invite.
//!
//! Every read and write of a record here is made with the caller's own token through the
//! FHIR API, so the EHR's access rules and access record apply as to any request.

use sen_platform::{
    auth::{Principal, Role},
    fhir_client::Caller,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    Telehealth,
    error::{Result, TelehealthError},
    grant::{GrantRequest, ParticipantRole, Permissions},
    turn::IceServer,
};

/// The ActCode of a virtual encounter.
const VIRTUAL: &str = "VR";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Appointment states a consultation can be held in.
const OPEN_STATES: &[&str] = &["booked", "arrived", "checked-in"];

/// What a room is opened on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRoom {
    /// `Appointment/{id}`
    pub appointment: String,
}

/// A room, as the API shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Room {
    pub room: String,
    pub encounter: String,
    pub appointment: String,
    /// The Encounter's status: planned, in-progress, finished, cancelled.
    pub status: String,
    /// When the room closes: the appointment's end plus the grace period (RFC 3339).
    pub closes: String,
    /// The browser client's page for the room.
    pub join: String,
    /// Where participants get their grants.
    pub tokens: String,
}

/// What a grant is asked for: nothing (a grant for the caller itself) or an invitation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantAsked {
    /// `interpreter` or `family`: a grant for someone the caller invites.
    #[serde(default)]
    pub invite: Option<ParticipantRole>,
}

/// A grant as the API hands it out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    pub room: String,
    pub participant: String,
    pub role: ParticipantRole,
    pub can: Permissions,
    pub token: String,
    pub expires: String,
    pub closes: String,
    /// The signaling WebSocket's path.
    pub signaling: String,
    pub ice_servers: Vec<IceServer>,
}

/// What the room's appointment says.
struct Appointment {
    reference: String,
    status: String,
    /// Unix seconds.
    end: i64,
    patient: String,
    practitioners: Vec<String>,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether `id` has the shape of a FHIR id (a room's is its Encounter's).
pub(crate) fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Type/id` split, when it is one (a relative reference to a resource of `expected` type).
fn local_reference<'a>(reference: &'a str, expected: &str) -> Option<&'a str> {
    let (t, id) = reference.split_once('/')?;
    (t == expected && is_fhir_id(id)).then_some(id)
}

fn actor_ids(appointment: &Value, kind: &str) -> Vec<String> {
    appointment["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"].as_str() != Some("declined"))
        .filter_map(|p| p.pointer("/actor/reference")?.as_str())
        .filter_map(|r| local_reference(r, kind).map(str::to_string))
        .collect()
}

impl Telehealth {
    async fn appointment(&self, caller: &Caller<'_>, reference: &str) -> Result<Appointment> {
        let id = local_reference(reference, "Appointment").ok_or_else(|| {
            TelehealthError::BadRequest(
                "appointment must be a reference like \"Appointment/123\"".into(),
            )
        })?;
        let resource = self
            .fhir
            .read(caller, "Appointment", id)
            .await?
            .ok_or_else(|| TelehealthError::NotFound(format!("no appointment {reference}")))?;
        let end = resource["end"]
            .as_str()
            .and_then(|e| OffsetDateTime::parse(e, &Rfc3339).ok())
            .ok_or_else(|| {
                TelehealthError::Unprocessable(
                    "the appointment has no end time: a consultation room needs one".into(),
                )
            })?
            .unix_timestamp();
        let mut patients = actor_ids(&resource, "Patient");
        patients.dedup();
        let [patient] = patients.as_slice() else {
            return Err(TelehealthError::Unprocessable(
                "the appointment must have exactly one Patient participant".into(),
            ));
        };
        let practitioners = actor_ids(&resource, "Practitioner");
        if practitioners.is_empty() {
            return Err(TelehealthError::Unprocessable(
                "the appointment has no Practitioner participant".into(),
            ));
        }
        Ok(Appointment {
            reference: format!("Appointment/{id}"),
            status: resource["status"].as_str().unwrap_or_default().to_string(),
            end,
            patient: patient.clone(),
            practitioners,
        })
    }

    fn closes(&self, appointment: &Appointment) -> i64 {
        let grace = i64::try_from(self.config.grace_minutes.saturating_mul(60)).unwrap_or(0);
        appointment.end.saturating_add(grace)
    }

    fn room_view(&self, encounter: &Value, appointment: &Appointment) -> Room {
        let id = encounter["id"].as_str().unwrap_or_default().to_string();
        Room {
            encounter: format!("Encounter/{id}"),
            appointment: appointment.reference.clone(),
            status: encounter["status"].as_str().unwrap_or_default().to_string(),
            closes: rfc3339(self.closes(appointment)),
            join: format!("/consult/{id}"),
            tokens: format!("/telehealth/v1/rooms/{id}/tokens"),
            room: id,
        }
    }

    /// Opens the room of an appointment (or answers the one already open: `false`).
    pub async fn room_open(
        &self,
        principal: &Principal,
        caller: &Caller<'_>,
        asked: OpenRoom,
    ) -> Result<(Room, bool)> {
        let appointment = self.appointment(caller, &asked.appointment).await?;
        match principal.role {
            Role::System => {}
            Role::Practitioner
                if principal
                    .practitioner
                    .as_ref()
                    .is_some_and(|p| appointment.practitioners.contains(p)) => {}
            _ => {
                return Err(TelehealthError::Forbidden(
                    "only the appointment's practitioners (or a system client) open its consultation room".into(),
                ));
            }
        }
        if !OPEN_STATES.contains(&appointment.status.as_str()) {
            return Err(TelehealthError::Conflict(format!(
                "the appointment is {}: only booked, arrived or checked-in appointments get a consultation room",
                if appointment.status.is_empty() {
                    "without status"
                } else {
                    &appointment.status
                }
            )));
        }
        if now() >= self.closes(&appointment) {
            return Err(TelehealthError::Conflict(
                "the appointment's time is over (its end plus the grace period has passed)".into(),
            ));
        }
        let patient = format!("Patient/{}", appointment.patient);
        let encounter = json!({
            "resourceType": "Encounter",
            "status": "planned",
            "class": {"system": ACT_CODE, "code": VIRTUAL, "display": "virtual"},
            "subject": {"reference": patient},
            "participant": appointment.practitioners.iter().map(|p| json!({
                "type": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "PPRF"
                }]}],
                "individual": {"reference": format!("Practitioner/{p}")}
            })).collect::<Vec<_>>(),
            "appointment": [{"reference": appointment.reference}],
        });
        // One room per appointment, whoever asks twice: a conditional create (naming the
        // patient too, as practitioners' searches must).
        let criteria = format!(
            "appointment={}&subject={}&class={ACT_CODE}|{VIRTUAL}",
            appointment.reference, patient
        );
        let created = self
            .fhir
            .create(caller, &encounter, Some(&criteria))
            .await?;
        let new = created.status == http::StatusCode::CREATED;
        Ok((self.room_view(&created.body, &appointment), new))
    }

    /// The room's Encounter and Appointment, as the caller may see them.
    async fn room_records(&self, caller: &Caller<'_>, room: &str) -> Result<(Value, Appointment)> {
        let missing = || TelehealthError::NotFound(format!("no consultation room {room}"));
        let id = local_reference(&format!("Encounter/{room}"), "Encounter")
            .ok_or_else(missing)?
            .to_string();
        let encounter = self
            .fhir
            .read(caller, "Encounter", &id)
            .await?
            .ok_or_else(missing)?;
        let is_virtual = encounter
            .pointer("/class/code")
            .and_then(Value::as_str)
            .is_some_and(|c| c == VIRTUAL);
        let appointment = encounter
            .pointer("/appointment/0/reference")
            .and_then(Value::as_str)
            .filter(|_| is_virtual)
            .ok_or_else(missing)?
            .to_string();
        let appointment = self.appointment(caller, &appointment).await?;
        Ok((encounter, appointment))
    }

    /// The room as its participants see it.
    pub async fn room_read(&self, caller: &Caller<'_>, room: &str) -> Result<Room> {
        let (encounter, appointment) = self.room_records(caller, room).await?;
        Ok(self.room_view(&encounter, &appointment))
    }

    /// A join grant for the caller (the appointment's patient or one of its practitioners),
    /// or for someone it invites.
    pub async fn grant_issue(
        &self,
        principal: &Principal,
        caller: &Caller<'_>,
        room: &str,
        asked: GrantAsked,
    ) -> Result<Issued> {
        let (encounter, appointment) = self.room_records(caller, room).await?;
        if matches!(
            encounter["status"].as_str(),
            Some("finished" | "cancelled" | "entered-in-error")
        ) {
            return Err(TelehealthError::Conflict(
                "the consultation has ended".into(),
            ));
        }
        let caller = match principal.role {
            Role::Patient if principal.patient.as_ref() == Some(&appointment.patient) => Some((
                ParticipantRole::Patient,
                format!("Patient/{}", appointment.patient),
            )),
            Role::Practitioner => principal
                .practitioner
                .as_ref()
                .filter(|p| appointment.practitioners.contains(p))
                .map(|p| (ParticipantRole::Practitioner, format!("Practitioner/{p}"))),
            _ => None,
        };
        let Some((role, who)) = caller else {
            return Err(TelehealthError::Forbidden(
                "only the appointment's patient and practitioners take part in its consultation; ask one of them for an invitation".into(),
            ));
        };
        let (role, who) = match asked.invite {
            None => (role, Some(who)),
            Some(invited @ (ParticipantRole::Interpreter | ParticipantRole::Family)) => {
                (invited, None)
            }
            Some(_) => {
                return Err(TelehealthError::BadRequest(
                    "invite is interpreter or family; patients and practitioners ask for their own grant".into(),
                ));
            }
        };
        let ttl = std::time::Duration::from_secs(self.config.grant_ttl_minutes.saturating_mul(60));
        let request = GrantRequest {
            room: room.to_string(),
            role,
            who,
            ttl,
            room_closes: self.closes(&appointment),
        };
        let t = now();
        let (grant, token) = self.keys.issue(&request, t).map_err(|e| match e {
            crate::grant::IssueError::RoomClosed => TelehealthError::Conflict(
                "the appointment's time is over (its end plus the grace period has passed)".into(),
            ),
            crate::grant::IssueError::Signing => TelehealthError::Signing,
        })?;
        Ok(Issued {
            ice_servers: self
                .turn
                .as_ref()
                .map(|turn| vec![turn.ice_server(&grant.sub, t)])
                .unwrap_or_default(),
            room: grant.room,
            participant: grant.sub,
            role: grant.role,
            can: grant.can,
            token,
            expires: rfc3339(grant.exp),
            closes: rfc3339(grant.closes),
            signaling: "/telehealth/v1/ws".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_local_references_name_records() {
        assert_eq!(
            local_reference("Appointment/a-1.2", "Appointment"),
            Some("a-1.2")
        );
        assert_eq!(local_reference("Encounter/a", "Appointment"), None);
        assert_eq!(local_reference("Appointment/", "Appointment"), None);
        assert_eq!(
            local_reference("Appointment/a/_history/1", "Appointment"),
            None
        );
        assert_eq!(local_reference("Appointment/a?x=1", "Appointment"), None);
        assert_eq!(
            local_reference("http://x/Appointment/a", "Appointment"),
            None
        );
    }

    #[test]
    fn declined_and_foreign_participants_do_not_count() {
        let appointment = json!({"participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d2"}, "status": "declined"},
            {"actor": {"reference": "Location/room-3"}, "status": "accepted"},
            {"actor": {"reference": "https://elsewhere/Practitioner/d3"}, "status": "accepted"}
        ]});
        assert_eq!(actor_ids(&appointment, "Patient"), vec!["p1"]);
        assert_eq!(actor_ids(&appointment, "Practitioner"), vec!["d1"]);
    }

    #[test]
    fn times_are_shown_in_rfc3339() {
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
