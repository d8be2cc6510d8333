//! Streams with a manifest: the destination is checked against the snapshot's contents before
//! anything is written; a destination that is not the snapshot's copy is refused, one that an
//! interrupted apply left half done is finished, and a snapback is complete before the first
//! write.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use lvmsync::apply::{apply_stream, apply_with, ApplyContext, ApplyOptions, Reopen};
use lvmsync::extent::{Extent, ExtentKind, ExtentList};
use lvmsync::send::{send_changes_with, SendOptions, StreamExtras};
use lvmsync::source::{ChangeSet, PriorSource};
use lvmsync::stream::manifest::StreamIdentity;

const SIZE: usize = 4 << 20;

/// A snapshot image, an origin with changes over it, and a destination that is the snapshot's
/// copy.
struct Case {
    dir: tempfile::TempDir,
    snapshot: Vec<u8>,
    origin: Vec<u8>,
    changes: ChangeSet,
}

impl Case {
    fn new(seed: u64) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = common::pattern(SIZE, seed);
        let mut origin = snapshot.clone();
        let extents = ExtentList::from_extents([
            Extent::data(0, 8192),
            Extent::data(65536, 3 << 20),
            Extent::zero((3 << 20) + 65536, 131072),
            Extent::data(SIZE as u64 - 4096, 4096),
        ]);
        let fresh = common::pattern(SIZE, seed ^ 0x55);
        for e in &extents {
            let r = e.offset as usize..e.end() as usize;
            match e.kind {
                ExtentKind::Data => origin[r.clone()].copy_from_slice(&fresh[r]),
                ExtentKind::Zero => origin[r].fill(0),
            }
        }
        let case = Case {
            dir,
            snapshot,
            origin,
            changes: ChangeSet {
                extents,
                chunk_bytes: 4096,
                volume_bytes: SIZE as u64,
            },
        };
        std::fs::write(case.path("snapshot"), &case.snapshot).unwrap();
        std::fs::write(case.path("origin"), &case.origin).unwrap();
        std::fs::write(case.path("dest"), &case.snapshot).unwrap();
        case
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A format 4 stream with a manifest read from the snapshot image.
    fn stream(&self) -> Vec<u8> {
        let prior = PriorSource::Device(self.path("snapshot"));
        let extras = StreamExtras {
            identity: Some(StreamIdentity {
                kind: "test".into(),
                ..Default::default()
            }),
            prior: Some(&prior),
            session: None,
        };
        let (stream, report) = send_changes_with(
            &self.changes,
            &self.path("origin"),
            Vec::new(),
            &SendOptions::default(),
            &|_| {},
            extras,
        )
        .unwrap();
        assert!(report.checked);
        stream
    }

    fn dest(&self) -> Vec<u8> {
        std::fs::read(self.path("dest")).unwrap()
    }

    fn set_dest(&self, contents: &[u8]) {
        std::fs::write(self.path("dest"), contents).unwrap();
    }

    /// The destination as an apply interrupted in the middle leaves it: the first `n` ranges
    /// written, and one 4 KiB block of the next.
    fn half_applied(&self, n: usize) -> Vec<u8> {
        let mut d = self.snapshot.clone();
        let pieces: Vec<Extent> = self.changes.extents.pieces(1 << 20).collect();
        for p in &pieces[..n] {
            let r = p.offset as usize..p.end() as usize;
            d[r.clone()].copy_from_slice(&self.origin[r]);
        }
        let p = pieces[n];
        let r = p.offset as usize..p.offset as usize + 4096;
        d[r.clone()].copy_from_slice(&self.origin[r]);
        d
    }
}

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_copy_of_the_snapshot_is_checked_and_synced() {
    let case = Case::new(1);
    let report = apply_stream(
        Cursor::new(case.stream()),
        &case.path("dest"),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert!(report.checked);
    assert_eq!(report.already_applied, 0);
    assert!(case.dest() == case.origin);
}

#[test]
fn a_destination_that_is_not_the_snapshots_copy_is_refused_before_any_write() {
    let case = Case::new(2);
    let stream = case.stream();
    let stream_path = case.path("stream");
    std::fs::write(&stream_path, &stream).unwrap();
    // One sector inside a changed range holds something else.
    let mut other = case.snapshot.clone();
    other[(2 << 20) + 512..(2 << 20) + 1024].fill(0xAB);
    case.set_dest(&other);
    for input in [p(&stream_path), "-"] {
        let out = lvmsync()
            .args(["--apply", input, p(&case.path("dest"))])
            .write_stdin(stream.clone())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input}: accepted");
        assert!(
            err.contains(&format!("at byte {}", 2 << 20)) && err.contains("nothing written"),
            "{input}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(case.dest() == other, "{input}: the destination was written");
    }
    // --force applies anyway.
    let out = lvmsync()
        .args(["--apply", p(&stream_path), p(&case.path("dest")), "--force"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(case.dest() == case.origin);
}

#[test]
fn an_interrupted_apply_is_finished_from_the_stream_file() {
    let case = Case::new(3);
    let stream_path = case.path("stream");
    std::fs::write(&stream_path, case.stream()).unwrap();
    case.set_dest(&case.half_applied(2));
    let out = lvmsync()
        .args(["--apply", p(&stream_path), p(&case.path("dest"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("2 ranges already held their new contents"),
        "{err}"
    );
    assert!(case.dest() == case.origin);
    // Applying it again changes nothing and says every range was there.
    let reopen = || -> std::io::Result<Box<dyn std::io::Read>> {
        Ok(Box::new(std::fs::File::open(&stream_path)?))
    };
    let report = apply_with(
        std::fs::File::open(&stream_path).unwrap(),
        &case.path("dest"),
        &ApplyOptions::default(),
        ApplyContext {
            session: None,
            reopen: Some(&reopen as Reopen<'_>),
        },
    )
    .unwrap();
    let ranges = case.changes.extents.pieces(1 << 20).count() as u64;
    assert_eq!(report.already_applied, ranges);
    assert!(case.dest() == case.origin);
}

/// A thin pool tracks changes in blocks of 64 KiB or more: a write of 4 KiB makes the whole
/// block a changed range, most of whose 4 KiB blocks hold the same in the snapshot and the
/// origin. Applied once, such a range holds its new contents, and applying again skips it.
#[test]
fn ranges_partly_unchanged_are_found_already_applied() {
    let mut case = Case::new(7);
    // Inside each range of data longer than a block, every other 4 KiB block is as in the
    // snapshot. (A range whose new contents are all the snapshot's is written again: nothing
    // tells it from one not yet written.)
    let partly = |e: &&Extent| e.kind == ExtentKind::Data && e.len > 4096;
    for e in case.changes.extents.iter().filter(partly) {
        for b in (e.offset..e.end()).step_by(8192) {
            let r = b as usize..b as usize + 4096;
            let same = case.snapshot[r.clone()].to_vec();
            case.origin[r].copy_from_slice(&same);
        }
    }
    std::fs::write(case.path("origin"), &case.origin).unwrap();
    let stream_path = case.path("stream");
    std::fs::write(&stream_path, case.stream()).unwrap();
    let ranges = case.changes.extents.pieces(1 << 20).count() as u64;
    let apply = || {
        let reopen = || -> std::io::Result<Box<dyn std::io::Read>> {
            Ok(Box::new(std::fs::File::open(&stream_path)?))
        };
        apply_with(
            std::fs::File::open(&stream_path).unwrap(),
            &case.path("dest"),
            &ApplyOptions::default(),
            ApplyContext {
                session: None,
                reopen: Some(&reopen as Reopen<'_>),
            },
        )
        .unwrap()
    };
    assert_eq!(apply().already_applied, 0);
    assert!(case.dest() == case.origin);
    assert_eq!(
        apply().already_applied,
        ranges,
        "every range holds its new contents"
    );
    assert!(case.dest() == case.origin);
    // Interrupted after two ranges: those two are skipped, the rest written.
    case.set_dest(&case.half_applied(2));
    assert_eq!(apply().already_applied, 2);
    assert!(case.dest() == case.origin);
}

#[test]
fn an_interrupted_apply_from_a_pipe_cannot_be_told_from_a_foreign_destination() {
    let case = Case::new(4);
    let stream = case.stream();
    let half = case.half_applied(1);
    case.set_dest(&half);
    let out = lvmsync()
        .args(["--apply", "-", p(&case.path("dest"))])
        .write_stdin(stream.clone())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot be told from a pipe"), "{err}");
    assert!(case.dest() == half);
    let out = lvmsync()
        .args(["--apply", "-", p(&case.path("dest")), "--force"])
        .write_stdin(stream)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(case.dest() == case.origin);
}

#[test]
fn the_snapback_is_whole_before_the_first_write_and_kept_on_resume() {
    let case = Case::new(5);
    let stream_path = case.path("stream");
    std::fs::write(&stream_path, case.stream()).unwrap();
    let sb = case.path("sb");
    // A refused apply leaves no snapback behind.
    let mut other = case.snapshot.clone();
    other[10..20].fill(1);
    case.set_dest(&other);
    let out = lvmsync()
        .args([
            "--apply",
            p(&stream_path),
            p(&case.path("dest")),
            "-b",
            p(&sb),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!sb.exists());
    assert!(
        std::fs::read_dir(case.dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".lvmsync")),
        "a temporary snapback was left behind"
    );
    // The first attempt wrote its snapback, then (as if interrupted) only part of the data.
    case.set_dest(&case.snapshot);
    let out = lvmsync()
        .args([
            "--apply",
            p(&stream_path),
            p(&case.path("dest")),
            "-b",
            p(&sb),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let first_snapback = std::fs::read(&sb).unwrap();
    case.set_dest(&case.half_applied(3));
    // The second attempt keeps it: it holds the destination from before the first one.
    let out = lvmsync()
        .args([
            "--apply",
            p(&stream_path),
            p(&case.path("dest")),
            "-b",
            p(&sb),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("kept the snapback"), "{err}");
    assert!(case.dest() == case.origin);
    assert!(std::fs::read(&sb).unwrap() == first_snapback);
    let out = lvmsync()
        .args(["--apply", p(&sb), p(&case.path("dest"))])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(case.dest() == case.snapshot);
    // A snapback of some other sync at that path is not overwritten without --force.
    let other_case = Case::new(6);
    std::fs::write(other_case.path("stream"), other_case.stream()).unwrap();
    let out = lvmsync()
        .args([
            "--apply",
            p(&other_case.path("stream")),
            p(&other_case.path("dest")),
            "-b",
            p(&sb),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("belongs to another sync"), "{err}");
    assert!(other_case.dest() == other_case.snapshot);
}

/// A resumed apply that writes a new snapback (the interrupted attempt kept its own elsewhere,
/// or none) cannot save the snapshot's contents of the ranges already applied: its snapback
/// restores the destination as this run found it. It says so, and which snapback to apply
/// first; the two, in that order, restore the destination as it was before the sync.
#[test]
fn a_second_snapback_of_a_resumed_apply_says_which_to_apply_first() {
    let case = Case::new(8);
    let stream_path = case.path("stream");
    std::fs::write(&stream_path, case.stream()).unwrap();
    let (first, second) = (case.path("first-sb"), case.path("second-sb"));
    // The first attempt wrote its snapback, then (as if interrupted) only part of the data.
    let out = lvmsync()
        .args(["--apply", p(&stream_path), p(&case.path("dest")), "-b"])
        .arg(&first)
        .output()
        .unwrap();
    assert!(out.status.success());
    let half = case.half_applied(2);
    case.set_dest(&half);
    let out = lvmsync()
        .args(["--apply", p(&stream_path), p(&case.path("dest")), "-b"])
        .arg(&second)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(case.dest() == case.origin);
    let note = err
        .lines()
        .find(|l| l.contains(p(&second)))
        .unwrap_or_else(|| panic!("no line names the new snapback: {err}"));
    assert!(
        note.contains("2 ranges") && note.contains("apply it first"),
        "{note}"
    );
    // Alone it restores the destination as this run found it, not as it was before the sync.
    let out = lvmsync()
        .args(["--apply", p(&second), p(&case.path("dest"))])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(case.dest() == half);
    let out = lvmsync()
        .args(["--apply", p(&first), p(&case.path("dest"))])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(case.dest() == case.snapshot);
    // No note when nothing was found applied.
    let third = case.path("third-sb");
    let out = lvmsync()
        .args(["--apply", p(&stream_path), p(&case.path("dest")), "-b"])
        .arg(&third)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("apply it first"), "{err}");
}

#[test]
fn a_local_sync_resumes_without_sending_what_arrived() {
    use lvmsync::transport::{Destination, ReceiverOptions, SendTarget};
    let case = Case::new(7);
    case.set_dest(&case.half_applied(2));
    let prior = PriorSource::Device(case.path("snapshot"));
    let dest = Destination::open(
        &SendTarget::Dest(p(&case.path("dest")).to_string()),
        &ReceiverOptions {
            session: true,
            ..ReceiverOptions::default()
        },
        lvmsync::msg::Verbosity::Quiet,
    )
    .unwrap();
    let report = dest
        .send(|out, session| {
            send_changes_with(
                &case.changes,
                &case.path("origin"),
                out,
                &SendOptions::default(),
                &|_| {},
                StreamExtras {
                    identity: None,
                    prior: Some(&prior),
                    session,
                },
            )
            .map(|(_, r)| r)
        })
        .unwrap();
    assert_eq!(report.already_applied, 2);
    let pieces: Vec<Extent> = case.changes.extents.pieces(1 << 20).collect();
    assert_eq!(
        report.totals.data_bytes + report.totals.zero_bytes,
        pieces[2..].iter().map(|p| p.len).sum::<u64>()
    );
    assert!(case.dest() == case.origin);
}

/// The receiver's Done message counts what it wrote: on a resumed session the sender sends
/// only the ranges still needed, and the skipped ones are not subtracted from those.
#[test]
fn done_counts_the_ranges_and_bytes_written() {
    use lvmsync::session::{Done, Hello, Message};
    let case = Case::new(8);
    case.set_dest(&case.half_applied(2));
    let prior = PriorSource::Device(case.path("snapshot"));
    let (stream_r, stream_w) = std::io::pipe().unwrap();
    let (mut back_r, mut back_w) = std::io::pipe().unwrap();
    let dest = case.path("dest");
    let receiver = std::thread::spawn(move || {
        Message::Hello(Hello::ours()).write_to(&mut back_w).unwrap();
        let ctx = ApplyContext {
            session: Some(&mut back_w),
            reopen: None,
        };
        apply_with(stream_r, &dest, &ApplyOptions::default(), ctx).unwrap()
    });
    assert!(matches!(
        Message::read_from(&mut back_r).unwrap(),
        Message::Hello(_)
    ));
    let (stream_w, _) = send_changes_with(
        &case.changes,
        &case.path("origin"),
        stream_w,
        &SendOptions::default(),
        &|_| {},
        StreamExtras {
            identity: None,
            prior: Some(&prior),
            session: Some(&mut back_r),
        },
    )
    .unwrap();
    drop(stream_w);
    let report = receiver.join().unwrap();
    let pieces: Vec<Extent> = case.changes.extents.pieces(1 << 20).collect();
    let want = Done {
        written: pieces.len() as u64 - 2,
        already_applied: 2,
        bytes_written: pieces[2..].iter().map(|p| p.len).sum(),
    };
    assert_eq!(
        Message::read_from(&mut back_r).unwrap(),
        Message::Done(want)
    );
    assert_eq!(report.already_applied, 2);
    assert!(case.dest() == case.origin);
}

/// The captured classic store holds the snapshot's contents of its chunks; `--base-source`
/// names another image of them instead, and the destination is checked against that image.
#[test]
fn base_source_replaces_the_stores_own_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let dest = dir.path().join("dest");
    for (base, ok) in [(None, true), (Some(&after), false), (Some(&before), true)] {
        common::copy(&before, &dest);
        let mut cmd = lvmsync();
        cmd.args(["--cow", p(&cow), "--data-source", p(&after)]);
        if let Some(b) = base {
            cmd.args(["--base-source", p(b)]);
        }
        let out = cmd.arg(p(&dest)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "base {base:?}: {stderr}");
        if ok {
            assert!(common::same(&dest, &after));
        } else {
            assert!(stderr.contains("not a copy of the snapshot"), "{stderr}");
            assert!(stderr.contains("--force"), "the way out is named: {stderr}");
            assert!(common::same(&dest, &before), "nothing written");
        }
    }
}

/// Thin-pool metadata lists the changed blocks but holds no data: with `--base-source` (an
/// image of the snapshot) the stream has a manifest and the destination is checked against that
/// image; without it, the stream has none and says so.
#[test]
fn thin_metadata_with_base_source_is_checked() {
    const VOLUME: usize = 128 << 20; // thin1 in the captured pool
    let dir = tempfile::tempdir().unwrap();
    let meta = common::gunzip(&common::captured("thin/tmeta.img.gz"), dir.path());
    let base = dir.path().join("base");
    let origin = dir.path().join("origin");
    std::fs::write(&base, common::pattern(VOLUME, 21)).unwrap();
    std::fs::write(&origin, common::pattern(VOLUME, 22)).unwrap();
    let source = [
        "--thin-metadata",
        p(&meta),
        "--thin-ids",
        "2:1",
        "--data-source",
        p(&origin),
    ];
    // The destination after the sync: the base, with the origin's contents of the changes.
    let changes = lvmsync().arg("changes").args(source).output().unwrap();
    common::assert_success(&changes);
    let (base_bytes, origin_bytes) = (
        std::fs::read(&base).unwrap(),
        std::fs::read(&origin).unwrap(),
    );
    let mut expected = base_bytes.clone();
    let mut first_range = None;
    for line in String::from_utf8(changes.stdout).unwrap().lines() {
        let w: Vec<u64> = line
            .split(' ')
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        let r = w[0] as usize..(w[0] + w[1]) as usize;
        expected[r.clone()].copy_from_slice(&origin_bytes[r]);
        first_range.get_or_insert(w[0]);
    }
    let first_range = first_range.expect("the captured pool lists changes") as usize;

    let without = lvmsync().args(source).arg("--stdout").output().unwrap();
    common::assert_success(&without);
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("--base-source"),
        "the missing check is not explained"
    );
    let with = lvmsync()
        .args(source)
        .args(["--base-source", p(&base), "--stdout"])
        .output()
        .unwrap();
    common::assert_success(&with);
    for (stream, manifest) in [(&without.stdout, false), (&with.stdout, true)] {
        let path = dir.path().join("stream");
        std::fs::write(&path, stream).unwrap();
        let info = lvmsync()
            .args(["info", "--json", p(&path)])
            .output()
            .unwrap();
        common::assert_success(&info);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["identity"]["thin_ids"], serde_json::json!([2, 1]));
        assert_eq!(info["manifest_records"].as_u64().unwrap() > 0, manifest);
    }
    let stream = dir.path().join("stream");
    std::fs::write(&stream, &with.stdout).unwrap();

    // One sector inside the first changed range differs from the base: refused, untouched.
    let dest = dir.path().join("dest");
    let mut tampered = base_bytes.clone();
    tampered[first_range + 512..first_range + 1024].fill(0xAB);
    std::fs::write(&dest, &tampered).unwrap();
    let out = lvmsync()
        .args(["--apply", p(&stream), p(&dest)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not a copy of the snapshot")
            && err.contains(&format!("at byte {first_range} ")),
        "{err}"
    );
    assert!(
        std::fs::read(&dest).unwrap() == tampered,
        "the destination was written"
    );

    // The base's copy is synced, over a live sync as through the stream file.
    common::copy(&base, &dest);
    let out = lvmsync()
        .args(["--apply", p(&stream), p(&dest)])
        .output()
        .unwrap();
    common::assert_success(&out);
    assert!(std::fs::read(&dest).unwrap() == expected);
    common::copy(&base, &dest);
    let out = lvmsync()
        .args(source)
        .args(["--base-source", p(&base), p(&dest)])
        .output()
        .unwrap();
    common::assert_success(&out);
    assert!(std::fs::read(&dest).unwrap() == expected);
}
