//! Rate limits (issue 5): per client address and per authenticated client, 429 with
//! `Retry-After` past the limit, on the in-memory store and on Redis.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use sen_platform::{
    Config,
    auth::{Role, TokenRequest},
};
use serde_json::Value;

use crate::support::TestApp;

const PER_CLIENT: u64 = 5;
const PER_ADDRESS: u64 = 8;

fn limited(config: &mut Config) {
    config.rate_limit.per_client_per_minute = PER_CLIENT;
    config.rate_limit.per_ip_per_minute = PER_ADDRESS;
    // As behind one ingress: the client's address is the last X-Forwarded-For entry, which
    // lets each run count addresses of its own on a shared Redis.
    config.rate_limit.forwarded_for_hops = 1;
}

fn minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

/// One run of the scenario with fresh clients and addresses; `false` when the minute turned
/// during it (the counters restarted, so its answers prove nothing either way).
async fn scenario(app: &TestApp) -> bool {
    let started = minute();
    let client = |subject: &str| {
        app.auth
            .mint(&TokenRequest {
                role: Role::System,
                subject: Some(subject.to_string()),
                patient: None,
                practitioner: None,
                scope: None,
                ttl_secs: 600,
            })
            .unwrap()
    };
    let a = client(&uuid::Uuid::new_v4().to_string());
    let b = client(&uuid::Uuid::new_v4().to_string());
    let n = || rand_octet();
    let (here, there, anonymous) = (
        format!("10.{}.{}.{}", n(), n(), n()),
        format!("10.{}.{}.{}", n(), n(), n()),
        format!("10.{}.{}.{}", n(), n(), n()),
    );
    let send = |token: Option<String>, address: String, path: &'static str| async move {
        let mut request = app
            .anonymous(Method::GET, path)
            .header("x-forwarded-for", format!("192.0.2.7, {address}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    };
    let mut answers = Vec::new();
    // Client a, from one address: its limit, then refused.
    for _ in 0..=PER_CLIENT {
        answers.push((
            "a here",
            send(Some(a.clone()), here.clone(), "/fhir/Patient").await,
        ));
    }
    // Client b from the same address: the address's limit (a's refused request counted too).
    for _ in 0..(PER_ADDRESS - PER_CLIENT) {
        answers.push((
            "b here",
            send(Some(b.clone()), here.clone(), "/fhir/Patient").await,
        ));
    }
    // Client b elsewhere: its own count is low, that address's too.
    answers.push((
        "b there",
        send(Some(b.clone()), there.clone(), "/fhir/Patient").await,
    ));
    // Health is never limited, even from an address past its limit.
    answers.push((
        "health here",
        send(None, here.clone(), "/health/live").await,
    ));
    // Requests without a token count against their address like any other.
    for _ in 0..=PER_ADDRESS {
        answers.push((
            "anonymous",
            send(None, anonymous.clone(), "/fhir/Patient").await,
        ));
    }
    if minute() != started {
        return false;
    }
    let statuses: Vec<(&str, StatusCode)> = answers.iter().map(|(w, r)| (*w, r.status())).collect();
    let ok = StatusCode::OK;
    let limited = StatusCode::TOO_MANY_REQUESTS;
    let mut expected = vec![("a here", ok); PER_CLIENT as usize];
    expected.push(("a here", limited));
    expected.extend(vec![
        ("b here", ok);
        (PER_ADDRESS - PER_CLIENT - 1) as usize
    ]);
    expected.push(("b here", limited));
    expected.push(("b there", ok));
    expected.push(("health here", ok));
    expected.extend(vec![
        ("anonymous", StatusCode::UNAUTHORIZED);
        PER_ADDRESS as usize
    ]);
    expected.push(("anonymous", limited));
    assert_eq!(statuses, expected);
    for (who, response) in answers {
        if response.status() == limited {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{who}: Retry-After {retry}");
            let outcome: Value = response.json().await.unwrap();
            assert_eq!(outcome["issue"][0]["code"], "throttled", "{who}");
            let text = outcome.to_string();
            assert!(
                !text.contains("10."),
                "{who}: no address in the answer: {text}"
            );
        }
    }
    true
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

async fn limits_hold_per_client_and_per_address(app: TestApp) {
    for _ in 0..3 {
        if scenario(&app).await {
            return;
        }
    }
    panic!("the minute turned during three runs in a row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_on_the_in_memory_store() {
    let app = TestApp::sqlite_with(|config| {
        limited(config);
        config.redis.url = None;
    })
    .await;
    assert!(!app.redis);
    limits_hold_per_client_and_per_address(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_on_redis() {
    let Some(redis) = sen_platform::testing::required_env("TEST_REDIS_URL", "Redis") else {
        return;
    };
    let app = TestApp::sqlite_with(|config| {
        limited(config);
        config.redis.url = Some(sen_platform::config::Secret::new(redis));
    })
    .await;
    assert!(app.redis);
    limits_hold_per_client_and_per_address(app).await;
}
