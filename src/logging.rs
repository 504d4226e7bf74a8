//! Log output: human-readable lines by default, one JSON object per line with `--log-json`.
//!
//! The level comes from `RUST_LOG` (default `info`). Nothing here masks card numbers:
//! every place that logs one holds it as a `Pan` or `Masked`, whose `Display` is masked.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    Human,
    /// One JSON object per line, for a log shipper.
    Json,
}

/// Installs the process-wide subscriber, writing to stderr. A second call does nothing
/// (tests start several apps in one process).
pub fn init(format: LogFormat) {
    init_at(format, "info");
}

/// Like [`init`], but only warnings and errors unless `RUST_LOG` says otherwise: for
/// commands whose own output (a report) is what the reader came for.
pub fn init_quiet(format: LogFormat) {
    init_at(format, "warn");
}

fn init_at(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
