//! PATCH with JSON Patch and FHIRPath Patch, plain and conditional.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{patient, support::TestApp};

on_both_backends!(
    a_json_patch_changes_only_what_it_names,
    a_fhirpath_patch_adds_inserts_replaces_moves_and_deletes,
    a_patch_that_does_not_apply_writes_nothing,
    a_conditional_patch_patches_the_one_match,
);

async fn send_patch(
    app: &TestApp,
    path: &str,
    document: &str,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .request(reqwest::Method::PATCH, path)
        .header("content-type", "application/json-patch+json")
        .body(document.to_string());
    if let Some(tag) = if_match {
        request = request.header("if-match", tag);
    }
    request.send().await.unwrap()
}

async fn a_json_patch_changes_only_what_it_names(app: TestApp) {
    let body = r#"{"resourceType":"Observation","status":"preliminary","code":{"text":"cân nặng"},"valueQuantity":{"value":9000.00,"unit":"g"},"extension":[{"url":"http://example.org/x","valueDecimal":1.250}]}"#;
    let created = app.post_raw("/fhir/Observation", body).await;
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let document = r#"[{"op":"test","path":"/status","value":"preliminary"},{"op":"replace","path":"/status","value":"final"},{"op":"add","path":"/note","value":[{"text":"đã xác nhận"}]}]"#;
    let response = send_patch(
        &app,
        &format!("/fhir/Observation/{id}"),
        document,
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let stored = app
        .get(&format!("/fhir/Observation/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        stored.contains("\"value\":9000.00") && stored.contains("\"valueDecimal\":1.250"),
        "{stored}"
    );
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["status"], "final");
    assert_eq!(stored["note"][0]["text"], "đã xác nhận");
    assert_eq!(stored["meta"]["versionId"], "2");
    let v1: Value = app
        .get(&format!("/fhir/Observation/{id}/_history/1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["status"], "preliminary");
}

async fn a_fhirpath_patch_adds_inserts_replaces_moves_and_deletes(app: TestApp) {
    let body = r#"{"resourceType":"Observation","status":"preliminary","code":{"text":"cân nặng"},"valueQuantity":{"value":9000.00,"unit":"g"},"note":[{"text":"a"},{"text":"b"},{"text":"c"}],"extension":[{"url":"http://example.org/x","valueDecimal":1.250}]}"#;
    let created = app.post_raw("/fhir/Observation", body).await;
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let operation = |parts: Value| json!({"name": "operation", "part": parts});
    let document = json!({"resourceType": "Parameters", "parameter": [
        operation(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.status"}, {"name": "value", "valueCode": "final"}])),
        operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"}, {"name": "name", "valueString": "effective"}, {"name": "value", "valueDateTime": "2026-11-26T10:00:00+07:00"}])),
        operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"}, {"name": "name", "valueString": "referenceRange"}, {"name": "value", "part": [{"name": "text", "valueString": "2500–4000 g"}]}])),
        operation(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Observation.note"}, {"name": "index", "valueInteger": 1}, {"name": "value", "valueAnnotation": {"text": "chèn"}}])),
        operation(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Observation.note"}, {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 3}])),
        operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Observation.note.where(text = 'b')"}])),
        operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Observation.interpretation"}])),
        operation(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.code.text"}, {"name": "value", "valueString": "cân nặng (g)"}])),
    ]});
    let response = app
        .request(reqwest::Method::PATCH, &format!("/fhir/Observation/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(document.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    let stored = app
        .get(&format!("/fhir/Observation/{id}"))
        .await
        .text()
        .await
        .unwrap();
    // Numbers elsewhere keep their digits.
    assert!(
        stored.contains("\"value\":9000.00") && stored.contains("\"valueDecimal\":1.250"),
        "{stored}"
    );
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["status"], "final");
    assert_eq!(stored["effectiveDateTime"], "2026-11-26T10:00:00+07:00");
    assert_eq!(stored["referenceRange"][0]["text"], "2500–4000 g");
    let notes: Vec<&str> = stored["note"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap())
        .collect();
    // [a, b, c] → insert at 1 → [a, chèn, b, c] → move 0 to 3 → [chèn, b, c, a] → delete b.
    assert_eq!(notes, ["chèn", "c", "a"]);
    assert_eq!(stored["code"]["text"], "cân nặng (g)");
    assert_eq!(stored["meta"]["versionId"], "2");
    // Replacing a choice element with another type renames it.
    let to_string = json!({"resourceType": "Parameters", "parameter": [operation(json!([
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.value"}, {"name": "value", "valueString": "không cân được"}]))]});
    let response = app
        .request(reqwest::Method::PATCH, &format!("/fhir/Observation/{id}"))
        .header("content-type", "application/fhir+json")
        .body(to_string.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stored: Value = app
        .get(&format!("/fhir/Observation/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["valueString"], "không cân được");
    assert!(stored.get("valueQuantity").is_none(), "{stored}");
}

async fn a_patch_that_does_not_apply_writes_nothing(app: TestApp) {
    let (id, _) = app.create(&patient("087090000301")).await;
    let path = format!("/fhir/Patient/{id}");
    let rows = app.history_rows().await;
    let cases: Vec<(&str, Option<&str>, StatusCode, &str)> = vec![
        (
            r#"[{"op":"replace","path":"/deceasedBoolean","value":true}]"#,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            r#"[{"op":"remove","path":"/name/3"}]"#,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            r#"[{"op":"test","path":"/gender","value":"male"}]"#,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            r#"[{"op":"replace","path":"/id","value":"other"}]"#,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            r#"[{"op":"replace","path":"/resourceType","value":"Observation"}]"#,
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
        ),
        (
            r#"[{"op":"replace","path":"/meta","value":[]}]"#,
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            r#"[{"op":"fly","path":"/gender"}]"#,
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            r#"{"op":"remove","path":"/gender"}"#,
            None,
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            r#"[{"op":"remove","path":"/gender"}]"#,
            Some("W/\"7\""),
            StatusCode::PRECONDITION_FAILED,
            "conflict",
        ),
    ];
    for (document, if_match, status, code) in cases {
        let response = send_patch(&app, &path, document, if_match).await;
        assert_eq!(response.status(), status, "{document}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["issue"][0]["code"], code, "{document}: {outcome}");
    }
    let failing: Value = send_patch(
        &app,
        &path,
        r#"[{"op":"remove","path":"/gender"},{"op":"remove","path":"/photo"}]"#,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        failing["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("operation 1 (remove /photo)"),
        "{failing}"
    );
    // FHIRPath Patch documents that do not apply: malformed (400) or not matching (422).
    let op = |parts: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]});
    let fhirpath_cases = [
        (
            json!({"resourceType": "Parameters"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"resourceType": "Patient"}), StatusCode::BAD_REQUEST),
        (
            op(
                json!([{"name": "type", "valueCode": "fly"}, {"name": "path", "valueString": "Patient"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender.("}, {"name": "value", "valueCode": "male"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.photo"}, {"name": "value", "valueString": "x"}]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"}, {"name": "value", "valueCode": "nữ"}]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "index", "valueInteger": 9}, {"name": "value", "valueIdentifier": {"value": "x"}}]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            op(
                json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "male"}]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (document, status) in fhirpath_cases {
        let response = app
            .request(reqwest::Method::PATCH, &path)
            .header("content-type", "application/fhir+json")
            .body(document.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{document}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{document}");
    }
    assert_eq!(
        send_patch(&app, "/fhir/Patient/nobody", "[]", None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.history_rows().await, rows, "no failed patch may write");
    let current: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(current["gender"], "female");
}

async fn a_conditional_patch_patches_the_one_match(app: TestApp) {
    let (id, _) = app.create(&patient("087090000302")).await;
    let document = r#"[{"op":"replace","path":"/gender","value":"other"}]"#;
    let response = send_patch(
        &app,
        "/fhir/Patient?identifier=087090000302",
        document,
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let current: Value = app
        .get(&format!("/fhir/Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["gender"], "other");
    assert_eq!(
        send_patch(&app, "/fhir/Patient?identifier=nobody", document, None)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    app.create(&patient("087090000303")).await;
    app.create(&patient("087090000303")).await;
    assert_eq!(
        send_patch(
            &app,
            "/fhir/Patient?identifier=087090000303",
            document,
            None
        )
        .await
        .status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        send_patch(&app, "/fhir/Patient", document, None)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
}
