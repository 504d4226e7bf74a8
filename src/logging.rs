//! Log output: human-readable lines by default, one JSON object per line with `--log-json`.
//!
//! The level comes from `RUST_LOG` (default `info`). Every place in vpan that logs a card
//! number holds it as a `Pan` or `Masked`, whose `Display` is masked. Libraries log text
//! from outside too (rustls, the name a TLS client asks for), so every line is also passed
//! through [`mask_card_numbers`] on its way to stderr ([`MaskedStderr`]): a card number a
//! peer chose to send cannot reach the log in full, whoever logs it.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::pan::mask_card_numbers;

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
        .with_writer(MaskedStderr)
        // Colours only for a person at a terminal, never in a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Where log lines go: stderr, each line masked first.
struct MaskedStderr;

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = Masking<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Masking(io::stderr())
    }
}

/// Writes what it is given with every card number in it masked. The formatter hands over
/// a whole line in one write, so a number is never split between two writes.
struct Masking<W>(W);

impl<W: Write> Write for Masking<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        // Most lines hold fewer digits in all than the shortest card number: written as
        // they are.
        if text.bytes().filter(u8::is_ascii_digit).count() < crate::pan::MIN_PAN_LEN {
            self.0.write_all(buf)?;
        } else {
            self.0.write_all(mask_card_numbers(&text).as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One log line a second at most from one place in the code, for events a peer or an
/// outage can raise on every request (a flood of malformed frames, an issuer that is down,
/// a failed disk): at 100,000 requests a second, a line each would bury the log and cost
/// more than the requests. The lines held back are counted in the next one that goes
/// (`suppressed`); those after the last line of a burst are not reported, so counts are
/// for the metrics.
pub struct Throttle {
    /// Milliseconds since the process's first throttled event at which a line may go next.
    next_ms: AtomicU64,
    /// Lines held back since the last one that went.
    held_back: AtomicU64,
}

impl Throttle {
    /// A throttle that lets the first line through.
    pub const fn new() -> Throttle {
        Throttle {
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may go now.
    pub fn admit(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = START.get_or_init(Instant::now).elapsed().as_millis();
        self.admit_at(u64::try_from(now).unwrap_or(u64::MAX))
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        // One caller wins the second; the others count themselves held back.
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, now_ms + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

/// A `tracing` event at `level`, through a [`Throttle`] of its own call site, with the
/// count of lines held back since the last as the field `suppressed`:
/// `throttled!(warn, error = %e, "issuer did not answer")`.
macro_rules! throttled {
    ($level:ident, $($rest:tt)+) => {{
        static THROTTLE: $crate::logging::Throttle = $crate::logging::Throttle::new();
        if let Some(suppressed) = THROTTLE.admit() {
            tracing::$level!(suppressed, $($rest)+);
        }
    }};
}
pub(crate) use throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_masked_on_its_way_out_whoever_logged_it() {
        let card = crate::pan::test_pan("497010");
        let card = card.as_str();
        let mut out = Masking(Vec::new());
        let line = format!("WARN rustls: Illegal SNI hostname received \"{card}\"\n");
        assert_eq!(out.write(line.as_bytes()).unwrap(), line.len());
        let written = String::from_utf8(out.0).unwrap();
        assert!(!written.contains(card), "{written}");
        assert!(
            written.contains(&format!("{}******", &card[..6])),
            "{written}"
        );
        // A line without a card number goes as it came.
        let mut out = Masking(Vec::new());
        out.write_all(b"stan 000123 at 2026-12-05T22:00:00Z\n")
            .unwrap();
        assert_eq!(out.0, b"stan 000123 at 2026-12-05T22:00:00Z\n");
    }

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.admit_at(5), Some(0));
        assert_eq!(t.admit_at(6), None);
        assert_eq!(t.admit_at(1004), None);
        assert_eq!(
            t.admit_at(1005),
            Some(2),
            "two held back since the last line"
        );
        assert_eq!(t.admit_at(1006), None);
        assert_eq!(t.admit_at(9000), Some(1));
    }
}
