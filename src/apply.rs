//! The receiver: writes a change stream onto a destination, optionally keeping a snapback.
//!
//! Safety rules:
//! - the destination must exist; it is never created or truncated, and no record may reach past
//!   its end (checked per record, and for format 4 against the header before the first write);
//! - the snapback file (the destination's old contents of every range overwritten, in the input's
//!   format) is write-ahead: a batch's old contents are durable before the batch overwrites the
//!   destination, so after a crash at any point applying the snapback rolls the destination back;
//! - the destination and the snapback are fsynced before success is reported.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::blockdev::{read_full_at, Device};
use crate::error::{Error, IoContext, Result};
use crate::stream::{
    Format, Record, StreamInfo, StreamReader, StreamTotals, StreamWriter, WriterOptions,
};

/// Bytes of new data gathered before a snapback batch is made durable and written.
const BATCH_BYTES: usize = 32 << 20;

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
    let mut target = Target {
        dev,
        path: dest.to_owned(),
        written: WrittenRanges::default(),
    };
    let mut batch = Batch::default();
    while let Some(record) = reader.next_record()? {
        let (offset, len) = match record {
            Record::Data { offset, data } => (offset, data.len() as u64),
            Record::Zero { offset, len } => (offset, len),
        };
        target.check_bounds(offset, len)?;
        match &mut snapback {
            None => target.write(&record)?,
            Some(_) => {
                target.written.insert_disjoint(offset, len).map_err(|_| {
                    Error::Invalid(format!(
                        "record at byte {offset} overlaps an earlier record: cannot keep an exact snapback for this stream"
                    ))
                })?;
                batch.push(&record);
                if batch.data.len() >= BATCH_BYTES || batch.ops.len() >= 65536 {
                    batch.flush(&target, snapback.as_mut().unwrap())?;
                }
            }
        }
    }
    let totals = reader.totals();
    let snapback_totals = match snapback {
        Some(mut sb) => {
            batch.flush(&target, &mut sb)?;
            Some(sb.finish()?)
        }
        None => None,
    };
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

struct Target {
    dev: Device,
    path: PathBuf,
    written: WrittenRanges,
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

    fn write(&self, record: &Record<'_>) -> Result<()> {
        match *record {
            Record::Data { offset, data } => self.dev.file.write_all_at(data, offset),
            Record::Zero { offset, len } => self.dev.zero_range(offset, len),
        }
        .ctx(|| format!("{}: write failed", self.path.display()))
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

/// Records held back until their snapback is durable.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    data: Vec<u8>,
}

impl Batch {
    fn push(&mut self, record: &Record<'_>) {
        match *record {
            Record::Data { offset, data } => {
                let start = self.data.len();
                self.data.extend_from_slice(data);
                self.ops.push(Op::Data {
                    offset,
                    start,
                    len: data.len(),
                });
            }
            Record::Zero { offset, len } => self.ops.push(Op::Zero { offset, len }),
        }
    }

    /// Saves the old contents of every range in the batch, makes them durable, then writes.
    fn flush(&mut self, target: &Target, snapback: &mut Snapback) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        for op in &self.ops {
            let (offset, len) = match *op {
                Op::Data { offset, len, .. } => (offset, len as u64),
                Op::Zero { offset, len } => (offset, len),
            };
            snapback.save(&target.dev.file, &target.path, offset, len)?;
        }
        snapback.make_durable()?;
        for op in &self.ops {
            let record = match *op {
                Op::Data { offset, start, len } => Record::Data {
                    offset,
                    data: &self.data[start..start + len],
                },
                Op::Zero { offset, len } => Record::Zero { offset, len },
            };
            target.write(&record)?;
        }
        self.ops.clear();
        self.data.clear();
        Ok(())
    }
}

/// The snapback file, shared between its stream writer and the code that makes it durable.
#[derive(Clone)]
struct SharedFile(Rc<RefCell<BufWriter<File>>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.borrow_mut().write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// A snapback file being written.
struct Snapback {
    path: PathBuf,
    file: SharedFile,
    writer: StreamWriter<SharedFile>,
    buf: Vec<u8>,
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
        let file = SharedFile(Rc::new(RefCell::new(BufWriter::with_capacity(
            1 << 20,
            file,
        ))));
        let writer = StreamWriter::new(file.clone(), &opts)?;
        Ok(Snapback {
            path: path.to_owned(),
            file,
            writer,
            buf: Vec::new(),
        })
    }

    fn save(&mut self, dest: &File, dest_path: &Path, offset: u64, len: u64) -> Result<()> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(crate::stream::MAX_RECORD_DATA as u64) as usize;
            self.buf.resize(n, 0);
            let got = read_full_at(dest, &mut self.buf, pos)
                .ctx(|| format!("{}: cannot read old contents", dest_path.display()))?;
            if got != n {
                return Err(Error::Invalid(format!(
                    "{}: destination ends inside a record at byte {}",
                    dest_path.display(),
                    pos + got as u64
                )));
            }
            self.writer.data(pos, &self.buf)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn make_durable(&mut self) -> Result<()> {
        let ctx = || format!("{}: cannot write snapback", self.path.display());
        self.writer.flush()?;
        let mut sink = self.file.0.borrow_mut();
        sink.flush().ctx(ctx)?;
        sink.get_ref().sync_data().ctx(ctx)
    }

    fn finish(self) -> Result<StreamTotals> {
        let (_, totals) = self.writer.finish()?;
        let mut sink = self.file.0.borrow_mut();
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
