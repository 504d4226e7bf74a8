//! Shared helpers for the integration tests: generated test PANs, specs and requests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;

use vpan::cards::vpan::random_luhn;
use vpan::cards::{
    AcceptorId, Amounts, AuthRequest, CardKey, CardSpec, Cards, CardsConfig, Controls, Expiry,
    Kind, LedgerConfig, MerchantLock, OpenError, OriginalData, Recovered, ReversalRequest, TxKey,
};
use vpan::pan::Pan;
use vpan::store::{StoreConfig, StoreError};

/// 2026-11-26T15:29:42Z.
pub const NOW: u64 = 1_795_706_982;
/// Euro.
pub const EUR: u16 = 978;

/// A random Luhn-valid test PAN in test BIN 497010.
pub fn test_pan() -> Pan {
    Pan::from_digits_checked(random_luhn("4970100", 16).as_bytes()).unwrap()
}

/// A card spec with a cap and a per-transaction limit, valid for a day.
pub fn spec(amount_limit: u64) -> CardSpec {
    CardSpec {
        pan: test_pan(),
        pan_expiry: Expiry(*b"2912"),
        controls: Controls {
            currency: EUR,
            amount_limit,
            per_transaction_limit: None,
            max_uses: None,
            valid_until: NOW + 86_400,
            merchant_lock: MerchantLock::None,
            mcc_allow: vec![],
            mcc_block: vec![],
        },
    }
}

/// The same, single use.
pub fn single_use(amount_limit: u64) -> CardSpec {
    let mut s = spec(amount_limit);
    s.controls.max_uses = NonZeroU32::new(1);
    s
}

/// With a per-transaction limit.
pub fn with_per_tx(amount_limit: u64, per_tx: u64) -> CardSpec {
    let mut s = spec(amount_limit);
    s.controls.per_transaction_limit = NonZeroU64::new(per_tx);
    s
}

/// Opens the cards in `dir` with default settings.
pub fn open(dir: &Path) -> (Cards, Recovered) {
    open_with(dir, LedgerConfig::default())
}

/// Opens the cards in `dir` with this ledger.
pub fn open_with(dir: &Path, ledger: LedgerConfig) -> (Cards, Recovered) {
    try_open(dir, ledger).unwrap()
}

/// Opens the cards in `dir`, or says why they cannot be.
pub fn try_open(dir: &Path, ledger: LedgerConfig) -> Result<(Cards, Recovered), OpenError> {
    try_open_configured(dir, &CardsConfig::default(), ledger)
}

/// Opens the cards in `dir` with these `cards.*` settings.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn open_configured(dir: &Path, config: &CardsConfig) -> Cards {
    try_open_configured(dir, config, LedgerConfig::default())
        .unwrap()
        .0
}

fn try_open_configured(
    dir: &Path,
    config: &CardsConfig,
    ledger: LedgerConfig,
) -> Result<(Cards, Recovered), OpenError> {
    let store = StoreConfig {
        data_dir: dir.to_path_buf(),
        key_file: Default::default(),
        ..Default::default()
    };
    // A process another test spawns meanwhile holds a copy of every open descriptor from
    // its fork to its exec, the data directory's lock among them: cards just closed can
    // still be locked for that moment (one run of `crash` failed so).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match Cards::open(config, &store, ledger) {
            Err(OpenError::Store(StoreError::Locked)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

/// Issues a card and waits until it is durable; returns its key.
pub fn issue(cards: &Cards, spec: &CardSpec) -> CardKey {
    let (view, durable) = cards.issue(spec, NOW).unwrap();
    durable.wait().unwrap();
    CardKey::of(&view.vpan)
}

/// A purchase of `amount` EUR cents with STAN `stan`, at merchant SHOP-A.
pub fn purchase(amount: u64, stan: u32) -> AuthRequest {
    request(*b"0100", amount, stan, "SHOP-A")
}

/// A request with this MTI, amount, STAN and merchant.
pub fn request(mti: [u8; 4], amount: u64, stan: u32, shop: &str) -> AuthRequest {
    let stan = format!("{stan:06}");
    AuthRequest {
        mti,
        kind: Kind::classify(b"000000", amount),
        amounts: Amounts {
            transaction: amount,
            transaction_currency: EUR,
            billing: None,
        },
        expiry: None,
        mcc: Some(5411),
        acceptor: AcceptorId::new(shop.as_bytes()),
        key: TxKey::new(&mti, stan.as_bytes(), b"1126152942", b"12345", b"TERM0001").unwrap(),
        completes: None,
    }
}

/// A reversal (0400, under STAN `own_stan`, its DE 7, 32 and 41 the purchase's terminal's)
/// of the [`purchase`] under STAN `stan`, named in DE 90, leaving `remaining` (none: in
/// full).
pub fn reversal_under(own_stan: u32, stan: u32, remaining: Option<u64>) -> ReversalRequest {
    let own_stan = format!("{own_stan:06}");
    ReversalRequest {
        mti: *b"0400",
        key: TxKey::new(
            b"0400",
            own_stan.as_bytes(),
            b"1126160000",
            b"12345",
            b"TERM0001",
        )
        .unwrap(),
        original: Some(OriginalData {
            class: 1,
            ..purchase(0, stan).key.original()
        }),
        remaining,
    }
}

/// An issuer host that accepts connections and never answers: enough for the link to be up
/// when sign-on is off.
pub async fn silent_issuer() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}
