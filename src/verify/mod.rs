//! `lvmsync verify`: are two volumes (or the ranges a sync wrote) equal, and where do they
//! differ?
//!
//! Both sides are read at the same time, each with many large reads in flight
//! ([`read`]), and hashed piece by piece (BLAKE3 of every chunk of the compared ranges,
//! [`pieces`]). The DEST side runs [`peer::serve`]: on a thread of this process for a local DEST,
//! or as `lvmsync verify --serve DEST` on DEST's host through the remote shell ([`conn`]). The
//! source side sends one hash per group of 64 pieces; the DEST side answers with its piece
//! hashes of the groups that differ ([`peer`], [`wire`]), so that what crosses the network is a
//! few hundred bytes when nothing differs and grows with the difference.
//!
//! What is compared:
//! - [`Source::Volume`]: two whole devices or images, from byte 0 to the end of the smaller;
//!   when their sizes differ, the bytes past the end of the smaller one are a difference;
//! - [`Source::Ranges`]: given ranges of a device, e.g. the changes a snapshot lists, read from
//!   its origin: a check of a sync that reads only what it wrote;
//! - [`Source::Stream`]: what a stream's records write ([`stream`]).
//!
//! Differences are reported per piece: a range of at most one chunk, aligned to the chunk grid
//! (or cut by the compared ranges), merged with its neighbours.

pub mod conn;
pub mod peer;
pub mod pieces;
pub mod read;
pub mod stream;
pub mod wire;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

pub use conn::{Target, Traffic};
pub use pieces::Range;

use crate::error::Result;

/// The default chunk size: the unit of hashing, and of the differences reported.
pub const DEFAULT_CHUNK: u64 = 1 << 20;
/// Bounds of the chunk size.
pub const MIN_CHUNK: u64 = 4096;
pub const MAX_CHUNK: u64 = 16 << 20;

/// Refuses a chunk size lvmsync does not compare with.
pub fn check_chunk(chunk: u64) -> std::result::Result<(), String> {
    if (MIN_CHUNK..=MAX_CHUNK).contains(&chunk) && chunk.is_multiple_of(4096) {
        Ok(())
    } else {
        Err(format!(
            "chunk size {chunk}: must be a multiple of 4 KiB from 4 KiB to 16 MiB"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    pub chunk_bytes: u64,
    /// Reads in flight on each side.
    pub queue_depth: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            chunk_bytes: DEFAULT_CHUNK,
            queue_depth: 32,
        }
    }
}

/// The source side of a comparison.
pub enum Source<'a> {
    /// A whole device or image.
    Volume(&'a Path),
    /// Ranges of a device (sorted, disjoint): they must lie within it.
    Ranges { path: &'a Path, ranges: Vec<Range> },
    /// The records of a stream, named `name` in messages.
    Stream {
        input: Box<dyn Read + 'a>,
        name: String,
    },
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Size of the source device (for a stream: of the volume it was made from, format 4).
    pub source_bytes: Option<u64>,
    pub dest_bytes: u64,
    pub chunk_bytes: u64,
    /// Bytes compared on each side.
    pub compared_bytes: u64,
    /// Where the sides differ: sorted, merged.
    pub differing: Vec<Range>,
    pub elapsed: Duration,
    /// Bytes exchanged with the DEST side.
    pub traffic: Traffic,
}

impl Report {
    pub fn differing_bytes(&self) -> u64 {
        self.differing.iter().map(|r| r.len).sum()
    }
}

/// Compares `source` with the DEST of `target`.
pub fn verify(source: Source<'_>, target: &Target, opts: &VerifyOptions) -> Result<Report> {
    let start = Instant::now();
    let reader = match &source {
        Source::Volume(path) | Source::Ranges { path, .. } => Some(read::Reader::open(path)?),
        Source::Stream { .. } => None,
    };
    let mut conn = conn::Connection::open(target, opts.queue_depth)?;
    match compare(source, reader.as_ref(), &mut conn, opts) {
        Ok((mut report, dest_read)) => {
            report.traffic = conn.close()?;
            report.elapsed = start.elapsed();
            if dest_read != report.compared_bytes {
                return Err(crate::error::Error::Invalid(format!(
                    "verify: DEST's side read {dest_read} bytes, this side {}",
                    report.compared_bytes
                )));
            }
            Ok(report)
        }
        Err(e) => Err(conn.explain(e)),
    }
}

/// The comparison proper, once both sides are open; returns the report and the bytes the DEST
/// side read.
fn compare(
    source: Source<'_>,
    reader: Option<&read::Reader<'_>>,
    conn: &mut conn::Connection,
    opts: &VerifyOptions,
) -> Result<(Report, u64)> {
    let chunk = opts.chunk_bytes;
    let dest_bytes = conn.hello()?.bytes;
    let source_size = reader.map(read::Reader::size);
    let mut stream_pieces = None;
    let (ranges, beyond, source_bytes) = match source {
        Source::Volume(_) => {
            let size = source_size.expect("a device");
            let common = size.min(dest_bytes);
            let ranges = [Range::new(0, common)]
                .into_iter()
                .filter(|r| r.len > 0)
                .collect();
            let beyond = [Range::new(common, size.max(dest_bytes) - common)]
                .into_iter()
                .filter(|r| r.len > 0)
                .collect();
            (ranges, beyond, Some(size))
        }
        Source::Ranges { ranges, .. } => {
            let (below, beyond) = pieces::split_at(&ranges, dest_bytes);
            (below, beyond, source_size)
        }
        Source::Stream { input, name } => {
            let s = stream::stream_pieces(input, &name, chunk, dest_bytes)?;
            let out = (s.ranges.clone(), s.beyond.clone(), s.source_bytes);
            stream_pieces = Some(s.pieces);
            out
        }
    };
    wire::Message::Request(wire::Request {
        chunk_bytes: chunk,
        ranges: ranges.clone(),
    })
    .write_to(conn.to())
    .map_err(|e| {
        crate::error::Error::io("verify: the connection to DEST's side: cannot write", e)
    })?;
    let total = pieces::piece_count(&ranges, chunk);
    let incoming = conn.incoming().clone();
    let mut client = peer::Client::new(conn.to(), &incoming, total);
    match (stream_pieces, reader) {
        (Some(p), _) => client.push(&p)?,
        (None, Some(reader)) => {
            reader.hash_ranges(&ranges, chunk, opts.queue_depth, |p| client.push(p))?;
        }
        (None, None) => unreachable!("a device side has a reader"),
    }
    let (differing, done) = client.finish()?;
    let compared_bytes = ranges.iter().map(|r| r.len).sum();
    let mut all = differing;
    all.extend(beyond);
    Ok((
        Report {
            source_bytes,
            dest_bytes,
            chunk_bytes: chunk,
            compared_bytes,
            differing: pieces::merge(all),
            elapsed: Duration::ZERO,
            traffic: Traffic::default(),
        },
        done.bytes_read,
    ))
}
