//! Zero ranges (thin blocks the origin discarded) on image files and block devices.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lvmsync::blockdev::Device;

fn check(path: &Path, content: &[u8]) {
    let dev = Device::open_write(path).unwrap();
    dev.zero_range(65536, 3 * 65536).unwrap();
    dev.zero_range(4096 * 100 + 512, 1000).unwrap(); // not block aligned
    let mut expected = content.to_vec();
    expected[65536..4 * 65536].fill(0);
    expected[4096 * 100 + 512..4096 * 100 + 1512].fill(0);
    assert!(std::fs::read(path).unwrap() == expected);
}

#[test]
fn file_ranges_become_holes_that_read_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    let content = common::pattern(1 << 20, 5);
    std::fs::write(&f, &content).unwrap();
    let before = std::fs::metadata(&f).unwrap().blocks();
    check(&f, &content);
    let after = std::fs::metadata(&f).unwrap().blocks();
    assert!(
        after < before,
        "no space was freed ({before} -> {after} blocks)"
    );
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        1 << 20,
        "size must not change"
    );
}

#[test]
fn block_device_ranges_read_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("backing");
    let content = common::pattern(1 << 20, 6);
    std::fs::write(&f, &content).unwrap();
    let dev = common::LoopDevice::attach(&f);
    check(Path::new(&dev.0), &content);
}
