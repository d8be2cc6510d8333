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

pub fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
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
