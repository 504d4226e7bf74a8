//! Each answer counted (`vpan_requests_total`) and timed (`vpan_request_duration_seconds`),
//! under labels from small fixed sets only, so a hostile peer cannot blow up the label
//! space; the handles are made once and kept.

use std::sync::OnceLock;
use std::time::Instant;

use crate::cards::DecidedBy;
use crate::iso8583::Message;
use crate::metrics as m;
use crate::switch::issuer::ALPHANUMERIC_DECLINES;

/// Counts an answer and its latency under labels from small fixed sets only.
pub(super) fn record(mti: &[u8; 4], answer: &Message, by: DecidedBy, received: Instant) {
    let mti = mti_index(mti);
    request_counter(mti, code_index(answer.response_code()), by).increment(1);
    request_duration(mti).record(received.elapsed().as_secs_f64());
}

/// The MTIs vpan handles by name; anything else is `other`, so a hostile peer cannot
/// blow up the label space.
const KNOWN_MTIS: [&str; 17] = [
    "0100", "0101", "0120", "0121", "0200", "0201", "0220", "0221", "0400", "0401", "0420", "0421",
    "0800", "0801", "0820", "0300", "0600",
];

/// Two-digit response codes as static labels (`code_index` 0 to 99; 100 is `other`).
const CODES: &str = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// Index of `mti` in [`KNOWN_MTIS`], or its length for `other`.
fn mti_index(mti: &[u8; 4]) -> usize {
    KNOWN_MTIS
        .iter()
        .position(|k| k.as_bytes() == mti)
        .unwrap_or(KNOWN_MTIS.len())
}

/// EMV's offline approvals, as a stand-in's advice carries them.
const OFFLINE_APPROVALS: [&str; 2] = ["Y1", "Y3"];

/// How many alphanumeric codes get a `response_code` label of their own.
const NAMED_CODES: usize = ALPHANUMERIC_DECLINES.len() + OFFLINE_APPROVALS.len();

/// The alphanumeric codes that get a `response_code` label of their own: the ones vpan
/// reads (the declines [`is_known_decline`] knows, and EMV's offline approvals), so a
/// dashboard can tell a surge of CVV2 mismatches (N7) from other issuer codes. Any other
/// is `other`.
fn named_codes() -> impl Iterator<Item = &'static str> {
    ALPHANUMERIC_DECLINES
        .iter()
        .chain(OFFLINE_APPROVALS.iter())
        .copied()
}

/// 0 to 99 for a two-digit code, 100 on for a named one (see [`named_codes`]), and the
/// last index for anything else.
fn code_index(code: Option<[u8; 2]>) -> usize {
    match code {
        Some([a, b]) if a.is_ascii_digit() && b.is_ascii_digit() => {
            usize::from(a - b'0') * 10 + usize::from(b - b'0')
        }
        Some(code) => {
            100 + named_codes()
                .position(|n| n.as_bytes() == code)
                .unwrap_or(NAMED_CODES)
        }
        None => 100 + NAMED_CODES,
    }
}

fn mti_label(index: usize) -> &'static str {
    KNOWN_MTIS.get(index).copied().unwrap_or("other")
}

fn code_label(index: usize) -> &'static str {
    match index.checked_sub(100) {
        None => CODES.get(2 * index..2 * index + 2).unwrap_or("other"),
        Some(named) => named_codes().nth(named).unwrap_or("other"),
    }
}

// The request metrics' handles, registered on first use and kept: `metrics::counter!`
// with labels builds and hashes its key on every call, a cost per request that a profile
// of the switch showed; the label sets are small and fixed, so each handle is looked up
// once. Indices are clamped by `mti_index` (at most `KNOWN_MTIS.len()`) and `code_index`
// (at most `100 + NAMED_CODES`).
const MTI_SLOTS: usize = KNOWN_MTIS.len() + 1;
const CODE_SLOTS: usize = 100 + NAMED_CODES + 1;
static REQUEST_COUNTERS: [OnceLock<metrics::Counter>; MTI_SLOTS * CODE_SLOTS * 2] =
    [const { OnceLock::new() }; MTI_SLOTS * CODE_SLOTS * 2];
static REQUEST_DURATIONS: [OnceLock<metrics::Histogram>; MTI_SLOTS] =
    [const { OnceLock::new() }; MTI_SLOTS];

fn request_counter(mti: usize, code: usize, by: DecidedBy) -> &'static metrics::Counter {
    let by_index = match by {
        DecidedBy::Switch => 0,
        DecidedBy::Issuer => 1,
    };
    REQUEST_COUNTERS[(mti * CODE_SLOTS + code) * 2 + by_index].get_or_init(|| {
        metrics::counter!(m::REQUESTS_TOTAL, "mti" => mti_label(mti), "response_code" => code_label(code), "decided_by" => by.as_str())
    })
}

fn request_duration(mti: usize) -> &'static metrics::Histogram {
    REQUEST_DURATIONS[mti]
        .get_or_init(|| metrics::histogram!(m::REQUEST_DURATION, "mti" => mti_label(mti)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_small_fixed_sets() {
        assert_eq!(code_label(code_index(Some(*b"05"))), "05");
        assert_eq!(code_label(code_index(Some(*b"99"))), "99");
        assert_eq!(code_label(code_index(Some(*b"N7"))), "N7");
        assert_eq!(code_label(code_index(Some(*b"Y3"))), "Y3");
        assert_eq!(code_label(code_index(Some(*b"ZZ"))), "other");
        assert_eq!(code_label(code_index(None)), "other");
        assert!(code_index(Some(*b"ZZ")) < CODE_SLOTS);
        assert!(code_index(None) < CODE_SLOTS);
        assert_eq!(mti_label(mti_index(b"0100")), "0100");
        assert_eq!(mti_label(mti_index(b"9999")), "other");
    }
}
