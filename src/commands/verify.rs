//! `lvmsync verify SOURCE [HOST:]DEST`: the differing ranges, one `OFFSET LENGTH` line each
//! (or a JSON report), on standard output, and one summary line on standard error. Exit status
//! 0 when equal, 1 when different; every failure is "could not compare" (3).

use std::io::{self, BufReader, Write};

use indicatif::HumanBytes;
use serde::Serialize;

use crate::cli::verify::{VerifyConfig, VerifyServeConfig, VerifySource};
use crate::error::{Error, IoContext, Named, Result, STDOUT_WRITE};
use crate::exit::Exit;
use crate::msg::Verbosity;
use crate::source;
use crate::verify::{self, Range, Report, Source, Target};

pub fn run(config: &VerifyConfig) -> Result<Exit> {
    let outcome = compare(config).and_then(|report| {
        print(config, &report)?;
        Ok(report)
    });
    match outcome {
        Ok(report) if report.differing.is_empty() => Ok(Exit::Success),
        Ok(_) => Ok(Exit::Differ),
        Err(e @ Error::Usage(_)) => Err(e),
        Err(e) => Err(Error::NotCompared(Box::new(e))),
    }
}

/// `lvmsync verify --serve DEST`, run by `lvmsync verify` on DEST's host.
pub fn serve(config: &VerifyServeConfig) -> Result<Exit> {
    verify::conn::serve_stdio(&config.dest, config.queue_depth)
        .map(|()| Exit::Success)
        .map_err(|e| Error::NotCompared(Box::new(e)))
}

fn compare(config: &VerifyConfig) -> Result<Report> {
    let (target, opts) = (&config.target, &config.options);
    match &config.source {
        VerifySource::Volume(path) => verify::verify(Source::Volume(path), target, opts),
        VerifySource::Changes {
            source,
            data_source,
        } => {
            let resolved = source::resolve(source, data_source.as_deref(), None)?;
            let data = resolved
                .data_source
                .as_deref()
                .ok_or_else(|| Error::Invalid("no data source to read the changes from".into()))?;
            if config.verbosity >= Verbosity::Verbose {
                crate::say!(
                    "lvmsync: {} changed ranges, {} of a {} volume; read from {}",
                    resolved.changes.extents.len(),
                    HumanBytes(resolved.changes.extents.total_bytes()),
                    HumanBytes(resolved.changes.volume_bytes),
                    data.display()
                );
            }
            let ranges = resolved
                .changes
                .extents
                .iter()
                .map(|e| Range::new(e.offset, e.len))
                .collect();
            let report = verify::verify(Source::Ranges { path: data, ranges }, target, opts)?;
            // A classic snapshot that overflowed meanwhile no longer lists every change.
            resolved.recheck()?;
            Ok(report)
        }
        VerifySource::Stream(name) => {
            let input: Box<dyn io::Read> = if name == "-" {
                Box::new(Named::new(
                    io::stdin().lock(),
                    "standard input: cannot read the stream",
                ))
            } else {
                let f = std::fs::File::open(name)
                    .ctx(|| format!("{name}: cannot open the stream for reading"))?;
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    Named::new(f, format!("{name}: cannot read the stream")),
                ))
            };
            let name = if name == "-" {
                "standard input".to_string()
            } else {
                name.clone()
            };
            verify::verify(Source::Stream { input, name }, target, opts)
        }
    }
}

/// The JSON report (`--json`): one object.
#[derive(Serialize)]
struct JsonReport<'a> {
    equal: bool,
    mode: &'a str,
    source: String,
    dest: String,
    source_bytes: Option<u64>,
    dest_bytes: u64,
    chunk_bytes: u64,
    compared_bytes: u64,
    differing_bytes: u64,
    differing: Vec<JsonRange>,
    elapsed_s: f64,
    bytes_sent: u64,
    bytes_received: u64,
}

#[derive(Serialize)]
struct JsonRange {
    offset: u64,
    len: u64,
}

fn print(config: &VerifyConfig, r: &Report) -> Result<()> {
    let mut out = io::BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    if config.json {
        let (mode, source) = match &config.source {
            VerifySource::Volume(p) => ("volume", p.display().to_string()),
            VerifySource::Changes { source, .. } => ("changes", source_name(source)),
            VerifySource::Stream(s) => ("stream", s.clone()),
        };
        let json = JsonReport {
            equal: r.differing.is_empty(),
            mode,
            source,
            dest: config.target.name(),
            source_bytes: r.source_bytes,
            dest_bytes: r.dest_bytes,
            chunk_bytes: r.chunk_bytes,
            compared_bytes: r.compared_bytes,
            differing_bytes: r.differing_bytes(),
            differing: r
                .differing
                .iter()
                .map(|d| JsonRange {
                    offset: d.offset,
                    len: d.len,
                })
                .collect(),
            elapsed_s: r.elapsed.as_secs_f64(),
            bytes_sent: r.traffic.sent,
            bytes_received: r.traffic.received,
        };
        serde_json::to_writer(&mut out, &json)
            .map_err(io::Error::from)
            .ctx(|| STDOUT_WRITE.into())?;
        writeln!(out).ctx(|| STDOUT_WRITE.into())?;
    } else {
        for d in &r.differing {
            writeln!(out, "{} {}", d.offset, d.len).ctx(|| STDOUT_WRITE.into())?;
        }
    }
    out.flush().ctx(|| STDOUT_WRITE.into())?;
    if config.verbosity >= Verbosity::Normal {
        crate::say!("lvmsync: verify: {}", summary(config, r));
    }
    Ok(())
}

fn source_name(s: &source::ChangeSourceSpec) -> String {
    match s {
        source::ChangeSourceSpec::Snapshot(p) | source::ChangeSourceSpec::Cow(p) => {
            p.display().to_string()
        }
        source::ChangeSourceSpec::ThinMetadata { path, .. } => path.display().to_string(),
    }
}

/// The summary line: the verdict, what was compared how fast, and what crossed the network.
fn summary(config: &VerifyConfig, r: &Report) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-6);
    let verdict = match r.differing.len() {
        0 => "equal".to_string(),
        n => format!(
            "{n} range{} differ{} ({} in {} chunks)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
            HumanBytes(r.differing_bytes()),
            HumanBytes(r.chunk_bytes)
        ),
    };
    let mut line = format!(
        "{verdict}; {} compared in {secs:.2} s ({}/s)",
        HumanBytes(r.compared_bytes),
        HumanBytes((r.compared_bytes as f64 / secs) as u64)
    );
    if let VerifySource::Volume(_) = config.source {
        if let Some(src) = r.source_bytes.filter(|&s| s != r.dest_bytes) {
            line += &format!(
                "; the sizes differ: SOURCE {src} bytes, DEST {} bytes",
                r.dest_bytes
            );
        }
    }
    let exchanged = r.traffic.sent + r.traffic.received;
    match &config.target {
        Target::Remote { host, .. } => {
            line += &format!("; {exchanged} bytes exchanged with {host}")
        }
        Target::Local(_) if config.verbosity >= Verbosity::Verbose => {
            line += &format!("; {exchanged} bytes exchanged with the DEST reader")
        }
        Target::Local(_) => {}
    }
    line
}
