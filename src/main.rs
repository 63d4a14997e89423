//! The `dreamd` binary: parses the command line, runs the command ([`cli`]) and turns its
//! result into the exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dreamd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
