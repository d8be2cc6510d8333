//! The lvmsync command line on the real classic-snapshot fixture and on crafted inputs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use lvmsync::source::cow::StoreWriter;

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn run(args: &[&str]) -> Output {
    lvmsync().args(args).output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "lvmsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refused(out: &Output, needle: &str) {
    assert!(!out.status.success(), "lvmsync should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
}

/// The 4 KiB chunks touched by the writes listed in the fixture's writes.txt, as merged ranges.
fn expected_changes() -> Vec<(u64, u64)> {
    let writes = std::fs::read_to_string(common::fixture("classic/writes.txt")).unwrap();
    let mut chunks = BTreeSet::new();
    for line in writes.lines() {
        let mut f = line.split_whitespace();
        let off: u64 = f.next().unwrap().parse().unwrap();
        let len: u64 = f.next().unwrap().parse().unwrap();
        chunks.extend(off / 4096..=(off + len - 1) / 4096);
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        match ranges.last_mut() {
            Some(r) if r.0 + r.1 == c * 4096 => r.1 += 4096,
            _ => ranges.push((c * 4096, 4096)),
        }
    }
    ranges
}

#[test]
fn changes_lists_exactly_the_written_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    for extra in [vec![], vec!["--data-source", p(&after)]] {
        let mut args = vec!["changes", "--cow", p(&cow)];
        args.extend(extra);
        let out = run(&args);
        ok(&out);
        let got: Vec<(u64, u64)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f[2], "data");
                (f[0].parse().unwrap(), f[1].parse().unwrap())
            })
            .collect();
        assert_eq!(got, expected_changes());
    }
}

#[test]
fn fixture_stream_applied_onto_before_gives_after() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    for fmt in [
        &["--format", "3"][..],
        &["--format", "4"],
        &["--format", "4", "-z"],
    ] {
        let stream = dir.path().join("stream");
        let mut args = vec!["--stdout", "--cow", p(&cow), "--data-source", p(&after)];
        args.extend_from_slice(fmt);
        let out = run(&args);
        ok(&out);
        std::fs::write(&stream, &out.stdout).unwrap();
        let head = if fmt[1] == "3" {
            &b"lvmsync PROTO[3]\n"[..]
        } else {
            &b"lvmsync PROTO[4]\n"[..]
        };
        assert!(out.stdout.starts_with(head));
        let copy = dir.path().join("copy");
        common::copy(&before, &copy);
        ok(&run(&["--apply", p(&stream), p(&copy)]));
        assert!(
            common::same(&copy, &after),
            "format {fmt:?}: copy != origin-after"
        );
        // The same stream through standard input.
        common::copy(&before, &copy);
        ok(&lvmsync()
            .args(["--apply", "-", p(&copy)])
            .pipe_stdin(&stream)
            .unwrap()
            .output()
            .unwrap());
        assert!(common::same(&copy, &after));
    }
}

#[test]
fn direct_local_sync_with_snapback_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let copy = dir.path().join("copy");
    let sb = dir.path().join("snapback");
    common::copy(&before, &copy);
    ok(&run(&[
        "-q",
        "--cow",
        p(&cow),
        "--data-source",
        p(&after),
        p(&copy),
        "--snapback",
        p(&sb),
    ]));
    assert!(common::same(&copy, &after));
    // Running the same sync again finds every range applied and keeps the snapback, which
    // still restores the snapshot's state.
    let first = std::fs::read(&sb).unwrap();
    let again = run(&[
        "--cow",
        p(&cow),
        "--data-source",
        p(&after),
        p(&copy),
        "-b",
        p(&sb),
    ]);
    ok(&again);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("kept the snapback"), "{err}");
    assert!(std::fs::read(&sb).unwrap() == first);
    // Any other file there is not overwritten without --force.
    let other = dir.path().join("other");
    std::fs::write(&other, b"not a snapback").unwrap();
    refused(
        &run(&[
            "--cow",
            p(&cow),
            "--data-source",
            p(&after),
            p(&copy),
            "-b",
            p(&other),
        ]),
        "already exists",
    );
    ok(&run(&["--apply", p(&sb), p(&copy)]));
    assert!(
        common::same(&copy, &before),
        "snapback did not restore the snapshot state"
    );
}

#[test]
fn destination_too_small_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    let out = run(&["--stdout", "--cow", p(&cow), "--data-source", p(&after)]);
    ok(&out);
    let stream = dir.path().join("stream");
    std::fs::write(&stream, &out.stdout).unwrap();
    let small = dir.path().join("small");
    let content = common::pattern(1 << 20, 7);
    std::fs::write(&small, &content).unwrap();
    refused(&run(&["--apply", p(&stream), p(&small)]), "smaller than");
    assert_eq!(std::fs::read(&small).unwrap(), content);
    // Format 3 has no size in its header: the first record past the end is refused.
    let out = run(&[
        "--stdout",
        "--format",
        "3",
        "--cow",
        p(&cow),
        "--data-source",
        p(&after),
    ]);
    std::fs::write(&stream, &out.stdout).unwrap();
    refused(&run(&["--apply", p(&stream), p(&small)]), "past the end");
}

#[test]
fn missing_destination_is_never_created() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    let dest = dir.path().join("nope");
    refused(
        &run(&["--cow", p(&cow), "--data-source", p(&after), p(&dest)]),
        "nope",
    );
    assert!(!dest.exists());
}

#[test]
fn invalid_and_garbage_stores_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("invalid");
    StoreWriter {
        chunk_bytes: 4096,
        valid: false,
    }
    .write(&inv, &[1, 2], 4)
    .unwrap();
    refused(&run(&["changes", "--cow", p(&inv)]), "invalid");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, common::pattern(1 << 16, 3)).unwrap();
    refused(&run(&["changes", "--cow", p(&garbage)]), "magic");
}

/// A small format 4 stream (two data records) from a crafted store.
fn small_v4_stream(dir: &Path) -> (Vec<u8>, std::path::PathBuf) {
    let cow = dir.join("small.cow");
    StoreWriter {
        chunk_bytes: 512,
        valid: true,
    }
    .write(&cow, &[1, 3, 4], 0)
    .unwrap();
    let origin = dir.join("origin");
    std::fs::write(&origin, common::pattern(4096, 11)).unwrap();
    let out = run(&["--stdout", "--cow", p(&cow), "--data-source", p(&origin)]);
    ok(&out);
    (out.stdout, origin)
}

#[test]
fn format4_cut_anywhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (stream, _) = small_v4_stream(dir.path());
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0u8; 4096]).unwrap();
    let cut = dir.path().join("cut");
    for len in 0..stream.len() {
        std::fs::write(&cut, &stream[..len]).unwrap();
        let out = run(&["--apply", p(&cut), p(&dest)]);
        assert!(
            !out.status.success(),
            "a stream cut at byte {len} was accepted"
        );
    }
    std::fs::write(&cut, &stream).unwrap();
    ok(&run(&["--apply", p(&cut), p(&dest)]));
}

#[test]
fn format4_any_flipped_bit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (stream, _) = small_v4_stream(dir.path());
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0u8; 4096]).unwrap();
    let bad = dir.path().join("bad");
    for bit in 0..stream.len() * 8 {
        let mut s = stream.clone();
        s[bit / 8] ^= 1 << (bit % 8);
        // Every bit through the library's receiver, every 13th through the command too.
        let res = lvmsync::apply::apply_stream(
            std::io::Cursor::new(&s),
            &dest,
            &lvmsync::apply::ApplyOptions::default(),
        );
        assert!(res.is_err(), "a stream with bit {bit} flipped was accepted");
        if bit % 13 == 0 {
            std::fs::write(&bad, &s).unwrap();
            let out = run(&["--apply", p(&bad), p(&dest)]);
            assert!(
                !out.status.success(),
                "lvmsync accepted a stream with bit {bit} flipped"
            );
        }
    }
}

#[test]
fn format4_trailing_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stream, _) = small_v4_stream(dir.path());
    stream.push(0);
    let f = dir.path().join("s");
    std::fs::write(&f, &stream).unwrap();
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0u8; 4096]).unwrap();
    assert!(!run(&["--apply", p(&f), p(&dest)]).status.success());
}

#[test]
fn usage_errors_are_one_line() {
    refused(&run(&["-q", "-v", "--stdout", "/dev/null"]), "--quiet");
    refused(&run(&["--apply", "x"]), "no destination");
}

/// A usage error found after parsing points to the help that lists the options of the command
/// given: a subcommand's own.
#[test]
fn usage_errors_point_to_the_help_of_their_command() {
    for (args, says, help) in [
        (
            &["changes"][..],
            "no snapshot specified",
            "lvmsync changes --help",
        ),
        (
            &["verify", "a.img"],
            "no destination",
            "lvmsync verify --help",
        ),
        (
            &["replicate", "vg/lv"],
            "no destination",
            "lvmsync replicate --help",
        ),
        (&["--apply", "x"], "no destination", "lvmsync --help"),
    ] {
        let out = run(args);
        refused(&out, says);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let hint = format!("(see {help})");
        assert!(err.trim_end().ends_with(&hint), "{args:?}: {err}");
    }
}

/// Loop devices as the destination (the tests run as root, as the receiver does).
#[test]
fn applies_onto_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, before, after) = common::classic_fixture(dir.path());
    let backing = dir.path().join("backing");
    common::copy(&before, &backing);
    let dev = common::LoopDevice::attach(&backing);
    let loopdev = dev.0.clone();
    let sb = dir.path().join("sb");
    ok(&run(&[
        "--cow",
        p(&cow),
        "--data-source",
        p(&after),
        &loopdev,
        "-b",
        p(&sb),
    ]));
    let got = std::fs::read(&loopdev).unwrap();
    assert!(
        got == std::fs::read(&after).unwrap(),
        "loop device != origin-after"
    );
    ok(&run(&["--apply", p(&sb), &loopdev]));
    assert!(std::fs::read(&loopdev).unwrap() == std::fs::read(&before).unwrap());
    // A stream bigger than the device is refused before writing.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![1u8; 128 << 20]).unwrap();
    let out = run(&["--stdout", "--cow", p(&cow), "--data-source", p(&big)]);
    ok(&out);
    let s = dir.path().join("s");
    std::fs::write(&s, out.stdout).unwrap();
    refused(&run(&["--apply", p(&s), &loopdev]), "smaller than");
    assert!(std::fs::read(&loopdev).unwrap() == std::fs::read(&before).unwrap());
}

#[test]
fn changes_from_thin_metadata_follow_thin_delta() {
    let dir = tempfile::tempdir().unwrap();
    let meta = common::gunzip_fixture("thin/tmeta.img.gz", dir.path());
    let out = run(&["changes", "--thin-metadata", p(&meta), "--thin-ids", "2:1"]);
    ok(&out);
    // thin_delta --snap1 2 --snap2 1, in 64 KiB blocks: every range but <same> must be listed.
    let xml = std::fs::read_to_string(common::fixture("thin/thin_delta.xml")).unwrap();
    let attr = |line: &str, name: &str| -> u64 {
        let at = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[at..].split('"').next().unwrap().parse().unwrap()
    };
    let mut expected = Vec::new();
    for line in xml.lines().map(str::trim) {
        let kind = match line.split_whitespace().next() {
            Some("<different" | "<right_only") => "data",
            Some("<left_only") => "zero",
            _ => continue,
        };
        let (b, l) = (attr(line, "begin"), attr(line, "length"));
        expected.push(format!("{} {} {kind}", b * 65536, l * 65536));
    }
    assert!(!expected.is_empty());
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got, expected);
    refused(
        &run(&["changes", "--thin-metadata", p(&meta), "--thin-ids", "2:9"]),
        "not found",
    );
}

/// Changes past the end of `--data-source` mean it is not the thin volume's origin: refused in
/// every form before anything is written, never silently dropped. Only a last block that
/// straddles the end is cut to it.
#[test]
fn thin_changes_past_a_short_data_source_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let meta = common::gunzip_fixture("thin/tmeta.img.gz", dir.path());
    // The delta's last change is block 1920 of 64 KiB (byte 125829120) of a 128 MiB volume.
    let last = 1920 * 65536;
    let image = |name: &str, len: u64| {
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    };
    let thin = |data: &Path| {
        vec![
            "--thin-metadata".to_string(),
            p(&meta).to_string(),
            "--thin-ids".into(),
            "2:1".into(),
            "--data-source".into(),
            p(data).to_string(),
        ]
    };
    let dest_content = common::pattern(128 << 20, 5);
    let dest = dir.path().join("dest");
    let marker = dir.path().join("remote-shell-ran");
    let rsh = format!("sh -c 'touch {}' rsh", p(&marker));
    for len in [100 << 20, last, last - 1] {
        let short = image("short", len);
        let needle = format!("byte {last}, past the end of data source {}", p(&short));
        let mut changes = vec!["changes".to_string()];
        changes.extend(thin(&short));
        refused(&lvmsync().args(&changes).output().unwrap(), &needle);
        let mut stdout = thin(&short);
        stdout.push("--stdout".into());
        let out = lvmsync().args(&stdout).output().unwrap();
        refused(&out, &needle);
        assert!(out.stdout.is_empty(), "a stream was written");
        std::fs::write(&dest, &dest_content).unwrap();
        let mut local = thin(&short);
        local.push(p(&dest).into());
        refused(&lvmsync().args(&local).output().unwrap(), &needle);
        assert!(
            std::fs::read(&dest).unwrap() == dest_content,
            "dest written"
        );
        let mut remote = thin(&short);
        remote.extend(["-e".into(), rsh.clone(), format!("host:{}", p(&dest))]);
        refused(&lvmsync().args(&remote).output().unwrap(), &needle);
        assert!(!marker.exists(), "the remote shell was started");
    }
    // A data source ending inside the last changed block: that block is cut to it.
    let straddling = image("straddling", last + 100);
    let mut changes = vec!["changes".to_string()];
    changes.extend(thin(&straddling));
    let out = lvmsync().args(&changes).output().unwrap();
    ok(&out);
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().last(), Some(&*format!("{last} 100 data")));
    // A whole volume: every change is sent.
    let whole = image("whole", 128 << 20);
    let mut stdout = thin(&whole);
    stdout.push("--stdout".into());
    let out = lvmsync().args(&stdout).output().unwrap();
    ok(&out);
    std::fs::write(&dest, &dest_content).unwrap();
    ok(&lvmsync()
        .args(["--apply", "-", p(&dest)])
        .write_stdin(out.stdout)
        .output()
        .unwrap());
    // The data source reads zeros: every listed range, the last one included, is zeroed.
    let mut changes = vec!["changes".to_string()];
    changes.extend(thin(&whole));
    let out = lvmsync().args(&changes).output().unwrap();
    ok(&out);
    let mut expected = dest_content;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<usize> = line
            .split(' ')
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect();
        expected[f[0]..f[0] + f[1]].fill(0);
    }
    assert!(expected[last as usize..].starts_with(&[0; 65536]));
    assert!(
        std::fs::read(&dest).unwrap() == expected,
        "dest != expected"
    );
}

#[test]
fn closed_stdout_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cow, _, after) = common::classic_fixture(dir.path());
    for format in ["3", "4"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lvmsync"))
            .args([
                "--stdout",
                "--format",
                format,
                "--cow",
                p(&cow),
                "--data-source",
                p(&after),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut head = [0u8; 100];
        std::io::Read::read_exact(&mut out, &mut head).unwrap();
        drop(out);
        let res = child.wait_with_output().unwrap();
        assert!(
            !res.status.success(),
            "format {format}: exit 0 on a closed pipe"
        );
        assert!(String::from_utf8_lossy(&res.stderr).contains("closed before"));
    }
}

/// `-r/--data-source` is described as what it is (where changed data is read from, standing in
/// for the origin of an offline source), in the help of a send and of `changes`.
#[test]
fn data_source_help_says_what_it_is() {
    for args in [&["--help"][..], &["changes", "--help"]] {
        let out = run(args);
        ok(&out);
        // One line per option: the help wraps differently for each command.
        let help = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let at = help
            .find("-r, --data-source <DEV>")
            .unwrap_or_else(|| panic!("{args:?}: no -r/--data-source in the help"));
        let text = &help[at..];
        // Up to the next option.
        let text = &text[..text.find("--base-source").unwrap_or(text.len())];
        assert!(
            text.contains("Read the changed data from DEV instead of the snapshot's origin")
                && text.contains("stands in for the origin"),
            "{args:?}: {text}"
        );
        assert!(!help.contains("Origin size"), "{args:?}: {help}");
    }
}
