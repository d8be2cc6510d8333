//! `lvmsync replicate VG/LV [HOST:]DEST`: one round of keeping DEST a copy of VG/LV
//! ([`crate::replicate`]), each send made as `lvmsync --full` or `lvmsync --data-source` would;
//! with `--converge`, rounds until one is small, the hooks and a last round
//! ([`crate::replicate::converge`]);
//! `lvmsync replicate --status VG/LV`: its destinations.

use std::cell::Cell;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::HumanBytes;
use serde::Serialize;

use crate::cli::{ProgressMode, ReplicateConfig, SendConfig};
use crate::error::{Error, IoContext, Named, Result, STDOUT_WRITE};
use crate::exit::Exit;
use crate::lvm::manage::SystemLvm;
use crate::msg::Verbosity;
use crate::progress;
use crate::replicate::converge::{
    self, ConvergePlan, Converged, Event, HookEnv, HookStatus, PassResult,
};
use crate::replicate::{
    self, origin_lv, LvLock, Outcome, Request, Role, Step, Transfer, LOCK_DIR, STOP_ENV,
};
use crate::source::ChangeSourceSpec;
use crate::transport::SendTarget;

pub fn run(config: ReplicateConfig) -> Result<()> {
    let lvm = SystemLvm;
    let Some(dest) = config.dest.clone() else {
        return print_status(&lvm, &config);
    };
    let stop_after = match std::env::var(STOP_ENV) {
        Ok(s) => Some(Step::parse(&s).ok_or_else(|| {
            Error::Usage(format!(
                "{STOP_ENV}={s}: expected snapshot, send, retire or retag"
            ))
        })?),
        Err(_) => None,
    };
    let name = format!("{}/{}", config.vg, config.lv);
    let origin = origin_lv(&lvm, &config.vg, &config.lv)?;
    let _lock = LvLock::take(Path::new(LOCK_DIR), &origin.uuid, &name, config.wait)?;
    let request = Request {
        vg: config.vg.clone(),
        lv: config.lv.clone(),
        dest: dest.clone(),
        snapshot_size: config.snapshot_size,
        verbosity: config.verbosity,
    };
    let sent = Cell::new(0u64);
    let mut send = |t: &Transfer| {
        let (source, data_source, full) = match t {
            Transfer::Full { snapshot } => (snapshot.clone(), None, true),
            Transfer::Changes { base, data } => (base.clone(), Some(data.clone()), false),
        };
        let send = SendConfig {
            source: ChangeSourceSpec::Snapshot(source),
            data_source,
            base_source: None,
            no_check: false,
            full,
            checksum: None,
            dry_run: false,
            progress: config.progress,
            target: SendTarget::Dest(dest.clone()),
            stream: config.stream.clone(),
            receiver: config.receiver.clone(),
            verbosity: config.verbosity,
        };
        let bytes = if full {
            super::full::run(send)?
        } else {
            super::send::run(send)?
        };
        sent.set(bytes);
        Ok(())
    };
    let stop = |s: Step| stop_after == Some(s);
    let stopped = |step: Step| -> ! {
        crate::say!(
            "lvmsync: stopped after step {} ({STOP_ENV}), as a crash there would",
            step.name()
        );
        std::process::exit(Exit::StoppedForTest.code());
    };
    let Some(plan) = &config.converge else {
        return match replicate::replicate(&lvm, &request, &mut send, &stop)? {
            Outcome::Done { base, full } => {
                if config.verbosity >= Verbosity::Normal {
                    crate::say!(
                        "lvmsync: {dest} now holds {base}{}, its base for the next run",
                        if full { " (a whole copy)" } else { "" }
                    );
                }
                Ok(())
            }
            Outcome::Stopped(step) => stopped(step),
        };
    };
    let mut pass = |_n: u32| -> Result<PassResult> {
        sent.set(0);
        Ok(
            match replicate::replicate(&lvm, &request, &mut send, &stop)? {
                Outcome::Done { base, full } => PassResult::Done {
                    bytes: sent.get(),
                    full,
                    base,
                },
                Outcome::Stopped(step) => PassResult::Stopped(step),
            },
        )
    };
    let env = HookEnv {
        lv: name.clone(),
        dest: dest.clone(),
    };
    let json = config.progress == ProgressMode::Json;
    let normal = config.verbosity >= Verbosity::Normal;
    let mut report = |e: Event<'_>| report_event(&e, plan, json, normal);
    match converge::converge(plan, &env, &mut pass, &mut converge::run_hook, &mut report)? {
        Converged::CutOver { final_pass, .. } => {
            if normal {
                crate::say!(
                    "lvmsync: {dest} now holds {}, its base for the next run",
                    final_pass.base
                );
            }
            Ok(())
        }
        Converged::Stopped(step) => stopped(step),
    }
}

#[derive(Serialize)]
struct PassLine {
    event: &'static str,
    pass: u32,
    r#final: bool,
    full: bool,
    bytes: u64,
    elapsed_s: f64,
    within_until: bool,
}

#[derive(Serialize)]
struct HookStartLine<'a> {
    event: &'static str,
    hook: &'static str,
    command: &'a str,
}

#[derive(Serialize)]
struct HookEndLine {
    event: &'static str,
    hook: &'static str,
    ok: bool,
    /// `null` when killed by a signal or not started.
    exit_status: Option<i32>,
    status: String,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct DowntimeLine {
    event: &'static str,
    downtime_s: f64,
    final_pass_bytes: u64,
    final_pass_s: f64,
}

/// One line on standard error per event, and with `--progress=json` one JSON object.
fn report_event(e: &Event<'_>, plan: &ConvergePlan, json: bool, normal: bool) {
    let secs = |d: Duration| d.as_secs_f64();
    match e {
        Event::Pass {
            number,
            pass,
            last,
            small,
        } => {
            if json {
                progress::event(&PassLine {
                    event: "pass",
                    pass: *number,
                    r#final: *last,
                    full: pass.full,
                    bytes: pass.bytes,
                    elapsed_s: secs(pass.elapsed),
                    within_until: *small,
                });
            }
            if normal {
                let what = if *last {
                    "final pass".to_string()
                } else {
                    format!("pass {number}")
                };
                let next = match (last, small) {
                    (true, _) => String::new(),
                    (false, true) => format!("; within --until {}: the cut-over", plan.until),
                    (false, false) => format!("; more than --until {}: another pass", plan.until),
                };
                crate::say!(
                    "lvmsync: {what}: {}{} in {:.2} s{next}",
                    HumanBytes(pass.bytes),
                    if pass.full { " (a whole copy)" } else { "" },
                    secs(pass.elapsed)
                );
            }
        }
        Event::HookStart { hook, command } => {
            if json {
                progress::event(&HookStartLine {
                    event: "hook_start",
                    hook: hook.name(),
                    command,
                });
            }
            if normal {
                crate::say!("lvmsync: running the {} hook: {command}", hook.name());
            }
        }
        Event::HookEnd {
            hook,
            elapsed,
            status,
        } => {
            if json {
                let exit = match status {
                    HookStatus::Exited(c) => Some(*c),
                    _ => None,
                };
                progress::event(&HookEndLine {
                    event: "hook_end",
                    hook: hook.name(),
                    ok: status.ok(),
                    exit_status: exit,
                    status: status.to_string(),
                    elapsed_s: secs(*elapsed),
                });
            }
            if normal && status.ok() {
                crate::say!(
                    "lvmsync: the {} hook ended in {:.2} s",
                    hook.name(),
                    secs(*elapsed)
                );
            }
        }
        Event::Downtime {
            downtime,
            final_pass,
        } => {
            if json {
                progress::event(&DowntimeLine {
                    event: "downtime",
                    downtime_s: secs(*downtime),
                    final_pass_bytes: final_pass.bytes,
                    final_pass_s: secs(final_pass.elapsed),
                });
            }
            if normal {
                crate::say!(
                    "lvmsync: downtime {:.2} s, from the start of the {} to the end of the {}",
                    secs(*downtime),
                    if plan.final_hook.is_some() {
                        "final hook"
                    } else {
                        "final pass"
                    },
                    if plan.after_hook.is_some() {
                        "after hook"
                    } else {
                        "final pass"
                    },
                );
            }
        }
    }
}

fn print_status(lvm: &SystemLvm, config: &ReplicateConfig) -> Result<()> {
    let dests = replicate::status(lvm, &config.vg, &config.lv)?;
    if dests.is_empty() {
        if config.verbosity >= Verbosity::Normal {
            crate::say!(
                "lvmsync: {}/{} has no replicate destinations",
                config.vg,
                config.lv
            );
        }
        return Ok(());
    }
    let mut out = BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    let mut rows = vec![[
        "DEST".to_string(),
        "BASE".into(),
        "CREATED".into(),
        "FILL".into(),
    ]];
    let fill = |f: Option<f64>, invalid: bool| match (invalid, f) {
        (true, _) => "invalid".to_string(),
        (false, Some(f)) => format!("{f:.2}%"),
        (false, None) => "-".into(),
    };
    let mut notes = Vec::new();
    for d in &dests {
        match &d.base {
            Some(b) => rows.push([
                d.dest.clone(),
                b.full_name(),
                b.time.clone(),
                fill(b.fill_percent, b.invalid),
            ]),
            None => rows.push([d.dest.clone(), "-".into(), "-".into(), "-".into()]),
        }
        for (role, s) in &d.unfinished {
            let what = match role {
                Role::Pending => "being sent by an unfinished run",
                Role::Retired => "a replaced base not yet removed",
                Role::Base => "a second base (remove its tag from the wrong one)",
            };
            notes.push(format!(
                "{}: {} ({}, {}), {what}; the next run finishes it",
                d.dest,
                s.full_name(),
                s.time,
                fill(s.fill_percent, s.invalid)
            ));
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        writeln!(out, "{}", line.trim_end()).ctx(|| STDOUT_WRITE.into())?;
    }
    for n in notes {
        writeln!(out, "{n}").ctx(|| STDOUT_WRITE.into())?;
    }
    out.flush().ctx(|| STDOUT_WRITE.into())
}
