//! Where a room lives: one node of the deployment holds each room (its media will be
//! forwarded there), placed with an atomic lock on the key-value store — a lease the node
//! renews while it has participants of the room, which expires when the node dies so that
//! another node can place the room again. Signaling does not depend on it (room events reach
//! every node, see `crate::hub::Hub`); the join answer says where the room is.

use std::time::Duration;

use sen_platform::kv::{KeyValueStore, KvError};

/// How long a placement lasts without renewal: how soon a dead node's rooms can move (media
/// stops for up to LEASE + RENEW when a room's node dies). A live node misses it only if its
/// renewals stall for LEASE - RENEW (6 s).
pub const LEASE: Duration = Duration::from_secs(8);

/// How often a node renews the leases of the rooms it has participants of (one key-value
/// round trip per room: 50 a second for 100 rooms).
pub const RENEW: Duration = Duration::from_secs(2);

fn key(room: &str) -> String {
    format!("room:{room}:node")
}

/// The node `room` lives on: `node` when the room was free (placed here, atomically), the
/// holder otherwise.
pub(crate) async fn place(
    kv: &dyn KeyValueStore,
    node: &str,
    room: &str,
) -> Result<String, KvError> {
    // Three tries: a lease can expire between the lock attempt and the read of its holder.
    for _ in 0..3 {
        if kv.set_if_absent(&key(room), node.as_bytes(), LEASE).await? {
            return Ok(node.to_string());
        }
        if let Some(holder) = kv.get(&key(room)).await? {
            return Ok(String::from_utf8_lossy(&holder).into_owned());
        }
    }
    Ok(node.to_string())
}

/// Renews `node`'s leases on `rooms` (those it has participants of); a room whose holder
/// stopped renewing (its node died) is placed again, here if it is free. Answers the rooms
/// placed here again: their media has to be opened anew.
pub(crate) async fn renew(kv: &dyn KeyValueStore, node: &str, rooms: &[String]) -> Vec<String> {
    let mut moved = Vec::new();
    for room in rooms {
        match kv.extend_if(&key(room), node.as_bytes(), LEASE).await {
            Ok(true) => {}
            Ok(false) => {
                if place(kv, node, room)
                    .await
                    .is_ok_and(|holder| holder == node)
                {
                    moved.push(room.clone());
                }
            }
            Err(e) => tracing::warn!(error = %e, "telehealth: a room's placement was not renewed"),
        }
    }
    moved
}
