//! Streams whose records come in any order, as Ruby lvmsync 3.x sends format 3 (one record per
//! chunk, in the order of its exception table, which is write order): applied with a snapback
//! the way Ruby's client asks (`lvmsync --apply - --snapback FILE DEST`), onto a file and a loop
//! device, then rolled back exactly. A snapback's records may then come in any order, but never
//! overlap: overlapping records are refused, in the stream applied with a snapback and in a
//! snapback.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use lvmsync::stream::{v3, Format, StreamReader, StreamWriter, WriterOptions};

fn lvmsync_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lvmsync")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lvmsync failed: {err}");
    err
}

fn refused(out: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "lvmsync should have failed: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

/// `lvmsync ARGS` with `input` on standard input.
fn run_with_input(args: &[&str], input: &[u8], envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(lvmsync_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
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

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// A format 3 stream as Ruby lvmsync writes it: the handshake, then one record per chunk.
fn format3(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = v3::HANDSHAKE.to_vec();
    for (offset, data) in records {
        out.extend_from_slice(&v3::record_header(*offset, data.len() as u32));
        out.extend_from_slice(data);
    }
    out
}

/// Changed chunks of `chunk` bytes in a volume of `size`: about one in four, in runs of one to
/// four adjacent chunks, each record holding one chunk, in a shuffled order.
fn ruby_records(size: u64, chunk: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng(seed | 1);
    let mut records = Vec::new();
    let mut at = 0;
    while at + 4 * chunk <= size {
        let run = 1 + rng.below(4);
        for i in 0..run {
            let offset = at + i * chunk;
            records.push((offset, common::pattern(chunk as usize, seed ^ offset)));
        }
        at += (run + 1 + rng.below(10)) * chunk;
    }
    rng.shuffle(&mut records);
    records
}

/// What the stream makes of `before`, later records winning.
fn applied(before: &[u8], records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut after = before.to_vec();
    for (offset, data) in records {
        let at = *offset as usize;
        after[at..at + data.len()].copy_from_slice(data);
    }
    after
}

/// The data records' offsets of a snapback, in the order they come.
fn snapback_offsets(snapback: &[u8]) -> Vec<u64> {
    let mut r = StreamReader::open(snapback).unwrap();
    let mut offsets = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if let lvmsync::stream::Record::Data { offset, .. } = rec {
            offsets.push(offset);
        }
    }
    offsets
}

/// Applies unsorted 4 KiB and 64 KiB chunk streams to `dest` with `--apply - --snapback`, in
/// small batches (many snapback syncs) and in the usual ones; each time DEST ends as the stream
/// says, `info` accepts the snapback, and applying it restores DEST exactly.
fn apply_and_roll_back(dest: &Path, dir: &Path) {
    let size = 16u64 << 20;
    let before = common::pattern(size as usize, 77);
    for (chunk, batch_bytes) in [(4096u64, "262144"), (65536, "1048576"), (4096, "")] {
        let records = ruby_records(size, chunk, chunk ^ 0x5eed);
        let stream = format3(&records);
        let after = applied(&before, &records);
        std::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .and_then(|mut f| f.write_all(&before))
            .unwrap();
        let sb = dir.join(format!("sb-{chunk}-{batch_bytes}"));
        let envs: Vec<(&str, &str)> = if batch_bytes.is_empty() {
            Vec::new()
        } else {
            vec![("LVMSYNC_TEST_BATCH_BYTES", batch_bytes)]
        };
        ok(&run_with_input(
            &["--apply", "-", "--snapback", p(&sb), p(dest)],
            &stream,
            &envs,
        ));
        assert!(
            std::fs::read(dest).unwrap() == after,
            "{chunk}-byte chunks: DEST is not what the stream says"
        );
        let snapback = std::fs::read(&sb).unwrap();
        let offsets = snapback_offsets(&snapback);
        if !batch_bytes.is_empty() {
            assert!(
                offsets.windows(2).any(|w| w[1] < w[0]),
                "{chunk}-byte chunks in small batches: the snapback should come out of order"
            );
        }
        let info = Command::new(lvmsync_bin())
            .args(["info", "--json", p(&sb)])
            .output()
            .unwrap();
        ok(&info);
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["snapback"], true);
        assert_eq!(v["ending"], "verified");
        assert_eq!(
            v["data_bytes"],
            records.iter().map(|r| r.1.len() as u64).sum::<u64>()
        );
        ok(&Command::new(lvmsync_bin())
            .args(["--apply", p(&sb), p(dest)])
            .output()
            .unwrap());
        assert!(
            std::fs::read(dest).unwrap() == before,
            "{chunk}-byte chunks: the snapback did not restore DEST"
        );
    }
}

#[test]
fn unsorted_format3_with_snapback_rolls_back_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0u8; 16 << 20]).unwrap();
    apply_and_roll_back(&dest, dir.path());
}

#[test]
fn unsorted_format3_with_snapback_rolls_back_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::write(&backing, vec![0u8; 16 << 20]).unwrap();
    let dev = common::LoopDevice::attach(&backing);
    apply_and_roll_back(Path::new(&dev.0), dir.path());
}

/// Records spread over a 40 GiB volume (a sparse file), one in every 128 MiB, unsorted: more
/// than the receiver tracks in memory, so the ranges go to a temporary file, while applying
/// and while rolling back; both stay exact.
#[test]
fn unsorted_records_spread_over_a_large_volume() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40u64 << 30;
    let dest = dir.path().join("dest");
    std::fs::File::create(&dest).unwrap().set_len(size).unwrap();
    let step = 128u64 << 20;
    let mut rng = Rng(99);
    let mut records: Vec<(u64, Vec<u8>)> = (0..size / step)
        .map(|i| {
            let offset = i * step + rng.below(1000) * 4096;
            (offset, common::pattern(4096 << rng.below(3), i + 1))
        })
        .collect();
    rng.shuffle(&mut records);
    // A record inside the first one, last: it overlaps, and is refused.
    let first = records[0].0;
    let mut hostile = records.clone();
    hostile.push((first + 1024, vec![1u8; 4096]));
    let sb = dir.path().join("sb");
    let out = run_with_input(
        &["--apply", "-", "--snapback", p(&sb), p(&dest)],
        &format3(&hostile),
        &[],
    );
    refused(
        &out,
        &format!("overlaps an earlier record from byte {}", first + 1024),
    );
    std::fs::remove_file(&sb).unwrap();
    ok(&run_with_input(
        &["--apply", "-", "--snapback", p(&sb), p(&dest)],
        &format3(&records),
        &[],
    ));
    let dest_file = std::fs::File::open(&dest).unwrap();
    let read_at = |offset: u64, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        dest_file.read_exact_at(&mut buf, offset).unwrap();
        buf
    };
    for (offset, data) in &records {
        assert!(&read_at(*offset, data.len()) == data, "record at {offset}");
    }
    ok(&Command::new(lvmsync_bin())
        .args(["info", p(&sb)])
        .output()
        .unwrap());
    ok(&Command::new(lvmsync_bin())
        .args(["--apply", p(&sb), p(&dest)])
        .output()
        .unwrap());
    for (offset, data) in &records {
        assert!(
            read_at(*offset, data.len()).iter().all(|&b| b == 0),
            "record at {offset} not rolled back"
        );
    }
}

/// A format 3 stream whose records overlap (Ruby's never do): with a snapback it is refused at
/// the first record that overlaps an earlier one, naming the byte, before any of it is written;
/// the batches written before it are in the snapback, which restores DEST exactly. Without a
/// snapback it applies, the later record winning, as Ruby's receiver did.
#[test]
fn overlapping_format3_records_are_refused_with_a_snapback_only() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let before = common::pattern(size as usize, 5);
    let dest = dir.path().join("dest");
    let mut records = ruby_records(size, 65536, 3);
    let overlapped = records[records.len() / 2].0;
    let split = records.len() * 3 / 4;
    // Half a chunk into a chunk sent earlier, sticking out of it.
    records.insert(split, (overlapped + 32768, common::pattern(65536, 1)));
    let stream = format3(&records);
    for batch_bytes in [Some("262144"), None] {
        std::fs::write(&dest, &before).unwrap();
        let sb = dir.path().join(format!("sb-{batch_bytes:?}"));
        let envs: Vec<(&str, &str)> = batch_bytes
            .map(|b| ("LVMSYNC_TEST_BATCH_BYTES", b))
            .into_iter()
            .collect();
        let out = run_with_input(
            &["--apply", "-", "--snapback", p(&sb), p(&dest)],
            &stream,
            &envs,
        );
        let err = refused(
            &out,
            &format!(
                "65536 bytes at byte {} of the volume) overlaps an earlier record from byte {}",
                overlapped + 32768,
                overlapped + 32768
            ),
        );
        assert!(err.contains("nothing of it was written"), "{err}");
        // The records before the overlapping one were written, or not yet (the batch they
        // were gathered in was dropped); nothing of it or after it was.
        let state = std::fs::read(&dest).unwrap();
        let region = |o: u64, len: usize| o as usize..o as usize + len;
        for (i, (o, d)) in records.iter().enumerate() {
            let r = region(*o, d.len());
            match i.cmp(&split) {
                std::cmp::Ordering::Less => {
                    assert!(state[r.clone()] == d[..] || state[r.clone()] == before[r])
                }
                std::cmp::Ordering::Equal => assert!(state[r] != d[..]),
                std::cmp::Ordering::Greater => assert!(state[r.clone()] == before[r]),
            }
        }
        if batch_bytes.is_some() {
            assert!(
                state != before,
                "small batches: the first ones were written"
            );
        }
        ok(&Command::new(lvmsync_bin())
            .args(["--apply", p(&sb), p(&dest)])
            .output()
            .unwrap());
        assert!(std::fs::read(&dest).unwrap() == before);
    }
    // Without a snapback: applied, the later record winning.
    ok(&run_with_input(&["--apply", "-", p(&dest)], &stream, &[]));
    assert!(std::fs::read(&dest).unwrap() == applied(&before, &records));
}

fn snapback_opts(size: u64) -> WriterOptions {
    WriterOptions {
        format: Format::V4,
        source_bytes: size,
        chunk_bytes: 4096,
        compress: None,
        snapback: true,
    }
}

/// A snapback whose records come out of order is applied and described; one whose records
/// overlap is refused by both, even when the overlapping record is its last (a complete,
/// checksummed record that overlaps is damage, not the cut of an interrupted apply).
#[test]
fn snapback_records_in_any_order_but_never_overlapping() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1u64 << 20;
    let before = common::pattern(size as usize, 8);
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    let records: Vec<(u64, Vec<u8>)> = vec![
        (65536, common::pattern(4096, 1)),
        (0, common::pattern(8192, 2)),
        (300_000, common::pattern(1000, 3)),
        (8192, common::pattern(4096, 4)),
        (299_000, common::pattern(1000, 5)),
    ];
    let write = |records: &[(u64, Vec<u8>)]| {
        let mut w = StreamWriter::new(Vec::new(), &snapback_opts(size)).unwrap();
        for (offset, data) in records {
            w.data(*offset, data).unwrap();
        }
        w.finish().unwrap().0
    };
    std::fs::write(&sb, write(&records)).unwrap();
    std::fs::write(&dest, &before).unwrap();
    let info = Command::new(lvmsync_bin())
        .args(["info", "--json", p(&sb)])
        .output()
        .unwrap();
    ok(&info);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["data_records"], 5);
    assert_eq!(v["ending"], "verified");
    ok(&Command::new(lvmsync_bin())
        .args(["--apply", p(&sb), p(&dest)])
        .output()
        .unwrap());
    assert!(std::fs::read(&dest).unwrap() == applied(&before, &records));

    for (bad, at) in [
        ((4096u64, vec![9u8; 100]), 4096u64),
        ((299_999, vec![9u8; 2]), 299_999),
        ((60_000, vec![9u8; 10_000]), 65536),
    ] {
        let mut hostile = records.clone();
        hostile.push(bad);
        std::fs::write(&sb, write(&hostile)).unwrap();
        let needle = format!("overlaps an earlier record from byte {at}");
        refused(
            &Command::new(lvmsync_bin())
                .args(["info", p(&sb)])
                .output()
                .unwrap(),
            &needle,
        );
        std::fs::write(&dest, &before).unwrap();
        refused(
            &Command::new(lvmsync_bin())
                .args(["--apply", p(&sb), p(&dest)])
                .output()
                .unwrap(),
            &needle,
        );
        // Refused before the batch that holds it (here every record) was written.
        assert!(std::fs::read(&dest).unwrap() == before);
        // Cut inside its end record, the same snapback is still refused.
        let bytes = std::fs::read(&sb).unwrap();
        std::fs::write(&sb, &bytes[..bytes.len() - 10]).unwrap();
        refused(
            &Command::new(lvmsync_bin())
                .args(["--apply", p(&sb), p(&dest)])
                .output()
                .unwrap(),
            &needle,
        );
    }

    // An ordinary stream's records must still be increasing.
    let mut w = StreamWriter::new(
        Vec::new(),
        &WriterOptions {
            snapback: false,
            ..snapback_opts(size)
        },
    )
    .unwrap();
    w.data(8192, &[1; 10]).unwrap();
    assert!(w.data(0, &[1; 10]).is_err());
}

/// Records that do not start or end on a 512-byte boundary make ranges a reader of the
/// snapback tracks one by one: lvmsync keeps no snapback with more ends like that than readers
/// accept, refusing the apply before the range that would be one too many is written.
#[test]
fn snapback_of_too_many_unaligned_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let count = 8200u64;
    let size = count * 4096;
    let dest = dir.path().join("dest");
    let before = common::pattern(size as usize, 4);
    std::fs::write(&dest, &before).unwrap();
    let mut w = StreamWriter::new(
        Vec::new(),
        &WriterOptions {
            snapback: false,
            ..snapback_opts(size)
        },
    )
    .unwrap();
    for i in 0..count {
        w.data(i * 4096 + 100, &[7u8; 100]).unwrap();
    }
    let stream = dir.path().join("stream");
    std::fs::write(&stream, w.finish().unwrap().0).unwrap();
    let sb = dir.path().join("sb");
    refused(
        &Command::new(lvmsync_bin())
            .args(["--apply", p(&stream), p(&dest), "--snapback", p(&sb)])
            .output()
            .unwrap(),
        "the snapback would hold records with more than 16384 ends that are not on a 512-byte boundary",
    );
    assert!(std::fs::read(&dest).unwrap() == before);
    ok(&Command::new(lvmsync_bin())
        .args(["--apply", p(&stream), p(&dest)])
        .output()
        .unwrap());
}
