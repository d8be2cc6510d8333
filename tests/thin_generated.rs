//! The native thin delta against thin_delta (thin-provisioning-tools) on metadata built by
//! thin_restore from generated mappings, and on copy-on-write edits that share subtrees the way
//! a kernel snapshot does.

mod common;

use std::path::Path;

use common::thin::*;
use lvmsync::extent::{Extent, ExtentList};
use lvmsync::source::thin::{self, MetadataRoot, ThinError};

const DATA_BLOCK_SIZE: u32 = 128;
const BLOCK_BYTES: u64 = DATA_BLOCK_SIZE as u64 * 512;

/// What the delta must be, computed straight from the two mapping sets.
fn model_delta(snap: &DeviceMap, origin: &DeviceMap) -> ExtentList {
    let mut out = Vec::new();
    for (&b, &(d, _)) in origin {
        if snap.get(&b).map(|&(sd, _)| sd) != Some(d) {
            out.push(Extent::data(b * BLOCK_BYTES, BLOCK_BYTES));
        }
    }
    for &b in snap.keys() {
        if !origin.contains_key(&b) {
            out.push(Extent::zero(b * BLOCK_BYTES, BLOCK_BYTES));
        }
    }
    ExtentList::from_extents(out)
}

/// A snapshot mapping set over `range` blocks and an origin derived from it by remapping,
/// discarding and new writes (percentages).
fn generate(
    rng: &mut Rng,
    range: u64,
    fill: u64,
    remap: u64,
    discard: u64,
    add: u64,
) -> (DeviceMap, DeviceMap, u64) {
    let mut next_data = 0u64;
    let mut snap = DeviceMap::new();
    for b in 0..range {
        if rng.chance(fill) {
            if rng.chance(10) {
                next_data += rng.below(50); // break data runs now and then
            }
            snap.insert(b, (next_data, 0));
            next_data += 1;
        }
    }
    let mut origin = DeviceMap::new();
    for b in 0..range {
        match snap.get(&b) {
            Some(&m) => {
                if rng.chance(discard) {
                    continue;
                }
                if rng.chance(remap) {
                    origin.insert(b, (next_data, 1));
                    next_data += 1;
                } else {
                    origin.insert(b, m);
                }
            }
            None if rng.chance(add) => {
                origin.insert(b, (next_data, 1));
                next_data += 1;
            }
            None => {}
        }
    }
    (snap, origin, next_data + 1)
}

fn check_case(
    dir: &Path,
    name: &str,
    snap_id: u64,
    origin_id: u64,
    snap: &DeviceMap,
    origin: &DeviceMap,
    nr_data: u64,
) {
    let xml = dump_xml(
        DATA_BLOCK_SIZE,
        nr_data,
        &[(origin_id, origin), (snap_id, snap)],
    );
    let meta = restore(&xml, dir, name, 64);
    let (oracle_bytes, oracle) = thin_delta(&meta, snap_id, origin_id);
    let native = thin::delta(&meta, snap_id, origin_id, MetadataRoot::Superblock).unwrap();
    assert_eq!(oracle_bytes, BLOCK_BYTES);
    assert_eq!(native.data_block_bytes, BLOCK_BYTES);
    assert_eq!(native.extents, oracle, "{name}: native vs thin_delta");
    assert_eq!(
        native.extents,
        model_delta(snap, origin),
        "{name}: native vs model"
    );
    // The other direction turns origin-only blocks into zeros and vice versa.
    let back = thin::delta(&meta, origin_id, snap_id, MetadataRoot::Superblock).unwrap();
    assert_eq!(
        back.extents,
        thin_delta(&meta, origin_id, snap_id).1,
        "{name}: reversed"
    );
}

#[test]
fn random_mapping_sets_match_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..24u64 {
        let mut rng = Rng(seed);
        let range = [40, 600, 3000, 12000][seed as usize % 4];
        let fill = [100, 90, 50, 5][(seed / 4) as usize % 4];
        let (remap, discard, add) = (rng.below(20), rng.below(10), rng.below(20));
        let (snap, origin, nr_data) = generate(&mut rng, range, fill, remap, discard, add);
        let (s, o) = (seed % 7 + 1, seed % 7 + 10);
        check_case(
            dir.path(),
            &format!("seed{seed}"),
            s,
            o,
            &snap,
            &origin,
            nr_data,
        );
    }
}

#[test]
fn identical_disjoint_and_empty_devices_match_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(99);
    let (snap, _, nr) = generate(&mut rng, 2000, 70, 0, 0, 0);
    let empty = DeviceMap::new();
    // Same contents in separately built trees: nothing differs.
    check_case(dir.path(), "same", 1, 2, &snap, &snap.clone(), nr);
    // Everything discarded in the origin: all zeros.
    check_case(dir.path(), "discarded", 1, 2, &snap, &empty, nr);
    // A new origin written from scratch against an empty snapshot: all data.
    check_case(dir.path(), "fresh", 1, 2, &empty, &snap, nr);
    check_case(dir.path(), "both-empty", 1, 2, &empty, &empty, 1);
    // Disjoint block ranges.
    let shifted: DeviceMap = snap.iter().map(|(&b, &m)| (b + 5000, m)).collect();
    check_case(dir.path(), "disjoint", 1, 2, &snap, &shifted, nr);
}

#[test]
fn multi_level_trees_match_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    // ~150k mappings: several hundred leaves under internal nodes.
    let (snap, origin, nr) = generate(&mut rng, 200_000, 75, 1, 1, 2);
    check_case(dir.path(), "large", 3, 4, &snap, &origin, nr);
}

/// Builds a pool where device 2 is a copy-on-write descendant of device 1 (as after
/// `lvcreate -s` and writes to one of them): returns the metadata path and the model maps.
fn shared_pool(
    dir: &Path,
    range: u64,
    writes: usize,
    seed: u64,
) -> (std::path::PathBuf, DeviceMap, DeviceMap) {
    let mut rng = Rng(seed);
    let (snap, _, nr) = generate(&mut rng, range, 80, 0, 0, 0);
    let mut placeholder = DeviceMap::new();
    placeholder.insert(0, (0, 0));
    let xml = dump_xml(
        DATA_BLOCK_SIZE,
        nr + 10 * writes as u64 + 10,
        &[(1, &snap), (2, &placeholder)],
    );
    let meta = restore(&xml, dir, &format!("shared{seed}"), 64);
    let mut ed = CowEditor::new(&meta);
    let mut root = ed.device_root(1);
    let mut origin = snap.clone();
    let mut next_data = nr;
    let mut applied = 0;
    while applied < writes {
        let key = rng.below(range + 1000);
        let value = match rng.below(3) {
            0 => None,
            _ => {
                next_data += 1;
                Some(next_data)
            }
        };
        if let Some(r) = ed.write(root, key, value.map(|d| d << 24 | 1)) {
            root = r;
            match value {
                Some(d) => origin.insert(key, (d, 1)),
                None => origin.remove(&key),
            };
            applied += 1;
        }
    }
    ed.set_device_root(2, root);
    (meta, snap, origin)
}

#[test]
fn shared_subtrees_are_skipped_and_the_delta_matches_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, writes) in [(1u64, 1usize), (2, 5), (3, 40)] {
        let (meta, snap, origin) = shared_pool(dir.path(), 120_000, writes, seed);
        let (native, stats) =
            thin::delta_with_stats(&meta, 1, 2, MetadataRoot::Superblock).unwrap();
        assert_eq!(native.extents, thin_delta(&meta, 1, 2).1, "seed {seed}");
        assert_eq!(native.extents, model_delta(&snap, &origin), "seed {seed}");
        // A full walk reads every leaf of both trees; the skipping diff reads the superblock,
        // the top-level tree, the leftmost paths (tree heights) and the changed paths only.
        let leaves = (snap.len() as u64).div_ceil(252);
        let height = 3;
        let bound = 1 + 2 + 2 * height + 2 * height * writes as u64;
        assert!(stats.shared_subtrees_skipped > 0, "{stats:?}");
        assert!(
            stats.blocks_read <= bound,
            "seed {seed}: read {} blocks for {writes} writes (bound {bound}, {leaves}+ leaves)",
            stats.blocks_read
        );
        let back = thin::delta(&meta, 2, 1, MetadataRoot::Superblock).unwrap();
        assert_eq!(
            back.extents,
            thin_delta(&meta, 2, 1).1,
            "seed {seed} reversed"
        );
    }
}

#[test]
fn a_fresh_snapshot_shares_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, _, _) = shared_pool(dir.path(), 120_000, 0, 5);
    let mut ed = CowEditor::new(&meta);
    let root = ed.device_root(1);
    ed.set_device_root(2, root);
    let (d, stats) = thin::delta_with_stats(&meta, 1, 2, MetadataRoot::Superblock).unwrap();
    assert!(d.extents.is_empty());
    assert_eq!(stats.shared_subtrees_skipped, 1);
    assert!(thin_delta(&meta, 1, 2).1.is_empty());
}

/// Takes a metadata snapshot the way the kernel does (a copy of the superblock in a free block,
/// recorded in the superblock's held root), then changes device 2 in the live metadata only.
#[test]
fn held_metadata_snapshot_is_read_instead_of_the_live_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, snap, origin) = shared_pool(dir.path(), 120_000, 6, 11);
    let mut ed = CowEditor::new(&meta);
    // Skip past the blocks shared_pool's editor allocated.
    for _ in 0..64 {
        ed.alloc();
    }
    let held = ed.alloc();
    let mut sb = read_block(&meta, 0);
    write_block(&meta, held, &mut sb.clone(), SB_SALT);
    // Live metadata moves on: a new top-level leaf pointing device 2 at device 1's tree
    // (as if every change had been undone).
    let top = le64(&sb, 320);
    let mut leaf = read_block(&meta, top);
    let (_, keys, vals) = node_entries(&leaf);
    let dev1_root = vals[keys.iter().position(|&k| k == 1).unwrap()];
    set_value(
        &mut leaf,
        keys.iter().position(|&k| k == 2).unwrap(),
        dev1_root,
    );
    let new_top = ed.alloc();
    write_block(&meta, new_top, &mut leaf, NODE_SALT);
    sb[320..328].copy_from_slice(&new_top.to_le_bytes());
    sb[56..64].copy_from_slice(&held.to_le_bytes());
    write_block(&meta, 0, &mut sb, SB_SALT);

    let live = thin::delta(&meta, 1, 2, MetadataRoot::Superblock).unwrap();
    assert!(live.extents.is_empty());
    let expected = model_delta(&snap, &origin);
    assert!(!expected.is_empty());
    for root in [
        MetadataRoot::HeldSnapshot(None),
        MetadataRoot::HeldSnapshot(Some(held)),
    ] {
        let d = thin::delta(&meta, 1, 2, root).unwrap();
        assert_eq!(d.extents, expected, "{root:?}");
    }
    // thin_delta agrees when told to use the metadata snapshot.
    let oracle = parse_thin_delta(&run(std::process::Command::new("thin_delta")
        .args(["-m", "--snap1", "1", "--snap2", "2"])
        .arg(&meta)))
    .1;
    assert_eq!(oracle, expected);
    let err = thin::delta(&meta, 1, 2, MetadataRoot::HeldSnapshot(Some(held - 1))).unwrap_err();
    assert!(matches!(err, ThinError::HeldRootMismatch { .. }), "{err}");
    let sbs = thin::read_superblock(&meta, MetadataRoot::HeldSnapshot(None)).unwrap();
    assert_eq!(sbs.block, held);
}

/// The origin's tree grew a level (its root split) after the snapshot: trees of different
/// heights still meet at their shared nodes.
#[test]
fn shared_subtrees_are_found_across_a_root_split() {
    let dir = tempfile::tempdir().unwrap();
    // ~30k mappings: thin_restore builds a root with ~235 leaves (half full, 126 each), so the
    // halves of the split root are as full as the kernel's (thin_delta checks node occupancy).
    let (meta, snap, _) = shared_pool(dir.path(), 37_000, 0, 21);
    let mut ed = CowEditor::new(&meta);
    for _ in 0..64 {
        ed.alloc();
    }
    let dev1_root = ed.device_root(1);
    let mut root = ed.split_root(dev1_root);
    let mut origin = snap.clone();
    let keys: Vec<u64> = snap.keys().copied().collect();
    let written: Vec<u64> = keys.iter().copied().step_by(keys.len() / 3).collect();
    for (i, k) in written.iter().enumerate() {
        root = ed
            .write(root, *k, Some((10_000_000 + i as u64) << 24 | 1))
            .unwrap();
        origin.insert(*k, (10_000_000 + i as u64, 1));
    }
    ed.set_device_root(2, root);
    for (s, o) in [(1, 2), (2, 1)] {
        let (d, stats) = thin::delta_with_stats(&meta, s, o, MetadataRoot::Superblock).unwrap();
        assert_eq!(d.extents, thin_delta(&meta, s, o).1, "{s}->{o}");
        assert!(stats.shared_subtrees_skipped > 0, "{stats:?}");
        // Superblock, the two top-level lookups, the leftmost paths for the heights (2 and 3
        // nodes), both roots and the two halves, then per written leaf its old and new copy:
        // every other node is skipped unread.
        let expected_reads = 1 + 2 + (2 + 3) + 4 + 2 * written.len() as u64;
        assert_eq!(stats.blocks_read, expected_reads, "{s}->{o}: {stats:?}");
    }
    assert_eq!(
        thin::delta(&meta, 1, 2, MetadataRoot::Superblock)
            .unwrap()
            .extents,
        model_delta(&snap, &origin)
    );
}

/// Random histories after a snapshot: writes, discards and new blocks on both the origin and the
/// snapshot itself, sometimes after the origin's root split. Each is checked against the model
/// and against thin_delta, in both directions.
#[test]
fn random_copy_on_write_histories_match_the_model_and_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..8u64 {
        let mut rng = Rng(1000 + seed);
        let (meta, base, _) = shared_pool(dir.path(), 37_000, 0, 1000 + seed);
        let mut origin_ed = CowEditor::new(&meta);
        let mut snap_ed = CowEditor::new(&meta);
        for _ in 0..4000 {
            snap_ed.alloc(); // keep the two editors' new blocks apart
        }
        let (mut snap, mut origin) = (base.clone(), base.clone());
        let mut snap_root = origin_ed.device_root(1);
        let mut origin_root = snap_root;
        if seed % 2 == 1 {
            origin_root = origin_ed.split_root(origin_root);
        }
        let mut next_data = 5_000_000u64;
        for _ in 0..(1 + rng.below(60)) {
            let on_snapshot = rng.below(5) == 0;
            let key = rng.below(38_000);
            let value = (rng.below(3) != 0).then(|| {
                next_data += 1;
                next_data
            });
            let (ed, root, map) = if on_snapshot {
                (&mut snap_ed, &mut snap_root, &mut snap)
            } else {
                (&mut origin_ed, &mut origin_root, &mut origin)
            };
            if let Some(r) = ed.write(*root, key, value.map(|d| d << 24 | 2)) {
                *root = r;
                match value {
                    Some(d) => map.insert(key, (d, 2)),
                    None => map.remove(&key),
                };
            }
        }
        origin_ed.set_device_root(2, origin_root);
        origin_ed.set_device_root(1, snap_root);
        for (s, o, sm, om) in [(1, 2, &snap, &origin), (2, 1, &origin, &snap)] {
            let (d, stats) = thin::delta_with_stats(&meta, s, o, MetadataRoot::Superblock).unwrap();
            assert_eq!(d.extents, model_delta(sm, om), "seed {seed} {s}->{o}");
            assert_eq!(d.extents, thin_delta(&meta, s, o).1, "seed {seed} {s}->{o}");
            assert!(stats.blocks_read < 400, "seed {seed}: {stats:?}");
        }
    }
}
