//! Circular 30/2023/TT-BYT: only the conditions it lists, by ICD-10 code, may be examined and
//! treated remotely. The list is data — the ValueSet [`VALUE_SET`] (built in with the entries
//! Sen's sources quote; `fhir.profile_dir` replaces it with the circular's full annex).
//!
//! The rule, on every write (REST, PATCH, Bundle entries): an encounter diagnosis (a Condition
//! of category `encounter-diagnosis`) recorded on a remote examination (an Encounter of class
//! `VR`) must carry an ICD-10 code on the list; so must the Conditions a remote examination
//! names as its diagnoses. An Encounter typed advice only ([`ADVICE_ONLY`]) is not an
//! examination, and any condition may be discussed in it.

use std::collections::HashSet;

use serde_json::Value;

/// The remote-eligible conditions.
pub const VALUE_SET: &str = "http://fhir.sen.vn/ValueSet/circular-30-remote-icd10";
pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
/// `Encounter.type` of a remote consultation that gives advice only (no examination).
pub const ADVICE_ONLY: (&str, &str) = (
    "http://fhir.sen.vn/CodeSystem/encounter-type",
    "advice-only",
);

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";

/// The ICD-10 codes on the list. A listed category (`E66`) covers its subdivisions
/// (`E66.0`); a listed subdivision (`J31.1`) covers itself only.
#[derive(Debug, Clone, Default)]
pub struct Eligible(HashSet<String>);

impl Eligible {
    pub fn new(codes: impl IntoIterator<Item = String>) -> Self {
        Self(
            codes
                .into_iter()
                .map(|c| c.trim().to_ascii_uppercase())
                .collect(),
        )
    }

    pub fn covers(&self, code: &str) -> bool {
        let code = code.trim().to_ascii_uppercase();
        self.0.contains(&code)
            || code
                .split_once('.')
                .is_some_and(|(category, _)| self.0.contains(category))
    }
}

fn codings(concept: &Value) -> impl Iterator<Item = (&str, &str)> {
    concept
        .get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
}

/// Whether an Encounter is a remote examination: class `VR`, not typed advice only.
pub fn is_remote_examination(encounter: &Value) -> bool {
    let class = encounter.get("class");
    let virtual_class = class.and_then(|c| c.get("code")).and_then(Value::as_str) == Some("VR")
        && class
            .and_then(|c| c.get("system"))
            .and_then(Value::as_str)
            .is_none_or(|s| s == ACT_CODE);
    let advice_only = encounter
        .get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| codings(t).any(|coding| coding == ADVICE_ONLY));
    virtual_class && !advice_only
}

/// Whether a Condition is an encounter diagnosis.
pub fn is_encounter_diagnosis(condition: &Value) -> bool {
    condition
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            codings(c)
                .any(|(system, code)| system == CONDITION_CATEGORY && code == "encounter-diagnosis")
        })
}

/// `Some(reason)` when a Condition's codes do not allow a remote examination: it has no ICD-10
/// code, or one off the list.
pub fn refusal(condition: &Value, eligible: &Eligible) -> Option<String> {
    let codes: Vec<&str> = condition
        .get("code")
        .map(|c| {
            codings(c)
                .filter(|(s, _)| *s == ICD10)
                .map(|(_, code)| code)
                .collect()
        })
        .unwrap_or_default();
    if codes.is_empty() {
        return Some(format!(
            "a diagnosis of a remote examination needs its ICD-10 code (system {ICD10}): Circular 30/2023/TT-BYT lists the conditions that may be examined remotely by ICD-10 code"
        ));
    }
    let outside: Vec<&str> = codes.into_iter().filter(|c| !eligible.covers(c)).collect();
    (!outside.is_empty()).then(|| {
        format!(
            "{} may not be examined remotely: Circular 30/2023/TT-BYT does not list it ({VALUE_SET}); examine the patient in person, or type the encounter advice only ({}|{})",
            outside.join(", "),
            ADVICE_ONLY.0,
            ADVICE_ONLY.1
        )
    })
}

/// The id of a literal reference `Type/id` of `rt`.
pub fn reference_id<'a>(reference: Option<&'a Value>, rt: &str) -> Option<&'a str> {
    let reference = reference?.get("reference")?.as_str()?;
    let (t, id) = reference.split_once('/')?;
    (t == rt && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eligible() -> Eligible {
        Eligible::new(["E66", "J31.1", "M25.5"].map(String::from))
    }

    #[test]
    fn categories_cover_their_subdivisions_and_subdivisions_only_themselves() {
        let e = eligible();
        assert!(e.covers("E66") && e.covers("E66.0") && e.covers("e66.9"));
        assert!(e.covers("J31.1") && !e.covers("J31") && !e.covers("J31.0"));
        assert!(!e.covers("I21.0") && !e.covers(""));
    }

    #[test]
    fn remote_examinations_and_advice() {
        let vr = json!({"resourceType": "Encounter", "class": {"system": ACT_CODE, "code": "VR"}});
        assert!(is_remote_examination(&vr));
        let mut advice = vr.clone();
        advice["type"] = json!([{"coding": [{"system": ADVICE_ONLY.0, "code": ADVICE_ONLY.1}]}]);
        assert!(!is_remote_examination(&advice));
        let amb =
            json!({"resourceType": "Encounter", "class": {"system": ACT_CODE, "code": "AMB"}});
        assert!(!is_remote_examination(&amb));
    }

    #[test]
    fn diagnoses_need_a_listed_icd10_code() {
        let condition = |code: &str| {
            json!({"resourceType": "Condition",
            "code": {"coding": [{"system": ICD10, "code": code}]}})
        };
        assert_eq!(refusal(&condition("E66.0"), &eligible()), None);
        let refused = refusal(&condition("I21.0"), &eligible()).unwrap();
        assert!(
            refused.contains("I21.0") && refused.contains("advice only"),
            "{refused}"
        );
        let snomed = json!({"resourceType": "Condition",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]}});
        assert!(refusal(&snomed, &eligible()).unwrap().contains("ICD-10"));
    }
}
