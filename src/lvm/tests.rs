//! Discovery against reports captured from LVM 2.03.16 on kernel 6.1
//! (tests/fixtures/lvm-reports/, made by its capture.sh).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

/// Answers with what real `lvs`, `dmsetup` and sysfs said in one captured state.
struct Captured {
    lvs_json: String,
    by_dev: HashMap<DevNum, DmInfo>,
    tables: HashMap<String, String>,
    statuses: HashMap<String, String>,
    paths: HashMap<PathBuf, PathKind>,
}

fn lines_by_name(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(name, rest)| (name.to_string(), rest.to_string()))
        .collect()
}

impl Captured {
    fn load(state: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/lvm-reports")
            .join(state);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let mut by_dev = HashMap::new();
        let mut paths = HashMap::new();
        for line in read("sysfs-dm.txt").lines() {
            let mut w = line.split_whitespace();
            let dev: DevNum = w.next().unwrap().parse().unwrap();
            let name = w.next().unwrap().to_string();
            let uuid = w.next().unwrap_or("").to_string();
            paths.insert(Path::new("/dev/mapper").join(&name), PathKind::Block(dev));
            paths.insert(
                PathBuf::from(format!("/dev/dm-{}", dev.minor)),
                PathKind::Block(dev),
            );
            by_dev.insert(dev, DmInfo { name, uuid });
        }
        let lvs_json = read("lvs.json");
        for row in report::parse_lvs_json(&lvs_json).unwrap() {
            if let Some(dev) = row.kernel_dev() {
                if !row.lv_name.starts_with('[') {
                    paths.insert(
                        PathBuf::from(format!("/dev/{}/{}", row.vg_name, row.name())),
                        PathKind::Block(dev),
                    );
                }
            }
        }
        Captured {
            lvs_json,
            by_dev,
            tables: lines_by_name(&read("dmsetup-table.txt")),
            statuses: lines_by_name(&read("dmsetup-status.txt")),
            paths,
        }
    }

    fn name(&self, dev: DevNum) -> &str {
        &self.by_dev[&dev].name
    }
}

impl Tools for Captured {
    fn path_kind(&self, path: &Path) -> Result<PathKind, Error> {
        Ok(self.paths.get(path).cloned().unwrap_or(PathKind::Missing))
    }
    fn dm_info(&self, dev: DevNum) -> Result<Option<DmInfo>, Error> {
        Ok(self.by_dev.get(&dev).cloned())
    }
    fn lvs_json(&self, _vg: &str) -> Result<String, Error> {
        Ok(self.lvs_json.clone())
    }
    fn dmsetup_table(&self, dev: DevNum) -> Result<String, Error> {
        Ok(self.tables[self.name(dev)].clone())
    }
    fn dmsetup_status(&self, dev: DevNum) -> Result<String, Error> {
        Ok(self.statuses[self.name(dev)].clone())
    }
}

fn discover(state: &Captured, path: &str) -> Result<Snapshot, Error> {
    discover_with(state, Path::new(path))
}

fn error(state: &Captured, path: &str) -> String {
    discover(state, path).unwrap_err().to_string()
}

fn classic(state: &Captured, path: &str) -> ClassicSnapshot {
    match discover(state, path).unwrap() {
        Snapshot::Classic(c) => c,
        other => panic!("{path}: {other:?}"),
    }
}

fn thin(state: &Captured, path: &str) -> ThinSnapshot {
    match discover(state, path).unwrap() {
        Snapshot::Thin(t) => t,
        other => panic!("{path}: {other:?}"),
    }
}

#[test]
fn classic_snapshot_by_any_path() {
    let s = Captured::load("vg0-active");
    let want = ClassicSnapshot {
        name: "vg0/snap".into(),
        origin: "/dev/mapper/vg0-origin".into(),
        snapshot: "/dev/mapper/vg0-snap".into(),
        cow: "/dev/mapper/vg0-snap-cow".into(),
        chunk_bytes: 4096,
        origin_bytes: 64 << 20,
        origin_name: "vg0/origin".into(),
        origin_uuid: None,
        snapshot_uuid: None,
    };
    let PathKind::Block(dev) = s.paths[Path::new("/dev/mapper/vg0-snap")] else {
        unreachable!()
    };
    let dm_n = format!("/dev/dm-{}", dev.minor);
    for path in ["/dev/vg0/snap", "/dev/mapper/vg0-snap", dm_n.as_str()] {
        assert_eq!(classic(&s, path), want, "{path}");
    }
    check_classic_usable_with(&s, &want).unwrap();
}

#[test]
fn thin_snapshot() {
    let s = Captured::load("vg0-active");
    let want = ThinSnapshot {
        name: "vg0/tsnap".into(),
        origin: "/dev/mapper/vg0-thin1".into(),
        snapshot: Some("/dev/mapper/vg0-tsnap".into()),
        pool: DevNum {
            major: 253,
            minor: 6,
        },
        pool_dm_name: "vg0-pool-tpool".into(),
        metadata: "/dev/mapper/vg0-pool_tmeta".into(),
        snap_id: 2,
        origin_id: 1,
        block_bytes: 65536,
        origin_bytes: 128 << 20,
        snapshot_bytes: 128 << 20,
        origin_name: "vg0/thin1".into(),
        origin_uuid: None,
        snapshot_uuid: None,
    };
    assert_eq!(thin(&s, "/dev/vg0/tsnap"), want);
    assert_eq!(thin(&s, "/dev/mapper/vg0-tsnap"), want);
}

#[test]
fn hyphenated_names_and_a_striped_origin() {
    let s = Captured::load("my-vg");
    assert_eq!(
        classic(&s, "/dev/my-vg/data-lv-snap"),
        ClassicSnapshot {
            name: "my-vg/data-lv-snap".into(),
            origin: "/dev/mapper/my--vg-data--lv".into(),
            snapshot: "/dev/mapper/my--vg-data--lv--snap".into(),
            cow: "/dev/mapper/my--vg-data--lv--snap-cow".into(),
            chunk_bytes: 16384,
            origin_bytes: 16 << 20,
            origin_name: "my-vg/data-lv".into(),
            origin_uuid: None,
            snapshot_uuid: None,
        }
    );
    assert_eq!(
        thin(&s, "/dev/mapper/my--vg-th--lv--snap"),
        ThinSnapshot {
            name: "my-vg/th-lv-snap".into(),
            origin: "/dev/mapper/my--vg-th--lv".into(),
            snapshot: Some("/dev/mapper/my--vg-th--lv--snap".into()),
            pool: DevNum {
                major: 253,
                minor: 16,
            },
            pool_dm_name: "my--vg-th--pool-tpool".into(),
            metadata: "/dev/mapper/my--vg-th--pool_tmeta".into(),
            snap_id: 2,
            origin_id: 1,
            block_bytes: 131072,
            origin_bytes: 32 << 20,
            snapshot_bytes: 32 << 20,
            origin_name: "my-vg/th-lv".into(),
            origin_uuid: None,
            snapshot_uuid: None,
        }
    );
}

#[test]
fn inactive_thin_snapshot_by_name() {
    let s = Captured::load("my-vg-inactive-thin-snap");
    assert!(!s.paths.contains_key(Path::new("/dev/my-vg/th-lv-snap")));
    let t = thin(&s, "/dev/my-vg/th-lv-snap");
    assert_eq!((t.snap_id, t.origin_id), (2, 1));
    assert_eq!(t.pool_dm_name, "my--vg-th--pool-tpool");
    assert_eq!(thin(&s, "my-vg/th-lv-snap"), t);
    assert_eq!(thin(&s, "/dev/mapper/my--vg-th--lv--snap"), t);
    assert_eq!(
        error(&s, "/dev/mapper/my--vg-th--lv--snap-cow"),
        "/dev/mapper/my--vg-th--lv--snap-cow: no such device"
    );
}

#[test]
fn things_that_are_not_snapshots() {
    let s = Captured::load("my-vg");
    let cases = [
        ("/dev/my-vg/plain-lv", "my-vg/plain-lv is not a snapshot (it is a linear LV)"),
        ("/dev/my-vg/lone-thin", "my-vg/lone-thin is not a snapshot (it is a thin LV without an origin)"),
        ("/dev/mapper/my--vg-th--pool-tpool", "my-vg/th-pool is not a snapshot (it is a thin pool)"),
        ("/dev/my-vg/data-lv", "my-vg/data-lv is not a snapshot (it is the origin of a snapshot; name the snapshot LV)"),
        ("/dev/mapper/my--vg-th--pool_tmeta", "my-vg/th-pool_tmeta is not a snapshot (it is a linear LV)"),
        ("/dev/mapper/my--vg-data--lv--snap-cow", "/dev/mapper/my--vg-data--lv--snap-cow is my--vg-data--lv--snap-cow, an internal layer of an LVM volume, not a logical volume"),
        ("/dev/my-vg/nothing", "/dev/my-vg/nothing: no such device"),
    ];
    for (path, want) in cases {
        assert_eq!(error(&s, path), want, "{path}");
    }
}

#[test]
fn non_lvm_devices() {
    let mut s = Captured::load("vg0-active");
    let loop0 = DevNum { major: 7, minor: 0 };
    let crypt = DevNum {
        major: 253,
        minor: 99,
    };
    s.paths.insert("/dev/loop0".into(), PathKind::Block(loop0));
    s.paths
        .insert("/dev/mapper/luks-x".into(), PathKind::Block(crypt));
    s.by_dev.insert(
        crypt,
        DmInfo {
            name: "luks-x".into(),
            uuid: "CRYPT-LUKS2-0123-luks-x".into(),
        },
    );
    s.paths
        .insert("/tmp/img".into(), PathKind::NotBlock("a regular file"));
    assert_eq!(
        error(&s, "/dev/loop0"),
        "/dev/loop0 (block device 7:0) is not a device-mapper device, so not an LVM snapshot"
    );
    assert_eq!(
        error(&s, "/dev/mapper/luks-x"),
        "/dev/mapper/luks-x is device-mapper device luks-x which LVM does not manage, not an LVM snapshot"
    );
    assert_eq!(
        error(&s, "/tmp/img"),
        "/tmp/img is a regular file, not a snapshot block device"
    );
    assert_eq!(error(&s, "/nonexistent"), "/nonexistent: no such device");
}

#[test]
fn overflowed_snapshot_is_refused() {
    let s = Captured::load("vg0-invalid");
    let c = classic(&s, "/dev/vg0/snap");
    assert_eq!(
        check_classic_usable_with(&s, &c).unwrap_err().to_string(),
        "snapshot vg0/snap is invalid (it overflowed); its change list is incomplete"
    );
}

#[test]
fn merging_snapshot_is_refused() {
    let s = Captured::load("vg0-merging");
    let c = classic(&s, "/dev/mapper/vg0-snap2");
    assert_eq!(c.name, "vg0/snap2");
    assert_eq!(c.chunk_bytes, 8192);
    assert_eq!(
        check_classic_usable_with(&s, &c).unwrap_err().to_string(),
        "snapshot vg0/snap2 is being merged into its origin; its change list is not usable"
    );
}

/// Once the merge runs, the snapshot's own device is gone; naming it says why.
#[test]
fn merging_snapshot_without_its_device() {
    let mut s = Captured::load("vg0-merging");
    let mut report: serde_json::Value = serde_json::from_str(&s.lvs_json).unwrap();
    let rows = report["report"][0]["lv"].as_array_mut().unwrap();
    let snap = rows.iter_mut().find(|r| r["lv_name"] == "[snap2]").unwrap();
    snap["lv_attr"] = "Swi---s---".into();
    snap["lv_kernel_major"] = "-1".into();
    snap["lv_kernel_minor"] = "-1".into();
    s.lvs_json = report.to_string();
    s.paths
        .retain(|p, _| !p.to_string_lossy().contains("snap2"));
    assert_eq!(
        error(&s, "/dev/vg0/snap2"),
        "snapshot vg0/snap2 is being merged into its origin; its change list is not usable"
    );
}

/// The device-mapper status alone (as when the lvs report has not caught up) also refuses.
#[test]
fn invalid_status_alone_is_refused() {
    let mut s = Captured::load("vg0-active");
    s.statuses
        .insert("vg0-snap".into(), "0 131072 snapshot Invalid".into());
    let c = classic(&s, "/dev/vg0/snap");
    assert_eq!(
        check_classic_usable_with(&s, &c).unwrap_err().to_string(),
        "snapshot vg0/snap is invalid (it overflowed); its change list is incomplete"
    );
}

/// The report of the original fixture capture (tests/fixtures/lvm-2.03.16) agrees.
#[test]
fn original_fixture_tables_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvm-2.03.16");
    let tables =
        lines_by_name(&std::fs::read_to_string(dir.join("thin/dmsetup-table.txt")).unwrap());
    let snap = dm::parse_snapshot_table(&dm::single_target(&tables["vg0-snap"], "s").unwrap(), "s")
        .unwrap();
    assert_eq!(snap.chunk_sectors, 8);
    let pool = dm::parse_pool_table(
        &dm::single_target(&tables["vg0-pool-tpool"], "p").unwrap(),
        "p",
    )
    .unwrap();
    assert_eq!(pool.block_sectors * 512, 65536);
    let tsnap =
        dm::parse_thin_table(&dm::single_target(&tables["vg0-tsnap"], "t").unwrap(), "t").unwrap();
    assert_eq!(tsnap.dev_id, 2);
}

#[test]
fn copy_sources_are_snapshots_or_read_as_they_are() {
    let copy = |s: &Captured, path: &str| discover_copy_source_with(s, Path::new(path));
    let s = Captured::load("my-vg");
    // Snapshots, classic and thin, are found as for a sync.
    assert_eq!(
        copy(&s, "/dev/my-vg/data-lv-snap").unwrap(),
        Some(Snapshot::Classic(classic(&s, "/dev/my-vg/data-lv-snap")))
    );
    assert_eq!(
        copy(&s, "/dev/mapper/my--vg-th--lv--snap").unwrap(),
        Some(Snapshot::Thin(thin(&s, "/dev/mapper/my--vg-th--lv--snap")))
    );
    // Any other LV, an origin or a layer is read as it is.
    for path in [
        "/dev/my-vg/plain-lv",
        "/dev/my-vg/lone-thin",
        "/dev/my-vg/data-lv",
        "/dev/mapper/my--vg-data--lv--snap-cow",
    ] {
        assert_eq!(copy(&s, path).unwrap(), None, "{path}");
    }
    // An inactive thin snapshot is found by name.
    let inactive = Captured::load("my-vg-inactive-thin-snap");
    let t = thin(&inactive, "my-vg/th-lv-snap");
    assert_eq!(t.snapshot, None);
    assert_eq!(t.snapshot_bytes, 32 << 20);
    assert_eq!(
        copy(&inactive, "my-vg/th-lv-snap").unwrap(),
        Some(Snapshot::Thin(t))
    );
    // Devices LVM does not manage and files are read as they are; a missing path is an error.
    let mut s = Captured::load("vg0-active");
    s.paths.insert(
        "/dev/loop0".into(),
        PathKind::Block(DevNum { major: 7, minor: 0 }),
    );
    s.paths
        .insert("/tmp/img".into(), PathKind::NotBlock("a regular file"));
    assert_eq!(copy(&s, "/dev/loop0").unwrap(), None);
    assert_eq!(copy(&s, "/tmp/img").unwrap(), None);
    assert_eq!(
        copy(&s, "/nonexistent").unwrap_err().to_string(),
        "/nonexistent: no such device"
    );
}
