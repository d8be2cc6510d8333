//! What a format 4 stream says before its data: where it comes from (the identity record) and
//! what the destination must hold before each change (the manifest).
//!
//! The manifest lists every range the stream will change, in stream order, with a digest of the
//! destination's expected prior contents of each [`DIGEST_BLOCK`]-byte block of the range (the
//! snapshot's contents there: what a true copy of the snapshot holds). A receiver checks every
//! range against its destination before it writes any; a range that already holds the new
//! contents was applied before and is skipped. Digests are BLAKE3, truncated to 128 bits: ample
//! against accidental collisions, which are the only kind that matters here (whoever can forge a
//! stream can write the destination anyway).
//!
//! Manifest record payload (all integers big-endian):
//! ```text
//! block_bytes u32                 the digest block size; lvmsync writes 4096
//! flags       u32                 bit 0: the last manifest record; other bits 0
//! entry*      offset u64, len u64, kind u8 ('D' data or 'Z' zero),
//!             ceil(len / block_bytes) digests of 16 bytes (the last block may be short)
//! ```
//! The manifest ends with the record that has the last flag (it may hold no entry): a
//! receiver knows the whole list before the first data record, even on a live session where
//! nothing follows until it answers.

use serde::{Deserialize, Serialize};

use crate::extent::{Extent, ExtentKind};

use super::StreamError;

/// Bytes of the volume each prior-contents digest covers. Torn writes happen at page
/// granularity, so a range that a crash left half written still shows, block by block, old and
/// new contents only.
pub const DIGEST_BLOCK: u64 = 4096;
/// Bytes of one truncated BLAKE3 digest.
pub const DIGEST_LEN: usize = 16;
/// Bytes of an entry before its digests.
pub const ENTRY_HEADER_LEN: usize = 17;
/// Bytes of a manifest payload before its entries.
pub const PAYLOAD_HEADER_LEN: usize = 8;
/// Manifest flag: this record ends the manifest.
pub const FLAG_LAST: u32 = 1;
/// The largest range one entry may describe (a data record holds at most this much).
pub const MAX_ENTRY_LEN: u64 = super::v4::MAX_RECORD_LEN as u64;
/// The most bytes lvmsync puts in one manifest record.
pub const MAX_MANIFEST_PAYLOAD: usize = 1 << 20;

pub type BlockDigest = [u8; DIGEST_LEN];

/// The digest of one block of contents.
pub fn block_digest(data: &[u8]) -> BlockDigest {
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&blake3::hash(data).as_bytes()[..DIGEST_LEN]);
    d
}

/// The digests of `data`, one per `block` bytes (the last block may be short), appended to
/// `out`.
pub fn block_digests(data: &[u8], block: u64, out: &mut Vec<BlockDigest>) {
    out.extend(data.chunks(block as usize).map(block_digest));
}

/// Number of digest blocks of a range of `len` bytes.
pub fn block_count(len: u64, block: u64) -> u64 {
    len.div_ceil(block)
}

/// One range of the manifest with the digests of its expected prior contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub extent: Extent,
    pub prior: Vec<BlockDigest>,
}

/// Builds manifest record payloads from entries in stream order.
#[derive(Debug)]
pub struct ManifestBuilder {
    block: u64,
    payload: Vec<u8>,
    next_min: u64,
}

impl ManifestBuilder {
    pub fn new(block: u64) -> Self {
        let mut b = ManifestBuilder {
            block,
            payload: Vec::new(),
            next_min: 0,
        };
        b.start();
        b
    }

    fn start(&mut self) {
        self.payload.clear();
        self.payload
            .extend_from_slice(&(self.block as u32).to_be_bytes());
        self.payload.extend_from_slice(&0u32.to_be_bytes());
    }

    /// Whether no entry is waiting.
    pub fn is_empty(&self) -> bool {
        self.payload.len() == PAYLOAD_HEADER_LEN
    }

    /// Adds an entry. Returns a full payload to write as a record first when the entry would
    /// not fit in the current one.
    pub fn push(
        &mut self,
        extent: Extent,
        prior: &[BlockDigest],
    ) -> Result<Option<Vec<u8>>, StreamError> {
        if extent.len == 0 || extent.len > MAX_ENTRY_LEN || extent.offset < self.next_min {
            return Err(StreamError::Invalid(format!(
                "manifest entry {}+{} is empty or not after the previous one",
                extent.offset, extent.len
            )));
        }
        if prior.len() as u64 != block_count(extent.len, self.block) {
            return Err(StreamError::Invalid(format!(
                "manifest entry {}+{} has {} digests, not {}",
                extent.offset,
                extent.len,
                prior.len(),
                block_count(extent.len, self.block)
            )));
        }
        let size = ENTRY_HEADER_LEN + prior.len() * DIGEST_LEN;
        let full = (!self.is_empty() && self.payload.len() + size > MAX_MANIFEST_PAYLOAD)
            .then(|| self.take());
        self.payload.extend_from_slice(&extent.offset.to_be_bytes());
        self.payload.extend_from_slice(&extent.len.to_be_bytes());
        self.payload.push(match extent.kind {
            ExtentKind::Data => super::v4::TYPE_DATA,
            ExtentKind::Zero => super::v4::TYPE_ZERO,
        });
        for d in prior {
            self.payload.extend_from_slice(d);
        }
        self.next_min = extent.end();
        Ok(full)
    }

    /// The payload gathered so far, leaving the builder empty.
    pub fn take(&mut self) -> Vec<u8> {
        let out = self.payload.clone();
        self.start();
        out
    }

    /// The last payload of the manifest (with whatever entries are left, maybe none).
    pub fn finish(&mut self) -> Vec<u8> {
        self.payload[4..8].copy_from_slice(&FLAG_LAST.to_be_bytes());
        self.take()
    }
}

/// One entry of a manifest payload, borrowing its digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub extent: Extent,
    digests: &'a [u8],
}

impl<'a> EntryRef<'a> {
    /// The prior-contents digest of block `i` of the range.
    pub fn prior(&self, i: usize) -> BlockDigest {
        self.digests[i * DIGEST_LEN..(i + 1) * DIGEST_LEN]
            .try_into()
            .expect("digest length")
    }

    pub fn blocks(&self) -> usize {
        self.digests.len() / DIGEST_LEN
    }

    pub fn to_entry(&self) -> ManifestEntry {
        ManifestEntry {
            extent: self.extent,
            prior: (0..self.blocks()).map(|i| self.prior(i)).collect(),
        }
    }
}

/// One manifest record payload, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a> {
    pub block: u64,
    /// This record ends the manifest.
    pub last: bool,
    pub entries: Vec<EntryRef<'a>>,
}

/// Reads the entries of one manifest record payload, checking its structure (the order across
/// records is checked by the stream reader).
pub fn parse(payload: &[u8]) -> Result<Payload<'_>, String> {
    if payload.len() < PAYLOAD_HEADER_LEN {
        return Err("manifest record is shorter than its header".into());
    }
    let block = u32::from_be_bytes(payload[..4].try_into().unwrap()) as u64;
    if !(512..=1 << 20).contains(&block) || !block.is_power_of_two() {
        return Err(format!(
            "manifest block size {block} is not a power of two in 512..1 MiB"
        ));
    }
    let flags = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    if flags & !FLAG_LAST != 0 {
        return Err(format!("manifest record has unknown flags {flags:#x}"));
    }
    let mut entries = Vec::new();
    let mut rest = &payload[PAYLOAD_HEADER_LEN..];
    let mut next_min = 0u64;
    while !rest.is_empty() {
        if rest.len() < ENTRY_HEADER_LEN {
            return Err("manifest record ends inside an entry".into());
        }
        let offset = u64::from_be_bytes(rest[..8].try_into().unwrap());
        let len = u64::from_be_bytes(rest[8..16].try_into().unwrap());
        let kind = match rest[16] {
            super::v4::TYPE_DATA => ExtentKind::Data,
            super::v4::TYPE_ZERO => ExtentKind::Zero,
            k => {
                return Err(format!(
                    "manifest entry at offset {offset} has kind {k:#04x}"
                ))
            }
        };
        if len == 0 || len > MAX_ENTRY_LEN || offset.checked_add(len).is_none() || offset < next_min
        {
            return Err(format!(
                "manifest entry {offset}+{len} is empty, too long, overflows or is not after the previous one"
            ));
        }
        let digests = block_count(len, block) as usize * DIGEST_LEN;
        if rest.len() - ENTRY_HEADER_LEN < digests {
            return Err(format!(
                "manifest entry {offset}+{len} ends inside its digests"
            ));
        }
        entries.push(EntryRef {
            extent: Extent { offset, len, kind },
            digests: &rest[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + digests],
        });
        next_min = offset + len;
        rest = &rest[ENTRY_HEADER_LEN + digests..];
    }
    let last = flags & FLAG_LAST != 0;
    if entries.is_empty() && !last {
        return Err("manifest record holds no entry".into());
    }
    Ok(Payload {
        block,
        last,
        entries,
    })
}

/// The digest of a change set: BLAKE3 over every range's `offset u64, len u64, kind u8`
/// (big-endian, kind 'D' or 'Z'), in order, as lowercase hex. Two streams with the same digest
/// change exactly the same ranges.
#[derive(Debug, Clone, Default)]
pub struct ChangesDigest(blake3::Hasher);

impl ChangesDigest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, e: &Extent) {
        self.0.update(&e.offset.to_be_bytes());
        self.0.update(&e.len.to_be_bytes());
        self.0.update(&[match e.kind {
            ExtentKind::Data => super::v4::TYPE_DATA,
            ExtentKind::Zero => super::v4::TYPE_ZERO,
        }]);
    }

    pub fn hex(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// Appends one range to a resolution record payload: its offset, then the digests of its new
/// contents, one per block. Resolution payload: entries of `offset u64, blocks u32, digests`,
/// offsets increasing.
pub fn push_resolution(payload: &mut Vec<u8>, offset: u64, new: &[BlockDigest]) {
    payload.extend_from_slice(&offset.to_be_bytes());
    payload.extend_from_slice(&(new.len() as u32).to_be_bytes());
    for d in new {
        payload.extend_from_slice(d);
    }
}

/// The ranges of a resolution record payload, each with its new-contents digests.
pub fn parse_resolution(payload: &[u8]) -> Result<Vec<(u64, Vec<BlockDigest>)>, String> {
    let mut out: Vec<(u64, Vec<BlockDigest>)> = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err("resolution record ends inside an entry".into());
        }
        let offset = u64::from_be_bytes(rest[..8].try_into().unwrap());
        let n = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
        if out.last().is_some_and(|(o, _)| *o >= offset) {
            return Err(format!(
                "resolution entry at byte {offset} is not after the previous one"
            ));
        }
        let body = &rest[12..];
        if n == 0 || body.len() / DIGEST_LEN < n {
            return Err(format!(
                "resolution entry at byte {offset} has no digests or ends inside them"
            ));
        }
        out.push((
            offset,
            body[..n * DIGEST_LEN]
                .chunks_exact(DIGEST_LEN)
                .map(|c| c.try_into().unwrap())
                .collect(),
        ));
        rest = &body[n * DIGEST_LEN..];
    }
    if out.is_empty() {
        return Err("resolution record holds no entry".into());
    }
    Ok(out)
}

/// Where a stream comes from, carried by its identity record as a JSON object. Every field is
/// optional for readers; unknown fields are ignored, so later versions can add some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamIdentity {
    /// What made the stream: "classic", "thin", "cow-image", "thin-metadata", "full",
    /// "snapback".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<VolumeIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<VolumeIdentity>,
    /// Thin device ids of the snapshot and its origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_ids: Option<(u64, u64)>,
    /// Seconds since the Unix epoch when the stream was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The lvmsync version that made the stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lvmsync: String,
    /// Streams with a manifest: the digest of their change set (see [`ChangesDigest`]), so that
    /// a snapback can tell which change set it rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<String>,
    /// Snapbacks: the change-set digest of the stream whose apply wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_changes: Option<String>,
}

/// An LVM volume (or image) by name and UUID, as far as they are known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl StreamIdentity {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("identity serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("identity record is not valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(data: &[u8]) -> Vec<BlockDigest> {
        let mut v = Vec::new();
        block_digests(data, DIGEST_BLOCK, &mut v);
        v
    }

    #[test]
    fn entries_round_trip_and_split_into_records() {
        let mut b = ManifestBuilder::new(DIGEST_BLOCK);
        let mut payloads = Vec::new();
        let mut expect = Vec::new();
        for i in 0..400u64 {
            let extent = if i % 3 == 0 {
                Extent::zero(i << 20, 5000)
            } else {
                Extent::data(i << 20, (1 << 20) - i)
            };
            let prior = digests(&vec![i as u8; extent.len as usize]);
            if let Some(p) = b.push(extent, &prior).unwrap() {
                payloads.push(p);
            }
            expect.push(ManifestEntry { extent, prior });
        }
        payloads.push(b.finish());
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_MANIFEST_PAYLOAD));
        let n = payloads.len();
        let got: Vec<ManifestEntry> = payloads
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let parsed = parse(p).unwrap();
                assert_eq!(parsed.block, DIGEST_BLOCK);
                assert_eq!(parsed.last, i == n - 1);
                parsed
                    .entries
                    .into_iter()
                    .map(|e| e.to_entry())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn bad_payloads_are_refused() {
        let mut b = ManifestBuilder::new(DIGEST_BLOCK);
        b.push(Extent::data(4096, 8192), &digests(&[1u8; 8192]))
            .unwrap();
        let good = b.take();
        assert!(parse(&good).is_ok());
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_kind = good.clone();
        bad_kind[PAYLOAD_HEADER_LEN + 16] = b'X';
        assert!(parse(&bad_kind).is_err());
        let mut bad_block = good.clone();
        bad_block[..4].copy_from_slice(&3000u32.to_be_bytes());
        assert!(parse(&bad_block).is_err());
        let mut bad_flags = good.clone();
        bad_flags[7] = 2;
        assert!(parse(&bad_flags).is_err());
        // Only the last record may be empty.
        let mut empty = ManifestBuilder::new(DIGEST_BLOCK);
        assert!(parse(&empty.take()).is_err());
        let last = empty.finish();
        assert_eq!(parse(&last).unwrap().entries, vec![]);
        assert!(parse(&last).unwrap().last);
        // Out of order (also across records) or a wrong digest count are refused when building.
        assert!(b.push(Extent::data(0, 10), &digests(&[0u8; 10])).is_err());
        assert!(b
            .push(Extent::data(20000, 10), &digests(&[0u8; 10]))
            .is_ok());
        assert!(b
            .push(Extent::data(20005, 10), &digests(&[0u8; 10]))
            .is_err());
        assert!(b
            .push(Extent::data(30000, 8192), &digests(&[0u8; 10]))
            .is_err());
    }

    #[test]
    fn identity_round_trips_and_ignores_unknown_fields() {
        let id = StreamIdentity {
            kind: "thin".into(),
            origin: Some(VolumeIdentity {
                name: Some("vg/lv".into()),
                uuid: Some("abc".into()),
            }),
            thin_ids: Some((2, 1)),
            lvmsync: "4.1.0".into(),
            ..Default::default()
        };
        assert_eq!(StreamIdentity::from_json(&id.to_json()).unwrap(), id);
        let later = br#"{"kind":"classic","future":[1,2]}"#;
        assert_eq!(StreamIdentity::from_json(later).unwrap().kind, "classic");
        assert!(StreamIdentity::from_json(b"[1]").is_err());
    }
}
