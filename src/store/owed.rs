//! Reversals vpan owes the issuer, kept on disk until the issuer has answered them.
//!
//! When the issuer does not answer a purchase in time, the network is told 91, and vpan
//! owes the issuer a reversal of it: the issuer may have approved it, and its real account
//! must not stay charged for a purchase the network was refused. The issuer link keeps
//! sending that reversal until the issuer answers it, which can take long when the host is
//! down. A debt only in memory would die with the process (`kill -9`, a crash, a shutdown
//! whose grace ran out), so each one is written here, and synced, before the network hears
//! its 91, and marked paid once the issuer has answered its reversal. At start, the debts
//! not paid are handed back to be sent again. That order matters: the caller records its
//! own outcome of the request (a hold released, durably) before it records the debt, so
//! a crash never leaves a debt whose purchase a restart would still take for in doubt.
//!
//! A network's reversal on a virtual card that the issuer did not hear is a debt too, once
//! the card's amount is given back on disk: so that the real account is not left charged
//! for what the card no longer counts when the network gives up sending it.
//!
//! Writes are group-committed: whatever is queued while one `fdatasync` runs goes in the
//! next, so an issuer that stops answering at thousands of requests a second costs a few
//! hundred syncs a second here, not one per request.
//!
//! The book keeps one more thing the issuer link must not forget in a restart: the STANs
//! it changed. A request whose STAN another request in flight already carries goes to the
//! issuer under another one (the issuer knows the transaction by it); a reversal naming
//! it in DE 90, which the network writes with its own STAN, is rewritten to name it as the
//! issuer knows it. That change is written here, and synced, before the request's answer
//! goes back to the network, and kept for as long as the link remembers it (an hour).
//!
//! `reversals.log` in the data directory holds records framed as the journal's
//! ([`super::journal::frame`]): a tag, the debt's number, and for a debt the reversal as
//! packed toward the issuer, sealed (AES-256-GCM under the card key, the number as
//! associated data) since it carries the real card number. The file stays small: at start
//! it is rewritten with only the debts still owed and the stamps still kept, and so it is
//! while serving, once it has grown past [`COMPACT_AFTER_BYTES`] and twice its size at the
//! last rewrite (an issuer slow for an hour at a thousand requests a second would
//! otherwise grow it by a gigabyte until the next restart, on the journal's disk).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::oneshot;
use zeroize::Zeroize;

use crate::cards::card::unix_now;

use super::StoreError;
use super::crypto::PanCipher;
use super::journal::{Encode, frame, read_records, sync_dir};

/// The file's name in the data directory.
pub const FILE: &str = "reversals.log";
/// A rewrite, before it replaces [`FILE`].
const TEMP_FILE: &str = "reversals.tmp";
/// The book is rewritten while serving once it is this large and twice its size after the
/// last rewrite: the rewrite holds its commits up while it writes what is still owed, so
/// not often, and a book of many debts really owed is not rewritten over and over.
pub const COMPACT_AFTER_BYTES: u64 = 64 << 20;

const TAG_OWED: u8 = 1;
const TAG_PAID: u8 = 2;
const TAG_STAMP: u8 = 3;

/// A reversal owed to the issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct Debt {
    /// Its number in the book, to mark it paid.
    pub id: u64,
    /// The reversal, as packed toward the issuer (its fixed header excluded).
    pub reversal: Bytes,
}

/// A STAN the issuer link changed toward the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The transaction's network identity, as the link keys it.
    pub key: Vec<u8>,
    /// The STAN it went to the issuer under.
    pub stamp: [u8; 6],
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// The book of reversals owed (and of STANs changed).
pub struct OwedReversals {
    /// Records waiting for the next commit, and whether a commit is running.
    queue: parking_lot::Mutex<Queue>,
    /// The file and what it holds.
    file: parking_lot::Mutex<Tail>,
    cipher: PanCipher,
    /// How long a changed STAN is kept, in seconds (the rewrites drop older ones).
    stamps_kept: u64,
    /// [`COMPACT_AFTER_BYTES`], smaller in the tests.
    compact_after: AtomicU64,
    next_id: AtomicU64,
    /// The data directory, for the rewrites.
    dir: PathBuf,
    /// The file's path (the tests' [`super::segment::sync_gate`] holds or fails its syncs).
    path: PathBuf,
    /// The debts whose record failed to be written, no later write of it having landed,
    /// and not paid yet: sent from memory, but a restart before the issuer answers them
    /// forgets them. The journal writes into room it reserved ahead and the book does
    /// not, so on a full disk the book fails first, while the cards are still fine.
    unrecorded: parking_lot::Mutex<Unrecorded>,
}

/// Owns a commit run: one that ends other than by finishing the queue (never run, or a
/// panic) [`OwedReversals::stop_committing`].
struct Committer {
    book: Arc<OwedReversals>,
    finished: bool,
}

impl Committer {
    fn run(&mut self) {
        self.book.commit_queued();
        self.finished = true;
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if !self.finished {
            self.book.stop_committing();
        }
    }
}

/// The file being appended to, and what its records add up to.
struct Tail {
    file: File,
    /// Where its last good record ends: a write that fails part way is cut back to it, so
    /// the records after it are not hidden behind a torn one. `None` once a cut back
    /// failed (or a rewrite's rename could not be made durable): records written after
    /// unreadable bytes would be dropped at the next start, so none is written (and
    /// acknowledged) any more.
    good: Option<u64>,
    /// The length at which the book is next rewritten.
    compact_at: u64,
    /// Debt numbers handed out before the last rewrite: paid ones below it are forgotten
    /// at the next (see [`Live::paid`]).
    numbered_before_rewrite: u64,
    /// What the durable records say is owed: the rewrite's content.
    live: Live,
}

/// The debts in memory only ([`OwedReversals::note_debts`]).
#[derive(Default)]
struct Unrecorded {
    /// Their numbers.
    debts: std::collections::HashSet<u64>,
    /// Debts marked paid (written or not) before their own record came (two tasks write
    /// the two), or with none to come (left unrecorded on purpose): the record failing
    /// after it, or the debt noted unrecorded, must not leave it here for good. At most
    /// [`PAID_AHEAD_KEPT`], the lowest forgotten first.
    paid_ahead: std::collections::BTreeSet<u64>,
    /// Reversals sent with no debt at all (the journal failed under their request, or
    /// their request had none), out now: as much in memory only.
    without_debt: usize,
}

/// A reversal with no debt, out: counted in memory only until dropped.
pub struct WithoutDebt(Arc<OwedReversals>);

impl Drop for WithoutDebt {
    fn drop(&mut self) {
        let mut unrecorded = self.0.unrecorded.lock();
        unrecorded.without_debt -= 1;
        unrecorded.publish();
    }
}

/// How many paid marks [`Unrecorded::paid_ahead`] keeps.
const PAID_AHEAD_KEPT: usize = 4096;

impl Unrecorded {
    /// Takes in debt `id`'s record as written (`landed`) or lost; `known` when the book
    /// holds the debt or its paid mark already (a record written twice, or after its paid
    /// mark), which a lost copy leaves as it is.
    fn owed(&mut self, id: u64, landed: bool, known: bool) {
        if self.paid_ahead.remove(&id) || landed || known {
            self.debts.remove(&id);
        } else if self.debts.insert(id) {
            // Named here, where every loss passes (a write stalled past its caller's wait
            // fails unseen by the caller), once per debt: after a crash, the log is what
            // says which to reconcile.
            tracing::error!(
                debt = id,
                "a reversal owed to the issuer is in memory only: a restart before the issuer answers it forgets it"
            );
        }
    }

    /// Takes in that debt `id` is paid: owed no more, whether or not its record or its
    /// mark ever landed (a lost paid mark only sends the reversal again at the next
    /// start, as a repeat). Remembered as paid ahead of its record unless the book held
    /// that record before this mark (`recorded`).
    fn paid(&mut self, id: u64, recorded: bool) {
        if !self.debts.remove(&id) && !recorded {
            self.paid_ahead.insert(id);
            if self.paid_ahead.len() > PAID_AHEAD_KEPT {
                self.paid_ahead.pop_first();
            }
        }
    }

    /// How many reversals are in memory only: the debts, and those with none.
    fn count(&self) -> usize {
        self.debts.len() + self.without_debt
    }

    /// Sets `vpan_issuer_reversals_unrecorded` to [`Unrecorded::count`].
    fn publish(&self) {
        metrics::gauge!(crate::metrics::ISSUER_REVERSALS_UNRECORDED).set(self.count() as f64);
    }
}

/// A debt still owed, as the book holds it.
struct Owing {
    /// The reversal, sealed.
    sealed: Vec<u8>,
    /// When its record was written, in seconds since the Unix epoch (at start, for those
    /// recovered: the record does not say).
    since: u64,
}

/// The debts still owed and the stamps kept, by the records written so far.
#[derive(Default)]
struct Live {
    /// By debt number (oldest first).
    owed: std::collections::BTreeMap<u64, Owing>,
    /// Debts marked paid. A debt's record may come after its paid one (two tasks write
    /// them) or twice (once more, blocking, when a stop cut the first short), whatever the
    /// order, so a paid debt stays paid here, and is written as paid through a rewrite,
    /// until a whole rewrite cycle has passed since it was numbered.
    paid: std::collections::BTreeSet<u64>,
    stamps: Vec<Stamp>,
}

impl Live {
    /// Sets the gauges of reversals owed to the debts here: how many, and since when the
    /// oldest (the lowest-numbered; 0 for none).
    fn publish(&self) {
        metrics::gauge!(crate::metrics::ISSUER_REVERSALS_OWED).set(self.owed.len() as f64);
        let oldest = self.owed.first_key_value().map_or(0, |(_, o)| o.since);
        metrics::gauge!(crate::metrics::ISSUER_OLDEST_REVERSAL_OWED).set(oldest as f64);
    }

    /// Takes in the records of a batch just made durable (as framed by [`frame`]).
    fn apply(&mut self, framed: &[u8]) {
        for payload in payloads(framed) {
            match decode(payload) {
                // Written twice (see `paid`), it is owed since the first.
                Ok(Record::Owed { id, sealed }) => {
                    if !self.paid.contains(&id) {
                        self.owed.entry(id).or_insert_with(|| Owing {
                            sealed: sealed.to_vec(),
                            since: unix_now(),
                        });
                    }
                }
                Ok(Record::Paid { id }) => {
                    self.owed.remove(&id);
                    self.paid.insert(id);
                }
                Ok(Record::Stamp { at, stamp, key }) => self.stamps.push(Stamp {
                    key: key.to_vec(),
                    stamp,
                    at,
                }),
                // Framed here a moment ago: cannot happen.
                Err(_) => {}
            }
        }
    }
}

/// The payloads of the records of a batch framed by [`frame`] (here, a moment ago).
fn payloads(mut framed: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (head, rest) = framed.split_first_chunk::<8>()?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let (payload, next) = rest.split_at_checked(len)?;
        framed = next;
        Some(payload)
    })
}

/// How many of a batch's records are a debt or its paid mark (not a changed STAN).
fn debt_records(framed: &[u8]) -> u64 {
    payloads(framed)
        .filter(|p| matches!(p.first(), Some(&(TAG_OWED | TAG_PAID))))
        .count() as u64
}

/// The length at which a book of `len` bytes is next rewritten.
fn next_compaction(len: u64, after: u64) -> u64 {
    after.max(len.saturating_mul(2))
}

#[derive(Default)]
struct Queue {
    /// Framed records.
    bytes: Vec<u8>,
    /// Who waits for them to be durable.
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// A commit is running on a blocking thread, and takes what is queued after it.
    committing: bool,
}

/// The reversal carries the real card number in the clear: printed, it shows only its size.
impl std::fmt::Debug for Debt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debt")
            .field("id", &self.id)
            .field("reversal_bytes", &self.reversal.len())
            .finish()
    }
}

impl std::fmt::Debug for OwedReversals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwedReversals").finish_non_exhaustive()
    }
}

/// One record of the file.
enum Record<'a> {
    Owed {
        id: u64,
        sealed: &'a [u8],
    },
    Paid {
        id: u64,
    },
    Stamp {
        at: u64,
        stamp: [u8; 6],
        key: &'a [u8],
    },
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
            Record::Stamp { at, stamp, key } => {
                out.push(TAG_STAMP);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(stamp);
                out.extend_from_slice(key);
            }
        }
    }
}

fn decode(payload: &[u8]) -> Result<Record<'_>, StoreError> {
    let bad = || StoreError::Corrupt("reversals owed");
    let (&tag, rest) = payload.split_first().ok_or_else(bad)?;
    // A debt's number, or a stamp's time.
    let (n, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let n = u64::from_le_bytes(*n);
    match tag {
        TAG_OWED => Ok(Record::Owed {
            id: n,
            sealed: rest,
        }),
        TAG_PAID if rest.is_empty() => Ok(Record::Paid { id: n }),
        TAG_STAMP => {
            let (stamp, key) = rest.split_first_chunk::<6>().ok_or_else(bad)?;
            Ok(Record::Stamp {
                at: n,
                stamp: *stamp,
                key,
            })
        }
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
    /// oldest first, and the STANs changed within the last `stamps_kept` seconds before
    /// `now` (Unix seconds; and a minute after it, for a clock set back a little). The file
    /// is rewritten with those alone, so it holds no more than one run's debts and stamps.
    /// Bytes at its end that do not read (a write torn by a crash) are dropped, the file
    /// kept aside first.
    pub fn open(
        dir: &Path,
        cipher: PanCipher,
        now: u64,
        stamps_kept: u64,
    ) -> Result<(OwedReversals, Vec<Debt>, Vec<Stamp>), StoreError> {
        Self::open_restating(dir, cipher, now, stamps_kept, |_| None)
    }

    /// [`OwedReversals::open`], each debt kept as `restate` gives it back (`None`: as it
    /// is), in what it returns and in the file it rewrites: so that a debt an older vpan
    /// wrote with what is no longer kept (card-verification data) loses it at the next
    /// start, on disk too.
    pub fn open_restating(
        dir: &Path,
        cipher: PanCipher,
        now: u64,
        stamps_kept: u64,
        restate: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(OwedReversals, Vec<Debt>, Vec<Stamp>), StoreError> {
        let stamps_within = now.saturating_sub(stamps_kept)..=now.saturating_add(60);
        let path = dir.join(FILE);
        let mut owed: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut stamps = Vec::new();
        let mut paid = std::collections::HashSet::new();
        let mut owed_ids = std::collections::HashSet::new();
        let mut last_id = 0;
        if path.exists() {
            let report = read_records(&path, |payload| {
                match decode(payload)? {
                    // Written twice when its first write was cut short by a stop (then
                    // written again, blocking): kept once.
                    Record::Owed { id, sealed } => {
                        if owed_ids.insert(id) {
                            owed.push((id, sealed.to_vec()));
                        }
                        last_id = last_id.max(id);
                    }
                    // Paid may come before owed: the two are written by different tasks.
                    Record::Paid { id } => {
                        paid.insert(id);
                    }
                    Record::Stamp { at, stamp, key } => {
                        if stamps_within.contains(&at) {
                            stamps.push(Stamp {
                                key: key.to_vec(),
                                stamp,
                                at,
                            });
                        }
                    }
                }
                Ok(())
            })?;
            if report.bad_bytes > 0 {
                // A crash while a batch was written tears it (a failed write is cut back at
                // once); damage elsewhere would hide the debts after it. The two look
                // alike from here, so the file is kept aside, whole and synced, before the
                // rewrite drops what could not be read; no copy, no start.
                let kept = super::aside_path(&path);
                std::fs::copy(&path, &kept)
                    .and_then(|_| File::open(&kept)?.sync_all())
                    .map_err(StoreError::io(
                        "keeping a torn book of reversals owed aside",
                    ))?;
                tracing::warn!(
                    good_bytes = report.good_bytes,
                    bad_bytes = report.bad_bytes,
                    kept = %kept.display(),
                    "the book of reversals owed ends in bytes that do not read (a write torn by a crash, most likely: its network answers had not gone out); kept aside whole"
                );
            }
        }
        owed.retain(|(id, _)| !paid.contains(id));
        let mut debts = Vec::with_capacity(owed.len());
        for (id, sealed) in &mut owed {
            let mut plain = cipher.open_bytes(sealed, &context(*id))?;
            if let Some(restated) = restate(&plain) {
                plain.zeroize();
                *sealed = cipher.seal_bytes(&restated, &context(*id));
                plain = restated;
            }
            debts.push(Debt {
                id: *id,
                reversal: Bytes::copy_from_slice(&plain),
            });
            plain.zeroize();
        }
        let since = now;
        let live = Live {
            owed: owed
                .into_iter()
                .map(|(id, sealed)| (id, Owing { sealed, since }))
                .collect(),
            paid: Default::default(),
            stamps: stamps.clone(),
        };
        let (file, len) = rewrite(dir, &path, &live).map_err(|(e, _)| e)?;
        Ok((
            OwedReversals {
                queue: parking_lot::Mutex::new(Queue::default()),
                file: parking_lot::Mutex::new(Tail {
                    file,
                    good: Some(len),
                    compact_at: next_compaction(len, COMPACT_AFTER_BYTES),
                    numbered_before_rewrite: last_id + 1,
                    live,
                }),
                cipher,
                stamps_kept,
                compact_after: AtomicU64::new(COMPACT_AFTER_BYTES),
                next_id: AtomicU64::new(last_id + 1),
                dir: dir.to_path_buf(),
                path,
                unrecorded: parking_lot::Mutex::new(Unrecorded::default()),
            },
            debts,
            stamps,
        ))
    }

    /// Writes `debts` (keeping their numbers) and `stamps` as the book of another data
    /// directory, `dir`, each debt sealed under `cipher`: the book copied under a new key
    /// (`vpan rekey`), from what [`OwedReversals::open`] returned of it.
    pub fn write_copy(
        dir: &Path,
        cipher: &PanCipher,
        debts: &[Debt],
        stamps: &[Stamp],
        now: u64,
    ) -> Result<(), StoreError> {
        let live = Live {
            owed: debts
                .iter()
                .map(|d| {
                    let sealed = cipher.seal_bytes(&d.reversal, &context(d.id));
                    (d.id, Owing { sealed, since: now })
                })
                .collect(),
            paid: Default::default(),
            stamps: stamps.to_vec(),
        };
        rewrite(dir, &dir.join(FILE), &live)
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Sets the gauge of reversals owed to what the book holds (at start, once the metrics
    /// recorder is in place; every write sets it after).
    pub fn publish(&self) {
        self.file.lock().live.publish();
    }

    /// How many reversals owed are in memory only now (what the gauge says).
    pub fn in_memory_only(&self) -> usize {
        self.unrecorded.lock().count()
    }

    /// Whether debt `id` is in memory only: its record failed to be written, and no
    /// later write of it has landed.
    pub fn is_unrecorded(&self, id: u64) -> bool {
        self.unrecorded.lock().debts.contains(&id)
    }

    /// Notes the debts and paid marks among the framed records `framed`, written
    /// (`landed`, and taken into `live` already) or not, `recorded` naming the paid marks'
    /// debts the book held before: which debts are in memory only, in order, and how many
    /// in `vpan_issuer_reversals_unrecorded`.
    fn note_debts(&self, live: &Live, framed: &[u8], landed: bool, recorded: &[u64]) {
        let mut unrecorded = self.unrecorded.lock();
        // A debt's record earlier in this batch came before its paid mark as much as one
        // the book held: the mark is not ahead of it.
        let mut before = recorded.to_vec();
        for payload in payloads(framed) {
            match decode(payload) {
                Ok(Record::Owed { id, .. }) => {
                    let known = live.owed.contains_key(&id) || live.paid.contains(&id);
                    unrecorded.owed(id, landed, known);
                    before.push(id);
                }
                Ok(Record::Paid { id }) => unrecorded.paid(id, before.contains(&id)),
                _ => {}
            }
        }
        unrecorded.publish();
    }

    /// The debts of the paid marks among `framed` that the book holds now, before it
    /// takes the marks in (after, it holds none of them).
    fn recorded_before(live: &Live, framed: &[u8]) -> Vec<u64> {
        payloads(framed)
            .filter_map(|payload| match decode(payload) {
                Ok(Record::Paid { id }) if live.owed.contains_key(&id) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Notes debt `id` as in memory only without writing it: left unrecorded on purpose
    /// ([`crate::switch::issuer`]'s `Owed::forget`, when the journal failed), it is as
    /// much forgotten by a restart. Its paid mark, if it came first, is among the paid
    /// ahead (its record was never in the book).
    pub fn note_unrecorded(&self, id: u64) {
        let mut unrecorded = self.unrecorded.lock();
        unrecorded.owed(id, false, false);
        unrecorded.publish();
    }

    /// Counts a reversal sent with no debt in `vpan_issuer_reversals_unrecorded` while the
    /// returned guard lives (its task's life).
    pub fn reversal_without_debt(self: &Arc<Self>) -> WithoutDebt {
        let mut unrecorded = self.unrecorded.lock();
        unrecorded.without_debt += 1;
        unrecorded.publish();
        WithoutDebt(self.clone())
    }

    /// A number for a new debt.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes debt `id`, the reversal `reversal` (as packed toward the issuer); resolves
    /// once it is on disk: from then on it is sent again after any crash until marked paid.
    pub async fn owe(self: &Arc<Self>, id: u64, reversal: &[u8]) -> Result<(), StoreError> {
        let sealed = self.cipher.seal_bytes(reversal, &context(id));
        self.commit(&Record::Owed {
            id,
            sealed: &sealed,
        })
        .await
    }

    /// [`OwedReversals::owe`] on the calling thread, blocking until the debt is on disk
    /// (past whatever commit is running): for a caller that cannot wait on a future.
    pub fn owe_blocking(&self, id: u64, reversal: &[u8]) -> Result<(), StoreError> {
        let sealed = self.cipher.seal_bytes(reversal, &context(id));
        let mut bytes = Vec::new();
        frame(
            &Record::Owed {
                id,
                sealed: &sealed,
            },
            &mut bytes,
        );
        let written = self.append(&bytes);
        self.compact_if_due();
        written
    }

    /// Writes that the transaction keyed `key` went to the issuer under `stamp`, at `at`
    /// (Unix seconds); resolves once it is on disk.
    pub async fn changed_stamp(
        self: &Arc<Self>,
        key: &[u8],
        stamp: [u8; 6],
        at: u64,
    ) -> Result<(), StoreError> {
        self.commit(&Record::Stamp { at, stamp, key }).await
    }

    /// Marks debt `id` paid: the issuer answered its reversal, or it turned out not to be
    /// needed; resolves once that is on disk.
    pub async fn paid(self: &Arc<Self>, id: u64) -> Result<(), StoreError> {
        self.commit(&Record::Paid { id }).await
    }

    /// Queues `record` for the next commit, starting one if none is running.
    async fn commit(self: &Arc<Self>, record: &Record<'_>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock();
            frame(record, &mut queue.bytes);
            queue.waiters.push(tx);
            !std::mem::replace(&mut queue.committing, true)
        };
        if start {
            let mut committer = Committer {
                book: self.clone(),
                finished: false,
            };
            tokio::task::spawn_blocking(move || committer.run());
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Writes and syncs what is queued, batch after batch, until nothing is.
    fn commit_queued(&self) {
        loop {
            let (bytes, waiters) = {
                let mut queue = self.queue.lock();
                if queue.waiters.is_empty() {
                    queue.committing = false;
                    return;
                }
                (
                    std::mem::take(&mut queue.bytes),
                    std::mem::take(&mut queue.waiters),
                )
            };
            let result = self.append(&bytes);
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            // After the waiters: their records are durable already, and a rewrite must
            // not hold up the 91s and answers waiting on them.
            self.compact_if_due();
        }
    }

    /// Ends a commit run that did not finish (a runtime stopping drops the blocking task
    /// unrun; or a panic): what is still queued is answered `Closed` rather than left
    /// waiting for ever, and the next record starts a commit again.
    fn stop_committing(&self) {
        let waiters = {
            let mut queue = self.queue.lock();
            queue.committing = false;
            queue.bytes.clear();
            std::mem::take(&mut queue.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(Err(StoreError::Closed));
        }
    }

    /// Cuts the file back to `end` (which the tests' gate fails as it fails the write).
    fn cut_back(&self, file: &File, end: u64) -> std::io::Result<()> {
        #[cfg(test)]
        super::segment::sync_gate::pass(&self.path)?;
        file.set_len(end)
    }

    /// Writes and syncs the framed records `bytes`. The debts a failure leaves in memory
    /// only are kept ([`OwedReversals::note_debts`]) and each debt or paid mark it loses
    /// is counted in `vpan_issuer_reversals_unrecorded_total`: the callers only log it,
    /// and a debt that stalled past their wait fails unseen by any of them.
    fn append(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let mut tail = self.file.lock();
        let recorded = Self::recorded_before(&tail.live, bytes);
        let written = self.append_locked(&mut tail, bytes);
        // Under the lock, so that two writes' outcomes are taken in the order they ended.
        self.note_debts(&tail.live, bytes, written.is_ok(), &recorded);
        if written.is_err() {
            metrics::counter!(crate::metrics::ISSUER_REVERSALS_UNRECORDED_TOTAL)
                .increment(debt_records(bytes));
        }
        written
    }

    fn append_locked(&self, tail: &mut Tail, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(end) = tail.good else {
            return Err(StoreError::Failed);
        };
        let written = (|| {
            tail.file.write_all(bytes)?;
            #[cfg(test)]
            super::segment::sync_gate::pass(&self.path)?;
            tail.file.sync_data()
        })();
        match written {
            Ok(()) => {
                tail.good = Some(end + bytes.len() as u64);
                tail.live.apply(bytes);
                tail.live.publish();
                Ok(())
            }
            Err(e) => {
                // Appends go to the end of the file whatever its length: once cut back,
                // the next write follows the last good record.
                if let Err(cut) = self.cut_back(&tail.file, end) {
                    tracing::error!(error = %cut, "a failed write to the book of reversals owed could not be cut back: it takes no more records until vpan restarts (reversals are still sent, from memory)");
                    tail.good = None;
                }
                Err(StoreError::io("writing the reversals owed")(e))
            }
        }
    }

    /// Rewrites the book with what its records say is still owed once it has grown past
    /// its next rewrite's length. What it holds is durable already: a failed rewrite costs
    /// nothing but the size, unless it replaced the file without making that durable.
    fn compact_if_due(&self) {
        let mut guard = self.file.lock();
        let tail = &mut *guard;
        let Some(len) = tail.good.filter(|len| *len >= tail.compact_at) else {
            return;
        };
        let horizon = unix_now().saturating_sub(self.stamps_kept);
        tail.live.stamps.retain(|s| s.at >= horizon);
        let forget_below = tail.numbered_before_rewrite;
        tail.live.paid.retain(|id| *id >= forget_below);
        tail.numbered_before_rewrite = self.next_id.load(Ordering::Relaxed);
        let after = self.compact_after.load(Ordering::Relaxed);
        match rewrite(&self.dir, &self.path, &tail.live) {
            Ok((file, kept)) => {
                tracing::info!(
                    from_bytes = len,
                    to_bytes = kept,
                    owed = tail.live.owed.len(),
                    "the book of reversals owed was rewritten with what is still owed"
                );
                tail.file = file;
                tail.good = Some(kept);
                tail.compact_at = next_compaction(kept, after);
            }
            Err((e, replaced)) => {
                tail.compact_at = next_compaction(len, after);
                if replaced {
                    tracing::error!(error = %e, "the rewritten book of reversals owed could not be made durable in place: it takes no more records until vpan restarts (reversals are still sent, from memory)");
                    tail.good = None;
                } else {
                    tracing::warn!(error = %e, "could not rewrite the book of reversals owed; it goes on growing, and is tried again at twice its size");
                }
            }
        }
    }
}

/// Removes the temporary file of a rewrite a stop interrupted, at a start, before the
/// journal needs room for its next segment (the book is opened, and rewritten, only after).
pub fn remove_leftover(dir: &Path) {
    super::TempFile::remove_leftover(&dir.join(TEMP_FILE));
}

/// Writes what `live` holds as the whole new file (synced, opened for appending, renamed
/// into place, the directory synced). On failure, whether the file in place was replaced
/// already (it was, when only the directory's sync failed).
fn rewrite(dir: &Path, path: &Path, live: &Live) -> Result<(File, u64), (StoreError, bool)> {
    let what = "rewriting the reversals owed";
    let failed = |replaced| move |e| (StoreError::io(what)(e), replaced);
    let (temp, file) = super::TempFile::create(dir.join(TEMP_FILE)).map_err(failed(false))?;
    // Streamed, one record at a time: the book can be large when an issuer has been down,
    // and `live` holds its debts already.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(512);
    let mut len = 0u64;
    let mut put = |record: &Record<'_>| {
        buf.clear();
        frame(record, &mut buf);
        len += buf.len() as u64;
        out.write_all(&buf)
    };
    let records = live
        .owed
        .iter()
        .map(|(&id, owing)| Record::Owed {
            id,
            sealed: &owing.sealed,
        })
        .chain(live.paid.iter().map(|&id| Record::Paid { id }))
        .chain(live.stamps.iter().map(|s| Record::Stamp {
            at: s.at,
            stamp: s.stamp,
            key: &s.key,
        }));
    for record in records {
        put(&record).map_err(failed(false))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| failed(false)(e.into_error()))?;
    file.sync_all().map_err(failed(false))?;
    drop(file);
    // Opened before the rename, so that no failure after it leaves vpan without a handle
    // on the file in place.
    let appending = OpenOptions::new()
        .append(true)
        .open(temp.path())
        .map_err(failed(false))?;
    temp.rename_to(path).map_err(failed(false))?;
    sync_dir(dir).map_err(failed(true))?;
    Ok((appending, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> PanCipher {
        PanCipher::from_key(&[7; 32])
    }

    fn reopen(dir: &Path) -> (Arc<OwedReversals>, Vec<Debt>) {
        let (book, debts, _) = OwedReversals::open(dir, cipher(), u64::MAX, u64::MAX).unwrap();
        (Arc::new(book), debts)
    }

    #[tokio::test]
    async fn debts_not_paid_come_back_at_open_sealed_on_disk_and_numbers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (book, none) = reopen(dir.path());
        assert!(none.is_empty());
        let card = crate::pan::test_pan("497010");
        let first = format!("0400{card}first");
        let second = format!("0400{card}second");
        let (a, b, c) = (book.next_id(), book.next_id(), book.next_id());
        // Written together (one commit, or two).
        let (x, y) = tokio::join!(
            book.owe(a, first.as_bytes()),
            book.owe(b, second.as_bytes())
        );
        x.unwrap();
        y.unwrap();
        // Paid before its debt is written (two tasks): still paid.
        book.paid(c).await.unwrap();
        book.owe(c, b"third").await.unwrap();
        book.paid(a).await.unwrap();
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
                reversal: Bytes::from(second)
            }]
        );
        assert!(book.next_id() > c, "numbers are not given twice");
        drop(book);
        // The rewrite kept what is owed, and only that.
        let (_, again) = reopen(dir.path());
        assert_eq!(again.len(), 1);
        assert!(std::fs::metadata(dir.path().join(FILE)).unwrap().len() < on_disk.len() as u64);
    }

    /// Waits until no commit run is going (and with it any rewrite it ends with).
    async fn settle(book: &OwedReversals) {
        while book.queue.lock().committing {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_growing_book_is_rewritten_while_serving_with_only_what_is_still_owed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (book, _) = reopen(dir.path());
        book.compact_after.store(4096, Ordering::Relaxed);
        book.file.lock().compact_at = 4096;
        let reversal = vec![b'r'; 200];
        // Two debts never paid, one paid before its record is written with a rewrite in
        // between, a stamp, and many debts owed and paid: far more than 4 KiB in all.
        let (kept_a, kept_b, early) = (book.next_id(), book.next_id(), book.next_id());
        book.owe(kept_a, &reversal).await.unwrap();
        book.paid(early).await.unwrap();
        book.file.lock().compact_at = 0;
        book.changed_stamp(b"a transaction", *b"000042", u64::MAX - 100)
            .await
            .unwrap();
        settle(&book).await;
        assert!(book.file.lock().compact_at > 0, "rewritten");
        book.owe(early, &reversal).await.unwrap();
        let mut largest = 0;
        for _ in 0..200 {
            let id = book.next_id();
            book.owe(id, &reversal).await.unwrap();
            book.paid(id).await.unwrap();
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
        book.owe(kept_b, &reversal).await.unwrap();
        // A debt written again after it was paid (a stop cut its first write short): still
        // paid after the rewrites that follow.
        let twice = book.next_id();
        book.owe(twice, &reversal).await.unwrap();
        book.paid(twice).await.unwrap();
        book.owe_blocking(twice, &reversal).unwrap();
        for _ in 0..50 {
            let id = book.next_id();
            book.owe(id, &reversal).await.unwrap();
            book.paid(id).await.unwrap();
            largest = largest.max(std::fs::metadata(&path).unwrap().len());
        }
        assert!(
            largest < 3 * 4096,
            "rewritten as it grew: at most {largest} bytes"
        );
        settle(&book).await;
        drop(book);
        let (_, debts, stamps) =
            OwedReversals::open(dir.path(), cipher(), u64::MAX, u64::MAX).unwrap();
        assert_eq!(
            debts.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![kept_a, kept_b],
            "the debts still owed; the early-paid one and the one written twice stay paid"
        );
        assert_eq!(stamps.len(), 1);
    }

    #[test]
    fn a_printed_debt_shows_no_card_number() {
        let pan = crate::pan::test_pan("497010");
        let debt = Debt {
            id: 7,
            reversal: Bytes::from(format!("0400...{pan}....")),
        };
        let printed = format!("{debt:?}");
        assert!(!printed.contains(&pan), "{printed}");
        assert!(printed.contains("id: 7"), "{printed}");
    }

    #[tokio::test]
    async fn a_failed_write_that_cannot_be_cut_back_stops_the_book() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let first = book.next_id();
        book.owe(first, b"first").await.unwrap();
        // The write fails, and so does cutting it back: its bytes stay in the file.
        let failing = sync_gate::set(&dir.path().join(FILE), Gate::Failing);
        let second = book.next_id();
        assert!(book.owe(second, b"second").await.is_err());
        drop(failing);
        // A debt written after them would be dropped with them at the next start: refused
        // now rather than acknowledged.
        let third = book.next_id();
        assert!(matches!(
            book.owe(third, b"third").await,
            Err(StoreError::Failed)
        ));
        drop(book);
        // (The second's bytes, whole here since only their sync failed, may come back: its
        // reversal goes out again, which the issuer takes as the repeat it is.)
        let (_, debts) = reopen(dir.path());
        let ids: Vec<u64> = debts.iter().map(|d| d.id).collect();
        assert!(ids.contains(&first) && !ids.contains(&third), "{ids:?}");
    }

    /// `vpan_issuer_reversals_unrecorded_total` now (the process's recorder: other tests
    /// may add to it meanwhile, never take from it).
    fn unrecorded() -> u64 {
        let page = crate::metrics::install().render();
        page.lines()
            .find_map(|l| l.strip_prefix("vpan_issuer_reversals_unrecorded_total "))
            .map_or(0, |v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn a_debt_whose_record_failed_is_in_memory_only_until_paid_or_written() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let fail_once = || sync_gate::set(&dir.path().join(FILE), Gate::FailingOnce);
        let before = unrecorded();
        // A disk full for a moment: the debt's write fails (cutting it back does not).
        let gate = fail_once();
        let lost = book.next_id();
        assert!(book.owe(lost, b"lost").await.is_err());
        drop(gate);
        assert!(book.is_unrecorded(lost));
        assert!(unrecorded() > before, "counted");
        // Another debt's write lands: the lost one is still in memory only (a flag of the
        // last write's outcome said all was well here).
        let kept = book.next_id();
        book.owe(kept, b"kept").await.unwrap();
        assert!(book.is_unrecorded(lost) && !book.is_unrecorded(kept));
        // Paid, it is owed no more, though its paid mark fails too (counted as well).
        let gate = fail_once();
        assert!(book.paid(lost).await.is_err());
        drop(gate);
        assert!(!book.is_unrecorded(lost));
        assert!(unrecorded() >= before + 2);
        // A debt written again after a failure (blocking, as a stop does) is on disk.
        let again = book.next_id();
        let gate = fail_once();
        assert!(book.owe(again, b"again").await.is_err());
        drop(gate);
        book.owe_blocking(again, b"again").unwrap();
        assert!(!book.is_unrecorded(again));
        // Its paid mark first, then its own record failing (two tasks write them): not
        // left in memory only for good, however many debts are paid in between.
        let late = book.next_id();
        book.paid(late).await.unwrap();
        for _ in 0..PAID_AHEAD_KEPT + 10 {
            let other = book.next_id();
            book.owe(other, b"other").await.unwrap();
            book.paid(other).await.unwrap();
        }
        let gate = fail_once();
        assert!(book.owe(late, b"late").await.is_err());
        drop(gate);
        assert!(!book.is_unrecorded(late));
        // The same when the paid mark was lost too.
        let both_lost = book.next_id();
        let gate = fail_once();
        assert!(book.paid(both_lost).await.is_err());
        drop(gate);
        let gate = fail_once();
        assert!(book.owe(both_lost, b"both").await.is_err());
        drop(gate);
        assert!(!book.is_unrecorded(both_lost));
        // A debt on disk whose second copy fails (a stop writing it again) is on disk.
        let twice = book.next_id();
        book.owe(twice, b"twice").await.unwrap();
        let gate = fail_once();
        assert!(book.owe_blocking(twice, b"twice").is_err());
        drop(gate);
        assert!(!book.is_unrecorded(twice));
        // A debt left unrecorded on purpose (the journal failed) is in memory only too,
        // until paid.
        let forgotten = book.next_id();
        book.note_unrecorded(forgotten);
        assert!(book.is_unrecorded(forgotten));
        book.paid(forgotten).await.unwrap();
        assert!(!book.is_unrecorded(forgotten));
        // ... and paid before it is noted so (a late decline ahead of the journal's
        // failure): not left in memory only for good.
        let declined = book.next_id();
        book.paid(declined).await.unwrap();
        book.note_unrecorded(declined);
        assert!(!book.is_unrecorded(declined));
        // A reversal with no debt at all counts while it is out.
        assert_eq!(book.in_memory_only(), 0);
        let out = book.reversal_without_debt();
        assert_eq!(book.in_memory_only(), 1);
        drop(out);
        assert_eq!(book.in_memory_only(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_debt_and_its_paid_mark_in_one_batch_leave_nothing_paid_ahead() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let path = dir.path().join(FILE);
        // A first write held at its sync: the debt and its paid mark queue behind it and
        // go in the next batch together, the record first.
        let held = sync_gate::set(&path, Gate::Held);
        let first = tokio::spawn({
            let book = book.clone();
            let id = book.next_id();
            async move { book.owe(id, b"first").await }
        });
        let waiting = path.clone();
        tokio::task::spawn_blocking(move || sync_gate::wait_until_one_is_held(&waiting))
            .await
            .unwrap();
        let debt = book.next_id();
        let owed = tokio::spawn({
            let book = book.clone();
            async move { book.owe(debt, b"together").await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let paid = tokio::spawn({
            let book = book.clone();
            async move { book.paid(debt).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        for written in [first, owed, paid] {
            written.await.unwrap().unwrap();
        }
        assert!(!book.is_unrecorded(debt));
        assert!(
            book.unrecorded.lock().paid_ahead.is_empty(),
            "a mark taken for ahead of its record"
        );
    }

    #[tokio::test]
    async fn a_debt_written_twice_comes_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let id = book.next_id();
        // Its first write cut short by a stop, then written again on the way out.
        book.owe(id, b"twice").await.unwrap();
        book.owe_blocking(id, b"twice").unwrap();
        drop(book);
        let (_, debts) = reopen(dir.path());
        assert_eq!(
            debts,
            vec![Debt {
                id,
                reversal: Bytes::from_static(b"twice")
            }]
        );
    }

    #[tokio::test]
    async fn a_torn_or_damaged_book_is_kept_aside_and_a_moved_debt_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (book, _) = reopen(dir.path());
        book.owe(book.next_id(), b"kept").await.unwrap();
        book.owe(book.next_id(), b"torn").await.unwrap();
        drop(book);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (book, debts) = reopen(dir.path());
        assert_eq!(debts.len(), 1);
        assert_eq!(debts[0].reversal, Bytes::from_static(b"kept"));
        let kept_aside = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().starts_with("reversals.log.damaged-")
                })
                .count()
        };
        assert_eq!(kept_aside(), 1, "the torn book is kept aside");

        // Damage in the middle: what comes after it is lost, said so, and the file kept.
        book.owe(book.next_id(), b"after").await.unwrap();
        drop(book);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] ^= 0xff; // the first record's checksum
        std::fs::write(&path, &bytes).unwrap();
        let (_, debts) = reopen(dir.path());
        assert!(debts.is_empty());
        assert_eq!(kept_aside(), 2, "the damaged book is kept aside too");

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
            OwedReversals::open(dir.path(), cipher(), u64::MAX, u64::MAX).unwrap_err(),
            StoreError::Decrypt
        );
    }

    /// Review of a07ad5e: a rewrite that failed left its temporary file behind.
    #[test]
    fn a_rewrite_that_fails_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename into place fails: a directory that is not empty stands there.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        assert!(rewrite(dir.path(), &blocked, &Live::default()).is_err());
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[tokio::test]
    async fn changed_stamps_come_back_while_recent_and_survive_the_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        book.changed_stamp(b"old transaction", *b"000042", 1_000)
            .await
            .unwrap();
        book.changed_stamp(b"recent transaction", *b"000043", 5_000)
            .await
            .unwrap();
        // Dated ahead of the clock (one set back since): not kept for ever.
        book.changed_stamp(b"future transaction", *b"000044", 9_000)
            .await
            .unwrap();
        drop(book);
        for _ in 0..2 {
            let (_, _, stamps) = OwedReversals::open(dir.path(), cipher(), 5_940, 1_940).unwrap();
            assert_eq!(
                stamps,
                vec![Stamp {
                    key: b"recent transaction".to_vec(),
                    stamp: *b"000043",
                    at: 5_000
                }]
            );
        }
    }

    #[tokio::test]
    async fn a_copy_under_another_key_owes_the_same_debts_under_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (book, _) = reopen(dir.path());
        let card = crate::pan::test_pan("497010");
        let owed = format!("0400{card}owed");
        let (paid, kept) = (book.next_id(), book.next_id());
        book.owe(paid, b"paid").await.unwrap();
        book.owe(kept, owed.as_bytes()).await.unwrap();
        book.paid(paid).await.unwrap();
        book.changed_stamp(b"transaction", *b"000042", 5_000)
            .await
            .unwrap();
        drop(book);
        let (_, debts, stamps) = OwedReversals::open(dir.path(), cipher(), 5_000, 60).unwrap();

        let copy = tempfile::tempdir().unwrap();
        let new_key = PanCipher::from_key(&[8; 32]);
        OwedReversals::write_copy(copy.path(), &new_key, &debts, &stamps, 5_000).unwrap();
        let on_disk = std::fs::read(copy.path().join(FILE)).unwrap();
        assert!(!on_disk.windows(card.len()).any(|w| w == card.as_bytes()));
        let (book, debts_back, stamps_back) =
            OwedReversals::open(copy.path(), new_key, 5_000, 60).unwrap();
        assert_eq!(
            debts_back,
            vec![Debt {
                id: kept,
                reversal: Bytes::from(owed)
            }]
        );
        assert_eq!(stamps_back, stamps);
        assert_eq!(stamps_back.len(), 1);
        assert!(book.next_id() > kept, "numbers go on from the debts copied");
        drop(book);
        assert_eq!(
            OwedReversals::open(copy.path(), cipher(), 5_000, 60).unwrap_err(),
            StoreError::Decrypt,
            "the old key does not open the copy"
        );
    }
}
