//! Writes lvmsync's man pages and its bash, zsh and fish completions, generated from the command
//! line's definition (`lvmsync::cli::Cli::command()`) so that they never drift from `--help`:
//!
//! ```sh
//! cargo run --release --example man_and_completions -- OUTDIR DATE
//! ```
//!
//! writes `OUTDIR/lvmsync.8` and one page per subcommand, `OUTDIR/lvmsync-verify.8` and so on
//! (dated DATE, e.g. the last commit's: `git log -1 --format=%cs`), and
//! `OUTDIR/completions/{lvmsync.bash,_lvmsync,lvmsync.fish}`.
//! clap_mangen renders the synopses and the options; the other sections are the prose of
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

/// The command line as the man pages show it: built, so that a subcommand knows its page's name
/// (lvmsync-verify) and its command line (lvmsync verify); without the `help` subcommand.
fn man_command() -> clap::Command {
    let mut cmd = with_long_help(Cli::command()).disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// `cmd` and its subcommands, each option shown only by --help given its help as long help:
/// clap_mangen leaves out a help hidden from -h.
fn with_long_help(cmd: clap::Command) -> clap::Command {
    let cmd = cmd.mut_args(|a| match a.get_help() {
        Some(help) if a.is_hide_short_help_set() && a.get_long_help().is_none() => {
            let help = help.clone();
            a.long_help(help)
        }
        _ => a,
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    names
        .iter()
        .fold(cmd, |cmd, name| cmd.mut_subcommand(name, with_long_help))
}

/// A page of section 8 of the manual, `name`(8), rendering `cmd`.
fn man(cmd: clap::Command, name: &str, date: &str) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section("8")
        .date(date)
        .source(format!("lvmsync {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration")
}

/// The name of the man page of the subcommand `cmd`: lvmsync-verify.
fn page_name(cmd: &clap::Command) -> &str {
    cmd.get_display_name()
        .expect("a built subcommand has a display name")
}

/// The whole man page, in roff.
fn man_page(date: &str) -> std::io::Result<Vec<u8>> {
    let cmd = man_command();
    let pages: Vec<String> = cmd
        .get_subcommands()
        .map(|c| format!("{}(8)", page_name(c)))
        .collect();
    let man = man(cmd, "lvmsync", date);
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
    titled(&mut roff, "EXAMPLES", &[Block::Examples(manual::EXAMPLES)]);
    see_also(&mut roff, &pages, Some(manual::SEE_ALSO));
    roff.to_writer(&mut out)?;
    Ok(out)
}

/// The man page of each subcommand: its name (lvmsync-verify) and roff.
fn subcommand_pages(date: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = man_command();
    let mut pages = Vec::new();
    for sub in cmd.get_subcommands() {
        let name = page_name(sub);
        let prose = manual::SUBCOMMANDS
            .iter()
            .find(|s| s.name == sub.get_name())
            .unwrap_or_else(|| panic!("no manual for the subcommand {}", sub.get_name()));
        let others = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != sub.get_name())
            .map(|c| format!("{}(8)", page_name(c)));
        let related: Vec<String> = std::iter::once("lvmsync(8)".to_owned())
            .chain(others)
            .collect();
        let man = man(sub.clone(), name, date);
        let mut out = Vec::new();
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        let mut roff = Roff::new();
        titled(&mut roff, "DESCRIPTION", prose.description);
        roff.to_writer(&mut out)?;
        man.render_options_section(&mut out)?;
        let mut roff = Roff::new();
        titled(&mut roff, "EXAMPLES", &[Block::Examples(prose.examples)]);
        see_also(&mut roff, &related, None);
        roff.to_writer(&mut out)?;
        pages.push((name.to_owned(), out));
    }
    Ok(pages)
}

/// SEE ALSO: lvmsync's own `pages`, then `others`.
fn see_also(roff: &mut Roff, pages: &[String], others: Option<&str>) {
    roff.control("SH", ["SEE ALSO"]);
    roff.control("PP", []);
    let mut text = pages.join(", ");
    if let Some(others) = others {
        text = format!("{text}, {others}");
    }
    roff.text([roman(text)]);
}

fn section(roff: &mut Roff, s: &Section) {
    titled(roff, s.title, s.blocks);
}

/// A section: its heading, then `blocks`.
fn titled(roff: &mut Roff, title: &str, blocks: &[Block]) {
    roff.control("SH", [title]);
    for block in blocks {
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
    let subcommands =
        subcommand_pages(date).map_err(|e| format!("cannot render the man pages: {e}"))?;
    let completions = out_dir.join("completions");
    std::fs::create_dir_all(&completions)
        .map_err(|e| format!("{}: cannot create: {e}", completions.display()))?;
    write(&out_dir.join("lvmsync.8"), &man)?;
    for (name, page) in subcommands {
        write(&out_dir.join(format!("{name}.8")), &page)?;
    }
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

    /// A page's section headings, in order.
    fn headings(page: &str) -> Vec<&str> {
        page.lines()
            .filter_map(|l| l.strip_prefix(".SH "))
            .map(|h| h.trim_matches('"'))
            .collect()
    }

    #[test]
    fn man_page_has_every_section_in_order() {
        let page = page();
        let headings = headings(&page);
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

    /// Every visible option of `cmd` has its item in `page`, with an explanation, and no hidden
    /// one is there.
    fn assert_options_documented(page: &str, cmd: &clap::Command) {
        let name = cmd.get_name();
        let options = page.split(".SH OPTIONS\n").nth(1).expect("OPTIONS");
        let options = options.split("\n.SH ").next().unwrap();
        let mut documented = 0;
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                let roff = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
                let item = options
                    .split(&roff)
                    .nth(1)
                    .unwrap_or_else(|| panic!("{name}: --{long} missing"));
                let explanation = item.lines().nth(1).unwrap_or_default();
                assert!(
                    !explanation.is_empty() && !explanation.starts_with('.'),
                    "{name}: --{long} unexplained"
                );
                documented += 1;
            }
        }
        assert!(documented >= 2, "{name}: {documented} options");
        for hidden in cmd.get_arguments().filter(|a| a.is_hide_set()) {
            let long = hidden.get_long().expect("hidden options are long");
            let roff = format!("\\fB\\-\\-{}", long.replace('-', "\\-"));
            assert!(!page.contains(&roff), "{name}: hidden --{long} documented");
        }
    }

    #[test]
    fn man_page_gives_every_option_form_and_exit_status() {
        let page = page();
        let cmd = man_command();
        assert!(cmd.get_arguments().any(|a| a.get_long() == Some("help")));
        assert_options_documented(&page, &cmd);
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
    fn every_subcommand_has_its_page_with_its_options_and_examples() {
        let cmd = man_command();
        let pages = subcommand_pages("2025-01-31").unwrap();
        let names: Vec<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lvmsync-changes",
                "lvmsync-info",
                "lvmsync-verify",
                "lvmsync-replicate"
            ]
        );
        let main_page = page();
        let main_see_also = main_page.split(".SH \"SEE ALSO\"").nth(1).unwrap();
        for (sub, (name, page)) in cmd.get_subcommands().zip(&pages) {
            let page = String::from_utf8(page.clone()).unwrap();
            let headings = headings(&page);
            assert_eq!(
                headings,
                [
                    "NAME",
                    "SYNOPSIS",
                    "DESCRIPTION",
                    "OPTIONS",
                    "EXAMPLES",
                    "SEE ALSO"
                ],
                "{name}"
            );
            let version = env!("CARGO_PKG_VERSION");
            let upper = name.to_uppercase();
            let th =
                format!(".TH {upper} 8 2025-01-31 \"lvmsync {version}\" \"System Administration\"");
            assert!(page.contains(&th), "{page}");
            let roff_name = name.replace('-', "\\-");
            let synopsis_name = format!("lvmsync {}", sub.get_name());
            assert!(
                page.contains(&format!(".SH NAME\n{roff_name} \\- ")),
                "{page}"
            );
            assert!(
                page.contains(&format!(".SH SYNOPSIS\n\\fB{synopsis_name}\\fR")),
                "{page}"
            );
            assert_options_documented(&page, sub);
            let prose = manual::SUBCOMMANDS
                .iter()
                .find(|s| s.name == sub.get_name())
                .unwrap();
            let examples = page.split(".SH EXAMPLES").nth(1).unwrap();
            for line in prose.examples.iter().flat_map(|e| e.commands.iter()) {
                let roff = line
                    .replace('\\', "\\\\")
                    .replace('-', "\\-")
                    .replace('\'', "\\*(Aq");
                assert!(examples.contains(&roff), "{name}: {line}\n{examples}");
            }
            let see_also = page.split(".SH \"SEE ALSO\"").nth(1).unwrap();
            assert!(see_also.contains("lvmsync(8)"), "{see_also}");
            assert!(
                main_see_also.contains(&format!("{roff_name}(8)")),
                "lvmsync(8) does not refer to {name}(8): {main_see_also}"
            );
        }
        let verify = String::from_utf8(pages[2].1.clone()).unwrap();
        assert!(verify.contains("\\fB\\-\\-queue\\-depth\\fR"), "{verify}");
        assert!(!verify.contains("\\fB\\-\\-serve"), "{verify}");
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
