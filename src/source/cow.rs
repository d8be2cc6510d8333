//! The dm-snapshot persistent exception store (the `-cow` device of a classic snapshot).
//!
//! On-disk layout (the kernel's dm-snap-persistent), all little-endian, addressed in chunks of
//! `chunk_size` 512-byte sectors:
//! - chunk 0 is the header: u32 magic `0x70416e53`, u32 valid, u32 version (1), u32 chunk_size;
//! - metadata areas of `chunk_bytes / 16` exceptions `(old_chunk u64, new_chunk u64)`; area `i`
//!   sits at chunk `1 + i * (exceptions_per_area + 1)`, followed by the data chunks it describes;
//! - the table ends at the first exception whose `new_chunk` is 0 (chunk 0 is the header, so no
//!   real exception points there); a full area continues in the next one, and the device may end
//!   right after a full area.
//!
//! `old_chunk` is the chunk of the origin whose original content was saved: exactly the chunks
//! written since the snapshot was taken.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::blockdev::{read_full_at, AlignedBuf, Device};
use crate::error::{Error, IoContext, Result};
use crate::extent::ExtentList;
use crate::parallel;
use crate::source::ChangeSet;

pub const SNAP_MAGIC: u32 = 0x7041_6e53;
pub const SNAPSHOT_DISK_VERSION: u32 = 1;
const EXCEPTION_BYTES: u64 = 16;
/// The kernel caps chunks at 512 KiB (1024 sectors); anything above is not a real store.
const MAX_CHUNK_BYTES: u64 = 512 << 10;
/// Metadata-area reads in flight while listing a large table.
const AREA_READS_IN_FLIGHT: usize = 16;

/// The header in chunk 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowHeader {
    pub magic: u32,
    pub valid: u32,
    pub version: u32,
    pub chunk_sectors: u32,
}

impl CowHeader {
    pub fn parse(b: &[u8; 16]) -> Self {
        let word = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        CowHeader {
            magic: word(0),
            valid: word(1),
            version: word(2),
            chunk_sectors: word(3),
        }
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.chunk_sectors) * 512
    }

    /// Refuses anything but a valid, initialised, version-1 store with a sane chunk size.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.magic == 0 {
            return Err("exception store was never initialised (magic is 0)".into());
        }
        if self.magic != SNAP_MAGIC {
            return Err(format!(
                "not a dm-snapshot exception store (magic {:#010x}, expected {:#010x})",
                self.magic, SNAP_MAGIC
            ));
        }
        if self.valid == 0 {
            return Err(
                "snapshot is invalid (it overflowed or was dropped): its change list is incomplete"
                    .into(),
            );
        }
        if self.version != SNAPSHOT_DISK_VERSION {
            return Err(format!(
                "unsupported exception store version {}",
                self.version
            ));
        }
        let cb = self.chunk_bytes();
        if cb < 512 || !cb.is_power_of_two() || cb > MAX_CHUNK_BYTES {
            return Err(format!(
                "implausible chunk size of {} sectors",
                self.chunk_sectors
            ));
        }
        Ok(())
    }
}

/// A readable exception store.
pub struct ExceptionStore {
    path: PathBuf,
    dev: Device,
    header: CowHeader,
}

impl ExceptionStore {
    /// Opens a store (block device or image) and validates its header. Block devices are read
    /// with O_DIRECT so the table is what the kernel wrote, not a stale cache.
    pub fn open(path: &Path) -> Result<Self> {
        let dev = Device::open_read_uncached(path)?;
        let mut buf = AlignedBuf::new(4096);
        let n = read_full_at(&dev.file, buf.as_mut_slice(), 0)
            .ctx(|| format!("{}: cannot read the exception store header", path.display()))?;
        if n < 16 {
            return Err(cow_err(path, "too short to hold an exception store header"));
        }
        let header = CowHeader::parse(buf.as_slice()[..16].try_into().unwrap());
        header.validate().map_err(|m| cow_err(path, m))?;
        // Metadata areas are small reads far apart: reading ahead would only fetch data chunks
        // (a no-op for O_DIRECT).
        let _ = rustix::fs::fadvise(&dev.file, 0, None, rustix::fs::Advice::Random);
        Ok(ExceptionStore {
            path: path.to_owned(),
            dev,
            header,
        })
    }

    pub fn header(&self) -> CowHeader {
        self.header
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.header.chunk_bytes()
    }

    /// The origin chunk of every exception, in table order (not sorted).
    pub fn old_chunks(&self) -> Result<Vec<u64>> {
        Ok(self.exceptions()?.into_iter().map(|(old, _)| old).collect())
    }

    /// Every exception, `(origin chunk, store chunk holding its old contents)`, in table order.
    ///
    /// Metadata areas are one chunk each, a data area apart: one small read per area. A large
    /// table means thousands of them, so up to [`AREA_READS_IN_FLIGHT`] are read at once (a
    /// little past the end of the table at most), and parsed in order
    /// ([`parallel::in_order`]).
    pub fn exceptions(&self) -> Result<Vec<(u64, u64)>> {
        let cb = self.chunk_bytes();
        let per_area = cb / EXCEPTION_BYTES;
        let store_chunks = self.dev.size / cb;
        // Areas that start inside the device.
        let areas = store_chunks.saturating_sub(1).div_ceil(per_area + 1);
        if areas == 0 {
            return Err(cow_err(&self.path, "no metadata area after the header"));
        }
        let threads = AREA_READS_IN_FLIGHT.min(areas as usize);
        let mut chunks = Vec::new();
        parallel::in_order(
            areas as usize,
            threads,
            (0..threads * 2).map(|_| AlignedBuf::new(cb as usize)),
            |area, buf| self.read_area(area as u64, cb, per_area, buf),
            |area, buf| {
                let full =
                    self.parse_area(area as u64, buf.as_slice(), store_chunks, &mut chunks)?;
                // The table ends in the first area that is not full, or with the device.
                Ok(match full {
                    true => ControlFlow::Continue(()),
                    false => ControlFlow::Break(()),
                })
            },
        )?;
        Ok(chunks)
    }

    fn read_area(&self, area: u64, cb: u64, per_area: u64, buf: &mut AlignedBuf) -> Result<()> {
        let chunk = 1 + area * (per_area + 1);
        let n = read_full_at(&self.dev.file, buf.as_mut_slice(), chunk * cb)
            .ctx(|| format!("{}: cannot read metadata area {area}", self.path.display()))?;
        if (n as u64) < cb {
            return Err(cow_err(
                &self.path,
                format!("metadata area {area} is cut short ({n} of {cb} bytes)"),
            ));
        }
        Ok(())
    }

    /// Appends an area's exceptions to `out`; returns whether the area was full.
    fn parse_area(
        &self,
        area: u64,
        bytes: &[u8],
        store_chunks: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<bool> {
        for e in bytes.chunks_exact(EXCEPTION_BYTES as usize) {
            let old = u64::from_le_bytes(e[..8].try_into().unwrap());
            let new = u64::from_le_bytes(e[8..].try_into().unwrap());
            if new == 0 {
                return Ok(false);
            }
            if new >= store_chunks {
                return Err(cow_err(
                    &self.path,
                    format!(
                        "metadata area {area}: exception points at chunk {new}, past the end of the store ({store_chunks} chunks)"
                    ),
                ));
            }
            out.push((old, new));
        }
        Ok(true)
    }

    /// The snapshot's contents of chunk-aligned ranges, read from the chunks the store saved.
    /// Reading a range that holds a chunk without an exception is an error (nothing would tell
    /// its snapshot contents apart from the origin's).
    pub fn snapshot_reader(&self) -> Result<SnapshotChunks<'_>> {
        let mut map: Vec<(u64, u64)> = self.exceptions()?;
        map.sort_unstable();
        // The table is read with O_DIRECT; chunks go through the page cache into any buffer.
        let data = Device::open_read(&self.path)?;
        Ok(SnapshotChunks {
            store: self,
            data,
            map,
        })
    }

    /// The changed ranges of an origin of `origin_bytes`. An exception beyond the origin means
    /// the store and the origin do not belong together.
    pub fn changes(&self, origin_bytes: u64) -> Result<ChangeSet> {
        let cb = self.chunk_bytes();
        let chunks = self.old_chunks()?;
        if let Some(&beyond) = chunks
            .iter()
            .find(|&&c| c.checked_mul(cb).is_none_or(|b| b >= origin_bytes))
        {
            return Err(cow_err(
                &self.path,
                format!(
                    "exception for origin chunk {beyond} lies beyond the origin's {origin_bytes} bytes: this store does not belong to that origin"
                ),
            ));
        }
        Ok(ChangeSet {
            extents: ExtentList::from_chunks(chunks, cb, origin_bytes),
            chunk_bytes: cb,
            volume_bytes: origin_bytes,
        })
    }
}

/// Reads a classic snapshot's contents of changed ranges from its exception store.
pub struct SnapshotChunks<'a> {
    store: &'a ExceptionStore,
    data: Device,
    /// `(origin chunk, store chunk)`, sorted by origin chunk.
    map: Vec<(u64, u64)>,
}

impl SnapshotChunks<'_> {
    /// Fills `buf` with the snapshot's contents at `offset` of the volume.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cb = self.store.chunk_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let chunk = at / cb;
            let within = at % cb;
            let n = ((cb - within) as usize).min(buf.len() - done);
            let new = match self.map.binary_search_by_key(&chunk, |&(old, _)| old) {
                Ok(i) => self.map[i].1,
                Err(_) => {
                    return Err(cow_err(
                        &self.store.path,
                        format!("no exception for origin chunk {chunk}: its snapshot contents are not in the store"),
                    ))
                }
            };
            let dst = &mut buf[done..done + n];
            let got = read_full_at(&self.data.file, dst, new * cb + within).ctx(|| {
                format!(
                    "{}: cannot read saved chunk {new}",
                    self.store.path.display()
                )
            })?;
            if got != n {
                return Err(cow_err(
                    &self.store.path,
                    format!("saved chunk {new} is cut short"),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

fn cow_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Cow {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Writes a store in the kernel's format: used to build test and benchmark stores without
/// device-mapper. Data chunks hold zeros (lvmsync never reads them).
pub struct StoreWriter {
    pub chunk_bytes: u64,
    pub valid: bool,
}

impl StoreWriter {
    /// Writes the header and the table for `old_chunks` (in that order) to a new file at `path`,
    /// sized like a kernel store holding them plus `spare_chunks` free chunks.
    pub fn write(&self, path: &Path, old_chunks: &[u64], spare_chunks: u64) -> Result<()> {
        let cb = self.chunk_bytes;
        let per_area = cb / EXCEPTION_BYTES;
        let areas = (old_chunks.len() as u64 / per_area) + 1;
        let total_chunks = 1 + areas * (per_area + 1) + spare_chunks;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .ctx(|| format!("{}: cannot create", path.display()))?;
        f.set_len(total_chunks * cb)
            .ctx(|| format!("{}: cannot size", path.display()))?;
        let mut header = vec![0u8; cb as usize];
        header[0..4].copy_from_slice(&SNAP_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&u32::from(self.valid).to_le_bytes());
        header[8..12].copy_from_slice(&SNAPSHOT_DISK_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&((cb / 512) as u32).to_le_bytes());
        f.write_all(&header)
            .ctx(|| format!("{}: cannot write", path.display()))?;
        use std::os::unix::fs::FileExt;
        let mut area = vec![0u8; cb as usize];
        for (a, group) in old_chunks.chunks(per_area as usize).enumerate() {
            area.fill(0);
            let first = 1 + a as u64 * (per_area + 1);
            for (i, &old) in group.iter().enumerate() {
                let new = first + 1 + i as u64;
                area[i * 16..i * 16 + 8].copy_from_slice(&old.to_le_bytes());
                area[i * 16 + 8..i * 16 + 16].copy_from_slice(&new.to_le_bytes());
            }
            f.write_all_at(&area, first * cb)
                .ctx(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::Extent;

    fn store(dir: &Path, name: &str, cb: u64, chunks: &[u64], valid: bool) -> PathBuf {
        let p = dir.join(name);
        StoreWriter {
            chunk_bytes: cb,
            valid,
        }
        .write(&p, chunks, 0)
        .unwrap();
        p
    }

    #[test]
    fn reads_a_table_spanning_areas_ending_on_a_full_area() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB chunks: 256 exceptions per area; exactly two full areas and nothing after.
        let chunks: Vec<u64> = (0..512).rev().map(|c| c * 3).collect();
        let p = dir.path().join("full");
        StoreWriter {
            chunk_bytes: 4096,
            valid: true,
        }
        .write(&p, &chunks, 0)
        .unwrap();
        // Cut the file right after the second area (drop the zeroed third area).
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len((1 + 2 * 257) * 4096).unwrap();
        let s = ExceptionStore::open(&p).unwrap();
        assert_eq!(s.old_chunks().unwrap(), chunks);
    }

    #[test]
    fn changes_are_sorted_merged_and_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let p = store(dir.path(), "s", 4096, &[7, 2, 3, 9], true);
        let s = ExceptionStore::open(&p).unwrap();
        let c = s.changes(9 * 4096 + 10).unwrap();
        assert_eq!(
            c.extents.as_slice(),
            &[
                Extent::data(2 * 4096, 2 * 4096),
                Extent::data(7 * 4096, 4096),
                Extent::data(9 * 4096, 10)
            ]
        );
        assert!(
            s.changes(9 * 4096).is_err(),
            "chunk 9 is beyond a 9-chunk origin"
        );
    }

    #[test]
    fn refuses_invalid_garbage_and_uninitialised_stores() {
        let dir = tempfile::tempdir().unwrap();
        let p = store(dir.path(), "inv", 4096, &[1], false);
        let e = ExceptionStore::open(&p).err().unwrap().to_string();
        assert!(e.contains("invalid"), "{e}");

        let g = dir.path().join("garbage");
        std::fs::write(&g, vec![0x5au8; 65536]).unwrap();
        let e = ExceptionStore::open(&g).err().unwrap().to_string();
        assert!(e.contains("magic"), "{e}");

        let z = dir.path().join("zero");
        std::fs::write(&z, vec![0u8; 65536]).unwrap();
        let e = ExceptionStore::open(&z).err().unwrap().to_string();
        assert!(e.contains("never initialised"), "{e}");
    }

    #[test]
    fn refuses_exceptions_pointing_past_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = store(dir.path(), "s", 4096, &[1, 2], true);
        // Second exception's new_chunk → huge.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&u64::MAX.to_le_bytes(), 4096 + 16 + 8)
            .unwrap();
        let s = ExceptionStore::open(&p).unwrap();
        assert!(s.old_chunks().is_err());
    }
}
