//! lvmsync: send only the blocks of an LVM logical volume that changed since a snapshot.
//!
//! The pipeline is: a change source ([`source`]) produces an [`extent::ExtentList`] of changed
//! byte ranges; the sender ([`send`]) reads those ranges from the data source with large reads
//! and writes them as a change stream ([`stream`]); the receiver ([`apply`]) writes a stream onto
//! a destination, optionally saving what it overwrites as a snapback stream.
//!
//! `main.rs` parses the command line into a validated [`cli::Config`]; [`commands`] carries it
//! out, one module per command.

pub mod apply;
pub mod blockdev;
pub mod cli;
pub mod commands;
pub mod error;
pub mod extent;
#[doc(hidden)]
pub mod fuzzing;
pub mod lvm;
pub mod msg;
pub mod parallel;
pub mod send;
pub mod source;
pub mod stream;
pub mod transport;

pub use error::{Error, Result};
