//! `lvmsync --stdout --resume FILE SNAPSHOT`: a `--stdout` dump that was cut short, finished
//! in place ([`crate::send::resume`]).

use indicatif::HumanBytes;

use crate::cli::ResumeConfig;
use crate::error::{Error, Result};
use crate::msg::Verbosity;
use crate::progress::Reporter;
use crate::send::resume::{resume_dump, ResumeReport};
use crate::send::StreamExtras;
use crate::source;

pub fn run(config: ResumeConfig) -> Result<()> {
    let ResumeConfig { file, send } = config;
    let resolved = source::resolve(
        &send.source,
        send.data_source.as_deref(),
        send.base_source.as_deref(),
    )?;
    let changes = &resolved.changes;
    let data_path = resolved
        .data_source
        .as_deref()
        .ok_or_else(|| Error::Invalid("no data source".into()))?;
    let reporter = Reporter::new(
        send.progress,
        send.verbosity,
        "send",
        changes.extents.total_bytes(),
    );
    let extras = StreamExtras {
        identity: Some(resolved.identity.clone()),
        prior: resolved.prior.as_ref().filter(|_| !send.no_check),
        session: None,
    };
    let report = resume_dump(
        &file,
        changes,
        data_path,
        &send.stream,
        &|n| reporter.set(n),
        extras,
    );
    reporter.finish(report.as_ref().map_or(0, |_| changes.extents.total_bytes()));
    let report = report?;
    // Overflowing now means the origin was written while we read it.
    resolved.recheck()?;
    if send.verbosity >= Verbosity::Normal {
        crate::say!("lvmsync: {}: {}", file.display(), describe(&report));
    }
    Ok(())
}

fn describe(r: &ResumeReport) -> String {
    let records = |n: u64| match n {
        1 => "1 record".to_string(),
        n => format!("{n} records"),
    };
    if r.complete {
        return format!(
            "already a whole stream ({} bytes, {}, verified); nothing appended",
            r.kept_bytes,
            records(r.kept_records)
        );
    }
    let kept = match (r.kept_bytes, r.kept_records) {
        (0, _) => "kept nothing".to_string(),
        (n, 0) => format!("kept its {n}-byte header"),
        (n, 1) => format!("kept {n} bytes (the header and 1 complete record)"),
        (n, k) => format!("kept {n} bytes (the header and {k} complete records)"),
    };
    let dropped = match r.dropped_bytes {
        0 => String::new(),
        n => format!(", dropped the {n} bytes that followed"),
    };
    format!(
        "{kept}{dropped}, appended {} bytes ({}, the end record included): a whole stream of {} bytes ({})",
        r.appended_bytes,
        records(r.appended_records),
        r.totals.wire_bytes,
        HumanBytes(r.totals.wire_bytes)
    )
}
