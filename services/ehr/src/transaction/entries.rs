//! A Bundle's entries read and checked before anything runs: their verbs, targets and
//! resources, and the rewriting of temporary ids (`urn:uuid:`) into the ids they get.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// One parsed entry.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) full_url: Option<String>,
    pub(super) verb: Verb,
    pub(super) resource_type: ResourceType,
    /// `Type/id` entries carry the id; `Type` (POST) and `Type?criteria` do not.
    pub(super) id: Option<String>,
    /// `Type?criteria`: a conditional update, patch or delete.
    pub(super) criteria: Option<Criteria>,
    /// `Type?parameters` of a GET entry: a search.
    pub(super) search: Option<SearchRequest>,
    pub(super) version: Option<i64>,
    pub(super) resource: Option<String>,
    /// What a PATCH entry applies: a Binary holding JSON Patch, or a Parameters resource
    /// (FHIRPath Patch).
    pub(super) patch: Option<Document>,
    pub(super) if_none_exist: Option<Criteria>,
    pub(super) if_match: Option<i64>,
}

/// What one entry did.
#[derive(Debug)]
pub(super) enum Outcome {
    Created(Version),
    Existing(Version),
    Updated(Version, bool),
    Deleted(Option<i64>),
    Read(Version),
    /// A search entry: the searchset Bundle.
    Searched(String),
}

pub(super) fn invalid(message: impl Into<String>) -> EhrError {
    EhrError::Invalid {
        message: message.into(),
        expression: None,
    }
}

pub(super) fn parse_entry(
    raw: &serde_json::value::RawValue,
    ehr: &Ehr,
    base: &str,
) -> Result<Entry, EhrError> {
    let object: RawObject =
        serde_json::from_str(raw.get()).map_err(|_| invalid("an entry must be an object"))?;
    let text = |key: &str| -> Result<Option<String>, EhrError> {
        match object.get(key) {
            None => Ok(None),
            Some(v) => serde_json::from_str::<String>(v.get())
                .map(Some)
                .map_err(|_| invalid(format!("{key} must be a string"))),
        }
    };
    let full_url = text("fullUrl")?;
    let request: Value = object
        .get("request")
        .map(|r| serde_json::from_str(r.get()))
        .transpose()
        .map_err(|_| invalid("request must be an object"))?
        .ok_or_else(|| EhrError::Invalid {
            message: "every entry needs a request (method and url)".into(),
            expression: Some("request".into()),
        })?;
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    let verb = match field("method") {
        Some("GET") => Verb::Get,
        Some("POST") => Verb::Post,
        Some("PUT") => Verb::Put,
        Some("DELETE") => Verb::Delete,
        Some("PATCH") => Verb::Patch,
        Some(other) => {
            return Err(EhrError::BadParameter {
                name: "request.method",
                message: format!(
                    "{} is not a method of Bundle entries (GET, POST, PUT, PATCH, DELETE are)",
                    other.chars().take(16).collect::<String>()
                ),
            });
        }
        None => return Err(invalid("request.method is required")),
    };
    let url = field("url").ok_or_else(|| invalid("request.url is required"))?;
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (url, query) = match url.split_once('?') {
        None => (url, None),
        Some(_) if verb == Verb::Post => {
            return Err(invalid(
                "a POST entry's url is a type; put create conditions in request.ifNoneExist",
            ));
        }
        Some((path, query)) => (path, Some(query)),
    };
    let segments: Vec<&str> = url.split('/').collect();
    let resource_type =
        ehr.defs
            .resource_type(segments[0])
            .ok_or_else(|| EhrError::UnknownType {
                name: segments[0].chars().take(64).collect(),
            })?;
    // A GET entry's query is a search; any other entry's, the condition of its write.
    let (criteria, search) = match (query, verb) {
        (None, _) => (None, None),
        (Some(q), Verb::Get) => {
            let pairs: Vec<(String, String)> =
                form_urlencoded::parse(q.as_bytes()).into_owned().collect();
            (
                None,
                Some(SearchRequest::parse(resource_type, &pairs, true)?),
            )
        }
        (Some(q), _) => (Some(Criteria::parse_query(resource_type, q)?), None),
    };
    let conditional = query.is_some();
    let (id, version) = match (verb, segments.as_slice()) {
        (Verb::Post, [_]) => (None, None),
        (_, [_]) if conditional => (None, None),
        (Verb::Put | Verb::Patch | Verb::Delete | Verb::Get, [_, id]) if !conditional => {
            (Some(*id), None)
        }
        (Verb::Get, [_, id, "_history", v]) => (
            Some(*id),
            Some(
                v.parse::<i64>()
                    .map_err(|_| invalid("the version in request.url must be a number"))?,
            ),
        ),
        _ => {
            return Err(invalid(
                "request.url must be Type for POST, and Type/id or Type?criteria for PUT, PATCH, DELETE and GET",
            ));
        }
    };
    if id.is_some_and(|id| !is_valid_id(id)) {
        return Err(EhrError::InvalidId);
    }
    let resource = object.get("resource").map(|r| r.get().to_string());
    if matches!(verb, Verb::Post | Verb::Put | Verb::Patch) && resource.is_none() {
        return Err(invalid("POST, PUT and PATCH entries need a resource"));
    }
    let patch = match verb {
        Verb::Patch => Some(patch_document(resource.as_deref().unwrap_or_default())?),
        _ => None,
    };
    let if_none_exist = field("ifNoneExist")
        .map(|q| Criteria::parse_query(resource_type, q))
        .transpose()?;
    let if_match = match field("ifMatch") {
        None => None,
        Some(tag) => {
            let inner = tag.trim().trim_start_matches("W/").trim_matches('"');
            Some(inner.parse::<i64>().map_err(|_| EhrError::BadIfMatch)?)
        }
    };
    Ok(Entry {
        full_url,
        verb,
        resource_type,
        id: id.map(str::to_string),
        criteria,
        search,
        version,
        resource,
        patch,
        if_none_exist,
        if_match,
    })
}

/// The patch a PATCH entry carries: a Binary with a JSON Patch document (base64 `data`,
/// `contentType` application/json-patch+json), or a Parameters resource (FHIRPath Patch).
pub(super) fn patch_document(resource: &str) -> Result<Document, EhrError> {
    use base64::Engine;
    let value: Value =
        serde_json::from_str(resource).map_err(|_| invalid("the entry's resource is not JSON"))?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok(Document::FhirPath(resource.to_string())),
        Some("Binary") => {
            if value.get("contentType").and_then(Value::as_str)
                != Some("application/json-patch+json")
            {
                return Err(EhrError::PatchFormat);
            }
            let data = value
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("the Binary holding a JSON Patch needs data"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| invalid("Binary.data is not base64"))?;
            String::from_utf8(bytes)
                .map(Document::JsonPatch)
                .map_err(|_| invalid("the JSON Patch in Binary.data is not UTF-8"))
        }
        _ => Err(EhrError::PatchFormat),
    }
}

/// Parses the Bundle: its kind and its entries. A malformed entry refuses a transaction
/// outright; in a batch it stays in its place as the error it will be answered with.
pub(super) fn parse(
    body: &[u8],
    ehr: &Ehr,
    base: &str,
) -> Result<(bool, Vec<Result<Entry, EhrError>>), BundleError> {
    let object: RawObject =
        serde_json::from_slice(body).map_err(|_| invalid("the body is not a JSON object"))?;
    let field = |key: &str| {
        object
            .get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    };
    if field("resourceType").as_deref() != Some("Bundle") {
        return Err(EhrError::Invalid {
            message: "POST /fhir takes a Bundle of type batch or transaction".into(),
            expression: Some("resourceType".into()),
        }
        .into());
    }
    let transaction = match field("type").as_deref() {
        Some("transaction") => true,
        Some("batch") => {
            crate::audit::note_interaction("batch");
            false
        }
        _ => {
            return Err(EhrError::Invalid {
                message: "Bundle.type must be batch or transaction".into(),
                expression: Some("Bundle.type".into()),
            }
            .into());
        }
    };
    let raw_entries: Vec<Box<serde_json::value::RawValue>> = match object.get("entry") {
        None => Vec::new(),
        Some(e) => serde_json::from_str(e.get()).map_err(|_| EhrError::Invalid {
            message: "Bundle.entry must be an array".into(),
            expression: Some("Bundle.entry".into()),
        })?,
    };
    let max = ehr.fhir.max_bundle_entries as usize;
    if raw_entries.len() > max {
        return Err(EhrError::TooManyEntries {
            count: raw_entries.len(),
            max,
        }
        .into());
    }
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (index, raw) in raw_entries.iter().enumerate() {
        match parse_entry(raw, ehr, base) {
            Ok(entry) => entries.push(Ok(entry)),
            Err(error) if transaction => return Err(BundleError::Entry { index, error }),
            // In a batch a malformed entry fails alone, in its place.
            Err(error) => entries.push(Err(error)),
        }
    }
    Ok((transaction, entries))
}

/// Rewrites `"reference": "<fullUrl>"` to `"reference": "Type/id"` for every mapped fullUrl, in
/// one pass over the text (linear in its size, whatever the number of entries). Only values of
/// a `reference` key change: an identifier that happens to equal a fullUrl (a document's
/// `urn:uuid:` master identifier, say) must stay as written.
pub(super) fn rewrite(text: &str, map: &HashMap<String, String>) -> String {
    const KEY: &str = "\"reference\"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find(KEY) {
        let (before, after) = rest.split_at(position + KEY.len());
        out.push_str(before);
        rest = after;
        let Some(after_colon) = after.trim_start().strip_prefix(':') else {
            continue;
        };
        let value = after_colon.trim_start();
        let Some(end) = string_token_end(value) else {
            continue;
        };
        let Some(target) = serde_json::from_str::<String>(&value[..end])
            .ok()
            .and_then(|v| map.get(&v))
        else {
            continue;
        };
        // Keep the separator exactly as written, then the new reference.
        out.push_str(&after[..after.len() - value.len()]);
        out.push_str(&json::string(target));
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Length of the JSON string token at the start of `text` (quotes included), if it is one.
pub(super) fn string_token_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A `reference` still pointing at a `urn:uuid:`/`urn:oid:` that no entry defines.
pub(super) fn unresolved_reference(text: &str) -> Option<String> {
    fn walk(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => map.iter().find_map(|(k, v)| match (k.as_str(), v) {
                ("reference", Value::String(s))
                    if s.starts_with("urn:uuid:") || s.starts_with("urn:oid:") =>
                {
                    Some(s.clone())
                }
                _ => walk(v),
            }),
            Value::Array(list) => list.iter().find_map(walk),
            _ => None,
        }
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .as_ref()
        .and_then(walk)
}
