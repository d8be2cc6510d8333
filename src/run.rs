//! Carries out a validated [`Config`]: the glue between change sources, the sender, the
//! receiver and the transport.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::apply::{apply_stream, ApplyOptions, ApplyReport};
use crate::blockdev::Device;
use crate::cli::{
    ApplyConfig, ChangeSourceSpec, ChangesConfig, Config, SendConfig, SendTarget, Verbosity,
};
use crate::error::{Error, IoContext, Named, Result};
use crate::extent::ExtentList;
use crate::lvm::{self, ClassicSnapshot, Snapshot, ThinSnapshot};
use crate::send::{send_changes, SendOptions, SendReport};
use crate::source::cow::ExceptionStore;
use crate::source::thin::{self, MetadataRoot};
use crate::source::ChangeSet;
use crate::transport::{parse_destination, Destination, RemoteApply, RemoteOptions};

const STDOUT_WRITE: &str = "standard output: cannot write";
const PIPE_WRITE: &str = "pipe to the local receiver: cannot write";

pub fn run(config: Config) -> Result<()> {
    match config {
        Config::Changes(ChangesConfig {
            source,
            data_source,
        }) => run_changes(&source, data_source.as_deref()),
        Config::Apply(ApplyConfig {
            input,
            dest,
            options: opts,
            verbosity,
        }) => {
            let report = if input == "-" {
                let stdin =
                    Named::new(io::stdin().lock(), "standard input: cannot read the stream");
                apply_stream(stdin, &dest, &opts)?
            } else {
                // A FIFO is fine here (a stream may come through a named pipe): this open waits
                // for its writer.
                let f = std::fs::File::open(&input)
                    .ctx(|| format!("{input}: cannot open the stream for reading"))?;
                let f = Named::new(f, format!("{input}: cannot read the stream"));
                apply_stream(io::BufReader::with_capacity(1 << 20, f), &dest, &opts)?
            };
            if let Some(end) = report.interrupted_snapback {
                if verbosity >= Verbosity::Normal {
                    crate::say!(
                        "lvmsync: snapback ends at byte {end} without an end record (the apply that wrote it was interrupted); every recorded range restored"
                    );
                }
            }
            if verbosity >= Verbosity::Verbose {
                print_apply_report(&report, &dest);
            }
            Ok(())
        }
        Config::Send(config) => run_send(config),
    }
}

/// The change list, the device to read changed data from, and the live classic snapshot it came
/// from (checked again once the data is sent).
type Resolved = (ChangeSet, Option<PathBuf>, Option<ClassicSnapshot>);

fn resolve_changes(source: &ChangeSourceSpec, data_source: Option<&Path>) -> Result<Resolved> {
    let data = match data_source {
        Some(p) => Some((p.to_owned(), Device::open_read(p)?.size)),
        None => None,
    };
    let data_bytes = data.as_ref().map(|(_, size)| *size);
    let data_path = data.as_ref().map(|(p, _)| p.clone());
    match source {
        ChangeSourceSpec::Cow(path) => {
            let store = ExceptionStore::open(path)?;
            let changes = store.changes(data_bytes.unwrap_or(u64::MAX))?;
            Ok((changes, data_path, None))
        }
        ChangeSourceSpec::ThinMetadata {
            path,
            snap_id,
            origin_id,
        } => {
            let delta = thin::delta(path, *snap_id, *origin_id, MetadataRoot::Superblock)?;
            let mut extents = delta.extents;
            let volume_bytes = match &data {
                Some((data_path, size)) => {
                    check_thin_changes_fit(&extents, delta.data_block_bytes, data_path, *size)?;
                    extents.clamp(*size);
                    *size
                }
                None => u64::MAX,
            };
            let changes = ChangeSet {
                extents,
                chunk_bytes: delta.data_block_bytes,
                volume_bytes,
            };
            Ok((changes, data_path, None))
        }
        ChangeSourceSpec::Snapshot(path) => match lvm::discover_snapshot(path)? {
            Snapshot::Classic(snap) => {
                check_data_source_size(data.as_ref(), &snap.name, snap.origin_bytes)?;
                flush_origin(&snap.origin)?;
                let changes = classic_changes(&snap)?;
                let data = data_path.unwrap_or_else(|| snap.origin.clone());
                Ok((changes, Some(data), Some(snap)))
            }
            Snapshot::Thin(snap) => {
                check_data_source_size(data.as_ref(), &snap.name, snap.origin_bytes)?;
                flush_origin(&snap.origin)?;
                let changes = thin_changes(&snap)?;
                Ok((changes, Some(data_path.unwrap_or(snap.origin)), None))
            }
        },
    }
}

/// Refuses a thin change list that reaches a block wholly past the end of the data source (by
/// `--data-source`): the data source is then not this volume's origin, and dropping those
/// changes would leave the destination silently different. Only the last block may straddle
/// the end (a thin block size need not divide the volume size); the caller clamps it.
fn check_thin_changes_fit(
    extents: &ExtentList,
    block_bytes: u64,
    data_path: &Path,
    data_bytes: u64,
) -> Result<()> {
    let limit = data_bytes
        .checked_next_multiple_of(block_bytes.max(1))
        .unwrap_or(u64::MAX);
    match extents.iter().find(|e| e.end() > limit) {
        Some(e) => Err(Error::Invalid(format!(
            "the thin delta has a change at byte {}, past the end of data source {} ({data_bytes} bytes): it is not this volume's origin",
            e.offset.max(limit),
            data_path.display()
        ))),
        None => Ok(()),
    }
}

/// Refuses a data source (by `--data-source`) smaller than the snapshot's volume: it cannot be
/// a copy of the origin, and changes near the end would be missing from it.
fn check_data_source_size(
    data: Option<&(PathBuf, u64)>,
    snap_name: &str,
    volume_bytes: u64,
) -> Result<()> {
    match data {
        Some((path, size)) if *size < volume_bytes => Err(Error::Invalid(format!(
            "data source {} is {size} bytes, smaller than the {volume_bytes}-byte volume of snapshot {snap_name}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes back what is still in the origin's page cache. Such writes (left there when another
/// process holds the origin open, so the writer's close did not flush them) have not reached the
/// snapshot's metadata yet: the change list would miss them while reads of the origin see them.
fn flush_origin(origin: &Path) -> Result<()> {
    Device::open_read(origin)?
        .sync()
        .ctx(|| format!("{}: cannot flush the origin", origin.display()))
}

/// Reads a live classic snapshot's exception store. The snapshot is checked before and after:
/// one that overflowed has an incomplete change list.
fn classic_changes(snap: &ClassicSnapshot) -> Result<ChangeSet> {
    lvm::check_classic_usable(snap)?;
    let store = ExceptionStore::open(&snap.cow)?;
    if store.chunk_bytes() != snap.chunk_bytes {
        return Err(Error::Invalid(format!(
            "{}: exception store chunk size {} differs from the snapshot table's {}",
            snap.name,
            store.chunk_bytes(),
            snap.chunk_bytes
        )));
    }
    let changes = store.changes(snap.origin_bytes)?;
    lvm::check_classic_usable(snap)?;
    Ok(changes)
}

/// Reads a live thin snapshot's difference from its origin through a metadata snapshot, which
/// is released as soon as the mappings are read (and on every error or signal).
fn thin_changes(snap: &ThinSnapshot) -> Result<ChangeSet> {
    let delta = thin::delta_live(
        &snap.pool_dm_name,
        &snap.metadata,
        snap.snap_id,
        snap.origin_id,
    )?;
    if delta.data_block_bytes != snap.block_bytes {
        return Err(Error::Invalid(format!(
            "{}: pool metadata says {}-byte blocks, LVM says {}",
            snap.name, delta.data_block_bytes, snap.block_bytes
        )));
    }
    let mut extents = delta.extents;
    extents.clamp(snap.origin_bytes);
    Ok(ChangeSet {
        extents,
        chunk_bytes: delta.data_block_bytes,
        volume_bytes: snap.origin_bytes,
    })
}

fn run_changes(source: &ChangeSourceSpec, data_source: Option<&Path>) -> Result<()> {
    let (changes, _, _) = resolve_changes(source, data_source)?;
    let mut out = BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    for e in &changes.extents {
        writeln!(out, "{} {} {}", e.offset, e.len, e.kind).ctx(|| STDOUT_WRITE.into())?;
    }
    out.flush().ctx(|| STDOUT_WRITE.into())
}

fn run_send(config: SendConfig) -> Result<()> {
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
    let (changes, data_path, classic) = resolve_changes(&source, data_source.as_deref())?;
    let data_path = data_path.ok_or_else(|| Error::Invalid("no data source".into()))?;
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
        if let Some(snap) = &classic {
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
                send_changes(&changes, &data_path, out, &opts, &progress).map_err(closed)?;
            out.flush().ctx(|| STDOUT_WRITE.into()).map_err(closed)?;
            report
        }
        SendTarget::Dest(dest) => match parse_destination(&dest) {
            Destination::Local(dest) => {
                let apply_opts = ApplyOptions {
                    snapback: snapback.map(PathBuf::from),
                    force,
                };
                send_local(&changes, &data_path, &dest, &opts, &apply_opts, &progress)?.0
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
                    &changes,
                    &data_path,
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
    if let Some(snap) = classic {
        // Overflowing now means the origin was written while we read it.
        lvm::check_classic_usable(&snap).map_err(|e| {
            Error::Invalid(format!(
                "{e}; it overflowed during the sync, so the origin was being written: the destination may not match"
            ))
        })?;
    }
    if verbosity >= Verbosity::Normal {
        print_send_report(&report, &changes);
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

fn print_send_report(r: &SendReport, changes: &ChangeSet) {
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

fn print_apply_report(r: &ApplyReport, dest: &Path) {
    crate::say!(
        "lvmsync: applied {} records, {} of data and {} of zeros to {}{}",
        r.totals.records,
        HumanBytes(r.totals.data_bytes),
        HumanBytes(r.totals.zero_bytes),
        dest.display(),
        match &r.snapback {
            Some(t) => format!("; snapback holds {}", HumanBytes(t.data_bytes)),
            None => String::new(),
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::Extent;

    #[test]
    fn a_data_source_smaller_than_the_volume_is_refused() {
        let data = (PathBuf::from("/dev/vg/newer"), 1000);
        let e = check_data_source_size(Some(&data), "vg/snap", 1001).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data source /dev/vg/newer is 1000 bytes, smaller than the 1001-byte volume of snapshot vg/snap"
        );
        check_data_source_size(Some(&data), "vg/snap", 1000).unwrap();
        check_data_source_size(None, "vg/snap", 1 << 40).unwrap();
    }

    #[test]
    fn only_a_thin_block_straddling_the_data_source_end_is_accepted() {
        let block = 65536;
        let list = |extents: &[Extent]| ExtentList::from_extents(extents.iter().copied());
        let path = Path::new("origin.img");
        let last = list(&[Extent::data(0, block), Extent::zero(4 * block, block)]);
        check_thin_changes_fit(&last, block, path, 5 * block).unwrap();
        check_thin_changes_fit(&last, block, path, 4 * block + 1).unwrap();
        let e = check_thin_changes_fit(&last, block, path, 4 * block).unwrap_err();
        assert!(
            e.to_string()
                .contains("change at byte 262144, past the end of data source origin.img"),
            "{e}"
        );
        // A merged range reaching a whole block past the end is refused at that block.
        let long = list(&[Extent::data(0, 3 * block)]);
        let e = check_thin_changes_fit(&long, block, path, block + 1).unwrap_err();
        assert!(e.to_string().contains("change at byte 131072"), "{e}");
    }
}
