//! The sender's side of the destination check: the manifest (the snapshot's contents of every
//! range, as digests, read from the prior source) and, on a live session, the answers to the
//! receiver's questions (digests of the new contents of the ranges it asks about).

use std::ops::{ControlFlow, Range};
use std::path::Path;

use crate::blockdev::{read_full_at, Device};
use crate::error::{Error, IoContext, Result};
use crate::extent::{Extent, ExtentKind};
use crate::parallel;
use crate::source::cow::ExceptionStore;
use crate::source::thin::guard::ReadOnlyThinDevice;
use crate::source::PriorSource;
use crate::stream::manifest::{self, block_digests, BlockDigest, ManifestBuilder, DIGEST_BLOCK};
use crate::stream::StreamWriter;

/// Most bytes of consecutive pieces read and hashed as one task of the reader pool.
const TASK_BYTES: u64 = 1 << 20;
/// Most pieces in one task.
const TASK_PIECES: usize = 256;
/// Reads in flight.
const DEPTH: usize = 32;

/// A task's digests, every piece's in turn, and how many each piece has; with the read
/// buffer, reused from task to task.
#[derive(Default)]
struct DigestSlot {
    buf: Vec<u8>,
    digests: Vec<BlockDigest>,
    counts: Vec<usize>,
}

/// The digests of `contents` of every piece, computed by a pool of readers that keeps
/// [`DEPTH`] reads in flight from the first piece to the last, and handed to `each` in order.
/// `read(piece, buf)` fills `buf` with the piece's contents (a zero piece of the new contents
/// is not read: it is zeros).
fn digests_in_order(
    pieces: &[Extent],
    read: &(dyn Fn(&Extent, &mut [u8]) -> Result<()> + Sync),
    each: &mut dyn FnMut(&Extent, &[BlockDigest]) -> Result<()>,
) -> Result<()> {
    let tasks = tasks(pieces);
    parallel::in_order(
        tasks.len(),
        DEPTH,
        (0..(DEPTH * 2).min(tasks.len() + DEPTH)).map(|_| DigestSlot::default()),
        |t, slot| {
            slot.digests.clear();
            slot.counts.clear();
            for p in &pieces[tasks[t].clone()] {
                slot.buf.resize(p.len as usize, 0);
                read(p, &mut slot.buf)?;
                let before = slot.digests.len();
                block_digests(&slot.buf, DIGEST_BLOCK, &mut slot.digests);
                slot.counts.push(slot.digests.len() - before);
            }
            Ok(())
        },
        |t, slot| {
            let mut at = 0;
            for (p, &n) in pieces[tasks[t].clone()].iter().zip(&slot.counts) {
                each(p, &slot.digests[at..at + n])?;
                at += n;
            }
            Ok(ControlFlow::Continue(()))
        },
    )
}

/// Cuts `pieces` into runs of consecutive pieces of at most [`TASK_BYTES`] in all (a longer
/// piece alone), small enough that every reader has several runs to work on.
fn tasks(pieces: &[Extent]) -> Vec<Range<usize>> {
    let max_count = (pieces.len() / (DEPTH * 4)).clamp(1, TASK_PIECES);
    let mut tasks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in pieces.iter().enumerate() {
        if i > start && (i - start >= max_count || bytes + p.len > TASK_BYTES) {
            tasks.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += p.len;
    }
    if start < pieces.len() {
        tasks.push(start..pieces.len());
    }
    tasks
}

fn read_exactly(dev: &Device, path: &Path, what: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
    let n = read_full_at(&dev.file, buf, offset)
        .ctx(|| format!("{}: cannot read {what} at byte {offset}", path.display()))?;
    if n != buf.len() {
        return Err(Error::Invalid(format!(
            "{}: {what} ends at byte {}, inside a changed range",
            path.display(),
            offset + n as u64
        )));
    }
    Ok(())
}

/// Writes the manifest of `pieces`: each piece's prior contents (the snapshot's, from
/// `prior`) as digests, then the last manifest record.
pub fn write_manifest<W: std::io::Write>(
    writer: &mut StreamWriter<W>,
    pieces: &[Extent],
    prior: &PriorSource,
) -> Result<()> {
    manifest_payloads(pieces, prior, &mut |payload| Ok(writer.manifest(payload)?))
}

/// The manifest records of `pieces`, in order, handed to `emit` as payloads (the last one
/// with the last flag).
pub fn manifest_payloads(
    pieces: &[Extent],
    prior: &PriorSource,
    emit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut builder = ManifestBuilder::new(DIGEST_BLOCK);
    let mut each = |p: &Extent, d: &[BlockDigest]| {
        if let Some(full) = builder.push(*p, d)? {
            emit(&full)?;
        }
        Ok(())
    };
    match prior {
        PriorSource::Device(path) => device_digests(path, pieces, &mut each)?,
        PriorSource::CowStore(path) => {
            let store = ExceptionStore::open(path)?;
            let chunks = store.snapshot_reader()?;
            digests_in_order(pieces, &|p, buf| chunks.read(p.offset, buf), &mut each)?;
        }
        PriorSource::InactiveThin {
            pool,
            dev_id,
            bytes,
        } => {
            let view = ReadOnlyThinDevice::create(*pool, *dev_id, bytes.div_ceil(512))?;
            device_digests(view.path(), pieces, &mut each)?;
            view.remove()?;
        }
    }
    emit(&builder.finish())
}

/// The digests of `pieces` as the device or image at `path` holds them.
fn device_digests(
    path: &Path,
    pieces: &[Extent],
    each: &mut dyn FnMut(&Extent, &[BlockDigest]) -> Result<()>,
) -> Result<()> {
    let dev = Device::open_read(path)?;
    let end = pieces.last().map_or(0, Extent::end);
    if dev.size < end {
        return Err(Error::Invalid(format!(
            "{}: the snapshot's contents are {} bytes but changes reach byte {end}",
            path.display(),
            dev.size
        )));
    }
    let _ = rustix::fs::fadvise(&dev.file, 0, None, rustix::fs::Advice::Random);
    digests_in_order(
        pieces,
        &|p, buf| read_exactly(&dev, path, "the snapshot", p.offset, buf),
        each,
    )
}

/// Writes resolution records for the ranges at `offsets` (pieces of the stream, asked about by
/// the receiver): the digests of their new contents, read from `data`.
pub fn write_resolutions<W: std::io::Write>(
    writer: &mut StreamWriter<W>,
    pieces: &[Extent],
    offsets: &[u64],
    data: &Path,
) -> Result<()> {
    let asked: Vec<Extent> = offsets
        .iter()
        .map(|o| {
            pieces
                .binary_search_by_key(o, |p| p.offset)
                .map(|i| pieces[i])
                .map_err(|_| {
                    Error::Invalid(format!(
                        "the receiver asked about byte {o}, which is no range of this stream"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    if asked.is_empty() {
        return Ok(());
    }
    let dev = Device::open_read(data)?;
    let mut payload = Vec::new();
    digests_in_order(
        &asked,
        &|p, buf| match p.kind {
            ExtentKind::Zero => {
                buf.fill(0);
                Ok(())
            }
            ExtentKind::Data => read_exactly(&dev, data, "the data source", p.offset, buf),
        },
        &mut |p, d| {
            manifest::push_resolution(&mut payload, p.offset, d);
            if payload.len() >= manifest::MAX_MANIFEST_PAYLOAD {
                writer.resolution(&payload)?;
                payload.clear();
            }
            Ok(())
        },
    )?;
    if !payload.is_empty() {
        writer.resolution(&payload)?;
    }
    Ok(())
}
