//! `lvmsync changes`: the changed ranges, one `OFFSET LENGTH KIND` line each, on standard output.

use std::io::{self, BufWriter, Write};

use crate::cli::ChangesConfig;
use crate::error::{IoContext, Named, Result, STDOUT_WRITE};
use crate::source;

pub fn run(config: &ChangesConfig) -> Result<()> {
    let resolved = source::resolve(&config.source, config.data_source.as_deref(), None)?;
    let mut out = BufWriter::new(Named::new(io::stdout().lock(), STDOUT_WRITE));
    for e in &resolved.changes.extents {
        writeln!(out, "{} {} {}", e.offset, e.len, e.kind).ctx(|| STDOUT_WRITE.into())?;
    }
    out.flush().ctx(|| STDOUT_WRITE.into())
}
