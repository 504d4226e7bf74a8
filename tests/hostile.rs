//! Hostile network peers against the real `vpan serve`: oversized length headers, frames
//! cut mid-way, a peer sending one byte at a time (slowloris), a peer that never reads its
//! answers, a flood of connections past `max_connections`, random bytes.
//!
//! Throughout, a well-behaved connection keeps sending purchases and must keep getting
//! answers (bounded by generous timeouts, never a speed assertion); the process's resident
//! memory (`VmRSS` of the real binary) stays within a generous bound; and every refused
//! frame or connection shows in `vpan_frames_rejected_total` under its `reason`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test binary: panics are the verdict

mod procs;
mod rig;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use procs::{Serve, issue_cards, rejected, scrape, start_serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vpan::iso8583::{Message, Spec};
use vpan::tools::issuer_sim::{IssuerSim, SimConfig};

/// `network.max_connections` for the run: low, so a moderate flood crosses it.
const MAX_CONNECTIONS: usize = 64;
/// `network.read_timeout_ms`: how long a started frame may take.
const READ_TIMEOUT_MS: u64 = 1_000;
/// Generous bound on a refusal or a close the switch owes us.
const GENEROUS: Duration = Duration::from_secs(20);
/// Generous bound on memory growth under attack, in KiB.
const RSS_GROWTH_KIB: u64 = 256 * 1024;

/// A len2 frame.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// An 0800 echo, packed.
fn echo(stan: u32) -> Bytes {
    let mut m = Message::new(Spec::iso87ascii(), b"0800").unwrap();
    m.set(7, b"1126143015").unwrap();
    m.set(11, format!("{:06}", stan % 1_000_000).as_bytes())
        .unwrap();
    m.set(70, b"301").unwrap();
    m.pack()
}

/// Waits until the switch closes `s` (EOF or reset); false when still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The change in each reason between two scrapes.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) as u64,
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// What the well-behaved connection saw.
#[derive(Default)]
struct Good {
    answered: AtomicU64,
    slowest_ms: AtomicU64,
}

/// Tracks the switch's peak memory while the attacks run.
async fn watch_rss(pid: u32, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        peak.fetch_max(procs::rss_kib(pid), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scrapes the reasons, runs `attack`, scrapes again; returns what was counted.
async fn counted<F: std::future::Future<Output = ()>>(
    serve: &Serve,
    attack: F,
) -> BTreeMap<String, u64> {
    let before = rejected(&scrape(serve.metrics).await);
    attack.await;
    delta(&before, &rejected(&scrape(serve.metrics).await))
}

/// Waits until `reason` has grown by `n` since `before` (the close happens on the
/// switch's clock; the counter is read until then, within `GENEROUS`).
async fn wait_reason(serve: &Serve, before: &BTreeMap<String, f64>, reason: &str, n: u64) {
    let until = Instant::now() + GENEROUS;
    loop {
        let d = delta(before, &rejected(&scrape(serve.metrics).await));
        if d.get(reason).copied().unwrap_or(0) >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{reason} counted {n} within {GENEROUS:?}; counted {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_cost_only_their_own_connection_and_are_counted_by_reason() {
    let sim = IssuerSim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (card, _) = issue_cards(&data_dir, 1, 1_000_000_000)
        .await
        .pop()
        .unwrap();
    let max = MAX_CONNECTIONS.to_string();
    let read_timeout = READ_TIMEOUT_MS.to_string();
    let mut serve = start_serve(
        &data_dir,
        &sim.local_addr().to_string(),
        &[
            ("VPAN_NETWORK_MAX_CONNECTIONS", &max),
            ("VPAN_NETWORK_READ_TIMEOUT_MS", &read_timeout),
            // The well-behaved peer's "00" must not depend on a loaded machine answering
            // within the default 1.5 s; under the 20 s it is given.
            ("VPAN_ISSUER_TIMEOUT_MS", "15000"),
        ],
    )
    .await;
    serve
        .wait_log("issuer link up", 2, Duration::from_secs(30))
        .await;
    let addr = serve.network;
    let baseline = serve.rss_kib();

    // The well-behaved peer: one purchase at a time, each answered within 20 s.
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(Good::default());
    let good_task = {
        let (stop, good) = (stop.clone(), good.clone());
        let card = card.clone();
        tokio::spawn(async move {
            let mut net = rig::Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let req = rig::purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 100);
                let sent = Instant::now();
                net.send(&req).await;
                let answer = tokio::time::timeout(GENEROUS, net.try_answer(req.stan().unwrap()))
                    .await
                    .expect("the well-behaved peer is answered within 20 s under attack")
                    .expect("the well-behaved peer's connection stays open");
                assert_eq!(rig::code(&answer), "00");
                good.answered.fetch_add(1, Ordering::Relaxed);
                good.slowest_ms
                    .fetch_max(sent.elapsed().as_millis() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let peak = Arc::new(AtomicU64::new(baseline));
    let watcher = tokio::spawn(watch_rss(serve.pid, stop.clone(), peak.clone()));
    let mut table: Vec<(&str, usize, String)> = Vec::new();

    // 1. Length headers far over max_frame_bytes: the connection is closed, counted.
    const OVERSIZED: usize = 20;
    let d = counted(&serve, async {
        for i in 0..OVERSIZED {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let len: u16 = 8193 + (i as u16) * 2000;
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[b'0'; 64]);
            s.write_all(&bytes).await.unwrap();
            assert!(
                closed_within(&mut s, GENEROUS).await,
                "oversized frame closes"
            );
        }
    })
    .await;
    assert_eq!(d.get("too_large"), Some(&(OVERSIZED as u64)), "{d:?}");
    table.push(("oversized length header", OVERSIZED, format!("{d:?}")));

    // 2. A frame cut mid-way, then the peer closes: counted, nothing else harmed.
    const CUT: usize = 20;
    let d = counted(&serve, async {
        for _ in 0..CUT {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let body = echo(1);
            let f = frame(&body);
            s.write_all(&f[..f.len() / 2]).await.unwrap();
            s.shutdown().await.unwrap();
            assert!(closed_within(&mut s, GENEROUS).await, "cut frame closes");
        }
    })
    .await;
    assert_eq!(d.get("truncated"), Some(&(CUT as u64)), "{d:?}");
    table.push(("frame cut mid-way, peer closes", CUT, format!("{d:?}")));

    // 3. Slowloris: a frame started and fed one byte at a time is closed by the read
    //    timeout, long before it could complete.
    const SLOW: usize = 3;
    let before = rejected(&scrape(serve.metrics).await);
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let f = frame(&echo(2));
                for &b in &f {
                    if s.write_all(&[b]).await.is_err() {
                        return true;
                    }
                    // Not waiting for speed: pacing the attacker.
                    if closed_within(&mut s, Duration::from_millis(500)).await {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    for t in slow {
        assert!(
            t.await.unwrap(),
            "a frame fed one byte per half second is closed before it completes"
        );
    }
    wait_reason(&serve, &before, "read_timeout", SLOW as u64).await;
    let d = delta(&before, &rejected(&scrape(serve.metrics).await));
    table.push(("slowloris (one byte per 0.5 s)", SLOW, format!("{d:?}")));

    // 4. A peer that sends and never reads: its answers back up, vpan stops reading it,
    //    then closes it; memory stays bounded meanwhile.
    let before = rejected(&scrape(serve.metrics).await);
    let mut sent = 0u64;
    {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..500 {
            batch.extend_from_slice(&frame(&echo(i)));
        }
        // Write until the switch stops reading (a write blocks) or closes.
        loop {
            match tokio::time::timeout(Duration::from_secs(3), s.write_all(&batch)).await {
                Ok(Ok(())) => sent += 500,
                Ok(Err(_)) | Err(_) => break,
            }
            assert!(
                sent < 5_000_000,
                "vpan kept reading a peer that never reads"
            );
        }
        wait_reason(&serve, &before, "write_stalled", 1).await;
    }
    let d = delta(&before, &rejected(&scrape(serve.metrics).await));
    table.push((
        "peer never reads its answers (write stall)",
        1,
        format!("{d:?}, {sent} echoes sent before vpan stopped reading"),
    ));

    // 5. A flood of connections at once, well past max_connections: the ones past it are
    //    refused (accepted and closed) and counted; the well-behaved one goes on.
    const FLOOD: usize = 600;
    let before = rejected(&scrape(serve.metrics).await);
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        match TcpStream::connect(addr).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connect during the flood: {e}"),
        }
    }
    let mut refused = 0;
    for s in &mut flood {
        if closed_within(s, Duration::from_millis(100)).await {
            refused += 1;
        }
    }
    let page = scrape(serve.metrics).await;
    let open = procs::metric(&page, "vpan_network_connections", &[]);
    assert!(
        open <= MAX_CONNECTIONS as f64,
        "{open} connections open, max {MAX_CONNECTIONS}"
    );
    assert!(
        refused >= FLOOD - MAX_CONNECTIONS,
        "{refused} of {FLOOD} refused"
    );
    let d = delta(&before, &rejected(&page));
    assert_eq!(d.get("max_connections"), Some(&(refused as u64)), "{d:?}");
    drop(flood);
    table.push((
        "connection flood past max_connections",
        FLOOD,
        format!("{d:?}, {open} open at the peak"),
    ));

    // 6. Random bytes: as frame bodies (each dropped or answered 30, counted, the
    //    connection goes on), and as a raw stream (whatever its length header says).
    const RANDOM_FRAMES: usize = 200;
    let d = counted(&serve, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        for _ in 0..RANDOM_FRAMES {
            let len = rand::random_range(1..400usize);
            let body: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            s.write_all(&frame(&body)).await.unwrap();
        }
        // The same connection still answers.
        s.write_all(&frame(&echo(424_242))).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(GENEROUS, async {
            while !got.windows(6).any(|w| w == b"424242") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection survives random frames");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("an echo after random frames is answered");
    })
    .await;
    let bad =
        d.get("unreadable").copied().unwrap_or(0) + d.get("format_error").copied().unwrap_or(0);
    assert_eq!(bad, RANDOM_FRAMES as u64, "{d:?}");
    table.push(("random frame bodies", RANDOM_FRAMES, format!("{d:?}")));

    const RANDOM_STREAMS: usize = 50;
    let d = counted(&serve, async {
        for _ in 0..RANDOM_STREAMS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let bytes: Vec<u8> = (0..16 * 1024).map(|_| rand::random()).collect();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            assert!(closed_within(&mut s, GENEROUS).await, "random stream ends");
        }
    })
    .await;
    assert!(
        d.values().sum::<u64>() >= RANDOM_STREAMS as u64,
        "every random stream is refused somewhere: {d:?}"
    );
    table.push((
        "random byte streams (16 KiB)",
        RANDOM_STREAMS,
        format!("{d:?}"),
    ));

    stop.store(true, Ordering::Relaxed);
    good_task.await.unwrap();
    watcher.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let answered = good.answered.load(Ordering::Relaxed);
    assert!(answered > 0);
    for (attack, tries, counted) in &table {
        eprintln!("{attack}: {tries} tries; counted {counted}");
    }
    eprintln!(
        "well-behaved peer: {answered} purchases answered 00, slowest {} ms; RSS {} KiB at \
         start, {} KiB at the peak",
        good.slowest_ms.load(Ordering::Relaxed),
        baseline,
        peak
    );
    assert!(
        peak <= baseline + RSS_GROWTH_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB under attack"
    );
    serve.signal("TERM");
    let _ = serve.child.wait().await;
    sim.shutdown().await;
}

/// Scrapers that send half a request and wait, more of them than the metrics port serves
/// at once: each is closed at the header deadline (10 s), one past the cap is closed at
/// once, and neither takes the process's file descriptors from the card network: a
/// purchase sent meanwhile is answered, and once they are gone a scrape answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_scrapes_are_capped_and_cut_and_the_card_network_goes_on() {
    const SCRAPERS_SERVED: usize = 64;
    let sim = IssuerSim::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cards = issue_cards(&data_dir, 1, 1_000_000).await;
    let (card, _) = &cards[0];
    let serve = start_serve(&data_dir, &sim.local_addr().to_string(), &[]).await;
    let mut stalled = Vec::new();
    for _ in 0..SCRAPERS_SERVED {
        let mut s = TcpStream::connect(serve.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    let mut one_too_many = TcpStream::connect(serve.metrics).await.unwrap();
    assert!(
        closed_within(&mut one_too_many, Duration::from_secs(5)).await,
        "a scraper past the cap is closed at once"
    );
    let mut net = rig::Client::connect(serve.network).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = rig::purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 100);
        if rig::code(&net.call(&req).await) == "00" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a purchase is approved meanwhile"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "a half-sent request is cut at the header deadline"
        );
    }
    assert!(scrape(serve.metrics).await.contains("vpan_requests_total"));
    sim.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_issuer_is_logged_once_a_second_however_many_connections_redial() {
    // A port nobody listens on: each of 32 connections redials every 200 ms at most (its
    // backoff capped there; at the default 5 s cap the dials thin out within seconds, and a
    // start slow on a loaded machine saw none in its 3 s).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = closed.local_addr().unwrap().to_string();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("VPAN_ISSUER_CONNECTIONS", "32"),
        ("VPAN_ISSUER_RECONNECT_MAX_MS", "200"),
    ];
    let mut serve = start_serve(dir.path(), &issuer, &env).await;
    let unreachable = |v: &serde_json::Value| {
        let message = v["message"].as_str().unwrap_or_default();
        message
            .starts_with("issuer host unreachable")
            .then(|| v["suppressed"].as_u64().unwrap())
    };
    // Watched from the first such line the test sees (the start may have taken the very
    // first with it, and a loaded machine may take a while to dial), for 3 s.
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(v) = serve.log.recv().await {
            if let Some(left_out) = unreachable(&v) {
                return left_out;
            }
        }
        panic!("the switch's log ended");
    })
    .await
    .expect("the issuer is said to be unreachable within 20 s");
    let (mut lines, mut suppressed) = (1, first);
    let watched = Duration::from_secs(3);
    let _ = tokio::time::timeout(watched, async {
        while let Some(v) = serve.log.recv().await {
            if let Some(left_out) = unreachable(&v) {
                lines += 1;
                suppressed += left_out;
            }
        }
    })
    .await;
    // One line, then one a second after, each counting those left out.
    assert!((1..=5).contains(&lines), "{lines} lines in {watched:?}");
    assert!(suppressed > 0, "{lines} lines, none said what it left out");
    serve.stop("TERM").await;
}
