//! The exit statuses of lvmsync::exit::Exit::TABLE, one test per status, and the README's copy
//! of the table. 128+N (a signal caught while a thin metadata snapshot is held) is tested in
//! tests/thin_guard.rs.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use lvmsync::exit::Exit;

const BIN: &str = env!("CARGO_BIN_EXE_lvmsync");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn success_is_0() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let copy = dir.path().join("copy");
    common::copy(&before, &copy);
    let out = run(&["--cow", p(&cow), "--data-source", p(&after), p(&copy)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(common::same(&copy, &after));
    for asked in ["--help", "-h", "--version"] {
        let out = run(&[asked]);
        assert_eq!(out.status.code(), Some(0), "{asked}");
        assert!(!out.stdout.is_empty(), "{asked} printed nothing");
        assert!(out.stderr.is_empty(), "{asked}: {}", stderr(&out));
    }
}

#[test]
fn a_failed_operation_is_1() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, [7u8; 4096]).unwrap();
    let missing = dir.path().join("missing.stream");
    let out = run(&["--apply", p(&missing), p(&dest)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("missing.stream"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        !err.contains("--help"),
        "an operation's failure is no usage error: {err}"
    );
}

/// Usage errors from clap itself: its message, then its pointer to --help.
#[test]
fn a_usage_error_found_by_clap_is_2() {
    for args in [
        &["--no-such-option", "/dev/vg/snap", "/dev/x"][..],
        &["--format", "5", "--stdout", "/dev/vg/snap"],
        &["--thin-metadata", "m", "--stdout"],
        &["--compress-level", "x", "--stdout", "/dev/vg/snap"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.trim_end()
                .ends_with("For more information, try '--help'."),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// Usage errors found after clap, by the command line's own checks: one line that ends by
/// pointing to --help, and nothing written.
#[test]
fn a_usage_error_found_after_parsing_is_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let stream = dir.path().join("stream");
    let out = run(&["--stdout", "--cow", p(&cow), "--data-source", p(&after)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(&stream, &out.stdout).unwrap();
    let dest = dir.path().join("dest");
    common::copy(&before, &dest);
    let snapback = dir.path().join("snapback");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-q", "-v", "--apply", p(&stream), p(&dest)],
        vec!["--apply", p(&stream)],
        vec!["--apply", p(&stream), p(&dest), "extra"],
        vec!["--apply", p(&stream), "--stdout", p(&dest)],
        vec!["--cow", p(&cow), p(&dest)],
        vec![
            "--format",
            "3",
            "-z",
            "--cow",
            p(&cow),
            "-r",
            p(&after),
            p(&dest),
        ],
        vec![
            "-b",
            p(&snapback),
            "--cow",
            p(&cow),
            "-r",
            p(&after),
            p(&dest),
            "x",
        ],
        vec!["changes"],
        vec!["changes", "--thin-metadata", "m", "--thin-ids", "2-1"],
        // The remote receiver's command line, refused before the snapshot is read.
        vec![
            "-e",
            "ssh 'unclosed",
            "--cow",
            p(&cow),
            "-r",
            p(&after),
            "host:/dev/x",
        ],
        vec!["--cow", p(&cow), "-r", p(&after), "host:-rf"],
        vec!["--", "/no/such/snapshot", "-oProxyCommand=x:/dev/x"],
    ];
    for args in &cases {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("lvmsync: "), "{args:?}: {err}");
        let help = match args.first().copied() {
            Some("changes") => "(see lvmsync changes --help)",
            _ => "(see lvmsync --help)",
        };
        assert!(err.trim_end().ends_with(help), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(common::same(&dest, &before), "a refused command wrote DEST");
    assert!(!snapback.exists(), "a refused command created the snapback");
}

/// The README's table of exit statuses is the one the code follows.
#[test]
fn the_readme_gives_the_same_table() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("\n## Exit status\n")
        .nth(1)
        .expect("README has an '## Exit status' section");
    let rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "{l}");
            (cells[0].trim().to_string(), cells[1].trim().to_string())
        })
        .collect();
    let table: Vec<(String, String)> = Exit::TABLE
        .iter()
        .map(|(code, meaning)| (code.to_string(), meaning.to_string()))
        .collect();
    assert_eq!(rows, table);
}
