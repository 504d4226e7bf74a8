//! The cards copied under another PAN key (`vpan rekey`): written as the snapshot of a new
//! data directory, each real PAN sealed under the new key, and compared with the cards
//! they were copied from once the copy is read back.

use std::path::Path;

use super::Cards;
use crate::cards::card::CardKey;
use crate::cards::event;
use crate::store::StoreError;
use crate::store::crypto::PanCipher;
use crate::store::identity;
use crate::store::journal::Encode;
use crate::store::segment::Segment;

/// The copy's journal starts at segment 2, after one it never had: a start without a
/// snapshot reads the journal from segment 1, so the copy's snapshot lost would be refused
/// (segment 1 missing, "or snapshot.bin") rather than the copy read as a new, empty store,
/// as a store that has snapshotted is (its first snapshot rotates past segment 1).
const FIRST_SEGMENT: u64 = 2;

impl Cards {
    /// Writes these cards and remembered transactions into `into`, an empty directory,
    /// as a data directory of their own under `cipher`: its first journal segment, empty,
    /// then a snapshot that starts the journal there. Returns the cards and transactions
    /// written. This store's own journal and files are not touched.
    pub fn copy_rekeyed(&self, into: &Path, cipher: &PanCipher) -> Result<(u64, u64), StoreError> {
        let _one = self.snapshot_lock.lock();
        // The same store under another key: its snapshot names this directory's identity.
        identity::write(into, self.store_id)?;
        // A start refuses a snapshot without the segment it names (one taken while serving
        // always has the one it rotated to), so the segment comes first.
        Segment::create(into, FIRST_SEGMENT, &cipher.marker_key())
            .map_err(StoreError::io("making the copy's first journal segment"))?
            .close();
        self.write_snapshot(into, cipher, FIRST_SEGMENT)
    }

    /// The first difference between these cards and `other`'s, if any: the number of cards
    /// or of remembered transactions, or one card's real PAN, controls, counters or recent
    /// decisions, or one transaction (named by its card's masked vPAN).
    pub fn first_difference(&self, other: &Cards) -> Option<String> {
        if self.index.len() != other.index.len() {
            return Some(format!(
                "{} cards against {}",
                self.index.len(),
                other.index.len()
            ));
        }
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for key in self.index.keys() {
            let differs = match (
                self.card_record(key, &mut mine),
                other.card_record(key, &mut theirs),
            ) {
                (Some(a), Some(b)) => a != b || mine != theirs,
                (None, None) => false,
                _ => true,
            };
            if differs {
                return Some(format!("card {} differs", key.pan()));
            }
        }
        if self.ledger.len() != other.ledger.len() {
            return Some(format!(
                "{} remembered transactions against {}",
                self.ledger.len(),
                other.ledger.len()
            ));
        }
        for k in self.ledger.keys() {
            let record = |cards: &Cards, out: &mut Vec<u8>| {
                out.clear();
                let found = cards.ledger.get_with_partial(&k);
                if let Some((e, partial)) = found {
                    event::SnapTx(k, e, partial).encode(out);
                }
                found.map(|(e, _)| e.card)
            };
            let card = record(self, &mut mine);
            if card != record(other, &mut theirs) || mine != theirs {
                return Some(match card {
                    Some(card) => format!("a transaction of card {} differs", card.pan()),
                    None => "a transaction differs".to_string(),
                });
            }
        }
        None
    }

    /// Card `key` as a snapshot records it but for its sealed PAN, in `out`; and its real
    /// PAN, compared apart (a sealing differs from key to key). `None` when it is not here.
    fn card_record(&self, key: CardKey, out: &mut Vec<u8>) -> Option<crate::pan::Pan> {
        out.clear();
        self.index.read(key, |card| {
            event::SnapCard {
                key,
                sealed_pan: &[],
                card,
            }
            .encode(out);
            card.real_pan.clone()
        })
    }
}
