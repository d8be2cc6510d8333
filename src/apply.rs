//! The receiver: writes a change stream onto a destination, optionally keeping a snapback.
//!
//! Safety rules:
//! - the destination must exist; it is never created or truncated, and no record may reach past
//!   its end (checked per record, and for format 4 against the header before the first write);
//! - the snapback file (the destination's old contents of every range overwritten, as a format 4
//!   stream marked as a snapback) is write-ahead. **Invariant: nothing is written to the
//!   destination whose old contents are not already durable in a complete, checksummed record
//!   of the snapback.** Each batch carries a sequence number; the saver publishes the number of
//!   batches whose old contents are durable, and the writer refuses a batch beyond it. So after
//!   a crash at any point the snapback, cut wherever the crash left it, restores every range
//!   that was overwritten: a cut snapback is applied up to its last complete record (its tail
//!   is at most [`v4::MAX_SNAPBACK_TAIL`] bytes, since it is made durable at least that often);
//! - the snapback's records never overlap, so that they restore the destination exactly in
//!   whatever order they come: each batch's records are saved in increasing order, batches in
//!   the order of the stream, which may go back and forth (Ruby lvmsync sends format 3 records
//!   unsorted). A format 3 stream whose records overlap is refused with a snapback, at the first
//!   record that overlaps an earlier one, before any of it is written; the bytes its records
//!   covered are tracked for that ([`coverage`], bounded memory). Format 4 needs no tracking:
//!   the reader refuses overlapping records itself;
//! - the snapback file is created (mode 0600 or stricter), with its header, durable and its
//!   directory entry synced before anything else is written; it may not be the destination;
//! - the destination and the snapback are fsynced before success is reported.
//!
//! Speed: the calling thread reads and verifies the stream into batches; a second thread reads
//! each batch's old contents into the snapback and makes them durable; a third writes the batch
//! while the second works on the next one. Both keep up to [`QUEUE_DEPTH`] reads or writes in
//! flight. Records aligned to [`DIRECT_ALIGN`] are read and written with O_DIRECT from aligned
//! buffers. Records within a batch are disjoint (an overlap starts a new batch), so their order of
//! writing does not matter.
//!
//! Memory: [`BATCHES`] batches circulate, each holding at most [`BATCH_HELD_BYTES`] (plus one
//! piece) of new data and saved old contents together; records are cut into pieces of at most
//! [`PIECE_BYTES`] so that neither a large record nor a large zero range (whose old contents the
//! snapback must hold) can grow a batch. Tracking a format 3 stream's ranges takes about
//! 2 MiB of bitmaps (then temporary files beside the snapback) and
//! [`MAX_UNALIGNED_RANGES`] ranges not aligned to 512 bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::blockdev::{
    direct_aligned, direct_io_override, read_full_at, AlignedVec, Device, DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use crate::extent::ExtentKind;
use crate::parallel;
use crate::session::{Done, Message, Plan};
use crate::stream::coverage::{self, Coverage, Refusal};
use crate::stream::manifest::{self, ChangesDigest, StreamIdentity};
use crate::stream::{
    v4, Format, Record, SnapbackCut, StreamError, StreamInfo, StreamReader, StreamTotals,
};

mod check;
mod snapback;

use check::{Checker, State};
use snapback::{PendingSnapback, Snapback, SnapbackOutcome};

/// Bytes a batch holds (new data, and with a snapback the old contents saved from the
/// destination) before it is handed to the writing side.
const BATCH_HELD_BYTES: usize = 16 << 20;
/// Records and zero ranges are cut into pieces of at most this many bytes.
const PIECE_BYTES: usize = 2 << 20;
/// Records gathered before a batch is handed over, whatever their size.
const BATCH_RECORDS: usize = 65536;
/// Batches in circulation: one being filled, one being saved, one being written.
const BATCHES: usize = 3;
/// Reads or writes in flight at once.
const QUEUE_DEPTH: usize = 32;

/// The most ends of records not aligned to 512 bytes that a snapback may hold (and separate
/// such ranges that the records of a format 3 stream applied with a snapback may make):
/// hand-made streams only, LVM's chunks and volumes are multiples of 512 bytes.
pub(crate) const MAX_UNALIGNED_RANGES: usize = v4::SNAPBACK_MAX_UNALIGNED / 16;

// A reader of the snapback tracks at most one range per end of a record not aligned to 512
// bytes, in whatever order the records come.
const _: () = assert!(MAX_UNALIGNED_RANGES <= v4::SNAPBACK_MAX_UNALIGNED);

// A batch's snapback records (old contents plus a header per piece) must fit in the tail a
// reader accepts from a snapback cut short by a crash.
const _: () = assert!(
    ((BATCH_HELD_BYTES + PIECE_BYTES + BATCH_RECORDS * (v4::RECORD_HEADER_LEN + 64)) as u64)
        < v4::MAX_SNAPBACK_TAIL
);

/// The bytes a batch holds: [`BATCH_HELD_BYTES`], or less with `LVMSYNC_TEST_BATCH_BYTES`. A
/// test knob, not an option: the crash-consistency VM scenario makes batches small so that a
/// stream small enough for an emulated machine spans many batches (and so many snapback syncs).
fn batch_held_bytes() -> usize {
    std::env::var("LVMSYNC_TEST_BATCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0 && n < BATCH_HELD_BYTES)
        .unwrap_or(BATCH_HELD_BYTES)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Save the overwritten contents here.
    pub snapback: Option<PathBuf>,
    /// Overwrite an existing snapback file; apply a stream whose manifest the destination does
    /// not match.
    pub force: bool,
}

/// How the stream can be read again from its start (a stream file, not a pipe): to look up the
/// new contents of ranges that do not hold the snapshot's, before anything is written.
pub type Reopen<'a> = &'a dyn Fn() -> std::io::Result<Box<dyn Read>>;

/// What the receiver has besides the stream.
#[derive(Default)]
pub struct ApplyContext<'a> {
    /// The back channel of a live session (see [`crate::session`]): the receiver answers the
    /// manifest there, and the sender sends only the ranges it still needs.
    pub session: Option<&'a mut dyn Write>,
    pub reopen: Option<Reopen<'a>>,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub info: StreamInfo,
    pub identity: Option<StreamIdentity>,
    pub totals: StreamTotals,
    /// The snapback written (its totals), if one was.
    pub snapback: Option<StreamTotals>,
    /// The snapback path already held the snapback of an earlier attempt at this change set,
    /// which was kept.
    pub snapback_kept: bool,
    /// The input was a snapback cut short by a crash: the stream byte where its last complete
    /// record ends. Every range it recorded was restored.
    pub interrupted_snapback: Option<u64>,
    /// The destination was checked against the stream's manifest before it was written.
    pub checked: bool,
    /// Ranges skipped because the destination already held their new contents.
    pub already_applied: u64,
    /// Ranges applied onto contents that were not the expected ones (`--force`).
    pub forced: u64,
    /// Data and zero records written onto the destination (not those skipped).
    pub written: u64,
    /// Bytes of the volume they cover.
    pub written_bytes: u64,
}

impl ApplyReport {
    /// What the user should be told of this apply beyond success, one line each.
    pub fn notes(&self, opts: &ApplyOptions, dest: &Path) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(end) = self.interrupted_snapback {
            notes.push(format!(
                "snapback ends at byte {end} without an end record (the apply that wrote it was interrupted); every recorded range restored"
            ));
        }
        if let (true, Some(sb)) = (self.snapback_kept, &opts.snapback) {
            notes.push(format!(
                "kept the snapback {} of an earlier attempt at these changes: it restores {} as it was before that attempt",
                sb.display(),
                dest.display()
            ));
        }
        if self.already_applied > 0 {
            notes.push(format!(
                "{} ranges already held their new contents (an earlier apply of this stream) and were skipped",
                self.already_applied
            ));
            // A new snapback saved those ranges as found, new contents: the snapshot's are
            // only in the snapback of the interrupted apply, if it kept one.
            if let (Some(_), Some(sb)) = (&self.snapback, &opts.snapback) {
                notes.push(format!(
                    "the snapback {} restores {} as this apply found it, with those {} ranges already written: to undo the whole sync, apply it first, then the snapback of the interrupted apply, if it kept one",
                    sb.display(),
                    dest.display(),
                    self.already_applied
                ));
            }
        }
        if self.forced > 0 {
            notes.push(format!(
                "--force: {} ranges did not hold what the stream expected and were written anyway",
                self.forced
            ));
        }
        notes
    }
}

/// Applies the stream read from `input` onto `dest`.
pub fn apply_stream<R: Read>(input: R, dest: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
    apply_with(input, dest, opts, ApplyContext::default())
}

/// Applies the stream read from `input` onto `dest`, with what else the receiver has.
pub fn apply_with<R: Read>(
    input: R,
    dest: &Path,
    opts: &ApplyOptions,
    mut ctx: ApplyContext<'_>,
) -> Result<ApplyReport> {
    let dev = Device::open_write(dest)?;
    let mut reader = StreamReader::open(input)?;
    let info = reader.info().clone();
    if let Some(source) = info.source_bytes {
        if source > dev.size {
            return Err(Error::Invalid(format!(
                "{}: destination is {} bytes, smaller than the stream's source of {} bytes; nothing written",
                dest.display(),
                dev.size,
                source
            )));
        }
    }
    // The identity, then a manifest (checked path) or the changes themselves.
    let mut identity = None;
    let mut pending = None;
    let checked = loop {
        let at = reader.position();
        match reader.next_record() {
            Ok(Some(Record::Identity(json))) => {
                identity = Some(StreamIdentity::from_json(json).map_err(StreamError::Corrupt)?);
            }
            Ok(Some(Record::Manifest(_))) => {
                reader.unread();
                break true;
            }
            Ok(Some(_)) => {
                reader.unread();
                break false;
            }
            Ok(None) => break false,
            Err(e) => {
                pending = Some((at, e));
                break false;
            }
        }
    };
    // Without O_DIRECT (some file systems), every record goes through the page cache.
    let direct = match direct_io_override() {
        Some(false) => None,
        _ => Device::open_write_direct(dest).ok().map(|d| d.file),
    };
    let target = Target {
        dev,
        direct,
        path: dest.to_owned(),
    };
    let mut report = ApplyReport {
        info,
        identity,
        totals: StreamTotals::default(),
        snapback: None,
        snapback_kept: false,
        interrupted_snapback: None,
        checked,
        already_applied: 0,
        forced: 0,
        written: 0,
        written_bytes: 0,
    };
    if checked {
        apply_checked(&mut reader, &target, opts, &mut ctx, &mut report)?;
    } else {
        apply_write_ahead(&mut reader, &target, opts, pending, &mut report)?;
    }
    target
        .dev
        .sync()
        .ctx(|| format!("{}: fsync failed", target.path.display()))?;
    if let Some(back) = ctx.session.as_deref_mut() {
        let done = Done {
            written: report.written,
            already_applied: report.already_applied,
            bytes_written: report.written_bytes,
        };
        session_send(back, &Message::Done(done))?;
    }
    Ok(report)
}

/// Applies a stream without a manifest (format 3, or format 4 from a source that has no prior
/// contents to check against), keeping a write-ahead snapback if asked.
fn apply_write_ahead<R: Read>(
    reader: &mut StreamReader<R>,
    target: &Target,
    opts: &ApplyOptions,
    pending: Option<(u64, StreamError)>,
    report: &mut ApplyReport,
) -> Result<()> {
    let snapback = match &opts.snapback {
        Some(path) => Some(Snapback::create(
            path,
            opts.force,
            &report.info,
            &target.path,
            &target.dev,
        )?),
        None => None,
    };
    // Format 3 records come in any order: those of a stream applied with a snapback are
    // tracked, and one that overlaps an earlier one is refused (the snapback would not restore
    // the bytes both cover). Format 4 readers refuse overlaps themselves.
    let mut covered = match &opts.snapback {
        Some(path) if report.info.format == Format::V3 => Some((
            Coverage::new(Some(snapback::parent_of(path)), MAX_UNALIGNED_RANGES),
            path,
        )),
        _ => None,
    };
    let (interrupted, snapback_totals) = write_pipeline(target, snapback, |filler| {
        if let Some((at, e)) = pending {
            return snapback_cut(reader, at, e);
        }
        loop {
            let at = reader.position();
            let record = match reader.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(None),
                Err(e) => return snapback_cut(reader, at, e),
            };
            let (offset, len) = match record {
                Record::Data { offset, data } => (offset, data.len() as u64),
                Record::Zero { offset, len } => (offset, len),
                _ => {
                    return Err(Error::Invalid(format!(
                        "unexpected record at stream byte {at}"
                    )))
                }
            };
            target.check_bounds(offset, len)?;
            if let Some((covered, path)) = covered.as_mut() {
                let refused = |why: String| {
                    Error::Invalid(format!(
                        "record at stream byte {at} ({len} bytes at byte {offset} of the volume) {why}: no exact snapback can be kept for this stream (without --snapback it applies, later records winning); nothing of it was written, and the snapback {} restores what was",
                        path.display()
                    ))
                };
                let taken = covered
                    .insert(offset, len)
                    .map_err(|e| Error::io("tracking the ranges of the stream's records", e))?;
                match taken {
                    Ok(()) => {}
                    Err(Refusal::Overlap { at: first }) => {
                        return Err(refused(format!(
                            "overlaps an earlier record from byte {first}"
                        )))
                    }
                    Err(Refusal::TooManyUnaligned { max }) => {
                        return Err(refused(format!(
                            "makes more than {max} separate ranges that do not start or end on a {}-byte boundary",
                            coverage::SECTOR
                        )))
                    }
                }
            }
            filler.push(&record)?;
        }
    })?;
    report.totals = reader.totals();
    report.written = report.totals.records;
    report.written_bytes = report.totals.data_bytes + report.totals.zero_bytes;
    report.interrupted_snapback = interrupted;
    report.snapback = snapback_totals;
    Ok(())
}

/// Runs the saving and writing threads while `fill` pushes records into batches on the calling
/// thread; returns what `fill` returned and the snapback's totals.
fn write_pipeline<T>(
    target: &Target,
    mut snapback: Option<Snapback>,
    fill: impl FnOnce(&mut Filler<'_>) -> Result<T>,
) -> Result<(T, Option<StreamTotals>)> {
    if snapback.is_some() {
        // Old contents are read at scattered places: no read-ahead.
        let _ = rustix::fs::fadvise(&target.dev.file, 0, None, rustix::fs::Advice::Random);
    }
    let keep_snapback = snapback.is_some();
    // Batches whose old contents are durable in the snapback (write-ahead; see the module doc).
    let durable_batches = AtomicU64::new(0);
    // Batches flow: reading thread -> saver (old contents into the snapback, made durable)
    // -> writer (the new contents) -> back to the pool. The writer works on one batch while the
    // saver works on the next: batches are disjoint when a snapback is kept, and without one the
    // saver only passes them on, so stream order is kept either way.
    let (full_tx, full_rx) = bounded::<Batch>(1);
    let (saved_tx, saved_rx) = bounded::<Batch>(1);
    let (pool_tx, pool_rx) = bounded::<Batch>(BATCHES);
    for _ in 0..BATCHES {
        pool_tx.send(Batch::default()).expect("the pool has room");
    }
    std::thread::scope(|scope| {
        let durable_batches = &durable_batches;
        let saver = scope.spawn(move || -> Result<Option<StreamTotals>> {
            for mut batch in full_rx {
                if let Some(sb) = snapback.as_mut() {
                    batch.save_old(target, sb)?;
                    durable_batches.store(batch.seq + 1, Ordering::Release);
                }
                saved_tx
                    .send(batch)
                    .map_err(|_| Error::Invalid("the apply writer stopped".into()))?;
            }
            drop(saved_tx);
            match snapback {
                Some(sb) => Ok(Some(sb.finish()?)),
                None => Ok(None),
            }
        });
        let writer = scope.spawn(move || -> Result<()> {
            for mut batch in saved_rx {
                if keep_snapback && durable_batches.load(Ordering::Acquire) <= batch.seq {
                    return Err(Error::Invalid(format!(
                        "internal error: batch {} reached the writer before its old contents were durable in the snapback",
                        batch.seq
                    )));
                }
                batch.write(target)?;
                let _ = pool_tx.send(batch);
            }
            Ok(())
        });
        let filled = (|| -> Result<T> {
            let mut filler = Filler {
                batch: Some(take_from_pool(&pool_rx)?),
                seq: 0,
                full_tx: &full_tx,
                pool_rx: &pool_rx,
                keep_snapback,
                held_bytes: batch_held_bytes(),
            };
            let out = fill(&mut filler)?;
            filler.finish()?;
            Ok(out)
        })();
        drop(full_tx);
        let saved = saver.join().expect("snapback thread panicked");
        let written = writer.join().expect("apply writer thread panicked");
        // A failed write explains why nothing more could be handed over: report it first.
        written?;
        let snapback_totals = saved?;
        Ok((filled?, snapback_totals))
    })
}

/// Applies a stream with a manifest: every range is checked against the destination (and saved
/// to the snapback) before any is written; ranges that already hold their new contents are
/// skipped; a destination that is not a copy of the stream's snapshot is refused.
fn apply_checked<R: Read>(
    reader: &mut StreamReader<R>,
    target: &Target,
    opts: &ApplyOptions,
    ctx: &mut ApplyContext<'_>,
    report: &mut ApplyReport,
) -> Result<()> {
    let changes_claimed = report.identity.as_ref().and_then(|i| i.changes.clone());
    let mut pending = match &opts.snapback {
        Some(path) => Some(PendingSnapback::start(
            path,
            opts.force,
            &report.info,
            &target.path,
            &target.dev,
            changes_claimed.clone(),
        )?),
        None => None,
    };
    let _ = rustix::fs::fadvise(&target.dev.file, 0, None, rustix::fs::Advice::Random);
    let mut checker = Checker::new();
    let mut changes = ChangesDigest::new();
    while !checker.complete() {
        let at = reader.position();
        match reader.next_record()? {
            Some(Record::Manifest(p)) => {
                let payload = manifest::parse(p).map_err(StreamError::Corrupt)?;
                for e in &payload.entries {
                    changes.push(&e.extent);
                }
                let block = payload.block;
                checker.check(target, &payload, &mut |e, old| match &mut pending {
                    Some(sb) => sb.save(e.extent.offset, old, &|i| e.prior(i), block),
                    None => Ok(()),
                })?;
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "expected a manifest record at stream byte {at}"
                )))
            }
        }
    }
    let changes = changes.hex();
    if changes_claimed.as_deref().is_some_and(|c| c != changes) {
        return Err(StreamError::Corrupt(
            "the identity record's change-set digest does not match the manifest".into(),
        )
        .into());
    }
    // Resolve the ranges that do not hold the snapshot's contents.
    let live = ctx.session.is_some();
    if let Some(back) = ctx.session.as_deref_mut() {
        session_send(back, &Message::Suspects(checker.unresolved()))?;
        while !checker.unresolved().is_empty() {
            let at = reader.position();
            match reader.next_record()? {
                Some(Record::Resolution(p)) => {
                    for (offset, new) in
                        manifest::parse_resolution(p).map_err(StreamError::Corrupt)?
                    {
                        checker.resolve(target, offset, &new)?;
                    }
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "expected a resolution record at stream byte {at}"
                    )))
                }
            }
        }
    } else if !checker.unresolved().is_empty() {
        if let Some(reopen) = ctx.reopen {
            resolve_from_stream(reopen, &mut checker, target)?;
        }
    }
    if let Some((offset, state)) = checker.refusal(true) {
        let why = if state == State::Foreign {
            format!(
                "{}: not a copy of the snapshot this stream was made from, or changed since: at byte {offset} it holds neither the snapshot's contents nor the stream's",
                target.path.display()
            )
        } else {
            format!(
                "{}: at byte {offset} it does not hold the snapshot's contents, and whether it holds the stream's (from an interrupted earlier apply) cannot be told from a pipe: apply the stream from a file or re-run the sync, or it is not a copy of the snapshot",
                target.path.display()
            )
        };
        if !opts.force {
            if let Some(back) = ctx.session.as_deref_mut() {
                session_send(back, &Message::Plan(Plan::Refuse(why.clone())))?;
            }
            return Err(Error::Invalid(format!(
                "{why}; nothing written (--force applies anyway)"
            )));
        }
    }
    let entries = checker.entries();
    let need: Vec<bool> = entries.iter().map(|e| e.state != State::Applied).collect();
    report.already_applied = need.iter().filter(|n| !**n).count() as u64;
    report.forced = entries
        .iter()
        .filter(|e| matches!(e.state, State::Foreign | State::Suspect))
        .count() as u64;
    if let Some(back) = ctx.session.as_deref_mut() {
        session_send(back, &Message::Plan(Plan::Send(need.clone())))?;
    }
    // The whole snapback is durable before the first write.
    if let Some(sb) = pending {
        match sb.commit()? {
            SnapbackOutcome::Written(t) => report.snapback = Some(t),
            SnapbackOutcome::Kept => report.snapback_kept = true,
        }
    }
    let (mut written, mut written_bytes) = (0, 0);
    let ((), _) = write_pipeline(target, None, |filler| {
        let mut next = 0usize;
        loop {
            let at = reader.position();
            let record = match reader.next_record()? {
                Some(r) => r,
                None => break,
            };
            let (offset, len, kind) = match record {
                Record::Data { offset, data } => (offset, data.len() as u64, ExtentKind::Data),
                Record::Zero { offset, len } => (offset, len, ExtentKind::Zero),
                _ => {
                    return Err(Error::Invalid(format!(
                        "unexpected record at stream byte {at}"
                    )))
                }
            };
            // Records follow the manifest, one per range; a live sender sends only the needed.
            let i = loop {
                let Some(e) = entries.get(next) else {
                    return Err(Error::Invalid(format!(
                        "record at stream byte {at} (byte {offset} of the volume) is not in the manifest"
                    )));
                };
                next += 1;
                if e.offset == offset {
                    break next - 1;
                }
                if !live || need[next - 1] {
                    return Err(Error::Invalid(format!(
                        "record at stream byte {at} is for byte {offset}, the manifest's next range is at byte {}",
                        e.offset
                    )));
                }
            };
            let e = entries[i];
            if e.len as u64 != len || e.kind != kind {
                return Err(Error::Invalid(format!(
                    "record at stream byte {at} does not match the manifest's range at byte {offset}"
                )));
            }
            if need[i] {
                filler.push(&record)?;
                written += 1;
                written_bytes += len;
            }
        }
        let missing = entries[next..]
            .iter()
            .zip(&need[next..])
            .find(|(_, &n)| n || !live);
        if let Some((e, _)) = missing {
            return Err(Error::Invalid(format!(
                "stream ends before the manifest's range at byte {}",
                e.offset
            )));
        }
        Ok(())
    })?;
    report.totals = reader.totals();
    report.written = written;
    report.written_bytes = written_bytes;
    Ok(())
}

fn session_send(back: &mut dyn Write, m: &Message) -> Result<()> {
    m.write_to(back)
        .ctx(|| "the session's back channel: cannot write".into())
}

/// Resolves suspects from the stream file itself: reads it again from the start, taking the
/// new contents of the suspect ranges from their records.
fn resolve_from_stream(reopen: Reopen<'_>, checker: &mut Checker, target: &Target) -> Result<()> {
    let input = reopen().ctx(|| "cannot read the stream again".into())?;
    let mut r = StreamReader::open(input)?;
    let wanted: std::collections::BTreeSet<u64> = checker.unresolved().into_iter().collect();
    let block = checker.block();
    let zero = vec![0u8; block as usize];
    let mut digests = Vec::new();
    let mut left = wanted.len();
    while left > 0 {
        let Some(record) = r.next_record()? else {
            break;
        };
        digests.clear();
        let offset = match record {
            Record::Data { offset, data } if wanted.contains(&offset) => {
                manifest::block_digests(data, block, &mut digests);
                offset
            }
            Record::Zero { offset, len } if wanted.contains(&offset) => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(block);
                    digests.push(manifest::block_digest(&zero[..n as usize]));
                    done += n;
                }
                offset
            }
            _ => continue,
        };
        checker.resolve(target, offset, &digests)?;
        left -= 1;
    }
    Ok(())
}

/// Judges a stream error at stream byte `at` (where the failing record starts). A snapback
/// cut short by a crash of the apply that wrote it ([`StreamReader::snapback_cut`]) gives
/// `Ok(Some(at))`: the records before it are all that was ever overwritten. Anything else is
/// the error it is.
fn snapback_cut<R: Read>(
    reader: &mut StreamReader<R>,
    at: u64,
    error: StreamError,
) -> Result<Option<u64>> {
    let cut = reader
        .snapback_cut(at, &error)
        .map_err(|e| Error::io(format!("reading the snapback after byte {at}"), e))?;
    match cut {
        SnapbackCut::NotACut => Err(error.into()),
        SnapbackCut::Interrupted => Ok(Some(at)),
        SnapbackCut::Damaged => Err(Error::Invalid(format!(
            "{error}; more than {} bytes follow, more than an interrupted apply leaves: the snapback is damaged, and the records before byte {at} were restored",
            v4::MAX_SNAPBACK_TAIL
        ))),
    }
}

fn take_from_pool(pool: &Receiver<Batch>) -> Result<Batch> {
    pool.recv()
        .map_err(|_| Error::Invalid("the apply writer stopped".into()))
}

/// Cuts records into pieces and gathers them into batches for the saving and writing threads.
struct Filler<'a> {
    /// Always `Some` between calls; `None` only while a batch is handed over.
    batch: Option<Batch>,
    /// Sequence number of the batch being filled.
    seq: u64,
    full_tx: &'a Sender<Batch>,
    pool_rx: &'a Receiver<Batch>,
    keep_snapback: bool,
    /// Bytes a batch holds before it is handed over.
    held_bytes: usize,
}

impl Filler<'_> {
    fn batch(&mut self) -> &mut Batch {
        self.batch.as_mut().expect("a batch is being filled")
    }

    fn push(&mut self, record: &Record<'_>) -> Result<()> {
        let keep = self.keep_snapback;
        match *record {
            Record::Data { offset, data } => {
                for (at, n) in pieces(offset, data.len() as u64) {
                    let from = (at - offset) as usize;
                    self.make_room(at, n)?;
                    self.batch()
                        .push_data(at, &data[from..from + n as usize], keep);
                }
            }
            Record::Zero { offset, len } if keep => {
                // The snapback must hold a zero range's old contents: cut it like data.
                for (at, n) in pieces(offset, len) {
                    self.make_room(at, n)?;
                    self.batch().push_zero(at, n, keep);
                }
            }
            Record::Zero { offset, len } => {
                self.make_room(offset, len)?;
                self.batch().push_zero(offset, len, keep);
            }
            // Only data and zero records change the destination.
            Record::Identity(_) | Record::Manifest(_) | Record::Resolution(_) => {}
        }
        let held_bytes = self.held_bytes;
        let batch = self.batch();
        if batch.held >= held_bytes || batch.ops.len() >= BATCH_RECORDS {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Hands the batch over first if the piece would overlap it (overlapping records must land
    /// in stream order) or would not fit.
    fn make_room(&mut self, offset: u64, len: u64) -> Result<()> {
        let held_bytes = self.held_bytes;
        let batch = self.batch();
        if batch.overlaps(offset, len) || batch.held >= held_bytes {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> Result<()> {
        if self.batch().ops.is_empty() {
            return Ok(());
        }
        let mut full = self.batch.take().expect("a batch is being filled");
        full.seq = self.seq;
        self.seq += 1;
        self.full_tx
            .send(full)
            .map_err(|_| Error::Invalid("the apply writer stopped".into()))?;
        self.batch = Some(take_from_pool(self.pool_rx)?);
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.hand_over()
    }
}

/// `[offset, offset + len)` cut into pieces of [`PIECE_BYTES`] (the last one shorter): (offset,
/// len) of each. (Cut from the record's start, so that an unaligned record's pieces all go to
/// one buffer of a batch.)
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let n = (end - at).min(PIECE_BYTES as u64);
        let piece = (at, n);
        at += n;
        Some(piece)
    })
}

struct Target {
    dev: Device,
    /// The destination opened with O_DIRECT, for aligned records.
    direct: Option<File>,
    path: PathBuf,
}

impl Target {
    fn check_bounds(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.dev.size => Ok(()),
            _ => Err(Error::Invalid(format!(
                "{}: record at byte {offset} of {len} bytes reaches past the end of the destination ({} bytes)",
                self.path.display(),
                self.dev.size
            ))),
        }
    }

    /// The file to do I/O on `buf` at `offset` with: O_DIRECT when aligned.
    fn file_for(&self, offset: u64, buf: &[u8]) -> &File {
        match &self.direct {
            Some(direct) if direct_aligned(offset, buf) => direct,
            _ => &self.dev.file,
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file_for(offset, data)
            .write_all_at(data, offset)
            .ctx(|| format!("{}: write failed", self.path.display()))
    }

    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.dev
            .zero_range(offset, len)
            .ctx(|| format!("{}: write failed", self.path.display()))
    }

    /// Reads the old contents at `offset` into `buf`, which must be filled.
    fn read_old(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let file = self.file_for(offset, buf);
        let got = read_full_at(file, buf, offset)
            .ctx(|| format!("{}: cannot read old contents", self.path.display()))?;
        if got != buf.len() {
            return Err(Error::Invalid(format!(
                "{}: destination ends inside a record at byte {}",
                self.path.display(),
                offset + got as u64
            )));
        }
        Ok(())
    }
}

/// Ranges already written in this apply, to refuse overlapping records when a snapback must be
/// exact (lvmsync's own streams are always disjoint).
#[derive(Default)]
struct WrittenRanges {
    /// start → end, merged where they touch.
    ranges: BTreeMap<u64, u64>,
}

impl WrittenRanges {
    /// Whether `[offset, offset + len)` overlaps a range already inserted.
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let before = self.ranges.range(..=offset).next_back();
        if matches!(before, Some((_, &e)) if e > offset) {
            return true;
        }
        matches!(self.ranges.range(offset..).next(), Some((&s, _)) if s < offset + len)
    }

    fn insert_disjoint(&mut self, offset: u64, len: u64) -> std::result::Result<(), ()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let before = self
            .ranges
            .range(..=offset)
            .next_back()
            .map(|(&s, &e)| (s, e));
        if let Some((_, e)) = before {
            if e > offset {
                return Err(());
            }
        }
        let after = self.ranges.range(offset..).next().map(|(&s, &e)| (s, e));
        if let Some((s, _)) = after {
            if s < end {
                return Err(());
            }
        }
        let mut start = offset;
        let mut stop = end;
        if let Some((s, e)) = before {
            if e == offset {
                self.ranges.remove(&s);
                start = s;
            }
        }
        if let Some((s, e)) = after {
            if s == end {
                self.ranges.remove(&s);
                stop = e;
            }
        }
        self.ranges.insert(start, stop);
        Ok(())
    }
}

/// Where a range's bytes are kept in a batch: aligned ranges in the aligned buffer (so that
/// they can go through O_DIRECT), others in the plain one. Keeping them apart means the aligned
/// buffer never needs padding, so a batch holds exactly what it counts.
#[derive(Clone, Copy)]
struct Place {
    aligned: bool,
    start: usize,
}

#[derive(Clone, Copy)]
enum Op {
    Data { offset: u64, at: Place, len: usize },
    Zero { offset: u64, len: u64 },
}

impl Op {
    fn range(&self) -> (u64, u64) {
        match *self {
            Op::Data { offset, len, .. } => (offset, len as u64),
            Op::Zero { offset, len } => (offset, len),
        }
    }
}

/// Records gathered for the writing thread (and held back until their snapback is durable).
struct Batch {
    /// Position in stream order (write-ahead: see the module doc).
    seq: u64,
    ops: Vec<Op>,
    /// New data of the aligned data ops, then (once read for the snapback) the old contents of
    /// the aligned ops.
    aligned: AlignedVec,
    /// The same for the other ops.
    unaligned: Vec<u8>,
    /// Bytes the batch holds or will hold: new data, and old contents when a snapback is kept.
    held: usize,
    /// Ranges covered so far, to detect an overlap.
    covered: WrittenRanges,
    /// End of the last range while ranges arrive in increasing order (the common case, checked
    /// without a look-up); `None` once one arrived out of order.
    sorted_end: Option<u64>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            seq: 0,
            ops: Vec::new(),
            // Grown on use: most applies are small, and a large zeroed buffer costs its size
            // in page faults every time.
            aligned: AlignedVec::with_capacity(0),
            unaligned: Vec::new(),
            held: 0,
            covered: WrittenRanges::default(),
            sorted_end: Some(0),
        }
    }
}

fn aligned(offset: u64, len: u64) -> bool {
    offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN as u64)
}

impl Batch {
    /// Whether `[offset, offset + len)` overlaps a range already in the batch.
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        match self.sorted_end {
            Some(end) if offset >= end => false,
            _ => self.covered.overlaps(offset, len),
        }
    }

    fn cover(&mut self, offset: u64, len: u64) {
        self.sorted_end = match self.sorted_end {
            Some(end) if offset >= end => Some(offset + len),
            _ => None,
        };
        // Overlaps were handed over before the push: this insert cannot fail.
        let _ = self.covered.insert_disjoint(offset, len);
    }

    /// Room for `len` bytes of the range at `offset`, at the end of the buffer it belongs in.
    fn place(&mut self, offset: u64, len: usize) -> (Place, &mut [u8]) {
        let is_aligned = aligned(offset, len as u64);
        let start = if is_aligned {
            let start = self.aligned.len();
            self.aligned.resize(start + len);
            start
        } else {
            let start = self.unaligned.len();
            self.unaligned.resize(start + len, 0);
            start
        };
        let at = Place {
            aligned: is_aligned,
            start,
        };
        (at, self.bytes_mut(at, len))
    }

    fn bytes(&self, at: Place, len: usize) -> &[u8] {
        let buf = if at.aligned {
            self.aligned.as_slice()
        } else {
            &self.unaligned[..]
        };
        &buf[at.start..at.start + len]
    }

    fn bytes_mut(&mut self, at: Place, len: usize) -> &mut [u8] {
        let buf = if at.aligned {
            self.aligned.as_mut_slice()
        } else {
            &mut self.unaligned[..]
        };
        &mut buf[at.start..at.start + len]
    }

    fn push_data(&mut self, offset: u64, data: &[u8], keep_snapback: bool) {
        let (at, room) = self.place(offset, data.len());
        room.copy_from_slice(data);
        self.ops.push(Op::Data {
            offset,
            at,
            len: data.len(),
        });
        self.held += if keep_snapback { 2 } else { 1 } * data.len();
        self.cover(offset, data.len() as u64);
    }

    fn push_zero(&mut self, offset: u64, len: u64, keep_snapback: bool) {
        self.ops.push(Op::Zero { offset, len });
        if keep_snapback {
            self.held += len as usize;
        }
        self.cover(offset, len);
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.aligned.clear();
        self.unaligned.clear();
        self.held = 0;
        self.covered = WrittenRanges::default();
        self.sorted_end = Some(0);
    }

    /// Saves the old contents of every range in the batch to the snapback, in increasing
    /// order, and makes them durable (before [`Batch::write`] overwrites them).
    fn save_old(&mut self, target: &Target, snapback: &mut Snapback) -> Result<()> {
        let old_at = self.read_old(target)?;
        let mut order: Vec<usize> = (0..self.ops.len()).collect();
        if self.sorted_end.is_none() {
            order.sort_unstable_by_key(|&i| self.ops[i].range().0);
        }
        for i in order {
            let (offset, len) = self.ops[i].range();
            snapback.save(offset, self.bytes(old_at[i], len as usize))?;
        }
        snapback.make_durable()
    }

    /// Writes the batch onto the destination, many writes in flight, and empties it.
    fn write(&mut self, target: &Target) -> Result<()> {
        let this = &*self;
        parallel::for_each(self.ops.clone(), QUEUE_DEPTH, |op| match op {
            Op::Data { offset, at, len } => target.write(offset, this.bytes(at, len)),
            Op::Zero { offset, len } => target.zero(offset, len),
        })?;
        self.clear();
        Ok(())
    }

    /// Reads the destination's current contents of every op into the buffers after the new
    /// data, in parallel; returns where each op's old contents are.
    fn read_old(&mut self, target: &Target) -> Result<Vec<Place>> {
        let firsts = (self.aligned.len(), self.unaligned.len());
        let mut old_at = Vec::with_capacity(self.ops.len());
        for i in 0..self.ops.len() {
            let (offset, len) = self.ops[i].range();
            old_at.push(self.place(offset, len as usize).0);
        }
        // Split both buffers into one disjoint slice per op, in op order.
        let (_, mut rest_aligned) = self.aligned.as_mut_slice().split_at_mut(firsts.0);
        let (_, mut rest_unaligned) = self.unaligned.split_at_mut(firsts.1);
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::with_capacity(self.ops.len());
        for (op, at) in self.ops.iter().zip(&old_at) {
            let (offset, len) = op.range();
            let rest = if at.aligned {
                &mut rest_aligned
            } else {
                &mut rest_unaligned
            };
            let (piece, tail) = std::mem::take(rest).split_at_mut(len as usize);
            *rest = tail;
            pieces.push((offset, piece));
        }
        parallel::for_each(pieces, QUEUE_DEPTH, |(offset, buf)| {
            target.read_old(offset, buf)
        })?;
        Ok(old_at)
    }
}

#[cfg(test)]
mod tests {
    use super::WrittenRanges;

    #[test]
    fn written_ranges_refuse_overlap_and_merge_neighbours() {
        let mut w = WrittenRanges::default();
        assert!(w.insert_disjoint(10, 10).is_ok());
        assert!(w.insert_disjoint(30, 10).is_ok());
        assert!(w.insert_disjoint(20, 10).is_ok());
        assert_eq!(w.ranges.len(), 1);
        assert!(w.insert_disjoint(39, 2).is_err());
        assert!(w.insert_disjoint(5, 6).is_err());
        assert!(w.insert_disjoint(0, 10).is_ok());
        assert!(w.insert_disjoint(40, 1).is_ok());
        assert_eq!(w.ranges.iter().collect::<Vec<_>>(), vec![(&0, &41)]);
    }
}
