//! Helpers shared by the integration tests: the fixtures, test data, loop devices, and
//! - [`thin`]: thin-pool metadata as thin-provisioning-tools makes and reads it, edited block
//!   by block;
//! - [`sshd`]: an OpenSSH server on the loopback interface.
//!
//! Each test file takes what it needs; the rest is unused there.
#![allow(dead_code)]

pub mod sshd;
pub mod thin;

use std::io::Read;
use std::path::{Path, PathBuf};

/// The real LVM 2.03.16 artefacts shipped with the tests.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lvm-2.03.16")
        .join(rel)
}

/// The artefacts `tests/vm/capture-fixtures.sh` captures from real LVM.
pub fn captured(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/captured")
        .join(rel)
}

/// Decompresses a gzipped fixture into `dir` and returns the new file's path.
pub fn gunzip_fixture(rel: &str, dir: &Path) -> PathBuf {
    gunzip(&fixture(rel), dir)
}

/// Decompresses `src` (a .gz) into `dir`, under its name without `.gz`.
pub fn gunzip(src: &Path, dir: &Path) -> PathBuf {
    let name = src
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".gz");
    let out = dir.join(name);
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut data)
        .unwrap();
    std::fs::write(&out, data).unwrap();
    out
}

/// The classic fixture unpacked: (snap-cow.img, origin-before.img, origin-after.img).
pub fn classic_fixture(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        gunzip_fixture("classic/snap-cow.img.gz", dir),
        gunzip_fixture("classic/origin-before.img.gz", dir),
        gunzip_fixture("classic/origin-after.img.gz", dir),
    )
}

/// The classic fixture unpacked in a directory of its own: the exception store, the origin as
/// it was at snapshot time (what a destination starts as) and after the writes (the data
/// source).
pub struct ClassicImages {
    pub dir: tempfile::TempDir,
    pub cow: PathBuf,
    pub before: PathBuf,
    pub after: PathBuf,
}

impl ClassicImages {
    pub fn new() -> ClassicImages {
        let dir = tempfile::tempdir().unwrap();
        let (cow, before, after) = classic_fixture(dir.path());
        ClassicImages {
            dir,
            cow,
            before,
            after,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh destination holding the origin as it was at snapshot time.
    pub fn destination(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        copy(&self.before, &p);
        p
    }

    /// The change source: `--cow STORE --data-source ORIGIN`.
    pub fn source_args(&self) -> [&str; 4] {
        [
            "--cow",
            self.cow.to_str().unwrap(),
            "--data-source",
            self.after.to_str().unwrap(),
        ]
    }
}

/// Fails the test with lvmsync's stderr unless it exited 0.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "lvmsync failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running process, as /proc shows it.
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The command line, word by word.
    pub args: Vec<String>,
}

/// Every process /proc lists (those that end while it is read are left out).
pub fn processes() -> Vec<Process> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(Process { pid, ppid, args });
    }
    found
}

/// A deterministic pseudo-random byte pattern (xorshift), so test images differ everywhere.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

/// Equal contents (files or devices), compared a piece at a time: images of hundreds of MiB
/// need not be held in memory.
pub fn same(a: &Path, b: &Path) -> bool {
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            // `a` ended: so must `b`.
            return fb.read(&mut bb[..1]).unwrap() == 0;
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// A loop device over a file, detached when dropped (the tests run as root, like the receiver).
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn attach(backing: &Path) -> LoopDevice {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", backing.to_str().unwrap()])
            .output()
            .expect("losetup (util-linux) is needed");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// A file system mounted on a new directory, unmounted when dropped (the tests run as root).
pub struct Mounted(pub PathBuf);

impl Mounted {
    /// A tmpfs of `size` (as `mount -o size=` takes it) on a new directory `dir`: a file
    /// system that fills up.
    pub fn tmpfs(dir: &Path, size: &str) -> Mounted {
        Mounted::mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        )
    }

    /// The file system on `device`, on a new directory `dir`.
    pub fn device(device: &str, dir: &Path) -> Mounted {
        Mounted::mount(&[device], dir)
    }

    fn mount(args: &[&str], dir: &Path) -> Mounted {
        std::fs::create_dir(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(args)
            .arg(dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount {args:?} {}", dir.display());
        Mounted(dir.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
