//! An access record as a FHIR R4 AuditEvent, shaped as the IHE Basic Audit Log Patterns
//! describe a RESTful access: type `rest`, the interaction as subtype, the requesting agent
//! with its network address, the resources touched, the query of a search, and one entity
//! per patient concerned (which is what `AuditEvent?patient=` and the Patient compartment
//! find).

use base64::Engine;
use serde_json::{Value, json};

use super::Record;

const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// System of the request id entity (`entity:identifier=urn:sen:request-id|…` finds it).
pub const REQUEST_ID_SYSTEM: &str = "urn:sen:request-id";

/// The AuditEvent `id` records, made at `recorded` (microseconds), concerning `patients`.
pub fn audit_event(id: &str, recorded: i64, record: &Record, patients: &[String]) -> Value {
    let outcome = match record.status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut purpose = json!([{"coding": [{"system": ACT_REASON, "code": record.purpose}]}]);
    if let Some(reason) = &record.break_glass {
        purpose[0]["text"] = json!(reason);
    }
    let who = match &record.agent.who {
        Some(reference) => json!({"reference": reference}),
        None => {
            json!({"identifier": {"system": record.agent.issuer, "value": record.agent.subject}})
        }
    };
    let mut agent = json!({
        "type": {"coding": [{"system": PARTICIPATION_TYPE, "code": "IRCP", "display": "information recipient"}]},
        "role": [{"text": record.agent.role}],
        "who": who,
        "altId": record.agent.subject,
        "requestor": true,
        "purposeOfUse": purpose,
    });
    if let Some(client) = &record.agent.client_id {
        agent["name"] = json!(format!("client {client}"));
    }
    if let Some(address) = &record.address {
        // 2: IP address.
        agent["network"] = json!({"address": address, "type": "2"});
    }
    let mut entities: Vec<Value> = Vec::new();
    for reference in &record.resources {
        entities.push(json!({
            "what": {"reference": reference},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        }));
    }
    for patient in patients {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }));
    }
    if let Some(query) = &record.query {
        entities.push(json!({
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    if let Some(request_id) = &record.request_id {
        entities.push(json!({
            "what": {"identifier": {"system": REQUEST_ID_SYSTEM, "value": request_id}},
            "type": {"system": ENTITY_TYPE, "code": "4", "display": "Other"},
            "description": "X-Request-Id of the request",
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": record.interaction}],
        "action": record.action,
        "recorded": crate::store::format_instant(recorded),
        "outcome": outcome,
        "outcomeDesc": format!("HTTP {}", record.status),
        "purposeOfEvent": purpose,
        "agent": [agent],
        "source": {
            "site": "sen",
            "observer": {"display": "Sen FHIR server"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    });
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    if record.break_glass.is_some() {
        event["meta"] = json!({"security": [{"system": ACT_REASON, "code": "BTG", "display": "break the glass"}]});
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{audit::Agent, definitions::Definitions, resource::IncomingResource};

    fn record() -> Record {
        Record {
            request_id: Some("abc-123".into()),
            interaction: "search-type".into(),
            action: "R".into(),
            status: 200,
            agent: Agent {
                role: "system".into(),
                issuer: "https://id.example/realms/sen".into(),
                subject: "svc-1".into(),
                who: None,
                client_id: Some("ingest".into()),
            },
            address: Some("10.0.0.7".into()),
            purpose: "HOPERAT".into(),
            break_glass: Some("unconscious patient in the emergency room".into()),
            query: Some("Observation?code=8867-4".into()),
            resources: vec!["Observation/o1/_history/2".into()],
            results: vec![],
            patients: vec![],
        }
    }

    #[test]
    fn every_field_of_a_record_makes_a_valid_audit_event() {
        let event = audit_event("a1", 1_700_000_000_000_000, &record(), &["p1".to_string()]);
        let body = serde_json::to_vec(&event).unwrap();
        let defs = Definitions::r4();
        let resource = IncomingResource::parse_for(
            &body,
            defs,
            defs.resource_type("AuditEvent").unwrap(),
            Some("a1"),
        )
        .unwrap();
        resource.validate().unwrap();
        assert_eq!(event["outcome"], "0");
        assert_eq!(event["meta"]["security"][0]["code"], "BTG");
        assert_eq!(
            event["purposeOfEvent"][0]["text"],
            "unconscious patient in the emergency room"
        );
        let entities = event["entity"].as_array().unwrap();
        assert_eq!(entities[1]["what"]["reference"], "Patient/p1");
        assert_eq!(entities[2]["query"], "T2JzZXJ2YXRpb24/Y29kZT04ODY3LTQ=");
        assert_eq!(entities[3]["what"]["identifier"]["value"], "abc-123");
    }

    #[test]
    fn refusals_and_failures_have_their_outcome_codes() {
        let mut r = record();
        r.status = 404;
        assert_eq!(audit_event("a", 0, &r, &[])["outcome"], "4");
        r.status = 503;
        assert_eq!(audit_event("a", 0, &r, &[])["outcome"], "8");
    }
}
