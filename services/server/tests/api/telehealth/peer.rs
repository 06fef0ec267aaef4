//! Test packets: numbered, with a payload the receiver checks byte for byte.

use bytes::{Bytes, BytesMut};
use rtc::rtp::{Packet, header::Header};

/// An RTP packet of this peer's: sequence number `n`, a payload saying who sent it and `n`.
pub(super) fn packet(ssrc: u32, payload_type: u8, n: u16, who: &str, size: usize) -> Packet {
    let mut payload = BytesMut::from(format!("{who}:{n}:").as_bytes());
    // The rest is a pattern the receiver can check byte for byte.
    payload.extend((0..size).map(|i| (i as u16).wrapping_add(n) as u8));
    Packet {
        header: Header {
            version: 2,
            payload_type,
            sequence_number: n,
            timestamp: u32::from(n).wrapping_mul(3_000),
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: payload.freeze(),
    }
}

/// Checks a received payload is one `packet(…, who, size)` made, and returns its `n`.
pub(super) fn check(payload: &Bytes, who: &str, size: usize) -> u16 {
    let text = String::from_utf8_lossy(&payload[..payload.len() - size]).into_owned();
    let n: u16 = text
        .strip_prefix(&format!("{who}:"))
        .and_then(|rest| rest.strip_suffix(':'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a payload of {who}'s, got {text:?}"));
    let pattern: Vec<u8> = (0..size)
        .map(|i| (i as u16).wrapping_add(n) as u8)
        .collect();
    assert_eq!(
        &payload[payload.len() - size..],
        &pattern[..],
        "payload {n} intact"
    );
    n
}
