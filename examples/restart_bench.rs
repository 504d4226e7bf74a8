//! Restart measurement: how long until 1M cards and 5M authorizations are ready to serve.
//!
//! ```sh
//! cargo run --release --example restart_bench                 # 1M cards, 5M authorizations
//! cargo run --release --example restart_bench -- 100000 500000  # smaller
//! # as a switch with the default snapshot policy would leave it: a snapshot after 4M
//! # authorizations, 1M after it; set up once, then time restarts:
//! VPAN_BENCH_DIR=target/rb cargo run --release --example restart_bench -- 1000000 5000000 1000000
//! VPAN_BENCH_DIR=target/rb cargo run --release --example restart_bench
//! ```
//!
//! Builds the state through the real API (issue, authorize, complete: every record goes
//! through the journal). Without `VPAN_BENCH_DIR` it then times `Cards::open` twice:
//! replaying the whole journal (the worst case: no snapshot was ever taken), and from a
//! snapshot alone. Prints wall and CPU time (the machine may be shared) and RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: panics are fine

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::RngExt;
use vpan::cards::vpan::random_luhn;
use vpan::cards::{
    AcceptorId, Amounts, AuthRequest, CardKey, CardSpec, Cards, CardsConfig, Controls, Decision,
    Expiry, IssuerOutcome, Kind, LedgerConfig, MerchantLock, TxKey,
};
use vpan::pan::Pan;
use vpan::store::StoreConfig;

/// The allocator of the `vpan` binary, so that restart time and memory are the switch's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: u64 = 1_795_706_982;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// CPU seconds used by this process so far (utime + stime from /proc, clock ticks of 10 ms).
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A made-up Luhn-valid card number in BIN 497010.
fn test_pan() -> Pan {
    Pan::from_digits(random_luhn("497010", 16).as_bytes()).unwrap()
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_cards = args.first().copied().unwrap_or(1_000_000);
    let n_auths = args.get(1).copied().unwrap_or(5_000_000);
    // Authorizations after the last snapshot (the snapshot policy's default is one every
    // 2,000,000 records, i.e. 1,000,000 authorizations): what a restart replays.
    let tail = args.get(2).copied().unwrap_or(1_000_000).min(n_auths);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let temp = tempfile::tempdir_in(base).unwrap();
    // VPAN_BENCH_DIR keeps the data between runs (set up once, then time restarts only).
    let kept = std::env::var_os("VPAN_BENCH_DIR").map(std::path::PathBuf::from);
    let data_dir = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let reuse = data_dir.join("pan.key").exists();
    let store = StoreConfig {
        data_dir: data_dir.clone(),
        key_file: Default::default(),
        ..Default::default()
    };
    let open = || Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()).unwrap();

    let started = Instant::now();
    if reuse {
        let cpu = process_cpu_s();
        let t = Instant::now();
        let (cards, rec) = open();
        println!(
            "restart: {:.2} s wall, {:.2} s CPU ({rec:?}), RSS {:.0} MB",
            t.elapsed().as_secs_f64(),
            process_cpu_s() - cpu,
            rss_mb()
        );
        if std::env::args().any(|a| a == "--snapshot") {
            let t = Instant::now();
            let report = cards.snapshot().unwrap();
            eprintln!("snapshot: {report:?} in {:.2} s", t.elapsed().as_secs_f64());
        }
        return;
    }
    let keys: Vec<CardKey> = {
        let (cards, _) = open();
        let keys: Vec<CardKey> = std::thread::scope(|s| {
            let per = n_cards / 2;
            let hs: Vec<_> = (0..2)
                .map(|t| {
                    let cards = &cards;
                    s.spawn(move || {
                        let mut keys = Vec::new();
                        let mut last = None;
                        let count = if t == 0 { per } else { n_cards - per };
                        for _ in 0..count {
                            let mut spec = CardSpec {
                                pan: test_pan(),
                                pan_expiry: Expiry(*b"2912"),
                                controls: Controls {
                                    currency: 978,
                                    amount_limit: 1_000_000_000,
                                    per_transaction_limit: None,
                                    max_uses: None,
                                    valid_until: NOW + 86_400 * 30,
                                    merchant_lock: MerchantLock::None,
                                    mcc_allow: vec![],
                                    mcc_block: vec![],
                                },
                            };
                            // A million cards in one BIN leave about one real card in a
                            // thousand drawn equal to a vPAN already made: draw again.
                            let (v, d) = loop {
                                match cards.issue(&spec, NOW) {
                                    Err(vpan::cards::IssueError::Invalid(why))
                                        if why.contains("a virtual card number") =>
                                    {
                                        spec.pan = test_pan();
                                    }
                                    issued => break issued.unwrap(),
                                }
                            };
                            keys.push(CardKey::of(&v.vpan));
                            last = Some(d);
                        }
                        if let Some(d) = last {
                            d.wait().unwrap();
                        }
                        keys
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        eprintln!(
            "issued {} cards in {:.1} s",
            keys.len(),
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                let (cards, keys, counter, kept) = (&cards, &keys, &counter, &kept);
                s.spawn(move || {
                    let mut rng = rand::rng();
                    let mut last = None;
                    loop {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        if n >= n_auths {
                            break;
                        }
                        if n == n_auths - tail && kept.is_some() {
                            let t = Instant::now();
                            let r = cards.snapshot().unwrap();
                            eprintln!(
                                "snapshot after {n} authorizations: {r:?} in {:.1} s",
                                t.elapsed().as_secs_f64()
                            );
                        }
                        let stan = format!("{:06}", n % 1_000_000);
                        let de7 = format!("{:010}", n / 1_000_000);
                        let req = AuthRequest {
                            mti: *b"0100",
                            kind: Kind::Purchase,
                            amounts: Amounts {
                                transaction: rng.random_range(1..10_000),
                                transaction_currency: 978,
                                billing: None,
                            },
                            expiry: None,
                            mcc: Some(5411),
                            acceptor: AcceptorId::new(b"SHOP-A"),
                            key: TxKey::new(b"0100", stan.as_bytes(), de7.as_bytes(), b"1", b"T1")
                                .unwrap(),
                            completes: None,
                        };
                        let key = keys[rng.random_range(0..keys.len())];
                        if let Decision::Approve(a) = cards.authorize(key, &req, NOW) {
                            drop(a.durable);
                            last = Some(cards.complete(&a.hold, IssuerOutcome::APPROVED, NOW));
                        }
                    }
                    if let Some(d) = last {
                        d.wait().unwrap();
                    }
                });
            }
        });
        eprintln!(
            "{} authorizations (hold + answer records) in {:.1} s",
            n_auths,
            t.elapsed().as_secs_f64()
        );
        keys
    };
    let journal_bytes: u64 = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!("data dir: {:.0} MB", journal_bytes as f64 / 1e6);
    if kept.is_some() {
        eprintln!(
            "set up in {}; run again to time a restart",
            data_dir.display()
        );
        return;
    }

    let rss0 = rss_mb();
    let cpu = process_cpu_s();
    let t = Instant::now();
    let (cards, rec) = open();
    let replay = t.elapsed();
    println!(
        "restart from the journal alone: {:.2} s wall, {:.2} s CPU ({rec:?}), RSS {:.0} MB (+{:.0} MB)",
        replay.as_secs_f64(),
        process_cpu_s() - cpu,
        rss_mb(),
        rss_mb() - rss0
    );
    assert_eq!(rec.cards as u64, n_cards);
    let spent: u64 = keys
        .iter()
        .take(1000)
        .map(|&k| cards.get(k).unwrap().uses as u64)
        .sum();
    eprintln!("uses on the first 1000 cards: {spent}");
    let t = Instant::now();
    let report = cards.snapshot().unwrap();
    eprintln!(
        "snapshot: {:?} in {:.2} s",
        report,
        t.elapsed().as_secs_f64()
    );
    drop(cards);
    let cpu = process_cpu_s();
    let t = Instant::now();
    let (cards, rec) = open();
    println!(
        "restart from the snapshot: {:.2} s wall, {:.2} s CPU ({rec:?}), RSS {:.0} MB",
        t.elapsed().as_secs_f64(),
        process_cpu_s() - cpu,
        rss_mb()
    );
    drop(cards);
}
