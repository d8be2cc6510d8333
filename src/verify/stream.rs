//! The source side of `lvmsync verify --stream FILE DEST`: what a stream writes, cut into
//! pieces and hashed as it is read.
//!
//! Data records give their bytes, zero records zeros. Records that follow each other
//! (one starts where the one before ends) make one range, cut on the chunk grid as the DEST side
//! cuts it; records out of order are fine (format 3 allows them), but records that overlap are
//! refused: which of their contents DEST should hold depends on the order they were applied in,
//! which a comparison of pieces cannot follow. The parts of records past the end of DEST are
//! differences of their own.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use super::pieces::{piece_end, piece_hash, push_merged, truncate, Piece, PieceHash, Range};
use crate::error::{Error, Result};
use crate::stream::{Record, StreamReader};

/// What a stream writes, as pieces.
#[derive(Debug, Default)]
pub struct StreamPieces {
    /// The ranges the records cover below the end of DEST, in stream order (records that follow
    /// each other merged): what the DEST side is asked to hash.
    pub ranges: Vec<Range>,
    /// Their pieces with the hashes of the bytes the stream writes there.
    pub pieces: Vec<Piece>,
    /// The parts of records at or past the end of DEST.
    pub beyond: Vec<Range>,
    /// Format 4: the size of the volume the stream was made from.
    pub source_bytes: Option<u64>,
    /// Bytes of data and zero records.
    pub record_bytes: u64,
}

/// Reads the stream `input` (named `name` in errors) and cuts what it writes below `dest_bytes`
/// into pieces every `chunk` bytes.
pub fn stream_pieces(
    input: impl Read,
    name: &str,
    chunk: u64,
    dest_bytes: u64,
) -> Result<StreamPieces> {
    let mut reader = StreamReader::open(input)?;
    let mut cutter = Cutter {
        chunk,
        out: StreamPieces {
            source_bytes: reader.info().source_bytes,
            ..StreamPieces::default()
        },
        open: None,
        zero_hashes: HashMap::new(),
    };
    let mut covered = Covered::default();
    while let Some(record) = reader.next_record()? {
        let (offset, len, data) = match record {
            Record::Data { offset, data } => (offset, data.len() as u64, Some(data)),
            Record::Zero { offset, len } => (offset, len, None),
            _ => continue,
        };
        if len == 0 {
            continue;
        }
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::Invalid(format!("{name}: a record at byte {offset} ends past 2^64"))
        })?;
        if covered.overlaps(offset, end) {
            return Err(Error::Invalid(format!(
                "{name}: the record at byte {offset} overlaps an earlier one: which contents DEST must hold depends on the order they were applied in, which verify cannot follow"
            )));
        }
        covered.insert(offset, end);
        cutter.out.record_bytes += len;
        let below = end.min(dest_bytes).saturating_sub(offset);
        if below < len {
            push_merged(
                &mut cutter.out.beyond,
                Range::new(offset + below, len - below),
            );
        }
        cutter.feed(offset, below, data.map(|d| &d[..below as usize]));
    }
    cutter.close_piece();
    Ok(cutter.out)
}

/// Cuts what the records write into pieces and hashes them.
struct Cutter {
    chunk: u64,
    out: StreamPieces,
    /// The piece being hashed: its offset, length so far and hasher.
    open: Option<(u64, u64, blake3::Hasher)>,
    /// Hashes of all-zero pieces, by length.
    zero_hashes: HashMap<u64, PieceHash>,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Cutter {
    /// Takes `len` bytes at `offset`: `data`, or zeros.
    fn feed(&mut self, offset: u64, len: u64, data: Option<&[u8]>) {
        if len == 0 {
            return;
        }
        match self.out.ranges.last_mut() {
            Some(r) if r.end() == offset => r.len += len,
            _ => {
                self.close_piece();
                self.out.ranges.push(Range::new(offset, len));
            }
        }
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let piece_stop = piece_end(pos, end, self.chunk);
            let on_grid = piece_stop.is_multiple_of(self.chunk);
            let part = pos - offset..piece_stop - offset;
            match data {
                // A whole piece of zeros: its hash once per length.
                None if self.open.is_none() && on_grid => {
                    let n = piece_stop - pos;
                    let hash = *self.zero_hashes.entry(n).or_insert_with(|| zeros_hash(n));
                    self.out.pieces.push(Piece {
                        offset: pos,
                        len: n,
                        hash,
                    });
                }
                _ => {
                    let (_, fed, hasher) = self
                        .open
                        .get_or_insert_with(|| (pos, 0, blake3::Hasher::new()));
                    match data {
                        Some(d) => {
                            hasher.update(&d[part.start as usize..part.end as usize]);
                        }
                        None => {
                            let mut left = part.end - part.start;
                            while left > 0 {
                                let n = left.min(ZEROS.len() as u64);
                                hasher.update(&ZEROS[..n as usize]);
                                left -= n;
                            }
                        }
                    }
                    *fed += part.end - part.start;
                    if on_grid {
                        self.close_piece();
                    }
                }
            }
            pos = piece_stop;
        }
    }

    fn close_piece(&mut self) {
        if let Some((offset, len, hasher)) = self.open.take() {
            self.out.pieces.push(Piece {
                offset,
                len,
                hash: truncate(hasher.finalize()),
            });
        }
    }
}

fn zeros_hash(n: u64) -> PieceHash {
    if n <= ZEROS.len() as u64 {
        return piece_hash(&ZEROS[..n as usize]);
    }
    let mut h = blake3::Hasher::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len() as u64);
        h.update(&ZEROS[..k as usize]);
        left -= k;
    }
    truncate(h.finalize())
}

/// The byte ranges records covered so far, merged where they touch.
#[derive(Default)]
struct Covered(BTreeMap<u64, u64>);

impl Covered {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.0
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
    }

    fn insert(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e == start {
                self.0.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.0.remove(&end) {
            end = e;
        }
        self.0.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::super::pieces::pieces;
    use super::*;
    use crate::stream::{Format, StreamWriter, WriterOptions};

    fn stream(records: &[(u64, Option<Vec<u8>>, u64)]) -> Vec<u8> {
        let opts = WriterOptions {
            format: Format::V4,
            source_bytes: 1 << 20,
            chunk_bytes: 4096,
            compress: None,
            snapback: false,
        };
        let mut w = StreamWriter::new(Vec::new(), &opts).unwrap();
        for (offset, data, len) in records {
            match data {
                Some(d) => w.data(*offset, d).unwrap(),
                None => w.zero(*offset, *len).unwrap(),
            }
        }
        w.finish().unwrap().0
    }

    /// The pieces match those the DEST side cuts from the same ranges, with the hashes of the
    /// contents the records write.
    #[test]
    fn pieces_are_those_of_the_ranges_with_the_written_contents() {
        let a: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let records = [
            (100, Some(a.clone()), 0),
            (10_100, None, 5000),
            (20_000, Some(vec![9; 3000]), 0),
            (40_960, None, 8192),
            (1_000_000, Some(vec![1; 100]), 0),
        ];
        let s = stream(&records);
        let mut image = vec![0u8; 1 << 20];
        image[100..10_100].copy_from_slice(&a);
        image[20_000..23_000].fill(9);
        image[1_000_000..1_000_100].fill(1);
        let got = stream_pieces(&s[..], "s", 4096, 1_000_050).unwrap();
        assert_eq!(
            got.ranges,
            [
                Range::new(100, 15_000),
                Range::new(20_000, 3000),
                Range::new(40_960, 8192),
                Range::new(1_000_000, 50)
            ]
        );
        assert_eq!(got.beyond, [Range::new(1_000_050, 50)]);
        let want: Vec<Piece> = pieces(&got.ranges, 4096)
            .map(|r| Piece {
                offset: r.offset,
                len: r.len,
                hash: piece_hash(&image[r.offset as usize..r.end() as usize]),
            })
            .collect();
        assert_eq!(got.pieces, want);
        assert_eq!(got.source_bytes, Some(1 << 20));
    }

    #[test]
    fn overlapping_records_are_refused() {
        let s = stream(&[(0, Some(vec![1; 4096]), 0), (8192, None, 4096)]);
        assert!(stream_pieces(&s[..], "s", 4096, 1 << 20).is_ok());
        let mut v3 = b"lvmsync PROTO[3]\n".to_vec();
        for (offset, len) in [(8192u64, 100u32), (0, 4096), (8000, 200)] {
            v3.extend_from_slice(&crate::stream::v3::record_header(offset, len));
            v3.extend(std::iter::repeat_n(5u8, len as usize));
        }
        let e = stream_pieces(&v3[..], "old.s", 4096, 1 << 20).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("old.s: the record at byte 8000 overlaps an earlier one"),
            "{e}"
        );
        // Out of order but apart: fine.
        let mut v3 = b"lvmsync PROTO[3]\n".to_vec();
        for (offset, len) in [(8192u64, 100u32), (0, 4096), (4096, 4096)] {
            v3.extend_from_slice(&crate::stream::v3::record_header(offset, len));
            v3.extend(std::iter::repeat_n(5u8, len as usize));
        }
        let got = stream_pieces(&v3[..], "old.s", 4096, 1 << 20).unwrap();
        assert_eq!(got.ranges, [Range::new(8192, 100), Range::new(0, 8192)]);
    }
}
