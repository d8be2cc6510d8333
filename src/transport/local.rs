//! A local destination: the stream goes through an in-process pipe into the same receiver as
//! `--apply` ([`apply_stream`]) on its own thread, so that a local sync goes through the very
//! same checks as a stream arriving over the network.
//!
//! The pipe ([`chunk_pipe`]) hands 1 MiB chunks from one thread to the other: the bytes of an
//! OS pipe, without a system call, a wake-up and a kernel page per 64 KiB (a first copy moves
//! the whole volume through it).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::apply::{apply_with, ApplyContext, ApplyOptions};
use crate::error::{Error, IoContext, Named, Result};
use crate::msg::Verbosity;
use crate::session::{Hello, Message};

const PIPE_WRITE: &str = "pipe to the local receiver: cannot write";
/// Bytes of one chunk of the pipe.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in the pipe, allocated once and reused: one being written, one being read, the
/// others waiting to be read.
const CHUNKS: usize = 4;

/// An in-process pipe: what is written to the [`ChunkWriter`] is read from the [`ChunkReader`]
/// in order, then end of file once the writer is dropped; writing once the reader is dropped
/// fails with [`io::ErrorKind::BrokenPipe`], as on an OS pipe.
fn chunk_pipe() -> (ChunkReader, ChunkWriter) {
    let (full_tx, full_rx) = bounded(CHUNKS);
    let (empty_tx, empty_rx) = bounded(CHUNKS);
    for _ in 1..CHUNKS {
        empty_tx.send(Vec::new()).expect("room for every chunk");
    }
    (
        ChunkReader {
            chunk: Vec::new(),
            pos: 0,
            full: full_rx,
            empty: empty_tx,
        },
        ChunkWriter {
            chunk: Some(Vec::new()),
            full: full_tx,
            empty: empty_rx,
        },
    )
}

struct ChunkWriter {
    /// The chunk being written; `None` once the reader is gone.
    chunk: Option<Vec<u8>>,
    full: Sender<Vec<u8>>,
    /// Chunks the reader is done with, to be written again.
    empty: Receiver<Vec<u8>>,
}

fn broken_pipe() -> io::Error {
    io::Error::from(io::ErrorKind::BrokenPipe)
}

impl ChunkWriter {
    fn hand_over(&mut self) -> io::Result<()> {
        let full = self.chunk.take().ok_or_else(broken_pipe)?;
        self.full.send(full).map_err(|_| broken_pipe())?;
        self.chunk = Some(self.empty.recv().map_err(|_| broken_pipe())?);
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = self.chunk.as_mut().ok_or_else(broken_pipe)?;
        if chunk.capacity() < CHUNK_BYTES {
            chunk.reserve_exact(CHUNK_BYTES);
        }
        let n = buf.len().min(CHUNK_BYTES - chunk.len());
        chunk.extend_from_slice(&buf[..n]);
        if chunk.len() == CHUNK_BYTES {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.chunk {
            Some(c) if c.is_empty() => Ok(()),
            _ => self.hand_over(),
        }
    }
}

impl Drop for ChunkWriter {
    /// Like closing an OS pipe: what was written is still read.
    fn drop(&mut self) {
        if let Some(chunk) = self.chunk.take().filter(|c| !c.is_empty()) {
            let _ = self.full.send(chunk);
        }
    }
}

struct ChunkReader {
    chunk: Vec<u8>,
    /// Bytes of `chunk` already read.
    pos: usize,
    full: Receiver<Vec<u8>>,
    empty: Sender<Vec<u8>>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.chunk.len() {
            // Given back before waiting for the next, so the writer never waits for a chunk
            // that was read already. The channel has room for every chunk: this never waits.
            let mut done = std::mem::take(&mut self.chunk);
            if done.capacity() > 0 {
                done.clear();
                let _ = self.empty.send(done);
            }
            self.pos = 0;
            match self.full.recv() {
                Ok(next) => self.chunk = next,
                // The writer is gone and every chunk was read.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A receiver applying onto a local path, started when the stream is sent.
pub struct LocalReceiver {
    dest: PathBuf,
    options: ApplyOptions,
    session: bool,
    verbosity: Verbosity,
}

impl LocalReceiver {
    pub fn new(dest: PathBuf, options: ApplyOptions, session: bool, verbosity: Verbosity) -> Self {
        LocalReceiver {
            dest,
            options,
            session,
            verbosity,
        }
    }

    /// Sends a stream: `write` writes it whole into the pipe. The receiver's error comes first
    /// when it explains the sender's (a broken pipe, an ended session); the sender's own
    /// failure comes first otherwise.
    pub fn send<T>(
        self,
        write: impl FnOnce(&mut dyn Write, Option<&mut dyn Read>) -> Result<T>,
    ) -> Result<T> {
        let (reader, writer) = chunk_pipe();
        let back = if self.session {
            Some(io::pipe().ctx(|| "cannot create a pipe".into())?)
        } else {
            None
        };
        let (back_reader, back_writer) = match back {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        let (dest, options) = (&self.dest, &self.options);
        std::thread::scope(|s| {
            let receiver = s.spawn(move || {
                let mut reader = reader;
                let mut back = back_writer;
                let res = match back.as_mut() {
                    Some(b) => Message::Hello(Hello::ours())
                        .write_to(b)
                        .ctx(|| "the session's back channel: cannot write".into())
                        .and_then(|()| {
                            apply_with(
                                &mut reader,
                                dest,
                                options,
                                ApplyContext {
                                    session: Some(b),
                                    reopen: None,
                                },
                            )
                        }),
                    None => apply_with(&mut reader, dest, options, ApplyContext::default()),
                };
                if let (Err(e), Some(b)) = (&res, back.as_mut()) {
                    let _ = Message::Failed(e.to_string()).write_to(b);
                }
                // Drain nothing further: dropping the reader makes a still-running sender fail.
                drop(reader);
                res
            });
            let mut out = BufWriter::with_capacity(1 << 20, Named::new(writer, PIPE_WRITE));
            let mut back = back_reader.map(BufReader::new);
            let sent = match back.as_mut() {
                Some(b) => super::expect_hello(b, "the local receiver")
                    .and_then(|()| write(&mut out, Some(b))),
                None => write(&mut out, None),
            }
            .and_then(|r| {
                out.flush().ctx(|| PIPE_WRITE.into())?;
                Ok(r)
            });
            // Closing the pipe ends the stream for the receiver.
            drop(out);
            let done = match (&sent, back.as_mut()) {
                (Ok(_), Some(b)) => super::expect_done(b),
                _ => Ok(()),
            };
            drop(back);
            let applied = receiver.join().expect("receiver thread panicked");
            // The sender's own failure explains why the stream stopped (the receiver then saw
            // it end early); a broken pipe, an ended session or a refusal is the receiver's.
            if matches!(&sent, Err(e) if !super::is_broken_pipe(e) && !matches!(e, Error::Receiver(_) | Error::Refused(_)))
            {
                return sent;
            }
            let applied = applied?;
            if self.verbosity >= Verbosity::Normal {
                for note in applied.notes(options, dest) {
                    crate::say!("lvmsync: {note}");
                }
            }
            let sent = sent?;
            done?;
            Ok(sent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_pipe_delivers_every_byte_in_order_then_eof() {
        let data: Vec<u8> = (0..5 * CHUNK_BYTES + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let (mut reader, mut writer) = chunk_pipe();
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            // Writes of every size, a flush in the middle (as a session's manifest).
            let mut at = 0;
            for (i, size) in [1usize, 27, CHUNK_BYTES + 3, 4096, 3 * CHUNK_BYTES]
                .iter()
                .cycle()
                .enumerate()
            {
                if at == sent.len() {
                    break;
                }
                let end = (at + size).min(sent.len());
                writer.write_all(&sent[at..end]).unwrap();
                if i == 3 {
                    writer.flush().unwrap();
                }
                at = end;
            }
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 7000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        sender.join().unwrap();
        assert!(got == data);
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    /// A sender that fails on its own half-way (a read error, a comparison that broke off)
    /// is told by its own error, not by the receiver's account of a stream that stopped.
    #[test]
    fn the_senders_own_failure_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        std::fs::write(&dest, vec![7u8; 1 << 20]).unwrap();
        for session in [false, true] {
            let receiver = LocalReceiver::new(
                dest.clone(),
                ApplyOptions::default(),
                session,
                Verbosity::Quiet,
            );
            let err = receiver
                .send(|out, _back| -> Result<()> {
                    let opts = crate::stream::WriterOptions {
                        format: crate::stream::Format::V4,
                        source_bytes: 1 << 20,
                        chunk_bytes: 4096,
                        compress: None,
                        snapback: false,
                    };
                    let mut w = crate::stream::StreamWriter::new(out, &opts)?;
                    w.data(4096, &[1u8; 4096])?;
                    w.flush()?;
                    Err(crate::error::Error::Invalid(
                        "source.img: read failed at byte 8192".into(),
                    ))
                })
                .unwrap_err();
            assert_eq!(err.to_string(), "source.img: read failed at byte 8192");
        }
        assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 1 << 20]);
    }

    #[test]
    fn writing_to_a_pipe_nobody_reads_is_a_broken_pipe() {
        let (reader, mut writer) = chunk_pipe();
        writer.write_all(&[1u8; 100]).unwrap();
        drop(reader);
        let e = writer.write_all(&vec![2u8; 2 * CHUNK_BYTES]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(
            writer.flush().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
