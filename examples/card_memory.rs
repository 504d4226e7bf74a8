//! Memory per card in the index at 1M cards, measured by the process's resident set.
//!
//! ```sh
//! cargo run --release --example card_memory            # 1,000,000 cards
//! ```
//!
//! Fills a `CardIndex` with 1M cards (no MCC lists, no history: the shape of a fresh card),
//! and prints the RSS growth per card, which counts everything: the DashMap tables with
//! hashbrown's power-of-two rounding, the boxed card, and malloc's own overhead. Then adds
//! five decisions of history to every card and measures again (history is cold and bounded,
//! but it is memory too).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: panics are fine

use vpan::cards::history::{DecidedBy, RecentTx};
use vpan::cards::index::CardIndex;

/// The allocator of the `vpan` binary, so that the figure is what the switch uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use vpan::cards::vpan::random_luhn;
use vpan::cards::{
    AcceptorId, Card, CardKey, CardSpec, Controls, Expiry, MerchantLock, ResponseCode,
};
use vpan::pan::Pan;

const NOW: u64 = 1_795_706_982;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A made-up Luhn-valid card number in BIN 497010.
fn test_pan() -> Pan {
    Pan::from_digits(random_luhn("497010", 16).as_bytes()).unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let presize = !std::env::args().any(|a| a == "--no-presize");
    println!(
        "size_of::<Card>() = {} bytes, key 8 bytes, slot {} bytes",
        std::mem::size_of::<Card>(),
        std::mem::size_of::<(CardKey, Box<Card>)>()
    );
    let before = rss_bytes();
    let index = CardIndex::with_capacity(if presize { n } else { 0 });
    let mut keys = Vec::with_capacity(n);
    let keys_bytes = rss_bytes();
    while keys.len() < n {
        let key = CardKey::of(&test_pan());
        let spec = CardSpec {
            pan: test_pan(),
            pan_expiry: Expiry(*b"2912"),
            controls: Controls {
                currency: 978,
                amount_limit: 10_000,
                per_transaction_limit: None,
                max_uses: None,
                valid_until: NOW + 86_400,
                merchant_lock: MerchantLock::None,
                mcc_allow: vec![],
                mcc_block: vec![],
            },
        };
        if index.insert_new(key, || Card::new(&spec, NOW)) {
            keys.push(key);
        }
    }
    // The keys vector is the tool's, not the index's: subtract it.
    let keys_vec = (keys.capacity() * 8) as u64;
    let after = rss_bytes();
    let per_card = (after - before).saturating_sub(keys_vec) as f64 / n as f64;
    println!(
        "{n} cards ({}): RSS +{:.1} MB, {:.0} bytes per card, all included",
        if presize { "pre-sized" } else { "grown" },
        (after - before) as f64 / 1e6,
        per_card
    );
    let _ = keys_bytes;
    for &k in &keys {
        index.update(k, |c| {
            for i in 0..5 {
                vpan::cards::history::record(
                    &mut c.history,
                    RecentTx {
                        at: NOW + i,
                        mti: *b"0100",
                        amount: 100,
                        code: ResponseCode::APPROVED,
                        decided_by: DecidedBy::Issuer,
                        merchant: AcceptorId::new(b"SHOP-A"),
                        refund: false,
                    },
                );
            }
        });
    }
    let with_history = rss_bytes();
    println!(
        "with 5 recent decisions per card: +{:.0} bytes per card for the history",
        (with_history - after) as f64 / n as f64
    );
}
