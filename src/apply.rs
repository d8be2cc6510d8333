//! The receiver: writes a change stream onto a destination, optionally keeping a snapback.
//!
//! Safety rules:
//! - the destination must exist; it is never created or truncated, and no record may reach past
//!   its end (checked per record, and for format 4 against the header before the first write);
//! - the snapback file (the destination's old contents of every range overwritten, in the input's
//!   format) is write-ahead: a batch's old contents are durable before the batch overwrites the
//!   destination, so after a crash at any point applying the snapback rolls the destination back;
//! - the destination and the snapback are fsynced before success is reported.
//!
//! Speed: the calling thread reads and verifies the stream into batches; a second thread reads
//! each batch's old contents into the snapback and makes them durable; a third writes the batch
//! while the second works on the next one. Both keep up to [`QUEUE_DEPTH`] reads or writes in
//! flight. Records aligned to
//! [`DIRECT_ALIGN`] are read and written with O_DIRECT from aligned buffers. Records within a
//! batch are disjoint (an overlap starts a new batch), so their order of writing does not matter.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::bounded;

use crate::blockdev::{
    direct_aligned, direct_io_override, read_full_at, AlignedVec, Device, DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use crate::stream::{
    Format, Record, StreamInfo, StreamReader, StreamTotals, StreamWriter, WriterOptions,
};

/// Bytes of new data gathered before a batch is handed to the writing thread.
const BATCH_BYTES: usize = 32 << 20;
/// Records gathered before a batch is handed over, whatever their size.
const BATCH_RECORDS: usize = 65536;
/// Reads or writes in flight at once.
const QUEUE_DEPTH: usize = 32;

#[derive(Debug, Clone, Default)]
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
        Some(path) => Some(Snapback::create(path, opts.force, &info, dev.size)?),
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
    // Batches flow: reading thread -> saver (old contents into the snapback, made durable)
    // -> writer (the new contents) -> back to the reading thread for reuse. The writer works on
    // one batch while the saver works on the next: batches are disjoint when a snapback is kept,
    // and without one the saver only passes them on, so stream order is kept either way.
    let (full_tx, full_rx) = bounded::<Batch>(1);
    let (saved_tx, saved_rx) = bounded::<Batch>(1);
    let (empty_tx, empty_rx) = bounded::<Batch>(3);
    let (totals, snapback_totals) = std::thread::scope(|scope| {
        let target = &target;
        let saver = scope.spawn(move || -> Result<Option<StreamTotals>> {
            for mut batch in full_rx {
                if let Some(sb) = snapback.as_mut() {
                    batch.save_old(target, sb)?;
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
                batch.write(target)?;
                let _ = empty_tx.try_send(batch);
            }
            Ok(())
        });
        let read = (|| -> Result<StreamTotals> {
            let mut batch = Batch::default();
            while let Some(record) = reader.next_record()? {
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
                if batch.overlaps(offset, len) {
                    // Overlapping records must land in stream order: the earlier batch first.
                    batch = hand_over(batch, &full_tx, &empty_rx)?;
                }
                batch.push(&record);
                if batch.data.len() >= BATCH_BYTES || batch.ops.len() >= BATCH_RECORDS {
                    batch = hand_over(batch, &full_tx, &empty_rx)?;
                }
            }
            if !batch.ops.is_empty() {
                hand_over(batch, &full_tx, &empty_rx)?;
            }
            Ok(reader.totals())
        })();
        drop(full_tx);
        let saved = saver.join().expect("snapback thread panicked");
        let written = writer.join().expect("apply writer thread panicked");
        // A failed write explains why nothing more could be handed over: report it first.
        written?;
        let snapback_totals = saved?;
        Ok::<_, Error>((read?, snapback_totals))
    })?;
    target
        .dev
        .sync()
        .ctx(|| format!("{}: fsync failed", target.path.display()))?;
    Ok(ApplyReport {
        info,
        totals,
        snapback: snapback_totals,
    })
}

/// Hands a full batch to the writing thread; returns an empty one to fill next.
fn hand_over(
    batch: Batch,
    full: &crossbeam_channel::Sender<Batch>,
    empty: &crossbeam_channel::Receiver<Batch>,
) -> Result<Batch> {
    full.send(batch)
        .map_err(|_| Error::Invalid("the apply writer stopped".into()))?;
    Ok(empty.try_recv().unwrap_or_default())
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

/// Runs `work` on every item with up to [`QUEUE_DEPTH`] threads; the first error wins.
fn in_parallel<T: Send>(items: Vec<T>, work: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
    let threads = items.len().min(QUEUE_DEPTH);
    if threads <= 1 {
        return items.into_iter().try_for_each(work);
    }
    let queue = Mutex::new(items.into_iter());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(item) = queue.lock().unwrap().next() else {
                        break;
                    };
                    if let Err(e) = work(item) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
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

#[derive(Clone, Copy)]
enum Op {
    Data {
        offset: u64,
        start: usize,
        len: usize,
    },
    Zero {
        offset: u64,
        len: u64,
    },
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
    ops: Vec<Op>,
    /// Payloads, each aligned record at an aligned place.
    data: AlignedVec,
    /// Old contents read for the snapback, same layout as `data`.
    old: AlignedVec,
    /// Disjoint ranges covered so far, to detect an overlap.
    covered: Vec<(u64, u64)>,
    sorted_end: Option<u64>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            ops: Vec::new(),
            data: AlignedVec::with_capacity(BATCH_BYTES + (1 << 20)),
            old: AlignedVec::with_capacity(0),
            covered: Vec::new(),
            sorted_end: Some(0),
        }
    }
}

impl Batch {
    /// Whether `[offset, offset + len)` overlaps a record already in the batch.
    fn overlaps(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        match self.sorted_end {
            // The common case: records arrive in increasing order.
            Some(end) if offset >= end => false,
            _ => self
                .covered
                .iter()
                .any(|&(s, e)| offset < e && s < offset + len),
        }
    }

    fn push(&mut self, record: &Record<'_>) {
        let op = match *record {
            Record::Data { offset, data } => {
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && data.len().is_multiple_of(DIRECT_ALIGN)
                {
                    self.data.align_end();
                }
                let start = self.data.len();
                self.data.extend_from_slice(data);
                Op::Data {
                    offset,
                    start,
                    len: data.len(),
                }
            }
            Record::Zero { offset, len } => Op::Zero { offset, len },
        };
        let (offset, len) = op.range();
        if len > 0 {
            self.sorted_end = match self.sorted_end {
                Some(end) if offset >= end => Some(offset + len),
                _ => None,
            };
            self.covered.push((offset, offset + len));
        }
        self.ops.push(op);
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.data.clear();
        self.old.clear();
        self.covered.clear();
        self.sorted_end = Some(0);
    }

    /// Saves the old contents of every range in the batch to the snapback and makes them
    /// durable (before [`Batch::write`] overwrites them).
    fn save_old(&mut self, target: &Target, snapback: &mut Snapback) -> Result<()> {
        let old_at = self.read_old(target)?;
        for (op, &at) in self.ops.iter().zip(&old_at) {
            let (offset, len) = op.range();
            snapback.save(offset, &self.old.as_slice()[at..at + len as usize])?;
        }
        snapback.make_durable()
    }

    /// Writes the batch onto the destination, many writes in flight, and empties it.
    fn write(&mut self, target: &Target) -> Result<()> {
        let data = self.data.as_slice();
        in_parallel(self.ops.clone(), |op| match op {
            Op::Data { offset, start, len } => target.write(offset, &data[start..start + len]),
            Op::Zero { offset, len } => target.zero(offset, len),
        })?;
        self.clear();
        Ok(())
    }

    /// Reads the destination's current contents of every op into `old`, in parallel; returns
    /// where each op's old contents start (aligned ranges at aligned places).
    fn read_old(&mut self, target: &Target) -> Result<Vec<usize>> {
        self.old.clear();
        let mut old_at = Vec::with_capacity(self.ops.len());
        for op in &self.ops {
            let (offset, len) = op.range();
            if offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN as u64)
            {
                self.old.align_end();
            }
            old_at.push(self.old.len());
            self.old.resize(self.old.len() + len as usize);
        }
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::with_capacity(self.ops.len());
        let mut rest = self.old.as_mut_slice();
        let mut at = 0;
        for (op, &start) in self.ops.iter().zip(&old_at) {
            let (offset, len) = op.range();
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - at);
            let (piece, tail) = tail.split_at_mut(len as usize);
            pieces.push((offset, piece));
            rest = tail;
            at = start + len as usize;
        }
        in_parallel(pieces, |(offset, buf)| target.read_old(offset, buf))?;
        Ok(old_at)
    }
}

/// The snapback file, shared between its stream writer and the code that makes it durable.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// A snapback file being written.
struct Snapback {
    path: PathBuf,
    file: SharedFile,
    writer: StreamWriter<SharedFile>,
}

impl Snapback {
    fn create(path: &Path, force: bool, info: &StreamInfo, dest_bytes: u64) -> Result<Self> {
        let mut open = OpenOptions::new();
        open.write(true);
        if force {
            open.create(true).truncate(true);
        } else {
            open.create_new(true);
        }
        if force {
            if let Ok(m) = std::fs::metadata(path) {
                if !m.is_file() {
                    return Err(Error::Invalid(format!(
                        "{}: snapback must be a regular file",
                        path.display()
                    )));
                }
            }
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
        let opts = WriterOptions {
            format: info.format,
            source_bytes: dest_bytes,
            chunk_bytes: info.chunk_bytes.unwrap_or(4096),
            compress: match info.format {
                Format::V4 if info.compressed => Some(1),
                _ => None,
            },
        };
        let file = SharedFile(Arc::new(Mutex::new(BufWriter::with_capacity(
            1 << 20,
            file,
        ))));
        let writer = StreamWriter::new(file.clone(), &opts)?;
        Ok(Snapback {
            path: path.to_owned(),
            file,
            writer,
        })
    }

    /// Appends the old contents `old` of the destination at `offset`.
    fn save(&mut self, offset: u64, old: &[u8]) -> Result<()> {
        self.writer.data(offset, old)?;
        Ok(())
    }

    fn make_durable(&mut self) -> Result<()> {
        let ctx = || format!("{}: cannot write snapback", self.path.display());
        self.writer.flush()?;
        let mut sink = self.file.0.lock().unwrap();
        sink.flush().ctx(ctx)?;
        sink.get_ref().sync_data().ctx(ctx)
    }

    fn finish(self) -> Result<StreamTotals> {
        let (_, totals) = self.writer.finish()?;
        let mut sink = self.file.0.lock().unwrap();
        let ctx = || format!("{}: cannot write snapback", self.path.display());
        sink.flush().ctx(ctx)?;
        sink.get_ref().sync_all().ctx(ctx)?;
        Ok(totals)
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
