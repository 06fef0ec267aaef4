//! Bad input, server errors, health and metrics.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    patient,
    support::{self, TestApp},
};

on_both_backends!(
    bad_input_gets_a_precise_4xx_outcome_and_writes_nothing,
    no_request_of_any_shape_gets_a_server_error,
    a_server_error_shows_only_the_request_id,
    health_and_metrics_report_without_patient_data,
    an_invalid_resource_gets_every_problem_located,
    validate_reports_problems_without_writing,
);

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
            // An invariant of the definitions (per-1: a period may not end before it starts).
            reqwest::Method::POST,
            "/fhir/Encounter".into(),
            Some("application/fhir+json"),
            r#"{"resourceType":"Encounter","status":"finished","class":{"code":"VR"},"period":{"start":"2026-02-01","end":"2026-01-01"}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invariant",
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
            "/fhir/Patient?birthdate=ge1990-13".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient?gender.name=x".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient?_sort=nickname".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Observation?value-quantity=sa5".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::GET,
            "/fhir/Patient?gender:exact=male".into(),
            None,
            "".into(),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            reqwest::Method::PATCH,
            format!("/fhir/Patient/{id}/_history/1"),
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

async fn an_invalid_resource_gets_every_problem_located(app: TestApp) {
    let body = r#"{"resourceType":"Patient","gender":7,"birthDate":"30/04/1990","name":{"family":"Nguyễn"},"nickname":"Hoa","telecom":[{"system":"phone","value":""}],"contact":[{"name":{"given":["Lan"]},"gender":"female","periodx":{}}],"deceasedBoolean":true,"deceasedDateTime":"2020","contained":[{"resourceType":"Observation","status":"final"}],"_birthDate":{"extension":[{"valueString":"x"}]}}"#;
    let response = app.post_raw("/fhir/Patient", body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let outcome: Value = response.json().await.unwrap();
    let mut found: Vec<(String, String)> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["expression"][0].as_str().unwrap().to_string(),
                i["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    let mut expected: Vec<(String, String)> = [
        ("Patient.gender", "value"),
        ("Patient.birthDate", "value"),
        ("Patient.name", "structure"),
        ("Patient.nickname", "structure"),
        ("Patient.telecom[0].value", "value"),
        ("Patient.contact[0].periodx", "structure"),
        ("Patient.contained[0].code", "required"),
        ("Patient._birthDate.extension[0].url", "required"),
    ]
    .iter()
    .map(|(e, c)| (e.to_string(), c.to_string()))
    .collect();
    expected.sort();
    for item in &expected {
        assert!(found.contains(item), "missing {item:?} in {found:?}");
    }
    assert_eq!(app.history_rows().await, 0);
}

async fn validate_reports_problems_without_writing(app: TestApp) {
    let validate = |path: &str, body: String| {
        app.request(reqwest::Method::POST, path)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
    };
    // A valid resource: 200 with an information issue.
    let mut valid = patient("087090000401");
    valid["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Patient</div>"});
    let ok = validate("/fhir/Patient/$validate", valid.to_string())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let outcome: Value = ok.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["severity"], "information", "{outcome}");
    // Without narrative: valid still, with dom-6 as a warning.
    let warned = validate(
        "/fhir/Patient/$validate",
        patient("087090000401").to_string(),
    )
    .await
    .unwrap();
    let outcome: Value = warned.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["severity"], "warning", "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "invariant", "{outcome}");
    assert_eq!(outcome["issue"].as_array().unwrap().len(), 1, "{outcome}");
    // An invalid one: still 200, the problems listed with their expressions.
    let bad = validate(
        "/fhir/Observation/$validate",
        r#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":"72"}}"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::OK);
    let outcome: Value = bad.json().await.unwrap();
    let expressions: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert!(
        expressions.contains(&"Observation.code")
            && expressions.contains(&"Observation.valueQuantity.value"),
        "{outcome}"
    );
    // Inside Parameters, and at instance level against the stored version.
    let wrapped = serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": valid}]});
    let ok: Value = validate("/fhir/Patient/$validate", wrapped.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["issue"][0]["severity"], "information");
    let (id, _) = app.create(&patient("087090000403")).await;
    let stored = app
        .request(
            reqwest::Method::POST,
            &format!("/fhir/Patient/{id}/$validate"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    // A profile is not silently ignored; a type mismatch is named.
    let profiled = serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("1")}, {"name": "profile", "valueUri": "http://fhir.ehealth.gov.vn/core/StructureDefinition/vn-core-patient"}]});
    assert_eq!(
        validate("/fhir/Patient/$validate", profiled.to_string())
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        validate("/fhir/Observation/$validate", patient("1").to_string())
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.history_rows().await,
        1,
        "only the explicit create wrote"
    );
}

/// A pooled PostgreSQL connection that the server dropped (here: its backend terminated) is
/// not pinged before each use; the one request that finds it broken answers 503 with
/// `Retry-After`, never 500, and the next request gets a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_answers_503_once_on_postgres() {
    let Some(app) = TestApp::postgres_with(|c| c.database.max_connections = 1).await else {
        return;
    };
    let (id, _) = app.create(&patient("087090000110")).await;
    let read = format!("/fhir/Patient?_id={id}");
    assert_eq!(app.get(&read).await.status(), StatusCode::OK);
    let terminated: i64 = sqlx::query_scalar(
        "WITH others AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) \
         SELECT count(*) FROM others WHERE pg_terminate_backend(pid)",
    )
    .fetch_one(app.db.writer())
    .await
    .unwrap();
    assert!(
        terminated >= 1,
        "the server's reading connection was terminated"
    );
    let lost = app.get(&read).await;
    assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(lost.headers()["retry-after"], "1");
    let outcome: Value = lost.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "transient", "{outcome}");
    assert_eq!(app.get(&read).await.status(), StatusCode::OK);
}
