//! Searches (type, compartment, `POST _search`), histories and `$reindex`: the handlers
//! that answer with Bundles, and what they share.

use super::*;

/// Parameters that only shape the response and may accompany any query.
pub(super) const RESULT_PARAMS: &[&str] = &["_format", "_pretty", "_summary", "_elements"];

pub(super) fn parse_count(ehr: &Ehr, params: &[(String, String)]) -> Result<u32, EhrError> {
    match param(params, "_count") {
        None => Ok(ehr.fhir.default_count),
        Some(value) => value
            .parse::<u32>()
            .map(|n| n.clamp(1, ehr.fhir.max_count))
            .map_err(|_| EhrError::BadParameter {
                name: "_count",
                message: "must be a whole number".into(),
            }),
    }
}

/// `_since`: an instant, a dateTime with a zone, or a date (midnight UTC).
pub(super) fn parse_since(value: &str) -> Result<i64, EhrError> {
    use time::format_description::well_known::Rfc3339;
    let bad = || EhrError::BadParameter {
        name: "_since",
        message: "must be an instant such as 2026-01-31T08:00:00Z".into(),
    };
    let t = match time::OffsetDateTime::parse(value, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let date = time::Date::parse(
                value,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map_err(|_| bad())?;
            date.midnight().assume_utc()
        }
    };
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| bad())
}

pub(super) async fn history(
    ehr: &Ehr,
    scope: HistoryScope,
    path: &str,
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<Response> {
    let params = params(query);
    for (name, _) in &params {
        if !["_count", "_since", "_page_token", "_format", "_pretty"].contains(&name.as_str()) {
            return Err(EhrError::BadParameter {
                name: "history",
                message: format!(
                    "parameter {:?} is not supported (use _count, _since)",
                    name.chars().take(64).collect::<String>()
                ),
            }
            .into());
        }
    }
    let out = output(&params, headers, false)?;
    let count = parse_count(ehr, &params)?;
    let since = param(&params, "_since").map(parse_since).transpose()?;
    let before = param(&params, "_page_token")
        .map(|t| {
            t.parse::<i64>().map_err(|_| EhrError::BadParameter {
                name: "_page_token",
                message: "not a page token from this server".into(),
            })
        })
        .transpose()?;
    let page = ehr.store.history(&scope, since, before, count).await?;
    crate::audit::note_results(
        page.entries
            .iter()
            .map(|v| (v.resource_type.as_str(), v.id.as_str())),
    );
    let base = base_url(ehr, headers);
    let entries: Vec<String> = page
        .entries
        .iter()
        .map(|v| history_entry(&base, v))
        .collect();
    let mut links = vec![link(
        &format!("{base}{path}{}", query_string(&params, None)),
        "self",
    )];
    if let Some(next) = page.next {
        let token = next.to_string();
        links.push(link(
            &format!(
                "{base}{path}{}",
                query_string(&params, Some(("_page_token", &token)))
            ),
            "next",
        ));
    }
    Ok(body_response(
        StatusCode::OK,
        bundle("history", &links, &entries, None),
        out.pretty,
    ))
}

pub(super) async fn history_system(
    State(ehr): State<Arc<Ehr>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    history(&ehr, HistoryScope::System, "/_history", query, &headers).await
}

pub(super) async fn history_type(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    history(
        &ehr,
        HistoryScope::Type(rt),
        &format!("/{rt}/_history"),
        query,
        &headers,
    )
    .await
}

pub(super) async fn history_instance(
    State(ehr): State<Arc<Ehr>>,
    Path((type_name, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    check_id(&id)?;
    let path = format!("/{rt}/{id}/_history");
    history(&ehr, HistoryScope::Instance(rt, id), &path, query, &headers).await
}

/// `GET /fhir/Patient/{id}/{type}`: a search inside a patient's compartment.
pub(super) async fn compartment_search(
    State(ehr): State<Arc<Ehr>>,
    Path((compartment, id, member)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let compartment = resource_type(&ehr, &compartment)?;
    check_id(&id)?;
    let rt = resource_type(&ehr, &member)?;
    if compartment.as_str() != "Patient" {
        return Err(EhrError::BadParameter {
            name: "compartment",
            message: "only the Patient compartment is defined".into(),
        }
        .into());
    }
    search_within(&ehr, rt, params(query), &headers, Some((compartment, id))).await
}

pub(super) async fn search(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    own: Option<Extension<Narrowed>>,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    search_answer(&ehr, rt, params(query), &headers, own).await
}

/// `POST /fhir/$reindex[?_type=Type]`: starts rebuilding the search index in the background;
/// 202 with the progress, or 409 while a job runs.
pub(super) async fn reindex_start(
    State(ehr): State<Arc<Ehr>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let params = params(query);
    let out = output(&params, &headers, false)?;
    let only = match param(&params, "_type") {
        Some(t) => Some(resource_type(&ehr, t)?.as_str().to_string()),
        None => None,
    };
    if !crate::reindex::Reindex::start(&ehr, only) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            sen_platform::IssueCode::Conflict,
            "a reindex job is already running; GET /fhir/$reindex shows its progress",
        ));
    }
    let mut response = body_response(
        StatusCode::ACCEPTED,
        ehr.reindex.progress().to_parameters().to_string(),
        out.pretty,
    );
    response.headers_mut().insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_static("/fhir/$reindex"),
    );
    Ok(response)
}

/// `GET /fhir/$reindex[?wait=seconds]`: the job's progress, optionally once it has ended.
pub(super) async fn reindex_status(
    State(ehr): State<Arc<Ehr>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let params = params(query);
    let out = output(&params, &headers, false)?;
    if let Some(wait) = param(&params, "wait") {
        let seconds: u64 = wait.parse().map_err(|_| EhrError::BadParameter {
            name: "wait",
            message: "seconds to wait, a whole number up to 60".into(),
        })?;
        ehr.reindex
            .wait(std::time::Duration::from_secs(seconds.min(60)))
            .await;
    }
    Ok(body_response(
        StatusCode::OK,
        ehr.reindex.progress().to_parameters().to_string(),
        out.pretty,
    ))
}

/// `POST /fhir/{type}/_search`: the parameters in a form body (and the query string).
pub(super) async fn search_post(
    State(ehr): State<Arc<Ehr>>,
    Path(type_name): Path<String>,
    RawQuery(query): RawQuery,
    own: Option<Extension<Narrowed>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let rt = resource_type(&ehr, &type_name)?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form && !body.is_empty() {
        return Err(EhrError::BadParameter {
            name: "Content-Type",
            message: "POST _search takes application/x-www-form-urlencoded parameters".into(),
        }
        .into());
    }
    let mut all = params(query);
    all.extend(form_urlencoded::parse(&body).into_owned());
    search_answer(&ehr, rt, all, &headers, own).await
}

/// Whether the client asked for strict handling of unknown search parameters.
pub(super) fn strict_handling(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim() == "handling=strict")
}

/// A search of `rt`; for a patient (`own`), of its own records only: its Patient resource,
/// or the members of its compartment.
pub(super) async fn search_answer(
    ehr: &Ehr,
    rt: ResourceType,
    mut params: Vec<(String, String)>,
    headers: &HeaderMap,
    own: Option<Extension<Narrowed>>,
) -> Result<Response> {
    let compartment = match own {
        Some(Extension(Narrowed::Patient(patient))) if rt.as_str() == "Patient" => {
            params.push(("_id".into(), patient));
            None
        }
        Some(Extension(Narrowed::Patient(patient))) => {
            Some((resource_type(ehr, "Patient")?, patient))
        }
        Some(Extension(Narrowed::Also(extra))) => {
            params.extend(extra);
            None
        }
        None => None,
    };
    search_within(ehr, rt, params, headers, compartment).await
}

/// A search, inside a compartment when one is given.
pub(super) async fn search_within(
    ehr: &Ehr,
    rt: ResourceType,
    params: Vec<(String, String)>,
    headers: &HeaderMap,
    compartment: Option<(ResourceType, String)>,
) -> Result<Response> {
    let out = output(&params, headers, true)?;
    let count = parse_count(ehr, &params)?;
    let mut request = SearchRequest::parse(rt, &params, strict_handling(headers))?;
    crate::audit::note_query(rt.as_str(), &params);
    let complete = catch_up_audit(ehr, rt).await?;
    if let Some((compartment, id)) = &compartment {
        request.in_compartment(*compartment, id)?;
    }
    let start = match (
        param(&params, "_page_token"),
        param(&params, "_page_offset"),
    ) {
        (None, None) => PageStart::First,
        (Some(after), None) if request.sort.is_empty() && is_valid_id(after) => {
            PageStart::AfterId(after.to_string())
        }
        (Some(token), None) if !request.sort.is_empty() => PageStart::After(
            Position::from_token(token, &request.sort_kinds()).ok_or(EhrError::BadParameter {
                name: "_page_token",
                message: "not a page token of this search's sort order".into(),
            })?,
        ),
        // `_page_offset` was the link of sorted pages before they kept their place.
        (_, Some(_)) => {
            return Err(EhrError::BadParameter {
                name: "_page_offset",
                message: "pages by offset are no longer served; start the search again".into(),
            }
            .into());
        }
        _ => {
            return Err(EhrError::BadParameter {
                name: "_page_token",
                message: "not a page token from this server; start the search again".into(),
            }
            .into());
        }
    };
    let base = base_url(ehr, headers);
    // Links stay inside the compartment the search was asked in.
    let path = match &compartment {
        Some((c, id)) => format!("{base}/{c}/{id}/{rt}"),
        None => format!("{base}/{rt}"),
    };
    // `_count=0` asks for the total alone, like `_summary=count` (R4 search, 3.1.1.5.4).
    let count_only = out.filter == ElementFilter::Summary(Summary::Count)
        || param(&params, "_count") == Some("0");
    let mut links = vec![link(
        &format!("{path}{}", query_string(&params, None)),
        "self",
    )];
    let mut entries: Vec<String> = Vec::new();
    // What the page shows of the total: all of it, or (first pages with a next link) a floor.
    let mut whole = None;
    let mut at_least = 0;
    if !count_only {
        let mut page = ehr
            .store
            .search_page(&request, &start, count as usize + 1)
            .await?;
        if page.found.len() > count as usize {
            page.found.truncate(count as usize);
            let last = page.found.len() - 1;
            let token = if request.sort.is_empty() {
                page.found[last].1.clone()
            } else {
                page.position(last).map(|p| p.token()).unwrap_or_default()
            };
            links.push(link(
                &format!(
                    "{path}{}",
                    query_string(&params, Some(("_page_token", &token)))
                ),
                "next",
            ));
            if matches!(start, PageStart::First) {
                at_least = count as usize + 1;
            }
        } else if matches!(start, PageStart::First) {
            // The first page holds every match: that is the total, exactly, without a count.
            whole = Some(page.found.len());
        }
        let found = page.found;
        let included = ehr
            .store
            .search_includes(&found, &request.includes, &request.revincludes)
            .await?;
        let entry = |(t, id, content): &Found, mode: &str| {
            format!(
                "{{\"fullUrl\":{},\"resource\":{},\"search\":{{\"mode\":\"{mode}\"}}}}",
                json::string(&format!("{base}/{t}/{id}")),
                out.filter.apply(content, ehr.defs)
            )
        };
        crate::audit::note_results(
            found
                .iter()
                .chain(&included)
                .map(|(t, id, _)| (t.as_str(), id.as_str())),
        );
        entries.extend(found.iter().map(|f| entry(f, "match")));
        entries.extend(included.iter().map(|f| entry(f, "include")));
    }
    let total = match (whole, request.total) {
        (Some(n), _) => Some(n),
        (None, Total::Estimate) if !count_only => {
            let estimate = ehr.store.search_estimate(&request).await?;
            Some(usize::try_from(estimate).unwrap_or(0).max(at_least))
        }
        (None, Total::None) if !count_only => None,
        (None, _) => Some(ehr.store.search_count(&request).await? as usize),
    };
    if !complete {
        // Nothing is lost (every access is in the outbox); it is not searchable yet.
        entries.push(outcome_entry(OutcomeIssue::warning(
            sen_platform::IssueCode::Incomplete,
            "some accesses recorded before this search are not AuditEvents yet and are missing from it; repeat the search shortly",
        )));
    }
    if !request.ignored.is_empty() {
        entries.push(outcome_entry(OutcomeIssue::warning(
            sen_platform::IssueCode::NotSupported,
            format!(
                "ignored parameters that are not search parameters of {rt}: {} (send Prefer: handling=strict to have them refused)",
                request.ignored.join(", ")
            ),
        )));
    }
    Ok(body_response(
        StatusCode::OK,
        bundle("searchset", &links, &entries, total),
        out.pretty,
    ))
}

/// A searchset entry holding an OperationOutcome of one issue (search mode `outcome`).
fn outcome_entry(issue: OutcomeIssue) -> String {
    format!(
        "{{\"resource\":{},\"search\":{{\"mode\":\"outcome\"}}}}",
        OperationOutcome::new(vec![issue]).to_json()
    )
}

/// Before AuditEvents are searched or read, the relay turns every access recorded so far into
/// one, so that what was answered before shows (see [`crate::audit`]). Answers false when it
/// could not within `fhir.audit_catch_up_ms`: the AuditEvents do not show every access yet.
pub(super) async fn catch_up_audit(ehr: &Ehr, rt: ResourceType) -> Result<bool> {
    if rt.as_str() == "AuditEvent" && !ehr.audit_catch_up(ehr.audit.catch_up).await? {
        tracing::warn!("audit relay did not catch up before an AuditEvent search");
        return Ok(false);
    }
    Ok(true)
}
