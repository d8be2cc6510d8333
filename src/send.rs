//! The sender: reads the changed ranges from the data source and writes them as a stream.
//!
//! A pipeline with every stage overlapped:
//! - the pieces to read (sorted, merged ranges cut to at most [`READ_PIECE`]) are grouped into
//!   tasks of consecutive pieces, so scattered 4 KiB chunks cost one hand-over per group, not one
//!   per chunk;
//! - a pool of `queue_depth` threads claims tasks in order; each reads its task's pieces (so that
//!   many reads are in flight: scattered chunks are bound by the device's queue depth, not its
//!   bandwidth) and encodes them (checksums, digests, zstd) with one of a few shared
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
        &dev, source, changes, &pieces, out, opts, progress, start, extras,
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

/// Sends `pieces` (the changed ranges of `changes`, cut for reading) read from `dev`.
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
                Message::Plan(Plan::Refuse(why)) => {
                    return Err(Error::Invalid(format!("the receiver refused: {why}")))
                }
                other => return Err(unexpected(other)),
            }
        }
        None => pieces,
    };
    let already_applied_bytes =
        changes.extents.total_bytes() - pieces.iter().map(|p| p.len).sum::<u64>();
    let already_applied = (changes.extents.pieces(READ_PIECE).count() - pieces.len()) as u64;
    // On a session, the transport reads the receiver's last word once the stream is closed.
    let (out, totals) = write_records(writer, dev, source, pieces, opts, progress)?;
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

/// Writes the data and zero records of `pieces`, read from `dev` (`source`), then the end
/// record.
fn write_records<W: Write>(
    mut writer: StreamWriter<W>,
    dev: &Device,
    source: &Path,
    pieces: &[Extent],
    opts: &SendOptions,
    progress: Progress<'_>,
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
    let groups = group_pieces(pieces, depth);
    run_pipeline(
        dev,
        source,
        pieces,
        &groups,
        depth,
        encoders,
        in_place,
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

/// Cuts `pieces` into runs of consecutive pieces of at most [`READ_PIECE`] bytes in all, small
/// enough that every reader has several runs to work on (the queue stays full to the end).
fn group_pieces(pieces: &[Extent], depth: usize) -> Vec<std::ops::Range<usize>> {
    let max_count = (pieces.len() / (depth * 4)).clamp(1, MAX_GROUP_PIECES);
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in pieces.iter().enumerate() {
        let len = if p.kind == ExtentKind::Data { p.len } else { 0 };
        if i > start && (i - start >= max_count || bytes + len > READ_PIECE) {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < pieces.len() {
        groups.push(start..pieces.len());
    }
    groups
}

/// A read buffer and the records encoded from it, reused from task to task.
struct Slot {
    buf: Option<AlignedBuf>,
    encoded: EncodedRecords,
    /// The slot's own encoder when data is read straight into its records
    /// ([`read_in_place`]); otherwise the shared encoders encode from `buf`.
    in_place: Option<RecordEncoder>,
}

/// Reads and encodes every group with up to `depth` reads in flight, and hands the encoded
/// groups to `write` in order. `in_place`: data is read straight into its records (the
/// encoders must store data as it is).
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    dev: &Device,
    path: &Path,
    pieces: &[Extent],
    groups: &[std::ops::Range<usize>],
    depth: usize,
    encoders: Vec<RecordEncoder>,
    in_place: bool,
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
            encoded: EncodedRecords::new(),
            in_place,
        }),
        |g, slot| {
            let group = &pieces[groups[g].clone()];
            if let Some(enc) = slot.in_place.as_mut() {
                return read_in_place(dev, path, group, enc, &mut slot.encoded);
            }
            read_group(dev, path, group, slot)?;
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
    let groups = group_pieces(pieces, depth);
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
        |batch: &EncodedRecords| {
            writer.write_encoded(batch)?;
            written(writer);
            Ok(())
        },
    )?;
    Ok(())
}

/// Reads the data pieces of a group one after the other into the slot's buffer.
fn read_group(dev: &Device, path: &Path, group: &[Extent], slot: &mut Slot) -> Result<()> {
    let buf = slot
        .buf
        .get_or_insert_with(|| AlignedBuf::new(READ_PIECE as usize))
        .as_mut_slice();
    let mut at = 0;
    for p in group.iter().filter(|p| p.kind == ExtentKind::Data) {
        read_piece(dev, path, p, &mut buf[at..at + p.len as usize])?;
        at += p.len as usize;
    }
    Ok(())
}

/// Reads the data piece `p` into `dst` (its length).
fn read_piece(dev: &Device, path: &Path, p: &Extent, dst: &mut [u8]) -> Result<()> {
    let n = read_full_at(&dev.file, dst, p.offset)
        .ctx(|| format!("{}: read failed at byte {}", path.display(), p.offset))?;
    if n != dst.len() {
        return Err(Error::Invalid(format!(
            "{}: data source ends at byte {}, inside a changed range",
            path.display(),
            p.offset + n as u64
        )));
    }
    Ok(())
}

/// Reads a group's data pieces straight into their records and encodes the group: the data is
/// copied once (by the kernel, from the page cache) and checksummed while still in the CPU's
/// cache.
fn read_in_place(
    dev: &Device,
    path: &Path,
    group: &[Extent],
    enc: &mut RecordEncoder,
    out: &mut EncodedRecords,
) -> Result<()> {
    out.clear();
    for p in group {
        match p.kind {
            ExtentKind::Data => enc.data_in_place(p.offset, p.len as usize, out, |dst| {
                read_piece(dev, path, p, dst)
            })?,
            ExtentKind::Zero => enc.zero(p.offset, p.len, out)?,
        }
    }
    Ok(())
}

fn encode_group(enc: &mut RecordEncoder, group: &[Extent], slot: &mut Slot) -> Result<()> {
    slot.encoded.clear();
    let buf = slot.buf.as_ref().map_or(&[][..], AlignedBuf::as_slice);
    let mut at = 0;
    for p in group {
        match p.kind {
            ExtentKind::Data => {
                enc.data(p.offset, &buf[at..at + p.len as usize], &mut slot.encoded)?;
                at += p.len as usize;
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
            let send = |dev: &Device| {
                send_from(
                    dev,
                    &path,
                    &changes,
                    &pieces,
                    Vec::new(),
                    &opts,
                    &|_| {},
                    Instant::now(),
                    StreamExtras::default(),
                )
                .unwrap()
            };
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
}
