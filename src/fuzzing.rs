//! Entry points for fuzzing every parser of untrusted input, shared by the cargo-fuzz targets
//! in `fuzz/` and by the corpus replay test (`tests/fuzz_corpus.rs`).
//!
//! Each entry takes arbitrary bytes, runs the real reader on them to the end or to its first
//! error, and returns. Errors are expected; a panic, a hang or a huge allocation is a finding.
//! Where a reader checks an invariant the rest of lvmsync relies on, the entry asserts it too.
//!
//! Readers that take a path (exception store, thin metadata) are given a memfd, named by its
//! `/proc/self/fd` path: the same open, size and read calls as on an image file, in memory.
//!
//! Input layouts (integers little-endian unless said otherwise):
//! - [`stream`]: the bytes of a change stream, as `lvmsync --apply` reads them (format 3 or 4).
//! - [`cow_store`]: origin size u64, store size in 512-byte sectors u32, then pieces of the store
//!   image: sector u32, length u16, bytes. Everything not covered reads as zeros.
//! - [`thin_metadata`]: flags u8 (bit 0: keep block checksums as given instead of resealing
//!   them; bit 1: read through the held metadata snapshot), older device id u32, newer device id
//!   u32, then metadata blocks: block number u16, length u16 (at most 4096), bytes (the rest of
//!   the block reads as zeros). The image ends after the highest block given.
//! - [`lvm_reports`]: NUL-separated sections: the snapshot path, `/sys/dev/block` facts
//!   (`MAJ:MIN NAME UUID` lines), the `lvs --reportformat json` report, `dmsetup table` lines and
//!   `dmsetup status` lines (both `NAME: TABLE`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::extent::{Extent, ExtentList};
use crate::lvm::{self, dm, report, DevNum, DmInfo, PathKind, Snapshot, Tools};
use crate::source::cow::ExceptionStore;
use crate::source::thin::{self, guard::parse_pool_status, MetadataRoot};
use crate::stream::{v4, Format, Record, StreamReader};

/// A fuzz target's entry: runs a reader on arbitrary bytes.
pub type Entry = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("stream_v3", stream),
    ("stream_v4", stream),
    ("cow_store", cow_store),
    ("thin_metadata", thin_metadata),
    ("lvm_reports", lvm_reports),
];

/// Reads a change stream record by record to its verified end or its first error, checking
/// what the reader promises about the records it yields.
pub fn stream(data: &[u8]) {
    let Ok(mut reader) = StreamReader::open(data) else {
        return;
    };
    let info = reader.info().clone();
    let mut next_min = 0u64;
    // A snapback's records come in any order but never overlap: start -> end of each.
    let mut seen = std::collections::BTreeMap::new();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                if info.format != Format::V4 {
                    continue;
                }
                let (offset, len) = match record {
                    Record::Data { offset, data } => (offset, data.len() as u64),
                    Record::Zero { offset, len } => (offset, len),
                    Record::Identity(json) => {
                        crate::stream::manifest::StreamIdentity::from_json(json)
                            .expect("the reader yields identities that parse");
                        continue;
                    }
                    Record::Manifest(payload) => {
                        crate::stream::manifest::parse(payload)
                            .expect("the reader yields manifests that parse");
                        continue;
                    }
                    Record::Resolution(payload) => {
                        crate::stream::manifest::parse_resolution(payload)
                            .expect("the reader yields resolutions that parse");
                        continue;
                    }
                };
                let end = offset.checked_add(len).expect("record end overflows");
                assert!(len > 0, "empty format 4 record at {offset}");
                if info.snapback {
                    let before = seen.range(..end).next_back();
                    assert!(
                        !matches!(before, Some((_, &e)) if e > offset),
                        "snapback record at {offset} overlaps an earlier one"
                    );
                    seen.insert(offset, end);
                } else {
                    assert!(offset >= next_min, "format 4 record at {offset} overlaps");
                }
                assert!(
                    end <= info.source_bytes.unwrap(),
                    "format 4 record ends past the source"
                );
                next_min = end;
            }
            Ok(None) => {
                assert!(
                    matches!(reader.next_record(), Ok(None)),
                    "a verified end must stay the end"
                );
                return;
            }
            Err(_) => {
                // What apply does to judge whether a snapback was cut short by a crash.
                if info.snapback {
                    let _ = reader.skip_rest(v4::MAX_SNAPBACK_TAIL);
                }
                return;
            }
        }
    }
}

/// Makes a format 4 stream's checksums (header, every record) right again after a mutation, so
/// that the fuzzer reaches what lies behind them. With `end` the end record's counts and digest
/// are recomputed too. Bytes that cannot be framed as records are left alone; the length never
/// changes.
pub fn reseal_v4(data: &mut [u8], end: bool) {
    if !data.starts_with(v4::HANDSHAKE) {
        return;
    }
    let mut pos = v4::HANDSHAKE.len();
    let Some(header) = data.get_mut(pos..pos + v4::HEADER_LEN) else {
        return;
    };
    let crc = crc32c::crc32c(&header[..32]);
    header[32..].copy_from_slice(&crc.to_be_bytes());
    pos += v4::HEADER_LEN;
    let (mut records, mut data_bytes, mut zero_bytes) = (0u64, 0u64, 0u64);
    let mut digest = blake3::Hasher::new();
    while data.len() - pos >= v4::RECORD_HEADER_LEN {
        let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
        let rec = &mut data[pos..];
        let payload_len = u32::from_be_bytes(rec[4..8].try_into().unwrap()) as usize;
        if payload_len > rec.len() - v4::RECORD_HEADER_LEN {
            return;
        }
        let (kind, flags, offset, len) = (rec[0], rec[1], be64(&rec[8..]), be64(&rec[16..]));
        let (head, payload) = rec[..v4::RECORD_HEADER_LEN + payload_len].split_at_mut(24);
        let payload = &mut payload[4..];
        match kind {
            v4::TYPE_DATA if flags & v4::RECORD_FLAG_ZSTD != 0 => {
                let unpacked = (len <= v4::MAX_RECORD_LEN as u64)
                    .then(|| zstd::bulk::decompress(payload, len as usize).ok())
                    .flatten();
                if let Some(unpacked) = unpacked {
                    digest.update(&v4::data_digest(offset, &unpacked));
                    data_bytes += unpacked.len() as u64;
                    records += 1;
                }
            }
            v4::TYPE_DATA => {
                digest.update(&v4::data_digest(offset, payload));
                data_bytes += payload.len() as u64;
                records += 1;
            }
            v4::TYPE_ZERO => {
                digest.update(&v4::zero_digest(offset, len));
                zero_bytes = zero_bytes.wrapping_add(len);
                records += 1;
            }
            v4::TYPE_END if end && payload.len() == v4::END_PAYLOAD_LEN => {
                payload[..8].copy_from_slice(&records.to_be_bytes());
                payload[8..16].copy_from_slice(&data_bytes.to_be_bytes());
                payload[16..24].copy_from_slice(&zero_bytes.to_be_bytes());
                payload[24..32].copy_from_slice(&(pos as u64).to_be_bytes());
                payload[32..].copy_from_slice(digest.finalize().as_bytes());
            }
            _ => {}
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(head), payload);
        data[pos + 24..pos + 28].copy_from_slice(&crc.to_be_bytes());
        pos += v4::RECORD_HEADER_LEN + payload_len;
    }
}

/// A file in memory and a path that opens it.
struct MemFile {
    file: File,
    path: PathBuf,
}

impl MemFile {
    fn new() -> Option<Self> {
        let fd = rustix::fs::memfd_create("lvmsync-fuzz", rustix::fs::MemfdFlags::CLOEXEC).ok()?;
        let file = File::from(fd);
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Some(MemFile { file, path })
    }
}

/// Splits `data` into a fixed-size head and the rest.
fn take<const N: usize>(data: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = data.get(..N)?.try_into().ok()?;
    Some((head, &data[N..]))
}

/// Lists and checks the changes of an exception store image (see the module doc for the layout).
pub fn cow_store(data: &[u8]) {
    let Some((origin_bytes, rest)) = take::<8>(data) else {
        return;
    };
    let Some((sectors, mut rest)) = take::<4>(rest) else {
        return;
    };
    let origin_bytes = u64::from_le_bytes(origin_bytes);
    let Some(image) = MemFile::new() else {
        return;
    };
    let mut size = u64::from(u32::from_le_bytes(sectors)) * 512;
    while let Some((sector, after)) = take::<4>(rest) {
        let Some((len, after)) = take::<2>(after) else {
            break;
        };
        let len = (u16::from_le_bytes(len) as usize).min(after.len());
        let at = u64::from(u32::from_le_bytes(sector)) * 512;
        if image.file.write_all_at(&after[..len], at).is_err() {
            return;
        }
        size = size.max(at + len as u64);
        rest = &after[len..];
    }
    if image.file.set_len(size).is_err() {
        return;
    }
    let Ok(store) = ExceptionStore::open(&image.path) else {
        return;
    };
    let cb = store.chunk_bytes();
    if let Ok(changes) = store.changes(origin_bytes) {
        assert_eq!(changes.chunk_bytes, cb);
        for e in changes.extents.iter() {
            assert!(
                e.len > 0 && e.end() <= origin_bytes,
                "extent {e:?} outside the origin"
            );
        }
    }
}

/// Reads thin-pool metadata (see the module doc for the layout): the delta between the two
/// devices both ways, their mappings, the device details. Where the delta and both devices'
/// mappings can be read, the delta must be what the mappings say.
pub fn thin_metadata(data: &[u8]) {
    let Some((head, mut rest)) = take::<9>(data) else {
        return;
    };
    let flags = head[0];
    let snap_id = u64::from(u32::from_le_bytes(head[1..5].try_into().unwrap()));
    let origin_id = u64::from(u32::from_le_bytes(head[5..9].try_into().unwrap()));
    let mut blocks: BTreeMap<u64, Box<[u8; thin::BLOCK_SIZE]>> = BTreeMap::new();
    while let Some((block, after)) = take::<2>(rest) {
        let Some((len, after)) = take::<2>(after) else {
            break;
        };
        let len = (u16::from_le_bytes(len) as usize)
            .min(thin::BLOCK_SIZE)
            .min(after.len());
        let b = blocks
            .entry(u64::from(u16::from_le_bytes(block)))
            .or_insert_with(|| Box::new([0; thin::BLOCK_SIZE]));
        b[..len].copy_from_slice(&after[..len]);
        rest = &after[len..];
    }
    let Some(image) = MemFile::new() else {
        return;
    };
    for (&nr, block) in blocks.iter_mut() {
        if flags & 1 == 0 {
            thin::reseal_block(block);
        }
        if image
            .file
            .write_all_at(&block[..], nr * thin::BLOCK_SIZE as u64)
            .is_err()
        {
            return;
        }
    }
    let nr_blocks = blocks.keys().next_back().map_or(0, |&b| b + 1);
    if image
        .file
        .set_len(nr_blocks * thin::BLOCK_SIZE as u64)
        .is_err()
    {
        return;
    }
    let root = if flags & 2 == 0 {
        MetadataRoot::Superblock
    } else {
        MetadataRoot::HeldSnapshot(None)
    };
    let path = &image.path;
    let _ = thin::read_superblock(path, root);
    let _ = thin::devices(path, root);
    let delta = thin::delta(path, snap_id, origin_id, root);
    let _ = thin::delta(path, origin_id, snap_id, root);
    let (Ok(delta), Ok(old), Ok(new)) = (
        delta,
        thin::mappings(path, snap_id, root),
        thin::mappings(path, origin_id, root),
    ) else {
        return;
    };
    let bytes = delta.data_block_bytes;
    let old: HashMap<u64, u64> = old.iter().map(|m| (m.block, m.data_block)).collect();
    let new: HashMap<u64, u64> = new.iter().map(|m| (m.block, m.data_block)).collect();
    let mut expected = Vec::new();
    for (&block, &data_block) in &new {
        if old.get(&block) != Some(&data_block) {
            expected.push(Extent::data(block.wrapping_mul(bytes), bytes));
        }
    }
    for &block in old.keys().filter(|b| !new.contains_key(b)) {
        expected.push(Extent::zero(block.wrapping_mul(bytes), bytes));
    }
    assert_eq!(
        delta.extents,
        ExtentList::from_extents(expected),
        "the delta of devices {snap_id} and {origin_id} differs from their mappings"
    );
}

/// What `lvs`, `dmsetup` and sysfs said, from a fuzz input.
#[derive(Default)]
struct Reports {
    lvs_json: String,
    by_dev: HashMap<DevNum, DmInfo>,
    paths: HashMap<PathBuf, PathKind>,
    tables: HashMap<String, String>,
    statuses: HashMap<String, String>,
}

fn lines_by_name(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(name, rest)| (name.to_string(), rest.to_string()))
        .collect()
}

impl Tools for Reports {
    fn path_kind(&self, path: &Path) -> Result<PathKind, Error> {
        Ok(self.paths.get(path).cloned().unwrap_or(PathKind::Missing))
    }
    fn dm_info(&self, dev: DevNum) -> Result<Option<DmInfo>, Error> {
        Ok(self.by_dev.get(&dev).cloned())
    }
    fn lvs_json(&self, _vg: &str) -> Result<String, Error> {
        Ok(self.lvs_json.clone())
    }
    fn dmsetup_table(&self, dev: DevNum) -> Result<String, Error> {
        self.by_dev
            .get(&dev)
            .and_then(|i| self.tables.get(&i.name))
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no table for {dev}")))
    }
    fn dmsetup_status(&self, dev: DevNum) -> Result<String, Error> {
        self.by_dev
            .get(&dev)
            .and_then(|i| self.statuses.get(&i.name))
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no status for {dev}")))
    }
}

/// Runs snapshot discovery on LVM and device-mapper reports (see the module doc for the layout),
/// then every report parser on every line.
pub fn lvm_reports(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut sections = text.split('\0');
    let mut next = || sections.next().unwrap_or("");
    let (path, sysfs, lvs_json, tables, statuses) = (next(), next(), next(), next(), next());
    let mut reports = Reports {
        lvs_json: lvs_json.to_string(),
        tables: lines_by_name(tables),
        statuses: lines_by_name(statuses),
        ..Reports::default()
    };
    for line in sysfs.lines() {
        let mut words = line.split_whitespace();
        let (Some(Ok(dev)), Some(name)) = (words.next().map(str::parse::<DevNum>), words.next())
        else {
            continue;
        };
        let uuid = words.next().unwrap_or("").to_string();
        for p in [
            format!("/dev/mapper/{name}"),
            format!("/dev/dm-{}", dev.minor),
        ] {
            reports.paths.insert(PathBuf::from(p), PathKind::Block(dev));
        }
        let name = name.to_string();
        reports.by_dev.insert(dev, DmInfo { name, uuid });
    }
    if let Ok(rows) = report::parse_lvs_json(lvs_json) {
        for row in &rows {
            let _ = (row.size_bytes(), row.thin_id(), row.is_merging());
            let _ = (row.attr_type(), row.attr_state());
            if let Some(dev) = row.kernel_dev() {
                let p = format!("/dev/{}/{}", row.vg_name, row.name());
                reports.paths.insert(PathBuf::from(p), PathKind::Block(dev));
            }
        }
    }
    match lvm::discover_with(&reports, Path::new(path)) {
        Ok(Snapshot::Classic(c)) => {
            let _ = lvm::check_classic_usable_with(&reports, &c);
        }
        Ok(Snapshot::Thin(t)) => {
            if let Some(status) = reports.statuses.get(&t.pool_dm_name) {
                let _ = parse_pool_status(&t.pool_dm_name, status);
            }
        }
        Err(_) => {}
    }
    for (name, table) in reports.tables.iter().chain(&reports.statuses) {
        let _ = dm::split_lvm_dm_name(name);
        let _ = parse_pool_status(name, table);
        let _ = dm::single_target(table, name);
        for t in dm::parse_targets(table).unwrap_or_default() {
            let _ = dm::parse_snapshot_table(&t, name);
            let _ = dm::parse_thin_table(&t, name);
            let _ = dm::parse_pool_table(&t, name);
        }
    }
}
