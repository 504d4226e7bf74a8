//! The tools around the switch: what it talks to and what drives it, on the same wire.
//!
//! vpan is only as well tested as the peers it is tested against, so these are real
//! programs, not mocks, and they are also subcommands of the `vpan` binary:
//!
//! - [`issuer_sim`]: an issuer authorization host with accounts and balances, the far side
//!   of the switch (`vpan issuer-sim`).
//! - [`traffic`]: the traffic file, JSON Lines in the codec vectors' field notation.
//! - [`demo`]: the whole system in one process, driven from outside through the API and
//!   the wire, with a report of what was expected and what came (`vpan demo`).
//! - [`generate`]: writes scenarios of any size for the demo and the load generator
//!   (`vpan traffic`).
//! - [`loadgen`]: replays a traffic file over many connections, closed loop or at a fixed
//!   rate, and reports throughput and latency percentiles (`vpan loadgen`).

pub mod demo;
pub mod flags;
pub mod generate;
pub mod issuer_sim;
pub mod loadgen;
mod pacer;
pub mod traffic;
pub mod wire;

/// `text` without the UTF-8 byte order mark some Windows editors open a file with: it is
/// not JSON nor CSV, but says nothing wrong about the file.
pub fn without_byte_order_mark(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// How to call this program in a command printed for pasting: its own path, since `vpan`
/// is on no one's `PATH` after a build (`target/release/vpan`).
pub fn this_program() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "vpan".into())
}
