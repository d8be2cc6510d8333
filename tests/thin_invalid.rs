//! Damaged or foreign thin metadata must be refused with an error that says what and where.

mod common;

use common::thin::*;
use lvmsync::source::thin::{self, MetadataRoot, ThinError};

fn fixture_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip_fixture("tmeta.img.gz", dir.path());
    (dir, meta)
}

fn patch(meta: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(meta).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn bad_magic_is_refused() {
    let (_d, meta) = fixture_copy();
    patch(&meta, 32, &[0; 8]);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(
        matches!(
            err,
            ThinError::BadMagic {
                block: 0,
                found: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("bad thin superblock magic"),
        "{err}"
    );
}

#[test]
fn flipped_superblock_byte_is_a_checksum_error() {
    let (_d, meta) = fixture_copy();
    let b = read_block(&meta, 0);
    patch(&meta, 100, &[b[100] ^ 0x40]);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(
        matches!(
            err,
            ThinError::Checksum {
                block: 0,
                what: "superblock",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn flipped_checksum_byte_in_a_mapping_leaf_is_reported_with_its_block() {
    let (_d, meta) = fixture_copy();
    let sb = thin::read_superblock(&meta, MetadataRoot::Superblock).unwrap();
    // The top-level tree is a single leaf in this small pool: its values are device roots.
    let (leaf, _, roots) = node_entries(&read_block(&meta, sb.data_mapping_root));
    assert!(leaf);
    let victim = roots[0];
    let b = read_block(&meta, victim);
    patch(&meta, victim * BLOCK as u64, &[b[0] ^ 1]);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    match &err {
        ThinError::Checksum { block, what, .. } => {
            assert_eq!(*block, victim);
            assert_eq!(*what, "btree node");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        err.to_string().contains(&format!("block {victim}")),
        "{err}"
    );
}

#[test]
fn node_at_the_wrong_block_is_refused() {
    let (_d, meta) = fixture_copy();
    let sb = thin::read_superblock(&meta, MetadataRoot::Superblock).unwrap();
    let (_, _, roots) = node_entries(&read_block(&meta, sb.data_mapping_root));
    // Copy device 1's leaf (valid checksum for its own block) over device 2's.
    let mut b = read_block(&meta, roots[0]);
    reseal(&mut b, NODE_SALT);
    patch(&meta, roots[1] * BLOCK as u64, &b);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(
        matches!(&err, ThinError::Corrupt { block, .. } if *block == roots[1]),
        "{err}"
    );
    assert!(err.to_string().contains("belongs at block"), "{err}");
}

#[test]
fn pointer_past_the_end_is_refused() {
    let (_d, meta) = fixture_copy();
    let sb = thin::read_superblock(&meta, MetadataRoot::Superblock).unwrap();
    let mut top = read_block(&meta, sb.data_mapping_root);
    set_value(&mut top, 0, 1 << 40);
    write_block(&meta, sb.data_mapping_root, &mut top, NODE_SALT);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(
        err.to_string().contains("past the end of the metadata"),
        "{err}"
    );
}

#[test]
fn garbage_and_short_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    let bytes: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, bytes).unwrap();
    let err = thin::delta(&garbage, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(matches!(err, ThinError::BadMagic { .. }), "{err}");

    let short = dir.path().join("short");
    std::fs::write(&short, [0u8; 100]).unwrap();
    let err = thin::delta(&short, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");

    let missing = dir.path().join("missing");
    let err = thin::delta(&missing, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(matches!(err, ThinError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

/// A pool whose device 1 has a two-level tree (root over ~80 leaves); returns (meta, root).
fn two_level_pool(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let map: DeviceMap = (0..10_000u64).map(|b| (b * 3, (b * 3, 0))).collect();
    let other: DeviceMap = (0..10u64).map(|b| (b, (b, 0))).collect();
    let xml = dump_xml(128, 40_000, &[(1, &map), (2, &other)]);
    let meta = restore(&xml, dir, "meta", 16);
    let root = CowEditor::new(&meta).device_root(1);
    assert!(
        !node_entries(&read_block(&meta, root)).0,
        "root should be internal"
    );
    (meta, root)
}

#[test]
fn child_pointing_at_a_sibling_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, root) = two_level_pool(dir.path());
    let mut b = read_block(&meta, root);
    let (_, _, vals) = node_entries(&b);
    set_value(&mut b, 1, vals[0]);
    write_block(&meta, root, &mut b, NODE_SALT);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(
        matches!(&err, ThinError::Corrupt { block, .. } if *block == vals[0]),
        "{err}"
    );
    assert!(err.to_string().contains("outside the range"), "{err}");
}

#[test]
fn child_pointing_at_its_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, root) = two_level_pool(dir.path());
    let mut b = read_block(&meta, root);
    set_value(&mut b, 1, root);
    write_block(&meta, root, &mut b, NODE_SALT);
    let err = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap_err();
    assert!(matches!(err, ThinError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("not balanced"), "{err}");
    // Walking the whole device hits the same damage.
    assert!(thin::mappings(&meta, 1, MetadataRoot::Superblock).is_err());
}

/// Damage that keeps checksums valid (a buggy writer, not a bad disk): random bytes of random
/// tree nodes changed and the block resealed. Reading must end in a result or an error, never
/// a panic, a hang or an endless walk.
#[test]
fn resealed_random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, root) = two_level_pool(dir.path());
    let (_, _, leaves) = node_entries(&read_block(&meta, root));
    let sb = thin::read_superblock(&meta, MetadataRoot::Superblock).unwrap();
    let mut targets = vec![root, sb.data_mapping_root, sb.device_details_root];
    targets.extend(leaves.iter().take(4));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0;
    for round in 0..300 {
        let block = targets[round % targets.len()];
        let original = read_block(&meta, block);
        let mut b = original.clone();
        for _ in 0..1 + next() % 4 {
            // Mostly the header and the first keys/values, where structure lives.
            let off = 4 + (next() % if next() % 2 == 0 { 60 } else { 4092 }) as usize;
            b[off] = next() as u8;
        }
        reseal(&mut b, NODE_SALT);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&meta).unwrap();
            f.write_all_at(&b, block * BLOCK as u64).unwrap();
        }
        for (s, o) in [(1, 2), (2, 1)] {
            if thin::delta(&meta, s, o, MetadataRoot::Superblock).is_err() {
                errors += 1;
            }
        }
        let _ = thin::mappings(&meta, 1, MetadataRoot::Superblock);
        let _ = thin::devices(&meta, MetadataRoot::Superblock);
        patch(&meta, block * BLOCK as u64, &original);
    }
    // Most damage is noticed (some lands in unused value slots and changes nothing).
    assert!(errors > 100, "only {errors} damaged reads were refused");
}

/// A node that two key ranges of its parent both point at is refused: its keys cannot lie in
/// both, and a walk that followed every such pointer could be made to visit one node once per
/// path through a tree of such parents, exponentially often.
#[test]
fn device_details_node_under_two_key_ranges_is_refused() {
    let (_d, meta) = fixture_copy();
    let mut sb = read_block(&meta, 0);
    let details = le64(&sb, 328);
    let (leaf, keys, _) = node_entries(&read_block(&meta, details));
    assert!(leaf && keys == [1, 2], "fixture device details: {keys:?}");
    let mut parent = vec![0u8; BLOCK];
    parent[4..8].copy_from_slice(&1u32.to_le_bytes()); // internal
    parent[20..24].copy_from_slice(&254u32.to_le_bytes()); // max entries
    parent[24..28].copy_from_slice(&8u32.to_le_bytes()); // value size
    set_leaf_entries(&mut parent, &[0, 2], &[details, details]);
    write_block(&meta, 1000, &mut parent, NODE_SALT);
    sb[328..336].copy_from_slice(&1000u64.to_le_bytes());
    write_block(&meta, 0, &mut sb, SB_SALT);
    let err = thin::devices(&meta, MetadataRoot::Superblock).unwrap_err();
    assert!(
        matches!(err, ThinError::Corrupt { block, .. } if block == details),
        "{err}"
    );
    assert!(err.to_string().contains("outside the range"), "{err}");
}
