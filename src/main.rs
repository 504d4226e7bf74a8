//! The `vpan` command line: one binary, one subcommand per role.
//!
//! Exit status: 0 on success, 2 on a usage error (clap's own), 1 on any other error, with
//! one line on stderr that says what to fix.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vpan::logging::{self, LogFormat};
use vpan::tools;

/// vpan: ISO 8583 authorization switch for controlled virtual card numbers.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An issuer authorization host with accounts and balances, to point the switch at.
    IssuerSim(tools::issuer_sim::Args),
    /// Replays a traffic file over many connections and reports throughput and latency.
    Loadgen(tools::loadgen::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vpan: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        match cli.command {
            Command::IssuerSim(args) => {
                logging::init(LogFormat::Human);
                tools::issuer_sim::run_cli(args).await
            }
            Command::Loadgen(args) => {
                logging::init(LogFormat::Human);
                tools::loadgen::run_cli(args).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vpan: {message}");
            ExitCode::from(1)
        }
    }
}
