//! Which device reads fetch a run of data pieces: pieces separated by a small gap are read with
//! one read that covers the gap too, whose bytes are dropped. Scattered 4 KiB chunks cost a
//! system call, a context switch and a notification of the device per read; reading a few
//! unchanged KiB between two changed chunks is cheaper than a second read. The records sent do
//! not change.

use std::ops::Range;

use crate::extent::{Extent, ExtentKind};

/// Largest gap between two data pieces read through by default (see [`read_gap`]).
pub const DEFAULT_READ_GAP: u64 = 16 << 10;

/// The largest gap read through: `LVMSYNC_READ_GAP=BYTES` (0: every piece read on its own) for
/// measuring, [`DEFAULT_READ_GAP`] otherwise.
pub fn read_gap() -> u64 {
    std::env::var("LVMSYNC_READ_GAP")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_READ_GAP)
}

/// One read: `len` bytes from `offset`, covering the data pieces `pieces` (indices into the
/// pieces it was planned for) and the gaps between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub offset: u64,
    pub len: u64,
    pub pieces: Range<usize>,
}

/// Whether the data piece `next` joins a read of `start..end`: it follows the read by at most
/// `max_gap` bytes (and at least one: touching pieces were cut apart on purpose) and the read
/// stays within `max_len`.
pub fn joins(start: u64, end: u64, next: &Extent, max_gap: u64, max_len: u64) -> bool {
    next.kind == ExtentKind::Data
        && next.offset > end
        && next.offset - end <= max_gap
        && next.end() - start <= max_len
}

/// The reads of the data pieces of `pieces` (sorted, not overlapping): consecutive data pieces
/// are read together while each gap is at most `max_gap` and the read at most `max_len` bytes;
/// a zero piece ends a read. Aligned pieces give aligned reads.
pub fn plan_reads(pieces: &[Extent], max_gap: u64, max_len: u64) -> Vec<Read> {
    let mut reads: Vec<Read> = Vec::new();
    let mut open = false;
    for (i, p) in pieces.iter().enumerate() {
        if p.kind != ExtentKind::Data {
            open = false;
            continue;
        }
        match reads.last_mut() {
            Some(r) if open && joins(r.offset, r.offset + r.len, p, max_gap, max_len) => {
                r.len = p.end() - r.offset;
                r.pieces.end = i + 1;
            }
            _ => reads.push(Read {
                offset: p.offset,
                len: p.len,
                pieces: i..i + 1,
            }),
        }
        open = true;
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;
    const M: u64 = 1 << 20;

    fn read(offset: u64, len: u64, pieces: Range<usize>) -> Read {
        Read {
            offset,
            len,
            pieces,
        }
    }

    #[test]
    fn small_gaps_are_read_through_and_large_ones_are_not() {
        let pieces = [
            Extent::data(0, 4 * K),
            Extent::data(8 * K, 4 * K),   // gap 4 KiB: joins
            Extent::data(44 * K, 4 * K),  // gap 32 KiB: joins, at the limit
            Extent::data(84 * K, 4 * K),  // gap 36 KiB: a new read
            Extent::data(120 * K, 8 * K), // gap 32 KiB: joins
        ];
        assert_eq!(
            plan_reads(&pieces, 32 * K, M),
            vec![read(0, 48 * K, 0..3), read(84 * K, 44 * K, 3..5)]
        );
    }

    #[test]
    fn a_gap_of_zero_turns_coalescing_off() {
        let pieces = [Extent::data(0, 4 * K), Extent::data(8 * K, 4 * K)];
        assert_eq!(
            plan_reads(&pieces, 0, M),
            vec![read(0, 4 * K, 0..1), read(8 * K, 4 * K, 1..2)]
        );
    }

    #[test]
    fn touching_pieces_stay_apart() {
        // Pieces of one long range, cut at the largest record size.
        let pieces = [Extent::data(0, 16 * K), Extent::data(16 * K, 4 * K)];
        assert_eq!(
            plan_reads(&pieces, 32 * K, M),
            vec![read(0, 16 * K, 0..1), read(16 * K, 4 * K, 1..2)]
        );
    }

    #[test]
    fn a_read_never_exceeds_the_largest_read() {
        let pieces: Vec<Extent> = (0..64).map(|i| Extent::data(i * 32 * K, 16 * K)).collect();
        let reads = plan_reads(&pieces, 16 * K, 256 * K);
        // 8 pieces span 8 * 32 KiB - 16 KiB = 240 KiB; a 9th would reach 272 KiB.
        assert_eq!(reads.len(), 8);
        for (n, r) in reads.iter().enumerate() {
            assert_eq!(r.pieces, n * 8..n * 8 + 8);
            assert_eq!(r.len, 240 * K);
            assert!(r.len <= 256 * K);
        }
        // A piece of the largest size is read alone.
        let pieces = [Extent::data(0, 4 * K), Extent::data(8 * K, M)];
        assert_eq!(plan_reads(&pieces, 32 * K, M).len(), 2);
    }

    #[test]
    fn zero_pieces_are_not_read_and_end_a_read() {
        let pieces = [
            Extent::data(0, 4 * K),
            Extent::zero(8 * K, 4 * K),
            Extent::data(16 * K, 4 * K),
            Extent::data(24 * K, 4 * K),
        ];
        assert_eq!(
            plan_reads(&pieces, 32 * K, M),
            vec![read(0, 4 * K, 0..1), read(16 * K, 12 * K, 2..4)]
        );
    }

    #[test]
    fn aligned_pieces_give_aligned_reads() {
        let pieces: Vec<Extent> = (0..500u64)
            .map(|i| Extent::data((i * i * 7 % 997) * 4 * K + i * 64 * K, 4 * K * (i % 3 + 1)))
            .collect();
        let mut sorted = pieces.clone();
        sorted.sort_by_key(|p| p.offset);
        sorted.dedup_by(|b, a| b.offset < a.end());
        for r in plan_reads(&sorted, 32 * K, M) {
            assert_eq!(r.offset % (4 * K), 0);
            assert_eq!(r.len % (4 * K), 0);
            assert_eq!(r.offset, sorted[r.pieces.start].offset);
            assert_eq!(r.offset + r.len, sorted[r.pieces.end - 1].end());
        }
    }
}
