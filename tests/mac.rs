//! The MAC on the network link, end to end: `App` on port 0 with `network.mac` on, the real
//! issuer simulator behind it, real TCP. A good MAC goes through and the answer carries a
//! valid one; a bad or missing MAC is answered 63 before the card is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rig;

use std::path::Path;

use rig::*;
use vpan::app::App;
use vpan::cards::CardKey;
use vpan::config::Config;
use vpan::iso8583::{Message, Spec};
use vpan::switch::mac::{MacCheck, MacKey, Padding};
use vpan::tools::issuer_sim::SimConfig;

/// A random double-length key as 32 hex digits (halves differ: equal halves are refused).
fn random_key_hex() -> String {
    loop {
        let key: [u8; 16] = rand::random();
        if key[..8] != key[8..] {
            return key.iter().map(|b| format!("{b:02X}")).collect();
        }
    }
}

/// Writes a fresh key into `dir` and returns the client's copy of it and the file.
fn key_file(dir: &Path, padding: Padding) -> (MacKey, String) {
    let hex = random_key_hex();
    let path = dir.join("network-mac.key");
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    (
        MacKey::from_hex(&hex, padding).unwrap(),
        path.display().to_string(),
    )
}

/// A switch whose network link is MACed with padding method `padding`.
async fn mac_rig(padding: Padding) -> (Rig, MacKey, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let (key, file) = key_file(keys.path(), padding);
    let rig = rig(Some(SimConfig::default()), |c| {
        c.network.mac = "iso9797-1-alg3".into();
        c.network.mac_key_file = file;
        c.network.mac_padding = match padding {
            Padding::Method1 => 1,
            Padding::Method2 => 2,
        };
    })
    .await;
    (rig, key, keys)
}

/// `msg` with its MAC, as the wire carries it.
fn signed(key: &MacKey, msg: &Message) -> Message {
    let mut m = msg.clone();
    key.sign(&mut m).unwrap();
    Message::parse(Spec::iso87ascii(), m.pack()).unwrap()
}

/// Held by the tests that count rejections: the recorder is process-wide, so two of them
/// running at once would see each other's.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `vpan_frames_rejected_total{reason="bad_mac"}` now (the recorder is process-wide).
fn bad_mac_count() -> u64 {
    let text = vpan::metrics::install().render();
    text.lines()
        .filter(|l| l.starts_with("vpan_frames_rejected_total") && l.contains("reason=\"bad_mac\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_purchase_with_a_good_mac_is_approved_and_the_answer_carries_a_valid_mac() {
    for padding in [Padding::Method1, Padding::Method2] {
        let (rig, key, _keys) = mac_rig(padding).await;
        let (card, _real) = rig.issue(|_| {}).await;
        let mut net = Client::connect(rig.network).await;

        let req = signed(
            &key,
            &purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 2_500),
        );
        let answer = net.call(&req).await;
        assert_eq!((answer.mti(), code(&answer)), (*b"0110", "00".into()));
        assert_eq!(key.check(&answer), MacCheck::Valid, "{padding:?}");

        // The issuer link has no MAC: what reached the simulator carries none of ours.
        let forwarded = rig.last_at_issuer(b"0100");
        assert!(!forwarded.message.has(64));

        let view = rig.cards.get(CardKey::of(&card.vpan)).unwrap();
        assert_eq!((view.spent, view.uses), (2_500, 1));

        // Messages with a secondary bitmap carry the MAC in DE 128: an 0800 echo (DE 70).
        let mut echo = Message::new(Spec::iso87ascii(), b"0800").unwrap();
        echo.set(7, b"1126143015").unwrap();
        echo.set(11, &net.next_stan()).unwrap();
        echo.set(70, b"301").unwrap();
        let echo = signed(&key, &echo);
        assert!(echo.has(128) && !echo.has(64));
        let answer = net.call(&echo).await;
        assert_eq!((answer.mti(), code(&answer)), (*b"0810", "00".into()));
        assert!(answer.has(128));
        assert_eq!(key.check(&answer), MacCheck::Valid);
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_bad_mac_is_answered_63_counted_and_leaves_the_card_untouched() {
    let _counting = COUNTING.lock().await;
    let (rig, key, _keys) = mac_rig(Padding::Method1).await;
    let (card, _real) = rig.issue(|_| {}).await;
    let mut net = Client::connect(rig.network).await;
    let before = bad_mac_count();

    // Signed, then one byte of the amount changed: what a tampering hop would do.
    let good = signed(
        &key,
        &purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 2_500),
    );
    let mut wire = good.pack().to_vec();
    let at = wire.windows(12).position(|w| w == b"000000002500").unwrap();
    wire[at + 7] = b'9';
    net.send_raw(wire.into()).await;
    let answer = net.answer(good.stan().unwrap()).await;
    assert_eq!((answer.mti(), code(&answer)), (*b"0110", "63".into()));
    assert_eq!(
        key.check(&answer),
        MacCheck::Valid,
        "the 63 carries a MAC too"
    );

    // A MAC made with another key.
    let other = MacKey::from_hex(&random_key_hex(), Padding::Method1).unwrap();
    let forged = signed(
        &other,
        &purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 2_500),
    );
    let answer = net.call(&forged).await;
    assert_eq!(code(&answer), "63");

    let view = rig.cards.get(CardKey::of(&card.vpan)).unwrap();
    assert_eq!((view.spent, view.held, view.uses), (0, 0, 0));
    assert!(
        rig.sim().requests(b"0100") == 0,
        "nothing was forwarded to the issuer"
    );
    assert!(
        rig.cards
            .recent(CardKey::of(&card.vpan))
            .is_none_or(|t| t.is_empty()),
        "nothing was recorded on the card"
    );
    assert_eq!(bad_mac_count() - before, 2);
    rig.stop().await;
}

#[tokio::test]
async fn a_missing_mac_is_answered_63_and_counted() {
    let _counting = COUNTING.lock().await;
    let (rig, key, _keys) = mac_rig(Padding::Method2).await;
    let (card, _real) = rig.issue(|_| {}).await;
    let mut net = Client::connect(rig.network).await;
    let before = bad_mac_count();

    let unsigned = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 2_500);
    let answer = net.call(&unsigned).await;
    assert_eq!((answer.mti(), code(&answer)), (*b"0110", "63".into()));
    assert_eq!(key.check(&answer), MacCheck::Valid);

    let view = rig.cards.get(CardKey::of(&card.vpan)).unwrap();
    assert_eq!((view.spent, view.held, view.uses), (0, 0, 0));
    assert_eq!(rig.sim().requests(b"0100"), 0);
    assert_eq!(bad_mac_count() - before, 1);
    rig.stop().await;
}

#[tokio::test]
async fn vpan_refuses_to_start_without_a_usable_mac_key_and_names_the_key_not_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let start = |key_file: String| {
        let mut c = Config::default();
        c.network.listen = "127.0.0.1:0".into();
        c.metrics.listen = "127.0.0.1:0".into();
        c.api.listen = "127.0.0.1:0".into();
        c.store.data_dir = dir.path().join("data");
        c.network.mac = "iso9797-1-alg3".into();
        c.network.mac_key_file = key_file;
        async move { App::build(c).await.err().map(|e| e.to_string()) }
    };

    let missing = dir.path().join("no-such.key").display().to_string();
    let err = start(missing).await.expect("refused");
    assert!(err.contains("network.mac_key_file"), "{err}");

    // 31 hex digits: one short. The error names the key and never shows what the file holds.
    let short = dir.path().join("short.key");
    let hex = random_key_hex();
    std::fs::write(&short, &hex[..31]).unwrap();
    let err = start(short.display().to_string()).await.expect("refused");
    assert!(err.contains("network.mac_key_file"), "{err}");
    assert!(!err.contains(&hex[..16]), "{err}");

    let single = dir.path().join("single.key");
    std::fs::write(&single, format!("{}{}", &hex[..16], &hex[..16])).unwrap();
    let err = start(single.display().to_string()).await.expect("refused");
    assert!(err.contains("network.mac_key_file"), "{err}");
    assert!(!err.contains(&hex[..16]), "{err}");
}

#[tokio::test]
async fn no_mac_field_of_the_network_reaches_the_issuer() {
    // Round 2 of d121bb7: with a DE 64 beside the DE 128 checked, only DE 128 was removed
    // before forwarding, and the network's DE 64 reached the issuer.
    let (rig, key, _keys) = mac_rig(Padding::Method1).await;
    let (card, _real) = rig.issue(|_| {}).await;
    let mut net = Client::connect(rig.network).await;
    let mut m = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 2_500);
    m.set(64, b"DEADBEEFDEADBEEF").unwrap();
    m.set(128, &[b'0'; 16]).unwrap();
    let wire = m.pack();
    let mac = key.compute(&wire[..wire.len() - 16]);
    let hex: String = mac.iter().map(|b| format!("{b:02X}")).collect();
    m.set(128, hex.as_bytes()).unwrap();
    let m = Message::parse(Spec::iso87ascii(), m.pack()).unwrap();
    assert_eq!(key.check(&m), MacCheck::Valid);
    assert_eq!(code(&net.call(&m).await), "00");
    let forwarded = rig.last_at_issuer(b"0100");
    assert!(
        !forwarded.message.has(64) && !forwarded.message.has(128),
        "a MAC field of the network's forwarded"
    );
    rig.stop().await;
}
