//! The back channel of a sync session: what the receiver tells the sender while a format 4
//! stream flows the other way.
//!
//! A session runs over a pair of byte streams: the change stream from sender to receiver (a
//! format 4 stream, see [`crate::stream`]), and this channel from receiver to sender (a remote
//! receiver's standard output; an in-process pipe for a local destination). It lets the receiver
//! check the destination against the stream's manifest before anything is written, and tell the
//! sender which ranges it still needs, so that a sync that was interrupted resumes without
//! sending again what already arrived:
//!
//! ```text
//! receiver                                   sender
//!    Hello  ------------------------------->  (version, formats: refuse an old receiver)
//!           <-------------------------------  header, identity, manifest
//!    Suspects ----------------------------->  (ranges whose contents are not the snapshot's)
//!           <-------------------------------  resolution records: new-content digests
//!    Plan   ------------------------------->  (refusal, or which ranges to send)
//!           <-------------------------------  data and zero records, end record
//!    Done   ------------------------------->  (everything durable)
//! ```
//!
//! Frames: `type u8, len u32, payload, crc32c u32` (big-endian; the CRC covers type, length and
//! payload). Payloads: Hello and Done are JSON objects; Suspects is a list of u64 range offsets;
//! Plan is `0, n u64, bitmap of n bits (bit i set: send range i, least significant bit first)`
//! or `1, UTF-8 reason`; Failed is a UTF-8 message.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Version of the session protocol spoken by this lvmsync.
pub const PROTOCOL: u32 = 1;
/// The largest frame payload accepted.
pub const MAX_FRAME: usize = 256 << 20;

const TYPE_HELLO: u8 = b'H';
const TYPE_SUSPECTS: u8 = b'S';
const TYPE_PLAN: u8 = b'P';
const TYPE_DONE: u8 = b'D';
const TYPE_FAILED: u8 = b'X';

/// What a receiver says of itself first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// lvmsync version, e.g. "4.1.0".
    pub lvmsync: String,
    /// Session protocol version.
    pub protocol: u32,
    /// Stream formats the receiver reads.
    pub formats: Vec<u32>,
}

impl Hello {
    pub fn ours() -> Self {
        Hello {
            lvmsync: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL,
            formats: vec![3, 4],
        }
    }
}

/// The receiver's decision once the destination was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send the ranges whose bit is set (one per manifest entry, in order).
    Send(Vec<bool>),
    /// The destination is not what the stream expects: nothing was written.
    Refuse(String),
}

/// What the receiver reports once everything it wrote is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Ranges written.
    pub written: u64,
    /// Ranges skipped because the destination already held their new contents.
    pub already_applied: u64,
    /// Bytes of the volume written (data and zeros).
    pub bytes_written: u64,
}

/// One message of the back channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// Offsets of the manifest ranges whose contents are not the expected prior contents.
    Suspects(Vec<u64>),
    Plan(Plan),
    Done(Done),
    /// The receiver failed; the message says why.
    Failed(String),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Message {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Message::Hello(h) => (TYPE_HELLO, serde_json::to_vec(h).expect("serialises")),
            Message::Suspects(offsets) => (
                TYPE_SUSPECTS,
                offsets.iter().flat_map(|o| o.to_be_bytes()).collect(),
            ),
            Message::Plan(Plan::Send(bits)) => {
                let mut p = vec![0u8];
                p.extend_from_slice(&(bits.len() as u64).to_be_bytes());
                let mut bytes = vec![0u8; bits.len().div_ceil(8)];
                for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
                    bytes[i / 8] |= 1 << (i % 8);
                }
                p.extend_from_slice(&bytes);
                (TYPE_PLAN, p)
            }
            Message::Plan(Plan::Refuse(why)) => {
                let mut p = vec![1u8];
                p.extend_from_slice(why.as_bytes());
                (TYPE_PLAN, p)
            }
            Message::Done(d) => (TYPE_DONE, serde_json::to_vec(d).expect("serialises")),
            Message::Failed(why) => (TYPE_FAILED, why.as_bytes().to_vec()),
        }
    }

    fn decode(kind: u8, p: &[u8]) -> io::Result<Self> {
        let json = |what: &str| invalid(format!("session: malformed {what} message"));
        Ok(match kind {
            TYPE_HELLO => Message::Hello(serde_json::from_slice(p).map_err(|_| json("hello"))?),
            TYPE_SUSPECTS => {
                if !p.len().is_multiple_of(8) {
                    return Err(json("suspects"));
                }
                Message::Suspects(
                    p.chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            }
            TYPE_PLAN => match p.first() {
                Some(0) if p.len() >= 9 => {
                    let n = u64::from_be_bytes(p[1..9].try_into().unwrap()) as usize;
                    let bytes = &p[9..];
                    if bytes.len() != n.div_ceil(8) {
                        return Err(json("plan"));
                    }
                    Message::Plan(Plan::Send(
                        (0..n).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect(),
                    ))
                }
                Some(1) => Message::Plan(Plan::Refuse(String::from_utf8_lossy(&p[1..]).into())),
                _ => return Err(json("plan")),
            },
            TYPE_DONE => Message::Done(serde_json::from_slice(p).map_err(|_| json("done"))?),
            TYPE_FAILED => Message::Failed(String::from_utf8_lossy(p).into()),
            other => {
                return Err(invalid(format!(
                    "session: unknown message type {other:#04x}"
                )))
            }
        })
    }

    /// Writes the message as one frame and flushes.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let (kind, payload) = self.encode();
        write_frame(w, kind, &payload)
    }

    /// Reads one frame. End of input before a frame starts is `UnexpectedEof`.
    pub fn read_from(r: &mut dyn Read) -> io::Result<Self> {
        let (kind, payload) = read_frame(r)?;
        Self::decode(kind, &payload)
    }
}

/// Writes one frame (`type, len, payload, crc32c`) and flushes: the framing of every back
/// channel message, and of `lvmsync verify`'s exchanges ([`crate::verify`]).
pub fn write_frame(w: &mut dyn Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| {
            invalid(format!(
                "session: a {}-byte message is too large",
                payload.len()
            ))
        })?;
    let mut frame = Vec::with_capacity(payload.len() + 9);
    frame.push(kind);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_be_bytes());
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame: its type and payload, checksum verified. End of input before a frame
/// starts is `UnexpectedEof`.
pub fn read_frame(r: &mut dyn Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "session: a {len}-byte message is too large"
        )));
    }
    let mut rest = vec![0u8; len + 4];
    r.read_exact(&mut rest)?;
    let crc = u32::from_be_bytes(rest[len..].try_into().unwrap());
    let computed = crc32c::crc32c_append(crc32c::crc32c(&head), &rest[..len]);
    if crc != computed {
        return Err(invalid("session: a message has a bad checksum"));
    }
    rest.truncate(len);
    Ok((head[0], rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let messages = [
            Message::Hello(Hello::ours()),
            Message::Suspects(vec![]),
            Message::Suspects(vec![0, 4096, u64::MAX]),
            Message::Plan(Plan::Send(vec![])),
            Message::Plan(Plan::Send(
                (0..1000).map(|i| i % 3 == 0 || i == 999).collect(),
            )),
            Message::Plan(Plan::Refuse("no".into())),
            Message::Done(Done {
                written: 3,
                already_applied: 4,
                bytes_written: 5,
            }),
            Message::Failed("broken".into()),
        ];
        let mut wire = Vec::new();
        for m in &messages {
            m.write_to(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        for m in &messages {
            assert_eq!(&Message::read_from(&mut r).unwrap(), m);
        }
        assert_eq!(
            Message::read_from(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn damage_is_refused() {
        let mut wire = Vec::new();
        Message::Suspects(vec![1, 2, 3])
            .write_to(&mut wire)
            .unwrap();
        for i in 0..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Message::read_from(&mut &bad[..]).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        for cut in 0..wire.len() {
            assert!(Message::read_from(&mut &wire[..cut]).is_err());
        }
    }
}
