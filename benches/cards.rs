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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::RngExt;
use vpan::cards::index::CardIndex;
use vpan::cards::limits::{self, Verdict};
use vpan::cards::{
    AcceptorId, Amounts, AuthRequest, Card, CardKey, CardSpec, Cards, CardsConfig, Controls,
    Decision, Expiry, IssuerOutcome, Kind, LedgerConfig, MerchantLock, ResponseCode, TxKey,
};
use vpan::pan::{Pan, luhn_check_digit};
use vpan::store::StoreConfig;

const NOW: u64 = 1_795_706_982;

fn test_pan(rng: &mut impl rand::Rng) -> Pan {
    let mut d = b"497010".to_vec();
    for _ in 0..9 {
        d.push(b'0' + rng.random_range(0..10u8));
    }
    let c = luhn_check_digit(&d);
    d.push(b'0' + c);
    Pan::from_digits(&d).unwrap()
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
            mcc_allow: vec![5411, 5812],
            mcc_block: vec![],
        },
    }
}

fn request(n: u64) -> AuthRequest {
    let stan = format!("{:06}", n % 1_000_000);
    let de7 = format!("{:010}", n / 1_000_000);
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
        key: TxKey::new(b"0100", stan.as_bytes(), de7.as_bytes(), b"12345", b"T1").unwrap(),
    }
}

/// Lookup in a 1M-card index + the limits decision: the switch's per-request CPU cost.
fn lookup_and_decide(c: &mut Criterion) {
    let mut rng = rand::rng();
    let n = 1_000_000;
    let index = CardIndex::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        let key = CardKey::of(&test_pan(&mut rng));
        if index.insert_new(key, || Card::new(&spec(test_pan(&mut rand::rng())), NOW)) {
            keys.push(key);
        }
    }
    let req = request(1);
    let mut g = c.benchmark_group("cards");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup_and_decide_1M_cards", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
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
    };
    let (cards, _) = Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()).unwrap();
    let cards = Arc::new(cards);
    let mut rng = rand::rng();
    let keys: Arc<Vec<CardKey>> = Arc::new(
        (0..10_000)
            .map(|_| {
                let (v, d) = cards.issue(&spec(test_pan(&mut rng)), NOW).unwrap();
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
                                                IssuerOutcome::Approved(ResponseCode::APPROVED),
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
}

criterion_group!(benches, lookup_and_decide, durable_approvals);
criterion_main!(benches);
