//! The two ends of a comparison: the DEST side ([`serve`]), which reads DEST and answers, and
//! the source side ([`Client`]), which sends the hashes of its groups of pieces and learns
//! which pieces differ.
//!
//! Pieces are grouped by [`GROUP_PIECES`], groups by [`BATCH_GROUPS`] into batches. For every
//! batch the source side sends one hash per group (BLAKE3 over its piece hashes: a tree of two
//! levels over the pieces); the DEST side compares them with its own and answers with its
//! piece hashes of the groups that differ, or with an empty verdict. When nothing differs,
//! 16 bytes cross per group (64 MiB at the default chunk size) and a few bytes per batch back;
//! otherwise 16 bytes more per piece of each differing group.
//!
//! Both sides read at the same time. The source side keeps the pieces of the batches not yet
//! answered (at most [`WINDOW`]: it waits for an answer before it sends more), and the DEST side
//! the hashes of its current batch (it waits for the source side's hashes of it), so memory does
//! not grow with the volume, and neither side runs far ahead of the other.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::Path;

use crossbeam_channel::Receiver;

use super::check_chunk;
use super::pieces::{piece_count, push_merged, truncate, Piece, PieceHash, Range};
use super::read::Reader;
use super::wire::{Done, Hello, Message, Request, PROTOCOL};
use crate::error::{Error, IoContext, Result};

/// Pieces per group: the unit of the first comparison.
pub const GROUP_PIECES: usize = 64;
/// Groups per batch: the unit of the exchange.
pub const BATCH_GROUPS: usize = 64;
const BATCH_PIECES: usize = GROUP_PIECES * BATCH_GROUPS;
/// Batches the source side may send before it waits for the first answer.
pub const WINDOW: usize = 16;

/// A group's hash: BLAKE3 over its pieces' hashes, truncated.
pub fn group_hash(pieces: &[PieceHash]) -> PieceHash {
    let mut h = blake3::Hasher::new();
    pieces.iter().for_each(|p| {
        h.update(p);
    });
    truncate(h.finalize())
}

const BACK: &str = "verify: the connection to the source side";

fn send(out: &mut dyn Write, m: &Message) -> Result<()> {
    m.write_to(out).ctx(|| format!("{BACK}: cannot write"))
}

fn receive(input: &mut dyn Read) -> Result<Message> {
    match Message::read_from(input) {
        Ok(Message::Failed(why)) => Err(Error::Invalid(format!("the source side failed: {why}"))),
        Ok(m) => Ok(m),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Invalid(
            "the source side closed the connection before the comparison ended".into(),
        )),
        Err(e) => Err(Error::io(format!("{BACK}: cannot read"), e)),
    }
}

/// The DEST side: opens `dest`, says hello, reads the request, reads and hashes DEST's pieces
/// and answers every batch; ends with Done. A failure is told to the source side (Failed) and
/// returned.
pub fn serve(
    dest: &Path,
    input: &mut dyn Read,
    output: &mut dyn Write,
    queue_depth: usize,
) -> Result<()> {
    let res = serve_inner(dest, input, output, queue_depth);
    if let Err(e) = &res {
        let _ = Message::Failed(e.to_string()).write_to(output);
    }
    res
}

fn serve_inner(
    dest: &Path,
    input: &mut dyn Read,
    output: &mut dyn Write,
    queue_depth: usize,
) -> Result<()> {
    let reader = Reader::open(dest)?;
    let size = reader.size();
    send(
        output,
        &Message::Hello(Hello {
            lvmsync: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL,
            bytes: size,
        }),
    )?;
    let Request {
        chunk_bytes,
        ranges,
    } = match receive(input)? {
        Message::Request(r) => r,
        other => return Err(unexpected(&other)),
    };
    check_chunk(chunk_bytes).map_err(Error::Invalid)?;
    if let Some(r) = ranges.iter().find(|r| r.end() > size) {
        return Err(Error::Invalid(format!(
            "{}: the comparison asks for bytes {}..{}, past its end ({size} bytes)",
            dest.display(),
            r.offset,
            r.end()
        )));
    }
    let total = piece_count(&ranges, chunk_bytes);
    let mut batch = 0u64;
    let mut hashes: Vec<PieceHash> = Vec::with_capacity(BATCH_PIECES.min(total as usize));
    let mut seen = 0u64;
    let bytes_read = reader.hash_ranges(&ranges, chunk_bytes, queue_depth, |pieces| {
        for p in pieces {
            hashes.push(p.hash);
            seen += 1;
            if hashes.len() == BATCH_PIECES || seen == total {
                answer(input, output, batch, &hashes)?;
                batch += 1;
                hashes.clear();
            }
        }
        Ok(())
    })?;
    send(output, &Message::Done(Done { bytes_read }))
}

/// Compares the source side's group hashes of `batch` with ours, and answers.
fn answer(
    input: &mut dyn Read,
    output: &mut dyn Write,
    batch: u64,
    ours: &[PieceHash],
) -> Result<()> {
    let theirs = match receive(input)? {
        Message::Groups { batch: b, hashes } if b == batch => hashes,
        other => return Err(unexpected(&other)),
    };
    let groups: Vec<&[PieceHash]> = ours.chunks(GROUP_PIECES).collect();
    if theirs.len() != groups.len() {
        return Err(Error::Invalid(format!(
            "verify: batch {batch} has {} groups here, {} on the source side",
            groups.len(),
            theirs.len()
        )));
    }
    let differing = groups
        .iter()
        .zip(&theirs)
        .enumerate()
        .filter(|(_, (g, h))| group_hash(g) != **h)
        .map(|(i, (g, _))| (i as u32, g.to_vec()))
        .collect();
    send(
        output,
        &Message::Verdict {
            batch,
            groups: differing,
        },
    )
}

fn unexpected(m: &Message) -> Error {
    let what = match m {
        Message::Hello(_) => "hello",
        Message::Request(_) => "request",
        Message::Groups { .. } => "group hashes",
        Message::Verdict { .. } => "verdict",
        Message::Done(_) => "done",
        Message::Failed(_) => "failure",
    };
    Error::Invalid(format!("verify: unexpected {what} message"))
}

/// The DEST side's messages as they arrive (read on a thread of their own, so that the DEST
/// side never waits for us to read).
pub type Incoming = Receiver<io::Result<Message>>;

/// Reads the DEST side's next message. Its failure comes back as [`Error::Receiver`] with its
/// reason, the end of the connection as [`Error::Receiver`] without one.
pub fn next_message(incoming: &Incoming) -> Result<Message> {
    match incoming.recv() {
        Ok(Ok(Message::Failed(why))) => Err(Error::Receiver(Some(why))),
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) if e.kind() != io::ErrorKind::UnexpectedEof => Err(Error::io(
            "verify: the connection to DEST's side: cannot read",
            e,
        )),
        Ok(Err(_)) | Err(_) => Err(Error::Receiver(None)),
    }
}

/// The source side of a comparison: fed its pieces in order, it sends their group hashes a batch
/// at a time and collects the pieces the DEST side reports as different.
pub struct Client<'a> {
    to: &'a mut dyn Write,
    incoming: &'a Incoming,
    total: u64,
    seen: u64,
    batch: u64,
    current: Vec<Piece>,
    outstanding: VecDeque<(u64, Vec<Piece>)>,
    differing: Vec<Range>,
    /// Told of every differing piece as soon as it is known, in order.
    on_differing: Option<OnDiffering<'a>>,
}

/// What a [`Client`] tells of each differing piece (this side's, with its hash); an error
/// stops the comparison.
pub type OnDiffering<'a> = Box<dyn FnMut(&Piece) -> Result<()> + 'a>;

impl<'a> Client<'a> {
    /// A client for `total` pieces.
    pub fn new(to: &'a mut dyn Write, incoming: &'a Incoming, total: u64) -> Self {
        Client {
            to,
            incoming,
            total,
            seen: 0,
            batch: 0,
            current: Vec::with_capacity(BATCH_PIECES.min(total as usize)),
            outstanding: VecDeque::new(),
            differing: Vec::new(),
            on_differing: None,
        }
    }

    /// Tells `f` of every differing piece as soon as its batch is answered (a sync sends it
    /// while the comparison goes on).
    pub fn on_differing(&mut self, f: OnDiffering<'a>) {
        self.on_differing = Some(f);
    }

    /// Takes the next pieces, in order.
    pub fn push(&mut self, pieces: &[Piece]) -> Result<()> {
        for p in pieces {
            if self.seen == self.total {
                return Err(Error::Invalid(
                    "verify: more pieces than were asked for".into(),
                ));
            }
            self.current.push(*p);
            self.seen += 1;
            if self.current.len() == BATCH_PIECES || self.seen == self.total {
                self.send_batch()?;
            }
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<()> {
        let hashes = self
            .current
            .chunks(GROUP_PIECES)
            .map(|g| group_hash(&g.iter().map(|p| p.hash).collect::<Vec<_>>()))
            .collect();
        Message::Groups {
            batch: self.batch,
            hashes,
        }
        .write_to(self.to)
        .ctx(|| "verify: the connection to DEST's side: cannot write".into())?;
        let pieces = std::mem::replace(
            &mut self.current,
            Vec::with_capacity(BATCH_PIECES.min((self.total - self.seen) as usize)),
        );
        self.outstanding.push_back((self.batch, pieces));
        self.batch += 1;
        while self.outstanding.len() > WINDOW {
            self.take_verdict()?;
        }
        Ok(())
    }

    /// Reads the answer to the oldest batch not answered yet.
    fn take_verdict(&mut self) -> Result<()> {
        let (batch, pieces) = self
            .outstanding
            .pop_front()
            .expect("called with a batch outstanding");
        let groups = match next_message(self.incoming)? {
            Message::Verdict { batch: b, groups } if b == batch => groups,
            other => return Err(unexpected(&other)),
        };
        for (g, theirs) in groups {
            let start = g as usize * GROUP_PIECES;
            let ours = pieces
                .get(start..(start + GROUP_PIECES).min(pieces.len()))
                .filter(|ours| ours.len() == theirs.len())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "verify: bad verdict for group {g} of batch {batch}"
                    ))
                })?;
            for (p, h) in ours.iter().zip(&theirs) {
                if p.hash != *h {
                    let r = Range::new(p.offset, p.len);
                    push_merged(&mut self.differing, r);
                    if let Some(f) = self.on_differing.as_mut() {
                        f(p)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for every answer, then the DEST side's end; returns the differing pieces (merged
    /// where they touch) and what the DEST side reported.
    pub fn finish(mut self) -> Result<(Vec<Range>, Done)> {
        if self.seen != self.total {
            return Err(Error::Invalid(format!(
                "verify: {} pieces hashed of {}",
                self.seen, self.total
            )));
        }
        while !self.outstanding.is_empty() {
            self.take_verdict()?;
        }
        match next_message(self.incoming)? {
            Message::Done(done) => Ok((self.differing, done)),
            other => Err(unexpected(&other)),
        }
    }
}
