//! The remote transport through a real OpenSSH server on the loopback interface.
//!
//! Needs `sshd` and `ssh-keygen` (Debian: openssh-server) and root (the server logs in as the
//! user running the tests, authorised by a generated key).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::sshd::Sshd;
use lvmsync::msg::Verbosity;
use lvmsync::transport::{ReceiverOptions, RemoteApply};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn options(sshd: &Sshd, remote_path: &Path) -> ReceiverOptions {
    ReceiverOptions {
        rsh: sshd.rsh(),
        remote_path: shlex::try_quote(remote_path.to_str().unwrap())
            .unwrap()
            .into_owned(),
        ..ReceiverOptions::default()
    }
}

/// Starts `opts`' receiver of `dest` on the test server.
fn spawn(dest: &str, opts: &ReceiverOptions) -> RemoteApply {
    RemoteApply::spawn("127.0.0.1", dest, opts, Verbosity::Normal).unwrap()
}

#[test]
fn arguments_arrive_as_words_and_run_nothing() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let args = dir.path().join("args");
    let input = dir.path().join("input");
    let pwned = dir.path().join("pwned");
    let recv = script(
        dir.path(),
        "receiver with space",
        &format!(
            "printf '%s\\n' \"$@\" > '{}'; cat > '{}'",
            args.display(),
            input.display()
        ),
    );
    let p = pwned.display();
    let dest = format!("/tmp/a b;touch {p};`touch {p}`$(touch {p})|touch {p}&&touch {p}\ttab");
    let opts = ReceiverOptions {
        snapback: Some(format!("sb'{p}'\"x\"")),
        ..options(&sshd, &recv)
    };
    let mut apply = RemoteApply::spawn("127.0.0.1", &dest, &opts, Verbosity::Verbose).unwrap();
    apply.input().write_all(b"stream over ssh").unwrap();
    apply.finish().unwrap();
    let got = std::fs::read_to_string(&args).unwrap();
    let sb = format!("sb'{p}'\"x\"");
    let want = [
        "--apply",
        "-",
        "--snapback",
        sb.as_str(),
        "-v",
        dest.as_str(),
    ];
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    assert_eq!(std::fs::read(&input).unwrap(), b"stream over ssh");
    assert!(!pwned.exists(), "a remote argument ran a command");
}

#[test]
fn remote_exit_status_is_reported() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let recv = script(
        dir.path(),
        "recv",
        "cat > /dev/null; echo 'no such device' >&2; exit 4",
    );
    let mut apply = spawn("/dev/x", &options(&sshd, &recv));
    apply.input().write_all(&[0u8; 1000]).unwrap();
    let err = apply.finish().unwrap_err().to_string();
    assert_eq!(err, "remote apply on 127.0.0.1 failed (exit status 4)");
}

#[test]
fn missing_remote_binary() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let apply = spawn(
        "/dev/x",
        &options(&sshd, &dir.path().join("no-lvmsync-here")),
    );
    let err = apply.finish().unwrap_err().to_string();
    assert!(
        err.starts_with("remote apply on 127.0.0.1 failed (exit status 127"),
        "{err}"
    );
}

#[test]
fn connection_killed_mid_stream() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let recv = script(
        dir.path(),
        "recv",
        &format!("touch '{}'; cat > /dev/null", started.display()),
    );
    let mut apply = spawn("/dev/x", &options(&sshd, &recv));
    let chunk = vec![0x5au8; 1 << 16];
    let mut written: u64 = 0;
    let mut killed = false;
    let mut write_error = None;
    // Far more than any pipe and socket buffers hold: the kill must stop the writes.
    while written < 64 << 30 {
        if let Err(e) = apply.input().write_all(&chunk) {
            write_error = Some(e);
            break;
        }
        written += chunk.len() as u64;
        if !killed && written >= 8 << 20 && started.exists() {
            assert!(sshd.kill_sessions() > 0, "no ssh session to kill");
            killed = true;
        }
    }
    assert!(killed);
    let e = write_error.expect("writes kept succeeding after the connection died");
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    let err = apply.finish().unwrap_err().to_string();
    assert!(
        err.starts_with("remote apply on 127.0.0.1 failed (exit status 255"),
        "{err}"
    );
}

/// Transfers sharing an ssh ControlMaster connection that the first one started and that
/// outlives it: data and exit status pass through, and finishing does not wait for the master.
/// (OpenSSH 9.2 detaches the master from the pipes; the unit test
/// `finish_does_not_wait_for_a_process_that_inherited_the_output` covers a process that keeps
/// them open.)
#[test]
fn through_a_control_master() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("cm");
    let rsh = format!(
        "{} -o ControlMaster=auto -o ControlPersist=120 -o ControlPath={}",
        sshd.rsh().replace(" -o ControlMaster=no", ""),
        control.display()
    );
    let input = dir.path().join("input");
    let recv = script(
        dir.path(),
        "recv",
        &format!("cat > '{}'; echo done >&2", input.display()),
    );
    for (round, want_ok) in [(1, true), (2, true)] {
        let opts = ReceiverOptions {
            rsh: rsh.clone(),
            ..options(&sshd, &recv)
        };
        let mut apply = spawn("/dev/x", &opts);
        apply
            .input()
            .write_all(format!("round {round}").as_bytes())
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(apply.finish().map_err(|e| e.to_string())));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("finish hung behind the ControlMaster");
        assert_eq!(result.is_ok(), want_ok, "{result:?}");
        assert_eq!(
            std::fs::read_to_string(&input).unwrap(),
            format!("round {round}")
        );
    }
    // a failing receiver through the shared connection is still reported
    let bad = script(dir.path(), "bad", "cat > /dev/null; exit 6");
    let opts = ReceiverOptions {
        rsh: rsh.clone(),
        ..options(&sshd, &bad)
    };
    let apply = spawn("/dev/x", &opts);
    let err = apply.finish().unwrap_err().to_string();
    assert_eq!(err, "remote apply on 127.0.0.1 failed (exit status 6)");
    let mut exit = std::process::Command::new("ssh");
    exit.args([
        "-o",
        &format!("ControlPath={}", control.display()),
        "-O",
        "exit",
        "127.0.0.1",
    ]);
    let _ = exit.output();
}
