//! Finishing a `--stdout` dump that was cut short, in place (`lvmsync --stdout --resume FILE`).
//!
//! The file is read from its start and verified record by record, and compared with what this
//! run would write: the same header (format 4, compression, volume and chunk size), the same
//! identity (the same source and change set: its change-set digest), the same manifest
//! records, and data and zero records for the same ranges, in order. Where it stops being a
//! valid stream (its end, a record cut short or damaged) it is cut back to the end of its last
//! complete, checksummed record, and this run writes the rest: the writer carries on from the
//! state the reader had there ([`crate::stream::StreamReader::continuation`]), so the end
//! record's counts and stream digest cover the whole file. A dump resumed from an unchanged
//! source is byte for byte the dump an uninterrupted run writes.
//!
//! Nothing is written to the file before every check that can refuse it has passed: a file
//! that is not the start of this dump is left as it was. Kept manifest records are compared
//! with this run's when the manifest must be finished (its digests are computed then anyway);
//! a whole kept manifest is vouched for by the identity's change-set digest. The data of the
//! kept records is not read again: the source must not have changed since the dump began.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{open_data_source, write_records, Progress, SendOptions, StreamExtras};
use crate::error::{Error, IoContext, Result};
use crate::extent::Extent;
use crate::source::ChangeSet;
use crate::stream::manifest::StreamIdentity;
use crate::stream::{
    v4, Continuation, Format, Record, StreamError, StreamReader, StreamTotals, StreamWriter,
    WriterOptions,
};

/// What a resume did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeReport {
    /// The file already held the whole stream, verified: nothing was written.
    pub complete: bool,
    /// Bytes of the file kept: its valid start.
    pub kept_bytes: u64,
    /// Complete records kept (of every type).
    pub kept_records: u64,
    /// Bytes after those that were cut off (a record cut short or damaged).
    pub dropped_bytes: u64,
    /// Records written after the kept ones, the end record included.
    pub appended_records: u64,
    pub appended_bytes: u64,
    /// The whole stream's counts.
    pub totals: StreamTotals,
}

fn refuse(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{}: {why}; the file is left as it was",
        path.display()
    ))
}

/// Whether a kept identity is this run's: the same source and change set (when and by which
/// version it was made may differ).
fn same_identity(kept: &StreamIdentity, ours: &StreamIdentity) -> std::result::Result<(), String> {
    match (&kept.changes, &ours.changes) {
        (Some(k), Some(o)) if k != o => {
            return Err(format!(
                "its change set (digest {k}) is not this run's ({o}): the snapshot changed, or it is another dump"
            ))
        }
        (None, Some(_)) => {
            return Err("it has no manifest (written with --no-check) and this run has one".into())
        }
        (Some(_), None) => {
            return Err("it has a manifest and this run has none (--no-check, or no snapshot contents to read)".into())
        }
        _ => {}
    }
    if kept.kind != ours.kind
        || kept.origin != ours.origin
        || kept.snapshot != ours.snapshot
        || kept.thin_ids != ours.thin_ids
    {
        return Err(format!(
            "it was made from another source ({})",
            String::from_utf8_lossy(&kept.to_json())
        ));
    }
    Ok(())
}

/// Where the file stops being the start of this dump, and what it holds up to there.
struct Scan {
    /// The whole stream is there, verified.
    complete: bool,
    /// Where to carry on: after the header or the last good record. `None` when not even the
    /// header is whole (the file is a prefix of it, or empty): everything is written anew.
    resume: Option<Continuation>,
    kept_records: u64,
    /// The identity record was kept.
    identity: bool,
    /// BLAKE3 of each kept manifest record's payload.
    manifest: Vec<[u8; 32]>,
    manifest_complete: bool,
    /// Data and zero records kept: the first this many pieces.
    pieces_done: usize,
}

/// Reads `file` from its start and compares it with this run's stream.
fn scan(
    path: &Path,
    file: &File,
    header: &[u8],
    wopts: &WriterOptions,
    identity: Option<&StreamIdentity>,
    with_manifest: bool,
    pieces: &[Extent],
) -> Result<Scan> {
    let len = file
        .metadata()
        .ctx(|| format!("{}: cannot stat", path.display()))?
        .len();
    let mut scan = Scan {
        complete: false,
        resume: None,
        kept_records: 0,
        identity: false,
        manifest: Vec::new(),
        manifest_complete: false,
        pieces_done: 0,
    };
    let read_error = |e: std::io::Error| Error::io(format!("{}: cannot read", path.display()), e);
    // The header first: byte for byte this run's, or a start of it.
    let mut start = vec![0u8; header.len().min(len as usize)];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut start, 0).map_err(read_error)?;
    if start[..] != header[..start.len()] {
        let why = match StreamReader::open(&start[..]) {
            Ok(r) if r.info().format == Format::V4 => {
                let i = r.info();
                let ours = (
                    wopts.source_bytes,
                    wopts.chunk_bytes,
                    wopts.compress.is_some(),
                );
                let theirs = (
                    i.source_bytes.unwrap_or(0),
                    i.chunk_bytes.unwrap_or(0),
                    i.compressed,
                );
                if i.snapback {
                    "it is a snapback, not a dump".to_string()
                } else if theirs.2 != ours.2 {
                    format!(
                        "it was written {} --compress and this run {}",
                        if theirs.2 { "with" } else { "without" },
                        if ours.2 { "has it" } else { "has not" }
                    )
                } else {
                    format!(
                        "its header is of a {}-byte volume in {}-byte chunks, this run's of {} in {}",
                        theirs.0, theirs.1, ours.0, ours.1
                    )
                }
            }
            Ok(_) => "it is a format 3 stream (only format 4 dumps can be resumed)".to_string(),
            Err(_) => "it does not start as this run's format 4 stream does".to_string(),
        };
        return Err(refuse(path, format!("not the start of this dump: {why}")));
    }
    if start.len() < header.len() {
        return Ok(scan);
    }
    let mut reader = StreamReader::open(BufReader::with_capacity(1 << 20, file))?;
    scan.resume = reader.continuation();
    loop {
        let at = reader.position();
        let record = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => {
                scan.complete = true;
                break;
            }
            // The cut: a record cut short, or damaged (a crash can leave zeros or garbage).
            Err(StreamError::Corrupt(_) | StreamError::Unsupported(_)) => break,
            Err(StreamError::Io(e)) => return Err(read_error(e)),
            Err(e) => return Err(e.into()),
        };
        let mismatch = |why: String| refuse(path, format!("not the start of this dump: {why}"));
        match record {
            Record::Identity(json) => {
                let kept = StreamIdentity::from_json(json).map_err(StreamError::Corrupt)?;
                match identity {
                    Some(ours) => same_identity(&kept, ours).map_err(mismatch)?,
                    None => {
                        return Err(mismatch(
                            "it has an identity record and this run has none".into(),
                        ))
                    }
                }
                scan.identity = true;
            }
            Record::Manifest(payload) => {
                if !with_manifest {
                    return Err(mismatch(
                        "it has a manifest and this run has none (--no-check, or no snapshot contents to read)".into(),
                    ));
                }
                scan.manifest_complete = crate::stream::manifest::parse(payload)
                    .map_err(StreamError::Corrupt)?
                    .last;
                scan.manifest.push(*blake3::hash(payload).as_bytes());
            }
            Record::Resolution(_) => {
                return Err(mismatch(format!(
                    "it holds a session's resolution record at stream byte {at}"
                )))
            }
            Record::Data { offset, data } => {
                let kept = Extent::data(offset, data.len() as u64);
                check_piece(&mut scan, &kept, at, identity, with_manifest, pieces)
                    .map_err(mismatch)?;
            }
            Record::Zero { offset, len } => {
                let kept = Extent::zero(offset, len);
                check_piece(&mut scan, &kept, at, identity, with_manifest, pieces)
                    .map_err(mismatch)?;
            }
        }
        scan.kept_records += 1;
        scan.resume = reader.continuation();
    }
    if identity.is_some() && !scan.identity && scan.kept_records > 0 {
        return Err(refuse(
            path,
            "not the start of this dump: it has no identity record and this run has one",
        ));
    }
    if scan.complete && scan.pieces_done != pieces.len() {
        return Err(refuse(
            path,
            format!(
                "not this dump: it is a whole stream of {} ranges, this run has {}",
                scan.pieces_done,
                pieces.len()
            ),
        ));
    }
    Ok(scan)
}

/// A kept data or zero record must be this run's next piece.
fn check_piece(
    scan: &mut Scan,
    kept: &Extent,
    at: u64,
    identity: Option<&StreamIdentity>,
    with_manifest: bool,
    pieces: &[Extent],
) -> std::result::Result<(), String> {
    if scan.kept_records == 0 && identity.is_some() {
        return Err("it has no identity record and this run has one".into());
    }
    if with_manifest && !scan.manifest_complete {
        return Err("it has no manifest (written with --no-check) and this run has one".into());
    }
    match pieces.get(scan.pieces_done) {
        Some(p) if p == kept => {
            scan.pieces_done += 1;
            Ok(())
        }
        Some(p) => Err(format!(
            "its {} record at stream byte {at} covers {}+{}, this run's covers {}+{} ({})",
            kept.kind, kept.offset, kept.len, p.offset, p.len, p.kind
        )),
        None => Err(format!(
            "its {} record at stream byte {at} is past the last range of this run",
            kept.kind
        )),
    }
}

/// Checks that `path` is a regular file and opens it for reading and writing (never creating
/// or truncating it), locked against another resume (which is waited for: the file is then
/// whole, or cut where that one stopped).
fn open_dump(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).ctx(|| format!("{}: cannot stat", path.display()))?;
    if !meta.is_file() {
        return Err(refuse(
            path,
            "not a regular file (--resume finishes a --stdout dump in a file)",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx(|| format!("{}: cannot open for reading and writing", path.display()))?;
    let opened = file
        .metadata()
        .ctx(|| format!("{}: cannot stat", path.display()))?;
    if !opened.is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev() {
        return Err(refuse(path, "it was replaced while being opened"));
    }
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(format!("{}: cannot lock", path.display()), e.into()))?;
    Ok(file)
}

/// Finishes the dump of `changes` (data read from `source`) in the file at `path`: keeps its
/// valid start if it is the start of this dump, and writes the rest. `extras` are those the
/// dump was made with (the identity; the prior contents for the manifest); a session is
/// refused.
pub fn resume_dump(
    path: &Path,
    changes: &ChangeSet,
    source: &Path,
    opts: &SendOptions,
    progress: Progress<'_>,
    extras: StreamExtras<'_, '_>,
) -> Result<ResumeReport> {
    if opts.format != Format::V4 {
        return Err(Error::Usage(
            "--resume needs format 4: a format 3 dump has no checksums to tell where it was cut"
                .into(),
        ));
    }
    if extras.session.is_some() {
        return Err(Error::Invalid(
            "a session cannot be resumed into a file".into(),
        ));
    }
    let file = open_dump(path)?;
    let (dev, pieces) = open_data_source(source, changes)?;
    let wopts = WriterOptions {
        format: Format::V4,
        source_bytes: changes.volume_bytes,
        chunk_bytes: changes.chunk_bytes,
        compress: opts.compress,
        snapback: false,
    };
    let mut header = v4::HANDSHAKE.to_vec();
    header.extend_from_slice(&v4::encode_header(
        wopts.source_bytes,
        wopts.chunk_bytes,
        wopts.compress.is_some(),
        false,
    ));
    let identity = extras
        .identity
        .as_ref()
        .map(|id| super::identity_for(id, &pieces, extras.prior.is_some()));
    let prior = extras.prior;
    let scan = scan(
        path,
        &file,
        &header,
        &wopts,
        identity.as_ref(),
        prior.is_some(),
        &pieces,
    )?;
    let file_len = file
        .metadata()
        .ctx(|| format!("{}: cannot stat", path.display()))?
        .len();
    if scan.complete {
        return Ok(ResumeReport {
            complete: true,
            kept_bytes: file_len,
            kept_records: scan.kept_records,
            dropped_bytes: 0,
            appended_records: 0,
            appended_bytes: 0,
            totals: StreamTotals {
                wire_bytes: file_len,
                ..scan.resume.map(|c| c.totals).unwrap_or_default()
            },
        });
    }
    let kept_bytes = scan.resume.as_ref().map_or(0, |c| c.totals.wire_bytes);
    // The writer is made (and the file cut back) at the first byte to write, so that a refusal
    // before it leaves the file as it was.
    let mut writer: Option<StreamWriter<&File>> = None;
    let mut appended_records = 0u64;
    let start_writing = || -> Result<StreamWriter<&File>> {
        file.set_len(kept_bytes)
            .ctx(|| format!("{}: cannot truncate", path.display()))?;
        (&file)
            .seek(SeekFrom::Start(kept_bytes))
            .ctx(|| format!("{}: cannot seek", path.display()))?;
        let w = match &scan.resume {
            Some(c) => StreamWriter::continue_after(&file, &wopts, c.clone())?,
            None => StreamWriter::new(&file, &wopts)?,
        };
        Ok(w)
    };
    if scan.resume.is_none() || (identity.is_some() && !scan.identity) {
        let mut w = start_writing()?;
        if let Some(id) = &identity {
            w.identity(id)?;
            appended_records += 1;
        }
        writer = Some(w);
    }
    if let Some(prior) = prior.filter(|_| !scan.manifest_complete) {
        let mut index = 0usize;
        super::manifest::manifest_payloads(&pieces, prior, &mut |payload| {
            if let Some(kept) = scan.manifest.get(index) {
                if blake3::hash(payload).as_bytes() != kept {
                    return Err(refuse(
                        path,
                        format!(
                            "not the start of this dump: its manifest record {} differs from this run's (the snapshot's contents changed)",
                            index + 1
                        ),
                    ));
                }
            } else {
                if writer.is_none() {
                    writer = Some(start_writing()?);
                }
                writer.as_mut().expect("made above").manifest(payload)?;
                appended_records += 1;
            }
            index += 1;
            Ok(())
        })?;
    }
    let writer = match writer {
        Some(w) => w,
        None => start_writing()?,
    };
    let rest = &pieces[scan.pieces_done..];
    let (_, totals) = write_records(
        writer,
        &dev,
        source,
        rest,
        opts,
        progress,
        super::reads::read_gap(),
    )?;
    file.sync_all()
        .ctx(|| format!("{}: cannot sync", path.display()))?;
    Ok(ResumeReport {
        complete: false,
        kept_bytes,
        kept_records: scan.kept_records,
        dropped_bytes: file_len - kept_bytes,
        // The data and zero records written, and the end record.
        appended_records: appended_records + totals.records - scan.pieces_done as u64 + 1,
        appended_bytes: totals.wire_bytes - kept_bytes,
        totals,
    })
}
