//! Holding things on a live thin pool that must be given back: a metadata snapshot while the
//! pool's metadata is read, and a private read-only view of a thin device that LVM left inactive.
//!
//! `dmsetup message POOL 0 reserve_metadata_snap` makes the kernel keep a frozen copy of the
//! pool's btrees; `dmsetup status POOL` then reports its block (the held metadata root, field 7);
//! `release_metadata_snap` frees it. A pool holds at most one, and while it is held the kernel
//! cannot free the metadata blocks it pins, so it must be released on every exit path.
//!
//! A thin snapshot is created with LVM's activation-skip flag, so it usually has no device.
//! [`ReadOnlyThinDevice`] makes one for lvmsync alone (`dmsetup create --readonly`, a `thin`
//! target on the pool), without changing anything LVM knows; it holds the pool open, so it must
//! be removed on every exit path too.
//!
//! Both are undone on drop (including unwinding from a panic) and on SIGINT, SIGTERM and SIGHUP,
//! after which the process exits with status 128 + signal. A signal already ignored when lvmsync
//! starts (`nohup`) stays ignored.
//!
//! A snapshot that was already held before lvmsync asked belongs to someone else (thin_dump,
//! a backup tool...): lvmsync refuses to use it and never releases it.
//!
//! `dmsetup` is run like every other tool, by [`crate::lvm::tools::run_tool`].

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::ThinError;
use crate::lvm::tools::{run_tool, ToolFailure};
use crate::lvm::DevNum;

/// The parts of a thin-pool status line lvmsync uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub transaction_id: u64,
    /// Block of the held metadata snapshot, `None` when none is held (`-`).
    pub held_metadata_root: Option<u64>,
    /// `rw`, `ro` or `out_of_data_space`.
    pub mode: String,
}

/// Parses `dmsetup status POOL` output for a thin-pool target:
/// `START LEN thin-pool TXID USED/TOTAL_META USED/TOTAL_DATA HELD_ROOT MODE ...`.
pub fn parse_pool_status(pool: &str, text: &str) -> Result<PoolStatus, ThinError> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("thin-pool"))
        .ok_or_else(|| ThinError::PoolStatus {
            pool: pool.into(),
            line: text.trim().into(),
            reason: "not a thin-pool target".into(),
        })?;
    let bad = |reason: &str| ThinError::PoolStatus {
        pool: pool.into(),
        line: line.trim().into(),
        reason: reason.into(),
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.get(3) {
        Some(&"Fail") => return Err(bad("the pool has failed")),
        Some(&"Error") => return Err(bad("the kernel cannot read the pool's metadata")),
        _ => {}
    }
    if f.len() < 8 {
        return Err(bad("too few fields"));
    }
    let transaction_id = f[3]
        .parse()
        .map_err(|_| bad("transaction id is not a number"))?;
    for usage in &f[4..6] {
        let ok = usage
            .split_once('/')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
        if !ok {
            return Err(bad("block usage is not USED/TOTAL"));
        }
    }
    let held_metadata_root = match f[6] {
        "-" => None,
        s => Some(
            s.parse()
                .map_err(|_| bad("held metadata root is neither '-' nor a block number"))?,
        ),
    };
    Ok(PoolStatus {
        transaction_id,
        held_metadata_root,
        mode: f[7].to_string(),
    })
}

/// Runs `dmsetup ARGS`, returning its stdout. A failure says the whole of dmsetup's stderr: the
/// kernel's reason is on its first line (`Device or resource busy`), `Command failed.` last.
fn dmsetup(args: &[&str]) -> Result<String, ThinError> {
    let command = format!("dmsetup {}", args.join(" "));
    let message = match run_tool("dmsetup", args) {
        Ok(stdout) => return Ok(String::from_utf8_lossy(&stdout).into_owned()),
        Err(ToolFailure::Spawn(e)) => e.to_string(),
        Err(ToolFailure::Exit { status, stderr }) => match stderr.trim() {
            "" => status.to_string(),
            s => s.to_string(),
        },
    };
    Err(ThinError::Dmsetup { command, message })
}

fn pool_status(pool: &str) -> Result<PoolStatus, ThinError> {
    parse_pool_status(pool, &dmsetup(&["status", pool])?)
}

fn release_snapshot(pool: &str) -> Result<(), ThinError> {
    dmsetup(&["message", pool, "0", "release_metadata_snap"]).map(drop)
}

/// Removes a device-mapper device. One still open (a probe by udev right after it appeared) is
/// removed by the kernel at its last close instead.
fn remove_device(name: &str) -> Result<(), ThinError> {
    match dmsetup(&["remove", name]) {
        Ok(_) => Ok(()),
        Err(_) => remove_device_deferred(name),
    }
}

fn remove_device_deferred(name: &str) -> Result<(), ThinError> {
    dmsetup(&["remove", "--deferred", name]).map(drop)
}

/// What this process holds and must give back.
#[derive(Debug, Clone)]
enum Held {
    /// A metadata snapshot of the pool with this device-mapper name.
    MetadataSnap(String),
    /// A device-mapper device lvmsync created, by name.
    Device(String),
}

impl Held {
    /// Gives it back. `exiting`: the process is about to exit with the device possibly still
    /// open by its own reading threads, so its removal is deferred to the last close.
    fn undo(&self, exiting: bool) -> Result<(), ThinError> {
        match self {
            Held::MetadataSnap(pool) => release_snapshot(pool),
            Held::Device(name) if exiting => remove_device_deferred(name),
            Held::Device(name) => remove_device(name),
        }
    }
}

/// Everything held by this process, by guard id. A guard is undone by whoever removes it from
/// here first (its drop, an explicit release, or the signal handler), so never twice.
struct Registry {
    next_id: u64,
    held: Vec<(u64, Held)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    held: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn add(&mut self, held: Held) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.held.push((id, held));
        id
    }
}

/// Undoes what guard `id` holds, unless the signal handler already did.
fn undo_once(id: u64) -> Result<(), ThinError> {
    let mut reg = registry();
    match reg.held.iter().position(|(i, _)| *i == id) {
        Some(i) => {
            let (_, held) = reg.held.remove(i);
            held.undo(false)
        }
        None => Ok(()),
    }
}

/// Whether `sig` is ignored in this process. Such a signal was ignored on purpose by whoever
/// started lvmsync (`nohup` ignores SIGHUP, a shell ignores SIGINT in background jobs): catching
/// it would let it end the process, so it stays ignored (and cannot leave a snapshot held).
fn signal_ignored(sig: libc::c_int) -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only stores the current one into `old`, which
    // is zero-initialised and valid for any outcome.
    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
    rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Installs (once) the thread that gives back everything held on SIGINT/SIGTERM/SIGHUP (those
/// not ignored, see [`signal_ignored`]) and then exits with 128 + signal.
fn install_signal_handler() -> Result<(), ThinError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let caught = [SIGINT, SIGTERM, SIGHUP]
                .into_iter()
                .filter(|&s| !signal_ignored(s));
            let mut signals = signal_hook::iterator::Signals::new(caught)
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
            std::thread::Builder::new()
                .name("thin-snap-release".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        let mut reg = registry();
                        // Newest first: a device made after a metadata snapshot goes first.
                        for (_, held) in reg.held.drain(..).rev() {
                            if let Err(e) = held.undo(true) {
                                crate::say!("lvmsync: {e}");
                            }
                        }
                        std::process::exit(crate::exit::Exit::Signal(sig).code());
                    }
                })
                .map(drop)
                .map_err(|e| format!("cannot start the signal thread: {e}"))
        })
        .clone()
        .map_err(ThinError::Metadata)
}

/// A metadata snapshot reserved by this process; released when dropped.
#[derive(Debug)]
pub struct MetadataSnapGuard {
    id: u64,
    pool: String,
    held_root: u64,
}

impl MetadataSnapGuard {
    /// Reserves a metadata snapshot of the thin pool `pool_dm_name` (the device-mapper name of
    /// the `thin-pool` target, e.g. `vg0-pool-tpool`) and reads its block from the pool status.
    pub fn reserve(pool_dm_name: &str) -> Result<Self, ThinError> {
        let pool = pool_dm_name;
        install_signal_handler()?;
        let already = || ThinError::AlreadyHeld { pool: pool.into() };
        if pool_status(pool)?.held_metadata_root.is_some() {
            return Err(already());
        }
        // Registered under the lock, so a signal arriving meanwhile waits and then releases it.
        let mut reg = registry();
        if let Err(e) = dmsetup(&["message", pool, "0", "reserve_metadata_snap"]) {
            // The kernel answers EBUSY when someone reserved one since the status above.
            return Err(match &e {
                ThinError::Dmsetup { message, .. } if message.to_lowercase().contains("busy") => {
                    already()
                }
                _ => e,
            });
        }
        let held_root = match pool_status(pool) {
            Ok(PoolStatus {
                held_metadata_root: Some(b),
                ..
            }) => b,
            Ok(_) => {
                return Err(ThinError::Metadata(format!(
                    "pool {pool}: reserve_metadata_snap succeeded but the status shows no held \
                     metadata root"
                )))
            }
            Err(e) => {
                // It is ours but unusable: give it back.
                let _ = release_snapshot(pool);
                return Err(e);
            }
        };
        let id = reg.add(Held::MetadataSnap(pool.to_string()));
        Ok(MetadataSnapGuard {
            id,
            pool: pool.to_string(),
            held_root,
        })
    }

    /// Block of the held metadata snapshot (use with
    /// [`super::MetadataRoot::HeldSnapshot`]`(Some(..))`).
    pub fn held_root(&self) -> u64 {
        self.held_root
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Releases the snapshot now, reporting failure (dropping releases too, but can only warn).
    pub fn release(self) -> Result<(), ThinError> {
        // Dropping afterwards finds nothing left to release.
        self.release_once()
    }

    fn release_once(&self) -> Result<(), ThinError> {
        undo_once(self.id)
    }
}

impl Drop for MetadataSnapGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_once() {
            crate::say!("lvmsync: {e}");
        }
    }
}

/// A read-only device-mapper view of a thin device, made by lvmsync for itself while it reads
/// it (a thin snapshot that LVM left inactive); removed when dropped. It holds the pool open,
/// and nothing it does changes the pool's metadata or what LVM knows.
#[derive(Debug)]
pub struct ReadOnlyThinDevice {
    id: u64,
    name: String,
    path: PathBuf,
}

impl ReadOnlyThinDevice {
    /// Makes `/dev/mapper/NAME`, a read-only `thin` target of `sectors` 512-byte sectors on the
    /// thin pool device `pool` (its `thin-pool` target) for thin device `dev_id`. NAME is
    /// `lvmsync-thinID-PID`: one left behind by a `kill -9` says whose it was.
    pub fn create(pool: DevNum, dev_id: u64, sectors: u64) -> Result<Self, ThinError> {
        install_signal_handler()?;
        let name = format!("lvmsync-thin{dev_id}-{}", std::process::id());
        let table = format!("0 {sectors} thin {pool} {dev_id}");
        // Registered under the lock, so a signal arriving meanwhile waits and then removes it.
        let mut reg = registry();
        dmsetup(&["create", "--readonly", &name, "--table", &table])?;
        let id = reg.add(Held::Device(name.clone()));
        drop(reg);
        let device = ReadOnlyThinDevice {
            id,
            path: Path::new("/dev/mapper").join(&name),
            name,
        };
        // Without udev nothing makes the node; with it, this only checks it is there.
        dmsetup(&["mknodes", &device.name])?;
        Ok(device)
    }

    /// The device to read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the device now (close it first), reporting failure.
    pub fn remove(self) -> Result<(), ThinError> {
        undo_once(self.id)
    }
}

impl Drop for ReadOnlyThinDevice {
    fn drop(&mut self) {
        if let Err(e) = undo_once(self.id) {
            crate::say!("lvmsync: {e}");
        }
    }
}
