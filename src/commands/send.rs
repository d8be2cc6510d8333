//! `lvmsync [--stdout] SNAPSHOT [[HOST:]DEST]`: the changes since a snapshot, as a stream to
//! standard output, a local destination or a remote one.

use std::io::{self, BufWriter, Write};

use indicatif::HumanBytes;
use serde::Serialize;

use crate::cli::{ProgressMode, SendConfig};
use crate::error::{Error, IoContext, Named, Result, STDOUT_WRITE};
use crate::msg::Verbosity;
use crate::progress::{self, Reporter};
use crate::send::{self, send_changes_with, SendOptions, SendPlan, SendReport, StreamExtras};
use crate::source::{self, ChangeSet};
use crate::stream::Format;
use crate::transport::{Destination, SendTarget};

/// Sends; gives back the bytes of the volume sent (the changed ranges).
pub fn run(config: SendConfig) -> Result<u64> {
    let SendConfig {
        source,
        data_source,
        base_source,
        no_check,
        full: _,
        checksum: _,
        dry_run,
        progress: progress_mode,
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
            "lvmsync: note: the stream carries no manifest, so the destination is not checked against the snapshot before it is written (--thin-metadata alone does not hold the snapshot's own contents: --base-source names an image of it)"
        );
    }
    let prior = resolved.prior.as_ref().filter(|_| !no_check);
    let identity = resolved.identity.clone();
    let manifest = prior.is_some() && stream.format == Format::V4;
    let plan = send::plan(changes, &stream, Some(&identity), manifest);
    if progress_mode == ProgressMode::Json {
        progress::event(&PlanLine::new(&plan, &stream, manifest, changes, dry_run));
    }
    if dry_run {
        print_dry_run(&plan, &stream, manifest, changes, &target, verbosity)?;
        return Ok(0);
    }
    let reporter = Reporter::new(
        progress_mode,
        verbosity,
        "send",
        changes.extents.total_bytes(),
    );
    let destination = Destination::open(&target, &receiver, verbosity)?;
    let report = destination.send(|out, session| {
        let extras = StreamExtras {
            identity: Some(identity),
            prior,
            session,
        };
        send_changes_with(
            changes,
            data_path,
            out,
            &stream,
            &|n| reporter.set(n),
            extras,
        )
        .map(|(_, report)| report)
    });
    let done = report
        .as_ref()
        .map_or(0, |r| r.totals.data_bytes + r.totals.zero_bytes);
    reporter.finish(done);
    let report = report?;
    // Overflowing now means the origin was written while we read it.
    resolved.recheck()?;
    if progress_mode == ProgressMode::Json {
        progress::event(&DoneLine::new(&report));
    }
    if verbosity >= Verbosity::Normal {
        print_report(&report, changes);
    }
    Ok(changes.extents.total_bytes())
}

/// `--dry-run`: the ranges on standard output (as `lvmsync changes` prints them), what the
/// stream would hold on standard error.
pub(super) fn print_dry_run(
    plan: &SendPlan,
    opts: &SendOptions,
    manifest: bool,
    changes: &ChangeSet,
    target: &SendTarget,
    verbosity: Verbosity,
) -> Result<()> {
    let mut out = BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    for e in &changes.extents {
        writeln!(out, "{} {} {}", e.offset, e.len, e.kind).ctx(|| STDOUT_WRITE.into())?;
    }
    out.flush().ctx(|| STDOUT_WRITE.into())?;
    if verbosity >= Verbosity::Normal {
        let to = match target {
            SendTarget::Stdout => "standard output".to_string(),
            SendTarget::Dest(d) => d.clone(),
        };
        crate::say!(
            "lvmsync: dry run: would send {} ranges ({} records): {} of data and {} of zeros, {:.2}% of the {} volume, to {to}",
            plan.ranges,
            plan.records,
            HumanBytes(plan.data_bytes),
            HumanBytes(plan.zero_bytes),
            percent(plan.data_bytes + plan.zero_bytes, changes.volume_bytes),
            HumanBytes(changes.volume_bytes),
        );
        crate::say!(
            "lvmsync: dry run: a format {} stream of {} bytes{}{}; nothing was read from the data source and nothing was sent",
            opts.format.number(),
            plan.stream_bytes,
            if manifest {
                format!(", with a manifest of {} bytes", plan.manifest_bytes)
            } else {
                String::new()
            },
            if opts.compress.is_some() {
                " at most (compression makes it smaller)"
            } else {
                ""
            },
        );
    }
    Ok(())
}

pub(super) fn percent(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        part as f64 * 100.0 / whole as f64
    } else {
        0.0
    }
}

/// The `plan` JSON line.
#[derive(Serialize)]
pub(super) struct PlanLine {
    event: &'static str,
    dry_run: bool,
    format: u32,
    compressed: bool,
    manifest: bool,
    volume_bytes: u64,
    chunk_bytes: u64,
    ranges: usize,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    manifest_bytes: u64,
    stream_bytes: u64,
}

impl PlanLine {
    pub(super) fn new(
        plan: &SendPlan,
        opts: &SendOptions,
        manifest: bool,
        changes: &ChangeSet,
        dry_run: bool,
    ) -> Self {
        PlanLine {
            event: "plan",
            dry_run,
            format: opts.format.number(),
            compressed: opts.compress.is_some(),
            manifest,
            volume_bytes: changes.volume_bytes,
            chunk_bytes: changes.chunk_bytes,
            ranges: plan.ranges,
            records: plan.records,
            data_bytes: plan.data_bytes,
            zero_bytes: plan.zero_bytes,
            manifest_bytes: plan.manifest_bytes,
            stream_bytes: plan.stream_bytes,
        }
    }
}

/// The `done` JSON line.
#[derive(Serialize)]
pub(super) struct DoneLine {
    event: &'static str,
    ranges: usize,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    wire_bytes: u64,
    checked: bool,
    already_applied_records: u64,
    already_applied_bytes: u64,
    /// A checksum sync's: bytes compared on each side, and exchanged to compare them.
    #[serde(skip_serializing_if = "Option::is_none")]
    compared_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compare_bytes_exchanged: Option<u64>,
    elapsed_s: f64,
}

impl DoneLine {
    /// For a full copy: `ranges` known before reading.
    pub(super) fn full(
        r: &crate::send::full::FullReport,
        elapsed: std::time::Duration,
        ranges: usize,
    ) -> Self {
        DoneLine {
            event: "done",
            ranges,
            records: r.totals.records,
            data_bytes: r.totals.data_bytes,
            zero_bytes: r.totals.zero_bytes,
            wire_bytes: r.totals.wire_bytes,
            checked: false,
            already_applied_records: 0,
            already_applied_bytes: 0,
            compared_bytes: None,
            compare_bytes_exchanged: None,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    /// For a checksum sync: what was sent follows the comparison, which checked DEST.
    pub(super) fn checksum(r: &crate::checksum::ChecksumReport) -> Self {
        DoneLine {
            event: "done",
            ranges: r.differing_ranges,
            records: r.totals.records,
            data_bytes: r.totals.data_bytes,
            zero_bytes: r.totals.zero_bytes,
            wire_bytes: r.totals.wire_bytes,
            checked: true,
            already_applied_records: 0,
            already_applied_bytes: 0,
            compared_bytes: Some(r.compared_bytes),
            compare_bytes_exchanged: Some(r.traffic.sent + r.traffic.received),
            elapsed_s: r.elapsed.as_secs_f64(),
        }
    }

    pub(super) fn new(r: &SendReport) -> Self {
        DoneLine {
            event: "done",
            ranges: r.ranges,
            records: r.totals.records,
            data_bytes: r.totals.data_bytes,
            zero_bytes: r.totals.zero_bytes,
            wire_bytes: r.totals.wire_bytes,
            checked: r.checked,
            already_applied_records: r.already_applied,
            already_applied_bytes: r.already_applied_bytes,
            compared_bytes: None,
            compare_bytes_exchanged: None,
            elapsed_s: r.elapsed.as_secs_f64(),
        }
    }
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
        percent(changed, changes.volume_bytes),
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
