//! `--dry-run` says exactly what a send would write without sending it; `--progress=json` and
//! `changes --json` describe a send and a change list for scripts.

mod common;

use std::path::Path;

use assert_cmd::Command;
use lvmsync::extent::{Extent, ExtentList};
use lvmsync::send::{plan, send_changes_with, SendOptions, StreamExtras};
use lvmsync::source::{ChangeSet, PriorSource};
use lvmsync::stream::manifest::StreamIdentity;
use lvmsync::stream::Format;

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The planned size is the size of the stream the send then writes, byte for byte, in every
/// format, with and without identity and manifest, including manifests of several records.
#[test]
fn the_plan_is_the_streams_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    const VOLUME: u64 = 400 << 20;
    let image = dir.path().join("image");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(VOLUME)
        .unwrap();
    std::fs::write(dir.path().join("head"), common::pattern(1 << 20, 3)).unwrap();
    let prior = PriorSource::Device(image.clone());
    let sets: Vec<(&str, Vec<Extent>)> = vec![
        ("empty", vec![]),
        ("one range", vec![Extent::data(4096, 8192)]),
        (
            "data and zeros across pieces",
            vec![
                Extent::data(0, 3 << 20),
                Extent::zero(5 << 20, (2 << 20) + 4096),
                Extent::data(9 << 20, 100),
            ],
        ),
        // 40000 scattered 4 KiB ranges: the manifest takes two records.
        (
            "scattered",
            (0..40000).map(|i| Extent::data(i * 8192, 4096)).collect(),
        ),
    ];
    for (name, extents) in sets {
        let changes = ChangeSet {
            extents: ExtentList::from_extents(extents),
            chunk_bytes: 4096,
            volume_bytes: VOLUME,
        };
        for format in [Format::V3, Format::V4] {
            for (identity, manifest) in [(false, false), (true, false), (true, true)] {
                if format == Format::V3 && identity {
                    continue;
                }
                let opts = SendOptions {
                    format,
                    ..SendOptions::default()
                };
                let id = StreamIdentity::default();
                let planned = plan(&changes, &opts, identity.then_some(&id), manifest);
                let (stream, report) = send_changes_with(
                    &changes,
                    &image,
                    Vec::new(),
                    &opts,
                    &|_| {},
                    StreamExtras {
                        identity: identity.then(|| id.clone()),
                        prior: manifest.then_some(&prior),
                        session: None,
                    },
                )
                .unwrap();
                let what = format!("{name}, {format:?}, identity {identity}, manifest {manifest}");
                assert_eq!(planned.stream_bytes, stream.len() as u64, "{what}");
                assert_eq!(planned.records, report.totals.records, "{what}");
                if name == "scattered" && manifest {
                    assert_eq!(planned.manifest_records, 2, "{what}");
                }
            }
        }
    }
}

/// The captured classic snapshot and a destination that is its copy.
fn fixture() -> (common::ClassicImages, std::path::PathBuf) {
    let images = common::ClassicImages::new();
    let dest = images.destination("dest");
    (images, dest)
}

/// The number before `word` in `text`.
fn number_before(text: &str, word: &str) -> u64 {
    let at = text
        .find(word)
        .unwrap_or_else(|| panic!("no '{word}' in {text}"));
    text[..at]
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn dry_run_prints_what_would_be_sent_and_sends_nothing() {
    let (f, dest) = fixture();
    let source = f.source_args();
    let changes = lvmsync().arg("changes").args(source).output().unwrap();
    assert!(changes.status.success());
    for extra in [&[][..], &["--format", "3"], &["-z"], &["--no-check"]] {
        let stream = lvmsync()
            .args(["--stdout"])
            .args(extra)
            .args(source)
            .output()
            .unwrap();
        assert!(stream.status.success());
        // To stdout, to a local destination, and to a remote one that must not be reached.
        for target in [
            vec!["--stdout"],
            vec![p(&dest)],
            vec!["-e", "false", "nohost:/dev/null"],
        ] {
            let mut args = vec!["--dry-run"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&source);
            let out = if target[0] == "--stdout" {
                lvmsync().args(&target).args(&args).output().unwrap()
            } else {
                lvmsync().args(&args).args(&target).output().unwrap()
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{extra:?} {target:?}: {stderr}");
            assert_eq!(
                out.stdout, changes.stdout,
                "the ranges, as `changes` prints them"
            );
            let planned = number_before(&stderr, "bytes");
            if extra == ["-z"] {
                assert!(planned >= stream.stdout.len() as u64, "{stderr}");
                assert!(stderr.contains("at most"), "{stderr}");
            } else {
                assert_eq!(planned, stream.stdout.len() as u64, "{extra:?}: {stderr}");
            }
            assert!(stderr.contains("nothing was sent"), "{stderr}");
            assert!(
                common::same(&dest, &f.before),
                "the destination is untouched"
            );
        }
    }
}

#[test]
fn dry_run_is_not_an_apply_option() {
    let (f, dest) = fixture();
    let out = lvmsync()
        .args(["--dry-run", "--apply", p(&f.cow), p(&dest)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));
}

#[test]
fn json_progress_describes_the_send_line_by_line() {
    let (f, dest) = fixture();
    let out = lvmsync()
        .args([
            "--progress=json",
            "--cow",
            p(&f.cow),
            "--data-source",
            p(&f.after),
        ])
        .arg(&dest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(common::same(&dest, &f.after));
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"plan"), "{stderr}");
    assert_eq!(kinds.last(), Some(&"done"), "{stderr}");
    let plan = &events[0];
    let done = events.last().unwrap();
    let total = plan["data_bytes"].as_u64().unwrap() + plan["zero_bytes"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(plan["dry_run"], false);
    assert_eq!(plan["manifest"], true);
    assert_eq!(done["data_bytes"], plan["data_bytes"]);
    assert_eq!(done["wire_bytes"], plan["stream_bytes"]);
    let progress: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "progress").collect();
    assert!(!progress.is_empty(), "{stderr}");
    for e in &progress {
        assert_eq!(e["phase"], "send");
        assert_eq!(e["total_bytes"].as_u64(), Some(total));
        assert!(e["done_bytes"].as_u64().unwrap() <= total);
    }
    assert_eq!(progress.last().unwrap()["done_bytes"].as_u64(), Some(total));
}

#[test]
fn changes_as_json_match_the_lines() {
    let f = common::ClassicImages::new();
    let source = f.source_args();
    let lines = lvmsync().arg("changes").args(source).output().unwrap();
    let json = lvmsync()
        .args(["changes", "--json"])
        .args(source)
        .output()
        .unwrap();
    assert!(lines.status.success() && json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let from_json: String = v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}\n",
                e["offset"],
                e["len"],
                e["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(from_json, String::from_utf8(lines.stdout).unwrap());
    assert_eq!(
        v["ranges"].as_u64(),
        Some(v["extents"].as_array().unwrap().len() as u64)
    );
    let sum: u64 = v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["len"].as_u64().unwrap())
        .sum();
    assert_eq!(
        v["data_bytes"].as_u64().unwrap() + v["zero_bytes"].as_u64().unwrap(),
        sum
    );
    assert_eq!(
        v["volume_bytes"].as_u64(),
        Some(std::fs::metadata(&f.after).unwrap().len())
    );
}

/// `--full` plans from what is known before reading (a thin snapshot's unmapped blocks; here an
/// image, all data): the stream is at most that, since all-zero pieces found while reading
/// become zero ranges.
#[test]
fn full_copy_dry_run_and_json_progress() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    let mut data = common::pattern(6 << 20, 9);
    data[(2 << 20)..(3 << 20)].fill(0);
    std::fs::write(&image, &data).unwrap();
    let dest = dir.path().join("dest");
    std::fs::File::create(&dest)
        .unwrap()
        .set_len(6 << 20)
        .unwrap();
    let stream = lvmsync()
        .args(["--full", "--stdout", p(&image)])
        .output()
        .unwrap();
    assert!(stream.status.success());
    let out = lvmsync()
        .args(["--full", "--dry-run", p(&image), p(&dest)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0 6291456 data\n");
    let planned = number_before(&stderr, "bytes");
    assert!(planned >= stream.stdout.len() as u64, "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), vec![0u8; 6 << 20]);

    let out = lvmsync()
        .args(["--full", "--progress=json", p(&image), p(&dest)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "plan");
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["zero_bytes"].as_u64(), Some(1 << 20), "{stderr}");
    let last_progress = events
        .iter()
        .rev()
        .find(|e| e["event"] == "progress")
        .unwrap();
    assert_eq!(last_progress["phase"], "copy");
    assert_eq!(last_progress["done_bytes"].as_u64(), Some(6 << 20));
}
