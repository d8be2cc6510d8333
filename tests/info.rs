//! `lvmsync info`: streams and snapbacks made by lvmsync described and verified whole, without
//! being applied; damaged and truncated ones refused with the byte where they break.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use lvmsync::extent::Extent;
use lvmsync::inspect::{inspect, Ending};
use lvmsync::stream::manifest::{block_digest, ManifestBuilder, StreamIdentity, DIGEST_BLOCK};
use lvmsync::stream::{Format, StreamReader, StreamWriter, WriterOptions};
use serde_json::Value;

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The classic fixture unpacked, and streams made from it by `lvmsync --stdout`.
struct Fixture(common::ClassicImages);

impl std::ops::Deref for Fixture {
    type Target = common::ClassicImages;
    fn deref(&self) -> &common::ClassicImages {
        &self.0
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture(common::ClassicImages::new())
    }

    /// `lvmsync --stdout --cow … --data-source …` with `extra` options, into a file.
    fn dump(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = lvmsync()
            .args(["-q", "--stdout", "--cow", p(&self.cow), "--data-source"])
            .arg(&self.after)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.path(name);
        std::fs::write(&path, out.stdout).unwrap();
        path
    }

    /// The changed ranges as the sender cuts them into records (1 MiB pieces).
    fn pieces(&self) -> Vec<Extent> {
        let out = lvmsync()
            .args(["changes", "--cow", p(&self.cow)])
            .output()
            .unwrap();
        let mut pieces = Vec::new();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let w: Vec<&str> = line.split(' ').collect();
            let (mut offset, len): (u64, u64) = (w[0].parse().unwrap(), w[1].parse().unwrap());
            let end = offset + len;
            while offset < end {
                let n = (end - offset).min(1 << 20);
                pieces.push(match w[2] {
                    "data" => Extent::data(offset, n),
                    _ => Extent::zero(offset, n),
                });
                offset += n;
            }
        }
        pieces
    }
}

fn info(args: &[&str]) -> Output {
    lvmsync().arg("info").args(args).output().unwrap()
}

fn json(path: &Path) -> Value {
    let out = info(&["--json", p(path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(&text).unwrap()
}

fn text(path: &Path) -> String {
    let out = info(&[p(path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    String::from_utf8(out.stdout).unwrap()
}

/// A refusal: exit status 1 and one line on standard error containing `needle`.
fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "want exit status 1: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(out.stdout.is_empty());
}

/// The stream positions where each record starts, and the end of the last one.
fn record_starts(bytes: &[u8]) -> Vec<u64> {
    let mut r = StreamReader::open(bytes).unwrap();
    let mut starts = vec![r.position()];
    while r.next_record().unwrap().is_some() {
        starts.push(r.position());
    }
    starts
}

#[test]
fn a_dump_with_a_manifest_is_described_and_verified() {
    let f = Fixture::new();
    let stream = f.dump("s4", &[]);
    let pieces = f.pieces();
    let len = std::fs::metadata(&stream).unwrap().len();
    let v = json(&stream);
    assert_eq!(v["format"], 4);
    assert_eq!(v["compressed"], false);
    assert_eq!(v["snapback"], false);
    assert_eq!(v["volume_bytes"], 64 << 20);
    assert_eq!(v["chunk_bytes"], 4096);
    assert_eq!(v["identity"]["kind"], "cow-image");
    assert_eq!(v["identity"]["lvmsync"], env!("CARGO_PKG_VERSION"));
    assert!(v["identity"]["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["identity"]["changes"].as_str().unwrap().len(), 64);
    let bytes: u64 = pieces.iter().map(|e| e.len).sum();
    assert_eq!(v["manifest_entries"], pieces.len());
    assert_eq!(v["manifest_records"], 1);
    assert_eq!(v["block_bytes"], 4096);
    assert_eq!(
        v["manifest_blocks"],
        pieces.iter().map(|e| e.len.div_ceil(4096)).sum::<u64>()
    );
    assert_eq!(
        v["data_records"].as_u64().unwrap() + v["zero_records"].as_u64().unwrap(),
        pieces.len() as u64
    );
    assert_eq!(
        v["data_bytes"].as_u64().unwrap() + v["zero_bytes"].as_u64().unwrap(),
        bytes
    );
    assert_eq!(v["resolution_records"], 0);
    assert_eq!(v["records"], pieces.len() + 2);
    assert_eq!(v["range"]["start"], pieces[0].offset);
    assert_eq!(v["range"]["end"], pieces.last().unwrap().end());
    assert_eq!(v["stream_bytes"], len);
    assert_eq!(v["ending"], "verified");
    assert_eq!(v["interrupted_at"], Value::Null);

    let t = text(&stream);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "format 4: uncompressed");
    assert!(
        lines[1].starts_with("identity: kind cow-image; created 20"),
        "{t}"
    );
    assert!(t.contains(&format!(
        "manifest: 1 record, {} entries, {} blocks of 4096 bytes",
        pieces.len(),
        v["manifest_blocks"]
    )));
    assert!(t.contains(&format!("stream: {len} bytes")), "{t}");
    assert!(
        t.contains("valid: every record checksum, the stream digest and the end record verified")
    );

    // The same from standard input.
    let out = lvmsync()
        .args(["info", "--json", "-"])
        .pipe_stdin(&stream)
        .unwrap()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), v);
}

#[test]
fn compressed_and_format_3_dumps() {
    let f = Fixture::new();
    let z = f.dump("z", &["-z"]);
    let v = json(&z);
    assert_eq!(v["compressed"], true);
    assert_eq!(v["ending"], "verified");
    assert!(v["stream_bytes"].as_u64().unwrap() < v["data_bytes"].as_u64().unwrap());
    assert!(text(&z).starts_with("format 4: compressed\n"));

    let v3 = f.dump("v3", &["--format", "3"]);
    let t = text(&v3);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0],
        "format 3: no checksums, no identity, no manifest (the destination is not checked before it is written)"
    );
    assert!(t.contains("parses to the end"), "{t}");
    let v = json(&v3);
    assert_eq!(v["format"], 3);
    assert_eq!(v["identity"], Value::Null);
    assert_eq!(v["volume_bytes"], Value::Null);
    assert_eq!(v["ending"], "eof");
    assert_eq!(v["data_records"], f.pieces().len());
    // A format 3 stream cut inside a record is refused.
    let bytes = std::fs::read(&v3).unwrap();
    let cut = f.path("v3cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    refused(&info(&[p(&cut)]), "stream ends inside a record at byte");
}

/// A snapback, whole and cut short as a crash leaves it: a cut one is valid (exit 0), and says
/// where it ends and how many records it holds.
#[test]
fn snapbacks_whole_and_cut_short() {
    let f = Fixture::new();
    let stream = f.dump("s4", &[]);
    let dest = f.path("dest");
    common::copy(&f.before, &dest);
    let sb = f.path("sb");
    let out = lvmsync()
        .args(["--apply", p(&stream), p(&dest), "-b", p(&sb)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = json(&sb);
    let s = json(&stream);
    assert_eq!(v["snapback"], true);
    assert_eq!(v["identity"]["kind"], "snapback");
    assert_eq!(v["identity"]["for_changes"], s["identity"]["changes"]);
    assert_eq!(v["ending"], "verified");
    assert_eq!(
        v["data_bytes"].as_u64().unwrap(),
        s["data_bytes"].as_u64().unwrap() + s["zero_bytes"].as_u64().unwrap()
    );
    assert!(text(&sb).starts_with("format 4: uncompressed, snapback\n"));

    let bytes = std::fs::read(&sb).unwrap();
    let starts = record_starts(&bytes);
    // Cut inside each data record, and at its start (the end record missing).
    for (k, &start) in starts.iter().enumerate().take(starts.len() - 1).skip(1) {
        for cut_at in [start, start + 30] {
            let cut = f.path("sbcut");
            std::fs::write(&cut, &bytes[..cut_at as usize]).unwrap();
            let v = json(&cut);
            assert_eq!(v["ending"], "interrupted-snapback");
            assert_eq!(v["interrupted_at"], start);
            assert_eq!(v["records"], k as u64);
            let t = text(&cut);
            assert!(
                t.contains(&format!(
                    "snapback ends at byte {start} without an end record (the apply that wrote it was interrupted); it holds {k} complete record"
                )) && t.contains("applying it restores every recorded range"),
                "{t}"
            );
            // --apply takes it the same way.
            let out = lvmsync()
                .args(["--apply", p(&cut), p(&dest)])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
    }
    // More than an interrupted apply leaves after the last good record: damage, exit 1.
    let cut = f.path("sbcut");
    std::fs::write(&cut, &bytes[..starts[2] as usize + 30]).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    file.set_len(starts[2] + (65 << 20)).unwrap();
    refused(&info(&[p(&cut)]), "the snapback is damaged");
}

#[test]
fn damaged_and_truncated_streams_are_refused_with_the_byte() {
    let f = Fixture::new();
    let stream = f.dump("s4", &[]);
    let bytes = std::fs::read(&stream).unwrap();
    let starts = record_starts(&bytes);
    let bad = f.path("bad");
    // One byte of the payload of the third record (a data record).
    let mut damaged = bytes.clone();
    let at = starts[3] as usize + 28 + 100;
    damaged[at] ^= 0x20;
    std::fs::write(&bad, &damaged).unwrap();
    refused(
        &info(&[p(&bad)]),
        &format!(
            "{}: corrupt stream: record at stream byte {} has a bad checksum",
            p(&bad),
            starts[3]
        ),
    );
    refused(&info(&["--json", p(&bad)]), "has a bad checksum");
    // Cut at a record boundary: no end record.
    let last = starts[starts.len() - 2];
    std::fs::write(&bad, &bytes[..last as usize]).unwrap();
    refused(
        &info(&[p(&bad)]),
        &format!("stream ends at byte {last} without an end record"),
    );
    // Cut inside a record, and inside the header.
    std::fs::write(&bad, &bytes[..starts[2] as usize + 7]).unwrap();
    refused(
        &info(&[p(&bad)]),
        &format!(
            "stream ends inside a record at byte {} (the record starts at byte {})",
            starts[2] + 7,
            starts[2]
        ),
    );
    std::fs::write(&bad, &bytes[..30]).unwrap();
    refused(&info(&[p(&bad)]), "stream ends inside the format 4 header");
    // Not a stream at all, and a missing file.
    refused(&info(&[p(&f.before)]), "handshake failed at stream byte 0");
    refused(&info(&[p(&f.path("missing"))]), "cannot open the stream");
    // No file is a usage error.
    assert_eq!(info(&[]).status.code(), Some(2));
}

fn opts() -> WriterOptions {
    WriterOptions {
        format: Format::V4,
        source_bytes: 1 << 20,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    }
}

/// A stream with a manifest of `entries` (and an identity claiming `changes`), whose records
/// are `records`.
fn with_manifest(entries: &[Extent], changes: Option<String>, records: &[Extent]) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), &opts()).unwrap();
    w.identity(&StreamIdentity {
        kind: "test".into(),
        changes,
        ..Default::default()
    })
    .unwrap();
    let mut b = ManifestBuilder::new(DIGEST_BLOCK);
    for e in entries {
        let n = e.len.div_ceil(DIGEST_BLOCK) as usize;
        b.push(*e, &vec![block_digest(b"x"); n]).unwrap();
    }
    w.manifest(&b.finish()).unwrap();
    for r in records {
        match r.kind {
            lvmsync::extent::ExtentKind::Data => w.data(r.offset, &vec![7; r.len as usize]),
            lvmsync::extent::ExtentKind::Zero => w.zero(r.offset, r.len),
        }
        .unwrap();
    }
    w.finish().unwrap().0
}

fn changes_of(entries: &[Extent]) -> String {
    let mut d = lvmsync::stream::manifest::ChangesDigest::new();
    entries.iter().for_each(|e| d.push(e));
    d.hex()
}

/// What an apply refuses beyond the reader's rules, `info` refuses too: records that do not
/// follow the manifest, and an identity whose change-set digest is not the manifest's.
#[test]
fn records_must_follow_the_manifest() {
    let a = Extent::data(0, 4096);
    let b = Extent::zero(8192, 4096);
    let entries = [a, b];
    let good = with_manifest(&entries, Some(changes_of(&entries)), &entries);
    let ins = inspect(&good[..]).unwrap();
    assert_eq!(ins.ending, Ending::Verified);
    assert_eq!((ins.data_records, ins.zero_records), (1, 1));
    let cases: [(Vec<u8>, &str); 5] = [
        (
            with_manifest(&entries, None, &[b]),
            "is for byte 8192 of the volume, the manifest's next range is at byte 0",
        ),
        (
            with_manifest(&entries, None, &[a, Extent::data(8192, 4096)]),
            "does not match the manifest's range at byte 8192",
        ),
        (
            with_manifest(&entries, None, &[a]),
            "comes before the manifest's range at byte 8192",
        ),
        (
            with_manifest(&[a], None, &[a, b]),
            "(byte 8192 of the volume) is not in the manifest",
        ),
        (
            with_manifest(&entries, Some(changes_of(&[a])), &entries),
            "gives a change-set digest that does not match the manifest",
        ),
    ];
    for (stream, want) in cases {
        let err = inspect(&stream[..]).unwrap_err().to_string();
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(err.contains("at stream byte"), "{err}");
    }
}

/// A session's stream carries resolution records and only the entries the receiver asked for:
/// a subsequence of the manifest, in order.
#[test]
fn a_sessions_stream_may_skip_entries() {
    let entries = [
        Extent::data(0, 4096),
        Extent::data(8192, 4096),
        Extent::zero(16384, 4096),
    ];
    let session_stream = |records: &[Extent]| {
        let mut w = StreamWriter::new(Vec::new(), &opts()).unwrap();
        let mut b = ManifestBuilder::new(DIGEST_BLOCK);
        for e in &entries {
            b.push(*e, &[block_digest(b"x")]).unwrap();
        }
        w.manifest(&b.finish()).unwrap();
        let mut r = Vec::new();
        lvmsync::stream::manifest::push_resolution(&mut r, 8192, &[block_digest(b"y")]);
        w.resolution(&r).unwrap();
        for e in records {
            match e.kind {
                lvmsync::extent::ExtentKind::Data => w.data(e.offset, &vec![1; e.len as usize]),
                lvmsync::extent::ExtentKind::Zero => w.zero(e.offset, e.len),
            }
            .unwrap();
        }
        w.finish().unwrap().0
    };
    let ins = inspect(&session_stream(&[entries[0], entries[2]])[..]).unwrap();
    assert_eq!(ins.resolution_records, 1);
    assert_eq!((ins.data_records, ins.zero_records), (1, 1));
    assert!(inspect(&session_stream(&[])[..]).is_ok());
    let err = inspect(&session_stream(&[Extent::data(4096, 100)])[..])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is for byte 4096 of the volume, the manifest's next range is at byte 8192"),
        "{err}"
    );
}

/// The JSON fields are the ones docs/stream-format.md lists.
#[test]
fn json_fields_are_documented() {
    let doc = include_str!("../docs/stream-format.md");
    let start = doc.find("With `--json`").unwrap();
    let end = start + doc[start..].find("\n## ").unwrap();
    let mut documented: Vec<String> = doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap().to_string();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    let ins = inspect(&with_manifest(&[], None, &[])[..]).unwrap();
    let v: Value = serde_json::from_str(&ins.to_json()).unwrap();
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, documented);
}

/// A snapback whose records cover a huge volume (hand-made: it claims a volume of 4 EiB) is
/// verified without a bitmap of its size: with 1 MiB of temporary space, and with a record
/// over an exabyte.
#[test]
fn snapback_of_huge_ranges_needs_no_bitmap_of_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let _tmpfs = common::Mounted::tmpfs(&tmp, "1m");
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: 1 << 62,
        chunk_bytes: 4096,
        compress: None,
        snapback: true,
    };
    let mut w = StreamWriter::new(Vec::new(), &opts).unwrap();
    // 1 TiB (8192 pages of the bitmap of 4 KiB units), 1 EiB, and data between them.
    w.zero((1 << 30) + 4096, 1 << 40).unwrap();
    w.data(1 << 50, &[5u8; 4096]).unwrap();
    w.zero(1 << 60, 1 << 60).unwrap();
    let sb = dir.path().join("sb");
    std::fs::write(&sb, w.finish().unwrap().0).unwrap();
    let out = lvmsync()
        .args(["info", "--json", p(&sb)])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ending"], "verified");
    assert_eq!(v["zero_bytes"], (1u64 << 40) + (1 << 60));
}
