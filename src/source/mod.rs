//! Change sources: where the list of changed ranges comes from.
//!
//! - [`cow`]: a classic (dm-snapshot) exception store;
//! - [`thin`]: the difference of two thin devices' mappings in thin-pool metadata;
//! - [`resolve`](mod@resolve): from a source as given (a live snapshot found through LVM, or an
//!   offline store or metadata) to its [`ChangeSet`] and the device to read changed data from;
//! - [`full`]: the source of a first copy (`--full`), the whole of a snapshot or device.

pub mod cow;
pub mod full;
pub mod resolve;
pub mod thin;

use std::path::PathBuf;

use crate::extent::ExtentList;

pub use resolve::{resolve, Resolved};

/// Where the list of changes comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSourceSpec {
    /// A live snapshot, discovered through LVM.
    Snapshot(PathBuf),
    /// A classic exception store image or device.
    Cow(PathBuf),
    /// Thin-pool metadata image or device, with the snapshot's and origin's device ids.
    ThinMetadata {
        path: PathBuf,
        snap_id: u64,
        origin_id: u64,
    },
}

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

/// Where the snapshot's own contents of the changed ranges are read: what a true copy of the
/// snapshot holds there, and so what a destination must hold before the changes are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorSource {
    /// A device or image with the snapshot's contents at the volume's offsets (the snapshot LV
    /// itself, or an image of it).
    Device(std::path::PathBuf),
    /// A classic exception store: the changed chunks' old contents are the chunks it saved.
    CowStore(std::path::PathBuf),
    /// A thin snapshot that LVM left inactive (thin snapshots are created with the
    /// activation-skip flag): thin device `dev_id` of the pool device `pool`, `bytes` long,
    /// read through a private read-only view made only while the manifest is read.
    InactiveThin {
        pool: crate::lvm::DevNum,
        dev_id: u64,
        bytes: u64,
    },
}
