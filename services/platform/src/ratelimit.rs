//! Rate limits per client address and per authenticated client: fixed one-minute windows
//! counted in the key-value store (Redis, shared by every node; memory on the embedded
//! default). Past its limit a caller gets 429 with `Retry-After` (the seconds to the next
//! window) until the window turns.
//!
//! The address is the TCP peer, or behind proxies the `X-Forwarded-For` entry
//! `rate_limit.forwarded_for_hops` from the right (what the outermost trusted proxy saw); a
//! client is the token's issuer and subject. Health and metrics are never limited (probes
//! and scrapers must always get through). When the store cannot be reached, requests are let
//! through and counted in `rate_limit_unavailable_total`: refusing every record because a
//! counter is down would do more harm than an unthrottled minute.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};

use crate::{ApiError, IssueCode, config::RateLimitConfig, kv::KeyValueStore};

const WINDOW_SECS: u64 = 60;

/// Counts requests per window and says when one is over its limit.
pub struct RateLimiter {
    kv: Arc<dyn KeyValueStore>,
    config: RateLimitConfig,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, kv: Arc<dyn KeyValueStore>) -> Self {
        Self {
            kv,
            config: config.clone(),
        }
    }

    /// Counts one request of `who` (a key of its kind) against `limit` per minute (0: none).
    async fn count(&self, kind: &str, who: &str, limit: u64) -> Result<(), ApiError> {
        if limit == 0 {
            return Ok(());
        }
        let now = crate::unix_seconds();
        let window = now / WINDOW_SECS;
        let key = format!("rl:{kind}:{who}:{window}");
        match self
            .kv
            .increment(&key, Duration::from_secs(WINDOW_SECS + 1))
            .await
        {
            Ok(n) if u64::try_from(n).unwrap_or(0) > limit => {
                metrics::counter!("rate_limited_total", "by" => kind.to_string()).increment(1);
                let retry = (window + 1) * WINDOW_SECS - now;
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    IssueCode::Throttled,
                    format!(
                        "too many requests from this {kind} (at most {limit} a minute); retry after {retry} s"
                    ),
                )
                .header(header::RETRY_AFTER, HeaderValue::from(retry.max(1))))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                metrics::counter!("rate_limit_unavailable_total").increment(1);
                tracing::warn!(error = %e, "rate limit store unavailable; request let through");
                Ok(())
            }
        }
    }

    /// Counts a request of an authenticated client (issuer and subject of its token).
    pub async fn count_client(&self, issuer: &str, subject: &str) -> Result<(), ApiError> {
        let who = format!("{issuer}|{subject}");
        self.count("client", &who, self.config.per_client_per_minute)
            .await
    }

    /// The client address of a request: the peer, or the configured `X-Forwarded-For` hop.
    fn address(&self, request: &Request) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let hops = self.config.forwarded_for_hops as usize;
        if hops == 0 {
            return peer;
        }
        let forwarded: Vec<IpAddr> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .len()
            .checked_sub(hops)
            .and_then(|i| forwarded.get(i).copied())
            .or(peer)
    }
}

/// The client address of a request as the rate limits count it (the peer, or the configured
/// `X-Forwarded-For` hop), for what records accesses.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// Middleware: counts every request but health and metrics against its address's limit.
pub async fn limit_addresses(
    State(limiter): State<Arc<RateLimiter>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    if let Some(address) = limiter.address(&request) {
        request.extensions_mut().insert(ClientAddress(address));
        let who = address.to_string();
        if let Err(refused) = limiter
            .count("address", &who, limiter.config.per_ip_per_minute)
            .await
        {
            return refused.into_response();
        }
    }
    next.run(request).await
}
