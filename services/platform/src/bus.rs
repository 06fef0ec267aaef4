//! The event bus: append-only streams of JSON events that services publish and others read
//! at their own pace (the operations center reads consultation events). Redis Streams in
//! production (shared by every node, kept across restarts of the readers), memory in the
//! embedded default; both behind [`EventBus`] and both run through the same suite.
//!
//! Events here are signals about what happened, never records: no patient data, and what
//! must not be lost is in the owner's database (the record), not only here. Each stream keeps
//! its most recent [`STREAM_LENGTH`] events (Redis trims approximately).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio::sync::Notify;

/// Events kept per stream, about.
pub const STREAM_LENGTH: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for BusError {
    fn from(e: redis::RedisError) -> Self {
        // Redis errors name commands and keys, never values.
        BusError::Unavailable(e.to_string())
    }
}

/// One event read from a stream: its id (ordered within the stream) and its JSON.
pub type Delivered = (String, Value);

#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `event` to `stream`; answers its id.
    async fn publish(&self, stream: &str, event: &Value) -> Result<String, BusError>;
    /// Up to `count` events of `stream` after the one with id `after` (from the oldest kept
    /// when `None`), waiting up to `wait` for one when there is none yet.
    async fn read(
        &self,
        stream: &str,
        after: Option<&str>,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BusError>;
    /// Which implementation this is.
    fn kind(&self) -> &'static str;
}

/// A stream in memory: the last id given, and the events kept with their ids.
type Stream = (u64, Vec<(u64, Value)>);

/// In-process streams (the embedded default, tests).
#[derive(Debug, Default)]
pub struct MemoryBus {
    streams: Mutex<HashMap<String, Stream>>,
    published: Notify,
}

/// A memory id as Redis writes them (`<n>-0`), and back.
fn memory_id(n: u64) -> String {
    format!("{n}-0")
}

fn memory_seq(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl MemoryBus {
    fn after(&self, stream: &str, after: Option<u64>, count: usize) -> Vec<Delivered> {
        let streams = self.streams.lock().expect("bus lock");
        let Some((_, events)) = streams.get(stream) else {
            return Vec::new();
        };
        events
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .take(count)
            .map(|(n, v)| (memory_id(*n), v.clone()))
            .collect()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, stream: &str, event: &Value) -> Result<String, BusError> {
        let id = {
            let mut streams = self.streams.lock().expect("bus lock");
            let (last, events) = streams.entry(stream.to_string()).or_default();
            *last += 1;
            events.push((*last, event.clone()));
            if events.len() > STREAM_LENGTH {
                let excess = events.len() - STREAM_LENGTH;
                events.drain(..excess);
            }
            *last
        };
        self.published.notify_waiters();
        Ok(memory_id(id))
    }

    async fn read(
        &self,
        stream: &str,
        after: Option<&str>,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BusError> {
        let after = match after {
            Some(id) => Some(memory_seq(id).ok_or_else(|| {
                BusError::Unavailable("an event id looks like <number>-<number>".into())
            })?),
            None => None,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that a publish in between is not missed.
            let published = self.published.notified();
            let found = self.after(stream, after, count);
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(found);
            }
            let _ = tokio::time::timeout_at(deadline, published).await;
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Redis Streams, shared by every node.
#[derive(Clone)]
pub struct RedisBus {
    namespace: String,
    conn: ConnectionManager,
    /// Blocking reads take a connection of their own (a blocked multiplexed connection would
    /// hold up every other command on it).
    client: redis::Client,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to `url` (never logged: it may hold a password).
    pub async fn connect(url: &str, namespace: impl Into<String>) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(|_| {
            BusError::Unavailable("invalid Redis URL (expected redis://host:port/db)".into())
        })?;
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            namespace: namespace.into(),
            conn,
            client,
        })
    }

    fn key(&self, stream: &str) -> String {
        format!("{}:stream:{stream}", self.namespace)
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, stream: &str, event: &Value) -> Result<String, BusError> {
        let id: String = redis::cmd("XADD")
            .arg(self.key(stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LENGTH)
            .arg("*")
            .arg("event")
            .arg(event.to_string())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(id)
    }

    async fn read(
        &self,
        stream: &str,
        after: Option<&str>,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, BusError> {
        let mut command = redis::cmd("XREAD");
        command.arg("COUNT").arg(count.max(1));
        let blocking = !wait.is_zero();
        if blocking {
            command
                .arg("BLOCK")
                .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        command
            .arg("STREAMS")
            .arg(self.key(stream))
            .arg(after.unwrap_or("0-0"));
        let reply: redis::streams::StreamReadReply = if blocking {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            command.query_async(&mut conn).await?
        } else {
            command.query_async(&mut self.conn.clone()).await?
        };
        let mut delivered = Vec::new();
        for key in reply.keys {
            for entry in key.ids {
                let Some(redis::Value::BulkString(bytes)) = entry.map.get("event") else {
                    continue;
                };
                if let Ok(value) = serde_json::from_slice(bytes) {
                    delivered.push((entry.id, value));
                }
            }
        }
        Ok(delivered)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The bus a process uses: Redis Streams when a URL is configured, memory otherwise.
pub async fn connect(
    redis_url: Option<&str>,
    namespace: &str,
) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisBus::connect(url, namespace).await?),
        None => Arc::new(MemoryBus::default()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The behaviour both implementations must share.
    async fn suite(bus: &dyn EventBus) {
        let none = Duration::ZERO;
        assert!(
            bus.read("consultations", None, 10, none)
                .await
                .unwrap()
                .is_empty()
        );
        let first = bus
            .publish("consultations", &json!({"n": 1}))
            .await
            .unwrap();
        let second = bus
            .publish("consultations", &json!({"n": 2}))
            .await
            .unwrap();
        bus.publish("elsewhere", &json!({"n": 99})).await.unwrap();
        let all = bus.read("consultations", None, 10, none).await.unwrap();
        assert_eq!(
            all,
            vec![
                (first.clone(), json!({"n": 1})),
                (second.clone(), json!({"n": 2}))
            ]
        );
        // After an id: what came later only; a count bounds the answer.
        let later = bus
            .read("consultations", Some(&first), 10, none)
            .await
            .unwrap();
        assert_eq!(later, vec![(second.clone(), json!({"n": 2}))]);
        assert_eq!(
            bus.read("consultations", None, 1, none)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            bus.read("consultations", Some(&second), 10, none)
                .await
                .unwrap()
                .is_empty()
        );
        // A reader waiting for the next event gets it as soon as it is published.
        let third = async {
            bus.read("consultations", Some(&second), 10, Duration::from_secs(10))
                .await
                .unwrap()
        };
        let publish = async {
            // (The reader gets it whether it was waiting already or not.)
            tokio::task::yield_now().await;
            bus.publish("consultations", &json!({"n": 3}))
                .await
                .unwrap()
        };
        let (read, id) = tokio::join!(third, publish);
        assert_eq!(read, vec![(id, json!({"n": 3}))]);
        // Nothing published: the wait ends empty.
        let started = std::time::Instant::now();
        let waited = bus
            .read("quiet", None, 10, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(waited.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(45));
    }

    #[tokio::test]
    async fn the_memory_bus_keeps_streams_in_order() {
        suite(&MemoryBus::default()).await;
    }

    #[tokio::test]
    async fn the_redis_bus_keeps_streams_in_order() {
        let Some(url) = crate::testing::required_env("TEST_REDIS_URL", "Redis") else {
            return;
        };
        let namespace = format!("test-{}", uuid::Uuid::new_v4());
        suite(&RedisBus::connect(&url, namespace).await.unwrap()).await;
    }
}
