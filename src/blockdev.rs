//! Block-device and image-file I/O: sizes, opening rules, aligned buffers, zeroing.
//!
//! lvmsync reads and writes both block devices and regular image files. The rules that protect
//! the user's data live here: a destination is opened read-write without create or truncate, and
//! only block devices and regular files are accepted (checked without blocking: a FIFO is refused,
//! not waited on).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::OFlags;

use crate::error::{Error, IoContext, Result};

/// `BLKGETSIZE64`: size of a block device in bytes.
const BLKGETSIZE64: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0x12, 114);
/// `BLKZEROOUT`: zero a byte range of a block device (the kernel may unmap it when the device
/// guarantees zeroes on read).
const BLKZEROOUT: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 127);
/// `BLKDISCARD`: tell the device a byte range is unused (a thin LV unmaps it).
const BLKDISCARD: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 119);
/// `BLKFLSBUF`: drop the buffer cache of one block device.
const BLKFLSBUF: rustix::ioctl::Opcode = rustix::ioctl::opcode::none(0x12, 97);

/// A zero range is checked (read back) in pieces of this many bytes...
const ZERO_PIECE: u64 = 1 << 20;
/// ...and zeroes are written over the granules of this many bytes that do not read as zeros.
const ZERO_GRANULE: u64 = 64 << 10;

/// Alignment of O_DIRECT buffers, offsets and lengths (the largest logical block size in use).
pub const DIRECT_ALIGN: usize = 4096;

/// `LVMSYNC_DIRECT_IO=on|off` forces O_DIRECT on or off where lvmsync would choose by itself
/// (for measuring; see docs/performance.md). `None`: let lvmsync choose.
pub fn direct_io_override() -> Option<bool> {
    match std::env::var("LVMSYNC_DIRECT_IO").as_deref() {
        Ok("on") => Some(true),
        Ok("off") => Some(false),
        _ => None,
    }
}

/// What kind of thing a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    BlockDevice,
    RegularFile,
}

/// An open block device or image file and its size.
#[derive(Debug)]
pub struct Device {
    pub file: File,
    pub kind: DeviceKind,
    pub size: u64,
}

fn kind_of(path: &Path, file: &File) -> Result<DeviceKind> {
    let ft = file
        .metadata()
        .ctx(|| format!("{}: cannot stat", path.display()))?
        .file_type();
    let other = if ft.is_block_device() {
        return Ok(DeviceKind::BlockDevice);
    } else if ft.is_file() {
        return Ok(DeviceKind::RegularFile);
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "of another kind"
    };
    Err(Error::Invalid(format!(
        "{}: is {other}, not a block device or regular file",
        path.display()
    )))
}

fn size_of(path: &Path, file: &File, kind: DeviceKind) -> Result<u64> {
    match kind {
        DeviceKind::RegularFile => Ok(file
            .metadata()
            .ctx(|| format!("{}: cannot stat", path.display()))?
            .len()),
        DeviceKind::BlockDevice => {
            // SAFETY: BLKGETSIZE64 writes one u64 into the getter's buffer.
            unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::Getter::<BLKGETSIZE64, u64>::new()) }
                .map_err(io::Error::from)
                .ctx(|| format!("{}: cannot read the device size", path.display()))
        }
    }
}

impl Device {
    /// Opens a data source (or any input) read-only.
    pub fn open_read(path: &Path) -> Result<Device> {
        Self::open(path, false, OFlags::empty(), "for reading")
    }

    /// Opens a block device read-only with O_DIRECT, so that what the kernel wrote behind the
    /// page cache (dm-snapshot writes its exception store with dm-io) is what we read. A regular
    /// file is opened normally: its page cache is coherent.
    pub fn open_read_uncached(path: &Path) -> Result<Device> {
        let plain = Self::open_read(path)?;
        if plain.kind != DeviceKind::BlockDevice {
            return Ok(plain);
        }
        match Self::open(path, false, OFlags::DIRECT, "for direct reading") {
            Ok(dev) => Ok(dev),
            Err(_) => {
                // No O_DIRECT here: drop this device's cached buffers instead (never the global
                // cache).
                // SAFETY: BLKFLSBUF takes no argument.
                unsafe {
                    rustix::ioctl::ioctl(&plain.file, rustix::ioctl::NoArg::<BLKFLSBUF>::new())
                }
                .map_err(io::Error::from)
                .ctx(|| format!("{}: cannot flush the buffer cache", path.display()))?;
                Ok(plain)
            }
        }
    }

    /// Opens a data source read-only with O_DIRECT (reads must then be aligned to
    /// [`DIRECT_ALIGN`] in offset, length and buffer address).
    pub fn open_read_direct(path: &Path) -> Result<Device> {
        Self::open(path, false, OFlags::DIRECT, "for direct reading")
    }

    /// Opens a destination read-write. It must already exist: lvmsync never creates or
    /// truncates a destination.
    pub fn open_write(path: &Path) -> Result<Device> {
        Self::open(path, true, OFlags::empty(), "for writing")
    }

    /// Opens a destination read-write with O_DIRECT (never creating or truncating it).
    pub fn open_write_direct(path: &Path) -> Result<Device> {
        Self::open(path, true, OFlags::DIRECT, "for direct writing")
    }

    /// Opens `path` (never creating or truncating it) and accepts only a block device or a
    /// regular file. The open itself is non-blocking, because opening a FIFO blocks until its
    /// other end is opened; O_NONBLOCK is cleared again once the file is known to be seekable.
    fn open(path: &Path, write: bool, flags: OFlags, what: &str) -> Result<Device> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags((flags | OFlags::NONBLOCK).bits() as i32)
            .open(path)
            .ctx(|| format!("{}: cannot open {what}", path.display()))?;
        let kind = kind_of(path, &file)?;
        rustix::fs::fcntl_getfl(&file)
            .and_then(|fl| rustix::fs::fcntl_setfl(&file, fl - OFlags::NONBLOCK))
            .map_err(io::Error::from)
            .ctx(|| format!("{}: cannot clear O_NONBLOCK", path.display()))?;
        let size = size_of(path, &file, kind)?;
        Ok(Device { file, kind, size })
    }

    /// Makes `[offset, offset + len)` read back as zeros, freeing the space where the
    /// destination can: a hole in a file, a discard on a block device (a thin LV unmaps the
    /// blocks). Whether the freed range really reads back as zeros is checked, not assumed (a
    /// file's holes are asked for with SEEK_DATA, anything else is read back); zeros are then
    /// written only where it does not (BLKZEROOUT, or plain writes), so that a destination
    /// that already reads zeros there is left as it is.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let freed = match self.kind {
            DeviceKind::RegularFile => rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                offset,
                len,
            )
            .is_ok(),
            // SAFETY: BLKDISCARD reads a [u64; 2] (start, length) in bytes.
            DeviceKind::BlockDevice => unsafe {
                rustix::ioctl::ioctl(
                    &self.file,
                    rustix::ioctl::Setter::<BLKDISCARD, [u64; 2]>::new([offset, len]),
                )
            }
            .is_ok(),
        };
        if freed && self.is_hole(offset, len) {
            return Ok(());
        }
        self.zero_where_not_zero(offset, len)
    }

    /// Whether `[offset, offset + len)` of a regular file is a hole (which reads as zeros).
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        if self.kind != DeviceKind::RegularFile {
            return false;
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(data) => data >= offset + len,
            // No data after `offset`.
            Err(rustix::io::Errno::NXIO) => true,
            Err(_) => false,
        }
    }

    /// Reads the range piece by piece and zeroes the pieces that do not read as zeros.
    pub(crate) fn zero_where_not_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut buf = vec![0u8; (len.min(ZERO_PIECE)) as usize];
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            let got = read_full_at(&self.file, &mut buf[..n], pos)?;
            buf[got..n].fill(1);
            if !is_zero(&buf[..n]) {
                // Zeroed in granules, so that what already reads zeros stays as it is.
                for (i, granule) in buf[..n].chunks(ZERO_GRANULE as usize).enumerate() {
                    if !is_zero(granule) {
                        let at = pos + i as u64 * ZERO_GRANULE;
                        self.write_zeros(at, granule.len() as u64)?;
                    }
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.kind == DeviceKind::BlockDevice {
            // SAFETY: BLKZEROOUT reads a [u64; 2] (start, length) in bytes.
            let zeroed = unsafe {
                rustix::ioctl::ioctl(
                    &self.file,
                    rustix::ioctl::Setter::<BLKZEROOUT, [u64; 2]>::new([offset, len]),
                )
            };
            if zeroed.is_ok() {
                return Ok(());
            }
        }
        let zeros = vec![0u8; (len.min(ZERO_PIECE)) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// fsync.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// A heap buffer whose start is aligned for O_DIRECT.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A growable byte buffer whose start is aligned for O_DIRECT (records gathered for writing).
pub struct AlignedVec {
    buf: AlignedBuf,
    len: usize,
}

impl AlignedVec {
    pub fn with_capacity(capacity: usize) -> Self {
        AlignedVec {
            buf: AlignedBuf::new(capacity),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut_slice()[..self.len]
    }

    /// Grows the contents to `len` bytes (new bytes are unspecified), keeping what is there.
    pub fn resize(&mut self, len: usize) {
        if len > self.buf.len {
            let mut bigger = AlignedBuf::new(len.max(self.buf.len * 2));
            bigger.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
            self.buf = bigger;
        }
        self.len = len;
    }

    /// Pads the contents with zeros up to a multiple of [`DIRECT_ALIGN`].
    pub fn align_end(&mut self) {
        let at = self.len;
        self.resize(at.next_multiple_of(DIRECT_ALIGN));
        self.buf.as_mut_slice()[at..self.len].fill(0);
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let at = self.len;
        self.resize(at + data.len());
        self.buf.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
    }
}

/// Whether a read or write at `offset` of `len` bytes from `buf` meets O_DIRECT's alignment.
pub fn direct_aligned(offset: u64, buf: &[u8]) -> bool {
    offset.is_multiple_of(DIRECT_ALIGN as u64)
        && buf.len().is_multiple_of(DIRECT_ALIGN)
        && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
}

/// Reads as much of `buf` as the file has at `offset`; returns the count (short only at EOF).
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether every byte is zero: 256-byte blocks are OR-folded a 64-bit word at a time (which
/// vectorises, unlike a short-circuiting byte loop), stopping at the first block that is not.
pub fn is_zero(buf: &[u8]) -> bool {
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("8-byte chunks"));
    let mut blocks = buf.chunks_exact(256);
    for block in blocks.by_ref() {
        if block.chunks_exact(8).fold(0, |acc, w| acc | word(w)) != 0 {
            return false;
        }
    }
    let mut words = blocks.remainder().chunks_exact(8);
    words.by_ref().all(|w| word(w) == 0) && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Only the pieces that hold something are written: a hole in between stays a hole.
    #[test]
    fn zeros_are_written_only_where_something_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let piece = ZERO_PIECE as usize;
        let f = File::create(&path).unwrap();
        f.set_len(8 * ZERO_PIECE).unwrap();
        f.write_all_at(&vec![7u8; piece], 0).unwrap();
        f.write_all_at(&[1u8; 10], 6 * ZERO_PIECE + 3 * ZERO_GRANULE + 100)
            .unwrap();
        f.sync_all().unwrap();
        let before = f.metadata().unwrap().blocks();
        let dev = Device::open_write(&path).unwrap();
        dev.zero_where_not_zero(0, 8 * ZERO_PIECE).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        // Zeros written over the first MiB and the granule that held data, nothing over the
        // holes (64 KiB more for the file system's own metadata, an extent tree block).
        let after = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            after <= ZERO_PIECE + 2 * ZERO_GRANULE,
            "holes were written ({} -> {after} bytes allocated)",
            before * 512
        );
    }

    #[test]
    fn is_zero_sees_any_byte_anywhere() {
        let mut buf = vec![0u8; 4096 + 300 + 5];
        assert!(is_zero(&buf));
        assert!(is_zero(&[]));
        for i in [
            0,
            7,
            8,
            255,
            256,
            4095,
            4096,
            4096 + 255,
            4096 + 256 + 40,
            buf.len() - 1,
        ] {
            buf[i] = 0x80;
            assert!(!is_zero(&buf), "byte {i}");
            assert!(is_zero(&buf[..i]) && is_zero(&buf[i + 1..]), "byte {i}");
            buf[i] = 0;
        }
    }
}
