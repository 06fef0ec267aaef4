//! Batch and transaction Bundles posted to `/fhir`.
//!
//! A transaction is all or nothing: every entry runs inside one database transaction, in the
//! order the specification sets (DELETE, POST, PUT, GET), and any failing entry rolls back
//! everything. Before writing, POST entries get their ids, so references to an entry's
//! `fullUrl` (typically `urn:uuid:…`) are rewritten to `Type/id` throughout the Bundle. The
//! rewrite replaces exact JSON string tokens in the resource text, so nothing else the client
//! wrote is re-serialised. A batch runs each entry on its own and reports each outcome.

use std::collections::HashMap;

use sen_platform::{ApiError, IssueCode, OperationOutcome, OutcomeIssue};
use serde_json::Value;

use crate::{
    Ehr,
    bundle::{bundle, etag},
    criteria::Criteria,
    definitions::ResourceType,
    error::EhrError,
    json,
    patch::Document,
    resource::{IncomingResource, RawObject, is_valid_id},
    search::query::SearchRequest,
    store::{Created, Deleted, Tx, Version},
};

mod entries;

use entries::*;

/// Why a Bundle was refused: the Bundle as a whole, or one entry (index from 0).
#[derive(Debug)]
pub enum BundleError {
    Bundle(EhrError),
    Entry { index: usize, error: EhrError },
}

impl From<EhrError> for BundleError {
    fn from(error: EhrError) -> Self {
        BundleError::Bundle(error)
    }
}

impl From<BundleError> for ApiError {
    fn from(error: BundleError) -> Self {
        match error {
            BundleError::Bundle(e) => e.into(),
            BundleError::Entry { index, error } => {
                let mut api: ApiError = error.into();
                for issue in &mut api.issues {
                    if let Some(d) = &issue.diagnostics {
                        issue.diagnostics = Some(format!("Bundle.entry[{index}]: {d}"));
                    }
                    let inner = std::mem::take(&mut issue.expression);
                    issue.expression = if inner.is_empty() {
                        vec![format!("Bundle.entry[{index}]")]
                    } else {
                        inner
                            .into_iter()
                            .map(|e| format!("Bundle.entry[{index}].resource.{e}"))
                            .collect()
                    };
                }
                api
            }
        }
    }
}

/// Processes a batch or transaction Bundle; answers the response Bundle's JSON.
pub async fn process(ehr: &Ehr, body: &[u8], base: &str) -> Result<String, BundleError> {
    let (transaction, entries) = parse(body, ehr, base)?;
    let outcomes = if transaction {
        // parse() has already refused a transaction with a malformed entry.
        let entries: Vec<Entry> = entries.into_iter().collect::<Result<_, _>>()?;
        run_transaction(ehr, &entries).await?
    } else {
        run_batch(ehr, entries).await
    };
    let rendered: Vec<String> = outcomes.iter().map(|o| render(base, o)).collect();
    let kind = if transaction {
        "transaction-response"
    } else {
        "batch-response"
    };
    Ok(bundle(kind, &[], &rendered, None))
}

/// The resource a PUT, PATCH or DELETE entry acts on: its URL's id, or for `Type?criteria`
/// the one current match (none: `None`; several: 412), found inside `tx` so that writers with
/// the same criteria wait for each other.
async fn resolve_target(ehr: &Ehr, tx: &mut Tx, entry: &Entry) -> Result<Option<String>, EhrError> {
    match (&entry.criteria, entry.verb) {
        (Some(criteria), Verb::Put | Verb::Patch | Verb::Delete) => {
            Ok(ehr.store.find_match_in(tx, criteria).await?.map(|v| v.id))
        }
        _ => Ok(entry.id.clone()),
    }
}

/// The id a PUT entry writes: its target, else (a conditional update without a match) the
/// resource's own id, else a new one.
fn put_id(entry: &Entry, target: Option<String>) -> String {
    target
        .or_else(|| {
            let object: RawObject = serde_json::from_str(entry.resource.as_deref()?).ok()?;
            serde_json::from_str::<String>(object.get("id")?.get()).ok()
        })
        .unwrap_or_else(crate::store::new_id)
}

/// An entry's resource parsed, validated and its search index extracted, before any
/// transaction: none of it needs the database, and done while holding the writer (SQLite has
/// one) it would keep every other write waiting. Only for entries whose resource is known
/// before the transaction starts: POST, and PUT to a URL id. `None` when the entry is another
/// kind or its resource is refused (it is then checked again inside, where the refusal is
/// reported against its entry).
fn prepare(ehr: &Ehr, entry: &Entry) -> Option<IncomingResource> {
    let text = entry.resource.as_deref()?;
    let resource = match (entry.verb, &entry.criteria, &entry.id) {
        (Verb::Post, _, _) => ehr.accept(text.as_bytes(), entry.resource_type, None),
        (Verb::Put, None, Some(id)) => ehr.accept(text.as_bytes(), entry.resource_type, Some(id)),
        _ => return None,
    }
    .ok()?;
    resource.prepare_index();
    Some(resource)
}

async fn run_transaction(
    ehr: &Ehr,
    entries: &[Entry],
) -> Result<Vec<Result<Outcome, ApiError>>, BundleError> {
    let mut prepared: Vec<Option<IncomingResource>> =
        entries.iter().map(|entry| prepare(ehr, entry)).collect();
    let mut tx = ehr.store.begin().await?;
    let mut outcomes: Vec<Option<Outcome>> = entries.iter().map(|_| None).collect();
    let at = |index: usize| move |error: EhrError| BundleError::Entry { index, error };

    // What each PUT, PATCH and DELETE acts on, conditional URLs resolved first.
    let mut targets: Vec<Option<String>> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let target = resolve_target(ehr, &mut tx, entry).await.map_err(at(i))?;
        targets.push(match entry.verb {
            Verb::Put => Some(put_id(entry, target)),
            _ => target,
        });
    }
    // The same resource may not be written twice in one transaction.
    let mut touched: HashMap<(ResourceType, &str), usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if let (Verb::Put | Verb::Patch | Verb::Delete, Some(id)) =
            (entry.verb, targets[i].as_deref())
            && let Some(first) = touched.insert((entry.resource_type, id), i)
        {
            return Err(at(i)(EhrError::Invalid {
                message: format!(
                    "{}/{id} is also written by entry {first}; a transaction writes each resource once",
                    entry.resource_type
                ),
                expression: None,
            }));
        }
    }
    for (i, entry) in entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.verb == Verb::Delete)
    {
        outcomes[i] = Some(
            delete(ehr, &mut tx, entry, targets[i].as_deref())
                .await
                .map_err(at(i))?,
        );
    }
    // Give every POST its id (or its existing match) before anything refers to it.
    let mut map: HashMap<String, String> = HashMap::new();
    let mut assigned: Vec<Option<String>> = entries.iter().map(|_| None).collect();
    for (i, entry) in entries.iter().enumerate() {
        let target = match entry.verb {
            Verb::Post => {
                let existing = match &entry.if_none_exist {
                    Some(criteria) => ehr
                        .store
                        .find_match_in(&mut tx, criteria)
                        .await
                        .map_err(at(i))?,
                    None => None,
                };
                match existing {
                    Some(version) => {
                        let target = format!("{}/{}", entry.resource_type, version.id);
                        outcomes[i] = Some(Outcome::Existing(version));
                        target
                    }
                    None => {
                        let id = crate::store::new_id();
                        assigned[i] = Some(id.clone());
                        format!("{}/{id}", entry.resource_type)
                    }
                }
            }
            Verb::Put | Verb::Patch => match &targets[i] {
                Some(id) => format!("{}/{id}", entry.resource_type),
                None => continue,
            },
            _ => continue,
        };
        if let Some(full_url) = &entry.full_url {
            map.insert(full_url.clone(), target);
        }
    }
    // What the PUT entries replace, read (and locked) one statement per resource type.
    let mut current: HashMap<ResourceType, HashMap<String, Version>> = HashMap::new();
    let mut puts: HashMap<ResourceType, Vec<&str>> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if let (Verb::Put, Some(id)) = (entry.verb, targets[i].as_deref()) {
            puts.entry(entry.resource_type).or_default().push(id);
        }
    }
    for (rt, ids) in puts {
        let found = ehr.store.read_many_for_update(&mut tx, rt, &ids).await?;
        current.insert(rt, found);
    }
    for verbs in [&[Verb::Post][..], &[Verb::Put, Verb::Patch]] {
        let pending: Vec<usize> = (0..entries.len())
            .filter(|&i| verbs.contains(&entries[i].verb) && outcomes[i].is_none())
            .collect();
        for i in pending {
            let entry = &entries[i];
            if entry.verb == Verb::Patch {
                outcomes[i] = Some(
                    patch(ehr, &mut tx, entry, targets[i].as_deref())
                        .await
                        .map_err(at(i))?,
                );
                continue;
            }
            let text = rewrite(entry.resource.as_deref().unwrap_or_default(), &map);
            // A Bundle being stored (a document, say) resolves its own urn:uuid references.
            let stored_bundle = entry.resource_type.as_str() == "Bundle";
            if let Some(reference) = unresolved_reference(&text).filter(|_| !stored_bundle) {
                return Err(at(i)(EhrError::Invalid {
                    message: format!("reference {reference:?} matches no fullUrl in this Bundle"),
                    expression: None,
                }));
            }
            let id = match entry.verb {
                Verb::Put => targets[i].clone(),
                _ => assigned[i].clone(),
            };
            // What was prepared holds when no reference of the resource was rewritten.
            let ready = prepared[i]
                .take()
                .filter(|_| Some(text.as_str()) == entry.resource.as_deref());
            let replaced = match entry.verb {
                Verb::Put => Some(id.as_deref().and_then(|id| {
                    current
                        .get_mut(&entry.resource_type)
                        .and_then(|found| found.remove(id))
                })),
                _ => None,
            };
            outcomes[i] = Some(
                write(
                    ehr,
                    &mut tx,
                    entry,
                    &text,
                    None,
                    id,
                    Known { ready, replaced },
                )
                .await
                .map_err(at(i))?,
            );
        }
    }
    for (i, entry) in entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.verb == Verb::Get)
    {
        outcomes[i] = Some(read(ehr, &mut tx, entry).await.map_err(at(i))?);
    }
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .map(|o| Ok(o.expect("every entry ran")))
        .collect())
}

async fn run_batch(
    ehr: &Ehr,
    entries: Vec<Result<Entry, EhrError>>,
) -> Vec<Result<Outcome, ApiError>> {
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        let outcome = match entry {
            Ok(entry) => batch_entry(ehr, &entry).await,
            Err(error) => Err(error),
        };
        outcomes.push(outcome.map_err(ApiError::from));
    }
    outcomes
}

async fn batch_entry(ehr: &Ehr, entry: &Entry) -> Result<Outcome, EhrError> {
    let mut tx = ehr.store.begin().await?;
    let target = resolve_target(ehr, &mut tx, entry).await?;
    let outcome = match entry.verb {
        Verb::Delete => delete(ehr, &mut tx, entry, target.as_deref()).await?,
        Verb::Get => read(ehr, &mut tx, entry).await?,
        Verb::Patch => patch(ehr, &mut tx, entry, target.as_deref()).await?,
        Verb::Put => {
            let text = entry.resource.as_deref().unwrap_or_default();
            let id = put_id(entry, target);
            write(ehr, &mut tx, entry, text, None, Some(id), Known::default()).await?
        }
        Verb::Post => {
            let text = entry.resource.as_deref().unwrap_or_default();
            write(
                ehr,
                &mut tx,
                entry,
                text,
                entry.if_none_exist.as_ref(),
                None,
                Known::default(),
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// `PUT /fhir/{type}?criteria`: updates the one match, or creates the resource when nothing
/// matches; several matches are refused (412). Answers the version and whether it was created.
pub async fn conditional_update(
    ehr: &Ehr,
    rt: ResourceType,
    criteria: Criteria,
    body: &[u8],
    if_match: Option<i64>,
) -> Result<(Version, bool), EhrError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("the body is not UTF-8"))?;
    let entry = conditional_entry(Verb::Put, rt, criteria, Some(text.to_string()), if_match);
    match batch_entry(ehr, &entry).await? {
        Outcome::Updated(version, created) => Ok((version, created)),
        _ => unreachable!("a PUT entry updates"),
    }
}

/// `DELETE /fhir/{type}?criteria`: deletes the one match; nothing matching is not an error,
/// several are (412). Answers the deleted version, if one was.
pub async fn conditional_delete(
    ehr: &Ehr,
    rt: ResourceType,
    criteria: Criteria,
    if_match: Option<i64>,
) -> Result<Option<i64>, EhrError> {
    let entry = conditional_entry(Verb::Delete, rt, criteria, None, if_match);
    match batch_entry(ehr, &entry).await? {
        Outcome::Deleted(version) => Ok(version),
        _ => unreachable!("a DELETE entry deletes"),
    }
}

fn conditional_entry(
    verb: Verb,
    resource_type: ResourceType,
    criteria: Criteria,
    resource: Option<String>,
    if_match: Option<i64>,
) -> Entry {
    Entry {
        full_url: None,
        verb,
        resource_type,
        id: None,
        criteria: Some(criteria),
        search: None,
        version: None,
        resource,
        patch: None,
        if_none_exist: None,
        if_match,
    }
}

/// Writes a POST or PUT entry inside `tx`: the resource is checked against the entry's URL and
/// validated like any write, then created (with `id` when one was assigned) or updated (`id`
/// is the PUT's target). A conditional update's resource may leave its id out.
/// What a Bundle already knows of an entry it writes.
#[derive(Default)]
struct Known {
    /// The resource parsed and checked before references were rewritten (still valid when
    /// none was).
    ready: Option<IncomingResource>,
    /// For a PUT: the current version it replaces (`Some(None)`: none), read in advance.
    replaced: Option<Option<Version>>,
}

/// Writes a POST or PUT entry's resource (`text`), or `known.ready` — the same resource
/// already accepted, when it is given.
async fn write(
    ehr: &Ehr,
    tx: &mut Tx,
    entry: &Entry,
    text: &str,
    condition: Option<&Criteria>,
    id: Option<String>,
    known: Known,
) -> Result<Outcome, EhrError> {
    let Known { ready, replaced } = known;
    if entry.verb != Verb::Put {
        let resource = match ready {
            Some(resource) => resource,
            None => ehr.accept(text.as_bytes(), entry.resource_type, None)?,
        };
        return Ok(
            match ehr.store.create_in(tx, &resource, condition, id).await? {
                Created::New(v) => Outcome::Created(v),
                Created::Existing(v) => Outcome::Existing(v),
            },
        );
    }
    let target = id.unwrap_or_default();
    let resource = if entry.criteria.is_some() {
        let resource = ehr.accept(text.as_bytes(), entry.resource_type, None)?;
        if resource.id.as_deref().is_some_and(|own| own != target) {
            return Err(EhrError::IdMismatch);
        }
        resource
    } else {
        match ready.filter(|_| entry.id.as_deref() == Some(target.as_str())) {
            Some(resource) => resource,
            None => ehr.accept(text.as_bytes(), entry.resource_type, Some(&target))?,
        }
    };
    let updated = match replaced {
        Some(current) => {
            ehr.store
                .update_from(
                    tx,
                    entry.resource_type,
                    &target,
                    &resource,
                    entry.if_match,
                    current,
                )
                .await?
        }
        None => {
            ehr.store
                .update_in(tx, entry.resource_type, &target, &resource, entry.if_match)
                .await?
        }
    };
    Ok(Outcome::Updated(updated.version, updated.created))
}

/// A PATCH entry: the current version read inside `tx`, patched, checked, written.
async fn patch(
    ehr: &Ehr,
    tx: &mut Tx,
    entry: &Entry,
    target: Option<&str>,
) -> Result<Outcome, EhrError> {
    let rt = entry.resource_type;
    let not_found = || EhrError::NotFound {
        resource_type: rt.as_str(),
        id: target.unwrap_or("(no match)").to_string(),
    };
    let id = target.ok_or_else(not_found)?;
    let current = ehr.store.read_in(tx, rt, id).await?.ok_or_else(not_found)?;
    if current.deleted {
        return Err(EhrError::Gone {
            resource_type: rt.as_str(),
            id: id.to_string(),
            version: current.version,
        });
    }
    let document = entry.patch.as_ref().ok_or(EhrError::PatchFormat)?;
    let resource = ehr.patched(rt, id, &current.content, document)?;
    let expected = entry.if_match.or(Some(current.version));
    let updated = ehr.store.update_in(tx, rt, id, &resource, expected).await?;
    Ok(Outcome::Updated(updated.version, false))
}

async fn delete(
    ehr: &Ehr,
    tx: &mut Tx,
    entry: &Entry,
    target: Option<&str>,
) -> Result<Outcome, EhrError> {
    // A conditional delete that matches nothing has nothing to do.
    let Some(id) = target else {
        return Ok(Outcome::Deleted(None));
    };
    Ok(
        match ehr
            .store
            .delete_in(tx, entry.resource_type, id, entry.if_match)
            .await?
        {
            Deleted::Now(v) => Outcome::Deleted(Some(v.version)),
            Deleted::Already => Outcome::Deleted(None),
        },
    )
}

async fn read(ehr: &Ehr, tx: &mut Tx, entry: &Entry) -> Result<Outcome, EhrError> {
    if let Some(request) = &entry.search {
        return search(ehr, tx, request).await;
    }
    let id = entry.id.clone().unwrap_or_default();
    let rt = entry.resource_type.as_str();
    let version = match entry.version {
        None => ehr.store.read_in(tx, entry.resource_type, &id).await?,
        Some(v) => ehr.store.vread(entry.resource_type, &id, v).await?,
    };
    let version = version.ok_or_else(|| EhrError::NotFound {
        resource_type: rt,
        id: id.clone(),
    })?;
    if version.deleted {
        return Err(EhrError::Gone {
            resource_type: rt,
            id,
            version: version.version,
        });
    }
    crate::audit::note_resource(crate::store::versioned(&version));
    Ok(Outcome::Read(version))
}

/// A GET entry with a query: the first page of matches as a searchset Bundle, seen from
/// inside the transaction.
async fn search(ehr: &Ehr, tx: &mut Tx, request: &SearchRequest) -> Result<Outcome, EhrError> {
    let count = ehr.fhir.default_count as usize;
    let found = ehr.store.search_page_in(tx, request, count).await?;
    crate::audit::note_results(found.iter().map(|(t, id, _)| (t.as_str(), id.as_str())));
    let rt = request.resource_type;
    let entries: Vec<String> = found
        .iter()
        .map(|(_, id, content)| {
            format!(
                "{{\"fullUrl\":{},\"resource\":{content},\"search\":{{\"mode\":\"match\"}}}}",
                json::string(&format!("{rt}/{id}")),
            )
        })
        .collect();
    Ok(Outcome::Searched(bundle("searchset", &[], &entries, None)))
}

fn render(base: &str, outcome: &Result<Outcome, ApiError>) -> String {
    let response = |status: &str, v: Option<&Version>, location: bool| {
        let mut fields = vec![format!("\"status\":{}", json::string(status))];
        if let Some(v) = v {
            if location {
                fields.push(format!(
                    "\"location\":{}",
                    json::string(&format!(
                        "{base}/{}/{}/_history/{}",
                        v.resource_type, v.id, v.version
                    ))
                ));
            }
            fields.push(format!("\"etag\":{}", json::string(&etag(v.version))));
            fields.push(format!(
                "\"lastModified\":{}",
                json::string(&v.last_updated_rfc3339())
            ));
        }
        format!("{{{}}}", fields.join(","))
    };
    let with_resource = |v: &Version, response: String| {
        format!(
            "{{\"fullUrl\":{},\"resource\":{},\"response\":{response}}}",
            json::string(&format!("{base}/{}/{}", v.resource_type, v.id)),
            v.content
        )
    };
    match outcome {
        Ok(Outcome::Created(v)) => with_resource(v, response("201 Created", Some(v), true)),
        Ok(Outcome::Existing(v)) => with_resource(v, response("200 OK", Some(v), true)),
        Ok(Outcome::Updated(v, created)) => with_resource(
            v,
            response(
                if *created { "201 Created" } else { "200 OK" },
                Some(v),
                true,
            ),
        ),
        Ok(Outcome::Read(v)) => with_resource(v, response("200 OK", Some(v), false)),
        Ok(Outcome::Searched(bundle)) => {
            format!("{{\"resource\":{bundle},\"response\":{{\"status\":\"200 OK\"}}}}")
        }
        Ok(Outcome::Deleted(version)) => {
            let etag = version
                .map(|n| format!(",\"etag\":{}", json::string(&etag(n))))
                .unwrap_or_default();
            format!("{{\"response\":{{\"status\":\"204 No Content\"{etag}}}}}")
        }
        Err(error) => {
            let status = format!(
                "{} {}",
                error.status.as_u16(),
                error.status.canonical_reason().unwrap_or("")
            );
            let issues = if error.status.is_server_error() {
                vec![OutcomeIssue::error(IssueCode::Exception, "internal error")]
            } else {
                error.issues.clone()
            };
            format!(
                "{{\"response\":{{\"status\":{},\"outcome\":{}}}}}",
                json::string(status.trim()),
                OperationOutcome::new(issues).to_json()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reference_values_change_and_separators_stay() {
        let map: HashMap<String, String> =
            [("urn:uuid:a".to_string(), "Patient/1".to_string())].into();
        let text = r#"{"subject":{"reference" : "urn:uuid:a"},"identifier":{"value":"urn:uuid:a"},"note":"\"reference\": \"urn:uuid:a\"","x":{"reference":"urn:uuid:b"}}"#;
        assert_eq!(
            rewrite(text, &map),
            r#"{"subject":{"reference" : "Patient/1"},"identifier":{"value":"urn:uuid:a"},"note":"\"reference\": \"urn:uuid:a\"","x":{"reference":"urn:uuid:b"}}"#
        );
    }
}
