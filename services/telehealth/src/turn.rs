//! TURN credentials in coturn's `use-auth-secret` scheme (the "TURN REST API"): the server and
//! coturn share a secret; a credential is the username `<unix expiry>:<participant>` and the
//! password `base64(HMAC-SHA1(secret, username))`. coturn checks the HMAC and the expiry
//! itself, so nothing is stored and a credential dies on its own.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hmac;
use serde::Serialize;

/// One ICE server as a browser's `RTCPeerConnection` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The TURN servers of a deployment and the secret it shares with them.
#[derive(Clone)]
pub struct Turn {
    urls: Vec<String>,
    key: hmac::Key,
    ttl: Duration,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never leaves this struct.
        f.debug_struct("Turn")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// `urls` such as `turn:turn.example.vn:3478?transport=udp`; `ttl` is how long a
    /// credential lasts.
    pub fn new(urls: Vec<String>, secret: &[u8], ttl: Duration) -> Self {
        Self {
            urls,
            // coturn's scheme is HMAC-SHA1: the hash is fixed by coturn, not chosen here.
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            ttl,
        }
    }

    /// The ICE server entry for `participant` (an opaque id, never a name) at `now` (Unix
    /// seconds).
    pub fn ice_server(&self, participant: &str, now: i64) -> IceServer {
        let expiry = now.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX));
        let username = format!("{expiry}:{participant}");
        let tag = hmac::sign(&self.key, username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            credential: Some(STANDARD.encode(tag.as_ref())),
            username: Some(username),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturns_use_auth_secret_scheme() {
        let turn = Turn::new(
            vec!["turn:turn.example.vn:3478?transport=udp".into()],
            b"north-gate-secret",
            Duration::from_secs(3_600),
        );
        let server = turn.ice_server("p-7f3a", 1_767_222_000);
        assert_eq!(server.username.as_deref(), Some("1767225600:p-7f3a"));
        // Computed with Python's hmac module: base64(HMAC-SHA1(b"north-gate-secret",
        // b"1767225600:p-7f3a")).
        assert_eq!(
            server.credential.as_deref(),
            Some("Qf7N+IKZjMEjrauOQbb/8xtrgW0=")
        );
        assert_eq!(
            serde_json::to_value(&server).unwrap(),
            serde_json::json!({
                "urls": ["turn:turn.example.vn:3478?transport=udp"],
                "username": "1767225600:p-7f3a",
                "credential": "Qf7N+IKZjMEjrauOQbb/8xtrgW0="
            })
        );
    }

    #[test]
    fn the_secret_is_not_shown_in_debug_output() {
        let turn = Turn::new(vec![], b"north-gate-secret", Duration::from_secs(60));
        assert!(!format!("{turn:?}").contains("north-gate"));
    }
}
