//! `sen-telehealth`: remote consultations (Circular 30/2023/TT-BYT). A consultation room is
//! bound to a virtual-service Appointment and an Encounter of class `VR`; a patient waits in
//! the room's waiting room until a practitioner admits them, then both (and invited
//! interpreters or family) talk through the server's forwarding unit.
//!
//! What this crate holds so far, the parts every other piece stands on:
//! - [`grant`]: join grants, the short-lived room tokens saying who may publish, subscribe,
//!   send data, admit and end, expiring no later than the appointment's end plus a grace
//!   period, with the WebSocket close codes a refused grant gets;
//! - [`session`]: the consultation's volatile state (room, participants, waiting room,
//!   presence, revoked grants) on the platform's key-value store — Redis shared by every
//!   node, or memory in the embedded default;
//! - [`turn`]: TURN credentials in coturn's `use-auth-secret` scheme for the join response.
//!
//! Still to come (issue 6): the HTTP API under `/telehealth/v1`, WebSocket signaling, the
//! selective forwarding unit, room placement across nodes, and the browser client.

pub mod grant;
pub mod session;
pub mod turn;
