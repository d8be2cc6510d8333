//! From a change source as given to the change list and the device to read changed data from.
//!
//! A live snapshot is discovered through LVM and read where the kernel keeps its changes; its
//! origin is flushed first, so that writes still in its page cache are in the change list. An
//! offline source (an exception store or thin-pool metadata, by `--cow` or `--thin-metadata`)
//! is read as it is. A data source given by `--data-source` must be able to be the volume's
//! origin: it is refused before anything is sent when it is smaller than a live snapshot's
//! volume, or ends before a change of a thin source.

use std::path::{Path, PathBuf};

use crate::blockdev::Device;
use crate::error::{Error, IoContext, Result};
use crate::extent::ExtentList;
use crate::lvm::{self, ClassicSnapshot, Snapshot, ThinSnapshot};
use crate::source::cow::ExceptionStore;
use crate::source::thin::{self, MetadataRoot};
use crate::source::{ChangeSet, ChangeSourceSpec, PriorSource};
use crate::stream::manifest::{StreamIdentity, VolumeIdentity};

/// What a change source resolved to.
#[derive(Debug)]
pub struct Resolved {
    pub changes: ChangeSet,
    /// Where the changed data is read: `--data-source`, else a live snapshot's origin. `None`
    /// only for an offline source without `--data-source`, which can list changes but not send.
    pub data_source: Option<PathBuf>,
    /// The live classic snapshot the changes come from, if they do: see [`Resolved::recheck`].
    pub classic: Option<ClassicSnapshot>,
    /// What the stream is made from (its identity record).
    pub identity: StreamIdentity,
    /// Where the snapshot's contents of the changed ranges are read, for the manifest that lets
    /// the receiver check its destination; `None` when no such source is known.
    pub prior: Option<PriorSource>,
}

impl Resolved {
    /// Checks again, once the changed data has been read, that the change list still holds: a
    /// classic snapshot that overflowed meanwhile means the origin was written while it was read.
    pub fn recheck(&self) -> Result<()> {
        let Some(snap) = &self.classic else {
            return Ok(());
        };
        lvm::check_classic_usable(snap).map_err(|e| {
            Error::Invalid(format!(
                "{e}; it overflowed during the sync, so the origin was being written: the destination may not match"
            ))
        })
    }
}

/// A data source given by `--data-source`, opened once to learn its size.
struct DataSource {
    path: PathBuf,
    bytes: u64,
}

pub(super) fn identity(
    kind: &str,
    origin: Option<VolumeIdentity>,
    snapshot: Option<VolumeIdentity>,
) -> StreamIdentity {
    StreamIdentity {
        kind: kind.into(),
        origin,
        snapshot,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
        lvmsync: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub(super) fn volume(name: &str, uuid: &Option<String>) -> VolumeIdentity {
    VolumeIdentity {
        name: Some(name.to_string()),
        uuid: uuid.clone(),
    }
}

/// Reads the change list of `spec`; `data_source` is `--data-source`, `base_source` is
/// `--base-source` (an image of the snapshot, read for the manifest).
pub fn resolve(
    spec: &ChangeSourceSpec,
    data_source: Option<&Path>,
    base_source: Option<&Path>,
) -> Result<Resolved> {
    let data = match data_source {
        Some(p) => Some(DataSource {
            path: p.to_owned(),
            bytes: Device::open_read(p)?.size,
        }),
        None => None,
    };
    let data_path = data.as_ref().map(|d| d.path.clone());
    match spec {
        ChangeSourceSpec::Cow(path) => {
            let store = ExceptionStore::open(path)?;
            let changes = store.changes(data.as_ref().map_or(u64::MAX, |d| d.bytes))?;
            Ok(Resolved {
                changes,
                data_source: data_path,
                classic: None,
                identity: identity("cow-image", None, None),
                prior: Some(base_source.map_or_else(
                    || PriorSource::CowStore(path.clone()),
                    |b| PriorSource::Device(b.to_owned()),
                )),
            })
        }
        ChangeSourceSpec::ThinMetadata {
            path,
            snap_id,
            origin_id,
        } => {
            let delta = thin::delta(path, *snap_id, *origin_id, MetadataRoot::Superblock)?;
            if let Some(d) = &data {
                check_thin_changes_fit(&delta.extents, delta.data_block_bytes, d)?;
            }
            Ok(Resolved {
                changes: delta.into_changes(data.as_ref().map_or(u64::MAX, |d| d.bytes)),
                data_source: data_path,
                classic: None,
                identity: StreamIdentity {
                    thin_ids: Some((*snap_id, *origin_id)),
                    ..identity("thin-metadata", None, None)
                },
                prior: base_source.map(|b| PriorSource::Device(b.to_owned())),
            })
        }
        ChangeSourceSpec::Snapshot(path) => {
            let snap = lvm::discover_snapshot(path)?;
            check_data_source_size(data.as_ref(), snap.name(), snap.origin_bytes())?;
            flush_origin(snap.origin())?;
            let data_source = Some(data_path.unwrap_or_else(|| snap.origin().to_owned()));
            // The snapshot's own contents, read for the manifest: the snapshot LV (an inactive
            // thin one through a view of its own) unless --base-source names an image of it.
            let base = base_source.map(Path::to_owned);
            match snap {
                Snapshot::Classic(s) => Ok(Resolved {
                    changes: classic_changes(&s)?,
                    data_source,
                    identity: identity(
                        "classic",
                        Some(volume(&s.origin_name, &s.origin_uuid)),
                        Some(volume(&s.name, &s.snapshot_uuid)),
                    ),
                    prior: Some(PriorSource::Device(
                        base.unwrap_or_else(|| s.snapshot.clone()),
                    )),
                    classic: Some(s),
                }),
                Snapshot::Thin(s) => Ok(Resolved {
                    changes: thin_changes(&s)?,
                    data_source,
                    identity: StreamIdentity {
                        thin_ids: Some((s.snap_id, s.origin_id)),
                        ..identity(
                            "thin",
                            Some(volume(&s.origin_name, &s.origin_uuid)),
                            Some(volume(&s.name, &s.snapshot_uuid)),
                        )
                    },
                    prior: Some(base.or_else(|| s.snapshot.clone()).map_or(
                        PriorSource::InactiveThin {
                            pool: s.pool,
                            dev_id: s.snap_id,
                            bytes: s.snapshot_bytes,
                        },
                        PriorSource::Device,
                    )),
                    classic: None,
                }),
            }
        }
    }
}

/// Refuses a thin change list that reaches a block wholly past the end of the data source (by
/// `--data-source`): the data source is then not this volume's origin, and dropping those
/// changes would leave the destination silently different. Only the last block may straddle
/// the end (a thin block size need not divide the volume size); it is cut to the end.
fn check_thin_changes_fit(extents: &ExtentList, block_bytes: u64, data: &DataSource) -> Result<()> {
    let limit = data
        .bytes
        .checked_next_multiple_of(block_bytes.max(1))
        .unwrap_or(u64::MAX);
    match extents.iter().find(|e| e.end() > limit) {
        Some(e) => Err(Error::Invalid(format!(
            "the thin delta has a change at byte {}, past the end of data source {} ({} bytes): it is not this volume's origin",
            e.offset.max(limit),
            data.path.display(),
            data.bytes
        ))),
        None => Ok(()),
    }
}

/// Refuses a data source (by `--data-source`) smaller than the snapshot's volume: it cannot be
/// a copy of the origin, and changes near the end would be missing from it.
fn check_data_source_size(
    data: Option<&DataSource>,
    snap_name: &str,
    volume_bytes: u64,
) -> Result<()> {
    match data {
        Some(d) if d.bytes < volume_bytes => Err(Error::Invalid(format!(
            "data source {} is {} bytes, smaller than the {volume_bytes}-byte volume of snapshot {snap_name}",
            d.path.display(),
            d.bytes
        ))),
        _ => Ok(()),
    }
}

/// Writes back what is still in the origin's page cache. Such writes (left there when another
/// process holds the origin open, so the writer's close did not flush them) have not reached the
/// snapshot's metadata yet: the change list would miss them while reads of the origin see them.
fn flush_origin(origin: &Path) -> Result<()> {
    Device::open_read(origin)?
        .sync()
        .ctx(|| format!("{}: cannot flush the origin", origin.display()))
}

/// Reads a live classic snapshot's exception store. The snapshot is checked before and after:
/// one that overflowed has an incomplete change list.
fn classic_changes(snap: &ClassicSnapshot) -> Result<ChangeSet> {
    lvm::check_classic_usable(snap)?;
    let store = ExceptionStore::open(&snap.cow)?;
    if store.chunk_bytes() != snap.chunk_bytes {
        return Err(Error::Invalid(format!(
            "{}: exception store chunk size {} differs from the snapshot table's {}",
            snap.name,
            store.chunk_bytes(),
            snap.chunk_bytes
        )));
    }
    let changes = store.changes(snap.origin_bytes)?;
    lvm::check_classic_usable(snap)?;
    Ok(changes)
}

/// Reads a live thin snapshot's difference from its origin through a metadata snapshot, which
/// is released as soon as the mappings are read (and on every error or signal).
fn thin_changes(snap: &ThinSnapshot) -> Result<ChangeSet> {
    let delta = thin::delta_live(
        &snap.pool_dm_name,
        &snap.metadata,
        snap.snap_id,
        snap.origin_id,
    )?;
    if delta.data_block_bytes != snap.block_bytes {
        return Err(Error::Invalid(format!(
            "{}: pool metadata says {}-byte blocks, LVM says {}",
            snap.name, delta.data_block_bytes, snap.block_bytes
        )));
    }
    Ok(delta.into_changes(snap.origin_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::Extent;

    fn data(path: &str, bytes: u64) -> DataSource {
        DataSource {
            path: PathBuf::from(path),
            bytes,
        }
    }

    #[test]
    fn a_data_source_smaller_than_the_volume_is_refused() {
        let data = data("/dev/vg/newer", 1000);
        let e = check_data_source_size(Some(&data), "vg/snap", 1001).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data source /dev/vg/newer is 1000 bytes, smaller than the 1001-byte volume of snapshot vg/snap"
        );
        check_data_source_size(Some(&data), "vg/snap", 1000).unwrap();
        check_data_source_size(None, "vg/snap", 1 << 40).unwrap();
    }

    #[test]
    fn only_a_thin_block_straddling_the_data_source_end_is_accepted() {
        let block = 65536;
        let list = |extents: &[Extent]| ExtentList::from_extents(extents.iter().copied());
        let origin = |bytes| data("origin.img", bytes);
        let last = list(&[Extent::data(0, block), Extent::zero(4 * block, block)]);
        check_thin_changes_fit(&last, block, &origin(5 * block)).unwrap();
        check_thin_changes_fit(&last, block, &origin(4 * block + 1)).unwrap();
        let e = check_thin_changes_fit(&last, block, &origin(4 * block)).unwrap_err();
        assert!(
            e.to_string()
                .contains("change at byte 262144, past the end of data source origin.img"),
            "{e}"
        );
        // A merged range reaching a whole block past the end is refused at that block.
        let long = list(&[Extent::data(0, 3 * block)]);
        let e = check_thin_changes_fit(&long, block, &origin(block + 1)).unwrap_err();
        assert!(e.to_string().contains("change at byte 131072"), "{e}");
    }
}
