//! Conditional create, history, search, _summary/_elements, formats and the CapabilityStatement.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{CCCD, patient, support::TestApp};

on_both_backends!(
    conditional_create_finds_an_existing_match_instead_of_duplicating,
    history_pages_follow_next_links_and_honour_since,
    summary_and_elements_trim_a_read,
    formats_other_than_json_are_not_acceptable,
    search_by_identifier_and_id_pages_by_id,
    the_capability_statement_lists_every_type_and_interaction,
);

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
    // Any search parameter may be a condition; several patients are named Hoa.
    let by_name = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", "name=Hoa")
        .json(&patient("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), StatusCode::PRECONDITION_FAILED);
    // A condition naming no search parameter is refused, never ignored.
    let unsupported = app
        .request(reqwest::Method::POST, "/fhir/Patient")
        .header("if-none-exist", "nickname=Hoa")
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
