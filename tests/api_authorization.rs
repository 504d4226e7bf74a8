//! A card issued through the HTTPS API is then authorized over ISO 8583 on the network
//! port: the issuer simulator (with an account for the real card) sees the real PAN and
//! debits it, the network gets the vPAN back, and the API shows the amount spent and the
//! issuer's decision; once paused through the API, the switch declines with 62.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use vpan::app::App;
use vpan::config::Config;
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec};
use vpan::tools::issuer_sim::{IssuerSim, SimConfig};

fn spec() -> &'static Spec {
    Spec::by_name("iso87ascii").unwrap()
}

fn codec() -> FrameCodec {
    FrameCodec::new(Framing::Len2, 0, 8192)
}

/// A 0100 purchase of `amount` euro cents on `vpan`, at SHOP-A (MCC 5411).
fn purchase(vpan: &str, expiry: &str, amount: u64, stan: &str) -> Message {
    let mut m = Message::new(spec(), b"0100").unwrap();
    let fields: [(usize, String); 11] = [
        (2, vpan.to_string()),
        (3, "000000".into()),
        (4, format!("{amount:012}")),
        (7, "1126152942".into()),
        (11, stan.into()),
        (14, expiry.into()),
        (18, "5411".into()),
        (32, "12345".into()),
        (41, "TERM0001".into()),
        (42, format!("{:<15}", "SHOP-A")),
        (49, "978".into()),
    ];
    for (n, v) in fields {
        m.set(n, v.as_bytes()).unwrap();
    }
    m
}

#[tokio::test]
async fn a_card_issued_through_the_api_is_authorized_over_iso8583_and_the_api_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let real_pan = common::test_pan();
    let real = real_pan.expose().to_string();
    let sim = IssuerSim::start(SimConfig {
        accounts: vec![(real_pan.clone(), 100_000)],
        default_balance: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut c = Config::default();
    c.network.listen = "127.0.0.1:0".into();
    c.api.listen = "127.0.0.1:0".into();
    c.metrics.listen = "127.0.0.1:0".into();
    c.issuer.connect = sim.local_addr().to_string();
    c.store.data_dir = dir.path().to_path_buf();
    let app = App::build(c).await.unwrap();
    let addrs = app.addresses();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let pem = std::fs::read(dir.path().join("tls-cert.pem")).unwrap();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap();
    let api = |path: &str| format!("https://127.0.0.1:{}{path}", addrs.api.port());
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = http.request(method, api(path)).bearer_auth(token.trim());
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let response = r.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };

    // Wait (bounded) for the issuer link, as an operator would watch /healthz.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(reqwest::Method::GET, "/healthz", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "the issuer link never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, text) = call(
        reqwest::Method::POST,
        "/v1/cards",
        Some(json!({
            "pan": real, "pan_expiry": "2912", "currency": "978", "amount_limit": 10_000,
            "max_uses": 2, "valid_for_seconds": 3600, "merchant_lock": "first_use",
        })),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let card: Value = serde_json::from_str(&text).unwrap();
    assert!(
        card.get("merchant_bound").is_none(),
        "not bound before a use"
    );
    let vpan = card["vpan"].as_str().unwrap().to_string();
    let expiry = card["expiry"].as_str().unwrap().to_string();

    let network = TcpStream::connect(addrs.network.unwrap()).await.unwrap();
    let mut network = Framed::new(network, codec());
    let mut out = BytesMut::new();
    codec()
        .encode_message(&[], &purchase(&vpan, &expiry, 2_500, "000001"), &mut out)
        .unwrap();
    network.get_mut().write_all(&out).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), network.next())
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    let Frame::Message { body, .. } = answer else {
        panic!("a keep-alive instead of an answer");
    };
    let answer = Message::parse(spec(), body).unwrap();
    assert_eq!(&answer.mti(), b"0110");
    assert_eq!(answer.response_code(), Some(*b"00"));
    assert_eq!(
        answer.pan().unwrap().unwrap().expose(),
        vpan,
        "the network sees the vPAN"
    );
    let at_issuer = sim.recent(10);
    let forwarded = at_issuer
        .iter()
        .find(|r| &r.message.mti() == b"0100")
        .expect("the 0100 reached the issuer")
        .message
        .pan()
        .unwrap()
        .unwrap();
    assert_eq!(forwarded.expose(), real, "the issuer sees the real PAN");
    assert_eq!(sim.balance(&real_pan), Some(100_000 - 2_500));

    let (status, text) = call(reqwest::Method::GET, &format!("/v1/cards/{vpan}"), None).await;
    assert_eq!(status, 200);
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["spent"], 2_500);
    assert_eq!(shown["available"], 7_500);
    assert_eq!(shown["uses"], 1);
    // The first use bound the card to its merchant, which the operator can see.
    assert_eq!(shown["merchant_lock"], "first_use");
    assert_eq!(shown["merchant_bound"], "SHOP-A");
    assert!(!text.contains(&real));

    let (_, text) = call(
        reqwest::Method::GET,
        &format!("/v1/cards/{vpan}/transactions"),
        None,
    )
    .await;
    let txs: Value = serde_json::from_str(&text).unwrap();
    let t = &txs["transactions"][0];
    assert_eq!(t["mti"], "0100");
    assert_eq!(t["amount"], 2_500);
    assert_eq!(t["response_code"], "00");
    assert_eq!(t["decided_by"], "issuer");

    // Paused through the API: the next authorization is declined 62 by the switch.
    let (status, _) = call(
        reqwest::Method::POST,
        &format!("/v1/cards/{vpan}/pause"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    out.clear();
    codec()
        .encode_message(&[], &purchase(&vpan, &expiry, 100, "000002"), &mut out)
        .unwrap();
    network.get_mut().write_all(&out).await.unwrap();
    let Frame::Message { body, .. } = tokio::time::timeout(Duration::from_secs(10), network.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    else {
        panic!("a keep-alive instead of an answer");
    };
    let answer = Message::parse(spec(), body).unwrap();
    assert_eq!(answer.response_code(), Some(*b"62"));

    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
