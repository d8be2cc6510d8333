//! Change streams: the bytes that travel from sender to receiver, and snapback files.
//!
//! Two formats, told apart by their first line:
//! - format 3 (`lvmsync PROTO[3]\n`), byte-exact with Ruby lvmsync 3.x ([`v3`]);
//! - format 4 (`lvmsync PROTO[4]\n`), the native format with checksums and an end record ([`v4`]).
//!
//! API contract (implemented in v3.rs / v4.rs, dispatched here):
//! - [`StreamWriter::new`] writes the header; [`StreamWriter::data`] and [`StreamWriter::zero`]
//!   append records (long ones split into records of at most [`MAX_RECORD_DATA`] bytes; format 3
//!   writes zero ranges as data records full of zeros); [`StreamWriter::finish`] writes the end
//!   record (format 4), flushes and returns the sink with totals.
//! - [`StreamReader::open`] reads and validates the header (format detected from the first
//!   line); [`StreamReader::next_record`] yields records and returns `Ok(None)` only at a
//!   verified end: for format 4 after a valid end record followed by EOF, for format 3 at EOF on
//!   a record boundary. Anything else (truncation, bad checksum, trailing bytes) is an error.

use std::io::{Read, Write};

/// The largest data payload lvmsync puts in one record. Readers accept records up to
/// [`MAX_RECORD_ACCEPTED`] (other writers may use larger ones).
pub const MAX_RECORD_DATA: usize = 4 << 20;
/// The largest record a reader accepts before calling the stream corrupt.
pub const MAX_RECORD_ACCEPTED: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V3,
    V4,
}

/// What a stream's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub format: Format,
    /// Format 4: size in bytes of the volume the stream was made from. `None` for format 3.
    pub source_bytes: Option<u64>,
    /// Format 4: change-tracking granularity in bytes. `None` for format 3.
    pub chunk_bytes: Option<u64>,
    /// Format 4: record payloads are zstd-compressed.
    pub compressed: bool,
}

/// How to write a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    pub format: Format,
    pub source_bytes: u64,
    pub chunk_bytes: u64,
    /// zstd level for record payloads (format 4 only; format 3 refuses compression).
    pub compress: Option<i32>,
}

/// Counts kept while writing or reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTotals {
    pub records: u64,
    /// Bytes of the volume covered by data records.
    pub data_bytes: u64,
    /// Bytes of the volume covered by zero records.
    pub zero_bytes: u64,
    /// Bytes written to or read from the sink, headers included.
    pub wire_bytes: u64,
}

/// One record of a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Data { offset: u64, data: &'a [u8] },
    Zero { offset: u64, len: u64 },
}

/// Errors of stream encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt stream: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
}

pub struct StreamWriter<W: Write> {
    _sink: W,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(_sink: W, _opts: &WriterOptions) -> Result<Self, StreamError> {
        todo!()
    }
    pub fn data(&mut self, _offset: u64, _data: &[u8]) -> Result<(), StreamError> {
        todo!()
    }
    pub fn zero(&mut self, _offset: u64, _len: u64) -> Result<(), StreamError> {
        todo!()
    }
    pub fn totals(&self) -> StreamTotals {
        todo!()
    }
    pub fn finish(self) -> Result<(W, StreamTotals), StreamError> {
        todo!()
    }
}

pub struct StreamReader<R: Read> {
    _source: R,
}

impl<R: Read> StreamReader<R> {
    pub fn open(_source: R) -> Result<Self, StreamError> {
        todo!()
    }
    pub fn info(&self) -> &StreamInfo {
        todo!()
    }
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, StreamError> {
        todo!()
    }
    pub fn totals(&self) -> StreamTotals {
        todo!()
    }
}
