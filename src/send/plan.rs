//! What a send would put on the wire, known from the change list alone (`--dry-run`): ranges,
//! records, bytes, and the exact size of the stream (uncompressed; with `-z` an upper bound).

use crate::extent::{Extent, ExtentKind};
use crate::source::ChangeSet;
use crate::stream::manifest::{
    block_count, StreamIdentity, DIGEST_BLOCK, DIGEST_LEN, ENTRY_HEADER_LEN, MAX_MANIFEST_PAYLOAD,
    PAYLOAD_HEADER_LEN,
};
use crate::stream::{v3, v4, Format};

use super::{identity_for, SendOptions, READ_PIECE};

/// The stream a send would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendPlan {
    /// Changed ranges (sorted, merged).
    pub ranges: usize,
    /// Data and zero records (ranges cut into pieces of at most [`READ_PIECE`]).
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// Manifest records and their bytes (0 without a manifest).
    pub manifest_records: u64,
    pub manifest_bytes: u64,
    /// The whole stream's bytes, uncompressed: exact, or an upper bound with compression.
    pub stream_bytes: u64,
}

/// Plans sending `changes` with `opts`; `identity` and `manifest` as the send would use them.
pub fn plan(
    changes: &ChangeSet,
    opts: &SendOptions,
    identity: Option<&StreamIdentity>,
    manifest: bool,
) -> SendPlan {
    let pieces: Vec<Extent> = changes.extents.pieces(READ_PIECE).collect();
    let (mut data_bytes, mut zero_bytes) = (0, 0);
    for p in &pieces {
        match p.kind {
            ExtentKind::Data => data_bytes += p.len,
            ExtentKind::Zero => zero_bytes += p.len,
        }
    }
    let mut plan = SendPlan {
        ranges: changes.extents.len(),
        records: pieces.len() as u64,
        data_bytes,
        zero_bytes,
        manifest_records: 0,
        manifest_bytes: 0,
        stream_bytes: 0,
    };
    match opts.format {
        // Zero ranges go out as data records full of zeros.
        Format::V3 => {
            plan.stream_bytes = v3::HANDSHAKE.len() as u64
                + pieces
                    .iter()
                    .map(|p| (v3::RECORD_HEADER_LEN as u64) + p.len)
                    .sum::<u64>();
        }
        Format::V4 => {
            let record = v4::RECORD_HEADER_LEN as u64;
            let mut bytes = (v4::HANDSHAKE.len() + v4::HEADER_LEN) as u64;
            if let Some(id) = identity {
                bytes += record + identity_for(id, &pieces, manifest).to_json().len() as u64;
            }
            if manifest {
                let (records, payload) = manifest_size(&pieces);
                plan.manifest_records = records;
                plan.manifest_bytes = records * record + payload;
                bytes += plan.manifest_bytes;
            }
            bytes += pieces.len() as u64 * record + data_bytes;
            bytes += record + v4::END_PAYLOAD_LEN as u64;
            plan.stream_bytes = bytes;
        }
    }
    plan
}

/// Manifest records and their payload bytes for `pieces`, cut as
/// [`crate::stream::manifest::ManifestBuilder`] cuts them.
fn manifest_size(pieces: &[Extent]) -> (u64, u64) {
    let (mut records, mut total) = (0u64, 0u64);
    let mut payload = PAYLOAD_HEADER_LEN;
    let mut entries = 0;
    for p in pieces {
        let size = ENTRY_HEADER_LEN + block_count(p.len, DIGEST_BLOCK) as usize * DIGEST_LEN;
        if entries > 0 && payload + size > MAX_MANIFEST_PAYLOAD {
            records += 1;
            total += payload as u64;
            payload = PAYLOAD_HEADER_LEN;
            entries = 0;
        }
        payload += size;
        entries += 1;
    }
    (records + 1, total + payload as u64)
}
