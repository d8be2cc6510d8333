//! `lvmsync --apply -` on another host, run through a remote shell (ssh by default).
//!
//! The remote command line is built word by word. The remote shell command (`--rsh`) is split
//! the way a shell would split it; every word given to the remote host is shell-quoted, because
//! ssh joins its arguments with spaces and hands the result to the remote user's shell. A
//! destination such as `/tmp/a b;touch /tmp/x` therefore arrives as one argument and runs nothing.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::{is_broken_pipe, ReceiverOptions};
use crate::error::{Error, IoContext, Named, Result};
use crate::msg::Verbosity;

/// How long `finish` waits for the remote's output to drain once the remote shell has exited.
/// The pipes normally reach EOF at once; they stay open only when some other process inherited
/// them, e.g. an ssh ControlMaster started by this connection.
const RELAY_DRAIN: Duration = Duration::from_secs(2);

/// The words of the receiver's command line, unquoted.
fn remote_words(
    dest: &str,
    opts: &ReceiverOptions,
    verbosity: Verbosity,
) -> Result<Vec<String>, Error> {
    let mut words = remote_program(&opts.remote_path)?;
    words.extend(["--apply".to_string(), "-".to_string()]);
    if opts.session {
        words.push("--session".to_string());
    }
    if let Some(snapback) = &opts.snapback {
        words.extend(["--snapback".to_string(), snapback.clone()]);
    }
    if opts.force {
        words.push("--force".to_string());
    }
    let verbosity_flags: &[&str] = match verbosity {
        Verbosity::Quiet => &["-q"],
        Verbosity::Normal => &[],
        Verbosity::Verbose => &["-v"],
        Verbosity::Debug => &["-v", "-d"],
    };
    words.extend(verbosity_flags.iter().map(|f| f.to_string()));
    words.push(remote_path_word(dest)?);
    Ok(words)
}

/// The words of lvmsync on the remote host (`--remote-path`), split like a shell would, so
/// that `sudo lvmsync` works.
pub fn remote_program(remote_path: &str) -> Result<Vec<String>, Error> {
    shlex::split(remote_path)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--remote-path {remote_path:?}: unbalanced quotes or empty"
            ))
        })
}

/// A path on the remote host, as the last word of its command line: never empty, never
/// mistaken for an option.
pub fn remote_path_word(dest: &str) -> Result<String, Error> {
    if dest.is_empty() {
        return Err(Error::Usage("no remote destination path given".into()));
    }
    if dest.starts_with('-') {
        return Err(Error::Usage(format!(
            "remote destination {dest:?} starts with '-'; give a path such as ./{dest}"
        )));
    }
    Ok(dest.to_string())
}

/// The full local command: the remote shell's words, the host, then the quoted remote words.
/// Every error is a usage error: the command line cannot reach a remote receiver.
pub fn remote_command(
    host: &str,
    dest: &str,
    opts: &ReceiverOptions,
    verbosity: Verbosity,
) -> Result<Vec<OsString>, Error> {
    shell_command(&opts.rsh, host, remote_words(dest, opts, verbosity)?)
}

/// The local command that runs `words` on `host` through the remote shell `rsh` (split like a
/// shell would): the remote shell's words, the host, then every remote word shell-quoted.
/// Every error is a usage error.
pub fn shell_command(rsh: &str, host: &str, words: Vec<String>) -> Result<Vec<OsString>, Error> {
    let rsh = shlex::split(rsh)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| Error::Usage(format!("--rsh {rsh:?}: unbalanced quotes or empty")))?;
    // A host such as `-oProxyCommand=...` would be read as an option by ssh.
    if host.is_empty() || host.starts_with('-') {
        return Err(Error::Usage(format!("invalid remote host {host:?}")));
    }
    let mut argv: Vec<OsString> = rsh.into_iter().map(OsString::from).collect();
    argv.push(host.into());
    for word in words {
        let quoted = shlex::try_quote(&word)
            .map_err(|_| Error::Usage(format!("remote argument {word:?} contains a NUL byte")))?;
        argv.push(quoted.into_owned().into());
    }
    Ok(argv)
}

/// Starts the remote shell command `argv` (from [`shell_command`]) with its standard input,
/// output and error piped to us.
pub fn spawn_shell(argv: &[OsString]) -> Result<Child, Error> {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                format!("cannot run remote shell {}", argv[0].to_string_lossy()),
                e,
            )
        })
}

/// A running remote receiver. Write the stream to [`RemoteApply::input`], then call
/// [`RemoteApply::finish`]. Dropping it without `finish` kills the remote shell.
pub struct RemoteApply {
    host: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// The receiver's standard output: the back channel of a live session.
    back: Option<BufReader<ChildStdout>>,
    /// One message per relay thread when its pipe reaches EOF.
    relays_done: mpsc::Receiver<()>,
    relays: usize,
    finished: bool,
}

impl RemoteApply {
    /// Starts `RSH... HOST REMOTE_PATH --apply - [--session] [--snapback F] [--force] [-v] [-q]
    /// [-d] DEST`. The receiver's stderr (and without a session its stdout) is copied line by
    /// line to our stderr as `remote: ...`; with a session its stdout is the back channel.
    pub fn spawn(
        host: &str,
        dest: &str,
        opts: &ReceiverOptions,
        verbosity: Verbosity,
    ) -> Result<Self, Error> {
        let mut child = spawn_shell(&remote_command(host, dest, opts, verbosity)?)?;
        let stdin = child.stdin.take();
        let (done_tx, relays_done) = mpsc::channel();
        let mut relays = 0;
        let mut back = None;
        if let Some(out) = child.stdout.take() {
            if opts.session {
                back = Some(BufReader::new(out));
            } else {
                spawn_relay(out, done_tx.clone())?;
                relays += 1;
            }
        }
        if let Some(err) = child.stderr.take() {
            spawn_relay(err, done_tx)?;
            relays += 1;
        }
        Ok(RemoteApply {
            host: host.to_string(),
            child,
            stdin,
            back,
            relays_done,
            relays,
            finished: false,
        })
    }

    /// Where the stream goes. A write error here (EPIPE) usually means the remote side died:
    /// call [`RemoteApply::finish`] for the reason.
    pub fn input(&mut self) -> &mut ChildStdin {
        self.stdin
            .as_mut()
            .expect("the remote's stdin is open until finish")
    }

    /// Closes the stream, waits for the remote shell and its output, and reports its status.
    pub fn finish(mut self) -> Result<(), Error> {
        let status = self.wait()?;
        match failure(&self.host, status) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Closes the stream, waits for the remote shell and its output, and returns its status.
    fn wait(&mut self) -> Result<ExitStatus, Error> {
        self.finished = true;
        drop(self.stdin.take());
        drop(self.back.take());
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io(format!("waiting for the remote apply on {}", self.host), e))?;
        // Let the remote's last words reach our stderr, but never wait forever: a process that
        // inherited the pipes (an ssh ControlMaster) may keep them open long after.
        let deadline = std::time::Instant::now() + RELAY_DRAIN;
        for _ in 0..self.relays {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.relays_done.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(status)
    }

    /// Sends a stream: `write` writes it whole into the remote's input, reading the session's
    /// back channel if there is one. When anything fails, the remote's own account (its exit
    /// status, relayed stderr) comes first: a broken pipe here is only the symptom.
    pub fn send<T>(
        mut self,
        write: impl FnOnce(&mut dyn Write, Option<&mut dyn Read>) -> Result<T>,
    ) -> Result<T> {
        let host = self.host.clone();
        let mut back = self.back.take();
        if let Some(b) = back.as_mut() {
            match super::expect_hello(b, &format!("the receiver on {host}")) {
                Ok(()) => {}
                // A hello this lvmsync cannot work with: dropping `self` stops the receiver.
                Err(e @ Error::Invalid(_)) => return Err(e),
                // No hello at all: the remote shell or the receiver failed to start, or the
                // receiver knows no sessions and refused `--session`.
                Err(e) => {
                    drop(back);
                    let status = self.wait()?;
                    return Err(match status.code() {
                        Some(127 | 255) => failure(&host, status).unwrap_or(e),
                        _ => Error::Invalid(format!(
                            "the receiver on {host} did not start a session ({}): a format 4 sync needs lvmsync {} there, not Ruby lvmsync or an lvmsync without sessions; install it there, or send --format 3",
                            reason(status),
                            env!("CARGO_PKG_VERSION")
                        )),
                    });
                }
            }
        }
        let context = format!("stream to {host}: cannot write");
        let mut out = BufWriter::with_capacity(1 << 20, Named::new(self.input(), context.clone()));
        let sent = write(&mut out, back.as_mut().map(|b| b as &mut dyn Read)).and_then(|r| {
            out.flush().ctx(|| context)?;
            Ok(r)
        });
        drop(out);
        // Closing the stream lets the receiver finish; on a session it then says so.
        drop(self.stdin.take());
        let done = match (&sent, back.as_mut()) {
            (Ok(_), Some(b)) => super::expect_done(b),
            _ => Ok(()),
        };
        drop(back);
        match sent {
            Ok(r) => {
                self.finish()?;
                done?;
                Ok(r)
            }
            Err(e) if is_broken_pipe(&e) || is_session_end(&e) => {
                self.finish()?;
                Err(Error::Invalid(format!(
                    "the connection to {host} closed before the stream was complete"
                )))
            }
            // Our own failure: dropping `self` kills the remote shell before it sees a clean end.
            Err(e) => Err(e),
        }
    }
}

/// Whether the receiver stopped or failed on the session: the remote says why itself.
fn is_session_end(e: &Error) -> bool {
    matches!(e, Error::Receiver(_))
}

impl Drop for RemoteApply {
    fn drop(&mut self) {
        if !self.finished {
            // Abandoned (an error on our side): do not let the remote apply a stream that
            // merely stopped; kill the remote shell and reap it.
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The error a remote shell's exit status means, if any.
fn failure(host: &str, status: ExitStatus) -> Option<Error> {
    failure_reason(status)
        .map(|why| Error::Invalid(format!("remote apply on {host} failed ({why})")))
}

/// Why a remote shell's exit status is a failure (`None`: it succeeded), in words that point
/// to the likely cause.
pub(crate) fn failure_reason(status: ExitStatus) -> Option<String> {
    if status.success() {
        return None;
    }
    Some(match status.code() {
        Some(127) => "exit status 127: command not found; check --remote-path and the remote PATH"
            .to_string(),
        Some(2) => "exit status 2: the remote lvmsync refused its command line; \
                    check --remote-path and the remote lvmsync's version"
            .to_string(),
        Some(255) => "exit status 255: the remote shell reported an error".to_string(),
        _ => reason(status),
    })
}

/// "exit status N" or "killed by signal N".
fn reason(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// Copies `pipe` to our stderr line by line with a `remote: ` prefix, then reports EOF on `done`.
fn spawn_relay<R: Read + Send + 'static>(pipe: R, done: mpsc::Sender<()>) -> Result<(), Error> {
    thread::Builder::new()
        .name("remote-relay".into())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if !line.ends_with(b"\n") {
                            line.push(b'\n');
                        }
                        line.splice(0..0, *b"remote: ");
                        crate::msg::raw(&line);
                    }
                }
            }
            let _ = done.send(());
        })
        .map_err(|e| Error::io("starting the remote output relay", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::{Path, PathBuf};

    fn opts(rsh: &str, remote_path: &str) -> ReceiverOptions {
        ReceiverOptions {
            rsh: rsh.into(),
            remote_path: remote_path.into(),
            ..ReceiverOptions::default()
        }
    }

    #[test]
    fn rsh_is_split_like_a_shell() {
        let argv = remote_command(
            "h",
            "/dev/x",
            &opts(r#"ssh -p 2222 -o "ProxyCommand x y""#, "lvmsync"),
            Verbosity::Normal,
        )
        .unwrap();
        let argv: Vec<_> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "ssh",
                "-p",
                "2222",
                "-o",
                "ProxyCommand x y",
                "h",
                "lvmsync",
                "--apply",
                "-",
                "/dev/x"
            ]
        );
    }

    #[test]
    fn options_are_forwarded_in_order() {
        let o = ReceiverOptions {
            snapback: Some("/sb/my file".into()),
            force: true,
            ..opts("ssh", "/usr/local/bin/lvmsync")
        };
        let argv = remote_command("h", "/dev/vg/lv", &o, Verbosity::Debug).unwrap();
        let argv: Vec<_> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "ssh",
                "h",
                "/usr/local/bin/lvmsync",
                "--apply",
                "-",
                "--snapback",
                "'/sb/my file'",
                "--force",
                "-v",
                "-d",
                "/dev/vg/lv"
            ]
        );
    }

    #[test]
    fn verbosity_goes_as_the_flags_that_set_it() {
        for (verbosity, flags) in [
            (Verbosity::Quiet, &["-q"][..]),
            (Verbosity::Normal, &[]),
            (Verbosity::Verbose, &["-v"]),
            (Verbosity::Debug, &["-v", "-d"]),
        ] {
            let words = remote_words("/d", &ReceiverOptions::default(), verbosity).unwrap();
            let want: Vec<&str> = ["lvmsync", "--apply", "-"]
                .iter()
                .chain(flags)
                .chain(&["/d"])
                .copied()
                .collect();
            assert_eq!(words, want, "{verbosity:?}");
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        let o = opts("ssh", "lvmsync");
        assert!(remote_command("-oProxyCommand=x", "/d", &o, Verbosity::Normal).is_err());
        assert!(remote_command("", "/d", &o, Verbosity::Normal).is_err());
        assert!(remote_command("h", "", &o, Verbosity::Normal).is_err());
        assert!(remote_command("h", "-rf", &o, Verbosity::Normal).is_err());
        assert!(remote_command("h", "/a\0b", &o, Verbosity::Normal).is_err());
        let normal = Verbosity::Normal;
        assert!(remote_command("h", "/d", &opts("ssh 'unclosed", "lvmsync"), normal).is_err());
        assert!(remote_command("h", "/d", &opts("", "lvmsync"), normal).is_err());
        assert!(remote_command("h", "/d", &opts("ssh", "  "), normal).is_err());
    }

    /// A stand-in for ssh: drops the host, joins the rest with spaces and runs it with `sh -c`,
    /// exactly what sshd does with the words it receives.
    const FAKE_SSH: &str = r#"sh -c 'shift; exec sh -c "$*"' fake-ssh"#;

    /// Starts `recv` as the receiver of `/dev/x` through the stand-in ssh.
    fn fake_remote(host: &str, recv: &Path) -> RemoteApply {
        let opts = opts(FAKE_SSH, recv.to_str().unwrap());
        RemoteApply::spawn(host, "/dev/x", &opts, Verbosity::Normal).unwrap()
    }

    fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn remote_words_arrive_intact_and_run_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        let input = dir.path().join("input");
        let pwned = dir.path().join("pwned");
        let recv = write_script(
            dir.path(),
            "recv dir$x",
            &format!(
                "printf '%s\\n' \"$@\" > '{}'; cat > '{}'",
                args.display(),
                input.display()
            ),
        );
        let dest = format!(
            "/tmp/a b;touch {} `touch {}` $(touch {})",
            pwned.display(),
            pwned.display(),
            pwned.display()
        );
        let o = ReceiverOptions {
            snapback: Some("x'y\"z".into()),
            ..opts(FAKE_SSH, &shlex::try_quote(recv.to_str().unwrap()).unwrap())
        };
        let mut apply = RemoteApply::spawn("somehost", &dest, &o, Verbosity::Normal).unwrap();
        apply.input().write_all(b"stream bytes").unwrap();
        apply.finish().unwrap();
        let got = std::fs::read_to_string(&args).unwrap();
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got, ["--apply", "-", "--snapback", "x'y\"z", dest.as_str()]);
        assert_eq!(std::fs::read(&input).unwrap(), b"stream bytes");
        assert!(!pwned.exists());
    }

    #[test]
    fn remote_failure_is_reported_even_after_a_broken_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let recv = write_script(
            dir.path(),
            "recv",
            "echo 'cannot open destination' >&2; exit 3",
        );
        let mut apply = fake_remote("h1", &recv);
        let chunk = vec![0u8; 1 << 16];
        let mut write_error = None;
        for _ in 0..1024 {
            if let Err(e) = apply.input().write_all(&chunk) {
                write_error = Some(e);
                break;
            }
        }
        assert_eq!(
            write_error
                .expect("the receiver exited; writes must fail")
                .kind(),
            io::ErrorKind::BrokenPipe
        );
        let err = apply.finish().unwrap_err().to_string();
        assert_eq!(err, "remote apply on h1 failed (exit status 3)");
    }

    #[test]
    fn missing_remote_binary_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-lvmsync");
        let apply = fake_remote("h", &missing);
        let err = apply.finish().unwrap_err().to_string();
        assert!(
            err.contains("exit status 127") && err.contains("--remote-path"),
            "{err}"
        );
    }

    #[test]
    fn a_remote_usage_error_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let recv = write_script(dir.path(), "recv", "echo 'unknown option' >&2; exit 2");
        let apply = fake_remote("h", &recv);
        let err = apply.finish().unwrap_err().to_string();
        assert!(
            err.contains("exit status 2: the remote lvmsync refused its command line"),
            "{err}"
        );
    }

    #[test]
    fn missing_remote_shell_is_an_error() {
        let err = RemoteApply::spawn(
            "h",
            "/d",
            &opts("/nonexistent/ssh", "lvmsync"),
            Verbosity::Normal,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("cannot run remote shell /nonexistent/ssh"),
            "{err}"
        );
    }

    #[test]
    fn finish_does_not_wait_for_a_process_that_inherited_the_output() {
        // Like an ssh ControlMaster: a background process keeps the stderr pipe open after the
        // remote shell exited successfully.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let recv = write_script(
            dir.path(),
            "recv",
            &format!(
                "cat > /dev/null; sleep 600 & echo $! > '{}'",
                pidfile.display()
            ),
        );
        let apply = fake_remote("h", &recv);
        let result = apply.finish();
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let _ = Command::new("kill").arg(pid.trim()).status();
        result.unwrap();
    }

    #[test]
    fn signal_death_is_reported() {
        let apply = RemoteApply::spawn(
            "h",
            "/d",
            &opts("sh -c 'kill -9 $$' rsh", "lvmsync"),
            Verbosity::Normal,
        )
        .unwrap();
        let err = apply.finish().unwrap_err().to_string();
        assert_eq!(err, "remote apply on h failed (killed by signal 9)");
    }
}
