//! lvmsync's exit statuses: one table ([`Exit::TABLE`]), given by `--help` and the man page and
//! copied into the README (a test keeps the copy equal). `main.rs`, the thin guard's signal
//! handler and `lvmsync replicate`'s test stop exit with [`Exit::code`], so that no other status
//! can appear. The one status outside the table, [`Exit::StoppedForTest`], needs a variable
//! that only tests set.

/// How lvmsync ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked was done.
    Success,
    /// The operation failed: nothing, or not everything, was done.
    Failed,
    /// The command line was refused; nothing was done.
    Usage,
    /// `lvmsync verify`: the two sides differ.
    Differ,
    /// `lvmsync verify`: a side could not be read, so nothing was compared.
    NotCompared,
    /// Ended by this signal (caught to give back what a thin pool holds for lvmsync first).
    Signal(i32),
    /// `lvmsync replicate` stopped after a step by `LVMSYNC_TEST_STOP_AFTER`, as a crash there
    /// would: for the tests of its recovery alone, so not in the table.
    StoppedForTest,
}

impl Exit {
    /// Each status and what it means, as documented.
    pub const TABLE: [(&'static str, &'static str); 5] = [
        (
            "0",
            "Success: everything asked was done. A stream that was sent or applied arrived \
             whole, was verified and is on disk. lvmsync verify: the two sides are equal.",
        ),
        (
            "1",
            "The operation failed: nothing, or not everything, was done. The message on \
             standard error says what failed. lvmsync verify: the two sides differ; the \
             differing ranges are on standard output.",
        ),
        (
            "2",
            "Usage error: the command line was refused and nothing was done.",
        ),
        (
            "3",
            "lvmsync verify could not compare: a side could not be read (an I/O error, a lost \
             connection, a remote lvmsync without verify). The message on standard error says \
             why; nothing is written to standard output.",
        ),
        (
            "128+N",
            "Killed by signal N. While it holds a thin pool's metadata snapshot or its own \
             read-only device of an inactive thin snapshot (lvmsync-thinID-PID), lvmsync \
             catches SIGINT, SIGTERM and SIGHUP, gives them back and exits with this status \
             itself. After kill -9, remove such a device with dmsetup remove NAME.",
        ),
    ];

    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Differ => 1,
            Exit::NotCompared => 3,
            Exit::Signal(n) => 128 + n,
            Exit::StoppedForTest => 99,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        // Signal numbers are below 128, so every code fits.
        std::process::ExitCode::from(u8::try_from(e.code()).unwrap_or(u8::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        let codes: Vec<String> = [Exit::Success, Exit::Failed, Exit::Usage, Exit::NotCompared]
            .iter()
            .map(|e| e.code().to_string())
            .chain(["128+N".to_string()])
            .collect();
        let table: Vec<&str> = Exit::TABLE.iter().map(|(code, _)| *code).collect();
        assert_eq!(codes, table);
        assert_eq!(Exit::Signal(libc::SIGTERM).code(), 143);
        // Differing is a failure of what verify was asked to show: the same status.
        assert_eq!(Exit::Differ.code(), Exit::Failed.code());
        // The test stop is told from every documented status, a signal's included.
        let stop = Exit::StoppedForTest.code();
        assert_eq!(stop, 99, "the VM scenarios expect 99");
        assert!(!table.contains(&stop.to_string().as_str()) && stop < 128);
    }
}
