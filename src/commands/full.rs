//! `lvmsync --full [--stdout] SNAPSHOT [[HOST:]DEST]`: the first copy, the whole of a snapshot
//! (or of a block device or image that does not change meanwhile), as a stream to standard
//! output, a local destination or a remote one.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;

use crate::blockdev::Device;
use crate::cli::{ProgressMode, SendConfig};
use crate::error::{Error, Result};
use crate::extent::ExtentKind;
use crate::msg::Verbosity;
use crate::progress::{self, Reporter};
use crate::send;
use crate::send::full::{send_full, FullCopy, FullReport};
use crate::source::full::{resolve_full, FullSource};
use crate::source::{ChangeSet, ChangeSourceSpec};
use crate::stream::Format;
use crate::transport::{parse_destination, Address, Destination, SendTarget};

use super::send::{print_dry_run, DoneLine, PlanLine};

/// Copies; gives back the bytes of the volume sent (all of them).
pub fn run(config: SendConfig) -> Result<u64> {
    let SendConfig {
        source,
        target,
        stream,
        receiver,
        verbosity,
        dry_run,
        progress: progress_mode,
        ..
    } = config;
    let ChangeSourceSpec::Snapshot(path) = source else {
        return Err(Error::Usage("--full copies SNAPSHOT itself".into()));
    };
    let source = resolve_full(&path)?;
    if verbosity >= Verbosity::Verbose {
        crate::say!(
            "lvmsync: copying {} ({}, {} of it known to be zeros) from {}",
            source.what,
            HumanBytes(source.volume_bytes),
            HumanBytes(source.extents.bytes(ExtentKind::Zero)),
            source.read_path.display()
        );
        if let Some(view) = source.view() {
            crate::say!(
                "lvmsync: the snapshot is inactive: reading it through {}, a read-only device made for this copy",
                view.path().display()
            );
        }
    }
    if let SendTarget::Dest(dest) = &target {
        if let Address::Local(dest) = parse_destination(dest) {
            check_local_dest(&dest, &source)?;
        }
    }
    // The ranges known before reading; all-zero pieces found while reading become zero
    // ranges too, so the stream can only be smaller than planned.
    let known = ChangeSet {
        extents: source.extents.clone(),
        chunk_bytes: source.chunk_bytes,
        volume_bytes: source.volume_bytes,
    };
    let plan = send::plan(&known, &stream, Some(&source.identity), false);
    if progress_mode == ProgressMode::Json {
        progress::event(&PlanLine::new(&plan, &stream, false, &known, dry_run));
    }
    if dry_run {
        print_dry_run(&plan, &stream, false, &known, &target, verbosity)?;
        return source.close().map(|()| 0);
    }
    let reporter = Reporter::new(progress_mode, verbosity, "copy", source.volume_bytes);
    let start = Instant::now();
    let destination = Destination::open(&target, &receiver, verbosity)?;
    let copy = FullCopy {
        source: &source.read_path,
        volume_bytes: source.volume_bytes,
        chunk_bytes: source.chunk_bytes,
        extents: &source.extents,
        identity: Some(source.identity.clone()),
    };
    // No manifest: the destination is whatever it is before a first copy.
    let report = destination.send(|out, _session| {
        send_full(&copy, out, &stream, &|n| reporter.set(n)).map(|(_, report)| report)
    });
    // Until the receiver has it all on disk.
    let elapsed = start.elapsed();
    reporter.finish(report.as_ref().map_or(0, |_| source.volume_bytes));
    let report = report?;
    source.recheck()?;
    if progress_mode == ProgressMode::Json {
        progress::event(&DoneLine::full(&report, elapsed, known.extents.len()));
    }
    let volume_bytes = source.volume_bytes;
    source.close()?;
    if verbosity >= Verbosity::Normal {
        print_report(&report, elapsed, volume_bytes, stream.format);
    }
    Ok(volume_bytes)
}

/// Refuses a local destination smaller than the volume before anything is read (a format 4
/// receiver refuses it too, from the stream's header; format 3 has none).
fn check_local_dest(dest: &Path, source: &FullSource) -> Result<()> {
    match Device::open_read(dest) {
        Ok(d) if d.size < source.volume_bytes => Err(Error::Invalid(format!(
            "{}: destination is {} bytes, smaller than the {}-byte volume of {}; nothing written",
            dest.display(),
            d.size,
            source.volume_bytes,
            source.what
        ))),
        // What else is wrong with it, the receiver says.
        _ => Ok(()),
    }
}

fn print_report(r: &FullReport, elapsed: Duration, volume_bytes: u64, format: Format) {
    let secs = elapsed.as_secs_f64().max(1e-6);
    crate::say!(
        "lvmsync: copied {} in {:.2} s, {}/s: {} of data, {} of zeros{} ({} on the wire)",
        HumanBytes(volume_bytes),
        secs,
        HumanBytes((volume_bytes as f64 / secs) as u64),
        HumanBytes(volume_bytes - r.zero_bytes),
        HumanBytes(r.zero_bytes),
        if format == Format::V3 {
            " sent as data (format 3)"
        } else {
            ""
        },
        HumanBytes(r.totals.wire_bytes),
    );
}
