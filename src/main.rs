//! The `service-auth` command line: parses the arguments and hands the
//! subcommand to `commands`, where library errors become messages and exit
//! codes.

mod commands;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, for flat memory across registry reloads (see `alloc`).
#[global_allocator]
static ALLOCATOR: service_auth::alloc::Allocator = service_auth::alloc::Allocator;

fn main() -> ExitCode {
    match commands::run(commands::Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
