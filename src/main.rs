use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use lvmsync::exit::Exit;

/// Whether file descriptor 1 was closed when lvmsync started (`lvmsync --stdout ... >&-`).
/// Rust's runtime puts /dev/null in place of a closed standard descriptor before `main`, which
/// would throw the output away and report success; an ELF constructor runs earlier and sees it.
static STDOUT_CLOSED_AT_START: AtomicBool = AtomicBool::new(false);

extern "C" fn record_closed_stdout() {
    // SAFETY: F_GETFD only queries the descriptor; it fails (EBADF) when fd 1 is not open.
    let closed = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1;
    STDOUT_CLOSED_AT_START.store(closed, Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static RECORD_CLOSED_STDOUT: extern "C" fn() = record_closed_stdout;

fn main() -> ExitCode {
    let cli = match lvmsync::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap's own message ends with "For more information, try '--help'."
            let _ = e.print();
            return Exit::Usage.into();
        }
        // --help and --version come this way too: their text is the command's output.
        Err(e) => {
            return match print_help(&e) {
                Ok(()) => Exit::Success,
                Err(e) => {
                    lvmsync::say!("lvmsync: {e}");
                    Exit::Failed
                }
            }
            .into()
        }
    };
    let help_page = cli.help_page();
    let result = cli.into_config().and_then(|config| {
        if config.writes_stdout() && STDOUT_CLOSED_AT_START.load(Ordering::Relaxed) {
            return Err(lvmsync::Error::Invalid(
                "standard output is closed; nothing was read or sent".into(),
            ));
        }
        lvmsync::commands::run(config)
    });
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            let exit = e.exit();
            if exit == Exit::Usage {
                lvmsync::say!("lvmsync: {e} (see {help_page})");
            } else {
                lvmsync::say!("lvmsync: {e}");
            }
            exit.into()
        }
    }
}

/// Writes clap's help or version text to standard output: a write error there (or standard
/// output closed from the start) is a failure like any other output's.
fn print_help(text: &clap::Error) -> Result<(), lvmsync::Error> {
    use lvmsync::error::{IoContext, STDOUT_WRITE};
    use std::io::Write;
    if STDOUT_CLOSED_AT_START.load(Ordering::Relaxed) {
        return Err(lvmsync::Error::Invalid("standard output is closed".into()));
    }
    // Styled as clap would: colours on a terminal unless NO_COLOR and the like say otherwise.
    let mut out = anstream::AutoStream::auto(std::io::stdout().lock());
    write!(out, "{}", text.render().ansi())
        .and_then(|()| out.flush())
        .ctx(|| STDOUT_WRITE.into())
}
