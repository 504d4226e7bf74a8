//! Opening the cards: the key, the snapshot, the journal since it, and what a crash left
//! open (durable holds the issuer never answered, counted as spent and journaled as in
//! doubt). Records are applied on worker threads, each card's in order on one of them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::snapshots::SNAPSHOT_VERSION;
use super::{Cards, CardsConfig, OpenError};
use crate::ConcurrentMap;
use crate::cards::card::{Card, CardKey, CardSpec, unix_now};
use crate::cards::event::{self, Event};
use crate::cards::index::CardIndex;
use crate::cards::ledger::{Ledger, LedgerConfig, TxEntry, TxState};
use crate::cards::request::OriginalData;
use crate::cards::requests::IssuanceRequests;
use crate::cards::vpan::VpanGenerator;
use crate::store::crypto::{self, PanCipher};
use crate::store::identity::{self, StoreId};
use crate::store::journal::{self, Journal, list_segments, segment_path};
use crate::store::snapshot;
use crate::store::{MISSING_SEGMENTS_NAMED, StoreConfig, StoreError};

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Whether a snapshot was loaded.
    pub snapshot: bool,
    /// Cards in memory.
    pub cards: usize,
    /// Journal records replayed.
    pub records: u64,
    /// Bytes of torn or corrupt journal tail cut (kept aside first, beside the segment).
    pub bytes_cut: u64,
    /// Intact records found after the first bad one in what was cut, which a killed
    /// process never leaves: a power loss's reordered last batch, or damage in a segment
    /// written before commit markers (see [`journal::keep_tail_aside`]; damage that a
    /// later batch's marker follows is refused, not cut).
    pub intact_records_cut: u64,
    /// Durable holds without an answer, counted as spent (in doubt: see `Event::InDoubt`).
    pub holds_counted_as_spent: u64,
    /// Journal records of cards neither the snapshot nor the journal issued, skipped: none
    /// in a data directory vpan wrote alone (see [`replay`]).
    pub records_of_unknown_cards: u64,
    /// Time taken.
    pub elapsed_ms: u64,
}

/// Fewer bytes than any card takes in a snapshot (its frame, key, LSN and sealed PAN alone
/// are more), to bound the index size a header may ask for.
const MIN_SNAP_CARD_BYTES: u64 = 64;

impl Cards {
    /// Opens the data directory: loads the key (made at first start), the snapshot, replays
    /// the journal (cutting a torn tail), counts unanswered durable holds as spent, and
    /// starts a new journal segment. Blocking; call it before serving.
    pub fn open(
        cards: &CardsConfig,
        store: &StoreConfig,
        ledger: LedgerConfig,
    ) -> Result<(Cards, Recovered), OpenError> {
        let started = Instant::now();
        let generator = VpanGenerator::new(cards.bin_length, &cards.virtual_ranges)?;
        let dir = store.data_dir.clone();
        let key_path = store.key_path();
        // A key file the configuration names is looked for, and read, before anything is
        // made: a typo, an unmounted volume, a file vpan may not read or that holds no key
        // leaves no fresh data directory (and its lock) behind. A key there that cannot be
        // reached is that error, not "not there".
        let configured_key = if store.makes_its_own_key() {
            None
        } else {
            let there = key_path.try_exists().map_err(|e| StoreError::KeyFile {
                path: key_path.clone(),
                what: "looking for it",
                message: e.to_string(),
            })?;
            if !there {
                return Err(StoreError::KeyFile {
                    path: key_path,
                    what: "looking for it",
                    message: "it is not there: put the 32-byte key there (0600), or leave store.key_file empty for vpan to make pan.key in store.data_dir".into(),
                }
                .into());
            }
            Some(PanCipher::load(&key_path)?)
        };
        crate::store::create_private_dir(&dir).map_err(|e| StoreError::DataDir {
            path: dir.clone(),
            message: format!("creating it: {e}"),
        })?;
        if let Some(mode) = crate::store::open_to_others(&dir) {
            tracing::warn!(
                path = %dir.display(),
                mode = %format!("{mode:04o}"),
                "the data directory is open to group or others; it should be 0700"
            );
        }
        // One process per data directory: a second one would interleave journals.
        let lock = crate::store::lock_data_dir(&dir)?;
        crate::store::refuse_if_rekeyed(&dir)?;
        snapshot::remove_leftover(&dir);
        crate::store::owed::remove_leftover(&dir);
        if !key_path.exists() && holds_sealed_card_numbers(&dir)? {
            return Err(StoreError::KeyFile {
                path: key_path,
                what: "looking for it",
                message: "it is missing, but the data directory holds card numbers sealed under it: restore it, or point store.key_file at it (a new key would not open them)".into(),
            }
            .into());
        }
        let cipher = match configured_key {
            Some(cipher) => cipher,
            None => PanCipher::load_or_create(&key_path)?,
        };
        let mut recovered = Recovered::default();

        // The snapshot, if any: its header first (to size the index), then its records on
        // worker threads (cards and ledger entries are independent; decryption dominates).
        let ledger = Ledger::new(ledger);
        ledger.replaying(true);
        let mut from_segment = 0u64;
        let mut next_lsn = 1u64;
        let mut cards_in_snapshot = 0u64;
        let mut snapshot_version = SNAPSHOT_VERSION;
        let mut snapshot_store = None;
        let snapshot_path = dir.join(snapshot::SNAPSHOT_FILE);
        let first_record = snapshot::first_record(&dir)?;
        let has_snapshot = first_record.is_some();
        if let Some(first) = first_record {
            let mut g = event::Get(&first);
            let bad = || StoreError::Corrupt("snapshot header");
            if g.u8() != Some(event::TAG_SNAP_HEADER) {
                return Err(bad().into());
            }
            snapshot_version = g.u8().ok_or_else(bad)?;
            if !(2..=SNAPSHOT_VERSION).contains(&snapshot_version) {
                return Err(StoreError::SnapshotVersion {
                    path: snapshot_path,
                    version: snapshot_version,
                    newest: SNAPSHOT_VERSION,
                }
                .into());
            }
            from_segment = g.u64().ok_or_else(bad)?;
            next_lsn = g.u64().ok_or_else(bad)?;
            cards_in_snapshot = g.u64().ok_or_else(bad)?;
            if snapshot_version >= 5 {
                snapshot_store = Some(StoreId(g.array().ok_or_else(bad)?));
            }
        }
        // Before anything is read or deleted on the snapshot's word: it must be this
        // directory's own (see `identity`).
        let store_id = match (snapshot_store, identity::read(&dir, snapshot_store)?) {
            (Some(snapshot), Some(own)) if snapshot != own => {
                return Err(StoreError::ForeignSnapshot {
                    path: snapshot_path,
                    snapshot,
                    own,
                }
                .into());
            }
            (Some(snapshot), None) => {
                return Err(StoreError::MissingStoreId {
                    path: snapshot_path,
                    snapshot,
                }
                .into());
            }
            (_, Some(own)) => own,
            // A new directory, or one a vpan before identities kept: from now on.
            (None, None) => identity::create(&dir)?,
        };
        // The header's count only sizes the index; a damaged one that still passed its CRC
        // must not ask for more than the file could hold.
        let snapshot_bytes =
            std::fs::metadata(dir.join(snapshot::SNAPSHOT_FILE)).map_or(0, |m| m.len());
        let index = CardIndex::with_capacity(
            cards_in_snapshot.min(snapshot_bytes / MIN_SNAP_CARD_BYTES) as usize,
        );
        let highest_in_snapshot = AtomicU64::new(0);
        let mut tally = SnapshotTally::new(dir.join(snapshot::SNAPSHOT_FILE));
        recovered.snapshot = parallel_replay(
            |sink| {
                snapshot::read(&dir, |payload| {
                    if tally.counts(payload)? {
                        sink.push(0, payload)?;
                    }
                    Ok(())
                })
            },
            |payload| {
                load_snapshot_record(
                    &index,
                    &ledger,
                    &cipher,
                    &highest_in_snapshot,
                    snapshot_version,
                    payload,
                )
            },
        )
        .map_err(crate::store::naming_the_key(
            &key_path,
            &dir.join(snapshot::SNAPSHOT_FILE),
        ))?;
        if recovered.snapshot && snapshot_version >= 3 {
            tally.check_complete()?;
        }
        // The snapshot walks the cards while they change, so a card in it may carry a
        // sequence number past its header's (its record is in the journal after it). Should
        // that record be lost, numbering must still go on past it: a later event under a
        // lower number would be skipped at the next replay from this snapshot.
        next_lsn = next_lsn.max(lsn_after(highest_in_snapshot.into_inner())?);

        // The journal since, on worker threads partitioned by card: each card's events
        // stay in order on one thread (a transaction's entry belongs to its card too).
        let segments = list_segments(&dir).map_err(StoreError::io("listing the journal"))?;
        let marker_key = cipher.marker_key();
        check_contiguous(&dir, &segments, has_snapshot.then_some(from_segment))?;
        let mut last_segment = from_segment;
        let mut chain = journal::Chain::new(&dir, &segments, from_segment)?;
        // Segments the snapshot covers: a crash came between its rename and their delete.
        // Deleted once the whole start has succeeded, not before: a start refused later on
        // deletes none of them (it may still have cut torn tails, closed a segment).
        let mut covered = Vec::new();
        let unknown_cards = AtomicU64::new(0);
        for &n in &segments {
            let path = segment_path(&dir, n);
            if n < from_segment {
                covered.push(path);
                continue;
            }
            last_segment = last_segment.max(n);
            let size = std::fs::metadata(&path)
                .map_err(StoreError::io("reading a journal segment"))?
                .len();
            let report = parallel_replay(
                |sink| {
                    journal::read_segment(&path, n, &marker_key, |payload| {
                        let ev = Event::decode(payload)?;
                        next_lsn = next_lsn.max(lsn_after(ev.lsn())?);
                        sink.push(ev.key().raw(), payload)
                    })
                },
                |payload| {
                    let ev = Event::decode(payload)?;
                    if !replay(&index, &ledger, &cipher, &ev)? {
                        unknown_cards.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                },
            )
            .map_err(crate::store::naming_the_key(&key_path, &path))?;
            recovered.records += report.records;
            chain.check_zeroed(n, size, &report)?;
            if report.zeros > 0 && report.bad_bytes == 0 {
                tracing::debug!(
                    segment = n,
                    bytes = report.zeros,
                    "journal segment ends in zeros written ahead (not closed: vpan stopped without closing it); cut to its records"
                );
                // As closing it would have: else every start that is killed before its
                // first snapshot leaves a segment of zeros behind (an extent, 1 MiB). A
                // cut that fails costs only the room: zeros read as the end of the records.
                if let Err(e) = journal::truncate(&path, report.good_bytes) {
                    tracing::warn!(segment = n, error = %e, "could not cut the zeros after a journal segment's records");
                }
            }
            if report.bad_bytes > 0 && !chain.is_last(n) {
                return Err(StoreError::DamagedSegment {
                    path,
                    good_bytes: report.good_bytes,
                    bad_bytes: report.bad_bytes,
                }
                .into());
            }
            chain.check_before(&report)?;
            if report.bad_bytes > 0 {
                let later_commits =
                    crate::store::marker::later_commits(&path, n, report.good_bytes, &marker_key)
                        .map_err(StoreError::io("searching a damaged journal segment"))?;
                if later_commits > 0 {
                    return Err(StoreError::DamagedAcknowledged {
                        path,
                        good_bytes: report.good_bytes,
                        bad_bytes: report.bad_bytes,
                        later_commits,
                    }
                    .into());
                }
                let (kept, intact) = journal::keep_tail_aside(&path, report.good_bytes)?;
                if intact > 0 {
                    tracing::error!(
                        segment = n,
                        bytes = report.bad_bytes,
                        intact_records_after = intact,
                        kept = %kept.display(),
                        "cutting a damaged journal tail: intact records follow the bad one in the last batch, which a killed process never leaves (a power loss that wrote the batch's pages out of order, and they were never acknowledged; or, in a segment written by a vpan without commit markers, damage to the disk, and they may have been); kept aside"
                    );
                } else {
                    tracing::warn!(
                        segment = n,
                        bytes = report.bad_bytes,
                        kept = %kept.display(),
                        "cutting a torn journal tail (a write a crash interrupted: never acknowledged); kept aside"
                    );
                }
                journal::truncate(&path, report.good_bytes)?;
                recovered.bytes_cut += report.bad_bytes;
                recovered.intact_records_cut += intact;
            }
            chain.read(n, report);
        }

        recovered.records_of_unknown_cards = unknown_cards.into_inner();
        if recovered.records_of_unknown_cards > 0 {
            tracing::warn!(
                records = recovered.records_of_unknown_cards,
                data_dir = %dir.display(),
                "journal records of cards the store never issued were skipped: a segment copied in from another data directory under the same key, or a snapshot from an older copy of this one; the cards they name are not known here"
            );
        }
        // Durable holds the issuer never answered (as far as the journal knows): in doubt,
        // counted as spent. Journaled, so that what comes after (a reversal of one finding
        // it spent) replays onto the same state at the next start.
        let mut open_holds: Vec<(OriginalData, TxEntry)> = ledger
            .entries
            .iter()
            .filter(|e| e.state == TxState::Held)
            .map(|e| (*e.key(), *e.value()))
            .collect();
        // Numbered in the order they were decided, not the map's: the retention order
        // (`Ledger::rebuild_order`) follows these numbers, and forgets the oldest first.
        open_holds.sort_unstable_by_key(|(_, e)| (e.at, e.lsn));
        let mut in_doubt = Vec::with_capacity(open_holds.len());
        for (tx, e) in open_holds {
            let event = Event::InDoubt(event::hold_of(tx, &e, next_lsn, e.at));
            next_lsn += 1;
            index.update(e.card, |c| event::apply_card(c, &event));
            event::apply_ledger(&ledger, &event, false);
            in_doubt.push(event);
            recovered.holds_counted_as_spent += 1;
        }
        // One pass over the cards. No hold is open now, so no use is held (counted from
        // the journal since the snapshot, `held_uses` can only have come out too high, by
        // holds a journal of an older vpan reversed in full). And the real card behind
        // each is noted, so that no vPAN is drawn equal to one; and the recent
        // idempotency keys, with the cards they issued.
        let real_keys = ConcurrentMap::with_capacity_and_hasher(index.len(), Default::default());
        let requests = IssuanceRequests::default();
        let now = unix_now();
        index.for_each_mut(|key, c| {
            c.held_uses = 0;
            real_keys.insert(CardKey::of(&c.real_pan), ());
            if let Some(request) = &c.request_key {
                requests.recover(**request, key, c.created_at, now);
            }
        });
        ledger.rebuild_order();

        let last_segment = chain.finish(last_segment, &marker_key)?;

        // A damaged snapshot can name any segment, the last number there is included.
        let next_segment = last_segment
            .checked_add(1)
            .ok_or(StoreError::Corrupt("snapshot: journal segment number"))?;
        let journal = Journal::start(&dir, next_segment, marker_key)?;
        // Every verdict in order; the last one durable means all are.
        let mut last = None;
        for event in in_doubt {
            last = Some(journal.append(event));
        }
        if let Some(last) = last {
            last.wait()?;
        }
        // Deleted at once, not in cuts: nothing is served yet.
        for path in covered {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(journal::loss_accepted_path(&path));
        }
        recovered.cards = index.len();
        recovered.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok((
            Cards {
                index,
                ledger,
                generator,
                journal,
                real_keys,
                requests,
                cipher,
                next_lsn: AtomicU64::new(next_lsn),
                dir,
                store_id,
                snapshot_lock: Mutex::new(()),
                _dir_lock: lock,
                records_at_snapshot: AtomicU64::new(0),
                records_replayed_since_snapshot: AtomicU64::new(recovered.records),
            },
            recovered,
        ))
    }
}

/// Applies one journal event during recovery, skipping what the snapshot already holds.
/// Returns false for the event of a card neither issued before it nor in the snapshot:
/// its card's part is skipped. A card's records replay in order on one thread after its
/// issuance, and no card leaves the index but a new one whose issuance failed to be
/// written (the journal then failed, and took nothing after it), so a directory vpan wrote
/// alone has none.
fn replay(
    index: &CardIndex,
    ledger: &Ledger,
    cipher: &PanCipher,
    ev: &Event,
) -> Result<bool, StoreError> {
    let lsn = ev.lsn();
    if let Event::Issued(i) = ev {
        if !index.contains(i.key) {
            let pan = cipher.open(&i.sealed_pan, &i.key.raw().to_le_bytes())?;
            let spec = CardSpec {
                pan,
                pan_expiry: i.real_expiry,
                controls: i.controls.clone(),
            };
            let mut card = Card::new(&spec, i.created_at);
            card.lsn = lsn;
            card.pan_nonce = crypto::nonce_of(&i.sealed_pan);
            card.request_key = i.request_key.map(Box::new);
            index.put(i.key, card);
        }
        return Ok(true);
    }
    let known = index
        .update(ev.key(), |c| {
            if c.lsn < lsn {
                event::apply_card(c, ev);
            }
        })
        .is_some();
    // Into the retention queues as when serving (so that a journal longer than the ledger's
    // capacity is bounded as it is read): a hold with its answer, by what the answer made
    // it. `rebuild_order` sorts them again once everything is read.
    let new = event::apply_ledger(ledger, ev, true);
    let filed = match ev {
        Event::Held(_) => None,
        Event::Outcome {
            hold,
            in_doubt: false,
            ..
        } => Some((hold.tx, hold.at)),
        _ => new,
    };
    if let Some((k, at)) = filed {
        ledger.remember_answered(k, at, at);
    }
    Ok(known)
}

/// Threads that apply recovered records.
const REPLAY_THREADS: usize = 2;
/// Bytes of payloads handed to a worker at once.
const REPLAY_BATCH_BYTES: usize = 256 << 10;

/// Hands payloads from one reader to [`REPLAY_THREADS`] workers, in batches; payloads with
/// the same partition key go to the same worker, in order.
struct ReplaySink {
    /// One channel per worker.
    senders: Vec<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// One batch being filled per worker: `[len u32][payload]...`.
    batches: Vec<Vec<u8>>,
    /// Round robin for unkeyed payloads.
    next: usize,
}

impl ReplaySink {
    /// Queues `payload` for the worker of `partition` (0: any, round robin).
    fn push(&mut self, partition: u64, payload: &[u8]) -> Result<(), StoreError> {
        let w = if partition == 0 {
            self.next = (self.next + 1) % self.senders.len();
            self.next
        } else {
            // Keys are random digits: their low bits spread evenly.
            (partition % self.senders.len() as u64) as usize
        };
        let batch = &mut self.batches[w];
        batch.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        batch.extend_from_slice(payload);
        if batch.len() >= REPLAY_BATCH_BYTES {
            let full = std::mem::replace(batch, Vec::with_capacity(REPLAY_BATCH_BYTES + 4096));
            self.senders[w]
                .send(full)
                .map_err(|_| StoreError::Corrupt("a replay worker stopped"))?;
        }
        Ok(())
    }

    fn finish(mut self) {
        for (w, batch) in self.batches.drain(..).enumerate() {
            if !batch.is_empty() {
                let _ = self.senders[w].send(batch);
            }
        }
    }
}

/// Runs `read` (which feeds a [`ReplaySink`]) on this thread and `apply` on the workers.
fn parallel_replay<T>(
    read: impl FnOnce(&mut ReplaySink) -> Result<T, StoreError>,
    apply: impl Fn(&[u8]) -> Result<(), StoreError> + Sync,
) -> Result<T, StoreError> {
    std::thread::scope(|s| {
        let mut senders = Vec::with_capacity(REPLAY_THREADS);
        let mut workers = Vec::with_capacity(REPLAY_THREADS);
        for _ in 0..REPLAY_THREADS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            senders.push(tx);
            let apply = &apply;
            workers.push(s.spawn(move || -> Result<(), StoreError> {
                for batch in rx {
                    let mut rest = &batch[..];
                    while rest.len() >= 4 {
                        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                        let (payload, tail) = rest[4..].split_at(len.min(rest.len() - 4));
                        apply(payload)?;
                        rest = tail;
                    }
                }
                Ok(())
            }));
        }
        let mut sink = ReplaySink {
            senders,
            batches: (0..REPLAY_THREADS)
                .map(|_| Vec::with_capacity(REPLAY_BATCH_BYTES + 4096))
                .collect(),
            next: 0,
        };
        let result = read(&mut sink);
        sink.finish();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => return Err(StoreError::Corrupt("a replay worker panicked")),
            }
        }
        result
    })
}

/// True when `dir` holds anything sealed under the key file: a snapshot, a journal segment
/// with a record in it, or reversals owed. A key made anew then would open none of it.
pub(crate) fn holds_sealed_card_numbers(dir: &std::path::Path) -> Result<bool, StoreError> {
    let io = StoreError::io("looking for sealed card numbers in the data directory");
    if dir.join(snapshot::SNAPSHOT_FILE).exists()
        || std::fs::metadata(dir.join(crate::store::owed::FILE)).is_ok_and(|m| m.len() > 0)
    {
        return Ok(true);
    }
    for n in list_segments(dir).map_err(&io)? {
        // A segment with no record holds its markers (unsigned without the key, but known
        // by their tag) and the zeros written ahead. Read up to its first record, which
        // stops the read; anything unreadable counts too, as it may be one.
        let mut holds_a_record = false;
        let read = journal::read_records(&segment_path(dir, n), |payload| {
            if crate::store::marker::batch_start(payload).is_some() {
                return Ok(());
            }
            holds_a_record = true;
            Err(StoreError::Closed)
        });
        match read {
            Ok(report) if report.bad_bytes > 0 => return Ok(true),
            Ok(_) => {}
            Err(_) if holds_a_record => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Refuses a journal with a segment missing: from the snapshot's first segment (`snapshot`)
/// or from 1 (none), every number up to the last is there. Older ones than the snapshot's
/// may linger (a crash during their removal); no start and no rotation skips a number, and a
/// create that fails gives its number back.
fn check_contiguous(
    dir: &std::path::Path,
    segments: &[u64],
    snapshot: Option<u64>,
) -> Result<(), StoreError> {
    let first = snapshot.unwrap_or(1).max(1);
    let live = segments.iter().filter(|&&n| n >= first);
    let last = segments.last().copied().unwrap_or(0);
    // A snapshot is taken on a segment it rotated to: that one is there, at least.
    let until = if snapshot.is_some() {
        last.max(first)
    } else {
        last
    };
    // Walked by the gaps between the numbers present, never number by number: a damaged
    // snapshot can name a segment billions away.
    let (mut missing, mut more) = (Vec::new(), 0u64);
    let mut expected = first;
    for n in live
        .copied()
        .filter(|&n| n <= until)
        .chain([until.saturating_add(1)])
    {
        if n > expected {
            let shown = (n - expected).min((MISSING_SEGMENTS_NAMED - missing.len()) as u64);
            missing.extend((expected..expected + shown).map(|m| segment_path(dir, m)));
            more += n - expected - shown;
        }
        expected = expected.max(n.saturating_add(1));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::MissingSegment {
        without_snapshot: snapshot.is_none() && missing[0] == segment_path(dir, first),
        paths: missing,
        more,
    })
}

/// The sequence number after `lsn`; a record claiming the last one is damage (numbering
/// would wrap, and every later event of its card would be skipped at replay).
fn lsn_after(lsn: u64) -> Result<u64, StoreError> {
    lsn.checked_add(1)
        .ok_or(StoreError::Corrupt("record sequence number"))
}

/// What a snapshot's records add up to, read in order, against its end record.
struct SnapshotTally {
    /// The snapshot, for the errors.
    path: std::path::PathBuf,
    /// Card and ledger entry records read so far.
    read: event::SnapEnd,
    /// The end record, once read.
    end: Option<event::SnapEnd>,
}

impl SnapshotTally {
    fn new(path: std::path::PathBuf) -> SnapshotTally {
        SnapshotTally {
            path,
            read: event::SnapEnd::default(),
            end: None,
        }
    }

    fn incomplete(&self, what: String) -> StoreError {
        StoreError::SnapshotIncomplete {
            path: self.path.clone(),
            what,
        }
    }

    /// Counts one record; `false` for the end record, which has nothing to load. Nothing
    /// may follow the end record.
    fn counts(&mut self, payload: &[u8]) -> Result<bool, StoreError> {
        if self.end.is_some() {
            return Err(self.incomplete("records follow its end record".into()));
        }
        let mut g = event::Get(payload);
        match g.u8() {
            Some(event::TAG_SNAP_CARD) => self.read.cards += 1,
            // A reversal's key counts with the ledger's entries.
            Some(event::TAG_SNAP_TX | event::TAG_REVERSAL_SEEN) => self.read.transactions += 1,
            Some(event::TAG_SNAP_END) => {
                self.end = Some(
                    event::decode_snap_end(&mut g).ok_or(StoreError::Corrupt("snapshot end"))?,
                );
                return Ok(false);
            }
            _ => {}
        }
        Ok(true)
    }

    /// A snapshot of version 3 or later must end with its end record, whose counts it
    /// must match: one cut short at a record's boundary passes every checksum.
    fn check_complete(&self) -> Result<(), StoreError> {
        let r = self.read;
        match self.end {
            None => Err(self.incomplete(format!(
                "it ends after {} cards and {} transactions without its end record: cut short",
                r.cards, r.transactions
            ))),
            Some(end) if end != r => Err(self.incomplete(format!(
                "it holds {} cards and {} transactions where its end record counts {} and {}",
                r.cards, r.transactions, end.cards, end.transactions
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// Loads one snapshot record of format `version` (the header was read before), noting the
/// highest sequence number met in `highest_lsn`.
fn load_snapshot_record(
    index: &CardIndex,
    ledger: &Ledger,
    cipher: &PanCipher,
    highest_lsn: &AtomicU64,
    version: u8,
    payload: &[u8],
) -> Result<(), StoreError> {
    let mut g = event::Get(payload);
    match g.u8() {
        Some(event::TAG_SNAP_HEADER) => {}
        Some(event::TAG_SNAP_CARD) => {
            let (key, card) = event::decode_snap_card(&mut g, |k, sealed| {
                cipher.open(sealed, &k.raw().to_le_bytes())
            })?;
            if !g.0.is_empty() {
                return Err(StoreError::Corrupt("snapshot card"));
            }
            highest_lsn.fetch_max(card.lsn, Ordering::Relaxed);
            index.put(key, card);
        }
        Some(event::TAG_SNAP_TX) => {
            let (k, e, partial) = event::decode_snap_tx(&mut g, version)
                .filter(|_| g.0.is_empty())
                .ok_or(StoreError::Corrupt("snapshot tx"))?;
            highest_lsn.fetch_max(e.lsn, Ordering::Relaxed);
            ledger.load(k, e, partial);
        }
        Some(event::TAG_REVERSAL_SEEN) => {
            // As the journal has it.
            let seen =
                Event::decode(payload).map_err(|_| StoreError::Corrupt("snapshot reversal key"))?;
            highest_lsn.fetch_max(seen.lsn(), Ordering::Relaxed);
            event::apply_ledger(ledger, &seen, true);
        }
        _ => return Err(StoreError::Corrupt("snapshot record")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(segments: &[u64], snapshot: Option<u64>) -> Option<(Vec<u64>, u64, bool)> {
        let dir = std::path::Path::new("/data");
        match check_contiguous(dir, segments, snapshot) {
            Ok(()) => None,
            Err(StoreError::MissingSegment {
                paths,
                more,
                without_snapshot,
            }) => {
                let numbers = paths
                    .iter()
                    .map(|p| {
                        let name = p.file_name().unwrap().to_str().unwrap();
                        let n = name["journal-".len()..name.len() - ".log".len()]
                            .parse()
                            .unwrap();
                        assert_eq!(segment_path(dir, n), *p);
                        n
                    })
                    .collect();
                Some((numbers, more, without_snapshot))
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_gap_in_the_journal_is_named_at_once() {
        assert_eq!(missing(&[1, 2, 3], None), None);
        assert_eq!(missing(&[2, 3, 4], Some(3)), None, "older ones may linger");
        assert_eq!(
            missing(&[3, 4, 7, 8, 12], Some(3)),
            Some((vec![5, 6, 9, 10, 11], 0, false))
        );
        assert_eq!(missing(&[2, 3], None), Some((vec![1], 0, true)));
        assert_eq!(missing(&[], Some(5)), Some((vec![5], 0, false)));
        assert_eq!(missing(&[4, 6], Some(3)), Some((vec![3, 5], 0, false)));
    }

    #[test]
    fn a_gap_of_billions_is_counted_not_listed() {
        let far = 5_000_000_000;
        let (named, more, _) = missing(&[1, far], None).unwrap();
        assert_eq!(named, (2..12).collect::<Vec<_>>());
        assert_eq!(more, far - 2 - 10);
    }
}
