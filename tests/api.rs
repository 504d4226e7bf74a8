//! The issuance API over real HTTPS: a running `App` on port 0 with a temp data dir, a
//! reqwest client that trusts only the generated self-signed certificate, and every answer
//! body checked for the real PAN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vpan::app::{Addresses, App};
use vpan::cards::{CardKey, Decision, IssuerOutcome, Kind};
use vpan::config::Config;

/// A running switch, an HTTPS client for its API, and every answer body seen.
struct Running {
    addrs: Addresses,
    data_dir: PathBuf,
    http: reqwest::Client,
    token: String,
    cards: std::sync::Arc<vpan::cards::Cards>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Every response body, to check that no real PAN was ever answered.
    bodies: Mutex<Vec<String>>,
    /// The stand-in issuer host (accepts and holds connections).
    issuer: JoinHandle<()>,
}

fn config(data_dir: &Path, issuer: &str) -> Config {
    let mut c = Config::default();
    c.network.listen = "127.0.0.1:0".into();
    c.api.listen = "127.0.0.1:0".into();
    c.metrics.listen = "127.0.0.1:0".into();
    c.issuer.connect = issuer.into();
    c.issuer.sign_on = false;
    c.issuer.echo_interval_ms = 3_600_000;
    c.store.data_dir = data_dir.to_path_buf();
    c
}

fn https_client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

impl Running {
    async fn start(data_dir: &Path) -> Running {
        let (issuer_addr, issuer) = common::silent_issuer().await;
        let app = App::build(config(data_dir, &issuer_addr)).await.unwrap();
        let addrs = app.addresses();
        let cards = app.cards();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let token = std::fs::read_to_string(data_dir.join("api-token"))
            .unwrap()
            .trim()
            .to_string();
        Running {
            addrs,
            data_dir: data_dir.to_path_buf(),
            http: https_client(&data_dir.join("tls-cert.pem")),
            token,
            cards,
            stop: Some(stop),
            task: Some(task),
            bodies: Mutex::new(Vec::new()),
            issuer,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addrs.api.port())
    }

    /// A TLS connection to the API, to write requests by hand.
    async fn tls_by_hand(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls_offering(&[]).await
    }

    /// [`Running::tls_by_hand`], offering these protocols in ALPN.
    async fn tls_offering(
        &self,
        protocols: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let pem = std::fs::read(self.data_dir.join("tls-cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(self.addrs.api)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    /// `GET /healthz` on a new connection from `ip` (on this host's loopback: 127.0.0.2 is
    /// another client than 127.0.0.1 to the API); its status, or why there is none.
    async fn healthz_from(&self, ip: [u8; 4]) -> reqwest::Result<StatusCode> {
        let pem = std::fs::read(self.data_dir.join("tls-cert.pem")).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Ok(client.get(self.url("/healthz")).send().await?.status())
    }

    /// A call with the token; the status and the JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, Some(&self.token.clone()))
            .await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
        (status, value)
    }

    async fn create(&self, body: Value) -> Value {
        let (status, card) = self.call(Method::POST, "/v1/cards", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{card}");
        card
    }

    /// Asserts that no answer so far held any of these real PANs.
    fn assert_never_answered(&self, pans: &[String]) {
        let bodies = self.bodies.lock().unwrap();
        assert!(!bodies.is_empty());
        for body in bodies.iter() {
            for pan in pans {
                assert!(
                    !body.contains(pan.as_str()),
                    "an answer held a real PAN: {body}"
                );
            }
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        drop(self.cards);
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        self.issuer.abort();
    }
}

/// A Luhn-valid test PAN (BIN 497010), as text.
fn pan() -> String {
    common::test_pan().expose().to_string()
}

fn card_request(pan: &str) -> Value {
    json!({
        "pan": pan,
        "pan_expiry": "2912",
        "currency": "978",
        "amount_limit": 10_000,
        "per_transaction_limit": 2_500,
        "max_uses": 3,
        "valid_for_seconds": 86_400,
        "merchant_lock": "first_use",
        "mcc_allow": ["5411"],
        "mcc_block": ["7995"]
    })
}

fn error_of(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {body}")),
        body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}")),
    )
}

#[tokio::test]
async fn a_card_is_issued_shown_paused_resumed_and_closed_and_each_change_shows_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let real = pan();
    let card = api.create(card_request(&real)).await;

    let vpan = card["vpan"].as_str().unwrap().to_string();
    assert_eq!(vpan.len(), 16);
    assert_eq!(&vpan[..6], &real[..6], "the vPAN keeps the real card's BIN");
    assert_ne!(vpan, real);
    assert!(vpan::pan::luhn_valid(vpan.as_bytes()));
    assert_eq!(card["status"], "active");
    assert_eq!(
        card["pan_masked"],
        format!("{}******{}", &real[..6], &real[12..])
    );
    assert_eq!(card["currency"], "978");
    assert_eq!(card["amount_limit"], 10_000);
    assert_eq!(card["per_transaction_limit"], 2_500);
    assert_eq!(card["max_uses"], 3);
    assert_eq!(card["merchant_lock"], "first_use");
    assert_eq!(card["mcc_allow"], json!(["5411"]));
    assert_eq!(card["mcc_block"], json!(["7995"]));
    assert_eq!(card["available"], 10_000);
    assert_eq!(card["spent"], 0);
    assert_eq!(card["held"], 0);
    assert_eq!(card["uses"], 0);
    assert_eq!(card["expiry"].as_str().unwrap().len(), 4);
    assert!(card["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(card["valid_until"].as_str().unwrap().ends_with('Z'));

    let (status, shown) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["vpan"], vpan);
    assert_eq!(shown["status"], "active");

    for (verb, after) in [
        ("pause", "paused"),
        ("resume", "active"),
        ("pause", "paused"),
        ("close", "closed"),
    ] {
        let (status, changed) = api
            .call(Method::POST, &format!("/v1/cards/{vpan}/{verb}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{verb}: {changed}");
        assert_eq!(changed["status"], after, "{verb}");
        let (_, shown) = api
            .call(Method::GET, &format!("/v1/cards/{vpan}"), None)
            .await;
        assert_eq!(shown["status"], after, "GET right after {verb}");
        // A paused card keeps what it can approve once resumed; a closed one has nothing.
        let available = if after == "closed" { 0 } else { 10_000 };
        assert_eq!(shown["available"], available, "available when {after}");
        assert_eq!(changed["available"], available, "{verb}'s answer");
    }

    for verb in ["resume", "pause"] {
        let (status, body) = api
            .call(Method::POST, &format!("/v1/cards/{vpan}/{verb}"), None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{verb} a closed card");
        assert_eq!(error_of(&body).0, "conflict");
    }
    let (status, _) = api
        .call(Method::POST, &format!("/v1/cards/{vpan}/close"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "closing a closed card changes nothing"
    );

    api.assert_never_answered(&[real]);
    api.stop().await;
}

#[tokio::test]
async fn each_invalid_value_is_refused_with_422_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let real = pan();
    let mut bad_luhn = real.clone().into_bytes();
    bad_luhn[15] = b'0' + (bad_luhn[15] - b'0' + 1) % 10;
    let bad_luhn = String::from_utf8(bad_luhn).unwrap();
    let cases = [
        (json!({"pan": bad_luhn}), "pan"),
        (json!({"pan_expiry": "2913"}), "pan_expiry"),
        (json!({"pan_expiry": "0112"}), "pan_expiry"),
        (json!({"currency": "97"}), "currency"),
        (json!({"currency": "EUR"}), "currency"),
        (json!({"amount_limit": 0}), "amount_limit"),
        (json!({"amount_limit": -100}), "amount_limit"),
        (json!({"per_transaction_limit": 0}), "per_transaction_limit"),
        (
            json!({"per_transaction_limit": 20_000}),
            "per_transaction_limit",
        ),
        (json!({"max_uses": 0}), "max_uses"),
        (
            json!({"valid_for_seconds": null, "valid_until": "2001-01-01T00:00:00Z"}),
            "valid_until",
        ),
        (json!({"valid_for_seconds": 0}), "valid_for_seconds"),
        (json!({"merchant_lock": "always"}), "merchant_lock"),
        (json!({"mcc_allow": ["541"]}), "mcc_allow[0]"),
        (json!({"mcc_block": ["ABCD"]}), "mcc_block[0]"),
    ];
    for (change, field) in cases {
        let mut body = card_request(&real);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = api.call(Method::POST, "/v1/cards", Some(body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{change}: {answer}"
        );
        let (code, message) = error_of(&answer);
        assert_eq!(code, "invalid_value");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{change}: {message}"
        );
    }
    // A vPAN given as the real card is the pan's fault too, and says so the same way.
    let card = api.create(card_request(&real)).await;
    let vpan = card["vpan"].as_str().unwrap();
    let (status, answer) = api
        .call(Method::POST, "/v1/cards", Some(card_request(vpan)))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let (_, message) = error_of(&answer);
    assert!(message.starts_with("pan:"), "{message}");
    api.assert_never_answered(&[real, bad_luhn]);
    api.stop().await;
}

#[tokio::test]
async fn malformed_json_unknown_keys_and_wrong_types_are_refused_with_400_without_echoing_a_pan() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let real = pan();

    let request = api
        .http
        .post(api.url("/v1/cards"))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body("{\"pan\": ");
    let (status, body) = api.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "malformed");

    let mut unknown = card_request(&real);
    unknown["max_use"] = json!(1);
    let (status, body) = api.call(Method::POST, "/v1/cards", Some(unknown)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("max_use"), "{body}");

    // A PAN sent as a number: serde would echo the value; the answer masks it.
    let mut number = card_request(&real);
    number["pan"] = json!(real.parse::<u64>().unwrap());
    let (status, body) = api.call(Method::POST, "/v1/cards", Some(number)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("pan"), "{body}");

    let mut missing = card_request(&real);
    missing.as_object_mut().unwrap().remove("amount_limit");
    let (status, body) = api.call(Method::POST, "/v1/cards", Some(missing)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("amount_limit"), "{body}");

    // A card number with spaces, where a number is due: the error names the field, and
    // quotes none of the value.
    let mut spaced = card_request(&real);
    let with_spaces = format!(
        "{} {} {} {}",
        &real[..4],
        &real[4..8],
        &real[8..12],
        &real[12..]
    );
    spaced["amount_limit"] = json!(with_spaces);
    let (status, body) = api.call(Method::POST, "/v1/cards", Some(spaced)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("amount_limit"), "{body}");
    assert!(!body.to_string().contains(&with_spaces[5..]), "{body}");

    // The same card number, with dashes, as an unknown key of the list's query.
    let with_dashes = with_spaces.replace(' ', "-");
    let (status, body) = api
        .call(Method::GET, &format!("/v1/cards?{with_dashes}=1"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "malformed");
    assert!(!body.to_string().contains(&with_dashes[5..]), "{body}");

    // Written with separators no masking of digit runs can know, as a key of the body or
    // of the query: the digits the mask hides never come back, in any order or grouping.
    let hidden = &real[6..12];
    // Digits of any script, read as ASCII ones.
    let digits_of = |body: &Value| -> String {
        body.to_string()
            .chars()
            .filter_map(|c| match c as u32 {
                0xFF10..=0xFF19 => char::from_digit(c as u32 - 0xFF10, 10),
                0x0660..=0x0669 => char::from_digit(c as u32 - 0x0660, 10),
                _ => c.is_ascii_digit().then_some(c),
            })
            .collect()
    };
    let in_script = |zero: u32| -> String {
        real.chars()
            .map(|d| char::from_u32(zero + d.to_digit(10).unwrap()).unwrap())
            .collect()
    };
    let mut written: Vec<String> = ["_", "/", "\t", "  ", "x"]
        .iter()
        .map(|joiner| with_spaces.replace(' ', joiner))
        .collect();
    // A backtick in the key, which serde quotes between backticks of its own; digits of
    // other scripts.
    let underscored = with_spaces.replace(' ', "_");
    written.push(format!("`{underscored}"));
    written.push(format!("a`{underscored}`b"));
    written.push(in_script(0xFF10));
    written.push(in_script(0x0660));
    for key in &written {
        let mut keyed = card_request(&real);
        keyed[key.as_str()] = json!(1);
        let (status, body) = api.call(Method::POST, "/v1/cards", Some(keyed)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!digits_of(&body).contains(hidden), "{key:?}: {body}");
        let query: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        let (status, body) = api
            .call(Method::GET, &format!("/v1/cards?{query}=1"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!digits_of(&body).contains(hidden), "{key:?}: {body}");
    }

    api.assert_never_answered(&[real]);
    api.stop().await;
}

#[tokio::test]
async fn a_request_head_over_16_kib_is_refused_431() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    for (filler, want) in [
        (8 * 1024, StatusCode::OK),
        (20 * 1024, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ] {
        let answer = api
            .http
            .get(api.url("/v1/cards"))
            .bearer_auth(&api.token)
            .header("x-filler", "a".repeat(filler))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), want, "a head of {filler} bytes and more");
    }
    api.stop().await;
}

#[tokio::test]
async fn a_body_announced_too_large_is_refused_at_once_and_one_trickled_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let post = |length: usize| {
        format!(
            "POST /v1/cards HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n",
            api.token
        )
    };
    // Announced over the limit, nothing sent: 413 without waiting for the bytes.
    let mut stream = api.tls_by_hand().await;
    stream.write_all(post(100_000).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A small body trickled a byte a second: cut off with 408 at the body's deadline.
    let mut stream = api.tls_by_hand().await;
    stream.write_all(post(100).as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = loop {
        let mut buf = [0u8; 4096];
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
        {
            break String::from_utf8_lossy(&buf[..read.unwrap()]).into_owned();
        }
        stream.write_all(b" ").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still waiting for the body after 30 s"
        );
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= vpan::api::BODY_READ_TIMEOUT - Duration::from_secs(1));
}

/// Review of a07ad5e: a probe that offers only `http/1.0` in ALPN (older monitoring
/// tools, `curl --http1.0`) was refused in the handshake, with no status at all.
#[tokio::test]
async fn a_client_offering_http_1_0_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let mut stream = api.tls_offering(&[b"http/1.0"]).await;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
}

#[tokio::test]
async fn a_client_opening_bare_connections_by_the_thousand_shuts_out_no_other_client() {
    use vpan::api::tls::{MAX_CONNECTIONS, MAX_HANDSHAKES_PER_CLIENT};
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let healthz = |http: &reqwest::Client| http.get(api.url("/healthz")).send();
    // A client connected before, on a kept-alive connection.
    assert_eq!(healthz(&api.http).await.unwrap().status(), StatusCode::OK);
    // More TCP connections than the API has places, from 127.0.0.1, none of which ever
    // begins its TLS handshake.
    let mut bare = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 64 {
        bare.push(tokio::net::TcpStream::connect(api.addrs.api).await.unwrap());
    }
    // Let the listener accept (and close) them all: a connection of ours it would refuse
    // must be refused for being one too many, not for coming first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another client, from another address: served.
    let other = api.healthz_from([127, 0, 0, 2]).await;
    assert_eq!(other.unwrap(), StatusCode::OK);
    // The client connected before goes on.
    assert_eq!(healthz(&api.http).await.unwrap().status(), StatusCode::OK);
    // The flooding address holds its share of handshakes under way, and no more.
    let flooder = api.healthz_from([127, 0, 0, 1]).await;
    assert!(
        flooder.is_err(),
        "a new connection from an address with {MAX_HANDSHAKES_PER_CLIENT} handshakes under way was served"
    );
    drop(bare);
    api.stop().await;
}

#[tokio::test]
async fn a_client_holding_finished_connections_by_the_thousand_shuts_out_no_other_client() {
    use vpan::api::tls::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT};
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    // As many TLS connections as the API has places, from 127.0.0.1, each handshake done
    // and nothing sent.
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(api.tls_by_hand().await);
    }
    let other = api.healthz_from([127, 0, 0, 2]).await;
    assert_eq!(other.unwrap(), StatusCode::OK);
    let more = api.healthz_from([127, 0, 0, 1]).await;
    assert!(
        more.is_err(),
        "a connection past its address's {MAX_CONNECTIONS_PER_CLIENT} was served"
    );
    drop(held);
    api.stop().await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_and_a_bad_path_or_method_gets_json() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    // TLS by hand: one header byte a second, each restarting the connection's idle timer;
    // the header deadline ends it all the same.
    let mut stream = api.tls_by_hand().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = loop {
        let mut buf = [0u8; 512];
        // Anything read (an error answer, or the end) means the server gave up on it.
        if tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
            .await
            .is_ok()
        {
            break started.elapsed();
        }
        if stream.write_all(b"X").await.is_err() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still open after 30 s"
        );
    };
    assert!(
        closed >= vpan::api::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "closed after {closed:?}, before the deadline"
    );

    // A path segment that does not decode, and a method /healthz does not take.
    let (status, body) = api.call(Method::GET, "/v1/cards/%FF%FE", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "not_found");
    let (status, body) = api.call(Method::POST, "/healthz", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&body).0, "method_not_allowed");
    api.stop().await;
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_401_on_every_card_call() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let card = api.create(card_request(&pan())).await;
    let vpan = card["vpan"].as_str().unwrap();
    let calls = [
        (
            Method::POST,
            "/v1/cards".to_string(),
            Some(card_request(&pan())),
        ),
        (Method::GET, "/v1/cards".to_string(), None),
        (Method::GET, format!("/v1/cards/{vpan}"), None),
        (Method::POST, format!("/v1/cards/{vpan}/pause"), None),
        (Method::POST, format!("/v1/cards/{vpan}/resume"), None),
        (Method::POST, format!("/v1/cards/{vpan}/close"), None),
        (Method::GET, format!("/v1/cards/{vpan}/transactions"), None),
    ];
    let wrong = format!("{}x", api.token);
    for (method, path, body) in calls {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let (status, answer) = api
                .call_with(method.clone(), &path, body.clone(), token)
                .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert_eq!(error_of(&answer).0, "unauthorized");
        }
    }
    // A refusal names the scheme it wants; the scheme's name is read in any case.
    let refused = api.http.get(api.url("/v1/cards")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let lower_case = api
        .http
        .get(api.url("/v1/cards"))
        .header("authorization", format!("bearer {}", api.token))
        .send()
        .await
        .unwrap();
    assert_eq!(lower_case.status(), StatusCode::OK);
    let (_, shown) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}"), None)
        .await;
    assert_eq!(shown["status"], "active", "refused calls changed nothing");
    let (_, list) = api.call(Method::GET, "/v1/cards", None).await;
    assert_eq!(
        list["cards"].as_array().unwrap().len(),
        1,
        "refused creations made nothing"
    );
    api.stop().await;
}

#[tokio::test]
async fn an_unknown_card_is_404_on_every_card_call() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    for vpan in [pan().as_str(), "12345", "not-a-card"] {
        for (method, suffix) in [
            (Method::GET, ""),
            (Method::POST, "/pause"),
            (Method::POST, "/resume"),
            (Method::POST, "/close"),
            (Method::GET, "/transactions"),
        ] {
            let (status, body) = api
                .call(method.clone(), &format!("/v1/cards/{vpan}{suffix}"), None)
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {vpan}{suffix}");
            assert_eq!(error_of(&body).0, "not_found");
        }
    }
    let (status, body) = api.call(Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "not_found");
    api.stop().await;
}

#[tokio::test]
async fn a_one_mebibyte_body_is_refused_with_413_and_the_api_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let huge = format!("{{\"pan\": \"{}\"}}", "9".repeat(1024 * 1024));
    let request = api
        .http
        .post(api.url("/v1/cards"))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(huge);
    let (status, body) = api.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body).0, "payload_too_large");
    api.create(card_request(&pan())).await;
    api.stop().await;
}

#[tokio::test]
async fn a_json_body_is_read_as_json_whatever_its_content_type_says() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    // None (a bare client), and a form's, which is what `curl -d` sends by default.
    for content_type in [None, Some("application/x-www-form-urlencoded")] {
        let mut request = api
            .http
            .post(api.url("/v1/cards"))
            .bearer_auth(&api.token)
            .body(card_request(&pan()).to_string());
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        let (status, card) = api.send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{content_type:?}: {card}");
    }
    // Not JSON under any type is still malformed.
    let request = api
        .http
        .post(api.url("/v1/cards"))
        .bearer_auth(&api.token)
        .body("pan=1");
    let (status, body) = api.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "malformed");
    assert!(
        error_of(&body).1.starts_with("the body is not JSON"),
        "{body}"
    );
    // Nor is nothing.
    let request = api.http.post(api.url("/v1/cards")).bearer_auth(&api.token);
    let (status, body) = api.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).1.starts_with("the body is not JSON"),
        "{body}"
    );
    api.stop().await;
}

#[tokio::test]
async fn cards_are_listed_in_pages_in_vpan_order() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let mut issued = Vec::new();
    for _ in 0..5 {
        let card = api.create(card_request(&pan())).await;
        issued.push(card["vpan"].as_str().unwrap().to_string());
    }
    issued.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/cards?limit=2&after={a}"),
            None => "/v1/cards?limit=2".to_string(),
        };
        let (status, page) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let cards = page["cards"].as_array().unwrap();
        assert!(cards.len() <= 2);
        seen.extend(
            cards
                .iter()
                .map(|c| c["vpan"].as_str().unwrap().to_string()),
        );
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, issued);

    for bad in ["limit=0", "limit=5000", "limit=x", "after=12"] {
        let (status, body) = api
            .call(Method::GET, &format!("/v1/cards?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        let field = bad.split('=').next().unwrap();
        assert!(error_of(&body).1.starts_with(field), "{bad}: {body}");
    }
    api.stop().await;
}

#[tokio::test]
async fn the_vpans_of_one_real_card_are_found_by_it_in_pages_and_no_answer_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let (mine, other) = (pan(), pan());
    let mut issued: Vec<String> = Vec::new();
    for real in [&mine, &other, &mine, &mine] {
        let card = api.create(card_request(real)).await;
        if real == &mine {
            issued.push(card["vpan"].as_str().unwrap().to_string());
        }
    }
    issued.sort();
    let running = &api;
    let search = |query: &str, real: &str| {
        let path = format!("/v1/cards/search{query}");
        let body = json!({ "pan": real });
        async move { running.call(Method::POST, &path, Some(body)).await }
    };
    // Two a page: the first two, then the last with no page after it.
    let (status, first) = search("?limit=2", &mine).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let vpans = |page: &Value| -> Vec<String> {
        let cards = page["cards"].as_array().unwrap();
        cards
            .iter()
            .map(|c| c["vpan"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(vpans(&first), issued[..2]);
    let after = first["next_after"].as_str().unwrap().to_string();
    let (_, last) = search(&format!("?limit=2&after={after}"), &mine).await;
    assert_eq!(
        (vpans(&last), &last["next_after"]),
        (issued[2..].to_vec(), &Value::Null)
    );
    // A real card with no vPAN: an empty page; a number that is none: 422 naming `pan`.
    let (status, none) = search("", &pan()).await;
    assert_eq!((status, vpans(&none).len()), (StatusCode::OK, 0), "{none}");
    let (status, bad) = search("", &mine[..11]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&bad).1.starts_with("pan: "), "{bad}");
    let (status, bad) = search("?limit=0", &mine).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    api.assert_never_answered(&[mine, other]);
    api.stop().await;
}

#[tokio::test]
async fn a_card_past_its_validity_shows_nothing_available_though_it_stays_active() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let mut short = card_request(&pan());
    short["valid_for_seconds"] = json!(1);
    let card = api.create(short).await;
    assert_eq!(card["available"], 10_000, "while valid");
    let vpan = card["vpan"].as_str().unwrap().to_string();
    // Past valid_until (a whole second on, whatever the sub-second of its issuance).
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (status, shown) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown["status"], "active",
        "the contract has no expired status"
    );
    assert_eq!(shown["available"], 0, "it approves nothing now: {shown}");
    let (_, page) = api.call(Method::GET, "/v1/cards", None).await;
    assert_eq!(page["cards"][0]["available"], 0, "{page}");
    let (_, paused) = api
        .call(Method::POST, &format!("/v1/cards/{vpan}/pause"), None)
        .await;
    assert_eq!(paused["available"], 0, "{paused}");
    api.stop().await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_transactions_of_a_card_are_its_decisions_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let card = api.create(card_request(&pan())).await;
    let vpan = card["vpan"].as_str().unwrap();
    let (status, list) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}/transactions"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["transactions"], json!([]));

    // Two declines by the switch: over the per-purchase limit, then paused.
    let key = CardKey::from_digits(vpan.as_bytes()).unwrap();
    let over = api
        .cards
        .authorize(key, &common::purchase(3_000, 1), unix_now());
    assert!(matches!(over, Decision::Decline(_)), "{over:?}");
    api.call(Method::POST, &format!("/v1/cards/{vpan}/pause"), None)
        .await;
    let paused = api
        .cards
        .authorize(key, &common::purchase(100, 2), unix_now());
    assert!(matches!(paused, Decision::Decline(_)), "{paused:?}");

    let (_, list) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}/transactions"), None)
        .await;
    let txs = list["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{list}");
    assert_eq!(txs[0]["response_code"], "62");
    assert_eq!(txs[0]["amount"], 100);
    assert_eq!(txs[1]["response_code"], "61");
    assert_eq!(txs[1]["amount"], 3_000);
    for t in txs {
        assert_eq!(t["mti"], "0100");
        assert_eq!(t["decided_by"], "switch");
        assert_eq!(t["merchant"], "SHOP-A");
        assert!(t["time"].as_str().unwrap().ends_with('Z'));
    }

    // Every decision a card made for a few purchases sees, far past ten: up to the 100
    // last, then the oldest make room.
    for (n, stan) in (3..=60).enumerate() {
        let declined = api
            .cards
            .authorize(key, &common::purchase(1 + n as u64, stan), unix_now());
        assert!(matches!(declined, Decision::Decline(_)), "{declined:?}");
    }
    let (_, list) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}/transactions"), None)
        .await;
    let txs = list["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 60, "{list}");
    assert_eq!(txs[0]["amount"], 58, "newest first");
    assert_eq!(txs[59]["amount"], 3_000);
    for stan in 61..=200 {
        api.cards
            .authorize(key, &common::purchase(1_000, stan), unix_now());
    }
    let (_, list) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}/transactions"), None)
        .await;
    assert_eq!(list["transactions"].as_array().unwrap().len(), 100);
    api.stop().await;
}

#[tokio::test]
async fn a_refund_on_a_paused_card_is_shown_as_a_refund_not_a_purchase() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let card = api.create(card_request(&pan())).await;
    let vpan = card["vpan"].as_str().unwrap();
    let key = CardKey::from_digits(vpan.as_bytes()).unwrap();
    api.call(Method::POST, &format!("/v1/cards/{vpan}/pause"), None)
        .await;
    // A refund passes on a paused card; a purchase of the same amount does not.
    let mut refund = common::purchase(500, 1);
    refund.kind = Kind::Refund;
    let Decision::Approve(approval) = api.cards.authorize(key, &refund, unix_now()) else {
        panic!("a refund on a paused card is forwarded");
    };
    api.cards
        .complete(&approval.hold, IssuerOutcome::APPROVED, unix_now())
        .wait()
        .unwrap();
    let declined = api
        .cards
        .authorize(key, &common::purchase(500, 2), unix_now());
    assert!(matches!(declined, Decision::Decline(_)), "{declined:?}");
    let (_, list) = api
        .call(Method::GET, &format!("/v1/cards/{vpan}/transactions"), None)
        .await;
    let lines: Vec<_> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["response_code"].clone(), t["refund"].clone()))
        .collect();
    assert_eq!(
        lines,
        [(json!("62"), json!(false)), (json!("00"), json!(true))],
        "{list}"
    );
    api.stop().await;
}

/// Polls `/healthz` until its status is `want` (bounded), and returns the last body.
async fn health_until(api: &Running, want: StatusCode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api.call_with(Method::GET, "/healthz", None, None).await;
        if status == want || Instant::now() > deadline {
            assert_eq!(status, want, "{body}");
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_without_a_token_when_all_is_up_and_names_the_issuer_link_when_it_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let up = health_until(&api, StatusCode::OK).await;
    assert_eq!(up["status"], "ok");
    assert_eq!(
        up["checks"],
        json!({"network": "up", "store": "up", "issuer": "up"})
    );
    // `vpan health`, as a container's health check runs it: no token.
    let (url, ca) = (api.url(""), api.data_dir.join("tls-cert.pem"));
    let (code, out, err) = vpan_health(&url, &ca);
    assert_eq!(code, 0, "{err}");
    let said: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(said, up);
    // The same on the metrics listener, in plain HTTP: no certificate to trust.
    let metrics = format!("http://{}", api.addrs.metrics);
    let (code, out, err) = vpan_health(&metrics, Path::new("/nowhere.pem"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap(), up);
    // The endpoint's own URL, as a probe's configuration may have it, is taken as its base.
    let (code, _, err) = vpan_health(&format!("{metrics}/healthz/"), Path::new("/nowhere.pem"));
    assert_eq!(code, 0, "{err}");

    api.issuer.abort();
    let down = health_until(&api, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(down["status"], "unavailable");
    assert_eq!(down["checks"]["issuer"], "down");
    assert_eq!(down["checks"]["store"], "up");
    assert_eq!(error_of(&down).1, "down: issuer");
    for (url, ca) in [(&url, ca.as_path()), (&metrics, Path::new("/nowhere.pem"))] {
        let (code, out, err) = vpan_health(url, ca);
        assert_eq!(code, 1, "{out}");
        assert_eq!(err.trim(), "vpan: unhealthy: down: issuer (HTTP 503)");
    }
    api.stop().await;
    // No switch there: exit 1, saying it cannot be reached and why, once.
    let (code, _, err) = vpan_health(&url, &ca);
    assert_eq!(code, 1);
    let err = err.trim();
    assert!(
        err.starts_with("vpan: cannot reach https://127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.ends_with(": Connection refused (os error 111)"),
        "{err}"
    );
    assert_eq!(err.matches("127.0.0.1").count(), 1, "{err}");
    // Neither the API's scheme nor the metrics listener's: a usage error naming both.
    let (code, _, err) = vpan_health("ftp://127.0.0.1:1", &ca);
    assert_eq!(code, 2);
    assert!(
        err.contains("must be https:// (the API) or http:// (the metrics listener)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_trust_the_systems_roots_beside_the_default_certificate() {
    // An API whose certificate comes from a CA the host trusts (a public or a company CA):
    // `vpan health` run where an old self-signed `vpan-data/tls-cert.pem` lies (the default
    // --ca) must still trust it. SSL_CERT_FILE stands for the system's store.
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    health_until(&api, StatusCode::OK).await;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("vpan-data")).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(cwd.path().join("vpan-data/tls-cert.pem"), other.cert.pem()).unwrap();
    let health = |system_roots: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_vpan"))
            .args(["health", "--url", &api.url("")])
            .current_dir(cwd.path())
            .env("SSL_CERT_FILE", system_roots)
            .env_remove("SSL_CERT_DIR")
            .env_remove("VPAN_URL")
            .env_remove("VPAN_CA")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let (code, err) = health(&api.data_dir.join("tls-cert.pem"));
    assert_eq!(code, Some(0), "{err}");
    // Trusted by neither: refused, with the hint.
    let (code, err) = health(&cwd.path().join("vpan-data/tls-cert.pem"));
    assert_eq!(code, Some(1));
    assert!(err.contains("certificate") && err.contains("--ca"), "{err}");
    // A --ca with no certificate in it is told as such, not as the server's being refused.
    let not_pem = cwd.path().join("hostname");
    std::fs::write(&not_pem, "db-7.example\n").unwrap();
    let (code, _, err) = vpan_health(&api.url(""), &not_pem);
    assert_eq!(code, 1);
    let want = format!("vpan: --ca {}: holds no PEM certificate", not_pem.display());
    assert_eq!(err.trim(), want);
    api.stop().await;
}

/// Review of b4e48eb: a listener's port in use stopped the start only once the store was
/// recovered: in a fresh data directory, after its key and journal were made.
#[test]
fn a_port_in_use_stops_the_start_before_the_data_directory_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let data_dir = dir.path().join("fresh");
    let config = dir.path().join("vpan.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [metrics]\nlisten = \"{}\"\n[store]\ndata_dir = \"{}\"\n",
            held.local_addr().unwrap(),
            data_dir.display()
        ),
    )
    .unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vpan"));
    serve.arg("serve").arg("--config").arg(&config);
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("VPAN_")) {
        serve.env_remove(var);
    }
    let out = serve.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
    assert!(!data_dir.exists(), "the data directory was made: {err}");
}

/// Runs `vpan health --url URL --ca CA`; exit code, stdout, stderr. With proxy variables
/// naming a port where nothing listens and no `NO_PROXY`, as in a container behind a
/// corporate proxy: a check of 127.0.0.1 must not go through them.
fn vpan_health(url: &str, ca: &Path) -> (i32, String, String) {
    let dead_proxy = "http://127.0.0.1:9";
    let out = Command::new(env!("CARGO_BIN_EXE_vpan"))
        .arg("health")
        .arg("--url")
        .arg(url)
        .arg("--ca")
        .arg(ca)
        .env_remove("VPAN_URL")
        .env_remove("VPAN_CA")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTP_PROXY", dead_proxy)
        .env("HTTPS_PROXY", dead_proxy)
        .env("ALL_PROXY", dead_proxy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_call_but_healthz_needs_the_token_the_openapi_document_and_unknown_paths_too() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    for (method, path) in [
        (Method::GET, "/v1/openapi.json"),
        (Method::GET, "/v1/nothing-here"),
        (Method::DELETE, "/v1/cards"),
    ] {
        let (status, body) = api.call_with(method.clone(), path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(error_of(&body).0, "unauthorized", "{method} {path}");
    }
    let (status, _) = api.call_with(Method::GET, "/healthz", None, None).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    let (status, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/cards/{vpan}"].is_object());
    api.stop().await;
}

#[tokio::test]
async fn the_token_and_key_files_are_0600_and_a_restart_reuses_them_and_keeps_the_cards() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let card = api.create(card_request(&pan())).await;
    let vpan = card["vpan"].as_str().unwrap().to_string();
    let token = api.token.clone();
    let cert = std::fs::read(dir.path().join("tls-cert.pem")).unwrap();
    for file in ["api-token", "tls-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    api.stop().await;

    let again = Running::start(dir.path()).await;
    assert_eq!(again.token, token);
    assert_eq!(
        std::fs::read(dir.path().join("tls-cert.pem")).unwrap(),
        cert
    );
    let (status, shown) = again
        .call(Method::GET, &format!("/v1/cards/{vpan}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "an issued card survives a restart");
    assert_eq!(shown["amount_limit"], 10_000);
    again.stop().await;
}

/// `POST /v1/cards` of `body` under these `Idempotency-Key` values: the status, whether
/// the answer says it was issued earlier (`Idempotent-Replayed`), and the body.
async fn post_keyed(api: &Running, keys: &[&str], body: &Value) -> (StatusCode, bool, Value) {
    let mut request = api
        .http
        .post(api.url("/v1/cards"))
        .bearer_auth(&api.token)
        .json(body);
    for key in keys {
        request = request.header("Idempotency-Key", *key);
    }
    let response = request.send().await.unwrap();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let status = response.status();
    (status, replayed, response.json().await.unwrap())
}

#[tokio::test]
async fn a_card_request_sent_again_under_its_idempotency_key_gets_its_card_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    // Validity given from now: the request sent again reads it from the card's issuance.
    let body = card_request(&pan());
    let (status, replayed, first) = post_keyed(&api, &["order-17"], &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{first}");
    let (status, replayed, again) = post_keyed(&api, &["order-17"], &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true), "{again}");
    assert_eq!(again, first, "the same card, unchanged since");
    let (_, listed) = api.call(Method::GET, "/v1/cards", None).await;
    assert_eq!(listed["cards"].as_array().unwrap().len(), 1, "{listed}");

    // Another request under the key is refused; so are malformed keys, naming the header.
    let mut other = body.clone();
    other["amount_limit"] = json!(20_000);
    let (status, _, refused) = post_keyed(&api, &["order-17"], &other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(&refused).0, "idempotency_key_reused");
    let too_long = "k".repeat(256);
    for keys in [&[""][..], &[too_long.as_str()], &["a", "b"], &["caf\u{e9}"]] {
        let (status, _, refused) = post_keyed(&api, keys, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{keys:?}");
        let (code, message) = error_of(&refused);
        assert_eq!(code, "malformed");
        assert!(message.starts_with("Idempotency-Key: "), "{message}");
    }
    api.stop().await;

    let api = Running::start(dir.path()).await;
    let (status, replayed, after) = post_keyed(&api, &["order-17"], &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true), "{after}");
    assert_eq!(after["vpan"], first["vpan"], "known after the restart");
    let (status, replayed, new) = post_keyed(&api, &["order-18"], &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{new}");
    assert_ne!(new["vpan"], first["vpan"], "a new key, a new card");
    api.stop().await;
}

/// Runs `vpan card ...` against `api`; exit code, stdout, stderr.
fn vpan_card(api: &Running, args: &[&str]) -> (i32, String, String) {
    vpan_card_reading(api, args, "")
}

/// `vpan card` with `args`, connected to `api`, `input` on its standard input.
fn vpan_card_reading(api: &Running, args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpan"))
        .arg("card")
        .args(args)
        .env("VPAN_URL", api.url(""))
        .env("VPAN_CA", api.data_dir.join("tls-cert.pem"))
        .env_remove("VPAN_TOKEN")
        .arg("--token-file")
        .arg(api.data_dir.join("api-token"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpan_card_search_lists_the_vpans_of_a_real_card_read_from_stdin_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let (real, other) = (pan(), pan());
    let issue = |real: &str| {
        let args = [
            "create",
            "--pan",
            "-",
            "--pan-expiry",
            "2912",
            "--currency",
            "978",
            "--amount-limit",
            "5000",
            "--json",
        ];
        let (code, out, err) =
            tokio::task::block_in_place(|| vpan_card_reading(&api, &args, &format!("{real}\n")));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["vpan"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut mine = [issue(&real), issue(&real)];
    mine.sort();
    let theirs = issue(&other);
    let search = |args: &[&str]| {
        let args: Vec<&str> = ["search", "--pan", "-"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        tokio::task::block_in_place(|| vpan_card_reading(&api, &args, &format!("{real}\n")))
    };

    let (code, out, err) = search(&["--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&mine[0]) && out.contains(&mine[1]) && !out.contains(&theirs),
        "{out}"
    );
    assert!(!out.contains(&real) && !err.contains(&real));

    // A page at a time: the next page's command reads the card number again, never shows
    // it.
    let (code, first_page, err) = search(&["--limit", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        first_page.contains(&mine[0]) && !first_page.contains(&mine[1]),
        "{first_page}"
    );
    let hint = err
        .lines()
        .find_map(|l| l.strip_prefix("more: "))
        .unwrap_or_else(|| panic!("no hint: {err}"));
    assert!(!hint.contains(&real), "{hint}");
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], env!("CARGO_BIN_EXE_vpan"), "{hint}");
    assert!(
        hint.contains(" search --pan - --limit 1 --after "),
        "{hint}"
    );
    let mut next = Command::new(words[0])
        .args(&words[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut next.stdin.take().unwrap(),
        format!("{real}\n").as_bytes(),
    )
    .unwrap();
    let next = next.wait_with_output().unwrap();
    let next_page = String::from_utf8_lossy(&next.stdout);
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert!(
        next_page.contains(&mine[1]) && !next_page.contains(&mine[0]),
        "{next_page}"
    );

    // A number that is none: the API's 422, naming pan, exit status 1.
    let (code, _, err) =
        tokio::task::block_in_place(|| vpan_card_reading(&api, &["search", "--pan", "-"], "12\n"));
    assert_eq!(code, 1);
    assert!(err.contains("pan"), "{err}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vpan_card_client_creates_shows_pauses_closes_and_lists_cards() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let real = pan();
    let create = [
        "create",
        "--pan",
        &real,
        "--pan-expiry",
        "2912",
        "--currency",
        "978",
        "--amount-limit",
        "5000",
        "--per-transaction-limit",
        "2500",
        "--max-uses",
        "2",
        "--valid-for",
        "30d",
        "--merchant-lock",
        "SHOP-A",
        "--mcc-allow",
        "5411, 5499",
        "--json",
    ];
    let keyed: Vec<&str> = create
        .iter()
        .chain(&["--idempotency-key", "cli-17"])
        .copied()
        .collect();
    let (code, out, err) = tokio::task::block_in_place(|| vpan_card(&api, &keyed));
    assert_eq!(code, 0, "{err}");
    let card: Value = serde_json::from_str(&out).unwrap();
    let vpan = card["vpan"].as_str().unwrap().to_string();
    // Run again (as after a timeout), the command gets the same card.
    let (code, again, err) = tokio::task::block_in_place(|| vpan_card(&api, &keyed));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["vpan"],
        json!(vpan)
    );
    assert_eq!(card["merchant_lock"], json!({"acceptor_id": "SHOP-A"}));
    assert_eq!(card["mcc_allow"], json!(["5411", "5499"]));
    assert!(!out.contains(&real));

    let (code, out, _) = tokio::task::block_in_place(|| vpan_card(&api, &["show", &vpan]));
    assert_eq!(code, 0);
    assert!(
        out.contains(&vpan) && out.contains("active") && out.contains("5000 of 5000"),
        "{out}"
    );
    assert!(!out.contains(&real));

    let (code, out, _) = tokio::task::block_in_place(|| vpan_card(&api, &["pause", &vpan]));
    assert_eq!(code, 0);
    assert!(out.contains("paused"), "{out}");
    let (code, out, _) = tokio::task::block_in_place(|| vpan_card(&api, &["close", &vpan]));
    assert_eq!(code, 0);
    assert!(out.contains("closed"), "{out}");

    let (code, out, _) = tokio::task::block_in_place(|| vpan_card(&api, &["list"]));
    assert_eq!(code, 0);
    assert!(out.contains(&vpan) && out.contains("closed"), "{out}");

    // A page at a time: the hint for the next one is a command that runs as printed, with
    // the program's path and where and how this one connected (here from VPAN_URL and
    // VPAN_CA), in a shell that has none of those variables.
    let (code, out, _) = tokio::task::block_in_place(|| vpan_card(&api, &create));
    assert_eq!(code, 0);
    let second: Value = serde_json::from_str(&out).unwrap();
    let (code, first_page, err) =
        tokio::task::block_in_place(|| vpan_card(&api, &["list", "--limit", "1"]));
    assert_eq!(code, 0);
    let hint = err
        .lines()
        .find_map(|l| l.strip_prefix("more: "))
        .unwrap_or_else(|| panic!("no hint: {err}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[0], env!("CARGO_BIN_EXE_vpan"), "{hint}");
    let next = Command::new(words[0])
        .args(&words[1..])
        .env_remove("VPAN_URL")
        .env_remove("VPAN_CA")
        .env_remove("VPAN_TOKEN")
        .output()
        .unwrap();
    let next_page = String::from_utf8_lossy(&next.stdout);
    assert!(
        next.status.success(),
        "{hint}: {}",
        String::from_utf8_lossy(&next.stderr)
    );
    let second = second["vpan"].as_str().unwrap();
    let on = |page: &str, card: &str| page.contains(card);
    assert!(
        on(&first_page, &vpan) != on(&first_page, second)
            && on(&next_page, &vpan) != on(&next_page, second)
            && on(&first_page, second) != on(&next_page, second),
        "one card a page: {first_page} / {next_page}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpan_card_exits_1_with_the_api_error_and_2_on_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = Running::start(dir.path()).await;
    let (code, _, err) =
        tokio::task::block_in_place(|| vpan_card(&api, &["resume", "4970100000000000"]));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not_found"), "{err}");

    let (code, _, err) = tokio::task::block_in_place(|| {
        vpan_card(
            &api,
            &[
                "create",
                "--pan",
                "4970101234567894",
                "--pan-expiry",
                "2912",
                "--currency",
                "978",
                "--amount-limit",
                "100",
            ],
        )
    });
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid_value") && err.contains("pan:"),
        "{err}"
    );
    assert!(!err.contains("4970101234567894"));

    let (code, _, _) = tokio::task::block_in_place(|| {
        vpan_card(&api, &["create", "--pan", "1", "--valid-for", "3x"])
    });
    assert_eq!(code, 2);
    let (code, _, err) = tokio::task::block_in_place(|| {
        vpan_card(&api, &["create", "--pan", "1", "--mcc-block", "7995,79x5"])
    });
    assert_eq!(code, 2);
    assert!(err.contains("an MCC is 4 digits"), "{err}");
    // A space at either end too (HTTP drops it: ` k` would reach the API as `k`).
    for key in ["a\tb", " order-17", "   "] {
        let (code, _, err) = tokio::task::block_in_place(|| {
            vpan_card(&api, &["create", "--pan", "1", "--idempotency-key", key])
        });
        assert_eq!(code, 2, "{key:?}: {err}");
        assert!(
            err.contains("--idempotency-key") && err.contains("printable ASCII"),
            "{err}"
        );
    }

    // Plain HTTP: refused before any connection is made, so the token never leaves.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let plain = format!("http://{}", listener.local_addr().unwrap());
    let (code, _, err) =
        tokio::task::block_in_place(|| vpan_card(&api, &["--url", &plain, "list"]));
    assert_eq!(
        code, 2,
        "a --url that is not https:// is a usage error: {err}"
    );
    assert!(err.contains("must be https://"), "{err}");
    assert!(
        listener.accept().is_err(),
        "the client connected over plain HTTP: {err}"
    );
    api.stop().await;
}
