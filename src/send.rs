//! The sender: reads the changed ranges from the data source and writes them as a stream.
//!
//! Reads are issued by a pool of threads so that many requests are in flight at once (scattered
//! 4 KiB chunks are bound by the device's queue depth, not its bandwidth), and the stream is
//! written in offset order by one thread. Memory is bounded by a fixed set of buffers: a reader
//! takes a buffer before it claims the next piece, so the oldest outstanding piece always holds a
//! buffer and the pipeline cannot deadlock.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::blockdev::{read_full_at, Device};
use crate::error::{Error, IoContext, Result};
use crate::extent::{Extent, ExtentKind};
use crate::source::ChangeSet;
use crate::stream::{Format, StreamTotals, StreamWriter, WriterOptions};

/// Largest single read, and so the largest record lvmsync writes.
pub const READ_PIECE: u64 = 1 << 20;

#[derive(Debug, Clone)]
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

/// What a send did.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub ranges: usize,
    pub totals: StreamTotals,
    pub elapsed: Duration,
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
    let start = Instant::now();
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
    // Scattered reads: stop the kernel reading ahead data nobody asked for.
    let _ = rustix::fs::fadvise(&dev.file, 0, None, rustix::fs::Advice::Random);
    let wopts = WriterOptions {
        format: opts.format,
        source_bytes: changes.volume_bytes,
        chunk_bytes: changes.chunk_bytes,
        compress: opts.compress,
    };
    let mut writer = StreamWriter::new(out, &wopts)?;
    let pieces: Vec<Extent> = changes.extents.pieces(READ_PIECE).collect();
    read_in_order(
        &dev,
        source,
        &pieces,
        opts.queue_depth.max(1),
        |piece, data| {
            match piece.kind {
                ExtentKind::Data => writer.data(piece.offset, data)?,
                ExtentKind::Zero => writer.zero(piece.offset, piece.len)?,
            }
            let t = writer.totals();
            progress(t.data_bytes + t.zero_bytes);
            Ok(())
        },
    )?;
    let (out, totals) = writer.finish()?;
    Ok((
        out,
        SendReport {
            ranges: changes.extents.len(),
            totals,
            elapsed: start.elapsed(),
        },
    ))
}

type Piece = (usize, Result<Vec<u8>>);

/// Reads every data piece with up to `depth` reads in flight and hands the pieces to `consume`
/// in order. Zero pieces are handed over with an empty buffer.
fn read_in_order(
    dev: &Device,
    path: &Path,
    pieces: &[Extent],
    depth: usize,
    mut consume: impl FnMut(&Extent, &[u8]) -> Result<()>,
) -> Result<()> {
    if pieces.is_empty() {
        return Ok(());
    }
    let buffers = depth * 2;
    let (free_tx, free_rx): (Sender<Vec<u8>>, Receiver<Vec<u8>>) = bounded(buffers);
    for _ in 0..buffers {
        free_tx.send(Vec::new()).unwrap();
    }
    let (done_tx, done_rx) = bounded::<Piece>(buffers);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..depth.min(pieces.len()) {
            let (free_rx, done_tx, next, stop) = (free_rx.clone(), done_tx.clone(), &next, &stop);
            scope.spawn(move || {
                while let Ok(mut buf) = free_rx.recv() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= pieces.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let p = pieces[i];
                    let res = match p.kind {
                        ExtentKind::Zero => {
                            buf.clear();
                            Ok(buf)
                        }
                        ExtentKind::Data => read_piece(dev, path, &p, buf),
                    };
                    if done_tx.send((i, res)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let result = (|| {
            let mut waiting: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
            let mut expect = 0;
            while expect < pieces.len() {
                let (i, res) = done_rx
                    .recv()
                    .map_err(|_| Error::Invalid("reader threads ended early".into()))?;
                waiting.insert(i, res?);
                while let Some(buf) = waiting.remove(&expect) {
                    consume(&pieces[expect], &buf)?;
                    let _ = free_tx.send(buf);
                    expect += 1;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        // Wake readers blocked on a buffer or on a full result channel so the scope can end.
        drop(free_tx);
        drop(done_rx);
        result
    })
}

fn read_piece(dev: &Device, path: &Path, p: &Extent, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    buf.resize(p.len as usize, 0);
    let n = read_full_at(&dev.file, &mut buf, p.offset)
        .ctx(|| format!("{}: read failed at byte {}", path.display(), p.offset))?;
    if n != buf.len() {
        return Err(Error::Invalid(format!(
            "{}: data source ends at byte {}, inside a changed range",
            path.display(),
            p.offset + n as u64
        )));
    }
    Ok(buf)
}
