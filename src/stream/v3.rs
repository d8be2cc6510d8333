//! Format 3: `lvmsync PROTO[3]`, byte-exact with Ruby lvmsync 3.x (also its snapback format).
//!
//! ```text
//! handshake : "lvmsync PROTO[3]\n"                          17 bytes
//! record*   : offset  u64 big-endian   byte offset into the destination
//!             length  u32 big-endian   number of data bytes that follow
//!             data    <length> bytes
//! EOF       : the end; valid only on a record boundary
//! ```
//!
//! There is no checksum, no count and no end marker, so the reader can only detect truncation
//! inside a record. Readers accept a `\r\n` line ending (Ruby's `chomp`) and records in any order
//! (Ruby senders do not sort); writers always end the line with `\n`. The format has no zero
//! record: zero ranges go out as data records full of zeros.
//!
//! Both sides of the format live here: encoding records and writing a stream, reading one and
//! checking it as it goes. [`super`] dispatches on the format.

use std::io::Write;

use super::{
    EncodedRecords, EntryKind, Format, Input, StreamError, StreamInfo, StreamTotals, WriterOptions,
    MAX_RECORD_ACCEPTED, MAX_RECORD_DATA,
};

/// The first line of a format 3 stream.
pub const HANDSHAKE: &[u8] = b"lvmsync PROTO[3]\n";
/// The first lines a reader accepts: Ruby's `chomp` also takes a `\r\n` ending.
pub const HANDSHAKES: [&[u8]; 2] = [HANDSHAKE, b"lvmsync PROTO[3]\r\n"];
/// Bytes of a record header: offset (u64) and length (u32).
pub const RECORD_HEADER_LEN: usize = 12;

/// Encodes a record header.
pub fn record_header(offset: u64, len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..8].copy_from_slice(&offset.to_be_bytes());
    h[8..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Appends a data record for `data` at byte `offset` (at most [`MAX_RECORD_DATA`] bytes).
pub(super) fn encode_data(offset: u64, data: &[u8], wire: &mut Vec<u8>) {
    wire.extend_from_slice(&record_header(offset, data.len() as u32));
    wire.extend_from_slice(data);
}

/// The writer's state: zeros for the data records that stand for zero ranges.
pub(super) struct WriteState {
    /// Allocated on first use.
    zeros: Vec<u8>,
}

impl WriteState {
    /// Writes the first line.
    pub(super) fn start(
        sink: &mut impl Write,
        opts: &WriterOptions,
        totals: &mut StreamTotals,
    ) -> Result<Self, StreamError> {
        if opts.snapback {
            return Err(StreamError::Unsupported(
                "format 3 streams cannot be marked as snapbacks (use format 4)".into(),
            ));
        }
        sink.write_all(HANDSHAKE)?;
        totals.wire_bytes = HANDSHAKE.len() as u64;
        Ok(WriteState { zeros: Vec::new() })
    }

    /// Writes a batch of encoded records, each zero range as data records full of zeros.
    pub(super) fn write(
        &mut self,
        sink: &mut impl Write,
        batch: &EncodedRecords,
        totals: &mut StreamTotals,
    ) -> Result<(), StreamError> {
        let mut written = 0;
        for e in &batch.entries {
            if e.kind == EntryKind::Zero {
                sink.write_all(&batch.wire[written..e.wire_end])?;
                totals.wire_bytes += (e.wire_end - written) as u64;
                written = e.wire_end;
                self.write_zeros(sink, e.offset, e.len, totals)?;
            } else {
                totals.records += 1;
                totals.data_bytes += e.len;
            }
        }
        sink.write_all(&batch.wire[written..])?;
        totals.wire_bytes += (batch.wire.len() - written) as u64;
        Ok(())
    }

    /// The format has no zero record: writes data records full of zeros.
    fn write_zeros(
        &mut self,
        sink: &mut impl Write,
        offset: u64,
        len: u64,
        totals: &mut StreamTotals,
    ) -> Result<(), StreamError> {
        let piece_max = (len.min(MAX_RECORD_DATA as u64)) as usize;
        if self.zeros.len() < piece_max {
            self.zeros.resize(piece_max, 0);
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_RECORD_DATA as u64) as usize;
            sink.write_all(&record_header(offset + done, n as u32))?;
            sink.write_all(&self.zeros[..n])?;
            totals.wire_bytes += (RECORD_HEADER_LEN + n) as u64;
            totals.records += 1;
            totals.data_bytes += n as u64;
            done += n as u64;
        }
        Ok(())
    }
}

/// What a format 3 header says: nothing beyond the format.
pub(super) fn info() -> StreamInfo {
    StreamInfo {
        format: Format::V3,
        source_bytes: None,
        chunk_bytes: None,
        compressed: false,
        snapback: false,
    }
}

/// Reading state of a format 3 stream.
pub(super) struct ReadState {
    /// EOF was reached on a record boundary.
    done: bool,
    /// The last record, returned once more after [`ReadState::unread`] (its data is still in
    /// the buffer).
    last: Option<(u64, usize)>,
    replay: bool,
}

impl ReadState {
    pub(super) fn new() -> Self {
        ReadState {
            done: false,
            last: None,
            replay: false,
        }
    }

    /// Makes the next [`ReadState::read_record`] return the last record again.
    pub(super) fn unread(&mut self) {
        assert!(self.last.is_some(), "nothing to unread");
        self.replay = true;
    }

    /// Reads the next record into `buf` (grown as needed, never shrunk) and returns its offset
    /// and length, or `None` at EOF on a record boundary (and on every later call).
    pub(super) fn read_record<R: std::io::Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
        totals: &mut StreamTotals,
    ) -> Result<Option<(u64, usize)>, StreamError> {
        if std::mem::take(&mut self.replay) {
            return Ok(self.last);
        }
        if self.done {
            return Ok(None);
        }
        let record = read_record(input, buf, totals)?;
        self.done = record.is_none();
        if record.is_some() {
            self.last = record;
        }
        Ok(record)
    }
}

/// Reads the next record into `buf` (grown as needed, never shrunk) and returns its offset and
/// length, or `None` at EOF on a record boundary.
fn read_record<R: std::io::Read>(
    input: &mut Input<R>,
    buf: &mut Vec<u8>,
    totals: &mut StreamTotals,
) -> Result<Option<(u64, usize)>, StreamError> {
    let start = input.pos;
    let mut header = [0u8; RECORD_HEADER_LEN];
    let got = input.read_full(&mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < RECORD_HEADER_LEN {
        return Err(input.truncated(start));
    }
    let offset = u64::from_be_bytes(header[..8].try_into().unwrap());
    let len = u32::from_be_bytes(header[8..].try_into().unwrap()) as usize;
    if len > MAX_RECORD_ACCEPTED {
        return Err(StreamError::Corrupt(format!(
            "record at stream byte {start} claims {len} bytes, more than the {MAX_RECORD_ACCEPTED} accepted"
        )));
    }
    if offset.checked_add(len as u64).is_none() {
        return Err(StreamError::Corrupt(format!(
            "record at stream byte {start}: offset {offset} + length {len} overflows"
        )));
    }
    if buf.len() < len {
        buf.resize(len, 0);
    }
    if input.read_full(&mut buf[..len])? < len {
        return Err(input.truncated(start));
    }
    totals.records += 1;
    totals.data_bytes += len as u64;
    totals.wire_bytes = input.pos;
    Ok(Some((offset, len)))
}
