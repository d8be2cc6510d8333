//! `lvmsync --checksum SOURCE [HOST:]DEST [--stdout]`: a sync without a snapshot, sending what
//! differs as both ends hash their volume ([`crate::checksum`]).

use indicatif::HumanBytes;
use serde::Serialize;

use super::send::{percent, DoneLine};
use crate::checksum::{send_differing, ChecksumReport, Comparison, LEAF};
use crate::cli::{ProgressMode, SendConfig};
use crate::error::{Error, Result};
use crate::msg::Verbosity;
use crate::progress::{self, Reporter};
use crate::source::full::resolve_full;
use crate::source::ChangeSourceSpec;
use crate::stream::{Format, StreamWriter, WriterOptions};
use crate::transport::{parse_destination, Address, Destination, ReceiverOptions};
use crate::verify::Target;

/// The identity kind of a checksum sync's stream.
pub const KIND: &str = "checksum";

pub fn run(config: SendConfig) -> Result<()> {
    let SendConfig {
        source,
        checksum,
        target,
        stream,
        receiver,
        verbosity,
        progress: progress_mode,
        ..
    } = config;
    let (ChangeSourceSpec::Snapshot(path), Some(dest)) = (source, checksum) else {
        return Err(Error::Usage(
            "--checksum needs SOURCE and [HOST:]DEST".into(),
        ));
    };
    if stream.format != Format::V4 {
        return Err(Error::Usage("--checksum sends format 4".into()));
    }
    let source = resolve_full(&path)?;
    let volume_bytes = source.volume_bytes;
    let comparison = Comparison::open(&compare_target(&dest, &receiver), stream.queue_depth)?;
    let dest_bytes = comparison.dest_bytes();
    if dest_bytes < volume_bytes {
        return Err(Error::Invalid(format!(
            "{dest}: destination is {dest_bytes} bytes, smaller than the {volume_bytes}-byte {}; nothing written",
            source.what
        )));
    }
    if verbosity >= Verbosity::Verbose {
        crate::say!(
            "lvmsync: comparing {} ({}) with {dest} in {} KiB blocks",
            source.what,
            HumanBytes(volume_bytes),
            LEAF >> 10
        );
    }
    if dest_bytes > volume_bytes && verbosity >= Verbosity::Normal {
        crate::say!(
            "lvmsync: note: {dest} is {} larger than the source; its bytes past byte {volume_bytes} are neither compared nor written",
            HumanBytes(dest_bytes - volume_bytes)
        );
    }
    if progress_mode == ProgressMode::Json {
        progress::event(&PlanLine {
            event: "plan",
            dry_run: false,
            format: 4,
            compressed: stream.compress.is_some(),
            manifest: false,
            checksum: true,
            volume_bytes,
            chunk_bytes: LEAF,
        });
    }
    let reporter = Reporter::new(progress_mode, verbosity, "compare", volume_bytes);
    let destination = Destination::open(&target, &receiver, verbosity)?;
    let wopts = WriterOptions {
        format: Format::V4,
        source_bytes: volume_bytes,
        chunk_bytes: LEAF,
        compress: stream.compress,
        snapback: false,
    };
    let mut identity = source.identity.clone();
    identity.kind = KIND.into();
    // No manifest: the ranges are found while the stream is written; the comparison is the
    // destination's check.
    let report = destination.send(|out, _session| {
        let mut writer = StreamWriter::new(out, &wopts)?;
        writer.identity(&identity)?;
        send_differing(
            comparison,
            &source.read_path,
            volume_bytes,
            writer,
            stream.queue_depth,
            &|n| reporter.set(n),
        )
        .map(|(_, report)| report)
    });
    reporter.finish(report.as_ref().map_or(0, |r| r.compared_bytes));
    let report = report?;
    // A classic snapshot that overflowed meanwhile no longer shows its point in time.
    source.recheck()?;
    source.close()?;
    if progress_mode == ProgressMode::Json {
        progress::event(&DoneLine::checksum(&report));
    }
    if verbosity >= Verbosity::Normal {
        print_report(&report, &dest);
    }
    Ok(())
}

/// Where DEST's side of the comparison runs.
fn compare_target(dest: &str, receiver: &ReceiverOptions) -> Target {
    match parse_destination(dest) {
        Address::Local(path) => Target::Local(path),
        Address::Remote { host, path } => Target::Remote {
            host,
            path,
            rsh: receiver.rsh.clone(),
            remote_path: receiver.remote_path.clone(),
        },
    }
}

/// The `plan` JSON line of a checksum sync: what is sent is not known before the comparison.
#[derive(Serialize)]
struct PlanLine {
    event: &'static str,
    dry_run: bool,
    format: u32,
    compressed: bool,
    manifest: bool,
    checksum: bool,
    volume_bytes: u64,
    chunk_bytes: u64,
}

fn print_report(r: &ChecksumReport, dest: &str) {
    let secs = r.elapsed.as_secs_f64().max(1e-6);
    let differing = r.totals.data_bytes + r.totals.zero_bytes;
    crate::say!(
        "lvmsync: compared {} with {dest} in {:.2} s, {}/s ({} exchanged); {} ranges differed: sent {} ({} on the wire), {:.2}% of the volume",
        HumanBytes(r.compared_bytes),
        secs,
        HumanBytes((r.compared_bytes as f64 / secs) as u64),
        HumanBytes(r.traffic.sent + r.traffic.received),
        r.differing_ranges,
        HumanBytes(differing),
        HumanBytes(r.totals.wire_bytes),
        percent(differing, r.compared_bytes),
    );
}
