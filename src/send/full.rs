//! The sender of a first copy (`--full`): the whole volume, read in large aligned pieces with
//! many reads in flight, where every all-zero stretch goes as a zero range.
//!
//! The pieces to read are the data extents of the source cut to [`READ_PIECE`]; ranges known to
//! read as zeros (unmapped thin blocks) are never read. The pool of readers ([`parallel::in_order`],
//! as for a sync) reads each task's pieces, looks for zeros in every [`ZERO_GRANULE`] (aligned
//! to the volume, compared a word at a time) and encodes the data between them; the calling
//! thread writes the tasks in order and merges zero ranges that meet, also across tasks, so
//! that a long zero stretch is one record whatever the piece size.
//!
//! Reads use O_DIRECT where a piece is aligned (a first copy reads everything once: caching it
//! would only push out what others cache), unless `LVMSYNC_DIRECT_IO=off` or the file system
//! refuses O_DIRECT.
//!
//! Format 3 has no header with the volume's size, so the receiver cannot refuse a destination
//! that is too small before writing. A format 3 copy therefore starts with the volume's last
//! [`DIRECT_ALIGN`] bytes (format 3 allows records in any order): a receiver whose destination
//! is too small fails on that first record, having written nothing.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use super::{group_pieces, Progress, SendOptions, READ_PIECE};
use crate::blockdev::{
    direct_aligned, direct_io_override, is_zero, read_full_at, AlignedBuf, Device, DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use crate::extent::{Extent, ExtentKind, ExtentList};
use crate::parallel;
use crate::stream::manifest::StreamIdentity;
use crate::stream::{
    EncodedRecords, Format, RecordEncoder, StreamTotals, StreamWriter, WriterOptions,
};

/// All-zero stretches are found at this granularity, aligned to the volume: 64 KiB is the
/// usual thin-pool block, so on a thin destination a zero range frees or skips whole blocks.
pub const ZERO_GRANULE: u64 = 64 << 10;
/// Reads in flight at most: a first copy reads sequentially in [`READ_PIECE`]s, and 8 of them
/// keep a device streaming while memory stays small (each slot holds a piece and its encoded
/// records).
pub const MAX_DEPTH: usize = 8;

/// The volume to copy.
pub struct FullCopy<'a> {
    /// The device or image read.
    pub source: &'a Path,
    pub volume_bytes: u64,
    /// For the stream header (informational).
    pub chunk_bytes: u64,
    /// The whole volume in order: data extents are read, zero extents are known zeros.
    pub extents: &'a ExtentList,
    /// The identity record (format 4).
    pub identity: Option<StreamIdentity>,
}

/// What a first copy did.
#[derive(Debug, Clone)]
pub struct FullReport {
    pub totals: StreamTotals,
    pub elapsed: Duration,
    /// Bytes of the volume read.
    pub read_bytes: u64,
    /// Bytes of the volume that are zeros (known, or found when read): zero ranges in format 4,
    /// data records full of zeros in format 3.
    pub zero_bytes: u64,
}

/// Sends the whole volume as a stream written to `out`.
pub fn send_full<W: Write>(
    copy: &FullCopy<'_>,
    out: W,
    opts: &SendOptions,
    progress: Progress<'_>,
) -> Result<(W, FullReport)> {
    let start = Instant::now();
    let path = copy.source;
    let plain = Device::open_read(path)?;
    if plain.size < copy.volume_bytes {
        return Err(Error::Invalid(format!(
            "{}: is {} bytes, smaller than the {}-byte volume",
            path.display(),
            plain.size,
            copy.volume_bytes
        )));
    }
    let direct = match direct_io_override() {
        Some(false) => None,
        // Without O_DIRECT support (some file systems), the page cache it is.
        _ => Device::open_read_direct(path).ok(),
    };
    if direct.is_none() {
        let _ = rustix::fs::fadvise(&plain.file, 0, None, rustix::fs::Advice::Sequential);
    }
    let reader = Reader {
        path,
        plain,
        direct,
    };
    let wopts = WriterOptions {
        format: opts.format,
        source_bytes: copy.volume_bytes,
        chunk_bytes: copy.chunk_bytes,
        compress: opts.compress,
        snapback: false,
    };
    let mut writer = StreamWriter::new(out, &wopts)?;
    if let Some(id) = copy.identity.as_ref().filter(|_| opts.format == Format::V4) {
        writer.identity(id)?;
    }
    let mut extents = copy.extents.clone();
    let mut tail = None;
    if opts.format == Format::V3 && copy.volume_bytes > 0 {
        let len = copy.volume_bytes.min(DIRECT_ALIGN as u64);
        let offset = copy.volume_bytes - len;
        let mut buf = vec![0u8; len as usize];
        reader.read_plain(offset, &mut buf)?;
        writer.data(offset, &buf)?;
        extents.clamp(offset);
        tail = Some((is_zero(&buf), len));
    }
    let mut pieces: Vec<Extent> = Vec::new();
    for e in &extents {
        match e.kind {
            ExtentKind::Data => pieces.extend(ExtentList::from_extents([*e]).pieces(READ_PIECE)),
            ExtentKind::Zero => pieces.push(*e),
        }
    }
    let depth = opts.queue_depth.clamp(1, MAX_DEPTH);
    let groups = group_pieces(&pieces, depth, 0);
    let encoders = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(depth);
    let encoders: Vec<RecordEncoder> = (0..encoders).map(|_| writer.encoder()).collect();
    let (enc_tx, enc_rx) = bounded::<RecordEncoder>(encoders.len());
    for e in encoders {
        enc_tx.send(e).expect("room for every encoder");
    }
    let mut zeros = ZeroRun::default();
    let mut zero_bytes = 0u64;
    let mut read_bytes = 0u64;
    let write_zeros = |writer: &mut StreamWriter<W>, run: Option<(u64, u64)>| match run {
        Some((offset, len)) => writer.zero(offset, len),
        None => Ok(()),
    };
    parallel::in_order(
        groups.len(),
        depth,
        (0..depth + depth / 2 + 1).map(|_| Slot::default()),
        |g, slot| {
            let group = &pieces[groups[g].clone()];
            reader.read_group(group, slot)?;
            let mut enc = enc_rx.recv().expect("encoders are always returned");
            let res = slot.encode(&mut enc, group);
            let _ = enc_tx.send(enc);
            res
        },
        |g, slot| {
            for part in &slot.parts {
                match *part {
                    Part::Zero { offset, len } => {
                        zero_bytes += len;
                        write_zeros(&mut writer, zeros.extend(offset, len))?;
                    }
                    Part::Data(i) => {
                        write_zeros(&mut writer, zeros.take())?;
                        writer.write_encoded(&slot.batches[i])?;
                    }
                }
            }
            read_bytes += slot.read_bytes;
            progress(pieces[groups[g].end - 1].end());
            Ok(ControlFlow::Continue(()))
        },
    )?;
    write_zeros(&mut writer, zeros.take())?;
    if let Some((true, len)) = tail {
        zero_bytes += len;
    }
    read_bytes += tail.map_or(0, |(_, len)| len);
    progress(copy.volume_bytes);
    let (out, totals) = writer.finish()?;
    Ok((
        out,
        FullReport {
            totals,
            elapsed: start.elapsed(),
            read_bytes,
            zero_bytes,
        },
    ))
}

/// The source, opened both ways: O_DIRECT for aligned pieces (when it can be), plain for others.
struct Reader<'a> {
    path: &'a Path,
    plain: Device,
    direct: Option<Device>,
}

impl Reader<'_> {
    fn read_exact(&self, dev: &Device, offset: u64, buf: &mut [u8]) -> Result<()> {
        let n = read_full_at(&dev.file, buf, offset)
            .ctx(|| format!("{}: read failed at byte {offset}", self.path.display()))?;
        if n != buf.len() {
            return Err(Error::Invalid(format!(
                "{}: ends at byte {}, before the end of the volume (did it shrink?)",
                self.path.display(),
                offset + n as u64
            )));
        }
        Ok(())
    }

    fn read_plain(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_exact(&self.plain, offset, buf)
    }

    /// Reads the data pieces of a group one after the other into the slot's buffer.
    fn read_group(&self, group: &[Extent], slot: &mut Slot) -> Result<()> {
        let buf = slot
            .buf
            .get_or_insert_with(|| AlignedBuf::new(READ_PIECE as usize))
            .as_mut_slice();
        let mut at = 0;
        for p in group.iter().filter(|p| p.kind == ExtentKind::Data) {
            let dst = &mut buf[at..at + p.len as usize];
            let dev = match &self.direct {
                Some(direct) if direct_aligned(p.offset, dst) => direct,
                _ => &self.plain,
            };
            self.read_exact(dev, p.offset, dst)?;
            at += p.len as usize;
        }
        slot.read_bytes = at as u64;
        Ok(())
    }
}

/// One task's parts in order, alternating: encoded data, and zero ranges.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// Records in `Slot::batches[i]`.
    Data(usize),
    Zero {
        offset: u64,
        len: u64,
    },
}

/// A read buffer and what was made of it, reused from task to task.
#[derive(Default)]
struct Slot {
    buf: Option<AlignedBuf>,
    read_bytes: u64,
    parts: Vec<Part>,
    /// Encoded data records; only the first `used` belong to the current task.
    batches: Vec<EncodedRecords>,
    used: usize,
}

impl Slot {
    /// Splits the group's pieces into data and zero runs and encodes the data runs.
    fn encode(&mut self, enc: &mut RecordEncoder, group: &[Extent]) -> Result<()> {
        self.parts.clear();
        self.used = 0;
        let buf = self.buf.take();
        let bytes = buf.as_ref().map_or(&[][..], AlignedBuf::as_slice);
        let mut at = 0usize;
        let result = (|| {
            for p in group {
                match p.kind {
                    ExtentKind::Zero => self.zero(p.offset, p.len),
                    ExtentKind::Data => {
                        let data = &bytes[at..at + p.len as usize];
                        at += data.len();
                        for (offset, run, zero) in runs(p.offset, data) {
                            if zero {
                                self.zero(offset, run.len() as u64);
                            } else {
                                self.data(enc, offset, run)?;
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    fn zero(&mut self, offset: u64, len: u64) {
        match self.parts.last_mut() {
            Some(Part::Zero { offset: o, len: l }) if *o + *l == offset => *l += len,
            _ => self.parts.push(Part::Zero { offset, len }),
        }
    }

    fn data(&mut self, enc: &mut RecordEncoder, offset: u64, data: &[u8]) -> Result<()> {
        let i = match self.parts.last() {
            Some(Part::Data(i)) => *i,
            _ => {
                if self.used == self.batches.len() {
                    self.batches.push(EncodedRecords::new());
                }
                self.batches[self.used].clear();
                self.parts.push(Part::Data(self.used));
                self.used += 1;
                self.used - 1
            }
        };
        enc.data(offset, data, &mut self.batches[i])?;
        Ok(())
    }
}

/// `data` (read at `offset` of the volume) as runs of data and of zeros, each granule of
/// [`ZERO_GRANULE`] (aligned to the volume) wholly in one: `(offset, bytes, is_zero)`.
fn runs(offset: u64, data: &[u8]) -> impl Iterator<Item = (u64, &[u8], bool)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == data.len() {
            return None;
        }
        let start = at;
        let mut zero = None;
        while at < data.len() {
            let pos = offset + at as u64;
            let end = ((pos / ZERO_GRANULE + 1) * ZERO_GRANULE - offset).min(data.len() as u64);
            let granule_zero = is_zero(&data[at..end as usize]);
            match zero {
                None => zero = Some(granule_zero),
                Some(z) if z != granule_zero => break,
                Some(_) => {}
            }
            at = end as usize;
        }
        Some((
            offset + start as u64,
            &data[start..at],
            zero.unwrap_or(false),
        ))
    })
}

/// A zero range being gathered across parts and tasks, written once something else follows.
#[derive(Default)]
struct ZeroRun {
    run: Option<(u64, u64)>,
}

impl ZeroRun {
    /// Adds `[offset, offset + len)`; returns a finished run that it does not continue.
    fn extend(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        match &mut self.run {
            Some((o, l)) if *o + *l == offset => {
                *l += len;
                None
            }
            _ => self.run.replace((offset, len)),
        }
    }

    fn take(&mut self) -> Option<(u64, u64)> {
        self.run.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Record, StreamReader};

    #[test]
    fn runs_split_at_granules_aligned_to_the_volume() {
        let g = ZERO_GRANULE as usize;
        // Read at 1000 bytes before a granule boundary: the first granule is short.
        let offset = ZERO_GRANULE * 3 - 1000;
        let mut data = vec![0u8; 1000 + 4 * g + 10];
        data[1000 + g + 5] = 1; // the second whole granule holds data
        data[1000 + 4 * g + 3] = 7; // the short last one too
        let got: Vec<(u64, usize, bool)> = runs(offset, &data)
            .map(|(o, d, z)| (o, d.len(), z))
            .collect();
        let base = ZERO_GRANULE * 3;
        assert_eq!(
            got,
            vec![
                (offset, 1000 + g, true),
                (base + ZERO_GRANULE, g, false),
                (base + 2 * ZERO_GRANULE, 2 * g, true),
                (base + 4 * ZERO_GRANULE, 10, false),
            ]
        );
        assert_eq!(runs(0, &[]).count(), 0);
    }

    /// Every byte arrives, zero stretches go as few zero records (merged across pieces and
    /// tasks), known zero extents are not read, and a format 3 copy starts with its tail.
    #[test]
    fn the_whole_volume_arrives_with_zero_runs_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source");
        let size = 9 * READ_PIECE as usize + 12345;
        let mut image = vec![0u8; size];
        // Data at the start, in the middle of the fourth piece and at the very end; zeros
        // between, spanning several pieces.
        for (i, b) in image[..70000].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        image[3 * READ_PIECE as usize + 500_000] = 9;
        image[size - 1] = 3;
        std::fs::write(&path, &image).unwrap();
        // Bytes of the eighth piece claimed zero by the extent list are not read: put data
        // there that must not arrive.
        let known_zero = Extent::zero(7 * READ_PIECE, READ_PIECE);
        let mut on_disk = image.clone();
        on_disk[known_zero.offset as usize + 10] = 0xee;
        std::fs::write(&path, &on_disk).unwrap();
        let extents = ExtentList::from_extents([
            Extent::data(0, known_zero.offset),
            known_zero,
            Extent::data(known_zero.end(), size as u64 - known_zero.end()),
        ]);
        for format in [Format::V4, Format::V3] {
            let copy = FullCopy {
                source: &path,
                volume_bytes: size as u64,
                chunk_bytes: 4096,
                extents: &extents,
                identity: Some(StreamIdentity {
                    kind: "full".into(),
                    ..Default::default()
                }),
            };
            let opts = SendOptions {
                format,
                compress: None,
                queue_depth: 4,
            };
            let (stream, report) = send_full(&copy, Vec::new(), &opts, &|_| {}).unwrap();
            assert_eq!(report.read_bytes, size as u64 - READ_PIECE);
            let mut got = vec![0xffu8; size];
            let mut zero_records = Vec::new();
            let mut first = None;
            let mut reader = StreamReader::open(&stream[..]).unwrap();
            while let Some(r) = reader.next_record().unwrap() {
                match r {
                    Record::Data { offset, data } => {
                        first.get_or_insert(offset);
                        got[offset as usize..offset as usize + data.len()].copy_from_slice(data)
                    }
                    Record::Zero { offset, len } => {
                        got[offset as usize..(offset + len) as usize].fill(0);
                        zero_records.push((offset, len));
                    }
                    Record::Identity(_) => assert_eq!(format, Format::V4),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(got == image, "{format:?}: the copy differs");
            let g = ZERO_GRANULE;
            match format {
                Format::V4 => {
                    // [granule 2, the granule of byte 3.5 MiB), then from the next granule to
                    // the last granule (the known zero extent merged in).
                    let mid = (3 * READ_PIECE + 500_000) / g * g;
                    let last = (size as u64 - 1) / g * g;
                    assert_eq!(
                        zero_records,
                        vec![(2 * g, mid - 2 * g), (mid + g, last - mid - g)]
                    );
                    assert_eq!(report.zero_bytes, last - 3 * g);
                }
                Format::V3 => {
                    assert!(zero_records.is_empty());
                    assert_eq!(first, Some(size as u64 - DIRECT_ALIGN as u64));
                }
            }
        }
    }
}
