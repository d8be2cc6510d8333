//! Snapbacks: what a crash leaves behind rolls back exactly, memory stays bounded, and the
//! snapback file is created safely.

mod common;

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use lvmsync::apply::{apply_stream, ApplyOptions};
use lvmsync::stream::{v4, Format, StreamReader, StreamWriter, WriterOptions};

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lvmsync failed: {err}");
    err
}

fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lvmsync should have failed: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

enum Rec {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn stream(size: u64, records: &[Rec], compress: Option<i32>) -> Vec<u8> {
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: size,
        chunk_bytes: 4096,
        compress,
        snapback: false,
    };
    let mut w = StreamWriter::new(Vec::new(), &opts).unwrap();
    for r in records {
        match r {
            Rec::Data(o, d) => w.data(*o, d).unwrap(),
            Rec::Zero(o, l) => w.zero(*o, *l).unwrap(),
        }
    }
    w.finish().unwrap().0
}

/// Data and zero records, aligned and not, a zero range larger than a piece, and a small
/// unaligned last record (every byte inside it is a cut point below).
fn mixed_records(size: u64, seed: u64) -> Vec<Rec> {
    let data = |o: u64, l: usize, s: u64| Rec::Data(o, common::pattern(l, seed ^ s));
    vec![
        data(0, 8192, 1),
        Rec::Zero(8192, 4096),
        data(20_000, 777, 2),
        data(65536, 1 << 20, 3),
        Rec::Zero((2 << 20) - 4096, (3 << 19) + 4096),
        data(size - 300_000, 70_000, 4),
        data(size - 1000, 300, 5),
    ]
}

/// (start, end) stream positions of each record of a complete stream, and its length.
fn record_spans(bytes: &[u8]) -> Vec<(u64, u64, u64, u64)> {
    let mut r = StreamReader::open(bytes).unwrap();
    let mut spans = Vec::new();
    loop {
        let start = r.position();
        let Some(rec) = r.next_record().unwrap() else {
            break;
        };
        let (off, len) = match rec {
            lvmsync::stream::Record::Data { offset, data } => (offset, data.len() as u64),
            lvmsync::stream::Record::Zero { offset, len } => (offset, len),
            // The snapback's identity record.
            _ => continue,
        };
        spans.push((start, r.position(), off, len));
    }
    spans
}

/// A snapback cut at every record boundary, at every byte inside its last record and inside
/// its end record, applied onto the destination in the worst state write-ahead allows (every
/// range it holds already overwritten with the new data), restores the original exactly.
#[test]
fn cut_snapback_restores_every_recorded_range() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4u64 << 20;
    let before = common::pattern(size as usize, 11);
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    std::fs::write(&dest, &before).unwrap();
    let input = stream(size, &mixed_records(size, 7), None);
    let opts = ApplyOptions {
        snapback: Some(sb.clone()),
        force: false,
    };
    apply_stream(Cursor::new(&input), &dest, &opts).unwrap();
    let after = std::fs::read(&dest).unwrap();
    let snapback = std::fs::read(&sb).unwrap();
    assert!(StreamReader::open(&snapback[..]).unwrap().info().snapback);

    let spans = record_spans(&snapback);
    assert!(spans.len() >= 7, "{} records", spans.len());
    let mut cuts: Vec<u64> = spans.iter().map(|s| s.0).collect();
    let (last_start, last_end, _, _) = *spans.last().unwrap();
    cuts.extend(last_start + 1..=last_end);
    cuts.extend(last_end + 1..snapback.len() as u64);
    let mut state = vec![0u8; size as usize];
    for &cut in &cuts {
        // Write-ahead allows exactly the ranges of complete records to be overwritten.
        state.copy_from_slice(&before);
        let complete: Vec<_> = spans.iter().filter(|s| s.1 <= cut).collect();
        for &&(_, _, off, len) in &complete {
            let r = off as usize..(off + len) as usize;
            state[r.clone()].copy_from_slice(&after[r]);
        }
        std::fs::write(&dest, &state).unwrap();
        let report = apply_stream(
            Cursor::new(&snapback[..cut as usize]),
            &dest,
            &ApplyOptions::default(),
        )
        .unwrap_or_else(|e| panic!("snapback cut at byte {cut}: {e}"));
        let boundary = complete.last().map_or(spans[0].0, |s| s.1);
        assert_eq!(report.interrupted_snapback, Some(boundary), "cut at {cut}");
        assert!(
            std::fs::read(&dest).unwrap() == before,
            "cut at {cut} did not restore the destination"
        );
    }
    // The whole snapback is not "interrupted".
    std::fs::write(&dest, &after).unwrap();
    let report = apply_stream(Cursor::new(&snapback), &dest, &ApplyOptions::default()).unwrap();
    assert_eq!(report.interrupted_snapback, None);
    assert!(std::fs::read(&dest).unwrap() == before);
}

/// Through the command line: a cut snapback restores, exits 0 and says so; an ordinary stream
/// cut the same way is still refused.
#[test]
fn cut_snapback_and_cut_stream_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let size = 4u64 << 20;
    let before = common::pattern(size as usize, 3);
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    let input_path = dir.path().join("stream");
    std::fs::write(&dest, &before).unwrap();
    let input = stream(size, &mixed_records(size, 9), Some(1));
    std::fs::write(&input_path, &input).unwrap();
    ok(&lvmsync()
        .args(["--apply", p(&input_path), p(&dest), "--snapback", p(&sb)])
        .output()
        .unwrap());
    let snapback = std::fs::read(&sb).unwrap();
    let spans = record_spans(&snapback);
    let cut = spans[spans.len() - 2].1 + 10;
    // The crash came before the last record's range was overwritten (write-ahead).
    let (_, _, off, len) = spans[spans.len() - 1];
    let mut state = std::fs::read(&dest).unwrap();
    let r = off as usize..(off + len) as usize;
    state[r.clone()].copy_from_slice(&before[r]);
    std::fs::write(&dest, &state).unwrap();
    let cut_path = dir.path().join("sb.cut");
    std::fs::write(&cut_path, &snapback[..cut as usize]).unwrap();
    let err = ok(&lvmsync()
        .args(["--apply", p(&cut_path), p(&dest)])
        .output()
        .unwrap());
    assert!(
        err.contains(&format!(
            "snapback ends at byte {} without an end record (the apply that wrote it was interrupted); every recorded range restored",
            spans[spans.len() - 2].1
        )),
        "{err}"
    );
    assert!(std::fs::read(&dest).unwrap() == before);

    // The same cut of an ordinary stream is refused.
    let spans = record_spans(&input);
    let cut_input = dir.path().join("stream.cut");
    std::fs::write(&cut_input, &input[..spans[3].1 as usize]).unwrap();
    refused(
        &lvmsync()
            .args(["--apply", p(&cut_input), p(&dest)])
            .output()
            .unwrap(),
        "without an end record",
    );
}

/// Damage far from the end of a snapback is not mistaken for a crash: more follows than an
/// interrupted apply can leave.
#[test]
fn damaged_snapback_is_not_taken_for_an_interrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let mibs = (v4::MAX_SNAPBACK_TAIL >> 20) + 8;
    let size = (mibs + 1) << 20;
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    std::fs::write(&dest, common::pattern(size as usize, 5)).unwrap();
    let records: Vec<Rec> = (0..mibs)
        .map(|i| Rec::Data(i << 20, common::pattern(1 << 20, i)))
        .collect();
    let opts = ApplyOptions {
        snapback: Some(sb.clone()),
        force: false,
    };
    apply_stream(Cursor::new(stream(size, &records, None)), &dest, &opts).unwrap();
    let mut snapback = std::fs::read(&sb).unwrap();
    let spans = record_spans(&snapback);
    snapback[spans[1].0 as usize + 40] ^= 1;
    let err = apply_stream(Cursor::new(&snapback), &dest, &ApplyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad checksum") && err.contains("damaged"),
        "{err}"
    );
}

/// The snapback may not be the destination, by any name; nothing is written when it is.
#[test]
fn snapback_that_is_the_destination_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let before = common::pattern(1 << 20, 2);
    std::fs::write(&dest, &before).unwrap();
    let input_path = dir.path().join("stream");
    std::fs::write(
        &input_path,
        stream(1 << 20, &[Rec::Data(4096, vec![7u8; 4096])], None),
    )
    .unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&dest, &link).unwrap();
    let hard = dir.path().join("hard");
    std::fs::hard_link(&dest, &hard).unwrap();
    for sb in [&dest, &link, &hard] {
        refused(
            &lvmsync()
                .args([
                    "--apply",
                    p(&input_path),
                    p(&dest),
                    "--snapback",
                    p(sb),
                    "--force",
                ])
                .output()
                .unwrap(),
            "cannot be the destination",
        );
        assert!(std::fs::read(&dest).unwrap() == before);
    }
}

/// Snapbacks hold the volume's old data: owner-only, whatever the umask and even when
/// overwriting a file that was readable by all.
#[test]
fn snapback_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, common::pattern(1 << 20, 4)).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
    let input_path = dir.path().join("stream");
    std::fs::write(
        &input_path,
        stream(1 << 20, &[Rec::Data(0, vec![1u8; 4096])], None),
    )
    .unwrap();
    let sb = dir.path().join("sb");
    let old = dir.path().join("old-sb");
    std::fs::write(&old, b"x").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (path, force) in [(&sb, false), (&old, true)] {
        let mut cmd = lvmsync();
        cmd.args(["--apply", p(&input_path), p(&dest), "--snapback", p(path)]);
        if force {
            cmd.arg("--force");
        }
        ok(&cmd.output().unwrap());
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

/// A snapback that cannot be written (its file system is full) names the file, and the
/// destination is left untouched because its old contents were never durable.
#[test]
fn full_snapback_file_system_names_the_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _tmpfs = common::Mounted::tmpfs(&mnt, "256k");
    let size = 8u64 << 20;
    let before = common::pattern(size as usize, 6);
    let dest = dir.path().join("dest");
    std::fs::write(&dest, &before).unwrap();
    let input_path = dir.path().join("stream");
    std::fs::write(
        &input_path,
        stream(size, &[Rec::Data(0, common::pattern(4 << 20, 8))], None),
    )
    .unwrap();
    let sb = mnt.join("sb");
    refused(
        &lvmsync()
            .args(["--apply", p(&input_path), p(&dest), "--snapback", p(&sb)])
            .output()
            .unwrap(),
        &format!(
            "{}: cannot write snapback: No space left on device",
            sb.display()
        ),
    );
    assert!(std::fs::read(&dest).unwrap() == before);
}

/// Zero records count toward the snapback: a stream made only of them rolls back too.
#[test]
fn snapback_of_zero_records_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let size = 6u64 << 20;
    let before = common::pattern(size as usize, 12);
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    std::fs::write(&dest, &before).unwrap();
    let records = [Rec::Zero(100, 5 << 20), Rec::Zero((5 << 20) + 4096, 4096)];
    let opts = ApplyOptions {
        snapback: Some(sb.clone()),
        force: false,
    };
    apply_stream(Cursor::new(stream(size, &records, None)), &dest, &opts).unwrap();
    assert!(std::fs::read(&dest).unwrap()[100..(5 << 20) + 100]
        .iter()
        .all(|&b| b == 0));
    let snapback = std::fs::read(&sb).unwrap();
    assert!(snapback.len() as u64 > 5 << 20);
    apply_stream(Cursor::new(&snapback), &dest, &ApplyOptions::default()).unwrap();
    assert!(std::fs::read(&dest).unwrap() == before);
}

/// A block device as DEST: a snapback path that is another node of the same device (same
/// st_rdev, another inode), or a file on a file system that lives on DEST, is refused and
/// nothing is written.
#[test]
fn snapback_on_the_destination_device_is_refused() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let backing = dir.path().join("backing");
    std::fs::write(&backing, vec![0u8; size as usize]).unwrap();
    let dev = common::LoopDevice::attach(&backing);
    let input_path = dir.path().join("stream");
    std::fs::write(
        &input_path,
        stream(size, &[Rec::Data(1 << 20, vec![7u8; 4096])], None),
    )
    .unwrap();

    let alias = dir.path().join("alias");
    let rdev = std::fs::metadata(&dev.0).unwrap().rdev();
    let c = std::ffi::CString::new(p(&alias)).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod(2) creates a second node of the loop device.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev) },
        0,
        "mknod (the tests run as root)"
    );
    refused(
        &lvmsync()
            .args([
                "--apply",
                p(&input_path),
                &dev.0,
                "--snapback",
                p(&alias),
                "--force",
            ])
            .output()
            .unwrap(),
        "the snapback cannot be the destination",
    );
    assert!(std::fs::metadata(&alias)
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(std::fs::read(&backing).unwrap().iter().all(|&b| b == 0));

    // A file system on DEST holding the snapback.
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", &dev.0])
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(made.success());
    let mnt = dir.path().join("mnt");
    let _mounted = common::Mounted::device(&dev.0, &mnt);
    refused(
        &lvmsync()
            .args([
                "--apply",
                p(&input_path),
                &dev.0,
                "--snapback",
                p(&mnt.join("sb")),
            ])
            .output()
            .unwrap(),
        "the snapback's file system is on the destination",
    );
    assert!(!mnt.join("sb").exists());
    // (The file system writes to DEST on its own: only the stream's range is checked.)
    let mut at = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&dev.0).unwrap(),
        &mut at,
        1 << 20,
    )
    .unwrap();
    assert!(at != vec![7u8; 4096], "the stream's data reached DEST");
}
