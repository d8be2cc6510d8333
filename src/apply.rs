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
//! snapback must hold) can grow a batch.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::blockdev::{
    direct_aligned, direct_io_override, read_full_at, AlignedVec, Device, DeviceKind, DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use crate::parallel;
use crate::stream::{
    v4, Format, Record, StreamError, StreamInfo, StreamReader, StreamTotals, StreamWriter,
    WriterOptions,
};

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
    /// Overwrite an existing snapback file.
    pub force: bool,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub info: StreamInfo,
    pub totals: StreamTotals,
    pub snapback: Option<StreamTotals>,
    /// The input was a snapback cut short by a crash: the stream byte where its last complete
    /// record ends. Every range it recorded was restored.
    pub interrupted_snapback: Option<u64>,
}

/// Applies the stream read from `input` onto `dest`.
pub fn apply_stream<R: Read>(input: R, dest: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
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
    let mut snapback = match &opts.snapback {
        Some(path) => Some(Snapback::create(path, opts.force, &info, dest, &dev)?),
        None => None,
    };
    // Without O_DIRECT (some file systems), every record goes through the page cache.
    let direct = match direct_io_override() {
        Some(false) => None,
        _ => Device::open_write_direct(dest).ok().map(|d| d.file),
    };
    if snapback.is_some() {
        // Old contents are read at scattered places: no read-ahead.
        let _ = rustix::fs::fadvise(&dev.file, 0, None, rustix::fs::Advice::Random);
    }
    let target = Target {
        dev,
        direct,
        path: dest.to_owned(),
    };
    let mut written = WrittenRanges::default();
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
    let (totals, interrupted, snapback_totals) = std::thread::scope(|scope| {
        let target = &target;
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
        let read = (|| -> Result<(StreamTotals, Option<u64>)> {
            let mut filler = Filler {
                batch: Some(take_from_pool(&pool_rx)?),
                seq: 0,
                full_tx: &full_tx,
                pool_rx: &pool_rx,
                keep_snapback,
                held_bytes: batch_held_bytes(),
            };
            let mut interrupted = None;
            loop {
                let at = reader.position();
                let record = match reader.next_record() {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(e) => match snapback_cut(&mut reader, &info, at, e)? {
                        Some(end) => {
                            interrupted = Some(end);
                            break;
                        }
                        None => unreachable!("snapback_cut returns an error or the cut"),
                    },
                };
                let (offset, len) = match record {
                    Record::Data { offset, data } => (offset, data.len() as u64),
                    Record::Zero { offset, len } => (offset, len),
                };
                target.check_bounds(offset, len)?;
                if keep_snapback {
                    written.insert_disjoint(offset, len).map_err(|_| {
                        Error::Invalid(format!(
                            "record at byte {offset} overlaps an earlier record: cannot keep an exact snapback for this stream"
                        ))
                    })?;
                }
                filler.push(&record)?;
            }
            filler.finish()?;
            Ok((reader.totals(), interrupted))
        })();
        drop(full_tx);
        let saved = saver.join().expect("snapback thread panicked");
        let written = writer.join().expect("apply writer thread panicked");
        // A failed write explains why nothing more could be handed over: report it first.
        written?;
        let snapback_totals = saved?;
        let (totals, interrupted) = read?;
        Ok::<_, Error>((totals, interrupted, snapback_totals))
    })?;
    target
        .dev
        .sync()
        .ctx(|| format!("{}: fsync failed", target.path.display()))?;
    Ok(ApplyReport {
        info,
        totals,
        snapback: snapback_totals,
        interrupted_snapback: interrupted,
    })
}

/// Judges a stream error at stream byte `at` (where the failing record starts). A snapback
/// that ends there in no more than [`v4::MAX_SNAPBACK_TAIL`] bytes that do not form a record was
/// cut short by a crash of the apply that wrote it: `Ok(Some(at))`, and the records before it
/// are all that was ever overwritten. Anything else is the error it is.
fn snapback_cut<R: Read>(
    reader: &mut StreamReader<R>,
    info: &StreamInfo,
    at: u64,
    error: StreamError,
) -> Result<Option<u64>> {
    let damaged = matches!(error, StreamError::Corrupt(_) | StreamError::Unsupported(_));
    if !info.snapback || !damaged {
        return Err(error.into());
    }
    let consumed = reader.position() - at;
    let limit = v4::MAX_SNAPBACK_TAIL.saturating_sub(consumed);
    let rest = reader
        .skip_rest(limit)
        .map_err(|e| Error::io(format!("reading the snapback after byte {at}"), e))?;
    if consumed + rest > v4::MAX_SNAPBACK_TAIL {
        return Err(Error::Invalid(format!(
            "{error}; more than {} bytes follow, more than an interrupted apply leaves: the snapback is damaged, and the records before byte {at} were restored",
            v4::MAX_SNAPBACK_TAIL
        )));
    }
    Ok(Some(at))
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
                for (i, piece) in data.chunks(PIECE_BYTES).enumerate() {
                    let at = offset + (i * PIECE_BYTES) as u64;
                    self.make_room(at, piece.len() as u64)?;
                    self.batch().push_data(at, piece, keep);
                }
            }
            Record::Zero { offset, len } => {
                // The snapback must hold a zero range's old contents: cut it like data.
                let piece = if keep { PIECE_BYTES as u64 } else { len };
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(piece);
                    self.make_room(offset + done, n)?;
                    self.batch().push_zero(offset + done, n, keep);
                    done += n;
                }
            }
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

    /// Saves the old contents of every range in the batch to the snapback and makes them
    /// durable (before [`Batch::write`] overwrites them).
    fn save_old(&mut self, target: &Target, snapback: &mut Snapback) -> Result<()> {
        let old_at = self.read_old(target)?;
        for (op, &at) in self.ops.iter().zip(&old_at) {
            let (offset, len) = op.range();
            snapback.save(offset, self.bytes(at, len as usize))?;
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

/// The snapback file, shared between its stream writer (which buffers) and the code that
/// makes it durable.
#[derive(Clone)]
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether two stats name the same file, or the same block device through different nodes.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    (a.dev() == b.dev() && a.ino() == b.ino())
        || (a.file_type().is_block_device()
            && b.file_type().is_block_device()
            && a.rdev() == b.rdev())
}

/// A snapback file being written.
struct Snapback {
    path: PathBuf,
    file: SharedFile,
    writer: StreamWriter<SharedFile>,
}

impl Snapback {
    /// Creates the snapback file for an apply onto `dest` (open as `dest_dev`) and makes it,
    /// with its header, durable. Refused, before anything is opened for writing: an existing
    /// file without `force`, anything but a regular file, the destination itself (by any path),
    /// and a file on a file system that lives on the destination.
    fn create(
        path: &Path,
        force: bool,
        info: &StreamInfo,
        dest: &Path,
        dest_dev: &Device,
    ) -> Result<Self> {
        let refuse = |why: &str| Error::Invalid(format!("{}: {why}", path.display()));
        let dest_meta = dest_dev
            .file
            .metadata()
            .ctx(|| format!("{}: cannot stat", dest.display()))?;
        let check = |meta: &std::fs::Metadata| -> Result<()> {
            if same_file(meta, &dest_meta) {
                return Err(refuse(&format!(
                    "the snapback cannot be the destination {} itself",
                    dest.display()
                )));
            }
            if !meta.is_file() {
                return Err(refuse("snapback must be a regular file"));
            }
            Ok(())
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                check(&meta)?;
                if !force {
                    return Err(refuse(
                        "snapback file already exists (use --force to overwrite it)",
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("{}: cannot stat", path.display()), e)),
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent_meta =
            std::fs::metadata(parent).ctx(|| format!("{}: cannot stat", parent.display()))?;
        if dest_dev.kind == DeviceKind::BlockDevice && parent_meta.dev() == dest_meta.rdev() {
            return Err(refuse(&format!(
                "the snapback's file system is on the destination {}",
                dest.display()
            )));
        }
        // Old contents of the volume: readable by the owner only (or as strict as DEST).
        let mode = 0o600 & dest_meta.permissions().mode();
        let mut open = OpenOptions::new();
        open.write(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        if force {
            open.create(true);
        } else {
            open.create_new(true);
        }
        let file = open.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Invalid(format!(
                    "{}: snapback file already exists (use --force to overwrite it)",
                    path.display()
                ))
            } else {
                Error::io(
                    format!("{}: cannot create snapback file", path.display()),
                    e,
                )
            }
        })?;
        // The path may have changed since it was checked: check what was opened, before
        // anything is written to it.
        let ctx = || format!("{}: cannot write snapback", path.display());
        check(&file.metadata().ctx(ctx)?)?;
        file.set_len(0).ctx(ctx)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx(ctx)?;
        let opts = WriterOptions {
            format: Format::V4,
            source_bytes: dest_dev.size,
            chunk_bytes: info.chunk_bytes.unwrap_or(4096),
            compress: info.compressed.then_some(1),
            snapback: true,
        };
        let file = SharedFile(Arc::new(file));
        let writer = StreamWriter::new(file.clone(), &opts).map_err(|e| snapback_error(path, e))?;
        let mut snapback = Snapback {
            path: path.to_owned(),
            file,
            writer,
        };
        snapback.make_durable()?;
        // The file's name must survive a crash too.
        File::open(parent)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("{}: cannot sync the directory", parent.display()))?;
        Ok(snapback)
    }

    /// Appends the old contents `old` of the destination at `offset`.
    fn save(&mut self, offset: u64, old: &[u8]) -> Result<()> {
        self.writer
            .data(offset, old)
            .map_err(|e| snapback_error(&self.path, e))
    }

    fn make_durable(&mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(|e| snapback_error(&self.path, e))?;
        self.file
            .0
            .sync_data()
            .ctx(|| format!("{}: cannot write snapback", self.path.display()))
    }

    fn finish(self) -> Result<StreamTotals> {
        let (file, totals) = self
            .writer
            .finish()
            .map_err(|e| snapback_error(&self.path, e))?;
        file.0
            .sync_all()
            .ctx(|| format!("{}: cannot write snapback", self.path.display()))?;
        Ok(totals)
    }
}

/// A snapback write error, with the file's name.
fn snapback_error(path: &Path, e: StreamError) -> Error {
    match e {
        StreamError::Io(e) => Error::io(format!("{}: cannot write snapback", path.display()), e),
        other => other.into(),
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
