//! Benchmarks of the card core: lookup + limits decision, durable approvals through the
//! group-commit journal.
//!
//! `cargo bench --bench cards`. The restart measurement (1M cards, 5M authorizations) takes
//! minutes to set up and lives in `examples/restart_bench.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: panics are fine

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vpan::cards::index::CardIndex;

/// The allocator of the `vpan` binary, so that cards sit in memory as they do in the switch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use vpan::cards::limits::{self, Verdict};
use vpan::cards::vpan::random_luhn;
use vpan::cards::{
    AcceptorId, Amounts, AuthRequest, Card, CardKey, CardSpec, Cards, CardsConfig, Controls,
    Decision, Expiry, IssuerOutcome, Kind, LedgerConfig, MerchantLock, TxKey,
};
use vpan::pan::Pan;
use vpan::store::StoreConfig;

const NOW: u64 = 1_795_706_982;

/// A made-up Luhn-valid card number in BIN 497010.
fn test_pan() -> Pan {
    Pan::from_digits(random_luhn("497010", 16).as_bytes()).unwrap()
}

fn spec(pan: Pan) -> CardSpec {
    CardSpec {
        pan,
        pan_expiry: Expiry(*b"2912"),
        controls: Controls {
            currency: 978,
            amount_limit: u64::MAX / 4,
            per_transaction_limit: None,
            max_uses: None,
            valid_until: NOW + 86_400,
            merchant_lock: MerchantLock::None,
            mcc_allow: vec![],
            mcc_block: vec![],
        },
    }
}

fn request(n: u64) -> AuthRequest {
    AuthRequest {
        mti: *b"0100",
        kind: Kind::Purchase,
        amounts: Amounts {
            transaction: 1_000,
            transaction_currency: 978,
            billing: None,
        },
        expiry: Some(Expiry::of_time(NOW + 86_400)),
        mcc: Some(5411),
        acceptor: AcceptorId::new(b"SHOP-A"),
        key: TxKey {
            class: 1,
            stan: (n % 1_000_000) as u32,
            transmitted: (n / 1_000_000) as u32,
            acquirer: 12_345,
            terminal: *b"T1      ",
        },
        completes: None,
    }
}

/// CPU time of the calling thread: what a request costs, whatever else the machine runs.
/// (Benchmarks here share two cores with other builds; wall time measures the queue.)
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// User and system CPU seconds of this process (from /proc, 10 ms ticks).
fn user_sys_s() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (ticks(11), ticks(12))
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> u64 {
        thread_cpu_ns() - i
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

/// Shows CPU nanoseconds as "ns (cpu)".
struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns (cpu)"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n) => *n,
            Throughput::ElementsAndBytes { elements, .. } => *elements,
        };
        for v in values {
            *v = n as f64 * 1e9 / *v;
        }
        "elem/s (cpu)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// Lookup in a 1M-card index + the limits decision: the switch's per-request CPU cost.
fn lookup_and_decide<M: Measurement>(c: &mut Criterion<M>, name: &str, n: usize) {
    // Built on first use only, so that filtering this benchmark out skips the setup.
    let mut state: Option<(CardIndex, Vec<CardKey>)> = None;
    let req = request(1);
    let mut g = c.benchmark_group("cards");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function(name, |b| {
        let (index, keys) = state.get_or_insert_with(|| {
            let index = CardIndex::with_capacity(n);
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                let key = CardKey::of(&test_pan());
                if index.insert_new(key, || Card::new(&spec(test_pan()), NOW)) {
                    keys.push(key);
                }
            }
            (index, keys)
        });
        b.iter(|| {
            // Keys are in random order already; walking them in order keeps the bench's own
            // array out of the measurement, while every card lookup is a random access.
            i += 1;
            if i == keys.len() {
                i = 0;
            }
            let verdict = index.read(black_box(keys[i]), |card| limits::decide(card, &req, NOW));
            assert!(matches!(verdict, Some(Verdict::Approve(_))));
        })
    });
    g.finish();
}

/// Durable approvals per second: authorize (lookup, decision, hold, journal) and await the
/// hold's durability, with many approvals in flight so that group commit batches them.
fn durable_approvals(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        key_file: Default::default(),
        ..Default::default()
    };
    let (cards, _) = Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()).unwrap();
    let cards = Arc::new(cards);
    let keys: Arc<Vec<CardKey>> = Arc::new(
        (0..10_000)
            .map(|_| {
                let (v, d) = cards.issue(&spec(test_pan()), NOW).unwrap();
                drop(d);
                CardKey::of(&v.vpan)
            })
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let cpu_start = process_cpu_ns();
    let mut g = c.benchmark_group("cards");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for in_flight in [256u64, 2048] {
        g.bench_function(format!("durable_approval_{in_flight}_in_flight"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..in_flight)
                        .map(|t| {
                            let cards = cards.clone();
                            let keys = keys.clone();
                            let counter = counter.clone();
                            let mine = iters / in_flight + u64::from(t < iters % in_flight);
                            tokio::spawn(async move {
                                for _ in 0..mine {
                                    let n = counter.fetch_add(1, Ordering::Relaxed);
                                    let key = keys[(n as usize) % keys.len()];
                                    match cards.authorize(key, &request(n), NOW) {
                                        Decision::Approve(a) => {
                                            a.durable.await.unwrap();
                                            drop(cards.complete(
                                                &a.hold,
                                                IssuerOutcome::APPROVED,
                                                NOW,
                                            ));
                                        }
                                        other => panic!("{other:?}"),
                                    }
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                });
                started.elapsed()
            })
        });
    }
    g.finish();
    // What each durable approval cost in CPU, all threads (tasks, journal writer) included.
    let approvals = counter.load(Ordering::Relaxed);
    let cpu = process_cpu_ns() - cpu_start;
    let (user, sys) = user_sys_s();
    eprintln!("process CPU so far: {user:.2} s user, {sys:.2} s system");
    eprintln!(
        "durable approvals: {approvals} in {:.2} s of process CPU = {:.1} us CPU each ({:.0}/s per CPU-second)",
        cpu as f64 / 1e9,
        cpu as f64 / 1e3 / approvals as f64,
        approvals as f64 * 1e9 / cpu as f64
    );
}

fn lookup_wall(c: &mut Criterion) {
    lookup_and_decide(c, "lookup_and_decide_1M_cards", 1_000_000);
}

fn lookup_cpu(c: &mut Criterion<ThreadCpu>) {
    lookup_and_decide(c, "lookup_and_decide_1M_cards_cpu", 1_000_000);
    lookup_and_decide(c, "lookup_and_decide_1k_cards_cpu", 1_000);
}

criterion_group!(benches, lookup_wall, durable_approvals);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = lookup_cpu
}
criterion_main!(benches, cpu);
