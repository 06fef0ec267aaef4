//! Batch and transaction Bundles at `POST /fhir`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{CCCD, patient, support::TestApp};

on_both_backends!(
    a_transaction_creates_linked_resources_and_resolves_urn_uuid_references,
    a_transaction_with_one_failing_entry_changes_nothing,
    a_transaction_runs_deletes_first_and_reads_last,
    a_conditional_create_in_a_transaction_links_to_the_existing_resource,
    an_unresolvable_reference_refuses_the_transaction,
    a_batch_reports_each_entry_on_its_own,
    bundles_that_are_too_large_or_not_bundles_are_refused,
    only_reference_values_are_rewritten_to_new_ids,
    a_transaction_may_not_write_one_resource_twice,
    conditional_urls_and_patch_entries_act_on_their_match,
    a_conditional_entry_with_several_matches_refuses_the_transaction,
    put_entries_create_replace_and_revive_with_their_versions,
);

async fn post_bundle(app: &TestApp, bundle: &Value) -> reqwest::Response {
    app.request(reqwest::Method::POST, "/fhir")
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap()
}

fn id_of(location: &str) -> String {
    location
        .split("/_history")
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

async fn a_transaction_creates_linked_resources_and_resolves_urn_uuid_references(app: TestApp) {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "nhiệt độ"},
              "subject": {"reference": "urn:uuid:5f3f1f44-9b5c-4d2f-8e4e-2a9a1c3b7d10"}, "encounter": {"reference": "urn:uuid:0a4c4f0e-7f43-4d6c-9d55-8f1f0f2f8a01"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:5f3f1f44-9b5c-4d2f-8e4e-2a9a1c3b7d10", "resource": patient("087090000201"), "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:0a4c4f0e-7f43-4d6c-9d55-8f1f0f2f8a01", "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "VR"},
              "subject": {"reference": "urn:uuid:5f3f1f44-9b5c-4d2f-8e4e-2a9a1c3b7d10"}}, "request": {"method": "POST", "url": "Encounter"}}
        ]
    });
    // Decimal digits must survive the rewrite: patch the value in as raw text.
    let text = bundle.to_string().replacen(
        "\"status\":\"final\"",
        "\"status\":\"final\",\"valueQuantity\":{\"value\":36.60,\"unit\":\"Cel\"}",
        1,
    );
    let response = app
        .request(reqwest::Method::POST, "/fhir")
        .header("content-type", "application/fhir+json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["type"], "transaction-response");
    let entries = result["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for entry in entries {
        assert_eq!(entry["response"]["status"], "201 Created");
        assert_eq!(entry["response"]["etag"], "W/\"1\"");
    }
    let observation = id_of(entries[0]["response"]["location"].as_str().unwrap());
    let patient = id_of(entries[1]["response"]["location"].as_str().unwrap());
    let encounter = id_of(entries[2]["response"]["location"].as_str().unwrap());
    let stored = app
        .get(&format!("/fhir/Observation/{observation}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(stored.contains("\"value\":36.60"), "{stored}");
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(
        stored["encounter"]["reference"],
        format!("Encounter/{encounter}")
    );
    let encounter: Value = app
        .get(&format!("/fhir/Encounter/{encounter}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        encounter["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(app.history_rows().await, 3);
}

async fn a_transaction_with_one_failing_entry_changes_nothing(app: TestApp) {
    let (existing, _) = app.create(&patient("087090000202")).await;
    let (resources, history) = (app.resource_rows().await, app.history_rows().await);
    let mut changed = patient("087090000202");
    changed["id"] = json!(existing);
    let failing_entries = [
        // A stale If-Match on the update.
        json!({"resource": changed, "request": {"method": "PUT", "url": format!("Patient/{existing}"), "ifMatch": "W/\"9\""}}),
        // A delete of something that does not exist.
        json!({"request": {"method": "DELETE", "url": "Patient/not-there"}}),
        // An invalid resource.
        json!({"resource": {"resourceType": "Patient", "id": 5}, "request": {"method": "POST", "url": "Patient"}}),
        // A read of something that does not exist.
        json!({"request": {"method": "GET", "url": "Observation/not-there"}}),
    ];
    for (n, failing) in failing_entries.into_iter().enumerate() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("087090000203"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{existing}")}},
            failing,
        ]});
        let response = post_bundle(&app, &bundle).await;
        assert!(
            response.status().is_client_error(),
            "case {n}: {}",
            response.status()
        );
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(
            outcome["issue"][0]["expression"][0]
                .as_str()
                .unwrap()
                .starts_with("Bundle.entry[2]"),
            "case {n}: {outcome}"
        );
        assert_eq!(app.resource_rows().await, resources, "case {n}");
        assert_eq!(app.history_rows().await, history, "case {n}");
        assert_eq!(
            app.get(&format!("/fhir/Patient/{existing}")).await.status(),
            StatusCode::OK,
            "case {n}"
        );
        let search: Value = app
            .get("/fhir/Patient?identifier=087090000203")
            .await
            .json()
            .await
            .unwrap();
        assert!(search.get("entry").is_none(), "case {n}");
    }
}

async fn a_transaction_runs_deletes_first_and_reads_last(app: TestApp) {
    let (gone, _) = app.create(&patient("087090000204")).await;
    let mut fresh = patient("087090000205");
    fresh["id"] = json!("tx-order-1");
    // Listed in the "wrong" order: the GET first, the DELETE last.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient/tx-order-1"}},
        {"resource": fresh, "request": {"method": "PUT", "url": "Patient/tx-order-1"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{gone}")}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    let entries = result["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], "tx-order-1");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "204 No Content");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{gone}")).await.status(),
        StatusCode::GONE
    );
}

async fn a_conditional_create_in_a_transaction_links_to_the_existing_resource(app: TestApp) {
    let (existing, _) = app.create(&patient("087090000206")).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9d4c1b2a-0000-4000-8000-000000000001", "resource": patient("087090000206"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://fhir.ehealth.gov.vn/core/sid/national_id|087090000206"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:9d4c1b2a-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        id_of(result["entry"][0]["response"]["location"].as_str().unwrap()),
        existing
    );
    assert_eq!(
        result["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{existing}")
    );
    let patients: Value = app
        .get("/fhir/Patient?identifier=087090000206")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patients["entry"].as_array().unwrap().len(), 1);
}

async fn an_unresolvable_reference_refuses_the_transaction(app: TestApp) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("087090000207"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-00000000dead"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let outcome: Value = response.json().await.unwrap();
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("matches no fullUrl"),
        "{outcome}"
    );
    assert_eq!(app.history_rows().await, 0);
}

async fn a_batch_reports_each_entry_on_its_own(app: TestApp) {
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("087090000208"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/not-there"}},
        {"request": {"method": "PATCH", "url": "Patient/x"}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["type"], "batch-response");
    let statuses: Vec<&str> = result["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "400 Bad Request"
        ]
    );
    assert_eq!(
        result["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(app.history_rows().await, 1, "the good entry is kept");
}

async fn bundles_that_are_too_large_or_not_bundles_are_refused(app: TestApp) {
    let entries: Vec<Value> = (0..1001)
        .map(|_| json!({"request": {"method": "GET", "url": "Patient/x"}}))
        .collect();
    let response = post_bundle(
        &app,
        &json!({"resourceType": "Bundle", "type": "batch", "entry": entries}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let outcome: Value = response.json().await.unwrap();
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("at most 1000"),
        "{outcome}"
    );
    for body in [
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Bundle", "type": "collection"}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": {}}),
    ] {
        assert_eq!(
            post_bundle(&app, &body).await.status(),
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    let empty = post_bundle(
        &app,
        &json!({"resourceType": "Bundle", "type": "transaction"}),
    )
    .await;
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(app.history_rows().await, 0);
}

async fn only_reference_values_are_rewritten_to_new_ids(app: TestApp) {
    let full_url = "urn:uuid:3c9e1a62-6a0b-4a6f-9a3e-0d3b1f1a2b3c";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": full_url, "resource": patient("087090000501"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:7d1e2f30-0000-4000-8000-000000000002",
         "resource": {"resourceType": "DocumentReference", "status": "current",
                      "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": full_url},
                      "subject": {"reference": full_url},
                      "content": [{"attachment": {"contentType": "text/plain", "data": "eGlu"}}]},
         "request": {"method": "POST", "url": "DocumentReference"}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    let patient_id = id_of(result["entry"][0]["response"]["location"].as_str().unwrap());
    let document = &result["entry"][1]["resource"];
    assert_eq!(
        document["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(
        document["masterIdentifier"]["value"], full_url,
        "an identifier is not a reference"
    );
}

async fn a_transaction_may_not_write_one_resource_twice(app: TestApp) {
    let mut body = patient("087090000502");
    body["id"] = json!("twice");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body.clone(), "request": {"method": "PUT", "url": "Patient/twice"}},
        {"resource": body, "request": {"method": "PUT", "url": "Patient/twice"}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[1]");
    assert_eq!(app.history_rows().await, 0);
}

async fn conditional_urls_and_patch_entries_act_on_their_match(app: TestApp) {
    let (a, _) = app.create(&patient("087090000801")).await;
    let (b, _) = app.create(&patient("087090000802")).await;
    let (c, _) = app.create(&patient("087090000803")).await;
    let (d, _) = app.create(&patient("087090000804")).await;
    let by_cccd = |cccd: &str| format!("Patient?identifier={CCCD}|{cccd}");
    let mut updated_a = patient("087090000801");
    updated_a["gender"] = json!("male");
    let json_patch = base64_of(r#"[{"op":"replace","path":"/gender","value":"other"}]"#);
    let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "1991-01-01"}]}]});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": by_cccd("087090000899")}},
        {"resource": updated_a, "request": {"method": "PUT", "url": by_cccd("087090000801")}},
        {"resource": patient("087090000899"), "request": {"method": "PUT", "url": by_cccd("087090000899")}},
        {"request": {"method": "DELETE", "url": by_cccd("087090000802")}},
        {"request": {"method": "DELETE", "url": by_cccd("000000000000")}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
            "request": {"method": "PATCH", "url": format!("Patient/{c}"), "ifMatch": "W/\"1\""}},
        {"resource": fhirpath_patch, "request": {"method": "PATCH", "url": by_cccd("087090000804")}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    let status = response.status();
    let result: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{result}");
    let statuses: Vec<&str> = result["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "200 OK",
            "200 OK",
            "201 Created",
            "204 No Content",
            "204 No Content",
            "200 OK",
            "200 OK"
        ]
    );
    // The GET ran last and saw the conditional create.
    let searchset = &result["entry"][0]["resource"];
    assert_eq!(searchset["type"], "searchset");
    assert_eq!(
        searchset["entry"].as_array().unwrap().len(),
        1,
        "{searchset}"
    );
    let read = |id: String| {
        let app = &app;
        async move {
            app.get(&format!("/fhir/Patient/{id}"))
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(read(a.clone()).await["gender"], "male");
    assert_eq!(read(a).await["meta"]["versionId"], "2");
    assert_eq!(
        app.get(&format!("/fhir/Patient/{b}")).await.status(),
        StatusCode::GONE
    );
    assert_eq!(read(c).await["gender"], "other");
    assert_eq!(read(d).await["birthDate"], "1991-01-01");
}

async fn a_conditional_entry_with_several_matches_refuses_the_transaction(app: TestApp) {
    app.create(&patient("087090000901")).await;
    app.create(&patient("087090000901")).await;
    let rows = app.history_rows().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("087090000902"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": format!("Patient?identifier={CCCD}|087090000901")}},
    ]});
    let response = post_bundle(&app, &bundle).await;
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "multiple-matches", "{outcome}");
    assert_eq!(
        outcome["issue"][0]["expression"][0], "Bundle.entry[1]",
        "{outcome}"
    );
    assert_eq!(app.history_rows().await, rows);
    // The standalone conditional update and delete answer the same.
    let put = app
        .request(
            reqwest::Method::PUT,
            &format!("/fhir/Patient?identifier={CCCD}|087090000901"),
        )
        .header("content-type", "application/fhir+json")
        .body(patient("087090000901").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::PRECONDITION_FAILED);
    let delete = app
        .request(
            reqwest::Method::DELETE,
            &format!("/fhir/Patient?identifier={CCCD}|087090000901"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::PRECONDITION_FAILED);
    // No criteria at all: 400.
    let bare = app
        .request(reqwest::Method::DELETE, "/fhir/Patient")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.history_rows().await, rows);
}

fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A transaction's PUT entries read what they replace together; each still gets the version
/// and history its own PUT would: new ids start at 1, existing ones go on, a deleted one comes
/// back, and a stale If-Match refuses the whole Bundle.
async fn put_entries_create_replace_and_revive_with_their_versions(app: TestApp) {
    let (kept, _) = app.create(&patient("087090000231")).await;
    let (gone, _) = app.create(&patient("087090000232")).await;
    let response = app
        .request(reqwest::Method::DELETE, &format!("/fhir/Patient/{gone}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let with_id = |id: &str, cccd: &str| {
        let mut resource = patient(cccd);
        resource["id"] = json!(id);
        resource
    };
    let put = |id: &str, cccd: &str, if_match: Option<&str>| {
        let mut request = json!({"method": "PUT", "url": format!("Patient/{id}")});
        if let Some(tag) = if_match {
            request["ifMatch"] = json!(tag);
        }
        json!({"resource": with_id(id, cccd), "request": request})
    };
    let observation = json!({"resource": {"resourceType": "Observation", "id": "put-obs-1", "status": "final",
        "code": {"text": "mạch"}, "subject": {"reference": "Patient/put-new-1"}},
        "request": {"method": "PUT", "url": "Observation/put-obs-1"}});
    let entries = |kept_tag: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            put("put-new-1", "087090000233", None),
            put(&kept, "087090000234", Some(kept_tag)),
            observation.clone(),
            put(&gone, "087090000235", None),
        ]})
    };
    let (resources, history) = (app.resource_rows().await, app.history_rows().await);
    let refused = post_bundle(&app, &entries("W/\"7\"")).await;
    assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.resource_rows().await, resources);
    assert_eq!(app.history_rows().await, history);

    let response = post_bundle(&app, &entries("W/\"1\"")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result: Value = response.json().await.unwrap();
    let statuses: Vec<(&str, &str)> = result["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["response"]["status"].as_str().unwrap(),
                e["response"]["etag"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("201 Created", "W/\"1\""),
            ("200 OK", "W/\"2\""),
            ("201 Created", "W/\"1\""),
            ("201 Created", "W/\"3\""),
        ]
    );
    assert_eq!(app.resource_rows().await, resources + 2);
    assert_eq!(app.history_rows().await, history + 4);
    for (path, cccd, version) in [
        (format!("Patient/{kept}"), "087090000234", "2"),
        (format!("Patient/{gone}"), "087090000235", "3"),
        ("Patient/put-new-1".to_string(), "087090000233", "1"),
    ] {
        let stored: Value = app
            .get(&format!("/fhir/{path}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stored["identifier"][0]["value"], cccd, "{path}");
        assert_eq!(stored["meta"]["versionId"], version, "{path}");
        let old: Value = app
            .get(&format!("/fhir/{path}/_history/{version}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(old, stored, "{path}");
    }
    let found: Value = app
        .get("/fhir/Observation?subject=Patient/put-new-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"][0]["resource"]["id"], "put-obs-1");
}
