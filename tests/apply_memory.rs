//! Peak memory of an apply with a snapback, and of `lvmsync info`. A test binary of its own: a child's peak resident
//! size, as the kernel reports it, includes what the parent held when it forked, so the parent
//! here stays small and runs nothing else at the same time.

use std::path::Path;

use lvmsync::stream::{Format, StreamWriter, WriterOptions};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Peak resident memory of a child process, in bytes.
fn run_measured(cmd: &mut std::process::Command) -> (std::process::ExitStatus, u64) {
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 fills `status` and `usage` for our own child.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    std::mem::forget(child);
    use std::os::unix::process::ExitStatusExt;
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64 * 1024,
    )
}

/// Zero ranges whose old contents go to the snapback are cut into pieces: memory stays bounded
/// however much is zeroed.
#[test]
fn snapback_of_large_zero_ranges_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let size = 300u64 << 20;
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    let input_path = dir.path().join("stream");
    // Written a MiB at a time, so that this process stays small.
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&dest).unwrap());
        for i in 0..size >> 20 {
            f.write_all(&vec![(i % 251) as u8 + 1; 1 << 20]).unwrap();
        }
        f.flush().unwrap();
    }
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: size,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    };
    let mut w = StreamWriter::new(std::fs::File::create(&input_path).unwrap(), &opts).unwrap();
    for i in 0..4u64 {
        w.data(i * (72 << 20), &vec![i as u8; 1 << 20]).unwrap();
        w.zero(i * (72 << 20) + (1 << 20), 64 << 20).unwrap();
    }
    w.finish().unwrap();
    let (status, rss) = run_measured(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("lvmsync")).args([
            "--apply",
            p(&input_path),
            p(&dest),
            "--snapback",
            p(&sb),
        ]),
    );
    assert!(status.success());
    assert!(rss <= 128 << 20, "peak RSS {} MiB", rss >> 20);
    assert!(std::fs::metadata(&sb).unwrap().len() > 256 << 20);
}

/// The largest format 3 records accepted (Ruby lvmsync sends a whole thin chunk per record)
/// with a snapback: memory stays bounded too.
#[test]
fn snapback_of_large_format3_records_keeps_memory_bounded() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let size = 300u64 << 20;
    let dest = dir.path().join("dest");
    let sb = dir.path().join("sb");
    let input_path = dir.path().join("stream");
    std::fs::File::create(&dest).unwrap().set_len(size).unwrap();
    let record = lvmsync::stream::MAX_RECORD_ACCEPTED;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input_path).unwrap());
    f.write_all(lvmsync::stream::v3::HANDSHAKE).unwrap();
    for i in 0..4u64 {
        f.write_all(&lvmsync::stream::v3::record_header(
            i * (70 << 20) + 12345,
            record as u32,
        ))
        .unwrap();
        for _ in 0..record >> 20 {
            f.write_all(&vec![i as u8 + 1; 1 << 20]).unwrap();
        }
    }
    f.flush().unwrap();
    drop(f);
    let (status, rss) = run_measured(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("lvmsync")).args([
            "--apply",
            p(&input_path),
            p(&dest),
            "--snapback",
            p(&sb),
        ]),
    );
    assert!(status.success());
    assert!(rss <= 128 << 20, "peak RSS {} MiB", rss >> 20);
}

/// `lvmsync info` streams through: a stream much larger than the bound is verified in bounded
/// memory, from a file and from a pipe.
#[test]
fn info_reads_a_large_stream_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let size = 512u64 << 20;
    let input_path = dir.path().join("stream");
    let opts = WriterOptions {
        format: Format::V4,
        source_bytes: size,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    };
    let mut w = StreamWriter::new(std::fs::File::create(&input_path).unwrap(), &opts).unwrap();
    let piece = vec![0x5au8; 4 << 20];
    for i in 0..size / (4 << 20) {
        w.data(i * (4 << 20), &piece).unwrap();
    }
    w.finish().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("lvmsync");
    let (status, rss) = run_measured(
        std::process::Command::new(&bin)
            .args(["info", p(&input_path)])
            .stdout(std::process::Stdio::null()),
    );
    assert!(status.success());
    assert!(rss <= 32 << 20, "peak RSS {} MiB", rss >> 20);
    let (status, rss) = run_measured(
        std::process::Command::new(&bin)
            .args(["info", "-"])
            .stdin(std::fs::File::open(&input_path).unwrap())
            .stdout(std::process::Stdio::null()),
    );
    assert!(status.success());
    assert!(rss <= 32 << 20, "peak RSS {} MiB", rss >> 20);
}
