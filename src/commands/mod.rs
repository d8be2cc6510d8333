//! The commands: each turns its validated configuration ([`Config`]) into calls of the library
//! and reports what was done. [`run`] dispatches.
//!
//! - [`send`]: `lvmsync [--stdout] SNAPSHOT [[HOST:]DEST]`, the changes as a stream;
//! - [`full`]: `lvmsync --full [--stdout] SNAPSHOT [[HOST:]DEST]`, the whole snapshot;
//! - [`checksum`]: `lvmsync --checksum SOURCE [HOST:]DEST`, what differs, found by hashes;
//! - [`apply`]: `lvmsync --apply FILE|- DEST`;
//! - [`changes`]: `lvmsync changes SNAPSHOT`, the changed ranges as text;
//! - [`info`]: `lvmsync info FILE|-`, a stream described and verified;
//! - [`resume`]: `lvmsync --stdout --resume FILE SNAPSHOT`, a dump cut short finished in place;
//! - [`verify`]: `lvmsync verify SOURCE [HOST:]DEST`, the differing ranges as text;
//! - [`replicate`]: `lvmsync replicate VG/LV [HOST:]DEST`, a copy kept current.

pub mod apply;
pub mod changes;
pub mod checksum;
pub mod full;
pub mod info;
pub mod replicate;
pub mod resume;
pub mod send;
pub mod verify;

use crate::cli::Config;
use crate::error::Result;
use crate::exit::Exit;

/// Carries out a validated configuration; says how lvmsync ends when it did what was asked.
pub fn run(config: Config) -> Result<Exit> {
    let done = |r: Result<()>| r.map(|()| Exit::Success);
    match config {
        Config::Send(config) if config.full => done(full::run(config).map(drop)),
        Config::Send(config) if config.checksum.is_some() => done(checksum::run(config)),
        Config::Send(config) => done(send::run(config).map(drop)),
        Config::Apply(config) => done(apply::run(&config)),
        Config::Changes(config) => done(changes::run(&config)),
        Config::Info(config) => done(info::run(&config)),
        Config::Resume(config) => done(resume::run(config)),
        Config::Verify(config) => verify::run(&config),
        Config::VerifyServe(config) => verify::serve(&config),
        Config::Replicate(config) => done(replicate::run(config)),
    }
}
