//! No full card number leaks: the real `vpan serve` binary and the real issuer simulator
//! (`vpan issuer-sim`), both at `RUST_LOG=trace`, once with human logs and once with
//! `--log-json`, driven through approvals, every local decline the test can provoke,
//! passthrough, reversal, advice, malformed and oversized frames, an issuer timeout, API
//! errors and `vpan card` client errors. Then every byte they produced is searched:
//!
//! - stdout and stderr of every process (switch, simulator, each `vpan card` run): no real
//!   PAN, no vPAN (only the successful `vpan card` answers to the authorized operator may
//!   show a vPAN);
//! - every API answer: never a real PAN; a vPAN only in answers to the authorized caller;
//! - a scrape of `/metrics`;
//! - every file of the data directory, as bytes.
//!
//! Searched for: every card number the test used (also the ones that fail Luhn) as text,
//! and generically any run of 13 to 19 digits that starts with a test BIN and passes Luhn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rig;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use rig::{Client, code, purchase, reversal_of, test_pan};
use serde_json::{Value, json};
use vpan::iso8583::{Message, Spec};
use vpan::pan::{Pan, luhn_valid};

const BIN: &str = "497010";
/// Real cards start here, so none of them falls in the virtual range below.
const REAL_PREFIX: &str = "4970100";
/// `cards.virtual_ranges`: vPANs of BIN 497010 cards are drawn under it.
const VIRTUAL_RANGE: &str = "4970109";
/// Cards that are not virtual, passed through.
const OTHER_BIN: &str = "541275";
const TEST_BINS: [&str; 2] = [BIN, OTHER_BIN];

/// A child process whose stdout and stderr go to files.
struct Proc {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let out = dir.join(format!("{name}.stdout"));
        let err = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_vpan"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc {
            name: name.into(),
            child,
            out,
            err,
        }
    }

    /// Waits (at most 30 s) for a line of stderr containing `marker` and returns the
    /// `127.0.0.1:PORT` address in it.
    fn address_logged(&self, marker: &str) -> SocketAddr {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.err).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                let at = line.find("127.0.0.1:").expect("an address in the line");
                let port: String = line[at + "127.0.0.1:".len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                return format!("127.0.0.1:{port}").parse().unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} never logged {marker:?}:\n{text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (a graceful stop logs its shutdown too).
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote, stdout then stderr.
    fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.out).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(&self.err).unwrap_or_default());
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every card number of the run, and where a vPAN may legitimately be seen.
#[derive(Default)]
struct Numbers {
    /// Real PANs (including ones passed through): never anywhere.
    real: Vec<String>,
    /// vPANs, issued or made up: only in authorized answers.
    virtual_: Vec<String>,
}

impl Numbers {
    fn real(&mut self, pan: &Pan) -> Pan {
        self.real.push(pan.expose().to_string());
        pan.clone()
    }

    fn virtual_(&mut self, pan: &str) {
        self.virtual_.push(pan.to_string());
    }

    /// Panics with `place` when `text` holds a card number (a vPAN is allowed when
    /// `vpan_allowed`).
    fn assert_clean(&self, place: &str, text: &[u8], vpan_allowed: bool) {
        let show = |at: usize| {
            let from = at.saturating_sub(80);
            String::from_utf8_lossy(&text[from..(at + 100).min(text.len())]).into_owned()
        };
        for pan in &self.real {
            if let Some(at) = find(text, pan.as_bytes()) {
                panic!("{place}: a real PAN appears: ...{}...", show(at));
            }
        }
        if !vpan_allowed {
            for pan in &self.virtual_ {
                if let Some(at) = find(text, pan.as_bytes()) {
                    panic!("{place}: a vPAN appears: ...{}...", show(at));
                }
            }
        }
        // Generic: a Luhn-valid 13-19 digit run starting with a test BIN (a card number
        // this list missed), unless it is one of the vPANs allowed here.
        let mut i = 0;
        while i < text.len() {
            let run = text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if run == 0 {
                i += 1;
                continue;
            }
            let digits = &text[i..i + run];
            if (13..=19).contains(&run)
                && TEST_BINS.iter().any(|b| digits.starts_with(b.as_bytes()))
                && luhn_valid(digits)
                && !(vpan_allowed && self.virtual_.iter().any(|v| v.as_bytes() == digits))
            {
                panic!("{place}: a card number appears: ...{}...", show(i));
            }
            i += run;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The HTTPS API as a caller sees it; remembers every answer to search it afterwards.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    /// (authorized, status, body) of every call.
    answers: Vec<(bool, StatusCode, String)>,
}

impl Api {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let authorized = token == Some(self.token.as_str()) && status != StatusCode::UNAUTHORIZED;
        self.answers.push((authorized, status, text.clone()));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn authorized(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let token = self.token.clone();
        self.call(method, path, body, Some(&token)).await
    }

    async fn create(&mut self, real: &Pan, extra: Value) -> String {
        let mut body = json!({
            "pan": real.expose(), "pan_expiry": "2912", "currency": "978", "amount_limit": 10_000,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, card) = self
            .authorized(Method::POST, "/v1/cards", Some(&body.to_string()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{card}");
        card["vpan"].as_str().unwrap().to_string()
    }
}

/// One whole run against a fresh switch; `json_logs` picks the log format.
async fn leak_hunt(json_logs: bool) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path();
    let data_dir = dir.path().join("data");
    let mut numbers = Numbers::default();

    // The simulator, then the switch pointed at it.
    let mut sim = Proc::spawn(logs, "sim", &["issuer-sim", "--listen", "127.0.0.1:0"], &[]);
    let sim_addr = sim.address_logged("issuer simulator listening on");
    let config = dir.path().join("vpan.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\nlisten = \"127.0.0.1:0\"\nmax_frame_bytes = 1024\n\
             [issuer]\nconnect = \"{sim_addr}\"\ntimeout_ms = 2000\nsign_on = false\n\
             connections = 1\nreconnect_max_ms = 100\n\
             [cards]\nvirtual_ranges = [\"{VIRTUAL_RANGE}\"]\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = \"{}\"\n",
            data_dir.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut serve_args = vec!["serve", "--config", &config_arg];
    if json_logs {
        serve_args.push("--log-json");
    }
    // A `VPAN_` variable whose name holds a card number: warned of as naming no section.
    let in_a_variable = numbers.real(&test_pan(REAL_PREFIX, 16));
    let variable = format!("VPAN_{}_X", in_a_variable.expose());
    let mut serve = Proc::spawn(logs, "serve", &serve_args, &[(&variable, "1")]);
    let network = serve.address_logged("network listener bound");
    let metrics = serve.address_logged("metrics listener bound");
    let api_addr = serve.address_logged("API listener bound");

    let cert = data_dir.join("tls-cert.pem");
    let token_file = data_dir.join("api-token");
    let mut api = Api {
        http: reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
            )
            .build()
            .unwrap(),
        base: format!("https://{api_addr}"),
        token: std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string(),
        answers: Vec::new(),
    };
    wait_healthy(&mut api).await;

    // A TLS client that names a card number as the server it wants (SNI): rustls logs the
    // name it refuses, text from outside that only the log writer's masking stands before.
    let in_sni = numbers.real(&test_pan(REAL_PREFIX, 16));
    tls_hello_naming(api_addr, in_sni.expose()).await;
    // The same in groups joined by tabs: rustls quotes the name with `{:?}` (`4970\t1012…`),
    // and a JSON line escapes that backslash again (`4970\\t1012…`).
    let in_sni_by_tabs = numbers.real(&test_pan(REAL_PREFIX, 16));
    let digits = in_sni_by_tabs.expose();
    let by_tabs: Vec<&str> = (0..4).map(|i| &digits[i * 4..i * 4 + 4]).collect();
    tls_hello_naming(api_addr, &by_tabs.join("\t")).await;

    // Cards through the API.
    let real_a = numbers.real(&test_pan(REAL_PREFIX, 16));
    let real_b = numbers.real(&test_pan(REAL_PREFIX, 16));
    let real_c = numbers.real(&test_pan(REAL_PREFIX, 19));
    let vpan_a = api.create(&real_a, json!({})).await;
    let vpan_b = api.create(&real_b, json!({"max_uses": 1})).await;
    let vpan_c = api
        .create(&real_c, json!({"merchant_lock": "first_use"}))
        .await;
    for v in [&vpan_a, &vpan_b, &vpan_c] {
        numbers.virtual_(v);
    }
    let pan = |s: &str| Pan::from_digits(s.as_bytes()).unwrap();
    let (va, vb, vc) = (pan(&vpan_a), pan(&vpan_b), pan(&vpan_c));
    let expiry_of = |card: &Value| -> [u8; 4] {
        card["expiry"]
            .as_str()
            .unwrap()
            .as_bytes()
            .try_into()
            .unwrap()
    };
    let (_, card_a) = api
        .authorized(Method::GET, &format!("/v1/cards/{vpan_a}"), None)
        .await;
    let exp = expiry_of(&card_a);

    // The network side.
    let mut net = Client::connect(network).await;
    let expect = |m: Message, want: &str| (m, want.to_string());
    let mut calls = Vec::new();

    // Approval with track 2 (the real card goes to the issuer in DE 2 and DE 35).
    let mut approval = purchase(&mut net, b"0100", &va, &exp, 2_500);
    approval
        .set(
            35,
            format!("{vpan_a}={}1011234567", std::str::from_utf8(&exp).unwrap()).as_bytes(),
        )
        .unwrap();
    let approval = Message::parse(Spec::iso87ascii(), approval.pack()).unwrap();
    calls.push(expect(approval.clone(), "00"));
    // Every local decline reachable from the wire.
    calls.push(expect(purchase(&mut net, b"0100", &va, &exp, 20_000), "61"));
    calls.push(expect(purchase(&mut net, b"0100", &va, b"2001", 100), "54"));
    let mut dollars = purchase(&mut net, b"0100", &va, &exp, 100);
    dollars.set(49, b"840").unwrap();
    calls.push(expect(dollars, "57"));
    let unknown = test_pan(VIRTUAL_RANGE, 16);
    numbers.virtual_(unknown.expose());
    calls.push(expect(
        purchase(&mut net, b"0100", &unknown, &exp, 100),
        "14",
    ));
    for (m, want) in calls.drain(..) {
        let answer = net.call(&m).await;
        assert_eq!(code(&answer), want, "{:?}", m.mti());
    }
    // The approval's transaction again with other content: 94.
    let mut changed = approval.clone();
    changed.set(4, b"000000000800").unwrap();
    assert_eq!(code(&net.call(&changed).await), "94");
    // Single use: the second purchase is declined 46.
    let (_, card_b) = api
        .authorized(Method::GET, &format!("/v1/cards/{vpan_b}"), None)
        .await;
    let exp_b = expiry_of(&card_b);
    let first = purchase(&mut net, b"0200", &vb, &exp_b, 700);
    assert_eq!(code(&net.call(&first).await), "00");
    assert_eq!(
        code(&{
            let m = purchase(&mut net, b"0200", &vb, &exp_b, 700);
            net.call(&m).await
        }),
        "46"
    );
    // Paused: 62.
    let (_, card_c) = api
        .authorized(Method::POST, &format!("/v1/cards/{vpan_c}/pause"), None)
        .await;
    let exp_c = expiry_of(&card_c);
    assert_eq!(
        code(&{
            let m = purchase(&mut net, b"0100", &vc, &exp_c, 100);
            net.call(&m).await
        }),
        "62"
    );
    api.authorized(Method::POST, &format!("/v1/cards/{vpan_c}/resume"), None)
        .await;
    // Reversal of the approval, then an advice.
    assert_eq!(
        code(&{
            let m = reversal_of(&mut net, &approval);
            net.call(&m).await
        }),
        "00"
    );
    let advice = purchase(&mut net, b"0120", &va, &exp, 300);
    let answer = net.call(&advice).await;
    assert_eq!((answer.mti(), code(&answer)), (*b"0130", "00".into()));
    // Passthrough of a card that is not virtual.
    let other = numbers.real(&test_pan(OTHER_BIN, 16));
    assert_eq!(
        code(&{
            let m = purchase(&mut net, b"0100", &other, b"2912", 100);
            net.call(&m).await
        }),
        "00"
    );
    // A malformed frame with a readable MTI and STAN (DE 4 holds letters): 30.
    let good = purchase(&mut net, b"0100", &va, &exp, 100);
    let mut wire = good.pack().to_vec();
    let at = find(&wire, b"000000000100").unwrap();
    wire[at..at + 3].copy_from_slice(b"ABC");
    net.send_raw(Bytes::from(wire)).await;
    assert_eq!(code(&net.answer(good.stan().unwrap()).await), "30");
    // An unreadable frame that holds card numbers: dropped, the connection goes on.
    let mut junk = b"ZZ".to_vec();
    junk.extend_from_slice(real_a.as_bytes());
    junk.extend_from_slice(vpan_a.as_bytes());
    net.send_raw(Bytes::from(junk)).await;
    let mut echo = Message::new(Spec::iso87ascii(), b"0800").unwrap();
    echo.set(7, b"1126143015").unwrap();
    echo.set(11, &net.next_stan()).unwrap();
    echo.set(70, b"301").unwrap();
    assert_eq!(code(&net.call(&echo).await), "00");
    // An oversized frame full of card numbers closes its own connection only.
    let mut big = Client::connect(network).await;
    big.send_raw(Bytes::from(vpan_a.repeat(100).into_bytes()))
        .await;
    // Closed (an end or a reset, whichever the kernel reports), with no answer.
    let closed = tokio::time::timeout(Duration::from_secs(5), big.try_answer(*b"000000")).await;
    assert!(
        matches!(closed, Ok(None)),
        "the oversized frame closed its connection"
    );

    // The issuer stops answering: another simulator on the same port that books every
    // request and answers none. The switch redials it; purchases then time out (91).
    sim.terminate();
    let sim_addr_arg = sim_addr.to_string();
    let sim2 = Proc::spawn(
        logs,
        "sim-silent",
        &[
            "issuer-sim",
            "--listen",
            &sim_addr_arg,
            "--timeout-share",
            "1",
        ],
        &[],
    );
    sim2.address_logged("issuer simulator listening on");
    wait_healthy(&mut api).await;
    let late = purchase(&mut net, b"0100", &va, &exp, 1_000);
    assert_eq!(code(&net.call(&late).await), "91");
    assert_eq!(
        code(&{
            let m = purchase(&mut net, b"0100", &other, b"2912", 100);
            net.call(&m).await
        }),
        "91"
    );

    // API errors. A card number in a malformed body (serde quotes what it cannot read).
    let body = format!(
        "{{\"pan\": {}, \"pan_expiry\": \"2912\", \"currency\": \"978\", \"amount_limit\": 1}}",
        real_a.expose()
    );
    assert_eq!(
        api.authorized(Method::POST, "/v1/cards", Some(&body))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let body = format!(
        "{{\"pan\": \"{0}\", \"pan_expiry\": \"2912\", \"currency\": \"978\", \"amount_limit\": \"{0}\"}}",
        real_a.expose()
    );
    assert_eq!(
        api.authorized(Method::POST, "/v1/cards", Some(&body))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.authorized(
            Method::POST,
            "/v1/cards",
            Some(&format!("{{\"pan\": \"{}", real_a.expose()))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    // A number that fails Luhn: not a card, but it must not be echoed either.
    let mut bad_luhn = real_b.expose().to_string();
    let last = bad_luhn.pop().unwrap();
    bad_luhn.push(if last == '9' {
        '0'
    } else {
        (last as u8 + 1) as char
    });
    numbers.real.push(bad_luhn.clone());
    let body = json!({"pan": bad_luhn, "pan_expiry": "2912", "currency": "978", "amount_limit": 1});
    assert_eq!(
        api.authorized(Method::POST, "/v1/cards", Some(&body.to_string()))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let body =
        json!({"pan": real_a.expose(), "pan_expiry": "2912", "currency": "97", "amount_limit": 1});
    assert_eq!(
        api.authorized(Method::POST, "/v1/cards", Some(&body.to_string()))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Unknown cards, by number.
    let never = test_pan(VIRTUAL_RANGE, 16);
    numbers.virtual_(never.expose());
    for (method, path) in [
        (Method::GET, format!("/v1/cards/{}", never.expose())),
        (Method::POST, format!("/v1/cards/{}/close", never.expose())),
        (
            Method::GET,
            format!("/v1/cards/{}/transactions", never.expose()),
        ),
        (Method::GET, format!("/v1/cards/{}", real_a.expose())),
    ] {
        assert_eq!(
            api.authorized(method, &path, None).await.0,
            StatusCode::NOT_FOUND
        );
    }
    // 401: no token, a wrong one; with card numbers in the path and the body.
    let body =
        json!({"pan": real_a.expose(), "pan_expiry": "2912", "currency": "978", "amount_limit": 1});
    for token in [None, Some("not-the-token")] {
        assert_eq!(
            api.call(Method::POST, "/v1/cards", Some(&body.to_string()), token)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            api.call(Method::GET, &format!("/v1/cards/{vpan_a}"), None, token)
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Authorized reads: the vPAN, never the real card.
    api.authorized(
        Method::GET,
        &format!("/v1/cards/{vpan_a}/transactions"),
        None,
    )
    .await;
    api.authorized(Method::GET, "/v1/cards?limit=10", None)
        .await;

    // `vpan card`: client errors, then one authorized success.
    let url = format!("https://{api_addr}");
    let cert_arg = cert.display().to_string();
    let token_arg = token_file.display().to_string();
    let conn = ["--url", &url, "--ca", &cert_arg, "--token-file", &token_arg];
    let card_runs: Vec<(Vec<String>, Option<&str>, bool)> = vec![
        // Fails Luhn (422).
        (create_args(&bad_luhn, "978"), None, false),
        // From stdin, with a bad currency (422).
        (create_args("-", "97"), Some(real_a.expose()), false),
        // Unknown card (404).
        (
            vec!["show".to_string(), never.expose().to_string()],
            None,
            false,
        ),
        (
            vec!["close".to_string(), real_a.expose().to_string()],
            None,
            false,
        ),
        // A card number where a flag was forgotten (a usage error).
        (
            vec![
                "create",
                real_a.expose(),
                "--pan-expiry",
                "2912",
                "--currency",
                "978",
                "--amount-limit",
                "100",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            None,
            false,
        ),
        // Authorized: the answer shows the vPAN.
        (vec!["show".to_string(), vpan_a.clone()], None, true),
    ];
    let mut card_outputs = Vec::new();
    for (i, (args, stdin, ok)) in card_runs.iter().enumerate() {
        let mut all: Vec<&str> = vec!["card"];
        all.extend(args.iter().map(String::as_str));
        all.extend(conn);
        let output = run_card(&all, *stdin);
        assert_eq!(output.0, *ok, "vpan card {args:?}: {}", output.1);
        card_outputs.push((format!("vpan card run {i} ({})", args[0]), output.1, *ok));
    }
    // The wrong token (401), with the real card in the arguments.
    let wrong = [
        "card",
        "create",
        "--pan",
        real_a.expose(),
        "--pan-expiry",
        "2912",
        "--currency",
        "978",
        "--amount-limit",
        "100",
        "--url",
        &url,
        "--ca",
        &cert_arg,
        "--token",
        "wrong",
    ];
    let output = run_card(&wrong, None);
    assert!(!output.0);
    card_outputs.push(("vpan card with a wrong token".into(), output.1, false));
    // No API where it points: the HTTP client's error quotes the URL, vPAN in its path.
    let nowhere = [
        "card",
        "show",
        &vpan_a,
        "--url",
        "https://127.0.0.1:1",
        "--ca",
        &cert_arg,
        "--token-file",
        &token_arg,
    ];
    let output = run_card(&nowhere, None);
    assert!(!output.0);
    assert!(output.1.contains("127.0.0.1:1"), "{}", output.1);
    card_outputs.push(("vpan card with no API there".into(), output.1, false));

    // Metrics, then a graceful stop (its shutdown lines are searched too).
    let scrape = http_get(metrics, "/metrics").await;
    // The requests' own series (not only those made at zero at start) are searched too.
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("vpan_requests_total{") && !l.ends_with(" 0")),
        "{scrape}"
    );
    serve.terminate();
    drop(sim2);

    // The search.
    let place = |what: &str| format!("{} logs: {what}", if json_logs { "JSON" } else { "human" });
    let serve_out = serve.output();
    assert!(
        serve_out.contains("TRACE") || serve_out.contains("\"level\":\"TRACE\""),
        "trace level was on"
    );
    numbers.assert_clean(
        &place("vpan serve stdout/stderr"),
        serve_out.as_bytes(),
        false,
    );
    // A number in groups is no run of digits for the search above: each line is read
    // again as its digits alone.
    for line in serve_out.lines() {
        let digits: String = line.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !digits.contains(in_sni_by_tabs.expose()),
            "{}: a card number in groups: {line}",
            place("vpan serve stdout/stderr")
        );
    }
    // Logged, masked: the searches above found them hidden, not missing.
    for (what, number) in [
        ("the TLS server name", &in_sni),
        ("the TLS server name in groups", &in_sni_by_tabs),
        ("the variable", &in_a_variable),
    ] {
        assert!(
            serve_out.contains(&number.masked().to_string()),
            "{}: {what} is not in the log, masked",
            place("vpan serve stdout/stderr")
        );
    }
    numbers.assert_clean(
        &place("issuer-sim stdout/stderr"),
        sim.output().as_bytes(),
        false,
    );
    numbers.assert_clean(
        &place("silent issuer-sim stdout/stderr"),
        &std::fs::read(logs.join("sim-silent.stderr")).unwrap(),
        false,
    );
    for (what, out, ok) in &card_outputs {
        numbers.assert_clean(&place(what), out.as_bytes(), *ok);
    }
    for (authorized, status, body) in &api.answers {
        numbers.assert_clean(
            &place(&format!("API answer {status}")),
            body.as_bytes(),
            *authorized,
        );
    }
    numbers.assert_clean(&place("/metrics"), scrape.as_bytes(), false);
    let mut files = 0;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&data_dir),
        0o700,
        "the data directory is vpan's user's alone"
    );
    for path in walk(&data_dir) {
        files += 1;
        // The certificate is public; every other file (journal, snapshots, reversals owed,
        // keys, token, lock) is for vpan's user alone, whatever the umask.
        if path.file_name() != Some("tls-cert.pem".as_ref()) {
            assert_eq!(mode(&path) & 0o077, 0, "{} is private", path.display());
        }
        numbers.assert_clean(
            &place(&format!("data dir file {}", path.display())),
            &std::fs::read(&path).unwrap(),
            false,
        );
    }
    assert!(
        files >= 3,
        "the data dir holds the journal, key, token and certificate"
    );
    if std::env::var_os("VPAN_TEST_KEEP_LOGS").is_some() {
        // For a person checking what was searched: the logs and the data dir stay.
        eprintln!("kept: {}", dir.keep().display());
    }
}

/// The arguments of a `vpan card create` of 100 minor units on `pan` in `currency`.
fn create_args(pan: &str, currency: &str) -> Vec<String> {
    [
        "create",
        "--pan",
        pan,
        "--pan-expiry",
        "2912",
        "--currency",
        currency,
        "--amount-limit",
        "100",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `vpan ...` with `stdin`; (exit status 0, stdout + stderr).
fn run_card(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    run_vpan(args, &[], stdin)
}

/// Runs `vpan ...` with `env` beside `RUST_LOG=trace`, and `stdin`; (exit status 0, stdout
/// + stderr). One that has not exited in 60 s fails the test, killed.
fn run_vpan(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpan"))
        .args(args)
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("vpan {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `vpan serve` on `data_dir` with its listeners on port 0 and no issuer there, its
/// output in `dir`.
fn serve_alone(dir: &Path, data_dir: &Path) -> Proc {
    serve_alone_with(dir, data_dir, &["serve"])
}

/// [`serve_alone`], run with `args`.
fn serve_alone_with(dir: &Path, data_dir: &Path, args: &[&str]) -> Proc {
    Proc::spawn(
        dir,
        "serve",
        args,
        &[
            ("VPAN_NETWORK_LISTEN", "127.0.0.1:0"),
            ("VPAN_API_LISTEN", "127.0.0.1:0"),
            ("VPAN_METRICS_LISTEN", "127.0.0.1:0"),
            ("VPAN_ISSUER_CONNECT", "127.0.0.1:9"),
            ("VPAN_STORE_DATA_DIR", data_dir.to_str().unwrap()),
        ],
    )
}

/// Sends a TLS 1.2/1.3 ClientHello asking for server `name` (its only extension, SNI) and
/// reads until the server closes: the handshake fails, after the name was read.
async fn tls_hello_naming(addr: SocketAddr, name: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = name.as_bytes();
    let len16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    // server_name: a list of one host_name (type 0).
    let mut list = vec![0u8];
    list.extend(len16(name.len()));
    list.extend(name);
    let mut sni = vec![0, 0];
    sni.extend(len16(list.len() + 2));
    sni.extend(len16(list.len()));
    sni.extend(list);
    let mut hello = vec![3, 3];
    hello.extend([7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend([0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    hello.extend([1, 0]); // no compression
    hello.extend(len16(sni.len()));
    hello.extend(sni);
    let mut handshake = vec![1, 0];
    handshake.extend(len16(hello.len()));
    handshake.extend(hello);
    let mut record = vec![0x16, 3, 1];
    record.extend(len16(handshake.len()));
    record.extend(handshake);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
}

/// Waits (at most 20 s) for `/healthz` to say 200: listener, store and issuer link up.
async fn wait_healthy(api: &mut Api) {
    let start = Instant::now();
    loop {
        let resp = api.http.get(format!("{}/healthz", api.base)).send().await;
        if resp.is_ok_and(|r| r.status() == StatusCode::OK) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the switch never got healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET; the whole answer.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_leaks_from_the_switch_with_human_logs_at_trace_level() {
    leak_hunt(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_number_leaks_from_the_switch_with_json_logs_at_trace_level() {
    leak_hunt(true).await;
}

/// A token file an operator wrote with a short token: the switch starts, warns that the
/// token is guessable (saying how long it is, never what it is), and takes it; one of 64
/// characters gets no warning.
#[test]
fn a_short_api_token_is_warned_of_at_start_and_never_logged() {
    for (token, warned) in [("Shr7-tok3n-of-19-ch", true), (&*"k".repeat(64), false)] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        let token_file = data_dir.join("api-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut serve = serve_alone(dir.path(), &data_dir);
        serve.address_logged("API listener bound");
        serve.terminate();
        let log = serve.output();
        assert_eq!(
            log.contains("the API token is short enough to guess"),
            warned,
            "{} characters:\n{log}",
            token.len()
        );
        if warned {
            assert!(log.contains("characters=19"), "{log}");
        }
        assert!(!log.contains(token), "the token itself is logged:\n{log}");
    }
}

/// Secret files open to group or others are each warned of once at a start, with their
/// mode and the command that closes them: the key of the real card numbers (read by the
/// cards and, once, handed on to the book of reversals owed) and the API token.
#[test]
fn secret_files_open_to_others_are_warned_of_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let key_file = data_dir.join("pan.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let token_file = data_dir.join("api-token");
    std::fs::write(&token_file, format!("{}\n", "k".repeat(64))).unwrap();
    for file in [&key_file, &token_file] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut serve = serve_alone(dir.path(), &data_dir);
    serve.address_logged("API listener bound");
    serve.terminate();
    let log = serve.output();
    for file in [&key_file, &token_file] {
        let advice = format!("chmod 600 {}", file.display());
        assert_eq!(log.matches(&advice).count(), 1, "{advice}:\n{log}");
    }
    assert!(log.contains("the key file for real card numbers is open to group or others"));
}

/// A config file that holds `api.token` is a secret file too, warned of when open to group
/// or others (review of configuration); one without the token, or closed, is not.
#[test]
fn a_config_file_holding_the_token_open_to_others_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("vpan.toml");
    let token = format!("[api]\ntoken = \"{}\"\n", "k".repeat(64));
    for (text, mode, warned) in [
        (token.as_str(), 0o644, true),
        (token.as_str(), 0o600, false),
        ("[api]\ntoken = \"\"\n", 0o644, false),
    ] {
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
        let args = ["serve", "--config", config.to_str().unwrap()];
        let mut serve = serve_alone_with(dir.path(), &data_dir, &args);
        serve.address_logged("API listener bound");
        serve.terminate();
        let log = serve.output();
        let advice = format!("chmod 600 {}", config.display());
        assert_eq!(
            log.matches(&advice).count(),
            usize::from(warned),
            "{mode:o} {text:?}:\n{log}"
        );
        if warned {
            assert!(
                log.contains("the config file, which holds api.token, is open to group or others"),
                "{log}"
            );
        }
        assert!(
            !log.contains(&"k".repeat(64)),
            "the token itself is logged:\n{log}"
        );
    }
}

/// A card number split by a line break or a tab in what a command or its configuration
/// could not read: the error quotes it (a tab as `\t`, the way `{:?}` writes one), and it
/// is masked as printed, the quote's escapes counted as the gaps between its groups.
#[test]
fn a_card_number_split_or_escaped_in_an_error_is_masked_as_printed() {
    let pan = test_pan(REAL_PREFIX, 16);
    let d = pan.expose();
    let split_by = |sep: &str| [&d[..4], &d[4..8], &d[8..12], &d[12..]].join(sep);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vpan.toml");
    // `\t` in a TOML string is a tab.
    let toml = format!("[network]\nmax_connections = \"{}\"\n", split_by("\\t"));
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let newline_split = format!("{}\n{}", &d[..8], &d[8..]);
    let split_by_tabs = split_by("\t");
    let no_env: &[(&str, &str)] = &[];
    let runs = [
        (vec!["card", "create", &newline_split], no_env),
        (vec!["serve"], &[("VPAN_NETWORK_FRAMING", &*split_by_tabs)]),
        (vec!["serve", "--config", &config], no_env),
    ];
    for (args, env) in runs {
        let (ok, text) = run_vpan(&args, env, None);
        assert!(!ok, "vpan {args:?} ({env:?}) succeeded");
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        assert!(
            !digits.contains(d),
            "vpan {args:?} ({env:?}) printed the card number: {text}"
        );
        assert!(
            text.contains(&format!("{}******{}", &d[..6], &d[12..])),
            "vpan {args:?} ({env:?}) printed no masked card number: {text}"
        );
    }
}

/// `vpan serve` holds every card's real PAN in the clear in memory: it turns core dumps off
/// itself (both limits at 0), as `vpan rekey` does, whatever runs it (a shell, a container,
/// `vpan demo`), not only under the systemd unit's `LimitCORE=0`.
#[test]
fn the_switch_turns_its_core_dumps_off() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_alone(dir.path(), &dir.path().join("data"));
    serve.address_logged("API listener bound");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.child.id())).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core size line in /proc/PID/limits")
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect();
    assert_eq!(
        core,
        ["0", "0"],
        "the core size limits (soft, hard):\n{limits}"
    );
}
