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

use super::{Input, StreamError, StreamTotals, MAX_RECORD_ACCEPTED};

/// The first line of a format 3 stream.
pub const HANDSHAKE: &[u8] = b"lvmsync PROTO[3]\n";
/// Bytes of a record header: offset (u64) and length (u32).
pub const RECORD_HEADER_LEN: usize = 12;

/// Encodes a record header.
pub fn record_header(offset: u64, len: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..8].copy_from_slice(&offset.to_be_bytes());
    h[8..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Reads the next record into `buf` (grown as needed, never shrunk) and returns its offset and
/// length, or `None` at EOF on a record boundary.
pub(super) fn read_record<R: std::io::Read>(
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
