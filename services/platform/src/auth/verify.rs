//! Bearer token verification: which issuers are trusted, their keys, and the checks every token
//! passes before a request is served.
//!
//! A token names its issuer (`iss`) and key (`kid`); only configured issuers are trusted, and
//! only with the keys of their JWKS document (fetched when first needed, fetched again when a
//! token names a key not seen yet, at most once per [`REFETCH_AFTER`] so that made-up key ids
//! cannot turn Sen into a load generator against the provider). Each key fixes its algorithm
//! (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA): a token whose header claims another is
//! refused, which is what stops `alg: none` and an HS256 token "signed" with a public key.
//! Symmetric keys in a JWKS document are never trusted.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::{AuthError, Claims, keys::EmbeddedKey};
use crate::config::AuthConfig;

/// Least time between two fetches of one issuer's JWKS document for unknown key ids.
pub const REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A trusted key and the one algorithm it verifies.
#[derive(Clone)]
struct TrustedKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// One trusted issuer: fixed keys (the embedded one) or a JWKS document.
struct Issuer {
    jwks_url: Option<String>,
    keys: RwLock<HashMap<String, TrustedKey>>,
    /// When the JWKS document was last fetched and whether that worked (`None`: never).
    fetched: Mutex<Option<(Instant, bool)>>,
}

/// Verifies bearer tokens against the configured issuers.
pub struct Verifier {
    audience: String,
    leeway: u64,
    issuers: HashMap<String, Arc<Issuer>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The parts of a token's payload read before its signature is checked: which issuer's keys
/// to check it with. Nothing else of an unverified payload is used.
#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl Verifier {
    /// The issuers of `config`, and the embedded key when given.
    pub fn new(config: &AuthConfig, embedded: Option<&EmbeddedKey>) -> anyhow::Result<Self> {
        let mut issuers = HashMap::new();
        if let Some(key) = embedded {
            let trusted = TrustedKey {
                algorithm: Algorithm::EdDSA,
                key: key.decoding_key()?,
            };
            issuers.insert(
                config.embedded_issuer.clone(),
                Arc::new(Issuer {
                    jwks_url: None,
                    keys: RwLock::new(HashMap::from([(key.kid().to_string(), trusted)])),
                    fetched: Mutex::new(None),
                }),
            );
        }
        for (issuer, url) in &config.issuers {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                anyhow::bail!("auth.issuers: the JWKS URL of {issuer} must be an http(s) URL");
            }
            issuers.insert(
                issuer.clone(),
                Arc::new(Issuer {
                    jwks_url: Some(url.clone()),
                    keys: RwLock::new(HashMap::new()),
                    fetched: Mutex::new(None),
                }),
            );
        }
        Ok(Self {
            audience: config.audience.clone(),
            leeway: config.clock_skew_secs,
            issuers,
            http: reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?,
        })
    }

    /// The claims of `token` once its issuer, key, algorithm, signature, audience and validity
    /// period have been checked.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let issuer_name = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .get(&issuer_name)
            .ok_or(AuthError::UnknownIssuer)?;
        let key = self.key(issuer, header.kid.as_deref(), header.alg).await?;
        if key.algorithm != header.alg {
            return Err(AuthError::AlgorithmRefused);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer_name.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmRefused,
                _ => AuthError::Malformed,
            })
    }

    /// The issuer's key `kid` (or, without a `kid`, its only key of `algorithm`), fetching the
    /// issuer's JWKS document when the key is not known yet and a fetch is allowed.
    async fn key(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<TrustedKey, AuthError> {
        if let Some(key) = find(&*issuer.keys.read().await, kid, algorithm) {
            return Ok(key);
        }
        let Some(url) = &issuer.jwks_url else {
            return Err(AuthError::UnknownKey);
        };
        let mut fetched = issuer.fetched.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = find(&*issuer.keys.read().await, kid, algorithm) {
            return Ok(key);
        }
        match *fetched {
            // Fetched a moment ago: the key is not the issuer's (or the issuer is still down).
            Some((at, worked)) if at.elapsed() < REFETCH_AFTER => {
                return Err(if worked {
                    AuthError::UnknownKey
                } else {
                    AuthError::KeysUnavailable
                });
            }
            _ => {}
        }
        let document = self.fetch(url).await;
        *fetched = Some((Instant::now(), document.is_ok()));
        let keys = document?;
        let mut known = issuer.keys.write().await;
        *known = keys;
        find(&known, kid, algorithm).ok_or(AuthError::UnknownKey)
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, TrustedKey>, AuthError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot fetch an issuer's JWKS document");
                AuthError::KeysUnavailable
            })?;
        let set: JwkSet = response.json().await.map_err(|e| {
            tracing::warn!(error = %e, "an issuer's JWKS document is not a JWK set");
            AuthError::KeysUnavailable
        })?;
        Ok(set
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, jwk)| {
                let trusted = trusted_key(jwk)?;
                // Keys without an id are found by algorithm; give them a name no token can.
                let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                Some((kid, trusted))
            })
            .collect())
    }
}

fn find(
    keys: &HashMap<String, TrustedKey>,
    kid: Option<&str>,
    algorithm: Algorithm,
) -> Option<TrustedKey> {
    match kid {
        Some(kid) => keys.get(kid).cloned(),
        None => {
            let mut matching = keys.values().filter(|k| k.algorithm == algorithm);
            let only = matching.next()?;
            matching.next().is_none().then(|| only.clone())
        }
    }
}

/// A JWKS entry Sen trusts, with the algorithm its type fixes; `None` for symmetric keys,
/// other curves, keys marked for encryption, and keys whose `alg` says otherwise.
fn trusted_key(jwk: &Jwk) -> Option<TrustedKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let agrees = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => algorithm == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !agrees {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(TrustedKey { algorithm, key })
}

/// The `iss` of a compact JWT's payload, read without checking anything else.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let payload = token.split('.').nth(1).ok_or(AuthError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    let claims: Unverified = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    claims.iss.ok_or(AuthError::Malformed)
}
