//! The standard streams and special files: a closed or broken standard output or error, FIFOs
//! given where a seekable file is needed, and I/O errors that name what failed.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lvmsync");

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "want exit status 1: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

/// lvmsync with standard error a pipe whose reader is gone: every write to it fails (EPIPE).
fn with_broken_stderr(args: &[&str], stdout: Stdio) -> std::process::ExitStatus {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdout(stdout)
        .stderr(writer)
        .status()
        .unwrap()
}

#[test]
fn a_broken_stderr_does_not_change_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let stream = dir.path().join("stream");
    // -v: more messages, each of which cannot be written.
    let status = with_broken_stderr(
        &[
            "-v",
            "--stdout",
            "--cow",
            p(&cow),
            "--data-source",
            p(&after),
        ],
        std::fs::File::create(&stream).unwrap().into(),
    );
    assert_eq!(status.code(), Some(0), "--stdout");
    let copy = dir.path().join("copy");
    common::copy(&before, &copy);
    let status = with_broken_stderr(&["-v", "--apply", p(&stream), p(&copy)], Stdio::null());
    assert_eq!(status.code(), Some(0), "--apply");
    assert!(common::same(&copy, &after));

    common::copy(&before, &copy);
    let args = ["--cow", p(&cow), "--data-source", p(&after), p(&copy)];
    assert_eq!(with_broken_stderr(&args, Stdio::null()).code(), Some(0));
    assert!(common::same(&copy, &after));
    // A failure stays a plain failure (1), not a panic (101), when its message cannot be shown.
    let missing = dir.path().join("missing");
    let args = ["--cow", p(&cow), "--data-source", p(&after), p(&missing)];
    assert_eq!(with_broken_stderr(&args, Stdio::null()).code(), Some(1));
}

/// lvmsync started with file descriptor 1 closed (`>&-`).
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stderr(Stdio::piped());
    // SAFETY: close(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(1);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_closed_stdout_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    refused(
        &with_closed_stdout(&["changes", "--cow", p(&cow)]),
        "standard output is closed",
    );
    refused(
        &with_closed_stdout(&["--stdout", "--cow", p(&cow), "--data-source", p(&after)]),
        "standard output is closed",
    );
    // Closed standard output is not even looked at by the forms that do not use it.
    let copy = dir.path().join("copy");
    common::copy(&after, &copy);
    let out = with_closed_stdout(&["--cow", p(&cow), "--data-source", p(&after), p(&copy)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_stdout_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [
        &["changes", "--cow", p(&cow)][..],
        &["--stdout", "--cow", p(&cow), "--data-source", p(&after)],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdout(full())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        refused(
            &out,
            "standard output: cannot write: No space left on device",
        );
    }
}

/// The help and version texts are output like any other: standard output full or closed is a
/// failure, not a silent exit 0.
#[test]
fn help_and_version_fail_when_stdout_cannot_take_them() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["help"],
        &["changes", "--help"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        refused(
            &out,
            "standard output: cannot write: No space left on device",
        );
        refused(&with_closed_stdout(args), "standard output is closed");
    }
}

fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let c = std::ffi::CString::new(p(&path)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path
}

/// Runs lvmsync, killing it if it hangs (then the status is a signal, and the test fails).
fn run_bounded(args: &[&str]) -> Output {
    assert_cmd::Command::new(BIN)
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

#[test]
fn fifos_are_refused_where_a_seekable_file_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let meta = common::gunzip_fixture("thin/tmeta.img.gz", dir.path());
    let f = fifo(dir.path(), "fifo");
    let is_fifo = format!("{}: is a FIFO, not a block device or regular file", p(&f));
    for args in [
        &["changes", "--cow", p(&f)][..],
        &["changes", "--thin-metadata", p(&f), "--thin-ids", "2:1"],
        &["changes", "--cow", p(&cow), "--data-source", p(&f)],
        &["--stdout", "--cow", p(&f), "--data-source", p(&after)],
        &["--stdout", "--cow", p(&cow), "--data-source", p(&f)],
        &[
            "--stdout",
            "--thin-metadata",
            p(&meta),
            "--thin-ids",
            "2:1",
            "-r",
            p(&f),
        ],
        &["--cow", p(&cow), "--data-source", p(&after), p(&f)],
        &["--apply", p(&before), p(&f)],
    ] {
        refused(&run_bounded(args), &is_fifo);
    }
}

#[test]
fn a_stream_may_come_through_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let f = fifo(dir.path(), "fifo");
    let sent = run_bounded(&["--stdout", "--cow", p(&cow), "--data-source", p(&after)]);
    assert!(sent.status.success());
    let path = f.clone();
    let feeder = std::thread::spawn(move || {
        let mut into_fifo = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::io::Write::write_all(&mut into_fifo, &sent.stdout).unwrap();
    });
    let copy = dir.path().join("copy");
    common::copy(&before, &copy);
    let out = run_bounded(&["--apply", p(&f), p(&copy)]);
    // (Checked before joining: a receiver that never opened the FIFO leaves the feeder blocked.)
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    feeder.join().unwrap();
    assert!(common::same(&copy, &after));
}

#[test]
fn stream_read_errors_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (_, before, _) = common::classic_fixture(dir.path());
    // A directory opens, but reading it fails (EISDIR).
    let input = dir.path().join("a-directory");
    std::fs::create_dir(&input).unwrap();
    refused(
        &run_bounded(&["--apply", p(&input), p(&before)]),
        &format!(
            "{}: cannot read the stream at byte 0: Is a directory",
            p(&input)
        ),
    );
    let out = Command::new(BIN)
        .args(["--apply", "-", p(&before)])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    refused(
        &out,
        "standard input: cannot read the stream at byte 0: Is a directory",
    );
    let missing = dir.path().join("missing");
    refused(
        &run_bounded(&["--apply", p(&missing), p(&before)]),
        &format!("{}: cannot open the stream for reading", p(&missing)),
    );
}
