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
