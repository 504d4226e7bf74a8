//! The issuer simulator and the load generator over real TCP: the `vpan` binary itself on
//! port 0 (its bound address read from its log line), and the library API on port 0.
//! Nothing here sleeps to wait or asserts on speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec};
use vpan::pan::Pan;
use vpan::tools::issuer_sim::{IssuerSim, IssuerSimHandle, SimConfig};
use vpan::tools::loadgen::{self, LoadgenConfig, Summary};
use vpan::tools::traffic::{Traffic, original_data_elements};

const VPAN: &str = env!("CARGO_BIN_EXE_vpan");
/// Plenty of money.
const RICH: &str = "4970100000000014";
/// 10.00 only.
const POOR: &str = "4970100000000022";

fn fixture(name: &str) -> String {
    format!("{}/fixtures/traffic/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pan(digits: &str) -> Pan {
    Pan::from_digits(digits.as_bytes()).unwrap()
}

async fn sim_with(accounts: &[(&str, i64)], tweak: impl FnOnce(&mut SimConfig)) -> IssuerSimHandle {
    let mut cfg = SimConfig {
        accounts: accounts.iter().map(|(p, b)| (pan(p), *b)).collect(),
        default_balance: None,
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    IssuerSim::start(cfg).await.unwrap()
}

/// A request in the ASCII spec, parsed back as the simulator would see it.
fn request(mti: &[u8; 4], fields: &[(usize, &str)]) -> Message {
    let mut m = Message::new(Spec::iso87ascii(), mti).unwrap();
    for (n, v) in fields {
        m.set(*n, v.as_bytes()).unwrap();
    }
    Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
}

fn financial(mti: &[u8; 4], card: &str, stan: &str, pcode: &str, amount: &str) -> Message {
    request(
        mti,
        &[
            (2, card),
            (3, pcode),
            (4, amount),
            (7, "1126143015"),
            (11, stan),
            (32, "12345678901"),
            (41, "TERM0001"),
            (49, "978"),
        ],
    )
}

/// A 10.00 purchase on [`RICH`].
fn ten_euros_on_rich() -> Message {
    financial(b"0100", RICH, "000001", "000000", "000000001000")
}

/// A simulator that books every request and answers none.
async fn answering_nothing() -> IssuerSimHandle {
    sim_with(&[], |c| {
        c.default_balance = Some(1_000_000_000);
        c.timeout_share = 1.0;
    })
    .await
}

/// A run of the sample traffic against `sim` on one connection.
fn sample_on_one_connection(sim: &IssuerSimHandle) -> LoadgenConfig {
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 1;
    cfg
}

/// A raw client: sends framed messages, reads answers.
struct Client {
    stream: TcpStream,
    codec: FrameCodec,
    inbuf: BytesMut,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            codec: FrameCodec::new(Framing::Len2, 0, 8192),
            inbuf: BytesMut::new(),
        }
    }

    async fn send(&mut self, msgs: &[&Message]) {
        let mut out = BytesMut::new();
        for m in msgs {
            self.codec.encode_message(&[], m, &mut out).unwrap();
        }
        self.stream.write_all(&out).await.unwrap();
    }

    /// Reads `n` answers, keyed by STAN.
    async fn answers(&mut self, n: usize) -> HashMap<[u8; 6], Message> {
        let mut got = HashMap::new();
        while got.len() < n {
            while let Some(frame) = self.codec.decode(&mut self.inbuf).unwrap() {
                if let Frame::Message { body, .. } = frame {
                    let m = Message::parse(Spec::iso87ascii(), body).unwrap();
                    got.insert(m.stan().unwrap(), m);
                }
            }
            if got.len() < n {
                let r = self.stream.read_buf(&mut self.inbuf).await.unwrap();
                assert!(r > 0, "connection closed with {} of {n} answers", got.len());
            }
        }
        got
    }

    async fn exchange(&mut self, m: &Message) -> Message {
        self.send(&[m]).await;
        self.answers(1).await.remove(&m.stan().unwrap()).unwrap()
    }
}

fn reversal_of(mti: &[u8; 4], orig: &Message, stan: &str) -> Message {
    let de90 = original_data_elements(
        &orig.mti(),
        &orig.stan().unwrap(),
        &orig.transmission_time().unwrap(),
        &orig.acquirer().unwrap(),
    );
    let amount = String::from_utf8(orig.text(4).unwrap().to_vec()).unwrap();
    let card = String::from_utf8(orig.text(2).unwrap().to_vec()).unwrap();
    request(
        mti,
        &[
            (2, &card),
            (3, "000000"),
            (4, &amount),
            (7, "1126143030"),
            (11, stan),
            (32, "12345678901"),
            (90, std::str::from_utf8(&de90).unwrap()),
        ],
    )
}

#[tokio::test]
async fn the_issuer_sim_answers_a_peer_that_has_half_closed_after_its_latency() {
    // A client that sends and then shuts its sending side still reads: the answers the
    // simulator holds back for its latency reach it, as they were booked.
    let sim = sim_with(&[(RICH, 10_000)], |c| c.latency = Duration::from_millis(20)).await;
    let mut c = Client::connect(sim.local_addr()).await;
    c.send(&[&ten_euros_on_rich()]).await;
    c.stream.shutdown().await.unwrap();
    let answers = c.answers(1).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(sim.balance(&pan(RICH)), Some(9_000));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_issuer_sim_answers_each_request_class_with_its_response_mti_and_code() {
    let sim = sim_with(&[(RICH, 1_000_000)], |_| {}).await;
    let mut c = Client::connect(sim.local_addr()).await;
    let auth = financial(b"0100", RICH, "000001", "000000", "000000001000");
    let reqs = [
        auth.clone(),
        financial(b"0200", RICH, "000002", "000000", "000000002000"),
        financial(b"0200", RICH, "000003", "200000", "000000000500"),
        financial(b"0120", RICH, "000004", "000000", "000000000100"),
        financial(b"0220", RICH, "000005", "000000", "000000000100"),
        reversal_of(b"0400", &auth, "000006"),
        financial(b"0420", RICH, "000007", "000000", "000000000100"),
        request(b"0800", &[(7, "1126143015"), (11, "000008"), (70, "301")]),
    ];
    // All in flight at once on one connection.
    c.send(&reqs.iter().collect::<Vec<_>>()).await;
    let answers = c.answers(reqs.len()).await;
    let want: [(&[u8; 4], bool); 8] = [
        (b"0110", true),
        (b"0210", true),
        (b"0210", true),
        (b"0130", false),
        (b"0230", false),
        (b"0410", false),
        (b"0430", false),
        (b"0810", false),
    ];
    for (req, (mti, auth_code)) in reqs.iter().zip(want) {
        let a = &answers[&req.stan().unwrap()];
        assert_eq!(&a.mti(), mti, "answer to {:?}", req.mti());
        assert_eq!(a.response_code(), Some(*b"00"), "answer to {:?}", req.mti());
        assert_eq!(a.auth_code().is_some(), auth_code, "DE 38 in {mti:?}");
        if let Some(code) = a.auth_code() {
            assert_eq!(code.len(), 6);
        }
        assert_eq!(a.text(2).as_deref(), req.text(2).as_deref(), "DE 2 echoed");
        assert_eq!(a.text(4).as_deref(), req.text(4).as_deref(), "DE 4 echoed");
    }
    assert_eq!(sim.requests(b"0100"), 1);
    assert_eq!(sim.requests(b"0200"), 2);
    assert_eq!(sim.requests_by_mti().values().sum::<u64>(), 8);
    // -1000 -2000 +500 -100 -100 +1000 (reversal of the 0100) +100 (0420 without DE 90)
    assert_eq!(sim.balance(&pan(RICH)), Some(1_000_000 - 1_600));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_balance_that_runs_out_gets_51_and_no_auth_code() {
    let sim = sim_with(&[], |_| {}).await;
    sim.set_balance(&pan(POOR), 10_000);
    let mut c = Client::connect(sim.local_addr()).await;
    let first = c
        .exchange(&financial(
            b"0100",
            POOR,
            "000001",
            "000000",
            "000000006000",
        ))
        .await;
    assert_eq!(first.response_code(), Some(*b"00"));
    let second = c
        .exchange(&financial(
            b"0100",
            POOR,
            "000002",
            "000000",
            "000000006000",
        ))
        .await;
    assert_eq!(second.mti(), *b"0110");
    assert_eq!(second.response_code(), Some(*b"51"));
    assert!(second.auth_code().is_none());
    assert_eq!(sim.balance(&pan(POOR)), Some(4_000));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reversal_sent_twice_credits_back_once_and_the_sim_saw_the_real_pan() {
    let sim = sim_with(&[(RICH, 10_000)], |_| {}).await;
    let mut c = Client::connect(sim.local_addr()).await;
    let orig = financial(b"0200", RICH, "000010", "000000", "000000004000");
    assert_eq!(c.exchange(&orig).await.response_code(), Some(*b"00"));
    assert_eq!(sim.balance(&pan(RICH)), Some(6_000));
    for stan in ["000011", "000012"] {
        let a = c.exchange(&reversal_of(b"0400", &orig, stan)).await;
        assert_eq!(a.mti(), *b"0410");
        assert_eq!(a.response_code(), Some(*b"00"));
        assert_eq!(sim.balance(&pan(RICH)), Some(10_000));
    }
    // A repeat of the reversal that does not carry DE 90 (only its own STAN and DE 7)
    // finds the reversal it repeats, and gives nothing back again.
    let mut repeat = reversal_of(b"0401", &orig, "000011");
    repeat.remove(90);
    let a = c.exchange(&repeat).await;
    assert_eq!(a.response_code(), Some(*b"00"));
    assert_eq!(sim.balance(&pan(RICH)), Some(10_000), "credited once");
    assert_eq!(sim.stats().unmatched_reversals, 0);
    let seen = sim.recent(3);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.pan() == Some(pan(RICH))));
    assert_eq!(
        seen.iter().map(|r| r.mti()).collect::<Vec<_>>(),
        vec![*b"0400", *b"0400", *b"0401"]
    );
    // And the other way round: a reversal without DE 90 (given back by its DE 4), then its
    // repeat naming the original in DE 90, which finds the reversal and gives nothing.
    let second = financial(b"0200", RICH, "000020", "000000", "000000001000");
    assert_eq!(c.exchange(&second).await.response_code(), Some(*b"00"));
    let mut without = reversal_of(b"0400", &second, "000021");
    without.remove(90);
    c.exchange(&without).await;
    assert_eq!(sim.balance(&pan(RICH)), Some(10_000));
    c.exchange(&reversal_of(b"0401", &second, "000021")).await;
    assert_eq!(sim.balance(&pan(RICH)), Some(10_000), "credited once");

    sim.shutdown().await;
}

#[tokio::test]
async fn an_unknown_card_gets_14_when_the_sim_has_no_default_balance() {
    let sim = sim_with(&[(RICH, 10_000)], |_| {}).await;
    let mut c = Client::connect(sim.local_addr()).await;
    let a = c
        .exchange(&financial(
            b"0100",
            "4970100000000048",
            "000001",
            "000000",
            "000000000100",
        ))
        .await;
    assert_eq!(a.response_code(), Some(*b"14"));
    sim.shutdown().await;
}

/// Starts the real binary's issuer simulator on port 0 and reads its address from the log.
async fn spawn_sim_binary(extra: &[&str]) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(VPAN);
    command
        .args(["issuer-sim", "--listen", "127.0.0.1:0"])
        .args(extra);
    let (child, addr, mut lines) = sim_started(command).await;
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// The lines of a simulator's log.
type SimLog = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Runs `command`, an issuer simulator on port 0: the child, the address it logged, and
/// the rest of its log.
async fn sim_started(
    mut command: tokio::process::Command,
) -> (tokio::process::Child, String, SimLog) {
    let mut child = command
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("issuer-sim exited before logging its address");
        if let Some((_, rest)) = line.split_once("listening on ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, addr, lines)
}

/// Review of the load tools: out of file descriptors, the simulator's accept loop tried
/// again at once, failing some three million times a second on a core the switch under
/// test needs. Its log's count of failures held back between two lines (one a second)
/// tells a spin from a wait.
#[tokio::test]
async fn the_sim_out_of_file_descriptors_waits_between_accepts_rather_than_spin() {
    let mut command = tokio::process::Command::new("sh");
    command.args([
        "-c",
        "ulimit -n 24 && exec \"$0\" issuer-sim --listen 127.0.0.1:0",
        VPAN,
    ]);
    let (_child, addr, mut lines) = sim_started(command).await;
    // More connections than it has descriptors left: the kernel queues the rest.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut failures = 0;
    let suppressed = loop {
        let line = lines.next_line().await.unwrap().expect("the sim runs on");
        if !line.contains("accept failed") {
            continue;
        }
        failures += 1;
        // The first line of the burst has held back nothing; the second says how many.
        if failures == 2 {
            let (_, n) = line.split_once("suppressed=").unwrap();
            break n.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    };
    assert!(
        suppressed < 1_000,
        "{suppressed} failed accepts in a second"
    );
    drop(held);
}

async fn loadgen_binary(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(VPAN)
        .arg("loadgen")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn loadgen_replays_the_sample_file_against_the_sim_binary_with_every_code_as_expected() {
    let accounts = fixture("accounts.json");
    let (mut sim, addr) = spawn_sim_binary(&["--accounts", &accounts]).await;
    let traffic = fixture("sample.jsonl");
    let out = loadgen_binary(&["--target", &addr, "--traffic", &traffic, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = Traffic::load(traffic.as_ref(), Spec::iso87ascii())
        .unwrap()
        .len() as u64;
    assert_eq!(s["sent"], n);
    assert_eq!(s["answered"], n);
    assert_eq!(s["timeouts"], 0);
    assert_eq!(s["errors"], 0);
    assert_eq!(s["expect_matched"], n);
    assert_eq!(s["expect_mismatched"], 0);
    assert_eq!(s["response_codes"]["51"], 1);
    for (req, resp) in [
        ("0100", "0110"),
        ("0200", "0210"),
        ("0120", "0130"),
        ("0400", "0410"),
        ("0420", "0430"),
        ("0800", "0810"),
    ] {
        assert_eq!(
            s["requests_by_mti"][req], s["responses_by_mti"][resp],
            "{req}"
        );
    }
    sim.kill().await.unwrap();
}

#[tokio::test]
async fn the_list_of_cards_vpan_traffic_writes_is_not_taken_for_their_numbers() {
    let dir = format!("{}/fixtures/generated", env!("CARGO_MANIFEST_DIR"));
    let traffic = format!("{dir}/load.jsonl");
    let with_cards = |cards: String| {
        let traffic = traffic.clone();
        async move {
            let args = ["loadgen", "--target", "127.0.0.1:9", "--traffic", &traffic];
            refused(&[&args[..], &["--cards", &cards]].concat(), 1).await
        }
    };
    let said = with_cards(format!("{dir}/cards.json")).await;
    assert!(
        said.contains("a list of cards to issue") && said.contains("vpan demo --scenario"),
        "{said}"
    );
    // A bindings file with a wrong type says where, by line.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "{\n  \"a\": {\n    \"vpan\": 1,\n    \"expiry\": \"2912\"\n  }\n}\n",
    )
    .unwrap();
    let said = with_cards(file.path().display().to_string()).await;
    assert!(said.contains("(line 3, column"), "{said}");
}

#[tokio::test]
async fn a_record_that_cannot_be_written_stops_the_run_and_fails_it() {
    let (mut sim, addr) = spawn_sim_binary(&[]).await;
    let traffic = fixture("sample.jsonl");
    let out = loadgen_binary(&[
        "--target",
        &addr,
        "--traffic",
        &traffic,
        "--count",
        "200000",
        "--record",
        "/dev/full",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--record /dev/full") && stderr.contains("the record is incomplete"),
        "{stderr}"
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = summary
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("sent")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("a sent count in the summary: {summary}"));
    assert!(sent < 200_000, "sending stopped at the failure: {summary}");
    sim.kill().await.unwrap();
}

/// A peer that approves every request 10 ms after it came (slow enough that no connection
/// of a load can finish before the others start) and counts, per connection in the order
/// they came, the requests it received.
async fn counting_peer() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<u64>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let per_connection = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let index = {
                let mut c = per_connection.lock().unwrap();
                c.push(0);
                c.len() - 1
            };
            let counts = per_connection.clone();
            tokio::spawn(async move {
                let mut codec = FrameCodec::new(Framing::Len2, 0, 8192);
                let mut inbuf = BytesMut::new();
                while stream.read_buf(&mut inbuf).await.is_ok_and(|n| n > 0) {
                    let mut out = BytesMut::new();
                    while let Ok(Some(Frame::Message { body, .. })) = codec.decode(&mut inbuf) {
                        let mut m = Message::parse(Spec::iso87ascii(), body).unwrap();
                        m.set_mti(b"0110").unwrap();
                        m.set_response_code(b"00").unwrap();
                        codec.encode_message(&[], &m, &mut out).unwrap();
                        counts.lock().unwrap()[index] += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_once_or_a_count_within_it_goes_out_over_every_connection() {
    let line = format!(
        r#"{{"fields": {{"t": "0100", "2": "{RICH}", "3": "000000", "4": "000000001000", "11": "000001", "32": "123456"}}}}"#
    );
    let text = vec![line; 40].join("\n");
    let traffic = Arc::new(Traffic::parse(&text, Spec::iso87ascii()).unwrap());
    for count in [None, Some(40), Some(9)] {
        let (peer, counts) = counting_peer().await;
        let mut cfg = LoadgenConfig::new(peer.to_string(), traffic.clone());
        cfg.connections = 4;
        cfg.in_flight = 1;
        cfg.count = count;
        let s: Summary = loadgen::run(cfg).await.unwrap();
        let sent = count.unwrap_or(40);
        assert_eq!((s.sent, s.answered), (sent, sent), "{count:?}");
        let counts = counts.lock().unwrap().clone();
        assert_eq!(counts.iter().sum::<u64>(), sent);
        assert_eq!(counts.len(), 4, "{count:?}: {counts:?}");
        assert!(
            counts.iter().all(|&n| n > 0),
            "{count:?}: every connection carries part of the load: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_loops_the_file_over_several_connections_and_each_reversal_credits_once() {
    let sim = sim_with(
        &[
            (RICH, 1_000_000_000_000),
            (POOR, 1_000),
            ("4970100000000030", 0),
        ],
        |c| c.latency = Duration::from_micros(200),
    )
    .await;
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let len = traffic.len() as u64;
    let passes = 40;
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 3;
    cfg.in_flight = 8;
    cfg.count = Some(passes * len + 1);
    let s: Summary = loadgen::run(cfg).await.unwrap();
    assert_eq!(s.sent, passes * len + 1);
    assert_eq!(s.answered, s.sent);
    assert_eq!(s.expect_mismatched, 0, "{:?}", s.mismatches);
    assert_eq!(s.errors, 0, "{:?}", s.errors_by_kind);
    assert_eq!(sim.stats().unmatched_reversals, 0);
    // Per pass the rich card loses only the 5.00 advice: both debits are reversed.
    assert_eq!(
        sim.balance(&pan(RICH)),
        Some(1_000_000_000_000 - passes as i64 * 500)
    );
    assert_eq!(sim.balance(&pan(POOR)), Some(1_000));
    assert!(s.latency_us.p50 > 0 && s.latency_us.max >= s.latency_us.p99);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_are_counted_as_timeouts_and_loadgen_still_finishes() {
    let sim = sim_with(&[], |c| {
        c.default_balance = Some(1_000_000_000);
        c.timeout_share = 0.3;
        c.seed = Some(1);
    })
    .await;
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 2;
    cfg.count = Some(200);
    cfg.timeout = Duration::from_millis(200);
    let s = loadgen::run(cfg).await.unwrap();
    assert_eq!(s.sent, 200);
    assert!(s.timeouts > 0);
    // At least those the simulator left unanswered: under load an answer sent a little
    // after the 200 ms also counts as a timeout, and a request given up on may not yet be
    // read (so not yet counted) by the simulator when the run ends.
    assert!(s.timeouts >= sim.stats().unanswered);
    assert_eq!(s.answered + s.timeouts, s.sent);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_open_loop_a_request_never_answered_counts_in_the_latency_at_its_timeout() {
    // A stall must show in the percentiles, not only as fewer answers.
    let sim = answering_nothing().await;
    let mut cfg = sample_on_one_connection(&sim);
    cfg.rate = Some(200.0);
    cfg.count = Some(10);
    cfg.timeout = Duration::from_millis(200);
    let s = loadgen::run(cfg).await.unwrap();
    assert_eq!((s.answered, s.timeouts), (0, 10), "{s:?}");
    assert!(s.latency_us.p50 >= 200_000, "{s:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_a_reversals_repeat_with_the_same_de_90_and_it_credits_once() {
    let sim = sim_with(&[(RICH, 10_000)], |_| {}).await;
    let line = |t: &str, extra: &str| {
        format!(
            r#"{{"fields": {{"t": "{t}", "2": "{RICH}", "3": "000000", "4": "000000004000", "32": "12345678901", "41": "TERM0001"}}, "expect": "00"{extra}}}"#
        )
    };
    let text = [
        line("0200", ""),
        line("0400", r#", "reverses": 0"#),
        line("0401", r#", "repeats": 1"#),
    ]
    .join("\n");
    let traffic = Arc::new(Traffic::parse(&text, Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 1;
    cfg.count = Some(3);
    let s = loadgen::run(cfg).await.unwrap();
    assert_eq!((s.sent, s.answered), (3, 3), "{s:?}");
    let seen = sim.recent(3);
    let de90 = |i: usize| seen[i].message.raw(90).map(<[u8]>::to_vec);
    assert_eq!(seen[2].mti(), *b"0401");
    assert!(de90(1).is_some());
    assert_eq!(de90(2), de90(1), "the repeat names the same original");
    assert_eq!(sim.balance(&pan(RICH)), Some(10_000), "credited once");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_open_loop_with_a_count_ends_with_its_last_answer_not_a_schedule_later() {
    // One request at 0.1/s over 4 connections: the others' next due times are 10 to 40 s
    // away, which the run used to wait out after the one answer had come.
    let (mut sim, addr) = spawn_sim_binary(&[]).await;
    let traffic = fixture("sample.jsonl");
    let started = std::time::Instant::now();
    let out = loadgen_binary(&[
        "--target",
        &addr,
        "--traffic",
        &traffic,
        "--rate",
        "0.1",
        "--count",
        "1",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ended {:?} after its start",
        started.elapsed()
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("sent 1  answered 1"), "{summary}");
    // Under 1/s, the throughput is not rounded to 0.
    assert!(!summary.contains("throughput 0 answers/s"), "{summary}");

    // Two echoes at 0.2/s over 2 connections: the first goes at 0 s, the second, the
    // last of the count, at 5 s from the other connection. The first connection, idle
    // since its answer, is told at once, not at its next due time, 10 s.
    let dir = tempfile::tempdir().unwrap();
    let echo = dir.path().join("echo.jsonl");
    std::fs::write(&echo, "{\"fields\": {\"t\": \"0800\", \"70\": \"301\"}}\n").unwrap();
    let started = std::time::Instant::now();
    let out = loadgen_binary(&[
        "--target",
        &addr,
        "--traffic",
        echo.to_str().unwrap(),
        "--connections",
        "2",
        "--rate",
        "0.2",
        "--count",
        "2",
    ])
    .await;
    assert!(out.status.success());
    assert!(
        started.elapsed() < Duration::from_millis(9_500),
        "ended {:?} after its start, its last answer due at 5 s",
        started.elapsed()
    );
    sim.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_for_a_duration_sends_at_its_rate_to_the_end() {
    let sim = sim_with(&[], |c| c.default_balance = Some(1_000_000_000)).await;
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 4;
    cfg.rate = Some(20.0);
    cfg.duration = Some(Duration::from_secs(2));
    let s = loadgen::run(cfg).await.unwrap();
    // 20 a second for 2 s: 40, give or take one per connection at either end. The last
    // interval before the deadline is part of the schedule too, not a closed loop.
    assert!((36..=44).contains(&s.sent), "{} sent: {s:?}", s.sent);
    assert_eq!(s.answered, s.sent);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_sends_every_request_due_before_the_deadline_even_when_held_back() {
    // A peer slower than the schedule: 50 fall due in the second, and at most 5 in flight
    // with a 200 ms answer let only about 25 go by then. The rest still go, late, and
    // their lateness is in the latency (else the slowest requests would vanish from the
    // percentiles, the coordinated omission an open loop is there to avoid).
    let sim = sim_with(&[], |c| {
        c.default_balance = Some(1_000_000_000);
        c.latency = Duration::from_millis(200);
    })
    .await;
    let mut cfg = sample_on_one_connection(&sim);
    cfg.in_flight = 5;
    cfg.rate = Some(50.0);
    cfg.duration = Some(Duration::from_secs(1));
    let s = loadgen::run(cfg).await.unwrap();
    assert!((49..=51).contains(&s.sent), "{} sent: {s:?}", s.sent);
    assert_eq!(s.answered, s.sent, "{s:?}");
    assert!(
        s.latency_us.max >= 700_000,
        "the last ones went late: {s:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_gives_up_its_backlog_a_timeout_after_the_deadline() {
    // A peer that answers nothing: 2 in flight, each given up after 200 ms, let about 10
    // of the 100 due go in the second. The rest is not sent for another 9 s: one timeout
    // after the deadline it is given up, counted, and in the latency.
    let sim = answering_nothing().await;
    let config = |count| {
        let mut cfg = sample_on_one_connection(&sim);
        cfg.in_flight = 2;
        cfg.rate = Some(100.0);
        cfg.count = count;
        cfg.duration = Some(Duration::from_secs(1));
        cfg.timeout = Duration::from_millis(200);
        cfg
    };
    let s = loadgen::run(config(None)).await.unwrap();
    let not_sent = s.errors_by_kind.get("not_sent").copied().unwrap_or(0);
    assert!(not_sent > 50, "{s:?}");
    assert!((99..=101).contains(&(s.sent + not_sent)), "{s:?}");
    assert_eq!((s.answered, s.timeouts), (0, s.sent), "{s:?}");
    assert!(
        s.latency_us.max >= 1_000_000,
        "the given up count at their lateness: {s:?}"
    );

    // With --count too, no more is given up than the count would still have sent.
    let s = loadgen::run(config(Some(20))).await.unwrap();
    let not_sent = s.errors_by_kind.get("not_sent").copied().unwrap_or(0);
    assert!(not_sent > 0, "{s:?}");
    assert_eq!(s.sent + not_sent, 20, "{s:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_count_their_requests_as_lost_and_loadgen_dials_again() {
    let sim = sim_with(&[], |c| {
        c.default_balance = Some(1_000_000_000);
        c.drop_share = 0.05;
        // Answers held back when a connection drops: lost with it, never answered.
        c.latency = Duration::from_millis(20);
        c.seed = Some(2);
    })
    .await;
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.connections = 2;
    cfg.in_flight = 4;
    cfg.count = Some(300);
    cfg.timeout = Duration::from_millis(500);
    let s = loadgen::run(cfg).await.unwrap();
    let lost = s
        .errors_by_kind
        .get("connection_lost")
        .copied()
        .unwrap_or(0);
    assert!(lost > 0, "{s:?}");
    assert!(sim.stats().dropped > 0);
    assert!(sim.stats().connections > 2, "loadgen dialled again");
    assert_eq!(s.answered + s.timeouts + lost, s.sent);
    assert!(s.answered > 0);
    let sim_stats = sim.stats();
    assert!(sim_stats.lost_with_connection > 0, "{sim_stats:?}");
    assert_eq!(
        sim_stats.answered, s.answered,
        "the sim counts as answered what the load generator received: {sim_stats:?} {s:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn frames_behind_the_one_that_drops_a_connection_are_counted_not_read() {
    let sim = sim_with(&[(RICH, 1_000_000)], |c| c.drop_share = 1.0).await;
    let mut client = Client::connect(sim.local_addr()).await;
    let three = [
        financial(b"0100", RICH, "000001", "000000", "000000001000"),
        financial(b"0100", RICH, "000002", "000000", "000000001000"),
        financial(b"0100", RICH, "000003", "000000", "000000001000"),
    ];
    client.send(&[&three[0], &three[1], &three[2]]).await;
    sim.wait_for_requests(1).await;
    let counters = sim.counters();
    sim.shutdown().await;
    let stats = counters.stats();
    assert_eq!(
        (stats.requests, stats.dropped, stats.not_read),
        (1, 1, 2),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_held_back_when_the_sim_stops_are_counted_lost_not_answered() {
    let sim = sim_with(&[(RICH, 1_000_000)], |c| {
        c.latency = Duration::from_secs(30);
    })
    .await;
    let mut client = Client::connect(sim.local_addr()).await;
    client.send(&[&ten_euros_on_rich()]).await;
    sim.wait_for_requests(1).await;
    let counters = sim.counters();
    sim.shutdown().await;
    let stats = counters.stats();
    assert_eq!(
        (stats.answered, stats.lost_with_connection),
        (0, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn in_open_loop_requests_lost_with_their_connection_count_in_the_latency() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // A host that reads without answering for 300 ms, then goes away for good.
    let host = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink),
        )
        .await;
    });
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(target, traffic);
    cfg.connections = 1;
    cfg.rate = Some(100.0);
    cfg.count = Some(1_000);
    cfg.timeout = Duration::from_secs(1);
    let s = tokio::time::timeout(Duration::from_secs(30), loadgen::run(cfg))
        .await
        .expect("loadgen ends when its only connection gives up")
        .unwrap();
    host.await.unwrap();
    assert_eq!(s.answered, 0, "{s:?}");
    assert!(s.errors_by_kind.get("connection_lost") > Some(&10), "{s:?}");
    // The first was due at the start and lost at about 300 ms.
    assert!(s.latency_us.max >= 200_000, "{s:?}");
}

#[tokio::test]
async fn a_connection_that_cannot_be_dialled_again_gives_up_and_says_so_in_the_summary() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // A host that takes the connection, then goes away for good: the redials are refused.
    let host = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        drop(listener);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(socket);
    });
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(target, traffic);
    cfg.connections = 1;
    cfg.count = Some(1_000);
    cfg.timeout = Duration::from_millis(200);
    let s = tokio::time::timeout(Duration::from_secs(30), loadgen::run(cfg))
        .await
        .expect("loadgen ends when its only connection gives up")
        .unwrap();
    host.await.unwrap();
    assert_eq!(s.errors_by_kind.get("gave_up"), Some(&1), "{s:?}");
    assert!(
        s.errors_by_kind.get("connect").is_some_and(|&n| n > 0),
        "{s:?}"
    );
    assert!(s.sent < 1_000, "{s:?}");
    assert_eq!(s.answered, 0);
    assert!(s.to_string().contains("gave_up"), "{s}");
}

/// Review of the load tools: a target that never answers the connection (a firewall that
/// drops it, a host that is down; here a listener whose backlog is full) held loadgen's
/// dial for the kernel's two minutes of retries, whatever `--timeout-ms` said, with
/// nothing printed meanwhile.
#[tokio::test]
async fn a_target_that_never_answers_the_connection_is_given_up_on_within_the_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Its backlog filled, and never accepted: the kernel drops the next connection's SYN.
    let mut held = Vec::new();
    for _ in 0..3 {
        let dial = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr));
        if let Ok(Ok(s)) = dial.await {
            held.push(s);
        }
    }
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(addr.to_string(), traffic);
    cfg.timeout = Duration::from_millis(200);
    let err = tokio::time::timeout(Duration::from_secs(20), loadgen::run(cfg))
        .await
        .expect("loadgen gives up on the dial, not the kernel two minutes later")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("cannot connect to {addr}: ")) && err.contains("1000 ms"),
        "{err}"
    );
    drop((held, listener));
}

#[tokio::test]
async fn a_run_whose_target_goes_away_exits_1_saying_it_was_cut_short() {
    let (out, summary) = target_killed_during("20s", Duration::from_millis(700), "200").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(summary["answered"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["errors_by_kind"]["gave_up"], 2, "{summary}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("vpan: the run was cut short: 2 of 2 connections"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_run_whose_target_goes_away_near_its_end_stops_redialling_at_its_end() {
    // Redialling may take the timeout, 5 s; the run's 2 s end comes first, and with it
    // the run's end: its figures are not diluted by the redials.
    let (out, summary) = target_killed_during("2s", Duration::from_millis(1_500), "5000").await;
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["errors_by_kind"].get("gave_up"), None, "{summary}");
    assert!(summary["elapsed_s"].as_f64().unwrap() < 3.5, "{summary}");
}

#[tokio::test]
async fn an_open_loop_whose_target_goes_away_counts_the_rest_of_its_schedule_not_sent() {
    // Review of stop 51: at 500/s for 4 s with the target gone after 1 s, the summary
    // read 500/s and the latency of the requests sent before: the 1,500 never sent were
    // nowhere in it, and a script reading the JSON saw a healthy run.
    let (out, summary) = target_killed_during_at(
        "4s",
        Duration::from_millis(1_000),
        "200",
        &["--rate", "500"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{summary}");
    assert_eq!(summary["errors_by_kind"]["gave_up"], 2, "{summary}");
    let sent = summary["sent"].as_u64().unwrap();
    let not_sent = summary["errors_by_kind"]["not_sent"].as_u64().unwrap_or(0);
    assert!(not_sent >= 1_000, "{summary}");
    assert!(
        (1_990..=2_000).contains(&(sent + not_sent)),
        "the whole schedule, 500/s for 4 s: {summary}"
    );
    let throughput = summary["throughput_per_s"].as_f64().unwrap();
    assert!(throughput < 300.0, "{summary}");
    // Those due while the connections redialled are in the latency, at a second or so.
    assert!(
        summary["latency_us"]["max"].as_u64().unwrap() >= 500_000,
        "{summary}"
    );
}

/// `vpan loadgen --json` on two connections for `duration`, against a simulator killed
/// `after` into the run; its output and its summary.
async fn target_killed_during(
    duration: &str,
    after: Duration,
    timeout_ms: &str,
) -> (std::process::Output, serde_json::Value) {
    target_killed_during_at(duration, after, timeout_ms, &[]).await
}

/// [`target_killed_during`] with `more` arguments (an open loop's `--rate`).
async fn target_killed_during_at(
    duration: &str,
    after: Duration,
    timeout_ms: &str,
    more: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let (mut sim, addr) = spawn_sim_binary(&[]).await;
    let traffic = fixture("sample.jsonl");
    let args = [
        "--target",
        &addr,
        "--traffic",
        &traffic,
        "--duration",
        duration,
        "--timeout-ms",
        timeout_ms,
        "--connections",
        "2",
        "--json",
    ];
    let args: Vec<&str> = args.iter().chain(more).copied().collect();
    let run = loadgen_binary(&args);
    let kill = async {
        tokio::time::sleep(after).await;
        sim.kill().await.unwrap();
    };
    let (out, ()) = tokio::join!(run, kill);
    let summary = serde_json::from_slice(&out.stdout).unwrap();
    (out, summary)
}

#[tokio::test]
async fn loadgen_exits_1_with_one_line_when_nothing_is_answered() {
    let sim = sim_with(&[], |c| c.timeout_share = 1.0).await;
    let out = loadgen_binary(&[
        "--target",
        &sim.local_addr().to_string(),
        "--traffic",
        &fixture("sample.jsonl"),
        "--timeout-ms",
        "100",
        "--connections",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("vpan: nothing was answered"), "{stderr}");
    // Not zeros, which a script would read as instant answers.
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["latency_us"], serde_json::Value::Null, "{summary}");
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_exit_2_for_usage_and_1_with_the_line_for_a_bad_traffic_file() {
    let out = loadgen_binary(&["--target", "127.0.0.1:1"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --traffic is a usage error"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "# fine\n{\"fields\": {\"t\": \"0100\", \"2\": \"4970100000000014\", \"4\": \"12X\"}}\n",
    )
    .unwrap();
    let sim = sim_with(&[], |_| {}).await;
    let out = loadgen_binary(&[
        "--target",
        &sim.local_addr().to_string(),
        "--traffic",
        bad.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: traffic line 2", bad.display()))
            && stderr.contains("field 4"),
        "the file, the line and the field: {stderr}"
    );
    assert!(
        !stderr.contains("4970100000000014"),
        "no full PAN in errors"
    );
    sim.shutdown().await;

    let out = tokio::process::Command::new(VPAN)
        .args(["issuer-sim", "--listen", "127.0.0.1:0", "--drop-share", "2"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a value out of range is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--drop-share"));
    let out = loadgen_binary(&[
        "--target",
        "127.0.0.1:1",
        "--traffic",
        "x",
        "--in-flight",
        "0",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a value out of range is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--in-flight"));
    // A run of nothing, or of no time, is refused the same way, not run and failed.
    for (flag, value) in [("--count", "0"), ("--duration", "0s")] {
        let out = loadgen_binary(&["--target", "127.0.0.1:1", "--traffic", "x", flag, value]).await;
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(flag));
        // One clear line that says what to fix, as for every error.
        assert_eq!(said.lines().count(), 1, "{said}");
    }
    let out = loadgen_binary(&["--target", "127.0.0.1:1"]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        said.contains("--traffic") && said.lines().count() == 1,
        "{said}"
    );
    // clap's tip of the flag meant is kept: it is what says what to fix.
    let out = loadgen_binary(&["--target", "127.0.0.1:1", "--traffic", "x", "--cout", "3"]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("'--count'") && said.lines().count() == 1,
        "{said}"
    );
    // A command missing, and `vpan card`'s arguments it can check itself, the same way
    // (not the help, nor a call the API refuses).
    let create = [
        "card",
        "create",
        "--pan",
        "4970100000000014",
        "--pan-expiry",
        "2912",
        "--currency",
        "978",
        "--amount-limit",
        "-5",
    ];
    for (args, names) in [
        (&[][..], "loadgen"),
        (&["card"][..], "pause"),
        (&["card", "list", "--limit", "0"][..], "--limit"),
        (&["card", "list", "--limit", "1001"][..], "--limit"),
        (&["card", "show", ""][..], "12 to 19 digits"),
        // A card number with dots in it, or a typo, is not quoted back.
        (
            &["card", "pause", "4970.1012.3456.7893"][..],
            "12 to 19 digits",
        ),
        (
            &["card", "close", "49701012x34567893"][..],
            "12 to 19 digits",
        ),
        (&create[..], "--amount-limit"),
        // A target that cannot be an address, a negative number and two ends of a run are
        // the command line's fault, said with the flag.
        (
            &["loadgen", "--target", "nothost", "--traffic", "x"][..],
            "--target",
        ),
        (
            &["loadgen", "--target", "127.0.0.1:99999", "--traffic", "x"][..],
            "--target",
        ),
        (
            &[
                "loadgen",
                "--target",
                "127.0.0.1:1",
                "--traffic",
                "x",
                "--rate",
                "-1",
            ][..],
            "--rate",
        ),
        (
            &[
                "loadgen",
                "--target",
                "127.0.0.1:1",
                "--traffic",
                "x",
                "--timeout-ms",
                "0",
            ][..],
            "--timeout-ms",
        ),
        (
            &[
                "loadgen",
                "--target",
                "127.0.0.1:1",
                "--traffic",
                "x",
                "--duration=-1s",
            ][..],
            "--duration",
        ),
        // A negative duration after a space, which clap read as an unknown flag `-1` (since
        // 2026-12-06 the value reaches the duration's parser, which names the flag; loadgen's
        // own is in its unit tests).
        (&["demo", "--duration", "-1s"][..], "--duration"),
        (
            &[
                "card",
                "create",
                "--pan",
                "4970100000000014",
                "--valid-for",
                "-1d",
            ][..],
            "--valid-for",
        ),
        (&["issuer-sim", "--latency-ms", "-5"][..], "--latency-ms"),
        (&["demo", "--connections", "-1"][..], "--connections"),
        (
            &[
                "loadgen",
                "--target",
                "127.0.0.1:1",
                "--traffic",
                "x",
                "--count",
                "9",
                "--duration",
                "1s",
            ][..],
            "--duration",
        ),
    ] {
        let said = refused(args, 2).await;
        assert!(
            said.contains(names) && !said.contains("3456") && !said.contains("49701012"),
            "{args:?}: {said}"
        );
    }
}

/// Runs `vpan ARGS`, checks that it exits with `status` and one line on stderr, and
/// returns that line.
async fn refused(args: &[&str], status: i32) -> String {
    let out = tokio::process::Command::new(VPAN)
        .args(args)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "{args:?}: {said}");
    assert_eq!(said.lines().count(), 1, "{args:?}: {said}");
    said
}

#[tokio::test]
async fn a_file_that_is_not_there_is_the_machines_fault_exit_1_whichever_flag_names_it() {
    let missing = "/nonexistent/vpan-test-file";
    for args in [
        &["card", "--token-file", missing, "list"][..],
        &["card", "--token", "t", "--ca", missing, "list"][..],
        &["loadgen", "--target", "127.0.0.1:1", "--traffic", missing][..],
        &["serve", "--config", missing][..],
        &["rekey", "--config", missing, "--into", missing][..],
        &["issuer-sim", "--listen", "127.0.0.1:0", "--spec", missing][..],
        &[
            "loadgen",
            "--target",
            "127.0.0.1:1",
            "--traffic",
            missing,
            "--spec",
            missing,
        ][..],
    ] {
        let said = refused(args, 1).await;
        assert!(said.contains(missing), "{args:?}: {said}");
    }
    // A certificate the configuration names, missing: refused before the store is opened,
    // so a fresh data directory is not made (nor a key in it) for a start that fails.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve_without_its_certificate = |args: &[&str]| {
        tokio::process::Command::new(VPAN)
            .arg("serve")
            .args(args)
            .env("VPAN_STORE_DATA_DIR", &data)
            .env("VPAN_API_TLS_CERT", missing)
            .env("VPAN_API_TLS_KEY", missing)
            .env("VPAN_NETWORK_LISTEN", "127.0.0.1:0")
            .env("VPAN_API_LISTEN", "127.0.0.1:0")
            .env("VPAN_METRICS_LISTEN", "127.0.0.1:0")
            .output()
    };
    let out = serve_without_its_certificate(&[]).await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.lines().last().is_some_and(|l| l.contains(missing)),
        "{said}"
    );
    assert!(!data.exists(), "nothing made for a start that fails");
    // With JSON logs, the reason is a JSON line too, before the plain one.
    let out = serve_without_its_certificate(&["--log-json"])
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let lines: Vec<&str> = said.lines().collect();
    let [.., logged, plain] = lines[..] else {
        panic!("{said}");
    };
    assert!(
        plain.starts_with("vpan: ") && plain.contains(missing),
        "{said}"
    );
    let logged: serde_json::Value = serde_json::from_str(logged).unwrap();
    assert_eq!(logged["level"], "ERROR", "{said}");
    assert_eq!(logged["message"], "vpan stopped on an error");
    assert_eq!(logged["error"], &plain["vpan: ".len()..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_and_the_sim_agree_on_another_framing_with_a_tpdu_header_in_open_loop() {
    let tpdu = vec![0x60, 0x00, 0x01, 0x00, 0x00];
    let sim = sim_with(&[], |c| {
        c.default_balance = Some(1_000_000_000);
        c.framing = Framing::Len4Ascii;
        c.header = tpdu.clone();
    })
    .await;
    let traffic =
        Arc::new(Traffic::load(fixture("sample.jsonl").as_ref(), Spec::iso87ascii()).unwrap());
    let mut cfg = LoadgenConfig::new(sim.local_addr().to_string(), traffic);
    cfg.framing = Framing::Len4Ascii;
    cfg.header = tpdu;
    cfg.connections = 2;
    cfg.rate = Some(2_000.0);
    cfg.count = Some(90);
    let s = loadgen::run(cfg).await.unwrap();
    assert_eq!(s.mode, "open");
    assert_eq!(s.answered, 90, "{s:?}");
    assert_eq!(s.errors, 0, "{:?}", s.errors_by_kind);
    // Without an accounts file every card exists, so the 51 line is approved here.
    assert_eq!(s.expect_mismatched, 10);
    assert_eq!(s.mismatches.len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_frame_that_does_not_parse_gets_30_under_its_stan_and_the_connection_goes_on() {
    let sim = sim_with(&[(RICH, 10_000)], |_| {}).await;
    let mut c = Client::connect(sim.local_addr()).await;
    let good = financial(b"0100", RICH, "000021", "000000", "000000000100");
    let mut bad = good.pack().to_vec();
    // MTI (4) + bitmap (16) + DE 2 (2 + 16) + DE 3 (6): DE 4 starts at byte 44.
    bad[44] = b'X';
    let mut frame = (bad.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&bad);
    c.stream.write_all(&frame).await.unwrap();
    let answer = c.answers(1).await.remove(b"000021").unwrap();
    assert_eq!(answer.mti(), *b"0110");
    assert_eq!(answer.response_code(), Some(*b"30"));
    assert_eq!(sim.stats().malformed, 1);
    assert_eq!(sim.balance(&pan(RICH)), Some(10_000));
    let ok = c
        .exchange(&financial(
            b"0100",
            RICH,
            "000022",
            "000000",
            "000000000100",
        ))
        .await;
    assert_eq!(ok.response_code(), Some(*b"00"));
    sim.wait_for_requests(1).await;
    sim.shutdown().await;
}
