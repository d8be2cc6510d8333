use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lvmsync::cli::Cli::parse();
    match cli.into_config().and_then(lvmsync::run::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            lvmsync::say!("lvmsync: {e}");
            ExitCode::FAILURE
        }
    }
}
