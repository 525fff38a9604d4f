//! The `service-auth` command line: parses the arguments and hands the
//! subcommand to `commands`, where library errors become messages and exit
//! codes.

mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match commands::run(commands::Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
