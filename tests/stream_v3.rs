//! Format 3 (`lvmsync PROTO[3]`): byte-exact encoding and the reader's checks.

use lvmsync::stream::{
    Format, Record, StreamError, StreamReader, StreamWriter, WriterOptions, MAX_RECORD_ACCEPTED,
    MAX_RECORD_DATA,
};

fn v3_opts() -> WriterOptions {
    WriterOptions {
        format: Format::V3,
        source_bytes: 1 << 40,
        chunk_bytes: 4096,
        compress: None,
        snapback: false,
    }
}

fn write_v3(build: impl FnOnce(&mut StreamWriter<Vec<u8>>)) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), &v3_opts()).unwrap();
    build(&mut w);
    w.finish().unwrap().0
}

/// Reads every record of a stream, returning (offset, data) pairs or the first error.
fn read_all(bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StreamError> {
    let mut r = StreamReader::open(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        match rec {
            Record::Data { offset, data } => out.push((offset, data.to_vec())),
            other => panic!("format 3 has only data records, got {other:?}"),
        }
    }
    Ok(out)
}

fn corrupt_message(bytes: &[u8]) -> String {
    match read_all(bytes) {
        Err(StreamError::Corrupt(m)) => m,
        other => panic!("expected a corrupt-stream error, got {other:?}"),
    }
}

/// The worked example: chunk 5 of a 4 KiB-chunk snapshot.
fn worked_example_payload() -> Vec<u8> {
    (0..4096u32).map(|i| (i * 7 + 3) as u8).collect()
}

fn worked_example_bytes() -> Vec<u8> {
    let mut v = b"lvmsync PROTO[3]\n".to_vec();
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x50, 0x00]);
    v.extend_from_slice(&[0, 0, 0x10, 0x00]);
    v.extend_from_slice(&worked_example_payload());
    v
}

#[test]
fn writer_matches_worked_example_byte_for_byte() {
    let payload = worked_example_payload();
    let bytes = write_v3(|w| w.data(5 * 4096, &payload).unwrap());
    assert_eq!(bytes, worked_example_bytes());
}

#[test]
fn handshake_is_exactly_the_ruby_line() {
    let bytes = write_v3(|_| {});
    assert_eq!(
        bytes,
        [
            0x6c, 0x76, 0x6d, 0x73, 0x79, 0x6e, 0x63, 0x20, 0x50, 0x52, 0x4f, 0x54, 0x4f, 0x5b,
            0x33, 0x5d, 0x0a
        ]
    );
    assert_eq!(read_all(&bytes).unwrap(), vec![]);
}

#[test]
fn reader_decodes_worked_example() {
    let bytes = worked_example_bytes();
    let mut r = StreamReader::open(&bytes[..]).unwrap();
    assert_eq!(r.info().format, Format::V3);
    assert_eq!(r.info().source_bytes, None);
    assert!(!r.info().compressed);
    match r.next_record().unwrap() {
        Some(Record::Data { offset, data }) => {
            assert_eq!(offset, 20480);
            assert_eq!(data, &worked_example_payload()[..]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(r.next_record().unwrap().is_none());
    assert!(r.next_record().unwrap().is_none());
    let t = r.totals();
    assert_eq!(t.records, 1);
    assert_eq!(t.data_bytes, 4096);
    assert_eq!(t.zero_bytes, 0);
    assert_eq!(t.wire_bytes, bytes.len() as u64);
}

#[test]
fn crlf_handshake_is_accepted() {
    let mut bytes = b"lvmsync PROTO[3]\r\n".to_vec();
    bytes.extend_from_slice(&worked_example_bytes()[17..]);
    let recs = read_all(&bytes).unwrap();
    assert_eq!(recs, vec![(20480, worked_example_payload())]);
}

#[test]
fn bad_handshakes_are_refused() {
    for line in [
        &b"lvmsync PROTO[2]\n"[..],
        b"lvmsync PROTO[3] \n",
        b"lvmsync proto[3]\n",
        b"lvmsync PROTO[3]",
        b"lvmsync PROTO[3]\r",
        b"\nlvmsync PROTO[3]\n",
        b"garbage",
        b"lvmsync PROTO[3]\n\n"[..1].as_ref(),
    ] {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(&worked_example_bytes()[17..]);
        let err = read_all(&bytes).map(|_| ()).unwrap_err();
        assert!(
            matches!(err, StreamError::Corrupt(_) | StreamError::Unsupported(_)),
            "{line:?}: {err}"
        );
    }
}

#[test]
fn empty_input_is_refused() {
    let err = StreamReader::open(&b""[..]).map(|_| ()).unwrap_err();
    assert!(matches!(err, StreamError::Corrupt(_)), "{err}");
}

#[test]
fn truncation_inside_a_header_is_refused() {
    let bytes = worked_example_bytes();
    for cut in 18..17 + 12 {
        let m = corrupt_message(&bytes[..cut]);
        assert!(
            m.contains(&format!("stream ends inside a record at byte {cut}")),
            "{m}"
        );
    }
}

#[test]
fn truncation_inside_data_is_refused() {
    let bytes = worked_example_bytes();
    for cut in [17 + 12, 17 + 13, 17 + 12 + 2048, bytes.len() - 1] {
        let m = corrupt_message(&bytes[..cut]);
        assert!(
            m.contains(&format!("stream ends inside a record at byte {cut}")),
            "{m}"
        );
    }
}

#[test]
fn record_longer_than_accepted_is_refused() {
    let mut bytes = b"lvmsync PROTO[3]\n".to_vec();
    bytes.extend_from_slice(&0u64.to_be_bytes());
    bytes.extend_from_slice(&(MAX_RECORD_ACCEPTED as u32 + 1).to_be_bytes());
    let m = corrupt_message(&bytes);
    assert!(m.contains("at stream byte 17"), "{m}");
}

#[test]
fn unsorted_records_are_read_in_stream_order() {
    // Ruby senders emit records in COW-table order; format 3 readers must accept that.
    let mut bytes = b"lvmsync PROTO[3]\n".to_vec();
    for (off, fill) in [(8192u64, 1u8), (0, 2), (8192, 3)] {
        bytes.extend_from_slice(&off.to_be_bytes());
        bytes.extend_from_slice(&4u32.to_be_bytes());
        bytes.extend_from_slice(&[fill; 4]);
    }
    let recs = read_all(&bytes).unwrap();
    assert_eq!(
        recs,
        vec![(8192, vec![1; 4]), (0, vec![2; 4]), (8192, vec![3; 4])]
    );
}

#[test]
fn zero_ranges_become_zero_filled_data_records() {
    let bytes = write_v3(|w| {
        w.data(0, &[9; 10]).unwrap();
        w.zero(4096, 5000).unwrap();
    });
    let mut expected = b"lvmsync PROTO[3]\n".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
    expected.extend_from_slice(&[9; 10]);
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x13, 0x88]);
    expected.extend_from_slice(&[0; 5000]);
    assert_eq!(bytes, expected);
}

#[test]
fn long_ranges_are_split_at_max_record_data() {
    let len = 2 * MAX_RECORD_DATA + 100;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut w = StreamWriter::new(Vec::new(), &v3_opts()).unwrap();
    w.data(1 << 20, &data).unwrap();
    w.zero(1 << 30, MAX_RECORD_DATA as u64 + 1).unwrap();
    let (bytes, totals) = w.finish().unwrap();
    assert_eq!(totals.records, 5);
    assert_eq!(totals.wire_bytes, bytes.len() as u64);
    let recs = read_all(&bytes).unwrap();
    let lens: Vec<(u64, usize)> = recs.iter().map(|(o, d)| (*o, d.len())).collect();
    let m = MAX_RECORD_DATA as u64;
    assert_eq!(
        lens,
        vec![
            (1 << 20, MAX_RECORD_DATA),
            ((1 << 20) + m, MAX_RECORD_DATA),
            ((1 << 20) + 2 * m, 100),
            (1 << 30, MAX_RECORD_DATA),
            ((1 << 30) + m, 1),
        ]
    );
    let joined: Vec<u8> = recs[..3].iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(joined, data);
    assert!(recs[3..].iter().all(|(_, d)| d.iter().all(|&b| b == 0)));
}

#[test]
fn compression_is_refused() {
    let opts = WriterOptions {
        compress: Some(3),
        snapback: false,
        ..v3_opts()
    };
    let err = StreamWriter::new(Vec::new(), &opts)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, StreamError::Unsupported(_)), "{err}");
}

#[test]
fn offset_overflow_is_refused() {
    let mut bytes = b"lvmsync PROTO[3]\n".to_vec();
    bytes.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
    bytes.extend_from_slice(&4u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 4]);
    let m = corrupt_message(&bytes);
    assert!(
        m.contains("at stream byte 17") && m.contains("overflows"),
        "{m}"
    );
}

/// A source that fails after handing out some bytes.
struct FailingAfter(Vec<u8>);

impl std::io::Read for FailingAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer went away",
            ));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
}

#[test]
fn read_errors_keep_their_kind_and_say_where() {
    let mut r = StreamReader::open(FailingAfter(worked_example_bytes()[..40].to_vec())).unwrap();
    match r.next_record() {
        Err(StreamError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
            assert!(e.to_string().contains("at byte 40"), "{e}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any records, in any order, come back as written (zero ranges as zero-filled data).
        #[test]
        fn round_trip(recs in prop::collection::vec(
            (0u64..1 << 50, prop_oneof![
                prop::collection::vec(any::<u8>(), 1..3000).prop_map(Ok),
                (1u64..20_000).prop_map(Err),
            ]),
            0..10,
        )) {
            let bytes = write_v3(|w| {
                for (off, r) in &recs {
                    match r {
                        Ok(d) => w.data(*off, d).unwrap(),
                        Err(len) => w.zero(*off, *len).unwrap(),
                    }
                }
            });
            let expected: Vec<(u64, Vec<u8>)> = recs
                .iter()
                .map(|(off, r)| match r {
                    Ok(d) => (*off, d.clone()),
                    Err(len) => (*off, vec![0; *len as usize]),
                })
                .collect();
            prop_assert_eq!(read_all(&bytes).unwrap(), expected);
            // Cutting anywhere but a record boundary is refused.
            let mut boundaries = vec![17usize];
            for (_, r) in &recs {
                let len = match r { Ok(d) => d.len(), Err(l) => *l as usize };
                boundaries.push(boundaries.last().unwrap() + 12 + len);
            }
            for cut in [18, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                if cut < bytes.len() && !boundaries.contains(&cut) {
                    prop_assert!(read_all(&bytes[..cut]).is_err());
                }
            }
        }
    }
}
