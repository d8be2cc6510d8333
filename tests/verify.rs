//! `lvmsync verify`: whole images (equal, differing at chosen bytes, of different sizes,
//! unreadable), the JSON report, the changed ranges of a classic and a thin source after a sync,
//! streams, and a DEST on another host through a real sshd (with the bytes exchanged counted by
//! a wrapper around ssh).

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sshd::Sshd;

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");
const MIB: u64 = 1 << 20;

fn verify(args: &[&str]) -> Output {
    Command::new(LVMSYNC)
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_status(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// `OFFSET LENGTH` lines.
fn lines(ranges: &[(u64, u64)]) -> String {
    ranges.iter().map(|(o, l)| format!("{o} {l}\n")).collect()
}

/// The ranges of `chunk` bytes (cut at `size`) in which `a` and `b` differ, merged: what verify
/// must report for two images of the same size.
fn model(a: &[u8], b: &[u8], chunk: usize) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, (x, y)) in a.chunks(chunk).zip(b.chunks(chunk)).enumerate() {
        if x != y {
            let (o, l) = ((i * chunk) as u64, x.len() as u64);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == o => last.1 += l,
                _ => out.push((o, l)),
            }
        }
    }
    out
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// The pieces of `ranges` (cut every `chunk` bytes on the volume's grid) in which `a` and `b`
/// differ, merged: what verify must report for those ranges.
fn model_ranges(a: &[u8], b: &[u8], ranges: &[(u64, u64)], chunk: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(o, l) in ranges {
        let mut pos = o;
        while pos < o + l {
            let end = ((pos / chunk + 1) * chunk).min(o + l);
            if a[pos as usize..end as usize] != b[pos as usize..end as usize] {
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == pos => last.1 += end - pos,
                    _ => out.push((pos, end - pos)),
                }
            }
            pos = end;
        }
    }
    out
}

/// Two equal images of `size` bytes in a new directory.
fn pair(size: usize) -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::pattern(size, 0x5eed);
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    std::fs::write(&a, &data).unwrap();
    std::fs::write(&b, &data).unwrap();
    (dir, a, b, data)
}

#[test]
fn equal_images_exit_0_and_print_no_range() {
    // An odd size: the last piece is short and unaligned.
    let (_dir, a, b, _) = pair((9 * MIB + 1000) as usize);
    for chunk in ["4K", "1M"] {
        let out = verify(&[p(&a), p(&b), "--chunk", chunk]);
        assert_status(&out, 0);
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("lvmsync: verify: equal; 9.00 MiB compared in "),
            "{err}"
        );
    }
    let out = verify(&["-q", p(&a), p(&b)]);
    assert_status(&out, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn differences_are_reported_per_chunk() {
    let size = 12 * MIB as usize + 5000;
    let (_dir, a, b, data) = pair(size);
    let mut changed = data.clone();
    let mut flip = |at: usize| changed[at] ^= 0x5a;
    flip(0); // the first byte
    flip(size - 1); // the last byte, in a short last piece
    flip(4 * MIB as usize - 1); // both sides of a chunk boundary
    flip(4 * MIB as usize);
    // Many scattered 4 KiB blocks, some of them next to each other.
    let mut rng = common::thin::Rng(7);
    for _ in 0..200 {
        let block = 1 + rng.below(size as u64 / 4096 - 2) as usize;
        for at in [block * 4096, block * 4096 + 4095] {
            flip(at);
        }
    }
    flip(7 * MIB as usize + 8191);
    flip(7 * MIB as usize + 8192);
    std::fs::write(&b, &changed).unwrap();
    for (chunk, bytes) in [("4K", 4096), ("64K", 65536), ("1M", MIB as usize)] {
        let want = model(&data, &changed, bytes);
        let out = verify(&[p(&a), p(&b), "--chunk", chunk]);
        assert_status(&out, 1);
        assert_eq!(stdout(&out), lines(&want), "chunk {chunk}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("lvmsync: verify: {} range", want.len())),
            "{err}"
        );
    }
    // 4 KiB chunks show the first and the last byte's blocks exactly.
    let out = verify(&[p(&a), p(&b), "--chunk", "4K"]);
    let text = stdout(&out);
    assert!(text.starts_with("0 4096\n"), "{text}");
    let last_block = (size as u64 - 1) / 4096 * 4096;
    assert!(
        text.ends_with(&format!("{last_block} {}\n", size as u64 - last_block)),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} 8192\n", 4 * MIB - 4096)),
        "the chunk boundary: {text}"
    );
}

#[test]
fn a_size_difference_is_a_difference() {
    let (_dir, a, b, data) = pair(3 * MIB as usize);
    let longer: Vec<u8> = data.iter().copied().chain([1u8; 4103]).collect();
    std::fs::write(&b, &longer).unwrap();
    let out = verify(&[p(&a), p(&b), "--chunk", "4K"]);
    assert_status(&out, 1);
    assert_eq!(stdout(&out), lines(&[(3 * MIB, 4103)]));
    assert!(
        stderr(&out).contains("the sizes differ: SOURCE 3145728 bytes, DEST 3149831 bytes"),
        "{}",
        stderr(&out)
    );
    // The other way round, with a difference just before the end of the shorter one: merged.
    std::fs::write(&b, &data[..2 * MIB as usize]).unwrap();
    write_at(&b, 2 * MIB - 1, &[!data[2 * MIB as usize - 1]]);
    let out = verify(&[p(&a), p(&b), "--chunk", "4K", "--json"]);
    assert_status(&out, 1);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["source_bytes"], 3 * MIB);
    assert_eq!(j["dest_bytes"], 2 * MIB);
    assert_eq!(j["compared_bytes"], 2 * MIB);
    assert_eq!(
        j["differing"],
        serde_json::json!([{"offset": 2 * MIB - 4096, "len": MIB + 4096}])
    );
    // An empty DEST.
    std::fs::write(&b, b"").unwrap();
    let out = verify(&[p(&a), p(&b)]);
    assert_status(&out, 1);
    assert_eq!(stdout(&out), lines(&[(0, 3 * MIB)]));
}

#[test]
fn a_side_that_cannot_be_read_is_status_3() {
    let (dir, a, b, _) = pair(MIB as usize);
    let missing = dir.path().join("missing.img");
    let cases = [
        (
            vec![p(&a), p(&missing)],
            "missing.img: cannot open for reading",
        ),
        (
            vec![p(&missing), p(&b)],
            "missing.img: cannot open for reading",
        ),
        (
            vec![p(&a), p(dir.path())],
            "is a directory, not a block device or regular file",
        ),
    ];
    for (args, want) in &cases {
        for json in [false, true] {
            let mut args = args.clone();
            if json {
                args.push("--json");
            }
            let out = verify(&args);
            assert_status(&out, 3);
            assert!(out.stdout.is_empty(), "{args:?}");
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.starts_with("lvmsync: ") && err.contains(want), "{err}");
        }
    }
    // Usage errors stay 2.
    for args in [&["--chunk", "3K", p(&a), p(&b)][..], &[p(&a)], &["--serve"]] {
        let out = verify(args);
        assert_status(&out, 2);
    }
}

#[test]
fn the_json_report_has_every_field() {
    let (_dir, a, b, data) = pair(2 * MIB as usize);
    write_at(&b, 70_000, &[!data[70_000]]);
    let out = verify(&["--json", "--chunk", "64K", p(&a), p(&b)]);
    assert_status(&out, 1);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one object on one line: {text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["equal"], false);
    assert_eq!(j["mode"], "volume");
    assert_eq!(j["source"], p(&a));
    assert_eq!(j["dest"], p(&b));
    assert_eq!(j["source_bytes"], 2 * MIB);
    assert_eq!(j["dest_bytes"], 2 * MIB);
    assert_eq!(j["chunk_bytes"], 65536);
    assert_eq!(j["compared_bytes"], 2 * MIB);
    assert_eq!(j["differing_bytes"], 65536);
    assert_eq!(
        j["differing"],
        serde_json::json!([{"offset": 65536, "len": 65536}])
    );
    assert!(j["elapsed_s"].as_f64().unwrap() > 0.0);
    assert!(j["bytes_sent"].as_u64().unwrap() > 0);
    assert!(j["bytes_received"].as_u64().unwrap() > 0);
    let out = verify(&["--json", p(&a), p(&a)]);
    assert_status(&out, 0);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["equal"], true);
    assert_eq!(j["differing"], serde_json::json!([]));
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert_status(&out, 0);
    out
}

/// The changed ranges of the classic fixture, as `lvmsync changes` lists them.
fn changes(args: &[&str]) -> Vec<(u64, u64)> {
    let out = run_ok(Command::new(LVMSYNC).arg("changes").args(args));
    stdout(&out)
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            (
                w.next().unwrap().parse().unwrap(),
                w.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn changes_of_a_classic_snapshot_after_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let dest = dir.path().join("dest.img");
    common::copy(&before, &dest);
    let changed = changes(&["--cow", p(&cow)]);
    assert!(changed.len() > 1);
    let src = ["--changes", "--cow", p(&cow), "--data-source", p(&after)];
    let with = |dest: &Path, extra: &[&str]| {
        let mut args = src.to_vec();
        args.extend_from_slice(extra);
        args.push(p(dest));
        verify(&args)
    };
    // Before the sync, DEST differs in the changed pieces whose bytes the writes changed.
    let (b, a) = (
        std::fs::read(&before).unwrap(),
        std::fs::read(&after).unwrap(),
    );
    let want = model_ranges(&b, &a, &changed, 4096);
    assert!(!want.is_empty());
    let out = with(&dest, &["--chunk", "4K"]);
    assert_status(&out, 1);
    assert_eq!(stdout(&out), lines(&want));
    run_ok(
        Command::new(LVMSYNC)
            .args(["--cow", p(&cow), "--data-source", p(&after)])
            .arg(&dest),
    );
    let out = with(&dest, &[]);
    assert_status(&out, 0);
    assert!(out.stdout.is_empty());
    // Only the changed ranges were read.
    let out = with(&dest, &["--json"]);
    assert_status(&out, 0);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["mode"], "changes");
    assert_eq!(
        j["compared_bytes"],
        changed.iter().map(|r| r.1).sum::<u64>()
    );
    // A byte changed inside a changed range shows, as the piece of that range in its chunk.
    let (o, l) = changed[1];
    write_at(&dest, o + l / 2, &[!a[(o + l / 2) as usize]]);
    let out = with(&dest, &["--chunk", "4K"]);
    assert_status(&out, 1);
    let piece = (o + l / 2) / 4096 * 4096;
    let want = (piece.max(o), (piece + 4096).min(o + l) - piece.max(o));
    assert_eq!(stdout(&out), lines(&[want]));
    // A byte changed outside every changed range is not looked at.
    write_at(&dest, o + l / 2, &[a[(o + l / 2) as usize]]);
    let outside = (0..a.len() as u64)
        .step_by(4096)
        .find(|&x| changed.iter().all(|&(o, l)| x + 4096 <= o || x >= o + l))
        .unwrap();
    write_at(&dest, outside, &[!a[outside as usize]]);
    assert_status(&with(&dest, &[]), 0);
    // ... and a whole-volume verify finds it.
    let out = verify(&[p(&after), p(&dest), "--chunk", "4K"]);
    assert_status(&out, 1);
    assert_eq!(stdout(&out), lines(&[(outside, 4096)]));
}

#[test]
fn changes_of_thin_metadata_after_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let meta = common::thin::gunzip_fixture("tmeta.img.gz", dir.path());
    let ids = ["--thin-metadata", p(&meta), "--thin-ids", "1:2"];
    let changed = changes(&ids);
    let size = changed.iter().map(|r| r.0 + r.1).max().unwrap() + MIB;
    // An origin image that reads zeros where the delta says the origin has no block.
    let out = run_ok(Command::new(LVMSYNC).arg("changes").args(ids));
    let mut origin = common::pattern(size as usize, 99);
    for l in stdout(&out).lines().filter(|l| l.ends_with(" zero")) {
        let mut w = l.split(' ');
        let o: usize = w.next().unwrap().parse().unwrap();
        let n: usize = w.next().unwrap().parse().unwrap();
        origin[o..o + n].fill(0);
    }
    let origin_path = dir.path().join("origin.img");
    std::fs::write(&origin_path, &origin).unwrap();
    let dest = dir.path().join("dest.img");
    std::fs::write(&dest, common::pattern(size as usize, 3)).unwrap();
    let src = [&ids[..], &["--data-source", p(&origin_path)]].concat();
    let out = verify(&[&["--changes"], &src[..], &[p(&dest)]].concat());
    assert_status(&out, 1);
    run_ok(Command::new(LVMSYNC).args(&src).arg(&dest));
    let out = verify(&[&["--changes"], &src[..], &[p(&dest)]].concat());
    assert_status(&out, 0);
    // A zero range that is no longer zero on DEST.
    let zero = stdout(&run_ok(Command::new(LVMSYNC).arg("changes").args(ids)))
        .lines()
        .find(|l| l.ends_with(" zero"))
        .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
        .expect("the 1:2 delta has zero ranges");
    write_at(&dest, zero + 5, b"x");
    let out = verify(&[&["--changes", "--chunk", "4K"], &src[..], &[p(&dest)]].concat());
    assert_status(&out, 1);
    assert_eq!(stdout(&out), lines(&[(zero, 4096)]));
}

/// A format 4 stream of data and zero records.
fn write_stream(path: &Path, records: &[(u64, Option<&[u8]>, u64)], volume: u64) {
    use lvmsync::stream::{Format, StreamWriter, WriterOptions};
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: volume,
        chunk_bytes: 4096,
        compress: Some(1),
        snapback: false,
    };
    let mut w = StreamWriter::new(Vec::new(), &opts).unwrap();
    for (offset, data, len) in records {
        match data {
            Some(d) => w.data(*offset, d).unwrap(),
            None => w.zero(*offset, *len).unwrap(),
        }
    }
    std::fs::write(path, w.finish().unwrap().0).unwrap();
}

#[test]
fn a_stream_was_applied_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let dest = dir.path().join("dest.img");
    std::fs::write(&dest, common::pattern(size as usize, 1)).unwrap();
    let new = common::pattern(3 * MIB as usize, 2);
    let stream = dir.path().join("s.lvs");
    write_stream(
        &stream,
        &[
            (4096, Some(&new[..100_000]), 0),
            (104_096, None, 50_000), // follows the record before: one range
            (3 * MIB, Some(&new[..2 * MIB as usize]), 0),
            (6 * MIB + 512, None, MIB),
        ],
        size,
    );
    let out = verify(&["--stream", p(&stream), p(&dest)]);
    assert_status(&out, 1);
    assert_eq!(
        stdout(&out),
        lines(&[(4096, 150_000), (3 * MIB, 2 * MIB), (6 * MIB + 512, MIB)])
    );
    run_ok(Command::new(LVMSYNC).arg("--apply").arg(&stream).arg(&dest));
    let out = verify(&["--stream", p(&stream), p(&dest)]);
    assert_status(&out, 0);
    assert!(stderr(&out).contains("compared"), "{}", stderr(&out));
    // From standard input too.
    let out = Command::new(LVMSYNC)
        .args(["verify", "--stream", "-", p(&dest)])
        .stdin(std::fs::File::open(&stream).unwrap())
        .output()
        .unwrap();
    assert_status(&out, 0);
    // A byte of a zero range, and one of a data record, no longer as the stream wrote them.
    write_at(&dest, 6 * MIB + 512 + 70_000, b"z");
    write_at(&dest, 3 * MIB + 5, &[!new[5]]);
    let out = verify(&["--stream", p(&stream), p(&dest), "--chunk", "4K"]);
    assert_status(&out, 1);
    assert_eq!(
        stdout(&out),
        lines(&[(3 * MIB, 4096), ((6 * MIB + 70_000) / 4096 * 4096, 4096)])
    );
    // Outside the stream's ranges nothing is looked at.
    write_at(&dest, 200_000, b"q");
    assert_eq!(
        verify(&["--stream", p(&stream), p(&dest), "--chunk", "4K"]).stdout,
        out.stdout
    );
    // A damaged stream cannot be compared.
    let mut bytes = std::fs::read(&stream).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&stream, &bytes).unwrap();
    let out = verify(&["--stream", p(&stream), p(&dest)]);
    assert_status(&out, 3);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// A remote shell that runs ssh and keeps copies of what goes each way, so that the bytes
/// exchanged are counted outside lvmsync.
fn counting_rsh(dir: &Path, sshd: &Sshd) -> String {
    let script = dir.join("counting-rsh");
    std::fs::write(
        &script,
        "#!/bin/bash\nset -o pipefail\nd=$1\nshift\ntee \"$d/up\" | \"$@\" | tee \"$d/down\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{} {} {}", p(&script), p(dir), sshd.rsh())
}

#[test]
fn a_remote_dest_over_ssh() {
    let sshd = Sshd::start();
    let size = 64 * MIB;
    let (dir, a, b, data) = pair(size as usize);
    let rsh = counting_rsh(dir.path(), &sshd);
    let remote = |extra: &[&str], dest: &Path| {
        let mut cmd = Command::new(LVMSYNC);
        cmd.args(["verify", "-e", &rsh, "--remote-path", LVMSYNC, "--json"])
            .args(extra)
            .arg(&a)
            .arg(format!("127.0.0.1:{}", dest.display()));
        cmd.output().unwrap()
    };
    let counted = || {
        std::fs::metadata(dir.path().join("up")).unwrap().len()
            + std::fs::metadata(dir.path().join("down")).unwrap().len()
    };
    let out = remote(&[], &b);
    assert_status(&out, 0);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["equal"], true);
    assert_eq!(j["dest"], format!("127.0.0.1:{}", b.display()));
    let exchanged = j["bytes_sent"].as_u64().unwrap() + j["bytes_received"].as_u64().unwrap();
    assert_eq!(exchanged, counted(), "lvmsync's count and the wrapper's");
    assert!(
        exchanged * 1000 <= size,
        "{exchanged} bytes exchanged for a {size}-byte volume"
    );
    // With 4 KiB chunks (16384 pieces) too.
    let out = remote(&["--chunk", "4K"], &b);
    assert_status(&out, 0);
    assert!(counted() * 1000 <= size, "{} bytes", counted());
    // Differences: the exchange grows with them, and the ranges are those found locally.
    let mut changed = data.clone();
    for at in [0, 5 * MIB as usize + 7, size as usize - 1] {
        changed[at] ^= 1;
    }
    std::fs::write(&b, &changed).unwrap();
    let out = remote(&["--chunk", "4K"], &b);
    assert_status(&out, 1);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<serde_json::Value> = model(&data, &changed, 4096)
        .iter()
        .map(|&(o, l)| serde_json::json!({"offset": o, "len": l}))
        .collect();
    assert_eq!(j["differing"], serde_json::Value::Array(want));
    let received = j["bytes_received"].as_u64().unwrap();
    // Three differing groups of 64 pieces: their piece hashes come back, and little else.
    assert!(
        (3 * 64 * 16..3 * 64 * 16 + 1024).contains(&received),
        "{received}"
    );
    // Plain output names the host in the summary.
    let out = Command::new(LVMSYNC)
        .args(["verify", "-e", &sshd.rsh(), "--remote-path", LVMSYNC])
        .arg(&a)
        .arg(format!("127.0.0.1:{}", b.display()))
        .output()
        .unwrap();
    assert_status(&out, 1);
    assert_eq!(
        stdout(&out),
        lines(&[(0, MIB), (5 * MIB, MIB), (size - MIB, MIB)])
    );
    assert!(
        stderr(&out).contains("exchanged with 127.0.0.1"),
        "{}",
        stderr(&out)
    );
    // A missing remote DEST: the remote lvmsync's error, in one line.
    let out = remote(&[], &dir.path().join("missing.img"));
    assert_status(&out, 3);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("lvmsync: on 127.0.0.1: ") && err.contains("missing.img: cannot open"),
        "{err}"
    );
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_remote_that_cannot_compare_is_status_3_in_one_line() {
    let (dir, a, b, _) = pair(8 * MIB as usize);
    // The remote shell of the transport tests: what sshd does with its arguments.
    let rsh = r#"sh -c 'shift; exec sh -c "$*"' fake-ssh"#;
    // An lvmsync without verify refuses the command line as clap does.
    let old = script(
        dir.path(),
        "old-lvmsync",
        "echo \"error: unexpected argument '--serve' found\" >&2; echo >&2; echo 'Usage: lvmsync [OPTIONS] SNAPSHOT [HOST:]DEST' >&2; exit 2",
    );
    let dest = format!("h:{}", b.display());
    let cases = [
        (rsh.to_string(), p(&old).to_string(), "the lvmsync on h has no verify (it refused `verify --serve`: error: unexpected argument '--serve' found): install this version there"),
        (rsh.to_string(), "/nonexistent/lvmsync".to_string(), "lvmsync not found on h"),
        ("/nonexistent/ssh".to_string(), LVMSYNC.to_string(), "cannot run remote shell /nonexistent/ssh"),
        (
            "sh -c 'echo \"ssh: connect to host h port 22: Connection refused\" >&2; exit 255'".to_string(),
            LVMSYNC.to_string(),
            "cannot reach h: ssh: connect to host h port 22: Connection refused (exit status 255)",
        ),
        // The connection dies after the hello: the remote's output is cut short.
        (
            r#"sh -c 'shift; sh -c "$*" | dd bs=1 count=65 status=none' fake-ssh"#.to_string(),
            LVMSYNC.to_string(),
            "the connection to h closed during the comparison",
        ),
    ];
    for (rsh, remote_path, want) in &cases {
        let out = verify(&["-e", rsh, "--remote-path", remote_path, p(&a), &dest]);
        assert_status(&out, 3);
        assert!(out.stdout.is_empty());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("lvmsync: ") && err.contains(want),
            "{want}: {err}"
        );
    }
}
