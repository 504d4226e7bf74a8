//! The `vpan` command line: one binary, one subcommand per role.
//!
//! Exit status: 0 on success, 2 on a usage error (clap's own), 1 on any other error, with
//! one line on stderr that says what to fix.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// vpan: ISO 8583 authorization switch for controlled virtual card numbers.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {};
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vpan: {message}");
            ExitCode::from(1)
        }
    }
}
