//! The whole switch under load, side by side with the issuer host alone, in one run:
//!
//! 1. loadgen → issuer-sim directly (the floor: what the link costs without vpan);
//! 2. loadgen → vpan serve → issuer-sim, on approvals of virtual cards (journal on);
//! 3. the same purchases on card numbers of a BIN without virtual cards, which vpan passes
//!    through untouched: its forwarding path alone, closed loop only;
//! 4. loadgen → a do-nothing framing proxy → issuer-sim (`common/framing_proxy.rs`): what
//!    any process on the link costs at the least on this machine;
//!
//! each first closed loop (throughput), then open loop at a fixed rate (latency), plus the
//! journal disk's own fdatasync latency measured in the same data directory. Prints both
//! and their ratios. All three processes share this machine's cores, as the issue asks.
//!
//! `cargo bench --bench e2e` (release build); `E2E_SECONDS` (default 10) sets each run's
//! length, `E2E_RATE` (default 10000) the open-loop rate, `E2E_IN_FLIGHT` (default 64) the
//! closed loop's requests in flight on each of its 4 connections. `E2E_COMPARE=/path/to/vpan`
//! runs that binary as a second switch beside this build's, to compare two versions in
//! one run (e.g. a copy of `target/release/vpan` built from main); with it, `E2E_PAIRS=N`
//! (default 1) runs N closed-loop pairs of the two, the order swapped every other pair, and
//! prints each pair and the medians. The compared build reads a data directory this build
//! prepared: one from before the journal's commit markers (2026-12-05, 9341b37) refuses
//! it, as any older vpan refuses a newer journal.
//!
//! The switch runs with `[runtime] worker_threads` = `E2E_WORKER_THREADS` (default 0: one
//! per core, the shipped default), the compared one with `E2E_COMPARE_WORKER_THREADS`
//! (default: the same), to weigh one thread against two side by side. A binary older than
//! that setting ignores it and runs one thread per core, whatever the header says.
//!
//! `E2E_PREPARE_ONLY=DIR` only writes the cards' data directory (`DIR/data`) and the
//! traffic (`DIR/traffic.jsonl`, and `DIR/passthrough.jsonl`), for runs by hand under
//! `perf` and the like.

// A benchmark harness: any failure should stop it loudly, with the reason.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpan::cards::{CardSpec, Cards, CardsConfig, Controls, Expiry, LedgerConfig, MerchantLock};
use vpan::pan::{Pan, luhn_check_digit};
use vpan::store::StoreConfig;

#[path = "common/framing_proxy.rs"]
mod framing_proxy;
#[path = "../tests/procs/mod.rs"]
mod procs;
#[path = "../tests/rig/mod.rs"]
mod rig;

const CARDS: usize = 1000;
const VPAN: &str = env!("CARGO_BIN_EXE_vpan");

fn main() {
    // This binary started again by itself as the framing proxy (below).
    if let Ok(upstream) = std::env::var("E2E_PROXY_UPSTREAM") {
        framing_proxy::run(&upstream);
        return;
    }
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing and
    // should not run a minute-long load test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: skipped (run it with `cargo bench --bench e2e`)");
        return;
    }
    let seconds: u64 = env_or("E2E_SECONDS", 10);
    let rate: u64 = env_or("E2E_RATE", 10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let traffic = dir.path().join("traffic.jsonl");
    let passthrough = dir.path().join("passthrough.jsonl");
    issue_cards_and_write_traffic(&data, &traffic, &passthrough);
    if let Some(keep) = std::env::var_os("E2E_PREPARE_ONLY").map(PathBuf::from) {
        // For runs by hand (perf, strace): the cards' data directory and the traffic file.
        copy_dir(&data, &keep.join("data"));
        std::fs::copy(&traffic, keep.join("traffic.jsonl")).expect("copy the traffic");
        std::fs::copy(&passthrough, keep.join("passthrough.jsonl")).expect("copy the traffic");
        println!(
            "e2e: data directory, traffic.jsonl and passthrough.jsonl written in {}",
            keep.display()
        );
        return;
    }

    let (mut sim, mut sim_addr) = spawn(
        Path::new(VPAN),
        &["issuer-sim", "--listen", "127.0.0.1:0"],
        &[],
        &["issuer simulator listening on "],
    );
    let sim_addr = sim_addr.remove(0);
    // With `E2E_COMPARE=/path/to/another/vpan`, that binary runs as a second switch on a
    // copy of the same cards, and both are measured in this run, alternately.
    let compare = std::env::var_os("E2E_COMPARE").map(PathBuf::from);
    let data_b = dir.path().join("data-compare");
    if compare.is_some() {
        copy_dir(&data, &data_b);
    }
    let threads = env_or("E2E_WORKER_THREADS", 0).to_string();
    let compare_threads = std::env::var("E2E_COMPARE_WORKER_THREADS").unwrap_or(threads.clone());
    let switch = start_switch(Path::new(VPAN), &data, &sim_addr, &threads);
    let proxy = start_framing_proxy(&sim_addr);
    let mut other = compare
        .as_deref()
        .map(|bin| start_switch(bin, &data_b, &sim_addr, &compare_threads));
    std::thread::sleep(Duration::from_millis(500)); // the issuer link signs on

    let secs = seconds.to_string();
    let in_flight = env_or("E2E_IN_FLIGHT", 64).to_string();
    let closed = [
        "--connections",
        "4",
        "--in-flight",
        &in_flight,
        "--duration",
        &secs,
    ];
    let rate_s = rate.to_string();
    let open = [
        "--connections",
        "4",
        "--in-flight",
        "512",
        "--rate",
        &rate_s,
        "--duration",
        &secs,
    ];

    println!(
        "e2e: {CARDS} virtual cards, {seconds} s per run, 2 cores shared by all three processes; \
         switch worker threads: {threads}{} (0: one per core)",
        if compare.is_some() {
            format!(", E2E_COMPARE's: {compare_threads}")
        } else {
            String::new()
        }
    );
    let direct_closed = loadgen(&sim_addr, &traffic, &closed);
    let proxy_closed = proxy.loadgen(&traffic, &closed);
    let vpan_closed = switch.loadgen(&traffic, &closed);
    // The same purchases on cards vpan did not issue: the forwarding path alone.
    let pass_closed = switch.loadgen(&passthrough, &closed);
    let other_closed = other.as_ref().map(|o| o.loadgen(&traffic, &closed));
    // More closed-loop pairs, the order swapped every other pair: this machine's speed
    // drifts by tens of percent within minutes, so one pair can mislead.
    let mut pairs = Vec::new();
    if let (Some(o), Some(first)) = (&other, &other_closed) {
        pairs.push((vpan_closed.clone(), first.clone()));
        for i in 1..env_or("E2E_PAIRS", 1) {
            let (a, b) = if i % 2 == 1 {
                let b = o.loadgen(&traffic, &closed);
                (switch.loadgen(&traffic, &closed), b)
            } else {
                let a = switch.loadgen(&traffic, &closed);
                (a, o.loadgen(&traffic, &closed))
            };
            pairs.push((a, b));
        }
    }
    let direct_open = loadgen(&sim_addr, &traffic, &open);
    let proxy_open = proxy.loadgen(&traffic, &open);
    // The journal's own group commits (write + fdatasync) during the open-loop run, from
    // its histogram on /metrics: the fdatasync latency the approvals actually waited on.
    // And vpan's own time per request (frame read to answer written), to tell its time
    // from the kernel's and the processes' scheduling.
    const COMMITS: &str = "vpan_store_commit_duration_seconds_bucket{";
    const OWN: &str = "vpan_request_duration_seconds_bucket{mti=\"0100\",";
    let commits_before = buckets(&switch.metrics, COMMITS);
    let own_before = buckets(&switch.metrics, OWN);
    let vpan_open = switch.loadgen(&traffic, &open);
    let commits = diff(&buckets(&switch.metrics, COMMITS), &commits_before);
    let own = diff(&buckets(&switch.metrics, OWN), &own_before);
    let other_open = other.as_ref().map(|o| o.loadgen(&traffic, &open));
    let fsync = fdatasync_latency(&data, 2000);

    for mut s in other.take().into_iter().chain([switch, proxy]) {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    let _ = sim.kill();
    let _ = sim.wait();

    println!();
    println!("closed loop, 4 connections x {in_flight} in flight:");
    row("  loadgen -> issuer-sim", &direct_closed);
    row("  loadgen -> framing proxy -> sim", &proxy_closed);
    println!(
        "  a do-nothing framing proxy / direct throughput: {:.1}% (the most any switch gets here)",
        100.0 * tput(&proxy_closed) / tput(&direct_closed)
    );
    cpu_row("  the proxy's", &proxy_closed);
    row("  loadgen -> vpan -> issuer-sim", &vpan_closed);
    println!(
        "  through vpan / direct throughput: {:.1}%; through vpan / through the proxy: {:.1}%",
        100.0 * tput(&vpan_closed) / tput(&direct_closed),
        100.0 * tput(&vpan_closed) / tput(&proxy_closed)
    );
    cpu_row("  vpan's", &vpan_closed);
    row("  passthrough (no card, no journal)", &pass_closed);
    println!(
        "  passthrough through vpan / direct throughput: {:.1}%",
        100.0 * tput(&pass_closed) / tput(&direct_closed)
    );
    cpu_row("  vpan's passthrough", &pass_closed);
    if let Some(o) = &other_closed {
        row("  loadgen -> E2E_COMPARE -> issuer-sim", o);
        cpu_row("  E2E_COMPARE's", o);
        println!(
            "  E2E_COMPARE / direct throughput: {:.1}%; this build / E2E_COMPARE: {:.2}x",
            100.0 * tput(o) / tput(&direct_closed),
            tput(&vpan_closed) / tput(o)
        );
    }
    if pairs.len() > 1 {
        println!(
            "  {} pairs, alternating (throughput/s and CPU us per request, this build vs E2E_COMPARE):",
            pairs.len()
        );
        for (a, b) in &pairs {
            println!(
                "    {:>7.0} vs {:>7.0}   {:>5.1} vs {:>5.1}",
                tput(a),
                tput(b),
                cpu_per_request(a),
                cpu_per_request(b)
            );
        }
        let median = |f: &dyn Fn(&(serde_json::Value, serde_json::Value)) -> f64| {
            let mut v: Vec<f64> = pairs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            (v[(n - 1) / 2] + v[n / 2]) / 2.0
        };
        println!(
            "  medians: throughput {:.0} vs {:.0}/s ({:.2}x), CPU {:.1} vs {:.1} us per request ({:.2}x)",
            median(&|p| tput(&p.0)),
            median(&|p| tput(&p.1)),
            median(&|p| tput(&p.0)) / median(&|p| tput(&p.1)),
            median(&|p| cpu_per_request(&p.0)),
            median(&|p| cpu_per_request(&p.1)),
            median(&|p| cpu_per_request(&p.0)) / median(&|p| cpu_per_request(&p.1)),
        );
    }
    println!();
    println!("open loop at {rate}/s:");
    row("  loadgen -> issuer-sim", &direct_open);
    row("  loadgen -> framing proxy -> sim", &proxy_open);
    println!(
        "  the do-nothing proxy's added latency: p50 {:.0} us, p99 {:.0} us",
        lat(&proxy_open, "p50") - lat(&direct_open, "p50"),
        lat(&proxy_open, "p99") - lat(&direct_open, "p99")
    );
    row("  loadgen -> vpan -> issuer-sim", &vpan_open);
    let added = |q: &str| lat(&vpan_open, q) - lat(&direct_open, q);
    println!(
        "  vpan's added latency: p50 {:.0} us, p99 {:.0} us",
        added("p50"),
        added("p99")
    );
    cpu_row("  vpan's", &vpan_open);
    if let Some(o) = &other_open {
        row("  loadgen -> E2E_COMPARE -> issuer-sim", o);
        cpu_row("  E2E_COMPARE's", o);
        println!(
            "  E2E_COMPARE's added latency: p50 {:.0} us, p99 {:.0} us",
            lat(o, "p50") - lat(&direct_open, "p50"),
            lat(o, "p99") - lat(&direct_open, "p99")
        );
    }
    println!(
        "  vpan's own time per request (read to written, /metrics buckets): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us",
        quantile(&own, 0.5),
        quantile(&own, 0.9),
        quantile(&own, 0.99)
    );
    let (commit_p50, commit_p99) = (quantile(&commits, 0.5), quantile(&commits, 0.99));
    println!(
        "  vpan's journal commits (write + fdatasync) during that run: {} commits, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us (from /metrics buckets); added p99 - commit p99 = {:.0} us",
        commits.last().map_or(0.0, |b| b.1),
        commit_p50,
        commit_p99,
        quantile(&commits, 0.999),
        added("p99") - commit_p99
    );
    // A commit's percentile counts commits, not requests: a 15 ms commit holds every
    // approval that arrives meanwhile. The share of the run spent in slow commits is
    // (about) the share of requests that waited behind one.
    let slow = slow_commit_time_us(&commits, 5_000.0);
    println!(
        "  time spent in commits over 5 ms: at least {:.1}% of the run (so about that share of requests waited behind one)",
        100.0 * slow / (seconds as f64 * 1e6)
    );
    println!(
        "  fdatasync of this disk alone, after the runs: p50 {:.0} us, p99 {:.0} us (added p99 - fdatasync p99 = {:.0} us)",
        fsync.0,
        fsync.1,
        added("p99") - fsync.1
    );
    let approved = vpan_closed["response_codes"]["00"].as_u64().unwrap_or(0);
    let answered = vpan_closed["answered"].as_u64().unwrap_or(0);
    println!("  approvals through vpan (closed loop): {approved} of {answered} answers");
}

/// The cumulative buckets `(le in µs, count)` of histogram series `series` (its name and
/// labels up to `le`), read from the switch's `/metrics` (scraped as the reliability
/// tests do).
fn buckets(metrics_addr: &str, series: &str) -> Vec<(f64, f64)> {
    let addr = metrics_addr.parse().expect("metrics address");
    let page = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(procs::scrape(addr));
    let prefix = format!("{series}le=\"");
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1e6
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Time (µs) spent in commits slower than `over_us`, counting each at its bucket's lower
/// bound, so a floor.
fn slow_commit_time_us(buckets: &[(f64, f64)], over_us: f64) -> f64 {
    let mut time = 0.0;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if prev.0 >= over_us {
            time += prev.0 * (n - prev.1);
        }
        prev = (le, n);
    }
    time
}

/// Bucket counts of `after` minus those of `before`.
fn diff(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket as
/// Prometheus's `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = n - prev.1;
            let share = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * share;
        }
        prev = (le, n);
    }
    f64::NAN
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn row(label: &str, s: &serde_json::Value) {
    println!(
        "{label:34} {:>9.0}/s  p50 {:>6.0} us  p90 {:>6.0} us  p99 {:>6.0} us  p99.9 {:>6.0} us  max {:>7.0} us  errors {} timeouts {}",
        tput(s),
        lat(s, "p50"),
        lat(s, "p90"),
        lat(s, "p99"),
        lat(s, "p999"),
        lat(s, "max"),
        s["errors"],
        s["timeouts"],
    );
}

/// A switch's CPU time per answered request during one loadgen run, and how many cores
/// that kept busy: the cost that decides how far the switch can go on shared cores.
fn cpu_row(who: &str, s: &serde_json::Value) {
    let cpu = s["switch_cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    let seconds = s["elapsed_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{who} CPU: {:.1} us per request ({:.2} cores busy)",
        cpu_per_request(s),
        cpu / seconds
    );
}

/// The switch's CPU time per answered request in one loadgen run, microseconds.
fn cpu_per_request(s: &serde_json::Value) -> f64 {
    let cpu = s["switch_cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    let answered = s["answered"].as_f64().unwrap_or(f64::NAN);
    cpu * 1e6 / answered
}

fn tput(s: &serde_json::Value) -> f64 {
    s["throughput_per_s"].as_f64().unwrap_or(0.0)
}

fn lat(s: &serde_json::Value, q: &str) -> f64 {
    s["latency_us"][q].as_f64().unwrap_or(f64::NAN)
}

/// Issues `CARDS` cards with caps that never bind, and writes one 1.00 EUR purchase per
/// card to `traffic`; and to `passthrough`, the same purchases on card numbers of another
/// BIN, where no card is issued: the switch forwards those untouched (no card, no journal).
fn issue_cards_and_write_traffic(data: &Path, traffic: &Path, passthrough: &Path) {
    let store = StoreConfig {
        data_dir: data.to_path_buf(),
        key_file: Default::default(),
        ..Default::default()
    };
    let (cards, _) = Cards::open(&CardsConfig::default(), &store, LedgerConfig::default())
        .expect("open the data dir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut out = std::fs::File::create(traffic).expect("traffic file");
    let mut pass = std::fs::File::create(passthrough).expect("passthrough traffic file");
    writeln!(out, "# e2e bench: one purchase per virtual card").expect("write");
    writeln!(
        pass,
        "# e2e bench: one purchase per card of a BIN without virtual cards"
    )
    .expect("write");
    for i in 0..CARDS {
        let spec = CardSpec {
            pan: test_pan(VIRTUAL_BIN, i),
            pan_expiry: Expiry(*b"2912"),
            controls: Controls {
                currency: 978,
                amount_limit: 1_000_000_000_000,
                per_transaction_limit: None,
                max_uses: None,
                valid_until: now + 365 * 86_400,
                merchant_lock: MerchantLock::None,
                mcc_allow: vec![],
                mcc_block: vec![],
            },
        };
        let (view, durable) = cards.issue(&spec, now).expect("issue");
        durable.wait().expect("durable");
        write_purchase(&mut out, view.vpan.expose(), view.expiry.as_str());
        write_purchase(&mut pass, test_pan(PASSTHROUGH_BIN, i).expose(), "2912");
    }
}

/// The cards' BIN (their real card numbers', so their vPANs' too).
const VIRTUAL_BIN: &str = "497010";
/// A BIN where no card is issued: its card numbers are not vPANs.
const PASSTHROUGH_BIN: &str = "497011";

/// One traffic line: a 1.00 EUR purchase on `pan`, expiring `expiry` (YYMM).
fn write_purchase(out: &mut std::fs::File, pan: &str, expiry: &str) {
    writeln!(
        out,
        r#"{{"fields": {{"t": "0100", "2": "{pan}", "3": "000000", "4": "000000000100", "12": "143015", "13": "1126", "14": "{expiry}", "18": "5734", "22": "812", "25": "59", "32": "12345678901", "37": "633014000123", "41": "TERM0001", "42": "SHOP00000000001", "43": "EXAMPLE SHOP             PARIS        FR", "49": "978"}}, "expect": "00"}}"#
    )
    .expect("write");
}

/// A generated Luhn-valid test PAN in `bin`.
fn test_pan(bin: &str, i: usize) -> Pan {
    let mut digits = format!("{bin}{:09}", i * 7919 % 1_000_000_000).into_bytes();
    let check = luhn_check_digit(&digits);
    digits.push(b'0' + check);
    Pan::from_digits_checked(&digits).expect("test PAN")
}

/// A process on the link under test (a switch, or the framing proxy, which has no metrics
/// address): its process, network address and metrics address.
struct Switch {
    child: Child,
    addr: String,
    metrics: String,
}

impl Switch {
    /// A loadgen run through this switch; its summary gains `switch_cpu_seconds`, the CPU
    /// time the switch used meanwhile.
    fn loadgen(&self, traffic: &Path, extra: &[&str]) -> serde_json::Value {
        let before = cpu_seconds(self.child.id());
        let mut summary = loadgen(&self.addr, traffic, extra);
        summary["switch_cpu_seconds"] = (cpu_seconds(self.child.id()) - before).into();
        summary
    }
}

/// CPU time (user and system) process `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat`: it counts every thread, those that have ended too.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc (Linux only)");
    // Fields after the command name (in parentheses, which may hold spaces): utime and
    // stime are the 14th and 15th of the line, the 12th and 13th after it.
    let after_name = &stat[stat.rfind(')').expect("a /proc stat line") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks_per_second()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), the unit of `/proc` CPU times.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK")
    })
}

/// Starts a switch (`bin serve`) on `data` toward the simulator, with `worker_threads`.
fn start_switch(bin: &Path, data: &Path, sim_addr: &str, worker_threads: &str) -> Switch {
    let (child, mut addrs) = spawn(
        bin,
        &["serve"],
        &[
            ("VPAN_NETWORK_LISTEN", "127.0.0.1:0"),
            ("VPAN_METRICS_LISTEN", "127.0.0.1:0"),
            ("VPAN_API_LISTEN", "127.0.0.1:0"),
            ("VPAN_ISSUER_CONNECT", sim_addr),
            ("VPAN_STORE_DATA_DIR", data.to_str().expect("utf-8 path")),
            ("VPAN_NETWORK_MAX_IN_FLIGHT", "4096"),
            ("VPAN_RUNTIME_WORKER_THREADS", worker_threads),
            ("RUST_LOG", "warn,vpan::app=info"),
        ],
        &[
            "network listener bound (ISO 8583) addr=",
            "metrics listener bound (GET /metrics) addr=",
        ],
    );
    let metrics = addrs.pop().expect("metrics address");
    let addr = addrs.pop().expect("network address");
    Switch {
        child,
        addr,
        metrics,
    }
}

/// Starts this binary again as the do-nothing framing proxy toward the simulator.
fn start_framing_proxy(sim_addr: &str) -> Switch {
    let me = std::env::current_exe().expect("the bench's own binary");
    let (child, mut addrs) = spawn(
        &me,
        &[],
        &[("E2E_PROXY_UPSTREAM", sim_addr)],
        &["framing proxy listening on "],
    );
    Switch {
        child,
        addr: addrs.remove(0),
        metrics: String::new(),
    }
}

/// Copies a data directory (flat: journal, snapshot, key, token, certificate).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("compare data dir");
    for entry in std::fs::read_dir(from).expect("data dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Starts `BIN ARGS` and waits for a log line containing each of `markers` followed by an
/// address (returned in the markers' order); keeps draining its stderr afterwards.
fn spawn(
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    markers: &[&str],
) -> (Child, Vec<String>) {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vpan");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let markers: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    let wanted = markers.len();
    // Its last lines, to say why it never logged its addresses (a build that refuses the
    // prepared data directory, say).
    let said = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let heard = said.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(mut lines) = heard.lock() {
                if lines.len() == 10 {
                    lines.pop_front();
                }
                lines.push_back(line.clone());
            }
            for (i, marker) in markers.iter().enumerate() {
                if let Some(at) = line.find(marker.as_str()) {
                    let rest = &line[at + marker.len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send((i, addr));
                }
            }
        }
    });
    let mut addrs = vec![String::new(); wanted];
    for _ in 0..wanted {
        let Ok((i, addr)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let lines: Vec<String> = said
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            panic!(
                "{} {} did not log its addresses; its last words:\n{}",
                bin.display(),
                args.join(" "),
                lines.join("\n")
            );
        };
        addrs[i] = addr;
    }
    (child, addrs)
}

fn loadgen(target: &str, traffic: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(VPAN)
        .args(["loadgen", "--target", target, "--traffic"])
        .arg(traffic)
        .args(extra)
        .arg("--json")
        .stderr(Stdio::null())
        .output()
        .expect("run loadgen");
    serde_json::from_slice(&out.stdout).expect("loadgen --json summary")
}

/// p50 and p99 of a 4 KiB write + fdatasync in `dir`, in microseconds: the floor under any
/// durable approval. The writes go over zeros written and synced first, as the journal's
/// do (its segments grow by zero-filled extents), so that no sync changes the file's size.
fn fdatasync_latency(dir: &Path, n: usize) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fdatasync-probe");
    let f = std::fs::File::create(&path).expect("probe file");
    let block = [0u8; 4096];
    f.write_all_at(&vec![0u8; n * block.len()], 0)
        .expect("zeros");
    f.sync_all().expect("fsync");
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&block, (i * block.len()) as u64)
            .expect("write");
        f.sync_data().expect("fdatasync");
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (q(0.5), q(0.99))
}
