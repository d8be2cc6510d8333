//! Format 4 identity, manifest and resolution records: the reader's rules for them, what the
//! stream digest covers, and the examples of docs/stream-format.md, byte for byte (read from
//! the document itself).

use lvmsync::extent::Extent;
use lvmsync::session::{Message, Plan};
use lvmsync::stream::manifest::{
    self, block_digest, ManifestBuilder, StreamIdentity, DIGEST_BLOCK,
};
use lvmsync::stream::v4::{self, record_header, TYPE_IDENTITY, TYPE_MANIFEST, TYPE_RESOLUTION};
use lvmsync::stream::{Format, Record, StreamReader, StreamTotals, StreamWriter, WriterOptions};

const DOC: &str = include_str!("../docs/stream-format.md");

/// The bytes of every code block in the section of the document under `heading`. A hex dump
/// line is an optional offset (a word at the start of the line), then bytes in hex separated
/// by single spaces, then (after two spaces or more) a comment.
fn documented_dumps(heading: &str) -> Vec<Vec<u8>> {
    let start = DOC
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let level = heading.split(' ').next().unwrap();
    let section = &DOC[start + heading.len() + 2..];
    let end = section
        .lines()
        .scan(0, |at, l| {
            let here = *at;
            *at += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.starts_with('#') && l.split(' ').next().unwrap().len() <= level.len())
        .map_or(section.len(), |(at, _)| at);
    let mut dumps = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in section[..end].lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(bytes) => dumps.push(bytes),
                None => current = Some(Vec::new()),
            }
            continue;
        }
        let Some(bytes) = current.as_mut() else {
            continue;
        };
        let rest = if line.starts_with(' ') {
            line
        } else {
            line.split_once(' ').map_or("", |(_, r)| r)
        };
        let hex = rest.trim_start().split("  ").next().unwrap();
        for word in hex.split(' ').filter(|w| !w.is_empty()) {
            assert_eq!(word.len(), 2, "not a hex byte: {word:?} in {line:?}");
            bytes.push(u8::from_str_radix(word, 16).expect("hex byte"));
        }
    }
    assert!(current.is_none(), "unclosed code block under {heading}");
    dumps
}

fn opts() -> WriterOptions {
    WriterOptions {
        format: Format::V4,
        source_bytes: 8192,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    }
}

/// The first documented example: `hello` at 0, a zero range at 4096.
fn example_plain() -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), &opts()).unwrap();
    w.data(0, b"hello").unwrap();
    w.zero(4096, 4096).unwrap();
    w.finish().unwrap().0
}

/// The second: the same with an identity and a manifest.
fn example_with_manifest() -> Vec<u8> {
    let extents = [Extent::data(0, 5), Extent::zero(4096, 4096)];
    let mut changes = manifest::ChangesDigest::new();
    extents.iter().for_each(|e| changes.push(e));
    let id = StreamIdentity {
        kind: "cow-image".into(),
        lvmsync: "4.0.0".into(),
        changes: Some(changes.hex()),
        ..Default::default()
    };
    let mut b = ManifestBuilder::new(DIGEST_BLOCK);
    assert!(b
        .push(extents[0], &[block_digest(b"world")])
        .unwrap()
        .is_none());
    assert!(b
        .push(extents[1], &[block_digest(&[0xff; 4096])])
        .unwrap()
        .is_none());
    let mut w = StreamWriter::new(Vec::new(), &opts()).unwrap();
    w.identity(&id).unwrap();
    w.manifest(&b.finish()).unwrap();
    w.data(0, b"hello").unwrap();
    w.zero(4096, 4096).unwrap();
    w.finish().unwrap().0
}

/// Every record of a stream, or the first error's message.
fn read_all(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut r = StreamReader::open(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().map_err(|e| e.to_string())? {
        out.push(
            match rec {
                Record::Identity(_) => "I",
                Record::Manifest(_) => "M",
                Record::Resolution(_) => "R",
                Record::Data { .. } => "D",
                Record::Zero { .. } => "Z",
            }
            .to_string(),
        );
    }
    Ok(out)
}

#[test]
fn documented_stream_examples_are_byte_exact() {
    let dumps = documented_dumps("### Examples");
    assert_eq!(dumps.len(), 2);
    assert_eq!(dumps[0], example_plain());
    assert_eq!(dumps[1], example_with_manifest());
    assert_eq!(dumps[1].len(), 451);
    assert_eq!(read_all(&dumps[1]).unwrap(), ["I", "M", "D", "Z"]);
}

#[test]
fn documented_session_frames_are_byte_exact() {
    let dumps = documented_dumps("### Example frames");
    assert_eq!(dumps.len(), 1);
    let mut want = Vec::new();
    Message::Suspects(vec![4096]).write_to(&mut want).unwrap();
    Message::Plan(Plan::Send(vec![false, true]))
        .write_to(&mut want)
        .unwrap();
    assert_eq!(dumps[0], want);
}

/// A record as it goes on the wire, for streams that break one rule at a time.
enum Raw {
    Meta(u8, Vec<u8>),
    Data(u64, Vec<u8>),
    Zero(u64, u64),
    /// A record header with other flags, offset or length, and its payload.
    Odd(u8, u8, u64, u64, Vec<u8>),
}

/// A stream of `records` with a correct end record (counts, position and digest), so that
/// only the rule a test breaks can refuse it.
fn craft(records: &[Raw]) -> Vec<u8> {
    let mut out = v4::HANDSHAKE.to_vec();
    out.extend_from_slice(&v4::encode_header(8192, 4096, false, false));
    let mut digest = blake3::Hasher::new();
    let mut totals = StreamTotals::default();
    let meta_digest = |kind: u8, payload: &[u8]| {
        let mut h = blake3::Hasher::new();
        h.update(&[kind]);
        h.update(payload);
        *h.finalize().as_bytes()
    };
    for r in records {
        match r {
            Raw::Meta(kind, payload) => {
                out.extend_from_slice(&record_header(*kind, 0, 0, 0, payload));
                out.extend_from_slice(payload);
                digest.update(&meta_digest(*kind, payload));
            }
            Raw::Odd(kind, flags, offset, len, payload) => {
                out.extend_from_slice(&record_header(*kind, *flags, *offset, *len, payload));
                out.extend_from_slice(payload);
                digest.update(&meta_digest(*kind, payload));
            }
            Raw::Data(offset, data) => {
                out.extend_from_slice(&record_header(
                    v4::TYPE_DATA,
                    0,
                    *offset,
                    data.len() as u64,
                    data,
                ));
                out.extend_from_slice(data);
                digest.update(&v4::data_digest(*offset, data));
                totals.records += 1;
                totals.data_bytes += data.len() as u64;
            }
            Raw::Zero(offset, len) => {
                out.extend_from_slice(&record_header(v4::TYPE_ZERO, 0, *offset, *len, &[]));
                digest.update(&v4::zero_digest(*offset, *len));
                totals.records += 1;
                totals.zero_bytes += len;
            }
        }
    }
    totals.wire_bytes = out.len() as u64;
    out.extend_from_slice(&v4::end_record(&totals, digest.finalize().as_bytes()));
    out
}

fn identity() -> Raw {
    Raw::Meta(TYPE_IDENTITY, br#"{"kind":"test"}"#.to_vec())
}

/// A manifest payload with one entry per extent (all prior contents zeros), `last` as given.
fn manifest_payload(extents: &[Extent], block: u64, last: bool) -> Vec<u8> {
    let mut b = ManifestBuilder::new(block);
    for e in extents {
        let d = block_digest(&vec![0; block.min(e.len) as usize]);
        let n = e.len.div_ceil(block) as usize;
        assert!(b.push(*e, &vec![d; n]).unwrap().is_none());
    }
    if last {
        b.finish()
    } else {
        b.take()
    }
}

fn manifest(extents: &[Extent], last: bool) -> Raw {
    Raw::Meta(TYPE_MANIFEST, manifest_payload(extents, DIGEST_BLOCK, last))
}

fn resolution(offset: u64) -> Raw {
    let mut p = Vec::new();
    manifest::push_resolution(&mut p, offset, &[block_digest(b"new")]);
    Raw::Meta(TYPE_RESOLUTION, p)
}

#[test]
fn meta_records_in_their_places_are_read() {
    let d = Extent::data(0, 4);
    let z = Extent::zero(4096, 4096);
    let cases: [(&[Raw], &[&str]); 5] = [
        (&[], &[]),
        (&[identity()], &["I"]),
        (&[manifest(&[], true)], &["M"]),
        (
            &[
                identity(),
                manifest(&[d], false),
                manifest(&[z], true),
                resolution(0),
                resolution(4096),
                Raw::Data(0, vec![1; 4]),
                Raw::Zero(4096, 4096),
            ],
            &["I", "M", "M", "R", "R", "D", "Z"],
        ),
        (
            &[identity(), manifest(&[d, z], true), Raw::Zero(4096, 4096)],
            &["I", "M", "Z"],
        ),
    ];
    for (records, want) in cases {
        assert_eq!(read_all(&craft(records)).unwrap(), want);
    }
}

#[test]
fn meta_records_out_of_place_are_refused() {
    let d = Extent::data(0, 4);
    let z = Extent::zero(4096, 4096);
    let data = || Raw::Data(0, vec![1; 4]);
    let cases: Vec<(Vec<Raw>, &str)> = vec![
        (
            vec![manifest(&[d], true), identity()],
            "identity record that is not the first record",
        ),
        (
            vec![identity(), identity()],
            "identity record that is not the first record",
        ),
        (
            vec![data(), manifest(&[z], true)],
            "after a data or zero record",
        ),
        (vec![data(), identity()], "after a data or zero record"),
        (
            vec![manifest(&[d], true), manifest(&[z], true)],
            "manifest record after the last one",
        ),
        (
            vec![resolution(0)],
            "resolution record without a complete manifest",
        ),
        (
            vec![manifest(&[d], false), resolution(0)],
            "resolution record without a complete manifest",
        ),
        (
            vec![manifest(&[d], false), data()],
            "before the last manifest record",
        ),
        (
            vec![manifest(&[d], false)],
            "before the last manifest record",
        ),
        (
            vec![manifest(&[d], true), data(), resolution(0)],
            "after a data or zero record",
        ),
        (
            vec![
                Raw::Meta(TYPE_MANIFEST, manifest_payload(&[d], 4096, false)),
                Raw::Meta(TYPE_MANIFEST, manifest_payload(&[z], 512, true)),
            ],
            "block size 512, the first one has 4096",
        ),
        (
            vec![Raw::Odd(TYPE_IDENTITY, 0, 0, 1, br#"{}"#.to_vec())],
            "has flags, an offset or a length",
        ),
        (
            vec![Raw::Odd(
                TYPE_MANIFEST,
                1,
                0,
                0,
                manifest_payload(&[d], 4096, true),
            )],
            "has flags, an offset or a length",
        ),
        (
            vec![Raw::Meta(TYPE_IDENTITY, b"[1,2]".to_vec())],
            "identity record is not valid",
        ),
        (
            vec![Raw::Meta(TYPE_IDENTITY, br#"{"kind":5}"#.to_vec())],
            "identity record is not valid",
        ),
        (
            vec![Raw::Meta(
                TYPE_IDENTITY,
                format!(r#"{{"kind":"{}"}}"#, "x".repeat(64 << 10)).into_bytes(),
            )],
            "identity record of",
        ),
        (
            vec![manifest(&[Extent::data(8000, 4096)], true)],
            "ends past the source size",
        ),
        (
            vec![manifest(&[z], false), manifest(&[d], true)],
            "is not after the previous one",
        ),
        (vec![manifest(&[], false)], "manifest record holds no entry"),
        (
            vec![manifest(&[d], true), Raw::Meta(TYPE_RESOLUTION, Vec::new())],
            "resolution record holds no entry",
        ),
    ];
    for (records, want) in cases {
        let err = read_all(&craft(&records)).unwrap_err();
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(err.contains("at stream byte"), "no position: {err}");
    }
}

/// The end record's digest covers the meta records: one changed byte in an identity or a
/// manifest payload (its CRC made right again) is caught at the end.
#[test]
fn the_stream_digest_covers_meta_records() {
    let good = example_with_manifest();
    assert!(read_all(&good).is_ok());
    // The identity payload starts at byte 0x51 ("cow-image" at 0x5a), the manifest payload
    // at 0xe0 (its first digest at 0xf9).
    for (record, payload_at, byte) in [(0x35usize, 0x51usize, 0x5ausize), (0xc4, 0xe0, 0xfa)] {
        let mut bad = good.clone();
        bad[byte] ^= 0x01;
        let len = u32::from_be_bytes(bad[record + 4..record + 8].try_into().unwrap()) as usize;
        let payload = bad[payload_at..payload_at + len].to_vec();
        let header = record_header(bad[record], 0, 0, 0, &payload);
        bad[record..record + v4::RECORD_HEADER_LEN].copy_from_slice(&header);
        let err = read_all(&bad).unwrap_err();
        assert!(
            err.contains("the BLAKE3 digest of the records does not match"),
            "byte {byte:#x}: {err}"
        );
    }
}
