//! Format 4: `lvmsync PROTO[4]`, the native stream with checksums, zero records, optional zstd
//! compression and a verified end. The full byte layout is in docs/stream-format.md.
//!
//! ```text
//! line    "lvmsync PROTO[4]\n"                       17 bytes (an old receiver refuses it)
//! header  36 bytes, all integers big-endian:
//!          0  8  magic "LVMSYNC4"
//!          8  4  version = 1
//!         12  4  flags: bit 0 = records may be zstd-compressed; bit 1 = snapback (a rollback
//!                file written ahead of an apply; see below); other bits must be 0
//!         16  8  source size in bytes
//!         24  8  chunk size in bytes
//!         32  4  crc32c of header bytes 0..32
//! record  28-byte header, then payload_len bytes of payload:
//!          0  1  type: 'I' identity, 'M' manifest, 'R' resolution, 'D' data, 'Z' zero
//!                range, 'E' end
//!          1  1  flags: bit 0 = payload is one zstd frame (data records only)
//!          2  2  reserved = 0
//!          4  4  payload_len
//!          8  8  offset (byte offset in the volume; 0 for 'E')
//!         16  8  len (volume bytes covered, uncompressed; 0 for 'E')
//!         24  4  crc32c of record header bytes 0..24 followed by the payload
//! 'I' 'M' 'R'  flags, offset and len 0; payload: identity JSON, manifest entries, resolution
//!         digests (see [`super::manifest`])
//! 'D'     payload = len bytes of data (raw) or a zstd frame that decompresses to len bytes
//! 'Z'     no payload; the range [offset, offset+len) is zeros
//! 'E'     64-byte payload: records u64, data bytes u64, zero bytes u64, stream bytes before
//!         the end record u64, BLAKE3 stream digest [32]
//! ```
//!
//! Data and zero records are strictly increasing and disjoint (`offset >= previous offset+len`),
//! non-empty, and lie inside the source size; the records come in the order
//! `[I] [M* M(last) R*] (D|Z)* E`. In a snapback (header flag bit 1) the data and zero records
//! may come in any order, but no two overlap: the reader tracks the bytes they cover
//! ([`super::coverage`], bounded memory) and refuses an overlap. The stream digest is BLAKE3 over the concatenation, in
//! stream order, of one 32-byte digest per record but the end record:
//! `BLAKE3(type ‖ offset u64 BE ‖ len u64 BE ‖ uncompressed data)` for data and zero records
//! (no data for zero records), `BLAKE3(type ‖ payload)` for the others.
//! Per-record digests let encoders hash in parallel threads while the stream digest still
//! fixes the order. Nothing may follow the end record.
//!
//! A snapback (header flag bit 1) is written while an apply runs, and made durable at least
//! every [`MAX_SNAPBACK_TAIL`] bytes, each time before the destination ranges it saves are
//! overwritten. A crash can therefore cut it anywhere after its last durable point: a reader
//! may accept a snapback that ends, without an end record, in at most that many bytes that do
//! not form a valid record, because nothing those bytes describe was ever overwritten.
//!
//! Both sides of the format live here: encoding records and writing a stream, reading one and
//! checking it as it goes. [`super`] dispatches on the format.

use std::io::{self, Write};

use super::coverage::{Coverage, Refusal, SECTOR};
use super::{
    EncodedRecords, EntryKind, Format, Input, StreamError, StreamInfo, StreamTotals, WriterOptions,
};

/// The first line of a format 4 stream.
pub const HANDSHAKE: &[u8] = b"lvmsync PROTO[4]\n";
pub const MAGIC: [u8; 8] = *b"LVMSYNC4";
/// Revision of the format 4 layout; readers refuse any other.
pub const VERSION: u32 = 1;
/// Header flag: records may carry zstd-compressed payloads.
pub const HEADER_FLAG_ZSTD: u32 = 1;
/// Header flag: the stream is a snapback, written ahead of an apply (see the module doc).
pub const HEADER_FLAG_SNAPBACK: u32 = 2;
/// The most bytes a snapback writer leaves not yet durable when it overwrites the destination:
/// the longest tail, after its last complete record, that a snapback cut short by a crash has.
pub const MAX_SNAPBACK_TAIL: u64 = 64 << 20;
/// The most separate ranges not aligned to [`super::coverage::SECTOR`] (512 bytes) that a
/// reader tracks in a snapback's records before it refuses the snapback: more than lvmsync's
/// writer ever leaves (it keeps no snapback whose records have more than a sixteenth of this
/// many ends not aligned to 512 bytes, and each such range is bounded by one).
pub const SNAPBACK_MAX_UNALIGNED: usize = 1 << 18;
/// The largest `len` and payload of a format 4 record (lvmsync writes at most
/// [`super::MAX_RECORD_DATA`]).
pub const MAX_RECORD_LEN: usize = 16 << 20;
pub const HEADER_LEN: usize = 36;

pub const RECORD_HEADER_LEN: usize = 28;
pub const TYPE_DATA: u8 = b'D';
pub const TYPE_ZERO: u8 = b'Z';
pub const TYPE_END: u8 = b'E';
/// Identity record: where the stream comes from (JSON, see [`super::manifest::StreamIdentity`]);
/// only as the first record.
pub const TYPE_IDENTITY: u8 = b'I';
/// Manifest record: ranges and prior-contents digests (see [`super::manifest`]); all before
/// the first data or zero record, the last one flagged.
pub const TYPE_MANIFEST: u8 = b'M';
/// Resolution record (live sessions only): new-contents digests of ranges the receiver asked
/// about (see [`crate::session`]); after the manifest, before the first data or zero record.
pub const TYPE_RESOLUTION: u8 = b'R';
/// The largest identity record payload.
pub const MAX_IDENTITY_LEN: usize = 64 << 10;
/// Record flag: the payload is a zstd frame.
pub const RECORD_FLAG_ZSTD: u8 = 1;
pub const END_PAYLOAD_LEN: usize = 64;

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Encodes the header that follows the first line.
pub fn encode_header(
    source_bytes: u64,
    chunk_bytes: u64,
    compressed: bool,
    snapback: bool,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_be_bytes());
    let mut flags = 0;
    if compressed {
        flags |= HEADER_FLAG_ZSTD;
    }
    if snapback {
        flags |= HEADER_FLAG_SNAPBACK;
    }
    h[12..16].copy_from_slice(&flags.to_be_bytes());
    h[16..24].copy_from_slice(&source_bytes.to_be_bytes());
    h[24..32].copy_from_slice(&chunk_bytes.to_be_bytes());
    let crc = crc32c::crc32c(&h[..32]);
    h[32..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Decodes and checks the header; `at` is its stream offset (for messages).
pub fn decode_header(h: &[u8; HEADER_LEN], at: u64) -> Result<StreamInfo, StreamError> {
    if h[..8] != MAGIC {
        return Err(StreamError::Corrupt(format!(
            "format 4 header at stream byte {at} has a bad magic"
        )));
    }
    let crc = be_u32(&h[32..]);
    if crc != crc32c::crc32c(&h[..32]) {
        return Err(StreamError::Corrupt(format!(
            "format 4 header at stream byte {at} has a bad checksum"
        )));
    }
    let version = be_u32(&h[8..]);
    if version != VERSION {
        return Err(StreamError::Unsupported(format!(
            "format 4 header at stream byte {at} has version {version}; this lvmsync reads version {VERSION}"
        )));
    }
    let flags = be_u32(&h[12..]);
    if flags & !(HEADER_FLAG_ZSTD | HEADER_FLAG_SNAPBACK) != 0 {
        return Err(StreamError::Unsupported(format!(
            "format 4 header at stream byte {at} has unknown flags {flags:#x}"
        )));
    }
    Ok(StreamInfo {
        format: Format::V4,
        source_bytes: Some(be_u64(&h[16..])),
        chunk_bytes: Some(be_u64(&h[24..])),
        compressed: flags & HEADER_FLAG_ZSTD != 0,
        snapback: flags & HEADER_FLAG_SNAPBACK != 0,
    })
}

/// Encodes a record header whose checksum covers `payload`.
pub fn record_header(
    kind: u8,
    flags: u8,
    offset: u64,
    len: u64,
    payload: &[u8],
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0] = kind;
    h[1] = flags;
    let payload_len = u32::try_from(payload.len()).expect("record payload fits in u32");
    h[4..8].copy_from_slice(&payload_len.to_be_bytes());
    h[8..16].copy_from_slice(&offset.to_be_bytes());
    h[16..24].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..24]), payload);
    h[24..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The bytes a data record's digest covers before its data: type, offset, len.
const DATA_DIGEST_PREFIX: usize = 17;
/// Data up to this size is hashed from one contiguous copy (see [`data_digest`]).
const DIGEST_COPY_MAX: usize = 64 << 10;

thread_local! {
    /// The prefix and data of a small record, laid out contiguously for [`data_digest`].
    static DIGEST_INPUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The per-record digest of a data record (see the module doc).
pub fn data_digest(offset: u64, data: &[u8]) -> [u8; 32] {
    let mut prefix = [0u8; DATA_DIGEST_PREFIX];
    prefix[0] = TYPE_DATA;
    prefix[1..9].copy_from_slice(&offset.to_be_bytes());
    prefix[9..].copy_from_slice(&(data.len() as u64).to_be_bytes());
    if data.len() > DIGEST_COPY_MAX {
        // A large record's misaligned first chunks are a small share of its hashing.
        let mut h = blake3::Hasher::new();
        h.update(&prefix);
        h.update(data);
        return *h.finalize().as_bytes();
    }
    // BLAKE3 hashes several 1 KiB chunks at once (SIMD) only when they lie whole in one
    // update. Fed the prefix and then the data, every chunk of a 4 KiB record straddles the
    // two and half of them are hashed a block at a time; copying the record after its prefix
    // costs far less than that.
    DIGEST_INPUT.with_borrow_mut(|input| {
        input.clear();
        input.extend_from_slice(&prefix);
        input.extend_from_slice(data);
        *blake3::hash(input).as_bytes()
    })
}

/// The per-record digest of a zero record.
pub fn zero_digest(offset: u64, len: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[TYPE_ZERO]);
    h.update(&offset.to_be_bytes());
    h.update(&len.to_be_bytes());
    *h.finalize().as_bytes()
}

/// Encodes the end record.
pub fn end_record(
    totals: &StreamTotals,
    digest: &[u8; 32],
) -> [u8; RECORD_HEADER_LEN + END_PAYLOAD_LEN] {
    let mut payload = [0u8; END_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&totals.records.to_be_bytes());
    payload[8..16].copy_from_slice(&totals.data_bytes.to_be_bytes());
    payload[16..24].copy_from_slice(&totals.zero_bytes.to_be_bytes());
    payload[24..32].copy_from_slice(&totals.wire_bytes.to_be_bytes());
    payload[32..].copy_from_slice(digest);
    let header = record_header(TYPE_END, 0, 0, 0, &payload);
    let mut out = [0u8; RECORD_HEADER_LEN + END_PAYLOAD_LEN];
    out[..RECORD_HEADER_LEN].copy_from_slice(&header);
    out[RECORD_HEADER_LEN..].copy_from_slice(&payload);
    out
}

/// Encodes data records, compressing their payloads when asked to.
pub(super) struct Encoder {
    /// zstd level, when payloads are compressed.
    level: Option<i32>,
    /// Made on first use, then reused.
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl Encoder {
    pub(super) fn new(level: Option<i32>) -> Self {
        Encoder {
            level,
            compressor: None,
        }
    }

    /// Whether payloads may be compressed.
    pub(super) fn compresses(&self) -> bool {
        self.level.is_some()
    }

    /// An encoder with the same level and its own zstd context.
    pub(super) fn fresh(&self) -> Self {
        Encoder::new(self.level)
    }

    /// Appends a data record for `data` at byte `offset` to `wire`, its payload compressed when
    /// that makes it smaller; returns the record's digest and whether it is compressed.
    pub(super) fn data(
        &mut self,
        offset: u64,
        data: &[u8],
        wire: &mut Vec<u8>,
    ) -> Result<([u8; 32], bool), StreamError> {
        let digest = data_digest(offset, data);
        let start = wire.len();
        let body = start + RECORD_HEADER_LEN;
        wire.resize(body, 0);
        let mut flags = 0;
        if let Some(level) = self.level {
            if self.compressor.is_none() {
                self.compressor = Some(zstd::bulk::Compressor::new(level)?);
            }
            let cctx = self.compressor.as_mut().unwrap();
            wire.reserve(zstd::zstd_safe::compress_bound(data.len()));
            // The cursor makes zstd write after the record header.
            let mut cursor = io::Cursor::new(&mut *wire);
            cursor.set_position(body as u64);
            let packed = cctx.compress_to_buffer(data, &mut cursor)?;
            if packed < data.len() {
                flags = RECORD_FLAG_ZSTD;
            } else {
                wire.truncate(body);
            }
        }
        if flags == 0 {
            wire.extend_from_slice(data);
        }
        let header = record_header(TYPE_DATA, flags, offset, data.len() as u64, &wire[body..]);
        wire[start..body].copy_from_slice(&header);
        Ok((digest, flags != 0))
    }
}

/// Writes the header of an uncompressed data record into `record` (header space, then the
/// data); returns the record's digest.
pub(super) fn finish_raw_data_record(offset: u64, record: &mut [u8]) -> [u8; 32] {
    let (head, data) = record.split_at_mut(RECORD_HEADER_LEN);
    head.copy_from_slice(&record_header(
        TYPE_DATA,
        0,
        offset,
        data.len() as u64,
        data,
    ));
    data_digest(offset, data)
}

/// Appends a zero record to `wire`; returns its digest.
pub(super) fn encode_zero(offset: u64, len: u64, wire: &mut Vec<u8>) -> [u8; 32] {
    wire.extend_from_slice(&record_header(TYPE_ZERO, 0, offset, len, &[]));
    zero_digest(offset, len)
}

/// The writer's state: the order of records and the stream digest.
pub(super) struct WriteState {
    source_bytes: u64,
    /// A snapback: records in any order (the caller keeps them disjoint).
    snapback: bool,
    /// The next record must start at or after this offset.
    next_min: u64,
    /// Stream digest over the per-record digests.
    digest: blake3::Hasher,
}

impl WriteState {
    /// Writes the first line and the header.
    pub(super) fn start(
        sink: &mut impl Write,
        opts: &WriterOptions,
        totals: &mut StreamTotals,
    ) -> Result<Self, StreamError> {
        sink.write_all(HANDSHAKE)?;
        let header = encode_header(
            opts.source_bytes,
            opts.chunk_bytes,
            opts.compress.is_some(),
            opts.snapback,
        );
        sink.write_all(&header)?;
        totals.wire_bytes = (HANDSHAKE.len() + header.len()) as u64;
        Ok(WriteState {
            source_bytes: opts.source_bytes,
            snapback: opts.snapback,
            next_min: 0,
            digest: blake3::Hasher::new(),
        })
    }

    /// The state after records written before (see [`super::StreamWriter::continue_after`]).
    pub(super) fn resume(source_bytes: u64, next_min: u64, digest: blake3::Hasher) -> Self {
        WriteState {
            source_bytes,
            snapback: false,
            next_min,
            digest,
        }
    }

    /// Writes a batch of encoded records after checking that they continue the stream in
    /// increasing, disjoint order (any order in a snapback) inside the source size; nothing is
    /// written if they do not.
    pub(super) fn write(
        &mut self,
        sink: &mut impl Write,
        batch: &EncodedRecords,
        totals: &mut StreamTotals,
    ) -> Result<(), StreamError> {
        let mut next_min = self.next_min;
        for e in &batch.entries {
            let end = e.offset + e.len; // checked by the encoder
            if e.offset < next_min && !self.snapback {
                return Err(StreamError::Invalid(format!(
                    "record at offset {} is before the end {next_min} of the previous one (format 4 records must be increasing and disjoint)",
                    e.offset
                )));
            }
            if end > self.source_bytes {
                return Err(StreamError::Invalid(format!(
                    "record {}+{} ends past the source size {}",
                    e.offset, e.len, self.source_bytes
                )));
            }
            next_min = end;
        }
        sink.write_all(&batch.wire)?;
        self.next_min = next_min;
        for e in &batch.entries {
            self.digest.update(&e.digest);
            totals.records += 1;
            match e.kind {
                EntryKind::Data => totals.data_bytes += e.len,
                EntryKind::Zero => totals.zero_bytes += e.len,
            }
        }
        totals.wire_bytes += batch.wire.len() as u64;
        Ok(())
    }

    /// Writes an identity, manifest or resolution record: only before any data or zero record
    /// (the reader checks their order among themselves).
    pub(super) fn meta(
        &mut self,
        sink: &mut impl Write,
        kind: u8,
        payload: &[u8],
        totals: &mut StreamTotals,
    ) -> Result<(), StreamError> {
        if totals.records != 0 {
            return Err(StreamError::Invalid(
                "identity, manifest and resolution records come before the data".into(),
            ));
        }
        if payload.len() > MAX_RECORD_LEN {
            return Err(StreamError::Invalid(format!(
                "a {}-byte record payload is more than the {MAX_RECORD_LEN} allowed",
                payload.len()
            )));
        }
        let header = record_header(kind, 0, 0, 0, payload);
        sink.write_all(&header)?;
        sink.write_all(payload)?;
        totals.wire_bytes += (header.len() + payload.len()) as u64;
        let mut h = blake3::Hasher::new();
        h.update(&[kind]);
        h.update(payload);
        self.digest.update(h.finalize().as_bytes());
        Ok(())
    }

    /// Writes the end record.
    pub(super) fn finish(
        self,
        sink: &mut impl Write,
        totals: &mut StreamTotals,
    ) -> Result<(), StreamError> {
        let end = end_record(totals, self.digest.finalize().as_bytes());
        sink.write_all(&end)?;
        totals.wire_bytes += end.len() as u64;
        Ok(())
    }
}

/// Reading state of a format 4 stream.
pub(super) struct ReadState {
    info: StreamInfo,
    /// Records must start at or after this offset (end of the previous one); not in a
    /// snapback.
    next_min: u64,
    /// A snapback: the bytes its records covered so far, which no later record may cover.
    covered: Option<Coverage>,
    source_bytes: u64,
    compressed: bool,
    digest: blake3::Hasher,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// Decompressed payloads, reused across records.
    pub(super) unpacked: Vec<u8>,
    pub(super) done: bool,
    /// Records of any type read so far (the identity record must be the first).
    seen: u64,
    /// A data or zero record was read (no identity, manifest or resolution record may follow).
    seen_changes: bool,
    /// Manifest: none yet, being read, or complete (its last record read).
    manifest: ManifestState,
    /// The end of the last manifest entry read.
    manifest_next_min: u64,
    /// The digest block size of the first manifest record (every one must have the same).
    manifest_block: Option<u64>,
    /// The last record found, kept to be returned once more (see [`ReadState::unread`]).
    last: Option<Found>,
    replay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestState {
    None,
    Open,
    Complete,
}

/// What [`read_record`] found.
#[derive(Debug, Clone, Copy)]
pub(super) enum Found {
    /// A data record; `len` bytes in the read buffer (`unpacked == false`) or in
    /// `ReadState::unpacked`.
    Data {
        offset: u64,
        len: usize,
        unpacked: bool,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// A valid end record followed by EOF.
    End,
    /// An identity, manifest or resolution record: `len` payload bytes in the read buffer.
    Meta {
        kind: u8,
        len: usize,
    },
}

impl ReadState {
    /// Reads and checks the header that follows the first line.
    pub(super) fn open<R: std::io::Read>(input: &mut Input<R>) -> Result<Self, StreamError> {
        let at = input.pos;
        let mut header = [0u8; HEADER_LEN];
        if input.read_full(&mut header)? < HEADER_LEN {
            return Err(StreamError::Corrupt(format!(
                "stream ends inside the format 4 header at byte {} (the header starts at byte {at})",
                input.pos
            )));
        }
        Ok(ReadState::new(decode_header(&header, at)?))
    }

    fn new(info: StreamInfo) -> Self {
        ReadState {
            next_min: 0,
            covered: info
                .snapback
                .then(|| Coverage::new(None, SNAPBACK_MAX_UNALIGNED)),
            source_bytes: info.source_bytes.unwrap_or(0),
            compressed: info.compressed,
            digest: blake3::Hasher::new(),
            decompressor: None,
            unpacked: Vec::new(),
            done: false,
            info,
            seen: 0,
            seen_changes: false,
            manifest: ManifestState::None,
            manifest_next_min: 0,
            manifest_block: None,
            last: None,
            replay: false,
        }
    }

    pub(super) fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Where a writer could carry on, at stream position `pos` (a record boundary).
    pub(super) fn continuation(
        &self,
        totals: StreamTotals,
        pos: u64,
    ) -> Option<super::Continuation> {
        if self.done || self.replay {
            return None;
        }
        Some(super::Continuation {
            totals: StreamTotals {
                wire_bytes: pos,
                ..totals
            },
            next_min: self.next_min,
            digest: self.digest.clone(),
        })
    }

    /// Makes the next [`ReadState::read_record`] return the last record again (its payload is
    /// still in the buffers; nothing is counted twice).
    pub(super) fn unread(&mut self) {
        assert!(self.last.is_some(), "nothing to unread");
        self.replay = true;
    }

    /// Whether the stream carries a manifest (known once its first record is read).
    pub(super) fn has_manifest(&self) -> bool {
        self.manifest != ManifestState::None
    }

    /// Checks where an identity, manifest or resolution record may be, and the structure of
    /// its payload.
    fn meta(
        &mut self,
        at: u64,
        kind: u8,
        flags: u8,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> Result<(), StreamError> {
        let corrupt =
            |msg: String| Err(StreamError::Corrupt(format!("{msg}, at stream byte {at}")));
        if flags != 0 || offset != 0 || len != 0 {
            return corrupt(format!(
                "record of type {:?} has flags, an offset or a length",
                kind as char
            ));
        }
        if self.seen_changes {
            return corrupt(format!(
                "record of type {:?} after a data or zero record",
                kind as char
            ));
        }
        match kind {
            TYPE_IDENTITY => {
                if self.seen != 0 {
                    return corrupt("identity record that is not the first record".into());
                }
                if payload.len() > MAX_IDENTITY_LEN {
                    return corrupt(format!(
                        "identity record of {} bytes, more than {MAX_IDENTITY_LEN}",
                        payload.len()
                    ));
                }
                if let Err(e) = super::manifest::StreamIdentity::from_json(payload) {
                    return corrupt(e);
                }
            }
            TYPE_MANIFEST => {
                if self.manifest == ManifestState::Complete {
                    return corrupt("manifest record after the last one".into());
                }
                let parsed = match super::manifest::parse(payload) {
                    Ok(p) => p,
                    Err(e) => return corrupt(e),
                };
                if let Some(block) = self.manifest_block.filter(|&b| b != parsed.block) {
                    return corrupt(format!(
                        "manifest record with block size {}, the first one has {block}",
                        parsed.block
                    ));
                }
                self.manifest_block = Some(parsed.block);
                for e in &parsed.entries {
                    if e.extent.offset < self.manifest_next_min {
                        return corrupt(format!(
                            "manifest entry at byte {} is not after the previous one",
                            e.extent.offset
                        ));
                    }
                    if e.extent.end() > self.source_bytes {
                        return corrupt(format!(
                            "manifest entry {}+{} ends past the source size {}",
                            e.extent.offset, e.extent.len, self.source_bytes
                        ));
                    }
                    self.manifest_next_min = e.extent.end();
                }
                self.manifest = if parsed.last {
                    ManifestState::Complete
                } else {
                    ManifestState::Open
                };
            }
            TYPE_RESOLUTION => {
                if self.manifest != ManifestState::Complete {
                    return corrupt(
                        "resolution record without a complete manifest before it".into(),
                    );
                }
                if let Err(e) = super::manifest::parse_resolution(payload) {
                    return corrupt(e);
                }
            }
            _ => unreachable!("meta records only"),
        }
        let mut h = blake3::Hasher::new();
        h.update(&[kind]);
        h.update(payload);
        self.digest.update(h.finalize().as_bytes());
        Ok(())
    }

    /// Checks that `[offset, offset+len)` is non-empty, inside the source and after the
    /// previous record (in a snapback: covers no byte an earlier record covered), and advances
    /// the order.
    fn place(&mut self, at: u64, what: &str, offset: u64, len: u64) -> Result<(), StreamError> {
        let corrupt = |msg: String| {
            Err(StreamError::Corrupt(format!(
                "{what} record at stream byte {at}: {msg}"
            )))
        };
        if len == 0 {
            return corrupt("empty record".into());
        }
        let Some(end) = offset.checked_add(len) else {
            return corrupt(format!("offset {offset} + length {len} overflows"));
        };
        if end > self.source_bytes {
            return corrupt(format!(
                "range {offset}+{len} ends past the source size {}",
                self.source_bytes
            ));
        }
        if let Some(covered) = self.covered.as_mut() {
            let refused = |msg: String| {
                Err(StreamError::Conflict(format!(
                    "snapback {what} record at stream byte {at}: {msg}"
                )))
            };
            return match covered.insert(offset, len)? {
                Ok(()) => Ok(()),
                Err(Refusal::Overlap { at: first }) => refused(format!(
                    "range {offset}+{len} overlaps an earlier record from byte {first} (a snapback's records never overlap)"
                )),
                Err(Refusal::TooManyUnaligned { max }) => refused(format!(
                    "its records make more than {max} separate ranges that do not start or end on a {SECTOR}-byte boundary, more than lvmsync writes"
                )),
            };
        }
        if offset < self.next_min {
            return corrupt(format!(
                "offset {offset} is before the end {} of the previous record (records must be increasing and disjoint)",
                self.next_min
            ));
        }
        self.next_min = end;
        Ok(())
    }

    /// Reads the next record (payload into `buf`, grown as needed and never shrunk).
    pub(super) fn read_record<R: std::io::Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
        totals: &mut StreamTotals,
    ) -> Result<Found, StreamError> {
        if self.replay {
            self.replay = false;
            return Ok(self.last.expect("unread has a record"));
        }
        let found = self.read_next(input, buf, totals)?;
        self.last = Some(found);
        self.seen += 1;
        Ok(found)
    }

    fn read_next<R: std::io::Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut Vec<u8>,
        totals: &mut StreamTotals,
    ) -> Result<Found, StreamError> {
        if self.done {
            return Ok(Found::End);
        }
        let at = input.pos;
        let mut h = [0u8; RECORD_HEADER_LEN];
        let got = input.read_full(&mut h)?;
        if got == 0 {
            return Err(StreamError::Corrupt(format!(
                "stream ends at byte {at} without an end record"
            )));
        }
        if got < RECORD_HEADER_LEN {
            return Err(input.truncated(at));
        }
        let payload_len = be_u32(&h[4..]) as usize;
        if payload_len > MAX_RECORD_LEN {
            return Err(StreamError::Corrupt(format!(
                "record at stream byte {at} claims a {payload_len}-byte payload, more than the {MAX_RECORD_LEN} accepted"
            )));
        }
        if buf.len() < payload_len {
            buf.resize(payload_len, 0);
        }
        let payload = &mut buf[..payload_len];
        if input.read_full(payload)? < payload_len {
            return Err(input.truncated(at));
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..24]), payload);
        if crc != be_u32(&h[24..]) {
            return Err(StreamError::Corrupt(format!(
                "record at stream byte {at} has a bad checksum"
            )));
        }
        let (kind, flags, reserved) = (h[0], h[1], u16::from_be_bytes([h[2], h[3]]));
        let (offset, len) = (be_u64(&h[8..]), be_u64(&h[16..]));
        if reserved != 0 {
            return Err(StreamError::Corrupt(format!(
                "record at stream byte {at} has non-zero reserved bits"
            )));
        }
        let found = match kind {
            TYPE_DATA => {
                if flags & !RECORD_FLAG_ZSTD != 0 {
                    return Err(StreamError::Unsupported(format!(
                        "data record at stream byte {at} has unknown flags {flags:#x}"
                    )));
                }
                if len > MAX_RECORD_LEN as u64 {
                    return Err(StreamError::Corrupt(format!(
                        "data record at stream byte {at} claims {len} bytes, more than the {MAX_RECORD_LEN} accepted"
                    )));
                }
                self.changes_may_start(at)?;
                self.place(at, "data", offset, len)?;
                let len = len as usize;
                let unpacked = flags & RECORD_FLAG_ZSTD != 0;
                let digest = if unpacked {
                    if !self.compressed {
                        return Err(StreamError::Corrupt(format!(
                            "data record at stream byte {at} is compressed but the header does not allow compression"
                        )));
                    }
                    self.decompress(at, &buf[..payload_len], len)?;
                    data_digest(offset, &self.unpacked[..len])
                } else {
                    if payload_len != len {
                        return Err(StreamError::Corrupt(format!(
                            "raw data record at stream byte {at} carries {payload_len} bytes for a length of {len}"
                        )));
                    }
                    data_digest(offset, &buf[..len])
                };
                self.digest.update(&digest);
                totals.data_bytes += len as u64;
                Found::Data {
                    offset,
                    len,
                    unpacked,
                }
            }
            TYPE_ZERO => {
                if flags != 0 || payload_len != 0 {
                    return Err(StreamError::Corrupt(format!(
                        "zero record at stream byte {at} has flags {flags:#x} or a payload ({payload_len} bytes)"
                    )));
                }
                self.changes_may_start(at)?;
                self.place(at, "zero", offset, len)?;
                self.digest.update(&zero_digest(offset, len));
                totals.zero_bytes += len;
                Found::Zero { offset, len }
            }
            TYPE_END => {
                if flags != 0 || offset != 0 || len != 0 || payload_len != END_PAYLOAD_LEN {
                    return Err(StreamError::Corrupt(format!(
                        "end record at stream byte {at} is malformed"
                    )));
                }
                if self.manifest == ManifestState::Open {
                    return Err(StreamError::Corrupt(format!(
                        "end record at stream byte {at} before the last manifest record"
                    )));
                }
                self.check_end(at, &buf[..END_PAYLOAD_LEN], totals)?;
                let mut probe = [0u8; 1];
                if input.read_full(&mut probe)? != 0 {
                    return Err(StreamError::Corrupt(format!(
                        "trailing bytes after the end record, at stream byte {}",
                        input.pos - 1
                    )));
                }
                self.done = true;
                totals.wire_bytes = input.pos;
                return Ok(Found::End);
            }
            TYPE_IDENTITY | TYPE_MANIFEST | TYPE_RESOLUTION => {
                self.meta(at, kind, flags, offset, len, &buf[..payload_len])?;
                totals.wire_bytes = input.pos;
                return Ok(Found::Meta {
                    kind,
                    len: payload_len,
                });
            }
            other => {
                return Err(StreamError::Unsupported(format!(
                    "record at stream byte {at} has unknown type {other:#04x}"
                )))
            }
        };
        totals.records += 1;
        totals.wire_bytes = input.pos;
        Ok(found)
    }

    /// A data or zero record may come only once the manifest, if any, is complete.
    fn changes_may_start(&mut self, at: u64) -> Result<(), StreamError> {
        if self.manifest == ManifestState::Open {
            return Err(StreamError::Corrupt(format!(
                "data or zero record at stream byte {at} before the last manifest record"
            )));
        }
        self.seen_changes = true;
        Ok(())
    }

    fn decompress(&mut self, at: u64, frame: &[u8], len: usize) -> Result<(), StreamError> {
        if self.decompressor.is_none() {
            self.decompressor = Some(zstd::bulk::Decompressor::new()?);
        }
        let dctx = self.decompressor.as_mut().unwrap();
        if self.unpacked.len() < len {
            self.unpacked.resize(len, 0);
        }
        let out = &mut self.unpacked[..len];
        let n = dctx.decompress_to_buffer(frame, out).map_err(|e| {
            StreamError::Corrupt(format!(
                "data record at stream byte {at}: payload does not decompress to the declared {len} bytes: {e}"
            ))
        })?;
        if n != len {
            return Err(StreamError::Corrupt(format!(
                "data record at stream byte {at}: payload decompresses to {n} bytes, the header says {len}"
            )));
        }
        Ok(())
    }

    fn check_end(&mut self, at: u64, p: &[u8], totals: &StreamTotals) -> Result<(), StreamError> {
        let claims = [
            ("records", be_u64(p), totals.records),
            ("data bytes", be_u64(&p[8..]), totals.data_bytes),
            ("zero bytes", be_u64(&p[16..]), totals.zero_bytes),
            ("stream bytes", be_u64(&p[24..]), at),
        ];
        for (what, claimed, seen) in claims {
            if claimed != seen {
                return Err(StreamError::Corrupt(format!(
                    "end record at stream byte {at} counts {claimed} {what}, the stream had {seen}"
                )));
            }
        }
        let digest = std::mem::take(&mut self.digest).finalize();
        if digest.as_bytes()[..] != p[32..64] {
            return Err(StreamError::Corrupt(format!(
                "end record at stream byte {at}: the BLAKE3 digest of the records does not match"
            )));
        }
        Ok(())
    }
}
