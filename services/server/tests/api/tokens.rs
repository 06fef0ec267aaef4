//! Tokens (issue 5): every FHIR endpoint but the CapabilityStatement needs a valid bearer
//! token; forged, stale and misdirected tokens get 401 with a challenge, and an issuer whose
//! keys cannot be had gets 503.
//!
//! The tests trust an external issuer whose JWKS document a small server in the test
//! publishes (as Keycloak would), and sign their own tokens with its keys.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::support::TestApp;

const ISSUER: &str = "https://idp.test/realms/cao-lanh";

/// The test's OpenID provider: two keys (Ed25519 `ed-1`, P-256 `ec-1`) and a JWKS document
/// served on 127.0.0.1, counting how often it is fetched.
struct Provider {
    ed: Vec<u8>,
    ec: Vec<u8>,
    ed_x: String,
    url: String,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    async fn start() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ed_public = Ed25519KeyPair::from_pkcs8(&ed)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let ec_public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec, &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes).
        let ed_x = URL_SAFE_NO_PAD.encode(&ed_public);
        let document = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "ed-1", "use": "sig", "alg": "EdDSA"},
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig",
             "x": URL_SAFE_NO_PAD.encode(&ec_public[1..33]), "y": URL_SAFE_NO_PAD.encode(&ec_public[33..])},
            // A symmetric key is never trusted, whatever a token says.
            {"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode(b"a shared secret")}
        ]});
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let app = axum::Router::new().route(
            "/certs",
            axum::routing::get(move || {
                let document = document.clone();
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    axum::Json(document)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider {
            ed,
            ec,
            ed_x,
            url,
            fetches,
        }
    }

    fn sign(&self, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_der(&self.ed),
            Algorithm::ES256 => EncodingKey::from_ec_der(&self.ec),
            _ => unreachable!("the provider signs with EdDSA or ES256"),
        };
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid system token from the test's provider.
fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "service-account-lab", "aud": "sen", "exp": now() + 600,
           "iat": now(), "scope": "system/*.cruds", "realm_access": {"roles": ["system"]}})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// An unsigned JWT of `header` and `claims` with `signature` appended.
fn compact(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn app_trusting(provider: &Provider) -> TestApp {
    let url = provider.url.clone();
    TestApp::sqlite_with(move |config| {
        config.auth.issuers.insert(ISSUER.into(), url);
    })
    .await
}

/// Every refused token: 401, an RFC 6750 challenge, an OperationOutcome that says why in
/// general terms, and never the token itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_misdirected_tokens_are_refused_with_a_challenge() {
    let provider = Provider::start().await;
    let app = app_trusting(&provider).await;
    let path = "/fhir/Patient";

    // Valid tokens of both algorithms pass (this also fetches the JWKS document once).
    for (algorithm, kid) in [(Algorithm::EdDSA, "ed-1"), (Algorithm::ES256, "ec-1")] {
        let token = provider.sign(algorithm, kid, &claims());
        let response = app
            .request_as(&token, Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{algorithm:?}");
    }
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);

    let missing = app.anonymous(Method::GET, path).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"sen\"",
        "no error code when no token was sent (RFC 6750 §3)"
    );

    let valid = provider.sign(Algorithm::EdDSA, "ed-1", &claims());
    let (header, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let hs256_with_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("ed-1".into());
        jsonwebtoken::encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(provider.ed_x.as_bytes()),
        )
        .unwrap()
    };
    let hs256_with_jwks_secret = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hs-1".into());
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"a shared secret")).unwrap()
    };
    let ed = |claims: Value| provider.sign(Algorithm::EdDSA, "ed-1", &claims);
    let without = |key: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not a JWT", "abc".into(), "well-formed"),
        (
            "expired",
            ed(with(claims(), "exp", json!(now() - 3600))),
            "expired",
        ),
        (
            "not yet valid",
            ed(with(claims(), "nbf", json!(now() + 3600))),
            "not valid yet",
        ),
        (
            "issuer not trusted",
            ed(with(claims(), "iss", json!("https://idp.evil/realms/x"))),
            "issuer",
        ),
        (
            "another audience",
            ed(with(claims(), "aud", json!("another-api"))),
            "audience",
        ),
        ("no expiry", ed(without("exp")), "well-formed"),
        (
            "alg none",
            compact(&json!({"alg": "none", "typ": "JWT"}), &claims(), ""),
            "well-formed",
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key,
            "algorithm",
        ),
        (
            "HS256 keyed with a JWKS secret",
            hs256_with_jwks_secret,
            "key",
        ),
        (
            "ES256 header on the Ed25519 key",
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "ed-1"}).to_string()),
                rest
            ),
            "algorithm",
        ),
        (
            "tampered payload",
            format!(
                "{header}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(with(claims(), "sub", json!("someone-else")).to_string())
            ),
            "signature",
        ),
        (
            "unknown key id",
            provider.sign(Algorithm::EdDSA, "ed-2", &claims()),
            "key",
        ),
        ("no role", ed(without("realm_access")), "role"),
    ];
    for (case, token, says) in &cases {
        let response = app
            .request_as(token, Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer realm=\"sen\", error=\"invalid_token\""),
            "{case}: {challenge}"
        );
        let body = response.text().await.unwrap();
        let outcome: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}");
        assert_eq!(outcome["issue"][0]["code"], "login", "{case}");
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(says), "{case}: {diagnostics}");
        assert!(
            !body.contains(token.as_str()) || token.len() < 8,
            "{case}: token echoed"
        );
    }
    // Made-up key ids do not make Sen fetch the provider's keys again and again.
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);

    // Public: the CapabilityStatement and the .well-known documents.
    let metadata = app
        .anonymous(Method::GET, "/fhir/metadata")
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), StatusCode::OK);
    let jwks: Value = app
        .anonymous(Method::GET, "/.well-known/jwks.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    let smart: Value = app
        .anonymous(Method::GET, "/.well-known/smart-configuration")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        smart["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );
    assert_eq!(
        smart["token_endpoint"],
        format!("{ISSUER}/protocol/openid-connect/token")
    );
    assert!(
        smart["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("permission-v2"))
    );
}

/// An issuer whose keys cannot be fetched: 503 with `Retry-After`, not a 401 that would make
/// clients throw away valid tokens — also for the requests right after, which do not fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_whose_keys_cannot_be_fetched_answers_503() {
    let provider = Provider::start().await;
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let down = "https://idp.test/realms/down";
    let app = TestApp::sqlite_with(move |config| {
        config
            .auth
            .issuers
            .insert(down.into(), format!("http://{closed}/certs"));
    })
    .await;
    let token = provider.sign(
        Algorithm::EdDSA,
        "ed-1",
        &with(claims(), "iss", json!(down)),
    );
    for attempt in 0..2 {
        let response = app
            .request_as(&token, Method::GET, "/fhir/Patient")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}"
        );
        assert!(response.headers().contains_key("retry-after"));
    }
}
