//! `lvmsync --checksum SOURCE [HOST:]DEST`: the sync without a snapshot. Equal volumes send
//! nothing; a flipped byte, scattered differences, compressed, with a snapback that rolls back
//! exactly; `--stdout` writes the stream of what differs; a destination of another size;
//! locally, onto a loop device, and to a DEST on another host through a real sshd, including
//! connections that die mid-way.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{assert_success, pattern, same, LoopDevice};
use lvmsync::extent::ExtentKind;
use lvmsync::stream::Record;

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");
const MIB: usize = 1 << 20;
const BLOCK: u64 = 4096;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lvmsync(args: &[&str]) -> Output {
    Command::new(LVMSYNC).args(args).output().unwrap()
}

/// SOURCE and an equal DEST of `size` bytes.
fn pair(size: usize) -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let data = pattern(size, 42);
    std::fs::write(&a, &data).unwrap();
    std::fs::write(&b, &data).unwrap();
    (dir, a, b, data)
}

/// Flips one byte of `path` at each of `offsets`.
fn flip(path: &Path, offsets: &[u64]) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for &at in offsets {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    }
    f.sync_all().unwrap();
}

/// Scattered offsets, one in each of `n` 4 KiB blocks spread over `size` bytes (the last block
/// of the volume among them).
fn scattered(size: u64, n: u64) -> Vec<u64> {
    let blocks = size / BLOCK;
    let mut v: Vec<u64> = (0..n)
        .map(|i| ((i * 2_654_435_761 + 13) % blocks) * BLOCK + (i * 131) % BLOCK)
        .collect();
    v.push(size - 1);
    v.sort_unstable();
    v.dedup_by_key(|o| *o / BLOCK);
    v
}

/// The `done` JSON line of `--progress=json`.
fn done_line(out: &Output) -> serde_json::Value {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|j| j["event"] == "done")
        .unwrap_or_else(|| panic!("no done line: {}", stderr(out)))
}

/// `lvmsync info --json` of a stream file.
fn info(stream: &Path) -> serde_json::Value {
    let out = lvmsync(&["info", "--json", p(stream)]);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The data and zero records of a stream, one by one, as (kind, offset, length), read with
/// lvmsync's own reader.
fn records_as_sent(stream: &Path) -> Vec<(ExtentKind, u64, u64)> {
    let mut r = lvmsync::stream::StreamReader::open(std::fs::File::open(stream).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        match rec {
            Record::Data { offset, data } => v.push((ExtentKind::Data, offset, data.len() as u64)),
            Record::Zero { offset, len } => v.push((ExtentKind::Zero, offset, len)),
            _ => {}
        }
    }
    v
}

/// What the records of `kind` of a stream cover, as (offset, length), adjacent records merged
/// (the records follow the comparison's pace).
fn covered(stream: &Path, kind: ExtentKind) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for (_, offset, len) in records_as_sent(stream).into_iter().filter(|r| r.0 == kind) {
        match v.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => v.push((offset, len)),
        }
    }
    v
}

/// What the data records of a stream cover.
fn records(stream: &Path) -> Vec<(u64, u64)> {
    covered(stream, ExtentKind::Data)
}

/// `lvmsync --checksum ARGS --stdout SOURCE DEST > STREAM`.
fn checksum_to_file(args: &[&str], a: &Path, b: &Path, stream: &Path) -> Output {
    Command::new(LVMSYNC)
        .arg("--checksum")
        .args(args)
        .args(["--stdout", p(a), p(b)])
        .stdout(std::fs::File::create(stream).unwrap())
        .output()
        .unwrap()
}

/// The 4 KiB blocks holding `offsets`, merged where adjacent, as (offset, length).
fn blocks_of(offsets: &[u64], size: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for &o in offsets {
        let start = o / BLOCK * BLOCK;
        let len = BLOCK.min(size - start);
        match v.last_mut() {
            Some((s, l)) if *s + *l == start => *l += len,
            Some((s, _)) if *s == start => {}
            _ => v.push((start, len)),
        }
    }
    v
}

#[test]
fn equal_volumes_send_nothing() {
    let (_dir, a, b, _) = pair(8 * MIB);
    let out = lvmsync(&["--checksum", "--progress=json", p(&a), p(&b)]);
    assert_success(&out);
    let done = done_line(&out);
    assert_eq!(done["data_bytes"], 0);
    assert_eq!(done["ranges"], 0);
    assert_eq!(done["compared_bytes"], 8 * MIB as u64);
    assert!(same(&a, &b));
}

#[test]
fn a_flipped_byte_is_repaired_and_the_stream_holds_its_block_alone() {
    let size = 8 * MIB as u64 + 1000; // an image whose last block is short
    let (dir, a, b, _) = pair(size as usize);
    flip(&b, &[5 * MIB as u64 + 4097]);
    // --stdout: DEST is read, not written; the stream is the block that differs.
    let stream = dir.path().join("s.lvm");
    let out = checksum_to_file(&[], &a, &b, &stream);
    assert_success(&out);
    assert!(!same(&a, &b), "--stdout wrote DEST");
    assert_eq!(records(&stream), vec![(5 * MIB as u64 + 4096, 4096)]);
    let j = info(&stream);
    assert_eq!(j["identity"]["kind"], "checksum");
    assert_eq!(j["volume_bytes"], size);
    assert_eq!(j["ending"], "verified");
    assert_success(&lvmsync(&["--apply", p(&stream), p(&b)]));
    assert!(same(&a, &b));
    // The short last block, directly.
    flip(&b, &[size - 1]);
    let out = lvmsync(&["--checksum", "--progress=json", p(&a), p(&b)]);
    assert_success(&out);
    assert_eq!(done_line(&out)["data_bytes"], 1000);
    assert!(same(&a, &b));
}

/// Blocks that are zeros in SOURCE and hold data in DEST are sent as zero ranges (a thin DEST
/// unmaps them, a file gets holes), not read as data.
#[test]
fn blocks_of_zeros_in_the_source_are_sent_as_zero_ranges() {
    let size = 8 * MIB as u64 + 1000; // the short last block is zeros too
    let (dir, a, b, _) = pair(size as usize);
    let zeroed = [
        (MIB as u64, 64 << 10),
        (3 * MIB as u64 + 8192, 4096),
        (4 * MIB as u64, 3 * MIB as u64),
        (8 * MIB as u64, 1000),
    ];
    let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
    for &(at, len) in &zeroed {
        f.write_all_at(&vec![0; len as usize], at).unwrap();
    }
    // One block differs without being zeros.
    flip(&a, &[7 * MIB as u64 + (512 << 10)]);
    let stream = dir.path().join("s.lvm");
    let out = checksum_to_file(&[], &a, &b, &stream);
    assert_success(&out);
    assert_eq!(covered(&stream, ExtentKind::Zero), zeroed.to_vec());
    // A long run is cut only where records must be (every MiB from its start), not where the
    // comparison's batches happened to end: a thin DEST can unmap its blocks whole.
    for (_, offset, len) in records_as_sent(&stream)
        .into_iter()
        .filter(|r| r.0 == ExtentKind::Zero)
    {
        if (4 * MIB as u64..7 * MIB as u64).contains(&offset) {
            assert_eq!((offset % MIB as u64, len), (0, MIB as u64));
        }
    }
    assert_eq!(records(&stream), vec![(7 * MIB as u64 + (512 << 10), 4096)]);
    let out = lvmsync(&["--checksum", "--progress=json", p(&a), p(&b)]);
    assert_success(&out);
    let done = done_line(&out);
    assert_eq!(
        done["zero_bytes"],
        (64 << 10) + 4096 + 3 * MIB as u64 + 1000
    );
    assert_eq!(done["data_bytes"], 4096);
    assert!(same(&a, &b));
}

#[test]
fn scattered_differences_compressed_with_a_snapback_that_rolls_back() {
    let size = 16 * MIB as u64;
    let (dir, a, b, _) = pair(size as usize);
    let offsets = scattered(size, 300);
    flip(&b, &offsets);
    let before = std::fs::read(&b).unwrap();
    let snapback = dir.path().join("b.snapback");
    let out = lvmsync(&[
        "--checksum",
        "-z",
        "--progress=json",
        "-b",
        p(&snapback),
        p(&a),
        p(&b),
    ]);
    assert_success(&out);
    assert!(same(&a, &b));
    let want = blocks_of(&offsets, size);
    let done = done_line(&out);
    assert_eq!(
        done["data_bytes"],
        want.iter().map(|(_, l)| l).sum::<u64>(),
        "only the differing blocks are sent"
    );
    assert_eq!(done["ranges"], want.len());
    // The snapback restores DEST exactly as it was.
    assert_success(&lvmsync(&["--apply", p(&snapback), p(&b)]));
    assert_eq!(std::fs::read(&b).unwrap(), before);
    // The compressed stream, as a file, holds just those blocks.
    let stream = dir.path().join("s.lvm");
    let out = checksum_to_file(&["-z"], &a, &b, &stream);
    assert_success(&out);
    assert_eq!(info(&stream)["compressed"], true);
    assert_eq!(records(&stream), want);
}

#[test]
fn a_destination_of_another_size() {
    let (dir, a, _, data) = pair(8 * MIB);
    // Smaller: refused in one line, nothing written.
    let small = dir.path().join("small.img");
    let old = pattern(4 * MIB, 7);
    std::fs::write(&small, &old).unwrap();
    let out = lvmsync(&["--checksum", p(&a), p(&small)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("smaller than the 8388608-byte") && err.contains("nothing written"),
        "{err}"
    );
    assert_eq!(std::fs::read(&small).unwrap(), old);
    // Larger: as a sync, the source's bytes are synced, the rest left as it is.
    let large = dir.path().join("large.img");
    let old = pattern(9 * MIB, 9);
    std::fs::write(&large, &old).unwrap();
    let out = lvmsync(&["--checksum", p(&a), p(&large)]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("larger than the source"),
        "{}",
        stderr(&out)
    );
    let now = std::fs::read(&large).unwrap();
    assert_eq!(&now[..8 * MIB], &data[..]);
    assert_eq!(&now[8 * MIB..], &old[8 * MIB..]);
}

#[test]
fn a_loop_device_as_destination() {
    let size = 8 * MIB as u64;
    let (dir, a, b, _) = pair(size as usize);
    let offsets = scattered(size, 40);
    flip(&b, &offsets);
    let dev = LoopDevice::attach(&b);
    let snapback = dir.path().join("sb");
    let out = lvmsync(&["--checksum", "-b", p(&snapback), p(&a), &dev.0]);
    assert_success(&out);
    assert!(same(&a, Path::new(&dev.0)));
    // And a loop device as SOURCE, back to what it was.
    assert_success(&lvmsync(&["--apply", p(&snapback), &dev.0]));
    assert!(!same(&a, Path::new(&dev.0)));
    let src = LoopDevice::attach(&a);
    assert_success(&lvmsync(&["--checksum", &src.0, &dev.0]));
    assert!(same(&a, Path::new(&dev.0)));
}

#[test]
fn nonsense_is_refused_before_anything_is_read() {
    let (_dir, a, b, _) = pair(MIB);
    for (args, want) in [
        (
            &["--checksum", p(&a)][..],
            "--checksum needs SOURCE and [HOST:]DEST",
        ),
        (
            &["--checksum", "--stdout", p(&a)],
            "--checksum needs SOURCE",
        ),
        (&["--checksum", "--full", p(&a), p(&b)], "takes no --full"),
        (&["--checksum", "--format", "3", p(&a), p(&b)], "--format 3"),
        (
            &["--checksum", "-n", p(&a), p(&b)],
            "lvmsync verify --chunk 4K",
        ),
        (
            &["--checksum", "--apply", "-", p(&b)],
            "--apply and --checksum",
        ),
    ] {
        let out = lvmsync(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

/// A remote shell that runs ssh and keeps copies of what goes each way: the bytes of both
/// connections (the comparison's and the stream's) end up in `dir`/up and `dir`/down.
fn counting_rsh(dir: &Path, sshd: &Sshd) -> String {
    let script = dir.join("counting-rsh");
    std::fs::write(
        &script,
        "#!/bin/bash\nset -o pipefail\nd=$1\nshift\ntee -a \"$d/up\" | \"$@\" | tee -a \"$d/down\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{} {} {}", p(&script), p(dir), sshd.rsh())
}

fn counted(dir: &Path) -> u64 {
    ["up", "down"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
        .sum()
}

fn reset_count(dir: &Path) {
    for f in ["up", "down"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[test]
fn a_remote_dest_over_ssh() {
    let sshd = Sshd::start();
    let size = 32 * MIB as u64;
    let (dir, a, b, _) = pair(size as usize);
    let rsh = counting_rsh(dir.path(), &sshd);
    let dest = format!("127.0.0.1:{}", b.display());
    let remote = |extra: &[&str], dest: &str| {
        Command::new(LVMSYNC)
            .args(["--checksum", "-e", &rsh, "--remote-path", LVMSYNC])
            .args(["--progress=json"])
            .args(extra)
            .arg(&a)
            .arg(dest)
            .output()
            .unwrap()
    };
    // Equal: nothing sent, and little crosses the network.
    let out = remote(&[], &dest);
    assert_success(&out);
    assert_eq!(done_line(&out)["data_bytes"], 0);
    assert!(
        counted(dir.path()) * 1000 <= size,
        "{}",
        counted(dir.path())
    );
    // One flipped byte: its block, and on the wire little more than it.
    reset_count(dir.path());
    flip(&b, &[size / 2 + 3]);
    let out = remote(&[], &dest);
    assert_success(&out);
    assert!(same(&a, &b));
    assert_eq!(done_line(&out)["data_bytes"], BLOCK);
    assert!(counted(dir.path()) < 32 * 1024, "{}", counted(dir.path()));
    // Scattered, compressed, with a snapback on the remote host.
    let offsets = scattered(size, 200);
    flip(&b, &offsets);
    let before = std::fs::read(&b).unwrap();
    let snapback = dir.path().join("remote.snapback");
    let out = remote(&["-z", "-b", p(&snapback)], &dest);
    assert_success(&out);
    assert!(same(&a, &b));
    let want: u64 = blocks_of(&offsets, size).iter().map(|(_, l)| l).sum();
    assert_eq!(done_line(&out)["data_bytes"], want);
    let out = Command::new(LVMSYNC)
        .args(["--apply", p(&snapback), p(&b)])
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(std::fs::read(&b).unwrap(), before);
    // --stdout with a remote DEST: only compared with, the stream comes here.
    let stream = dir.path().join("s.lvm");
    let out = Command::new(LVMSYNC)
        .args([
            "--checksum",
            "--stdout",
            "-e",
            &rsh,
            "--remote-path",
            LVMSYNC,
        ])
        .arg(&a)
        .arg(&dest)
        .stdout(std::fs::File::create(&stream).unwrap())
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(records(&stream), blocks_of(&offsets, size));
    assert_eq!(std::fs::read(&b).unwrap(), before);
    // A smaller remote DEST: refused in one line, nothing written.
    let small = dir.path().join("small.img");
    std::fs::write(&small, pattern(MIB, 3)).unwrap();
    let out = remote(&[], &format!("127.0.0.1:{}", small.display()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(String::from)
        .collect();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("smaller than"), "{err:?}");
    assert_eq!(std::fs::read(&small).unwrap(), pattern(MIB, 3));
}

/// A remote shell that cuts one of the two connections: the comparison's answers (`verify`)
/// or the stream (`apply`) after `bytes` bytes, as a network that dies would.
fn cutting_rsh(dir: &Path, sshd: &Sshd, which: &str, bytes: u64) -> String {
    let script = dir.join(format!("cut-{which}"));
    let body = match which {
        "verify" => format!(
            "case \"$*\" in *'verify --serve'*) \"$@\" | dd bs=1 count={bytes} status=none;; *) exec \"$@\";; esac"
        ),
        // At most `bytes`: dd counts reads, and a read from a pipe may be short.
        _ => format!(
            "case \"$*\" in *'--apply'*) dd bs=4096 count={} status=none | \"$@\";; *) exec \"$@\";; esac",
            bytes / 4096
        ),
    };
    std::fs::write(&script, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{} {}", p(&script), sshd.rsh())
}

#[test]
fn a_connection_that_dies_midway_fails_and_a_rerun_finishes() {
    let sshd = Sshd::start();
    let size = 32 * MIB as u64;
    let (dir, a, b, _) = pair(size as usize);
    let dest = format!("127.0.0.1:{}", b.display());
    // Enough differences that the stream (4 MiB) and the answers (over 100 KiB) are long.
    let offsets = scattered(size, 1000);
    for (which, bytes, want) in [
        (
            "verify",
            20_000,
            "the connection to 127.0.0.1 closed during the comparison",
        ),
        ("apply", 1 << 20, "127.0.0.1"),
    ] {
        flip(&b, &offsets);
        let rsh = cutting_rsh(dir.path(), &sshd, which, bytes);
        let out = Command::new(LVMSYNC)
            .args(["--checksum", "-e", &rsh, "--remote-path", LVMSYNC])
            .arg(&a)
            .arg(&dest)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{which}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("lvmsync: ") && last.contains(want),
            "{which}: {err}"
        );
        assert!(
            !same(&a, &b),
            "{which}: DEST repaired through a cut connection?"
        );
        // The same again, uncut, finishes the job.
        let out = Command::new(LVMSYNC)
            .args(["--checksum", "-e", &sshd.rsh(), "--remote-path", LVMSYNC])
            .arg(&a)
            .arg(&dest)
            .output()
            .unwrap();
        assert_success(&out);
        assert!(same(&a, &b));
    }
}

#[test]
fn killed_ssh_sessions_fail_the_sync() {
    let sshd = Sshd::start();
    let size = 32 * MIB as u64;
    let (dir, a, b, _) = pair(size as usize);
    flip(&b, &scattered(size, 1000));
    // The comparison's answers stop after a while (the remote shell holds them), so that the
    // sync is surely mid-way when the sessions are killed.
    let held = dir.path().join("held");
    let script = dir.path().join("hold-rsh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\ncase \"$*\" in *'verify --serve'*) \"$@\" | {{ dd bs=1 count=20000 status=none; echo $$ >{held}; sleep 60 & echo $! >{held}.sleep; wait; cat; }};; *) exec \"$@\";; esac\n",
            held = p(&held)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rsh = format!("{} {}", p(&script), sshd.rsh());
    let child = Command::new(LVMSYNC)
        .args(["--checksum", "-e", &rsh, "--remote-path", LVMSYNC])
        .arg(&a)
        .arg(format!("127.0.0.1:{}", b.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("held.sleep").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(sshd.kill_sessions() > 0, "no ssh session to kill");
    let sleeper = std::fs::read_to_string(dir.path().join("held.sleep")).unwrap();
    let _ = Command::new("kill").arg(sleeper.trim()).status();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!same(&a, &b));
}
