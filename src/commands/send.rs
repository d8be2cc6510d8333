//! `lvmsync [--stdout] SNAPSHOT [[HOST:]DEST]`: the changes since a snapshot, as a stream to
//! standard output, a local destination or a remote one.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::STDOUT_WRITE;
use crate::apply::{apply_stream, ApplyOptions, ApplyReport};
use crate::cli::{SendConfig, SendTarget, Verbosity};
use crate::error::{Error, IoContext, Named, Result};
use crate::send::{send_changes, SendOptions, SendReport};
use crate::source::{self, ChangeSet};
use crate::transport::{parse_destination, Destination, RemoteApply, RemoteOptions};

const PIPE_WRITE: &str = "pipe to the local receiver: cannot write";

pub fn run(config: SendConfig) -> Result<()> {
    let SendConfig {
        source,
        data_source,
        target,
        stream: opts,
        snapback,
        force,
        rsh,
        remote_path,
        verbosity,
    } = config;
    let resolved = source::resolve(&source, data_source.as_deref())?;
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
    let bar = progress_bar(verbosity, changes.extents.total_bytes());
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n)
        }
    };
    let report = match target {
        SendTarget::Stdout => {
            let out =
                BufWriter::with_capacity(1 << 20, Named::new(io::stdout().lock(), STDOUT_WRITE));
            let closed = |e: Error| {
                if is_broken_pipe(&e) {
                    Error::Invalid("standard output closed before the stream was complete".into())
                } else {
                    e
                }
            };
            let (mut out, report) =
                send_changes(changes, data_path, out, &opts, &progress).map_err(closed)?;
            out.flush().ctx(|| STDOUT_WRITE.into()).map_err(closed)?;
            report
        }
        SendTarget::Dest(dest) => match parse_destination(&dest) {
            Destination::Local(dest) => {
                let apply_opts = ApplyOptions {
                    snapback: snapback.map(PathBuf::from),
                    force,
                };
                send_local(changes, data_path, &dest, &opts, &apply_opts, &progress)?.0
            }
            Destination::Remote { host, path } => {
                let remote_opts = RemoteOptions {
                    rsh,
                    remote_path,
                    snapback,
                    force,
                    verbose: verbosity >= Verbosity::Verbose,
                    quiet: verbosity == Verbosity::Quiet,
                    debug: verbosity == Verbosity::Debug,
                };
                send_remote(
                    changes,
                    data_path,
                    &host,
                    &path,
                    &opts,
                    &remote_opts,
                    &progress,
                )?
            }
        },
    };
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

/// Sends to a local destination through an in-process pipe, so a local sync goes through the
/// very same checks as a stream arriving over the network.
fn send_local(
    changes: &ChangeSet,
    data_path: &Path,
    dest: &Path,
    opts: &SendOptions,
    apply_opts: &ApplyOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(SendReport, ApplyReport)> {
    let (reader, writer) = io::pipe().ctx(|| "cannot create a pipe".into())?;
    std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            let mut reader = reader;
            let res = apply_stream(&mut reader, dest, apply_opts);
            // Drain nothing further: dropping the reader makes a still-running sender fail.
            drop(reader);
            res
        });
        let sent = send_changes(
            changes,
            data_path,
            BufWriter::with_capacity(1 << 20, Named::new(writer, PIPE_WRITE)),
            opts,
            progress,
        )
        .and_then(|(mut w, r)| {
            w.flush().ctx(|| PIPE_WRITE.into())?;
            Ok(r)
        });
        let applied = receiver.join().expect("receiver thread panicked");
        // The receiver's error explains a broken pipe on the sender's side: report it first.
        let applied = applied?;
        Ok((sent?, applied))
    })
}

/// Sends to `lvmsync --apply -` on another host. When anything fails, the remote's own account
/// (its exit status, relayed stderr) comes first: a broken pipe here is only the symptom.
fn send_remote(
    changes: &ChangeSet,
    data_path: &Path,
    host: &str,
    dest: &str,
    opts: &SendOptions,
    remote_opts: &RemoteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SendReport> {
    let mut remote = RemoteApply::spawn(host, dest, remote_opts)?;
    let sent = send_changes(
        changes,
        data_path,
        BufWriter::with_capacity(
            1 << 20,
            Named::new(remote.input(), format!("stream to {host}: cannot write")),
        ),
        opts,
        progress,
    )
    .and_then(|(mut w, r)| {
        w.flush()
            .ctx(|| format!("stream to {host}: cannot write"))?;
        Ok(r)
    });
    match sent {
        Ok(report) => {
            remote.finish()?;
            Ok(report)
        }
        Err(e) if is_broken_pipe(&e) => {
            remote.finish()?;
            Err(Error::Invalid(format!(
                "the connection to {host} closed before the stream was complete"
            )))
        }
        // Our own failure: dropping `remote` kills the remote shell before it sees a clean end.
        Err(e) => Err(e),
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    let io = match e {
        Error::Io { source, .. } => source,
        Error::Stream(crate::stream::StreamError::Io(source)) => source,
        _ => return false,
    };
    io.kind() == io::ErrorKind::BrokenPipe
}

/// A progress bar on a terminal. indicatif ignores errors drawing it (a terminal that went
/// away cannot make lvmsync panic); only the calls used here are known to: `set_position`,
/// `finish_and_clear`.
fn progress_bar(verbosity: Verbosity, total: u64) -> Option<ProgressBar> {
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
}
