//! `kill -9` at random moments of `--apply --snapback`: each time, applying the snapback left
//! behind restores the destination's exact bytes and exits 0. Streams: format 4 with and
//! without a manifest, and format 3 with its records unsorted, as Ruby lvmsync sends them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lvmsync::stream::{Format, StreamWriter, WriterOptions};

const SIZE: u64 = 24 << 20;
const KILLS: usize = 50;

fn lvmsync_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lvmsync")
}

/// Data records of 64 KiB to 1 MiB with 1 MiB zero records between them, as a thin delta with
/// discards has: about 20 MiB, several batches.
fn make_stream() -> Vec<u8> {
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: SIZE,
        chunk_bytes: 65536,
        compress: None,
        snapback: false,
    };
    let mut w = StreamWriter::new(Vec::new(), &opts).unwrap();
    let mut at = 0u64;
    let mut i = 0u64;
    while at + (2 << 20) < SIZE {
        let len = 65536 * (1 + (i * 7) % 16);
        w.data(at, &common::pattern(len as usize, i + 100)).unwrap();
        at += len;
        if i.is_multiple_of(2) {
            w.zero(at, 1 << 20).unwrap();
            at += 1 << 20;
        }
        at += 65536;
        i += 1;
    }
    w.finish().unwrap().0
}

/// The same changes as [`make_stream`], as Ruby lvmsync 3.x sends them: format 3 (zero ranges as
/// data), one record per 64 KiB chunk, in a shuffled order (its exception table's).
fn make_unsorted_v3_stream() -> Vec<u8> {
    use lvmsync::stream::{Record, StreamReader};
    let plain = make_stream();
    let mut chunks = Vec::new();
    let mut r = StreamReader::open(&plain[..]).unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        let (offset, data) = match rec {
            Record::Data { offset, data } => (offset, data.to_vec()),
            Record::Zero { offset, len } => (offset, vec![0u8; len as usize]),
            _ => continue,
        };
        for (i, chunk) in data.chunks(65536).enumerate() {
            chunks.push((offset + i as u64 * 65536, chunk.to_vec()));
        }
    }
    let mut rng = Rng(0x5eed_3333);
    for i in (1..chunks.len()).rev() {
        chunks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut out = lvmsync::stream::v3::HANDSHAKE.to_vec();
    for (offset, data) in chunks {
        out.extend_from_slice(&lvmsync::stream::v3::record_header(
            offset,
            data.len() as u32,
        ));
        out.extend_from_slice(&data);
    }
    out
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Outcomes {
    no_snapback_yet: usize,
    cut_snapback: usize,
    complete_snapback: usize,
    /// Kills that left DEST partly written (neither as before nor as after the sync).
    dest_half_written: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Format 4 without a manifest.
    Plain,
    /// Format 4 with a manifest (the apply is checked, and resumed after each kill).
    Checked,
    /// Format 3, unsorted.
    UnsortedV3,
}

/// The same changes as [`make_stream`], as a stream with a manifest made against `before` (the
/// snapshot's contents, which DEST holds): written to `dir/stream`.
fn make_checked_stream(before: &[u8], dir: &Path) -> Vec<u8> {
    use lvmsync::extent::{Extent, ExtentList};
    use lvmsync::stream::{Record, StreamReader};
    let plain = make_stream();
    let mut origin = before.to_vec();
    let mut extents = Vec::new();
    let mut r = StreamReader::open(&plain[..]).unwrap();
    while let Some(rec) = r.next_record().unwrap() {
        match rec {
            Record::Data { offset, data } => {
                origin[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                extents.push(Extent::data(offset, data.len() as u64));
            }
            Record::Zero { offset, len } => {
                origin[offset as usize..(offset + len) as usize].fill(0);
                extents.push(Extent::zero(offset, len));
            }
            _ => {}
        }
    }
    std::fs::write(dir.join("snapshot"), before).unwrap();
    std::fs::write(dir.join("origin"), &origin).unwrap();
    let prior = lvmsync::source::PriorSource::Device(dir.join("snapshot"));
    let changes = lvmsync::source::ChangeSet {
        extents: ExtentList::from_extents(extents),
        chunk_bytes: 65536,
        volume_bytes: SIZE,
    };
    let (stream, _) = lvmsync::send::send_changes_with(
        &changes,
        &dir.join("origin"),
        Vec::new(),
        &lvmsync::send::SendOptions::default(),
        &|_| {},
        lvmsync::send::StreamExtras {
            identity: Some(Default::default()),
            prior: Some(&prior),
            session: None,
        },
    )
    .unwrap();
    stream
}

/// Kills `--apply - DEST --snapback SB` at random moments while feeding it a stream, then rolls
/// back; the original contents are put back on DEST before each run. With [`Kind::Checked`],
/// the stream has a manifest, and after the rollback check the interrupted apply is also
/// resumed from the stream file and must finish exactly.
fn kill_and_roll_back(dest: &Path, dir: &Path, seed: u64, kind: Kind) -> Outcomes {
    let checked = kind == Kind::Checked;
    // Batches of 1 MiB (a test knob, see src/apply.rs): a 20 MiB stream then spans many, so
    // that kills land between the writes of one and the next.
    let batch = ("LVMSYNC_TEST_BATCH_BYTES", (1u64 << 20).to_string());
    let before = common::pattern(SIZE as usize, seed);
    let stream = match kind {
        Kind::Plain => make_stream(),
        Kind::Checked => make_checked_stream(&before, dir),
        Kind::UnsortedV3 => make_unsorted_v3_stream(),
    };
    let stream_path = dir.join("stream");
    std::fs::write(&stream_path, &stream).unwrap();
    // DEST as the whole sync leaves it.
    let after = {
        let scratch = dir.join("after");
        std::fs::write(&scratch, &before).unwrap();
        lvmsync::apply::apply_stream(
            &stream[..],
            &scratch,
            &lvmsync::apply::ApplyOptions::default(),
        )
        .unwrap();
        std::fs::read(&scratch).unwrap()
    };
    let sb = dir.join("sb");
    let put_back = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .and_then(|mut f| f.write_all(&before).and_then(|()| f.sync_all()))
            .unwrap();
    };
    // Not killed, the apply finishes, and its snapback rolls it back.
    put_back();
    let _ = std::fs::remove_file(&sb);
    let out = Command::new(lvmsync_bin())
        .arg("--apply")
        .arg(&stream_path)
        .arg(dest)
        .arg("--snapback")
        .arg(&sb)
        .env(batch.0, &batch.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dest).unwrap() == after);
    let out = Command::new(lvmsync_bin())
        .arg("--apply")
        .arg(&sb)
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read(dest).unwrap() == before);
    let mut rng = Rng(seed | 1);
    let mut seen = Outcomes::default();
    for round in 0..KILLS {
        put_back();
        let _ = std::fs::remove_file(&sb);
        let mut child = Command::new(lvmsync_bin())
            .args(["--apply", "-", dest.to_str().unwrap(), "--snapback"])
            .arg(&sb)
            .env(batch.0, &batch.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Feed slowly up to a random point, wait a random moment, kill.
        // Some kills before the snapback exists, some after the whole stream was fed (while the
        // last batches are written or after the end), the rest anywhere in between.
        let kill_at = match rng.below(10) {
            0 => rng.below(64) as usize,
            1 | 2 => stream.len(),
            _ => rng.below(stream.len() as u64) as usize,
        };
        let mut stdin = Some(child.stdin.take().unwrap());
        let mut fed = 0;
        while fed < kill_at {
            let n = (kill_at - fed).min(256 << 10);
            if stdin
                .as_mut()
                .unwrap()
                .write_all(&stream[fed..fed + n])
                .is_err()
            {
                break;
            }
            fed += n;
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
        }
        if fed == stream.len() {
            drop(stdin.take());
        }
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(stdin);

        let state = std::fs::read(dest).unwrap();
        if state != before && state != after {
            seen.dest_half_written += 1;
        }
        if !sb.exists() {
            seen.no_snapback_yet += 1;
        } else {
            let out = Command::new(lvmsync_bin())
                .args(["--apply"])
                .arg(&sb)
                .arg(dest)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "round {round} (killed after feeding {kill_at} bytes): rollback failed: {err}"
            );
            if err.contains("the apply that wrote it was interrupted") {
                seen.cut_snapback += 1;
            } else {
                seen.complete_snapback += 1;
            }
        }
        assert!(
            std::fs::read(dest).unwrap() == before,
            "round {round} (killed after feeding {kill_at} bytes): destination not restored"
        );
        if checked {
            // Once more: kill, then resume from the stream file instead of rolling back.
            let _ = std::fs::remove_file(&sb);
            let mut child = Command::new(lvmsync_bin())
                .args(["--apply", "-", dest.to_str().unwrap(), "--snapback"])
                .arg(&sb)
                .env(batch.0, &batch.1)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(&stream);
            drop(stdin);
            std::thread::sleep(Duration::from_micros(rng.below(80_000)));
            child.kill().unwrap();
            child.wait().unwrap();
            let out = Command::new(lvmsync_bin())
                .arg("--apply")
                .arg(&stream_path)
                .arg(dest)
                .arg("--snapback")
                .arg(&sb)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "round {round}: resuming failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                std::fs::read(dest).unwrap() == after,
                "round {round}: the resumed apply differs"
            );
            // The snapback still rolls back to the state before the first attempt.
            let out = Command::new(lvmsync_bin())
                .arg("--apply")
                .arg(&sb)
                .arg(dest)
                .output()
                .unwrap();
            assert!(out.status.success());
            assert!(
                std::fs::read(dest).unwrap() == before,
                "round {round}: the snapback after the resume does not roll back"
            );
        }
    }
    seen
}

/// A loop device over a new file of SIZE zero bytes in `dir`.
fn zeroed_loop_device(dir: &Path) -> common::LoopDevice {
    let backing = dir.join("backing");
    std::fs::write(&backing, vec![0u8; SIZE as usize]).unwrap();
    common::LoopDevice::attach(&backing)
}

#[test]
fn kill_during_apply_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0u8; SIZE as usize]).unwrap();
    let seen = kill_and_roll_back(&dest, dir.path(), 0x5eed_0001, Kind::Plain);
    eprintln!("file: {seen:?}");
    assert!(
        seen.cut_snapback >= KILLS / 5,
        "too few kills mid-apply: {seen:?}"
    );
}

#[test]
fn kill_during_apply_to_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let dev = zeroed_loop_device(dir.path());
    let seen = kill_and_roll_back(Path::new(&dev.0), dir.path(), 0x5eed_0002, Kind::Plain);
    eprintln!("loop device: {seen:?}");
    assert!(
        seen.cut_snapback >= KILLS / 5,
        "too few kills mid-apply: {seen:?}"
    );
}

/// The same with a stream that has a manifest (its snapback is written whole before the first
/// write), on a loop device; each time the interrupted apply is also resumed.
#[test]
fn kill_during_checked_apply_then_roll_back_or_resume() {
    let dir = tempfile::tempdir().unwrap();
    let dev = zeroed_loop_device(dir.path());
    let seen = kill_and_roll_back(Path::new(&dev.0), dir.path(), 0x5eed_0003, Kind::Checked);
    eprintln!("checked, loop device: {seen:?}");
    assert!(
        seen.dest_half_written >= KILLS / 10,
        "too few kills mid-write: {seen:?}"
    );
}

/// An unsorted format 3 stream (Ruby lvmsync's), on a loop device: its snapback comes out of
/// order, batch by batch, and still rolls back exactly after every kill.
#[test]
fn kill_during_apply_of_an_unsorted_format3_stream() {
    let dir = tempfile::tempdir().unwrap();
    let dev = zeroed_loop_device(dir.path());
    let seen = kill_and_roll_back(Path::new(&dev.0), dir.path(), 0x5eed_0004, Kind::UnsortedV3);
    eprintln!("unsorted format 3, loop device: {seen:?}");
    assert!(
        seen.cut_snapback >= KILLS / 5,
        "too few kills mid-apply: {seen:?}"
    );
}
