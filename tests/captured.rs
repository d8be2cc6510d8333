//! The artefacts `tests/vm/capture-fixtures.sh` captured from real LVM (tests/fixtures/captured/):
//! what lvmsync reads from them is what the writes made, and what device-mapper and
//! thin-provisioning-tools said.

mod common;

use std::path::Path;
use std::process::Command;

use common::thin::{assert_mappings_match_thin_dump, parse_thin_delta};
use common::{captured, gunzip};
use lvmsync::extent::{Extent, ExtentList};
use lvmsync::lvm::dm;
use lvmsync::source::cow::ExceptionStore;
use lvmsync::source::thin::guard::parse_pool_status;
use lvmsync::source::thin::{self, MetadataRoot, ThinError};

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");

fn read(rel: &str) -> String {
    std::fs::read_to_string(captured(rel)).unwrap()
}

/// `OFFSET LENGTH TAG` lines of a writes file, as the whole chunks they touched.
fn chunks_written(rel: &str, chunk_bytes: u64) -> Vec<Extent> {
    read(rel)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace().map(|n| n.parse::<u64>().unwrap());
            let (offset, len) = (w.next().unwrap(), w.next().unwrap());
            let first = offset / chunk_bytes * chunk_bytes;
            let end = (offset + len).next_multiple_of(chunk_bytes);
            Extent::data(first, end - first)
        })
        .collect()
}

/// `expected-extents.txt`: `OFFSET LENGTH data` lines.
fn expected_extents(rel: &str) -> ExtentList {
    ExtentList::from_extents(read(rel).lines().map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w[2], "data", "{l}");
        Extent::data(w[0].parse().unwrap(), w[1].parse().unwrap())
    }))
}

/// `lvmsync ARGS` must succeed; its standard output.
fn lvmsync(args: &[&str]) -> String {
    let out = Command::new(LVMSYNC).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "lvmsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The device-mapper table line of device `name` in a captured `dmsetup-table.txt`.
fn table(rel: &str, name: &str) -> dm::TargetLine {
    let text = read(rel);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {rel}"));
    dm::single_target(line, name).unwrap()
}

#[test]
fn classic_changes_are_the_chunks_written() {
    let dir = tempfile::tempdir().unwrap();
    let cow = gunzip(&captured("classic/snap-cow.img.gz"), dir.path());
    let after = gunzip(&captured("classic/origin-after.img.gz"), dir.path());
    // The snapshot's table says 8-sector chunks; the store's header says the same.
    let snap = dm::parse_snapshot_table(&table("classic/dmsetup-table.txt", "capvg-snap"), "s");
    let chunk_bytes = snap.unwrap().chunk_sectors * 512;
    let store = ExceptionStore::open(&cow).unwrap();
    assert_eq!(store.chunk_bytes(), chunk_bytes);

    let expected = expected_extents("classic/expected-extents.txt");
    let written = chunks_written("classic/writes.txt", chunk_bytes);
    assert_eq!(ExtentList::from_extents(written), expected);
    let origin_bytes = std::fs::metadata(&after).unwrap().len();
    assert_eq!(store.changes(origin_bytes).unwrap().extents, expected);
    let listed = lvmsync(&["changes", "--cow", arg(&cow), "--data-source", arg(&after)]);
    assert_eq!(listed, read("classic/expected-extents.txt"));
}

#[test]
fn classic_sync_turns_the_origin_before_into_the_origin_after() {
    let dir = tempfile::tempdir().unwrap();
    let cow = gunzip(&captured("classic/snap-cow.img.gz"), dir.path());
    let before = gunzip(&captured("classic/origin-before.img.gz"), dir.path());
    let after = gunzip(&captured("classic/origin-after.img.gz"), dir.path());
    assert!(!common::same(&before, &after));
    for format in ["3", "4"] {
        let dest = dir.path().join(format!("dest{format}.img"));
        common::copy(&before, &dest);
        lvmsync(&[
            "-q",
            "--format",
            format,
            "--cow",
            arg(&cow),
            "--data-source",
            arg(&after),
            arg(&dest),
        ]);
        assert!(common::same(&dest, &after), "format {format}");
    }
}

/// `thin-ids.txt`: `thin1=ID tsnap=ID`.
fn thin_ids() -> (u64, u64) {
    let text = read("thin/thin-ids.txt");
    let id = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (id("tsnap"), id("thin1"))
}

#[test]
fn thin_changes_are_the_blocks_written() {
    let dir = tempfile::tempdir().unwrap();
    let meta = gunzip(&captured("thin/tmeta.img.gz"), dir.path());
    let (snap_id, origin_id) = thin_ids();
    // The device-mapper tables: the pool's block size, the thin devices' ids.
    let pool = dm::parse_pool_table(&table("thin/dmsetup-table.txt", "thinvg-pool-tpool"), "p");
    let block_bytes = pool.unwrap().block_sectors * 512;
    for (name, id) in [("thinvg-tsnap", snap_id), ("thinvg-thin1", origin_id)] {
        let t = dm::parse_thin_table(&table("thin/dmsetup-table.txt", name), name).unwrap();
        assert_eq!(t.dev_id, id, "{name}");
    }

    // Blocks written to the origin or to the snapshot after it was taken differ; those written
    // before it (writes-before.txt) do not.
    let expected = expected_extents("thin/expected-extents.txt");
    let written = chunks_written("thin/writes.txt", block_bytes)
        .into_iter()
        .chain(chunks_written("thin/writes-snap.txt", block_bytes));
    assert_eq!(ExtentList::from_extents(written), expected);
    let (xml_block_bytes, from_thin_delta) = parse_thin_delta(&read("thin/thin_delta.xml"));
    assert_eq!(xml_block_bytes, block_bytes);
    assert_eq!(from_thin_delta, expected);

    let d = thin::delta(&meta, snap_id, origin_id, MetadataRoot::Superblock).unwrap();
    assert_eq!(d.data_block_bytes, block_bytes);
    assert_eq!(d.extents, expected);
    let ids = format!("{snap_id}:{origin_id}");
    let listed = lvmsync(&["changes", "--thin-metadata", arg(&meta), "--thin-ids", &ids]);
    assert_eq!(listed, read("thin/expected-extents.txt"));
    assert_mappings_match_thin_dump(
        &meta,
        MetadataRoot::Superblock,
        &read("thin/thin_dump-offline.xml"),
    );
}

/// The live metadata device while a metadata snapshot was held: read at the root the pool's
/// status reported (field 7), it says what the inactive pool's metadata says.
#[test]
fn thin_held_metadata_snapshot_reads_like_the_inactive_pool() {
    let dir = tempfile::tempdir().unwrap();
    let held_meta = gunzip(&captured("thin/tmeta-held.img.gz"), dir.path());
    let meta = gunzip(&captured("thin/tmeta.img.gz"), dir.path());
    let pool = "thinvg-pool-tpool";
    let status = |name: &str| parse_pool_status(pool, &read(name)).unwrap();
    assert_eq!(
        status("thin/pool-status-before.txt").held_metadata_root,
        None
    );
    assert_eq!(
        status("thin/pool-status-released.txt").held_metadata_root,
        None
    );
    let held = status("thin/pool-status-held.txt");
    let root = held.held_metadata_root.expect("a held root while held");
    assert_eq!(held.transaction_id, 2);

    let (snap_id, origin_id) = thin_ids();
    let offline = thin::delta(&meta, snap_id, origin_id, MetadataRoot::Superblock).unwrap();
    for given in [Some(root), None] {
        let d = thin::delta(
            &held_meta,
            snap_id,
            origin_id,
            MetadataRoot::HeldSnapshot(given),
        );
        assert_eq!(d.unwrap(), offline, "{given:?}");
    }
    assert_mappings_match_thin_dump(
        &held_meta,
        MetadataRoot::HeldSnapshot(Some(root)),
        &read("thin/thin_dump-held.xml"),
    );
    let err = thin::delta(
        &held_meta,
        snap_id,
        origin_id,
        MetadataRoot::HeldSnapshot(Some(root + 1)),
    )
    .unwrap_err();
    assert!(matches!(err, ThinError::HeldRootMismatch { .. }), "{err}");
}
