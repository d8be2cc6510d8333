//! Which bytes of a volume the records read so far cover, whatever their order: a snapback's
//! records may come in any order but never overlap (docs/stream-format.md, "Snapbacks"), and an
//! apply that keeps a snapback of a format 3 stream (Ruby lvmsync sends its records unsorted)
//! must find a record that overlaps an earlier one before it writes it.
//!
//! Memory stays bounded however many records there are. Every whole [`UNIT`] (4 KiB) of the
//! volume a record covers is one bit of a bitmap kept in pages of 4 KiB, each covering 128 MiB
//! of the volume: up to [`MEMORY_PAGES`] pages are held in memory (1 MiB, enough for a change
//! set spread over 32 GiB); beyond that every page goes to an unnamed temporary file (sparse,
//! at most 1/32768 of the volume, gone with the process even after `kill -9`), read and written
//! one page at a time. The parts of records that do not fill a whole unit (records that do not
//! start or end on a 4 KiB boundary, which neither LVM's chunks nor lvmsync's records do but a
//! hand-made stream may) are kept as merged byte ranges, about 40 bytes each, at most as many
//! as the owner allows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::blockdev::read_full_at;

/// Bytes of the volume one bit stands for.
pub const UNIT: u64 = 4096;
/// Bytes of one page of the bitmap.
const PAGE_BYTES: usize = 4096;
const UNITS_PER_PAGE: u64 = PAGE_BYTES as u64 * 8;
/// Pages held in memory before they all go to a temporary file.
pub const MEMORY_PAGES: usize = 256;

/// Why a range was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It overlaps a range taken before, from byte `at` of the volume on (the first byte both
    /// cover).
    Overlap { at: u64 },
    /// It would make more separate ranges not aligned to [`UNIT`] than the owner allows.
    TooManyUnaligned { max: usize },
}

/// The bytes covered so far (see the module doc).
pub struct Coverage {
    /// Bitmap pages by number, while they are held in memory.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Once there are too many to hold: the file they went to.
    spilled: Option<Spilled>,
    /// Where the temporary file is made (`None`: the system's temporary directory).
    dir: Option<PathBuf>,
    /// Parts of ranges that do not fill a whole unit: start -> end, merged where they touch.
    unaligned: BTreeMap<u64, u64>,
    max_unaligned: usize,
}

/// The bitmap in a temporary file, with the one page in use.
struct Spilled {
    file: File,
    page_no: u64,
    page: Box<[u8]>,
    dirty: bool,
}

/// A range cut into whole units and the parts that do not fill one.
struct Split {
    /// Units `[first, end)` covered whole.
    units: Option<(u64, u64)>,
    /// Byte ranges, each inside one unit.
    parts: [Option<(u64, u64)>; 2],
}

fn split(offset: u64, end: u64) -> Split {
    let first = offset.div_ceil(UNIT);
    let last = end / UNIT;
    if first < last {
        let head = (offset < first * UNIT).then_some((offset, first * UNIT));
        let tail = (last * UNIT < end).then_some((last * UNIT, end));
        return Split {
            units: Some((first, last)),
            parts: [head, tail],
        };
    }
    // No whole unit: inside one unit, or across one boundary.
    let boundary = (offset / UNIT + 1).checked_mul(UNIT).filter(|&b| b < end);
    let parts = match boundary {
        Some(b) => [Some((offset, b)), Some((b, end))],
        None => [Some((offset, end)), None],
    };
    Split { units: None, parts }
}

/// The first bit set among bits `[from, to)` of `page`.
fn first_set(page: &[u8], from: u64, to: u64) -> Option<u64> {
    let mut bit = from;
    while bit < to {
        let byte = page[(bit / 8) as usize];
        if bit % 8 == 0 && to - bit >= 8 {
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
        if bit % 8 == 0 && to - bit >= 8 {
            page[(bit / 8) as usize] = 0xff;
            bit += 8;
        } else {
            page[(bit / 8) as usize] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

impl Coverage {
    /// Nothing covered yet. A temporary file, if one is needed, is made in `dir` (`None`: the
    /// system's temporary directory); at most `max_unaligned` separate ranges not aligned to
    /// [`UNIT`] are taken.
    pub fn new(dir: Option<&Path>, max_unaligned: usize) -> Self {
        Coverage {
            pages: BTreeMap::new(),
            spilled: None,
            dir: dir.map(Path::to_owned),
            unaligned: BTreeMap::new(),
            max_unaligned,
        }
    }

    /// Takes `[offset, offset + len)` if it overlaps nothing taken before. A refused range is
    /// not taken (the coverage is then as before, but for [`Refusal::TooManyUnaligned`]).
    pub fn insert(&mut self, offset: u64, len: u64) -> io::Result<Result<(), Refusal>> {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            return Ok(Ok(()));
        };
        let split = split(offset, end);
        let mut overlap: Option<u64> = None;
        let mut note = |at: u64| overlap = Some(overlap.map_or(at, |o| o.min(at)));
        if let Some((first, last)) = split.units {
            if let Some(unit) = self.first_unit_set(first, last)? {
                note(unit * UNIT);
            }
            if let Some(at) = self.unaligned_overlap(first * UNIT, last * UNIT) {
                note(at);
            }
        }
        for (start, stop) in split.parts.into_iter().flatten() {
            if self
                .first_unit_set(start / UNIT, start / UNIT + 1)?
                .is_some()
            {
                note(start);
            }
            if let Some(at) = self.unaligned_overlap(start, stop) {
                note(at);
            }
        }
        if let Some(at) = overlap {
            return Ok(Err(Refusal::Overlap { at }));
        }
        if let Some((first, last)) = split.units {
            self.set_units(first, last)?;
        }
        for (start, stop) in split.parts.into_iter().flatten() {
            self.insert_unaligned(start, stop);
        }
        if self.unaligned.len() > self.max_unaligned {
            return Ok(Err(Refusal::TooManyUnaligned {
                max: self.max_unaligned,
            }));
        }
        Ok(Ok(()))
    }

    /// The first byte of `[start, stop)` that an unaligned part covers.
    fn unaligned_overlap(&self, start: u64, stop: u64) -> Option<u64> {
        if let Some((_, &end)) = self.unaligned.range(..=start).next_back() {
            if end > start {
                return Some(start);
            }
        }
        self.unaligned.range(start..stop).next().map(|(&s, _)| s)
    }

    fn insert_unaligned(&mut self, start: u64, stop: u64) {
        let (mut from, mut to) = (start, stop);
        if let Some((&s, &e)) = self.unaligned.range(..start).next_back() {
            if e == start {
                self.unaligned.remove(&s);
                from = s;
            }
        }
        if let Some(e) = self.unaligned.remove(&stop) {
            to = e;
        }
        self.unaligned.insert(from, to);
    }

    /// The first unit of `[first, last)` already covered whole.
    fn first_unit_set(&mut self, first: u64, last: u64) -> io::Result<Option<u64>> {
        let mut unit = first;
        while unit < last {
            let page_no = unit / UNITS_PER_PAGE;
            let page_end = last.min((page_no + 1) * UNITS_PER_PAGE);
            let base = page_no * UNITS_PER_PAGE;
            if let Some(page) = self.page(page_no, false)? {
                if let Some(bit) = first_set(page, unit - base, page_end - base) {
                    return Ok(Some(base + bit));
                }
            }
            unit = page_end;
        }
        Ok(None)
    }

    fn set_units(&mut self, first: u64, last: u64) -> io::Result<()> {
        let mut unit = first;
        while unit < last {
            let page_no = unit / UNITS_PER_PAGE;
            let page_end = last.min((page_no + 1) * UNITS_PER_PAGE);
            let base = page_no * UNITS_PER_PAGE;
            let page = self
                .page(page_no, true)?
                .expect("a page is made when asked");
            set_bits(page, unit - base, page_end - base);
            unit = page_end;
        }
        Ok(())
    }

    /// Bitmap page `page_no`: `None` if it has no bit set and `make` is false. With `make`, the
    /// page is made if needed and will be written back.
    fn page(&mut self, page_no: u64, make: bool) -> io::Result<Option<&mut [u8]>> {
        if self.spilled.is_none() {
            if make && !self.pages.contains_key(&page_no) {
                if self.pages.len() < MEMORY_PAGES {
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
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .display()
            .to_string();
        format!("{dir}: a temporary file holding which ranges the records cover")
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
        fn first_overlap(&self, offset: u64, len: u64) -> Option<u64> {
            (offset..offset + len)
                .find(|&b| self.0.range(..=b).next_back().is_some_and(|(_, &e)| e > b))
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
        let u = UNIT;
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
            ],
            dir.path(),
        );
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_a_byte_model(
            ranges in proptest::collection::vec((0u64..20 * UNIT, 1u64..3 * UNIT), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            check(&ranges, dir.path());
        }
    }

    /// Past the pages held in memory the bitmap lives in a file, and still finds every overlap:
    /// ranges 128 MiB apart (one page each), then one in every page again.
    #[test]
    fn spills_to_a_file_and_keeps_every_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut cov = Coverage::new(Some(dir.path()), 0);
        let step = UNITS_PER_PAGE * UNIT;
        let pages = MEMORY_PAGES as u64 + 40;
        for i in (0..pages).rev() {
            assert_eq!(cov.insert(i * step + UNIT, UNIT).unwrap(), Ok(()));
        }
        assert!(cov.spilled.is_some());
        for i in 0..pages {
            assert_eq!(
                cov.insert(i * step, 2 * UNIT).unwrap(),
                Err(Refusal::Overlap {
                    at: i * step + UNIT
                })
            );
            assert_eq!(cov.insert(i * step + 2 * UNIT, UNIT).unwrap(), Ok(()));
        }
        assert_eq!(
            cov.insert(7 * step + 3 * UNIT - 1, 2).unwrap(),
            Err(Refusal::Overlap {
                at: 7 * step + 3 * UNIT - 1
            })
        );
    }

    #[test]
    fn unaligned_parts_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut cov = Coverage::new(Some(dir.path()), 2);
        assert_eq!(cov.insert(10, 10).unwrap(), Ok(()));
        assert_eq!(cov.insert(20, 10).unwrap(), Ok(()));
        assert_eq!(cov.insert(UNIT + 1, 2 * UNIT).unwrap(), Ok(()));
        assert_eq!(
            cov.insert(5 * UNIT, 1).unwrap(),
            Err(Refusal::TooManyUnaligned { max: 2 })
        );
        // Aligned ranges cost no unaligned part.
        let mut cov = Coverage::new(Some(dir.path()), 0);
        for i in 0..1000 {
            assert_eq!(cov.insert(i * 3 * UNIT, 2 * UNIT).unwrap(), Ok(()));
        }
    }
}
