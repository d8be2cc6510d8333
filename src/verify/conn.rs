//! The connection to the DEST side: `lvmsync verify --serve DEST` on another host, through the
//! remote shell, or [`serve`] on a thread of this process over a pair of pipes. Bytes are
//! counted both ways.
//!
//! When the DEST side fails or goes away, its own account comes first: its Failed message, or
//! its exit status and the first line it wrote on standard error (an ssh error, or the command
//! line refusal of an lvmsync that has no `verify`), all in one line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::peer::{next_message, serve, Incoming};
use super::wire::{Hello, Message, PROTOCOL};
use crate::error::{Error, Result};
use crate::transport::remote::{
    failure_reason, remote_path_word, remote_program, shell_command, spawn_shell,
};

/// Where DEST is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(PathBuf),
    Remote {
        host: String,
        path: String,
        /// The remote shell command (`--rsh`).
        rsh: String,
        /// lvmsync on the remote host (`--remote-path`).
        remote_path: String,
    },
}

impl Target {
    /// DEST as given: `PATH` or `HOST:PATH`.
    pub fn name(&self) -> String {
        match self {
            Target::Local(p) => p.display().to_string(),
            Target::Remote { host, path, .. } if host.contains(':') => format!("[{host}]:{path}"),
            Target::Remote { host, path, .. } => format!("{host}:{path}"),
        }
    }
}

/// The local command that runs the DEST side of a comparison on a remote host. Every error is
/// a usage error (checked before anything is read).
pub fn remote_command(
    host: &str,
    path: &str,
    rsh: &str,
    remote_path: &str,
    queue_depth: usize,
) -> Result<Vec<std::ffi::OsString>> {
    let mut words = remote_program(remote_path)?;
    words.extend([
        "verify".to_string(),
        "--serve".to_string(),
        "--queue-depth".to_string(),
        queue_depth.to_string(),
        remote_path_word(path)?,
    ]);
    shell_command(rsh, host, words)
}

/// Counts the bytes that pass.
struct Counted<T> {
    inner: T,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum End {
    /// The DEST side on a thread of ours.
    Local(Option<JoinHandle<Result<()>>>),
    Remote {
        host: String,
        child: Child,
        /// The first lines the remote wrote on standard error.
        stderr: Option<JoinHandle<Vec<String>>>,
        reaped: bool,
    },
}

/// An open connection to the DEST side.
pub struct Connection {
    to: Option<Counted<Box<dyn Write + Send>>>,
    incoming: Incoming,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    end: End,
    hello: bool,
}

/// How the remote shell ended, when it failed.
struct Failure {
    code: Option<i32>,
    /// The exit status in words.
    why: String,
    /// The first line it wrote on standard error.
    said: Option<String>,
}

/// Bytes exchanged with the DEST side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
}

/// Reads the DEST side's messages on a thread of their own, until its Done or Failed, or the
/// end of the connection.
fn spawn_incoming(from: impl Read + Send + 'static, count: Arc<AtomicU64>) -> Result<Incoming> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("verify-incoming".into())
        .spawn(move || {
            let mut r = BufReader::new(Counted { inner: from, count });
            loop {
                let m = Message::read_from(&mut r);
                let last = !matches!(m, Ok(Message::Verdict { .. } | Message::Hello(_)));
                if tx.send(m).is_err() || last {
                    break;
                }
            }
        })
        .map_err(|e| Error::io("starting the verify reader", e))?;
    Ok(rx)
}

impl Connection {
    /// Starts the DEST side.
    pub fn open(target: &Target, queue_depth: usize) -> Result<Connection> {
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (to, incoming, end): (Box<dyn Write + Send>, _, _) = match target {
            Target::Local(path) => {
                let (to_r, to_w) = io::pipe().map_err(|e| Error::io("cannot create a pipe", e))?;
                let (from_r, from_w) =
                    io::pipe().map_err(|e| Error::io("cannot create a pipe", e))?;
                let path = path.clone();
                let server = std::thread::Builder::new()
                    .name("verify-dest".into())
                    .spawn(move || {
                        let mut input = BufReader::new(to_r);
                        let mut output = from_w;
                        serve(&path, &mut input, &mut output, queue_depth)
                    })
                    .map_err(|e| Error::io("starting the DEST reader", e))?;
                let incoming = spawn_incoming(from_r, received.clone())?;
                (Box::new(to_w), incoming, End::Local(Some(server)))
            }
            Target::Remote {
                host,
                path,
                rsh,
                remote_path,
            } => {
                let mut child =
                    spawn_shell(&remote_command(host, path, rsh, remote_path, queue_depth)?)?;
                let to = child.stdin.take().expect("piped");
                let from = child.stdout.take().expect("piped");
                let stderr = child.stderr.take().map(spawn_stderr_capture).transpose()?;
                let incoming = spawn_incoming(from, received.clone())?;
                (
                    Box::new(to),
                    incoming,
                    End::Remote {
                        host: host.clone(),
                        child,
                        stderr,
                        reaped: false,
                    },
                )
            }
        };
        Ok(Connection {
            to: Some(Counted {
                inner: to,
                count: sent.clone(),
            }),
            incoming,
            sent,
            received,
            end,
            hello: false,
        })
    }

    /// Reads the DEST side's hello: it has DEST open, and speaks this protocol.
    pub fn hello(&mut self) -> Result<Hello> {
        match next_message(&self.incoming)? {
            Message::Hello(h) if h.protocol == PROTOCOL => {
                self.hello = true;
                Ok(h)
            }
            Message::Hello(h) => Err(Error::Invalid(format!(
                "{}runs lvmsync {}, which compares with protocol {} (this lvmsync: {PROTOCOL}); install the same version on both hosts",
                self.prefix(),
                h.lvmsync,
                h.protocol
            ))),
            _ => Err(Error::Invalid(format!(
                "{}did not start a comparison as expected",
                self.prefix()
            ))),
        }
    }

    /// Where messages to the DEST side go.
    pub fn to(&mut self) -> &mut dyn Write {
        self.to.as_mut().expect("open until closed")
    }

    pub fn incoming(&self) -> &Incoming {
        &self.incoming
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    /// "on HOST: " for a remote DEST side, nothing for a local one (its messages name DEST).
    fn prefix(&self) -> String {
        match &self.end {
            End::Local(_) => String::new(),
            End::Remote { host, .. } => format!("on {host}: "),
        }
    }

    /// Closes the connection after a comparison and waits for the DEST side to end.
    pub fn close(mut self) -> Result<Traffic> {
        drop(self.to.take());
        let traffic = self.traffic();
        match &mut self.end {
            End::Local(server) => server
                .take()
                .expect("joined once")
                .join()
                .map_err(|_| Error::Invalid("the DEST reader panicked".into()))??,
            End::Remote { .. } => {
                if let Some(f) = self.reap() {
                    return Err(Error::Invalid(format!(
                        "{}the remote lvmsync failed after the comparison ({})",
                        self.prefix(),
                        f.why
                    )));
                }
            }
        }
        Ok(traffic)
    }

    /// Waits for the remote shell; how it failed, if it did.
    fn reap(&mut self) -> Option<Failure> {
        let End::Remote {
            child,
            stderr,
            reaped,
            ..
        } = &mut self.end
        else {
            return None;
        };
        *reaped = true;
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                return Some(Failure {
                    code: None,
                    why: format!("cannot wait for the remote shell: {e}"),
                    said: None,
                })
            }
        };
        let why = failure_reason(status)?;
        let said = stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.trim().to_string())
            .find(|l| !l.is_empty());
        Some(Failure {
            code: status.code(),
            why,
            said,
        })
    }

    /// Turns an error met while comparing into what happened, the DEST side's account first.
    pub fn explain(mut self, e: Error) -> Error {
        drop(self.to.take());
        let peer_gone = match &e {
            Error::Receiver(_) => true,
            Error::Io { source, .. } => source.kind() == io::ErrorKind::BrokenPipe,
            _ => false,
        };
        if let End::Local(server) = &mut self.end {
            if let (true, Some(h)) = (peer_gone, server.take()) {
                // The DEST side's own error says what happened.
                if let Ok(Err(theirs)) = h.join() {
                    return theirs;
                }
            }
            // Our own failure: the DEST side stops at its next batch, on its own.
            return e;
        }
        if let Error::Receiver(Some(why)) = &e {
            let why = why.clone();
            self.kill();
            return Error::Invalid(format!("{}{why}", self.prefix()));
        }
        if !peer_gone {
            self.kill();
            return e;
        }
        let host = match &self.end {
            End::Remote { host, .. } => host.clone(),
            End::Local(_) => unreachable!("handled above"),
        };
        let hello = self.hello;
        let Some(f) = self.reap() else {
            return Error::Invalid(if hello {
                format!("the connection to {host} closed during the comparison")
            } else {
                format!("the lvmsync on {host} ended without starting a comparison")
            });
        };
        let said = f.said.map(|s| format!(": {s}")).unwrap_or_default();
        Error::Invalid(match f.code {
            _ if hello => {
                format!("the connection to {host} closed during the comparison ({}{said})", f.why)
            }
            Some(2) => format!(
                "the lvmsync on {host} has no verify (it refused `verify --serve`{said}): install this version there, or name one with --remote-path"
            ),
            Some(127) => format!(
                "lvmsync not found on {host}{said}; check --remote-path and the remote PATH"
            ),
            Some(255) => format!("cannot reach {host}{said} (exit status 255)"),
            _ => format!(
                "the remote side on {host} ended before comparing ({}{said})",
                f.why
            ),
        })
    }

    fn kill(&mut self) {
        if let End::Remote { child, reaped, .. } = &mut self.end {
            if !*reaped {
                let _ = child.kill();
                let _ = child.wait();
                *reaped = true;
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        drop(self.to.take());
        self.kill();
    }
}

/// Keeps the first lines the remote writes on standard error (reading to the end, so that it
/// never blocks on a full pipe).
fn spawn_stderr_capture(pipe: std::process::ChildStderr) -> Result<JoinHandle<Vec<String>>> {
    std::thread::Builder::new()
        .name("verify-stderr".into())
        .spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(pipe);
            let mut line = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                if lines.len() < 8 {
                    lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
                }
                line.clear();
            }
            lines
        })
        .map_err(|e| Error::io("starting the remote stderr reader", e))
}

/// `lvmsync verify --serve DEST`: the DEST side of a comparison on standard input and output.
pub fn serve_stdio(dest: &Path, queue_depth: usize) -> Result<()> {
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = io::stdout().lock();
    serve(dest, &mut input, &mut output, queue_depth)
}
