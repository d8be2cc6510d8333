//! Send then apply through the library, on random images and random change lists.

mod common;

use std::io::Cursor;

use lvmsync::apply::{apply_stream, ApplyOptions};
use lvmsync::extent::{Extent, ExtentList};
use lvmsync::send::{send_changes, SendOptions};
use lvmsync::source::ChangeSet;
use lvmsync::stream::Format;
use proptest::prelude::*;

const SIZE: usize = 1 << 20;

fn case(
    raw: Vec<(u64, u64, bool)>,
    format: Format,
    compress: Option<i32>,
    snapback: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut origin = common::pattern(SIZE, seed);
    let before = common::pattern(SIZE, seed ^ 0xdead_beef);
    let list = ExtentList::from_extents(raw.into_iter().map(|(o, l, d)| {
        let (o, l) = (o % SIZE as u64, l);
        let l = l.min(SIZE as u64 - o);
        if d {
            Extent::data(o, l)
        } else {
            Extent::zero(o, l)
        }
    }));
    // Where the change list says "zero", the origin reads zeros (a discarded thin block).
    for e in list
        .iter()
        .filter(|e| e.kind == lvmsync::extent::ExtentKind::Zero)
    {
        origin[e.offset as usize..e.end() as usize].fill(0);
    }
    let mut expected = before.clone();
    for e in &list {
        let r = e.offset as usize..e.end() as usize;
        expected[r.clone()].copy_from_slice(&origin[r]);
    }
    let origin_path = dir.path().join("origin");
    let dest_path = dir.path().join("dest");
    std::fs::write(&origin_path, &origin).unwrap();
    std::fs::write(&dest_path, &before).unwrap();
    let changes = ChangeSet {
        extents: list,
        chunk_bytes: 4096,
        volume_bytes: SIZE as u64,
    };
    let opts = SendOptions {
        format,
        compress,
        queue_depth: 4,
    };
    let (stream, _) = send_changes(&changes, &origin_path, Vec::new(), &opts, &|_| {}).unwrap();
    let sb_path = dir.path().join("snapback");
    let aopts = ApplyOptions {
        snapback: snapback.then(|| sb_path.clone()),
        force: false,
    };
    apply_stream(Cursor::new(&stream), &dest_path, &aopts).unwrap();
    prop_assert!(
        std::fs::read(&dest_path).unwrap() == expected,
        "dest differs from expected"
    );
    if snapback {
        let sb = std::fs::read(&sb_path).unwrap();
        apply_stream(Cursor::new(&sb), &dest_path, &ApplyOptions::default()).unwrap();
        prop_assert!(
            std::fs::read(&dest_path).unwrap() == before,
            "snapback did not restore dest"
        );
    }
    Ok(())
}

fn extents() -> impl Strategy<Value = Vec<(u64, u64, bool)>> {
    prop::collection::vec(
        (0u64..SIZE as u64, 1u64..300_000, prop::bool::weighted(0.8)),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn format4_round_trip(raw in extents(), seed in any::<u64>(), sb in any::<bool>()) {
        case(raw, Format::V4, None, sb, seed)?;
    }
    #[test]
    fn format4_compressed_round_trip(raw in extents(), seed in any::<u64>(), sb in any::<bool>()) {
        case(raw, Format::V4, Some(1), sb, seed)?;
    }
    #[test]
    fn format3_round_trip(raw in extents(), seed in any::<u64>(), sb in any::<bool>()) {
        case(raw, Format::V3, None, sb, seed)?;
    }
}
