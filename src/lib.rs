//! lvmsync: send only the blocks of an LVM logical volume that changed since a snapshot.
//!
//! The pipeline is: a change source ([`source`]) produces an [`extent::ExtentList`] of changed
//! byte ranges; the sender ([`send`]) reads those ranges from the data source with large reads
//! and writes them as a change stream ([`stream`]), which [`transport`] carries to standard
//! output, a local receiver or a remote one; the receiver ([`apply`]) writes a stream onto a
//! destination, optionally saving what it overwrites as a snapback stream.
//!
//! [`verify`] compares two volumes, or the ranges a sync wrote, on one host or two.
//!
//! `main.rs` parses the command line ([`cli`]) into a validated [`cli::Config`]; [`commands`]
//! carries it out, one module per command. Underneath: [`lvm`] (live discovery, and running
//! LVM's and device-mapper's tools), [`blockdev`] (opening rules, sizes, aligned buffers),
//! [`parallel`] (a pool of threads with many reads in flight), [`progress`] (a bar or JSON
//! lines), [`error`], [`exit`] (the exit statuses) and [`msg`]. [`inspect`] reads a stream
//! through without applying it (`lvmsync info`); [`replicate`] keeps a copy current with
//! rotating snapshots (`lvmsync replicate`).

pub mod apply;
pub mod blockdev;
pub mod checksum;
pub mod cli;
pub mod commands;
pub mod error;
pub mod exit;
pub mod extent;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod lvm;
pub mod msg;
pub mod parallel;
pub mod progress;
pub mod replicate;
pub mod send;
pub mod session;
pub mod source;
pub mod stream;
pub mod transport;
pub mod verify;

pub use error::{Error, Result};
