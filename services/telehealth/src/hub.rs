//! The rooms of a node and the relay of their events between nodes: every connection of a
//! room, whatever node it reached, sees the room's events; and the placement of each room on
//! one node, renewed while the node has participants of it (see [`crate::placement`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sen_platform::kv::{KeyValueStore, KvError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What happens in a room, for the connections in it to pass on (each filters by its own
/// participant and state). Published to the other nodes too, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "kebab-case")]
pub(crate) enum Event {
    Waiting {
        participant: String,
        role: String,
    },
    Joined {
        participant: String,
        role: String,
    },
    Left {
        participant: String,
        role: String,
    },
    Admitted {
        participant: String,
    },
    Removed {
        participant: String,
        role: String,
    },
    Chat {
        from: String,
        text: String,
    },
    Muted {
        participant: String,
        audio: bool,
        video: bool,
    },
    Ended,
    /// A message of the room's forwarding unit for one participant (negotiation, quality).
    Media {
        participant: String,
        message: serde_json::Value,
    },
    /// The room was placed again on `node` (its node stopped renewing: it died): media
    /// connections must be opened anew, there.
    Moved {
        node: String,
    },
}

/// An event as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    node: String,
    room: String,
    event: Event,
}

/// Topic prefix of room events on the key-value store's publish/subscribe.
const TOPIC: &str = "telehealth:room:";

/// The rooms of this node, one broadcast channel each (dropped with its last connection),
/// and the relay of every room's events between nodes: participants of one consultation
/// who reached different nodes still see each other's events. (A room's media lives on one
/// node; the forwarding unit's answers reach participants through this relay.)
pub struct Hub {
    rooms: Mutex<HashMap<String, broadcast::Sender<Event>>>,
    kv: Arc<dyn KeyValueStore>,
    /// This node's id: its own events come back from Redis and are not delivered twice.
    pub(crate) node: String,
    relay: tokio::sync::OnceCell<()>,
    /// The rooms held for another reason (media forwarded here), renewed too.
    pub(crate) held: std::sync::OnceLock<HeldRooms>,
}

/// Lists rooms a node holds besides those it has connections in.
pub(crate) type HeldRooms = Box<dyn Fn() -> Vec<String> + Send + Sync>;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub(crate) fn new(kv: Arc<dyn KeyValueStore>) -> Arc<Self> {
        Arc::new(Self {
            rooms: Mutex::default(),
            kv,
            node: uuid::Uuid::new_v4().simple().to_string(),
            relay: tokio::sync::OnceCell::new(),
            held: std::sync::OnceLock::new(),
        })
    }

    /// Starts receiving the other nodes' events (once; again after a failure).
    pub(crate) async fn relay(self: &Arc<Self>) {
        let started = self
            .relay
            .get_or_try_init(|| async {
                let mut incoming = self.kv.subscribe(TOPIC).await?;
                // The leases of the rooms this node has participants of, renewed while it
                // lives.
                let renewing = Arc::downgrade(self);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(crate::placement::RENEW).await;
                        let Some(hub) = renewing.upgrade() else {
                            return;
                        };
                        let mut rooms = hub.local_rooms();
                        // And the rooms whose media this node forwards.
                        if let Some(held) = hub.held.get() {
                            for room in held() {
                                if !rooms.contains(&room) {
                                    rooms.push(room);
                                }
                            }
                        }
                        let moved =
                            crate::placement::renew(hub.kv.as_ref(), &hub.node, &rooms).await;
                        for room in moved {
                            let node = hub.node.clone();
                            hub.publish(&room, Event::Moved { node }).await;
                        }
                    }
                });
                let hub = Arc::downgrade(self);
                tokio::spawn(async move {
                    while let Some((_, payload)) = incoming.recv().await {
                        let Some(hub) = hub.upgrade() else { return };
                        let Ok(relayed) = serde_json::from_slice::<Relayed>(&payload) else {
                            continue;
                        };
                        if relayed.node != hub.node {
                            hub.deliver(&relayed.room, relayed.event);
                        }
                    }
                });
                Ok::<(), KvError>(())
            })
            .await;
        if let Err(e) = started {
            tracing::warn!(error = %e, "telehealth: other nodes' room events are not received");
        }
    }

    pub(crate) fn room(&self, room: &str) -> broadcast::Sender<Event> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        // Rooms whose last connection closed go.
        rooms.retain(|_, sender| sender.receiver_count() > 0);
        rooms
            .entry(room.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone()
    }

    /// The rooms this node has connections in.
    pub(crate) fn local_rooms(&self) -> Vec<String> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .filter(|(_, sender)| sender.receiver_count() > 0)
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// The node `room` lives on (placed here when free).
    pub(crate) async fn place(&self, room: &str) -> Option<String> {
        crate::placement::place(self.kv.as_ref(), &self.node, room)
            .await
            .map_err(|e| tracing::warn!(error = %e, "telehealth: a room could not be placed"))
            .ok()
    }

    /// Passes `event` to this node's connections in `room`.
    fn deliver(&self, room: &str, event: Event) {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = rooms.get(room) {
            let _ = sender.send(event);
        }
    }

    /// Passes `event` to every connection in `room`, on this node and the others.
    pub(crate) async fn publish(&self, room: &str, event: Event) {
        self.deliver(room, event.clone());
        let relayed = Relayed {
            node: self.node.clone(),
            room: room.to_string(),
            event,
        };
        let payload = serde_json::to_vec(&relayed).unwrap_or_default();
        if let Err(e) = self.kv.publish(&format!("{TOPIC}{room}"), &payload).await {
            tracing::warn!(error = %e, "telehealth: a room event did not reach the other nodes");
        }
    }
}
