//! The consultation page in a real browser (issue 6): headless Chromium (Debian `chromium`)
//! driven by npm `playwright-core` opens `/consult/{room}` of the real `sen` binary as the
//! doctor and as the patient, with fake camera and microphone; the patient waits, the doctor
//! admits it, each page decodes more than 100 frames of the other's video through the
//! server's forwarding unit, a chat message crosses, the language switches, the doctor ends
//! the consultation (`tests/browser/consult.cjs`). Screenshots of both pages are kept in
//! `<target>/tmp/browser-artifacts/`.
//!
//! Chromium ignores loopback addresses for media, so the test runs in a private network
//! namespace it makes (`unshare -n`, root): loopback for HTTP and signaling, and a veth pair
//! 10.99.0.1/24 ↔ 10.99.0.2/24 for media. The test binary runs itself again inside it, with
//! the embedded store (SQLite, memory state): PostgreSQL and Redis are outside.
//!
//! playwright-core is installed once with npm into `~/.cache/sen-playwright` (or
//! `$SEN_PLAYWRIGHT_CACHE`); without Chromium or npm the test skips with a notice, except under
//! CI=true (`.ci/run` installs Chromium).

use std::{path::PathBuf, process::Command};

use serde_json::{Value, json};

use crate::support::{Sen, Store, ci, http, inside_netns, npm_installed, rerun_in_netns, token};

const PLAYWRIGHT: &str = "playwright-core@1.57.0";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The playwright-core module directory, installed on first use.
fn playwright() -> Option<PathBuf> {
    if !std::path::Path::new(CHROMIUM).exists() {
        let what = "no Chromium at /usr/bin/chromium (apt install chromium)";
        assert!(!ci(), "{what} under CI=true: the browser test must run");
        eprintln!("NOTICE: {what}; skipping the browser test");
        return None;
    }
    let cache = npm_installed(
        PLAYWRIGHT,
        "SEN_PLAYWRIGHT_CACHE",
        "sen-playwright",
        "the browser test",
    )?;
    Some(cache.join("node_modules/playwright-core"))
}

async fn created(client: &reqwest::Client, base: &str, resource: Value) -> String {
    let rt = resource["resourceType"].as_str().unwrap().to_string();
    let response = client
        .post(format!("{base}/fhir/{rt}"))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "create {rt}");
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn posted(base: &str, bearer: &str, path: &str, body: &Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// Runs in a network namespace of its own (the test binary again, this one test only);
/// playwright-core is installed first, outside, where the registry is.
pub async fn the_consultation_page_works_in_a_real_browser(test: &str) {
    let Some(module) = playwright() else { return };
    if inside_netns() {
        return in_the_namespace(module, false).await;
    }
    rerun_in_netns(test).await;
}

/// The same consultation, with the room held by a node that died (its lease, held by a node
/// that never answers, lapses 10 s after the room is opened; the server keeps its state in a
/// Redis of the namespace's own): the pages' first media offers go nowhere, the server takes
/// the room and says `moved`, and both pages open their media again and see each other.
pub async fn the_consultation_page_follows_its_room_to_another_node(test: &str) {
    let Some(module) = playwright() else { return };
    if inside_netns() {
        return in_the_namespace(module, true).await;
    }
    rerun_in_netns(test).await;
}

/// A `redis-server` of the test's own (in its network namespace), stopped when dropped.
struct Redis;

impl Redis {
    const URL: &str = "redis://127.0.0.1:6391";

    fn start() -> Option<sen_platform::testing::Helper> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "6391", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"]);
        sen_platform::testing::Helper::start(
            command,
            "Ready to accept connections",
            "apt install redis-server",
            "moved-room browser",
        )
    }
}

/// Places `room` on a node that died (a lease far longer than the test) and watches what
/// reaches that node; once both participants have offered their media there, the lease is
/// left to run out (3 s): no guess at how long the pages take to get there.
async fn hold_until_both_offered(room: &str) -> tokio::task::JoinHandle<()> {
    const DEAD: &str = "a-node-that-died";
    let kv = sen_platform::kv::connect(Some(Redis::URL), "sen")
        .await
        .expect("the namespace's Redis");
    let mut relayed = kv
        .subscribe(&format!("telehealth:media:{DEAD}"))
        .await
        .expect("watch the dead node's negotiation");
    let key = format!("room:{room}:node");
    let held = kv
        .set_if_absent(&key, DEAD.as_bytes(), std::time::Duration::from_secs(600))
        .await
        .unwrap();
    assert!(held, "the room held by the dead node");
    tokio::spawn(async move {
        let mut offered = std::collections::HashSet::new();
        while offered.len() < 2 {
            let Some((_, payload)) = relayed.recv().await else {
                return;
            };
            let message: Value = serde_json::from_slice(&payload).unwrap_or_default();
            if message["message"]["type"] == "offer"
                && let Some(participant) = message["participant"].as_str()
            {
                offered.insert(participant.to_string());
            }
        }
        // Its last renewal runs out a little later, as a node that died leaves its rooms.
        let last = std::time::Duration::from_secs(3);
        assert!(
            kv.extend_if(&key, DEAD.as_bytes(), last).await.unwrap(),
            "the dead node's lease"
        );
    })
}

/// A clinic, its patient and doctor, a booked appointment, the doctor's room on it, and the
/// two join grants: (room, doctor's grant, patient's grant).
pub async fn consultation(client: &reqwest::Client, base: &str) -> (String, String, String) {
    let base = base.to_string();
    let org = created(
        client,
        &base,
        json!({"resourceType": "Organization", "name": "Trạm Y tế phường Cao Lãnh"}),
    )
    .await;
    let managed = json!({"reference": format!("Organization/{org}")});
    let patient = created(
        client,
        &base,
        json!({"resourceType": "Patient", "managingOrganization": managed}),
    )
    .await;
    let doctor = created(client, &base, json!({"resourceType": "Practitioner"})).await;
    created(
        client,
        &base,
        json!({"resourceType": "PractitionerRole", "active": true,
        "practitioner": {"reference": format!("Practitioner/{doctor}")}, "organization": managed}),
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let at = |minutes: i64| {
        (now + time::Duration::minutes(minutes))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let appointment = created(
        client,
        &base,
        json!({"resourceType": "Appointment", "status": "booked",
        "start": at(-5), "end": at(30),
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"reference": format!("Practitioner/{doctor}")}, "status": "accepted"}]}),
    )
    .await;
    let doctor_token = token(&[
        "--role",
        "practitioner",
        "--practitioner",
        &format!("Practitioner/{doctor}"),
    ]);
    let patient_token = token(&[
        "--role",
        "patient",
        "--patient",
        &format!("Patient/{patient}"),
    ]);
    let room = posted(
        &base,
        &doctor_token,
        "/telehealth/v1/rooms",
        &json!({"appointment": format!("Appointment/{appointment}")}),
    )
    .await;
    let room = room["room"].as_str().unwrap().to_string();
    let tokens = format!("/telehealth/v1/rooms/{room}/tokens");
    let doctor_grant = posted(&base, &doctor_token, &tokens, &json!({})).await;
    let patient_grant = posted(&base, &patient_token, &tokens, &json!({})).await;

    let grant = |v: &Value| v["token"].as_str().unwrap().to_string();
    (room, grant(&doctor_grant), grant(&patient_grant))
}

async fn in_the_namespace(module: PathBuf, moved: bool) {
    let store = Store::sqlite();
    let redis = if moved {
        let Some(redis) = Redis::start() else { return };
        Some(redis)
    } else {
        None
    };
    let sen = match redis {
        Some(_) => Sen::start_env(&store.url(), &[("SEN_REDIS_URL", Redis::URL)]),
        None => Sen::start(&store.url()),
    };
    let base = sen.base.clone();
    let (room, doctor_grant, patient_grant) = consultation(&http(), &base).await;
    // With Redis: the room is held by a node that died, whose lease runs out only after both
    // pages have sent it their offers (nobody answers them): then the live node places the
    // room again and the pages must open their media anew.
    let dead_node = match redis {
        Some(_) => Some(hold_until_both_offered(&room).await),
        None => None,
    };

    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("browser-artifacts")
        .join(if moved { "moved" } else { store.name() });
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/consult.cjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args([
                base.as_str(),
                room.as_str(),
                doctor_grant.as_str(),
                patient_grant.as_str(),
            ])
            .arg(&artifacts)
            .env("PLAYWRIGHT_CORE", module)
            .env("CHROMIUM", CHROMIUM)
            .env("EXPECT_MOVED", if moved { "1" } else { "" })
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the browser test failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(dead_node) = dead_node {
        dead_node.abort();
    }
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["ended"], "Buổi khám đã kết thúc.");
    assert!(result["doctorFrames"].as_u64() > Some(100), "{result}");
    assert!(result["patientFrames"].as_u64() > Some(100), "{result}");
    println!("browser: {result}");
    drop(sen);
    drop(redis);
}
