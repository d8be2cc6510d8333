//! Seed inputs for the fuzz targets (fuzz/), in the layouts `lvmsync::fuzzing` documents: the
//! real LVM fixtures of tests/fixtures/ and streams made with the library's own writer.
//!
//!   fuzz_seeds DIR
//!       writes DIR/TARGET/NAME for every target (existing files are replaced)

use std::io::Read;
use std::path::{Path, PathBuf};

use lvmsync::source::cow::StoreWriter;
use lvmsync::source::thin::{self, MetadataRoot};
use lvmsync::stream::{Format, StreamWriter, WriterOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const THIN_BLOCK: usize = 4096;

fn gunzip(rel: &str) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(Path::new(FIXTURES).join(rel))?)
        .read_to_end(&mut out)?;
    Ok(out)
}

struct Seeds {
    dir: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        self.written += 1;
        Ok(())
    }
}

/// Bytes that zstd shrinks (a repeated text) or does not (xorshift output).
fn pattern(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    if compressible {
        return format!("lvmsync seed {seed} ")
            .bytes()
            .cycle()
            .take(len)
            .collect();
    }
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A record to write: data (compressible or not) or a zero range.
enum Rec {
    Data(u64, usize, bool),
    Zero(u64, u64),
}

fn stream(format: Format, compress: Option<i32>, source_bytes: u64, recs: &[Rec]) -> Res<Vec<u8>> {
    stream_with(format, compress, false, source_bytes, recs)
}

fn stream_with(
    format: Format,
    compress: Option<i32>,
    snapback: bool,
    source_bytes: u64,
    recs: &[Rec],
) -> Res<Vec<u8>> {
    let opts = WriterOptions {
        format,
        source_bytes,
        chunk_bytes: 4096,
        compress,
        snapback,
    };
    let mut w = StreamWriter::new(Vec::new(), &opts)?;
    for (i, r) in recs.iter().enumerate() {
        match *r {
            Rec::Data(offset, len, compressible) => {
                w.data(offset, &pattern(len, i as u64, compressible))?
            }
            Rec::Zero(offset, len) => w.zero(offset, len)?,
        }
    }
    Ok(w.finish()?.0)
}

fn streams(seeds: &mut Seeds) -> Res<()> {
    use Rec::{Data, Zero};
    let mixed = [
        Data(0, 512, true),
        Zero(4096, 8192),
        Data(16384, 300, false),
        Data(20480, 4096, true),
        Zero(65536, 4096),
    ];
    // Format 3 has no order: a Ruby sender's records come in any order.
    let unordered = [Data(8192, 64, false), Data(0, 100, true), Zero(4096, 512)];
    seeds.put("stream_v3", "empty", &stream(Format::V3, None, 0, &[])?)?;
    seeds.put(
        "stream_v3",
        "mixed",
        &stream(Format::V3, None, 1 << 20, &mixed)?,
    )?;
    seeds.put(
        "stream_v3",
        "unordered",
        &stream(Format::V3, None, 1 << 20, &unordered)?,
    )?;
    let mut crlf = stream(Format::V3, None, 1 << 20, &unordered)?;
    crlf.splice(16..16, *b"\r");
    seeds.put("stream_v3", "crlf-handshake", &crlf)?;

    seeds.put(
        "stream_v4",
        "empty",
        &stream(Format::V4, None, 1 << 20, &[])?,
    )?;
    seeds.put(
        "stream_v4",
        "mixed",
        &stream(Format::V4, None, 1 << 20, &mixed)?,
    )?;
    seeds.put(
        "stream_v4",
        "mixed-zstd",
        &stream(Format::V4, Some(3), 1 << 20, &mixed)?,
    )?;
    let large = [Data(0, 12288, true), Data(1 << 19, 2048, false)];
    seeds.put(
        "stream_v4",
        "large-zstd",
        &stream(Format::V4, Some(1), 1 << 20, &large)?,
    )?;
    seeds.put(
        "stream_v4",
        "zero-only",
        &stream(Format::V4, None, u64::MAX, &[Zero(0, u64::MAX >> 1)])?,
    )?;
    // A snapback, whole and cut inside its last record as a crash of the apply would leave it.
    let snapback = stream_with(Format::V4, Some(3), true, 1 << 20, &mixed)?;
    seeds.put("stream_v4", "snapback", &snapback)?;
    seeds.put(
        "stream_v4",
        "snapback-cut",
        &snapback[..snapback.len() - 100],
    )?;
    Ok(())
}

/// The encoding `fuzzing::cow_store` reads: the header chunk and the metadata areas of a store
/// image, without the data chunks (never read).
fn cow_input(image: &[u8], origin_bytes: u64) -> Vec<u8> {
    let chunk = u32::from_le_bytes(image[12..16].try_into().unwrap()) as usize * 512;
    let per_area = chunk / 16;
    let mut out = origin_bytes.to_le_bytes().to_vec();
    out.extend_from_slice(&((image.len() / 512) as u32).to_le_bytes());
    let areas = (1..).map(|i: usize| 1 + (i - 1) * (per_area + 1));
    for c in std::iter::once(0).chain(areas) {
        let Some(bytes) = image.get(c * chunk..(c + 1) * chunk) else {
            break;
        };
        let used = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
        // Pieces of whole sectors that fit a u16 length.
        const PIECE: usize = 127 * 512;
        for (i, piece) in bytes[..used].chunks(PIECE).enumerate() {
            let sector = ((c * chunk + i * PIECE) / 512) as u32;
            out.extend_from_slice(&sector.to_le_bytes());
            out.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            out.extend_from_slice(piece);
        }
        // A table ends in its first area that is not full (its last new_chunk is 0).
        if c > 0 && bytes[chunk - 8..].iter().all(|&b| b == 0) {
            break;
        }
    }
    out
}

fn cow_stores(seeds: &mut Seeds) -> Res<()> {
    for (name, dir) in [
        ("lvm-2.03.16", "lvm-2.03.16/classic"),
        ("captured", "captured/classic"),
    ] {
        let store = gunzip(&format!("{dir}/snap-cow.img.gz"))?;
        let origin_bytes = gunzip(&format!("{dir}/origin-before.img.gz"))?.len() as u64;
        seeds.put("cow_store", name, &cow_input(&store, origin_bytes))?;
    }
    let tmp = std::env::temp_dir().join(format!("lvmsync-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let made = (|| -> Res<()> {
        // 512-byte chunks: 32 exceptions per area, so a table of 70 spans three areas.
        let chunks: Vec<u64> = (0..70).map(|i| (i * 37) % 101).collect();
        for (name, cb, chunks, valid) in [
            ("small-chunks", 512, &chunks[..], true),
            ("one-full-area", 4096, &chunks[..64], true),
            ("invalid", 4096, &chunks[..3], false),
        ] {
            let path = tmp.join(name);
            StoreWriter {
                chunk_bytes: cb,
                valid,
            }
            .write(&path, chunks, 1)?;
            seeds.put(
                "cow_store",
                name,
                &cow_input(&std::fs::read(&path)?, 101 * cb),
            )?;
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&tmp)?;
    made
}

/// Everything lvmsync reads from a metadata image, to tell which blocks matter.
fn thin_reading(path: &Path, root: MetadataRoot, ids: (u64, u64)) -> String {
    format!(
        "{:?}{:?}{:?}{:?}{:?}{:?}",
        thin::read_superblock(path, root),
        thin::devices(path, root),
        thin::delta(path, ids.0, ids.1, root),
        thin::delta(path, ids.1, ids.0, root),
        thin::mappings(path, ids.0, root),
        thin::mappings(path, ids.1, root),
    )
}

/// The encoding `fuzzing::thin_metadata` reads, with only the blocks lvmsync's reading depends
/// on (a block is dropped when zeroing it changes nothing that is read).
fn thin_input(image: &[u8], flags: u8, ids: (u64, u64)) -> Res<Vec<u8>> {
    let root = if flags & 2 == 0 {
        MetadataRoot::Superblock
    } else {
        MetadataRoot::HeldSnapshot(None)
    };
    let path = std::env::temp_dir().join(format!("lvmsync-fuzz-tmeta-{}", std::process::id()));
    let mut work = image.to_vec();
    std::fs::write(&path, &work)?;
    let want = thin_reading(&path, root, ids);
    let mut kept = Vec::new();
    for (nr, block) in image.chunks(THIN_BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        work[nr * THIN_BLOCK..(nr + 1) * THIN_BLOCK].fill(0);
        std::fs::write(&path, &work)?;
        if thin_reading(&path, root, ids) != want {
            work[nr * THIN_BLOCK..(nr + 1) * THIN_BLOCK].copy_from_slice(block);
            kept.push(nr);
        }
    }
    std::fs::remove_file(&path)?;
    let mut out = vec![flags];
    out.extend_from_slice(&(ids.0 as u32).to_le_bytes());
    out.extend_from_slice(&(ids.1 as u32).to_le_bytes());
    // The image must keep its length: block numbers past the end are errors.
    let last = image.len() / THIN_BLOCK - 1;
    if kept.last() != Some(&last) {
        kept.push(last);
    }
    for nr in kept {
        let block = &image[nr * THIN_BLOCK..(nr + 1) * THIN_BLOCK];
        let used = THIN_BLOCK - block.iter().rev().take_while(|&&b| b == 0).count();
        out.extend_from_slice(&(nr as u16).to_le_bytes());
        out.extend_from_slice(&(used as u16).to_le_bytes());
        out.extend_from_slice(&block[..used]);
    }
    Ok(out)
}

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Writes a btree node (8-byte values) at block `nr` of `image`, sealed as the kernel does.
fn put_node(image: &mut [u8], nr: u64, leaf: bool, keys: &[u64], vals: &[u64]) {
    let max = (THIN_BLOCK - 32) / 16;
    let b = &mut image[nr as usize * THIN_BLOCK..(nr as usize + 1) * THIN_BLOCK];
    b.fill(0);
    b[4..8].copy_from_slice(&(if leaf { 2u32 } else { 1 }).to_le_bytes());
    b[8..16].copy_from_slice(&nr.to_le_bytes());
    b[16..20].copy_from_slice(&(keys.len() as u32).to_le_bytes());
    b[20..24].copy_from_slice(&(max as u32).to_le_bytes());
    b[24..28].copy_from_slice(&8u32.to_le_bytes());
    for (i, (k, v)) in keys.iter().zip(vals).enumerate() {
        b[32 + 8 * i..40 + 8 * i].copy_from_slice(&k.to_le_bytes());
        b[32 + 8 * (max + i)..40 + 8 * (max + i)].copy_from_slice(&v.to_le_bytes());
    }
    let csum = !crc32c::crc32c(&b[4..]) ^ 121_107;
    b[..4].copy_from_slice(&csum.to_le_bytes());
}

/// The fixtures' device trees are single leaves. This splits each device's leaf into leaves of
/// at most 16 entries under a new internal root, cut at the same keys in every device, and the
/// devices share the leaves that are equal (as a snapshot shares what neither device changed),
/// so that the seeds reach the internal-node and shared-subtree paths of the delta.
fn split_device_trees(image: &mut [u8]) {
    let node = |image: &[u8], nr: u64| {
        let b = &image[nr as usize * THIN_BLOCK..(nr as usize + 1) * THIN_BLOCK];
        let (n, max) = (le32(b, 16), le32(b, 20));
        let keys: Vec<u64> = (0..n).map(|i| le64(b, 32 + 8 * i)).collect();
        let vals: Vec<u64> = (0..n).map(|i| le64(b, 32 + 8 * (max + i))).collect();
        (le32(b, 4) == 2, keys, vals)
    };
    let top = le64(image, 320);
    let (_, devs, mut roots) = node(image, top);
    let leaves: Vec<_> = roots.iter().map(|&r| node(image, r)).collect();
    let pivots: Vec<u64> = leaves[0].1.iter().step_by(16).skip(1).copied().collect();
    let mut free = (image.len() / THIN_BLOCK) as u64 - 1;
    let mut made: Vec<(Vec<u64>, Vec<u64>, u64)> = Vec::new();
    for (root, (leaf, keys, vals)) in roots.iter_mut().zip(leaves) {
        if !leaf {
            continue;
        }
        let mut cuts = vec![0];
        cuts.extend(pivots.iter().map(|&p| keys.partition_point(|&k| k < p)));
        cuts.push(keys.len());
        cuts.dedup();
        let (mut child_keys, mut children) = (Vec::new(), Vec::new());
        for w in cuts.windows(2) {
            let (k, v) = (&keys[w[0]..w[1]], &vals[w[0]..w[1]]);
            let shared = made.iter().find(|m| m.0 == k && m.1 == v).map(|m| m.2);
            let block = shared.unwrap_or_else(|| {
                put_node(image, free, true, k, v);
                made.push((k.to_vec(), v.to_vec(), free));
                free -= 1;
                free + 1
            });
            child_keys.push(k[0]);
            children.push(block);
        }
        if children.len() < 2 {
            continue;
        }
        put_node(image, free, false, &child_keys, &children);
        *root = free;
        free -= 1;
    }
    put_node(image, top, true, &devs, &roots);
}

fn thin_metadata(seeds: &mut Seeds) -> Res<()> {
    // Device 1 is the origin, 2 its snapshot, in every fixture.
    for (name, rel, flags) in [
        ("lvm-2.03.16", "lvm-2.03.16/thin/tmeta.img.gz", 0),
        ("captured", "captured/thin/tmeta.img.gz", 0),
        ("captured-held", "captured/thin/tmeta-held.img.gz", 2),
    ] {
        let mut image = gunzip(rel)?;
        seeds.put("thin_metadata", name, &thin_input(&image, flags, (2, 1))?)?;
        if flags == 0 {
            split_device_trees(&mut image);
            let split = format!("{name}-split");
            seeds.put("thin_metadata", &split, &thin_input(&image, flags, (2, 1))?)?;
        }
    }
    Ok(())
}

fn lvm_reports(seeds: &mut Seeds) -> Res<()> {
    let dir = Path::new(FIXTURES).join("lvm-reports");
    let mut states: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    states.sort();
    for state in states {
        let read = |f: &str| std::fs::read_to_string(state.join(f));
        let (sysfs, lvs, table, status) = (
            read("sysfs-dm.txt")?,
            read("lvs.json")?,
            read("dmsetup-table.txt")?,
            read("dmsetup-status.txt")?,
        );
        let state_name = state.file_name().unwrap().to_string_lossy().to_string();
        // Every device by its /dev/mapper name, and a name that is not active.
        let mut paths: Vec<String> = sysfs
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|n| format!("/dev/mapper/{n}"))
            .collect();
        paths.push("/dev/my-vg/th-lv-snap".into());
        for (i, path) in paths.iter().enumerate() {
            let input = [path.as_str(), &sysfs, &lvs, &table, &status].join("\0");
            seeds.put(
                "lvm_reports",
                &format!("{state_name}-{i}"),
                input.as_bytes(),
            )?;
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: fuzz_seeds DIR (see the doc comment)")?;
    let mut seeds = Seeds {
        dir: dir.into(),
        written: 0,
    };
    streams(&mut seeds)?;
    cow_stores(&mut seeds)?;
    thin_metadata(&mut seeds)?;
    lvm_reports(&mut seeds)?;
    println!("{} seeds in {}", seeds.written, seeds.dir.display());
    Ok(())
}
