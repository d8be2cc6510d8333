//! Messages on standard error, and how many of them ([`Verbosity`]).
//!
//! `eprintln!` panics when standard error cannot be written (closed, or a pipe whose reader is
//! gone): a sync that succeeded would then end with a panic. Every message goes through
//! [`say!`](crate::say) instead, which drops what cannot be shown; the exit status still tells
//! the outcome.

use std::io::Write;

/// Writes one line (`format!` arguments, newline added) to standard error, ignoring errors.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::msg::line(format_args!($($arg)*))
    };
}

/// The line of [`say!`](crate::say), written with one `write` call so that lines of several
/// threads do not interleave.
pub fn line(args: std::fmt::Arguments<'_>) {
    raw(format!("{args}\n").as_bytes());
}

/// Writes bytes (a whole line, with its newline) to standard error, ignoring errors.
pub fn raw(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// How much lvmsync says on standard error (`-q`, the default, `-v`, `-d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
    Debug,
}
