//! The source of a first copy (`lvmsync --full SOURCE`): what is read, how large the volume is,
//! and what is known to read as zeros without reading it.
//!
//! - A classic snapshot is read through its own device, which shows the origin as it was when
//!   the snapshot was taken (dm-snapshot serves changed chunks from the exception store).
//! - A thin snapshot is read through its own device, or, when LVM left it inactive (thin
//!   snapshots are created with the activation-skip flag), through a private read-only view
//!   of it ([`ReadOnlyThinDevice`]), removed on every exit path; LVM's state is not changed.
//!   Its blocks that no pool block backs read as zeros: the pool's mapping tree (read through
//!   a held metadata snapshot) lists them, and they are sent as zero ranges without being read.
//! - Anything else (a block device that is not a snapshot, an image file) is read as it is; it
//!   must not change while it is copied. An image file's holes (asked for with SEEK_DATA and
//!   SEEK_HOLE) are zero ranges, not read.

use std::path::{Path, PathBuf};

use crate::blockdev::{Device, DeviceKind};
use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentList};
use crate::lvm::{self, ClassicSnapshot, Snapshot, ThinSnapshot};
use crate::source::resolve::{identity, volume};
use crate::source::thin::{self, guard::ReadOnlyThinDevice};
use crate::stream::manifest::{StreamIdentity, VolumeIdentity};

/// The identity kind of a first copy's stream.
pub const KIND: &str = "full";

/// Granularity of a source that has none of its own (a plain device or file), for the stream
/// header.
pub const PLAIN_CHUNK_BYTES: u64 = 64 << 10;

/// What a first copy reads.
#[derive(Debug)]
pub struct FullSource {
    /// The device or image read.
    pub read_path: PathBuf,
    pub volume_bytes: u64,
    /// The snapshot's chunk or thin block size ([`PLAIN_CHUNK_BYTES`] for other sources).
    pub chunk_bytes: u64,
    /// The whole volume, in order: data where it must be read, zero where it is known to read
    /// as zeros (unmapped blocks of a thin snapshot).
    pub extents: ExtentList,
    pub identity: StreamIdentity,
    /// What is copied, for messages ("thin snapshot vg/snap").
    pub what: String,
    classic: Option<ClassicSnapshot>,
    view: Option<ReadOnlyThinDevice>,
}

impl FullSource {
    /// The private read-only device made for an inactive thin snapshot, if one was.
    pub fn view(&self) -> Option<&ReadOnlyThinDevice> {
        self.view.as_ref()
    }

    /// Checks, once everything was read, that the source still held: a classic snapshot that
    /// overflowed meanwhile no longer shows its point in time.
    pub fn recheck(&self) -> Result<()> {
        match &self.classic {
            Some(s) => lvm::check_classic_usable(s).map_err(|e| {
                Error::Invalid(format!(
                    "{e}; it overflowed during the copy, so the destination may not match it"
                ))
            }),
            None => Ok(()),
        }
    }

    /// Gives back what was made to read the source (the private view of a thin snapshot),
    /// reporting a failure; dropping does the same but can only warn.
    pub fn close(mut self) -> Result<()> {
        match self.view.take() {
            Some(view) => view.remove().map_err(Error::from),
            None => Ok(()),
        }
    }
}

/// Finds what `lvmsync --full PATH` reads.
pub fn resolve_full(path: &Path) -> Result<FullSource> {
    match lvm::discover_copy_source(path)? {
        Some(Snapshot::Classic(s)) => classic(s),
        Some(Snapshot::Thin(s)) => thin_snapshot(s),
        None => plain(path),
    }
}

fn whole(bytes: u64) -> ExtentList {
    ExtentList::from_extents([Extent::data(0, bytes)])
}

fn classic(s: ClassicSnapshot) -> Result<FullSource> {
    lvm::check_classic_usable(&s)?;
    let volume_bytes = Device::open_read(&s.snapshot)?.size;
    Ok(FullSource {
        read_path: s.snapshot.clone(),
        volume_bytes,
        chunk_bytes: s.chunk_bytes,
        extents: whole(volume_bytes),
        identity: identity(
            KIND,
            Some(volume(&s.origin_name, &s.origin_uuid)),
            Some(volume(&s.name, &s.snapshot_uuid)),
        ),
        what: format!("classic snapshot {}", s.name),
        classic: Some(s),
        view: None,
    })
}

fn thin_snapshot(s: ThinSnapshot) -> Result<FullSource> {
    let volume_bytes = s.snapshot_bytes;
    let (extents, block_bytes) =
        thin::mapped_extents_live(&s.pool_dm_name, &s.metadata, s.snap_id, volume_bytes)?;
    if block_bytes != s.block_bytes {
        return Err(Error::Invalid(format!(
            "{}: pool metadata says {block_bytes}-byte blocks, LVM says {}",
            s.name, s.block_bytes
        )));
    }
    let (read_path, view) = match &s.snapshot {
        Some(dev) => (dev.clone(), None),
        None => {
            let view = ReadOnlyThinDevice::create(s.pool, s.snap_id, volume_bytes.div_ceil(512))?;
            (view.path().to_owned(), Some(view))
        }
    };
    let size = Device::open_read(&read_path)?.size;
    if size < volume_bytes {
        return Err(Error::Invalid(format!(
            "{}: device {} is {size} bytes, smaller than the {volume_bytes}-byte LV",
            s.name,
            read_path.display()
        )));
    }
    Ok(FullSource {
        read_path,
        volume_bytes,
        chunk_bytes: s.block_bytes,
        extents,
        identity: StreamIdentity {
            thin_ids: Some((s.snap_id, s.origin_id)),
            ..identity(
                KIND,
                Some(volume(&s.origin_name, &s.origin_uuid)),
                Some(volume(&s.name, &s.snapshot_uuid)),
            )
        },
        what: format!("thin snapshot {}", s.name),
        classic: None,
        view,
    })
}

fn plain(path: &Path) -> Result<FullSource> {
    let dev = Device::open_read(path)?;
    let volume_bytes = dev.size;
    let extents = match dev.kind {
        DeviceKind::RegularFile => file_extents(&dev.file, volume_bytes),
        DeviceKind::BlockDevice => whole(volume_bytes),
    };
    Ok(FullSource {
        read_path: path.to_owned(),
        volume_bytes,
        chunk_bytes: PLAIN_CHUNK_BYTES,
        extents,
        identity: identity(
            KIND,
            None,
            Some(VolumeIdentity {
                name: Some(path.display().to_string()),
                uuid: None,
            }),
        ),
        what: path.display().to_string(),
        classic: None,
        view: None,
    })
}

/// A regular file of `bytes` as its data and its holes (which read as zeros). A file system
/// that cannot tell says it is all data.
fn file_extents(file: &std::fs::File, bytes: u64) -> ExtentList {
    use rustix::fs::{seek, SeekFrom};
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < bytes {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d.min(bytes),
            // No data after `pos`: a hole to the end.
            Err(rustix::io::Errno::NXIO) => bytes,
            Err(_) => return whole(bytes),
        };
        if data > pos {
            extents.push(Extent::zero(pos, data - pos));
        }
        if data >= bytes {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h.clamp(data + 1, bytes),
            Err(_) => bytes,
        };
        extents.push(Extent::data(data, hole - data));
        pos = hole;
    }
    ExtentList::from_extents(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::ExtentKind;
    use std::os::unix::fs::FileExt;

    #[test]
    fn an_image_files_holes_are_zero_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::File::create(&path).unwrap();
        let mib = 1 << 20;
        f.set_len(16 * mib).unwrap();
        f.write_all_at(&[1u8; 4096], 2 * mib).unwrap();
        f.write_all_at(&[2u8; 8192], 9 * mib).unwrap();
        f.sync_all().unwrap();
        let got = resolve_full(&path).unwrap();
        assert_eq!(got.volume_bytes, 16 * mib);
        assert_eq!(got.what, path.display().to_string());
        let want = ExtentList::from_extents([
            Extent::data(2 * mib, 4096),
            Extent::data(9 * mib, 8192),
            Extent::zero(0, 16 * mib),
        ]);
        assert_eq!(got.extents, want);
        // Data to the end, and no hole at all.
        f.write_all_at(&[3u8; 4096], 16 * mib - 4096).unwrap();
        std::fs::write(dir.path().join("full"), vec![5u8; 3 * 4096 + 10]).unwrap();
        assert_eq!(
            resolve_full(&path).unwrap().extents.bytes(ExtentKind::Data),
            4 * 4096
        );
        assert_eq!(
            resolve_full(&dir.path().join("full")).unwrap().extents,
            whole(3 * 4096 + 10)
        );
    }
}
