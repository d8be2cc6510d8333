//! Helper for bench/thin/run.sh: builds large thin metadata and times the native delta.
//!
//!   thin_delta_bench gen-xml OUT MAPPINGS CHANGES SEED
//!       thin_dump-style XML with device 1 (MAPPINGS mapped blocks, fragmented data runs),
//!       device 3 (device 1 with CHANGES blocks remapped, as a separate tree) and device 2
//!       (a placeholder that `share` turns into a copy-on-write descendant of device 1).
//!   thin_delta_bench share META CHANGES SEED
//!       device 2 := device 1 with CHANGES blocks remapped copy-on-write (shares all else).
//!   thin_delta_bench delta META SNAP ORIGIN REPEATS
//!       runs the native delta REPEATS times; prints best seconds, blocks read, subtrees
//!       skipped, extents, read calls.
//!   thin_delta_bench check META SNAP ORIGIN THIN_DELTA_XML
//!       compares the native delta with thin_delta's output; exits 1 when they differ.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use common::thin::{dump_xml, parse_thin_delta, CowEditor, DeviceMap, Rng};
use lvmsync::source::thin::{self, MetadataRoot};

fn base_device(mappings: u64, rng: &mut Rng) -> (DeviceMap, u64) {
    let mut map = DeviceMap::new();
    let (mut block, mut data) = (0u64, 0u64);
    while (map.len() as u64) < mappings {
        // Runs of 1..64 blocks, with holes between them and jumps in the data space.
        let run = 1 + rng.below(64);
        for _ in 0..run {
            map.insert(block, (data, 0));
            block += 1;
            data += 1;
        }
        block += rng.below(8);
        data += rng.below(4);
    }
    (map, data + 1)
}

fn changed_keys(map: &DeviceMap, changes: u64, rng: &mut Rng) -> Vec<u64> {
    let last = *map.keys().next_back().unwrap_or(&0);
    let mut keys = Vec::new();
    while (keys.len() as u64) < changes {
        let k = rng.below(last + 1);
        if map.contains_key(&k) && !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

fn usage() -> ! {
    eprintln!("usage: see the header of examples/thin_delta_bench.rs");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize| -> u64 {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage())
    };
    match args.first().map(String::as_str) {
        Some("gen-xml") => {
            let mut rng = Rng(n(4));
            let (dev1, nr_data) = base_device(n(2), &mut rng);
            let mut dev3 = dev1.clone();
            let mut next = nr_data;
            for k in changed_keys(&dev1, n(3), &mut rng) {
                dev3.insert(k, (next, 1));
                next += 1;
            }
            let mut placeholder = DeviceMap::new();
            placeholder.insert(0, (0, 0));
            let xml = dump_xml(
                128,
                next + n(3) + 16,
                &[(1, &dev1), (2, &placeholder), (3, &dev3)],
            );
            std::fs::File::create(&args[1])
                .and_then(|mut f| f.write_all(xml.as_bytes()))
                .expect("writing XML");
        }
        Some("share") => {
            let meta = Path::new(&args[1]);
            let mut rng = Rng(n(3));
            let dev1 = thin::mappings(meta, 1, MetadataRoot::Superblock).expect("reading device 1");
            let map: DeviceMap = dev1
                .iter()
                .map(|m| (m.block, (m.data_block, m.time)))
                .collect();
            let first_new = dev1.iter().map(|m| m.data_block).max().unwrap_or(0) + 1_000_000;
            let mut ed = CowEditor::new(meta);
            let mut root = ed.device_root(1);
            for (data, k) in (first_new..).zip(changed_keys(&map, n(2), &mut rng)) {
                root = ed
                    .write(root, k, Some(data << 24 | 1))
                    .expect("remap in place");
            }
            ed.set_device_root(2, root);
        }
        Some("delta") => {
            let meta = Path::new(&args[1]);
            let mut best = f64::MAX;
            let mut last = None;
            for _ in 0..n(4).max(1) {
                let t = Instant::now();
                let r = thin::delta_with_stats(meta, n(2), n(3), MetadataRoot::Superblock)
                    .unwrap_or_else(|e| {
                        eprintln!("thin_delta_bench: {e}");
                        std::process::exit(1)
                    });
                best = best.min(t.elapsed().as_secs_f64());
                last = Some(r);
            }
            let (d, stats) = last.unwrap();
            println!(
                "{best:.6} {} {} {} {}",
                stats.blocks_read,
                stats.shared_subtrees_skipped,
                d.extents.len(),
                stats.read_calls
            );
        }
        Some("check") => {
            let meta = Path::new(&args[1]);
            let d = thin::delta(meta, n(2), n(3), MetadataRoot::Superblock).expect("native delta");
            let xml = std::fs::read_to_string(&args[4]).expect("reading thin_delta output");
            let (_, theirs) = parse_thin_delta(&xml);
            if d.extents == theirs {
                println!("identical ({} extents)", d.extents.len());
            } else {
                println!(
                    "DIFFERENT: native {} extents, thin_delta {}",
                    d.extents.len(),
                    theirs.len()
                );
                std::process::exit(1);
            }
        }
        _ => usage(),
    }
}
