//! `lvmsync --apply FILE|- DEST`: a stream from a file, a FIFO or standard input onto DEST.

use std::io;
use std::path::Path;

use indicatif::HumanBytes;

use crate::apply::{apply_with, ApplyContext, ApplyReport};
use crate::cli::ApplyConfig;
use crate::error::{IoContext, Named, Result};
use crate::msg::Verbosity;
use crate::session::{Hello, Message};

pub fn run(config: &ApplyConfig) -> Result<()> {
    let ApplyConfig {
        input,
        dest,
        session,
        options,
        verbosity,
    } = config;
    let report = if input == "-" {
        let stdin = Named::new(io::stdin().lock(), "standard input: cannot read the stream");
        if *session {
            // Standard output is the back channel to the sender.
            let mut back = io::stdout().lock();
            Message::Hello(Hello::ours())
                .write_to(&mut back)
                .ctx(|| "the session's back channel: cannot write".into())?;
            let ctx = ApplyContext {
                session: Some(&mut back),
                reopen: None,
            };
            let res = apply_with(stdin, dest, options, ctx);
            if let Err(e) = &res {
                let _ = Message::Failed(e.to_string()).write_to(&mut io::stdout().lock());
            }
            res?
        } else {
            apply_with(stdin, dest, options, ApplyContext::default())?
        }
    } else {
        // A FIFO is fine here (a stream may come through a named pipe): this open waits for its
        // writer.
        let f = std::fs::File::open(input)
            .ctx(|| format!("{input}: cannot open the stream for reading"))?;
        let regular = f.metadata().is_ok_and(|m| m.is_file());
        let f = Named::new(f, format!("{input}: cannot read the stream"));
        // A stream file can be read again, to tell a range an interrupted apply already wrote
        // from a destination that is not the snapshot's copy.
        let reopen = || -> io::Result<Box<dyn io::Read>> {
            Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(input)?,
            )))
        };
        let ctx = ApplyContext {
            session: None,
            reopen: regular.then_some(&reopen as _),
        };
        apply_with(io::BufReader::with_capacity(1 << 20, f), dest, options, ctx)?
    };
    if *verbosity >= Verbosity::Normal {
        for note in report.notes(options, dest) {
            crate::say!("lvmsync: {note}");
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
