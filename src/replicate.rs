//! `lvmsync replicate`: keep a copy of an LV current with rotating snapshots, the state kept in
//! LVM itself as tags on the snapshots.
//!
//! Each destination has an id ([`dest_id`], its spelling made tag-safe) and at most one
//! snapshot in each role, named by a tag: `lvmsync-base:ID` (what DEST holds),
//! `lvmsync-pending:ID` (the snapshot being sent) and `lvmsync-retired:ID` (a base replaced,
//! to be removed). A round runs these steps, each one LVM command or one send:
//!
//! 1. `snapshot`: a new snapshot is created with the pending tag (one `lvcreate`, so it never
//!    exists untagged);
//! 2. `send`: the whole pending snapshot (no usable base), or the changes since the base read
//!    from the pending snapshot, so DEST becomes that one point in time;
//! 3. `retire`: the base's tag becomes the retired tag;
//! 4. `retag`: the pending tag becomes the base tag;
//! 5. the retired snapshot is removed.
//!
//! Each tag change is one `lvchange`, one metadata update, so a crash between any two steps
//! leaves a state that says how far the round got, and the next run ([`recover`]) carries on:
//! a pending snapshot next to a base is sent again (the destination check skips what is there
//! already, so the same send finishes it); a pending snapshot with a retired one and no base was
//! sent, and is made the base; a retired snapshot next to a base is removed. The base is never
//! lost, and no snapshot is left behind once a run succeeds. A classic base that overflowed
//! (its change list is incomplete) means a whole copy, said on standard error; so does a
//! classic pending snapshot that overflowed, because DEST may hold part of it.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::lvm::manage::{LvInfo, Manage};
use crate::msg::Verbosity;

/// The environment variable that stops a run after a step (`snapshot`, `send`, `retire`,
/// `retag`), as a crash there would: for tests of the recovery. The run then exits with
/// [`crate::exit::Exit::StoppedForTest`].
pub const STOP_ENV: &str = "LVMSYNC_TEST_STOP_AFTER";

/// Where the per-LV locks live.
pub const LOCK_DIR: &str = "/run/lock/lvmsync";

const TAG_PREFIX: &str = "lvmsync-";
/// LVM's names are at most 128 bytes; tags are kept within that too.
const MAX_TAG: usize = 128;

/// A step after which a run can be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Snapshot,
    Send,
    Retire,
    Retag,
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "snapshot" => Some(Step::Snapshot),
            "send" => Some(Step::Send),
            "retire" => Some(Step::Retire),
            "retag" => Some(Step::Retag),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Step::Snapshot => "snapshot",
            Step::Send => "send",
            Step::Retire => "retire",
            Step::Retag => "retag",
        }
    }
}

/// The role a tag gives a snapshot for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Base,
    Pending,
    Retired,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Base => "base",
            Role::Pending => "pending",
            Role::Retired => "retired",
        }
    }

    /// The tag of this role for destination id `id`.
    pub fn tag(self, id: &str) -> String {
        format!("{TAG_PREFIX}{}:{id}", self.word())
    }

    /// The role and destination id of an lvmsync tag.
    pub fn of_tag(tag: &str) -> Option<(Role, &str)> {
        let rest = tag.strip_prefix(TAG_PREFIX)?;
        let (word, id) = rest.split_once(':')?;
        let role = [Role::Base, Role::Pending, Role::Retired]
            .into_iter()
            .find(|r| r.word() == word)?;
        Some((role, id))
    }
}

fn tag_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._+-/:".contains(&b)
}

/// The tag-safe id of a destination as spelled (`host:/dev/vg/lv`): bytes LVM does not allow
/// in tags (and `=`) become `=XX`; a spelling too long for a tag becomes `#` and a hash of it.
pub fn dest_id(dest: &str) -> String {
    let mut id = String::new();
    for &b in dest.as_bytes() {
        if tag_safe(b) {
            id.push(b as char);
        } else {
            id.push_str(&format!("={b:02X}"));
        }
    }
    if Role::Pending.tag(&id).len() > MAX_TAG {
        let hash = blake3::hash(dest.as_bytes()).to_hex();
        id = format!("#{}", &hash[..32]);
    }
    id
}

/// The destination an id was made from, unless it is a hash.
pub fn dest_of_id(id: &str) -> Option<String> {
    if id.starts_with('#') {
        return None;
    }
    let b = id.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How large a classic snapshot's exception store is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSize {
    Bytes(u64),
    /// Percent of the LV.
    Percent(u64),
}

/// The default: a fifth of the LV, at least 64 MiB, at most the LV (a store that large never
/// overflows).
pub const DEFAULT_SNAPSHOT_SIZE: SnapshotSize = SnapshotSize::Percent(20);
const MIN_DEFAULT_BYTES: u64 = 64 << 20;

impl SnapshotSize {
    /// `N` (MiB, as lvcreate -L), `N` with a unit `b`, `k`, `m`, `g`, `t` (powers of 1024), or
    /// `N%` of the LV.
    pub fn parse(s: &str) -> std::result::Result<SnapshotSize, String> {
        let bad = || format!("snapshot size '{s}': expected e.g. 512M, 2G or 25%");
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u64 = p.parse().map_err(|_| bad())?;
            return if (1..=100).contains(&p) {
                Ok(SnapshotSize::Percent(p))
            } else {
                Err(format!("snapshot size '{s}': a percentage from 1 to 100"))
            };
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let shift = match unit.to_ascii_lowercase().as_str() {
            "b" => 0,
            "k" => 10,
            "" | "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(bad());
        }
        Ok(SnapshotSize::Bytes(bytes))
    }

    /// Bytes for an LV of `lv_bytes`, rounded up to whole extents.
    pub fn bytes(self, lv_bytes: u64, extent_bytes: u64, default: bool) -> u64 {
        let raw = match self {
            SnapshotSize::Bytes(b) => b,
            SnapshotSize::Percent(p) => {
                let b = (lv_bytes as u128 * p as u128).div_ceil(100) as u64;
                if default {
                    b.max(MIN_DEFAULT_BYTES).min(lv_bytes)
                } else {
                    b
                }
            }
        };
        raw.max(1).next_multiple_of(extent_bytes.max(1))
    }
}

/// What a round sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// The whole snapshot (`lvmsync --full SNAPSHOT DEST`).
    Full { snapshot: PathBuf },
    /// The changes since `base`, read from `data` (`lvmsync --data-source DATA BASE DEST`).
    Changes { base: PathBuf, data: PathBuf },
}

/// What one run asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub vg: String,
    pub lv: String,
    /// `[HOST:]DEST` as given.
    pub dest: String,
    /// The classic snapshot size given, if any.
    pub snapshot_size: Option<SnapshotSize>,
    pub verbosity: Verbosity,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// DEST holds `base` (`VG/LV`), the destination's base now.
    Done {
        base: String,
        /// A whole copy was sent (the first run, or no usable base).
        full: bool,
    },
    /// Stopped after this step by [`STOP_ENV`].
    Stopped(Step),
}

/// `VG/LV` split.
pub fn split_lv(s: &str) -> Result<(String, String)> {
    let s = s.strip_prefix("/dev/").unwrap_or(s);
    match s.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
            Ok((vg.to_string(), lv.to_string()))
        }
        _ => Err(Error::Usage(format!("'{s}': expected the volume as VG/LV"))),
    }
}

/// The LV to replicate, checked.
pub fn origin_lv(lvm: &dyn Manage, vg: &str, lv: &str) -> Result<LvInfo> {
    let lvs = lvm.lvs(vg)?;
    let info = lvs
        .into_iter()
        .find(|l| l.name == lv)
        .ok_or_else(|| Error::Invalid(format!("{vg}/{lv}: no such logical volume")))?;
    if !info.origin.is_empty() {
        return Err(Error::Invalid(format!(
            "{vg}/{lv} is a snapshot of {}; replicate the volume itself",
            info.origin
        )));
    }
    Ok(info)
}

/// The snapshots of `lv` in each role for destination `id`.
struct Roles {
    base: Vec<LvInfo>,
    pending: Vec<LvInfo>,
    retired: Vec<LvInfo>,
}

fn roles(lvm: &dyn Manage, vg: &str, lv: &str, id: &str) -> Result<Roles> {
    let mut r = Roles {
        base: vec![],
        pending: vec![],
        retired: vec![],
    };
    for s in lvm.lvs(vg)?.into_iter().filter(|l| l.origin == lv) {
        for t in &s.tags {
            match Role::of_tag(t) {
                Some((Role::Base, i)) if i == id => r.base.push(s.clone()),
                Some((Role::Pending, i)) if i == id => r.pending.push(s.clone()),
                Some((Role::Retired, i)) if i == id => r.retired.push(s.clone()),
                _ => {}
            }
        }
    }
    Ok(r)
}

fn note(req: &Request, msg: std::fmt::Arguments<'_>) {
    if req.verbosity >= Verbosity::Normal {
        crate::say!("lvmsync: {msg}");
    }
}

fn names(lvs: &[LvInfo]) -> String {
    lvs.iter()
        .map(LvInfo::full_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finishes what an interrupted run left (see the module's documentation): a pending snapshot
/// already sent is made the base, retired snapshots are removed. Refuses states no run leaves
/// (two bases, two pending snapshots), naming the snapshots.
fn recover(lvm: &dyn Manage, req: &Request, id: &str) -> Result<()> {
    let r = roles(lvm, &req.vg, &req.lv, id)?;
    let ambiguous = |what: &str, lvs: &[LvInfo], role: Role| {
        Error::Invalid(format!(
            "{}/{} has {what} snapshots for {}: {}; no lvmsync run leaves that; keep the right one and remove the tag {} from the others (lvchange --deltag)",
            req.vg,
            req.lv,
            req.dest,
            names(lvs),
            role.tag(id)
        ))
    };
    if r.base.len() > 1 {
        return Err(ambiguous("several base", &r.base, Role::Base));
    }
    if r.pending.len() > 1 {
        return Err(ambiguous("several pending", &r.pending, Role::Pending));
    }
    if r.base.is_empty() && !r.retired.is_empty() {
        if let Some(p) = r.pending.first() {
            note(
                req,
                format_args!(
                    "an earlier run sent {} to {} and stopped before making it the base; it is the base now",
                    p.full_name(),
                    req.dest
                ),
            );
            lvm.retag(
                &p.full_name(),
                &[&Role::Base.tag(id)],
                &[&Role::Pending.tag(id)],
            )?;
        }
    }
    for old in &r.retired {
        note(
            req,
            format_args!(
                "removing {}, a base replaced by an earlier run",
                old.full_name()
            ),
        );
        lvm.remove(&old.full_name())?;
    }
    Ok(())
}

/// A name for a new snapshot of `lv`: `LV-lvmsync-N`, N one more than any such name has.
fn snapshot_name(lvs: &[LvInfo], lv: &str) -> String {
    let prefix = format!("{lv}-lvmsync-");
    let n = lvs
        .iter()
        .filter_map(|l| l.name.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("{prefix}{}", n + 1)
}

fn create_pending(lvm: &dyn Manage, req: &Request, origin: &LvInfo, id: &str) -> Result<()> {
    let lvs = lvm.lvs(&req.vg)?;
    let name = snapshot_name(&lvs, &req.lv);
    let size = if origin.thin {
        None
    } else {
        let (free, extent) = lvm.vg_free(&req.vg)?;
        let given = req.snapshot_size;
        let bytes = given.unwrap_or(DEFAULT_SNAPSHOT_SIZE).bytes(
            origin.size_bytes,
            extent,
            given.is_none(),
        );
        if bytes > free {
            return Err(Error::Invalid(format!(
                "volume group {} has {free} bytes free, too few for a {bytes}-byte snapshot of {}/{}; give --snapshot-size or extend the volume group",
                req.vg, req.vg, req.lv
            )));
        }
        Some(bytes)
    };
    lvm.create_snapshot(&req.vg, &req.lv, &name, size, &Role::Pending.tag(id))?;
    if req.verbosity >= Verbosity::Verbose {
        crate::say!(
            "lvmsync: created snapshot {}/{name}{}",
            req.vg,
            size.map(|b| format!(" ({b} bytes of exception store)"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The active device of `lv` (activating a thin snapshot, which LVM leaves inactive).
fn device(lvm: &dyn Manage, vg: &str, lv: &LvInfo) -> Result<PathBuf> {
    if let Some(p) = &lv.dm_path {
        return Ok(PathBuf::from(p));
    }
    lvm.activate(&lv.full_name())?;
    lvm.lvs(vg)?
        .into_iter()
        .find(|l| l.name == lv.name)
        .and_then(|l| l.dm_path)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Invalid(format!("{}: not active after lvchange -ay", lv.full_name())))
}

/// One run: recovery, then a round. `send` carries a transfer to the destination; `stop`
/// says whether to stop after a step ([`STOP_ENV`]).
pub fn replicate(
    lvm: &dyn Manage,
    req: &Request,
    send: &mut dyn FnMut(&Transfer) -> Result<()>,
    stop: &dyn Fn(Step) -> bool,
) -> Result<Outcome> {
    let id = dest_id(&req.dest);
    let origin = origin_lv(lvm, &req.vg, &req.lv)?;
    recover(lvm, req, &id)?;
    let r = roles(lvm, &req.vg, &req.lv, &id)?;
    let mut base = r.base.into_iter().next();
    let mut pending = r.pending.into_iter().next();
    if let Some(b) = base.as_ref().filter(|b| b.invalid) {
        note(
            req,
            format_args!(
                "base snapshot {} overflowed (invalid): its change list is incomplete, so the whole volume is copied",
                b.full_name()
            ),
        );
        base = None;
    }
    if let Some(p) = pending.take() {
        if p.invalid {
            note(
                req,
                format_args!(
                    "snapshot {} of an interrupted run overflowed; removing it and copying the whole volume",
                    p.full_name()
                ),
            );
            lvm.remove(&p.full_name())?;
            base = None;
        } else {
            note(
                req,
                format_args!(
                    "finishing the interrupted run that sends {} (taken {}) to {}",
                    p.full_name(),
                    p.time,
                    req.dest
                ),
            );
            pending = Some(p);
        }
    }
    if pending.is_none() {
        create_pending(lvm, req, &origin, &id)?;
        if stop(Step::Snapshot) {
            return Ok(Outcome::Stopped(Step::Snapshot));
        }
        pending = roles(lvm, &req.vg, &req.lv, &id)?
            .pending
            .into_iter()
            .next();
    }
    let pending = pending.ok_or_else(|| {
        Error::Invalid(format!(
            "the new snapshot of {}/{} has no tag {}",
            req.vg,
            req.lv,
            Role::Pending.tag(&id)
        ))
    })?;
    let data = device(lvm, &req.vg, &pending)?;
    let transfer = match &base {
        Some(b) => Transfer::Changes {
            base: device(lvm, &req.vg, b)?,
            data,
        },
        None => Transfer::Full { snapshot: data },
    };
    send(&transfer)?;
    if stop(Step::Send) {
        return Ok(Outcome::Stopped(Step::Send));
    }
    // The old base, also an invalid one that was not used.
    let old = roles(lvm, &req.vg, &req.lv, &id)?.base;
    for b in &old {
        lvm.retag(
            &b.full_name(),
            &[&Role::Retired.tag(&id)],
            &[&Role::Base.tag(&id)],
        )?;
    }
    if stop(Step::Retire) {
        return Ok(Outcome::Stopped(Step::Retire));
    }
    lvm.retag(
        &pending.full_name(),
        &[&Role::Base.tag(&id)],
        &[&Role::Pending.tag(&id)],
    )?;
    if stop(Step::Retag) {
        return Ok(Outcome::Stopped(Step::Retag));
    }
    for b in &old {
        lvm.remove(&b.full_name())?;
    }
    Ok(Outcome::Done {
        base: pending.full_name(),
        full: matches!(transfer, Transfer::Full { .. }),
    })
}

/// One destination of an LV, as its tags say.
#[derive(Debug, Clone, PartialEq)]
pub struct DestStatus {
    /// The destination as spelled, or its id when that is a hash.
    pub dest: String,
    pub base: Option<LvInfo>,
    /// Snapshots of an interrupted run, with their role.
    pub unfinished: Vec<(Role, LvInfo)>,
}

/// Every destination `lv` is replicated to.
pub fn status(lvm: &dyn Manage, vg: &str, lv: &str) -> Result<Vec<DestStatus>> {
    origin_lv(lvm, vg, lv)?;
    let mut out: Vec<(String, DestStatus)> = Vec::new();
    for s in lvm.lvs(vg)?.into_iter().filter(|l| l.origin == lv) {
        for t in &s.tags {
            let Some((role, id)) = Role::of_tag(t) else {
                continue;
            };
            let i = match out.iter().position(|(i, _)| i == id) {
                Some(i) => i,
                None => {
                    out.push((
                        id.to_string(),
                        DestStatus {
                            dest: dest_of_id(id).unwrap_or_else(|| id.to_string()),
                            base: None,
                            unfinished: vec![],
                        },
                    ));
                    out.len() - 1
                }
            };
            let d = &mut out[i].1;
            match role {
                Role::Base if d.base.is_none() => d.base = Some(s.clone()),
                _ => d.unfinished.push((role, s.clone())),
            }
        }
    }
    let mut out: Vec<DestStatus> = out.into_iter().map(|(_, d)| d).collect();
    out.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(out)
}

/// An exclusive lock on one LV (by its UUID) for the life of the value: two runs on one LV
/// never overlap. With `wait`, waits for the holder; otherwise refuses at once.
#[derive(Debug)]
pub struct LvLock {
    _file: File,
}

impl LvLock {
    pub fn take(dir: &Path, uuid: &str, lv_name: &str, wait: bool) -> Result<LvLock> {
        use rustix::fs::{flock, FlockOperation};
        std::fs::create_dir_all(dir).ctx(|| format!("{}: cannot create", dir.display()))?;
        let key: String = uuid
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{key}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx(|| format!("{}: cannot open the lock", path.display()))?;
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, op) {
            Ok(()) => Ok(LvLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Invalid(format!(
                "another lvmsync replicate of {lv_name} is running (it holds {}); --wait waits for it",
                path.display()
            ))),
            Err(e) => Err(Error::io(format!("{}: cannot lock", path.display()), e.into())),
        }
    }
}

pub mod converge;

#[cfg(test)]
mod tests;
