//! `lvmsync ... HOST:DEST` end to end through a real OpenSSH server on the loopback interface,
//! with the offline change source (a classic exception-store image captured from LVM 2.03.16)
//! and image files as origin and destination.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sshd::Sshd;

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");

use common::ClassicImages as Images;

fn lvmsync(sshd: &Sshd, extra: &[&str], dest: &str, images: &Images) -> Output {
    let mut cmd = Command::new(LVMSYNC);
    cmd.args(["-e", &sshd.rsh(), "--remote-path", LVMSYNC])
        .args(extra)
        .arg("--cow")
        .arg(&images.cow)
        .arg("--data-source")
        .arg(&images.after)
        .arg(format!("127.0.0.1:{dest}"));
    cmd.output().unwrap()
}

#[test]
fn sync_over_ssh_in_both_formats() {
    let sshd = Sshd::start();
    let images = Images::new();
    for format in ["4", "3"] {
        let dest = images.destination(&format!("dest{format}.img"));
        let out = lvmsync(
            &sshd,
            &["--format", format],
            dest.to_str().unwrap(),
            &images,
        );
        common::assert_success(&out);
        assert!(
            common::same(&dest, &images.after),
            "format {format}: destination differs from the origin"
        );
    }
}

#[test]
fn destination_with_shell_characters_runs_nothing() {
    let sshd = Sshd::start();
    let images = Images::new();
    // A file name cannot hold '/': the injected commands would create `marker` in the remote
    // shell's working directory (the home directory) or in the image folder.
    let marker = format!("lvmsync-test-injected-{}", std::process::id());
    let name = format!("a b;touch {marker};`touch {marker}`$(touch {marker})|touch {marker}.img");
    let dest = images.destination(&name);
    let out = lvmsync(&sshd, &[], dest.to_str().unwrap(), &images);
    common::assert_success(&out);
    assert!(common::same(&dest, &images.after));
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    for dir in [home.as_path(), images.dir.path(), Path::new("/")] {
        assert!(
            !dir.join(&marker).exists(),
            "the destination name ran a command remotely"
        );
    }
}

#[test]
fn snapback_is_written_on_the_remote_side_and_rolls_back() {
    let sshd = Sshd::start();
    let images = Images::new();
    let dest = images.destination("dest.img");
    let snapback = images.path("snap back;x");
    let out = lvmsync(
        &sshd,
        &["-b", snapback.to_str().unwrap()],
        dest.to_str().unwrap(),
        &images,
    );
    common::assert_success(&out);
    assert!(common::same(&dest, &images.after));
    let out = Command::new(LVMSYNC)
        .arg("--apply")
        .arg(&snapback)
        .arg(&dest)
        .output()
        .unwrap();
    common::assert_success(&out);
    assert!(common::same(&dest, &images.before));
}

#[test]
fn remote_failure_fails_the_sender() {
    let sshd = Sshd::start();
    let images = Images::new();
    let missing = images.path("no-such-dir/dest.img");
    let out = lvmsync(&sshd, &[], missing.to_str().unwrap(), &images);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remote: "),
        "receiver's message not relayed: {stderr}"
    );
    assert!(
        stderr.contains("remote apply on 127.0.0.1 failed"),
        "{stderr}"
    );
}

#[test]
fn missing_remote_binary() {
    let sshd = Sshd::start();
    let images = Images::new();
    let dest = images.destination("dest.img");
    let out = Command::new(LVMSYNC)
        .args(["-e", &sshd.rsh(), "--remote-path", "/nonexistent/lvmsync"])
        .arg("--cow")
        .arg(&images.cow)
        .arg("--data-source")
        .arg(&images.after)
        .arg(format!("127.0.0.1:{}", dest.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit status 127"), "{stderr}");
    assert!(common::same(&dest, &images.before));
}

/// A synthetic exception store: `chunks` consecutive origin chunks of `chunk_bytes`, all in
/// one metadata area.
fn write_cow(path: &Path, chunk_bytes: u64, chunks: u64) {
    assert!(chunks < chunk_bytes / 16, "one metadata area only");
    let mut img = vec![0u8; (2 * chunk_bytes) as usize];
    img[0..4].copy_from_slice(&0x7041_6e53u32.to_le_bytes());
    img[4..8].copy_from_slice(&1u32.to_le_bytes());
    img[8..12].copy_from_slice(&1u32.to_le_bytes());
    img[12..16].copy_from_slice(&((chunk_bytes / 512) as u32).to_le_bytes());
    for i in 0..chunks {
        let at = (chunk_bytes + i * 16) as usize;
        img[at..at + 8].copy_from_slice(&i.to_le_bytes());
        img[at + 8..at + 16].copy_from_slice(&(i + 2).to_le_bytes());
    }
    let f = std::fs::File::create(path).unwrap();
    use std::io::Write;
    (&f).write_all(&img).unwrap();
    // the exception store device is as large as the data chunks it holds
    f.set_len((chunks + 2) * chunk_bytes).unwrap();
}

#[test]
fn connection_killed_mid_stream() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (chunk, chunks) = (64 << 10, 1024u64); // 64 MiB of changes
    let cow = dir.path().join("cow.img");
    write_cow(&cow, chunk, chunks);
    // data that neither compresses nor reads as zeros
    let mut data = vec![0u8; (chunk * chunks) as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let origin = dir.path().join("origin.img");
    std::fs::write(&origin, &data).unwrap();
    let dest = dir.path().join("dest.img");
    std::fs::write(&dest, vec![0u8; data.len()]).unwrap();
    // A receiver that never reads: the sender fills every buffer and blocks mid-stream.
    let started = dir.path().join("started");
    let receiver = dir.path().join("stuck-receiver");
    std::fs::write(
        &receiver,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 600\n",
            started.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&receiver, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut sender = Command::new(LVMSYNC)
        .args([
            "-e",
            &sshd.rsh(),
            "--remote-path",
            receiver.to_str().unwrap(),
        ])
        .arg("--cow")
        .arg(&cow)
        .arg("--data-source")
        .arg(&origin)
        .arg(format!("127.0.0.1:{}", dest.display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() || std::fs::read_to_string(&started).unwrap().trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "receiver never started"
        );
        assert!(sender.try_wait().unwrap().is_none(), "sender ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // let the sender fill the pipes, then cut the connection
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        sender.try_wait().unwrap().is_none(),
        "sender finished a stream nobody read"
    );
    assert!(sshd.kill_sessions() > 0);
    let out = sender.wait_with_output().unwrap();
    let sleeper = std::fs::read_to_string(&started).unwrap();
    let _ = Command::new("kill").arg(sleeper.trim()).status();
    assert!(
        !out.status.success(),
        "the sender exited 0 after the connection died"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remote apply on 127.0.0.1 failed"),
        "the error does not say the remote side failed: {stderr}"
    );
    assert!(std::fs::read(&dest).unwrap().iter().all(|&b| b == 0));
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A receiver that knows no sessions, in `dir`: it records its arguments in `dir/args`; given an
/// option it does not know, it prints `refusal` and exits with `status`, as an old lvmsync
/// does; otherwise it reads the stream into `dir/received`. Before exiting on a refusal it
/// closes its output (ssh then tells the sender so) and reads whatever the sender still writes
/// into `dir/received`, which an old lvmsync would not, so that a sender that started the
/// stream before it heard from the receiver is caught.
fn sessionless_receiver(dir: &Path, refusal: &str, status: u8) -> PathBuf {
    let path = dir.join("old-lvmsync");
    let d = shlex::try_quote(dir.to_str().unwrap())
        .unwrap()
        .into_owned();
    script(
        &path,
        &format!(
            r#"printf '%s\n' "$@" > {d}/args
while [ $# -gt 0 ]; do
  case $1 in
    -a|--apply|-b|--snapback|-r|--data-source|-e|--rsh) shift 2 ;;
    -v|--verbose|-d|--debug|-q|--quiet|-s|--stdout|--server) shift ;;
    -*) cat >&2 <<'MSG'
{refusal}
MSG
        exec >&- 2>&-
        cat > {d}/received
        exit {status} ;;
    *) shift ;;
  esac
done
exec cat > {d}/received"#
        ),
    );
    path
}

/// What Ruby lvmsync 3.x prints when OptionParser meets an option it does not know.
const RUBY_REFUSAL: &str =
    "/usr/bin/lvmsync:85:in `main': invalid option: --session (OptionParser::InvalidOption)
\tfrom /usr/bin/lvmsync:388:in `<main>'";

/// What an lvmsync built before sessions prints (clap) when given `--session`.
const CLAP_REFUSAL: &str = "error: unexpected argument '--session' found

  tip: to pass '--session' as a value, use '-- --session'

Usage: lvmsync [OPTIONS] SNAPSHOT [HOST:]DEST

For more information, try '--help'.";

/// Applies a format 3 stream the way Ruby lvmsync 3.x does (`process_dumpdata`): the handshake
/// line, then records of a big-endian u64 byte offset, a big-endian u32 length and the data.
fn apply_like_ruby(stream: &[u8], dest: &Path) {
    let body = stream
        .strip_prefix(b"lvmsync PROTO[3]\n")
        .expect("format 3 handshake");
    let mut image = std::fs::read(dest).unwrap();
    let mut at = 0;
    while at < body.len() {
        let offset = u64::from_be_bytes(body[at..at + 8].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(body[at + 8..at + 12].try_into().unwrap()) as usize;
        image[offset..offset + len].copy_from_slice(&body[at + 12..at + 12 + len]);
        at += 12 + len;
    }
    std::fs::write(dest, image).unwrap();
}

/// A format 4 sync needs a receiver that holds a session; one that knows none (Ruby lvmsync,
/// an lvmsync built before sessions) refuses `--session`. The sender says so in one line and
/// exits 1, having sent nothing: the destination is untouched.
#[test]
fn format4_to_a_sessionless_receiver_is_refused_before_the_stream() {
    let sshd = Sshd::start();
    let images = Images::new();
    for (what, refusal, status) in [("ruby", RUBY_REFUSAL, 1), ("clap", CLAP_REFUSAL, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let receiver = sessionless_receiver(dir.path(), refusal, status);
        let dest = images.destination(&format!("dest-{what}.img"));
        let out = Command::new(LVMSYNC)
            .args(["-e", &sshd.rsh(), "--remote-path"])
            .arg(&receiver)
            .arg("--cow")
            .arg(&images.cow)
            .arg("--data-source")
            .arg(&images.after)
            .arg(format!("127.0.0.1:{}", dest.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert!(args.lines().any(|a| a == "--session"), "{what}: {args}");
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("remote: "))
            .collect();
        assert_eq!(ours.len(), 1, "{what}: not one line of its own: {stderr}");
        let line = ours[0];
        assert!(line.starts_with("lvmsync: "), "{what}: {line}");
        for needle in ["session", "--format 3", &format!("exit status {status}")] {
            assert!(line.contains(needle), "{what}: no {needle:?} in {line}");
        }
        assert!(
            stderr.contains(&format!("remote: {}", refusal.lines().next().unwrap())),
            "{what}: the receiver's own words are not relayed: {stderr}"
        );
        let received = std::fs::read(dir.path().join("received")).unwrap();
        assert!(
            received.is_empty(),
            "{what}: the sender wrote {} bytes before the receiver's hello",
            received.len()
        );
        assert!(
            common::same(&dest, &images.before),
            "{what}: destination written"
        );
    }
}

/// With --format 3 the receiver is started as Ruby lvmsync 3.x started it, with only options
/// Ruby lvmsync knows, and gets a stream that Ruby lvmsync applies.
#[test]
fn format3_reaches_a_ruby_receiver() {
    let sshd = Sshd::start();
    let images = Images::new();
    for flags in [&[][..], &["-v"], &["-q"], &["-d"]] {
        let dir = tempfile::tempdir().unwrap();
        let receiver = sessionless_receiver(dir.path(), RUBY_REFUSAL, 1);
        let dest = images.destination("dest.img");
        let out = Command::new(LVMSYNC)
            .args(["-e", &sshd.rsh(), "--remote-path"])
            .arg(&receiver)
            .args(["--format", "3"])
            .args(flags)
            .arg("--cow")
            .arg(&images.cow)
            .arg("--data-source")
            .arg(&images.after)
            .arg(format!("127.0.0.1:{}", dest.display()))
            .output()
            .unwrap();
        common::assert_success(&out);
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(args[..2], ["--apply", "-"], "{flags:?}");
        assert_eq!(args.last(), Some(&dest.to_str().unwrap()), "{flags:?}");
        assert!(!args.contains(&"--session"), "{flags:?}: {args:?}");
        let received = std::fs::read(dir.path().join("received")).unwrap();
        apply_like_ruby(&received, &dest);
        assert!(
            common::same(&dest, &images.after),
            "{flags:?}: destination differs from the origin"
        );
    }
}

/// Ruby lvmsync 3.x's sender runs `RSH HOST lvmsync --apply - [-v] [-d] DEST` and writes its
/// format 3 stream: lvmsync applies it and, holding no session, writes nothing to its standard
/// output (which the Ruby sender relays as the receiver's messages).
#[test]
fn a_ruby_sender_reaches_lvmsync() {
    let sshd = Sshd::start();
    let images = Images::new();
    // The stream as Ruby's dump_changes writes it: one record per changed range.
    let changes = Command::new(LVMSYNC)
        .args(["changes", "--cow"])
        .arg(&images.cow)
        .output()
        .unwrap();
    common::assert_success(&changes);
    let after = std::fs::read(&images.after).unwrap();
    let mut stream = b"lvmsync PROTO[3]\n".to_vec();
    for line in String::from_utf8(changes.stdout).unwrap().lines() {
        let mut words = line.split(' ');
        let offset: u64 = words.next().unwrap().parse().unwrap();
        let len: u32 = words.next().unwrap().parse().unwrap();
        stream.extend_from_slice(&offset.to_be_bytes());
        stream.extend_from_slice(&len.to_be_bytes());
        stream.extend_from_slice(&after[offset as usize..][..len as usize]);
    }
    for flags in ["", "-v -d"] {
        let dest = images.destination("dest.img");
        let rsh: Vec<String> = shlex::split(&sshd.rsh()).unwrap();
        let mut ssh = Command::new(&rsh[0]);
        ssh.args(&rsh[1..]).arg("127.0.0.1").arg(format!(
            "{LVMSYNC} --apply - {flags} {}",
            shlex::try_quote(dest.to_str().unwrap()).unwrap()
        ));
        let mut child = ssh
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stream).unwrap();
        let out = child.wait_with_output().unwrap();
        common::assert_success(&out);
        assert!(
            out.stdout.is_empty(),
            "{flags:?}: the receiver wrote to its standard output: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            common::same(&dest, &images.after),
            "{flags:?}: destination differs from the origin"
        );
    }
}

/// A receiver whose hello speaks another session protocol (another lvmsync version) is named
/// with its version, and stopped: the sender exits 1 and the destination is untouched.
#[test]
fn a_receiver_of_another_session_protocol_is_refused() {
    use lvmsync::session::{Hello, Message};
    let sshd = Sshd::start();
    let images = Images::new();
    let dir = tempfile::tempdir().unwrap();
    let hello = dir.path().join("hello");
    let mut frame = Vec::new();
    Message::Hello(Hello {
        lvmsync: "9.9.9".into(),
        protocol: 99,
        formats: vec![3, 4, 5],
    })
    .write_to(&mut frame)
    .unwrap();
    std::fs::write(&hello, frame).unwrap();
    // Then it reads the stream, which ends without a record: it fails, as lvmsync would.
    let receiver = dir.path().join("new-lvmsync");
    let q = |p: &Path| shlex::try_quote(p.to_str().unwrap()).unwrap().into_owned();
    script(
        &receiver,
        &format!(
            "cat {}\ncat > /dev/null\necho 'lvmsync: the stream ended before its header' >&2\nexit 1",
            q(&hello)
        ),
    );
    let dest = images.destination("dest.img");
    let out = Command::new(LVMSYNC)
        .args(["-e", &sshd.rsh(), "--remote-path"])
        .arg(&receiver)
        .arg("--cow")
        .arg(&images.cow)
        .arg("--data-source")
        .arg(&images.after)
        .arg(format!("127.0.0.1:{}", dest.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("remote: "))
        .collect();
    assert_eq!(ours.len(), 1, "not one line of its own: {stderr}");
    for needle in ["lvmsync 9.9.9", "protocol 99"] {
        assert!(ours[0].contains(needle), "no {needle:?} in {}", ours[0]);
    }
    assert!(common::same(&dest, &images.before), "destination written");
}
