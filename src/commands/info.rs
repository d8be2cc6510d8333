//! `lvmsync info FILE|-`: a stream or snapback described and verified whole, without applying
//! it ([`crate::inspect`]).

use std::io::{self, Write};

use crate::cli::InfoConfig;
use crate::error::{Error, IoContext, Named, Result, STDOUT_WRITE};
use crate::inspect::inspect;

pub fn run(config: &InfoConfig) -> Result<()> {
    let input = &config.input;
    let inspection = if input == "-" {
        let stdin = Named::new(io::stdin().lock(), "standard input: cannot read the stream");
        inspect(io::BufReader::with_capacity(1 << 20, stdin))
    } else {
        let f = std::fs::File::open(input)
            .ctx(|| format!("{input}: cannot open the stream for reading"))?;
        let f = Named::new(f, format!("{input}: cannot read the stream"));
        inspect(io::BufReader::with_capacity(1 << 20, f))
    }
    .map_err(|e| match e {
        // What is wrong with the stream, said of the stream.
        Error::Stream(s) => Error::Invalid(format!(
            "{}: {s}",
            if input == "-" {
                "standard input"
            } else {
                input
            }
        )),
        other => other,
    })?;
    let mut out = io::stdout().lock();
    let text = if config.json {
        inspection.to_json() + "\n"
    } else {
        inspection.describe().join("\n") + "\n"
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .ctx(|| STDOUT_WRITE.into())
}
