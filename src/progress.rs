//! Progress of a send on standard error: a bar on a terminal, or JSON lines for scripts and
//! GUIs (`--progress=json`). Every JSON line is one object, starting with `{`, with an `event`
//! field: `plan` (what will be sent), `progress` (at most four a second) and `done`.

use std::io::{self, IsTerminal};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::msg::Verbosity;

/// How a send shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, nothing otherwise.
    Auto,
    /// JSON lines on standard error (documented in the README).
    Json,
    /// Nothing.
    None,
}

/// Least time between two `progress` lines.
const JSON_INTERVAL: Duration = Duration::from_millis(250);

/// Where progress goes.
pub enum Reporter {
    Silent,
    Bar(ProgressBar),
    Json(JsonProgress),
}

/// The state of `progress` lines.
pub struct JsonProgress {
    phase: &'static str,
    total: u64,
    start: Instant,
    last: Mutex<Option<Instant>>,
}

#[derive(Serialize)]
struct ProgressLine {
    event: &'static str,
    phase: &'static str,
    done_bytes: u64,
    total_bytes: u64,
    elapsed_s: f64,
    rate_bytes_per_s: f64,
    /// Unknown (null) until something was done.
    eta_s: Option<f64>,
}

impl Reporter {
    /// A reporter for `total` bytes of work in `phase`.
    pub fn new(mode: ProgressMode, verbosity: Verbosity, phase: &'static str, total: u64) -> Self {
        match mode {
            ProgressMode::None => Reporter::Silent,
            ProgressMode::Json => Reporter::Json(JsonProgress {
                phase,
                total,
                start: Instant::now(),
                last: Mutex::new(None),
            }),
            // indicatif ignores errors drawing (a terminal that went away cannot make lvmsync
            // panic); only the calls used here are known to: `set_position`, `finish_and_clear`.
            ProgressMode::Auto if verbosity > Verbosity::Quiet && io::stderr().is_terminal() => {
                let bar = ProgressBar::with_draw_target(
                    Some(total),
                    indicatif::ProgressDrawTarget::stderr(),
                );
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template"),
                );
                Reporter::Bar(bar)
            }
            ProgressMode::Auto => Reporter::Silent,
        }
    }

    /// `done` bytes of the total are done.
    pub fn set(&self, done: u64) {
        match self {
            Reporter::Silent => {}
            Reporter::Bar(bar) => bar.set_position(done),
            Reporter::Json(j) => {
                let now = Instant::now();
                let mut last = j.last.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_some_and(|t| now.duration_since(t) < JSON_INTERVAL) {
                    return;
                }
                *last = Some(now);
                j.line(done, now);
            }
        }
    }

    /// The work ended (well or not): the bar goes away; JSON gets a last `progress` line.
    pub fn finish(self, done: u64) {
        match self {
            Reporter::Silent => {}
            Reporter::Bar(bar) => bar.finish_and_clear(),
            Reporter::Json(j) => j.line(done, Instant::now()),
        }
    }
}

impl JsonProgress {
    fn line(&self, done: u64, now: Instant) {
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let eta = (rate > 0.0).then(|| self.total.saturating_sub(done) as f64 / rate);
        event(&ProgressLine {
            event: "progress",
            phase: self.phase,
            done_bytes: done,
            total_bytes: self.total,
            elapsed_s: elapsed,
            rate_bytes_per_s: rate,
            eta_s: eta,
        });
    }
}

/// Writes one JSON object as a line on standard error.
pub fn event(value: &impl Serialize) {
    if let Ok(mut line) = serde_json::to_vec(value) {
        line.push(b'\n');
        crate::msg::raw(&line);
    }
}
