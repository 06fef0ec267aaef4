//! PATCH with JSON Patch, plain and conditional.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{patient, support::TestApp};

on_both_backends!(
    a_json_patch_changes_only_what_it_names,
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
    let fhirpath = app
        .request(reqwest::Method::PATCH, &path)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(fhirpath.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
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
