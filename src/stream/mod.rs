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
//! - Pipelining: [`RecordEncoder`] (one per thread, from [`StreamWriter::encoder`]) does the
//!   expensive part (zstd, CRC-32C, BLAKE3) into an [`EncodedRecords`] batch;
//!   [`StreamWriter::write_encoded`] checks order and writes batches in stream order.
//!
//! The byte layout of both formats is in docs/stream-format.md.

use std::io::{self, BufReader, BufWriter, Read, Write};

pub(crate) mod coverage;
pub mod manifest;
pub mod v3;
pub mod v4;

/// The largest data payload lvmsync puts in one record. Readers accept format 3 records up to
/// [`MAX_RECORD_ACCEPTED`] (Ruby lvmsync sends one record per chunk, and thin chunks can be
/// large) and format 4 records up to [`v4::MAX_RECORD_LEN`].
pub const MAX_RECORD_DATA: usize = 4 << 20;
/// The largest format 3 record a reader accepts before calling the stream corrupt.
pub const MAX_RECORD_ACCEPTED: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V3,
    V4,
}

impl Format {
    /// The format's number, as on the command line and in the first line.
    pub fn number(self) -> u32 {
        match self {
            Format::V3 => 3,
            Format::V4 => 4,
        }
    }
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
    /// Format 4: the stream is a snapback written ahead of an apply, so a cut after its last
    /// complete record is the mark of an interrupted apply, not of damage.
    pub snapback: bool,
}

/// The zstd level of `--compress` unless told otherwise: zstd's first fast level, which finds
/// repeats as level 1 does but leaves literals uncoded. Each record is its own zstd frame, most
/// of 4 KiB, and building Huffman tables for every one of them costs as much CPU as the rest
/// of the compression, for an output some 2-5% smaller.
pub const DEFAULT_COMPRESS_LEVEL: i32 = -1;

/// How to write a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    pub format: Format,
    pub source_bytes: u64,
    pub chunk_bytes: u64,
    /// zstd level for record payloads (format 4 only; format 3 refuses compression).
    pub compress: Option<i32>,
    /// Mark the stream as a snapback (format 4 only).
    pub snapback: bool,
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
    Data {
        offset: u64,
        data: &'a [u8],
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// Format 4 identity record: JSON (checked to parse as a
    /// [`manifest::StreamIdentity`]).
    Identity(&'a [u8]),
    /// Format 4 manifest record (checked to parse, see [`manifest::parse`]).
    Manifest(&'a [u8]),
    /// Format 4 resolution record of a live session (see [`manifest::parse_resolution`]).
    Resolution(&'a [u8]),
}

/// Errors of stream encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt stream: {0}")]
    Corrupt(String),
    /// A complete, checksummed record that breaks a rule no crash explains: a snapback record
    /// that overlaps an earlier one (or that a reader cannot track). Damage, never taken for
    /// the cut of an interrupted snapback ([`StreamReader::snapback_cut`]).
    #[error("corrupt stream: {0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    /// The caller asked the writer for something the format forbids (records out of order,
    /// outside the source, offsets that overflow).
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Write buffer: small records are gathered, records at least this large go straight through.
const WRITE_BUFFER: usize = 1 << 20;
/// Read buffer: headers and small records come from memory, large payloads are read directly.
const READ_BUFFER: usize = 256 << 10;
/// The longest first line looked at before calling the handshake bad.
const MAX_HANDSHAKE: usize = 64;

/// Records encoded off the writing thread by a [`RecordEncoder`], ready for
/// [`StreamWriter::write_encoded`]. Reuse one (see [`EncodedRecords::clear`]) to avoid
/// allocating per batch.
#[derive(Debug, Default)]
pub struct EncodedRecords {
    format: Option<Format>,
    compressed: bool,
    wire: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Data,
    Zero,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: EntryKind,
    offset: u64,
    len: u64,
    /// End of this record's bytes in `wire`. Format 3 zero ranges have none: the writer
    /// writes their zero-filled data records itself.
    wire_end: usize,
    /// Per-record digest (format 4).
    digest: [u8; 32],
}

impl EncodedRecords {
    pub fn new() -> Self {
        Self::default()
    }
    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.format = None;
        self.compressed = false;
        self.wire.clear();
        self.entries.clear();
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Encoded bytes held (format 3 zero ranges are expanded only when written).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    fn bind(&mut self, format: Format) -> Result<(), StreamError> {
        match self.format {
            None => {
                self.format = Some(format);
                Ok(())
            }
            Some(f) if f == format => Ok(()),
            Some(f) => Err(StreamError::Invalid(format!(
                "batch holds format {f:?} records, cannot add format {format:?} records"
            ))),
        }
    }

    fn push(&mut self, kind: EntryKind, offset: u64, len: u64, digest: [u8; 32]) {
        self.entries.push(Entry {
            kind,
            offset,
            len,
            wire_end: self.wire.len(),
            digest,
        });
    }
}

/// Encodes records (splitting, zstd compression, checksums, digests) without touching the
/// sink, so that several threads can encode while one thread writes the results in order with
/// [`StreamWriter::write_encoded`]. One encoder per thread; it reuses its zstd context.
pub struct RecordEncoder {
    format: FormatEncoder,
}

enum FormatEncoder {
    V3,
    V4(v4::Encoder),
}

impl RecordEncoder {
    pub fn new(opts: &WriterOptions) -> Result<Self, StreamError> {
        let format = match opts.format {
            Format::V3 if opts.compress.is_some() => {
                return Err(StreamError::Unsupported(
                    "format 3 streams cannot be compressed (use format 4)".into(),
                ))
            }
            Format::V3 => FormatEncoder::V3,
            Format::V4 => FormatEncoder::V4(v4::Encoder::new(opts.compress)),
        };
        Ok(RecordEncoder { format })
    }

    fn format(&self) -> Format {
        match self.format {
            FormatEncoder::V3 => Format::V3,
            FormatEncoder::V4(_) => Format::V4,
        }
    }

    /// Another encoder with the same format and compression level, with its own zstd context.
    pub fn fresh(&self) -> RecordEncoder {
        let format = match &self.format {
            FormatEncoder::V3 => FormatEncoder::V3,
            FormatEncoder::V4(e) => FormatEncoder::V4(e.fresh()),
        };
        RecordEncoder { format }
    }

    /// Appends data records for `data` at byte `offset` to `out`, split into records of at most
    /// [`MAX_RECORD_DATA`] bytes. Empty data appends nothing.
    pub fn data(
        &mut self,
        offset: u64,
        data: &[u8],
        out: &mut EncodedRecords,
    ) -> Result<(), StreamError> {
        check_range(offset, data.len() as u64)?;
        out.bind(self.format())?;
        for (i, piece) in data.chunks(MAX_RECORD_DATA).enumerate() {
            let offset = offset + (i * MAX_RECORD_DATA) as u64;
            let digest = match &mut self.format {
                FormatEncoder::V3 => {
                    v3::encode_data(offset, piece, &mut out.wire);
                    [0u8; 32]
                }
                FormatEncoder::V4(encoder) => {
                    let (digest, compressed) = encoder.data(offset, piece, &mut out.wire)?;
                    out.compressed |= compressed;
                    digest
                }
            };
            out.push(EntryKind::Data, offset, piece.len() as u64, digest);
        }
        Ok(())
    }

    /// Whether record payloads are the data as it is (format 3, or format 4 without
    /// compression): what [`RecordEncoder::data_in_place`] needs.
    pub fn stores_data_as_is(&self) -> bool {
        match &self.format {
            FormatEncoder::V3 => true,
            FormatEncoder::V4(e) => !e.compresses(),
        }
    }

    /// Appends one data record of `len` bytes (at most [`MAX_RECORD_DATA`]) at byte `offset`
    /// whose data `fill` writes straight into the batch, where the record's payload goes:
    /// one copy fewer than [`RecordEncoder::data`], and the checksums are computed while the
    /// data is still in the CPU's cache. Only for an encoder that
    /// [stores data as it is](RecordEncoder::stores_data_as_is). If `fill` fails, the batch
    /// is left as it was and its error returned.
    pub fn data_in_place<E: From<StreamError>>(
        &mut self,
        offset: u64,
        len: usize,
        out: &mut EncodedRecords,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.stores_data_as_is() || len > MAX_RECORD_DATA {
            return Err(StreamError::Invalid(format!(
                "a data record of {len} bytes cannot be encoded in place by this encoder"
            ))
            .into());
        }
        check_range(offset, len as u64)?;
        out.bind(self.format())?;
        if len == 0 {
            return Ok(());
        }
        let start = out.wire.len();
        let header_len = match self.format {
            FormatEncoder::V3 => v3::RECORD_HEADER_LEN,
            FormatEncoder::V4(_) => v4::RECORD_HEADER_LEN,
        };
        out.wire.resize(start + header_len + len, 0);
        if let Err(e) = fill(&mut out.wire[start + header_len..]) {
            out.wire.truncate(start);
            return Err(e);
        }
        let record = &mut out.wire[start..];
        let digest = match self.format {
            FormatEncoder::V3 => {
                record[..header_len].copy_from_slice(&v3::record_header(offset, len as u32));
                [0u8; 32]
            }
            FormatEncoder::V4(_) => v4::finish_raw_data_record(offset, record),
        };
        out.push(EntryKind::Data, offset, len as u64, digest);
        Ok(())
    }

    /// Appends a zero range to `out` (format 4: one zero record; format 3: data records full
    /// of zeros, expanded when written). An empty range appends nothing.
    pub fn zero(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut EncodedRecords,
    ) -> Result<(), StreamError> {
        check_range(offset, len)?;
        out.bind(self.format())?;
        if len == 0 {
            return Ok(());
        }
        let digest = match self.format {
            FormatEncoder::V3 => [0u8; 32],
            FormatEncoder::V4(_) => v4::encode_zero(offset, len, &mut out.wire),
        };
        out.push(EntryKind::Zero, offset, len, digest);
        Ok(())
    }
}

fn check_range(offset: u64, len: u64) -> Result<(), StreamError> {
    match offset.checked_add(len) {
        Some(_) => Ok(()),
        None => Err(StreamError::Invalid(format!(
            "range at offset {offset} of {len} bytes overflows"
        ))),
    }
}

/// What the writer of each format keeps between records.
enum WriteState {
    V3(v3::WriteState),
    V4(Box<v4::WriteState>),
}

/// Writes a change stream. Records are buffered; [`StreamWriter::finish`] must be called to
/// end a format 4 stream (without it the stream has no end record and readers refuse it).
pub struct StreamWriter<W: Write> {
    sink: BufWriter<W>,
    format: Format,
    compressed: bool,
    encoder: RecordEncoder,
    scratch: EncodedRecords,
    totals: StreamTotals,
    state: WriteState,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the first line (and for format 4 the header).
    pub fn new(sink: W, opts: &WriterOptions) -> Result<Self, StreamError> {
        let encoder = RecordEncoder::new(opts)?;
        let mut sink = BufWriter::with_capacity(WRITE_BUFFER, sink);
        let mut totals = StreamTotals::default();
        let state = match opts.format {
            Format::V3 => WriteState::V3(v3::WriteState::start(&mut sink, opts, &mut totals)?),
            Format::V4 => WriteState::V4(Box::new(v4::WriteState::start(
                &mut sink,
                opts,
                &mut totals,
            )?)),
        };
        Ok(StreamWriter {
            sink,
            format: opts.format,
            compressed: opts.compress.is_some(),
            encoder,
            scratch: EncodedRecords::new(),
            totals,
            state,
        })
    }

    /// Continues a format 4 stream whose first records were written before (by this process
    /// or another): `sink` is positioned right after them, and `from` is the state a reader had
    /// there ([`StreamReader::continuation`]). Nothing is written now; the records that follow
    /// and the end record then make the whole stream, its counts and stream digest covering
    /// the kept records too. `opts` must be those of the stream's header.
    pub fn continue_after(
        sink: W,
        opts: &WriterOptions,
        from: Continuation,
    ) -> Result<Self, StreamError> {
        if opts.format != Format::V4 || opts.snapback {
            return Err(StreamError::Unsupported(
                "only an ordinary format 4 stream can be continued".into(),
            ));
        }
        let encoder = RecordEncoder::new(opts)?;
        let state = v4::WriteState::resume(opts.source_bytes, from.next_min, from.digest);
        Ok(StreamWriter {
            sink: BufWriter::with_capacity(WRITE_BUFFER, sink),
            format: Format::V4,
            compressed: opts.compress.is_some(),
            encoder,
            scratch: EncodedRecords::new(),
            totals: from.totals,
            state: WriteState::V4(Box::new(state)),
        })
    }

    /// A new encoder with this stream's format and compression, for another thread.
    pub fn encoder(&self) -> RecordEncoder {
        self.encoder.fresh()
    }

    /// Appends `data` at byte `offset` (split into records of at most [`MAX_RECORD_DATA`]).
    pub fn data(&mut self, offset: u64, data: &[u8]) -> Result<(), StreamError> {
        let mut batch = std::mem::take(&mut self.scratch);
        batch.clear();
        let result = self
            .encoder
            .data(offset, data, &mut batch)
            .and_then(|()| self.write_encoded(&batch));
        self.scratch = batch;
        result
    }

    /// Appends a zero range.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<(), StreamError> {
        let mut batch = std::mem::take(&mut self.scratch);
        batch.clear();
        let result = self
            .encoder
            .zero(offset, len, &mut batch)
            .and_then(|()| self.write_encoded(&batch));
        self.scratch = batch;
        result
    }

    /// Writes records encoded by a [`RecordEncoder`] of this stream's format. Format 4 checks
    /// that they continue the stream in increasing, disjoint order inside the source size (a
    /// snapback's records may come in any order: the caller keeps them disjoint); nothing is
    /// written if they do not.
    pub fn write_encoded(&mut self, batch: &EncodedRecords) -> Result<(), StreamError> {
        if batch.entries.is_empty() {
            return Ok(());
        }
        if batch.format != Some(self.format) {
            return Err(StreamError::Invalid(format!(
                "records encoded for format {:?} given to a format {:?} stream",
                batch.format, self.format
            )));
        }
        if batch.compressed && !self.compressed {
            return Err(StreamError::Invalid(
                "compressed records given to a stream whose header does not allow compression"
                    .into(),
            ));
        }
        match &mut self.state {
            WriteState::V3(state) => state.write(&mut self.sink, batch, &mut self.totals)?,
            WriteState::V4(state) => state.write(&mut self.sink, batch, &mut self.totals)?,
        }
        Ok(())
    }

    /// Pushes everything written so far through to the sink and flushes it, so that the caller
    /// can make it durable (a snapback is made durable before the data it saves is overwritten).
    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.sink.flush()?;
        Ok(())
    }

    pub fn totals(&self) -> StreamTotals {
        self.totals
    }

    /// Writes an identity, manifest or resolution record (format 4 only). The reader's rules
    /// apply: identity first, manifest records before any data or zero record.
    fn meta(&mut self, kind: u8, payload: &[u8]) -> Result<(), StreamError> {
        match &mut self.state {
            WriteState::V3(_) => Err(StreamError::Unsupported(
                "format 3 streams carry no identity, manifest or resolution".into(),
            )),
            WriteState::V4(state) => state.meta(&mut self.sink, kind, payload, &mut self.totals),
        }
    }

    /// Writes the identity record (must be the first record).
    pub fn identity(&mut self, id: &manifest::StreamIdentity) -> Result<(), StreamError> {
        self.meta(v4::TYPE_IDENTITY, &id.to_json())
    }

    /// Writes a manifest record (a payload from [`manifest::ManifestBuilder`]).
    pub fn manifest(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.meta(v4::TYPE_MANIFEST, payload)
    }

    /// Writes a resolution record (see [`manifest::push_resolution`]).
    pub fn resolution(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.meta(v4::TYPE_RESOLUTION, payload)
    }

    /// Writes the end record (format 4), flushes, and returns the sink with the totals.
    pub fn finish(mut self) -> Result<(W, StreamTotals), StreamError> {
        if let WriteState::V4(state) = self.state {
            state.finish(&mut self.sink, &mut self.totals)?;
        }
        let sink = self.sink.into_inner().map_err(|e| e.into_error())?;
        Ok((sink, self.totals))
    }
}

/// The reading side: a buffered source and the count of bytes consumed.
pub(crate) struct Input<R: Read> {
    src: BufReader<R>,
    /// Stream bytes consumed so far.
    pos: u64,
}

impl<R: Read> Input<R> {
    /// Reads until `buf` is full or EOF; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pos += n as u64;
                    // Keep the kind (callers tell broken pipes apart), add the position.
                    return Err(crate::error::at_stream_byte(e, self.pos));
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn truncated(&self, record_start: u64) -> StreamError {
        StreamError::Corrupt(format!(
            "stream ends inside a record at byte {} (the record starts at byte {record_start})",
            self.pos
        ))
    }

    /// Reads the first line, up to and including its `\n` (at most [`MAX_HANDSHAKE`] bytes).
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::with_capacity(32);
        let mut byte = [0u8; 1];
        while line.len() < MAX_HANDSHAKE && self.read_full(&mut byte)? == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        Ok(line)
    }
}

/// The state of a format 4 stream at a record boundary, from which a writer can carry on
/// (see [`StreamReader::continuation`]).
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The counts so far; `wire_bytes` is the stream position of the boundary.
    pub totals: StreamTotals,
    /// The next data or zero record must start at or after this offset.
    pub next_min: u64,
    /// The stream digest over the records so far.
    digest: blake3::Hasher,
}

/// What an error while reading a stream means at the end of a snapback
/// ([`StreamReader::snapback_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapbackCut {
    /// The error stands: the stream is no snapback, or the error is no damage (an I/O error).
    NotACut,
    /// A snapback cut short by a crash: its tail, from the failed record on, is no longer than
    /// an interrupted apply leaves. Applying the records before it restores every range the
    /// apply overwrote.
    Interrupted,
    /// A snapback with more than [`v4::MAX_SNAPBACK_TAIL`] bytes after its last good record:
    /// damaged, not cut by a crash.
    Damaged,
}

/// What the reader of each format keeps between records.
enum ReadState {
    V3(v3::ReadState),
    V4(Box<v4::ReadState>),
}

/// Reads a change stream of either format (told apart by the first line), verifying as it goes.
pub struct StreamReader<R: Read> {
    input: Input<R>,
    info: StreamInfo,
    totals: StreamTotals,
    /// Payload buffer, reused by every record.
    buf: Vec<u8>,
    state: ReadState,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the first line and (format 4) the header.
    pub fn open(source: R) -> Result<Self, StreamError> {
        let mut input = Input {
            src: BufReader::with_capacity(READ_BUFFER, source),
            pos: 0,
        };
        let line = input.read_line()?;
        let state = if v3::HANDSHAKES.contains(&&line[..]) {
            ReadState::V3(v3::ReadState::new())
        } else if line == v4::HANDSHAKE {
            ReadState::V4(Box::new(v4::ReadState::open(&mut input)?))
        } else if line.is_empty() {
            return Err(StreamError::Corrupt(
                "stream ends at byte 0, before the handshake line (expected 'lvmsync PROTO[3]' or 'lvmsync PROTO[4]')"
                    .into(),
            ));
        } else if !line.ends_with(b"\n")
            && v3::HANDSHAKES
                .iter()
                .chain(&[v4::HANDSHAKE])
                .any(|h| h.starts_with(&line))
        {
            return Err(StreamError::Corrupt(format!(
                "stream ends inside the handshake line at byte {}",
                input.pos
            )));
        } else {
            let seen = line.strip_suffix(b"\n").unwrap_or(&line).escape_ascii();
            let msg = format!(
                "handshake failed at stream byte 0; protocol mismatch? (saw '{seen}', expected 'lvmsync PROTO[3]' or 'lvmsync PROTO[4]')"
            );
            return Err(if line.starts_with(b"lvmsync PROTO[") {
                StreamError::Unsupported(msg)
            } else {
                StreamError::Corrupt(msg)
            });
        };
        let info = match &state {
            ReadState::V3(_) => v3::info(),
            ReadState::V4(state) => state.info().clone(),
        };
        let totals = StreamTotals {
            wire_bytes: input.pos,
            ..StreamTotals::default()
        };
        Ok(StreamReader {
            input,
            info,
            totals,
            buf: Vec::new(),
            state,
        })
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next record, or `None` at the verified end of the stream (and on every later call).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, StreamError> {
        match &mut self.state {
            ReadState::V3(state) => {
                match state.read_record(&mut self.input, &mut self.buf, &mut self.totals)? {
                    None => Ok(None),
                    Some((offset, len)) => Ok(Some(Record::Data {
                        offset,
                        data: &self.buf[..len],
                    })),
                }
            }
            ReadState::V4(state) => {
                match state.read_record(&mut self.input, &mut self.buf, &mut self.totals)? {
                    v4::Found::End => Ok(None),
                    v4::Found::Zero { offset, len } => Ok(Some(Record::Zero { offset, len })),
                    v4::Found::Meta { kind, len } => {
                        let payload = &self.buf[..len];
                        Ok(Some(match kind {
                            v4::TYPE_IDENTITY => Record::Identity(payload),
                            v4::TYPE_MANIFEST => Record::Manifest(payload),
                            _ => Record::Resolution(payload),
                        }))
                    }
                    v4::Found::Data {
                        offset,
                        len,
                        unpacked,
                    } => {
                        let data = if unpacked {
                            &state.unpacked[..len]
                        } else {
                            &self.buf[..len]
                        };
                        Ok(Some(Record::Data { offset, data }))
                    }
                }
            }
        }
    }

    pub fn totals(&self) -> StreamTotals {
        self.totals
    }

    /// Makes the next [`StreamReader::next_record`] return the record it returned last, once
    /// more (e.g. after looking at the first record to choose how to apply the stream). Panics
    /// if no record was returned yet.
    pub fn unread(&mut self) {
        match &mut self.state {
            ReadState::V3(state) => state.unread(),
            ReadState::V4(state) => state.unread(),
        }
    }

    /// Where a writer could continue this format 4 stream after the records read so far
    /// ([`StreamWriter::continue_after`]): after the header or after a record that was read
    /// whole and verified. `None` for format 3 (no counts, no digest to carry on), and after an
    /// error, which may have left the reading state half updated: take it after each record.
    pub fn continuation(&self) -> Option<Continuation> {
        match &self.state {
            ReadState::V3(_) => None,
            ReadState::V4(state) => state.continuation(self.totals, self.input.pos),
        }
    }

    /// Whether the stream has a manifest (known once its first records are read).
    pub fn has_manifest(&self) -> bool {
        match &self.state {
            ReadState::V3(_) => false,
            ReadState::V4(state) => state.has_manifest(),
        }
    }

    /// Stream bytes consumed so far: after a record, the position of the next one.
    pub fn position(&self) -> u64 {
        self.input.pos
    }

    /// Judges `error`, met reading the record that starts at stream byte `at`: whether the
    /// stream is a snapback cut short by a crash of the apply that wrote it (see
    /// docs/stream-format.md), whose records before `at` are then all it holds. Reads what is
    /// left of the input, at most [`v4::MAX_SNAPBACK_TAIL`] bytes.
    pub fn snapback_cut(&mut self, at: u64, error: &StreamError) -> io::Result<SnapbackCut> {
        let damaged = matches!(error, StreamError::Corrupt(_) | StreamError::Unsupported(_));
        if !self.info.snapback || !damaged {
            return Ok(SnapbackCut::NotACut);
        }
        let consumed = self.position() - at;
        let limit = v4::MAX_SNAPBACK_TAIL.saturating_sub(consumed);
        let rest = self.skip_rest(limit)?;
        Ok(if consumed + rest > v4::MAX_SNAPBACK_TAIL {
            SnapbackCut::Damaged
        } else {
            SnapbackCut::Interrupted
        })
    }

    /// Reads and throws away what is left of the input, up to `limit + 1` bytes; returns how
    /// many there were (`limit + 1` meaning "more than `limit`"). For judging the tail after an
    /// error, e.g. whether a snapback was cut short by a crash or damaged.
    pub fn skip_rest(&mut self, limit: u64) -> io::Result<u64> {
        let mut buf = vec![0u8; 64 << 10];
        let mut seen = 0u64;
        while seen <= limit {
            let want = buf.len().min((limit + 1 - seen) as usize);
            let n = self.input.read_full(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            seen += n as u64;
        }
        Ok(seen)
    }
}
