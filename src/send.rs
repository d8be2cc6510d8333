//! The sender: reads the changed ranges from the data source and writes them as a stream.
//!
//! A pipeline with every stage overlapped:
//! - the pieces to read (sorted, merged ranges cut to at most [`READ_PIECE`]) are grouped into
//!   tasks of consecutive pieces, so scattered 4 KiB chunks cost one hand-over per group, not one
//!   per chunk;
//! - a pool of `queue_depth` threads claims tasks in order; each reads its task's pieces (so that
//!   many reads are in flight: scattered chunks are bound by the device's queue depth, not its
//!   bandwidth; pieces a few KiB apart are read with one read, see [`reads`]) and encodes them (checksums, digests, zstd) with one of a few shared
//!   [`RecordEncoder`]s, one per core;
//! - the calling thread writes the encoded groups in offset order.
//!
//! Memory is bounded by a fixed set of slots (read buffer plus encoded records), reused for
//! every task ([`parallel::in_order`]: a thread takes a free slot before it claims the next
//! task, so the oldest task in flight always holds a slot and the pipeline cannot deadlock).
//!
//! When every data piece is aligned to [`DIRECT_ALIGN`] and the source is a block device, reads
//! use O_DIRECT into aligned buffers: no page-cache copy and no cache pollution. Image files are
//! read through the page cache (their pages may well be cached); `LVMSYNC_DIRECT_IO=on|off`
//! overrides the choice.

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use rustix::fs::OFlags;

use crate::blockdev::{
    direct_io_override, read_full_at, AlignedBuf, Device, DeviceKind, DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use crate::extent::{Extent, ExtentKind};
use crate::parallel;
use crate::session::{Message, Plan};
use crate::source::{ChangeSet, PriorSource};
use crate::stream::manifest::{ChangesDigest, StreamIdentity};
use crate::stream::{
    EncodedRecords, Format, RecordEncoder, StreamTotals, StreamWriter, WriterOptions,
};

/// Largest single read, and so the largest record lvmsync writes.
pub const READ_PIECE: u64 = 1 << 20;
/// Most pieces in one task (small pieces are grouped up to [`READ_PIECE`] bytes).
const MAX_GROUP_PIECES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    pub format: Format,
    /// zstd level for format 4 payloads.
    pub compress: Option<i32>,
    /// Reads in flight at once.
    pub queue_depth: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            format: Format::V4,
            compress: None,
            queue_depth: 32,
        }
    }
}

pub mod full;
mod manifest;
mod plan;
mod reads;
pub mod resume;

pub use plan::{plan, SendPlan};

/// What a stream carries besides its changes, and the session it may be sent over.
#[derive(Default)]
pub struct StreamExtras<'a, 's> {
    /// Where the stream comes from (format 4: its identity record).
    pub identity: Option<StreamIdentity>,
    /// A device or image holding the snapshot's contents at the volume's offsets: with it, a
    /// format 4 stream carries a manifest, and the receiver checks the destination against it.
    pub prior: Option<&'a PriorSource>,
    /// The back channel of a live session with the receiver (see [`crate::session`]).
    pub session: Option<&'s mut dyn Read>,
}

/// What a send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub ranges: usize,
    pub totals: StreamTotals,
    pub elapsed: Duration,
    /// The stream carried a manifest: the receiver checked the destination against it.
    pub checked: bool,
    /// Ranges not sent because the receiver already had them (a resumed sync).
    pub already_applied: u64,
    /// Bytes of the volume in those ranges.
    pub already_applied_bytes: u64,
}

/// A sink for progress: called with the bytes of the volume covered so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Sends `changes`, reading data from `source`, as a stream written to `out`.
pub fn send_changes<W: Write>(
    changes: &ChangeSet,
    source: &Path,
    out: W,
    opts: &SendOptions,
    progress: Progress<'_>,
) -> Result<(W, SendReport)> {
    send_changes_with(
        changes,
        source,
        out,
        opts,
        progress,
        StreamExtras::default(),
    )
}

/// [`send_changes`] with an identity, a manifest and a live session.
pub fn send_changes_with<W: Write>(
    changes: &ChangeSet,
    source: &Path,
    out: W,
    opts: &SendOptions,
    progress: Progress<'_>,
    extras: StreamExtras<'_, '_>,
) -> Result<(W, SendReport)> {
    let start = Instant::now();
    let (dev, pieces) = open_data_source(source, changes)?;
    send_from(
        &dev,
        source,
        changes,
        &pieces,
        out,
        opts,
        progress,
        start,
        extras,
        reads::read_gap(),
    )
}

/// Opens the data source of `changes` for reading their pieces (the ranges cut as the stream's
/// records are): with O_DIRECT when the pieces allow it.
fn open_data_source(source: &Path, changes: &ChangeSet) -> Result<(Device, Vec<Extent>)> {
    let dev = Device::open_read(source)?;
    let needed = changes.extents.end();
    if dev.size < needed {
        return Err(Error::Invalid(format!(
            "{}: data source is {} bytes but changes reach byte {}; is it the right origin?",
            source.display(),
            dev.size,
            needed
        )));
    }
    let pieces: Vec<Extent> = changes.extents.pieces(READ_PIECE).collect();
    let dev = match direct_io_wanted(&dev, &pieces) {
        // Without O_DIRECT support (some file systems), the page cache it is.
        true => Device::open_read_direct(source).unwrap_or(dev),
        false => {
            // Scattered reads: stop the kernel reading ahead data nobody asked for.
            let _ = rustix::fs::fadvise(&dev.file, 0, None, rustix::fs::Advice::Random);
            dev
        }
    };
    Ok((dev, pieces))
}

/// Sends `pieces` (the changed ranges of `changes`, cut for reading) read from `dev`, reading
/// through gaps of at most `gap` bytes between them.
#[allow(clippy::too_many_arguments)]
fn send_from<W: Write>(
    dev: &Device,
    source: &Path,
    changes: &ChangeSet,
    pieces: &[Extent],
    out: W,
    opts: &SendOptions,
    progress: Progress<'_>,
    start: Instant,
    extras: StreamExtras<'_, '_>,
    gap: u64,
) -> Result<(W, SendReport)> {
    let wopts = WriterOptions {
        format: opts.format,
        source_bytes: changes.volume_bytes,
        chunk_bytes: changes.chunk_bytes,
        compress: opts.compress,
        snapback: false,
    };
    let mut writer = StreamWriter::new(out, &wopts)?;
    let v4 = opts.format == Format::V4;
    let prior = extras.prior.filter(|_| v4);
    if let Some(id) = extras.identity.filter(|_| v4) {
        writer.identity(&identity_for(&id, pieces, prior.is_some()))?;
    }
    if let Some(prior) = prior {
        manifest::write_manifest(&mut writer, pieces, prior)?;
    }
    let session = extras.session;
    let needed: Vec<Extent>;
    let pieces = match session.filter(|_| prior.is_some()) {
        Some(back) => {
            writer.flush()?;
            match read_message(back)? {
                Message::Suspects(offsets) => {
                    manifest::write_resolutions(&mut writer, pieces, &offsets, source)?;
                    writer.flush()?;
                }
                other => return Err(unexpected(other)),
            }
            match read_message(back)? {
                Message::Plan(Plan::Send(bits)) if bits.len() == pieces.len() => {
                    needed = pieces
                        .iter()
                        .zip(&bits)
                        .filter(|(_, &b)| b)
                        .map(|(p, _)| *p)
                        .collect();
                    &needed[..]
                }
                Message::Plan(Plan::Refuse(why)) => return Err(Error::Refused(why)),
                other => return Err(unexpected(other)),
            }
        }
        None => pieces,
    };
    let already_applied_bytes =
        changes.extents.total_bytes() - pieces.iter().map(|p| p.len).sum::<u64>();
    let already_applied = (changes.extents.pieces(READ_PIECE).count() - pieces.len()) as u64;
    // On a session, the transport reads the receiver's last word once the stream is closed.
    let (out, totals) = write_records(writer, dev, source, pieces, opts, progress, gap)?;
    Ok((
        out,
        SendReport {
            ranges: changes.extents.len(),
            totals,
            elapsed: start.elapsed(),
            checked: prior.is_some(),
            already_applied,
            already_applied_bytes,
        },
    ))
}

/// Writes the data and zero records of `pieces`, read from `dev` (`source`) through gaps of at
/// most `gap` bytes, then the end record.
fn write_records<W: Write>(
    mut writer: StreamWriter<W>,
    dev: &Device,
    source: &Path,
    pieces: &[Extent],
    opts: &SendOptions,
    progress: Progress<'_>,
    gap: u64,
) -> Result<(W, StreamTotals)> {
    let depth = opts.queue_depth.max(1);
    let encoders = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(depth);
    let encoders: Vec<RecordEncoder> = (0..encoders).map(|_| writer.encoder()).collect();
    // Reads through the page cache need no aligned buffer: the data can go where its record
    // does, when records hold it as it is.
    let direct = rustix::fs::fcntl_getfl(&dev.file).is_ok_and(|f| f.contains(OFlags::DIRECT));
    let in_place = !direct && encoders[0].stores_data_as_is();
    let groups = group_pieces(pieces, depth, gap);
    run_pipeline(
        dev,
        source,
        pieces,
        &groups,
        depth,
        encoders,
        in_place,
        gap,
        |batch: &EncodedRecords| {
            writer.write_encoded(batch)?;
            let t = writer.totals();
            progress(t.data_bytes + t.zero_bytes);
            Ok(())
        },
    )?;
    Ok(writer.finish()?)
}

/// The identity record of a stream of `pieces`: with a manifest, it names the change set
/// (the digest of every piece's place and kind), so that a resumed apply can tell it is the same.
fn identity_for(id: &StreamIdentity, pieces: &[Extent], manifest: bool) -> StreamIdentity {
    let mut id = id.clone();
    if manifest {
        let mut digest = ChangesDigest::new();
        pieces.iter().for_each(|p| digest.push(p));
        id.changes = Some(digest.hex());
    }
    id
}

/// The next message of the session's back channel. Its end means the receiver stopped: the
/// transport reports why.
fn read_message(back: &mut dyn Read) -> Result<Message> {
    Message::read_from(back).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Receiver(None)
        } else {
            Error::io("the session's back channel", e)
        }
    })
}

fn unexpected(m: Message) -> Error {
    match m {
        Message::Failed(why) => Error::Receiver(Some(why)),
        other => Error::Invalid(format!(
            "the receiver sent an unexpected message: {other:?}"
        )),
    }
}

/// O_DIRECT needs every read's offset and length aligned; it pays off on block devices, whose
/// page cache does not hold what a file system above them wrote.
fn direct_io_wanted(dev: &Device, pieces: &[Extent]) -> bool {
    let aligned = pieces.iter().all(|p| {
        p.kind == ExtentKind::Zero
            || (p.offset.is_multiple_of(DIRECT_ALIGN as u64)
                && p.len.is_multiple_of(DIRECT_ALIGN as u64))
    });
    aligned && direct_io_override().unwrap_or(dev.kind == DeviceKind::BlockDevice)
}

/// Cuts `pieces` into runs of consecutive pieces whose reads (gaps of at most `gap` bytes read
/// through, see [`reads::plan_reads`]) fill at most [`READ_PIECE`] bytes of buffer, small
/// enough that every reader has several runs to work on (the queue stays full to the end).
fn group_pieces(pieces: &[Extent], depth: usize, gap: u64) -> Vec<std::ops::Range<usize>> {
    let max_count = (pieces.len() / (depth * 4)).clamp(1, MAX_GROUP_PIECES);
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    // The read the previous piece is part of, as the group's reads are planned.
    let mut read: Option<(u64, u64)> = None;
    for (i, p) in pieces.iter().enumerate() {
        let joined = |read: Option<(u64, u64)>| {
            read.is_some_and(|(s, e)| reads::joins(s, e, p, gap, READ_PIECE))
        };
        let cost = |read: Option<(u64, u64)>| match p.kind {
            ExtentKind::Zero => 0,
            ExtentKind::Data if joined(read) => p.end() - read.map_or(0, |(_, e)| e),
            ExtentKind::Data => p.len,
        };
        if i > start && (i - start >= max_count || bytes + cost(read) > READ_PIECE) {
            groups.push(start..i);
            start = i;
            bytes = 0;
            read = None;
        }
        bytes += cost(read);
        read = match p.kind {
            ExtentKind::Zero => None,
            ExtentKind::Data if joined(read) => read.map(|(s, _)| (s, p.end())),
            ExtentKind::Data => Some((p.offset, p.end())),
        };
    }
    if start < pieces.len() {
        groups.push(start..pieces.len());
    }
    groups
}

/// A read buffer and the records encoded from it, reused from task to task.
struct Slot {
    buf: Option<AlignedBuf>,
    /// Where each data piece of the task starts in `buf`.
    at: Vec<usize>,
    encoded: EncodedRecords,
    /// The slot's own encoder when data is read straight into its records
    /// ([`read_in_place`]); otherwise the shared encoders encode from `buf`.
    in_place: Option<RecordEncoder>,
}

/// Reads and encodes every group with up to `depth` reads in flight, and hands the encoded
/// groups to `write` in order. `in_place`: data is read straight into its records (the
/// encoders must store data as it is). Gaps of at most `gap` bytes between data pieces are
/// read through.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    dev: &Device,
    path: &Path,
    pieces: &[Extent],
    groups: &[std::ops::Range<usize>],
    depth: usize,
    encoders: Vec<RecordEncoder>,
    in_place: bool,
    gap: u64,
    mut write: impl FnMut(&EncodedRecords) -> Result<()>,
) -> Result<Vec<RecordEncoder>> {
    let slots = (depth * 2).min(groups.len() + depth);
    let slot_encoders: Vec<Option<RecordEncoder>> = (0..slots)
        .map(|_| in_place.then(|| encoders[0].fresh()))
        .collect();
    let (enc_tx, enc_rx) = bounded::<RecordEncoder>(encoders.len());
    for e in encoders {
        enc_tx.send(e).unwrap();
    }
    parallel::in_order(
        groups.len(),
        depth,
        slot_encoders.into_iter().map(|in_place| Slot {
            buf: None,
            at: Vec::new(),
            encoded: EncodedRecords::new(),
            in_place,
        }),
        |g, slot| {
            let group = &pieces[groups[g].clone()];
            if slot.in_place.is_some() {
                return read_in_place(dev, path, group, gap, slot);
            }
            read_group(dev, path, group, gap, slot)?;
            let mut enc = enc_rx.recv().expect("encoders are always returned");
            let res = encode_group(&mut enc, group, slot);
            let _ = enc_tx.send(enc);
            res
        },
        |_, slot| {
            write(&slot.encoded)?;
            Ok(ControlFlow::Continue(()))
        },
    )?;
    // Every encoder is back once the pipeline ended: they are kept for the next call.
    Ok(enc_rx.try_iter().collect())
}

/// Writes the data and zero records of `pieces` (sorted, each at most [`READ_PIECE`] bytes,
/// after the records `writer` holds already), read from `dev` (`source`) with up to
/// `queue_depth` reads in flight, without ending the stream: for a stream whose pieces become
/// known as it is written ([`crate::checksum`]). `encoders` (at least one, made by
/// `writer.encoder()`) are reused from call to call; `written` is called after each group.
pub fn write_pieces<W: Write>(
    writer: &mut StreamWriter<W>,
    dev: &Device,
    source: &Path,
    pieces: &[Extent],
    queue_depth: usize,
    encoders: &mut Vec<RecordEncoder>,
    mut written: impl FnMut(&StreamWriter<W>),
) -> Result<()> {
    let depth = queue_depth.max(1);
    let gap = reads::read_gap();
    let groups = group_pieces(pieces, depth, gap);
    let direct = rustix::fs::fcntl_getfl(&dev.file).is_ok_and(|f| f.contains(OFlags::DIRECT));
    let in_place = !direct && encoders[0].stores_data_as_is();
    *encoders = run_pipeline(
        dev,
        source,
        pieces,
        &groups,
        depth,
        std::mem::take(encoders),
        in_place,
        gap,
        |batch: &EncodedRecords| {
            writer.write_encoded(batch)?;
            written(writer);
            Ok(())
        },
    )?;
    Ok(())
}

/// Reads the data pieces of a group into the slot's buffer, read after read (a read covers
/// several pieces and the small gaps between them), and notes where each piece starts.
fn read_group(
    dev: &Device,
    path: &Path,
    group: &[Extent],
    gap: u64,
    slot: &mut Slot,
) -> Result<()> {
    let buf = slot
        .buf
        .get_or_insert_with(|| AlignedBuf::new(READ_PIECE as usize))
        .as_mut_slice();
    slot.at.clear();
    let mut at = 0;
    for r in reads::plan_reads(group, gap, READ_PIECE) {
        read_at(dev, path, r.offset, &mut buf[at..at + r.len as usize])?;
        for p in &group[r.pieces] {
            slot.at.push(at + (p.offset - r.offset) as usize);
        }
        at += r.len as usize;
    }
    Ok(())
}

/// Reads `dst.len()` bytes at `offset`, which lie inside the changed ranges' span.
fn read_at(dev: &Device, path: &Path, offset: u64, dst: &mut [u8]) -> Result<()> {
    let n = read_full_at(&dev.file, dst, offset)
        .ctx(|| format!("{}: read failed at byte {offset}", path.display()))?;
    if n != dst.len() {
        return Err(Error::Invalid(format!(
            "{}: data source ends at byte {}, inside a changed range",
            path.display(),
            offset + n as u64
        )));
    }
    Ok(())
}

/// Reads a group's data pieces and encodes the group with the slot's own encoder. A piece read
/// on its own goes straight into its record: the data is copied once (by the kernel, from the
/// page cache) and checksummed while still in the CPU's cache. Pieces read together (with the
/// gaps between them) go through the slot's buffer.
fn read_in_place(
    dev: &Device,
    path: &Path,
    group: &[Extent],
    gap: u64,
    slot: &mut Slot,
) -> Result<()> {
    let Slot {
        buf,
        encoded: out,
        in_place,
        ..
    } = slot;
    let enc = in_place
        .as_mut()
        .expect("a slot that reads in place has its encoder");
    out.clear();
    let mut reads = reads::plan_reads(group, gap, READ_PIECE)
        .into_iter()
        .peekable();
    let mut i = 0;
    while i < group.len() {
        let p = &group[i];
        if p.kind == ExtentKind::Zero {
            enc.zero(p.offset, p.len, out)?;
            i += 1;
            continue;
        }
        let r = reads.next().expect("every data piece is in a read");
        debug_assert_eq!(r.pieces.start, i);
        if r.pieces.len() == 1 {
            enc.data_in_place(p.offset, p.len as usize, out, |dst| {
                read_at(dev, path, p.offset, dst)
            })?;
        } else {
            let buf = buf
                .get_or_insert_with(|| AlignedBuf::new(READ_PIECE as usize))
                .as_mut_slice();
            let data = &mut buf[..r.len as usize];
            read_at(dev, path, r.offset, data)?;
            for p in &group[r.pieces.clone()] {
                let at = (p.offset - r.offset) as usize;
                enc.data(p.offset, &data[at..at + p.len as usize], out)?;
            }
        }
        i = r.pieces.end;
    }
    Ok(())
}

fn encode_group(enc: &mut RecordEncoder, group: &[Extent], slot: &mut Slot) -> Result<()> {
    slot.encoded.clear();
    let buf = slot.buf.as_ref().map_or(&[][..], AlignedBuf::as_slice);
    let mut at = slot.at.iter();
    for p in group {
        match p.kind {
            ExtentKind::Data => {
                let at = *at.next().expect("every data piece was read");
                enc.data(p.offset, &buf[at..at + p.len as usize], &mut slot.encoded)?;
            }
            ExtentKind::Zero => enc.zero(p.offset, p.len, &mut slot.encoded)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::ExtentList;
    use crate::stream::{Record, StreamReader};

    /// Reads with O_DIRECT (as from a block device) and through the page cache (data read
    /// straight into its records when they store it as it is): the same stream, every record
    /// checked against the file.
    #[test]
    fn direct_and_page_cache_reads_send_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin");
        let size = 8 << 20;
        let image: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &image).unwrap();
        let extents = ExtentList::from_extents(
            (0..300u64)
                .map(|i| {
                    Extent::data(
                        (i * i * 4096 * 7) % (size as u64 - 65536),
                        4096 * (i % 5 + 1),
                    )
                })
                .chain([
                    Extent::data(3 << 20, 3 << 20),
                    Extent::zero(100 * 4096, 4096),
                ]),
        );
        let changes = ChangeSet {
            extents,
            chunk_bytes: 4096,
            volume_bytes: size as u64,
        };
        let pieces: Vec<Extent> = changes.extents.pieces(READ_PIECE).collect();
        let direct = Device::open_read_direct(&path).expect("O_DIRECT on the test file system");
        assert!(direct_io_wanted(&direct, &pieces) || direct.kind == DeviceKind::RegularFile);
        let buffered = Device::open_read(&path).unwrap();
        for (format, compress) in [
            (Format::V3, None),
            (Format::V4, None),
            (Format::V4, Some(1)),
        ] {
            let opts = SendOptions {
                format,
                compress,
                queue_depth: 8,
            };
            let send = |dev: &Device| send_to_vec(dev, &path, &changes, &pieces, &opts, 0);
            let (stream, report) = send(&direct);
            let (through_cache, _) = send(&buffered);
            assert!(
                stream == through_cache,
                "format {format:?}, compression {compress:?}: the streams differ"
            );
            if format == Format::V3 {
                continue;
            }
            assert_eq!(
                report.totals.data_bytes + report.totals.zero_bytes,
                changes.extents.total_bytes()
            );
            let mut reader = StreamReader::open(&stream[..]).unwrap();
            let mut covered = Vec::new();
            while let Some(r) = reader.next_record().unwrap() {
                match r {
                    Record::Data { offset, data } => {
                        assert_eq!(data, &image[offset as usize..offset as usize + data.len()]);
                        covered.push(Extent::data(offset, data.len() as u64));
                    }
                    Record::Zero { offset, len } => covered.push(Extent::zero(offset, len)),
                    other => panic!("unexpected record {other:?}"),
                }
            }
            assert_eq!(ExtentList::from_extents(covered), changes.extents);
        }
    }

    /// The stream of `pieces` of `changes` read from `dev` (`path`) through gaps up to `gap`
    /// bytes, with no identity or manifest.
    fn send_to_vec(
        dev: &Device,
        path: &Path,
        changes: &ChangeSet,
        pieces: &[Extent],
        opts: &SendOptions,
        gap: u64,
    ) -> (Vec<u8>, SendReport) {
        send_from(
            dev,
            path,
            changes,
            pieces,
            Vec::new(),
            opts,
            &|_| {},
            Instant::now(),
            StreamExtras::default(),
            gap,
        )
        .unwrap()
    }

    /// Changed ranges at the edges of the volume and of the 1 MiB pieces, scattered 4 KiB
    /// chunks with gaps of every size, a long range and a zero range.
    fn edge_changes(size: u64) -> ExtentList {
        const K: u64 = 4096;
        const M: u64 = 1 << 20;
        let mut extents = vec![
            Extent::data(0, K),
            Extent::data(2 * K, K),
            Extent::data(M - K, K),
            Extent::data(M + K, 2 * K),
            Extent::data(2 * M - 3 * K, 6 * K),
            Extent::data(3 * M, M + 8 * K),
            Extent::data(4 * M + 24 * K, K),
            Extent::zero(4 * M + 40 * K, 2 * K),
            Extent::data(4 * M + 48 * K, K),
            Extent::data(size - K, K),
            Extent::data(size - 40 * K, K),
        ];
        let mut gap = 1;
        let mut at = 5 * M;
        while at < size - M {
            extents.push(Extent::data(at, K * (gap % 3 + 1)));
            at += K * (gap % 3 + 1) + K * gap;
            gap = gap % 20 + 1;
        }
        ExtentList::from_extents(extents)
    }

    /// Reading through the gaps between changed ranges sends the same bytes as reading every
    /// range on its own: formats 3, 4 and 4 with -z, O_DIRECT and the page cache, at every
    /// gap limit.
    #[test]
    fn coalesced_reads_send_the_same_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin");
        let size: u64 = 9 << 20;
        let image: Vec<u8> = (0..size).map(|i| (i * 13 + i / 4096) as u8).collect();
        std::fs::write(&path, &image).unwrap();
        let changes = ChangeSet {
            extents: edge_changes(size),
            chunk_bytes: 4096,
            volume_bytes: size,
        };
        let pieces: Vec<Extent> = changes.extents.pieces(READ_PIECE).collect();
        assert!(reads::plan_reads(&pieces, 64 << 10, READ_PIECE).len() < pieces.len() / 2);
        let direct = Device::open_read_direct(&path).expect("O_DIRECT on the test file system");
        assert!(rustix::fs::fcntl_getfl(&direct.file).is_ok_and(|f| f.contains(OFlags::DIRECT)));
        let buffered = Device::open_read(&path).unwrap();
        for (format, compress) in [
            (Format::V3, None),
            (Format::V4, None),
            (Format::V4, Some(-1)),
        ] {
            let opts = SendOptions {
                format,
                compress,
                queue_depth: 4,
            };
            let send =
                |dev: &Device, gap: u64| send_to_vec(dev, &path, &changes, &pieces, &opts, gap).0;
            let alone = send(&buffered, 0);
            for dev in [&direct, &buffered] {
                for gap in [4096, 32 << 10, 64 << 10, READ_PIECE] {
                    assert!(
                        send(dev, gap) == alone,
                        "format {format:?}, compression {compress:?}, gap {gap}, {:?}: \
                         the stream differs from one read range by range",
                        dev.kind
                    );
                }
            }
        }
    }

    /// Groups fill at most one read buffer, gaps read through included.
    #[test]
    fn groups_with_gaps_fit_the_read_buffer() {
        let size = 64 << 20;
        let pieces: Vec<Extent> = edge_changes(size).pieces(READ_PIECE).collect();
        for gap in [0, 4096, 32 << 10, 64 << 10, READ_PIECE] {
            let groups = group_pieces(&pieces, 2, gap);
            assert_eq!(groups.first().map(|g| g.start), Some(0));
            assert_eq!(groups.last().map(|g| g.end), Some(pieces.len()));
            assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
            for g in &groups {
                let read: u64 = reads::plan_reads(&pieces[g.clone()], gap, READ_PIECE)
                    .iter()
                    .map(|r| r.len)
                    .sum();
                assert!(read <= READ_PIECE, "gap {gap}: a group reads {read} bytes");
            }
        }
    }
}
