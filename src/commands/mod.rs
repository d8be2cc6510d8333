//! The commands: each turns its validated configuration ([`Config`]) into calls of the library
//! and reports what was done. [`run`] dispatches.
//!
//! - [`send`]: `lvmsync [--stdout] SNAPSHOT [[HOST:]DEST]`, the changes as a stream;
//! - [`full`]: `lvmsync --full [--stdout] SNAPSHOT [[HOST:]DEST]`, the whole snapshot;
//! - [`apply`]: `lvmsync --apply FILE|- DEST`;
//! - [`changes`]: `lvmsync changes SNAPSHOT`, the changed ranges as text;
//! - [`info`]: `lvmsync info FILE|-`, a stream described and verified;
//! - [`resume`]: `lvmsync --stdout --resume FILE SNAPSHOT`, a dump cut short finished in place.

pub mod apply;
pub mod changes;
pub mod full;
pub mod info;
pub mod resume;
pub mod send;

use crate::cli::Config;
use crate::error::Result;

/// Carries out a validated configuration.
pub fn run(config: Config) -> Result<()> {
    match config {
        Config::Send(config) if config.full => full::run(config),
        Config::Send(config) => send::run(config),
        Config::Apply(config) => apply::run(&config),
        Config::Changes(config) => changes::run(&config),
        Config::Info(config) => info::run(&config),
        Config::Resume(config) => resume::run(config),
    }
}
