//! Who is calling: bearer JWTs checked against trusted issuers, and the [`Principal`] a valid
//! token stands for (role, patient or practitioner, SMART scopes).
//!
//! Every service puts its protected routes behind [`require_token`]; what a principal may do
//! with a service's resources is that service's decision, made from the principal's role and
//! scopes. Only health, metrics, the CapabilityStatement and the `.well-known` documents are
//! served without a token.
//!
//! Tokens never reach a log, a trace or an error message: a refused token is described by
//! why it was refused, not by what it held.

pub mod keys;
pub mod scopes;
pub mod verify;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

pub use keys::EmbeddedKey;
pub use scopes::{Interaction, ScopeContext, Scopes};
pub use verify::Verifier;

use crate::{ApiError, Config, IssueCode, config::AuthConfig};

/// The roles Sen knows. A token names one in its `role` claim (or, from Keycloak, among
/// `realm_access.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Patient,
    Practitioner,
    ClinicAdmin,
    OpsViewer,
    System,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Patient,
        Role::Practitioner,
        Role::ClinicAdmin,
        Role::OpsViewer,
        Role::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Practitioner => "practitioner",
            Role::ClinicAdmin => "clinic-admin",
            Role::OpsViewer => "ops-viewer",
            Role::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The scope context the role's resource scopes are read in (`None`: the role reads no
    /// record, whatever its scopes say).
    pub fn context(self) -> Option<ScopeContext> {
        match self {
            Role::Patient => Some(ScopeContext::Patient),
            Role::Practitioner | Role::ClinicAdmin => Some(ScopeContext::User),
            Role::System => Some(ScopeContext::System),
            Role::OpsViewer => None,
        }
    }

    /// The scopes `sen token` grants when none are asked for.
    pub fn default_scopes(self) -> &'static str {
        match self {
            // Patients read their records and change their own Consent.
            Role::Patient => "openid fhirUser launch/patient patient/*.rs patient/Consent.cru",
            Role::Practitioner => "openid fhirUser user/*.cruds",
            Role::ClinicAdmin => "openid fhirUser user/*.cruds",
            Role::OpsViewer => "openid",
            Role::System => "system/*.cruds",
        }
    }
}

/// The claims Sen reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: serde_json::Value,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Space-separated SMART scopes.
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// SMART launch context: the id of the patient the token is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// SMART: the FHIR resource of the user (`Patient/…`, `Practitioner/…`).
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Keycloak's realm roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_access: Option<RealmAccess>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RealmAccess {
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The caller a valid token stands for.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: String,
    pub subject: String,
    pub role: Role,
    /// The id of the patient (patients: themselves).
    pub patient: Option<String>,
    /// The id of the practitioner the user is.
    pub practitioner: Option<String>,
    pub scopes: Scopes,
    pub client_id: Option<String>,
}

impl Principal {
    /// The principal of verified `claims`; a token that names no role Sen knows, or a patient
    /// token without its patient, serves nothing.
    pub fn from_claims(claims: Claims) -> Result<Self, AuthError> {
        let role = claims
            .role
            .as_deref()
            .and_then(Role::parse)
            .or_else(|| {
                claims
                    .realm_access
                    .as_ref()
                    .and_then(|r| r.roles.iter().find_map(|name| Role::parse(name)))
            })
            .ok_or(AuthError::NoRole)?;
        let user = |kind: &str| {
            claims
                .fhir_user
                .as_deref()
                .and_then(|u| u.rsplit_once('/'))
                .filter(|(t, _)| t.ends_with(kind))
                .map(|(_, id)| id.to_string())
        };
        let patient = claims.patient.clone().or_else(|| user("Patient"));
        let practitioner = user("Practitioner");
        if role == Role::Patient && patient.is_none() {
            return Err(AuthError::NoPatient);
        }
        Ok(Principal {
            issuer: claims.iss,
            subject: claims.sub,
            role,
            patient,
            practitioner,
            scopes: Scopes::parse(&claims.scope),
            client_id: claims.client_id,
        })
    }

    /// Whether the principal's scopes, read in its role's context, allow `interaction` on
    /// `resource_type` (records beyond that — compartments, organizations — are the
    /// service's to check).
    pub fn scope_allows(&self, interaction: Interaction, resource_type: &str) -> bool {
        self.role
            .context()
            .is_some_and(|context| self.scopes.allows(context, interaction, resource_type))
    }
}

/// Why a request's token was not accepted. The description says why, never what the token held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint requires a bearer token (Authorization: Bearer …)")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("the token is signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the token's algorithm is not the one of its key")]
    AlgorithmRefused,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this server (audience)")]
    WrongAudience,
    #[error(
        "the token names no role Sen knows (patient, practitioner, clinic-admin, ops-viewer, system)"
    )]
    NoRole,
    #[error("a patient token must name its patient (patient or fhirUser claim)")]
    NoPatient,
    #[error("the issuer's keys cannot be fetched; try again later")]
    KeysUnavailable,
}

impl AuthError {
    /// 401 with a `WWW-Authenticate` challenge (RFC 6750), or 503 when the keys to check the
    /// token with cannot be had.
    pub fn into_api_error(self) -> ApiError {
        let description = self.to_string();
        match self {
            AuthError::KeysUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueCode::Transient,
                description,
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            AuthError::Missing => {
                ApiError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, description).header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sen\""),
                )
            }
            _ => {
                let challenge = format!(
                    "Bearer realm=\"sen\", error=\"invalid_token\", error_description=\"{description}\""
                );
                ApiError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, description).header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_str(&challenge)
                        .unwrap_or(HeaderValue::from_static("Bearer realm=\"sen\"")),
                )
            }
        }
    }
}

/// 403 for a valid token whose scopes or role do not allow the request.
pub fn forbidden(diagnostics: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, diagnostics).header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sen\", error=\"insufficient_scope\""),
    )
}

/// What `sen token` is asked for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub role: Role,
    pub subject: Option<String>,
    pub patient: Option<String>,
    pub practitioner: Option<String>,
    pub scope: Option<String>,
    pub ttl_secs: u64,
}

/// Token checking for one server: the verifier, the embedded key, the documents it publishes.
pub struct Auth {
    config: AuthConfig,
    public_url: Option<String>,
    embedded: Option<EmbeddedKey>,
    verifier: Verifier,
    verified: VerifiedTokens,
    limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
}

/// Tokens already verified, with their principal, until they expire. A client sends the same
/// token with request after request, and checking an Ed25519 signature costs ~50 µs of CPU —
/// half of what a read by id costs in all — so each token is verified once. Keyed by the whole
/// token: any changed byte is another key and is verified afresh. Bounded: when full, expired
/// entries go, and if none had expired, all of them (they are verified again on next use).
struct VerifiedTokens {
    entries: std::sync::RwLock<std::collections::HashMap<String, (Principal, u64)>>,
    leeway: u64,
}

impl VerifiedTokens {
    const CAPACITY: usize = 8192;

    /// The principal of `token` if it was verified and has not expired since.
    fn get(&self, token: &str) -> Option<Principal> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let (principal, exp) = entries.get(token)?;
        (crate::unix_seconds() <= exp.saturating_add(self.leeway)).then(|| principal.clone())
    }

    fn insert(&self, token: &str, principal: Principal, exp: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::CAPACITY {
            let now = crate::unix_seconds();
            entries.retain(|_, (_, exp)| now <= exp.saturating_add(self.leeway));
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token.to_string(), (principal, exp));
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// From the configuration: the embedded key (created in the data directory when missing)
    /// unless turned off, and the configured issuers.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let embedded = if config.auth.embedded {
            Some(EmbeddedKey::load_or_create(&config.database.data_dir)?)
        } else {
            None
        };
        if embedded.is_none() && config.auth.issuers.is_empty() {
            anyhow::bail!(
                "auth: no issuer is trusted; set auth.issuers (SEN_AUTH_ISSUERS) or keep auth.embedded"
            );
        }
        let verifier = Verifier::new(&config.auth, embedded.as_ref())?;
        Ok(Self {
            config: config.auth.clone(),
            public_url: config.server.public_url.clone(),
            embedded,
            verifier,
            verified: VerifiedTokens {
                entries: Default::default(),
                leeway: config.auth.clock_skew_secs,
            },
            limiter: None,
        })
    }

    /// Counts each authenticated request against its client's rate limit.
    pub fn with_limiter(mut self, limiter: Arc<crate::ratelimit::RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// The principal of a bearer token (verified once, then remembered until it expires).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified.get(token) {
            return Ok(principal);
        }
        let claims = self.verifier.verify(token).await?;
        let exp = claims.exp;
        let principal = Principal::from_claims(claims)?;
        self.verified.insert(token, principal.clone(), exp);
        Ok(principal)
    }

    /// A token signed with the embedded key (`sen token`).
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<String> {
        let key = self
            .embedded
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the embedded key is turned off (auth.embedded)"))?;
        let now = crate::unix_seconds();
        let reference = |kind: &str, id: &Option<String>| {
            id.as_ref().map(|id| {
                let id = id.strip_prefix(&format!("{kind}/")).unwrap_or(id);
                format!("{kind}/{id}")
            })
        };
        let patient = reference("Patient", &request.patient);
        let practitioner = reference("Practitioner", &request.practitioner);
        if request.role == Role::Patient && patient.is_none() {
            anyhow::bail!("a patient token needs --patient Patient/ID");
        }
        let claims = Claims {
            iss: self.config.embedded_issuer.clone(),
            sub: request
                .subject
                .clone()
                .or_else(|| patient.clone())
                .or_else(|| practitioner.clone())
                .unwrap_or_else(|| format!("sen-cli-{}", request.role.as_str())),
            aud: serde_json::Value::String(self.config.audience.clone()),
            exp: now + request.ttl_secs,
            nbf: Some(now),
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            scope: request
                .scope
                .clone()
                .unwrap_or_else(|| request.role.default_scopes().to_string()),
            role: Some(request.role.as_str().to_string()),
            patient: patient
                .as_ref()
                .and_then(|p| p.rsplit_once('/'))
                .map(|(_, id)| id.to_string()),
            fhir_user: if request.role == Role::Patient {
                patient
            } else {
                practitioner
            },
            client_id: Some("sen-cli".into()),
            realm_access: None,
        };
        key.sign(&claims)
    }

    /// `/.well-known/jwks.json` (the embedded key; external issuers publish their own) and
    /// `/.well-known/smart-configuration`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/.well-known/smart-configuration", get(smart_configuration))
            .with_state(self.clone())
    }
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    let keys: Vec<serde_json::Value> = auth.embedded.iter().map(EmbeddedKey::jwk).collect();
    Json(serde_json::json!({ "keys": keys })).into_response()
}

async fn smart_configuration(State(auth): State<Arc<Auth>>, headers: http::HeaderMap) -> Response {
    let base = auth.public_url.clone().unwrap_or_else(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1:8080");
        format!("http://{host}")
    });
    let mut document = serde_json::json!({
        "issuer": auth.config.issuers.keys().next().cloned().unwrap_or_else(|| auth.config.embedded_issuer.clone()),
        "jwks_uri": format!("{}/.well-known/jwks.json", base.trim_end_matches('/')),
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": [
            "openid", "fhirUser", "launch/patient", "offline_access",
            "patient/*.rs", "patient/Consent.cru", "user/*.cruds", "system/*.cruds", "system/*.rs"
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "permission-v2", "permission-v1", "permission-patient", "permission-user",
            "client-confidential-asymmetric", "context-standalone-patient", "sso-openid-connect"
        ],
    });
    if let Some(issuer) = auth.config.issuers.keys().next() {
        // A Keycloak realm's endpoints, derived from its issuer URL.
        let realm = issuer.trim_end_matches('/');
        document["authorization_endpoint"] = format!("{realm}/protocol/openid-connect/auth").into();
        document["token_endpoint"] = format!("{realm}/protocol/openid-connect/token").into();
    }
    let mut response = Json(document).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// Middleware: the request's bearer token must be valid; its [`Principal`] is put in the
/// request's extensions for the handlers and the service's own access checks.
pub async fn require_token(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return AuthError::Missing.into_api_error().into_response();
    };
    match auth.authenticate(token).await {
        Ok(principal) => {
            if let Some(limiter) = &auth.limiter
                && let Err(refused) = limiter
                    .count_client(&principal.issuer, &principal.subject)
                    .await
            {
                return refused.into_response();
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            metrics::counter!("auth_refused_total", "reason" => format!("{error:?}")).increment(1);
            error.into_api_error().into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_token(auth: &Auth, ttl_secs: u64) -> String {
        auth.mint(&TokenRequest {
            role: Role::System,
            subject: None,
            patient: None,
            practitioner: None,
            scope: None,
            ttl_secs,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_and_a_changed_one_is_verified_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.data_dir = dir.path().to_path_buf();
        config.auth.clock_skew_secs = 0;
        let auth = Auth::from_config(&config).unwrap();
        let token = system_token(&auth, 60);
        let principal = auth.authenticate(&token).await.unwrap();
        assert_eq!(principal.role, Role::System);
        assert!(auth.verified.get(&token).is_some(), "remembered");

        // One changed character of the payload: another key, verified, refused.
        let (header, rest) = token.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let mut changed = payload.as_bytes().to_vec();
        changed[5] = if changed[5] == b'A' { b'B' } else { b'A' };
        let forged = format!(
            "{header}.{}.{signature}",
            String::from_utf8(changed).unwrap()
        );
        assert!(auth.authenticate(&forged).await.is_err());

        // A remembered entry past its expiry is not used.
        auth.verified
            .insert("an expired token", principal, crate::unix_seconds() - 1);
        assert!(auth.verified.get("an expired token").is_none());
    }

    #[test]
    fn the_memory_of_verified_tokens_stays_bounded() {
        let tokens = VerifiedTokens {
            entries: Default::default(),
            leeway: 0,
        };
        let principal = Principal::from_claims(Claims {
            iss: "i".into(),
            sub: "s".into(),
            role: Some("system".into()),
            ..Claims::default()
        })
        .unwrap();
        let later = crate::unix_seconds() + 600;
        for i in 0..VerifiedTokens::CAPACITY + 10 {
            tokens.insert(&format!("token {i}"), principal.clone(), later);
        }
        let held = tokens.entries.read().unwrap().len();
        assert!(held <= VerifiedTokens::CAPACITY, "{held}");
        assert!(
            tokens
                .get(&format!("token {}", VerifiedTokens::CAPACITY + 9))
                .is_some()
        );
    }
}
