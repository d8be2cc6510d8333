//! `lvmsync replicate --converge`: move a volume in use with a short downtime.
//!
//! Rounds ("passes", each an ordinary [`replicate`](super::replicate) round: snapshot, send,
//! rotate, so a crash anywhere is finished by the next run) are repeated while the writer keeps
//! going, each sending what was written during the one before, until a pass is small: it sent
//! at most `--until SIZE`, or took at most `--until TIME`. Then the final hook runs (stop the
//! service), a last pass sends what was written since, and the after hook runs (start it on the
//! other side). The downtime is the time from the start of the final hook to the end of the
//! after hook (without a hook, from the start or to the end of the final pass).
//!
//! A writer faster than the link never gets a small pass: after `--max-passes` passes that were
//! all too large, the run fails without running any hook, so nothing is stopped and DEST holds
//! the last pass's snapshot (a later run carries on from it). A failing final hook ends the run
//! before the last pass, a failing last pass before the after hook: in both cases whatever the
//! final hook stopped may be stopped, and the message says so. A failing after hook fails the
//! run, but the copy is complete.

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use indicatif::HumanBytes;

use super::Step;
use crate::error::{Error, Result};

/// When a pass is small enough to stop the writer for the next, the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The pass sent at most this many bytes of the volume.
    Bytes(u64),
    /// The pass (snapshot, send, rotation) took at most this long.
    Time(Duration),
}

impl Until {
    /// A size, a whole number with a unit `b`, `k`, `m`, `g` or `t` (powers of 1024, any case,
    /// e.g. `64M`), or a time in seconds, `5s`, `0.5s` or `500ms`.
    pub fn parse(s: &str) -> std::result::Result<Until, String> {
        let bad = || format!("'{s}': expected a size (64M, 512K, 1G) or a time (5s, 500ms)");
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| {
                format!("'{s}': give a unit: a size (64M, 512K, 1G) or a time (5s, 500ms)")
            })?;
        let (n, unit) = t.split_at(split);
        let time = |scale: f64| {
            let secs: f64 = n.parse().map_err(|_| bad())?;
            Duration::try_from_secs_f64(secs * scale)
                .map(Until::Time)
                .map_err(|_| bad())
        };
        let shift = match unit.to_ascii_lowercase().as_str() {
            "s" => return time(1.0),
            "ms" => return time(0.001),
            "b" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        let n: u64 = n.parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift).map(Until::Bytes).ok_or_else(bad)
    }

    /// Whether `pass` is small enough.
    pub fn reached_by(&self, pass: &Pass) -> bool {
        match *self {
            Until::Bytes(b) => pass.bytes <= b,
            Until::Time(t) => pass.elapsed <= t,
        }
    }
}

impl std::fmt::Display for Until {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Bytes(b) => write!(f, "{}", HumanBytes(*b)),
            Until::Time(t) => write!(f, "{:.2} s", t.as_secs_f64()),
        }
    }
}

/// What `--converge` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvergePlan {
    pub until: Until,
    /// Passes at most before the final one.
    pub max_passes: u32,
    /// Run with `sh -c` before the final pass.
    pub final_hook: Option<String>,
    /// Run with `sh -c` after it.
    pub after_hook: Option<String>,
}

/// The default of `--max-passes`.
pub const DEFAULT_MAX_PASSES: u32 = 10;

/// One pass done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Bytes of the volume sent: the changed ranges, or the whole volume.
    pub bytes: u64,
    pub elapsed: Duration,
    /// A whole copy (no usable base).
    pub full: bool,
    /// The snapshot DEST holds now (`VG/NAME`).
    pub base: String,
}

/// What a pass function gives back: the pass, or a stop at a step ([`super::STOP_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    Done {
        bytes: u64,
        full: bool,
        base: String,
    },
    Stopped(Step),
}

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Final,
    After,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Final => "final",
            Hook::After => "after",
        }
    }
}

/// What happened, as it happens, for the messages and `--progress=json`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// Pass `number` ended; `last` for the final pass; `small` whether it was within `--until`.
    Pass {
        number: u32,
        pass: &'a Pass,
        last: bool,
        small: bool,
    },
    /// A hook is started.
    HookStart { hook: Hook, command: &'a str },
    /// A hook ended, well or not.
    HookEnd {
        hook: Hook,
        elapsed: Duration,
        status: &'a HookStatus,
    },
    /// The cut-over ended (also when the after hook failed).
    Downtime {
        downtime: Duration,
        final_pass: &'a Pass,
    },
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookStatus {
    Exited(i32),
    Signal(i32),
    /// `sh` could not be started.
    NotStarted(String),
}

impl HookStatus {
    fn of(status: ExitStatus) -> HookStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => HookStatus::Exited(c),
            (None, Some(s)) => HookStatus::Signal(s),
            (None, None) => HookStatus::Exited(-1),
        }
    }

    pub fn ok(&self) -> bool {
        *self == HookStatus::Exited(0)
    }
}

impl std::fmt::Display for HookStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookStatus::Exited(c) => write!(f, "exit status {c}"),
            HookStatus::Signal(s) => write!(f, "killed by signal {s}"),
            HookStatus::NotStarted(why) => write!(f, "sh could not be started: {why}"),
        }
    }
}

/// What every hook is told, in its environment: `LVMSYNC_LV` (`VG/LV`), `LVMSYNC_DEST`
/// (`[HOST:]DEST` as given), `LVMSYNC_HOOK` (`final` or `after`), `LVMSYNC_PASS` (the number
/// of the final pass); the after hook also `LVMSYNC_BASE`, the snapshot DEST holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEnv {
    pub lv: String,
    pub dest: String,
}

/// A hook's environment variables, names and values.
pub type HookVars<'a> = [(&'a str, String)];

/// Runs `command` with `sh -c`, standard input, output and error those of lvmsync.
pub fn run_hook(command: &str, vars: &HookVars<'_>) -> HookStatus {
    match Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .status()
    {
        Ok(s) => HookStatus::of(s),
        Err(e) => HookStatus::NotStarted(e.to_string()),
    }
}

/// How a converging run ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converged {
    /// The cut-over was made: the passes before the final one, the final one, the downtime.
    CutOver {
        passes: Vec<Pass>,
        final_pass: Pass,
        downtime: Duration,
    },
    /// A pass was stopped after a step ([`super::STOP_ENV`]).
    Stopped(Step),
}

/// Runs the passes and the hooks (see the module's documentation). `pass(n)` makes pass `n`
/// (from 1); `report` hears of each [`Event`]; `hook` runs a hook (normally [`run_hook`]).
pub fn converge(
    plan: &ConvergePlan,
    env: &HookEnv,
    pass: &mut dyn FnMut(u32) -> Result<PassResult>,
    hook: &mut dyn FnMut(&str, &HookVars<'_>) -> HookStatus,
    report: &mut dyn FnMut(Event<'_>),
) -> Result<Converged> {
    let mut timed = |n: u32| -> Result<std::result::Result<Pass, Step>> {
        let start = Instant::now();
        Ok(match pass(n)? {
            PassResult::Done { bytes, full, base } => Ok(Pass {
                bytes,
                elapsed: start.elapsed(),
                full,
                base,
            }),
            PassResult::Stopped(step) => Err(step),
        })
    };
    let mut passes: Vec<Pass> = Vec::new();
    loop {
        let number = passes.len() as u32 + 1;
        let p = match timed(number)? {
            Ok(p) => p,
            Err(step) => return Ok(Converged::Stopped(step)),
        };
        let small = plan.until.reached_by(&p);
        report(Event::Pass {
            number,
            pass: &p,
            last: false,
            small,
        });
        passes.push(p);
        if small {
            break;
        }
        if number >= plan.max_passes {
            let last = passes.last().expect("a pass was made");
            return Err(Error::Invalid(format!(
                "{} did not converge: each of {number} passes was larger than --until {} (the last sent {} in {:.2} s), so no hook was run and nothing was stopped; {} holds {}, and a later run goes on from there; give a larger --until or --max-passes, or slow the writes down",
                env.lv,
                plan.until,
                HumanBytes(last.bytes),
                last.elapsed.as_secs_f64(),
                env.dest,
                last.base
            )));
        }
    }
    let number = passes.len() as u32 + 1;
    let held = passes.last().map(|p| p.base.clone()).unwrap_or_default();
    let vars = |h: Hook| {
        vec![
            ("LVMSYNC_LV", env.lv.clone()),
            ("LVMSYNC_DEST", env.dest.clone()),
            ("LVMSYNC_HOOK", h.name().to_string()),
            ("LVMSYNC_PASS", number.to_string()),
        ]
    };
    let cut_start = Instant::now();
    if let Some(command) = &plan.final_hook {
        report(Event::HookStart {
            hook: Hook::Final,
            command,
        });
        let start = Instant::now();
        let status = hook(command, &vars(Hook::Final));
        report(Event::HookEnd {
            hook: Hook::Final,
            elapsed: start.elapsed(),
            status: &status,
        });
        if !status.ok() {
            return Err(Error::Invalid(format!(
                "the final hook failed ({status}): {command}; the final pass was not made and the after hook not run; what the hook stopped may be stopped; {} holds {held} (pass {})",
                env.dest,
                number - 1
            )));
        }
    }
    let final_pass = match timed(number) {
        Ok(Ok(p)) => p,
        Ok(Err(step)) => return Ok(Converged::Stopped(step)),
        Err(e) => {
            return Err(Error::Invalid(format!(
                "the final pass failed: {e}; the after hook was not run{}; run the same command again to finish the copy",
                if plan.final_hook.is_some() {
                    ", and what the final hook stopped may be stopped"
                } else {
                    ""
                }
            )))
        }
    };
    report(Event::Pass {
        number,
        pass: &final_pass,
        last: true,
        small: plan.until.reached_by(&final_pass),
    });
    let mut after_failed = None;
    if let Some(command) = &plan.after_hook {
        report(Event::HookStart {
            hook: Hook::After,
            command,
        });
        let mut v = vars(Hook::After);
        v.push(("LVMSYNC_BASE", final_pass.base.clone()));
        let start = Instant::now();
        let status = hook(command, &v);
        report(Event::HookEnd {
            hook: Hook::After,
            elapsed: start.elapsed(),
            status: &status,
        });
        if !status.ok() {
            after_failed = Some(Error::Invalid(format!(
                "the after hook failed ({status}): {command}; the copy is complete: {} holds {}",
                env.dest, final_pass.base
            )));
        }
    }
    let downtime = cut_start.elapsed();
    report(Event::Downtime {
        downtime,
        final_pass: &final_pass,
    });
    match after_failed {
        Some(e) => Err(e),
        None => Ok(Converged::CutOver {
            passes,
            final_pass,
            downtime,
        }),
    }
}
