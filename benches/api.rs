//! Card creations per second through the HTTPS issuance API, durable before each 201.
//!
//! `cargo bench --bench api`. A whole `App` on port 0 with a temp data dir (real TLS, real
//! journal with group commit and fsync), and [`CLIENTS`] concurrent callers sharing one
//! HTTP/1.1 keep-alive connection pool, client and server in the same process on the same
//! cores (so the number is a floor for a server with the machine to itself).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: panics are fine

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::RngExt;
use tokio::runtime::Runtime;
use vpan::app::App;
use vpan::config::Config;
use vpan::pan::luhn_check_digit;

/// Callers in flight at once.
const CLIENTS: u64 = 64;

fn test_pan() -> String {
    let mut rng = rand::rng();
    let mut d = b"497010".to_vec();
    for _ in 0..9 {
        d.push(b'0' + rng.random_range(0..10u8));
    }
    let c = luhn_check_digit(&d);
    d.push(b'0' + c);
    String::from_utf8(d).unwrap()
}

/// A running App and an HTTPS client for it.
struct Target {
    url: String,
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn start(rt: &Runtime) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.network.listen = "127.0.0.1:0".into();
    c.api.listen = "127.0.0.1:0".into();
    c.metrics.listen = "127.0.0.1:0".into();
    c.issuer.connect = "127.0.0.1:9".into();
    c.store.data_dir = dir.path().to_path_buf();
    let app = rt.block_on(App::build(c)).unwrap();
    let port = app.addresses().api.port();
    rt.spawn(app.run(std::future::pending()));
    let pem = std::fs::read(dir.path().join("tls-cert.pem")).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .pool_max_idle_per_host(CLIENTS as usize)
        .build()
        .unwrap();
    Target {
        url: format!("https://127.0.0.1:{port}/v1/cards"),
        token: std::fs::read_to_string(dir.path().join("api-token"))
            .unwrap()
            .trim()
            .to_string(),
        http,
        _dir: dir,
    }
}

/// Creates `n` cards with [`CLIENTS`] callers; the time it took.
async fn create(target: Arc<Target>, n: u64) -> Duration {
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            serde_json::to_vec(&serde_json::json!({
                "pan": test_pan(),
                "pan_expiry": "2912",
                "currency": "978",
                "amount_limit": 10_000,
                "max_uses": 1,
                "valid_for_seconds": 86_400,
            }))
            .unwrap()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (target, bodies) = (target.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = client;
            while i < n {
                let response = target
                    .http
                    .post(&target.url)
                    .bearer_auth(&target.token)
                    .header("content-type", "application/json")
                    .body(bodies[i as usize].clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                response.bytes().await.unwrap();
                i += CLIENTS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn creations(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = Arc::new(start(&rt));
    // Open the keep-alive connections before measuring.
    rt.block_on(create(target.clone(), CLIENTS * 4));
    let mut group = c.benchmark_group("api");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("create_card_https_durable", |b| {
        b.iter_custom(|iters| rt.block_on(create(target.clone(), iters)));
    });
    group.finish();
}

criterion_group!(benches, creations);
criterion_main!(benches);
