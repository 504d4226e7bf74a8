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

use std::io;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

/// `vpan traffic` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to write cards.json and load.jsonl into (made if absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Virtual cards the approvals are spread over (up to 10 million, some 1.4 GB).
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = super::flags::count(MAX_CARDS))]
    pub cards: usize,
    /// Messages in load.jsonl (up to 100 million, some 27 GB).
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000, value_parser = super::flags::count(100_000_000))]
    pub messages: usize,
    /// Seed of the draws: the same seed writes the same files.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub seed: u64,
}

/// Most cards `--cards` writes: about 140 bytes each in `cards.json`, which `vpan demo`
/// reads whole and issues one by one over HTTPS. Up to `u32::MAX`, a typo filled the disk
/// (some 600 GB) before anything said so.
const MAX_CARDS: u64 = 10_000_000;

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

/// Makes the scenario in memory; `cards` at least 1.
pub fn generate(cards: usize, messages: usize, seed: u64) -> Generated {
    let (mut cards_json, mut load) = (Vec::new(), Vec::new());
    // Writing into memory does not fail.
    let _ = write_cards(cards, &mut cards_json);
    let _ = write_load(cards, messages, seed, &mut load);
    Generated {
        cards: String::from_utf8_lossy(&cards_json).into_owned(),
        load: String::from_utf8_lossy(&load).into_owned(),
    }
}

/// Writes `cards.json` into `out` as it is made, a card at a time, so that any number of
/// cards costs no more memory than one; `cards` at least 1.
pub fn write_cards(cards: usize, out: &mut dyn io::Write) -> io::Result<()> {
    let load_card = |i: usize| {
        json!({"name": format!("load{i}"), "controls": {
            "currency": "978",
            "amount_limit": 1_000_000_000_000u64,
            "per_transaction_limit": PER_TRANSACTION_LIMIT,
            "mcc_block": ["7995"],
        }})
    };
    let others = [
        json!({"name": "paused", "controls": {"currency": "978", "amount_limit": 50_000}, "then": "pause"}),
        json!({"name": "closed", "controls": {"currency": "978", "amount_limit": 50_000}, "then": "close"}),
        json!({"name": "stranger", "kind": "unissued"}),
        json!({"name": "plain", "kind": "plain", "bin": "453201"}),
    ];
    writeln!(out, "[")?;
    for i in 0..cards.max(1) {
        writeln!(out, "  {},", load_card(i))?;
    }
    for (i, d) in others.iter().enumerate() {
        let sep = if i + 1 < others.len() { "," } else { "" };
        writeln!(out, "  {d}{sep}")?;
    }
    writeln!(out, "]")
}

/// Writes `load.jsonl` into `out` as it is made, a line at a time, so that a file of any
/// size costs no more memory than a line: `messages` over `cards` (at least 1) load cards.
pub fn write_load(
    cards: usize,
    messages: usize,
    seed: u64,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let cards = cards.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lines = Lines::new(out)?;
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    // Until a write fails: a full disk ends the run there, not after every line is made.
    while lines.count < messages && lines.failed.is_none() {
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
    lines.finish()
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
struct Lines<'a> {
    out: &'a mut dyn io::Write,
    count: usize,
    /// The first write that failed: nothing more is written, and [`Lines::finish`] says so.
    failed: Option<io::Error>,
}

impl<'a> Lines<'a> {
    fn new(out: &'a mut dyn io::Write) -> io::Result<Lines<'a>> {
        out.write_all(
            b"# Generated by `vpan traffic`: every expectation holds however often and however\n\
             # concurrently this file is replayed. Card names are bound by vpan demo.\n",
        )?;
        Ok(Lines {
            out,
            count: 0,
            failed: None,
        })
    }

    /// Appends one line; returns its message index.
    fn push(&mut self, name: &str, fields: &Fields, expect: &str, extra: &str) -> usize {
        if self.failed.is_none()
            && let Err(e) = writeln!(
                self.out,
                r#"{{"name": "{name}", "fields": {{{}}}, "expect": "{expect}"{extra}}}"#,
                fields.0
            )
        {
            self.failed = Some(e);
        }
        self.count += 1;
        self.count - 1
    }

    /// The first failed write's error, if any.
    fn finish(self) -> io::Result<()> {
        self.failed.map_or(Ok(()), Err)
    }
}

/// `vpan traffic`: writes the files and says where.
pub fn run_cli(args: &Args) -> Result<(), String> {
    // The directory first, so that a bad --out fails before anything is made; the lines go
    // to disk as they are made (100 million take some 27 GB).
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    write_file(&args.out.join("cards.json"), |out| {
        write_cards(args.cards, out)
    })?;
    write_file(&args.out.join("load.jsonl"), |out| {
        write_load(args.cards, args.messages, args.seed, out)
    })?;
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

/// Creates `path` and has `write` fill it through a buffer.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> Result<(), String> {
    let written = std::fs::File::create(path).and_then(|f| {
        let mut out = io::BufWriter::with_capacity(1 << 20, f);
        write(&mut out)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(())
    });
    written.map_err(|e| {
        // A part of a file would read as a scenario of its own.
        let _ = std::fs::remove_file(path);
        format!("cannot write {}: {e}", path.display())
    })
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
    fn a_number_of_cards_or_messages_past_what_a_disk_takes_is_refused_naming_its_flag() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Tool {
            #[command(flatten)]
            args: Args,
        }
        let parse = |more: &[&str]| Tool::try_parse_from([&["tool", "--out", "x"], more].concat());
        let t = parse(&["--cards", "10000000", "--messages", "100000000"]).unwrap();
        assert_eq!((t.args.cards, t.args.messages), (10_000_000, 100_000_000));
        for (flag, value) in [("--cards", "10000001"), ("--messages", "100000001")] {
            let e = parse(&[flag, value]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "a usage error");
            assert!(e.to_string().contains(flag), "{e}");
        }
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
    fn the_command_writes_the_files_as_made_and_a_bad_out_fails_before_any_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let args = |out: PathBuf, messages| Args {
            out,
            cards: 7,
            messages,
            seed: 3,
        };
        let out = dir.path().join("scenario");
        run_cli(&args(out.clone(), 300)).unwrap();
        let g = generate(7, 300, 3);
        assert_eq!(
            std::fs::read_to_string(out.join("cards.json")).unwrap(),
            g.cards
        );
        assert_eq!(
            std::fs::read_to_string(out.join("load.jsonl")).unwrap(),
            g.load
        );
        // Review of stop 51: the whole file was made in memory first (27 GB at the most
        // messages allowed), and only then did a bad --out fail. Now it fails at once.
        let blocked = dir.path().join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        let err = run_cli(&args(blocked.join("x"), 100_000_000)).unwrap_err();
        assert!(err.starts_with("--out "), "{err}");
    }

    #[test]
    fn a_write_that_fails_ends_the_file_at_once() {
        // Round 2 of e77d145: a full disk was found only after every line was made.
        struct Full {
            writes: usize,
        }
        impl io::Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.writes += 1;
                if self.writes > 10 {
                    return Err(io::Error::from(io::ErrorKind::StorageFull));
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut full = Full { writes: 0 };
        let err = write_load(3, 100_000_000, 1, &mut full).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(
            full.writes < 20,
            "{} writes after the disk was full",
            full.writes
        );
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
