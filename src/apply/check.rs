//! The destination checked against a stream's manifest before anything is written.
//!
//! Every manifest range is read from the destination (many reads in flight) and hashed block by
//! block. A range whose every block holds the snapshot's contents (the manifest's prior digests)
//! is to be written. Any other range is a suspect: either an earlier apply of this same stream
//! already wrote some of it (a resumed apply), or the destination is not a copy of the snapshot
//! the stream was made from, or it was changed since. Suspects are resolved with the digests of
//! the new contents (asked of the sender on a live session, or read from the stream file): a
//! range whose blocks all hold old or new contents is written (or skipped when all hold the new
//! contents, counting blocks whose old and new contents are the same); a range with a block
//! that holds neither refuses the whole apply, before anything is written.
//!
//! Memory: 16 bytes per range, and for each suspect a bitmap of its differing blocks and two
//! digests, however large the manifest. The destination's contents read here are what a snapback
//! saves, so with `--snapback` the whole rollback is written by this pass, before the first
//! write to the destination.

use crate::blockdev::{AlignedVec, DIRECT_ALIGN};
use crate::error::{Error, Result};
use crate::extent::ExtentKind;
use crate::stream::manifest::{self, block_digest, BlockDigest};

use super::{Target, QUEUE_DEPTH};
use crate::parallel;

/// Bytes of destination contents read at once while checking.
const CHECK_GROUP_BYTES: usize = 8 << 20;

/// Takes each range's current contents, in order (the snapback).
pub(super) type Save<'a> = dyn FnMut(&manifest::EntryRef<'_>, &[u8]) -> Result<()> + 'a;

/// What the check found in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Every block holds the snapshot's contents: to be written.
    Prior,
    /// Some blocks do not hold the snapshot's contents; not resolved yet.
    Suspect,
    /// Every block that is not the snapshot's holds the new contents; to be written again
    /// (an interrupted write), or skipped if all of them do (see [`State::Applied`]).
    Mixed,
    /// Every block holds the new contents already: skipped.
    Applied,
    /// A block holds neither the snapshot's nor the new contents.
    Foreign,
}

/// One manifest range and what the check found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub offset: u64,
    pub len: u32,
    pub kind: ExtentKind,
    pub state: State,
}

/// A range that does not hold the snapshot's contents.
#[derive(Debug)]
struct Suspect {
    entry: usize,
    /// Bit `i` set: block `i` differs from the snapshot's contents.
    differing: Vec<u64>,
    /// BLAKE3 over the destination's digests of the differing blocks, in order.
    digest: [u8; 32],
    /// BLAKE3 over the snapshot's digests of the other blocks, in order: where the new
    /// contents are the same (a change tracked in blocks larger than what was written), those
    /// blocks hold the new contents too.
    unchanged: [u8; 32],
    /// The first differing block.
    first: u64,
}

/// The outcome of the check of one range, filled in by a reading thread.
enum Found {
    Prior,
    Suspect(Suspect),
}

/// The manifest being checked, then the list of ranges with their states.
pub(super) struct Checker {
    block: u64,
    entries: Vec<Entry>,
    suspects: Vec<Suspect>,
    next_min: u64,
    complete: bool,
    buf: AlignedVec,
}

impl Checker {
    pub fn new() -> Self {
        Checker {
            block: 0,
            entries: Vec::new(),
            suspects: Vec::new(),
            next_min: 0,
            complete: false,
            buf: AlignedVec::with_capacity(0),
        }
    }

    /// The digest block size of the manifest.
    pub fn block(&self) -> u64 {
        self.block
    }

    pub fn complete(&self) -> bool {
        self.complete
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks the ranges of one manifest record against the destination and hands each range's
    /// current contents, in order, to `save` (the snapback).
    pub fn check(
        &mut self,
        target: &Target,
        payload: &manifest::Payload<'_>,
        save: &mut Save<'_>,
    ) -> Result<()> {
        if self.complete {
            return Err(Error::Invalid("manifest record after the last one".into()));
        }
        if self.block != 0 && payload.block != self.block {
            return Err(Error::Invalid(format!(
                "manifest records disagree on the block size ({} and {})",
                self.block, payload.block
            )));
        }
        self.block = payload.block;
        for e in &payload.entries {
            if e.extent.offset < self.next_min {
                return Err(Error::Invalid(format!(
                    "manifest entry at byte {} is not after the previous one",
                    e.extent.offset
                )));
            }
            target.check_bounds(e.extent.offset, e.extent.len)?;
            self.next_min = e.extent.end();
        }
        let mut start = 0;
        while start < payload.entries.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < payload.entries.len()
                && (end == start
                    || bytes + (payload.entries[end].extent.len as usize) <= CHECK_GROUP_BYTES)
            {
                bytes += (payload.entries[end].extent.len as usize).next_multiple_of(DIRECT_ALIGN);
                end += 1;
            }
            self.check_group(target, &payload.entries[start..end], save)?;
            start = end;
        }
        self.complete = payload.last;
        Ok(())
    }

    fn check_group(
        &mut self,
        target: &Target,
        group: &[manifest::EntryRef<'_>],
        save: &mut Save<'_>,
    ) -> Result<()> {
        // Each range at an aligned place, so that aligned ones can be read with O_DIRECT.
        let mut at = Vec::with_capacity(group.len());
        let mut len = 0;
        for e in group {
            at.push(len);
            len = (len + e.extent.len as usize).next_multiple_of(DIRECT_ALIGN);
        }
        self.buf.clear();
        self.buf.resize(len);
        let mut found: Vec<Option<Found>> = (0..group.len()).map(|_| None).collect();
        {
            let mut work = Vec::with_capacity(group.len());
            let mut rest = self.buf.as_mut_slice();
            let mut pos = 0;
            for ((e, &start), slot) in group.iter().zip(&at).zip(found.iter_mut()) {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - pos);
                let (piece, tail) = tail.split_at_mut(e.extent.len as usize);
                rest = tail;
                pos = start + e.extent.len as usize;
                work.push((e, piece, slot));
            }
            let block = self.block;
            let first_index = self.entries.len();
            parallel::for_each(
                work.into_iter().enumerate().collect(),
                QUEUE_DEPTH,
                |(i, (e, piece, slot))| {
                    target.read_old(e.extent.offset, piece)?;
                    *slot = Some(compare(e, piece, block, first_index + i));
                    Ok(())
                },
            )?;
        }
        for ((e, &start), f) in group.iter().zip(&at).zip(found) {
            let state = match f.expect("every range was checked") {
                Found::Prior => State::Prior,
                Found::Suspect(s) => {
                    self.suspects.push(s);
                    State::Suspect
                }
            };
            self.entries.push(Entry {
                offset: e.extent.offset,
                len: e.extent.len as u32,
                kind: e.extent.kind,
                state,
            });
            save(
                e,
                &self.buf.as_slice()[start..start + e.extent.len as usize],
            )?;
        }
        Ok(())
    }

    /// Offsets of the ranges not resolved yet, in order.
    pub fn unresolved(&self) -> Vec<u64> {
        self.suspects
            .iter()
            .filter(|s| self.entries[s.entry].state == State::Suspect)
            .map(|s| self.entries[s.entry].offset)
            .collect()
    }

    /// Resolves the suspect range at `offset` with the digests of its new contents, one per
    /// block. A range that is not a suspect (or was resolved already) is an error: the sender
    /// answers only what was asked.
    pub fn resolve(&mut self, target: &Target, offset: u64, new: &[BlockDigest]) -> Result<()> {
        let entry = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset)
            .map_err(|_| {
                Error::Invalid(format!(
                    "resolution for byte {offset}, which is no manifest range"
                ))
            })?;
        let s = self
            .suspects
            .binary_search_by_key(&entry, |s| s.entry)
            .map_err(|_| {
                Error::Invalid(format!("resolution for byte {offset}, which was not asked"))
            })?;
        let e = self.entries[entry];
        if e.state != State::Suspect {
            return Err(Error::Invalid(format!(
                "second resolution for byte {offset}"
            )));
        }
        let blocks = manifest::block_count(e.len as u64, self.block) as usize;
        if new.len() != blocks {
            return Err(Error::Invalid(format!(
                "resolution for byte {offset} has {} digests, the range has {blocks} blocks",
                new.len()
            )));
        }
        let suspect = &mut self.suspects[s];
        let mut h = blake3::Hasher::new();
        let mut unchanged = blake3::Hasher::new();
        for (i, d) in new.iter().enumerate() {
            if differs(&suspect.differing, i) {
                h.update(d);
            } else {
                unchanged.update(d);
            }
        }
        self.entries[entry].state = if *h.finalize().as_bytes() == suspect.digest {
            if *unchanged.finalize().as_bytes() == suspect.unchanged {
                State::Applied
            } else {
                State::Mixed
            }
        } else {
            // Find the exact block: read the range again (this is the refusal's path only).
            suspect.first = first_foreign(target, &e, self.block, new, &suspect.differing)?;
            State::Foreign
        };
        Ok(())
    }

    /// The first range that refuses the apply, and why: a block holding neither the old nor
    /// the new contents, or (when `unresolved_refuses`) a suspect left unresolved.
    pub fn refusal(&self, unresolved_refuses: bool) -> Option<(u64, State)> {
        self.suspects
            .iter()
            .map(|s| (s, self.entries[s.entry].state))
            .find(|(_, st)| *st == State::Foreign || (unresolved_refuses && *st == State::Suspect))
            .map(|(s, st)| (self.entries[s.entry].offset + s.first * self.block, st))
    }
}

fn differs(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// Compares a range's current contents with its prior digests.
fn compare(e: &manifest::EntryRef<'_>, contents: &[u8], block: u64, entry: usize) -> Found {
    let mut differing = vec![0u64; e.blocks().div_ceil(64)];
    let mut h = blake3::Hasher::new();
    let mut unchanged = blake3::Hasher::new();
    let mut first = None;
    for (i, data) in contents.chunks(block as usize).enumerate() {
        let d = block_digest(data);
        if d != e.prior(i) {
            differing[i / 64] |= 1 << (i % 64);
            h.update(&d);
            first.get_or_insert(i as u64);
        } else {
            unchanged.update(&d);
        }
    }
    match first {
        None => Found::Prior,
        Some(first) => Found::Suspect(Suspect {
            entry,
            differing,
            digest: *h.finalize().as_bytes(),
            unchanged: *unchanged.finalize().as_bytes(),
            first,
        }),
    }
}

/// The first block of a range that holds neither its old nor its new contents.
fn first_foreign(
    target: &Target,
    e: &Entry,
    block: u64,
    new: &[BlockDigest],
    differing: &[u64],
) -> Result<u64> {
    let mut buf = vec![0u8; e.len as usize];
    target.read_old(e.offset, &mut buf)?;
    Ok(buf
        .chunks(block as usize)
        .enumerate()
        .position(|(i, data)| differs(differing, i) && block_digest(data) != new[i])
        .unwrap_or(0) as u64)
}
