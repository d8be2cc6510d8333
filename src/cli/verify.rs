//! `lvmsync verify`'s command line, and its validated configuration.

use std::path::PathBuf;

use clap::Args;

use super::{usage, verbosity, OfflineSourceArgs};
use crate::error::Result;
use crate::msg::Verbosity;
use crate::source::ChangeSourceSpec;
use crate::transport::{parse_destination, Address};
use crate::verify::{check_chunk, conn, Target, VerifyOptions};

pub const USAGE: &str = "lvmsync verify [OPTIONS] SOURCE [HOST:]DEST
       lvmsync verify [OPTIONS] --changes SNAPSHOT [HOST:]DEST
       lvmsync verify [OPTIONS] --stream FILE|- [HOST:]DEST
       (--cow FILE, or --thin-metadata FILE --thin-ids SNAP:ORIGIN,
        with --data-source ORIGIN, stand in for SNAPSHOT)";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// SOURCE and [HOST:]DEST (only [HOST:]DEST with --stream, --cow or --thin-metadata).
    #[arg(value_name = "ARGS")]
    pub paths: Vec<String>,
    /// Compare only the ranges changed since the snapshot SOURCE (or the offline source of
    /// --cow or --thin-metadata), read from its origin (or --data-source): checks a sync by
    /// reading only what it wrote.
    #[arg(long)]
    pub changes: bool,
    /// Check that DEST holds what the stream FILE (- for standard input) writes: the data of
    /// its data records, zeros in its zero ranges.
    #[arg(long, value_name = "FILE")]
    pub stream: Option<String>,
    /// With --changes: the change list of this classic snapshot exception store.
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    /// With --changes: the change list in this thin-pool metadata.
    #[arg(long, value_name = "FILE", requires = "thin_ids")]
    pub thin_metadata: Option<PathBuf>,
    /// Thin device ids of the snapshot and its origin in --thin-metadata.
    #[arg(long, value_name = "SNAP:ORIGIN", requires = "thin_metadata")]
    pub thin_ids: Option<String>,
    /// With --changes: read the changed ranges from DEV instead of the snapshot's origin
    /// (required with --cow or --thin-metadata).
    #[arg(long, short = 'r', value_name = "DEV")]
    pub data_source: Option<PathBuf>,
    /// Hash and compare chunks of SIZE bytes (a multiple of 4K, from 4K to 16M): the unit in
    /// which differences are reported.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub chunk: u64,
    /// Print the report as one JSON object instead of the differing ranges.
    #[arg(long)]
    pub json: bool,
    /// Remote shell command used to reach HOST.
    #[arg(short = 'e', long, value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// lvmsync on the remote host.
    #[arg(long, value_name = "PATH", default_value = "lvmsync")]
    pub remote_path: String,
    /// Reads in flight at once on each side.
    #[arg(long, value_name = "N", default_value_t = 32, hide_short_help = true)]
    pub queue_depth: usize,
    /// Serve the DEST side of a comparison on standard input and output (what lvmsync verify
    /// asks of the lvmsync on DEST's host).
    #[arg(long, hide = true)]
    pub serve: bool,
    /// Say more.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Say nothing but errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Debug output.
    #[arg(short = 'd', long)]
    pub debug: bool,
}

/// Parses a size: bytes, or a number with K, M or G (powers of 1024; "KiB", "k" accepted), and
/// checks it is a chunk size verify works with.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{s}': expected a size such as 4K, 64K or 1M")),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("'{s}': expected a size such as 4K, 64K or 1M"))?;
    check_chunk(bytes)?;
    Ok(bytes)
}

/// What verify compares with DEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifySource {
    /// A whole device or image.
    Volume(PathBuf),
    /// The ranges changed since a snapshot, read from its origin or `data_source`.
    Changes {
        source: ChangeSourceSpec,
        data_source: Option<PathBuf>,
    },
    /// What a stream (a file, or `-`) writes.
    Stream(String),
}

/// Compare a source with `[HOST:]DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    pub source: VerifySource,
    pub target: Target,
    pub options: VerifyOptions,
    pub json: bool,
    pub verbosity: Verbosity,
}

/// Serve the DEST side of a comparison on standard input and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyServeConfig {
    pub dest: PathBuf,
    pub queue_depth: usize,
}

impl VerifyArgs {
    pub fn into_config(self) -> Result<super::Config> {
        let verbosity = verbosity(self.quiet, self.verbose, self.debug)?;
        let queue_depth = self.queue_depth.clamp(1, 1024);
        let offline = OfflineSourceArgs {
            cow: self.cow,
            thin_metadata: self.thin_metadata,
            thin_ids: self.thin_ids,
            data_source: self.data_source,
            base_source: None,
        };
        let offline_source = offline.offline()?;
        let mut paths = self.paths.into_iter();
        if self.serve {
            let dest = paths.next().ok_or_else(|| usage("--serve needs DEST"))?;
            if paths.next().is_some()
                || self.changes
                || self.stream.is_some()
                || offline_source.is_some()
                || offline.data_source.is_some()
                || self.json
            {
                return Err(usage("--serve takes DEST and nothing else"));
            }
            return Ok(super::Config::VerifyServe(VerifyServeConfig {
                dest: PathBuf::from(dest),
                queue_depth,
            }));
        }
        let source = match (&self.stream, self.changes) {
            (Some(_), true) => return Err(usage("--stream and --changes cannot be used together")),
            (Some(stream), false) => {
                if offline_source.is_some() || offline.data_source.is_some() {
                    return Err(usage(
                        "--stream takes no change source (--cow, --thin-metadata, --data-source)",
                    ));
                }
                VerifySource::Stream(stream.clone())
            }
            (None, true) => {
                let source = match offline_source {
                    Some(s) => {
                        if offline.data_source.is_none() {
                            return Err(usage(
                                "an offline change source needs --data-source (the origin to read the changed ranges from)",
                            ));
                        }
                        s
                    }
                    None => ChangeSourceSpec::Snapshot(PathBuf::from(
                        paths.next().ok_or_else(|| usage("no snapshot specified"))?,
                    )),
                };
                VerifySource::Changes {
                    source,
                    data_source: offline.data_source,
                }
            }
            (None, false) => {
                if offline_source.is_some() || offline.data_source.is_some() {
                    return Err(usage(
                        "--cow, --thin-metadata and --data-source need --changes",
                    ));
                }
                let source = paths.next().ok_or_else(|| usage("no SOURCE specified"))?;
                if let Address::Remote { .. } = parse_destination(&source) {
                    return Err(usage(format!(
                        "SOURCE {source:?} is on another host: verify reads SOURCE here (write ./{source} for a local path with a colon)"
                    )));
                }
                VerifySource::Volume(PathBuf::from(source))
            }
        };
        let dest = paths
            .next()
            .ok_or_else(|| usage("no destination specified"))?;
        if let Some(extra) = paths.next() {
            return Err(usage(format!("unexpected argument '{extra}'")));
        }
        let target = match parse_destination(&dest) {
            Address::Local(path) => Target::Local(path),
            Address::Remote { host, path } => {
                // Refused now, before anything is read.
                conn::remote_command(&host, &path, &self.rsh, &self.remote_path, queue_depth)?;
                Target::Remote {
                    host,
                    path,
                    rsh: self.rsh,
                    remote_path: self.remote_path,
                }
            }
        };
        Ok(super::Config::Verify(VerifyConfig {
            source,
            target,
            options: VerifyOptions {
                chunk_bytes: self.chunk,
                queue_depth,
            },
            json: self.json,
            verbosity,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Config};
    use super::*;
    use crate::error::Error;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config> {
        let mut v = vec!["lvmsync", "verify"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| Error::Usage(e.to_string()))?
            .into_config()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("8192"), Ok(8192));
        for bad in [
            "",
            "1",
            "4k4",
            "M",
            "5000",
            "32M",
            "1G",
            "-4K",
            "99999999999999999999K",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forms_parse() {
        match config(&["a.img", "host:/dev/vg/lv", "--chunk", "64K", "--json"]).unwrap() {
            Config::Verify(c) => {
                assert_eq!(c.source, VerifySource::Volume("a.img".into()));
                assert_eq!(c.options.chunk_bytes, 65536);
                assert!(c.json);
                assert!(matches!(c.target, Target::Remote { ref host, ref path, .. }
                    if host == "host" && path == "/dev/vg/lv"));
            }
            c => panic!("{c:?}"),
        }
        match config(&["--changes", "/dev/vg/snap", "/dev/x"]).unwrap() {
            Config::Verify(c) => assert_eq!(
                c.source,
                VerifySource::Changes {
                    source: ChangeSourceSpec::Snapshot("/dev/vg/snap".into()),
                    data_source: None
                }
            ),
            c => panic!("{c:?}"),
        }
        match config(&["--changes", "--cow", "c", "-r", "o", "d"]).unwrap() {
            Config::Verify(c) => {
                assert_eq!(
                    c.source,
                    VerifySource::Changes {
                        source: ChangeSourceSpec::Cow("c".into()),
                        data_source: Some("o".into())
                    }
                );
                assert_eq!(c.target, Target::Local("d".into()));
            }
            c => panic!("{c:?}"),
        }
        match config(&["--stream", "-", "d"]).unwrap() {
            Config::Verify(c) => assert_eq!(c.source, VerifySource::Stream("-".into())),
            c => panic!("{c:?}"),
        }
        assert_eq!(
            config(&["--serve", "--queue-depth", "8", "/dev/x"]).unwrap(),
            Config::VerifyServe(VerifyServeConfig {
                dest: "/dev/x".into(),
                queue_depth: 8
            })
        );
    }

    #[test]
    fn nonsense_is_refused() {
        for args in [
            &[][..],
            &["a"],
            &["a", "b", "c"],
            &["--stream", "s"],
            &["--stream", "s", "--changes", "x", "d"],
            &["--stream", "s", "--cow", "c", "d"],
            &["--cow", "c", "-r", "o", "d"],
            &["-r", "o", "a", "d"],
            &["--changes", "--cow", "c", "d"],
            &["--changes", "x"],
            &["--chunk", "3K", "a", "b"],
            &["host:/x", "b"],
            &["a", "host:-x"],
            &["-e", "ssh 'x", "a", "host:/x"],
            &["--serve"],
            &["--serve", "a", "b"],
            &["--serve", "--json", "a"],
            &["-q", "-v", "a", "b"],
        ] {
            assert!(
                matches!(config(args), Err(Error::Usage(_))),
                "{args:?} should be refused as a usage error"
            );
        }
    }
}
