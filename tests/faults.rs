//! Issuer faults: the switch (`App` on port 0) in front of the real issuer simulator,
//! sometimes through a fault proxy on real TCP that refuses, cuts connections, holds one
//! connection's requests back from the issuer, or turns the issuer's answers into garbage
//! (unparseable, wrong MTI, unknown STAN).
//!
//! For each fault: every network request is answered exactly once, within
//! `issuer.timeout_ms` plus a generous margin (a correctness bound, never a speed claim);
//! holds are released (`held` back to 0); what the issuer approved without the network
//! being told is reversed, so each real account ends charged exactly what its vPAN counts;
//! and the link comes back by itself (`vpan_issuer_connected` back to the configured count).
//!
//! The tests run one at a time: `vpan_issuer_connected` is a process-wide gauge.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test binary: panics are the verdict

mod procs;
mod rig;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rig::{Rig, rig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use vpan::cards::{CardKey, CardView};
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec};
use vpan::pan::Pan;
use vpan::tools::issuer_sim::{DEFAULT_BALANCE, IssuerSim, IssuerSimHandle, SimConfig};

/// `issuer.timeout_ms` in these tests.
const TIMEOUT_MS: u64 = 500;
/// Added to the timeout for the answer bound: seconds, so a loaded machine never fails it.
const MARGIN: Duration = Duration::from_secs(5);
/// How long the books may take to settle (reversals retried, the sweep of answers that
/// never came runs after 10 s).
const SETTLE: Duration = Duration::from_secs(40);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A switch with fast reconnection and a short timeout, toward `issuer`.
async fn switch(sim: Option<SimConfig>, issuer: Option<SocketAddr>) -> Rig {
    rig(sim, |c| {
        c.issuer.timeout_ms = TIMEOUT_MS;
        c.issuer.reconnect_max_ms = 200;
        if let Some(a) = issuer {
            c.issuer.connect = a.to_string();
        }
    })
    .await
}

/// The simulator, the fault proxy in `mode` in front of it, and the switch toward the
/// proxy, with both issuer connections up.
async fn behind_proxy(sim: SimConfig, mode: Mode) -> (Rig, Proxy) {
    let sim = IssuerSim::start(sim).await.unwrap();
    let proxy = Proxy::start(sim.local_addr(), mode).await;
    let mut rig = switch(None, Some(proxy.addr)).await;
    rig.sim = Some(sim);
    link_up(&rig, 2).await;
    (rig, proxy)
}

/// Waits, a few milliseconds at a time, until `done`; fails naming `what` after [`SETTLE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free port on localhost (bound, then released).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The simulator started on `addr`, a port [`free_addr`] picked a while ago: released, it is
/// an ephemeral port like any, which another process's connection may hold for a moment
/// (seen once under a parallel load: `AddrInUse`), so a refused bind is tried again.
async fn sim_on(addr: SocketAddr) -> IssuerSimHandle {
    let until = Instant::now() + SETTLE;
    loop {
        let config = SimConfig {
            listen: addr,
            ..SimConfig::default()
        };
        match IssuerSim::start(config).await {
            Ok(sim) => return sim,
            Err(e) if Instant::now() < until => {
                eprintln!("the simulator on {addr}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the simulator on {addr}: {e}"),
        }
    }
}

/// What the fault proxy does to the link.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Bytes pass both ways.
    Pass,
    /// New connections are accepted and closed at once (the host is down).
    Refuse,
    /// Every answer but an 0810 is garbled, in turn: not parseable, wrong MTI, unknown STAN.
    Garbage,
    /// Every answer but an 0810 is swallowed (the host booked it, the switch never hears).
    Hold,
    /// The first connection that carries a 0100 from now on carries nothing more toward
    /// the issuer: the purchase and whatever follows it wait in the proxy (still unread in
    /// their stream, as behind a slow host), and go, in order, once the mode changes.
    /// Other connections pass.
    StallPurchase,
}

/// A TCP proxy between the switch and the issuer simulator that injects faults.
struct Proxy {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// Cancelled to cut every open connection; replaced after.
    cut: Arc<Mutex<CancellationToken>>,
    garbled: Arc<Mutex<u64>>,
    /// [`Mode::StallPurchase`]: the stalled connection, and the MTIs it holds back.
    stall: Arc<Mutex<Stall>>,
}

/// The connection [`Mode::StallPurchase`] stalls.
#[derive(Default)]
struct Stall {
    /// Its number among the proxy's connections, once a purchase chose it.
    conn: Option<u64>,
    /// What it holds back (MTIs), oldest first.
    held: Vec<String>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(mode)),
            cut: Arc::new(Mutex::new(CancellationToken::new())),
            garbled: Arc::new(Mutex::new(0)),
            stall: Arc::default(),
        };
        let (mode, cut, garbled) = (proxy.mode.clone(), proxy.cut.clone(), proxy.garbled.clone());
        let stall = proxy.stall.clone();
        tokio::spawn(async move {
            let mut conns = 0u64;
            while let Ok((down, _)) = listener.accept().await {
                if *mode.lock().unwrap() == Mode::Refuse {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let token = cut.lock().unwrap().clone();
                conns += 1;
                let stall = (conns, stall.clone());
                tokio::spawn(pipe(down, up, mode.clone(), token, garbled.clone(), stall));
            }
        });
        proxy
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// What [`Mode::StallPurchase`] holds back, by MTI.
    fn held_back(&self) -> Vec<String> {
        self.stall.lock().unwrap().held.clone()
    }

    /// Closes every open connection through the proxy.
    fn cut(&self) {
        let mut t = self.cut.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }
}

/// One proxied connection: requests pass untouched (or wait, see [`Mode::StallPurchase`]),
/// answers per the mode.
async fn pipe(
    down: TcpStream,
    up: TcpStream,
    mode: Arc<Mutex<Mode>>,
    cut: CancellationToken,
    garbled: Arc<Mutex<u64>>,
    (conn, stall): (u64, Arc<Mutex<Stall>>),
) {
    let codec = || FrameCodec::new(Framing::Len2, 0, 8192);
    let (mut down_tx, mut down_rx) = Framed::new(down, codec()).split();
    let (mut up_tx, mut up_rx) = Framed::new(up, codec()).split();
    let mut held = std::collections::VecDeque::new();
    // Held requests go once the mode changes; this looks every few milliseconds.
    let mut look = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            () = cut.cancelled() => return,
            _ = look.tick() => {
                if *mode.lock().unwrap() != Mode::StallPurchase {
                    while let Some(f) = held.pop_front() {
                        if up_tx.send(f).await.is_err() { return }
                    }
                }
            },
            f = down_rx.next() => match f {
                // Behind held requests, a request waits its turn (the next look sends them).
                Some(Ok(f)) => if stalls(&f, conn, *mode.lock().unwrap(), &stall) || !held.is_empty() {
                    held.push_back(f);
                } else if up_tx.send(f).await.is_err() {
                    return;
                },
                _ => return,
            },
            f = up_rx.next() => match f {
                Some(Ok(Frame::Message { header, body })) => {
                    let m = *mode.lock().unwrap();
                    if m == Mode::Hold && !body.starts_with(b"0810") {
                        continue;
                    }
                    let body = if m == Mode::Garbage && !body.starts_with(b"0810") {
                        let mut n = garbled.lock().unwrap();
                        *n += 1;
                        garble(body, *n)
                    } else {
                        body
                    };
                    if down_tx.send(Frame::Message { header, body }).await.is_err() {
                        return;
                    }
                }
                Some(Ok(f)) => if down_tx.send(f).await.is_err() { return },
                _ => return,
            },
        }
    }
}

/// Whether [`Mode::StallPurchase`] holds back frame `f` of connection `conn` (noting it).
fn stalls(f: &Frame, conn: u64, mode: Mode, stall: &Mutex<Stall>) -> bool {
    let (Mode::StallPurchase, Frame::Message { body, .. }) = (mode, f) else {
        return false;
    };
    let mut stall = stall.lock().unwrap();
    if stall.conn.is_none() && body.starts_with(b"0100") {
        stall.conn = Some(conn);
    }
    if stall.conn != Some(conn) {
        return false;
    }
    stall
        .held
        .push(String::from_utf8_lossy(&body[..4]).into_owned());
    true
}

/// The `n`th garbled answer: in turn not parseable, of the wrong MTI, or under a STAN that
/// matches nothing.
fn garble(body: Bytes, n: u64) -> Bytes {
    match n % 3 {
        0 => Bytes::from_static(b"0110\xff\xfe not an ISO 8583 message"),
        1 => {
            let mut b = body.to_vec();
            b[..4].copy_from_slice(b"0410");
            Bytes::from(b)
        }
        _ => {
            let mut m = Message::parse(Spec::iso87ascii(), body).unwrap();
            m.set(11, b"999999").unwrap();
            m.pack()
        }
    }
}

/// A network-side connection that counts every answer by STAN.
struct Net {
    framed: Framed<TcpStream, FrameCodec>,
    stan: u32,
    /// Answers per STAN (must end at exactly 1 each).
    answers: HashMap<[u8; 6], (u32, String)>,
    /// When each request went out.
    sent: HashMap<[u8; 6], Instant>,
    /// The slowest answer.
    slowest: Duration,
}

impl Net {
    async fn connect(addr: SocketAddr) -> Net {
        Net {
            framed: Framed::new(
                TcpStream::connect(addr).await.unwrap(),
                FrameCodec::new(Framing::Len2, 0, 8192),
            ),
            stan: rand::random_range(1..500_000),
            answers: HashMap::new(),
            sent: HashMap::new(),
            slowest: Duration::ZERO,
        }
    }

    /// Sends a purchase of `amount` on `card`.
    async fn purchase(&mut self, card: &CardView, amount: u64) {
        self.stan += 1;
        let m = purchase_with_stan(card, amount, self.stan);
        self.sent.insert(m.stan().unwrap(), Instant::now());
        self.framed
            .send(Frame::Message {
                header: Bytes::new(),
                body: m.pack(),
            })
            .await
            .unwrap();
    }

    /// Reads answers until every request sent is answered; each must come within the
    /// timeout plus the margin.
    async fn answers(&mut self) {
        let bound = Duration::from_millis(TIMEOUT_MS) + MARGIN;
        while self.answers.len() < self.sent.len() {
            let f = tokio::time::timeout(bound, self.framed.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {} requests answered within {bound:?}",
                        self.answers.len(),
                        self.sent.len()
                    )
                });
            self.take(f);
        }
    }

    fn take(&mut self, f: Option<Result<Frame, vpan::iso8583::FrameError>>) {
        let Some(Ok(Frame::Message { body, .. })) = f else {
            panic!("the network connection ended");
        };
        let m = Message::parse(Spec::iso87ascii(), body).unwrap();
        let stan = m.stan().unwrap();
        let took = self.sent[&stan].elapsed();
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "answered after {took:?}"
        );
        self.slowest = self.slowest.max(took);
        let e = self.answers.entry(stan).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = rig::code(&m);
        assert_eq!(e.0, 1, "a request answered twice");
    }

    /// No answer beyond one per request has arrived by now.
    fn no_extra(&mut self) {
        while let Some(f) = self.framed.next().now_or_never() {
            self.take(f);
        }
    }

    fn codes(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (_, c) in self.answers.values() {
            *out.entry(c.clone()).or_insert(0) += 1;
        }
        out
    }
}

fn purchase_with_stan(card: &CardView, amount: u64, stan: u32) -> Message {
    let spec = Spec::iso87ascii();
    let mut m = Message::new(spec, b"0100").unwrap();
    m.set(2, card.vpan.as_bytes()).unwrap();
    m.set(3, b"000000").unwrap();
    m.set(4, format!("{amount:012}").as_bytes()).unwrap();
    m.set(7, b"1126143015").unwrap();
    m.set(11, format!("{:06}", stan % 1_000_000).as_bytes())
        .unwrap();
    m.set(14, &card.expiry.0).unwrap();
    m.set(18, b"5734").unwrap();
    m.set(22, b"812").unwrap();
    m.set(32, b"12345678901").unwrap();
    m.set(41, b"TERM0001").unwrap();
    m.set(42, b"SHOP00000000001").unwrap();
    m.set(49, b"978").unwrap();
    Message::parse(spec, m.pack()).unwrap()
}

/// Takes the tests' turn (held while the returned guard lives), then one card, and one
/// purchase of 700 on it that gets its 91 with the fault proxy in `mode`.
async fn one_purchase_timed_out(
    mode: Mode,
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    Rig,
    Proxy,
    Vec<(CardView, Pan)>,
    Net,
) {
    let one = ONE_AT_A_TIME.lock().await;
    let (rig, proxy) = behind_proxy(SimConfig::default(), Mode::Pass).await;
    let cards = cards(&rig, 1).await;
    let mut net = Net::connect(rig.network).await;
    proxy.set(mode);
    net.purchase(&cards[0].0, 700).await;
    net.answers().await;
    assert_eq!(net.codes().get("91"), Some(&1), "{:?}", net.codes());
    (one, rig, proxy, cards, net)
}

/// Waits until `vpan_issuer_connected` is `n`.
async fn link_up(rig: &Rig, n: usize) {
    let until = Instant::now() + SETTLE;
    loop {
        let page = procs::scrape(rig.metrics).await;
        if procs::metric(&page, "vpan_issuer_connected", &[]) == n as f64 {
            return;
        }
        assert!(
            Instant::now() < until,
            "vpan_issuer_connected back to {n} within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every card's hold is released.
fn no_holds(rig: &Rig, cards: &[(CardView, Pan)]) {
    for (card, _) in cards {
        let v = rig.cards.get(CardKey::of(&card.vpan)).unwrap();
        assert_eq!(v.held, 0, "a hold was left after the fault");
    }
}

/// Waits until the issuer charged each real card exactly what its vPAN counts.
async fn books_agree(rig: &Rig, cards: &[(CardView, Pan)]) {
    let until = Instant::now() + SETTLE;
    loop {
        let off: Vec<(i64, i64)> = cards
            .iter()
            .map(|(card, real)| {
                let spent = rig.cards.get(CardKey::of(&card.vpan)).unwrap().spent as i64;
                let charged = DEFAULT_BALANCE - rig.sim().balance(real).unwrap_or(DEFAULT_BALANCE);
                (charged, spent)
            })
            .filter(|(charged, spent)| charged != spent)
            .collect();
        if off.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "issuer charged vs card spent still differ after {SETTLE:?}: {off:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cards(rig: &Rig, n: usize) -> Vec<(CardView, Pan)> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(rig.issue(|c| c.amount_limit = 10_000_000).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_down_at_start_gets_91_and_the_link_comes_up_by_itself_when_it_starts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let addr = free_addr();
    let mut rig = switch(None, Some(addr)).await;
    let cards = cards(&rig, 3).await;
    let mut net = Net::connect(rig.network).await;
    for (card, _) in &cards {
        net.purchase(card, 1_000).await;
    }
    net.answers().await;
    assert_eq!(
        net.codes().get("91"),
        Some(&cards.len()),
        "{:?}",
        net.codes()
    );
    no_holds(&rig, &cards);

    // The issuer comes up on the configured address: the link dials it by itself.
    rig.sim = Some(sim_on(addr).await);
    link_up(&rig, 2).await;
    for (card, _) in &cards {
        net.purchase(card, 1_000).await;
    }
    net.answers().await;
    assert_eq!(
        net.codes().get("00"),
        Some(&cards.len()),
        "{:?}",
        net.codes()
    );
    books_agree(&rig, &cards).await;
    net.no_extra();
    eprintln!(
        "issuer down at start: {} requests, codes {:?}, slowest {:?}",
        net.sent.len(),
        net.codes(),
        net.slowest
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_killed_mid_flight_and_back_seconds_later_gets_its_approvals_reversed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sim = SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let (rig, proxy) = behind_proxy(sim, Mode::Pass).await;
    let cards = cards(&rig, 4).await;
    let mut net = Net::connect(rig.network).await;
    const N: usize = 20;
    // Answers are held back from here on: on a loaded machine the first could otherwise
    // come back (its 300 ms latency over) before the last request is booked and the cut.
    proxy.set(Mode::Hold);
    for i in 0..N {
        net.purchase(&cards[i % cards.len()].0, 500 + i as u64)
            .await;
    }
    // Every request is at the issuer (booked there, its answer held back): the host dies,
    // and stays down for longer than the reversals' first retries.
    tokio::time::timeout(SETTLE, rig.sim().wait_for_requests(N as u64 + 2))
        .await
        .expect("every request reached the issuer");
    proxy.set(Mode::Refuse);
    proxy.cut();
    net.answers().await;
    assert_eq!(net.codes().get("91"), Some(&N), "{:?}", net.codes());
    no_holds(&rig, &cards);
    link_up(&rig, 0).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Pass);
    link_up(&rig, 2).await;
    books_agree(&rig, &cards).await;
    net.no_extra();
    eprintln!(
        "issuer killed mid-flight: {N} in flight, codes {:?}, slowest {:?}, reversals at the \
         issuer {}",
        net.codes(),
        net.slowest,
        rig.sim().requests(b"0400")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_whose_answer_is_lost_is_repeated_as_0401_and_applied_once() {
    // The host books everything from here on, and the switch hears none of it: the
    // purchase times out, and its reversal, applied at the host, goes unanswered.
    let (_one, rig, proxy, cards, mut net) = one_purchase_timed_out(Mode::Hold).await;
    let until = Instant::now() + SETTLE;
    while rig.sim().requests(b"0401") == 0 {
        assert!(Instant::now() < until, "{:?}", rig.sim().requests_by_mti());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The repeat's answer is lost too: its connection is cut rather than waited out.
    proxy.set(Mode::Pass);
    proxy.cut();
    no_holds(&rig, &cards);
    books_agree(&rig, &cards).await;
    link_up(&rig, 2).await;
    assert_eq!(
        rig.sim().requests(b"0400"),
        1,
        "sent once as a first reversal, then as repeats: {:?}",
        rig.sim().requests_by_mti()
    );
    // A repeat is the same message under the same DE 11 and DE 7, so the host can tell it.
    let reversals: Vec<_> = rig
        .sim()
        .recent(1000)
        .into_iter()
        .filter(|r| r.mti()[..3] == *b"040")
        .map(|r| (r.message.stan(), r.message.transmission_time()))
        .collect();
    assert!(reversals.len() >= 2, "{reversals:?}");
    assert!(
        reversals.iter().all(|r| *r == reversals[0]),
        "{reversals:?}"
    );
    net.no_extra();
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_issuer_is_waited_for_and_a_late_one_gets_91_and_its_approvals_reversed() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The "00" round leaves 400 ms for the rest of the round trip, under CI's load too.
    for (latency, code) in [(TIMEOUT_MS / 5, "00"), (TIMEOUT_MS * 3, "91")] {
        let rig = switch(
            Some(SimConfig {
                latency: Duration::from_millis(latency),
                ..SimConfig::default()
            }),
            None,
        )
        .await;
        let cards = cards(&rig, 3).await;
        let before = procs::scrape(rig.metrics).await;
        let echoes_before = rig.sim().requests(b"0800");
        let mut net = Net::connect(rig.network).await;
        const N: usize = 15;
        for i in 0..N {
            net.purchase(&cards[i % cards.len()].0, 700).await;
        }
        net.answers().await;
        assert_eq!(net.codes().get(code), Some(&N), "{:?}", net.codes());
        no_holds(&rig, &cards);
        books_agree(&rig, &cards).await;
        link_up(&rig, 2).await;
        net.no_extra();
        // Each issuer request is counted once: timed by its answer, or counted as a
        // timeout (a late answer is not timed as well). What was asked of the issuer in
        // this round: the purchases, their reversals, the link's echoes. The reversals'
        // answers come one issuer latency after the issuer applied them; the wait lets a
        // late purchase answer timed as well show as one count too many.
        tokio::time::sleep(Duration::from_millis(latency + 200)).await;
        let until = Instant::now() + SETTLE;
        let (timed, timeouts, asked) = loop {
            let after = procs::scrape(rig.metrics).await;
            let delta = |name| procs::metric(&after, name, &[]) - procs::metric(&before, name, &[]);
            let timed = delta("vpan_issuer_request_duration_seconds_count") as u64;
            let timeouts = delta("vpan_issuer_timeouts_total") as u64;
            let asked = N as u64
                + rig.sim().requests(b"0400")
                + (rig.sim().requests(b"0800") - echoes_before);
            if timed + timeouts >= asked || Instant::now() > until {
                break (timed, timeouts, asked);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            timed + timeouts,
            asked,
            "timed {timed} + timed out {timeouts} = requests to the issuer"
        );
        assert_eq!(timeouts as usize, if code == "91" { N } else { 0 });
        eprintln!(
            "issuer latency {latency} ms, timeout {TIMEOUT_MS} ms: codes {:?}, slowest {:?}, \
             reversals at the issuer {}",
            net.codes(),
            net.slowest,
            rig.sim().requests(b"0400")
        );
        if code == "91" {
            assert_eq!(
                rig.sim().requests(b"0400"),
                N as u64,
                "each late approval reversed"
            );
        }
        rig.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_from_the_issuer_get_91_and_whatever_it_approved_is_reversed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (rig, proxy) = behind_proxy(SimConfig::default(), Mode::Garbage).await;
    let cards = cards(&rig, 3).await;
    let mut net = Net::connect(rig.network).await;
    const N: usize = 12;
    for i in 0..N {
        net.purchase(&cards[i % cards.len()].0, 900).await;
    }
    net.answers().await;
    assert_eq!(net.codes().get("91"), Some(&N), "{:?}", net.codes());
    no_holds(&rig, &cards);
    // The issuer approved all of them: the unanswered ones are reversed by the sweep.
    proxy.set(Mode::Pass);
    books_agree(&rig, &cards).await;
    link_up(&rig, 2).await;
    net.no_extra();
    eprintln!(
        "garbage answers: {} garbled (unparseable, wrong MTI, unknown STAN in turn), codes \
         {:?}, slowest {:?}, reversals at the issuer {}",
        proxy.garbled.lock().unwrap(),
        net.codes(),
        net.slowest,
        rig.sim().requests(b"0400")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_drops_connections_and_answers_at_random_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = switch(
        Some(SimConfig {
            drop_share: 0.03,
            timeout_share: 0.03,
            latency: Duration::from_millis(5),
            ..SimConfig::default()
        }),
        None,
    )
    .await;
    let cards = cards(&rig, 4).await;
    let mut nets = Vec::new();
    for _ in 0..4 {
        nets.push(Net::connect(rig.network).await);
    }
    const ROUNDS: usize = 10;
    const BATCH: usize = 10;
    for _ in 0..ROUNDS {
        for (k, net) in nets.iter_mut().enumerate() {
            for _ in 0..BATCH {
                net.purchase(&cards[k].0, rand::random_range(100..1_000))
                    .await;
            }
        }
        for net in &mut nets {
            net.answers().await;
        }
    }
    no_holds(&rig, &cards);
    books_agree(&rig, &cards).await;
    link_up(&rig, 2).await;
    let mut codes: HashMap<String, usize> = HashMap::new();
    for net in &mut nets {
        net.no_extra();
        for (c, n) in net.codes() {
            *codes.entry(c).or_insert(0) += n;
        }
    }
    let stats = rig.sim().stats();
    // The faults happened, or the test proved nothing. About a hundred requests reach the
    // issuer (the rest are answered 91 while a dropped link is redialled): no fault at all
    // in them, at 6 % each, is about one run in 500.
    assert!(stats.dropped + stats.unanswered > 0, "{stats:?}");
    eprintln!(
        "random drops and lost answers: {} requests, each answered once, codes {codes:?}; the \
         issuer dropped {} connections and left {} unanswered; reversals at the issuer {}",
        ROUNDS * BATCH * nets.len(),
        stats.dropped,
        stats.unanswered,
        rig.sim().requests(b"0400")
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_peer_that_vanishes_with_requests_in_flight_leaves_no_hold() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rig = switch(
        Some(SimConfig {
            latency: Duration::from_millis(200),
            ..SimConfig::default()
        }),
        None,
    )
    .await;
    let cards = cards(&rig, 2).await;
    const N: usize = 10;
    for reset in [false, true] {
        let mut net = Net::connect(rig.network).await;
        // Counted before sending: a purchase can reach the issuer before the last is sent.
        // Only 0100s, as the first round's reversals and the link's echoes may still come.
        let before = rig.sim().requests(b"0100");
        for i in 0..N {
            net.purchase(&cards[i % cards.len()].0, 300).await;
        }
        // Every request is at the issuer; the network side goes away before the answers,
        // with a FIN or with a reset.
        eventually("requests reached the issuer", || {
            rig.sim().requests(b"0100") >= before + N as u64
        })
        .await;
        let stream = net.framed.into_inner();
        if reset {
            // SO_LINGER 0: the close sends a reset (and does not block, nothing is unsent).
            #[allow(deprecated)]
            stream.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(stream);
        // The issuer's answers come; nobody can be told, but each hold gets its outcome.
        let until = Instant::now() + SETTLE;
        loop {
            let held: u64 = cards
                .iter()
                .map(|(c, _)| rig.cards.get(CardKey::of(&c.vpan)).unwrap().held)
                .sum();
            if held == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "{held} still held {SETTLE:?} after the peer left (reset: {reset})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        books_agree(&rig, &cards).await;
        eprintln!(
            "network peer gone (reset: {reset}) with {N} in flight: no hold left, books agree"
        );
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_issuer_is_late_reverses_what_it_approved_after_the_91() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Late enough that the stop, not a late answer, is what reverses each purchase.
    let mut rig = switch(
        Some(SimConfig {
            latency: Duration::from_millis(TIMEOUT_MS * 8),
            ..SimConfig::default()
        }),
        None,
    )
    .await;
    let cards = cards(&rig, 3).await;
    let mut net = Net::connect(rig.network).await;
    const N: usize = 12;
    for i in 0..N {
        net.purchase(&cards[i % cards.len()].0, 400).await;
    }
    net.answers().await;
    assert_eq!(net.codes().get("91"), Some(&N), "{:?}", net.codes());
    // The switch stops before the issuer's late approvals come back.
    let sim = rig.sim.take().unwrap();
    rig.stop().await;
    for (card, real) in &cards {
        let _ = card;
        assert_eq!(
            sim.balance(real),
            Some(DEFAULT_BALANCE),
            "the issuer still charges a card whose purchase was answered 91"
        );
    }
    // Each reversal went out behind its original, on the same connection: an original still
    // unread there would otherwise risk being overtaken by its own reversal.
    let seen = sim.recent(1000);
    let mut pinned = 0;
    for reversal in seen.iter().filter(|r| r.mti() == *b"0400") {
        let de90 = reversal.message.text(90).unwrap();
        let original = seen
            .iter()
            .find(|r| r.mti() == *b"0100" && r.message.text(11).as_deref() == de90.get(4..10))
            .expect("the reversal names an original the issuer received");
        assert_eq!(
            reversal.connection, original.connection,
            "a reversal on another connection than its original"
        );
        pinned += 1;
    }
    assert_eq!(pinned, N, "one reversal per purchase");
    eprintln!(
        "stop while the issuer is late: {N} answered 91, {} reversals reached the issuer before \
         the switch exited, each on its original's connection",
        sim.requests(b"0400")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_never_overtakes_its_original_still_on_the_way_to_the_issuer() {
    // The purchase's connection stops short of the issuer: the 0100 stays unread in its
    // stream, as behind a host that stopped reading, while the other connection passes.
    let (_one, rig, proxy, cards, mut net) = one_purchase_timed_out(Mode::StallPurchase).await;
    no_holds(&rig, &cards);
    // Never answered, the original is given up after 10 s and reversed. Behind it on its
    // own connection, the 0400 waits too; on the other one, it would reach the host first,
    // find nothing to reverse, and the purchase read after it would stay charged.
    eventually("a reversal", || {
        proxy.held_back().contains(&"0400".to_string()) || rig.sim().requests(b"0400") > 0
    })
    .await;
    assert_eq!(
        rig.sim().requests(b"0400"),
        0,
        "a reversal reached the issuer before its original (held back: {:?})",
        proxy.held_back()
    );
    // An echo may wait there too, if the test ran slow enough for one to fall due.
    let held: Vec<String> = proxy
        .held_back()
        .into_iter()
        .filter(|m| m != "0800")
        .collect();
    assert_eq!(held, ["0100", "0400"]);
    // The host reads again: the purchase, then its reversal.
    proxy.set(Mode::Pass);
    eventually("the reversal at the issuer", || {
        rig.sim().requests(b"0400") > 0
    })
    .await;
    assert_eq!(rig.sim().requests(b"0100"), 1);
    books_agree(&rig, &cards).await;
    net.no_extra();
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_host_stopped_reading_gets_no_new_requests_after_one_timeout() {
    // The host stops reading the connection the first purchase goes out on (TCP up, as
    // behind a hung thread): that purchase times out, 91.
    let (_one, rig, proxy, cards, mut net) = one_purchase_timed_out(Mode::StallPurchase).await;
    // Long before its echo could notice (30 s idle), every new purchase goes to the other
    // connection and is approved; in turn, half would wait there for their 91.
    for _ in 0..20 {
        net.purchase(&cards[0].0, 100).await;
    }
    net.answers().await;
    assert_eq!(net.codes().get("00"), Some(&20), "{:?}", net.codes());
    let held: Vec<String> = proxy.held_back();
    assert_eq!(held.iter().filter(|m| *m == "0100").count(), 1, "{held:?}");
    // The host reads again: the purchase, then its reversal.
    proxy.set(Mode::Pass);
    books_agree(&rig, &cards).await;
    net.no_extra();
    rig.stop().await;
}
