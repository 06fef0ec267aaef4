//! Create, read, vread, update, delete: versions, fidelity and concurrency.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{patient, support::TestApp};

on_both_backends!(
    a_created_resource_reads_back_exactly_as_written,
    updates_make_versions_that_vread_and_history_return,
    update_with_a_client_id_creates_the_resource,
    a_stale_if_match_is_refused_and_writes_nothing,
    a_deleted_resource_answers_gone_but_keeps_its_history,
    concurrent_updates_of_one_resource_lose_nothing,
    an_update_that_changes_identifiers_moves_them_in_the_index,
    every_r4_resource_type_can_be_created_and_read,
    prefer_header_chooses_the_response_body,
    conditional_update_and_delete_act_on_the_one_match,
);

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
async fn every_r4_resource_type_can_be_created_and_read(app: TestApp) {
    let metadata: Value = app.get("/fhir/metadata").await.json().await.unwrap();
    let types: Vec<String> = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.len() >= 145, "{}", types.len());
    let (mut created, mut refused) = (0, 0);
    for rt in &types {
        // The smallest body: accepted when the type requires nothing, else refused naming
        // exactly the required elements that are missing.
        let response = app
            .post_raw(
                &format!("/fhir/{rt}"),
                &format!("{{\"resourceType\":\"{rt}\"}}"),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == StatusCode::CREATED {
            let id = body["id"].as_str().unwrap();
            let read: Value = app
                .get(&format!("/fhir/{rt}/{id}"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(read["resourceType"], rt.as_str());
            created += 1;
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{rt}: {body}");
            // Missing required elements, or a resource-level invariant ("a name or an
            // identifier") — nothing else is wrong with an empty resource. Warnings (no
            // narrative) are listed too and do not count.
            let errors: Vec<&Value> = body["issue"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["severity"] == "error")
                .collect();
            assert!(!errors.is_empty(), "{rt}: {body}");
            for issue in errors {
                let expression = issue["expression"][0].as_str().unwrap();
                match issue["code"].as_str() {
                    Some("required") => assert!(
                        expression.starts_with(&format!("{rt}."))
                            && !expression[rt.len() + 1..].contains('.'),
                        "{rt}: {expression}"
                    ),
                    Some("invariant") => assert_eq!(expression, rt, "{body}"),
                    _ => panic!("{rt}: {body}"),
                }
            }
            refused += 1;
        }
    }
    // Patient requires nothing; Observation requires status and code.
    assert!(
        created > 20 && refused > 20,
        "created {created}, refused {refused}"
    );
    let observation: Value = app
        .post_raw("/fhir/Observation", r#"{"resourceType":"Observation"}"#)
        .await
        .json()
        .await
        .unwrap();
    let mut missing: Vec<&str> = observation["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    missing.sort_unstable();
    assert_eq!(missing, ["Observation.code", "Observation.status"]);
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

async fn conditional_update_and_delete_act_on_the_one_match(app: TestApp) {
    let url = format!("/fhir/Patient?identifier={}|087090001001", crate::CCCD);
    let put = |body: Value| {
        app.request(reqwest::Method::PUT, &url)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    // Nothing matches: created (the body needs no id).
    let created = put(crate::patient("087090001001")).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let id = location
        .split("/_history")
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // One match: updated in place, a new version of the same id.
    let mut changed = crate::patient("087090001001");
    changed["gender"] = json!("male");
    let updated = put(changed.clone()).await.unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(updated.headers()["etag"], "W/\"2\"");
    let read: Value = app
        .get(&format!("/fhir/Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["gender"], "male");
    // A body naming another id than the match is refused.
    changed["id"] = json!("someone-else");
    assert_eq!(
        put(changed).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    // Delete the match; again: nothing matches, nothing to do.
    for expected_etag in [Some("W/\"3\""), None] {
        let deleted = app
            .request(reqwest::Method::DELETE, &url)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
        assert_eq!(
            deleted.headers().get("etag").map(|v| v.to_str().unwrap()),
            expected_etag
        );
    }
    assert_eq!(
        app.get(&format!("/fhir/Patient/{id}")).await.status(),
        StatusCode::GONE
    );
}
