//! `lvmsync --stdout --resume FILE`: a dump cut short anywhere (inside the header, the
//! identity, the manifest, a record) or damaged is finished in place into exactly the dump an
//! uninterrupted run writes; a file that is not the start of this dump is refused and left as
//! it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use lvmsync::apply::{apply_stream, ApplyOptions};
use lvmsync::extent::{Extent, ExtentList};
use lvmsync::inspect::{inspect, Ending};
use lvmsync::send::resume::resume_dump;
use lvmsync::send::{send_changes_with, SendOptions, StreamExtras};
use lvmsync::source::{ChangeSet, PriorSource};
use lvmsync::stream::manifest::{StreamIdentity, VolumeIdentity};
use lvmsync::stream::StreamReader;

fn lvmsync() -> Command {
    Command::cargo_bin("lvmsync").unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A snapshot image, an origin with changes over it, and how a dump of them is made.
struct Case {
    dir: tempfile::TempDir,
    changes: ChangeSet,
}

impl Case {
    fn new(size: u64, extents: ExtentList) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = common::pattern(size as usize, 11);
        let mut origin = snapshot.clone();
        let fresh = common::pattern(size as usize, 12);
        for e in &extents {
            let r = e.offset as usize..e.end() as usize;
            match e.kind {
                lvmsync::extent::ExtentKind::Data => origin[r.clone()].copy_from_slice(&fresh[r]),
                lvmsync::extent::ExtentKind::Zero => origin[r].fill(0),
            }
        }
        std::fs::write(dir.path().join("snapshot"), &snapshot).unwrap();
        std::fs::write(dir.path().join("origin"), &origin).unwrap();
        Case {
            dir,
            changes: ChangeSet {
                extents,
                chunk_bytes: 4096,
                volume_bytes: size,
            },
        }
    }

    /// Data and zero ranges, some longer than a record, over a 4 MiB volume.
    fn small() -> Case {
        Case::new(
            4 << 20,
            ExtentList::from_extents([
                Extent::data(0, 8192),
                Extent::data(20480, 100),
                Extent::zero(65536, 65536),
                Extent::data(1 << 20, (2 << 20) + 4096),
                Extent::zero((3 << 20) + 8192, 4096),
                Extent::data((4 << 20) - 4096, 4096),
            ]),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn identity() -> StreamIdentity {
        StreamIdentity {
            kind: "test".into(),
            origin: Some(VolumeIdentity {
                name: Some("vg/lv".into()),
                uuid: None,
            }),
            created: Some(1_790_000_000),
            lvmsync: "4.0.0".into(),
            ..Default::default()
        }
    }

    fn extras<'a>(&self, prior: &'a Option<PriorSource>) -> StreamExtras<'a, 'a> {
        StreamExtras {
            identity: Some(Case::identity()),
            prior: prior.as_ref(),
            session: None,
        }
    }

    fn prior(&self, manifest: bool) -> Option<PriorSource> {
        manifest.then(|| PriorSource::Device(self.path("snapshot")))
    }

    /// The dump an uninterrupted run writes.
    fn dump(&self, opts: &SendOptions, manifest: bool) -> Vec<u8> {
        let prior = self.prior(manifest);
        send_changes_with(
            &self.changes,
            &self.path("origin"),
            Vec::new(),
            opts,
            &|_| {},
            self.extras(&prior),
        )
        .unwrap()
        .0
    }

    /// Writes `start` to a file and resumes the dump into it; returns the file's contents.
    fn resume(&self, start: &[u8], opts: &SendOptions, manifest: bool) -> Vec<u8> {
        let file = self.path("dump");
        std::fs::write(&file, start).unwrap();
        let prior = self.prior(manifest);
        let report = resume_dump(
            &file,
            &self.changes,
            &self.path("origin"),
            opts,
            &|_| {},
            self.extras(&prior),
        )
        .unwrap();
        let out = std::fs::read(&file).unwrap();
        assert_eq!(report.totals.wire_bytes, out.len() as u64);
        assert!(report.kept_bytes <= start.len() as u64);
        assert_eq!(report.kept_bytes + report.dropped_bytes, start.len() as u64);
        out
    }
}

/// Stream positions where each record starts, and the end.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut r = StreamReader::open(bytes).unwrap();
    let mut starts = vec![r.position() as usize];
    while r.next_record().unwrap().is_some() {
        starts.push(r.position() as usize);
    }
    starts.push(bytes.len());
    starts
}

/// Every record boundary, and places inside every record's header and payload, inside the
/// first line and the header.
fn cuts(bytes: &[u8]) -> Vec<usize> {
    let mut cuts = vec![0, 1, 16, 17, 18, 30, 52];
    for w in record_starts(bytes).windows(2) {
        let (start, end) = (w[0], w[1]);
        cuts.extend([start, start + 1, start + 27, start + 28]);
        cuts.extend([(start + end) / 2, end - 1]);
    }
    cuts.retain(|&c| c <= bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn a_dump_cut_anywhere_is_finished_byte_for_byte() {
    let case = Case::small();
    for (compress, manifest) in [(None, true), (Some(3), true), (None, false)] {
        let opts = SendOptions {
            compress,
            ..SendOptions::default()
        };
        let full = case.dump(&opts, manifest);
        let cuts = cuts(&full);
        assert!(cuts.len() > 40);
        for &cut in &cuts {
            let out = case.resume(&full[..cut], &opts, manifest);
            assert!(
                out == full,
                "compress {compress:?}, manifest {manifest}: cut at {cut} of {}",
                full.len()
            );
        }
        // The result is a valid stream that applies.
        let ins = inspect(&full[..]).unwrap();
        assert_eq!(ins.ending, Ending::Verified);
        let dest = case.path("dest");
        common::copy(&case.path("snapshot"), &dest);
        apply_stream(&full[..], &dest, &ApplyOptions::default()).unwrap();
        assert!(common::same(&dest, &case.path("origin")));
    }
}

/// A damaged byte anywhere after the header (a record that does not check) is cut off with
/// everything after it, and the rest written again.
#[test]
fn a_damaged_dump_is_finished_from_its_last_good_record() {
    let case = Case::small();
    let opts = SendOptions::default();
    let full = case.dump(&opts, true);
    let starts = record_starts(&full);
    for w in starts.windows(2).skip(1) {
        for at in [w[0] + 3, (w[0] + w[1]) / 2] {
            let mut bad = full.clone();
            bad[at] ^= 0x10;
            assert!(case.resume(&bad, &opts, true) == full, "damage at {at}");
        }
    }
}

/// A manifest of several records, cut inside and between them.
#[test]
fn a_dump_cut_inside_a_long_manifest_is_finished() {
    // 512-byte ranges every KiB: 33 bytes of manifest each, over 1 MiB of manifest in all.
    let size = 40u64 << 20;
    let case = Case::new(
        size,
        ExtentList::from_extents((0..size / 1024).map(|i| Extent::data(i * 1024, 512))),
    );
    let opts = SendOptions::default();
    let full = case.dump(&opts, true);
    let starts = record_starts(&full);
    // The identity, then the manifest records.
    let mut r = StreamReader::open(&full[..]).unwrap();
    let mut manifests = Vec::new();
    let mut i = 0;
    while let Some(rec) = r.next_record().unwrap() {
        if matches!(rec, lvmsync::stream::Record::Manifest(_)) {
            manifests.push((starts[i], starts[i + 1]));
        }
        i += 1;
    }
    assert!(manifests.len() >= 2, "{} manifest records", manifests.len());
    let mut cuts = Vec::new();
    for &(start, end) in &manifests {
        cuts.extend([start, start + 100, (start + end) / 2, end - 1, end]);
    }
    cuts.push(manifests.last().unwrap().1 + 2000);
    for cut in cuts {
        assert!(
            case.resume(&full[..cut], &opts, true) == full,
            "cut at {cut}"
        );
    }
    // A kept manifest record that this run would not write is refused (when the manifest is
    // to be finished), the file untouched.
    let mut other = full[..manifests[1].0 + 100].to_vec();
    let (start, _) = manifests[0];
    other[start + 28 + 8 + 17 + 3] ^= 1;
    let len = u32::from_be_bytes(other[start + 4..start + 8].try_into().unwrap()) as usize;
    let payload = other[start + 28..start + 28 + len].to_vec();
    let header = lvmsync::stream::v4::record_header(b'M', 0, 0, 0, &payload);
    other[start..start + 28].copy_from_slice(&header);
    let file = case.path("dump");
    std::fs::write(&file, &other).unwrap();
    let prior = case.prior(true);
    let err = resume_dump(
        &file,
        &case.changes,
        &case.path("origin"),
        &opts,
        &|_| {},
        case.extras(&prior),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("manifest record 1 differs"), "{err}");
    assert!(std::fs::read(&file).unwrap() == other);
}

/// The classic fixture, dumped and resumed through the command line.
struct Cli(common::ClassicImages);

impl std::ops::Deref for Cli {
    type Target = common::ClassicImages;
    fn deref(&self) -> &common::ClassicImages {
        &self.0
    }
}

impl Cli {
    fn new() -> Cli {
        Cli(common::ClassicImages::new())
    }

    fn source(&self) -> Vec<String> {
        ["--cow", p(&self.cow), "--data-source", p(&self.after)]
            .map(String::from)
            .to_vec()
    }

    fn dump(&self, extra: &[&str]) -> Vec<u8> {
        let out = lvmsync()
            .args(["-q", "--stdout"])
            .args(self.source())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn resume(&self, file: &Path, extra: &[&str]) -> Output {
        lvmsync()
            .args(["--stdout", "--resume", p(file)])
            .args(self.source())
            .args(extra)
            .output()
            .unwrap()
    }
}

fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "want exit status 1: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_command_line_finishes_a_cut_dump_that_info_and_apply_accept() {
    let c = Cli::new();
    let full = c.dump(&[]);
    let starts = record_starts(&full);
    let file = c.path("dump");
    // Cut inside the third record: the identity is kept, so the result is the dump itself.
    let cut = starts[3] + 10;
    std::fs::write(&file, &full[..cut]).unwrap();
    let out = c.resume(&file, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!(
            "kept {} bytes (the header and 3 complete records), dropped the 10 bytes that followed, appended {} bytes",
            starts[3],
            full.len() - starts[3]
        )),
        "{err}"
    );
    assert!(std::fs::read(&file).unwrap() == full);
    let out = lvmsync().args(["info", p(&file)]).output().unwrap();
    assert!(out.status.success());
    let dest = c.path("dest");
    common::copy(&c.before, &dest);
    let out = lvmsync()
        .args(["--apply", p(&file), p(&dest)])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(common::same(&dest, &c.after));

    // Whole already: said so, nothing written.
    let out = c.resume(&file, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already a whole stream"), "{err}");
    assert!(std::fs::read(&file).unwrap() == full);

    // Cut inside the identity: this run's identity is written (its own creation time, and so
    // its own stream digest); everything between is the same.
    std::fs::write(&file, &full[..starts[0] + 40]).unwrap();
    assert!(c.resume(&file, &[]).status.success());
    let resumed = std::fs::read(&file).unwrap();
    assert_eq!(resumed.len(), full.len());
    let end_record = full.len() - 92;
    assert!(resumed[starts[1]..end_record] == full[starts[1]..end_record]);
    assert!(lvmsync()
        .args(["info", p(&file)])
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn a_file_that_is_not_the_start_of_this_dump_is_left_as_it_was() {
    let c = Cli::new();
    let full = c.dump(&[]);
    let file = c.path("dump");
    let cut = full.len() / 2;
    let check = |contents: &[u8], extra: &[&str], needle: &str| {
        std::fs::write(&file, contents).unwrap();
        refused(&c.resume(&file, extra), needle);
        assert!(std::fs::read(&file).unwrap() == contents, "{needle}");
    };
    check(&full[..cut], &["-z"], "written without --compress");
    check(
        &full[..cut],
        &["--no-check"],
        "it has a manifest and this run has none",
    );
    let no_check = c.dump(&["--no-check"]);
    check(&no_check[..no_check.len() / 2], &[], "it has no manifest");
    let z = c.dump(&["-z"]);
    check(&z[..z.len() / 2], &[], "written with --compress");
    let v3 = c.dump(&["--format", "3"]);
    check(&v3[..v3.len() / 2], &[], "it is a format 3 stream");
    check(b"hello, world\n", &[], "not the start of this dump");
    // Another change set: one changed range less.
    let mut reader = StreamReader::open(&full[..]).unwrap();
    reader.next_record().unwrap();
    let mut other = full[..reader.position() as usize].to_vec();
    let json = String::from_utf8(other[53 + 28..].to_vec()).unwrap();
    let changes = json.split("\"changes\":\"").nth(1).unwrap()[..64].to_string();
    let json = json.replace(&changes, &"0".repeat(64));
    other.truncate(53);
    other.extend_from_slice(&lvmsync::stream::v4::record_header(
        b'I',
        0,
        0,
        0,
        json.as_bytes(),
    ));
    other.extend_from_slice(json.as_bytes());
    check(&other, &[], "its change set (digest 0000");
    // A snapback.
    let dest = c.path("dest");
    common::copy(&c.before, &dest);
    let sb = c.path("sb");
    std::fs::write(c.path("whole"), &full).unwrap();
    let out = lvmsync()
        .args(["--apply", p(&c.path("whole")), p(&dest), "-b", p(&sb)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let snapback = std::fs::read(&sb).unwrap();
    check(&snapback, &[], "it is a snapback, not a dump");
}

#[test]
fn only_a_regular_file_is_resumed() {
    let c = Cli::new();
    // A block device: refused, not one byte written.
    let backing = c.path("backing");
    std::fs::write(&backing, vec![0x33u8; 1 << 20]).unwrap();
    let dev = common::LoopDevice::attach(&backing);
    refused(&c.resume(Path::new(&dev.0), &[]), "not a regular file");
    drop(dev);
    assert!(std::fs::read(&backing).unwrap().iter().all(|&b| b == 0x33));
    // A FIFO (never opened, so never waited on) and a directory.
    let fifo = c.path("fifo");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
    refused(&c.resume(&fifo, &[]), "not a regular file");
    refused(&c.resume(c.dir.path(), &[]), "not a regular file");
    refused(&c.resume(&c.path("missing"), &[]), "cannot stat");
    // Usage errors: format 3, a DEST, --full, and no --stdout.
    for extra in [&["--format", "3"][..], &["/dev/null"], &["--full"]] {
        let out = c.resume(&c.path("x"), extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
    }
    let out = lvmsync()
        .args(["--resume", "x"])
        .args(c.source())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
