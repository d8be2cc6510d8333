//! The on-disk structures of dm-thin metadata: the superblock and btree nodes.
//!
//! Everything is little-endian in 4 KiB blocks. Each block starts with a crc32c checksum of the
//! rest of the block, XORed with a per-structure salt, followed by fields that include the
//! block's own number (so a misdirected write or a stale pointer is caught).

use std::path::Path;

use super::io::BLOCK_SIZE;
use super::ThinError;

/// `THIN_SUPERBLOCK_MAGIC`.
pub const SUPERBLOCK_MAGIC: u64 = 27_022_010;
/// Salt of the superblock checksum.
const SUPERBLOCK_CSUM_XOR: u32 = 160_774;
/// Salt of btree node checksums.
const BTREE_CSUM_XOR: u32 = 121_107;
/// Superblock versions the kernel writes (1 and 2 share the layout read here).
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;

const NODE_INTERNAL: u32 = 1;
const NODE_LEAF: u32 = 2;
const NODE_HEADER_SIZE: usize = 32;

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The kernel's `dm_bm_checksum`: crc32c seeded with all ones and without the final inversion,
/// XORed with a salt, over everything after the checksum field.
fn block_checksum(block: &[u8; BLOCK_SIZE], salt: u32) -> u32 {
    !crc32c::crc32c(&block[4..]) ^ salt
}

/// Recomputes the checksum of a superblock (told by its magic) or a btree node, as the kernel
/// writes it (for fuzzing, which must get past the checksums to reach the rest).
pub(crate) fn reseal_block(b: &mut [u8; BLOCK_SIZE]) {
    let salt = if le64(b, 32) == SUPERBLOCK_MAGIC {
        SUPERBLOCK_CSUM_XOR
    } else {
        BTREE_CSUM_XOR
    };
    let csum = block_checksum(b, salt);
    b[..4].copy_from_slice(&csum.to_le_bytes());
}

/// The fields of a thin-pool superblock that lvmsync uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Block this superblock was read from (0, or the held metadata snapshot's block).
    pub block: u64,
    pub flags: u32,
    pub version: u32,
    /// The pool's current time (snapshot counter); mapping times are compared against it.
    pub time: u32,
    pub transaction_id: u64,
    /// Block of the held metadata snapshot (a copy of the superblock), 0 when none is held.
    pub metadata_snap: u64,
    /// Root of the two-level mapping tree (dev id -> (virtual block -> data block)).
    pub data_mapping_root: u64,
    /// Root of the device details tree (dev id -> details).
    pub device_details_root: u64,
    /// Size of a data block in 512-byte sectors.
    pub data_block_size: u32,
    /// Size of the metadata device in 4 KiB blocks as recorded at format time.
    pub metadata_nr_blocks: u64,
}

impl Superblock {
    /// Decodes and checks the superblock found in `block`.
    pub fn decode(path: &Path, block: u64, b: &[u8; BLOCK_SIZE]) -> Result<Self, ThinError> {
        let corrupt = |message: String| ThinError::Corrupt {
            path: path.to_path_buf(),
            block,
            message,
        };
        let magic = le64(b, 32);
        if magic != SUPERBLOCK_MAGIC {
            return Err(ThinError::BadMagic {
                path: path.to_path_buf(),
                block,
                found: magic,
            });
        }
        let stored = le32(b, 0);
        let computed = block_checksum(b, SUPERBLOCK_CSUM_XOR);
        if stored != computed {
            return Err(ThinError::Checksum {
                path: path.to_path_buf(),
                block,
                what: "superblock",
                stored,
                computed,
            });
        }
        let blocknr = le64(b, 8);
        if blocknr != block {
            return Err(corrupt(format!(
                "superblock says it belongs at block {blocknr}"
            )));
        }
        let version = le32(b, 40);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(corrupt(format!(
                "unsupported thin metadata version {version}"
            )));
        }
        let incompat = le32(b, 360);
        if incompat != 0 {
            return Err(corrupt(format!(
                "unsupported incompatible feature flags {incompat:#x}"
            )));
        }
        let data_block_size = le32(b, 336);
        if data_block_size == 0 {
            return Err(corrupt("data block size is 0".into()));
        }
        let metadata_block_size = le32(b, 340);
        if metadata_block_size as usize * 512 != BLOCK_SIZE {
            return Err(corrupt(format!(
                "metadata block size is {metadata_block_size} sectors, expected 8"
            )));
        }
        Ok(Superblock {
            block,
            flags: le32(b, 4),
            version,
            time: le32(b, 44),
            transaction_id: le64(b, 48),
            metadata_snap: le64(b, 56),
            data_mapping_root: le64(b, 320),
            device_details_root: le64(b, 328),
            data_block_size,
            metadata_nr_blocks: le64(b, 344),
        })
    }

    /// Bytes per data block.
    pub fn data_block_bytes(&self) -> u64 {
        u64::from(self.data_block_size) * 512
    }
}

/// A decoded btree node. Values stay raw bytes so one decoder serves every tree.
#[derive(Debug, Clone)]
pub struct Node {
    pub leaf: bool,
    pub keys: Vec<u64>,
    pub values: Vec<u8>,
    pub value_size: usize,
}

impl Node {
    /// Decodes the node in `block`. `leaf_value_size` is the value size this tree's leaves must
    /// have (internal nodes always hold 8-byte child block numbers).
    pub fn decode(
        path: &Path,
        block: u64,
        b: &[u8; BLOCK_SIZE],
        leaf_value_size: usize,
    ) -> Result<Self, ThinError> {
        let corrupt = |message: String| ThinError::Corrupt {
            path: path.to_path_buf(),
            block,
            message,
        };
        let stored = le32(b, 0);
        let computed = block_checksum(b, BTREE_CSUM_XOR);
        if stored != computed {
            return Err(ThinError::Checksum {
                path: path.to_path_buf(),
                block,
                what: "btree node",
                stored,
                computed,
            });
        }
        let flags = le32(b, 4);
        let blocknr = le64(b, 8);
        let nr_entries = le32(b, 16) as usize;
        let max_entries = le32(b, 20) as usize;
        let value_size = le32(b, 24) as usize;
        if blocknr != block {
            return Err(corrupt(format!(
                "btree node says it belongs at block {blocknr}"
            )));
        }
        let leaf = match flags {
            NODE_INTERNAL => false,
            NODE_LEAF => true,
            _ => return Err(corrupt(format!("btree node has invalid flags {flags:#x}"))),
        };
        let expected_value_size = if leaf { leaf_value_size } else { 8 };
        if value_size != expected_value_size {
            return Err(corrupt(format!(
                "btree {} has value size {value_size}, expected {expected_value_size}",
                if leaf { "leaf" } else { "internal node" }
            )));
        }
        if max_entries == 0 || NODE_HEADER_SIZE + max_entries * (8 + value_size) > BLOCK_SIZE {
            return Err(corrupt(format!(
                "btree node max_entries {max_entries} does not fit a block"
            )));
        }
        if nr_entries > max_entries {
            return Err(corrupt(format!(
                "btree node has {nr_entries} entries but room for {max_entries}"
            )));
        }
        if !leaf && nr_entries == 0 {
            return Err(corrupt("internal btree node has no entries".into()));
        }
        let keys: Vec<u64> = (0..nr_entries)
            .map(|i| le64(b, NODE_HEADER_SIZE + 8 * i))
            .collect();
        if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
            return Err(corrupt(format!(
                "btree node keys are not ascending ({} then {})",
                w[0], w[1]
            )));
        }
        let vstart = NODE_HEADER_SIZE + 8 * max_entries;
        let values = b[vstart..vstart + nr_entries * value_size].to_vec();
        Ok(Node {
            leaf,
            keys,
            values,
            value_size,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Value `i` read as a little-endian u64 (its first 8 bytes).
    pub fn value_u64(&self, i: usize) -> u64 {
        le64(&self.values, i * self.value_size)
    }

    /// Raw bytes of value `i`.
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }
}

/// Leaf value of a device mapping tree: data block in the high 40 bits, time in the low 24.
pub fn unpack_block_time(v: u64) -> (u64, u32) {
    (v >> 24, (v & 0xff_ffff) as u32)
}

/// Size of a device details record: mapped_blocks, transaction_id (u64), creation_time,
/// snapshotted_time (u32).
pub const DEVICE_DETAILS_SIZE: usize = 24;

/// Decodes a device details record (`value` is [`DEVICE_DETAILS_SIZE`] bytes).
pub fn decode_device_details(value: &[u8]) -> (u64, u64, u32, u32) {
    (
        le64(value, 0),
        le64(value, 8),
        le32(value, 16),
        le32(value, 20),
    )
}
