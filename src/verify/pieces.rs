//! The compared ranges, cut into pieces on the chunk grid, and hashed.
//!
//! Both sides of a comparison cut the same list of ranges the same way, so that piece `i` is
//! the same bytes on both: every range is cut at the multiples of the chunk size, so a piece is
//! the intersection of a range with one chunk of the volume. Whole volumes are one range; the
//! changed ranges of a snapshot or the records of a stream are many, each piece then no larger
//! than its range.

/// A piece's digest: BLAKE3 of its bytes, truncated to 128 bits (a collision between two
/// honest sides is out of reach; what matters is that any difference shows).
pub type PieceHash = [u8; 16];

/// BLAKE3 of `data`, truncated.
pub fn piece_hash(data: &[u8]) -> PieceHash {
    truncate(blake3::hash(data))
}

pub(crate) fn truncate(h: blake3::Hash) -> PieceHash {
    h.as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

/// A byte range `[offset, offset + len)` of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

impl Range {
    pub fn new(offset: u64, len: u64) -> Self {
        Range { offset, len }
    }

    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One piece on one side: where it is and the hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
    pub hash: PieceHash,
}

/// The end of the piece that starts at `pos` in a range ending at `end`: the next multiple of
/// `chunk` after `pos`, or `end`.
pub fn piece_end(pos: u64, end: u64, chunk: u64) -> u64 {
    ((pos / chunk + 1) * chunk).min(end)
}

/// How many pieces `ranges` are cut into.
pub fn piece_count(ranges: &[Range], chunk: u64) -> u64 {
    ranges
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| (r.end() - 1) / chunk - r.offset / chunk + 1)
        .sum()
}

/// The pieces of `ranges`, in order.
pub fn pieces(ranges: &[Range], chunk: u64) -> impl Iterator<Item = Range> + '_ {
    ranges.iter().flat_map(move |r| {
        let mut pos = r.offset;
        std::iter::from_fn(move || {
            (pos < r.end()).then(|| {
                let end = piece_end(pos, r.end(), chunk);
                let piece = Range::new(pos, end - pos);
                pos = end;
                piece
            })
        })
    })
}

/// Sorts `ranges` and merges those that overlap or touch.
pub fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.len > 0);
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => {
                last.len = last.len.max(r.end() - last.offset);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Appends `r` to a list kept merged while ranges arrive in increasing order (the common case:
/// a whole volume, or sorted changes); anything else is merged by [`merge`] at the end.
pub fn push_merged(list: &mut Vec<Range>, r: Range) {
    if r.len == 0 {
        return;
    }
    match list.last_mut() {
        Some(last) if last.end() == r.offset => last.len += r.len,
        _ => list.push(r),
    }
}

/// Splits `ranges` at `limit`: the parts below it, and the parts at or past it.
pub fn split_at(ranges: &[Range], limit: u64) -> (Vec<Range>, Vec<Range>) {
    let (mut below, mut past) = (Vec::new(), Vec::new());
    for r in ranges {
        if r.end() <= limit {
            below.push(*r);
        } else if r.offset >= limit {
            past.push(*r);
        } else {
            below.push(Range::new(r.offset, limit - r.offset));
            past.push(Range::new(limit, r.end() - limit));
        }
    }
    (below, past)
}

/// Ranges on the wire: a count, then for each range the distance of its offset from the end of
/// the one before (zigzag, for ranges out of order) and its length, as LEB128 varints: a few
/// bytes per range.
pub fn encode_ranges(ranges: &[Range], out: &mut Vec<u8>) {
    put_varint(out, ranges.len() as u64);
    let mut prev_end = 0u64;
    for r in ranges {
        let delta = r.offset.wrapping_sub(prev_end) as i64;
        put_varint(out, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(out, r.len);
        prev_end = r.end();
    }
}

/// The inverse of [`encode_ranges`]; refuses ranges that are empty or overflow.
pub fn decode_ranges(mut p: &[u8]) -> Result<(Vec<Range>, &[u8]), String> {
    let count = get_varint(&mut p)?;
    // Each range takes at least two bytes: a count beyond that is damage, not a reason to
    // allocate.
    if count > p.len() as u64 / 2 {
        return Err(format!("{count} ranges in {} bytes", p.len()));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut prev_end = 0u64;
    for _ in 0..count {
        let z = get_varint(&mut p)?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let offset = prev_end.wrapping_add(delta as u64);
        let len = get_varint(&mut p)?;
        let end = offset
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| format!("bad range {offset}+{len}"))?;
        ranges.push(Range::new(offset, len));
        prev_end = end;
    }
    Ok((ranges, p))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(p: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = p.split_first().ok_or("ranges end inside a number")?;
        *p = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a number longer than 64 bits".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_are_cut_on_the_chunk_grid() {
        let ranges = [
            Range::new(100, 5000),
            Range::new(8192, 4096),
            Range::new(0, 10),
        ];
        let got: Vec<Range> = pieces(&ranges, 4096).collect();
        assert_eq!(
            got,
            [
                Range::new(100, 3996),
                Range::new(4096, 1004),
                Range::new(8192, 4096),
                Range::new(0, 10)
            ]
        );
        assert_eq!(piece_count(&ranges, 4096), 4);
        assert_eq!(piece_count(&[Range::new(0, 1 << 30)], 1 << 20), 1024);
    }

    #[test]
    fn merging_and_splitting() {
        let m = merge(vec![
            Range::new(10, 5),
            Range::new(0, 10),
            Range::new(30, 1),
            Range::new(12, 2),
        ]);
        assert_eq!(m, [Range::new(0, 15), Range::new(30, 1)]);
        let (below, past) = split_at(&m, 12);
        assert_eq!(below, [Range::new(0, 12)]);
        assert_eq!(past, [Range::new(12, 3), Range::new(30, 1)]);
        let mut l = vec![];
        push_merged(&mut l, Range::new(0, 4));
        push_merged(&mut l, Range::new(4, 4));
        push_merged(&mut l, Range::new(9, 1));
        assert_eq!(l, [Range::new(0, 8), Range::new(9, 1)]);
    }

    #[test]
    fn damaged_range_lists_are_refused() {
        for bad in [&[][..], &[1], &[1, 0, 0], &[5, 0, 1], &[0xff; 11]] {
            assert!(decode_ranges(bad).is_err(), "{bad:?}");
        }
        let mut wire = Vec::new();
        encode_ranges(&[Range::new(u64::MAX - 1, 1)], &mut wire);
        assert!(decode_ranges(&wire).is_ok());
        let mut wire = Vec::new();
        encode_ranges(&[Range::new(u64::MAX, 1)], &mut wire);
        assert!(decode_ranges(&wire).is_err());
    }

    proptest! {
        #[test]
        fn ranges_round_trip(raw in prop::collection::vec((any::<u64>(), 1u64..1 << 40), 0..40)) {
            let ranges: Vec<Range> = raw
                .iter()
                .map(|&(o, l)| Range::new(o % (u64::MAX - l), l))
                .collect();
            let mut wire = Vec::new();
            encode_ranges(&ranges, &mut wire);
            wire.push(0xaa);
            let (back, rest) = decode_ranges(&wire).unwrap();
            prop_assert_eq!(back, ranges);
            prop_assert_eq!(rest, &[0xaa][..]);
        }

        #[test]
        fn pieces_tile_their_ranges(
            raw in prop::collection::vec((0u64..100_000, 1u64..30_000), 0..20),
            chunk in 1u64..10_000,
        ) {
            let ranges: Vec<Range> = raw.iter().map(|&(o, l)| Range::new(o, l)).collect();
            let got: Vec<Range> = pieces(&ranges, chunk).collect();
            prop_assert_eq!(got.len() as u64, piece_count(&ranges, chunk));
            let mut i = 0;
            for r in &ranges {
                let mut pos = r.offset;
                while pos < r.end() {
                    let p = got[i];
                    prop_assert_eq!(p.offset, pos);
                    prop_assert!(p.len > 0 && p.len <= chunk);
                    prop_assert_eq!(p.offset / chunk, (p.end() - 1) / chunk);
                    pos = p.end();
                    i += 1;
                }
                prop_assert_eq!(pos, r.end());
            }
        }
    }
}
