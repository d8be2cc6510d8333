//! Format 4 (`lvmsync PROTO[4]`): round trips and the reader's refusals.

use lvmsync::stream::{
    EncodedRecords, Format, Record, StreamError, StreamReader, StreamTotals, StreamWriter,
    WriterOptions, MAX_RECORD_DATA,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn opts(source_bytes: u64, compress: Option<i32>) -> WriterOptions {
    WriterOptions {
        format: Format::V4,
        source_bytes,
        chunk_bytes: 65536,
        compress,
        snapback: false,
    }
}

fn write(o: &WriterOptions, recs: &[Rec]) -> (Vec<u8>, StreamTotals) {
    let mut w = StreamWriter::new(Vec::new(), o).unwrap();
    for r in recs {
        match r {
            Rec::Data(off, d) => w.data(*off, d).unwrap(),
            Rec::Zero(off, len) => w.zero(*off, *len).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Rec>, StreamTotals), StreamError> {
    let mut r = StreamReader::open(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(match rec {
            Record::Data { offset, data } => Rec::Data(offset, data.to_vec()),
            Record::Zero { offset, len } => Rec::Zero(offset, len),
            other => panic!("unexpected record {other:?}"),
        });
    }
    Ok((out, r.totals()))
}

fn sample() -> Vec<Rec> {
    vec![
        Rec::Data(0, b"hello, world".to_vec()),
        Rec::Zero(4096, 8192),
        Rec::Data(65536, vec![7; 3000]),
    ]
}

#[test]
fn round_trip_plain_and_compressed() {
    for compress in [None, Some(3)] {
        let o = opts(1 << 20, compress);
        let (bytes, wt) = write(&o, &sample());
        assert!(bytes.starts_with(b"lvmsync PROTO[4]\n"));
        let mut r = StreamReader::open(&bytes[..]).unwrap();
        assert_eq!(r.info().format, Format::V4);
        assert_eq!(r.info().source_bytes, Some(1 << 20));
        assert_eq!(r.info().chunk_bytes, Some(65536));
        assert_eq!(r.info().compressed, compress.is_some());
        drop(r.next_record());
        let (recs, rt) = read_all(&bytes).unwrap();
        assert_eq!(recs, sample());
        assert_eq!(wt, rt);
        assert_eq!(wt.records, 3);
        assert_eq!(wt.data_bytes, 3012);
        assert_eq!(wt.zero_bytes, 8192);
        assert_eq!(wt.wire_bytes, bytes.len() as u64);
    }
}

#[test]
fn compression_shrinks_compressible_data() {
    let recs = vec![Rec::Data(0, vec![0xab; 1 << 20])];
    let (plain, _) = write(&opts(1 << 20, None), &recs);
    let (packed, _) = write(&opts(1 << 20, Some(3)), &recs);
    assert!(
        packed.len() < plain.len() / 10,
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(read_all(&packed).unwrap().0, recs);
}

#[test]
fn encoded_batches_from_another_thread_match_direct_writes() {
    let o = opts(1 << 30, Some(1));
    let (direct, _) = write(&o, &sample());
    let mut w = StreamWriter::new(Vec::new(), &o).unwrap();
    let mut enc = w.encoder();
    let batch = std::thread::spawn(move || {
        let mut b = EncodedRecords::new();
        for r in sample() {
            match r {
                Rec::Data(off, d) => enc.data(off, &d, &mut b).unwrap(),
                Rec::Zero(off, len) => enc.zero(off, len, &mut b).unwrap(),
            }
        }
        b
    })
    .join()
    .unwrap();
    w.write_encoded(&batch).unwrap();
    let (bytes, _) = w.finish().unwrap();
    assert_eq!(bytes, direct);
}

#[test]
fn data_encoded_in_place_matches_copied_data() {
    for format in [Format::V3, Format::V4] {
        let o = WriterOptions {
            format,
            ..opts(1 << 30, None)
        };
        let (copied, _) = write(&o, &sample());
        let mut w = StreamWriter::new(Vec::new(), &o).unwrap();
        let mut enc = w.encoder();
        assert!(enc.stores_data_as_is());
        let mut b = EncodedRecords::new();
        for r in sample() {
            match r {
                Rec::Data(off, d) => {
                    // A failed fill leaves the batch as it was.
                    let before = b.wire_len();
                    let failed = enc.data_in_place(off, d.len(), &mut b, |dst| {
                        dst[0] = 0xee;
                        Err(StreamError::Corrupt("read failed".into()))
                    });
                    assert!(matches!(failed, Err(StreamError::Corrupt(_))));
                    assert_eq!(b.wire_len(), before);
                    enc.data_in_place(off, d.len(), &mut b, |dst| {
                        dst.copy_from_slice(&d);
                        Ok::<_, StreamError>(())
                    })
                    .unwrap();
                }
                Rec::Zero(off, len) => enc.zero(off, len, &mut b).unwrap(),
            }
        }
        w.write_encoded(&b).unwrap();
        let (bytes, _) = w.finish().unwrap();
        assert_eq!(bytes, copied, "format {format:?}");
    }
}

#[test]
fn a_compressing_encoder_does_not_encode_in_place() {
    let w = StreamWriter::new(Vec::new(), &opts(1 << 30, Some(1))).unwrap();
    let mut enc = w.encoder();
    assert!(!enc.stores_data_as_is());
    let mut b = EncodedRecords::new();
    let refused = enc.data_in_place(0, 4096, &mut b, |_| Ok::<_, StreamError>(()));
    assert!(matches!(refused, Err(StreamError::Invalid(_))));
    assert!(b.is_empty());
}

#[test]
fn writer_refuses_out_of_order_and_out_of_bounds() {
    let mut w = StreamWriter::new(Vec::new(), &opts(10000, None)).unwrap();
    w.data(4096, &[1; 100]).unwrap();
    assert!(matches!(
        w.data(4000, &[1; 10]),
        Err(StreamError::Invalid(_))
    ));
    assert!(matches!(w.zero(4195, 10), Err(StreamError::Invalid(_))));
    assert!(matches!(
        w.data(9999, &[1; 2]),
        Err(StreamError::Invalid(_))
    ));
    w.zero(4196, 5804).unwrap();
}

#[test]
fn long_data_is_split() {
    let data: Vec<u8> = (0..MAX_RECORD_DATA + 5).map(|i| (i % 13) as u8).collect();
    let (bytes, t) = write(&opts(1 << 30, None), &[Rec::Data(512, data.clone())]);
    assert_eq!(t.records, 2);
    let (recs, _) = read_all(&bytes).unwrap();
    assert_eq!(
        recs,
        vec![
            Rec::Data(512, data[..MAX_RECORD_DATA].to_vec()),
            Rec::Data(
                512 + MAX_RECORD_DATA as u64,
                data[MAX_RECORD_DATA..].to_vec()
            ),
        ]
    );
}

/// Builds format 4 streams byte by byte from the published layout, so that tests can produce
/// streams a correct writer never would (bad order, wrong counts, unknown types) with valid
/// checksums.
mod raw {
    use lvmsync::stream::v4;
    use lvmsync::stream::StreamTotals;

    pub struct Raw {
        pub bytes: Vec<u8>,
        pub totals: StreamTotals,
        pub digest: blake3::Hasher,
    }

    impl Raw {
        pub fn new(source_bytes: u64, compressed: bool) -> Raw {
            Raw::with_flags(source_bytes, compressed, false)
        }

        /// A snapback (header flag bit 1) with `snapback`.
        pub fn with_flags(source_bytes: u64, compressed: bool, snapback: bool) -> Raw {
            let mut bytes = b"lvmsync PROTO[4]\n".to_vec();
            bytes.extend_from_slice(&v4::encode_header(
                source_bytes,
                65536,
                compressed,
                snapback,
            ));
            Raw {
                bytes,
                totals: StreamTotals::default(),
                digest: blake3::Hasher::new(),
            }
        }

        /// Appends a record with a correct checksum; data and zero records also count towards
        /// the end record's totals and digest.
        pub fn record(&mut self, kind: u8, flags: u8, offset: u64, len: u64, payload: &[u8]) {
            self.bytes
                .extend_from_slice(&v4::record_header(kind, flags, offset, len, payload));
            self.bytes.extend_from_slice(payload);
            match kind {
                v4::TYPE_DATA => {
                    self.totals.records += 1;
                    self.totals.data_bytes += len;
                }
                v4::TYPE_ZERO => {
                    self.totals.records += 1;
                    self.totals.zero_bytes += len;
                }
                _ => {}
            }
        }

        pub fn data(&mut self, offset: u64, data: &[u8]) {
            self.digest.update(&v4::data_digest(offset, data));
            self.record(v4::TYPE_DATA, 0, offset, data.len() as u64, data);
        }

        pub fn zero(&mut self, offset: u64, len: u64) {
            self.digest.update(&v4::zero_digest(offset, len));
            self.record(v4::TYPE_ZERO, 0, offset, len, &[]);
        }

        /// Appends the end record with the given totals and digest.
        pub fn end_with(&mut self, totals: StreamTotals, digest: [u8; 32]) -> Vec<u8> {
            let totals = StreamTotals {
                wire_bytes: self.bytes.len() as u64,
                ..totals
            };
            self.bytes
                .extend_from_slice(&v4::end_record(&totals, &digest));
            self.bytes.clone()
        }

        /// Appends the correct end record.
        pub fn end(&mut self) -> Vec<u8> {
            let digest = *self.digest.finalize().as_bytes();
            self.end_with(self.totals, digest)
        }
    }
}

use lvmsync::stream::v4;
use raw::Raw;

/// Reads to the end and returns the error's message; panics if the stream is accepted.
fn refusal(bytes: &[u8]) -> String {
    match read_all(bytes) {
        Ok((recs, _)) => panic!("stream accepted with records {recs:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn raw_builder_matches_the_writer() {
    let mut raw = Raw::new(1 << 20, false);
    raw.data(0, b"hello, world");
    raw.zero(4096, 8192);
    raw.data(65536, &[7; 3000]);
    assert_eq!(raw.end(), write(&opts(1 << 20, None), &sample()).0);
}

#[test]
fn small_stream_cut_at_every_byte_is_refused() {
    for compress in [None, Some(3)] {
        let (bytes, _) = write(&opts(1 << 20, compress), &sample());
        for cut in 0..bytes.len() {
            let m = refusal(&bytes[..cut]);
            assert!(
                m.contains("byte"),
                "cut at {cut}: message without a position: {m}"
            );
        }
        read_all(&bytes).unwrap();
    }
}

#[test]
fn every_single_bit_flip_is_refused() {
    for compress in [None, Some(3)] {
        let (bytes, _) = write(&opts(1 << 20, compress), &sample());
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            refusal(&damaged);
        }
    }
}

#[test]
fn trailing_garbage_is_refused() {
    let (bytes, _) = write(&opts(1 << 20, None), &sample());
    for extra in [&b"\0"[..], b"x", &bytes[17..]] {
        let mut long = bytes.clone();
        long.extend_from_slice(extra);
        let m = refusal(&long);
        assert!(
            m.contains(&format!(
                "trailing bytes after the end record, at stream byte {}",
                bytes.len()
            )),
            "{m}"
        );
    }
}

#[test]
fn a_second_stream_appended_is_refused() {
    let (a, _) = write(&opts(1 << 20, None), &sample());
    let mut both = a.clone();
    both.extend_from_slice(&a);
    refusal(&both);
}

#[test]
fn missing_end_record_is_refused() {
    let mut raw = Raw::new(1 << 20, false);
    raw.data(0, &[1; 10]);
    let m = refusal(&raw.bytes);
    assert_eq!(
        m,
        format!(
            "corrupt stream: stream ends at byte {} without an end record",
            raw.bytes.len()
        )
    );
    // A writer dropped without finish() leaves no end record either.
    let mut sink = Vec::new();
    {
        let mut w = StreamWriter::new(&mut sink, &opts(1 << 20, None)).unwrap();
        w.data(0, &[1; 10]).unwrap();
    }
    refusal(&sink);
}

#[test]
fn records_out_of_order_are_refused() {
    let mut raw = Raw::new(1 << 20, false);
    raw.data(8192, &[1; 10]);
    let second_at = raw.bytes.len();
    raw.data(0, &[2; 10]);
    let m = refusal(&raw.end());
    assert!(
        m.contains(&format!("data record at stream byte {second_at}")),
        "{m}"
    );
    assert!(m.contains("increasing and disjoint"), "{m}");
}

#[test]
fn overlapping_records_are_refused() {
    let mut raw = Raw::new(1 << 20, false);
    raw.data(0, &[1; 100]);
    raw.zero(99, 10);
    assert!(refusal(&raw.end()).contains("increasing and disjoint"));

    let mut raw = Raw::new(1 << 20, false);
    raw.data(0, &[1; 100]);
    raw.data(0, &[1; 100]);
    assert!(refusal(&raw.end()).contains("increasing and disjoint"));
}

/// A snapback's data and zero records may come in any order, as long as no two overlap (the
/// writer leaves that to its caller); an ordinary stream's may not.
#[test]
fn snapback_records_may_come_in_any_order() {
    let snapback_opts = WriterOptions {
        snapback: true,
        ..opts(1 << 20, None)
    };
    let recs = vec![
        Rec::Data(65536, vec![3; 100]),
        Rec::Zero(4096, 8192),
        Rec::Data(0, vec![1; 4096]),
        Rec::Data(12288, vec![2; 5]),
        Rec::Zero(65636, 1000),
    ];
    let (bytes, _) = write(&snapback_opts, &recs);
    assert_eq!(read_all(&bytes).unwrap().0, recs);

    let mut raw = Raw::new(1 << 20, false);
    raw.data(65536, &[3; 100]);
    let second_at = raw.bytes.len();
    raw.data(0, &[1; 10]);
    let m = refusal(&raw.end());
    assert!(
        m.contains(&format!("data record at stream byte {second_at}")) && m.contains("increasing"),
        "{m}"
    );
}

/// A snapback record that overlaps an earlier one, before or after it, aligned or not, is
/// refused at its stream byte, naming the first byte both cover; and such a complete record is
/// damage even at the end of a snapback cut short, never the mark of an interrupted apply.
#[test]
fn overlapping_snapback_records_are_refused() {
    // Earlier records (offset, len), the overlapping one, the first byte both cover.
    type Case = (&'static [(u64, u64)], (u64, u64), u64);
    let cases: [Case; 5] = [
        (&[(65536, 4096)], (65536 + 4095, 2), 65536 + 4095),
        (&[(65536, 4096)], (60000, 6000), 65536),
        (&[(0, 100), (200, 100)], (99, 2), 99),
        (&[(8192, 1 << 20)], (4096, 8193), 8192),
        (&[(300, 1), (10, 20)], (0, 11), 10),
    ];
    for (earlier, (offset, len), first) in cases {
        let mut raw = Raw::with_flags(4 << 20, false, true);
        for &(o, l) in earlier {
            raw.zero(o, l);
        }
        let at = raw.bytes.len();
        raw.data(offset, &vec![9; len as usize]);
        let stream = raw.end();
        let err = read_all(&stream).unwrap_err();
        assert!(matches!(err, StreamError::Conflict(_)), "{err}");
        let m = err.to_string();
        assert!(
            m.contains(&format!("data record at stream byte {at}"))
                && m.contains(&format!("overlaps an earlier record from byte {first}")),
            "{m}"
        );
        // Cut inside the end record: still refused for the overlap.
        let cut = &stream[..stream.len() - 5];
        let mut r = StreamReader::open(cut).unwrap();
        let err = loop {
            match r.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("cut snapback read to its end"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, StreamError::Conflict(_)), "{err}");
        assert_eq!(
            r.snapback_cut(at as u64, &err).unwrap(),
            lvmsync::stream::SnapbackCut::NotACut
        );
    }
}

#[test]
fn adjacent_records_are_accepted() {
    let mut raw = Raw::new(300, false);
    raw.data(0, &[1; 100]);
    raw.zero(100, 100);
    raw.data(200, &[2; 100]);
    let (recs, _) = read_all(&raw.end()).unwrap();
    assert_eq!(recs.len(), 3);
}

#[test]
fn records_past_the_source_size_are_refused() {
    let mut raw = Raw::new(1000, false);
    raw.data(990, &[1; 11]);
    assert!(refusal(&raw.end()).contains("past the source size 1000"));

    let mut raw = Raw::new(1000, false);
    raw.zero(1000, 1);
    assert!(refusal(&raw.end()).contains("past the source size 1000"));
}

#[test]
fn offset_overflow_is_refused() {
    let mut raw = Raw::new(u64::MAX, false);
    raw.zero(u64::MAX - 5, 10);
    assert!(refusal(&raw.end()).contains("overflows"));
}

#[test]
fn empty_records_are_refused() {
    let mut raw = Raw::new(1000, false);
    raw.zero(10, 0);
    assert!(refusal(&raw.end()).contains("empty record"));
}

#[test]
fn end_record_counts_must_match() {
    let base = |raw: &mut Raw| {
        raw.data(0, &[1; 10]);
        raw.zero(10, 20);
    };
    let tweaks: [fn(&mut StreamTotals); 3] = [
        |t| t.records += 1,
        |t| t.data_bytes -= 1,
        |t| t.zero_bytes += 1,
    ];
    for tweak in tweaks {
        let mut raw = Raw::new(1000, false);
        base(&mut raw);
        let mut t = raw.totals;
        tweak(&mut t);
        let digest = *raw.digest.finalize().as_bytes();
        let m = refusal(&raw.end_with(t, digest));
        assert!(m.contains("end record at stream byte"), "{m}");
    }
}

#[test]
fn end_record_stream_length_must_match() {
    let mut raw = Raw::new(1000, false);
    raw.data(0, &[1; 10]);
    let digest = *raw.digest.finalize().as_bytes();
    let mut totals = raw.totals;
    totals.wire_bytes = 1;
    let at = raw.bytes.len() as u64;
    // end_with sets wire_bytes itself; build this one by hand.
    raw.bytes
        .extend_from_slice(&v4::end_record(&totals, &digest));
    let m = refusal(&raw.bytes);
    assert!(
        m.contains(&format!(
            "end record at stream byte {at} counts 1 stream bytes"
        )),
        "{m}"
    );
}

#[test]
fn end_record_digest_must_match() {
    // Same records, same counts, different data: only the digest can tell.
    let mut raw = Raw::new(1000, false);
    raw.data(0, &[1; 10]);
    let mut other = Raw::new(1000, false);
    other.data(0, &[2; 10]);
    let wrong = *other.digest.finalize().as_bytes();
    let m = refusal(&raw.end_with(raw.totals, wrong));
    assert!(m.contains("digest"), "{m}");
}

#[test]
fn digest_fixes_record_boundaries() {
    // One 20-byte record and two 10-byte records cover the same bytes but differ in digest.
    let mut one = Raw::new(1000, false);
    one.data(0, &[5; 20]);
    let mut two = Raw::new(1000, false);
    two.data(0, &[5; 10]);
    two.data(10, &[5; 10]);
    assert_ne!(
        one.digest.finalize().as_bytes(),
        two.digest.finalize().as_bytes()
    );
}

#[test]
fn data_digest_is_blake3_of_type_offset_len_and_data() {
    // Small records are hashed from a contiguous copy, large ones streamed: both must give
    // BLAKE3('D' || offset || len || data), whatever the size against BLAKE3's 1 KiB chunks.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 + i / 1000) as u8).collect();
    for len in [0, 1, 1007, 1008, 4096, 4097, 65536, 65537, 200_000] {
        let offset = 0x0102_0304_0506_0708 + len as u64;
        let mut input = vec![b'D'];
        input.extend_from_slice(&offset.to_be_bytes());
        input.extend_from_slice(&(len as u64).to_be_bytes());
        input.extend_from_slice(&data[..len]);
        assert_eq!(
            lvmsync::stream::v4::data_digest(offset, &data[..len]),
            *blake3::hash(&input).as_bytes(),
            "{len} bytes"
        );
    }
}

#[test]
fn unknown_record_type_is_refused() {
    let mut raw = Raw::new(1000, false);
    raw.record(b'X', 0, 0, 10, &[0; 10]);
    let m = refusal(&raw.end());
    assert!(
        m.contains("unknown type 0x58") && m.contains("stream byte 53"),
        "{m}"
    );
}

#[test]
fn unknown_record_flags_are_refused() {
    let mut raw = Raw::new(1000, true);
    raw.record(v4::TYPE_DATA, 0x80, 0, 3, &[0; 3]);
    assert!(refusal(&raw.end()).contains("unknown flags"));

    let mut raw = Raw::new(1000, true);
    raw.record(v4::TYPE_ZERO, v4::RECORD_FLAG_ZSTD, 0, 3, &[]);
    refusal(&raw.end());
}

#[test]
fn reserved_bits_must_be_zero() {
    let mut raw = Raw::new(1000, false);
    raw.data(0, &[1; 10]);
    let mut bytes = raw.end();
    // Set a reserved byte of the data record and fix its checksum.
    let rec = 17 + v4::HEADER_LEN;
    bytes[rec + 3] = 1;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[rec..rec + 24]),
        &bytes[rec + 28..rec + 38],
    );
    bytes[rec + 24..rec + 28].copy_from_slice(&crc.to_be_bytes());
    assert!(refusal(&bytes).contains("reserved"));
}

#[test]
fn raw_payload_length_must_equal_record_length() {
    let mut raw = Raw::new(1000, false);
    raw.record(v4::TYPE_DATA, 0, 0, 10, &[0; 9]);
    assert!(refusal(&raw.end()).contains("carries 9 bytes for a length of 10"));
}

#[test]
fn compressed_record_needs_the_header_flag() {
    let frame = zstd::bulk::compress(&[0u8; 100], 3).unwrap();
    let mut raw = Raw::new(1000, false);
    raw.record(v4::TYPE_DATA, v4::RECORD_FLAG_ZSTD, 0, 100, &frame);
    assert!(refusal(&raw.end()).contains("does not allow compression"));
}

#[test]
fn decompressed_size_must_match_the_record_length() {
    let frame = zstd::bulk::compress(&[0u8; 100], 3).unwrap();
    for declared in [99u64, 101, 1000] {
        let mut raw = Raw::new(10000, true);
        raw.record(v4::TYPE_DATA, v4::RECORD_FLAG_ZSTD, 0, declared, &frame);
        let m = refusal(&raw.end());
        assert!(
            m.contains("data record at stream byte 53"),
            "{declared}: {m}"
        );
    }
    // Not a zstd frame at all.
    let mut raw = Raw::new(10000, true);
    raw.record(v4::TYPE_DATA, v4::RECORD_FLAG_ZSTD, 0, 100, b"not zstd");
    assert!(refusal(&raw.end()).contains("does not decompress"));
}

#[test]
fn compressed_record_from_another_encoder_is_accepted() {
    // Any single zstd frame of the right size is valid, whatever produced it.
    let data: Vec<u8> = (0..5000u32).map(|i| (i / 100) as u8).collect();
    let frame = zstd::bulk::compress(&data, 19).unwrap();
    let mut raw = Raw::new(10000, true);
    raw.digest.update(&v4::data_digest(100, &data));
    raw.record(
        v4::TYPE_DATA,
        v4::RECORD_FLAG_ZSTD,
        100,
        data.len() as u64,
        &frame,
    );
    let (recs, t) = read_all(&raw.end()).unwrap();
    assert_eq!(recs, vec![Rec::Data(100, data)]);
    assert_eq!(t.data_bytes, 5000);
}

fn header_with(version: u32, flags: u32) -> Vec<u8> {
    let mut h = v4::encode_header(1000, 4096, false, false).to_vec();
    h[8..12].copy_from_slice(&version.to_be_bytes());
    h[12..16].copy_from_slice(&flags.to_be_bytes());
    let crc = crc32c::crc32c(&h[..32]);
    h[32..36].copy_from_slice(&crc.to_be_bytes());
    let mut bytes = b"lvmsync PROTO[4]\n".to_vec();
    bytes.extend_from_slice(&h);
    bytes
}

#[test]
fn header_checks() {
    // Sanity: the hand-made header is accepted with the real version and flags.
    let mut ok = header_with(v4::VERSION, 0);
    ok.extend_from_slice(&v4::end_record(
        &StreamTotals {
            wire_bytes: ok.len() as u64,
            ..Default::default()
        },
        blake3::Hasher::new().finalize().as_bytes(),
    ));
    assert_eq!(read_all(&ok).unwrap().0, vec![]);

    let open_err = |b: &[u8]| StreamReader::open(b).map(|_| ()).unwrap_err().to_string();
    assert!(open_err(&header_with(2, 0)).contains("version 2"));
    assert!(open_err(&header_with(0, 0)).contains("version 0"));
    assert!(open_err(&header_with(v4::VERSION, 4)).contains("unknown flags"));
    let mut bad_crc = header_with(v4::VERSION, 0);
    bad_crc[17 + 20] ^= 1;
    assert!(open_err(&bad_crc).contains("bad checksum"));
    let mut bad_magic = header_with(v4::VERSION, 0);
    bad_magic[17] = b'X';
    assert!(open_err(&bad_magic).contains("magic"));
    assert!(open_err(&ok[..40]).contains("inside the format 4 header at byte 40"));
}

#[test]
fn bad_first_lines_are_refused() {
    let (bytes, _) = write(&opts(1 << 20, None), &sample());
    for line in [
        &b"lvmsync PROTO[4]\r\n"[..],
        b"lvmsync PROTO[5]\n",
        b"LVMSYNC PROTO[4]\n",
        b"",
    ] {
        let mut b = line.to_vec();
        b.extend_from_slice(&bytes[17..]);
        if line.is_empty() {
            b.clear();
        }
        StreamReader::open(&b[..]).map(|_| ()).unwrap_err();
    }
}

#[test]
fn empty_stream_round_trips() {
    let (bytes, t) = write(&opts(0, Some(3)), &[]);
    assert_eq!(
        bytes.len(),
        17 + v4::HEADER_LEN + v4::RECORD_HEADER_LEN + v4::END_PAYLOAD_LEN
    );
    let (recs, rt) = read_all(&bytes).unwrap();
    assert!(recs.is_empty());
    assert_eq!(t, rt);
}

#[test]
fn error_at_a_bad_checksum_names_the_record() {
    let (mut bytes, _) = write(&opts(1 << 20, None), &sample());
    // Damage the payload of the first record.
    bytes[17 + v4::HEADER_LEN + v4::RECORD_HEADER_LEN] ^= 0x40;
    assert_eq!(
        refusal(&bytes),
        "corrupt stream: record at stream byte 53 has a bad checksum"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Random sorted, disjoint record sets: (gap before, record) pairs laid out in order.
    fn records() -> impl Strategy<Value = Vec<Rec>> {
        let one = prop_oneof![
            (1usize..6000, any::<u8>(), any::<bool>()).prop_map(|(len, seed, repetitive)| {
                let data = (0..len)
                    .map(|i| {
                        if repetitive {
                            seed.wrapping_add((i / 64) as u8)
                        } else {
                            (i as u64 ^ seed as u64)
                                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                                .to_be_bytes()[0]
                        }
                    })
                    .collect::<Vec<u8>>();
                Rec::Data(0, data)
            }),
            (1u64..1 << 40).prop_map(|len| Rec::Zero(0, len)),
        ];
        prop::collection::vec((0u64..100_000, one), 0..12).prop_map(|items| {
            let mut at = 0u64;
            items
                .into_iter()
                .map(|(gap, r)| {
                    at += gap;
                    let r = match r {
                        Rec::Data(_, d) => Rec::Data(at, d),
                        Rec::Zero(_, len) => Rec::Zero(at, len),
                    };
                    at += match &r {
                        Rec::Data(_, d) => d.len() as u64,
                        Rec::Zero(_, len) => *len,
                    };
                    r
                })
                .collect()
        })
    }

    fn end_of(recs: &[Rec]) -> u64 {
        match recs.last() {
            Some(Rec::Data(o, d)) => o + d.len() as u64,
            Some(Rec::Zero(o, l)) => o + l,
            None => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(recs in records(), extra in 0u64..10_000, level in prop::option::of(-3i32..6)) {
            let o = opts(end_of(&recs) + extra, level);
            let (bytes, wt) = write(&o, &recs);
            let (back, rt) = read_all(&bytes).unwrap();
            prop_assert_eq!(&back, &recs);
            prop_assert_eq!(wt, rt);
            prop_assert_eq!(wt.wire_bytes, bytes.len() as u64);
            prop_assert_eq!(wt.records, recs.len() as u64);
        }

        #[test]
        fn batches_equal_direct_writes(recs in records(), split in 0usize..12, level in prop::option::of(1i32..4)) {
            let o = opts(end_of(&recs), level);
            let (direct, _) = write(&o, &recs);
            let mut w = StreamWriter::new(Vec::new(), &o).unwrap();
            let mut enc = w.encoder();
            let mut batch = EncodedRecords::new();
            let split = split.min(recs.len());
            for part in [&recs[..split], &recs[split..]] {
                batch.clear();
                for r in part {
                    match r {
                        Rec::Data(off, d) => enc.data(*off, d, &mut batch).unwrap(),
                        Rec::Zero(off, len) => enc.zero(*off, *len, &mut batch).unwrap(),
                    }
                }
                w.write_encoded(&batch).unwrap();
            }
            prop_assert_eq!(w.finish().unwrap().0, direct);
        }

        #[test]
        fn random_cut_is_refused(recs in records(), pos in any::<prop::sample::Index>(), level in prop::option::of(1i32..4)) {
            let o = opts(end_of(&recs), level);
            let (bytes, _) = write(&o, &recs);
            let cut = pos.index(bytes.len());
            prop_assert!(read_all(&bytes[..cut]).is_err());
        }

        #[test]
        fn random_damage_is_refused(recs in records(), pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let o = opts(end_of(&recs), Some(1));
            let (mut bytes, _) = write(&o, &recs);
            let i = pos.index(bytes.len());
            bytes[i] ^= xor;
            prop_assert!(read_all(&bytes).is_err());
        }
    }
}

/// The example in docs/stream-format.md, byte for byte.
#[test]
fn documented_example_is_byte_exact() {
    let hex = "6c766d73796e632050524f544f5b345d0a\
               4c564d53594e43340000000100000000000000000000200000000000000010003 3e2dbd1\
               440000000000000500000000000000000000000000000005 1948b4f0 68656c6c6f\
               5a0000000000000000000000000010000000000000001000 1f0479ae\
               450000000000004000000000000000000000000000000000 cf35873d\
               0000000000000002000000000000000500000000000010000000000000000072\
               cada2df45b627a9cc87c364b461ef02d3d07513c71af6b4235eb25d4a21131a5";
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    let expected: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let o = WriterOptions {
        format: Format::V4,
        source_bytes: 8192,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    };
    let mut w = StreamWriter::new(Vec::new(), &o).unwrap();
    w.data(0, b"hello").unwrap();
    w.zero(4096, 4096).unwrap();
    let (bytes, _) = w.finish().unwrap();
    assert_eq!(bytes, expected);
}
