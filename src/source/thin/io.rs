//! Block reads from a thin-pool metadata device or image.
//!
//! A live `_tmeta` device is written by the kernel through its own buffer cache, so the page
//! cache of the block device may hold stale copies: block devices are read with `O_DIRECT` into
//! 4096-aligned buffers. Regular files (images) are read with ordinary buffered I/O.
//!
//! `O_DIRECT` gets no kernel readahead and each read waits for the disk, so two things keep a
//! walk from paying one disk latency per node:
//! - btree nodes written together sit next to each other (sibling leaves, the path a write
//!   copied), so a direct read fetches a small window of blocks and serves neighbours from it;
//! - when the caller knows which nodes it will need (the children of an internal node that the
//!   other tree does not share), [`MetadataDev::prefetch`] reads them in parallel.
//!
//! Both buffers belong to one [`MetadataDev`], which lives for one operation: nothing is cached
//! between calls.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::ThinError;
use crate::blockdev::{Device, DeviceKind};
use crate::error::Error;

/// Size of a metadata block in bytes (dm-thin always uses 4 KiB metadata blocks).
pub const BLOCK_SIZE: usize = 4096;

/// Blocks fetched per direct read (128 KiB: about the cost of one 4 KiB read on any disk).
const WINDOW_BLOCKS: usize = 32;
/// Windows kept: a diff walks two trees that usually live in different regions.
const WINDOWS: usize = 4;
/// Threads issuing prefetch reads at once (the queue depth offered to the device).
const PREFETCH_THREADS: usize = 16;

/// One metadata block, aligned for `O_DIRECT`.
#[repr(C, align(4096))]
pub struct AlignedBlock(pub [u8; BLOCK_SIZE]);

/// A run of consecutive blocks read with one direct read.
struct Window {
    start: u64,
    len: usize,
    blocks: Vec<AlignedBlock>,
    /// Access stamp for replacing the least recently used window.
    used: u64,
}

/// An open metadata device or image.
pub struct MetadataDev {
    file: File,
    path: PathBuf,
    nr_blocks: u64,
    direct: bool,
    buf: Box<AlignedBlock>,
    windows: Vec<Window>,
    clock: u64,
    /// Blocks read ahead by [`MetadataDev::prefetch`] and not asked for yet.
    prefetched: std::collections::HashMap<u64, Box<AlignedBlock>>,
    blocks_prefetched: u64,
    blocks_read: u64,
    reads: u64,
}

fn as_bytes_mut(blocks: &mut [AlignedBlock]) -> &mut [u8] {
    // SAFETY: AlignedBlock is a repr(C) wrapper of [u8; BLOCK_SIZE] whose size equals its
    // alignment, so a slice of them is BLOCK_SIZE * len contiguous, initialised bytes.
    unsafe {
        std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), blocks.len() * BLOCK_SIZE)
    }
}

impl MetadataDev {
    pub fn open(path: &Path) -> Result<Self, ThinError> {
        // Only a block device or a regular file, checked without blocking (a FIFO would block
        // the open until a writer appears).
        let opening = |e: Error| match e {
            Error::Io { source, .. } => ThinError::Io {
                path: path.to_path_buf(),
                context: "opening thin metadata".into(),
                source,
            },
            e => ThinError::Metadata(e.to_string()),
        };
        let plain = Device::open_read(path).map_err(opening)?;
        let direct = plain.kind == DeviceKind::BlockDevice;
        let dev = if direct {
            Device::open_read_direct(path).map_err(opening)?
        } else {
            plain
        };
        let (file, len) = (dev.file, dev.size);
        Ok(MetadataDev {
            file,
            path: path.to_path_buf(),
            nr_blocks: len / BLOCK_SIZE as u64,
            direct,
            buf: Box::new(AlignedBlock([0; BLOCK_SIZE])),
            windows: Vec::new(),
            clock: 0,
            prefetched: Default::default(),
            blocks_prefetched: 0,
            blocks_read: 0,
            reads: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks handed out so far (for statistics).
    pub fn blocks_read(&self) -> u64 {
        self.blocks_read
    }

    /// Read system calls issued so far (for statistics).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Blocks read ahead by [`MetadataDev::prefetch`] so far.
    pub fn blocks_prefetched(&self) -> u64 {
        self.blocks_prefetched
    }

    /// Prefetched blocks never asked for (read for nothing).
    pub fn prefetched_unused(&self) -> u64 {
        self.prefetched.len() as u64
    }

    fn in_window(&self, block: u64) -> bool {
        self.windows
            .iter()
            .any(|w| block >= w.start && block < w.start + w.len as u64)
    }

    /// Reads `blocks` (which the caller will certainly ask for) in parallel, runs of neighbours
    /// with one read each. Only block devices benefit: image files are read through the page
    /// cache, so this does nothing for them.
    pub fn prefetch(&mut self, blocks: impl IntoIterator<Item = u64>) -> Result<(), ThinError> {
        if !self.direct {
            return Ok(());
        }
        let mut want: Vec<u64> = blocks
            .into_iter()
            .filter(|&b| {
                b < self.nr_blocks && !self.prefetched.contains_key(&b) && !self.in_window(b)
            })
            .collect();
        want.sort_unstable();
        want.dedup();
        if want.len() < 2 {
            return Ok(()); // one block: the ordinary read costs the same
        }
        let mut runs: Vec<(u64, usize)> = Vec::new();
        for b in want {
            match runs.last_mut() {
                Some((start, n)) if *start + *n as u64 == b && *n < WINDOW_BLOCKS => *n += 1,
                _ => runs.push((b, 1)),
            }
        }
        let file = &self.file;
        let per_thread = runs.len().div_ceil(PREFETCH_THREADS);
        type Fetched = Result<(u64, Vec<AlignedBlock>), (u64, std::io::Error)>;
        let fetched: Vec<Fetched> = std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&(start, n)| {
                                let mut v: Vec<AlignedBlock> =
                                    (0..n).map(|_| AlignedBlock([0; BLOCK_SIZE])).collect();
                                file.read_exact_at(as_bytes_mut(&mut v), start * BLOCK_SIZE as u64)
                                    .map(|()| (start, v))
                                    .map_err(|e| (start, e))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("metadata prefetch thread panicked"))
                .collect()
        });
        self.reads += runs.len() as u64;
        for r in fetched {
            let (start, blocks) = r.map_err(|(b, e)| self.io_error(b, e))?;
            for (i, b) in blocks.into_iter().enumerate() {
                self.prefetched.insert(start + i as u64, Box::new(b));
                self.blocks_prefetched += 1;
            }
        }
        Ok(())
    }

    fn io_error(&self, block: u64, source: std::io::Error) -> ThinError {
        ThinError::Io {
            path: self.path.clone(),
            context: format!("reading metadata block {block} of"),
            source,
        }
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
        self.blocks_read += 1;
        if !self.direct {
            self.reads += 1;
            self.file
                .read_exact_at(&mut self.buf.0, block * BLOCK_SIZE as u64)
                .map_err(|e| self.io_error(block, e))?;
            return Ok(&self.buf.0);
        }
        if let Some(b) = self.prefetched.remove(&block) {
            self.buf = b;
            return Ok(&self.buf.0);
        }
        self.clock += 1;
        let hit = self
            .windows
            .iter()
            .position(|w| block >= w.start && block < w.start + w.len as u64);
        let i = match hit {
            Some(i) => i,
            None => self.fill_window(block)?,
        };
        let w = &mut self.windows[i];
        w.used = self.clock;
        Ok(&w.blocks[(block - w.start) as usize].0)
    }

    /// Reads the window starting at `block` into a free or the least recently used slot.
    fn fill_window(&mut self, block: u64) -> Result<usize, ThinError> {
        let len = (self.nr_blocks - block).min(WINDOW_BLOCKS as u64) as usize;
        let i = if self.windows.len() < WINDOWS {
            self.windows.push(Window {
                start: 0,
                len: 0,
                blocks: (0..WINDOW_BLOCKS)
                    .map(|_| AlignedBlock([0; BLOCK_SIZE]))
                    .collect(),
                used: 0,
            });
            self.windows.len() - 1
        } else {
            (0..WINDOWS)
                .min_by_key(|&i| self.windows[i].used)
                .expect("windows exist")
        };
        let w = &mut self.windows[i];
        // Invalidate first: a failed read must not leave stale contents behind.
        w.len = 0;
        self.reads += 1;
        let r = self.file.read_exact_at(
            as_bytes_mut(&mut w.blocks[..len]),
            block * BLOCK_SIZE as u64,
        );
        r.map_err(|e| self.io_error(block, e))?;
        let w = &mut self.windows[i];
        w.start = block;
        w.len = len;
        Ok(i)
    }
}
