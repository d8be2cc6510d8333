//! Live LVM discovery: from a snapshot's path to the devices its changes are read from.
//!
//! LVM's own report (`lvs --reportformat json`) says what an LV is; device-mapper tables say
//! which devices back it. Device names are never built by hand (LVM doubles `-` in names):
//! every device is found by its `major:minor` through `/sys/dev/block/MAJ:MIN/dm/name`.
//! [`manage`] changes LVM's state (snapshots made, tagged and removed) for `lvmsync replicate`.

pub mod dm;
pub mod manage;
pub mod report;
pub mod tools;

use std::path::{Path, PathBuf};

pub use dm::DevNum;
use dm::{parse_pool_table, parse_snapshot_table, parse_thin_table, single_target};
use report::{parse_lvs_json, LvRow};
pub use tools::{DmInfo, PathKind, SystemTools, Tools};

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    Classic(ClassicSnapshot),
    Thin(ThinSnapshot),
}

impl Snapshot {
    /// `vg/lv`
    pub fn name(&self) -> &str {
        match self {
            Snapshot::Classic(s) => &s.name,
            Snapshot::Thin(s) => &s.name,
        }
    }

    /// The origin LV's `/dev/mapper` path: where changed data is read.
    pub fn origin(&self) -> &Path {
        match self {
            Snapshot::Classic(s) => &s.origin,
            Snapshot::Thin(s) => &s.origin,
        }
    }

    /// Size of the origin, the volume the changes refer to.
    pub fn origin_bytes(&self) -> u64 {
        match self {
            Snapshot::Classic(s) => s.origin_bytes,
            Snapshot::Thin(s) => s.origin_bytes,
        }
    }
}

/// A dm-snapshot (COW) snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicSnapshot {
    /// `vg/lv`
    pub name: String,
    /// The device to read data from: the origin LV's `/dev/mapper` path.
    pub origin: PathBuf,
    /// The snapshot LV's own `/dev/mapper` path: its point-in-time contents.
    pub snapshot: PathBuf,
    /// The exception-store device (`/dev/mapper/VG-LV-cow`).
    pub cow: PathBuf,
    pub chunk_bytes: u64,
    pub origin_bytes: u64,
    /// `vg/lv` of the origin.
    pub origin_name: String,
    pub origin_uuid: Option<String>,
    pub snapshot_uuid: Option<String>,
}

/// A thin snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinSnapshot {
    /// `vg/lv`
    pub name: String,
    /// The origin thin LV's `/dev/mapper` path.
    pub origin: PathBuf,
    /// The snapshot LV's own `/dev/mapper` path when it is active (thin snapshots are not
    /// activated by default).
    pub snapshot: Option<PathBuf>,
    /// The thin-pool device (`major:minor`), for a private read-only view of the snapshot.
    pub pool: DevNum,
    /// The thin-pool target's dm name, e.g. `vg-pool-tpool` (for `dmsetup message/status`).
    pub pool_dm_name: String,
    /// The pool's metadata device.
    pub metadata: PathBuf,
    pub snap_id: u64,
    pub origin_id: u64,
    pub block_bytes: u64,
    pub origin_bytes: u64,
    /// Size of the snapshot LV itself (its origin may have grown since).
    pub snapshot_bytes: u64,
    /// `vg/lv` of the origin.
    pub origin_name: String,
    pub origin_uuid: Option<String>,
    pub snapshot_uuid: Option<String>,
}

/// Finds the snapshot at `path` (`/dev/VG/LV`, `/dev/mapper/VG-LV`, a link to `/dev/dm-N`).
/// A thin snapshot that is not active (LVM skips their activation by default) may be named by
/// `/dev/VG/LV` or `VG/LV`; its origin must be active.
///
/// A classic snapshot must still be checked with [`check_classic_usable`] before (and after)
/// its exception store is read.
pub fn discover_snapshot(path: &Path) -> Result<Snapshot, Error> {
    discover_with(&SystemTools, path)
}

/// What `lvmsync --full SOURCE` reads: `Some` snapshot when SOURCE is an LVM snapshot (classic
/// or thin, active or a thin one named while inactive), `None` for any other block device or a
/// regular file, which is read as it is. A path that does not exist is looked up as a snapshot
/// name (`VG/LV`, as an inactive thin snapshot is named).
pub fn discover_copy_source(path: &Path) -> Result<Option<Snapshot>, Error> {
    discover_copy_source_with(&SystemTools, path)
}

/// Refuses a classic snapshot that is invalid (it overflowed, so its change list is incomplete)
/// or being merged into its origin.
pub fn check_classic_usable(s: &ClassicSnapshot) -> Result<(), Error> {
    check_classic_usable_with(&SystemTools, s)
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// `/dev/mapper/NAME` of a device-mapper device.
fn mapper_path(tools: &dyn Tools, dev: DevNum, what: &str) -> Result<PathBuf, Error> {
    let info = tools.dm_info(dev)?.ok_or_else(|| {
        invalid(format!(
            "{what}: device {dev} is not a device-mapper device"
        ))
    })?;
    Ok(Path::new("/dev/mapper").join(info.name))
}

/// `VG/LV` of a path that does not exist: `/dev/VG/LV`, `/dev/mapper/VG-LV` or `VG/LV`.
fn name_from_missing_path(path: &Path) -> Option<(String, String)> {
    let s = path.to_str()?;
    if let Some(dm_name) = s.strip_prefix("/dev/mapper/") {
        let (vg, lv) = dm::split_lvm_dm_name(dm_name)?;
        // a single `-` left after the doubled ones starts a layer suffix (`-cow`, `-tpool`)
        let has_layer = lv.replace("--", "").contains('-');
        return (!has_layer && !lv.is_empty()).then(|| (vg, lv.replace("--", "-")));
    }
    let rest = s.strip_prefix("/dev/").unwrap_or(s);
    let (vg, lv) = rest.split_once('/')?;
    let ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with('-')
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
    };
    (ok(vg) && ok(lv) && vg != "mapper").then(|| (vg.to_string(), lv.to_string()))
}

pub fn discover_with(tools: &dyn Tools, path: &Path) -> Result<Snapshot, Error> {
    let shown = path.display();
    let dev = match tools.path_kind(path)? {
        PathKind::Block(dev) => dev,
        PathKind::NotBlock(what) => {
            return Err(invalid(format!(
                "{shown} is {what}, not a snapshot block device"
            )))
        }
        PathKind::Missing => {
            if let Some((vg, lv)) = name_from_missing_path(path) {
                if let Ok(rows) = vg_rows(tools, &vg) {
                    if let Some(row) = rows.iter().find(|r| r.name() == lv) {
                        return classify(tools, &rows, row, None);
                    }
                }
            }
            return Err(invalid(format!("{shown}: no such device")));
        }
    };
    let info = tools.dm_info(dev)?.ok_or_else(|| {
        invalid(format!(
            "{shown} (block device {dev}) is not a device-mapper device, so not an LVM snapshot"
        ))
    })?;
    if !info.uuid.starts_with("LVM-") {
        return Err(invalid(format!(
            "{shown} is device-mapper device {} which LVM does not manage, not an LVM snapshot",
            info.name
        )));
    }
    let (vg, _) = dm::split_lvm_dm_name(&info.name).ok_or_else(|| {
        invalid(format!(
            "{shown}: cannot tell the volume group of device-mapper device {}",
            info.name
        ))
    })?;
    let rows = vg_rows(tools, &vg)?;
    let row = rows
        .iter()
        .find(|r| r.kernel_dev() == Some(dev))
        .ok_or_else(|| {
            invalid(format!(
                "{shown} is {}, an internal layer of an LVM volume, not a logical volume",
                info.name
            ))
        })?;
    classify(tools, &rows, row, Some(dev))
}

pub fn discover_copy_source_with(
    tools: &dyn Tools,
    path: &Path,
) -> Result<Option<Snapshot>, Error> {
    let dev = match tools.path_kind(path)? {
        PathKind::Block(dev) => dev,
        // Opening it says what is wrong with anything but a regular file.
        PathKind::NotBlock(_) => return Ok(None),
        PathKind::Missing => return discover_with(tools, path).map(Some),
    };
    let lvm_name = match tools.dm_info(dev)? {
        Some(info) if info.uuid.starts_with("LVM-") => info.name,
        _ => return Ok(None),
    };
    let Some((vg, _)) = dm::split_lvm_dm_name(&lvm_name) else {
        return Ok(None);
    };
    let rows = vg_rows(tools, &vg)?;
    match rows.iter().find(|r| r.kernel_dev() == Some(dev)) {
        Some(row) if row.is_snapshot() => classify(tools, &rows, row, Some(dev)).map(Some),
        // A plain LV, an origin, an internal layer: read as it is.
        _ => Ok(None),
    }
}

/// Every LV of volume group `vg`.
fn vg_rows(tools: &dyn Tools, vg: &str) -> Result<Vec<LvRow>, Error> {
    let mut rows = parse_lvs_json(&tools.lvs_json(vg)?)?;
    rows.retain(|r| r.vg_name == vg);
    Ok(rows)
}

fn find_lv<'a>(rows: &'a [LvRow], name: &str, of: &LvRow) -> Result<&'a LvRow, Error> {
    rows.iter().find(|r| r.name() == name).ok_or_else(|| {
        invalid(format!(
            "{}: LV {name} is not in the report of volume group {}",
            of.lv_full_name, of.vg_name
        ))
    })
}

/// Says what `row` is, and builds the snapshot if it is one.
fn classify(
    tools: &dyn Tools,
    rows: &[LvRow],
    row: &LvRow,
    dev: Option<DevNum>,
) -> Result<Snapshot, Error> {
    let full = &row.lv_full_name;
    match (row.segtype.as_str(), row.attr_type()) {
        ("thin", _) if row.origin.is_empty() => Err(invalid(format!(
            "{full} is not a snapshot (it is a thin LV without an origin)"
        ))),
        ("thin", _) => thin(tools, rows, row, dev).map(Snapshot::Thin),
        ("thin-pool", _) => Err(invalid(format!(
            "{full} is not a snapshot (it is a thin pool)"
        ))),
        (_, 's' | 'S') => {
            let dev = dev.ok_or_else(|| {
                if row.is_merging() {
                    invalid(format!(
                        "snapshot {full} is being merged into its origin; its change list is not usable"
                    ))
                } else {
                    invalid(format!(
                        "{full} is not active; activate it (lvchange -ay {full})"
                    ))
                }
            })?;
            classic(tools, rows, row, dev).map(Snapshot::Classic)
        }
        (_, 'o' | 'O') => Err(invalid(format!(
            "{full} is not a snapshot (it is the origin of a snapshot; name the snapshot LV)"
        ))),
        (segtype, _) => Err(invalid(format!(
            "{full} is not a snapshot (it is a {segtype} LV)"
        ))),
    }
}

fn classic(
    tools: &dyn Tools,
    rows: &[LvRow],
    row: &LvRow,
    dev: DevNum,
) -> Result<ClassicSnapshot, Error> {
    let full = &row.lv_full_name;
    let table = single_target(&tools.dmsetup_table(dev)?, full)?;
    let snap = parse_snapshot_table(&table, full)?;
    let origin_row = find_lv(rows, &row.origin, row)?;
    let origin_full = &origin_row.lv_full_name;
    let origin_dev = origin_row
        .kernel_dev()
        .ok_or_else(|| invalid(format!("{full}: its origin {origin_full} is not active")))?;
    // The origin LV's own device must sit on the same real device as the snapshot, or the
    // report and the kernel disagree about which origin this is.
    let origin_table = single_target(&tools.dmsetup_table(origin_dev)?, origin_full)?;
    let origin_real = match (origin_table.target.as_str(), origin_table.args.first()) {
        ("snapshot-origin" | "snapshot-merge", Some(real)) => real.parse::<DevNum>()?,
        _ => {
            return Err(invalid(format!(
                "{full}: origin {origin_full} has an unexpected device-mapper table ({})",
                origin_table.target
            )))
        }
    };
    if origin_real != snap.origin_real {
        return Err(invalid(format!(
            "{full}: snapshot reads origin device {} but {origin_full} is on {origin_real}",
            snap.origin_real
        )));
    }
    if snap.chunk_sectors == 0 {
        return Err(invalid(format!("{full}: snapshot chunk size is 0")));
    }
    Ok(ClassicSnapshot {
        name: full.clone(),
        origin: mapper_path(tools, origin_dev, origin_full)?,
        snapshot: mapper_path(tools, dev, full)?,
        cow: mapper_path(tools, snap.cow, &format!("{full} exception store"))?,
        chunk_bytes: snap.chunk_sectors * 512,
        origin_bytes: origin_row.size_bytes()?,
        origin_name: origin_full.clone(),
        origin_uuid: origin_row.uuid(),
        snapshot_uuid: row.uuid(),
    })
}

fn thin(
    tools: &dyn Tools,
    rows: &[LvRow],
    row: &LvRow,
    dev: Option<DevNum>,
) -> Result<ThinSnapshot, Error> {
    let full = &row.lv_full_name;
    let origin_row = find_lv(rows, &row.origin, row)?;
    let origin_full = &origin_row.lv_full_name;
    if origin_row.segtype != "thin" {
        return Err(invalid(format!(
            "{full}: its origin {origin_full} is not a thin LV (external origins are not supported)"
        )));
    }
    if origin_row.pool_lv != row.pool_lv {
        return Err(invalid(format!(
            "{full}: its origin {origin_full} is in pool {}, not {}",
            origin_row.pool_lv, row.pool_lv
        )));
    }
    let snap_id = row.thin_id()?;
    let origin_id = origin_row.thin_id()?;
    let origin_dev = origin_row.kernel_dev().ok_or_else(|| {
        invalid(format!(
            "{full}: its origin {origin_full} is not active; activate it (lvchange -ay {origin_full})"
        ))
    })?;
    let origin_table = parse_thin_table(
        &single_target(&tools.dmsetup_table(origin_dev)?, origin_full)?,
        origin_full,
    )?;
    if origin_table.dev_id != origin_id {
        return Err(invalid(format!(
            "{origin_full}: lvs says thin id {origin_id}, device-mapper says {}",
            origin_table.dev_id
        )));
    }
    let pool_dev = origin_table.pool;
    if let Some(dev) = dev {
        let snap_table = parse_thin_table(&single_target(&tools.dmsetup_table(dev)?, full)?, full)?;
        if snap_table.dev_id != snap_id {
            return Err(invalid(format!(
                "{full}: lvs says thin id {snap_id}, device-mapper says {}",
                snap_table.dev_id
            )));
        }
        if snap_table.pool != pool_dev {
            return Err(invalid(format!(
                "{full} and {origin_full} use different thin-pool devices ({} and {pool_dev})",
                snap_table.pool
            )));
        }
    }
    let pool_name = format!("{}/{}", row.vg_name, row.pool_lv);
    let pool_info = tools.dm_info(pool_dev)?.ok_or_else(|| {
        invalid(format!(
            "{pool_name}: pool device {pool_dev} is not a device-mapper device"
        ))
    })?;
    let pool = parse_pool_table(
        &single_target(&tools.dmsetup_table(pool_dev)?, &pool_name)?,
        &pool_name,
    )?;
    let block_bytes = pool.block_sectors * 512;
    if block_bytes == 0 {
        return Err(invalid(format!("{pool_name}: thin-pool block size is 0")));
    }
    let pool_row = find_lv(rows, &row.pool_lv, row)?;
    if let Ok(reported) = pool_row.chunk_size.trim().parse::<u64>() {
        if reported != block_bytes {
            return Err(invalid(format!(
                "{pool_name}: lvs says chunk size {reported}, the thin-pool table says {block_bytes}"
            )));
        }
    }
    Ok(ThinSnapshot {
        name: full.clone(),
        origin: mapper_path(tools, origin_dev, origin_full)?,
        snapshot: match dev {
            Some(dev) => Some(mapper_path(tools, dev, full)?),
            None => None,
        },
        pool: pool_dev,
        pool_dm_name: pool_info.name,
        metadata: mapper_path(tools, pool.metadata, &format!("{pool_name} metadata"))?,
        snap_id,
        origin_id,
        block_bytes,
        origin_bytes: origin_row.size_bytes()?,
        snapshot_bytes: row.size_bytes()?,
        origin_name: origin_full.clone(),
        origin_uuid: origin_row.uuid(),
        snapshot_uuid: row.uuid(),
    })
}

pub fn check_classic_usable_with(tools: &dyn Tools, s: &ClassicSnapshot) -> Result<(), Error> {
    let name = &s.name;
    let (vg, lv) = name
        .split_once('/')
        .ok_or_else(|| invalid(format!("{name}: not a VG/LV name")))?;
    let rows = vg_rows(tools, vg)?;
    let row = rows
        .iter()
        .find(|r| r.name() == lv)
        .ok_or_else(|| invalid(format!("snapshot {name} no longer exists")))?;
    let merging = || {
        invalid(format!(
            "snapshot {name} is being merged into its origin; its change list is not usable"
        ))
    };
    let overflowed = || {
        invalid(format!(
            "snapshot {name} is invalid (it overflowed); its change list is incomplete"
        ))
    };
    if row.is_merging() {
        return Err(merging());
    }
    if row.attr_state() == 'I' {
        return Err(overflowed());
    }
    let dev = row
        .kernel_dev()
        .ok_or_else(|| invalid(format!("snapshot {name} is not active")))?;
    let status = single_target(&tools.dmsetup_status(dev)?, name)?;
    match (
        status.target.as_str(),
        status.args.first().map(String::as_str),
    ) {
        ("snapshot-merge", _) => Err(merging()),
        ("snapshot", Some("Invalid" | "Overflow")) => Err(overflowed()),
        ("snapshot", Some(usage)) if usage.contains('/') => Ok(()),
        (target, _) => Err(invalid(format!(
            "snapshot {name} is not usable (device-mapper status: {target} {})",
            status.args.join(" ")
        ))),
    }
}

#[cfg(test)]
mod tests;
