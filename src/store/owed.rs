//! Reversals vpan owes the issuer, kept on disk until the issuer has answered them.
//!
//! When the issuer does not answer a purchase in time, the network is told 91, and vpan
//! owes the issuer a reversal of it: the issuer may have approved it, and its real account
//! must not stay charged for a purchase the network was refused. The issuer link keeps
//! sending that reversal until the issuer answers it, which can take long when the host is
//! down. A debt only in memory would die with the process (`kill -9`, a crash, a shutdown
//! whose grace ran out), so each one is written here, and synced, before the network hears
//! its 91, and marked paid once the issuer has answered its reversal. At start, the debts
//! not paid are handed back to be sent again.
//!
//! `reversals.log` in the data directory holds records framed as the journal's
//! ([`super::journal::frame`]): a tag, the debt's number, and for a debt the reversal as
//! packed toward the issuer, sealed (AES-256-GCM under the card key, the number as
//! associated data) since it carries the real card number. The file is small: at start it
//! is rewritten with only the debts still owed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use zeroize::Zeroize;

use super::StoreError;
use super::crypto::PanCipher;
use super::journal::{Encode, frame, read_records, sync_dir};

/// The file's name in the data directory.
pub const FILE: &str = "reversals.log";
/// The rewrite at start, before it replaces [`FILE`].
const TEMP_FILE: &str = "reversals.tmp";

const TAG_OWED: u8 = 1;
const TAG_PAID: u8 = 2;

/// A reversal owed to the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debt {
    /// Its number in the book, to mark it paid.
    pub id: u64,
    /// The reversal, as packed toward the issuer (its fixed header excluded).
    pub reversal: Bytes,
}

/// The book of reversals owed. Its methods write and sync: call them off the runtime's
/// threads (`spawn_blocking`).
pub struct OwedReversals {
    file: parking_lot::Mutex<File>,
    cipher: PanCipher,
    next_id: AtomicU64,
}

impl std::fmt::Debug for OwedReversals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwedReversals").finish_non_exhaustive()
    }
}

/// One record of the file.
enum Record<'a> {
    Owed { id: u64, sealed: &'a [u8] },
    Paid { id: u64 },
}

impl Encode for Record<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Owed { id, sealed } => {
                out.push(TAG_OWED);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(sealed);
            }
            Record::Paid { id } => {
                out.push(TAG_PAID);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

fn decode(payload: &[u8]) -> Result<Record<'_>, StoreError> {
    let bad = || StoreError::Corrupt("reversals owed");
    let (&tag, rest) = payload.split_first().ok_or_else(bad)?;
    let (id, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let id = u64::from_le_bytes(*id);
    match tag {
        TAG_OWED => Ok(Record::Owed { id, sealed: rest }),
        TAG_PAID if rest.is_empty() => Ok(Record::Paid { id }),
        _ => Err(bad()),
    }
}

/// What a debt's ciphertext is bound to: a sealed reversal copied under another number
/// fails to open.
fn context(id: u64) -> [u8; 17] {
    let mut c = [0u8; 17];
    c[..9].copy_from_slice(b"reversal:");
    c[9..].copy_from_slice(&id.to_le_bytes());
    c
}

impl OwedReversals {
    /// Opens the book in `dir` (made empty when absent) and returns the debts still owed,
    /// oldest first. The file is rewritten with those alone, so it never grows past the
    /// debts of one run. A torn last record (a crash while writing it) is dropped: its
    /// network answer had not gone out.
    pub fn open(dir: &Path, cipher: PanCipher) -> Result<(OwedReversals, Vec<Debt>), StoreError> {
        let path = dir.join(FILE);
        let mut owed: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut paid = std::collections::HashSet::new();
        let mut last_id = 0;
        if path.exists() {
            read_records(&path, |payload| {
                match decode(payload)? {
                    Record::Owed { id, sealed } => {
                        owed.push((id, sealed.to_vec()));
                        last_id = last_id.max(id);
                    }
                    // Paid may come before owed: the two are written by different tasks.
                    Record::Paid { id } => {
                        paid.insert(id);
                    }
                }
                Ok(())
            })?;
        }
        owed.retain(|(id, _)| !paid.contains(id));
        let mut debts = Vec::with_capacity(owed.len());
        for (id, sealed) in &owed {
            let mut plain = cipher.open_bytes(sealed, &context(*id))?;
            debts.push(Debt {
                id: *id,
                reversal: Bytes::copy_from_slice(&plain),
            });
            plain.zeroize();
        }
        let file = rewrite(dir, &path, &owed)?;
        Ok((
            OwedReversals {
                file: parking_lot::Mutex::new(file),
                cipher,
                next_id: AtomicU64::new(last_id + 1),
            },
            debts,
        ))
    }

    /// A number for a new debt.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes `debts` (number, packed reversal) and syncs them: once this returns `Ok`,
    /// they are sent again after any crash until marked paid.
    pub fn owe(&self, debts: &[(u64, Bytes)]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(debts.len() * 256);
        for (id, reversal) in debts {
            let sealed = self.cipher.seal_bytes(reversal, &context(*id));
            frame(
                &Record::Owed {
                    id: *id,
                    sealed: &sealed,
                },
                &mut buf,
            );
        }
        self.append(&buf, "writing the reversals owed")
    }

    /// Marks debt `id` paid: the issuer answered its reversal, or it turned out not to be
    /// needed. Synced as well, so a paid debt is not sent again after a restart (a host
    /// takes a reversal sent again as a repeat, so one that slips through is harmless).
    pub fn paid(&self, id: u64) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(16);
        frame(&Record::Paid { id }, &mut buf);
        self.append(&buf, "marking a reversal paid")
    }

    fn append(&self, buf: &[u8], what: &'static str) -> Result<(), StoreError> {
        let mut file = self.file.lock();
        file.write_all(buf)
            .and_then(|()| file.sync_data())
            .map_err(StoreError::io(what))
    }
}

/// Writes the debts still `owed` as the whole new file (synced, renamed into place, the
/// directory synced), and opens it for appending.
fn rewrite(dir: &Path, path: &PathBuf, owed: &[(u64, Vec<u8>)]) -> Result<File, StoreError> {
    let what = "rewriting the reversals owed";
    let mut buf = Vec::new();
    for (id, sealed) in owed {
        frame(&Record::Owed { id: *id, sealed }, &mut buf);
    }
    let temp = dir.join(TEMP_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(StoreError::io(what))?;
    file.write_all(&buf)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io(what))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(StoreError::io(what))?;
    sync_dir(dir).map_err(StoreError::io(what))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(StoreError::io(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> PanCipher {
        PanCipher::from_key(&[7; 32])
    }

    fn reopen(dir: &Path) -> (OwedReversals, Vec<Debt>) {
        OwedReversals::open(dir, cipher()).unwrap()
    }

    #[test]
    fn debts_not_paid_come_back_at_open_sealed_on_disk_and_numbers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (book, none) = reopen(dir.path());
        assert!(none.is_empty());
        let card = crate::pan::test_pan("497010");
        let first = Bytes::from(format!("0400{card}first"));
        let second = Bytes::from(format!("0400{card}second"));
        let (a, b, c) = (book.next_id(), book.next_id(), book.next_id());
        book.owe(&[(a, first.clone()), (b, second.clone())])
            .unwrap();
        // Paid before its debt is written (two tasks): still paid.
        book.paid(c).unwrap();
        book.owe(&[(c, Bytes::from_static(b"third"))]).unwrap();
        book.paid(a).unwrap();
        drop(book);

        let on_disk = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(
            !on_disk.windows(card.len()).any(|w| w == card.as_bytes()),
            "the real card number is sealed on disk"
        );
        let (book, debts) = reopen(dir.path());
        assert_eq!(
            debts,
            vec![Debt {
                id: b,
                reversal: second.clone()
            }]
        );
        assert!(book.next_id() > c, "numbers are not given twice");
        drop(book);
        // The rewrite kept what is owed, and only that.
        let (_, again) = reopen(dir.path());
        assert_eq!(again.len(), 1);
        assert!(std::fs::metadata(dir.path().join(FILE)).unwrap().len() < on_disk.len() as u64);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_a_debt_sealed_under_another_number_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let id = book.next_id();
        book.owe(&[(id, Bytes::from_static(b"kept"))]).unwrap();
        book.owe(&[(book.next_id(), Bytes::from_static(b"torn"))])
            .unwrap();
        drop(book);
        let path = dir.path().join(FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_, debts) = reopen(dir.path());
        assert_eq!(debts.len(), 1);
        assert_eq!(debts[0].reversal, Bytes::from_static(b"kept"));

        // The same sealed bytes under another number do not open.
        let sealed = cipher().seal_bytes(b"moved", &context(1));
        let mut buf = Vec::new();
        frame(
            &Record::Owed {
                id: 2,
                sealed: &sealed,
            },
            &mut buf,
        );
        std::fs::write(&path, buf).unwrap();
        assert_eq!(
            OwedReversals::open(dir.path(), cipher()).unwrap_err(),
            StoreError::Decrypt
        );
    }
}
