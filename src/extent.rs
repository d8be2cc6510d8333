//! Extent lists: sorted, disjoint byte ranges of a volume. They are the currency between change
//! sources (which produce them), senders (which read them) and stream writers.

use std::fmt;

/// What the destination must hold in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtentKind {
    /// The source's bytes in this range must be copied.
    Data,
    /// The source reads as zeros here (for example a thin block the origin discarded); no data
    /// needs to travel, the destination must read back zeros.
    Zero,
}

impl fmt::Display for ExtentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
        })
    }
}

/// A byte range `[offset, offset + len)` of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

impl Extent {
    pub fn data(offset: u64, len: u64) -> Self {
        Extent {
            offset,
            len,
            kind: ExtentKind::Data,
        }
    }

    pub fn zero(offset: u64, len: u64) -> Self {
        Extent {
            offset,
            len,
            kind: ExtentKind::Zero,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A sorted list of disjoint, non-empty extents in which no two adjacent extents of the same kind
/// touch (they are merged). Every constructor establishes that invariant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentList {
    extents: Vec<Extent>,
}

impl ExtentList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a list from extents in any order, possibly overlapping. Where a data extent and a
    /// zero extent overlap, data wins: sending real bytes is always correct.
    pub fn from_extents(input: impl IntoIterator<Item = Extent>) -> Self {
        let mut data = Vec::new();
        let mut zero = Vec::new();
        for e in input.into_iter().filter(|e| e.len > 0) {
            match e.kind {
                ExtentKind::Data => data.push((e.offset, e.end())),
                ExtentKind::Zero => zero.push((e.offset, e.end())),
            }
        }
        let data = union(data);
        let zero = subtract(&union(zero), &data);
        let mut extents: Vec<Extent> = data
            .into_iter()
            .map(|(s, e)| Extent::data(s, e - s))
            .chain(zero.into_iter().map(|(s, e)| Extent::zero(s, e - s)))
            .collect();
        extents.sort_unstable_by_key(|e| e.offset);
        ExtentList { extents }
    }

    /// Builds a data list from chunk indices (any order, duplicates allowed) of `chunk_bytes`
    /// each, clamped to `limit` bytes (the last chunk of a volume may be partial).
    pub fn from_chunks(
        chunks: impl IntoIterator<Item = u64>,
        chunk_bytes: u64,
        limit: u64,
    ) -> Self {
        let mut chunks: Vec<u64> = chunks.into_iter().collect();
        chunks.sort_unstable();
        chunks.dedup();
        let mut extents: Vec<Extent> = Vec::new();
        for c in chunks {
            let start = c.saturating_mul(chunk_bytes);
            if start >= limit {
                break;
            }
            let end = start.saturating_add(chunk_bytes).min(limit);
            match extents.last_mut() {
                Some(last) if last.end() == start => last.len = end - last.offset,
                _ => extents.push(Extent::data(start, end - start)),
            }
        }
        ExtentList { extents }
    }

    /// Drops everything at or past `size` bytes, cutting an extent that straddles it.
    pub fn clamp(&mut self, size: u64) {
        self.extents.retain(|e| e.offset < size);
        if let Some(last) = self.extents.last_mut() {
            if last.end() > size {
                last.len = size - last.offset;
            }
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Extent> {
        self.extents.iter()
    }

    pub fn as_slice(&self) -> &[Extent] {
        &self.extents
    }

    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes covered by extents of `kind`.
    pub fn bytes(&self, kind: ExtentKind) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.len)
            .sum()
    }

    /// Bytes covered by all extents.
    pub fn total_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// One past the last byte covered, or 0 for an empty list.
    pub fn end(&self) -> u64 {
        self.extents.last().map_or(0, Extent::end)
    }

    /// The extents cut into pieces of at most `max` bytes, in order (stream records and read
    /// buffers have a bounded size).
    pub fn pieces(&self, max: u64) -> impl Iterator<Item = Extent> + '_ {
        assert!(max > 0);
        self.extents.iter().flat_map(move |e| {
            let n = e.len.div_ceil(max);
            (0..n).map(move |i| {
                let off = e.offset + i * max;
                Extent {
                    offset: off,
                    len: (e.end() - off).min(max),
                    kind: e.kind,
                }
            })
        })
    }
}

impl<'a> IntoIterator for &'a ExtentList {
    type Item = &'a Extent;
    type IntoIter = std::slice::Iter<'a, Extent>;
    fn into_iter(self) -> Self::IntoIter {
        self.extents.iter()
    }
}

/// Union of half-open ranges: sorted, merged where they overlap or touch.
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b`, both sorted and merged.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunks_are_sorted_merged_and_clamped() {
        let l = ExtentList::from_chunks([5, 1, 2, 2, 9, 3], 4096, 9 * 4096 + 100);
        assert_eq!(
            l.as_slice(),
            &[
                Extent::data(4096, 3 * 4096),
                Extent::data(5 * 4096, 4096),
                Extent::data(9 * 4096, 100)
            ]
        );
    }

    #[test]
    fn data_wins_over_zero() {
        let l = ExtentList::from_extents([Extent::zero(0, 100), Extent::data(10, 20)]);
        assert_eq!(
            l.as_slice(),
            &[
                Extent::zero(0, 10),
                Extent::data(10, 20),
                Extent::zero(30, 70)
            ]
        );
    }

    #[test]
    fn pieces_split_long_extents() {
        let l = ExtentList::from_extents([Extent::data(0, 10), Extent::zero(20, 5)]);
        let p: Vec<_> = l.pieces(4).collect();
        assert_eq!(
            p,
            vec![
                Extent::data(0, 4),
                Extent::data(4, 4),
                Extent::data(8, 2),
                Extent::zero(20, 4),
                Extent::zero(24, 1)
            ]
        );
    }

    fn model(input: &[Extent], size: usize) -> Vec<Option<ExtentKind>> {
        let mut m = vec![None; size];
        for e in input {
            for slot in &mut m[e.offset as usize..e.end() as usize] {
                if *slot != Some(ExtentKind::Data) {
                    *slot = Some(e.kind);
                }
            }
        }
        m
    }

    proptest! {
        #[test]
        fn from_extents_matches_a_byte_model(
            raw in prop::collection::vec((0u64..200, 0u64..40, any::<bool>()), 0..30)
        ) {
            let input: Vec<Extent> = raw
                .iter()
                .map(|&(o, l, d)| if d { Extent::data(o, l) } else { Extent::zero(o, l) })
                .collect();
            let list = ExtentList::from_extents(input.clone());
            let got = model(list.as_slice(), 240);
            prop_assert_eq!(got, model(&input, 240));
            for w in list.as_slice().windows(2) {
                prop_assert!(w[0].end() <= w[1].offset);
                prop_assert!(w[0].end() < w[1].offset || w[0].kind != w[1].kind);
            }
            prop_assert!(list.iter().all(|e| e.len > 0));
        }
    }
}
