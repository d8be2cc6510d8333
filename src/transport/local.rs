//! A local destination: the stream goes through an in-process pipe into the same receiver as
//! `--apply` ([`apply_stream`]) on its own thread, so that a local sync goes through the very
//! same checks as a stream arriving over the network.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use crate::apply::{apply_with, ApplyContext, ApplyOptions};
use crate::error::{IoContext, Named, Result};
use crate::msg::Verbosity;
use crate::session::{Hello, Message};

const PIPE_WRITE: &str = "pipe to the local receiver: cannot write";
/// Capacity asked for the pipe (the default limit for unprivileged users).
const PIPE_BYTES: usize = 1 << 20;

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

    /// Sends a stream: `write` writes it whole into the pipe. The receiver's error comes first:
    /// it explains a broken pipe on the sending side.
    pub fn send<T>(
        self,
        write: impl FnOnce(&mut dyn Write, Option<&mut dyn Read>) -> Result<T>,
    ) -> Result<T> {
        let (reader, writer) = io::pipe().ctx(|| "cannot create a pipe".into())?;
        // A larger pipe than the default 64 KiB: fewer wake-ups of either side per MiB.
        let _ = rustix::pipe::fcntl_setpipe_size(&writer, PIPE_BYTES);
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
            let applied = receiver.join().expect("receiver thread panicked")?;
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
