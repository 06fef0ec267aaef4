//! The FHIR REST suite, against the real application on an ephemeral port, once on a fresh
//! SQLite file and once on a fresh PostgreSQL database (when `TEST_DATABASE_URL` is set;
//! required under `CI=true`).

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;

/// Runs each named test on both backends: `name::on_sqlite` and `name::on_postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name(super::TestApp::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if let Some(app) = super::TestApp::postgres().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    a_created_resource_reads_back_exactly_as_written,
    updates_make_versions_that_vread_and_history_return,
    update_with_a_client_id_creates_the_resource,
    a_stale_if_match_is_refused_and_writes_nothing,
    a_deleted_resource_answers_gone_but_keeps_its_history,
    conditional_create_finds_an_existing_match_instead_of_duplicating,
    history_pages_follow_next_links_and_honour_since,
    prefer_header_chooses_the_response_body,
    summary_and_elements_trim_a_read,
    formats_other_than_json_are_not_acceptable,
    bad_input_gets_a_precise_4xx_outcome_and_writes_nothing,
    every_r4_resource_type_can_be_created_and_read,
    the_capability_statement_lists_every_type_and_interaction,
    concurrent_updates_of_one_resource_lose_nothing,
    search_by_identifier_and_id_pages_by_id,
    a_server_error_shows_only_the_request_id,
    health_and_metrics_report_without_patient_data,
    no_request_of_any_shape_gets_a_server_error,
    an_update_that_changes_identifiers_moves_them_in_the_index,
);

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/national_id";

fn patient(cccd: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": cccd}],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Hoa"]}],
        "gender": "female",
        "birthDate": "1990-04-30",
        "address": [{"line": ["12 Lê Lợi"], "city": "Cao Lãnh", "state": "Đồng Tháp"}]
    })
}

async fn a_created_resource_reads_back_exactly_as_written(app: TestApp) {
    // Raw text, so the comparison sees decimals and order exactly as sent.
    let body = r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"valueQuantity":{"value":9000.00,"unit":"g","system":"http://unitsofmeasure.org","code":"g"},"extension":[{"url":"http://example.org/b","valueDecimal":1.250},{"url":"http://example.org/a","valueString":"Đường"}],"note":[{"text":"z"},{"text":"a"}]}"#;
    let created = app.post_raw("/fhir/Observation", body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let etag = created.headers()["etag"].to_str().unwrap().to_string();
    let location = created.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(etag, "W/\"1\"");
    assert!(created.headers().contains_key("last-modified"));
    let returned = created.text().await.unwrap();
    let id = serde_json::from_str::<Value>(&returned).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        location.ends_with(&format!("/fhir/Observation/{id}/_history/1")),
        "{location}"
    );

    let read = app.get(&format!("/fhir/Observation/{id}")).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["etag"], "W/\"1\"");
    assert!(
        read.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let text = read.text().await.unwrap();
    assert_eq!(text, returned);
    assert!(text.contains("\"value\":9000.00"), "{text}");
    assert!(text.contains("\"valueDecimal\":1.250"), "{text}");
    // Everything but id and meta is byte-identical to what the client sent.
    let without_server_fields = text.replacen(&format!(",\"id\":\"{id}\""), "", 1).replace(
        &format!(
            ",\"meta\":{}",
            serde_json::to_string(&serde_json::from_str::<Value>(&text).unwrap()["meta"]).unwrap()
        ),
        "",
    );
    assert_eq!(without_server_fields, body);
}

async fn updates_make_versions_that_vread_and_history_return(app: TestApp) {
    let (id, _) = app.create(&patient("087090000101")).await;
    let mut changed = patient("087090000101");
    changed["id"] = json!(id);
    changed["gender"] = json!("other");
    let updated = app.put(&format!("/fhir/Patient/{id}"), &changed).await;
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(updated.headers()["etag"], "W/\"2\"");
    let body: Value = updated.json().await.unwrap();
    assert_eq!(body["meta"]["versionId"], "2");

    let v1: Value = app
        .get(&format!("/fhir/Patient/{id}/_history/1"))
        .await
        .json()
        .await
        .unwrap();
    let v2: Value = app
        .get(&format!("/fhir/Patient/{id}/_history/2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["gender"], "female");
    assert_eq!(v2["gender"], "other");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}/_history/3"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}/_history/x"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    let history: Value = app
        .get(&format!("/fhir/Patient/{id}/_history"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["type"], "history");
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[0]["request"]["method"], "PUT");
    assert_eq!(entries[1]["request"]["method"], "POST");
    assert_eq!(entries[1]["response"]["etag"], "W/\"1\"");
}

async fn update_with_a_client_id_creates_the_resource(app: TestApp) {
    let mut body = patient("087090000102");
    body["id"] = json!("bn-cao-lanh-0001");
    let created = app.put("/fhir/Patient/bn-cao-lanh-0001", &body).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(
        created.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/fhir/Patient/bn-cao-lanh-0001/_history/1")
    );
    let again = app.put("/fhir/Patient/bn-cao-lanh-0001", &body).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["etag"], "W/\"2\"");
}

async fn a_stale_if_match_is_refused_and_writes_nothing(app: TestApp) {
    let (id, _) = app.create(&patient("087090000103")).await;
    let mut body = patient("087090000103");
    body["id"] = json!(id);
    let stale = app
        .request(reqwest::Method::PUT, &format!("/fhir/Patient/{id}"))
        .header("if-match", "W/\"7\"")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let outcome: Value = stale.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "conflict");
    assert_eq!(app.history_rows().await, 1);

    let fresh = app
        .request(reqwest::Method::PUT, &format!("/fhir/Patient/{id}"))
        .header("if-match", "W/\"1\"")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    let malformed = app
        .request(reqwest::Method::PUT, &format!("/fhir/Patient/{id}"))
        .header("if-match", "seven")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let missing = app
        .request(reqwest::Method::PUT, "/fhir/Patient/does-not-exist")
        .header("if-match", "W/\"1\"")
        .json(&json!({"resourceType":"Patient","id":"does-not-exist"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.history_rows().await, 2);
}

async fn a_deleted_resource_answers_gone_but_keeps_its_history(app: TestApp) {
    let (id, _) = app.create(&patient("087090000104")).await;
    let deleted = app
        .request(reqwest::Method::DELETE, &format!("/fhir/Patient/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(deleted.headers()["etag"], "W/\"2\"");
    let gone = app.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(gone.status(), StatusCode::GONE);
    let outcome: Value = gone.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "deleted");
    // The version before the deletion is still readable; the deletion itself is gone.
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}/_history/1"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}/_history/2"))
            .await
            .status(),
        StatusCode::GONE
    );
    let history: Value = app
        .get(&format!("/fhir/Patient/{id}/_history"))
        .await
        .json()
        .await
        .unwrap();
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    // Deleting again changes nothing; a deleted resource is not found by identifier.
    assert_eq!(
        app.request(reqwest::Method::DELETE, &format!("/fhir/Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(app.history_rows().await, 2);
    let search: Value = app
        .get("/fhir/Patient?identifier=087090000104")
        .await
        .json()
        .await
        .unwrap();
    assert!(search.get("entry").is_none(), "{search}");
    assert_eq!(
        app.request(reqwest::Method::DELETE, "/fhir/Patient/never-was")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // A new PUT brings it back as version 3.
    let mut body = patient("087090000104");
    body["id"] = json!(id);
    let back = app.put(&format!("/fhir/Patient/{id}"), &body).await;
    assert_eq!(back.status(), StatusCode::CREATED);
    assert_eq!(back.headers()["etag"], "W/\"3\"");
}

async fn conditional_create_finds_an_existing_match_instead_of_duplicating(app: TestApp) {
    let condition = format!("identifier={CCCD}|087090000105");
    let first = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", &condition)
        .json(&patient("087090000105"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", &condition)
        .json(&patient("087090000105"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        second.json::<Value>().await.unwrap()["id"],
        first_id.as_str()
    );
    assert_eq!(app.history_rows().await, 1);

    // Value only, any system; and _id.
    let by_value = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", "identifier=087090000105")
        .json(&patient("087090000105"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_value.status(), StatusCode::OK);
    let by_id = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", format!("_id={first_id}"))
        .json(&patient("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.status(), StatusCode::OK);

    // Two matches: 412, nothing written.
    app.create(&patient("087090000106")).await;
    app.create(&patient("087090000106")).await;
    let rows = app.history_rows().await;
    let ambiguous = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", "identifier=087090000106")
        .json(&patient("087090000106"))
        .send()
        .await
        .unwrap();
    assert_eq!(ambiguous.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        ambiguous.json::<Value>().await.unwrap()["issue"][0]["code"],
        "multiple-matches"
    );
    let unsupported = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", "name=Hoa")
        .json(&patient("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.history_rows().await, rows);
}

async fn history_pages_follow_next_links_and_honour_since(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let (id, _) = app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("obs {i}")}})).await;
        ids.push(id);
    }
    app.create(&patient("087090000107")).await;
    let mut seen = Vec::new();
    let mut url = format!("{}/fhir/Observation/_history?_count=2", app.base);
    let mut pages = 0;
    loop {
        let page: Value = app
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for entry in page["entry"].as_array().into_iter().flatten() {
            seen.push(entry["resource"]["id"].as_str().unwrap().to_string());
        }
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let system: Value = app
        .get("/fhir/_history?_count=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(system["entry"].as_array().unwrap().len(), 6);
    let future: Value = app
        .get("/fhir/_history?_since=2999-01-01T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert!(future.get("entry").is_none());
    let past: Value = app
        .get("/fhir/Observation/_history?_since=2000-01-01")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(past["entry"].as_array().unwrap().len(), 5);
    assert_eq!(
        app.get("/fhir/_history?_since=yesterday").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/fhir/_history?_count=many").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/fhir/_history?_at=2020").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/fhir/Patient/nobody/_history").await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn prefer_header_chooses_the_response_body(app: TestApp) {
    let minimal = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("prefer", "return=minimal")
        .json(&patient("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(minimal.status(), StatusCode::CREATED);
    assert!(minimal.headers().contains_key("location"));
    assert_eq!(minimal.text().await.unwrap(), "");
    let outcome = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("prefer", "return=OperationOutcome")
        .json(&patient("2"))
        .send()
        .await
        .unwrap();
    assert_eq!(outcome.status(), StatusCode::CREATED);
    assert_eq!(
        outcome.json::<Value>().await.unwrap()["resourceType"],
        "OperationOutcome"
    );
    let full = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("prefer", "return=representation")
        .json(&patient("3"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        full.json::<Value>().await.unwrap()["resourceType"],
        "Patient"
    );
}

async fn summary_and_elements_trim_a_read(app: TestApp) {
    let mut body = patient("087090000108");
    body["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Hoa</div>"});
    body["photo"] = json!([{"contentType": "image/png", "data": "AAAA"}]);
    let (id, _) = app.create(&body).await;
    let summary: Value = app
        .get(&format!("/fhir/Patient/{id}?_summary=true"))
        .await
        .json()
        .await
        .unwrap();
    assert!(summary.get("name").is_some() && summary.get("birthDate").is_some());
    assert!(summary.get("photo").is_none() && summary.get("text").is_none());
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");
    let data: Value = app
        .get(&format!("/fhir/Patient/{id}?_summary=data"))
        .await
        .json()
        .await
        .unwrap();
    assert!(data.get("photo").is_some() && data.get("text").is_none());
    let text: Value = app
        .get(&format!("/fhir/Patient/{id}?_summary=text"))
        .await
        .json()
        .await
        .unwrap();
    assert!(text.get("text").is_some() && text.get("name").is_none());
    let elements: Value = app
        .get(&format!("/fhir/Patient/{id}?_elements=gender,birthDate"))
        .await
        .json()
        .await
        .unwrap();
    let mut keys: Vec<&str> = elements
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["birthDate", "gender", "id", "meta", "resourceType"]);
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}?_summary=maybe"))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}?_summary=count"))
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    let full: Value = app
        .get(&format!("/fhir/Patient/{id}?_summary=false"))
        .await
        .json()
        .await
        .unwrap();
    assert!(full.get("photo").is_some() && full["meta"].get("tag").is_none());
}

async fn formats_other_than_json_are_not_acceptable(app: TestApp) {
    let (id, _) = app.create(&patient("1")).await;
    let path = format!("/fhir/Patient/{id}");
    for format in ["json", "application/json", "application/fhir+json"] {
        let response = app.get(&format!("{path}?_format={format}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{format}");
    }
    assert_eq!(
        app.get(&format!("{path}?_format=xml")).await.status(),
        StatusCode::NOT_ACCEPTABLE
    );
    let xml = app
        .request(reqwest::Method::GET, &path)
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(xml.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        xml.json::<Value>().await.unwrap()["issue"][0]["code"],
        "not-supported"
    );
    let any = app
        .request(reqwest::Method::GET, &path)
        .header("accept", "text/html, */*;q=0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(any.status(), StatusCode::OK);
    let compact = app.get(&path).await.text().await.unwrap();
    let pretty = app
        .get(&format!("{path}?_pretty=true"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(compact.lines().count(), 1);
    assert!(pretty.lines().count() > 10);
    assert_eq!(
        serde_json::from_str::<Value>(&pretty).unwrap(),
        serde_json::from_str::<Value>(&compact).unwrap()
    );
}

/// method, path, content type, body, expected status, expected issue code.
type BadCase<'a> = (
    reqwest::Method,
    String,
    Option<&'a str>,
    String,
    StatusCode,
    &'a str,
);

async fn bad_input_gets_a_precise_4xx_outcome_and_writes_nothing(app: TestApp) {
    let (id, _) = app.create(&patient("087090000109")).await;
    let before = app.history_rows().await;
    let big = format!(
        "{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}",
        "x".repeat(support::BODY_LIMIT + 1)
    );
    let cases: Vec<BadCase> = vec![
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "[1,2]".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Observation\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patiant\"}".into(),
            StatusCode::BAD_REQUEST,
            "not-supported",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"gender\":\"male\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\",\"gender\":\"male\",\"gender\":\"female\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patiant".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patiant\"}".into(),
            StatusCode::NOT_FOUND,
            "not-supported",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("text/plain"),
            "{\"resourceType\":\"Patient\"}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            None,
            "{\"resourceType\":\"Patient\"}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
        ),
        (
            reqwest::Method::PUT,
            format!("/fhir/Patient/{id}"),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\",\"id\":\"other\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::PUT,
            format!("/fhir/Patient/{id}"),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\"}".into(),
            StatusCode::BAD_REQUEST,
            "required",
        ),
        (
            reqwest::Method::PUT,
            format!("/fhir/Patient/{id}"),
            Some("application/fhir+json"),
            format!("{{\"resourceType\":\"Observation\",\"id\":\"{id}\"}}"),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::PUT,
            "/fhir/Patient/bad%20id".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\",\"id\":\"bad id\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::PUT,
            format!("/fhir/Patient/{}", "x".repeat(65)),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("application/fhir+json"),
            "{\"resourceType\":\"Patient\",\"meta\":\"v1\"}".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient/nobody-here".into(),
            None,
            "".into(),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient/bad%24id".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient?name=Hoa".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "not-supported",
        ),
        (
            reqwest::Method::PATCH,
            format!("/fhir/Patient/{id}"),
            Some("application/json-patch+json"),
            "[]".into(),
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
        ),
        (
            reqwest::Method::GET,
            "/no/such/thing".into(),
            None,
            "".into(),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let mut request = app.request(method.clone(), &path).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/fhir+json"),
            "{method} {path}"
        );
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(
            outcome["resourceType"], "OperationOutcome",
            "{method} {path}"
        );
        assert_eq!(
            outcome["issue"][0]["code"], code,
            "{method} {path}: {outcome}"
        );
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    assert_eq!(app.history_rows().await, before, "no bad request may write");
}

async fn every_r4_resource_type_can_be_created_and_read(app: TestApp) {
    let metadata: Value = app.get("/fhir/metadata").await.json().await.unwrap();
    let types: Vec<String> = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.len() >= 145, "{}", types.len());
    for rt in &types {
        let created = app
            .post_raw(
                &format!("/fhir/{rt}"),
                &format!("{{\"resourceType\":\"{rt}\"}}"),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED, "{rt}");
        let id = created.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let read: Value = app
            .get(&format!("/fhir/{rt}/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read["resourceType"], rt.as_str());
    }
}

async fn the_capability_statement_lists_every_type_and_interaction(app: TestApp) {
    let response = app.get("/fhir/metadata").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("{\"resourceType\":\"CapabilityStatement\""));
    let statement: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for code in [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "history-type",
        "create",
    ] {
        assert!(interactions.contains(&code), "{code}");
    }
    assert_eq!(patient["conditionalCreate"], true);
    assert!(
        resources
            .iter()
            .any(|r| r["type"] == "EffectEvidenceSynthesis")
    );
    assert!(!resources.iter().any(|r| r["type"] == "DomainResource"));
}

async fn concurrent_updates_of_one_resource_lose_nothing(app: TestApp) {
    let (id, _) = app.create(&patient("087090000110")).await;
    let writers = 12;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let client = app.client.clone();
        let url = format!("{}/fhir/Patient/{id}", app.base);
        let mut body = patient("087090000110");
        body["id"] = json!(id);
        body["name"][0]["text"] = json!(format!("writer {i}"));
        tasks.push(tokio::spawn(async move {
            client.put(url).json(&body).send().await.unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let current: Value = app
        .get(&format!("/fhir/Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["meta"]["versionId"], (writers + 1).to_string());
    let history: Value = app
        .get(&format!("/fhir/Patient/{id}/_history?_count=100"))
        .await
        .json()
        .await
        .unwrap();
    let mut versions: Vec<i64> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=writers + 1).collect::<Vec<i64>>());
}

async fn search_by_identifier_and_id_pages_by_id(app: TestApp) {
    let (a, _) = app.create(&patient("087090000111")).await;
    let (b, _) = app.create(&json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.ehealth.gov.vn/core/sid/insurance_number", "value": "DN4828700000001"}, {"system": CCCD, "value": "087090000112"}]})).await;
    let _other = app.create(&patient("087090000113")).await;
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let found: Value = app
        .get(&format!("/fhir/Patient?identifier={CCCD}|087090000111"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["type"], "searchset");
    assert_eq!(ids(&found), vec![a.clone()]);
    let either: Value = app
        .get("/fhir/Patient?identifier=087090000111,DN4828700000001")
        .await
        .json()
        .await
        .unwrap();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(ids(&either), expected);
    let both: Value = app
        .get(&format!(
            "/fhir/Patient?identifier=DN4828700000001&identifier={CCCD}|087090000112"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&both), vec![b.clone()]);
    let wrong_system: Value = app
        .get("/fhir/Patient?identifier=http://other|087090000111")
        .await
        .json()
        .await
        .unwrap();
    assert!(ids(&wrong_system).is_empty());
    let by_id: Value = app
        .get(&format!("/fhir/Patient?_id={a}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&by_id), vec![a.clone()]);
    let page1: Value = app
        .get("/fhir/Patient?_count=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&page1).len(), 2);
    let next = page1["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page2: Value = app
        .client
        .get(next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&page2).len(), 1);
    assert!(!ids(&page1).contains(&ids(&page2)[0]));
}

async fn a_server_error_shows_only_the_request_id(app: TestApp) {
    let (id, _) = app.create(&patient("087090000114")).await;
    app.db.close().await;
    let response = app.get(&format!("/fhir/Patient/{id}")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(
        outcome["issue"][0]["diagnostics"],
        format!("internal error (request id {request_id})")
    );
    assert_eq!(outcome["issue"].as_array().unwrap().len(), 1);
}

async fn health_and_metrics_report_without_patient_data(app: TestApp) {
    let live = app.get("/health/live").await;
    assert_eq!(live.status(), StatusCode::OK);
    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "up");
    assert_eq!(ready["checks"]["database"], "up");
    if app.redis {
        assert_eq!(ready["checks"]["kv"], "redis");
    }
    app.get("/fhir/Patient?identifier=087090000115").await;
    let (id, _) = app.create(&patient("087090000115")).await;
    app.get(&format!("/fhir/Patient/{id}")).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "http_requests_total{method=\"GET\",route=\"/fhir/{type}/{id}\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
    assert!(metrics.contains("db_pool_connections"));
    assert!(
        !metrics.contains(&id) && !metrics.contains("087090000115"),
        "metrics must not carry ids or identifiers"
    );
}

async fn no_request_of_any_shape_gets_a_server_error(app: TestApp) {
    let long = "9".repeat(20_000);
    let (id, _) = app.create(&patient("087090000116")).await;
    let mut requests: Vec<(reqwest::Method, String, Option<String>)> = vec![
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some(format!(
                "{{\"resourceType\":\"Patient\",\"identifier\":[{{\"value\":\"{long}\"}}]}}"
            )),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some(format!(
                "{{\"resourceType\":\"Patient\",\"identifier\":[{{\"system\":\"{long}\",\"value\":\"1\"}}]}}"
            )),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("{\"resourceType\":\"Patient\",\"gender\":\"a\\u0000b\"}".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("{\"resourceType\":\"Patient\",\"identifier\":\"not-a-list\"}".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("{\"resourceType\":\"Patient\",\"identifier\":[1,null,{\"value\":7}]}".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\\ud800\"}]}".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("\u{feff}{\"resourceType\":\"Patient\"}".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some("{\"resourceType\":\"Patient\"} trailing".into()),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some(format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000))),
        ),
        (
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some(format!(
                "{{\"resourceType\":\"Patient\",\"x\":{}1{}}}",
                "[".repeat(200),
                "]".repeat(200)
            )),
        ),
        (
            reqwest::Method::GET,
            format!("/fhir/Patient?identifier={long}"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/fhir/Patient/{id}/_history/99999999999999999999999"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient/_history?_since=9999-12-31T23:59:59Z&_count=0".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/fhir/_history?_page_token=-9223372036854775808".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient?_page_token=%00".into(),
            None,
        ),
        (reqwest::Method::GET, "/fhir/Patient?_id=%00".into(), None),
        (
            reqwest::Method::GET,
            "/fhir/Patient?identifier=%00|%00".into(),
            None,
        ),
        (reqwest::Method::GET, "/fhir/Patient/%00".into(), None),
        (reqwest::Method::GET, "/fhir/%00/1".into(), None),
        (reqwest::Method::GET, "/fhir/Patient/a%2Fb".into(), None),
        (reqwest::Method::GET, "/fhir/Patient/..".into(), None),
        (
            reqwest::Method::GET,
            "/fhir/Patient/Nguy%E1%BB%85n".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/fhir/Patient/{id}?_elements=%00,,"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/fhir/Patient/{id}?_summary=true&_elements=name"),
            None,
        ),
        (reqwest::Method::DELETE, "/fhir/Patient".into(), None),
        (
            reqwest::Method::PUT,
            "/fhir/Patient".into(),
            Some("{}".into()),
        ),
        (
            reqwest::Method::POST,
            format!("/fhir/Patient/{id}"),
            Some("{}".into()),
        ),
        (reqwest::Method::GET, "/fhir/".into(), None),
        (reqwest::Method::GET, "/fhir".into(), None),
    ];
    // Arbitrary bytes as bodies, deterministic.
    let mut state: u64 = 0x5eed;
    for len in [1usize, 7, 64, 500] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state & 0xff) as u8
            })
            .collect();
        requests.push((
            reqwest::Method::POST,
            "/fhir/Patient".into(),
            Some(String::from_utf8_lossy(&bytes).into_owned()),
        ));
    }
    for (method, path, body) in requests {
        let mut request = app
            .request(method.clone(), &path)
            .header("content-type", "application/fhir+json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            !status.is_server_error(),
            "{method} {}: {status} {text}",
            &path[..path.len().min(80)]
        );
        if status.is_client_error() {
            assert!(
                text.contains("OperationOutcome"),
                "{method} {}: {text}",
                &path[..path.len().min(80)]
            );
        }
    }
    // Headers of odd shapes.
    for (name, value) in [
        ("if-match", "W/\"\""),
        ("if-none-exist", "%%%"),
        ("if-none-exist", "identifier="),
        ("prefer", "return=???"),
        ("accept", ";;;"),
    ] {
        let response = app
            .request(reqwest::Method::PUT, &format!("/fhir/Patient/{id}"))
            .header(name, value)
            .header("content-type", "application/fhir+json")
            .body(format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}"))
            .send()
            .await
            .unwrap();
        assert!(!response.status().is_server_error(), "{name}: {value}");
        let response = app
            .request(reqwest::Method::POST, "/fhir/Patient")
            .header(name, value)
            .header("content-type", "application/fhir+json")
            .body("{\"resourceType\":\"Patient\"}")
            .send()
            .await
            .unwrap();
        assert!(!response.status().is_server_error(), "{name}: {value}");
    }
}

async fn an_update_that_changes_identifiers_moves_them_in_the_index(app: TestApp) {
    let (id, _) = app.create(&patient("087090000117")).await;
    let count = |bundle: Value| bundle["entry"].as_array().map_or(0, Vec::len);
    // Same identifiers, other content: still found.
    let mut same = patient("087090000117");
    same["id"] = json!(id);
    same["gender"] = json!("other");
    assert_eq!(
        app.put(&format!("/fhir/Patient/{id}"), &same)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        count(
            app.get("/fhir/Patient?identifier=087090000117")
                .await
                .json()
                .await
                .unwrap()
        ),
        1
    );
    // New identifier: the old one no longer matches, the new one does.
    let mut moved = patient("087090000118");
    moved["id"] = json!(id);
    assert_eq!(
        app.put(&format!("/fhir/Patient/{id}"), &moved)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        count(
            app.get("/fhir/Patient?identifier=087090000117")
                .await
                .json()
                .await
                .unwrap()
        ),
        0
    );
    assert_eq!(
        count(
            app.get("/fhir/Patient?identifier=087090000118")
                .await
                .json()
                .await
                .unwrap()
        ),
        1
    );
    // No identifier at all.
    let bare = json!({"resourceType": "Patient", "id": id});
    assert_eq!(
        app.put(&format!("/fhir/Patient/{id}"), &bare)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        count(
            app.get("/fhir/Patient?identifier=087090000118")
                .await
                .json()
                .await
                .unwrap()
        ),
        0
    );
}
