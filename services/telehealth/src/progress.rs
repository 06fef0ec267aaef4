//! The consultation in the record: its Encounter goes `in-progress` (with its period's start)
//! when a practitioner admits the patient, and `finished` (with its period's end and the
//! practitioners who took part) when the consultation ends.
//!
//! These changes are the service's own, made while no user request is at hand (a WebSocket
//! message carries a grant, not a FHIR token), so they go through the FHIR API with a token of
//! the service itself — subject `sen-telehealth`, scope `system/Encounter.ru`, signed with the
//! embedded key — and the access record names the service. Where the embedded key is turned
//! off the service has no token yet, and the Encounter is left as it is (logged at start).

use std::sync::Mutex;

use sen_platform::{
    auth::{Auth, Role, TokenRequest},
    fhir_client::{Caller, FhirClient, FhirClientError},
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The service's token lifetime, and how long before its end a new one is made.
const TOKEN_TTL: u64 = 3_600;
const TOKEN_MARGIN: u64 = 300;

/// Tries of a read-and-update when another writer changed the Encounter in between.
const TRIES: usize = 3;

/// The Encounter changes of the telehealth service.
pub(crate) struct Progress {
    auth: Option<std::sync::Arc<Auth>>,
    /// The current token and when it expires (Unix seconds).
    token: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

/// A change of the consultation's Encounter.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// The patient was admitted: `in-progress`, the period starts (unless it has).
    Started { at_ms: i64 },
    /// The consultation ended: `finished`, the period ends; `practitioners` (ids) took part.
    Finished {
        at_ms: i64,
        practitioners: Vec<String>,
    },
}

fn instant(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl Progress {
    pub(crate) fn new(auth: Option<std::sync::Arc<Auth>>) -> Self {
        Self {
            auth,
            token: Mutex::new(None),
        }
    }

    /// The service's token, made anew when the last one is about to expire.
    fn token(&self) -> Option<String> {
        let auth = self.auth.as_ref()?;
        let now = sen_platform::unix_seconds();
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((value, expires)) = token.as_ref()
            && now + TOKEN_MARGIN < *expires
        {
            return Some(value.clone());
        }
        let minted = auth
            .mint(&TokenRequest {
                role: Role::System,
                subject: Some("sen-telehealth".into()),
                patient: None,
                practitioner: None,
                scope: Some("system/Encounter.ru".into()),
                ttl_secs: TOKEN_TTL,
            })
            .ok()?;
        *token = Some((minted.clone(), now + TOKEN_TTL));
        Some(minted)
    }

    /// Applies `change` to Encounter `id`; answers whether the record now shows it.
    pub(crate) async fn apply(&self, fhir: &FhirClient, id: &str, change: &Change) -> bool {
        let Some(bearer) = self.token() else {
            return false;
        };
        let caller = Caller {
            bearer: &bearer,
            request_id: None,
            address: None,
        };
        for _ in 0..TRIES {
            let encounter = match fhir.read(&caller, "Encounter", id).await {
                Ok(Some(encounter)) => encounter,
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, "the consultation's Encounter could not be read");
                    return false;
                }
            };
            let version = encounter
                .pointer("/meta/versionId")
                .and_then(Value::as_str)
                .map(str::to_string);
            let Some(changed) = changed(encounter, change) else {
                return true;
            };
            match fhir.update(&caller, &changed, version.as_deref()).await {
                Ok(_) => return true,
                Err(FhirClientError::Status { status, .. })
                    if status == http::StatusCode::PRECONDITION_FAILED
                        || status == http::StatusCode::CONFLICT => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the consultation's Encounter could not be updated");
                    return false;
                }
            }
        }
        false
    }
}

/// The Encounter with `change` applied, or `None` when it shows it already (or is closed).
fn changed(mut encounter: Value, change: &Change) -> Option<Value> {
    let status = encounter["status"].as_str().unwrap_or_default().to_string();
    if matches!(
        status.as_str(),
        "finished" | "cancelled" | "entered-in-error"
    ) {
        return None;
    }
    match change {
        Change::Started { at_ms } => {
            if status == "in-progress" {
                return None;
            }
            encounter["status"] = json!("in-progress");
            encounter["period"]["start"] = json!(instant(*at_ms));
        }
        Change::Finished {
            at_ms,
            practitioners,
        } => {
            encounter["status"] = json!("finished");
            if encounter.pointer("/period/start").is_none() {
                encounter["period"]["start"] = json!(instant(*at_ms));
            }
            encounter["period"]["end"] = json!(instant(*at_ms));
            let participants = encounter["participant"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut participants: Vec<Value> = participants;
            for practitioner in practitioners {
                let reference = format!("Practitioner/{practitioner}");
                let known = participants.iter().any(|p| {
                    p.pointer("/individual/reference").and_then(Value::as_str) == Some(&reference)
                });
                if !known {
                    participants.push(json!({
                        "type": [{"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "PART"
                        }]}],
                        "individual": {"reference": reference}
                    }));
                }
            }
            encounter["participant"] = Value::Array(participants);
        }
    }
    // The server sets the version and time; an emptied meta goes (FHIR has no empty objects).
    if let Some(object) = encounter.as_object_mut()
        && let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut)
    {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            object.remove("meta");
        }
    }
    Some(encounter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encounter_starts_once_and_finishes_with_its_practitioners() {
        let planned = json!({"resourceType": "Encounter", "id": "e1", "status": "planned",
            "meta": {"versionId": "1"},
            "participant": [{"individual": {"reference": "Practitioner/d1"}}]});
        let started = changed(
            planned.clone(),
            &Change::Started {
                at_ms: 1_767_225_600_000,
            },
        )
        .unwrap();
        assert_eq!(started["status"], "in-progress");
        assert_eq!(started["period"]["start"], "2026-01-01T00:00:00Z");
        assert!(started.get("meta").is_none(), "no empty meta: {started}");
        assert!(
            changed(started.clone(), &Change::Started { at_ms: 0 }).is_none(),
            "once"
        );

        let finished = changed(
            started,
            &Change::Finished {
                at_ms: 1_767_227_400_000,
                practitioners: vec!["d1".into(), "d2".into()],
            },
        )
        .unwrap();
        assert_eq!(finished["status"], "finished");
        assert_eq!(
            finished["period"],
            json!({"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:30:00Z"})
        );
        let who: Vec<&str> = finished["participant"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.pointer("/individual/reference")?.as_str())
            .collect();
        assert_eq!(who, vec!["Practitioner/d1", "Practitioner/d2"]);
        assert!(
            changed(finished, &Change::Started { at_ms: 0 }).is_none(),
            "a finished Encounter stays"
        );
        // Ended without ever starting: the period is the moment it ended.
        let ended = changed(
            planned,
            &Change::Finished {
                at_ms: 1_767_225_600_000,
                practitioners: vec![],
            },
        )
        .unwrap();
        assert_eq!(ended["period"]["start"], ended["period"]["end"]);
    }
}
