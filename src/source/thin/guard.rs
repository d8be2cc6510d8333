//! Holding a metadata snapshot of a live thin pool while its metadata is read.
//!
//! `dmsetup message POOL 0 reserve_metadata_snap` makes the kernel keep a frozen copy of the
//! pool's btrees; `dmsetup status POOL` then reports its block (the held metadata root, field 7);
//! `release_metadata_snap` frees it. A pool holds at most one, and while it is held the kernel
//! cannot free the metadata blocks it pins, so it must be released on every exit path: on drop
//! (including unwinding from a panic) and on SIGINT, SIGTERM and SIGHUP, after which the process
//! exits with status 128 + signal. A signal already ignored when lvmsync starts (`nohup`) stays
//! ignored.
//!
//! A snapshot that was already held before lvmsync asked belongs to someone else (thin_dump,
//! a backup tool...): lvmsync refuses to use it and never releases it.
//!
//! `dmsetup` is run like every other tool, by [`crate::lvm::tools::run_tool`].

use std::sync::{Mutex, MutexGuard, OnceLock};

use super::ThinError;
use crate::lvm::tools::{run_tool, ToolFailure};

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

/// Snapshots held by this process, by guard id. A guard is released by whoever removes it from
/// here first (its drop, an explicit release, or the signal handler), so never twice.
struct Registry {
    next_id: u64,
    held: Vec<(u64, String)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    held: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
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

/// Installs (once) the thread that releases every held snapshot on SIGINT/SIGTERM/SIGHUP (those
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
                        for (_, pool) in reg.held.drain(..) {
                            if let Err(e) = release_snapshot(&pool) {
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
        let id = reg.next_id;
        reg.next_id += 1;
        reg.held.push((id, pool.to_string()));
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
        let mut reg = registry();
        match reg.held.iter().position(|(id, _)| *id == self.id) {
            Some(i) => {
                reg.held.remove(i);
                release_snapshot(&self.pool)
            }
            // Already released by the signal handler.
            None => Ok(()),
        }
    }
}

impl Drop for MetadataSnapGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_once() {
            crate::say!("lvmsync: {e}");
        }
    }
}
