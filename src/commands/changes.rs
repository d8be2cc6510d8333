//! `lvmsync changes`: the changed ranges, one `OFFSET LENGTH KIND` line each, or one JSON object
//! (`--json`), on standard output.

use std::io::{self, BufWriter, Write};

use serde::Serialize;

use crate::cli::ChangesConfig;
use crate::error::{IoContext, Named, Result, STDOUT_WRITE};
use crate::extent::ExtentKind;
use crate::source;

/// The `--json` object.
#[derive(Serialize)]
struct Changes {
    volume_bytes: u64,
    chunk_bytes: u64,
    ranges: usize,
    data_bytes: u64,
    zero_bytes: u64,
    extents: Vec<Range>,
}

#[derive(Serialize)]
struct Range {
    offset: u64,
    len: u64,
    kind: &'static str,
}

pub fn run(config: &ChangesConfig) -> Result<()> {
    let resolved = source::resolve(&config.source, config.data_source.as_deref(), None)?;
    let changes = &resolved.changes;
    let mut out = BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    if config.json {
        let bytes = |kind| {
            changes
                .extents
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.len)
                .sum()
        };
        let report = Changes {
            volume_bytes: changes.volume_bytes,
            chunk_bytes: changes.chunk_bytes,
            ranges: changes.extents.len(),
            data_bytes: bytes(ExtentKind::Data),
            zero_bytes: bytes(ExtentKind::Zero),
            extents: changes
                .extents
                .iter()
                .map(|e| Range {
                    offset: e.offset,
                    len: e.len,
                    kind: match e.kind {
                        ExtentKind::Data => "data",
                        ExtentKind::Zero => "zero",
                    },
                })
                .collect(),
        };
        serde_json::to_writer(&mut out, &report)
            .map_err(io::Error::from)
            .ctx(|| STDOUT_WRITE.into())?;
        writeln!(out).ctx(|| STDOUT_WRITE.into())?;
    } else {
        for e in &changes.extents {
            writeln!(out, "{} {} {}", e.offset, e.len, e.kind).ctx(|| STDOUT_WRITE.into())?;
        }
    }
    out.flush().ctx(|| STDOUT_WRITE.into())
}
