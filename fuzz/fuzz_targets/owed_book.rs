//! Any bytes as the book of reversals owed (`reversals.log`), opened the way a start opens
//! it (`OwedReversals::open`: each record's payload decoded, each debt's reversal unsealed,
//! the file kept aside when its end does not read, then rewritten with what is still
//! owed). It must never panic, and what an open returns must come back the same from the
//! file it rewrote: the debts (numbers and reversals) and the STANs changed. A book made by
//! vpan itself must give back every debt written in it.
//!
//! Input: a mode byte, then
//! - mode 0: the file's bytes as they are (framing, torn tails);
//! - mode 1: payloads separated by 0xFF, each framed as the book frames a record, so the
//!   record decoder sees arbitrary payloads behind valid CRCs (a debt's reversal then
//!   fails to unseal, which refuses the start);
//! - otherwise: reversals separated by 0xFF, written as debts numbered 1, 2, ... by
//!   `OwedReversals::write_copy` (sealed under the key, as `vpan rekey` writes a book), so
//!   that the unsealing succeeds and the debts must come back whole.
#![no_main]

use std::path::PathBuf;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vpan::store::crypto::PanCipher;
use vpan::store::journal::{Encode, frame};
use vpan::store::owed::{Debt, FILE, OwedReversals, Stamp};

/// The time the book is opened at, and how long changed STANs are kept: a stamp record's
/// time decides whether it comes back.
const NOW: u64 = 1_800_000_000;
const STAMPS_KEPT: u64 = 3_600;

struct Raw<'a>(&'a [u8]);

impl Encode for Raw<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0);
    }
}

/// The book's directory, removed when the input is done (its name is per process).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cipher() -> PanCipher {
    PanCipher::from_key(&[7; 32])
}

/// What an open gave back, comparable: the debts' numbers and bytes, and the stamps.
type Opened = (Vec<(u64, Vec<u8>)>, Vec<Stamp>);

fn open(dir: &std::path::Path) -> Option<Opened> {
    let (_book, debts, stamps) = OwedReversals::open(dir, cipher(), NOW, STAMPS_KEPT).ok()?;
    let debts = debts
        .into_iter()
        .map(|d| (d.id, d.reversal.to_vec()))
        .collect();
    Some((debts, stamps))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let scratch =
        Scratch(std::env::temp_dir().join(format!("vpan-fuzz-owed-{}", std::process::id())));
    let dir = &scratch.0;
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut written = None;
    match mode {
        0 => {
            if std::fs::write(dir.join(FILE), rest).is_err() {
                return;
            }
        }
        1 => {
            let mut file = Vec::new();
            for payload in rest.split(|&b| b == 0xFF).filter(|p| !p.is_empty()) {
                frame(&Raw(payload), &mut file);
            }
            if std::fs::write(dir.join(FILE), &file).is_err() {
                return;
            }
        }
        _ => {
            let debts: Vec<Debt> = rest
                .split(|&b| b == 0xFF)
                .zip(1..)
                .map(|(reversal, id)| Debt {
                    id,
                    reversal: Bytes::copy_from_slice(reversal),
                })
                .collect();
            let stamps = [Stamp {
                key: rest.iter().take(32).copied().collect(),
                stamp: *b"000123",
                at: NOW - 1,
            }];
            OwedReversals::write_copy(dir, &cipher(), &debts, &stamps, NOW)
                .expect("a book written by vpan");
            let debts = debts.iter().map(|d| (d.id, d.reversal.to_vec())).collect();
            written = Some((debts, stamps.to_vec()));
        }
    }
    let Some(first) = open(dir) else {
        assert!(written.is_none(), "a book vpan wrote itself did not open");
        return;
    };
    if let Some(written) = written {
        assert_eq!(first, written, "a book vpan wrote came back otherwise");
    }
    let again = open(dir).expect("the book an open rewrote opens again");
    assert_eq!(first, again, "the rewritten book gives back otherwise");
});
