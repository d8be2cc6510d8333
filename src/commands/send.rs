//! `lvmsync [--stdout] SNAPSHOT [[HOST:]DEST]`: the changes since a snapshot, as a stream to
//! standard output, a local destination or a remote one.

use std::io::{self, IsTerminal};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::cli::SendConfig;
use crate::error::{Error, Result};
use crate::msg::Verbosity;
use crate::send::{send_changes_with, SendReport, StreamExtras};
use crate::source::{self, ChangeSet};
use crate::stream::Format;
use crate::transport::Destination;

pub fn run(config: SendConfig) -> Result<()> {
    let SendConfig {
        source,
        data_source,
        base_source,
        no_check,
        full: _,
        target,
        stream,
        receiver,
        verbosity,
    } = config;
    let resolved = source::resolve(&source, data_source.as_deref(), base_source.as_deref())?;
    let changes = &resolved.changes;
    let data_path = resolved
        .data_source
        .as_deref()
        .ok_or_else(|| Error::Invalid("no data source".into()))?;
    if verbosity >= Verbosity::Verbose {
        crate::say!(
            "lvmsync: {} changed ranges, {} in {}-byte chunks of a {} volume; data source: {}",
            changes.extents.len(),
            HumanBytes(changes.extents.total_bytes()),
            changes.chunk_bytes,
            HumanBytes(changes.volume_bytes),
            data_path.display()
        );
    }
    if verbosity == Verbosity::Debug {
        if let Some(snap) = &resolved.classic {
            crate::say!("lvmsync: {snap:?}");
        }
        for e in &changes.extents {
            crate::say!("lvmsync: change {} +{} {}", e.offset, e.len, e.kind);
        }
    }
    if resolved.prior.is_none()
        && !no_check
        && stream.format == Format::V4
        && verbosity >= Verbosity::Normal
    {
        crate::say!(
            "lvmsync: note: the stream carries no manifest, so the destination is not checked against the snapshot before it is written (nothing here holds the snapshot's own contents: an inactive thin snapshot can be activated with lvchange -ay -K, or --base-source names an image of it)"
        );
    }
    let bar = progress_bar(verbosity, changes.extents.total_bytes());
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n)
        }
    };
    let destination = Destination::open(&target, &receiver, verbosity)?;
    let report = destination.send(|out, session| {
        let extras = StreamExtras {
            identity: Some(resolved.identity.clone()),
            prior: resolved.prior.as_ref().filter(|_| !no_check),
            session,
        };
        send_changes_with(changes, data_path, out, &stream, &progress, extras)
            .map(|(_, report)| report)
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // Overflowing now means the origin was written while we read it.
    resolved.recheck()?;
    if verbosity >= Verbosity::Normal {
        print_report(&report, changes);
    }
    Ok(())
}

/// A progress bar on a terminal. indicatif ignores errors drawing it (a terminal that went
/// away cannot make lvmsync panic); only the calls used here are known to: `set_position`,
/// `finish_and_clear`.
pub(super) fn progress_bar(verbosity: Verbosity, total: u64) -> Option<ProgressBar> {
    if verbosity == Verbosity::Quiet || !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template"),
    );
    Some(bar)
}

fn print_report(r: &SendReport, changes: &ChangeSet) {
    let secs = r.elapsed.as_secs_f64().max(1e-6);
    let changed = r.totals.data_bytes + r.totals.zero_bytes;
    crate::say!(
        "lvmsync: sent {} ranges, {} of changes ({} on the wire) in {:.2} s, {}/s; {:.2}% of the {} volume",
        r.ranges,
        HumanBytes(changed),
        HumanBytes(r.totals.wire_bytes),
        secs,
        HumanBytes((changed as f64 / secs) as u64),
        if changes.volume_bytes > 0 {
            changed as f64 * 100.0 / changes.volume_bytes as f64
        } else {
            0.0
        },
        HumanBytes(changes.volume_bytes),
    );
    if r.already_applied > 0 {
        crate::say!(
            "lvmsync: {} records ({}) were already on the destination and were not sent again",
            r.already_applied,
            HumanBytes(r.already_applied_bytes)
        );
    }
}
