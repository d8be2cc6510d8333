//! Metadata on a block device is read with O_DIRECT (aligned buffers); the result must equal
//! the buffered read of the same bytes in a file. Needs root and loop devices.

mod thin_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use lvmsync::source::thin::{self, MetadataRoot};
use thin_support::*;

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
