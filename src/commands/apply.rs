//! `lvmsync --apply FILE|- DEST`: a stream from a file, a FIFO or standard input onto DEST.

use std::io;
use std::path::Path;

use indicatif::HumanBytes;

use crate::apply::{apply_stream, ApplyReport};
use crate::cli::ApplyConfig;
use crate::error::{IoContext, Named, Result};
use crate::msg::Verbosity;

pub fn run(config: &ApplyConfig) -> Result<()> {
    let ApplyConfig {
        input,
        dest,
        options,
        verbosity,
    } = config;
    let report = if input == "-" {
        let stdin = Named::new(io::stdin().lock(), "standard input: cannot read the stream");
        apply_stream(stdin, dest, options)?
    } else {
        // A FIFO is fine here (a stream may come through a named pipe): this open waits for its
        // writer.
        let f = std::fs::File::open(input)
            .ctx(|| format!("{input}: cannot open the stream for reading"))?;
        let f = Named::new(f, format!("{input}: cannot read the stream"));
        apply_stream(io::BufReader::with_capacity(1 << 20, f), dest, options)?
    };
    if let Some(end) = report.interrupted_snapback {
        if *verbosity >= Verbosity::Normal {
            crate::say!(
                "lvmsync: snapback ends at byte {end} without an end record (the apply that wrote it was interrupted); every recorded range restored"
            );
        }
    }
    if *verbosity >= Verbosity::Verbose {
        print_report(&report, dest);
    }
    Ok(())
}

fn print_report(r: &ApplyReport, dest: &Path) {
    crate::say!(
        "lvmsync: applied {} records, {} of data and {} of zeros to {}{}",
        r.totals.records,
        HumanBytes(r.totals.data_bytes),
        HumanBytes(r.totals.zero_bytes),
        dest.display(),
        match &r.snapback {
            Some(t) => format!("; snapback holds {}", HumanBytes(t.data_bytes)),
            None => String::new(),
        }
    );
}
