//! The `vpan` command line.

use clap::Parser;

/// vpan: ISO 8583 authorization switch for controlled virtual card numbers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
