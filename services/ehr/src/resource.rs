//! Resources as the client wrote them.
//!
//! The store keeps the client's JSON byte for byte below the top level: decimals keep their
//! digits (`9000.00`), unknown-but-valid elements and extensions survive, arrays keep their
//! order. Only the top-level object is taken apart ([`RawObject`]: ordered properties whose
//! values stay raw JSON text) so the server can set `id` and `meta` and filter elements for
//! `_summary`/`_elements` without re-serialising anything else.

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap,
};
use serde_json::value::RawValue;

use crate::{
    definitions::{Definitions, ResourceType},
    error::EhrError,
    validation::{Problem, Severity},
};

/// A JSON object whose property order is kept and whose values are unparsed JSON.
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    fields: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }

    /// Replaces the value of `key` where it stands, or inserts it at `position`.
    pub fn set(&mut self, key: &str, value: Box<RawValue>, position: usize) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => {
                let at = position.min(self.fields.len());
                self.fields.insert(at, (key.to_string(), value));
            }
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.fields.retain(|(k, _)| keep(k));
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("raw JSON always serialises")
    }

    pub fn into_raw(self) -> Box<RawValue> {
        RawValue::from_string(self.to_json()).expect("serialised object is valid JSON")
    }
}

impl Serialize for RawObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RawObject, A::Error> {
                let mut fields: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some(key) = access.next_key::<String>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate property"));
                    }
                    let value: Box<RawValue> = access.next_value()?;
                    fields.push((key, value));
                }
                Ok(RawObject { fields })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Is `id` a valid FHIR id: 1–64 of `A-Z a-z 0-9 - .`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A resource received from a client, checked enough to be stored: a JSON object with a known
/// `resourceType`, a valid `id` if any and an object `meta` if any. Full structural validation
/// against the definitions is the validation layer's job.
#[derive(Debug, Clone)]
pub struct IncomingResource {
    pub resource_type: ResourceType,
    pub id: Option<String>,
    object: RawObject,
    /// The resource as a JSON tree, kept from validation (or built once when first asked):
    /// profiles and search-index extraction read it without parsing the text again.
    tree: std::sync::OnceLock<serde_json::Value>,
    /// Search index rows extracted ahead of writing ([`IncomingResource::prepare_index`]).
    index: PreparedIndex,
}

/// Index rows extracted ahead of writing, taken once by the write. A copy of the resource
/// starts without them (it extracts its own if it is written).
#[derive(Debug, Default)]
struct PreparedIndex(std::sync::Mutex<Option<crate::search::extract::IndexRows>>);

impl Clone for PreparedIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

fn string_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

impl IncomingResource {
    pub fn parse(body: &[u8], defs: &Definitions) -> Result<Self, EhrError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(EhrError::Invalid {
                message: "the request body is empty; send a FHIR resource as JSON".into(),
                expression: None,
            });
        }
        if let Some(position) = forbidden_control_escape(body) {
            return Err(EhrError::Invalid {
                message: format!(
                    "the body contains a control character (escape at byte {position}); FHIR strings may \
                     not contain characters below U+0020 other than tab, carriage return and line feed"
                ),
                expression: None,
            });
        }
        let object: RawObject = serde_json::from_slice(body).map_err(|e| {
            let message = match e.classify() {
                serde_json::error::Category::Data
                    if e.to_string().contains("duplicate property") =>
                {
                    "the resource has the same property twice at the top level".to_string()
                }
                serde_json::error::Category::Data => {
                    "the body must be a JSON object (a FHIR resource)".to_string()
                }
                _ => format!(
                    "the body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            };
            EhrError::Invalid {
                message,
                expression: None,
            }
        })?;
        let resource_type = match object.get("resourceType") {
            None => {
                return Err(EhrError::Invalid {
                    message: "the resource has no resourceType".into(),
                    expression: Some("resourceType".into()),
                });
            }
            Some(raw) => {
                let name = string_of(raw).ok_or_else(|| EhrError::Invalid {
                    message: "resourceType must be a string".into(),
                    expression: Some("resourceType".into()),
                })?;
                defs.resource_type(&name)
                    .ok_or_else(|| EhrError::UnknownType {
                        name: truncate(&name),
                    })?
            }
        };
        let id = match object.get("id") {
            None => None,
            Some(raw) => {
                let id = string_of(raw).filter(|id| is_valid_id(id)).ok_or_else(|| {
                    EhrError::Invalid {
                        message: "id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'".into(),
                        expression: Some(format!("{resource_type}.id")),
                    }
                })?;
                Some(id)
            }
        };
        if let Some(meta) = object.get("meta")
            && serde_json::from_str::<RawObject>(meta.get()).is_err()
        {
            return Err(EhrError::Invalid {
                message: "meta must be a JSON object".into(),
                expression: Some(format!("{resource_type}.meta")),
            });
        }
        Ok(Self {
            resource_type,
            id,
            object,
            tree: std::sync::OnceLock::new(),
            index: Default::default(),
        })
    }

    /// A resource sent to the URL of `rt` (and, for an update, of `id`): parsed, checked against
    /// the URL, then validated — in that order, so a mismatch is reported as a mismatch.
    pub fn parse_for(
        body: &[u8],
        defs: &Definitions,
        rt: ResourceType,
        id: Option<&str>,
    ) -> Result<Self, EhrError> {
        let resource = Self::parse(body, defs)?;
        if resource.resource_type != rt {
            return Err(EhrError::TypeMismatch {
                url: rt.as_str(),
                body: resource.resource_type.as_str(),
            });
        }
        if let Some(id) = id {
            match resource.id.as_deref() {
                None => return Err(EhrError::IdMissing),
                Some(body_id) if body_id != id => return Err(EhrError::IdMismatch),
                Some(_) => {}
            }
        }
        // The bytes as received: the same JSON, without serialising the object again.
        let (_, tree) = validate_json(body)?;
        let _ = resource.tree.set(tree);
        Ok(resource)
    }

    /// The canonical URLs in `meta.profile`.
    pub fn claimed_profiles(&self) -> Vec<String> {
        self.object
            .get("meta")
            .and_then(|meta| serde_json::from_str::<serde_json::Value>(meta.get()).ok())
            .and_then(|meta| meta.get("profile").cloned())
            .and_then(|p| serde_json::from_value::<Vec<String>>(p).ok())
            .unwrap_or_default()
    }

    /// The resource as a JSON tree (its `id` and `meta` as the client sent them).
    /// Extracts the search index rows now, so that writing the resource extracts nothing: a
    /// Bundle prepares its entries before its transaction takes the database's writer
    /// (SQLite has one), so that this work runs beside other requests' writes.
    pub fn prepare_index(&self) {
        let rows = crate::search::extract::extract(self.resource_type, self.tree());
        *self.index.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(rows);
    }

    /// The search index rows: those prepared, or extracted now.
    pub fn take_index(&self) -> crate::search::extract::IndexRows {
        let prepared = self
            .index
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        prepared.unwrap_or_else(|| crate::search::extract::extract(self.resource_type, self.tree()))
    }

    pub fn tree(&self) -> &serde_json::Value {
        self.tree
            .get_or_init(|| serde_json::from_str(&self.object.to_json()).unwrap_or_default())
    }

    /// Validation against the R4 definitions; every problem is reported. Warnings alone do
    /// not refuse the resource: they are returned.
    pub fn validate(&self) -> Result<Vec<Problem>, EhrError> {
        let problems = crate::validation::Validator::r4().validate(self.tree());
        if problems.iter().any(|p| p.severity == Severity::Error) {
            Err(EhrError::Nonconformant { problems })
        } else {
            Ok(problems)
        }
    }

    /// Takes apart JSON this server stored (already validated when it was written).
    pub fn parse_stored(text: &str, defs: &Definitions) -> Result<Self, EhrError> {
        let object: RawObject = serde_json::from_str(text).map_err(|_| EhrError::Invalid {
            message: "stored JSON is unreadable".into(),
            expression: None,
        })?;
        let resource_type = object
            .get("resourceType")
            .and_then(string_of)
            .and_then(|name| defs.resource_type(&name))
            .ok_or_else(|| EhrError::Invalid {
                message: "stored JSON has no known resourceType".into(),
                expression: None,
            })?;
        let id = object.get("id").and_then(string_of);
        Ok(Self {
            resource_type,
            id,
            object,
            tree: std::sync::OnceLock::new(),
            index: Default::default(),
        })
    }

    /// The top-level property `key` parsed as JSON (for index extraction).
    pub fn property(&self, key: &str) -> Option<serde_json::Value> {
        self.object
            .get(key)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// The JSON stored for this version: the client's resource with `id`, `meta.versionId`
    /// and `meta.lastUpdated` set by the server (other `meta` content is kept).
    pub fn stored_json(&self, id: &str, version: i64, last_updated: &str) -> String {
        let mut object = self.object.clone();
        let id_raw =
            RawValue::from_string(serde_json::to_string(id).expect("string")).expect("json");
        object.set("id", id_raw, 1);
        let mut meta = object
            .get("meta")
            .and_then(|m| serde_json::from_str::<RawObject>(m.get()).ok())
            .unwrap_or_default();
        let version_raw =
            RawValue::from_string(serde_json::to_string(&version.to_string()).expect("string"))
                .expect("json");
        let updated_raw =
            RawValue::from_string(serde_json::to_string(last_updated).expect("string"))
                .expect("json");
        meta.set("versionId", version_raw, 0);
        let after_version = meta
            .keys()
            .position(|k| k == "versionId")
            .map_or(1, |p| p + 1);
        meta.set("lastUpdated", updated_raw, after_version);
        let position = object.keys().position(|k| k == "id").map_or(1, |p| p + 1);
        object.set("meta", meta.into_raw(), position);
        object.to_json()
    }
}

/// Position of a JSON escape `\u0000`–`\u001f` other than tab, CR and LF, if any. FHIR
/// forbids those characters in strings, and PostgreSQL cannot store NUL in text. (Raw control
/// characters are already invalid JSON.)
fn forbidden_control_escape(body: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if body.get(i + 1) == Some(&b'u') && body.len() >= i + 6 {
                let hex = std::str::from_utf8(&body[i + 2..i + 6]).ok();
                if let Some(code) = hex.and_then(|h| u32::from_str_radix(h, 16).ok())
                    && code < 0x20
                    && !matches!(code, 0x09 | 0x0a | 0x0d)
                {
                    return Some(i);
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// Validates JSON text that is known to hold one resource; the warnings and the parsed tree
/// when it passes.
fn validate_json(text: &[u8]) -> Result<(Vec<Problem>, serde_json::Value), EhrError> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|_| EhrError::Invalid {
        message: "the body is not valid JSON".into(),
        expression: None,
    })?;
    let problems = crate::validation::Validator::r4().validate(&value);
    if problems.iter().any(|p| p.severity == Severity::Error) {
        Err(EhrError::Nonconformant { problems })
    } else {
        Ok((problems, value))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What `_summary` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

impl Summary {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "true" => Summary::True,
            "text" => Summary::Text,
            "data" => Summary::Data,
            "count" => Summary::Count,
            "false" => Summary::False,
            _ => return None,
        })
    }
}

/// Which elements a read returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ElementFilter {
    #[default]
    All,
    Summary(Summary),
    /// `_elements`: these top-level elements (plus mandatory ones, `id` and `meta`).
    Elements(Vec<String>),
}

impl ElementFilter {
    /// Applies the filter to stored JSON. Answers the JSON unchanged when nothing is removed;
    /// otherwise marks the result with the `SUBSETTED` tag, as the specification asks.
    pub fn apply(&self, stored: &str, defs: &Definitions) -> String {
        if matches!(
            self,
            ElementFilter::All | ElementFilter::Summary(Summary::False | Summary::Count)
        ) {
            return stored.to_string();
        }
        let Ok(mut object) = serde_json::from_str::<RawObject>(stored) else {
            return stored.to_string();
        };
        let Some(rt) = object
            .get("resourceType")
            .and_then(string_of)
            .and_then(|name| defs.resource_type(&name))
        else {
            return stored.to_string();
        };
        let before = object.keys().count();
        object.retain(|key| self.keeps(key, rt, defs));
        if object.keys().count() == before {
            return object.to_json();
        }
        mark_subsetted(&mut object);
        object.to_json()
    }

    /// Whether the top-level property `key` of a resource of type `rt` survives the filter.
    fn keeps(&self, key: &str, rt: ResourceType, defs: &Definitions) -> bool {
        if always_kept(key) {
            return true;
        }
        let element = defs.type_def(rt).element_for_key(key);
        let mandatory = element.is_some_and(|e| e.min > 0);
        match self {
            ElementFilter::All | ElementFilter::Summary(Summary::False | Summary::Count) => true,
            ElementFilter::Summary(Summary::True) => {
                mandatory || element.is_some_and(|e| e.summary)
            }
            ElementFilter::Summary(Summary::Text) => mandatory || key == "text",
            ElementFilter::Summary(Summary::Data) => key != "text",
            ElementFilter::Elements(names) => {
                mandatory
                    || element.is_some_and(|e| {
                        names
                            .iter()
                            .any(|n| *n == e.name || e.name.strip_suffix("[x]") == Some(n))
                    })
            }
        }
    }
}

fn always_kept(key: &str) -> bool {
    matches!(key, "resourceType" | "id" | "meta")
}

/// Adds the `SUBSETTED` tag (system `http://terminology.hl7.org/CodeSystem/v3-ObservationValue`)
/// to `meta.tag`.
fn mark_subsetted(object: &mut RawObject) {
    let mut meta = object
        .get("meta")
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m.get()).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let tag = serde_json::json!({
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
        "display": "subsetted"
    });
    if let Some(map) = meta.as_object_mut() {
        let tags = map.entry("tag").or_insert_with(|| serde_json::json!([]));
        if let Some(list) = tags.as_array_mut() {
            list.push(tag);
        }
    }
    let raw = RawValue::from_string(meta.to_string()).expect("json");
    let position = object.keys().position(|k| k == "id").map_or(1, |p| p + 1);
    object.set("meta", raw, position);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<IncomingResource, EhrError> {
        let resource = IncomingResource::parse(body.as_bytes(), Definitions::r4())?;
        resource.validate()?;
        Ok(resource)
    }

    #[test]
    fn decimals_extensions_and_order_survive_storage() {
        let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"c"},"valueQuantity":{"value":9000.00,"unit":"VND"},"note":[{"text":"z"},{"text":"a"}],"extension":[{"url":"u","valueDecimal":1.50}]}"#;
        let stored = parse(body)
            .unwrap()
            .stored_json("abc", 1, "2026-01-01T00:00:00.000Z");
        assert_eq!(
            stored,
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"},"status":"final","code":{"text":"c"},"valueQuantity":{"value":9000.00,"unit":"VND"},"note":[{"text":"z"},{"text":"a"}],"extension":[{"url":"u","valueDecimal":1.50}]}"#
        );
    }

    #[test]
    fn client_meta_is_kept_and_server_fields_replaced() {
        let body =
            r#"{"resourceType":"Patient","meta":{"profile":["p"],"versionId":"99"},"id":"x"}"#;
        let stored = parse(body).unwrap().stored_json("x", 2, "T");
        assert_eq!(
            stored,
            r#"{"resourceType":"Patient","meta":{"profile":["p"],"versionId":"2","lastUpdated":"T"},"id":"x"}"#
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        assert!(matches!(parse("{"), Err(EhrError::Invalid { .. })));
        assert!(matches!(parse("[]"), Err(EhrError::Invalid { .. })));
        assert!(matches!(
            parse(r#"{"id":"x"}"#),
            Err(EhrError::Invalid { .. })
        ));
        assert!(matches!(
            parse(r#"{"resourceType":"Patiant"}"#),
            Err(EhrError::UnknownType { .. })
        ));
        assert!(matches!(
            parse(r#"{"resourceType":"Patient","id":"a b"}"#),
            Err(EhrError::Invalid { .. })
        ));
        assert!(matches!(
            parse(r#"{"resourceType":"Patient","id":7}"#),
            Err(EhrError::Invalid { .. })
        ));
        assert!(matches!(
            parse(r#"{"resourceType":"Patient","meta":[]}"#),
            Err(EhrError::Invalid { .. })
        ));
        let dup =
            parse(r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#).unwrap_err();
        assert!(format!("{dup:?}").contains("twice"), "{dup:?}");
    }

    #[test]
    fn control_character_escapes_are_refused_but_escaped_backslashes_are_not() {
        assert!(parse(r#"{"resourceType":"Patient","name":[{"text":"a\u0000b"}]}"#).is_err());
        assert!(parse(r#"{"resourceType":"Patient","name":[{"text":"a\u001Fb"}]}"#).is_err());
        assert!(parse(r#"{"resourceType":"Patient","name":[{"text":"a\u000ab\tc"}]}"#).is_ok());
        assert!(parse(r#"{"resourceType":"Patient","name":[{"text":"a\\u0000b"}]}"#).is_ok());
    }

    #[test]
    fn ids_follow_the_fhir_id_rule() {
        assert!(is_valid_id("a-B.9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("Nguyễn"));
    }

    #[test]
    fn summary_keeps_summary_elements_and_tags_the_result() {
        let stored = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},"text":{"status":"generated","div":"<div/>"},"name":[{"family":"Nguyễn"}],"photo":[{"url":"x"}],"_birthDate":{"extension":[]},"birthDate":"1990"}"#;
        let defs = Definitions::r4();
        let summary = ElementFilter::Summary(Summary::True).apply(stored, defs);
        assert!(
            summary.contains("\"name\"")
                && summary.contains("birthDate")
                && summary.contains("SUBSETTED")
        );
        assert!(
            !summary.contains("photo") && !summary.contains("\"text\""),
            "{summary}"
        );
        let data = ElementFilter::Summary(Summary::Data).apply(stored, defs);
        assert!(data.contains("photo") && !data.contains("\"text\""));
        let elements = ElementFilter::Elements(vec!["birthDate".into()]).apply(stored, defs);
        assert!(
            elements.contains("\"birthDate\":\"1990\"")
                && elements.contains("_birthDate")
                && !elements.contains("name")
        );
        assert_eq!(ElementFilter::All.apply(stored, defs), stored);
    }
}
