//! FHIR Bundles assembled as JSON text around stored resources, which are embedded as they
//! are (never parsed and re-serialised), and the links and entries that go in them.

use crate::{
    json,
    store::{Method, Version, format_instant},
};

/// Weak ETag of a version: `W/"3"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// One `Bundle.link`.
pub fn link(url: &str, relation: &str) -> String {
    format!(
        "{{\"relation\":{},\"url\":{}}}",
        json::string(relation),
        json::string(url)
    )
}

/// `?` and the query string of `params` without the page position, plus `extra`; empty when
/// none.
pub fn query_string(params: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params
        .iter()
        .filter(|(k, _)| k != "_page_token" && k != "_page_offset")
    {
        serializer.append_pair(k, v);
    }
    if let Some((k, v)) = extra {
        serializer.append_pair(k, v);
    }
    let query = serializer.finish();
    if query.is_empty() {
        query
    } else {
        format!("?{query}")
    }
}

/// A Bundle of `kind` (history, searchset) around entries already rendered as JSON.
pub fn bundle(kind: &str, links: &[String], entries: &[String], total: Option<usize>) -> String {
    let mut out = String::with_capacity(entries.iter().map(String::len).sum::<usize>() + 512);
    out.push_str("{\"resourceType\":\"Bundle\",\"id\":");
    out.push_str(&json::string(&uuid::Uuid::new_v4().to_string()));
    out.push_str(",\"meta\":{\"lastUpdated\":");
    let now =
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(0);
    out.push_str(&json::string(&format_instant(now)));
    out.push_str("},\"type\":");
    out.push_str(&json::string(kind));
    if let Some(total) = total {
        out.push_str(&format!(",\"total\":{total}"));
    }
    out.push_str(",\"link\":[");
    out.push_str(&links.join(","));
    out.push(']');
    if !entries.is_empty() {
        out.push_str(",\"entry\":[");
        out.push_str(&entries.join(","));
        out.push(']');
    }
    out.push('}');
    out
}

/// A history entry: the version (absent for a deletion), its request and its response.
pub fn history_entry(base: &str, v: &Version) -> String {
    let full_url = format!("{base}/{}/{}", v.resource_type, v.id);
    let (url, status) = match v.method {
        Method::Post => (v.resource_type.clone(), "201 Created"),
        Method::Put if v.version == 1 => (format!("{}/{}", v.resource_type, v.id), "201 Created"),
        Method::Put => (format!("{}/{}", v.resource_type, v.id), "200 OK"),
        Method::Delete => (format!("{}/{}", v.resource_type, v.id), "204 No Content"),
    };
    let resource = if v.deleted {
        String::new()
    } else {
        format!(",\"resource\":{}", v.content)
    };
    format!(
        "{{\"fullUrl\":{}{resource},\"request\":{{\"method\":\"{}\",\"url\":{}}},\"response\":{{\"status\":\"{status}\",\"etag\":{},\"lastModified\":{}}}}}",
        json::string(&full_url),
        v.method.as_str(),
        json::string(&url),
        json::string(&etag(v.version)),
        json::string(&v.last_updated_rfc3339()),
    )
}
