//! Helpers of the thin metadata tests: thin-provisioning-tools as an oracle, XML in and out, and
//! raw metadata block editing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use lvmsync::extent::{Extent, ExtentList};
use lvmsync::source::thin::{self, MetadataRoot};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lvm-2.03.16/thin"
);

/// splitmix64: a small deterministic generator, so every case can be reproduced from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Value of attribute `name` in an XML element line (`name="value"`).
pub fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=\"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn num(line: &str, name: &str) -> u64 {
    attr(line, name)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {line:?}"))
}

/// Parses thin_delta's (non-verbose) XML into byte extents: `different` and `right_only` are
/// data, `left_only` is zero, `same` is nothing.
pub fn parse_thin_delta(xml: &str) -> (u64, ExtentList) {
    let mut block_bytes = None;
    let mut extents = Vec::new();
    for line in xml.lines().map(str::trim) {
        if line.starts_with("<superblock ") {
            block_bytes = Some(num(line, "data_block_size") * 512);
            continue;
        }
        let kind = ["different", "right_only", "left_only", "same"]
            .into_iter()
            .find(|k| line.starts_with(&format!("<{k} ")));
        let Some(kind) = kind else { continue };
        let bytes = block_bytes.expect("superblock element first");
        let (begin, len) = (num(line, "begin") * bytes, num(line, "length") * bytes);
        match kind {
            "different" | "right_only" => extents.push(Extent::data(begin, len)),
            "left_only" => extents.push(Extent::zero(begin, len)),
            _ => {}
        }
    }
    (
        block_bytes.expect("no superblock element"),
        ExtentList::from_extents(extents),
    )
}

/// Parses thin_dump's XML into every device's mappings: device id -> (virtual block, data
/// block, time) in block order.
pub fn parse_thin_dump(xml: &str) -> BTreeMap<u64, Vec<(u64, u64, u32)>> {
    let mut mappings: BTreeMap<u64, Vec<(u64, u64, u32)>> = BTreeMap::new();
    let mut dev = 0;
    for l in xml.lines().map(str::trim) {
        let n = |a: &str| num(l, a);
        if l.starts_with("<device ") {
            dev = n("dev_id");
        } else if l.starts_with("<single_mapping ") {
            mappings.entry(dev).or_default().push((
                n("origin_block"),
                n("data_block"),
                n("time") as u32,
            ));
        } else if l.starts_with("<range_mapping ") {
            for i in 0..n("length") {
                mappings.entry(dev).or_default().push((
                    n("origin_begin") + i,
                    n("data_begin") + i,
                    n("time") as u32,
                ));
            }
        }
    }
    mappings
}

/// Checks that the mappings and device details lvmsync reads from `meta` (at `root`) are those
/// of thin_dump's XML.
pub fn assert_mappings_match_thin_dump(meta: &Path, root: MetadataRoot, xml: &str) {
    let expected = parse_thin_dump(xml);
    for (dev_id, want) in &expected {
        let got: Vec<_> = thin::mappings(meta, *dev_id, root)
            .unwrap()
            .into_iter()
            .map(|m| (m.block, m.data_block, m.time))
            .collect();
        assert_eq!(&got, want, "device {dev_id}");
    }
    let devices = thin::devices(meta, root).unwrap();
    let ids: Vec<u64> = devices.iter().map(|d| d.dev_id).collect();
    assert_eq!(ids, expected.keys().copied().collect::<Vec<_>>());
    for d in devices {
        assert_eq!(d.mapped_blocks, expected[&d.dev_id].len() as u64);
    }
}

/// Decompresses thin fixture `name` (a .gz) into `dir`.
pub fn gunzip_fixture(name: &str, dir: &Path) -> PathBuf {
    super::gunzip_fixture(&format!("thin/{name}"), dir)
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (is thin-provisioning-tools installed?): {e}")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A device's mappings: virtual block -> (data block, time).
pub type DeviceMap = BTreeMap<u64, (u64, u32)>;

/// thin_dump 0.9.0-style XML for `devices`, with runs written as range mappings.
pub fn dump_xml(
    data_block_size: u32,
    nr_data_blocks: u64,
    devices: &[(u64, &DeviceMap)],
) -> String {
    let mut x = String::new();
    writeln!(
        x,
        "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" \
         data_block_size=\"{data_block_size}\" nr_data_blocks=\"{nr_data_blocks}\">"
    )
    .unwrap();
    for &(dev_id, map) in devices {
        writeln!(
            x,
            "  <device dev_id=\"{dev_id}\" mapped_blocks=\"{}\" transaction=\"0\" \
             creation_time=\"0\" snap_time=\"0\">",
            map.len()
        )
        .unwrap();
        let mut it = map.iter().peekable();
        while let Some((&b, &(d, t))) = it.next() {
            let mut len = 1;
            while let Some(&(&nb, &(nd, nt))) = it.peek() {
                if nb == b + len && nd == d + len && nt == t {
                    len += 1;
                    it.next();
                } else {
                    break;
                }
            }
            if len == 1 {
                writeln!(
                    x,
                    "    <single_mapping origin_block=\"{b}\" data_block=\"{d}\" time=\"{t}\"/>"
                )
                .unwrap();
            } else {
                writeln!(
                    x,
                    "    <range_mapping origin_begin=\"{b}\" data_begin=\"{d}\" length=\"{len}\" \
                     time=\"{t}\"/>"
                )
                .unwrap();
            }
        }
        writeln!(x, "  </device>").unwrap();
    }
    writeln!(x, "</superblock>").unwrap();
    x
}

/// Builds binary metadata from XML with thin_restore into `dir/name`.
pub fn restore(xml: &str, dir: &Path, name: &str, size_mib: u64) -> PathBuf {
    let xml_path = dir.join(format!("{name}.xml"));
    std::fs::write(&xml_path, xml).unwrap();
    let meta = dir.join(name);
    let f = std::fs::File::create(&meta).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    run(Command::new("thin_restore")
        .arg("-i")
        .arg(&xml_path)
        .arg("-o")
        .arg(&meta));
    meta
}

/// What thin_delta says differs between `snap` (older) and `origin` (newer).
pub fn thin_delta(meta: &Path, snap: u64, origin: u64) -> (u64, ExtentList) {
    parse_thin_delta(&run(Command::new("thin_delta")
        .arg("--snap1")
        .arg(snap.to_string())
        .arg("--snap2")
        .arg(origin.to_string())
        .arg(meta)))
}

// ---- raw block editing (to build metadata thin_restore cannot: shared subtrees) ----

pub const BLOCK: usize = 4096;

pub fn read_block(meta: &Path, block: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(meta).unwrap();
    let mut b = vec![0; BLOCK];
    f.read_exact_at(&mut b, block * BLOCK as u64).unwrap();
    b
}

/// Writes `data` at `block` after setting its blocknr field and checksum (`salt`: 160774 for a
/// superblock, 121107 for a btree node).
pub fn write_block(meta: &Path, block: u64, data: &mut [u8], salt: u32) {
    use std::os::unix::fs::FileExt;
    data[8..16].copy_from_slice(&block.to_le_bytes());
    reseal(data, salt);
    let f = std::fs::OpenOptions::new().write(true).open(meta).unwrap();
    f.write_all_at(data, block * BLOCK as u64).unwrap();
}

/// Recomputes a block's checksum.
pub fn reseal(data: &mut [u8], salt: u32) {
    let c = !crc32c::crc32c(&data[4..]) ^ salt;
    data[0..4].copy_from_slice(&c.to_le_bytes());
}

pub const SB_SALT: u32 = 160_774;
pub const NODE_SALT: u32 = 121_107;

pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// A btree node's view: (is_leaf, keys, values as u64) for 8-byte-value trees.
pub fn node_entries(b: &[u8]) -> (bool, Vec<u64>, Vec<u64>) {
    let leaf = le32(b, 4) == 2;
    let n = le32(b, 16) as usize;
    let max = le32(b, 20) as usize;
    let keys = (0..n).map(|i| le64(b, 32 + 8 * i)).collect();
    let vals = (0..n).map(|i| le64(b, 32 + 8 * max + 8 * i)).collect();
    (leaf, keys, vals)
}

/// Sets value `i` (8-byte values) of a node buffer.
pub fn set_value(b: &mut [u8], i: usize, v: u64) {
    let max = le32(b, 20) as usize;
    let off = 32 + 8 * max + 8 * i;
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copy-on-write editing of restored metadata, the way the kernel changes a device after a
/// snapshot: a write copies the path from the root to the changed leaf into fresh blocks and
/// leaves every other node shared with the snapshot. Fresh blocks come from the end of the
/// metadata file, which thin_restore leaves unused.
pub struct CowEditor {
    pub meta: PathBuf,
    next_free: u64,
    /// Blocks this editor created (already private to the edited device: changed in place).
    owned: std::collections::HashSet<u64>,
}

impl CowEditor {
    pub fn new(meta: &Path) -> Self {
        let len = std::fs::metadata(meta).unwrap().len();
        CowEditor {
            meta: meta.to_path_buf(),
            next_free: len / BLOCK as u64 - 1,
            owned: Default::default(),
        }
    }

    pub fn alloc(&mut self) -> u64 {
        let b = self.next_free;
        self.next_free -= 1;
        b
    }

    fn superblock_roots(&self) -> (u64, Vec<u8>) {
        let sb = read_block(&self.meta, 0);
        (le64(&sb, 320), sb)
    }

    /// Root of `dev`'s mapping tree (the top-level tree of these small pools is one leaf).
    pub fn device_root(&self, dev: u64) -> u64 {
        let (top, _) = self.superblock_roots();
        let (leaf, keys, vals) = node_entries(&read_block(&self.meta, top));
        assert!(leaf, "top-level mapping tree is not a single leaf");
        vals[keys
            .iter()
            .position(|&k| k == dev)
            .expect("device in top-level tree")]
    }

    /// Points `dev` at `root` in the top-level tree (changed in place).
    pub fn set_device_root(&mut self, dev: u64, root: u64) {
        let (top, _) = self.superblock_roots();
        let mut b = read_block(&self.meta, top);
        let (_, keys, _) = node_entries(&b);
        let i = keys.iter().position(|&k| k == dev).unwrap();
        set_value(&mut b, i, root);
        write_block(&self.meta, top, &mut b, NODE_SALT);
    }

    /// Sets (`Some(value)`) or removes (`None`) `key` in the tree at `root`, copying shared nodes
    /// on the way. Returns the new root, or None when the edit was not possible without splitting
    /// or rebalancing (a full leaf, a key below a leaf's first key, a leaf's last entry).
    pub fn write(&mut self, root: u64, key: u64, value: Option<u64>) -> Option<u64> {
        let mut path: Vec<(u64, Vec<u8>, usize)> = Vec::new();
        let mut block = root;
        loop {
            let b = read_block(&self.meta, block);
            let (leaf, keys, vals) = node_entries(&b);
            if leaf {
                path.push((block, b, 0));
                break;
            }
            let i = keys.partition_point(|&k| k <= key).saturating_sub(1);
            path.push((block, b, i));
            block = vals[i];
        }
        let (_, leaf, _) = path.last_mut().unwrap();
        let (_, keys, vals) = node_entries(leaf);
        let max = le32(leaf, 20) as usize;
        let pos = keys.partition_point(|&k| k < key);
        let exists = keys.get(pos) == Some(&key);
        let (mut keys, mut vals) = (keys, vals);
        match value {
            Some(v) if exists => vals[pos] = v,
            Some(v) if keys.len() < max && pos > 0 => {
                keys.insert(pos, key);
                vals.insert(pos, v);
            }
            None if exists && keys.len() > 1 && pos > 0 => {
                keys.remove(pos);
                vals.remove(pos);
            }
            _ => return None,
        }
        set_leaf_entries(leaf, &keys, &vals);
        // Write bottom-up, copying every node not yet private; each parent then points at the
        // new copy of the child it was descended through (index `i`).
        let mut new_child: Option<u64> = None;
        for (block, mut b, i) in path.into_iter().rev() {
            if let Some(c) = new_child {
                set_value(&mut b, i, c);
            }
            let target = if self.owned.contains(&block) {
                block
            } else {
                let n = self.alloc();
                self.owned.insert(n);
                n
            };
            write_block(&self.meta, target, &mut b, NODE_SALT);
            new_child = Some(target);
        }
        new_child
    }
}

impl CowEditor {
    /// Splits the internal root node `root` the way the kernel does when a full root must take
    /// another entry: its entries move into two new nodes under a new root, one level taller.
    /// Every child stays shared. Returns the new root.
    pub fn split_root(&mut self, root: u64) -> u64 {
        let b = read_block(&self.meta, root);
        let (leaf, keys, vals) = node_entries(&b);
        assert!(
            !leaf && keys.len() >= 2,
            "split_root wants an internal root"
        );
        let half = keys.len() / 2;
        let (mut left, mut right, mut top) = (b.clone(), b.clone(), b);
        set_leaf_entries(&mut left, &keys[..half], &vals[..half]);
        set_leaf_entries(&mut right, &keys[half..], &vals[half..]);
        let (l, r, t) = (self.alloc(), self.alloc(), self.alloc());
        write_block(&self.meta, l, &mut left, NODE_SALT);
        write_block(&self.meta, r, &mut right, NODE_SALT);
        set_leaf_entries(&mut top, &[keys[0], keys[half]], &[l, r]);
        write_block(&self.meta, t, &mut top, NODE_SALT);
        self.owned.extend([l, r, t]);
        t
    }
}

/// Rewrites a node buffer's entries (8-byte values: leaves of mapping trees, internal nodes).
pub fn set_leaf_entries(b: &mut [u8], keys: &[u64], vals: &[u64]) {
    let max = le32(b, 20) as usize;
    b[16..20].copy_from_slice(&(keys.len() as u32).to_le_bytes());
    for i in 0..max {
        let (k, v) = if i < keys.len() {
            (keys[i], vals[i])
        } else {
            (0, 0)
        };
        b[32 + 8 * i..40 + 8 * i].copy_from_slice(&k.to_le_bytes());
        let off = 32 + 8 * max + 8 * i;
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}
