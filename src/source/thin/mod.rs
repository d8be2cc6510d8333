//! Thin-pool metadata: a native reader of dm-thin's on-disk btrees.
//!
//! The metadata device holds a superblock at block 0, a two-level mapping tree (thin device id
//! -> per-device tree; virtual block -> data block and time) and a device details tree. A live
//! pool keeps changing it, so a consistent view is read through a metadata snapshot: a copy of
//! the superblock the kernel keeps intact while it is held (see [`guard`]).
//!
//! [`delta`] compares an older thin device (a snapshot) with a newer one (its origin) and
//! returns the byte ranges where they differ, skipping every btree node both share.

mod btree;
mod diff;
mod format;
pub mod guard;
mod io;

use std::path::{Path, PathBuf};

use crate::extent::{Extent, ExtentList};
use crate::source::ChangeSet;

use diff::BlockChange;
pub use format::Superblock;
pub use guard::MetadataSnapGuard;

pub(crate) use format::reseal_block;
pub(crate) use io::BLOCK_SIZE;

use format::{decode_device_details, unpack_block_time, DEVICE_DETAILS_SIZE};
use io::MetadataDev;

/// Errors reading thin-pool metadata or holding a metadata snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    #[error("{0}")]
    Metadata(String),
    #[error("{context} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: block {block}: bad thin superblock magic {found} (expected 27022010): not thin-pool \
         metadata",
        path.display()
    )]
    BadMagic {
        path: PathBuf,
        block: u64,
        found: u64,
    },
    #[error(
        "{}: block {block}: {what} checksum mismatch (stored {stored:#010x}, computed \
         {computed:#010x})",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        block: u64,
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{}: block {block}: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        block: u64,
        message: String,
    },
    #[error("thin device {dev_id} not found in pool metadata {}", path.display())]
    DeviceNotFound { path: PathBuf, dev_id: u64 },
    #[error("{}: no metadata snapshot is held in this pool metadata", path.display())]
    NoMetadataSnapshot { path: PathBuf },
    #[error(
        "{}: the superblock holds metadata snapshot {in_superblock}, not {given}: the snapshot \
         was released or replaced",
        path.display()
    )]
    HeldRootMismatch {
        path: PathBuf,
        given: u64,
        in_superblock: u64,
    },
    #[error("{}: mapping of virtual block {block} lies beyond 2^64 bytes", path.display())]
    Overflow { path: PathBuf, block: u64 },
    #[error(
        "pool {pool} already has a held metadata snapshot (another tool is using it); not \
         touching it"
    )]
    AlreadyHeld { pool: String },
    #[error("`{command}` failed: {message}")]
    Dmsetup { command: String, message: String },
    #[error("cannot parse the status of thin pool {pool} ({line:?}): {reason}")]
    PoolStatus {
        pool: String,
        line: String,
        reason: String,
    },
}

/// Which version of the metadata to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataRoot {
    /// The current superblock at block 0: right for offline metadata (pool not active).
    Superblock,
    /// A held metadata snapshot: `None` takes its block from the superblock's `metadata_snap`
    /// field; `Some(b)` is the held root reported by `dmsetup status` (field 7), which must match.
    HeldSnapshot(Option<u64>),
}

/// Ranges where a newer thin device differs from an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinDelta {
    /// Size of a pool data block in bytes (the granularity of `extents`).
    pub data_block_bytes: u64,
    /// Differing ranges in bytes of the thin volume, whole data blocks, not clamped to the volume
    /// size. [`crate::extent::ExtentKind::Data`]: read the newer device there;
    /// [`crate::extent::ExtentKind::Zero`]: the newer device reads zeros there.
    pub extents: ExtentList,
}

impl ThinDelta {
    /// The changes of a thin volume of `volume_bytes`: a last block that straddles the end is
    /// cut to it.
    pub fn into_changes(self, volume_bytes: u64) -> ChangeSet {
        let mut extents = self.extents;
        extents.clamp(volume_bytes);
        ChangeSet {
            extents,
            chunk_bytes: self.data_block_bytes,
            volume_bytes,
        }
    }
}

/// Work done by [`delta_with_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Metadata blocks read, superblocks included.
    pub blocks_read: u64,
    /// Read system calls issued (fewer than blocks on block devices, which are read a few
    /// neighbouring blocks at a time).
    pub read_calls: u64,
    /// Blocks read ahead in parallel (block devices only; counted in `blocks_read` once used).
    pub blocks_prefetched: u64,
    /// Blocks read ahead but never needed (the read-ahead only takes nodes known to be needed,
    /// so this stays 0 on sound metadata).
    pub prefetched_unused: u64,
    /// Subtrees both devices share, skipped without reading them.
    pub shared_subtrees_skipped: u64,
}

/// One mapped block of a thin device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Virtual block of the thin device.
    pub block: u64,
    /// Pool data block holding it.
    pub data_block: u64,
    /// Pool time (snapshot counter) when it was mapped.
    pub time: u32,
}

/// The device details record of one thin device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDetails {
    pub dev_id: u64,
    pub mapped_blocks: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
}

/// Opens the metadata and reads the superblock selected by `root`.
fn open_root(path: &Path, root: MetadataRoot) -> Result<(MetadataDev, Superblock), ThinError> {
    let mut dev = MetadataDev::open(path)?;
    let sb = Superblock::decode(path, 0, dev.read(0)?)?;
    let held = match root {
        MetadataRoot::Superblock => return Ok((dev, sb)),
        MetadataRoot::HeldSnapshot(given) => {
            if sb.metadata_snap == 0 {
                return Err(ThinError::NoMetadataSnapshot {
                    path: path.to_path_buf(),
                });
            }
            match given {
                Some(b) if b != sb.metadata_snap => {
                    return Err(ThinError::HeldRootMismatch {
                        path: path.to_path_buf(),
                        given: b,
                        in_superblock: sb.metadata_snap,
                    })
                }
                _ => sb.metadata_snap,
            }
        }
    };
    let snap = Superblock::decode(path, held, dev.read(held)?)?;
    if snap.data_block_size != sb.data_block_size {
        return Err(ThinError::Corrupt {
            path: path.to_path_buf(),
            block: held,
            message: format!(
                "metadata snapshot has data block size {} but the pool has {}",
                snap.data_block_size, sb.data_block_size
            ),
        });
    }
    Ok((dev, snap))
}

/// Root block of device `dev_id`'s mapping tree.
fn device_root(dev: &mut MetadataDev, sb: &Superblock, dev_id: u64) -> Result<u64, ThinError> {
    match btree::lookup(dev, sb.data_mapping_root, dev_id, 8)? {
        Some(v) => Ok(u64::from_le_bytes(v[..8].try_into().unwrap())),
        None => Err(ThinError::DeviceNotFound {
            path: dev.path().to_path_buf(),
            dev_id,
        }),
    }
}

/// Reads the superblock selected by `root` (after checking it).
pub fn read_superblock(metadata: &Path, root: MetadataRoot) -> Result<Superblock, ThinError> {
    open_root(metadata, root).map(|(_, sb)| sb)
}

/// Ranges where thin device `origin_id` (newer) differs from `snap_id` (older): blocks mapped to
/// other data or only in the origin are [`crate::extent::ExtentKind::Data`], blocks mapped only
/// in the snapshot are [`crate::extent::ExtentKind::Zero`].
pub fn delta(
    metadata: &Path,
    snap_id: u64,
    origin_id: u64,
    root: MetadataRoot,
) -> Result<ThinDelta, ThinError> {
    delta_with_stats(metadata, snap_id, origin_id, root).map(|(d, _)| d)
}

/// [`delta`] on an active pool: reserves a metadata snapshot of the pool `pool_dm_name` (its
/// `thin-pool` target, e.g. `vg0-pool-tpool`), reads it from `metadata` (the pool's `_tmeta`
/// device) and releases it, also when reading fails.
pub fn delta_live(
    pool_dm_name: &str,
    metadata: &Path,
    snap_id: u64,
    origin_id: u64,
) -> Result<ThinDelta, ThinError> {
    let guard = MetadataSnapGuard::reserve(pool_dm_name)?;
    let root = MetadataRoot::HeldSnapshot(Some(guard.held_root()));
    let result = delta(metadata, snap_id, origin_id, root);
    let released = guard.release();
    let d = result?;
    released?;
    Ok(d)
}

/// [`delta`], also reporting how much metadata it had to read.
pub fn delta_with_stats(
    metadata: &Path,
    snap_id: u64,
    origin_id: u64,
    root: MetadataRoot,
) -> Result<(ThinDelta, DeltaStats), ThinError> {
    let (mut dev, sb) = open_root(metadata, root)?;
    let snap_root = device_root(&mut dev, &sb, snap_id)?;
    let origin_root = device_root(&mut dev, &sb, origin_id)?;
    let snap_height = btree::height(&mut dev, snap_root, 8)?;
    let origin_height = btree::height(&mut dev, origin_root, 8)?;
    let bytes = sb.data_block_bytes();
    let mut extents = Vec::new();
    let counters = diff::diff_trees(
        &mut dev,
        (snap_root, snap_height),
        (origin_root, origin_height),
        &mut |start, len, change| {
            let overflow = || ThinError::Overflow {
                path: metadata.to_path_buf(),
                block: start,
            };
            let offset = start.checked_mul(bytes).ok_or_else(overflow)?;
            let len = len.checked_mul(bytes).ok_or_else(overflow)?;
            offset.checked_add(len).ok_or_else(overflow)?;
            extents.push(match change {
                BlockChange::Data => Extent::data(offset, len),
                BlockChange::Zero => Extent::zero(offset, len),
            });
            Ok(())
        },
    )?;
    let stats = DeltaStats {
        blocks_read: dev.blocks_read(),
        read_calls: dev.reads(),
        blocks_prefetched: dev.blocks_prefetched(),
        prefetched_unused: dev.prefetched_unused(),
        shared_subtrees_skipped: counters.shared_subtrees_skipped,
    };
    Ok((
        ThinDelta {
            data_block_bytes: bytes,
            extents: ExtentList::from_extents(extents),
        },
        stats,
    ))
}

/// Every mapping of thin device `dev_id`, in block order (for inspection and tests; a large
/// device has millions).
pub fn mappings(
    metadata: &Path,
    dev_id: u64,
    root: MetadataRoot,
) -> Result<Vec<Mapping>, ThinError> {
    let (mut dev, sb) = open_root(metadata, root)?;
    let dev_root = device_root(&mut dev, &sb, dev_id)?;
    let height = btree::height(&mut dev, dev_root, 8)?;
    let mut cursor = btree::Cursor::new(dev_root, height);
    let mut out = Vec::new();
    while let Some((block, value)) = cursor.next_entry(&mut dev)? {
        let (data_block, time) = unpack_block_time(value);
        out.push(Mapping {
            block,
            data_block,
            time,
        });
    }
    Ok(out)
}

/// What thin device `dev_id` holds over its first `volume_bytes`: [`Extent::data`] where its
/// blocks are mapped, [`Extent::zero`] where they are not (an unmapped block reads as zeros), in
/// order, merged. Streams over the mapping tree, never holding every mapping.
pub fn mapped_extents(
    metadata: &Path,
    dev_id: u64,
    root: MetadataRoot,
    volume_bytes: u64,
) -> Result<(ExtentList, u64), ThinError> {
    let (mut dev, sb) = open_root(metadata, root)?;
    let dev_root = device_root(&mut dev, &sb, dev_id)?;
    let height = btree::height(&mut dev, dev_root, 8)?;
    let mut cursor = btree::Cursor::new(dev_root, height);
    let bytes = sb.data_block_bytes();
    let mut extents = Vec::new();
    // Start of the current run of mapped blocks, and its end (in blocks).
    let mut run: Option<(u64, u64)> = None;
    let mut covered = 0u64;
    let flush = |start: u64, end: u64, extents: &mut Vec<Extent>, covered: &mut u64| {
        let (s, e) = (start * bytes, (end * bytes).min(volume_bytes));
        if s >= e {
            return;
        }
        if s > *covered {
            extents.push(Extent::zero(*covered, s - *covered));
        }
        extents.push(Extent::data(s, e - s));
        *covered = e;
    };
    while let Some((block, _)) = cursor.next_entry(&mut dev)? {
        if block.checked_mul(bytes).is_none_or(|b| b >= volume_bytes) {
            break;
        }
        run = match run {
            Some((s, e)) if e == block => Some((s, block + 1)),
            Some((s, e)) => {
                flush(s, e, &mut extents, &mut covered);
                Some((block, block + 1))
            }
            None => Some((block, block + 1)),
        };
    }
    if let Some((s, e)) = run {
        flush(s, e, &mut extents, &mut covered);
    }
    if covered < volume_bytes {
        extents.push(Extent::zero(covered, volume_bytes - covered));
    }
    Ok((ExtentList::from_extents(extents), bytes))
}

/// [`mapped_extents`] of an active pool, through a metadata snapshot held for the read (see
/// [`delta_live`]).
pub fn mapped_extents_live(
    pool_dm_name: &str,
    metadata: &Path,
    dev_id: u64,
    volume_bytes: u64,
) -> Result<(ExtentList, u64), ThinError> {
    let guard = MetadataSnapGuard::reserve(pool_dm_name)?;
    let root = MetadataRoot::HeldSnapshot(Some(guard.held_root()));
    let result = mapped_extents(metadata, dev_id, root, volume_bytes);
    let released = guard.release();
    let r = result?;
    released?;
    Ok(r)
}

/// The device details of every thin device in the pool, by device id.
pub fn devices(metadata: &Path, root: MetadataRoot) -> Result<Vec<DeviceDetails>, ThinError> {
    let (mut dev, sb) = open_root(metadata, root)?;
    let mut out = Vec::new();
    btree::walk(
        &mut dev,
        sb.device_details_root,
        DEVICE_DETAILS_SIZE,
        &mut |dev_id, value| {
            let (mapped_blocks, transaction_id, creation_time, snapshotted_time) =
                decode_device_details(value);
            out.push(DeviceDetails {
                dev_id,
                mapped_blocks,
                transaction_id,
                creation_time,
                snapshotted_time,
            });
            Ok(())
        },
    )?;
    Ok(out)
}
