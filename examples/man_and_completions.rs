//! Writes lvmsync's man page and its bash, zsh and fish completions, generated from the command
//! line's definition (`lvmsync::cli::Cli::command()`) so that they never drift from `--help`:
//!
//! ```sh
//! cargo run --release --example man_and_completions -- OUTDIR DATE
//! ```
//!
//! writes `OUTDIR/lvmsync.8` (dated DATE, e.g. the last commit's: `git log -1 --format=%cs`) and
//! `OUTDIR/completions/{lvmsync.bash,_lvmsync,lvmsync.fish}`.
//! clap_mangen renders the synopsis and the options; the other sections are the prose of
//! `lvmsync::cli::manual` (which `--help` shows in part), rendered here as roff.
//! `scripts/build-deb.sh` runs it before packaging. It is an example rather than a part of
//! lvmsync so that the binary carries neither generator.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use lvmsync::cli::manual::{self, Block, Section};
use lvmsync::cli::Cli;

/// The whole man page, in roff.
fn man_page(date: &str) -> std::io::Result<Vec<u8>> {
    // An option shown only by --help has only a short help, which clap_mangen leaves out.
    let cmd = Cli::command().mut_args(|a| match a.get_help() {
        Some(help) if a.is_hide_short_help_set() && a.get_long_help().is_none() => {
            let help = help.clone();
            a.long_help(help)
        }
        _ => a,
    });
    let man = clap_mangen::Man::new(cmd)
        .title("LVMSYNC")
        .section("8")
        .date(date)
        .source(format!("lvmsync {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    let mut roff = Roff::new();
    section(&mut roff, &manual::DESCRIPTION);
    section(&mut roff, &manual::WORKFLOW);
    roff.to_writer(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    for s in &manual::AFTER_OPTIONS {
        section(&mut roff, s);
    }
    section(
        &mut roff,
        &Section {
            title: "EXAMPLES",
            blocks: &[Block::Examples(manual::EXAMPLES)],
        },
    );
    section(&mut roff, &manual::SEE_ALSO);
    roff.to_writer(&mut out)?;
    Ok(out)
}

fn section(roff: &mut Roff, s: &Section) {
    roff.control("SH", [s.title]);
    for block in s.blocks {
        match block {
            Block::Text(text) => {
                roff.control("PP", []);
                roff.text([roman(*text)]);
            }
            Block::Commands(lines) => commands(roff, lines),
            Block::List(items) => {
                for (term, text) in *items {
                    roff.control("TP", []);
                    roff.text([bold(*term)]);
                    roff.text([roman(*text)]);
                }
            }
            Block::Examples(examples) => {
                for ex in *examples {
                    roff.control("PP", []);
                    roff.text([roman(ex.what)]);
                    commands(roff, ex.commands);
                }
            }
        }
    }
}

/// Command lines, indented and unfilled, in a fixed-width font where there is one.
fn commands(roff: &mut Roff, lines: &[&str]) {
    roff.control("PP", []);
    roff.control("RS", ["4"]);
    roff.control("EX", []);
    for line in lines {
        roff.text([roman(*line)]);
    }
    roff.control("EE", []);
    roff.control("RE", []);
}

/// The command line as completions offer it: without its hidden options, which clap_complete
/// would offer like the others.
fn visible_command() -> clap::Command {
    // Leaked: the rebuilt command borrows its subcommands' names from this one.
    let full: &'static clap::Command = Box::leak(Box::new(Cli::command()));
    without_hidden(full).version(env!("CARGO_PKG_VERSION"))
}

/// `cmd` and its subcommands without their hidden options.
fn without_hidden(cmd: &'static clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name())
        .args_conflicts_with_subcommands(cmd.is_args_conflicts_with_subcommands_set())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cmd.get_subcommands().map(without_hidden));
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

/// The completion script for `shell`, and its file name.
fn completion(shell: Shell) -> (String, Vec<u8>) {
    use clap_complete::Generator;
    let mut cmd = visible_command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lvmsync", &mut script);
    (shell.file_name("lvmsync"), script)
}

const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

fn run(out_dir: &Path, date: &str) -> Result<(), String> {
    let man = man_page(date).map_err(|e| format!("cannot render the man page: {e}"))?;
    let completions = out_dir.join("completions");
    std::fs::create_dir_all(&completions)
        .map_err(|e| format!("{}: cannot create: {e}", completions.display()))?;
    write(&out_dir.join("lvmsync.8"), &man)?;
    for shell in SHELLS {
        let (name, script) = completion(shell);
        write(&completions.join(name), &script)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out_dir, date] = args.as_slice() else {
        eprintln!("usage: man_and_completions OUTDIR DATE");
        return ExitCode::from(2);
    };
    match run(Path::new(out_dir), date) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("man_and_completions: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        String::from_utf8(man_page("2025-01-31").unwrap()).unwrap()
    }

    #[test]
    fn man_page_has_every_section_in_order() {
        let page = page();
        let headings: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix(".SH "))
            .map(|h| h.trim_matches('"'))
            .collect();
        assert_eq!(
            headings,
            [
                "NAME",
                "SYNOPSIS",
                "DESCRIPTION",
                "WORKFLOW",
                "OPTIONS",
                "CHECKING THE RESULT",
                "STREAM FORMATS",
                "EXIT STATUS",
                "GUARANTEES",
                "EXAMPLES",
                "SEE ALSO"
            ]
        );
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "roff preamble");
        let version = env!("CARGO_PKG_VERSION");
        let th =
            format!(".TH LVMSYNC 8 2025-01-31 \"lvmsync {version}\" \"System Administration\"");
        assert!(page.contains(&th), "{page}");
    }

    #[test]
    fn man_page_gives_every_option_form_and_exit_status() {
        let page = page();
        let cmd = Cli::command();
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let roff = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                let item = page
                    .split(&roff)
                    .nth(1)
                    .unwrap_or_else(|| panic!("--{long} missing"));
                let explanation = item.lines().nth(1).unwrap_or_default();
                assert!(
                    !explanation.is_empty() && !explanation.starts_with('.'),
                    "--{long} unexplained"
                );
            }
        }
        for hidden in cmd.get_arguments().filter(|a| a.is_hide_set()) {
            let long = hidden.get_long().expect("hidden options are long");
            let roff = format!("\\fB\\-\\-{}", long.replace('-', "\\-"));
            assert!(!page.contains(&roff), "hidden --{long} documented");
        }
        let exit = page
            .split(".SH \"EXIT STATUS\"")
            .nth(1)
            .unwrap()
            .split(".SH")
            .next()
            .unwrap();
        for (code, _) in lvmsync::exit::Exit::TABLE {
            assert!(exit.contains(&format!(".TP\n\\fB{code}\\fR\n")), "{code}");
        }
        let synopsis = page.split(".SH SYNOPSIS").nth(1).unwrap();
        for form in [
            "\\-\\-stdout SNAPSHOT",
            "\\-\\-apply FILE|\\- DEST",
            "changes SNAPSHOT",
        ] {
            assert!(synopsis.contains(form), "{form}");
        }
    }

    #[test]
    fn completions_offer_every_visible_option_and_command_and_no_hidden_one() {
        let cmd = Cli::command();
        let args = cmd
            .get_arguments()
            .chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()));
        let (visible, hidden): (Vec<_>, Vec<_>) = args
            .filter_map(|a| Some((a.get_long()?, a.is_hide_set())))
            .partition(|(_, hide)| !hide);
        assert!(!hidden.is_empty());
        let commands: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        assert!(commands.contains(&"changes"));
        for shell in SHELLS {
            let (name, script) = completion(shell);
            let script = String::from_utf8(script).unwrap();
            for word in visible
                .iter()
                .map(|(long, _)| *long)
                .chain(commands.clone())
            {
                assert!(script.contains(word), "{name} lacks {word}");
            }
            for (long, _) in &hidden {
                assert!(!script.contains(long), "{name} offers the hidden --{long}");
            }
        }
        assert_eq!(completion(Shell::Bash).0, "lvmsync.bash");
        assert_eq!(completion(Shell::Zsh).0, "_lvmsync");
        assert_eq!(completion(Shell::Fish).0, "lvmsync.fish");
    }
}
