//! The command line: clap's raw arguments, then a validated [`Config`] that says exactly what to
//! do. Every combination that makes no sense is refused here, before anything is opened.

pub mod manual;
pub mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::apply::ApplyOptions;
use crate::error::{Error, Result};
use crate::msg::Verbosity;
pub use crate::progress::ProgressMode;
use crate::send::SendOptions;
use crate::source::ChangeSourceSpec;
use crate::stream::Format;
use crate::transport::{parse_destination, remote_command, Address, ReceiverOptions, SendTarget};

const USAGE: &str = "lvmsync [OPTIONS] SNAPSHOT [HOST:]DEST
       lvmsync [OPTIONS] --stdout SNAPSHOT
       lvmsync [OPTIONS] --full SNAPSHOT [HOST:]DEST|--stdout
       lvmsync [OPTIONS] --checksum SOURCE [HOST:]DEST [--stdout]
       lvmsync [OPTIONS] --stdout --resume FILE SNAPSHOT
       lvmsync [OPTIONS] --apply FILE|- DEST
       lvmsync changes SNAPSHOT
       lvmsync info FILE|- [--json]
       lvmsync verify [OPTIONS] [--changes|--stream FILE] [SOURCE] [HOST:]DEST
       lvmsync replicate [OPTIONS] VG/LV [HOST:]DEST
       lvmsync replicate --status VG/LV
       (--cow FILE, or --thin-metadata FILE --thin-ids SNAP:ORIGIN,
        with --data-source ORIGIN, stand in for SNAPSHOT)";

#[derive(Debug, Parser)]
#[command(
    name = "lvmsync",
    version,
    about = "Send only the blocks of an LVM volume that changed since a snapshot",
    override_usage = USAGE,
    after_help = manual::short_help(),
    after_long_help = manual::long_help(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub sync: SyncArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the changed byte ranges: one "OFFSET LENGTH KIND" line each, in decimal bytes.
    #[command(after_help = manual::subcommand_help("changes"))]
    Changes(ChangesArgs),
    /// Describe a stream or snapback and verify it whole, without applying it.
    #[command(after_help = manual::subcommand_help("info"))]
    Info(InfoArgs),
    /// Compare SOURCE with [HOST:]DEST (whole volumes, the ranges a snapshot lists as changed,
    /// or what a stream writes) and print the differing ranges: one "OFFSET LENGTH" line each,
    /// in decimal bytes. Exit status 0: equal, 1: different, 3: could not compare.
    #[command(override_usage = verify::USAGE, after_help = manual::subcommand_help("verify"))]
    Verify(verify::VerifyArgs),
    /// Keep a copy of VG/LV at DEST current: snapshot, send what changed since the last run,
    /// rotate the snapshots (their state is kept as LVM tags).
    #[command(after_help = manual::subcommand_help("replicate"))]
    Replicate(ReplicateArgs),
}

#[derive(Debug, Args)]
#[command(
    override_usage = "lvmsync replicate [OPTIONS] VG/LV [HOST:]DEST\n       lvmsync replicate --status VG/LV"
)]
pub struct ReplicateArgs {
    /// The volume (VG/LV) and where its copy is kept ([HOST:]DEST); only VG/LV with --status.
    #[arg(value_name = "ARGS")]
    pub paths: Vec<String>,
    /// List the destinations of VG/LV, each with its base snapshot.
    #[arg(long)]
    pub status: bool,
    /// Size of a classic snapshot's exception store: N[bkmgt] (MiB without a unit) or N% of the
    /// LV [default: 20%, at least 64 MiB, at most the LV].
    #[arg(long, value_name = "SIZE", value_parser = crate::replicate::SnapshotSize::parse)]
    pub snapshot_size: Option<crate::replicate::SnapshotSize>,
    /// Wait for another replicate run of the same LV to end instead of refusing to start.
    #[arg(long)]
    pub wait: bool,
    /// Move the volume: repeat rounds until one is within --until, run --final-hook, make a
    /// last round, run --after-hook, and report the downtime.
    #[arg(long, conflicts_with = "status")]
    pub converge: bool,
    /// --converge: a round is small enough when it sends at most SIZE (64M, 512K, 1G) or takes
    /// at most TIME (5s, 500ms).
    #[arg(long, value_name = "SIZE|TIME", value_parser = crate::replicate::converge::Until::parse, requires = "converge")]
    pub until: Option<crate::replicate::converge::Until>,
    /// --converge: fail, running no hook, when this many rounds were all larger than --until
    /// [default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "converge")]
    pub max_passes: Option<u32>,
    /// --converge: run with sh -c before the last round (stop the service); its failure ends
    /// the run.
    #[arg(long, value_name = "CMD", requires = "converge")]
    pub final_hook: Option<String>,
    /// --converge: run with sh -c after the last round (start the service on the other side).
    #[arg(long, value_name = "CMD", requires = "converge")]
    pub after_hook: Option<String>,
    /// Remote shell command used to reach HOST.
    #[arg(short = 'e', long, value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// lvmsync on the remote host.
    #[arg(long, value_name = "PATH", default_value = "lvmsync")]
    pub remote_path: String,
    /// Compress record payloads with zstd.
    #[arg(short = 'z', long)]
    pub compress: bool,
    /// Progress while sending: auto, json, none.
    #[arg(long, value_name = "auto|json|none", default_value = "auto")]
    pub progress: ProgressMode,
    /// Say more.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Say nothing but errors.
    #[arg(short = 'q', long, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The stream or snapback: a file, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub input: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// The snapshot (omit with --cow or --thin-metadata).
    pub snapshot: Option<PathBuf>,
    /// Print one JSON object (volume and chunk size, totals, every range) instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: OfflineSourceArgs,
}

#[derive(Debug, Args, Default)]
pub struct OfflineSourceArgs {
    /// Read the change list from this classic snapshot exception store (image or -cow device).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    /// Read the change list from this thin-pool metadata (image or metadata device).
    #[arg(long, value_name = "FILE", requires = "thin_ids")]
    pub thin_metadata: Option<PathBuf>,
    /// Thin device ids of the snapshot and its origin in --thin-metadata.
    #[arg(long, value_name = "SNAP:ORIGIN", requires = "thin_metadata")]
    pub thin_ids: Option<String>,
    /// Read the changed data from DEV instead of the snapshot's origin (e.g. a newer snapshot).
    /// With --cow or --thin-metadata it stands in for the origin: required for sending, and it
    /// bounds `changes`.
    #[arg(long, value_name = "DEV", short = 'r')]
    pub data_source: Option<PathBuf>,
    /// An image (or device) with the snapshot's own contents, read to check the destination
    /// before it is written: needed for that check with --thin-metadata; live snapshots and
    /// --cow stores have their own, which it replaces.
    #[arg(long, value_name = "DEV")]
    pub base_source: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// SNAPSHOT and [HOST:]DEST (only DEST with --apply, --cow or --thin-metadata).
    #[arg(value_name = "ARGS")]
    pub paths: Vec<String>,
    /// Write the change stream to standard output.
    #[arg(short = 's', long)]
    pub stdout: bool,
    /// Copy the whole of SNAPSHOT as it was taken: the first copy, before syncs (zeros go as
    /// zero ranges). A block device or image can stand in for SNAPSHOT; it must not change
    /// during the copy.
    #[arg(long)]
    pub full: bool,
    /// No snapshot needed: compare SOURCE with DEST by hashes of every 4 KiB block, both read
    /// at once, and send only the blocks that differ. A SOURCE written meanwhile gives a torn
    /// copy: give a snapshot (or a volume not in use) as SOURCE. With --stdout, DEST is only
    /// read, and the stream goes to standard output for a later --apply to that DEST.
    #[arg(long)]
    pub checksum: bool,
    /// With --stdout: finish the dump in FILE, cut short by an earlier run, in place (its
    /// valid start is kept, the rest appended; nothing goes to standard output).
    #[arg(long, value_name = "FILE", requires = "stdout")]
    pub resume: Option<PathBuf>,
    /// Apply a change stream (a file, or - for standard input) to DEST.
    #[arg(short = 'a', long, value_name = "FILE")]
    pub apply: Option<String>,
    /// Deprecated spelling of `--apply -`.
    #[arg(long, hide = true)]
    pub server: bool,
    /// With `--apply -`: hold a live session with the sender on standard output (what a sender
    /// asks of a remote lvmsync).
    #[arg(long, hide = true)]
    pub session: bool,
    /// While applying, save the overwritten data here (a stream that rolls DEST back).
    #[arg(short = 'b', long, value_name = "FILE")]
    pub snapback: Option<String>,
    /// Overwrite an existing snapback file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub source: OfflineSourceArgs,
    /// Remote shell command used to reach HOST.
    #[arg(short = 'e', long, value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// lvmsync on the remote host.
    #[arg(long, value_name = "PATH", default_value = "lvmsync")]
    pub remote_path: String,
    /// Stream format to write: 3 (Ruby lvmsync compatible) or 4 (checksummed).
    #[arg(long, value_name = "3|4", default_value = "4", value_parser = parse_format)]
    pub format: Format,
    /// Send no manifest: the receiver cannot check the destination against the snapshot before
    /// writing, nor tell what an interrupted sync already wrote (saves reading the snapshot's
    /// contents of the changed ranges).
    #[arg(long)]
    pub no_check: bool,
    /// Read only the change list and print what would be sent: the ranges on standard output,
    /// records and bytes and the stream's size on standard error; no data is read, DEST is not
    /// touched.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Progress while sending: auto (a bar on a terminal), json (one JSON object per line on
    /// standard error), none.
    #[arg(long, value_name = "auto|json|none", default_value = "auto")]
    pub progress: ProgressMode,
    /// Compress record payloads with zstd (format 4).
    #[arg(short = 'z', long)]
    pub compress: bool,
    /// zstd level used with --compress.
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::stream::DEFAULT_COMPRESS_LEVEL,
        allow_negative_numbers = true
    )]
    pub compress_level: i32,
    /// Reads in flight at once while sending.
    #[arg(long, value_name = "N", default_value_t = 32, hide_short_help = true)]
    pub queue_depth: usize,
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

fn parse_format(s: &str) -> std::result::Result<Format, String> {
    match s {
        "3" => Ok(Format::V3),
        "4" => Ok(Format::V4),
        _ => Err(format!("unknown stream format '{s}' (3 or 4)")),
    }
}

/// What to do: one validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Config {
    Send(SendConfig),
    Apply(ApplyConfig),
    Changes(ChangesConfig),
    Info(InfoConfig),
    Resume(ResumeConfig),
    Verify(verify::VerifyConfig),
    VerifyServe(verify::VerifyServeConfig),
    Replicate(ReplicateConfig),
}

/// `lvmsync replicate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateConfig {
    pub vg: String,
    pub lv: String,
    /// `None` for `--status`.
    pub dest: Option<String>,
    pub snapshot_size: Option<crate::replicate::SnapshotSize>,
    pub wait: bool,
    /// `--converge` and its options.
    pub converge: Option<crate::replicate::converge::ConvergePlan>,
    pub progress: ProgressMode,
    /// How each send's stream is written.
    pub stream: SendOptions,
    /// How a remote receiver is reached.
    pub receiver: ReceiverOptions,
    pub verbosity: Verbosity,
}

/// Finish a `--stdout` dump that was cut short, in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeConfig {
    /// The dump's file.
    pub file: PathBuf,
    /// The send it finishes (its target is standard output, not written to).
    pub send: SendConfig,
}

/// Send the changes since a snapshot: to standard output, a local destination or a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendConfig {
    pub source: ChangeSourceSpec,
    /// Where changed data is read from, when not the snapshot's origin.
    pub data_source: Option<PathBuf>,
    /// Where the snapshot's own contents are read for the manifest, when given.
    pub base_source: Option<PathBuf>,
    /// Send no manifest.
    pub no_check: bool,
    /// Copy the whole snapshot (`--full`), not the changes since it.
    pub full: bool,
    /// `--checksum`: DEST (`[HOST:]PATH`) to compare with; the source is a volume, not a
    /// snapshot's changes. The stream goes to `target`.
    pub checksum: Option<String>,
    /// Print what would be sent, and send nothing.
    pub dry_run: bool,
    pub progress: ProgressMode,
    pub target: SendTarget,
    /// How the stream is written: format, compression, reads in flight.
    pub stream: SendOptions,
    /// The receiver's snapback and `--force`, and how a remote one is reached.
    pub receiver: ReceiverOptions,
    pub verbosity: Verbosity,
}

/// Apply a stream (a file, or `-` for standard input) to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConfig {
    pub input: String,
    pub dest: PathBuf,
    /// Answer the sender on standard output (a live session, input `-` only).
    pub session: bool,
    /// Snapback file and `--force`.
    pub options: ApplyOptions,
    pub verbosity: Verbosity,
}

/// Describe and verify a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoConfig {
    /// A file, or `-` for standard input.
    pub input: String,
    pub json: bool,
}

/// List the changed ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesConfig {
    pub source: ChangeSourceSpec,
    /// Bounds the changes of an offline source (the origin's size).
    pub data_source: Option<PathBuf>,
    /// One JSON object instead of lines.
    pub json: bool,
}

impl Config {
    /// Whether the command writes its result to standard output.
    pub fn writes_stdout(&self) -> bool {
        matches!(
            self,
            Config::Changes(_)
                | Config::Info(_)
                | Config::Verify(_)
                | Config::VerifyServe(_)
                | Config::Replicate(ReplicateConfig { dest: None, .. })
                | Config::Send(SendConfig {
                    target: SendTarget::Stdout,
                    ..
                })
                | Config::Send(SendConfig { dry_run: true, .. })
        )
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// The verbosity asked for by `-q`, `-v` and `-d`.
fn verbosity(quiet: bool, verbose: bool, debug: bool) -> Result<Verbosity> {
    Ok(match (quiet, verbose, debug) {
        (true, false, false) => Verbosity::Quiet,
        (true, _, _) => {
            return Err(usage(
                "--quiet cannot be combined with --verbose or --debug",
            ))
        }
        (false, _, true) => Verbosity::Debug,
        (false, true, false) => Verbosity::Verbose,
        (false, false, false) => Verbosity::Normal,
    })
}

fn parse_thin_ids(s: &str) -> Result<(u64, u64)> {
    let bad = || {
        usage(format!(
            "--thin-ids '{s}': expected SNAP:ORIGIN device ids, e.g. 2:1"
        ))
    };
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

impl OfflineSourceArgs {
    /// The offline source given, if any.
    fn offline(&self) -> Result<Option<ChangeSourceSpec>> {
        match (&self.cow, &self.thin_metadata) {
            (Some(_), Some(_)) => Err(usage("--cow and --thin-metadata cannot be used together")),
            (Some(cow), None) => Ok(Some(ChangeSourceSpec::Cow(cow.clone()))),
            (None, Some(meta)) => {
                let (snap_id, origin_id) = parse_thin_ids(self.thin_ids.as_deref().unwrap_or(""))?;
                Ok(Some(ChangeSourceSpec::ThinMetadata {
                    path: meta.clone(),
                    snap_id,
                    origin_id,
                }))
            }
            (None, None) => Ok(None),
        }
    }
}

impl Cli {
    /// The help that lists the options of the command given: `lvmsync verify --help` for
    /// `lvmsync verify`, `lvmsync --help` for a sync or an apply.
    pub fn help_page(&self) -> &'static str {
        match self.command {
            None => "lvmsync --help",
            Some(Command::Changes(_)) => "lvmsync changes --help",
            Some(Command::Info(_)) => "lvmsync info --help",
            Some(Command::Verify(_)) => "lvmsync verify --help",
            Some(Command::Replicate(_)) => "lvmsync replicate --help",
        }
    }

    /// Turns raw arguments into a validated configuration.
    pub fn into_config(self) -> Result<Config> {
        if let Some(Command::Verify(v)) = self.command {
            return v.into_config();
        }
        if let Some(Command::Info(i)) = self.command {
            return Ok(Config::Info(InfoConfig {
                input: i.input,
                json: i.json,
            }));
        }
        if let Some(Command::Replicate(r)) = self.command {
            return replicate_config(r);
        }
        if let Some(Command::Changes(c)) = self.command {
            let offline = c.source.offline()?;
            let source = match (offline, c.snapshot) {
                (Some(_), Some(_)) => return Err(usage(
                    "give either SNAPSHOT or an offline source (--cow, --thin-metadata), not both",
                )),
                (Some(s), None) => s,
                (None, Some(p)) => ChangeSourceSpec::Snapshot(p),
                (None, None) => return Err(usage("no snapshot specified")),
            };
            return Ok(Config::Changes(ChangesConfig {
                source,
                data_source: c.source.data_source,
                json: c.json,
            }));
        }
        let a = self.sync;
        let verbosity = verbosity(a.quiet, a.verbose, a.debug)?;
        let apply = match (a.apply, a.server) {
            (Some(_), true) => return Err(usage("--server is --apply -; give only one")),
            (Some(f), false) => Some(f),
            (None, true) => Some("-".to_string()),
            (None, false) => None,
        };
        if let Some(input) = apply {
            if a.full {
                return Err(usage("--apply and --full cannot be used together"));
            }
            if a.checksum {
                return Err(usage("--apply and --checksum cannot be used together"));
            }
            if a.stdout {
                return Err(usage("--apply and --stdout cannot be used together"));
            }
            if a.dry_run {
                return Err(usage(
                    "--dry-run is for sending; `lvmsync info FILE` describes a stream",
                ));
            }
            if a.progress != ProgressMode::Auto {
                return Err(usage("--progress is for sending"));
            }
            if a.source.offline()?.is_some() {
                return Err(usage(
                    "--apply takes no change source (--cow, --thin-metadata)",
                ));
            }
            let [dest] = <[String; 1]>::try_from(a.paths).map_err(|p| {
                if p.is_empty() {
                    usage("no destination specified for --apply")
                } else {
                    usage(format!("--apply takes one DEST, got {}", p.len()))
                }
            })?;
            if a.session && input != "-" {
                return Err(usage("--session needs --apply -"));
            }
            return Ok(Config::Apply(ApplyConfig {
                input,
                dest: PathBuf::from(dest),
                session: a.session,
                options: ApplyOptions {
                    snapback: a.snapback.map(PathBuf::from),
                    force: a.force,
                },
                verbosity,
            }));
        }
        if a.compress && a.format == Format::V3 {
            return Err(usage(
                "--compress needs --format 4 (format 3 has no compression)",
            ));
        }
        let offline = a.source.offline()?;
        if a.checksum {
            let given = [
                (a.full, "--full"),
                (offline.is_some(), "--cow or --thin-metadata"),
                (a.source.data_source.is_some(), "--data-source"),
                (a.source.base_source.is_some(), "--base-source"),
                (a.resume.is_some(), "--resume"),
                (a.no_check, "--no-check (its stream has no manifest: the comparison checks DEST)"),
                (a.format == Format::V3, "--format 3 (it sends format 4)"),
                (a.dry_run, "--dry-run (lvmsync verify --chunk 4K SOURCE [HOST:]DEST lists the ranges it would send)"),
            ];
            if let Some((_, what)) = given.iter().find(|(given, _)| *given) {
                return Err(usage(format!(
                    "--checksum compares SOURCE with DEST and takes no {what}"
                )));
            }
        }
        if a.full {
            let given = [
                (offline.is_some(), "--cow or --thin-metadata"),
                (a.source.data_source.is_some(), "--data-source"),
                (a.source.base_source.is_some(), "--base-source"),
            ];
            if let Some((_, what)) = given.iter().find(|(given, _)| *given) {
                return Err(usage(format!(
                    "--full copies SNAPSHOT itself and takes no {what}"
                )));
            }
        }
        let mut paths = a.paths.into_iter();
        let source = match offline {
            Some(s) => {
                if a.source.data_source.is_none() {
                    return Err(usage(
                        "an offline change source needs --data-source (the origin to read data from)",
                    ));
                }
                s
            }
            None => ChangeSourceSpec::Snapshot(PathBuf::from(
                paths.next().ok_or_else(|| usage("no snapshot specified"))?,
            )),
        };
        let checksum = match a.checksum {
            // With --stdout too: DEST is read, not written.
            true => Some(
                paths
                    .clone()
                    .next()
                    .ok_or_else(|| usage("--checksum needs SOURCE and [HOST:]DEST"))?,
            ),
            false => None,
        };
        if a.checksum && a.stdout {
            paths.next();
        }
        let target = if a.stdout {
            if a.snapback.is_some() {
                return Err(usage("--snapback cannot be used with --stdout"));
            }
            SendTarget::Stdout
        } else {
            SendTarget::Dest(
                paths
                    .next()
                    .ok_or_else(|| usage("no destination specified"))?,
            )
        };
        if a.resume.is_some() && a.full {
            return Err(usage(
                "--resume finishes a --stdout dump of the changes since a snapshot, not of --full",
            ));
        }
        if a.resume.is_some() && a.dry_run {
            return Err(usage("--dry-run cannot be used with --resume"));
        }
        if a.resume.is_some() && a.format == Format::V3 {
            return Err(usage(
                "--resume needs format 4: a format 3 dump has no checksums to tell where it was cut",
            ));
        }
        if let Some(extra) = paths.next() {
            if target != SendTarget::Stdout || a.resume.is_some() {
                return Err(usage(format!("unexpected argument '{extra}'")));
            }
            // Ruby lvmsync ignored a DEST given with --stdout; so do we, for old scripts.
        }
        let config = SendConfig {
            source,
            data_source: a.source.data_source,
            base_source: a.source.base_source,
            no_check: a.no_check,
            full: a.full,
            checksum,
            dry_run: a.dry_run,
            progress: a.progress,
            target,
            stream: SendOptions {
                format: a.format,
                compress: a.compress.then_some(a.compress_level),
                queue_depth: a.queue_depth.clamp(1, 1024),
            },
            receiver: ReceiverOptions {
                snapback: a.snapback,
                force: a.force,
                rsh: a.rsh,
                remote_path: a.remote_path,
                session: a.format == Format::V4,
            },
            verbosity,
        };
        // A remote receiver's command line is refused now, before the snapshot is read.
        if let SendTarget::Dest(dest) = &config.target {
            if let Address::Remote { host, path } = parse_destination(dest) {
                remote_command(&host, &path, &config.receiver, verbosity)?;
            }
        }
        if let Some(Address::Remote { host, path }) =
            config.checksum.as_deref().map(parse_destination)
        {
            crate::verify::conn::remote_command(
                &host,
                &path,
                &config.receiver.rsh,
                &config.receiver.remote_path,
                config.stream.queue_depth,
            )?;
        }
        if let Some(file) = a.resume {
            return Ok(Config::Resume(ResumeConfig { file, send: config }));
        }
        Ok(Config::Send(config))
    }
}

fn replicate_config(r: ReplicateArgs) -> Result<Config> {
    let mut paths = r.paths.into_iter();
    let (vg, lv) = crate::replicate::split_lv(
        &paths
            .next()
            .ok_or_else(|| usage("replicate: no volume (VG/LV) specified"))?,
    )?;
    let dest = paths.next();
    if let Some(extra) = paths.next() {
        return Err(usage(format!("unexpected argument '{extra}'")));
    }
    if r.status && dest.is_some() {
        return Err(usage("replicate --status takes only VG/LV"));
    }
    if !r.status && dest.is_none() {
        return Err(usage("replicate: no destination specified"));
    }
    let verbosity = match (r.quiet, r.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, true) => Verbosity::Verbose,
        (false, false) => Verbosity::Normal,
    };
    let converge = if r.converge {
        Some(crate::replicate::converge::ConvergePlan {
            until: r.until.ok_or_else(|| {
                usage("replicate --converge needs --until SIZE|TIME (e.g. 64M or 5s)")
            })?,
            max_passes: r
                .max_passes
                .unwrap_or(crate::replicate::converge::DEFAULT_MAX_PASSES),
            final_hook: r.final_hook,
            after_hook: r.after_hook,
        })
    } else {
        None
    };
    let receiver = ReceiverOptions {
        snapback: None,
        force: false,
        rsh: r.rsh,
        remote_path: r.remote_path,
        session: true,
    };
    if let Some(Address::Remote { host, path }) = dest.as_deref().map(parse_destination) {
        remote_command(&host, &path, &receiver, verbosity)?;
    }
    Ok(Config::Replicate(ReplicateConfig {
        vg,
        lv,
        dest,
        snapshot_size: r.snapshot_size,
        wait: r.wait,
        converge,
        progress: r.progress,
        stream: SendOptions {
            format: Format::V4,
            compress: r.compress.then_some(crate::stream::DEFAULT_COMPRESS_LEVEL),
            queue_depth: 32,
        },
        receiver,
        verbosity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn config(args: &[&str]) -> Result<Config> {
        let mut v = vec!["lvmsync"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| Error::Usage(e.to_string()))?
            .into_config()
    }

    #[test]
    fn a_subcommand_points_to_its_own_help() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lvmsync"][..], args].concat());
        let mut named = Vec::new();
        for args in [
            &["changes", "/dev/vg/snap"][..],
            &["info", "f"],
            &["verify", "a", "b"],
            &["replicate", "vg/lv", "/dev/x"],
        ] {
            let want = format!("lvmsync {} --help", args[0]);
            assert_eq!(parse(args).unwrap().help_page(), want);
            named.push(args[0]);
        }
        let cli = Cli::command();
        let subcommands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(named, subcommands);
        let sync = parse(&["/dev/vg/snap", "/dev/x"]).unwrap();
        assert_eq!(sync.help_page(), "lvmsync --help");
    }

    #[test]
    fn ruby_forms_parse() {
        match config(&["-v", "-b", "/sb", "/dev/vg/snap", "host:/dev/vg2/lv"]).unwrap() {
            Config::Send(SendConfig {
                source,
                target,
                receiver,
                verbosity,
                ..
            }) => {
                assert_eq!(source, ChangeSourceSpec::Snapshot("/dev/vg/snap".into()));
                assert_eq!(target, SendTarget::Dest("host:/dev/vg2/lv".into()));
                assert_eq!(receiver.snapback.as_deref(), Some("/sb"));
                assert_eq!(verbosity, Verbosity::Verbose);
            }
            c => panic!("{c:?}"),
        }
        // Options after positionals, as in Ruby lvmsync's README.
        match config(&["/dev/vg/snap", "host:/dev/x", "--snapback", "/f"]).unwrap() {
            Config::Send(c) => assert_eq!(c.receiver.snapback.as_deref(), Some("/f")),
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            config(&["--apply", "-", "/dev/x"]).unwrap(),
            Config::Apply(_)
        ));
        assert!(matches!(
            config(&["--server", "/dev/x"]).unwrap(),
            Config::Apply(_)
        ));
        assert!(matches!(
            config(&["--stdout", "/dev/vg/snap"]).unwrap(),
            Config::Send(SendConfig {
                target: SendTarget::Stdout,
                ..
            })
        ));
    }

    #[test]
    fn full_copies_parse() {
        for (args, want) in [
            (
                &["--full", "/dev/vg/snap", "host:/dev/x"][..],
                SendTarget::Dest("host:/dev/x".into()),
            ),
            (&["--full", "--stdout", "/dev/vg/snap"], SendTarget::Stdout),
            (
                &["/dev/vg/snap", "/dev/x", "--full"],
                SendTarget::Dest("/dev/x".into()),
            ),
        ] {
            match config(args).unwrap() {
                Config::Send(c) => {
                    assert!(c.full, "{args:?}");
                    assert_eq!(c.source, ChangeSourceSpec::Snapshot("/dev/vg/snap".into()));
                    assert_eq!(c.target, want, "{args:?}");
                }
                c => panic!("{c:?}"),
            }
        }
        match config(&["/dev/vg/snap", "/dev/x"]).unwrap() {
            Config::Send(c) => assert!(!c.full),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn replicate_parses() {
        match config(&["replicate", "-z", "--wait", "/dev/vg/lv", "b@host:/dev/x"]).unwrap() {
            Config::Replicate(c) => {
                assert_eq!((c.vg.as_str(), c.lv.as_str()), ("vg", "lv"));
                assert_eq!(c.dest.as_deref(), Some("b@host:/dev/x"));
                assert!(c.wait && c.receiver.session);
                assert_eq!(c.stream.format, Format::V4);
                assert_eq!(
                    c.stream.compress,
                    Some(crate::stream::DEFAULT_COMPRESS_LEVEL)
                );
            }
            c => panic!("{c:?}"),
        }
        let status = config(&["replicate", "--status", "vg/lv"]).unwrap();
        assert!(status.writes_stdout());
        assert!(matches!(
            status,
            Config::Replicate(ReplicateConfig { dest: None, .. })
        ));
    }

    #[test]
    fn replicate_converge_parses() {
        use crate::replicate::converge::{ConvergePlan, Until};
        let args = [
            "replicate",
            "--converge",
            "--until",
            "5s",
            "--final-hook",
            "systemctl stop app",
            "--after-hook",
            "ssh b systemctl start app",
            "vg/lv",
            "b:/dev/vg/lv",
        ];
        match config(&args).unwrap() {
            Config::Replicate(c) => assert_eq!(
                c.converge,
                Some(ConvergePlan {
                    until: Until::Time(std::time::Duration::from_secs(5)),
                    max_passes: 10,
                    final_hook: Some("systemctl stop app".into()),
                    after_hook: Some("ssh b systemctl start app".into()),
                })
            ),
            c => panic!("{c:?}"),
        }
        let args = [
            "replicate",
            "--converge",
            "--until",
            "64M",
            "--max-passes",
            "3",
        ];
        match config(&[&args[..], &["vg/lv", "/dev/vg/copy"]].concat()).unwrap() {
            Config::Replicate(c) => {
                let plan = c.converge.unwrap();
                assert_eq!(plan.until, Until::Bytes(64 << 20));
                assert_eq!(plan.max_passes, 3);
                assert_eq!((plan.final_hook, plan.after_hook), (None, None));
            }
            c => panic!("{c:?}"),
        }
        match config(&["replicate", "vg/lv", "/dev/vg/copy"]).unwrap() {
            Config::Replicate(c) => assert_eq!(c.converge, None),
            c => panic!("{c:?}"),
        }
        for (args, says) in [
            (&["--converge"][..], "needs --until"),
            (&["--until", "5s"], "--converge"),
            (&["--final-hook", "true"], "--converge"),
            (&["--after-hook", "true"], "--converge"),
            (&["--max-passes", "3"], "--converge"),
            (&["--converge", "--until", "5"], "give a unit"),
            (&["--converge", "--until", "5x"], "expected a size"),
            (&["--converge", "--until", "1s", "--max-passes", "0"], "0"),
        ] {
            let full = [&["replicate"][..], args, &["vg/lv", "/dev/vg/copy"]].concat();
            match config(&full) {
                Err(Error::Usage(m)) => assert!(m.contains(says), "{args:?}: {m}"),
                r => panic!("{args:?}: {r:?}"),
            }
        }
        assert!(matches!(
            config(&[
                "replicate",
                "--status",
                "--converge",
                "--until",
                "1s",
                "vg/lv"
            ]),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn offline_sources_parse() {
        match config(&["--stdout", "--cow", "c.img", "--data-source", "o.img"]).unwrap() {
            Config::Send(SendConfig {
                source,
                data_source,
                ..
            }) => {
                assert_eq!(source, ChangeSourceSpec::Cow("c.img".into()));
                assert_eq!(data_source, Some("o.img".into()));
            }
            c => panic!("{c:?}"),
        }
        match config(&["changes", "--thin-metadata", "m", "--thin-ids", "2:1"]).unwrap() {
            Config::Changes(ChangesConfig { source, .. }) => assert_eq!(
                source,
                ChangeSourceSpec::ThinMetadata {
                    path: "m".into(),
                    snap_id: 2,
                    origin_id: 1
                }
            ),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn nonsense_is_refused() {
        for args in [
            &["-q", "-v", "/dev/vg/snap", "/dev/x"][..],
            &["--stdout", "--snapback", "f", "/dev/vg/snap"],
            &["--apply", "f"],
            &["/dev/vg/snap"],
            &["--cow", "c", "/dev/x"],
            &["--format", "3", "-z", "--stdout", "/dev/vg/snap"],
            &["--format", "5", "--stdout", "/dev/vg/snap"],
            &["changes"],
            &["changes", "--thin-metadata", "m", "--thin-ids", "x"],
            &["/dev/vg/snap", "/dev/x", "/dev/y"],
            &["-e", "ssh 'unclosed", "/dev/vg/snap", "host:/dev/x"],
            &["/dev/vg/snap", "host:-rf"],
            &["--full", "--apply", "f", "/dev/x"],
            &["--full", "--cow", "c", "--data-source", "o", "/dev/x"],
            &["--full", "--data-source", "o", "/dev/vg/snap", "/dev/x"],
            &["--full", "--base-source", "b", "/dev/vg/snap", "/dev/x"],
            &["--full", "/dev/vg/snap"],
            &["--full", "--format", "3", "-z", "/dev/vg/snap", "/dev/x"],
            &["replicate"],
            &["replicate", "vg/lv"],
            &["replicate", "lv", "/dev/x"],
            &["replicate", "vg/lv", "/dev/x", "/dev/y"],
            &["replicate", "--status", "vg/lv", "/dev/x"],
            &["replicate", "-q", "-v", "vg/lv", "/dev/x"],
            &["replicate", "vg/lv", "host:-rf"],
            &["replicate", "--snapshot-size", "0", "vg/lv", "/dev/x"],
        ] {
            assert!(
                matches!(config(args), Err(Error::Usage(_))),
                "{args:?} should be refused as a usage error"
            );
        }
    }
}
