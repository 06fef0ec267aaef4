//! System tests: the real `sen` binary, real PostgreSQL, and `fhir-sdk`'s FHIR client as an
//! independent consumer of the API.

mod aiortc;
mod browser;
mod conformance;
mod failover;
mod fhirpath_js;
mod fhirpy;
mod support;

use std::{collections::BTreeSet, process::Command, time::Duration};

use fhir_sdk::{
    client::{Client, SearchParameters, TokenSearch},
    r4b::{
        codes::AdministrativeGender,
        resources::{Patient, ResourceType},
        types::{HumanName, Identifier},
    },
    version::FhirR4B,
};
use serde_json::{Value, json};
use support::{Sen, Store, sen_binary};

const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/national_id";

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name(super::Store::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if let Some(store) = super::Store::postgres().await {
                    super::$name(store).await;
                }
            }
        }
    )*};
}

mod every_r4_resource_survives_put_and_transaction {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite() {
        super::conformance::every_r4_resource_survives_put_and_transaction(
            super::Store::sqlite(),
            super::Store::sqlite(),
        )
        .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        let (Some(a), Some(b)) = (
            super::Store::postgres().await,
            super::Store::postgres().await,
        ) else {
            return;
        };
        super::conformance::every_r4_resource_survives_put_and_transaction(a, b).await;
    }
}

/// In a network namespace of its own, on the embedded store (see `browser`).
mod the_consultation_page_works_in_a_real_browser {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_network_namespace() {
        super::browser::the_consultation_page_works_in_a_real_browser(
            "the_consultation_page_works_in_a_real_browser::in_a_network_namespace",
        )
        .await;
    }
}

/// In a network namespace of its own, with a Redis of its own (see `browser`).
mod the_consultation_page_follows_its_room_to_another_node {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_network_namespace() {
        super::browser::the_consultation_page_follows_its_room_to_another_node(
            "the_consultation_page_follows_its_room_to_another_node::in_a_network_namespace",
        )
        .await;
    }
}

/// In a network namespace of its own, on the embedded store (see `aiortc`).
mod aiortc_and_a_rust_peer_talk_through_the_server {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_network_namespace() {
        super::aiortc::aiortc_and_a_rust_peer_talk_through_the_server(
            "aiortc_and_a_rust_peer_talk_through_the_server::in_a_network_namespace",
        )
        .await;
    }
}

/// Two nodes share their database: PostgreSQL only (see `failover`).
mod a_call_goes_on_when_its_media_node_is_killed {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        if let Some(store) = super::Store::postgres().await {
            super::failover::a_call_goes_on_when_its_media_node_is_killed(store).await;
        }
    }
}

use fhirpy::fhirpy_finds_what_the_rules_say;

on_both_backends!(
    fhirpy_finds_what_the_rules_say,
    the_fhir_sdk_client_creates_reads_updates_searches_and_deletes,
    every_acknowledged_create_survives_a_sigkill,
    sigterm_lets_the_server_stop_cleanly,
);

async fn the_fhir_sdk_client_creates_reads_updates_searches_and_deletes(store: Store) {
    let sen = Sen::start(&store.url());
    // No token up front: the server's 401 makes the client log in (its auth callback) and
    // retry, as a SMART client does.
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = logins.clone();
    let client: Client<FhirR4B> = Client::builder()
        .base_url(format!("{}/", sen.fhir()).parse().unwrap())
        .auth_callback(move |_http: fhir_sdk::HttpClient| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                fhir_sdk::HeaderValue::from_str(&format!("Bearer {}", support::system_token()))
            }
        })
        .build()
        .unwrap();

    let patient = Patient::builder()
        .identifier(vec![Some(
            Identifier::builder()
                .system(CCCD.to_string())
                .value("087090001234".to_string())
                .build()
                .unwrap(),
        )])
        .name(vec![Some(
            HumanName::builder()
                .family("Trần".to_string())
                .given(vec![Some("Minh".to_string())])
                .build()
                .unwrap(),
        )])
        .gender(AdministrativeGender::Male)
        .build()
        .unwrap();
    let (id, version) = client.create(&patient).await.expect("create");
    assert_eq!(version.as_deref(), Some("1"));

    let mut read: Patient = client
        .read::<Patient>(&id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        read.name[0].as_ref().unwrap().family.as_deref(),
        Some("Trần")
    );
    assert_eq!(read.meta.as_ref().unwrap().version_id.as_deref(), Some("1"));

    // A version-aware update sends If-Match with the version it read.
    read.gender = Some(AdministrativeGender::Female);
    let (created, version) = client.update(&read, true).await.expect("update");
    assert!(!created);
    assert_eq!(version, "2");
    // The same stale copy now conflicts.
    let stale = client.update(&read, true).await;
    assert!(
        stale.is_err(),
        "an update from version 1 must be refused after version 2"
    );

    let found = client
        .search::<Patient>(SearchParameters::empty().and(TokenSearch::Standard {
            name: "identifier",
            system: Some(CCCD),
            code: Some("087090001234"),
            not: false,
        }))
        .await
        .expect("search");
    let ids: Vec<String> = found.matches().map(|p| p.id.clone().unwrap()).collect();
    assert_eq!(ids, vec![id.clone()]);

    let history = client.history::<Patient>(Some(&id)).await.expect("history");
    assert_eq!(history.entries().count(), 2);

    let v1: Patient = client
        .read_version::<Patient>(&id, "1")
        .await
        .expect("vread")
        .expect("v1");
    assert_eq!(v1.gender, Some(AdministrativeGender::Male));

    client
        .delete(ResourceType::Patient, &id)
        .await
        .expect("delete");
    assert!(
        client
            .read::<Patient>(&id)
            .await
            .expect("read after delete")
            .is_none()
    );

    // Error bodies are OperationOutcomes that fhir-sdk's own model parses.
    assert_eq!(
        logins.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the client logged in once, after the server's first 401, and kept its token"
    );
    let raw = support::http()
        .get(format!("{}/Patient/{id}", sen.fhir()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 410);
    let outcome: fhir_sdk::r4b::resources::OperationOutcome =
        raw.json().await.expect("an R4B OperationOutcome");
    assert_eq!(outcome.issue.len(), 1);
}

async fn every_acknowledged_create_survives_a_sigkill(store: Store) {
    let url = store.url();
    let mut sen = Sen::start(&url);
    let fhir = sen.fhir();
    // Writers report every create the server acknowledged (201 with a body).
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let http = support::http();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (http, fhir, acked_tx) = (http.clone(), fhir.clone(), acked_tx.clone());
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let body = json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("w{writer}-{n}")}, "valueQuantity": {"value": 36.60, "unit": "Cel"}});
                let sent = http.post(format!("{fhir}/Observation")).header("content-type", "application/fhir+json").body(body.to_string()).send().await;
                let Ok(response) = sent else { return };
                if response.status() != 201 {
                    return;
                }
                let Ok(text) = response.text().await else { return };
                let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_string();
                let _ = acked_tx.send((id, text));
            }
        }));
    }
    drop(acked_tx);
    // Kill once enough writes are acknowledged, with more still in flight.
    let mut acknowledged = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.len() < 300 {
        let ack = tokio::time::timeout_at(deadline, acked_rx.recv()).await;
        acknowledged.push(
            ack.expect("300 creates acknowledged within 60 s")
                .expect("writers alive"),
        );
    }
    // A read answered just before the kill: its access record was durable before the answer.
    let read = http
        .get(format!("{fhir}/Observation/{}", acknowledged[0].0))
        .header("x-request-id", "read-before-kill")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    sen.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    while let Some(ack) = acked_rx.recv().await {
        acknowledged.push(ack);
    }

    let restarted = Sen::start(&url);
    for (id, stored) in &acknowledged {
        let response = http
            .get(format!("{}/Observation/{id}", restarted.fhir()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "acknowledged Observation/{id} lost after SIGKILL"
        );
        assert_eq!(&response.text().await.unwrap(), stored);
    }
    eprintln!(
        "{} acknowledged creates all readable after SIGKILL and restart",
        acknowledged.len()
    );

    // Each create committed with its AuditEvent or not at all: the Observations stored (those
    // acknowledged, and any the kill caught between commit and answer) and the creations the
    // AuditEvents name are the same set, each named once.
    let stored: BTreeSet<String> = every_page(&http, &restarted, "Observation?_count=1000")
        .await
        .iter()
        .map(|o| format!("Observation/{}/_history/1", o["id"].as_str().unwrap()))
        .collect();
    let events = every_page(&http, &restarted, "AuditEvent?subtype=create&_count=1000").await;
    let mut named: Vec<String> = events
        .iter()
        .flat_map(|e| e["entity"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
        .filter(|r| r.starts_with("Observation/"))
        .collect();
    named.sort();
    let before = named.len();
    named.dedup();
    assert_eq!(named.len(), before, "a creation named by two AuditEvents");
    let named: BTreeSet<String> = named.into_iter().collect();
    assert_eq!(
        stored.difference(&named).count() + named.difference(&stored).count(),
        0,
        "stored without an AuditEvent: {:?}; AuditEvent without the write: {:?}",
        stored.difference(&named).collect::<Vec<_>>(),
        named.difference(&stored).collect::<Vec<_>>()
    );
    let read_events = every_page(
        &http,
        &restarted,
        "AuditEvent?entity:identifier=urn:sen:request-id|read-before-kill",
    )
    .await;
    assert_eq!(
        read_events.len(),
        1,
        "the read before the kill is on record"
    );
    eprintln!(
        "{} creations and their {} AuditEvents agree after SIGKILL",
        stored.len(),
        named.len()
    );
}

/// Every resource of a search, following `next` links.
async fn every_page(http: &reqwest::Client, sen: &Sen, search: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut url = Some(format!("{}/{search}", sen.fhir()));
    while let Some(u) = url.take() {
        let response = http.get(&u).send().await.unwrap();
        assert_eq!(response.status(), 200, "{u}");
        let page: Value = response.json().await.unwrap();
        found.extend(
            page["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone()),
        );
        url = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    found
}

async fn sigterm_lets_the_server_stop_cleanly(store: Store) {
    let mut sen = Sen::start(&store.url());
    let response = reqwest::get(format!("{}/health/ready", sen.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    sen.signal("TERM");
    let status = sen
        .wait_for_exit(Duration::from_secs(30))
        .expect("sen stops within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn help_explains_the_commands_to_a_newcomer() {
    let output = Command::new(sen_binary()).arg("--help").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success());
    for word in ["serve", "migrate", "config", "DATABASE_URL", "/fhir"] {
        assert!(text.contains(word), "--help should mention {word}:\n{text}");
    }
}

#[test]
fn an_unknown_configuration_key_stops_start_up_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sen.toml");
    std::fs::write(&config, "[server]\nlisten_addr = \"127.0.0.1:0\"\n").unwrap();
    let output = Command::new(sen_binary())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8(output.stderr).unwrap();
    assert!(
        message.contains("listen_addr") && message.contains("listen"),
        "{message}"
    );

    let output = Command::new(sen_binary())
        .arg("config")
        .env("SEN_LISTEN_PORT", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("SEN_LISTEN_PORT")
    );
}

#[test]
fn the_printed_configuration_hides_passwords() {
    let output = Command::new(sen_binary())
        .arg("config")
        .env(
            "DATABASE_URL",
            "postgres://sen:s3cr3t-pw@db.internal:5432/sen",
        )
        .env("REDIS_URL", "redis://:r3dis-pw@cache:6379/0")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !text.contains("s3cr3t-pw") && !text.contains("r3dis-pw"),
        "{text}"
    );
    assert!(
        text.contains("postgres://sen:***@db.internal:5432/sen"),
        "{text}"
    );
}

#[tokio::test]
async fn serve_on_postgres_refuses_to_start_with_pending_migrations_until_migrated() {
    let Some(store) = Store::postgres().await else {
        return;
    };
    let output = Command::new(sen_binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", store.url())
        .env("SEN_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8(output.stderr).unwrap();
    assert!(message.contains("sen migrate"), "{message}");

    let migrate = Command::new(sen_binary())
        .arg("migrate")
        .env("DATABASE_URL", store.url())
        .env("SEN_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        String::from_utf8(migrate.stdout)
            .unwrap()
            .contains("applied ehr migration 1")
    );
    let again = Command::new(sen_binary())
        .arg("migrate")
        .env("DATABASE_URL", store.url())
        .env("SEN_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        String::from_utf8(again.stdout)
            .unwrap()
            .contains("up to date")
    );

    let sen = Sen::start_with(&store.url(), &[]);
    let response = reqwest::get(format!("{}/fhir/metadata", sen.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Runs `sen serve` expecting it to refuse to start; answers its stderr. A server that starts
/// anyway is killed after a deadline and fails the test.
fn serve_must_refuse(envs: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(sen_binary())
        .arg("serve")
        .env("SEN_DATA_DIR", data.path())
        .env("SEN_LISTEN", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sen started despite {envs:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn a_broken_profile_stops_start_up_naming_the_file_and_the_problem() {
    let profiles = tempfile::tempdir().unwrap();
    let file = profiles
        .path()
        .join("StructureDefinition-clinic-patient.json");
    std::fs::write(
        &file,
        r#"{"resourceType":"StructureDefinition","url":"http://clinic.example/p","type":"Patient",
            "derivation":"constraint","baseDefinition":"http://hl7.org/fhir/StructureDefinition/Patient",
            "differential":{"element":[{"path":"Patient.gendr","min":1}]}}"#,
    )
    .unwrap();
    let message = serve_must_refuse(&[("SEN_FHIR_PROFILE_DIR", profiles.path().to_str().unwrap())]);
    assert!(
        message.contains("StructureDefinition-clinic-patient.json")
            && message.contains("gendr is not an element of Patient"),
        "{message}"
    );
    let message = serve_must_refuse(&[(
        "SEN_FHIR_REQUIRED_PROFILES",
        "Patient=http://fhir.sen.vn/StructureDefinition/sen-vn-encounter-remote",
    )]);
    assert!(
        message.contains("fhir.required_profiles.Patient")
            && message.contains("constrains Encounter"),
        "{message}"
    );
}

/// Tokens never reach the log: a server logging at debug level is sent a valid token, a
/// tampered one and garbage; its whole log holds none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log() {
    let store = Store::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sen.log");
    let mut sen = Sen::start_logging_to(&store.url(), &[("SEN_LOG", "debug")], &log);
    let valid = support::system_token();
    let (head, signature) = valid.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}", signature.chars().rev().collect::<String>());
    let garbage = "not-a-token-but-a-secret-all-the-same-7f3a9c";
    let http = reqwest::Client::new();
    for token in [valid.as_str(), tampered.as_str(), garbage] {
        let response = http
            .get(format!("{}/Patient?name=nguyen", sen.fhir()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert!(response.status() == 200 || response.status() == 401);
    }
    sen.signal("TERM");
    sen.wait_for_exit(Duration::from_secs(30)).expect("stops");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving"), "the log was captured: {text}");
    for (name, secret) in [
        ("valid signature", signature),
        ("tampered signature", tampered.rsplit_once('.').unwrap().1),
        ("payload", head.split_once('.').unwrap().1),
        ("garbage", garbage),
    ] {
        assert!(
            !text.contains(secret),
            "the {name} of a token is in the log"
        );
    }
}

/// `server.metrics_listen`: `/metrics` answers on its own address (an internal interface)
/// and no longer beside the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_served_on_an_address_of_their_own() {
    let store = Store::sqlite();
    let sen = Sen::start_env(&store.url(), &[("SEN_METRICS_LISTEN", "127.0.0.1:0")]);
    let metrics_url = sen
        .banner
        .split_whitespace()
        .find(|w| w.ends_with("/metrics,"))
        .expect("the banner names the metrics address")
        .trim_end_matches(',')
        .to_string();
    assert!(!metrics_url.starts_with(&sen.base), "{}", sen.banner);
    let scraped = reqwest::get(&metrics_url).await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("db_pool_connections")
    );
    let beside_api = reqwest::get(format!("{}/metrics", sen.base)).await.unwrap();
    assert_eq!(beside_api.status(), 404);
}
