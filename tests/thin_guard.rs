//! Thin-pool status parsing (the held metadata root is field 7).

use lvmsync::source::thin::guard::parse_pool_status;
use lvmsync::source::thin::ThinError;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/lvm-2.03.16/thin"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn captured_pool_status_lines_parse() {
    let before = parse_pool_status("vg0-pool-tpool", &fixture("pool-status-before.txt")).unwrap();
    assert_eq!(before.held_metadata_root, None);
    assert_eq!(before.transaction_id, 2);
    assert_eq!(before.mode, "rw");
    let held = parse_pool_status("vg0-pool-tpool", &fixture("pool-status-held.txt")).unwrap();
    // The held line's seventh field is the metadata snapshot block.
    let field7: u64 = fixture("pool-status-held.txt")
        .split_whitespace()
        .nth(6)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(held.held_metadata_root, Some(field7));
    let released =
        parse_pool_status("vg0-pool-tpool", &fixture("pool-status-released.txt")).unwrap();
    assert_eq!(released.held_metadata_root, None);
}

#[test]
fn failed_and_foreign_status_lines_are_errors() {
    for (line, why) in [
        ("0 131072 thin-pool Fail", "failed"),
        ("0 131072 thin-pool Error", "cannot read"),
        ("0 131072 linear", "not a thin-pool"),
        ("0 262144 thin 1 2", "not a thin-pool"),
        ("0 131072 thin-pool 2 113/1024 133/1024", "too few"),
        (
            "0 131072 thin-pool 2 113/1024 133/1024 x rw",
            "held metadata root",
        ),
        ("0 131072 thin-pool 2 113-1024 133/1024 - rw", "USED/TOTAL"),
        ("", "not a thin-pool"),
    ] {
        let err = parse_pool_status("p", line).unwrap_err();
        assert!(matches!(err, ThinError::PoolStatus { .. }), "{line}: {err}");
        assert!(err.to_string().contains(why), "{line}: {err}");
    }
}
