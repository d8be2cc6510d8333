//! Looking into a change stream or snapback without applying it (`lvmsync info`): what its
//! header and identity say, what it holds, and whether it is whole.
//!
//! The stream is read once, front to back, and verified as an apply would verify it: format 4
//! record checksums, order, the end record's counts and stream digest, the identity's
//! change-set digest against the manifest, and data and zero records against the manifest's
//! entries. A snapback cut short by a crash is judged by the rule `--apply` uses
//! ([`StreamReader::snapback_cut`]). Memory: the reader's buffers, and 16 bytes per manifest
//! entry (as the apply's check keeps).

use std::io::Read;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::extent::ExtentKind;
use crate::stream::manifest::{self, ChangesDigest, StreamIdentity};
use crate::stream::{v4, Format, Record, SnapbackCut, StreamError, StreamInfo, StreamReader};

/// How a stream that was read whole ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// Format 4: a valid end record, its counts and stream digest verified, then end of input.
    Verified,
    /// Format 3: end of input on a record boundary (the format has nothing to verify).
    Eof,
    /// A snapback cut short by a crash of the apply that wrote it: applying it restores every
    /// range it recorded.
    InterruptedSnapback,
}

/// The byte range of the volume between the first byte and the end of the last one that the
/// data and zero records cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// What a stream holds (see docs/stream-format.md, "lvmsync info", for the JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// 3 or 4.
    pub format: u32,
    pub compressed: bool,
    pub snapback: bool,
    /// The header's source size (format 4).
    pub volume_bytes: Option<u64>,
    /// The header's chunk size (format 4).
    pub chunk_bytes: Option<u64>,
    pub identity: Option<StreamIdentity>,
    pub data_records: u64,
    pub data_bytes: u64,
    pub zero_records: u64,
    pub zero_bytes: u64,
    pub manifest_records: u64,
    pub manifest_entries: u64,
    /// Prior-contents digests in the manifest, one per block.
    pub manifest_blocks: u64,
    /// The manifest's digest block size.
    pub block_bytes: Option<u64>,
    pub resolution_records: u64,
    /// Complete records of every type (the end record not counted).
    pub records: u64,
    pub range: Option<Range>,
    /// Bytes of the stream read: all of it, or up to the cut of an interrupted snapback.
    pub stream_bytes: u64,
    pub ending: Ending,
    /// An interrupted snapback: the stream byte where its last complete record ends.
    pub interrupted_at: Option<u64>,
}

impl Inspection {
    fn new(info: &StreamInfo) -> Self {
        Inspection {
            format: match info.format {
                Format::V3 => 3,
                Format::V4 => 4,
            },
            compressed: info.compressed,
            snapback: info.snapback,
            volume_bytes: info.source_bytes,
            chunk_bytes: info.chunk_bytes,
            identity: None,
            data_records: 0,
            data_bytes: 0,
            zero_records: 0,
            zero_bytes: 0,
            manifest_records: 0,
            manifest_entries: 0,
            manifest_blocks: 0,
            block_bytes: None,
            resolution_records: 0,
            records: 0,
            range: None,
            stream_bytes: 0,
            ending: Ending::Eof,
            interrupted_at: None,
        }
    }

    fn cover(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        self.range = Some(match self.range {
            None => Range { start: offset, end },
            Some(r) => Range {
                start: r.start.min(offset),
                end: r.end.max(end),
            },
        });
    }

    /// The whole inspection as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the inspection serialises")
    }
}

/// One manifest entry, as much as matching records against it takes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    kind: ExtentKind,
}

/// The manifest read so far, and the data and zero records matched against it.
#[derive(Default)]
struct ManifestCheck {
    entries: Vec<Entry>,
    changes: ChangesDigest,
    /// The next entry a data or zero record must match.
    next: usize,
}

fn corrupt(msg: String) -> Error {
    StreamError::Corrupt(msg).into()
}

/// Reads the whole stream from `input` and verifies it (see the module doc). A damaged or
/// truncated stream is an error that names the stream byte where it is.
pub fn inspect<R: Read>(input: R) -> Result<Inspection> {
    let mut reader = StreamReader::open(input)?;
    let mut ins = Inspection::new(reader.info());
    let mut manifest = ManifestCheck::default();
    let mut identity_at = 0;
    let mut at;
    loop {
        at = reader.position();
        let record = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => match reader.snapback_cut(at, &e) {
                Ok(SnapbackCut::Interrupted) => {
                    ins.ending = Ending::InterruptedSnapback;
                    ins.interrupted_at = Some(at);
                    ins.stream_bytes = at;
                    return Ok(ins);
                }
                Ok(SnapbackCut::Damaged) => {
                    return Err(corrupt(format!(
                        "{e}; more than {} bytes follow, more than an interrupted apply leaves: the snapback is damaged",
                        v4::MAX_SNAPBACK_TAIL
                    )))
                }
                Ok(SnapbackCut::NotACut) => return Err(e.into()),
                Err(io) => return Err(StreamError::Io(io).into()),
            },
        };
        ins.records += 1;
        match record {
            Record::Identity(json) => {
                identity_at = at;
                ins.identity = Some(StreamIdentity::from_json(json).map_err(StreamError::Corrupt)?);
            }
            Record::Manifest(payload) => {
                // The reader checked its structure and order already.
                let parsed = manifest::parse(payload).map_err(StreamError::Corrupt)?;
                ins.manifest_records += 1;
                ins.block_bytes = Some(parsed.block);
                for e in &parsed.entries {
                    ins.manifest_entries += 1;
                    ins.manifest_blocks += e.blocks() as u64;
                    manifest.changes.push(&e.extent);
                    manifest.entries.push(Entry {
                        offset: e.extent.offset,
                        len: e.extent.len as u32,
                        kind: e.extent.kind,
                    });
                }
                if parsed.last {
                    check_changes_digest(&ins, &manifest, identity_at)?;
                }
            }
            Record::Resolution(_) => ins.resolution_records += 1,
            Record::Data { offset, data } => {
                let len = data.len() as u64;
                match_entry(&ins, &mut manifest, at, offset, len, ExtentKind::Data)?;
                ins.data_records += 1;
                ins.data_bytes += len;
                ins.cover(offset, len);
            }
            Record::Zero { offset, len } => {
                match_entry(&ins, &mut manifest, at, offset, len, ExtentKind::Zero)?;
                ins.zero_records += 1;
                ins.zero_bytes += len;
                ins.cover(offset, len);
            }
        }
    }
    ins.ending = match ins.format {
        3 => Ending::Eof,
        _ => Ending::Verified,
    };
    ins.stream_bytes = reader.totals().wire_bytes;
    // A stream sent in a session (it has resolution records) carries only the entries the
    // receiver asked for; any other carries every entry.
    if ins.resolution_records == 0 {
        if let Some(e) = manifest.entries.get(manifest.next) {
            return Err(corrupt(format!(
                "the end record at stream byte {at} comes before the manifest's range at byte {}",
                e.offset
            )));
        }
    }
    Ok(ins)
}

/// The identity's change-set digest must be the manifest's.
fn check_changes_digest(
    ins: &Inspection,
    manifest: &ManifestCheck,
    identity_at: u64,
) -> Result<()> {
    let claimed = ins.identity.as_ref().and_then(|i| i.changes.as_deref());
    match claimed {
        Some(c) if c != manifest.changes.hex() => Err(corrupt(format!(
            "the identity record at stream byte {identity_at} gives a change-set digest that does not match the manifest"
        ))),
        _ => Ok(()),
    }
}

/// A data or zero record must be the manifest's next entry (with the same offset, length and
/// kind), or in a session's stream a later one.
fn match_entry(
    ins: &Inspection,
    manifest: &mut ManifestCheck,
    at: u64,
    offset: u64,
    len: u64,
    kind: ExtentKind,
) -> Result<()> {
    if ins.manifest_records == 0 {
        return Ok(());
    }
    let subset = ins.resolution_records > 0;
    loop {
        let Some(e) = manifest.entries.get(manifest.next) else {
            return Err(corrupt(format!(
                "{kind} record at stream byte {at} (byte {offset} of the volume) is not in the manifest"
            )));
        };
        manifest.next += 1;
        if e.offset == offset {
            if u64::from(e.len) != len || e.kind != kind {
                return Err(corrupt(format!(
                    "{kind} record at stream byte {at} does not match the manifest's range at byte {offset} ({} bytes of {})",
                    e.len, e.kind
                )));
            }
            return Ok(());
        }
        if !subset || e.offset > offset {
            return Err(corrupt(format!(
                "{kind} record at stream byte {at} is for byte {offset} of the volume, the manifest's next range is at byte {}",
                e.offset
            )));
        }
    }
}

/// `n` and the noun, in the plural (`noun` + s) unless `n` is 1.
fn count(n: u64, noun: &str) -> String {
    counted(n, noun, &format!("{noun}s"))
}

fn counted(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A byte count, exact, with its size in binary units when that says more.
fn bytes(n: u64) -> String {
    if n < 1024 {
        count(n, "byte")
    } else {
        format!("{n} bytes ({})", indicatif::HumanBytes(n))
    }
}

fn volume(v: &manifest::VolumeIdentity) -> String {
    let name = v.name.as_deref().unwrap_or("(no name)");
    match &v.uuid {
        Some(uuid) => format!("{name} (uuid {uuid})"),
        None => name.to_string(),
    }
}

fn describe_identity(id: &StreamIdentity) -> String {
    let mut parts = Vec::new();
    if !id.kind.is_empty() {
        parts.push(format!("kind {}", id.kind));
    }
    if let Some(o) = &id.origin {
        parts.push(format!("origin {}", volume(o)));
    }
    if let Some(s) = &id.snapshot {
        parts.push(format!("snapshot {}", volume(s)));
    }
    if let Some((snap, origin)) = id.thin_ids {
        parts.push(format!("thin ids {snap}:{origin}"));
    }
    if let Some(t) = id.created {
        let when = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t));
        match when {
            Some(when) => parts.push(format!(
                "created {}",
                humantime::format_rfc3339_seconds(when)
            )),
            None => parts.push(format!("created {t}")),
        }
    }
    if !id.lvmsync.is_empty() {
        parts.push(format!("lvmsync {}", id.lvmsync));
    }
    if let Some(c) = &id.changes {
        parts.push(format!("changes {c}"));
    }
    if let Some(c) = &id.for_changes {
        parts.push(format!("for changes {c}"));
    }
    if parts.is_empty() {
        "identity: empty".into()
    } else {
        format!("identity: {}", parts.join("; "))
    }
}

/// What `info` says of a format 3 stream: it has none of format 4's safeguards.
const FORMAT3_LINE: &str = "format 3: no checksums, no identity, no manifest (the destination is not checked before it is written)";

impl Inspection {
    /// The inspection as lines of text, for people.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.format == 3 {
            out.push(FORMAT3_LINE.to_string());
        } else {
            let mut flags = vec![if self.compressed {
                "compressed"
            } else {
                "uncompressed"
            }];
            if self.snapback {
                flags.push("snapback");
            }
            out.push(format!("format 4: {}", flags.join(", ")));
            out.push(match &self.identity {
                Some(id) => describe_identity(id),
                None => "identity: none".into(),
            });
            if let (Some(v), Some(c)) = (self.volume_bytes, self.chunk_bytes) {
                out.push(format!("volume: {}; chunk size {}", bytes(v), bytes(c)));
            }
            out.push(match (self.manifest_records, self.block_bytes) {
                (0, _) | (_, None) => {
                    "manifest: none (the destination is not checked before it is written)".into()
                }
                (n, Some(block)) => format!(
                    "manifest: {}, {}, {} of {}",
                    count(n, "record"),
                    counted(self.manifest_entries, "entry", "entries"),
                    count(self.manifest_blocks, "block"),
                    bytes(block)
                ),
            });
        }
        out.push(format!(
            "data: {}, {}",
            count(self.data_records, "record"),
            bytes(self.data_bytes)
        ));
        if self.format == 4 {
            out.push(format!(
                "zero: {}, {}",
                count(self.zero_records, "record"),
                bytes(self.zero_bytes)
            ));
            out.push(format!(
                "resolution: {}",
                count(self.resolution_records, "record")
            ));
        }
        out.push(match self.range {
            Some(r) => format!(
                "range: bytes {} to {} ({})",
                r.start,
                r.end,
                indicatif::HumanBytes(r.end - r.start)
            ),
            None => "range: none (no data or zero record)".into(),
        });
        out.push(match self.ending {
            Ending::Verified => format!(
                "stream: {}; valid: every record checksum, the stream digest and the end record verified",
                bytes(self.stream_bytes)
            ),
            Ending::Eof => format!(
                "stream: {}; parses to the end (a format 3 stream cut between two records cannot be told from a whole one)",
                bytes(self.stream_bytes)
            ),
            Ending::InterruptedSnapback => format!(
                "stream: snapback ends at byte {} without an end record (the apply that wrote it was interrupted); it holds {}, every checksum verified; applying it restores every recorded range",
                self.interrupted_at.unwrap_or(self.stream_bytes),
                count(self.records, "complete record")
            ),
        });
        out
    }
}
