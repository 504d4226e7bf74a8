//! `vpan traffic`: writes a scenario of any size for `vpan demo --scenario`: `cards.json`
//! (the cards to issue, by name) and `load.jsonl`. The demo issues the cards and writes
//! their numbers, by the same names, for `vpan loadgen --cards`.
//!
//! Large traffic files are made, not checked in. The mix is one an issuer's link sees,
//! with every message type of the contract and every code the switch sets that traffic can
//! provoke, and each line's expectation holds however often and however concurrently the
//! file is replayed: purchases go to cards whose caps a load run cannot reach, declines to
//! cards whose state never changes (paused, closed, never issued, MCC blocked). No card
//! number is written: `vpan demo` draws the real ones and issues the virtual ones at run
//! time, and the file names them (`${vpan.load3}`).
//!
//! The same seed gives the same files, so a sample can be checked in and checked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

/// `vpan traffic` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to write cards.json and load.jsonl into (made if absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Virtual cards the approvals are spread over.
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = super::flags::count(u64::from(u32::MAX)))]
    pub cards: usize,
    /// Messages in load.jsonl (up to 100 million, some 27 GB).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000, value_parser = super::flags::count(100_000_000))]
    pub messages: usize,
    /// Seed of the draws: the same seed writes the same files.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub seed: u64,
}

/// Largest single purchase on a load card; above it the switch answers 61.
const PER_TRANSACTION_LIMIT: u64 = 100_000;

/// The generated scenario, as file contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// `cards.json`.
    pub cards: String,
    /// `load.jsonl`.
    pub load: String,
}

/// What one drawn line is.
#[derive(Debug, Clone, Copy)]
enum Draw {
    Purchase,
    Financial,
    ReversedPurchase,
    Refund,
    Advice,
    ReversedFinancialAdvice,
    Verification,
    OverLimit,
    Paused,
    Closed,
    Unissued,
    BlockedMcc,
    OtherCurrency,
    WrongExpiry,
    Malformed,
    Passthrough,
    Echo,
}

/// The mix, in parts per thousand.
const MIX: [(Draw, u32); 17] = [
    (Draw::Purchase, 520),
    (Draw::Financial, 120),
    (Draw::ReversedPurchase, 60),
    (Draw::Refund, 40),
    (Draw::Advice, 40),
    (Draw::ReversedFinancialAdvice, 30),
    (Draw::Verification, 20),
    (Draw::OverLimit, 20),
    (Draw::Paused, 20),
    (Draw::Closed, 20),
    (Draw::Unissued, 20),
    (Draw::BlockedMcc, 20),
    (Draw::OtherCurrency, 15),
    (Draw::WrongExpiry, 15),
    (Draw::Malformed, 10),
    (Draw::Passthrough, 40),
    (Draw::Echo, 10),
];

/// Makes the scenario; `cards` at least 1.
pub fn generate(cards: usize, messages: usize, seed: u64) -> Generated {
    let cards = cards.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut defs: Vec<Value> = (0..cards)
        .map(|i| {
            json!({"name": format!("load{i}"), "controls": {
                "currency": "978",
                "amount_limit": 1_000_000_000_000u64,
                "per_transaction_limit": PER_TRANSACTION_LIMIT,
                "mcc_block": ["7995"],
            }})
        })
        .collect();
    defs.push(json!({"name": "paused", "controls": {"currency": "978", "amount_limit": 50_000}, "then": "pause"}));
    defs.push(json!({"name": "closed", "controls": {"currency": "978", "amount_limit": 50_000}, "then": "close"}));
    defs.push(json!({"name": "stranger", "kind": "unissued"}));
    defs.push(json!({"name": "plain", "kind": "plain", "bin": "453201"}));
    let mut cards_json = String::from("[\n");
    for (i, d) in defs.iter().enumerate() {
        let sep = if i + 1 < defs.len() { "," } else { "" };
        let _ = writeln!(cards_json, "  {d}{sep}");
    }
    cards_json.push_str("]\n");

    let mut lines = Lines::new(messages);
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    while lines.count < messages {
        let mut roll = rng.random_range(0..total);
        let draw = MIX
            .iter()
            .find(|(_, w)| {
                let hit = roll < *w;
                roll = roll.saturating_sub(*w);
                hit
            })
            .map_or(Draw::Purchase, |(d, _)| *d);
        // A message and its reversal that do not both fit in what is left: a purchase.
        let pair = matches!(draw, Draw::ReversedPurchase | Draw::ReversedFinancialAdvice);
        let draw = if pair && lines.count + 2 > messages {
            Draw::Purchase
        } else {
            draw
        };
        let card = format!("load{}", rng.random_range(0..cards));
        let amount = rng.random_range(100..=PER_TRANSACTION_LIMIT / 2);
        let terminal = rng.random_range(1..=50);
        let t = Txn {
            card: &card,
            amount,
            terminal,
            mcc: "5734",
            currency: "978",
            expiry: None,
            pcode: "000000",
        };
        match draw {
            Draw::Purchase => lines.push("purchase", &t.mti("0100"), "00", ""),
            Draw::Financial => lines.push("financial purchase", &t.mti("0200"), "00", ""),
            Draw::ReversedPurchase => {
                let original = lines.push("purchase to reverse", &t.mti("0100"), "00", "");
                lines.push(
                    "its reversal",
                    &t.mti("0400"),
                    "00",
                    &format!(r#", "reverses": {original}"#),
                )
            }
            Draw::Refund => lines.push(
                "refund",
                &Txn {
                    pcode: "200000",
                    ..t
                }
                .mti("0200"),
                "00",
                "",
            ),
            Draw::Advice => lines.push("authorization advice", &t.mti("0120"), "00", ""),
            Draw::ReversedFinancialAdvice => {
                let original = lines.push("financial advice", &t.mti("0220"), "00", "");
                lines.push(
                    "its reversal advice",
                    &t.mti("0420"),
                    "00",
                    &format!(r#", "reverses": {original}"#),
                )
            }
            Draw::Verification => lines.push(
                "account verification",
                &Txn { amount: 0, ..t }.mti("0100"),
                "00",
                "",
            ),
            Draw::OverLimit => lines.push(
                "over the per-transaction limit",
                &Txn {
                    amount: PER_TRANSACTION_LIMIT + amount,
                    ..t
                }
                .mti("0100"),
                "61",
                "",
            ),
            Draw::Paused => lines.push(
                "paused card",
                &Txn {
                    card: "paused",
                    ..t
                }
                .mti("0100"),
                "62",
                "",
            ),
            Draw::Closed => lines.push(
                "closed card",
                &Txn {
                    card: "closed",
                    ..t
                }
                .mti("0100"),
                "46",
                "",
            ),
            Draw::Unissued => lines.push(
                "never issued",
                &Txn {
                    card: "stranger",
                    ..t
                }
                .mti("0100"),
                "14",
                "",
            ),
            Draw::BlockedMcc => lines.push(
                "blocked MCC",
                &Txn { mcc: "7995", ..t }.mti("0100"),
                "57",
                "",
            ),
            Draw::OtherCurrency => lines.push(
                "another currency",
                &Txn {
                    currency: "840",
                    ..t
                }
                .mti("0100"),
                "57",
                "",
            ),
            Draw::WrongExpiry => lines.push(
                "not the virtual expiry",
                &Txn {
                    expiry: Some("0012"),
                    ..t
                }
                .mti("0100"),
                "54",
                "",
            ),
            Draw::Malformed => lines.push(
                "malformed",
                &t.mti("0100").short(),
                "30",
                r#", "malformed": true"#,
            ),
            Draw::Passthrough => lines.push(
                "ordinary card passed through",
                &Txn { card: "plain", ..t }.mti("0100"),
                "00",
                "",
            ),
            Draw::Echo => lines.push(
                "echo",
                &Fields(r#""t": "0800", "70": "301""#.into()),
                "00",
                "",
            ),
        };
    }
    Generated {
        cards: cards_json,
        load: lines.text,
    }
}

/// One financial message's variable parts.
#[derive(Clone, Copy)]
struct Txn<'a> {
    card: &'a str,
    amount: u64,
    terminal: u32,
    mcc: &'a str,
    currency: &'a str,
    /// DE 14 other than the card's own.
    expiry: Option<&'a str>,
    pcode: &'a str,
}

/// The inside of a line's `"fields"` object.
struct Fields(String);

impl Txn<'_> {
    fn mti(&self, mti: &str) -> Fields {
        let expiry = match self.expiry {
            Some(e) => e.to_string(),
            None => format!("${{expiry.{}}}", self.card),
        };
        Fields(format!(
            r#""t": "{mti}", "2": "${{vpan.{card}}}", "3": "{pcode}", "4": "{amount:012}", "14": "{expiry}", "18": "{mcc}", "22": "812", "25": "59", "32": "12345678901", "41": "TERM{terminal:04}", "42": "SHOP{terminal:011}", "49": "{currency}""#,
            card = self.card,
            pcode = self.pcode,
            amount = self.amount,
            mcc = self.mcc,
            terminal = self.terminal,
            currency = self.currency,
        ))
    }
}

impl Fields {
    /// Without the text fields after DE 32, so that the last field is numeric (what a
    /// `malformed` line breaks).
    fn short(self) -> Fields {
        let cut = self.0.find(r#", "41""#).unwrap_or(self.0.len());
        Fields(self.0[..cut].to_string())
    }
}

/// The file being written and its message count (the index `reverses` uses).
struct Lines {
    text: String,
    count: usize,
}

impl Lines {
    fn new(messages: usize) -> Lines {
        let mut text = String::with_capacity(messages * 330);
        text.push_str(
            "# Generated by `vpan traffic`: every expectation holds however often and however\n\
             # concurrently this file is replayed. Card names are bound by vpan demo.\n",
        );
        Lines { text, count: 0 }
    }

    /// Appends one line; returns its message index.
    fn push(&mut self, name: &str, fields: &Fields, expect: &str, extra: &str) -> usize {
        let _ = writeln!(
            self.text,
            r#"{{"name": "{name}", "fields": {{{}}}, "expect": "{expect}"{extra}}}"#,
            fields.0
        );
        self.count += 1;
        self.count - 1
    }
}

/// `vpan traffic`: writes the files and says where.
pub fn run_cli(args: &Args) -> Result<(), String> {
    let g = generate(args.cards, args.messages, args.seed);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    write(&args.out.join("cards.json"), &g.cards)?;
    write(&args.out.join("load.jsonl"), &g.load)?;
    eprintln!(
        "wrote {} cards and {} messages to {}; replay with: {} demo --scenario {}",
        args.cards + 4,
        args.messages,
        args.out.display(),
        super::this_program(),
        args.out.display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso8583::Spec;
    use crate::tools::demo::Scenario;
    use crate::tools::traffic::{Bindings, BoundCard, Traffic};

    #[test]
    fn the_checked_in_sample_is_what_the_readme_command_writes() {
        // `vpan traffic --out fixtures/generated --cards 20 --messages 500 --seed 1`
        let g = generate(20, 500, 1);
        assert_eq!(g.cards, include_str!("../../fixtures/generated/cards.json"));
        assert_eq!(g.load, include_str!("../../fixtures/generated/load.jsonl"));
    }

    #[test]
    fn exactly_the_messages_asked_for_are_written() {
        for seed in 0..200 {
            for messages in [1, 2, 7] {
                let g = generate(3, messages, seed);
                let written = g
                    .load
                    .lines()
                    .filter(|l| l.trim_start().starts_with('{'))
                    .count();
                assert_eq!(written, messages, "seed {seed}");
            }
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_files_and_another_seed_others() {
        assert_eq!(generate(5, 300, 7), generate(5, 300, 7));
        assert_ne!(generate(5, 300, 7).load, generate(5, 300, 8).load);
    }

    #[test]
    fn the_files_read_back_as_a_scenario_with_every_message_type_and_code() {
        let g = generate(10, 3_000, 1);
        let dir = std::env::temp_dir().join(format!("vpan-gen-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cards.json"), &g.cards).unwrap();
        std::fs::write(dir.join("load.jsonl"), &g.load).unwrap();
        let scenario = Scenario::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let bindings: Bindings = scenario
            .cards
            .iter()
            .map(|c| {
                let bound = BoundCard {
                    vpan: crate::pan::test_pan("49701099"),
                    expiry: "2912".into(),
                };
                (c.name.clone(), bound)
            })
            .collect();
        let t = Traffic::parse_bound(&g.load, Spec::iso87ascii(), &bindings).unwrap();
        assert_eq!(t.len(), 3_000);
        let mut mtis: Vec<[u8; 4]> = t.entries().iter().map(|e| e.message.mti()).collect();
        mtis.sort();
        mtis.dedup();
        for want in [
            b"0100", b"0120", b"0200", b"0220", b"0400", b"0420", b"0800",
        ] {
            assert!(mtis.contains(want), "{:?}", String::from_utf8_lossy(want));
        }
        let mut codes: Vec<[u8; 2]> = t.entries().iter().filter_map(|e| e.expect).collect();
        codes.sort();
        codes.dedup();
        let codes: Vec<&str> = codes
            .iter()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(codes, ["00", "14", "30", "46", "54", "57", "61", "62"]);
    }
}
