//! Benchmark data for bench/run.sh: origin images, classic exception stores in the kernel's
//! format, and fio replay logs of the very ranges lvmsync reads.
//!
//!   make_cow_store image PATH BYTES SEED [--differ STORE]
//!       writes a pseudo-random, roughly 2:1 compressible image; with --differ, the chunks that
//!       STORE lists hold other bytes (a destination as it was at snapshot time)
//!   make_cow_store store PATH ORIGIN_BYTES CHUNK_BYTES COUNT SEED [--old-data]
//!                                                                 [--iolog FILE TARGET]
//!       writes an exception store of COUNT distinct random origin chunks in random table order,
//!       reads it back with lvmsync's reader and checks the table; with --old-data, each
//!       exception's chunk holds the snapshot's contents there (what `image --differ` writes),
//!       as in a kernel store, else zeros; with --iolog, writes a fio version 2 iolog reading
//!       TARGET at the pieces lvmsync reads (merged, at most 1 MiB)
//!   make_cow_store scramble PATH STORE
//!       rewrites the chunks STORE lists as `image --differ` writes them
//!   make_cow_store dontneed PATH...
//!       fsyncs each file and drops its pages from the page cache (posix_fadvise DONTNEED)

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use lvmsync::extent::ExtentList;
use lvmsync::send::READ_PIECE;
use lvmsync::source::cow::{ExceptionStore, StoreWriter};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// xorshift64*: fast, deterministic, good enough for benchmark bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Fills `buf` (a multiple of 4 KiB at byte `pos` of the image) with the image's content: in
/// every 4 KiB block, 2 KiB of random bytes then 2 KiB of a repeated phrase, so zstd halves it.
fn fill(buf: &mut [u8], pos: u64, seed: u64) {
    const PHRASE: &[u8] = b"lvmsync benchmark block, compressible half. ";
    for (i, block) in buf.chunks_mut(4096).enumerate() {
        let mut rng = Rng::new(seed ^ ((pos / 4096 + i as u64) << 8));
        let (random, text) = block.split_at_mut(2048);
        for w in random.chunks_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes()[..w.len()]);
        }
        for (j, b) in text.iter_mut().enumerate() {
            *b = PHRASE[j % PHRASE.len()];
        }
        // A block number keeps the compressible half distinct from block to block.
        text[..8].copy_from_slice(&(pos / 4096 + i as u64).to_le_bytes());
    }
}

const OTHER_SEED: u64 = 0x005e_ed0f_d1ff;

fn image(path: &Path, bytes: u64, seed: u64, differ: Option<&Path>) -> Res<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut out = BufWriter::with_capacity(8 << 20, &f);
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < bytes {
        let n = (bytes - pos).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], pos, seed);
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    out.flush()?;
    drop(out);
    if let Some(store) = differ {
        scramble(path, store)?;
    }
    f.sync_all()?;
    Ok(())
}

fn scramble(path: &Path, store: &Path) -> Res<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    let size = f.metadata()?.len();
    let s = ExceptionStore::open(store)?;
    let changes = s.changes(size)?;
    let mut buf = Vec::new();
    for e in &changes.extents {
        buf.resize(e.len as usize, 0);
        fill(&mut buf, e.offset, OTHER_SEED);
        f.write_all_at(&buf, e.offset)?;
    }
    f.sync_all()?;
    Ok(())
}

/// `count` distinct chunk numbers below `total`, in random order.
fn pick_chunks(total: u64, count: u64, seed: u64) -> Res<Vec<u64>> {
    if count > total {
        return Err(format!("cannot pick {count} distinct chunks out of {total}").into());
    }
    let mut rng = Rng::new(seed);
    let mut picked: Vec<u64> = Vec::with_capacity(count as usize);
    while (picked.len() as u64) < count {
        let missing = count - picked.len() as u64;
        picked.extend((0..missing + missing / 8 + 16).map(|_| rng.next() % total));
        picked.sort_unstable();
        picked.dedup();
        // Drop a random surplus (keeping the choice uniform).
        while picked.len() as u64 > count {
            let i = (rng.next() % picked.len() as u64) as usize;
            picked.swap_remove(i);
            if picked.len() as u64 == count {
                break;
            }
        }
        picked.sort_unstable();
    }
    // Table order is the order the origin was written: random.
    for i in (1..picked.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        picked.swap(i, j);
    }
    Ok(picked)
}

fn store(args: &[String]) -> Res<()> {
    const USAGE: &str =
        "store PATH ORIGIN_BYTES CHUNK_BYTES COUNT SEED [--old-data] [--iolog FILE TARGET]";
    let [path, origin_bytes, chunk_bytes, count, seed, rest @ ..] = args else {
        return Err(USAGE.into());
    };
    let (old_data, rest) = match rest {
        [flag, rest @ ..] if flag == "--old-data" => (true, rest),
        _ => (false, rest),
    };
    let path = Path::new(path);
    let (origin_bytes, chunk_bytes): (u64, u64) = (origin_bytes.parse()?, chunk_bytes.parse()?);
    let chunks = pick_chunks(origin_bytes / chunk_bytes, count.parse()?, seed.parse()?)?;
    let _ = std::fs::remove_file(path);
    StoreWriter {
        chunk_bytes,
        valid: true,
    }
    .write(path, &chunks, 0)?;
    // Read it back through the reader that reads real kernel stores.
    let s = ExceptionStore::open(path)?;
    let exceptions = s.exceptions()?;
    if s.chunk_bytes() != chunk_bytes
        || exceptions
            .iter()
            .map(|&(old, _)| old)
            .ne(chunks.iter().copied())
    {
        return Err(format!(
            "{}: the store does not read back as written",
            path.display()
        )
        .into());
    }
    if old_data {
        // Each exception's chunk holds the snapshot's contents there, as the kernel's does:
        // what `image --differ` and `scramble` write (a destination as it was at snapshot time).
        let f = OpenOptions::new().write(true).open(path)?;
        let mut buf = vec![0u8; chunk_bytes as usize];
        for &(old, new) in &exceptions {
            fill(&mut buf, old * chunk_bytes, OTHER_SEED);
            f.write_all_at(&buf, new * chunk_bytes)?;
        }
        f.sync_all()?;
    }
    let changes = s.changes(origin_bytes)?;
    println!(
        "{}: {} exceptions, {} ranges, {} bytes changed",
        path.display(),
        chunks.len(),
        changes.extents.len(),
        changes.extents.total_bytes()
    );
    match rest {
        [] => {}
        [flag, iolog, target] if flag == "--iolog" => {
            write_iolog(Path::new(iolog), Path::new(target), &changes.extents)?
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

/// A fio version 2 iolog of reads at the pieces lvmsync reads (`sed s/ read / write /` makes
/// the matching write log).
fn write_iolog(log: &Path, target: &Path, extents: &ExtentList) -> Res<()> {
    let t = target.display();
    let mut out = BufWriter::new(File::create(log)?);
    writeln!(out, "fio version 2 iolog\n{t} add\n{t} open")?;
    for p in extents.pieces(READ_PIECE) {
        writeln!(out, "{t} read {} {}", p.offset, p.len)?;
    }
    writeln!(out, "{t} close")?;
    out.flush()?;
    Ok(())
}

fn dontneed(path: &Path) -> Res<()> {
    let f = File::open(path)?;
    f.sync_all()?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("image") => match &args[1..] {
            [path, bytes, seed] => image(Path::new(path), bytes.parse()?, seed.parse()?, None),
            [path, bytes, seed, flag, store] if flag == "--differ" => image(
                Path::new(path),
                bytes.parse()?,
                seed.parse()?,
                Some(Path::new(store)),
            ),
            _ => Err("image PATH BYTES SEED [--differ STORE]".into()),
        },
        Some("store") => store(&args[1..]),
        Some("scramble") => match &args[1..] {
            [path, store] => scramble(Path::new(path), Path::new(store)),
            _ => Err("scramble PATH STORE".into()),
        },
        Some("dontneed") => args[1..].iter().try_for_each(|p| dontneed(Path::new(p))),
        _ => Err("usage: make_cow_store image|store|scramble|dontneed ...".into()),
    }
}
