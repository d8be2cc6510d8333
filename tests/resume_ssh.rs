//! A sync over ssh that dies part-way (the connection killed, or the receiver killed), run
//! again: the second run finishes the job exactly and sends again only what had not arrived.
//!
//! The stream's bytes are counted on their way into ssh (a `--rsh` wrapper that passes them
//! through `dd`); "re-sent" is what the two runs sent together beyond one uninterrupted sync.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use lvmsync::source::cow::StoreWriter;

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");
const VOLUME: u64 = 512 << 20;
const CHUNK: u64 = 64 << 10;
const MIB: u64 = 1 << 20;

/// A classic snapshot's exception store listing about half of the volume's chunks; the origin
/// (data source) is random everywhere. The store's chunks hold zeros, so a destination of
/// zeros is the snapshot's copy; `expected` is that destination after the sync.
struct Volume {
    dir: tempfile::TempDir,
    store: PathBuf,
    origin: PathBuf,
    expected: PathBuf,
}

impl Volume {
    fn new() -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut rng = common::thin::Rng(0x5eed_1234);
        let changed: Vec<u64> = (0..VOLUME / CHUNK).filter(|_| rng.chance(50)).collect();
        let store = d.join("snap-cow");
        StoreWriter {
            chunk_bytes: CHUNK,
            valid: true,
        }
        .write(&store, &changed, 0)
        .unwrap();
        let origin = d.join("origin");
        let mut f = File::create(&origin).unwrap();
        for piece in 0..VOLUME / MIB {
            f.write_all(&common::pattern(MIB as usize, piece + 1))
                .unwrap();
        }
        let expected = d.join("expected");
        let e = File::create(&expected).unwrap();
        e.set_len(VOLUME).unwrap();
        let o = File::open(&origin).unwrap();
        let mut buf = vec![0u8; CHUNK as usize];
        for c in &changed {
            o.read_exact_at(&mut buf, c * CHUNK).unwrap();
            e.write_all_at(&buf, c * CHUNK).unwrap();
        }
        Volume {
            dir,
            store,
            origin,
            expected,
        }
    }

    /// A destination that is the snapshot's copy: zeros.
    fn destination(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        File::create(&p).unwrap().set_len(VOLUME).unwrap();
        p
    }
}

/// A `--rsh` that counts the bytes lvmsync writes into ssh: `dd` passes them on and, at its
/// end (also on a broken pipe: SIGPIPE is ignored), writes its tally to `$LVMSYNC_TEST_TALLY`.
fn counting_rsh(sshd: &Sshd, dir: &Path) -> PathBuf {
    let path = dir.join("counting-ssh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/bash\ntrap '' PIPE\ndd bs=1M 2> \"$LVMSYNC_TEST_TALLY\" | {} \"$@\"\n",
            sshd.rsh()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn sync_command(v: &Volume, rsh: &Path, dest: &Path, tally: &Path) -> Command {
    let mut cmd = Command::new(LVMSYNC);
    cmd.arg("-e")
        .arg(rsh)
        .args(["--remote-path", LVMSYNC, "--cow"])
        .arg(&v.store)
        .arg("--data-source")
        .arg(&v.origin)
        .arg(format!("127.0.0.1:{}", dest.display()))
        .env("LVMSYNC_TEST_TALLY", tally)
        .stdin(Stdio::null());
    cmd
}

/// The byte count in dd's closing statistics ("N bytes (...) copied, ...").
fn tally(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find(|l| l.contains(" bytes"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in dd's statistics: {text:?}"))
}

/// Bytes written so far by process `pid` (its stream into ssh, and a few lines on stderr).
fn written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
}

/// lvmsync processes whose command line holds every one of `words`.
fn lvmsync_processes_with(words: &[&str]) -> Vec<u32> {
    common::processes()
        .into_iter()
        .filter(|p| {
            p.args.first().is_some_and(|a| a == LVMSYNC)
                && words.iter().all(|w| p.args.iter().any(|a| a == w))
        })
        .map(|p| p.pid)
        .collect()
}

enum Interruption {
    /// The ssh connection dies: the server's session processes are killed.
    Connection,
    /// The receiving lvmsync is killed.
    Receiver,
}

/// Runs the sync, interrupts it once the sender has written `at` bytes, and waits for every
/// process of it to end; returns the sender's output and the bytes that went into ssh.
fn interrupted_sync(
    sshd: &Sshd,
    v: &Volume,
    rsh: &Path,
    dest: &Path,
    at: u64,
    how: Interruption,
) -> (Output, u64) {
    let tally_file = v.dir.path().join("tally-interrupted");
    let child = sync_command(v, rsh, dest, &tally_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let dest_arg = dest.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut interrupted = false;
    while Instant::now() < deadline {
        match written(pid) {
            Some(n) if n >= at => {
                match how {
                    Interruption::Connection => assert!(sshd.kill_sessions() > 0),
                    Interruption::Receiver => {
                        let receivers = lvmsync_processes_with(&["--session", dest_arg]);
                        assert_eq!(receivers.len(), 1, "one receiver is running");
                        let status = Command::new("kill")
                            .args(["-KILL", &receivers[0].to_string()])
                            .status()
                            .unwrap();
                        assert!(status.success());
                    }
                }
                interrupted = true;
                break;
            }
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
            None => break, // the sender ended before it got there
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(interrupted, "the sync ended before it could be interrupted");
    // The receiver of a killed connection sees its input end and stops: wait for it, so that
    // the next run does not meet it still writing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lvmsync_processes_with(&["--session", dest_arg]).is_empty() {
        assert!(Instant::now() < deadline, "the first receiver did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    (out, tally(&tally_file))
}

fn interrupted_sync_resumes(how: Interruption, name: &str) {
    let sshd = Sshd::start();
    let v = Volume::new();
    let rsh = counting_rsh(&sshd, v.dir.path());

    // One uninterrupted sync: what a sync sends.
    let reference = v.destination("reference");
    let tally_file = v.dir.path().join("tally-reference");
    let out = sync_command(&v, &rsh, &reference, &tally_file)
        .output()
        .unwrap();
    common::assert_success(&out);
    assert!(common::same(&reference, &v.expected));
    let whole = tally(&tally_file);

    // The same sync, interrupted after 80% of that, then run again.
    let dest = v.destination("dest");
    let (out, first) = interrupted_sync(&sshd, &v, &rsh, &dest, whole * 8 / 10, how);
    assert!(
        !out.status.success(),
        "an interrupted sync must fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        first >= whole * 6 / 10 && first < whole,
        "interrupted at {first} of {whole} bytes"
    );
    assert!(
        !common::same(&dest, &v.expected),
        "the first run did not finish"
    );

    let tally_file = v.dir.path().join("tally-again");
    let out = sync_command(&v, &rsh, &dest, &tally_file).output().unwrap();
    common::assert_success(&out);
    assert!(
        common::same(&dest, &v.expected),
        "the re-run must leave the destination exact"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("were already on the destination and were not sent again"),
        "{stderr}"
    );
    let again = tally(&tally_file);
    let resent = (first + again).saturating_sub(whole);
    eprintln!(
        "{name}: stream {} MiB; interrupted after {} MiB ({:.0}%); the re-run sent {} MiB; \
         re-sent {:.1} MiB ({:.1}% of the stream)",
        whole / MIB,
        first / MIB,
        first as f64 * 100.0 / whole as f64,
        again / MIB,
        resent as f64 / MIB as f64,
        resent as f64 * 100.0 / whole as f64
    );
    // At most what was not yet durable when it died: a batch in flight and pipe buffers.
    assert!(
        resent <= whole / 10 + 64 * MIB,
        "re-sent {resent} bytes of a {whole}-byte stream"
    );
}

#[test]
fn sync_over_a_killed_connection_resumes() {
    interrupted_sync_resumes(Interruption::Connection, "connection killed");
}

#[test]
fn sync_to_a_killed_receiver_resumes() {
    interrupted_sync_resumes(Interruption::Receiver, "receiver killed");
}
