//! A fio replay log for bench/run.sh of every read a format 4 send with a manifest makes:
//! the snapshot's contents of every piece, chunk by chunk from the exception store (as the
//! manifest reads them), then the pieces of the origin.
//!
//!   prior_iolog STORE ORIGIN_BYTES ORIGIN LOG

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use lvmsync::send::READ_PIECE;
use lvmsync::source::cow::ExceptionStore;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, origin_bytes, origin, log] = &args[..] else {
        return Err("usage: prior_iolog STORE ORIGIN_BYTES ORIGIN LOG".into());
    };
    let s = ExceptionStore::open(Path::new(store))?;
    let cb = s.chunk_bytes();
    let mut map = s.exceptions()?;
    map.sort_unstable();
    let changes = s.changes(origin_bytes.parse()?)?;
    let mut out = BufWriter::new(File::create(log)?);
    writeln!(out, "fio version 2 iolog")?;
    for f in [store, origin] {
        writeln!(out, "{f} add")?;
    }
    for f in [store, origin] {
        writeln!(out, "{f} open")?;
    }
    for p in changes.extents.pieces(READ_PIECE) {
        let mut at = p.offset;
        while at < p.end() {
            let chunk = at / cb;
            let within = at % cb;
            let len = (cb - within).min(p.end() - at);
            let i = map
                .binary_search_by_key(&chunk, |&(old, _)| old)
                .map_err(|_| format!("{store}: no exception for origin chunk {chunk}"))?;
            writeln!(out, "{store} read {} {len}", map[i].1 * cb + within)?;
            at += len;
        }
    }
    for p in changes.extents.pieces(READ_PIECE) {
        writeln!(out, "{origin} read {} {}", p.offset, p.len)?;
    }
    for f in [store, origin] {
        writeln!(out, "{f} close")?;
    }
    out.flush()?;
    Ok(())
}
