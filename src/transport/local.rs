//! A local destination: the stream goes through an in-process pipe into the same receiver as
//! `--apply` ([`apply_stream`]) on its own thread, so that a local sync goes through the very
//! same checks as a stream arriving over the network.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::apply::{apply_stream, ApplyOptions};
use crate::error::{IoContext, Named, Result};

const PIPE_WRITE: &str = "pipe to the local receiver: cannot write";

/// A receiver applying onto a local path, started when the stream is sent.
pub struct LocalReceiver {
    dest: PathBuf,
    options: ApplyOptions,
}

impl LocalReceiver {
    pub fn new(dest: PathBuf, options: ApplyOptions) -> Self {
        LocalReceiver { dest, options }
    }

    /// Sends a stream: `write` writes it whole into the pipe. The receiver's error comes first:
    /// it explains a broken pipe on the sending side.
    pub fn send<T>(self, write: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
        let (reader, writer) = io::pipe().ctx(|| "cannot create a pipe".into())?;
        let (dest, options) = (&self.dest, &self.options);
        std::thread::scope(|s| {
            let receiver = s.spawn(move || {
                let mut reader = reader;
                let res = apply_stream(&mut reader, dest, options);
                // Drain nothing further: dropping the reader makes a still-running sender fail.
                drop(reader);
                res
            });
            let mut out = BufWriter::with_capacity(1 << 20, Named::new(writer, PIPE_WRITE));
            let sent = write(&mut out).and_then(|r| {
                out.flush().ctx(|| PIPE_WRITE.into())?;
                Ok(r)
            });
            // Closing the pipe ends the stream for the receiver.
            drop(out);
            let applied = receiver.join().expect("receiver thread panicked");
            applied?;
            sent
        })
    }
}
