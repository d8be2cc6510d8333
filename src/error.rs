//! The library's error type. Every variant says what was being done to which path.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::stream::StreamError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a failed write to standard output says.
pub const STDOUT_WRITE: &str = "standard output: cannot write";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {message}")]
    Cow { path: PathBuf, message: String },
    #[error(transparent)]
    Stream(StreamError),
    #[error(transparent)]
    Thin(#[from] crate::source::thin::ThinError),
    #[error("{0}")]
    Invalid(String),
    /// The command line was refused, before anything was done.
    #[error("{0}")]
    Usage(String),
    /// The receiver of a live session stopped (`None`) or said it failed: its own account
    /// (exit status, relayed messages) tells why, and comes first.
    #[error("the receiver {}", match .0 { Some(why) => format!("failed: {why}"), None => "ended the session".into() })]
    Receiver(Option<String>),
    /// The receiver of a live session refused the stream before anything was written (the
    /// destination is not the snapshot's copy): its own message says why and what to do.
    #[error("the receiver refused: {0}")]
    Refused(String),
    /// `lvmsync verify` could not compare the two sides: this error says why.
    #[error(transparent)]
    NotCompared(Box<Error>),
}

impl Error {
    /// How lvmsync exits after this error.
    pub fn exit(&self) -> crate::exit::Exit {
        match self {
            Error::Usage(_) => crate::exit::Exit::Usage,
            Error::NotCompared(_) => crate::exit::Exit::NotCompared,
            _ => crate::exit::Exit::Failed,
        }
    }

    /// An I/O error with `context` (the path and the operation), unless a [`Named`] reader or
    /// writer already described it (its description is the more precise one).
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        match into_described(source) {
            Ok(d) => Error::Io {
                context: d.context,
                source: d.source,
            },
            Err(source) => Error::Io {
                context: context.into(),
                source,
            },
        }
    }
}

/// A stream error whose I/O error was described by [`Described`] (a named reader or writer)
/// becomes an [`Error::Io`] with that description; any other stays a stream error.
impl From<StreamError> for Error {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Io(io) => match into_described(io) {
                Ok(d) => Error::Io {
                    context: d.context,
                    source: d.source,
                },
                Err(io) => Error::Stream(StreamError::Io(io)),
            },
            e => Error::Stream(e),
        }
    }
}

/// Adds a context line to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

/// An I/O error with what was being done to which path, carried inside an `io::Error` of the
/// same kind so that it passes through code that only knows `io::Error` (the stream reader and
/// writer) and still comes out named.
#[derive(Debug)]
struct Described {
    context: String,
    source: io::Error,
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// An `io::Error` of the same kind that says what was being done to which path.
pub(crate) fn describe(context: String, source: io::Error) -> io::Error {
    io::Error::new(source.kind(), Described { context, source })
}

fn into_described(e: io::Error) -> std::result::Result<Described, io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<Described>()) {
        let inner = e.into_inner().expect("checked above");
        Ok(*inner.downcast::<Described>().expect("checked above"))
    } else {
        Err(e)
    }
}

/// Says at which byte of a stream a read failed, inside the reader's description if it has one.
pub(crate) fn at_stream_byte(e: io::Error, pos: u64) -> io::Error {
    match into_described(e) {
        Ok(d) => describe(format!("{} at byte {pos}", d.context), d.source),
        Err(e) => io::Error::new(e.kind(), format!("reading the stream at byte {pos}: {e}")),
    }
}

/// A reader or writer whose errors say what it is (e.g. "standard output: cannot write").
pub struct Named<T> {
    inner: T,
    context: String,
}

impl<T> Named<T> {
    /// `context` is the start of every error message: the path or stream, and the operation.
    pub fn new(inner: T, context: impl Into<String>) -> Self {
        Named {
            inner,
            context: context.into(),
        }
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn err(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::Interrupted {
            return e;
        }
        describe(self.context.clone(), e)
    }
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| self.err(e))
    }
}

impl<W: Write> Write for Named<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn named_stream_errors_come_out_named_and_keep_their_kind() {
        let e = match crate::stream::StreamReader::open(Named::new(Failing, "in.s: cannot read")) {
            Err(e) => Error::from(e),
            Ok(_) => panic!("a failing reader opened"),
        };
        let msg = e.to_string();
        assert!(msg.starts_with("in.s: cannot read at byte 0: "), "{msg}");
        assert!(!msg.contains("I/O error"), "{msg}");

        let opts = crate::stream::WriterOptions {
            format: crate::stream::Format::V4,
            source_bytes: 1 << 20,
            chunk_bytes: 4096,
            compress: None,
            snapback: false,
        };
        let w = crate::stream::StreamWriter::new(Named::new(Failing, "out: cannot write"), &opts)
            .unwrap();
        let e = Error::from(w.finish().err().expect("a failing writer finished"));
        assert_eq!(e.to_string(), "out: cannot write: broken pipe");
        match e {
            Error::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::BrokenPipe),
            e => panic!("{e:?}"),
        }
    }
}
