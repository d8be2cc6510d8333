//! `lvmsync --checksum SOURCE [HOST:]DEST`: a sync without a snapshot. Both ends hash their
//! volume at the same time, as `lvmsync verify` does, and only the blocks whose hashes differ
//! are sent, as an ordinary format 4 stream, while the comparison goes on.
//!
//! The comparison is [`crate::verify`]'s: the DEST side is [`crate::verify::peer::serve`] (a
//! thread of this process for a local DEST, `lvmsync verify --serve` through the remote shell
//! for a remote one), here with pieces of [`LEAF`] bytes. Its tree of two levels keeps the
//! exchange small: one hash per group of 64 pieces (256 KiB) goes to DEST's side, which answers
//! with its piece hashes of the groups that differ; so 4 KiB precision costs 16 bytes per
//! 256 KiB when nothing differs, and 1 KiB per group that holds a difference.
//!
//! The stream is the one a sync sends, over the same transport (`lvmsync --apply - --session`
//! remotely), so a snapback, compression and the receiver's checks apply as usual. It carries
//! no manifest (the ranges are not known when it starts): the comparison stands in for the
//! destination check. Its records follow the comparison: the source side's thread hands every
//! differing piece over as soon as DEST's side answered for it, and this thread reads those
//! pieces from SOURCE and writes them, a batch at a time, with many reads in flight
//! ([`crate::send::write_pieces`]). DEST is written only where both sides have read it already.
//!
//! A differing piece that is all zeros in SOURCE (its hash is that of zeros) is sent as a zero
//! range, not read, so that a thin DEST unmaps it rather than allocating it.
//!
//! The end record is written only once the comparison ended well: a comparison that fails
//! (a dead connection, a read error) leaves the stream without one, and the receiver refuses it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::blockdev::Device;
use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentKind};
use crate::send::{write_pieces, Progress, READ_PIECE};
use crate::stream::{StreamTotals, StreamWriter};
use crate::verify::conn::Connection;
use crate::verify::peer::Client;
use crate::verify::pieces::{piece_count, piece_hash, Range};
use crate::verify::read::Reader;
use crate::verify::wire::{Message, Request};
use crate::verify::{Target, Traffic};

/// The unit compared, and so of what is sent: a stream carries every 4 KiB block in which at
/// least one byte differs.
pub const LEAF: u64 = 4096;

/// Differing pieces waiting to be sent, at most: the comparison waits for the stream beyond.
const QUEUED: usize = 1 << 16;
/// Pieces read and written in one go, at most.
const BATCH: usize = 4096;

/// The comparison with DEST's side, open: DEST is open there and its size known.
pub struct Comparison {
    conn: Connection,
    dest_bytes: u64,
}

impl Comparison {
    /// Starts DEST's side (on this host or through the remote shell) and reads its hello.
    pub fn open(target: &Target, queue_depth: usize) -> Result<Comparison> {
        let mut conn = Connection::open(target, queue_depth)?;
        match conn.hello() {
            Ok(hello) => Ok(Comparison {
                conn,
                dest_bytes: hello.bytes,
            }),
            Err(e) => Err(conn.explain(e)),
        }
    }

    /// Size of DEST in bytes.
    pub fn dest_bytes(&self) -> u64 {
        self.dest_bytes
    }
}

/// What a checksum sync did.
#[derive(Debug, Clone)]
pub struct ChecksumReport {
    /// Bytes compared on each side (the size of SOURCE).
    pub compared_bytes: u64,
    /// Ranges that differed (adjacent pieces merged).
    pub differing_ranges: usize,
    /// The stream sent.
    pub totals: StreamTotals,
    /// Bytes exchanged by the comparison.
    pub traffic: Traffic,
    pub elapsed: Duration,
}

/// What the comparison hands over to the stream.
enum Found {
    /// A differing piece, in increasing order: data, or zeros in SOURCE.
    Piece(Extent),
    /// The comparison ended well: nothing more differs.
    End,
}

/// Compares `source` (`volume_bytes` long, at most DEST's size) with DEST's side of
/// `comparison`, and writes the pieces that differ, read from `source`, into `writer` (a
/// format 4 stream with its header and identity written) as they are found; ends the stream
/// once the comparison ended well. `progress` is told of the bytes compared.
pub fn send_differing<W: Write>(
    comparison: Comparison,
    source: &Path,
    volume_bytes: u64,
    mut writer: StreamWriter<W>,
    queue_depth: usize,
    progress: Progress<'_>,
) -> Result<(W, ChecksumReport)> {
    let start = Instant::now();
    let Comparison { mut conn, .. } = comparison;
    let reader = Reader::open(source)?;
    if reader.size() != volume_bytes {
        return Err(Error::Invalid(format!(
            "{}: is {} bytes now, not {volume_bytes} (it changed size?)",
            source.display(),
            reader.size()
        )));
    }
    let data = Device::open_read(source)?;
    // Scattered reads: stop the kernel reading ahead what nobody asked for.
    let _ = rustix::fs::fadvise(&data.file, 0, None, rustix::fs::Advice::Random);
    let (tx, rx) = bounded::<Found>(QUEUED);
    let stop = AtomicBool::new(false);
    let depth = queue_depth.max(1);
    std::thread::scope(|s| {
        let (reader, stop) = (&reader, &stop);
        // `tx` goes with the comparison: when it ends, without End on a failure, the stream
        // sees it.
        let compared = s.spawn(move || {
            match compare(reader, &mut conn, volume_bytes, depth, &tx, stop, progress) {
                Ok(differing) => {
                    let traffic = conn.close()?;
                    // Only now may the stream end.
                    let _ = tx.send(Found::End);
                    Ok((differing, traffic))
                }
                Err(e) => Err(conn.explain(e)),
            }
        });
        let sent = write_found(rx, &mut writer, &data, source, depth);
        if sent.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let compared = compared.join().expect("the comparison thread panicked");
        let (differing, traffic) = match (compared, sent) {
            (Ok(c), Ok(true)) => c,
            // The stream failed: its error says why (the comparison stopped for it).
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(_)) => return Err(e),
            (Ok(_), Ok(false)) => {
                return Err(Error::Invalid(
                    "checksum: the comparison ended without its end".into(),
                ))
            }
        };
        let (out, totals) = writer.finish()?;
        Ok((
            out,
            ChecksumReport {
                compared_bytes: volume_bytes,
                differing_ranges: differing,
                totals,
                traffic,
                elapsed: start.elapsed(),
            },
        ))
    })
}

/// The source side of the comparison: hashes SOURCE, sends the group hashes, hands every
/// differing piece to `found`. Returns the number of differing ranges.
fn compare(
    reader: &Reader<'_>,
    conn: &mut Connection,
    volume_bytes: u64,
    queue_depth: usize,
    found: &Sender<Found>,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<usize> {
    let ranges: Vec<Range> = [Range::new(0, volume_bytes)]
        .into_iter()
        .filter(|r| r.len > 0)
        .collect();
    Message::Request(Request {
        chunk_bytes: LEAF,
        ranges: ranges.clone(),
    })
    .write_to(conn.to())
    .map_err(|e| Error::io("checksum: the connection to DEST's side: cannot write", e))?;
    let total = piece_count(&ranges, LEAF);
    let incoming = conn.incoming().clone();
    let mut client = Client::new(conn.to(), &incoming, total);
    let zero_leaf = piece_hash(&[0; LEAF as usize]);
    client.on_differing(Box::new(move |p| {
        let zeros = if p.len == LEAF {
            p.hash == zero_leaf
        } else {
            p.hash == piece_hash(&vec![0; p.len as usize])
        };
        let piece = if zeros {
            Extent::zero(p.offset, p.len)
        } else {
            Extent::data(p.offset, p.len)
        };
        found
            .send(Found::Piece(piece))
            .map_err(|_| Error::Invalid("checksum: the stream stopped".into()))
    }));
    let mut done = 0u64;
    reader.hash_ranges(&ranges, LEAF, queue_depth, |pieces| {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Invalid("checksum: the stream stopped".into()));
        }
        done += pieces.iter().map(|p| p.len).sum::<u64>();
        progress(done);
        client.push(pieces)
    })?;
    let (differing, dest_done) = client.finish()?;
    if dest_done.bytes_read != volume_bytes {
        return Err(Error::Invalid(format!(
            "checksum: DEST's side read {} bytes, this side {volume_bytes}",
            dest_done.bytes_read
        )));
    }
    Ok(differing.len())
}

/// Writes the differing pieces as they are found, a batch at a time (adjacent pieces make one
/// record of up to [`READ_PIECE`] bytes), until the comparison's end: `true`; `false` when the
/// comparison stopped before its end (it says why).
fn write_found<W: Write>(
    found: Receiver<Found>,
    writer: &mut StreamWriter<W>,
    data: &Device,
    source: &Path,
    queue_depth: usize,
) -> Result<bool> {
    let encoders = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, queue_depth);
    let mut encoders = (0..encoders).map(|_| writer.encoder()).collect();
    let mut batch: Vec<Extent> = Vec::new();
    loop {
        let mut ended = false;
        let Ok(mut next) = found.recv() else {
            return Ok(false);
        };
        let mut pieces = 0;
        loop {
            match next {
                Found::Piece(p) => {
                    match batch.last_mut() {
                        Some(last)
                            if last.end() == p.offset
                                && last.kind == p.kind
                                && last.len + p.len <= READ_PIECE =>
                        {
                            last.len += p.len;
                        }
                        _ => batch.push(p),
                    }
                    pieces += 1;
                }
                Found::End => ended = true,
            }
            if ended || pieces >= BATCH {
                break;
            }
            next = match found.try_recv() {
                Ok(f) => f,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(false),
            };
        }
        // A run of zeros at the batch's end may go on in the next one: held back, it stays one
        // record, which a thin DEST can unmap whole rather than in pieces cut at batch ends.
        let held = match batch.last() {
            Some(last) if !ended && last.kind == ExtentKind::Zero => batch.pop(),
            _ => None,
        };
        write_pieces(
            writer,
            data,
            source,
            &batch,
            queue_depth,
            &mut encoders,
            |_| {},
        )?;
        batch.clear();
        batch.extend(held);
        if ended {
            return Ok(true);
        }
    }
}
