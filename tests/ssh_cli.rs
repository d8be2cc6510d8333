//! `lvmsync ... HOST:DEST` end to end through a real OpenSSH server on the loopback interface,
//! with the offline change source (a classic exception-store image captured from LVM 2.03.16)
//! and image files as origin and destination.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sshd::Sshd;

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");

/// The captured classic snapshot: its exception store, the origin after the writes (data
/// source), and the origin as it was at snapshot time (what a destination starts as).
struct Images {
    dir: tempfile::TempDir,
    cow: PathBuf,
    before: PathBuf,
    after: PathBuf,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        let (cow, before, after) = common::classic_fixture(dir.path());
        Images {
            dir,
            cow,
            before,
            after,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// A fresh destination holding the origin as it was at snapshot time.
    fn destination(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        common::copy(&self.before, &p);
        p
    }
}

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

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "lvmsync failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
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
        assert_success(&out);
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
    assert_success(&out);
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
    assert_success(&out);
    assert!(common::same(&dest, &images.after));
    let out = Command::new(LVMSYNC)
        .arg("--apply")
        .arg(&snapback)
        .arg(&dest)
        .output()
        .unwrap();
    assert_success(&out);
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
