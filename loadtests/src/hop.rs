//! The server's own hop, measured on the wire: `tcpdump` records the RTP packets crossing
//! loopback (their headers only: SRTP leaves them in clear) with the kernel's timestamps. A
//! forwarded packet crosses twice, keeping its sequence number and RTP timestamp: once from the
//! sender to the server (the sender's SSRC), once from the server to the receiver (the leg's
//! SSRC). The time between the two is what the server adds — its socket queue, decryption,
//! forwarding, encryption and send — without the client stacks or the load generator.
//!
//! The load generator starts every stream at a random sequence number and RTP timestamp, so
//! the pair names one packet. To keep the capture light, the kernel keeps only packets whose
//! sequence number is a multiple of [`SAMPLE`] (the same packets on both crossings).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// One packet in this many is captured (a power of two).
pub const SAMPLE: u16 = 8;

/// A running capture of the RTP crossing loopback.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

/// What a capture measured.
pub struct Hops {
    /// The server's hop of each matched packet, in microseconds, sorted.
    pub micros: Vec<u32>,
    /// Packets captured.
    pub captured: usize,
}

impl Capture {
    /// Starts `tcpdump` on loopback writing to `dir`; returns once it listens.
    pub fn start(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.pcap"));
        let filter = format!(
            "udp and (udp[8] & 0xc0 == 0x80) and ((udp[9] & 0x7f) >= 96) and (udp[10:2] & {} == 0)",
            SAMPLE - 1
        );
        let mut child = Command::new("tcpdump")
            // As root, it would write as its own user, who may not write here.
            .args([
                "-i", "lo", "-n", "-U", "-s", "96", "-B", "16384", "-Z", "root",
            ])
            .args(["--time-stamp-precision=nano", "-w"])
            .arg(&path)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("tcpdump (apt install tcpdump)")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    bail!("tcpdump did not start listening");
                }
            }
        }
        // Its closing report goes nowhere.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, path })
    }

    /// Stops the capture and matches each packet's two crossings.
    pub fn finish(mut self) -> Result<Hops> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait()?;
        let bytes = std::fs::read(&self.path)?;
        let records = parse(&bytes)?;
        let captured = records.len();
        let mut micros = hops(&records);
        micros.sort_unstable();
        Ok(Hops { micros, captured })
    }
}

/// An RTP header seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    nanos: u64,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
}

/// Reads a nanosecond pcap file of Ethernet frames (loopback) carrying IPv4/UDP/RTP.
fn parse(bytes: &[u8]) -> Result<Vec<Seen>> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(0) != Some(0xa1b2_3c4d) {
        bail!("not a nanosecond pcap file written on this machine");
    }
    if u32_at(20) != Some(1) {
        bail!("not an Ethernet capture");
    }
    let mut seen = Vec::new();
    let mut at = 24;
    while let (Some(seconds), Some(nanos), Some(length)) =
        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
    {
        let start = at + 16;
        let end = start + length as usize;
        let Some(frame) = bytes.get(start..end) else {
            break;
        };
        at = end;
        let Some(&version) = frame.get(14) else {
            continue;
        };
        let rtp = 14 + usize::from(version & 0x0f) * 4 + 8;
        let Some(header) = frame.get(rtp..rtp + 12) else {
            continue;
        };
        seen.push(Seen {
            nanos: u64::from(seconds) * 1_000_000_000 + u64::from(nanos),
            sequence: u16::from_be_bytes([header[2], header[3]]),
            timestamp: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            ssrc: u32::from_be_bytes([header[8], header[9], header[10], header[11]]),
        });
    }
    Ok(seen)
}

/// The time between each packet's first crossing and its next crossing under another SSRC,
/// in microseconds. Packets seen once (the capture's edges) are left out.
fn hops(seen: &[Seen]) -> Vec<u32> {
    let mut first: HashMap<(u16, u32), Seen> = HashMap::new();
    let mut hops = Vec::new();
    for packet in seen {
        let key = (packet.sequence, packet.timestamp);
        match first.get(&key) {
            Some(earlier) if earlier.ssrc != packet.ssrc => {
                let nanos = packet.nanos.saturating_sub(earlier.nanos);
                hops.push(u32::try_from(nanos / 1_000).unwrap_or(u32::MAX));
                first.remove(&key);
            }
            Some(_) => {}
            None => {
                first.insert(key, *packet);
            }
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sequence: u16, timestamp: u32, ssrc: u32) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        frame.push(0x45);
        frame.extend([0u8; 19]);
        frame.extend([0u8; 8]);
        frame.extend([0x80, 96]);
        frame.extend(sequence.to_be_bytes());
        frame.extend(timestamp.to_be_bytes());
        frame.extend(ssrc.to_be_bytes());
        frame
    }

    fn pcap(records: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [0xa1b2_3c4d_u32, 0x0004_0002, 0, 0, 96, 1] {
            bytes.extend(word.to_le_bytes());
        }
        for (seconds, nanos, frame) in records {
            let length = u32::try_from(frame.len()).unwrap();
            for word in [*seconds, *nanos, length, length] {
                bytes.extend(word.to_le_bytes());
            }
            bytes.extend(frame);
        }
        bytes
    }

    #[test]
    fn a_packet_is_matched_with_its_forwarded_copy() {
        let bytes = pcap(&[
            (10, 999_900_000, frame(8, 1_000, 0xaaaa)),
            // Another stream's packet with the same sequence number: not a match.
            (11, 0, frame(8, 2_000, 0xbbbb)),
            // The forwarded copy, 350 µs later across a second boundary.
            (11, 250_000, frame(8, 1_000, 0xcccc)),
            // A retransmission under the sender's SSRC is not a hop.
            (11, 300_000, frame(16, 5, 0xaaaa)),
            (11, 400_000, frame(16, 5, 0xaaaa)),
        ]);
        let seen = parse(&bytes).unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[2].ssrc, 0xcccc);
        assert_eq!(hops(&seen), vec![350]);
    }

    #[test]
    fn other_files_are_refused() {
        assert!(parse(b"not a capture at all....").is_err());
    }
}
