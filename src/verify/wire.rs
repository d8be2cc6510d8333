//! The messages of a comparison, framed like a sync session's back channel
//! ([`crate::session::write_frame`]: type, length, payload, CRC32C).
//!
//! ```text
//! DEST side (server)                          SOURCE side (client)
//!    Hello   --------------------------------> (version, protocol, DEST's size)
//!            <-------------------------------- Request: chunk size and ranges
//!    ... both hash their pieces ...
//!            <-------------------------------- Groups: batch k, one hash per group of pieces
//!    Verdict --------------------------------> batch k: the piece hashes of its differing groups
//!    ...                                       (at most WINDOW batches unanswered)
//!    Done    --------------------------------> (bytes read)
//! ```
//!
//! Either side may end with Failed (a message) instead; the server also when the client
//! closes its input early.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::pieces::{decode_ranges, encode_ranges, PieceHash, Range};
use crate::session::{read_frame, write_frame};

/// Version of the comparison protocol spoken by this lvmsync.
pub const PROTOCOL: u32 = 1;

const TYPE_HELLO: u8 = b'h';
const TYPE_REQUEST: u8 = b'r';
const TYPE_GROUPS: u8 = b'g';
const TYPE_VERDICT: u8 = b'v';
const TYPE_DONE: u8 = b'd';
const TYPE_FAILED: u8 = b'x';

/// What the DEST side says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// lvmsync version.
    pub lvmsync: String,
    /// Comparison protocol version.
    pub protocol: u32,
    /// Size of DEST in bytes.
    pub bytes: u64,
}

/// What to compare: the pieces of `ranges` cut every `chunk_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub chunk_bytes: u64,
    pub ranges: Vec<Range>,
}

/// The end of a comparison, as the DEST side saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Bytes of DEST read and hashed.
    pub bytes_read: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Request(Request),
    /// The group hashes of one batch of pieces, from the source side.
    Groups {
        batch: u64,
        hashes: Vec<PieceHash>,
    },
    /// The DEST side's piece hashes of every group of the batch whose hash differs: the group's
    /// index in the batch and its piece hashes.
    Verdict {
        batch: u64,
        groups: Vec<(u32, Vec<PieceHash>)>,
    },
    Done(Done),
    Failed(String),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn put_hashes(p: &mut Vec<u8>, hashes: &[PieceHash]) {
    p.extend_from_slice(&(hashes.len() as u32).to_be_bytes());
    hashes.iter().for_each(|h| p.extend_from_slice(h));
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if p.len() < n {
        return Err(invalid("verify: a message ends early"));
    }
    let (head, rest) = p.split_at(n);
    *p = rest;
    Ok(head)
}

fn get_u32(p: &mut &[u8]) -> io::Result<u32> {
    Ok(u32::from_be_bytes(take(p, 4)?.try_into().unwrap()))
}

fn get_u64(p: &mut &[u8]) -> io::Result<u64> {
    Ok(u64::from_be_bytes(take(p, 8)?.try_into().unwrap()))
}

fn get_hashes(p: &mut &[u8]) -> io::Result<Vec<PieceHash>> {
    let n = get_u32(p)? as usize;
    let bytes = take(
        p,
        n.checked_mul(16)
            .ok_or_else(|| invalid("verify: bad count"))?,
    )?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| c.try_into().unwrap())
        .collect())
}

impl Message {
    fn encode(&self) -> (u8, Vec<u8>) {
        let mut p = Vec::new();
        let kind = match self {
            Message::Hello(h) => {
                p = serde_json::to_vec(h).expect("serialises");
                TYPE_HELLO
            }
            Message::Request(r) => {
                p.extend_from_slice(&r.chunk_bytes.to_be_bytes());
                encode_ranges(&r.ranges, &mut p);
                TYPE_REQUEST
            }
            Message::Groups { batch, hashes } => {
                p.extend_from_slice(&batch.to_be_bytes());
                put_hashes(&mut p, hashes);
                TYPE_GROUPS
            }
            Message::Verdict { batch, groups } => {
                p.extend_from_slice(&batch.to_be_bytes());
                p.extend_from_slice(&(groups.len() as u32).to_be_bytes());
                for (g, hashes) in groups {
                    p.extend_from_slice(&g.to_be_bytes());
                    put_hashes(&mut p, hashes);
                }
                TYPE_VERDICT
            }
            Message::Done(d) => {
                p = serde_json::to_vec(d).expect("serialises");
                TYPE_DONE
            }
            Message::Failed(why) => {
                p.extend_from_slice(why.as_bytes());
                TYPE_FAILED
            }
        };
        (kind, p)
    }

    fn decode(kind: u8, payload: &[u8]) -> io::Result<Self> {
        let json = |what: &str| invalid(format!("verify: malformed {what} message"));
        let mut p = payload;
        let m = match kind {
            TYPE_HELLO => Message::Hello(serde_json::from_slice(p).map_err(|_| json("hello"))?),
            TYPE_REQUEST => {
                let chunk_bytes = get_u64(&mut p)?;
                let (ranges, rest) =
                    decode_ranges(p).map_err(|e| invalid(format!("verify: request: {e}")))?;
                p = rest;
                Message::Request(Request {
                    chunk_bytes,
                    ranges,
                })
            }
            TYPE_GROUPS => Message::Groups {
                batch: get_u64(&mut p)?,
                hashes: get_hashes(&mut p)?,
            },
            TYPE_VERDICT => {
                let batch = get_u64(&mut p)?;
                let n = get_u32(&mut p)?;
                let mut groups = Vec::new();
                for _ in 0..n {
                    let g = get_u32(&mut p)?;
                    groups.push((g, get_hashes(&mut p)?));
                }
                Message::Verdict { batch, groups }
            }
            TYPE_DONE => Message::Done(serde_json::from_slice(p).map_err(|_| json("done"))?),
            TYPE_FAILED => {
                let why = String::from_utf8_lossy(p).into_owned();
                p = &[];
                Message::Failed(why)
            }
            other => {
                return Err(invalid(format!(
                    "verify: unknown message type {other:#04x}"
                )))
            }
        };
        if !p.is_empty() && !matches!(kind, TYPE_HELLO | TYPE_DONE) {
            return Err(invalid("verify: a message has trailing bytes"));
        }
        Ok(m)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_damage_is_refused() {
        let messages = [
            Message::Hello(Hello {
                lvmsync: "4.0.0".into(),
                protocol: PROTOCOL,
                bytes: 1 << 40,
            }),
            Message::Request(Request {
                chunk_bytes: 1 << 20,
                ranges: vec![
                    Range::new(0, 10),
                    Range::new(4096, 1 << 30),
                    Range::new(5, 1),
                ],
            }),
            Message::Groups {
                batch: 7,
                hashes: vec![[1; 16], [2; 16]],
            },
            Message::Verdict {
                batch: 7,
                groups: vec![],
            },
            Message::Verdict {
                batch: 8,
                groups: vec![(0, vec![[3; 16]]), (63, vec![[4; 16]; 64])],
            },
            Message::Done(Done { bytes_read: 12 }),
            Message::Failed("/dev/x: cannot open".into()),
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
        // A payload cut short inside (with a valid frame around it) is refused too.
        for m in &messages[1..5] {
            let (kind, payload) = m.encode();
            let mut cut = Vec::new();
            write_frame(&mut cut, kind, &payload[..payload.len() - 1]).unwrap();
            assert!(Message::read_from(&mut &cut[..]).is_err(), "{m:?}");
        }
    }
}
