//! Block reads from a thin-pool metadata device or image.
//!
//! A live `_tmeta` device is written by the kernel through its own buffer cache, so the page
//! cache of the block device may hold stale copies: block devices are read with `O_DIRECT` into
//! 4096-aligned buffers. Regular files (images) are read with ordinary buffered I/O. Nothing is
//! cached between calls: each [`MetadataDev`] lives for one operation.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ThinError;

/// Size of a metadata block in bytes (dm-thin always uses 4 KiB metadata blocks).
pub const BLOCK_SIZE: usize = 4096;

/// One metadata block, aligned for `O_DIRECT`.
#[repr(C, align(4096))]
pub struct AlignedBlock(pub [u8; BLOCK_SIZE]);

/// An open metadata device or image.
pub struct MetadataDev {
    file: File,
    path: PathBuf,
    nr_blocks: u64,
    buf: Box<AlignedBlock>,
    blocks_read: u64,
}

impl MetadataDev {
    pub fn open(path: &Path) -> Result<Self, ThinError> {
        let io_err = |what: &str, source| ThinError::Io {
            path: path.to_path_buf(),
            context: what.to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| io_err("examining", e))?;
        let mut opts = OpenOptions::new();
        opts.read(true);
        if meta.file_type().is_block_device() {
            opts.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
        }
        let mut file = opts.open(path).map_err(|e| io_err("opening", e))?;
        // Works for regular files and block devices alike.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("finding the size of", e))?;
        Ok(MetadataDev {
            file,
            path: path.to_path_buf(),
            nr_blocks: len / BLOCK_SIZE as u64,
            buf: Box::new(AlignedBlock([0; BLOCK_SIZE])),
            blocks_read: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks read so far (for statistics).
    pub fn blocks_read(&self) -> u64 {
        self.blocks_read
    }

    /// Reads block `block`; the returned buffer is valid until the next read.
    pub fn read(&mut self, block: u64) -> Result<&[u8; BLOCK_SIZE], ThinError> {
        if block >= self.nr_blocks {
            return Err(ThinError::Corrupt {
                path: self.path.clone(),
                block,
                message: format!(
                    "block is past the end of the metadata ({} blocks of 4096 bytes)",
                    self.nr_blocks
                ),
            });
        }
        self.file
            .read_exact_at(&mut self.buf.0, block * BLOCK_SIZE as u64)
            .map_err(|source| ThinError::Io {
                path: self.path.clone(),
                context: format!("reading metadata block {block} of"),
                source,
            })?;
        self.blocks_read += 1;
        Ok(&self.buf.0)
    }
}
