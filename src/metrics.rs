//! Metrics: the contract's names in one place, each described once, and the `/metrics`
//! endpoint on its own listener.
//!
//! The names, types and labels are part of the external contract (dashboards and alert
//! rules depend on them), so they are constants here and nowhere else. Labels take values
//! from small fixed sets only (MTI, response code, `switch`/`issuer`, a reject reason,
//! a card status): never a card number.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::api::routes::health_response;

/// Counter of answered requests, by `mti`, `response_code` and `decided_by`.
pub const REQUESTS_TOTAL: &str = "vpan_requests_total";
/// Histogram of frame-in to response-out time, by `mti`.
pub const REQUEST_DURATION: &str = "vpan_request_duration_seconds";
/// Histogram of the issuer host's answer time.
pub const ISSUER_REQUEST_DURATION: &str = "vpan_issuer_request_duration_seconds";
/// Counter of requests the issuer did not answer within `issuer.timeout_ms`.
pub const ISSUER_TIMEOUTS_TOTAL: &str = "vpan_issuer_timeouts_total";
/// Gauge of connections to the issuer host that are up and signed on.
pub const ISSUER_CONNECTED: &str = "vpan_issuer_connected";
/// Gauge of open network-side connections.
pub const NETWORK_CONNECTIONS: &str = "vpan_network_connections";
/// Counter of frames refused, by `reason`.
pub const FRAMES_REJECTED_TOTAL: &str = "vpan_frames_rejected_total";
/// Every `reason` of [`FRAMES_REJECTED_TOTAL`]: a connection refused over
/// `max_connections`, a length header over `max_frame_bytes` or unreadable, a socket
/// error, a peer leaving mid-frame, a peer too slow to read its answers or to send a whole
/// frame, a frame whose MTI or STAN cannot be read (dropped), a format error answered 30,
/// a wrong or missing MAC answered 63, an answer longer than the link's length header can
/// say (dropped), a response from the network, which vpan sent no request (dropped), a
/// frame left unread when vpan closed the connection or sent after (dropped unanswered);
/// on the issuer link, a frame from the host that does not parse or has no DE 11
/// (`issuer_unreadable`), and an answer that matches no request waiting (`issuer_unmatched`:
/// late past its timeout, repeated, or of another class, acquirer or terminal).
pub const REJECT_REASONS: [&str; 15] = [
    "max_connections",
    "too_large",
    "bad_length",
    "io",
    "truncated",
    "write_stalled",
    "read_timeout",
    "unreadable",
    "format_error",
    "bad_mac",
    "answer_too_large",
    "not_a_request",
    "after_close",
    "issuer_unreadable",
    "issuer_unmatched",
];
/// Gauge of cards, by `status`.
pub const CARDS: &str = "vpan_cards";
/// Histogram of one journal group commit (write + fdatasync).
pub const STORE_COMMIT_DURATION: &str = "vpan_store_commit_duration_seconds";
/// Gauge of the reversals the issuer link owes the issuer host, in the book of reversals
/// owed and not yet answered. Not in the contract, nor the next: what an operator watches
/// while the issuer is away.
pub const ISSUER_REVERSALS_OWED: &str = "vpan_issuer_reversals_owed";
/// Gauge of when the oldest of those was written to the book (seconds since the Unix
/// epoch; at start for those recovered), 0 when none is owed: its age says whether the
/// issuer applies them, which their count alone cannot (a slow issuer keeps some owed all
/// the time, each paid within seconds).
pub const ISSUER_OLDEST_REVERSAL_OWED: &str = "vpan_issuer_oldest_reversal_owed_timestamp_seconds";
/// Counter of the records of the book of reversals owed that could not be written: a debt
/// (its reversal is sent, but a restart before it is paid would forget it) or a debt's
/// paid mark (its reversal goes again at the next start, which the issuer takes for a
/// repeat). The book fails before the journal on a full disk: the journal writes into
/// room it reserved ahead.
pub const ISSUER_REVERSALS_UNRECORDED_TOTAL: &str = "vpan_issuer_reversals_unrecorded_total";
/// Gauge of the reversals owed in memory only: their record could not be written, no later
/// write of it landed, and the issuer has not answered them yet. A restart now would
/// forget them (the alert says to keep vpan running until this is 0).
pub const ISSUER_REVERSALS_UNRECORDED: &str = "vpan_issuer_reversals_unrecorded";

/// Counter of the events after which the issuer must reconcile, by `reason`
/// ([`Reconcile`]): a real account may stay charged, or an advice stay untold, and only
/// the log said so.
pub const RECONCILE_REQUIRED_TOTAL: &str = "vpan_reconcile_required_total";

/// Why the issuer must reconcile: the `reason` of [`RECONCILE_REQUIRED_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// A reversal owed since an earlier run does not read in the issuer link's layout.
    DebtUnreadable,
    /// The reversal of a request cannot be built.
    ReversalUnbuildable,
    /// A reversal does not fit the issuer link's layout, and is given up.
    ReversalTooLarge,
    /// The issuer host drops its connection at each try of a reversal: it may refuse it.
    ReversalRefused,
    /// A reversal kept in memory only was not answered before shutdown.
    ReversalUnsentAtStop,
    /// The issuer answered a reversal the link sent on its own with a code that neither
    /// applies it nor says there is nothing to reverse.
    ReversalDeclined,
    /// The issuer did not reverse its partial approval that a stand-in's advice replaces.
    PartialApprovalNotReversed,
}

impl Reconcile {
    /// Every reason, made at 0 at start.
    pub const ALL: [Reconcile; 7] = [
        Reconcile::DebtUnreadable,
        Reconcile::ReversalUnbuildable,
        Reconcile::ReversalTooLarge,
        Reconcile::ReversalRefused,
        Reconcile::ReversalUnsentAtStop,
        Reconcile::ReversalDeclined,
        Reconcile::PartialApprovalNotReversed,
    ];

    /// Its `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reconcile::DebtUnreadable => "debt_unreadable",
            Reconcile::ReversalUnbuildable => "reversal_unbuildable",
            Reconcile::ReversalTooLarge => "reversal_too_large",
            Reconcile::ReversalRefused => "reversal_refused",
            Reconcile::ReversalUnsentAtStop => "reversal_unsent_at_stop",
            Reconcile::ReversalDeclined => "reversal_declined",
            Reconcile::PartialApprovalNotReversed => "partial_approval_not_reversed",
        }
    }

    /// Counts one, beside the log's error that names it.
    pub fn count(self) {
        metrics::counter!(RECONCILE_REQUIRED_TOTAL, "reason" => self.label()).increment(1);
    }
}

/// Gauge of when this process started (seconds since the Unix epoch): a restart changes
/// it, which a service manager's `Restart=` otherwise hides between two scrapes.
pub const START_TIME: &str = "vpan_start_time_seconds";

/// Gauge of each `/healthz` check, by `check` (`network`, `store`, `issuer`): 1 up, 0
/// down, as `/healthz` judges it, at each scrape. A failed journal shows nowhere else
/// until a request is answered 96, which a quiet hour may not bring.
pub const UP: &str = "vpan_up";

/// Gauge of `network.max_connections`, and the next two of `issuer.timeout_ms` in seconds
/// and `issuer.connections`: the settings the alert rules compare the metrics with, so
/// that a changed config does not leave them comparing with the defaults.
pub const NETWORK_MAX_CONNECTIONS: &str = "vpan_network_max_connections";
/// See [`NETWORK_MAX_CONNECTIONS`].
pub const ISSUER_TIMEOUT: &str = "vpan_issuer_timeout_seconds";
/// See [`NETWORK_MAX_CONNECTIONS`]: one issuer connection of two down is seen only against
/// it.
pub const ISSUER_CONNECTIONS_CONFIGURED: &str = "vpan_issuer_connections_configured";

/// Gauge of when the API's TLS certificate stops being valid (its `notAfter`), Unix seconds:
/// it is read at start only, so a renewal needs a restart.
pub const API_CERTIFICATE_EXPIRY: &str = "vpan_api_certificate_expiry_timestamp_seconds";

/// The metric names of the contract (CONTRACT.md §6).
pub const CONTRACT: [&str; 9] = [
    REQUESTS_TOTAL,
    REQUEST_DURATION,
    ISSUER_REQUEST_DURATION,
    ISSUER_TIMEOUTS_TOTAL,
    ISSUER_CONNECTED,
    NETWORK_CONNECTIONS,
    FRAMES_REJECTED_TOTAL,
    CARDS,
    STORE_COMMIT_DURATION,
];

/// vpan's own metrics beside the contract's: those of the reversals owed, the health
/// checks, the issuer's reconciliations, the process's start, and the settings the alerts
/// read, and the API certificate's expiry.
pub const OWN: [&str; 11] = [
    ISSUER_REVERSALS_OWED,
    ISSUER_OLDEST_REVERSAL_OWED,
    ISSUER_REVERSALS_UNRECORDED_TOTAL,
    ISSUER_REVERSALS_UNRECORDED,
    UP,
    RECONCILE_REQUIRED_TOTAL,
    START_TIME,
    NETWORK_MAX_CONNECTIONS,
    ISSUER_TIMEOUT,
    ISSUER_CONNECTIONS_CONFIGURED,
    API_CERTIFICATE_EXPIRY,
];

/// Sets the gauges of the settings the alert rules compare with, and of the API
/// certificate's expiry (Unix seconds).
pub fn publish_settings(
    max_connections: usize,
    issuer_timeout: std::time::Duration,
    issuer_connections: usize,
    api_certificate_expires: u64,
) {
    metrics::gauge!(API_CERTIFICATE_EXPIRY).set(api_certificate_expires as f64);
    metrics::gauge!(NETWORK_MAX_CONNECTIONS).set(max_connections as f64);
    metrics::gauge!(ISSUER_TIMEOUT).set(issuer_timeout.as_secs_f64());
    metrics::gauge!(ISSUER_CONNECTIONS_CONFIGURED).set(issuer_connections as f64);
}

/// Every metric name vpan exports, the contract's and its own, for the tests that check
/// dashboards, alert rules and the first scrape.
pub fn all() -> impl Iterator<Item = &'static str> {
    CONTRACT.into_iter().chain(OWN)
}

/// Latency buckets in seconds, from 10 µs (the switch's own work) to 10 s (past any
/// issuer timeout), so both vpan's microseconds and the issuer's milliseconds resolve.
/// 1.5 s and 2 s are bounds of their own: an answer within the default 1.5 s
/// `issuer.timeout_ms` falls at or below the first, and the 91 of a request that waited it
/// out, which comes a little after it, between the two (`tests/deploy.rs` times one); a 96
/// after the journal's 2 s stall limit, counted from a commit that began after the request
/// was read, above the second.
const LATENCY_BUCKETS: [f64; 21] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
];

/// Finer buckets for the journal's group commit, which sits between 50 µs and tens of
/// milliseconds: its p99 is what a durable approval waits on, and is read against the
/// switch's added latency (`cargo bench --bench e2e`). Up to 5 s, past the journal's 2 s
/// stall limit, so the commits just before it fails closed are not all one `+Inf`.
const COMMIT_BUCKETS: [f64; 25] = [
    0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_4, 0.000_5, 0.000_75, 0.001, 0.001_5,
    0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle, so several `App`s in one test process share it) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // A full-name match wins over the suffix one.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STORE_COMMIT_DURATION.into()),
                        &COMMIT_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is already global (an embedding program
            // chose its own); vpan then renders an empty page rather than refusing to run.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            zero();
            // Installed once per process, as it starts serving.
            metrics::gauge!(START_TIME).set(crate::cards::card::unix_now() as f64);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by request MTI, DE 39 and who decided"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "From a request frame read to its response framed for writing, by request MTI"
    );
    describe_histogram!(
        ISSUER_REQUEST_DURATION,
        Unit::Seconds,
        "From a request sent to the issuer host to its answer (its sign-ons and echoes too)"
    );
    describe_counter!(
        ISSUER_TIMEOUTS_TOTAL,
        "Requests the issuer host did not answer within issuer.timeout_ms (sign-ons and echoes too)"
    );
    describe_gauge!(
        ISSUER_CONNECTED,
        "Connections to the issuer host, up and signed on"
    );
    describe_gauge!(NETWORK_CONNECTIONS, "Open network-side connections");
    describe_counter!(
        FRAMES_REJECTED_TOTAL,
        "Frames refused, by reason: the network's, and the issuer host's (reasons issuer_*)"
    );
    describe_gauge!(CARDS, "Virtual cards, by status");
    describe_gauge!(
        NETWORK_MAX_CONNECTIONS,
        "network.max_connections: network-side connections past it are refused"
    );
    describe_gauge!(
        ISSUER_TIMEOUT,
        Unit::Seconds,
        "issuer.timeout_ms, in seconds: a request the issuer host has not answered by then gets 91"
    );
    describe_gauge!(
        ISSUER_CONNECTIONS_CONFIGURED,
        "issuer.connections: the connections to the issuer host vpan keeps up"
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "One journal group commit: write and fdatasync"
    );
    describe_gauge!(
        ISSUER_REVERSALS_OWED,
        "Reversals owed to the issuer host: written to the book of reversals owed, not yet answered"
    );
    describe_gauge!(
        ISSUER_OLDEST_REVERSAL_OWED,
        Unit::Seconds,
        "When the oldest reversal owed to the issuer host was written to the book (at start for those recovered), 0 when none"
    );
    describe_counter!(
        ISSUER_REVERSALS_UNRECORDED_TOTAL,
        "Reversals owed (or their paid marks) that could not be written to the book of reversals owed: sent, but a restart before they are paid forgets them"
    );
    describe_gauge!(
        ISSUER_REVERSALS_UNRECORDED,
        "Reversals owed in memory only: their record could not be written, and the issuer has not answered them; a restart now forgets them"
    );
    describe_counter!(
        RECONCILE_REQUIRED_TOTAL,
        "Events after which the issuer must reconcile (a reversal that cannot be sent or was refused, a partial approval not reversed), by reason"
    );
    describe_gauge!(
        API_CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "When the API's TLS certificate stops being valid (its notAfter), in seconds since the Unix epoch; read at start"
    );
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "When this vpan process started, in seconds since the Unix epoch"
    );
    describe_gauge!(
        UP,
        "Each /healthz check, by check: 1 up, 0 down, as /healthz judges it when scraped"
    );
}

/// Publishes the series known in advance at zero from the start, so a scrape (and an
/// alert on `rate()`) sees them before the first event rather than a missing series.
fn zero() {
    // Registered at start, so that a scrape of a switch that has served nothing yet lists
    // them (empty) as it lists the counters.
    let _ = metrics::histogram!(ISSUER_REQUEST_DURATION);
    let _ = metrics::histogram!(STORE_COMMIT_DURATION);
    metrics::counter!(ISSUER_TIMEOUTS_TOTAL).absolute(0);
    metrics::gauge!(ISSUER_CONNECTED).set(0.0);
    metrics::gauge!(ISSUER_REVERSALS_OWED).set(0.0);
    metrics::gauge!(ISSUER_OLDEST_REVERSAL_OWED).set(0.0);
    metrics::counter!(ISSUER_REVERSALS_UNRECORDED_TOTAL).absolute(0);
    metrics::gauge!(ISSUER_REVERSALS_UNRECORDED).set(0.0);
    for reason in Reconcile::ALL {
        metrics::counter!(RECONCILE_REQUIRED_TOTAL, "reason" => reason.label()).absolute(0);
    }
    metrics::gauge!(NETWORK_CONNECTIONS).set(0.0);
    for reason in REJECT_REASONS {
        metrics::counter!(FRAMES_REJECTED_TOTAL, "reason" => reason).absolute(0);
    }
    // Labelled series appear with their first event, unless made at zero beforehand (as
    // Prometheus advises for label sets known in advance): so that a scrape of a switch
    // that has served nothing lists every metric of the contract, each request type vpan
    // answers starts with its usual answer at zero and an empty latency histogram.
    for (mti, decided_by) in STARTING_REQUEST_SERIES {
        metrics::counter!(REQUESTS_TOTAL, "mti" => mti, "response_code" => "00", "decided_by" => decided_by)
            .absolute(0);
        let _ = metrics::histogram!(REQUEST_DURATION, "mti" => mti);
    }
    // And the switch's own answers an alert waits for: a series that first appears
    // already counting has no earlier sample, so `rate()` and `increase()` never see its
    // first burst (a spell of 96s within one scrape would go unseen).
    for (mti, _) in STARTING_REQUEST_SERIES
        .iter()
        .filter(|(mti, _)| *mti != "0800")
    {
        for code in ["91", "96"] {
            metrics::counter!(REQUESTS_TOTAL, "mti" => *mti, "response_code" => code, "decided_by" => "switch")
                .absolute(0);
        }
    }
}

/// The request types vpan answers, with who usually decides them: the series made at zero
/// at start.
const STARTING_REQUEST_SERIES: [(&str, &str); 7] = [
    ("0100", "issuer"),
    ("0120", "issuer"),
    ("0200", "issuer"),
    ("0220", "issuer"),
    ("0400", "issuer"),
    ("0420", "issuer"),
    ("0800", "switch"),
];

/// Scrapers served at once: a few Prometheus servers and an operator's curl need far
/// fewer; the cap keeps the port from holding the process's file descriptors.
const MAX_SCRAPERS: usize = 64;

/// Serves `GET /metrics` on `listener` until `shutdown`, with the API's header deadline and
/// at most [`MAX_SCRAPERS`] connections at once; and `GET /healthz`, as the API answers it,
/// for probes on the operators' side: plain HTTP, no certificate to trust, and out of
/// reach of whoever fills the API's connections.
pub async fn serve(
    mut listener: TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let health_scraped = health.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || async move { health_response(&health) }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    publish_health(&health_scraped);
                    handle.run_upkeep();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        without_long_digit_runs(handle.render()),
                    )
                }
            }),
        );
    crate::api::serve_http(&mut listener, app, Some(MAX_SCRAPERS), shutdown, "metrics").await;
}

/// Sets [`UP`] from each health check, as `/healthz` would answer now.
fn publish_health(health: &Health) {
    for (check, up) in health.run() {
        metrics::gauge!(UP, "check" => check).set(if up { 1.0 } else { 0.0 });
    }
}

/// Digits in a row from which a value could be read as a card number (the shortest PAN).
const CARD_LIKE_DIGITS: usize = 13;

/// The page with every sample value that holds 13 digits in a row written shorter. A
/// histogram's `_sum` prints as its float's every digit (`0.008356628999999996`), and a
/// scanner looking for card numbers (13 to 19 digits, a Luhn check) in the page would find
/// some; nine significant digits say as much as a latency sum means.
fn without_long_digit_runs(page: String) -> String {
    let card_like = |text: &str| {
        text.split(|c: char| !c.is_ascii_digit())
            .any(|run| run.len() >= CARD_LIKE_DIGITS)
    };
    if !card_like(&page) {
        return page;
    }
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        match line.rsplit_once(' ') {
            Some((series, value)) if !line.starts_with('#') && card_like(value) => {
                out.push_str(series);
                out.push(' ');
                match value.parse::<f64>() {
                    Ok(v) => out.push_str(&format!("{v:.8e}")),
                    Err(_) => out.push_str(value),
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Binds the metrics listener (port 0 allowed) and returns it with its bound address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sample_value_holds_a_run_of_digits_as_long_as_a_card_number() {
        // A counter as long as a card number: a generated one, so no real card is written.
        let card = crate::pan::test_pan("497010");
        let page = format!(
            "# HELP x a histogram\n\
             x_bucket{{le=\"0.5\"}} 3\n\
             x_sum 0.008356628999999996\n\
             x_count 3\n\
             y_total {card}\n"
        );
        let out = without_long_digit_runs(page);
        let counter = card.parse::<f64>().unwrap();
        assert_eq!(
            out,
            format!(
                "# HELP x a histogram\n\
                 x_bucket{{le=\"0.5\"}} 3\n\
                 x_sum 8.35662900e-3\n\
                 x_count 3\n\
                 y_total {counter:.8e}\n"
            )
        );
        assert!(
            !out.split(|c: char| !c.is_ascii_digit())
                .any(|run| run.len() >= CARD_LIKE_DIGITS),
            "{out}"
        );
        // Prometheus reads them back as the values they round (nine significant digits).
        assert_eq!("8.35662900e-3".parse::<f64>().unwrap(), 0.008356629);
        let back = format!("{counter:.8e}").parse::<f64>().unwrap();
        assert!((back - counter).abs() / counter < 1e-8);
        let fine = "x_sum 0.25\nx_count 123456789012\n".to_string();
        assert_eq!(without_long_digit_runs(fine.clone()), fine);
    }

    #[tokio::test]
    async fn each_health_check_is_scraped_as_vpan_up() {
        let handle = install();
        // Checks of names no App has: the recorder is the process's, and the app tests
        // running beside this one publish their own checks in it.
        let health = Arc::new(
            Health::new()
                .check("scraped_down", || false)
                .check("scraped_up", || true),
        );
        let (listener, addr) = bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, handle, health, stop.clone()));
        let page = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains("\nvpan_up{check=\"scraped_down\"} 0\n"),
            "{page}"
        );
        assert!(
            page.contains("\nvpan_up{check=\"scraped_up\"} 1\n"),
            "{page}"
        );
        stop.cancel();
        server.await.unwrap();
    }

    #[test]
    fn the_process_start_is_exported_in_unix_seconds() {
        let page = install().render();
        let started: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("vpan_start_time_seconds "))
            .unwrap_or_else(|| panic!("{page}"))
            .parse()
            .unwrap();
        let now = crate::cards::card::unix_now() as f64;
        // This test process started within the last hour.
        assert!(
            started <= now && started > now - 3600.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn the_journal_commit_histogram_has_its_own_finer_buckets() {
        let handle = install();
        metrics::histogram!(STORE_COMMIT_DURATION).record(0.000_12);
        let page = handle.render();
        assert!(
            page.contains("vpan_store_commit_duration_seconds_bucket{le=\"0.00015\"}"),
            "{page}"
        );
        assert!(page.contains("vpan_store_commit_duration_seconds_bucket{le=\"0.0075\"}"));
        // The other latency histograms keep the general buckets.
        metrics::histogram!(REQUEST_DURATION, "mti" => "0200").record(0.000_2);
        assert!(
            !handle
                .render()
                .contains("vpan_request_duration_seconds_bucket{mti=\"0200\",le=\"0.00015\"}")
        );
    }

    #[test]
    fn the_switchs_own_91_and_96_are_listed_before_the_first_one() {
        let page = install().render();
        for mti in ["0100", "0200", "0120", "0220", "0400", "0420"] {
            for code in ["91", "96"] {
                let series = format!(
                    "vpan_requests_total{{mti=\"{mti}\",response_code=\"{code}\",decided_by=\"switch\"}}"
                );
                assert!(page.contains(&series), "{series} missing:\n{page}");
            }
        }
        assert!(page.contains("vpan_request_duration_seconds_bucket{mti=\"0100\",le=\"2\"}"));
    }

    #[test]
    fn latency_metrics_render_as_histograms_with_their_descriptions() {
        let handle = install();
        // An MTI no other test sends: the recorder is the process's, and the app tests
        // running beside this one record their 0100s in it.
        metrics::histogram!(REQUEST_DURATION, "mti" => "0190").record(0.000_2);
        metrics::counter!(REQUESTS_TOTAL, "mti" => "0190", "response_code" => "00", "decided_by" => "issuer").increment(1);
        let page = handle.render();
        assert!(
            page.contains("# TYPE vpan_request_duration_seconds histogram"),
            "{page}"
        );
        assert!(
            page.contains("vpan_request_duration_seconds_bucket{mti=\"0190\",le=\"0.00025\"} 1"),
            "{page}"
        );
        assert!(page.contains("# HELP vpan_requests_total"));
        assert!(page.contains("# TYPE vpan_requests_total counter"));
    }
}
