//! Audit (issue 5): every access under `/fhir` with a valid token leaves exactly one
//! AuditEvent saying who, from where, what, which patient, when and how it ended; writes and
//! their record commit together; a read whose access cannot be recorded shows nothing; a
//! patient lists who accessed its records.

use base64::Engine;
use reqwest::{Method, StatusCode};
use sen_platform::auth::Role;
use serde_json::{Value, json};

use crate::{
    patient,
    support::{TestApp, status_as},
};

/// Every AuditEvent a search finds, following its `next` links (system token).
pub async fn audit_events(app: &TestApp, first: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut path = Some(first.to_string());
    while let Some(p) = path.take() {
        let response = app.get(&p).await;
        assert_eq!(response.status(), StatusCode::OK, "{p}");
        let page: Value = response.json().await.unwrap();
        events.extend(
            page["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone()),
        );
        path = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .and_then(|u| u.find("/fhir").map(|i| u[i..].to_string()));
    }
    events
}

/// Runs SQL straight on the test's database (outside the server).
async fn execute(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sql).execute(app.db.writer()).await.unwrap();
}

/// The `X-Request-Id` an AuditEvent records.
pub fn request_id(event: &Value) -> Option<String> {
    event["entity"]
        .as_array()?
        .iter()
        .find(|e| e["what"]["identifier"]["system"] == "urn:sen:request-id")
        .and_then(|e| e["what"]["identifier"]["value"].as_str())
        .map(str::to_string)
}

/// The references an AuditEvent's entities name.
fn entities(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
        .collect()
}

/// The one AuditEvent of `request_id` among `events`.
fn of_request<'a>(events: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| self::request_id(e).as_deref() == Some(request_id))
        .collect();
    assert_eq!(found.len(), 1, "one AuditEvent for {request_id}");
    found[0]
}

fn observation(patient: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

async fn send(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    request_id: &str,
    body: Option<&Value>,
) -> StatusCode {
    status_as(
        app,
        token,
        method,
        path,
        &[("x-request-id", request_id)],
        body,
    )
    .await
}

/// Reads, searches, writes and refusals: one AuditEvent each, with the agent, its address,
/// the interaction and outcome, the resource version, the query and the patients concerned.
async fn every_access_is_recorded_with_who_what_which_patient_and_outcome(app: TestApp) {
    let (p, _) = app.create(&patient("087090000301")).await;
    let (q, _) = app.create(&patient("087090000302")).await;
    let system = app.token(Role::System, None, None);
    let created = app
        .request(Method::POST, "/fhir/Observation")
        .header("x-request-id", "audit-create")
        .header("content-type", "application/fhir+json")
        .body(observation(&p).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let o = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = app.token(Role::Patient, Some(&p), None);
    let other = app.token(Role::Patient, Some(&q), None);
    let ops = app.token(Role::OpsViewer, None, None);
    let get = Method::GET;
    let cases = [
        (&own, format!("/fhir/Observation/{o}"), "audit-read", 200),
        (
            &system,
            format!("/fhir/Observation?subject=Patient/{p}"),
            "audit-search",
            200,
        ),
        (
            &system,
            "/fhir/Observation/missing".into(),
            "audit-missing",
            404,
        ),
        (
            &other,
            format!("/fhir/Observation/{o}"),
            "audit-refused",
            404,
        ),
        (&ops, format!("/fhir/Patient/{p}"), "audit-ops", 403),
    ];
    for (token, path, id, status) in &cases {
        let answered = send(&app, token, get.clone(), path, id, None).await;
        assert_eq!(answered.as_u16(), *status, "{path}");
    }
    // A conditional create that finds its match writes nothing but shows the match.
    let matched = app
        .request(Method::POST, "/fhir/Observation")
        .header("x-request-id", "audit-matched")
        .header("if-none-exist", format!("subject=Patient/{p}"))
        .header("content-type", "application/fhir+json")
        .body(observation(&p).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(matched.status(), StatusCode::OK);
    let events = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    let shown = entities(of_request(&events, "audit-matched"));
    assert!(
        shown.contains(&format!("Observation/{o}/_history/1")),
        "{shown:?}"
    );
    assert!(shown.contains(&format!("Patient/{p}")), "{shown:?}");

    let create = of_request(&events, "audit-create");
    assert_eq!(create["action"], "C");
    assert_eq!(create["subtype"][0]["code"], "create");
    assert_eq!(create["outcome"], "0");
    let named = entities(create);
    assert!(
        named.contains(&format!("Observation/{o}/_history/1")),
        "{named:?}"
    );
    assert!(named.contains(&format!("Patient/{p}")), "{named:?}");

    let read = of_request(&events, "audit-read");
    assert_eq!(read["type"]["code"], "rest");
    assert_eq!(read["subtype"][0]["code"], "read");
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["purposeOfEvent"][0]["coding"][0]["code"], "PATRQT");
    let agent = &read["agent"][0];
    assert_eq!(agent["who"]["reference"], format!("Patient/{p}"));
    assert_eq!(agent["role"][0]["text"], "patient");
    assert_eq!(agent["network"]["address"], "127.0.0.1");
    assert_eq!(agent["requestor"], true);
    let named = entities(read);
    assert!(
        named.contains(&format!("Observation/{o}/_history/1")),
        "{named:?}"
    );
    assert!(named.contains(&format!("Patient/{p}")), "{named:?}");

    let search = of_request(&events, "audit-search");
    assert_eq!(search["subtype"][0]["code"], "search-type");
    let query = search["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["query"].as_str())
        .expect("the query is recorded");
    let query = base64::engine::general_purpose::STANDARD
        .decode(query)
        .unwrap();
    assert_eq!(
        String::from_utf8(query).unwrap(),
        format!("Observation?subject=Patient%2F{p}")
    );
    assert!(entities(search).contains(&format!("Patient/{p}")));
    assert!(!entities(search).contains(&format!("Patient/{q}")));

    let missing = of_request(&events, "audit-missing");
    assert_eq!(missing["outcome"], "4");
    assert_eq!(missing["outcomeDesc"], "HTTP 404");
    assert_eq!(entities(missing), vec!["Observation/missing".to_string()]);

    // Another patient's attempt is on record for the patient whose data it was after.
    let refused = of_request(&events, "audit-refused");
    assert_eq!(refused["outcome"], "4");
    assert_eq!(
        refused["agent"][0]["who"]["reference"],
        format!("Patient/{q}")
    );
    assert!(entities(refused).contains(&format!("Patient/{p}")));

    let ops = of_request(&events, "audit-ops");
    assert_eq!(ops["outcome"], "4");
    assert_eq!(ops["outcomeDesc"], "HTTP 403");
    assert_eq!(ops["agent"][0]["role"][0]["text"], "ops-viewer");
}

/// A patient searches AuditEvents and finds the accesses to its own records only.
async fn a_patient_lists_who_accessed_its_records(app: TestApp) {
    let (p, _) = app.create(&patient("087090000311")).await;
    let (q, _) = app.create(&patient("087090000312")).await;
    let (o, _) = app.create(&observation(&p)).await;
    let system = app.token(Role::System, None, None);
    let get = Method::GET;
    let read = format!("/fhir/Observation/{o}");
    assert_eq!(
        send(&app, &system, get.clone(), &read, "read-of-p", None).await,
        200
    );
    let read = format!("/fhir/Patient/{q}");
    assert_eq!(
        send(&app, &system, get.clone(), &read, "read-of-q", None).await,
        200
    );

    let own = app.token(Role::Patient, Some(&p), None);
    let response = app
        .request_as(&own, get.clone(), "/fhir/AuditEvent?_count=1000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    let events: Vec<Value> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    let requests: Vec<String> = events.iter().filter_map(request_id).collect();
    assert!(requests.contains(&"read-of-p".to_string()), "{requests:?}");
    assert!(!requests.contains(&"read-of-q".to_string()), "{requests:?}");
    for event in &events {
        assert!(entities(event).contains(&format!("Patient/{p}")), "{event}");
    }
    let system_events = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    let of_q = of_request(&system_events, "read-of-q")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/fhir/AuditEvent/{of_q}");
    assert_eq!(
        send(&app, &own, get.clone(), &path, "peek", None).await,
        StatusCode::NOT_FOUND
    );
}

/// A transaction's writes and its reads share one AuditEvent, committed with them; a
/// transaction that fails writes nothing and is recorded as failed.
async fn a_transaction_and_its_audit_event_commit_together(app: TestApp) {
    let (p, _) = app.create(&patient("087090000321")).await;
    let system = app.token(Role::System, None, None);
    let entry =
        |o: Value| json!({"resource": o, "request": {"method": "POST", "url": "Observation"}});
    let good = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(observation(&p)), entry(observation(&p)),
        {"request": {"method": "GET", "url": format!("Patient/{p}")}}]});
    let status = send(&app, &system, Method::POST, "/fhir", "tx-good", Some(&good)).await;
    assert_eq!(status, StatusCode::OK);
    let mut broken = observation(&p);
    broken["status"] = json!("not-a-status");
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(observation(&p)), entry(broken)]});
    let rows = app.resource_rows().await;
    let status = send(&app, &system, Method::POST, "/fhir", "tx-bad", Some(&bad)).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(
        app.resource_rows().await,
        rows,
        "the failed transaction wrote nothing"
    );

    let events = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    let good = of_request(&events, "tx-good");
    assert_eq!(good["subtype"][0]["code"], "transaction");
    assert_eq!(good["action"], "C");
    assert_eq!(good["outcome"], "0");
    let named = entities(good);
    let versions = named
        .iter()
        .filter(|r| r.starts_with("Observation/") && r.ends_with("/_history/1"))
        .count();
    assert_eq!(versions, 2, "{named:?}");
    assert!(
        named.contains(&format!("Patient/{p}/_history/1")),
        "{named:?}"
    );
    let bad = of_request(&events, "tx-bad");
    assert_eq!(bad["outcome"], "4");
    assert!(
        !entities(bad).iter().any(|r| r.contains("/_history/")),
        "nothing written is named"
    );
}

/// When the access cannot be recorded, the record is not shown: 503, and none of its data.
async fn a_read_whose_access_cannot_be_recorded_shows_nothing(app: TestApp) {
    let (p, _) = app.create(&patient("087090000331")).await;
    let table = match app.db.backend() {
        sen_platform::Backend::Postgres => "ehr.audit_outbox",
        sen_platform::Backend::Sqlite => "ehr_audit_outbox",
    };
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::query(&rename(table, "audit_outbox_away"))
        .execute(app.db.writer())
        .await
        .unwrap();
    let response = app.get(&format!("/fhir/Patient/{p}")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(!body.contains("087090000331"), "{body}");
    assert!(!body.contains("Nguy"), "{body}");
    let away = match app.db.backend() {
        sen_platform::Backend::Postgres => "ehr.audit_outbox_away",
        sen_platform::Backend::Sqlite => "audit_outbox_away",
    };
    sqlx::query(&rename(away, table.trim_start_matches("ehr.")))
        .execute(app.db.writer())
        .await
        .unwrap();
    assert_eq!(
        app.get(&format!("/fhir/Patient/{p}")).await.status(),
        StatusCode::OK
    );
}

/// An outbox row relayed a second time (as an older version could leave one) adds nothing and
/// does not stop the relay: the record stays one AuditEvent and the row leaves the outbox.
async fn a_record_relayed_twice_stays_one_audit_event(app: TestApp) {
    let (p, _) = app.create(&patient("087090000341")).await;
    let postgres = app.db.backend() == sen_platform::Backend::Postgres;
    let (outbox, copy) = if postgres {
        ("ehr.audit_outbox", "ehr.outbox_copy")
    } else {
        ("ehr_audit_outbox", "outbox_copy")
    };
    let db = &app.db;
    let on = &app;
    let run = |sql: String| async move { execute(on, &sql).await };
    // Every outbox row written from now on is copied aside.
    run(format!("CREATE TABLE {copy} (records TEXT NOT NULL)")).await;
    if postgres {
        run(format!(
            "CREATE FUNCTION ehr.copy_outbox() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO {copy} VALUES (NEW.records); RETURN NEW; END $$; \
             CREATE TRIGGER copy_outbox AFTER INSERT ON {outbox} \
             FOR EACH ROW EXECUTE FUNCTION ehr.copy_outbox()"
        ))
        .await;
    } else {
        run(format!(
            "CREATE TRIGGER copy_outbox AFTER INSERT ON {outbox} \
             BEGIN INSERT INTO {copy} VALUES (NEW.records); END"
        ))
        .await;
    }
    let system = app.token(Role::System, None, None);
    let read = format!("/fhir/Patient/{p}");
    let status = send(&app, &system, Method::GET, &read, "read-twice", None).await;
    assert_eq!(status, StatusCode::OK);
    // An AuditEvent search relays every record made before it.
    let events = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    of_request(&events, "read-twice");
    if postgres {
        run(format!("DROP TRIGGER copy_outbox ON {outbox}")).await;
    } else {
        run("DROP TRIGGER copy_outbox".to_string()).await;
    }
    let copied: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {copy}"))
        .fetch_one(db.writer())
        .await
        .unwrap();
    assert!(copied > 0, "the read's record was copied");
    run(format!(
        "INSERT INTO {outbox} (records) SELECT records FROM {copy}"
    ))
    .await;

    let again = audit_events(&app, "/fhir/AuditEvent?_count=1000").await;
    of_request(&again, "read-twice");
    assert_eq!(
        again.len(),
        events.len() + 1,
        "only the first search's own access was added"
    );
    let left: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {outbox} WHERE records IN (SELECT records FROM {copy})"
    ))
    .fetch_one(db.writer())
    .await
    .unwrap();
    assert_eq!(left, 0, "the rows relayed again left the outbox");
}

/// An AuditEvent search that cannot see every access made before it says so: a warning
/// outcome in the searchset while outbox rows up to it are left (here a row no relay can read;
/// on PostgreSQL, rows another node's relay holds take the same path). Once the rows are
/// gone, the search is complete again and says nothing.
async fn an_audit_search_that_is_not_complete_says_so(app: TestApp) {
    let outbox = match app.db.backend() {
        sen_platform::Backend::Postgres => "ehr.audit_outbox",
        sen_platform::Backend::Sqlite => "ehr_audit_outbox",
    };
    let (p, _) = app.create(&patient("087090000351")).await;
    let system = app.token(Role::System, None, None);
    let status = send(
        &app,
        &system,
        Method::GET,
        &format!("/fhir/Patient/{p}"),
        "seen",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let warned = |page: &Value| {
        page["entry"].as_array().into_iter().flatten().any(|e| {
            e["search"]["mode"] == "outcome"
                && e["resource"]["issue"][0]["code"] == "incomplete"
                && e["resource"]["issue"][0]["severity"] == "warning"
        })
    };
    let search = || async {
        let response = app.get("/fhir/AuditEvent?_count=1000").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()
    };
    let complete = search().await;
    assert!(!warned(&complete), "{complete}");

    // A row this version cannot read stays in the outbox (the relay reports it).
    let bad = "not records";
    execute(
        &app,
        &format!("INSERT INTO {outbox} (records) VALUES ('{bad}')"),
    )
    .await;
    let page = search().await;
    assert!(warned(&page), "{page}");
    let events: Vec<Value> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect();
    of_request(&events, "seen");
    execute(
        &app,
        &format!("DELETE FROM {outbox} WHERE records = '{bad}'"),
    )
    .await;

    let page = search().await;
    assert!(!warned(&page), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_search_that_is_not_complete_says_so_on_sqlite() {
    an_audit_search_that_is_not_complete_says_so(TestApp::sqlite_with(short_catch_up).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_search_that_is_not_complete_says_so_on_postgres() {
    if let Some(app) = TestApp::postgres_with(short_catch_up).await {
        an_audit_search_that_is_not_complete_says_so(app).await;
    }
}

/// AuditEvent searches wait a fifth of a second for the relay instead of ten.
fn short_catch_up(config: &mut sen_platform::Config) {
    config.fhir.audit_catch_up_ms = 200;
}

on_both_backends!(
    every_access_is_recorded_with_who_what_which_patient_and_outcome,
    a_patient_lists_who_accessed_its_records,
    a_transaction_and_its_audit_event_commit_together,
    a_read_whose_access_cannot_be_recorded_shows_nothing,
    a_record_relayed_twice_stays_one_audit_event,
);
