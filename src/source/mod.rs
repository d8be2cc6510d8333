//! Change sources: where the list of changed ranges comes from.
//!
//! - [`cow`]: a classic (dm-snapshot) exception store;
//! - [`thin`]: the difference of two thin devices' mappings in thin-pool metadata.

pub mod cow;
pub mod thin;

use crate::extent::ExtentList;

/// What changed in a volume since a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// Changed ranges, in bytes of the volume, clamped to `volume_bytes`.
    pub extents: ExtentList,
    /// Granularity of the change tracking in bytes (COW chunk size or thin data block size).
    pub chunk_bytes: u64,
    /// Size of the volume the extents refer to.
    pub volume_bytes: u64,
}
