//! What a run measured: each connection's [`Stats`], merged at the end into the
//! [`Summary`] printed (or given as JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::{LoadgenConfig, LoadgenError, MAX_LATENCY_US};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest seen.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// False when no request was measured (nothing answered, timed out or given up).
    pub fn measured(&self) -> bool {
        self.max > 0
    }
}

fn null_when_none_measured<S: serde::Serializer>(l: &Latency, to: S) -> Result<S::Ok, S::Error> {
    if l.measured() {
        l.serialize(to)
    } else {
        to.serialize_none()
    }
}

/// What a run did; printed as text or as one JSON object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Where it sent.
    pub target: String,
    /// Connections used.
    pub connections: usize,
    /// In flight per connection at most.
    pub in_flight: usize,
    /// `"closed"` or `"open"`.
    pub mode: &'static str,
    /// Target rate in open loop.
    pub rate: Option<f64>,
    /// The run's wall time in seconds, from its start to its end: redials and the wait for
    /// the last answers or timeouts included (the throughput has its own span).
    pub elapsed_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Answers matched to a request.
    pub answered: u64,
    /// Requests unanswered within the timeout.
    pub timeouts: u64,
    /// Everything else that went wrong (see `errors_by_kind`).
    pub errors: u64,
    /// Answers per second.
    pub throughput_per_s: f64,
    /// Send (or due, in open loop) to answer, in microseconds; `null` in JSON when
    /// nothing was measured (zeros would read as instant answers).
    #[serde(serialize_with = "null_when_none_measured")]
    pub latency_us: Latency,
    /// Answers by DE 39 (`"none"` when absent).
    pub response_codes: BTreeMap<String, u64>,
    /// Requests sent by MTI.
    pub requests_by_mti: BTreeMap<String, u64>,
    /// Answers by MTI.
    pub responses_by_mti: BTreeMap<String, u64>,
    /// Answers whose DE 39 was what the traffic line expected.
    pub expect_matched: u64,
    /// Answers whose DE 39 was not; see `mismatches`.
    pub expect_mismatched: u64,
    /// Mismatches by traffic file line, then by the code received.
    pub mismatches: BTreeMap<usize, BTreeMap<String, u64>>,
    /// `connection_lost` (requests out when a connection dropped), `unmatched` (answers
    /// with no request in flight under their STAN, e.g. after a timeout), `unparseable`,
    /// `wrong_mti`, `connect` (a failed redial), `gave_up` (a connection that could not be
    /// dialled again within the timeout, at least 1 s: what it had left is not sent),
    /// `not_sent` (an open loop's requests due before `--duration` ended and still unsent
    /// `--timeout-ms` after it, given up).
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r}/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            f,
            "target {}: {} connections x {} in flight, {mode}, {:.2} s",
            self.target, self.connections, self.in_flight, self.elapsed_s
        )?;
        writeln!(
            f,
            "sent {}  answered {}  timeouts {}  errors {}",
            self.sent, self.answered, self.timeouts, self.errors
        )?;
        // Whole answers a second, but a slow open loop's fraction is still seen.
        let decimals = if self.throughput_per_s < 10.0 { 2 } else { 0 };
        writeln!(
            f,
            "throughput {:.*} answers/s",
            decimals, self.throughput_per_s
        )?;
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        if !l.measured() {
            writeln!(f, "latency ms  none measured (nothing answered)")?;
        } else {
            writeln!(
                f,
                "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            )?;
        }
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "response codes: {}", list(&self.response_codes))?;
        writeln!(f, "requests by MTI: {}", list(&self.requests_by_mti))?;
        writeln!(f, "responses by MTI: {}", list(&self.responses_by_mti))?;
        writeln!(
            f,
            "expectations: {} matched, {} mismatched",
            self.expect_matched, self.expect_mismatched
        )?;
        for (line, got) in &self.mismatches {
            writeln!(f, "  line {line}: got {}", list(got))?;
        }
        if !self.errors_by_kind.is_empty() {
            writeln!(f, "errors: {}", list(&self.errors_by_kind))?;
        }
        Ok(())
    }
}

/// What one connection measured.
/// Merged into the [`Summary`] at the end; see its fields.
pub(super) struct Stats {
    /// Latency in microseconds.
    pub(super) hist: Histogram<u64>,
    /// Answers by DE 39 (`--` when absent).
    pub(super) codes: BTreeMap<[u8; 2], u64>,
    /// Requests sent by MTI.
    pub(super) requests_by_mti: BTreeMap<[u8; 4], u64>,
    /// Answers by MTI.
    pub(super) responses_by_mti: BTreeMap<[u8; 4], u64>,
    /// Answers with the expected DE 39.
    pub(super) expect_matched: u64,
    /// Answers with another DE 39.
    pub(super) expect_mismatched: u64,
    /// Mismatches by file line, then by the code received.
    pub(super) mismatches: BTreeMap<usize, BTreeMap<[u8; 2], u64>>,
    /// Errors by kind.
    pub(super) errors: BTreeMap<&'static str, u64>,
    /// Requests sent.
    pub(super) sent: u64,
    /// Answers matched.
    pub(super) answered: u64,
    /// Requests timed out.
    pub(super) timeouts: u64,
    /// When the last answer came.
    pub(super) last_answer: Option<Instant>,
    /// When the last request was sent.
    pub(super) last_sent: Option<Instant>,
}

impl Stats {
    /// Records one request's latency: from when it was meant to go (due, or sent) to `now`.
    pub(super) fn record_latency(&mut self, intended: Instant, now: Instant) {
        let us = now.saturating_duration_since(intended).as_micros() as u64;
        self.hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub(super) fn new() -> Result<Stats, LoadgenError> {
        Ok(Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| LoadgenError::Config(format!("histogram: {e}")))?,
            codes: BTreeMap::new(),
            requests_by_mti: BTreeMap::new(),
            responses_by_mti: BTreeMap::new(),
            expect_matched: 0,
            expect_mismatched: 0,
            mismatches: BTreeMap::new(),
            errors: BTreeMap::new(),
            sent: 0,
            answered: 0,
            timeouts: 0,
            last_answer: None,
            last_sent: None,
        })
    }
}

/// Throughput is counted from `start` to the last answer or the last request sent,
/// whichever is later: not to the end of a wait for answers that never came (timeouts at
/// the end of a run), but over every second spent sending, so a peer that stops answering
/// part way through shows in it. In the open loop, over at least the schedule the requests
/// sent and those given up fill (`(sent + not_sent) / rate`; a target that went away part
/// way through leaves the rest of the schedule not sent, and the throughput counts its
/// seconds too): the last of N requests goes out at (N - 1) / rate, so at one
/// request a second for 3 s the span from the first send to the last answer is 2 s, and
/// the throughput would read 1.5/s.
pub(super) fn summarize(
    cfg: &LoadgenConfig,
    start: Instant,
    elapsed: Duration,
    all: Vec<Stats>,
) -> Summary {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut s = Summary {
        target: cfg.target.clone(),
        connections: cfg.connections,
        in_flight: cfg.in_flight,
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        rate: cfg.rate,
        elapsed_s: elapsed.as_secs_f64(),
        ..Summary::default()
    };
    let mut hist: Option<Histogram<u64>> = None;
    let answering = all
        .iter()
        .flat_map(|st| [st.last_answer, st.last_sent])
        .flatten()
        .max()
        .map_or(Duration::ZERO, |last| last.saturating_duration_since(start));
    for st in all {
        s.sent += st.sent;
        s.answered += st.answered;
        s.timeouts += st.timeouts;
        s.expect_matched += st.expect_matched;
        s.expect_mismatched += st.expect_mismatched;
        for (k, v) in st.codes {
            *s.response_codes.entry(code_name(&k)).or_insert(0) += v;
        }
        for (k, v) in st.requests_by_mti {
            *s.requests_by_mti.entry(text(&k)).or_insert(0) += v;
        }
        for (k, v) in st.responses_by_mti {
            *s.responses_by_mti.entry(text(&k)).or_insert(0) += v;
        }
        for (line, got) in st.mismatches {
            let e = s.mismatches.entry(line).or_default();
            for (k, v) in got {
                *e.entry(code_name(&k)).or_insert(0) += v;
            }
        }
        for (k, v) in st.errors {
            s.errors += v;
            *s.errors_by_kind.entry(k.to_owned()).or_insert(0) += v;
        }
        match &mut hist {
            None => hist = Some(st.hist),
            Some(h) => {
                let _ = h.add(&st.hist);
            }
        }
    }
    if let Some(h) = hist.filter(|h| !h.is_empty()) {
        s.latency_us = Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        };
    }
    let not_sent = s.errors_by_kind.get("not_sent").copied().unwrap_or(0);
    let scheduled = cfg.rate.filter(|r| *r > 0.0).map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64((s.sent + not_sent) as f64 / r)
    });
    let counted = answering.max(scheduled);
    if !counted.is_zero() {
        s.throughput_per_s = s.answered as f64 / counted.as_secs_f64();
    }
    s
}

/// A response code as the summary names it: its two characters, or `none` for an answer
/// without DE 39 (the connection's `--`), the same in every map of the summary.
fn code_name(code: &[u8; 2]) -> String {
    if code == b"--" {
        "none".to_owned()
    } else {
        String::from_utf8_lossy(code).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;
    use crate::tools::traffic::Traffic;
    use std::sync::Arc;

    /// A run's settings on a one-line traffic file (an echo): only the summary is tested.
    fn echo_run() -> LoadgenConfig {
        let traffic = Traffic::parse(
            r#"{"fields": {"t": "0800", "70": "301"}}"#,
            Spec::iso87ascii(),
        )
        .unwrap();
        LoadgenConfig::new("127.0.0.1:1", Arc::new(traffic))
    }

    #[test]
    fn throughput_counts_up_to_the_last_answer_not_to_the_end_of_a_wait_for_timeouts() {
        let start = Instant::now();
        let cfg = echo_run();
        let mut a = Stats::new().unwrap();
        a.answered = 600;
        a.last_answer = Some(start + Duration::from_secs(1));
        let mut b = Stats::new().unwrap();
        b.answered = 400;
        b.last_answer = Some(start + Duration::from_millis(500));
        // The run ended 5 s after its last answer, waiting out a timeout.
        let s = summarize(&cfg, start, Duration::from_secs(6), vec![a, b]);
        assert_eq!(s.answered, 1_000);
        assert!((s.throughput_per_s - 1_000.0).abs() < 1e-6, "{s:?}");
        assert!((s.elapsed_s - 6.0).abs() < 1e-6);
    }

    #[test]
    fn throughput_counts_every_second_spent_sending_when_answers_stopped_early() {
        let start = Instant::now();
        let cfg = echo_run();
        // 100 answers in the first second, then requests sent for 9 more that timed out.
        let mut a = Stats::new().unwrap();
        a.answered = 100;
        a.last_answer = Some(start + Duration::from_secs(1));
        a.last_sent = Some(start + Duration::from_secs(10));
        let s = summarize(&cfg, start, Duration::from_secs(11), vec![a]);
        assert!((s.throughput_per_s - 10.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn an_answer_without_de39_is_named_none_in_the_codes_and_the_mismatches_alike() {
        let start = Instant::now();
        let mut a = Stats::new().unwrap();
        a.codes.insert(*b"--", 3);
        a.codes.insert(*b"00", 2);
        a.mismatches.entry(6).or_default().insert(*b"--", 3);
        let s = summarize(&echo_run(), start, Duration::from_secs(1), vec![a]);
        assert_eq!(s.response_codes.get("none"), Some(&3));
        assert_eq!(s.mismatches[&6].get("none"), Some(&3), "{s:?}");
        assert!(!s.mismatches[&6].contains_key("--"));
    }

    #[test]
    fn open_loop_throughput_at_a_low_rate_is_the_rate() {
        let start = Instant::now();
        let mut cfg = echo_run();
        cfg.rate = Some(1.0);
        // At 1/s for 3 s: sent at 0, 1 and 2 s, the last answered just after 2 s.
        let mut a = Stats::new().unwrap();
        a.sent = 3;
        a.answered = 3;
        a.last_sent = Some(start + Duration::from_secs(2));
        a.last_answer = Some(start + Duration::from_millis(2_001));
        let s = summarize(&cfg, start, Duration::from_secs(3), vec![a]);
        assert!((s.throughput_per_s - 1.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn open_loop_throughput_counts_the_schedule_not_sent() {
        // Review of stop 51: at 500/s for 4 s, the target gone after 1 s. The 1,500
        // requests not sent are in the schedule: the throughput is 125/s, not 500/s.
        let start = Instant::now();
        let mut cfg = echo_run();
        cfg.rate = Some(500.0);
        let mut a = Stats::new().unwrap();
        a.sent = 500;
        a.answered = 500;
        a.last_sent = Some(start + Duration::from_millis(998));
        a.last_answer = Some(start + Duration::from_millis(999));
        a.errors.insert("not_sent", 1_500);
        let s = summarize(&cfg, start, Duration::from_secs(6), vec![a]);
        assert!((s.throughput_per_s - 125.0).abs() < 1e-6, "{s:?}");
    }
}
