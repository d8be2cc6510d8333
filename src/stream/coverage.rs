//! Which bytes of a volume the records read so far cover, whatever their order: a snapback's
//! records may come in any order but never overlap (docs/stream-format.md, "Snapbacks"), and an
//! apply that keeps a snapback of a format 3 stream (Ruby lvmsync sends its records unsorted)
//! must find a record that overlaps an earlier one before it writes it.
//!
//! Memory stays bounded however many records there are. A record is cut into the whole
//! [`UNIT`]s (4 KiB) it covers, the whole [`SECTOR`]s (512 bytes) it covers of the units it
//! covers in part, and the bytes of the sectors it covers in part. Units and sectors are one bit
//! each of two bitmaps kept in pages of 4 KiB (a page of units covers 128 MiB of the volume, one
//! of sectors 16 MiB): up to [`MEMORY_PAGES`] pages of each are held in memory (1 MiB; the
//! units of a change set spread over 32 GiB), beyond that the pages go to an unnamed temporary
//! file (sparse, at most 1/32768 of the volume for units, gone with the process even after
//! `kill -9`), read and written one page at a time. Time and space go with the pages a record
//! covers in part, not with its length: pages it covers whole are one bit each of a coarser
//! bitmap of the same kind (a page of it covers 4 TiB; 8 pages of it in memory), and
//! a search for a set bit visits only the pages that have one (in the file: its data, not its
//! holes). So a snapback's one record over a petabyte, hand-made or not, costs a few pages.
//! The bytes of sectors covered in part, which
//! only hand-made streams have (LVM's chunks and volumes are multiples of 512 bytes), are kept
//! as merged byte ranges, about 40 bytes each, at most as many as the owner allows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::blockdev::read_full_at;

/// Bytes of the volume one bit of the first bitmap stands for.
pub const UNIT: u64 = 4096;
/// Bytes of the volume one bit of the second bitmap stands for.
pub const SECTOR: u64 = 512;
/// Bytes of one page of a bitmap.
const PAGE_BYTES: usize = 4096;
const BITS_PER_PAGE: u64 = PAGE_BYTES as u64 * 8;
/// Pages of each bitmap held in memory before they go to a temporary file.
pub const MEMORY_PAGES: usize = 256;
/// Pages of each coarser bitmap (of pages set whole) held in memory.
const COARSE_MEMORY_PAGES: usize = 8;

/// Why a range was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It overlaps a range taken before, from byte `at` of the volume on (the first byte both
    /// cover).
    Overlap { at: u64 },
    /// It would make more separate ranges not aligned to [`SECTOR`] than the owner allows.
    TooManyUnaligned { max: usize },
}

/// The bytes covered so far (see the module doc).
pub struct Coverage {
    /// Whole units.
    units: PagedBits,
    /// Whole sectors of units covered in part.
    sectors: PagedBits,
    /// Bytes of sectors covered in part: start -> end, merged where they touch.
    bytes: BTreeMap<u64, u64>,
    max_unaligned: usize,
}

/// A bitmap in pages, held in memory up to a number of them, then in a temporary file. Only
/// pages with a bit set exist (in the file: the rest is holes); pages set whole are one bit
/// each of a coarser bitmap of the same kind instead, so that the cost of a range grows with
/// the pages it covers in part, not with its length.
struct PagedBits {
    pages: BTreeMap<u64, Box<[u8]>>,
    memory_pages: usize,
    spilled: Option<Spilled>,
    /// Where the temporary file is made (`None`: the system's temporary directory).
    dir: Option<PathBuf>,
    /// The pages set whole: bit N is page N.
    whole: Option<Box<PagedBits>>,
}

/// A bitmap in a temporary file, with the one page in use.
struct Spilled {
    file: File,
    page_no: u64,
    page: Box<[u8]>,
    dirty: bool,
}

/// A range `[start, end)`.
type Span = (u64, u64);

/// `[offset, end)` cut into whole `unit`s (their numbers, `[first, last)`) and the parts at
/// either end that do not fill a unit, each inside one unit.
fn split(offset: u64, end: u64, unit: u64) -> (Option<Span>, [Option<Span>; 2]) {
    let first = offset.div_ceil(unit);
    let last = end / unit;
    if first < last {
        let head = (offset < first * unit).then_some((offset, first * unit));
        let tail = (last * unit < end).then_some((last * unit, end));
        return (Some((first, last)), [head, tail]);
    }
    // No whole unit: inside one unit, or across one boundary.
    let boundary = (offset / unit + 1).checked_mul(unit).filter(|&b| b < end);
    match boundary {
        Some(b) => (None, [Some((offset, b)), Some((b, end))]),
        None => (None, [Some((offset, end)), None]),
    }
}

/// The first bit set among bits `[from, to)` of `page`.
fn first_set(page: &[u8], from: u64, to: u64) -> Option<u64> {
    let mut bit = from;
    while bit < to {
        let byte = page[(bit / 8) as usize];
        if bit.is_multiple_of(8) && to - bit >= 8 {
            if byte != 0 {
                return Some(bit + u64::from(byte.trailing_zeros()));
            }
            bit += 8;
        } else {
            if byte & (1 << (bit % 8)) != 0 {
                return Some(bit);
            }
            bit += 1;
        }
    }
    None
}

fn set_bits(page: &mut [u8], from: u64, to: u64) {
    let mut bit = from;
    while bit < to {
        if bit.is_multiple_of(8) && to - bit >= 8 {
            page[(bit / 8) as usize] = 0xff;
            bit += 8;
        } else {
            page[(bit / 8) as usize] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

impl Coverage {
    /// Nothing covered yet. Temporary files, if needed, are made in `dir` (`None`: the system's
    /// temporary directory); at most `max_unaligned` separate ranges not aligned to [`SECTOR`]
    /// are taken.
    pub fn new(dir: Option<&Path>, max_unaligned: usize) -> Self {
        Coverage {
            units: PagedBits::new(dir, MEMORY_PAGES),
            sectors: PagedBits::new(dir, MEMORY_PAGES),
            bytes: BTreeMap::new(),
            max_unaligned,
        }
    }

    /// Takes `[offset, offset + len)` if it overlaps nothing taken before. A refused overlap is
    /// not taken; after [`Refusal::TooManyUnaligned`] the range is taken all the same.
    pub fn insert(&mut self, offset: u64, len: u64) -> io::Result<Result<(), Refusal>> {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            return Ok(Ok(()));
        };
        // Whole units; whole sectors (each range inside one unit); bytes (inside one sector).
        let (units, unit_parts) = split(offset, end, UNIT);
        let mut sectors = Vec::with_capacity(2);
        let mut bytes = Vec::with_capacity(4);
        for (start, stop) in unit_parts.into_iter().flatten() {
            let (whole, parts) = split(start, stop, SECTOR);
            sectors.extend(whole);
            bytes.extend(parts.into_iter().flatten());
        }
        let mut overlap: Option<u64> = None;
        let mut note = |at: u64| overlap = Some(overlap.map_or(at, |o| o.min(at)));
        if let Some((first, last)) = units {
            if let Some(unit) = self.units.first_set(first, last)? {
                note(unit * UNIT);
            }
            let per_unit = UNIT / SECTOR;
            if let Some(sector) = self.sectors.first_set(first * per_unit, last * per_unit)? {
                note(sector * SECTOR);
            }
            if let Some(at) = self.bytes_overlap(first * UNIT, last * UNIT) {
                note(at);
            }
        }
        for &(first, last) in &sectors {
            let start = first * SECTOR;
            if self
                .units
                .first_set(start / UNIT, start / UNIT + 1)?
                .is_some()
            {
                note(start);
            }
            if let Some(sector) = self.sectors.first_set(first, last)? {
                note(sector * SECTOR);
            }
            if let Some(at) = self.bytes_overlap(start, last * SECTOR) {
                note(at);
            }
        }
        for &(start, stop) in &bytes {
            let covered_whole = self
                .units
                .first_set(start / UNIT, start / UNIT + 1)?
                .is_some()
                || self
                    .sectors
                    .first_set(start / SECTOR, start / SECTOR + 1)?
                    .is_some();
            if covered_whole {
                note(start);
            }
            if let Some(at) = self.bytes_overlap(start, stop) {
                note(at);
            }
        }
        if let Some(at) = overlap {
            return Ok(Err(Refusal::Overlap { at }));
        }
        if let Some((first, last)) = units {
            self.units.set(first, last)?;
        }
        for (first, last) in sectors {
            self.sectors.set(first, last)?;
        }
        for (start, stop) in bytes {
            self.insert_bytes(start, stop);
        }
        if self.bytes.len() > self.max_unaligned {
            return Ok(Err(Refusal::TooManyUnaligned {
                max: self.max_unaligned,
            }));
        }
        Ok(Ok(()))
    }

    /// The first byte of `[start, stop)` in a range of `bytes`.
    fn bytes_overlap(&self, start: u64, stop: u64) -> Option<u64> {
        if let Some((_, &end)) = self.bytes.range(..=start).next_back() {
            if end > start {
                return Some(start);
            }
        }
        self.bytes.range(start..stop).next().map(|(&s, _)| s)
    }

    fn insert_bytes(&mut self, start: u64, stop: u64) {
        let (mut from, mut to) = (start, stop);
        if let Some((&s, &e)) = self.bytes.range(..start).next_back() {
            if e == start {
                self.bytes.remove(&s);
                from = s;
            }
        }
        if let Some(e) = self.bytes.remove(&stop) {
            to = e;
        }
        self.bytes.insert(from, to);
    }
}

impl PagedBits {
    fn new(dir: Option<&Path>, memory_pages: usize) -> Self {
        PagedBits {
            pages: BTreeMap::new(),
            memory_pages,
            spilled: None,
            dir: dir.map(Path::to_owned),
            whole: None,
        }
    }

    /// The first bit set among bits `[first, last)`.
    fn first_set(&mut self, first: u64, last: u64) -> io::Result<Option<u64>> {
        if first >= last {
            return Ok(None);
        }
        let in_whole = match self.whole.as_mut() {
            Some(whole) => whole
                .first_set(first / BITS_PER_PAGE, (last - 1) / BITS_PER_PAGE + 1)?
                .map(|page_no| first.max(page_no * BITS_PER_PAGE)),
            None => None,
        };
        // Only a bit before that one matters, and only pages that exist can hold it.
        let last = in_whole.unwrap_or(last);
        let mut bit = first;
        while bit < last {
            let Some(page_no) = self.next_page(bit / BITS_PER_PAGE)? else {
                break;
            };
            let base = page_no * BITS_PER_PAGE;
            if base >= last {
                break;
            }
            let from = bit.max(base);
            let page_end = last.min(base + BITS_PER_PAGE);
            if let Some(page) = self.page(page_no, false)? {
                if let Some(found) = first_set(page, from - base, page_end - base) {
                    return Ok(Some(base + found));
                }
            }
            bit = page_end;
        }
        Ok(in_whole)
    }

    /// The first page from `page_no` on that may have a bit set.
    fn next_page(&mut self, page_no: u64) -> io::Result<Option<u64>> {
        let context = self.context();
        let Some(spilled) = self.spilled.as_mut() else {
            return Ok(self.pages.range(page_no..).next().map(|(&n, _)| n));
        };
        // The file's data is its pages with a bit set; the rest is holes.
        spilled.write_back().map_err(|e| describe(&context, e))?;
        let offset = page_no * PAGE_BYTES as u64;
        Ok(
            match rustix::fs::seek(&spilled.file, rustix::fs::SeekFrom::Data(offset)) {
                Ok(data) => Some(data.max(offset) / PAGE_BYTES as u64),
                Err(rustix::io::Errno::NXIO) => None,
                // A file system that cannot tell: every page may have one.
                Err(_) => Some(page_no),
            },
        )
    }

    /// Sets bits `[first, last)`.
    fn set(&mut self, first: u64, last: u64) -> io::Result<()> {
        let mut bit = first;
        while bit < last {
            let page_no = bit / BITS_PER_PAGE;
            let base = page_no * BITS_PER_PAGE;
            if bit == base && last - base >= BITS_PER_PAGE {
                let pages = (last - base) / BITS_PER_PAGE;
                self.whole().set(page_no, page_no + pages)?;
                bit = base + pages * BITS_PER_PAGE;
                continue;
            }
            let page_end = last.min(base + BITS_PER_PAGE);
            let page = self
                .page(page_no, true)?
                .expect("a page is made when asked");
            set_bits(page, bit - base, page_end - base);
            bit = page_end;
        }
        Ok(())
    }

    /// The bitmap of the pages set whole, made when first needed.
    fn whole(&mut self) -> &mut PagedBits {
        let dir = self.dir.clone();
        self.whole
            .get_or_insert_with(|| Box::new(PagedBits::new(dir.as_deref(), COARSE_MEMORY_PAGES)))
    }

    /// Page `page_no`: `None` if it has no bit set and `make` is false. With `make`, the page is
    /// made if needed and will be written back.
    fn page(&mut self, page_no: u64, make: bool) -> io::Result<Option<&mut [u8]>> {
        if self.spilled.is_none() {
            if make && !self.pages.contains_key(&page_no) {
                if self.pages.len() < self.memory_pages {
                    self.pages
                        .insert(page_no, vec![0u8; PAGE_BYTES].into_boxed_slice());
                } else {
                    self.spill()?;
                }
            }
            if self.spilled.is_none() {
                return Ok(self.pages.get_mut(&page_no).map(|p| &mut p[..]));
            }
        }
        let context = self.context();
        let spilled = self.spilled.as_mut().expect("spilled above");
        if spilled.page_no != page_no {
            spilled.write_back().map_err(|e| describe(&context, e))?;
            let got = read_full_at(
                &spilled.file,
                &mut spilled.page,
                page_no * PAGE_BYTES as u64,
            )
            .map_err(|e| describe(&context, e))?;
            spilled.page[got..].fill(0);
            spilled.page_no = page_no;
        }
        spilled.dirty |= make;
        Ok(Some(&mut spilled.page[..]))
    }

    /// Moves every page held in memory to a new temporary file.
    fn spill(&mut self) -> io::Result<()> {
        let context = self.context();
        let made = match &self.dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        };
        let file = made.map_err(|e| describe(&context, e))?;
        for (&page_no, page) in &self.pages {
            file.write_all_at(page, page_no * PAGE_BYTES as u64)
                .map_err(|e| describe(&context, e))?;
        }
        self.pages.clear();
        self.spilled = Some(Spilled {
            file,
            // No page loaded yet.
            page_no: u64::MAX,
            page: vec![0u8; PAGE_BYTES].into_boxed_slice(),
            dirty: false,
        });
        Ok(())
    }

    fn context(&self) -> String {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        format!(
            "{}: a temporary file holding which ranges the records cover",
            dir.display()
        )
    }
}

fn describe(context: &str, e: io::Error) -> io::Error {
    crate::error::describe(context.to_owned(), e)
}

impl Spilled {
    fn write_back(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file
                .write_all_at(&self.page, self.page_no * PAGE_BYTES as u64)?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same ranges, checked one byte at a time.
    #[derive(Default)]
    struct Model(BTreeMap<u64, u64>);

    impl Model {
        /// The first byte of `[offset, offset + len)` that a range holds.
        fn first_overlap(&self, offset: u64, len: u64) -> Option<u64> {
            self.0
                .iter()
                .filter(|&(&start, &end)| start < offset + len && end > offset)
                .map(|(&start, _)| start.max(offset))
                .min()
        }
        fn insert(&mut self, offset: u64, len: u64) {
            self.0.insert(offset, offset + len);
        }
    }

    fn check(ranges: &[(u64, u64)], dir: &Path) {
        let mut cov = Coverage::new(Some(dir), usize::MAX);
        let mut model = Model::default();
        for &(offset, len) in ranges {
            let want = match model.first_overlap(offset, len) {
                Some(at) => Err(Refusal::Overlap { at }),
                None => Ok(()),
            };
            assert_eq!(cov.insert(offset, len).unwrap(), want, "{offset}+{len}");
            if want.is_ok() {
                model.insert(offset, len);
            }
        }
    }

    #[test]
    fn overlaps_are_found_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let (u, s) = (UNIT, SECTOR);
        check(
            &[
                (8 * u, 2 * u),
                (0, u),
                (9 * u, u),
                (10 * u, 1),
                (10 * u + 1, 100),
                (10 * u + 50, 10),
                (3 * u - 1, 2),
                (3 * u - 1, 1),
                (2 * u, u - 1),
                (2 * u + 5, u),
                (5 * u + 7, 3 * u),
                (4 * u, 2 * u),
                (u, u),
                (11 * u - 3, 3 * u),
                (10 * u + 101, u - 101),
                (20 * u + s, 2 * s),
                (20 * u, 4 * s),
                (20 * u + 3 * s, s),
                (20 * u + 2 * s, s),
                (20 * u, 2 * u),
                (21 * u + s + 3, 10),
                (21 * u, 2 * s),
            ],
            dir.path(),
        );
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_a_byte_model(
            ranges in proptest::collection::vec((0u64..6 * UNIT, 1u64..2 * UNIT), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            check(&ranges, dir.path());
        }

        /// Ranges of whole pages and parts of pages (a page of units covers 128 MiB).
        #[test]
        fn agrees_with_a_byte_model_across_pages(
            ranges in proptest::collection::vec((0u64..6 * PAGE_SPAN, 1u64..3 * PAGE_SPAN), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            check(&ranges, dir.path());
        }

        #[test]
        fn agrees_with_a_byte_model_in_sectors(
            ranges in proptest::collection::vec((0u64..48, 1u64..20), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ranges: Vec<_> = ranges.iter().map(|&(o, l)| (o * SECTOR, l * SECTOR)).collect();
            check(&ranges, dir.path());
        }
    }

    /// Past the pages held in memory the bitmaps live in files, and still find every overlap:
    /// ranges 128 MiB apart (one page of units each), then one in every page again; the same
    /// for sectors.
    #[test]
    fn spills_to_a_file_and_keeps_every_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut cov = Coverage::new(Some(dir.path()), 0);
        let step = BITS_PER_PAGE * UNIT;
        let pages = MEMORY_PAGES as u64 + 40;
        for i in (0..pages).rev() {
            assert_eq!(cov.insert(i * step + UNIT, UNIT).unwrap(), Ok(()));
            assert_eq!(
                cov.insert(i * step + 8 * UNIT + SECTOR, SECTOR).unwrap(),
                Ok(())
            );
        }
        assert!(cov.units.spilled.is_some() && cov.sectors.spilled.is_some());
        for i in 0..pages {
            assert_eq!(
                cov.insert(i * step, 2 * UNIT).unwrap(),
                Err(Refusal::Overlap {
                    at: i * step + UNIT
                })
            );
            assert_eq!(cov.insert(i * step + 2 * UNIT, UNIT).unwrap(), Ok(()));
            assert_eq!(
                cov.insert(i * step + 7 * UNIT, 2 * UNIT).unwrap(),
                Err(Refusal::Overlap {
                    at: i * step + 8 * UNIT + SECTOR
                })
            );
            assert_eq!(cov.insert(i * step + 8 * UNIT, SECTOR).unwrap(), Ok(()));
        }
        assert_eq!(
            cov.insert(7 * step + 3 * UNIT - 1, 2).unwrap(),
            Err(Refusal::Overlap {
                at: 7 * step + 3 * UNIT - 1
            })
        );
    }

    /// Bytes of the volume one page of units covers.
    const PAGE_SPAN: u64 = BITS_PER_PAGE * UNIT;

    /// Bytes of the bitmap files on disk.
    fn spilled_bytes(bits: &PagedBits) -> u64 {
        use std::os::unix::fs::MetadataExt;
        bits.spilled
            .as_ref()
            .map_or(0, |s| s.file.metadata().unwrap().blocks() * 512)
    }

    /// A range over whole pages of the bitmap costs one bit per page in a coarser bitmap, not
    /// the pages: a hand-made snapback's one record over an exabyte is checked in a moment and
    /// a few pages, in memory and once the bitmap is in a file; overlaps are found all the same.
    #[test]
    fn whole_pages_cost_one_bit_each() {
        let dir = tempfile::tempdir().unwrap();
        for spilled in [false, true] {
            let mut cov = Coverage::new(Some(dir.path()), usize::MAX);
            if spilled {
                for i in 0..=MEMORY_PAGES as u64 {
                    assert_eq!(cov.insert((1 << 55) + i * PAGE_SPAN, UNIT).unwrap(), Ok(()));
                }
                assert!(cov.units.spilled.is_some());
            }
            let before = (cov.units.pages.len(), spilled_bytes(&cov.units));
            // 1 TiB (8192 pages of units), from one unit past a page boundary.
            let (start, len) = (8 * PAGE_SPAN + UNIT, 1 << 40);
            let end = start + len;
            assert_eq!(cov.insert(start, len).unwrap(), Ok(()));
            assert_eq!(cov.units.spilled.is_some(), spilled, "spilled: {spilled}");
            assert!(
                cov.units.pages.len() <= before.0 + 2,
                "{} pages in memory",
                cov.units.pages.len()
            );
            assert!(
                spilled_bytes(&cov.units) <= before.1 + 2 * PAGE_BYTES as u64,
                "{} bytes on disk",
                spilled_bytes(&cov.units)
            );
            let overlap = |at| Err(Refusal::Overlap { at });
            assert_eq!(cov.insert(start - UNIT, UNIT).unwrap(), Ok(()));
            assert_eq!(cov.insert(start - 1, 2).unwrap(), overlap(start - 1));
            assert_eq!(
                cov.insert(start + len / 2 + 3, 1).unwrap(),
                overlap(start + len / 2 + 3)
            );
            assert_eq!(
                cov.insert(end - UNIT, 2 * UNIT).unwrap(),
                overlap(end - UNIT)
            );
            assert_eq!(cov.insert(end, UNIT).unwrap(), Ok(()));
            assert_eq!(cov.insert(0, 1 << 50).unwrap(), overlap(start - UNIT));
            // An exabyte, and overlaps at either end and inside.
            let (start, len) = (1 << 56, 1 << 60);
            assert_eq!(cov.insert(start, len).unwrap(), Ok(()));
            assert_eq!(
                cov.insert(start + len - 1, 10).unwrap(),
                overlap(start + len - 1)
            );
            assert_eq!(
                cov.insert(start + (1 << 59) + 7, 1).unwrap(),
                overlap(start + (1 << 59) + 7)
            );
            assert_eq!(cov.insert(start - SECTOR, SECTOR).unwrap(), Ok(()));
            assert_eq!(
                cov.insert(start - SECTOR, 2 * SECTOR).unwrap(),
                overlap(start - SECTOR)
            );
            assert!(cov.units.pages.len() <= before.0 + 6);
            assert!(spilled_bytes(&cov.units) <= before.1 + 8 * PAGE_BYTES as u64);
        }
    }

    #[test]
    fn unaligned_parts_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut cov = Coverage::new(Some(dir.path()), 3);
        // Merged: one range.
        assert_eq!(cov.insert(10, 10).unwrap(), Ok(()));
        assert_eq!(cov.insert(20, 10).unwrap(), Ok(()));
        // A head and a tail not aligned to sectors: two more.
        assert_eq!(cov.insert(UNIT + 1, 2 * UNIT).unwrap(), Ok(()));
        assert_eq!(
            cov.insert(5 * UNIT, 1).unwrap(),
            Err(Refusal::TooManyUnaligned { max: 3 })
        );
        // Ranges aligned to sectors cost no unaligned part, however many.
        let mut cov = Coverage::new(Some(dir.path()), 0);
        for i in 0..100_000 {
            assert_eq!(cov.insert(i * 3 * SECTOR, 2 * SECTOR).unwrap(), Ok(()));
        }
    }
}
