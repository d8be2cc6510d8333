//! `lvmsync --full SOURCE DEST`, the first copy, on image files and loop devices: the copy
//! equals the source, zeros travel as zero ranges and leave holes in a sparse destination, a
//! destination that is too small is refused with nothing written, and the stream can go
//! through standard output and `--apply`, or over ssh.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use lvmsync::stream::manifest::StreamIdentity;
use lvmsync::stream::{Record, StreamReader};

const LVMSYNC: &str = env!("CARGO_BIN_EXE_lvmsync");
const MIB: u64 = 1 << 20;

fn lvmsync(args: &[&str]) -> Output {
    Command::new(LVMSYNC).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse image of `size` bytes with pseudo-random data at each `(offset, len)`, zeros
/// elsewhere.
fn sparse_image(path: &Path, size: u64, data: &[(u64, usize)]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(offset, len)) in data.iter().enumerate() {
        f.write_all_at(&common::pattern(len, 100 + i as u64), offset)
            .unwrap();
    }
}

/// A fully written image: pseudo-random bytes everywhere.
fn full_image(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, common::pattern(size, seed)).unwrap();
}

/// A sparse destination of `size` bytes (never written).
fn empty_dest(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// What a file system may allocate for a file's own metadata (an extent tree block), counted
/// in its allocated blocks.
const FS_METADATA: u64 = 64 << 10;

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The scattered data of the sparse tests: 3 MiB in a 64 MiB volume, some of it unaligned.
const SPARSE_SIZE: u64 = 64 * MIB;
const SPARSE_DATA: [(u64, usize); 4] = [
    (0, 4096),
    (5 * MIB + 100, 300_000),
    (30 * MIB, 2 << 20),
    (SPARSE_SIZE - 5000, 5000),
];
/// The bytes the sparse data can touch, counted in the 64 KiB granules lvmsync looks for zeros
/// in (what a copy may allocate at most).
fn sparse_granule_bytes() -> u64 {
    let g = 64 << 10;
    SPARSE_DATA
        .iter()
        .map(|&(o, l)| (o + l as u64).div_ceil(g) * g - o / g * g)
        .sum()
}

#[test]
fn a_full_copy_equals_the_source_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of 4 KiB: the last piece cannot be read with O_DIRECT.
    let size = 9 * MIB as usize + 12345;
    let src = dir.path().join("src.img");
    full_image(&src, size, 1);
    for format in ["4", "3"] {
        let dest = dir.path().join(format!("dest{format}.img"));
        full_image(&dest, size, 2);
        let out = lvmsync(&["--full", "--format", format, s(&src), s(&dest)]);
        common::assert_success(&out);
        assert!(common::same(&src, &dest), "format {format}: copy differs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("lvmsync: copied 9.01 MiB in ") && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

#[test]
fn a_sparse_source_leaves_holes_in_a_sparse_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    // Onto a destination never written, and onto one full of other data.
    let fresh = dir.path().join("fresh.img");
    empty_dest(&fresh, SPARSE_SIZE);
    let used = dir.path().join("used.img");
    full_image(&used, SPARSE_SIZE as usize, 3);
    for dest in [&fresh, &used] {
        let out = lvmsync(&["--full", s(&src), s(dest)]);
        common::assert_success(&out);
        assert!(common::same(&src, dest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(" of zeros ("), "{stderr}");
        let allocated = allocated(dest);
        assert!(
            allocated <= sparse_granule_bytes() + FS_METADATA,
            "{}: {allocated} bytes allocated for {} bytes of data granules",
            dest.display(),
            sparse_granule_bytes()
        );
    }
}

/// The stream itself: zero ranges, not data full of zeros, and an identity of kind "full".
#[test]
fn the_stream_has_a_full_identity_and_zero_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    let out = Command::new(LVMSYNC)
        .args(["--full", "--stdout", s(&src)])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    common::assert_success(&out);
    let mut reader = StreamReader::open(&out.stdout[..]).unwrap();
    assert_eq!(reader.info().source_bytes, Some(SPARSE_SIZE));
    let mut identity = None;
    let (mut data, mut zero, mut zero_records, mut manifest) = (0u64, 0u64, 0, false);
    while let Some(r) = reader.next_record().unwrap() {
        match r {
            Record::Identity(json) => identity = Some(StreamIdentity::from_json(json).unwrap()),
            Record::Data { data: d, .. } => data += d.len() as u64,
            Record::Zero { len, .. } => {
                zero += len;
                zero_records += 1;
            }
            Record::Manifest(_) | Record::Resolution(_) => manifest = true,
        }
    }
    let identity = identity.expect("an identity record");
    assert_eq!(identity.kind, "full");
    assert_eq!(
        identity.snapshot.and_then(|v| v.name).as_deref(),
        Some(s(&src))
    );
    assert!(!manifest, "a first copy carries no manifest");
    assert_eq!(data + zero, SPARSE_SIZE);
    // The data, in whole file blocks (the image's holes are not even read) or 64 KiB granules.
    let written: u64 = SPARSE_DATA.iter().map(|&(_, l)| l as u64).sum();
    assert!(
        (written..=sparse_granule_bytes()).contains(&data),
        "{data} bytes of data records for {written} bytes of data"
    );
    // One zero range between each two data ranges: merged across read pieces.
    assert_eq!(zero_records, SPARSE_DATA.len() - 1);
}

#[test]
fn stdout_then_apply_in_both_formats_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    for args in [&["--format", "4"][..], &["--format", "3"], &["-z"]] {
        let stream = dir.path().join("stream");
        let out = Command::new(LVMSYNC)
            .args(["--full", "-q", "--stdout"])
            .args(args)
            .arg(&src)
            .stdout(std::fs::File::create(&stream).unwrap())
            .output()
            .unwrap();
        common::assert_success(&out);
        assert!(out.stderr.is_empty(), "-q: {:?}", out.stderr);
        let dest = dir.path().join("dest.img");
        full_image(&dest, SPARSE_SIZE as usize, 4);
        common::assert_success(&lvmsync(&["--apply", s(&stream), s(&dest)]));
        assert!(common::same(&src, &dest), "{args:?}");
    }
}

/// A destination smaller than the volume is refused before anything is written: by the sender
/// for a local one, by the receiver from the stream header (format 4), and by the receiver at
/// the first record of a format 3 stream (which starts with the volume's last bytes).
#[test]
fn a_destination_too_small_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    full_image(&src, 8 * MIB as usize, 5);
    let dest = dir.path().join("dest.img");
    let before = common::pattern(8 * MIB as usize - 4096, 6);
    let check = |out: &Output, want: &str| {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(
            std::fs::read(&dest).unwrap() == before,
            "something was written"
        );
    };
    std::fs::write(&dest, &before).unwrap();
    for format in ["4", "3"] {
        let out = lvmsync(&["--full", "--format", format, s(&src), s(&dest)]);
        check(
            &out,
            &format!(
                "dest.img: destination is 8384512 bytes, smaller than the 8388608-byte volume of {}; nothing written",
                src.display()
            ),
        );
        let stream = dir.path().join(format!("stream{format}"));
        let out = Command::new(LVMSYNC)
            .args(["--full", "-q", "--format", format, "--stdout", s(&src)])
            .stdout(std::fs::File::create(&stream).unwrap())
            .output()
            .unwrap();
        common::assert_success(&out);
        let out = lvmsync(&["--apply", s(&stream), s(&dest)]);
        check(
            &out,
            match format {
                "4" => "smaller than the stream's source of 8388608 bytes; nothing written",
                _ => "record at byte 8384512 of 4096 bytes reaches past the end of the destination",
            },
        );
    }
}

/// Block devices: a loop device as the source (read with O_DIRECT) and as the destination.
#[test]
fn loop_devices_as_source_and_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    let backing = dir.path().join("dest-backing.img");
    full_image(&backing, SPARSE_SIZE as usize, 7);
    let src_dev = common::LoopDevice::attach(&src);
    let dest_dev = common::LoopDevice::attach(&backing);
    let out = lvmsync(&["--full", &src_dev.0, &dest_dev.0]);
    common::assert_success(&out);
    drop(dest_dev);
    assert!(common::same(&src, &backing));
    // The loop device passes zero ranges on as discards: the backing file has holes.
    let allocated = allocated(&backing);
    assert!(
        allocated <= sparse_granule_bytes() + FS_METADATA,
        "{allocated} bytes allocated for {} bytes of data granules",
        sparse_granule_bytes()
    );
}

#[test]
fn a_snapback_of_a_full_copy_restores_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    let dest = dir.path().join("dest.img");
    full_image(&dest, SPARSE_SIZE as usize, 8);
    let old = std::fs::read(&dest).unwrap();
    let snapback = dir.path().join("snapback");
    common::assert_success(&lvmsync(&["--full", "-b", s(&snapback), s(&src), s(&dest)]));
    assert!(common::same(&src, &dest));
    common::assert_success(&lvmsync(&["--apply", s(&snapback), s(&dest)]));
    assert!(std::fs::read(&dest).unwrap() == old);
}

#[test]
fn full_copy_over_ssh_in_both_formats() {
    let sshd = common::sshd::Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, SPARSE_SIZE, &SPARSE_DATA);
    for format in ["4", "3"] {
        let dest = dir.path().join(format!("dest{format}.img"));
        full_image(&dest, SPARSE_SIZE as usize, 9);
        let out = lvmsync(&[
            "--full",
            "--format",
            format,
            "-e",
            &sshd.rsh(),
            "--remote-path",
            LVMSYNC,
            s(&src),
            &format!("127.0.0.1:{}", dest.display()),
        ]);
        common::assert_success(&out);
        assert!(common::same(&src, &dest), "format {format}");
    }
    // A remote destination that is too small: the receiver refuses it from the header.
    let small = dir.path().join("small.img");
    let before = common::pattern(MIB as usize, 10);
    std::fs::write(&small, &before).unwrap();
    let out = lvmsync(&[
        "--full",
        "-e",
        &sshd.rsh(),
        "--remote-path",
        LVMSYNC,
        s(&src),
        &format!("127.0.0.1:{}", small.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("smaller than the stream's source of 67108864 bytes; nothing written"),
        "{stderr}"
    );
    assert!(std::fs::read(&small).unwrap() == before);
}

#[test]
fn what_full_cannot_copy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest.img");
    empty_dest(&dest, MIB);
    let missing = dir.path().join("missing.img");
    let out = lvmsync(&["--full", s(&missing), s(&dest)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.img: no such device"), "{stderr}");
    let out = lvmsync(&["--full", "--data-source", s(&dest), s(&dest), s(&dest)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--full copies SNAPSHOT itself and takes no --data-source"),
        "{stderr}"
    );
}

/// On a terminal a first copy shows a bar with the bytes copied of the whole, the rate and the
/// time left (which it clears at the end, leaving the summary); elsewhere, only the summary.
#[test]
fn progress_on_a_terminal_shows_the_rate_and_the_time_left() {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    full_image(&src, 64 * MIB as usize, 7);
    let dest = dir.path().join("dest.img");
    empty_dest(&dest, 64 * MIB);

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let terminal_path = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(terminal_path.to_str().unwrap())
        .unwrap();
    let mut child = Command::new(LVMSYNC)
        .args(["--full", s(&src), s(&dest)])
        .stdout(Stdio::null())
        .stderr(terminal)
        .spawn()
        .unwrap();
    // Read until the terminal's last holder (lvmsync) is gone: then reads fail with EIO.
    let mut master = std::fs::File::from(master);
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&shown);
    assert!(common::same(&src, &dest));
    assert!(
        shown.contains("/64.00 MiB "),
        "no bytes of the whole: {shown:?}"
    );
    assert!(
        shown.contains("/s eta "),
        "no rate and time left: {shown:?}"
    );
    assert!(shown.contains("lvmsync: copied 64.00 MiB in "), "{shown:?}");

    let out = lvmsync(&["--full", s(&src), s(&dest)]);
    common::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("eta"),
        "a bar where no terminal is: {stderr}"
    );
}
