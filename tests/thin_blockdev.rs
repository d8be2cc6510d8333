//! Metadata on a block device is read with O_DIRECT (aligned buffers); the result must equal
//! the buffered read of the same bytes in a file. Needs root and loop devices.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::thin::*;
use lvmsync::source::thin::{self, MetadataRoot};

/// A read-only loop device over a file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file));
        Loop(PathBuf::from(out.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn block_device_reads_match_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    let dev = Loop::attach(&meta);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&dev.0)
        .unwrap()
        .file_type()
        .is_block_device());
    let from_file = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap();
    let from_dev = thin::delta(&dev.0, 2, 1, MetadataRoot::Superblock).unwrap();
    assert_eq!(from_dev, from_file);
    assert!(!from_dev.extents.is_empty());
    for id in [1, 2] {
        assert_eq!(
            thin::mappings(&dev.0, id, MetadataRoot::Superblock).unwrap(),
            thin::mappings(&meta, id, MetadataRoot::Superblock).unwrap()
        );
    }
}

#[test]
fn block_device_reads_of_large_trees_match_file_reads_with_fewer_read_calls() {
    let dir = tempfile::tempdir().unwrap();
    let a: DeviceMap = (0..60_000u64).map(|b| (b, (b, 0))).collect();
    let placeholder: DeviceMap = [(0, (0, 0))].into_iter().collect();
    let meta = restore(
        &dump_xml(128, 200_000, &[(1, &a), (2, &placeholder)]),
        dir.path(),
        "m",
        9,
    );
    // Grow the image by a few blocks so it is not a multiple of the read window: the edits
    // below allocate from the end, so the last, short window is read.
    let f = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
    f.set_len(f.metadata().unwrap().len() + 5 * BLOCK as u64)
        .unwrap();
    drop(f);
    let mut ed = CowEditor::new(&meta);
    let mut root = ed.device_root(1);
    for k in (0..60_000u64).step_by(997) {
        root = ed.write(root, k, Some((100_000 + k) << 24 | 1)).unwrap();
    }
    ed.set_device_root(2, root);

    let dev = Loop::attach(&meta);
    let (from_file, file_stats) =
        thin::delta_with_stats(&meta, 1, 2, MetadataRoot::Superblock).unwrap();
    let (from_dev, dev_stats) =
        thin::delta_with_stats(&dev.0, 1, 2, MetadataRoot::Superblock).unwrap();
    assert_eq!(from_dev, from_file);
    assert_eq!(from_dev.extents, thin_delta(&meta, 1, 2).1);
    assert_eq!(from_dev.extents.len(), 61);
    assert_eq!(dev_stats.blocks_read, file_stats.blocks_read);
    assert_eq!(file_stats.read_calls, file_stats.blocks_read);
    assert!(
        dev_stats.read_calls < file_stats.read_calls,
        "{dev_stats:?}"
    );
    // The whole trees too (every leaf of both devices, in neighbouring blocks).
    for id in [1, 2] {
        assert_eq!(
            thin::mappings(&dev.0, id, MetadataRoot::Superblock).unwrap(),
            thin::mappings(&meta, id, MetadataRoot::Superblock).unwrap()
        );
    }
}

#[test]
fn unshared_trees_on_a_block_device_are_read_ahead_without_waste() {
    let dir = tempfile::tempdir().unwrap();
    let a: DeviceMap = (0..80_000u64).map(|b| (b, (b, 0))).collect();
    let mut b = a.clone();
    for k in (0..80_000u64).step_by(1009) {
        b.insert(k, (200_000 + k, 1));
    }
    let meta = restore(
        &dump_xml(128, 300_000, &[(1, &a), (2, &b)]),
        dir.path(),
        "m",
        16,
    );
    let dev = Loop::attach(&meta);
    let (from_dev, stats) = thin::delta_with_stats(&dev.0, 1, 2, MetadataRoot::Superblock).unwrap();
    assert_eq!(from_dev.extents, thin_delta(&meta, 1, 2).1);
    assert_eq!(stats.shared_subtrees_skipped, 0);
    assert_eq!(stats.prefetched_unused, 0, "{stats:?}");
    // Nearly every leaf of both trees comes from the parallel read-ahead.
    assert!(
        stats.blocks_prefetched * 10 > stats.blocks_read * 9,
        "{stats:?}"
    );
}
