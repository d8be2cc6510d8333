//! The sender's side of the destination check: the manifest (the snapshot's contents of every
//! range, as digests, read from the prior source) and, on a live session, the answers to the
//! receiver's questions (digests of the new contents of the ranges it asks about).

use std::path::Path;

use crate::blockdev::{read_full_at, Device};
use crate::error::{Error, IoContext, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::cow::ExceptionStore;
use crate::source::PriorSource;
use crate::stream::manifest::{self, block_digests, BlockDigest, ManifestBuilder, DIGEST_BLOCK};
use crate::stream::StreamWriter;

/// Bytes read at once (in parallel) while computing digests.
const GROUP_BYTES: u64 = 8 << 20;
/// Reads in flight.
const DEPTH: usize = 32;

/// The digests of `contents` of every piece, computed in groups read in parallel and handed to
/// `each` in order. `read(piece, buf)` fills `buf` with the piece's contents (a zero piece of the
/// new contents is not read: it is zeros).
fn digests_in_order(
    pieces: &[Extent],
    read: &(dyn Fn(&Extent, &mut [u8]) -> Result<()> + Sync),
    each: &mut dyn FnMut(&Extent, &[BlockDigest]) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < pieces.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < pieces.len() && (end == start || bytes + pieces[end].len <= GROUP_BYTES) {
            bytes += pieces[end].len;
            end += 1;
        }
        let group = &pieces[start..end];
        let results: Vec<std::sync::Mutex<Vec<BlockDigest>>> =
            group.iter().map(|_| Default::default()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..DEPTH.min(group.len()) {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= group.len() || failed.lock().unwrap().is_some() {
                            break;
                        }
                        let p = &group[i];
                        buf.resize(p.len as usize, 0);
                        match read(p, &mut buf) {
                            Ok(()) => {
                                let mut d = results[i].lock().unwrap();
                                block_digests(&buf, DIGEST_BLOCK, &mut d);
                            }
                            Err(e) => {
                                failed.lock().unwrap().get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap() {
            return Err(e);
        }
        for (p, d) in group.iter().zip(results) {
            each(p, &d.into_inner().unwrap())?;
        }
        start = end;
    }
    Ok(())
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
        PriorSource::Device(path) => {
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
                &mut each,
            )?;
        }
        PriorSource::CowStore(path) => {
            let store = ExceptionStore::open(path)?;
            let chunks = store.snapshot_reader()?;
            digests_in_order(pieces, &|p, buf| chunks.read(p.offset, buf), &mut each)?;
        }
    }
    emit(&builder.finish())
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
