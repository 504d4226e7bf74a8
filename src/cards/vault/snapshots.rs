//! Snapshots: every card and remembered transaction written to one file, so that the
//! journal segments before it can go and a restart replays only what came after; and the
//! thread that takes them while serving.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Cards;
use crate::cards::event;
use crate::store::StoreError;
use crate::store::crypto::PanCipher;
use crate::store::journal::{self, list_segments};
use crate::store::segment;
use crate::store::snapshot::SnapshotWriter;

/// What a snapshot wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Cards written.
    pub cards: u64,
    /// Ledger entries written.
    pub transactions: u64,
    /// Journal segments deleted.
    pub segments_deleted: usize,
}

/// When [`Cards::start_snapshots`] takes a snapshot on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot once this many journal records were written since the last one: a restart
    /// then replays at most about this many records on top of the snapshot.
    pub every_records: u64,
    /// How often to look.
    pub check_every: std::time::Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> SnapshotPolicy {
        SnapshotPolicy {
            every_records: 2_000_000,
            check_every: std::time::Duration::from_secs(1),
        }
    }
}

/// Snapshot format version. 5 names its data directory in its header
/// ([`crate::store::identity`]); 4 keeps a partial approval's amounts in its ledger entry;
/// 3 ends with a [`event::SnapEnd`] record; 2, without it, is still read.
pub(crate) const SNAPSHOT_VERSION: u8 = 5;

impl Cards {
    /// Writes a snapshot of every card and remembered transaction, then deletes the
    /// journal segments it covers. Blocking (seconds at a million cards): run it on a
    /// blocking thread. Serves on meanwhile: the journal rotates first, and replay skips
    /// what the snapshot already holds by LSN.
    pub fn snapshot(&self) -> Result<SnapshotReport, StoreError> {
        let _one = self.snapshot_lock.lock();
        let records = self.journal.stats().records.load(Ordering::Relaxed);
        let from_segment = self.journal.rotate()?;
        let (cards, transactions) = self.write_snapshot(&self.dir, &self.cipher, from_segment)?;
        // Counted from here only once it stands: a failed snapshot leaves the count as it
        // was, so the next look tries again rather than waiting for another
        // `every_records`.
        self.records_at_snapshot.store(records, Ordering::Relaxed);
        self.records_replayed_since_snapshot
            .store(0, Ordering::Relaxed);
        let mut segments_deleted = 0;
        for n in list_segments(&self.dir).map_err(StoreError::io("listing the journal"))? {
            if n >= from_segment {
                continue;
            }
            match segment::remove(&self.dir, n) {
                Ok(()) => segments_deleted += 1,
                // Covered all the same: the next snapshot, or the next start, deletes it.
                Err(e) => {
                    tracing::warn!(segment = n, error = %e, "could not delete a journal segment the snapshot covers")
                }
            }
        }
        Ok(SnapshotReport {
            cards,
            transactions,
            segments_deleted,
        })
    }

    /// Writes every card (its real PAN sealed under `cipher`) and remembered transaction
    /// to a snapshot in `dir` whose journal starts at segment `from_segment`, and commits
    /// it once every change it read is durable in the journal. Returns the cards and
    /// transactions written.
    pub(super) fn write_snapshot(
        &self,
        dir: &std::path::Path,
        cipher: &PanCipher,
        from_segment: u64,
    ) -> Result<(u64, u64), StoreError> {
        let keys = self.index.keys();
        let mut w = SnapshotWriter::create(dir)?;
        w.write(&event::SnapHeader {
            version: SNAPSHOT_VERSION,
            from_segment,
            next_lsn: self.next_lsn.load(Ordering::Relaxed),
            cards: keys.len() as u64,
            store: self.store_id,
        })?;
        let mut cards = 0;
        let mut payload = Vec::with_capacity(512);
        for key in keys {
            payload.clear();
            let found = self.index.read(key, |card| {
                let context = key.raw().to_le_bytes();
                let sealed = match &card.pan_nonce {
                    Some(nonce) => cipher.reseal(&card.real_pan, &context, nonce),
                    None => cipher.seal(&card.real_pan, &context),
                };
                journal::Encode::encode(
                    &event::SnapCard {
                        key,
                        sealed_pan: &sealed,
                        card,
                    },
                    &mut payload,
                );
            });
            if found.is_some() {
                w.write(&RawPayload(&payload))?;
                cards += 1;
            }
        }
        let mut transactions = 0;
        for k in self.ledger.keys() {
            if let Some((e, partial)) = self.ledger.get_with_partial(&k) {
                w.write(&event::SnapTx(k, e, partial))?;
                transactions += 1;
            }
        }
        // The reversals' keys, counted with the entries, as the journal writes them.
        for (reversal, seen) in self.ledger.reversal_keys.entries() {
            w.write(&event::Event::ReversalSeen {
                lsn: seen.lsn,
                key: seen.card,
                reversal,
                fingerprint: seen.fingerprint,
                at: seen.at,
            })?;
            transactions += 1;
        }
        // The snapshot stands in for the journal segments it covers only if every change it
        // read is durable there too: a change whose record failed, then found in memory by
        // the walk above, would otherwise be restored without its journal record (a card's
        // `held` counting a hold its ledger entry shows released). Every change is queued in
        // the journal before it shows in memory, so the records queued by now cover all the
        // walk read.
        self.journal.barrier().wait()?;
        if self.journal.is_failed() {
            return Err(StoreError::Failed);
        }
        w.write(&event::SnapEnd {
            cards,
            transactions,
        })?;
        w.commit()?;
        Ok((cards, transactions))
    }
}

impl Cards {
    /// Journal records a restart would replay: written since the last snapshot, and
    /// those replayed at the start if no snapshot was taken since.
    pub fn records_since_snapshot(&self) -> u64 {
        let written = self
            .journal
            .stats()
            .records
            .load(Ordering::Relaxed)
            .saturating_sub(self.records_at_snapshot.load(Ordering::Relaxed));
        written.saturating_add(self.records_replayed_since_snapshot.load(Ordering::Relaxed))
    }

    /// Starts a thread that snapshots whenever the policy says so, so that a restart never
    /// replays more than about `policy.every_records` records. It holds only a weak
    /// reference (strong only while it looks or writes) and ends once the cards are dropped
    /// or [`Snapshots::stop`] is called. Snapshot errors are logged and retried with a
    /// backoff (a failed journal shows in [`Cards::store_failed`]).
    pub fn start_snapshots(
        self: &std::sync::Arc<Self>,
        policy: SnapshotPolicy,
    ) -> std::io::Result<Snapshots> {
        let weak = std::sync::Arc::downgrade(self);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vpan-snapshot".into())
            .spawn(move || {
                // After a failure, the next try waits twice as long as the last (from one
                // look up to `SNAPSHOT_RETRY_MAX`): each try starts a journal segment, and a
                // full disk should not fill the directory with them.
                let mut retry_in = policy.check_every;
                let mut not_before = Instant::now();
                // Sleeps between looks; a stop (the sender dropped) ends the sleep at once.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(policy.check_every)
                {
                    let Some(cards) = weak.upgrade() else { break };
                    if cards.records_since_snapshot() >= policy.every_records
                        && Instant::now() >= not_before
                    {
                        let started = Instant::now();
                        match cards.snapshot() {
                            Ok(r) => {
                                retry_in = policy.check_every;
                                tracing::info!(
                                    cards = r.cards,
                                    transactions = r.transactions,
                                    ms = started.elapsed().as_millis() as u64,
                                    "snapshot written"
                                )
                            }
                            Err(e) => {
                                not_before = Instant::now() + retry_in;
                                tracing::error!(
                                    error = %e,
                                    retry_in_ms = retry_in.as_millis() as u64,
                                    "snapshot failed"
                                );
                                retry_in = (retry_in * 2).min(SNAPSHOT_RETRY_MAX);
                            }
                        }
                    }
                }
            })?;
        Ok(Snapshots { stop, thread })
    }
}

/// The longest a failed snapshot waits before it is tried again.
const SNAPSHOT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The snapshot thread of [`Cards::start_snapshots`].
pub struct Snapshots {
    /// Dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    /// The thread.
    thread: std::thread::JoinHandle<()>,
}

impl Snapshots {
    /// Stops the thread, after the snapshot it may be writing: it then holds no handle on
    /// the cards.
    pub fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("the snapshot thread panicked");
        }
    }
}

/// An already encoded payload.
struct RawPayload<'a>(&'a [u8]);

impl journal::Encode for RawPayload<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0);
    }
}
