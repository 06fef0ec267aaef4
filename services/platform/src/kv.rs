//! The key-value store for state that may be lost or rebuilt: sessions, presence, slot holds,
//! rate-limit counters, placements. Redis in production, memory in the embedded default;
//! both behind [`KeyValueStore`] and both run through the same test suite.
//!
//! Every key is prefixed with the store's namespace, so services (and tests) sharing one Redis
//! never see each other's keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::StreamExt;
use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::mpsc;

/// Messages a subscriber may fall behind by before new ones are dropped for it.
const SUBSCRIBER_BACKLOG: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for KvError {
    fn from(e: redis::RedisError) -> Self {
        // The Redis error text names commands and keys, never values.
        KvError::Unavailable(e.to_string())
    }
}

/// Volatile key-value state with expiry.
#[async_trait]
pub trait KeyValueStore: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key`, replacing any value; with `ttl` it expires after that long.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError>;
    /// Sets `key` only when it is absent; answers whether it was set (locks, placements).
    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, KvError>;
    /// Removes `key`; answers whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, KvError>;
    /// Gives `key` a new `ttl` from now if it still holds `expected`; answers whether it did
    /// (a lease renewed by its holder only).
    async fn extend_if(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool, KvError>;
    /// Adds one to a counter created at zero with `ttl` when absent; answers the new value
    /// (fixed-window rate limits).
    async fn increment(&self, key: &str, ttl: Duration) -> Result<i64, KvError>;
    /// Sets `field` of the map at `key` (created when absent) and gives the whole map `ttl`
    /// from now: the map lives as long as it is written to (rooms, waiting rooms).
    async fn map_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), KvError>;
    /// Removes `field` of the map at `key`; answers whether it was there.
    async fn map_remove(&self, key: &str, field: &str) -> Result<bool, KvError>;
    /// Every field of the map at `key` with its value, in no particular order.
    async fn map_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, KvError>;
    /// Publishes `payload` on `topic` to every subscriber of the deployment (every node on
    /// Redis, this process in memory). Fire and forget: a subscriber not listening at that
    /// moment never sees it.
    async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), KvError>;
    /// From now on, every message published on a topic starting with `prefix`, with its
    /// topic. On Redis the subscription survives reconnections (messages published while it
    /// was down are lost); it ends when the receiver is dropped.
    async fn subscribe(&self, prefix: &str) -> Result<mpsc::Receiver<(String, Vec<u8>)>, KvError>;
    /// A round trip, for readiness.
    async fn ping(&self) -> Result<(), KvError>;
    /// Which implementation this is, for logs and the readiness report.
    fn kind(&self) -> &'static str;
}

/// Values with their expiry instant.
type Entries = HashMap<String, (Vec<u8>, Option<Instant>)>;

/// Where a subscription's messages (topic, payload) go.
type Subscriber = mpsc::Sender<(String, Vec<u8>)>;

/// Maps with their expiry instant.
type Maps = HashMap<String, (HashMap<String, Vec<u8>>, Instant)>;

/// In-process store for the embedded default and single-node deployments.
#[derive(Debug, Default)]
pub struct MemoryStore {
    namespace: String,
    entries: Mutex<Entries>,
    maps: Mutex<Maps>,
    subscribers: Mutex<Vec<(String, Subscriber)>>,
}

impl MemoryStore {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            entries: Mutex::default(),
            maps: Mutex::default(),
            subscribers: Mutex::default(),
        }
    }

    /// Runs `f` on the live map at `key`, if any (an expired one is dropped first).
    fn with_map<T>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&mut (HashMap<String, Vec<u8>>, Instant)>, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let key = self.key(key);
        let mut maps = self.maps.lock().expect("kv lock");
        if maps.get(&key).is_some_and(|(_, expiry)| *expiry <= now) {
            maps.remove(&key);
        }
        if maps.len() > 1024 && maps.len().is_power_of_two() {
            maps.retain(|_, (_, expiry)| *expiry > now);
        }
        f(maps.get_mut(&key), now)
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    /// Drops expired entries once the map grows, so abandoned keys do not pile up.
    fn purge(map: &mut Entries, now: Instant) {
        if map.len() > 1024 && map.len().is_power_of_two() {
            map.retain(|_, (_, expiry)| expiry.is_none_or(|e| e > now));
        }
    }
}

fn live(entry: Option<&(Vec<u8>, Option<Instant>)>, now: Instant) -> Option<&Vec<u8>> {
    entry
        .filter(|(_, expiry)| expiry.is_none_or(|e| e > now))
        .map(|(v, _)| v)
}

#[async_trait]
impl KeyValueStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let map = self.entries.lock().expect("kv lock");
        Ok(live(map.get(&self.key(key)), Instant::now()).cloned())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        let now = Instant::now();
        let mut map = self.entries.lock().expect("kv lock");
        map.insert(self.key(key), (value.to_vec(), ttl.map(|t| now + t)));
        Self::purge(&mut map, now);
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, KvError> {
        let now = Instant::now();
        let key = self.key(key);
        let mut map = self.entries.lock().expect("kv lock");
        if live(map.get(&key), now).is_some() {
            return Ok(false);
        }
        map.insert(key, (value.to_vec(), Some(now + ttl)));
        Self::purge(&mut map, now);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let now = Instant::now();
        let mut map = self.entries.lock().expect("kv lock");
        Ok(map
            .remove(&self.key(key))
            .is_some_and(|e| live(Some(&e), now).is_some()))
    }

    async fn extend_if(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool, KvError> {
        let now = Instant::now();
        let key = self.key(key);
        let mut map = self.entries.lock().expect("kv lock");
        if live(map.get(&key), now).is_none_or(|v| v.as_slice() != expected) {
            return Ok(false);
        }
        if let Some((_, expiry)) = map.get_mut(&key) {
            *expiry = Some(now + ttl);
        }
        Ok(true)
    }

    async fn increment(&self, key: &str, ttl: Duration) -> Result<i64, KvError> {
        let now = Instant::now();
        let key = self.key(key);
        let mut map = self.entries.lock().expect("kv lock");
        let current =
            live(map.get(&key), now).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        let (next, expiry) = match current {
            Some(n) => (n + 1, map.get(&key).and_then(|(_, e)| *e)),
            None => (1, Some(now + ttl)),
        };
        map.insert(key, (next.to_string().into_bytes(), expiry));
        Self::purge(&mut map, now);
        Ok(next)
    }

    async fn map_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), KvError> {
        let now = Instant::now();
        let mut maps = self.maps.lock().expect("kv lock");
        let (map, expiry) = maps
            .entry(self.key(key))
            .or_insert_with(|| (HashMap::new(), now));
        if *expiry <= now {
            map.clear();
        }
        map.insert(field.to_string(), value.to_vec());
        *expiry = now + ttl;
        Ok(())
    }

    async fn map_remove(&self, key: &str, field: &str) -> Result<bool, KvError> {
        Ok(self.with_map(key, |map, _| {
            map.is_some_and(|(map, _)| map.remove(field).is_some())
        }))
    }

    async fn map_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        Ok(self.with_map(key, |map, _| {
            map.map(|(map, _)| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()
        }))
    }

    async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), KvError> {
        let mut subscribers = self.subscribers.lock().expect("kv lock");
        subscribers.retain(|(_, sender)| !sender.is_closed());
        for (prefix, sender) in subscribers.iter() {
            if topic.starts_with(prefix.as_str()) {
                // A subscriber that fell that far behind loses this one, as on Redis.
                let _ = sender.try_send((topic.to_string(), payload.to_vec()));
            }
        }
        Ok(())
    }

    async fn subscribe(&self, prefix: &str) -> Result<mpsc::Receiver<(String, Vec<u8>)>, KvError> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BACKLOG);
        self.subscribers
            .lock()
            .expect("kv lock")
            .push((prefix.to_string(), sender));
        Ok(receiver)
    }

    async fn ping(&self) -> Result<(), KvError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Redis-backed store, shared by every node of a deployment.
#[derive(Clone)]
pub struct RedisStore {
    namespace: String,
    conn: ConnectionManager,
    /// For subscriptions, which need a connection of their own.
    client: redis::Client,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (never logged: it may hold a password).
    pub async fn connect(url: &str, namespace: impl Into<String>) -> Result<Self, KvError> {
        let client = redis::Client::open(url).map_err(|_| {
            KvError::Unavailable("invalid Redis URL (expected redis://host:port/db)".into())
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Self {
            namespace: namespace.into(),
            conn,
            client,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl KeyValueStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.conn.clone().get(self.key(key)).await?)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        match ttl {
            Some(ttl) => {
                conn.pset_ex::<_, _, ()>(self.key(key), value, millis(ttl))
                    .await?
            }
            None => conn.set::<_, _, ()>(self.key(key), value).await?,
        }
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, KvError> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .arg("NX")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let removed: i64 = self.conn.clone().del(self.key(key)).await?;
        Ok(removed > 0)
    }

    async fn extend_if(&self, key: &str, expected: &[u8], ttl: Duration) -> Result<bool, KvError> {
        // Compare and expire in one step, on the server.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
             else return 0 end",
        );
        let renewed: i64 = script
            .key(self.key(key))
            .arg(expected)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(renewed == 1)
    }

    async fn increment(&self, key: &str, ttl: Duration) -> Result<i64, KvError> {
        let key = self.key(key);
        // One round trip, atomic: create with expiry if absent, then increment.
        let (value,): (i64,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("PX")
            .arg(millis(ttl))
            .arg("NX")
            .ignore()
            .incr(&key, 1)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(value)
    }

    async fn map_set(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), KvError> {
        let key = self.key(key);
        redis::pipe()
            .atomic()
            .hset(&key, field, value)
            .ignore()
            .pexpire(&key, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn map_remove(&self, key: &str, field: &str) -> Result<bool, KvError> {
        let removed: i64 = self.conn.clone().hdel(self.key(key), field).await?;
        Ok(removed > 0)
    }

    async fn map_all(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let all: HashMap<String, Vec<u8>> = self.conn.clone().hgetall(self.key(key)).await?;
        Ok(all.into_iter().collect())
    }

    async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), KvError> {
        let _: i64 = self.conn.clone().publish(self.key(topic), payload).await?;
        Ok(())
    }

    async fn subscribe(&self, prefix: &str) -> Result<mpsc::Receiver<(String, Vec<u8>)>, KvError> {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BACKLOG);
        let pattern = format!("{}*", self.key(&escape_glob(prefix)));
        let strip = self.key("");
        // The first subscription is made here, so that what is published after this call
        // returns is received.
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.psubscribe(&pattern).await?;
        let client = self.client.clone();
        tokio::spawn(async move {
            loop {
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let topic = message.get_channel_name();
                            let topic = topic.strip_prefix(&strip).unwrap_or(topic).to_string();
                            let payload = message.get_payload_bytes().to_vec();
                            if sender.try_send((topic, payload)).is_err() && sender.is_closed() {
                                return;
                            }
                        }
                        () = sender.closed() => return,
                    }
                }
                // The connection broke: subscribe again, once a second until it works.
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if sender.is_closed() {
                        return;
                    }
                    let Ok(mut again) = client.get_async_pubsub().await else {
                        continue;
                    };
                    if again.psubscribe(&pattern).await.is_ok() {
                        pubsub = again;
                        break;
                    }
                }
            }
        });
        Ok(receiver)
    }

    async fn ping(&self) -> Result<(), KvError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// `text` with Redis glob characters escaped, for a pattern that matches it literally.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The store a process uses: Redis when a URL is configured, memory otherwise.
pub async fn connect(
    redis_url: Option<&str>,
    namespace: &str,
) -> Result<Arc<dyn KeyValueStore>, KvError> {
    Ok(match redis_url {
        Some(url) => Arc::new(RedisStore::connect(url, namespace).await?),
        None => Arc::new(MemoryStore::new(namespace)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour both implementations must share.
    async fn suite(store: &dyn KeyValueStore) {
        assert_eq!(store.get("absent").await.unwrap(), None);

        store.set("a", b"one", None).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"one"[..]));
        store.set("a", b"two", None).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"two"[..]));

        assert!(
            store
                .set_if_absent("lock", b"node-1", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_if_absent("lock", b"node-2", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert_eq!(
            store.get("lock").await.unwrap().as_deref(),
            Some(&b"node-1"[..])
        );

        // Only the holder renews its lease.
        let minute = Duration::from_secs(60);
        assert!(store.extend_if("lock", b"node-1", minute).await.unwrap());
        assert!(!store.extend_if("lock", b"node-2", minute).await.unwrap());
        assert!(!store.extend_if("no-lock", b"node-1", minute).await.unwrap());
        assert!(store.delete("lock").await.unwrap());
        assert!(!store.delete("lock").await.unwrap());
        assert!(!store.extend_if("lock", b"node-1", minute).await.unwrap());
        assert!(
            store
                .set_if_absent("lock", b"node-2", Duration::from_secs(60))
                .await
                .unwrap()
        );

        for expected in 1..=5 {
            assert_eq!(
                store
                    .increment("hits", Duration::from_secs(60))
                    .await
                    .unwrap(),
                expected
            );
        }

        // Expiry: wait (bounded) for the store's own clock to pass the TTL.
        store
            .set("short", b"x", Some(Duration::from_millis(20)))
            .await
            .unwrap();
        store
            .set_if_absent("short-lock", b"x", Duration::from_millis(20))
            .await
            .unwrap();
        store
            .increment("short-counter", Duration::from_millis(20))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let gone = store.get("short").await.unwrap().is_none()
                && store.get("short-lock").await.unwrap().is_none()
                && store.get("short-counter").await.unwrap().is_none();
            if gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "keys with a 20 ms TTL still present after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            store
                .increment("short-counter", Duration::from_secs(60))
                .await
                .unwrap(),
            1
        );
        assert!(
            store
                .set_if_absent("short-lock", b"y", Duration::from_secs(60))
                .await
                .unwrap()
        );
        store.ping().await.unwrap();
        map_suite(store).await;
        publish_suite(store).await;
    }

    async fn next(receiver: &mut mpsc::Receiver<(String, Vec<u8>)>) -> (String, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("a message within 5 s")
            .expect("subscribed")
    }

    /// Messages reach the subscribers of their prefix, in order, and no one else.
    async fn publish_suite(store: &dyn KeyValueStore) {
        let mut rooms = store.subscribe("room:").await.unwrap();
        let mut one = store.subscribe("room:r1").await.unwrap();
        let mut starred = store.subscribe("odd*").await.unwrap();
        store.publish("room:r1", b"first").await.unwrap();
        store.publish("other:r1", b"elsewhere").await.unwrap();
        store.publish("room:r2", b"second").await.unwrap();
        store.publish("oddity", b"not a glob").await.unwrap();
        store.publish("odd*", b"literal").await.unwrap();
        assert_eq!(
            next(&mut rooms).await,
            ("room:r1".to_string(), b"first".to_vec())
        );
        assert_eq!(
            next(&mut rooms).await,
            ("room:r2".to_string(), b"second".to_vec())
        );
        assert_eq!(
            next(&mut one).await,
            ("room:r1".to_string(), b"first".to_vec())
        );
        assert_eq!(
            next(&mut starred).await,
            ("odd*".to_string(), b"literal".to_vec())
        );
        // Nothing else came: a marker published last is the next message each receives.
        store.publish("room:r1-end", b"end").await.unwrap();
        store.publish("odd*-end", b"end").await.unwrap();
        assert_eq!(next(&mut rooms).await.0, "room:r1-end");
        assert_eq!(next(&mut one).await.0, "room:r1-end");
        assert_eq!(next(&mut starred).await.0, "odd*-end");
    }

    /// Maps: fields set, replaced, removed, listed, and the whole map expiring.
    async fn map_suite(store: &dyn KeyValueStore) {
        let sorted = |mut v: Vec<(String, Vec<u8>)>| {
            v.sort();
            v
        };
        assert!(store.map_all("room").await.unwrap().is_empty());
        assert!(!store.map_remove("room", "p1").await.unwrap());
        let minute = Duration::from_secs(60);
        store
            .map_set("room", "p1", b"waiting", minute)
            .await
            .unwrap();
        store
            .map_set("room", "p2", b"admitted", minute)
            .await
            .unwrap();
        store
            .map_set("room", "p1", b"admitted", minute)
            .await
            .unwrap();
        assert_eq!(
            sorted(store.map_all("room").await.unwrap()),
            vec![
                ("p1".to_string(), b"admitted".to_vec()),
                ("p2".to_string(), b"admitted".to_vec())
            ]
        );
        assert!(store.map_remove("room", "p1").await.unwrap());
        assert!(!store.map_remove("room", "p1").await.unwrap());
        assert_eq!(
            store.map_all("room").await.unwrap(),
            vec![("p2".to_string(), b"admitted".to_vec())]
        );
        // Another map is another map; a plain key of the same name is not the map.
        assert!(store.map_all("other-room").await.unwrap().is_empty());

        // A map written with a short TTL expires whole; writing again starts it anew.
        let short = Duration::from_millis(20);
        store.map_set("brief", "a", b"1", short).await.unwrap();
        store.map_set("brief", "b", b"2", short).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.map_all("brief").await.unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a map with a 20 ms TTL still present after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.map_set("brief", "c", b"3", minute).await.unwrap();
        assert_eq!(
            store.map_all("brief").await.unwrap(),
            vec![("c".to_string(), b"3".to_vec())]
        );
        // Each write pushes the expiry: a map refreshed before its TTL stays.
        store.map_set("kept", "a", b"1", short).await.unwrap();
        store.map_set("kept", "b", b"2", minute).await.unwrap();
        // (Time passing past the first TTL, not synchronisation.)
        tokio::time::sleep(short * 3).await;
        assert_eq!(store.map_all("kept").await.unwrap().len(), 2);
    }

    fn namespace() -> String {
        format!("test-{}", uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn the_memory_store_keeps_values_counts_and_expires_them() {
        suite(&MemoryStore::new(namespace())).await;
    }

    #[tokio::test]
    async fn the_redis_store_keeps_values_counts_and_expires_them() {
        let Some(url) = test_redis_url() else { return };
        let store = RedisStore::connect(&url, namespace()).await.unwrap();
        suite(&store).await;
    }

    #[tokio::test]
    async fn namespaces_do_not_see_each_others_keys() {
        let a = MemoryStore::new("a");
        a.set("k", b"1", None).await.unwrap();
        assert_eq!(MemoryStore::new("b").get("k").await.unwrap(), None);
        let Some(url) = test_redis_url() else { return };
        let (na, nb) = (namespace(), namespace());
        RedisStore::connect(&url, &na)
            .await
            .unwrap()
            .set("k", b"1", None)
            .await
            .unwrap();
        assert_eq!(
            RedisStore::connect(&url, &nb)
                .await
                .unwrap()
                .get("k")
                .await
                .unwrap(),
            None
        );
    }

    fn test_redis_url() -> Option<String> {
        crate::testing::required_env("TEST_REDIS_URL", "Redis")
    }
}
