//! The native thin metadata reader against real pool metadata captured from LVM 2.03.16.

mod common;

use common::thin::*;
use lvmsync::source::thin::{self, MetadataRoot, ThinError};

#[test]
fn fixture_delta_matches_thin_delta_output() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    let xml = std::fs::read_to_string(format!("{FIXTURES}/thin_delta.xml")).unwrap();
    let (block_bytes, expected) = parse_thin_delta(&xml);
    assert!(!expected.is_empty());

    // thin_delta.xml was made with --snap1 2 --snap2 1 (tsnap is device 2, thin1 device 1).
    let d = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap();
    assert_eq!(d.data_block_bytes, block_bytes);
    assert_eq!(d.extents, expected);
}

#[test]
fn fixture_reversed_delta_turns_origin_only_blocks_into_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    let xml = std::fs::read_to_string(format!("{FIXTURES}/thin_delta.xml")).unwrap();
    // Swapping the devices swaps right_only and left_only.
    let swapped = xml
        .replace("right_only", "@")
        .replace("left_only", "right_only")
        .replace('@', "left_only");
    let (_, expected) = parse_thin_delta(&swapped);
    let back = thin::delta(&meta, 1, 2, MetadataRoot::Superblock).unwrap();
    assert_eq!(back.extents, expected);
    assert!(back.extents.bytes(lvmsync::extent::ExtentKind::Zero) > 0);
}

#[test]
fn fixture_mappings_match_thin_dump() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    let xml = std::fs::read_to_string(format!("{FIXTURES}/thin_dump-offline.xml")).unwrap();
    assert_eq!(parse_thin_dump(&xml).len(), 2);
    assert_mappings_match_thin_dump(&meta, MetadataRoot::Superblock, &xml);
    let sb = thin::read_superblock(&meta, MetadataRoot::Superblock).unwrap();
    assert_eq!(sb.data_block_size, 128);
    assert_eq!(sb.metadata_snap, 0);
}

/// `mapped_extents` covers the whole volume: data where `mappings` has a block, zeros elsewhere,
/// cut at the volume's end.
#[test]
fn fixture_mapped_extents_follow_the_mappings() {
    use lvmsync::extent::{Extent, ExtentList};
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    for dev_id in [1, 2] {
        let blocks: Vec<u64> = thin::mappings(&meta, dev_id, MetadataRoot::Superblock)
            .unwrap()
            .iter()
            .map(|m| m.block)
            .collect();
        let bytes = 65536u64;
        let last = *blocks.last().unwrap();
        for volume in [(last + 5) * bytes, (last + 1) * bytes, last * bytes + 1000] {
            let (got, block_bytes) =
                thin::mapped_extents(&meta, dev_id, MetadataRoot::Superblock, volume).unwrap();
            assert_eq!(block_bytes, bytes);
            let mut want = Vec::new();
            for b in 0..volume.div_ceil(bytes) {
                let (off, len) = (b * bytes, bytes.min(volume - b * bytes));
                want.push(if blocks.contains(&b) {
                    Extent::data(off, len)
                } else {
                    Extent::zero(off, len)
                });
            }
            assert_eq!(
                got,
                ExtentList::from_extents(want),
                "dev {dev_id} volume {volume}"
            );
            assert_eq!(got.total_bytes(), volume);
        }
    }
}

#[test]
fn fixture_unknown_device_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    let err = thin::delta(&meta, 7, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(matches!(err, ThinError::DeviceNotFound { dev_id: 7, .. }));
    assert!(err
        .to_string()
        .starts_with("thin device 7 not found in pool metadata"));
}

#[test]
fn fixture_without_held_snapshot_refuses_held_root() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    for root in [
        MetadataRoot::HeldSnapshot(None),
        MetadataRoot::HeldSnapshot(Some(61)),
    ] {
        let err = thin::delta(&meta, 2, 1, root).unwrap_err();
        assert!(
            matches!(err, ThinError::NoMetadataSnapshot { .. }),
            "{root:?}: {err}"
        );
    }
}
