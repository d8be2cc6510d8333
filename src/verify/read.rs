//! Reading and hashing one side's pieces: many large reads in flight, hashed on the reading
//! threads, handed over in piece order.
//!
//! The pieces are grouped into tasks of consecutive pieces (at most [`TASK_BYTES`], or one
//! chunk when chunks are larger; at most [`MAX_RUNS`] separate reads): a whole volume is read in
//! 1 MiB reads, scattered changed ranges a task of many small reads at a time.
//! [`parallel::in_order`] runs the tasks on `queue_depth` threads, each reading its task and
//! hashing its pieces, and hands the hashes over in order. Tasks are made as they are needed,
//! a window at a time, so that memory does not grow with the size of the volume.
//!
//! Reads use O_DIRECT where the offset and length are aligned (images too: no page cache
//! copy, and a verify of a large volume does not flush the cache), the page cache elsewhere
//! (the unaligned end of an image, unaligned stream records) and where O_DIRECT is not
//! supported; `LVMSYNC_DIRECT_IO=off` turns it off.

use std::ops::ControlFlow;
use std::path::Path;

use super::pieces::{piece_end, piece_hash, Piece, Range};
use crate::blockdev::{direct_io_override, read_full_at, AlignedBuf, Device, DIRECT_ALIGN};
use crate::error::{Error, IoContext, Result};
use crate::parallel;

/// Bytes read by one task (more when one chunk is larger).
pub const TASK_BYTES: u64 = 1 << 20;
/// Most separate reads in one task.
const MAX_RUNS: usize = 256;
/// Tasks made at once (a window of the volume: 4 GiB at the default sizes).
const WINDOW_TASKS: usize = 4096;
/// Most read-buffer memory held by one side.
const BUFFER_BUDGET: u64 = 64 << 20;

/// An open side: a device or image, read with O_DIRECT where possible.
pub struct Reader<'a> {
    path: &'a Path,
    plain: Device,
    direct: Option<Device>,
}

/// A task: consecutive pieces, in contiguous runs (each within one range).
struct Task {
    runs: Vec<Range>,
}

/// A task's read buffer and the hashes of its pieces, reused from task to task.
struct Slot {
    buf: Option<AlignedBuf>,
    pieces: Vec<Piece>,
}

impl<'a> Reader<'a> {
    /// Opens `path` for reading (a block device or regular file).
    pub fn open(path: &'a Path) -> Result<Self> {
        let plain = Device::open_read(path)?;
        let direct = match direct_io_override() {
            Some(false) => None,
            // Not every file system has O_DIRECT: the page cache then.
            _ => Device::open_read_direct(path).ok(),
        };
        Ok(Reader {
            path,
            plain,
            direct,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.plain.size
    }

    /// Reads and hashes the pieces of `ranges` (cut every `chunk` bytes) with up to
    /// `queue_depth` reads in flight, and hands their hashes to `take` in order, a task's worth
    /// at a time. Returns the bytes read.
    pub fn hash_ranges(
        &self,
        ranges: &[Range],
        chunk: u64,
        queue_depth: usize,
        mut take: impl FnMut(&[Piece]) -> Result<()>,
    ) -> Result<u64> {
        let task_bytes = TASK_BYTES.max(chunk);
        let slots = (BUFFER_BUDGET / task_bytes).clamp(4, (queue_depth * 3 / 2).max(4) as u64);
        let threads = queue_depth.clamp(1, slots as usize);
        let mut tasks = Tasks {
            ranges,
            chunk,
            task_bytes,
            next: 0,
            pos: ranges.first().map_or(0, |r| r.offset),
        };
        let mut read = 0u64;
        loop {
            let window: Vec<Task> = tasks.by_ref().take(WINDOW_TASKS).collect();
            if window.is_empty() {
                return Ok(read);
            }
            parallel::in_order(
                window.len(),
                threads,
                (0..slots).map(|_| Slot {
                    buf: None,
                    pieces: Vec::new(),
                }),
                |i, slot| self.fill(&window[i], chunk, task_bytes, slot),
                |_, slot| {
                    read += slot.pieces.iter().map(|p| p.len).sum::<u64>();
                    take(&slot.pieces)?;
                    Ok(ControlFlow::Continue(()))
                },
            )?;
        }
    }

    /// Reads a task run by run and hashes its pieces.
    fn fill(&self, task: &Task, chunk: u64, task_bytes: u64, slot: &mut Slot) -> Result<()> {
        slot.pieces.clear();
        let buf = slot
            .buf
            .get_or_insert_with(|| AlignedBuf::new(task_bytes as usize))
            .as_mut_slice();
        for run in &task.runs {
            let data = &mut buf[..run.len as usize];
            let aligned = run.offset.is_multiple_of(DIRECT_ALIGN as u64)
                && run.len.is_multiple_of(DIRECT_ALIGN as u64);
            let dev = match &self.direct {
                Some(d) if aligned => d,
                _ => &self.plain,
            };
            let n = read_full_at(&dev.file, data, run.offset).ctx(|| {
                format!(
                    "{}: read failed at byte {}",
                    self.path.display(),
                    run.offset
                )
            })?;
            if n != data.len() {
                return Err(Error::Invalid(format!(
                    "{}: ends at byte {}, before the end of the compared range (it shrank?)",
                    self.path.display(),
                    run.offset + n as u64
                )));
            }
            let mut pos = run.offset;
            while pos < run.end() {
                let end = piece_end(pos, run.end(), chunk);
                let at = (pos - run.offset) as usize;
                slot.pieces.push(Piece {
                    offset: pos,
                    len: end - pos,
                    hash: piece_hash(&data[at..at + (end - pos) as usize]),
                });
                pos = end;
            }
        }
        Ok(())
    }
}

/// Makes the tasks of a list of ranges, in order.
struct Tasks<'r> {
    ranges: &'r [Range],
    chunk: u64,
    task_bytes: u64,
    /// The range being cut, and the position in it.
    next: usize,
    pos: u64,
}

impl Iterator for Tasks<'_> {
    type Item = Task;

    fn next(&mut self) -> Option<Task> {
        let mut runs: Vec<Range> = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = self.ranges.get(self.next) {
            if runs.len() >= MAX_RUNS || bytes >= self.task_bytes {
                break;
            }
            let left = self.task_bytes - bytes;
            // Whole pieces only: up to the last chunk boundary within the budget, or the end
            // of the range; at least one piece in a task.
            let mut end = r.end().min(self.pos + left);
            if end < r.end() {
                end = end / self.chunk * self.chunk;
                if end <= self.pos {
                    if !runs.is_empty() {
                        break;
                    }
                    end = piece_end(self.pos, r.end(), self.chunk);
                }
            }
            runs.push(Range::new(self.pos, end - self.pos));
            bytes += end - self.pos;
            self.pos = end;
            if end == r.end() {
                self.next += 1;
                self.pos = self.ranges.get(self.next).map_or(0, |r| r.offset);
            }
        }
        (!runs.is_empty()).then_some(Task { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::super::pieces::pieces;
    use super::*;

    #[test]
    fn tasks_cover_the_pieces_in_order() {
        let ranges = [
            Range::new(0, 5 << 20),
            Range::new(6 << 20, 4096),
            Range::new(7 << 20, 100),
            Range::new(1 << 30, (3 << 20) + 5),
        ];
        for chunk in [4096, 1 << 20, 4 << 20, 3000] {
            let task_bytes = TASK_BYTES.max(chunk);
            let tasks: Vec<Task> = Tasks {
                ranges: &ranges,
                chunk,
                task_bytes,
                next: 0,
                pos: 0,
            }
            .collect();
            let mut cut = Vec::new();
            for t in &tasks {
                assert!(t.runs.iter().map(|r| r.len).sum::<u64>() <= task_bytes);
                for run in &t.runs {
                    cut.extend(pieces(&[*run], chunk));
                }
            }
            assert_eq!(cut, pieces(&ranges, chunk).collect::<Vec<_>>(), "{chunk}");
        }
    }

    #[test]
    fn every_piece_is_hashed_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let size = (3 << 20) + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + i / 4096) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let reader = Reader::open(&path).unwrap();
        let ranges = [Range::new(0, size as u64), Range::new(5, 10)];
        let mut got = Vec::new();
        let read = reader
            .hash_ranges(&ranges, 65536, 8, |p| {
                got.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
        assert_eq!(read, size as u64 + 10);
        let want: Vec<Piece> = pieces(&ranges, 65536)
            .map(|r| Piece {
                offset: r.offset,
                len: r.len,
                hash: piece_hash(&data[r.offset as usize..r.end() as usize]),
            })
            .collect();
        assert_eq!(got, want);
    }
}
