//! The append-only journal, with group commit.
//!
//! Every change to a card is a record appended here before it is acknowledged. Records are
//! framed as `[len: u32 LE][crc32 of payload: u32 LE][payload]`, so a torn or corrupted
//! tail after a crash is recognised and cut at the last good record, never misread.
//!
//! Durability costs one `fdatasync` (150–250 µs on this machine's disk), far too much per
//! record at 100,000 approvals a second. So appenders never write: they push their record
//! onto a queue read by one dedicated writer thread and get a [`Durable`] future. The
//! writer takes everything queued at once (one swap of a vector under a lock), writes the
//! batch with one positioned write (after an extent of zeros now and then), calls
//! `fdatasync` once, and only then resolves every future of that batch: each record has a
//! sequence number, and the writer raises one watermark ("durable up to") and wakes the
//! tasks waiting at or below it, so a record needs no channel of its own (a waiting task
//! registers its waker in one shared list, once). An appender
//! wakes the writer only when it sleeps on an empty queue, so a busy journal costs no
//! system call per record (a channel's per-message wake-ups cost a sixth of the switch's
//! CPU in a profile of the demo). The more appenders wait, the larger the
//! batch: throughput grows with concurrency while each record still waits for at most two
//! syncs (and, when appends come fast enough to fill big batches, a pause of 400 µs
//! between commits that lets each carry more: [`BUSY_RATE`]). When a write or a sync
//! fails, that batch's futures and every later append resolve to an error, and the caller
//! must fail closed (DE 96): after a failed `fsync` the kernel may have dropped the dirty
//! pages, so nothing written since can be trusted.
//!
//! The journal is a series of segments `journal-NNNNNNNNNN.log` in the data directory. Each
//! start opens a fresh segment (no appending after a cut tail), and a snapshot rotates to a
//! new one so that older segments can be deleted once the snapshot is durable. A segment
//! opens and, before a later one is made, closes with a signed marker
//! ([`super::marker::CLOSES_SEGMENT`]), so that one cut short at a record boundary is told
//! from one that ended there.
//! Each segment grows by zero-filled extents written ahead of its records
//! ([`super::segment`]), so a commit's `fdatasync` flushes data only.
//!
//! This file writes; reading the records back at a start is `read.rs`'s.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use parking_lot::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::StoreError;
use super::marker::MarkerKey;
use super::segment::Segment;

mod chain;
mod read;

pub use chain::Chain;
pub use read::{
    LEFTOVER_MAX_BYTES, ReadReport, holds_nothing, keep_tail_aside, read_records, read_segment,
    truncate,
};

/// Largest record accepted when reading back; anything claiming more is corruption.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Something that can be written into the journal (or a snapshot).
pub trait Encode {
    /// Appends the record's bytes (the payload, without framing) to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// What appenders send to the writer thread.
enum Command<R> {
    /// Write this record (the next sequence number is its own).
    Append(R),
    /// Close the current segment and start the next; answer with the new segment number.
    Rotate(mpsc::SyncSender<Result<u64, StoreError>>),
}

/// How far the journal is durable, shared by the writer and every [`Durable`].
///
/// Records are numbered from 1 in the order they are queued, which is the order they are
/// written. After each batch's `fdatasync` the writer raises `durable` to the batch's last
/// number, then wakes the waiters at or below it.
#[derive(Default)]
struct Watermark {
    /// Every record numbered up to this is on disk.
    durable: AtomicU64,
    /// A write or sync failed: no record above `durable` ever will be.
    failed: AtomicBool,
    /// The writer has stopped: no record above `durable` ever will be.
    stopped: AtomicBool,
    /// Tasks waiting, each with the record number it waits for.
    waiters: Mutex<Vec<(u64, Waker)>>,
    /// Threads blocked in [`Durable::wait`] (on the `waiters` lock).
    blocked: Condvar,
    /// When the commit in progress started ([`monotonic_nanos`]), 0 between commits, with
    /// [`STALLED`] set once it has run past [`STALL_AFTER`]: records above `durable` are
    /// then answered [`StoreError::Stalled`] until it returns. One word, so that the
    /// watchdog marks exactly the commit it timed (`compare_exchange`) and the writer ends
    /// it, mark included, in one `swap`: a mark can never outlive its commit.
    commit: AtomicU64,
}

/// The stall mark in [`Watermark::commit`] (start times are far below it).
const STALLED: u64 = 1 << 63;

/// A commit running longer than this is a stalled disk: the records waiting for it, and
/// those queued behind it, are answered [`StoreError::Stalled`] rather than waited for, so
/// an approval gets its 96 and is never left unanswered. A healthy disk's slowest commits
/// measured here took tens of milliseconds.
pub const STALL_AFTER: Duration = Duration::from_secs(2);
/// How often the watchdog looks at the commit in progress.
const STALL_CHECK: Duration = Duration::from_millis(100);

/// Commands waiting for the writer past which the journal fails (closed). The writer takes
/// everything queued at each commit, so only a disk that has stopped answering lets the
/// queue grow; each request answered meanwhile (96, once the commit runs past
/// [`STALL_AFTER`]) queues a record. A bound on memory, not on the stall: about 14 s of a
/// stall at full load (300,000 records a second), which a disk's freeze of a few seconds
/// stays well inside, and minutes at 10,000 approvals a second. 500 MB for the queue (120
/// bytes a command), and about as much again for the batch the writer frames from it if
/// the disk answers again before.
const MAX_BACKLOG: usize = 1 << 22;

/// When appends come this fast (records a second, over the time a batch took to gather)
/// and a batch holds at least [`BUSY_BATCH`] records, the writer pauses for [`BUSY_PAUSE`]
/// after its commit, so that each `fdatasync` (tens of µs of CPU, most of it the
/// kernel's, and a flush the device must do) carries more. At 10,000 approvals a second
/// (20,000 records: a hold and an outcome each) it never pauses, even after a slow commit
/// (a disk's hiccup gathers a big batch, but slowly); at saturation (300,000 records a
/// second and more) a batch carries 50 or more and it does.
const BUSY_RATE: u64 = 100_000;
/// See [`BUSY_RATE`].
const BUSY_BATCH: u64 = 32;
/// The pause. Measured (`benches/cost_per_request.sh BIN closed 6 /tmp`, 2026-12-05, with
/// the batch size alone as the rule): 400 µs took the commits from 0.04 to 0.01 per
/// approval and the switch's CPU from 6.8–6.9 to 5.7–6.3 µs per approval, for 1.03–1.19×
/// the throughput and no higher p50; 200 and 800 µs were close; 1.5 ms cost throughput
/// (each hold waits longer than its issuer round trip).
const BUSY_PAUSE: Duration = Duration::from_micros(400);

/// How long the writer waits after committing a batch of `carried` records that gathered
/// over `gathered` (since the batch before it was taken).
fn pause_after(carried: u64, gathered: Duration) -> Option<Duration> {
    let fast = u128::from(carried) * 1_000_000 >= u128::from(BUSY_RATE) * gathered.as_micros();
    (carried >= BUSY_BATCH && fast).then_some(BUSY_PAUSE)
}

/// Nanoseconds since the first call, never 0: a commit's start, comparable across threads.
fn monotonic_nanos() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Watermark {
    /// The outcome for record `seq`, once there is one.
    fn outcome(&self, seq: u64) -> Option<Result<(), StoreError>> {
        if self.durable.load(Ordering::Acquire) >= seq {
            Some(Ok(()))
        } else if self.failed.load(Ordering::Acquire) {
            Some(Err(StoreError::Failed))
        } else if self.stopped.load(Ordering::Acquire) {
            Some(Err(StoreError::Closed))
        } else if self.commit.load(Ordering::Acquire) & STALLED != 0 {
            Some(Err(StoreError::Stalled(STALL_AFTER)))
        } else {
            None
        }
    }

    /// The watchdog's side, every [`STALL_CHECK`] until the writer ends: a commit running
    /// past [`STALL_AFTER`] marks the journal stalled and answers every waiter. The writer
    /// clears the mark when the commit returns; it is not a failure, since the disk may
    /// come back, and records written meanwhile are as durable as any once it does.
    fn watch(&self) {
        loop {
            std::thread::sleep(STALL_CHECK);
            if self.failed.load(Ordering::Acquire) || self.stopped.load(Ordering::Acquire) {
                return;
            }
            let started = self.commit.load(Ordering::Acquire);
            let running = Duration::from_nanos(monotonic_nanos().saturating_sub(started));
            // Marked only if it is still the same commit: one that returned meanwhile (or
            // a later one) fails the exchange.
            if started != 0
                && started & STALLED == 0
                && running > STALL_AFTER
                && self
                    .commit
                    .compare_exchange(
                        started,
                        started | STALLED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            {
                tracing::error!(
                    running_ms = running.as_millis() as u64,
                    "journal commit stalled: failing closed until the disk returns"
                );
                self.answer_stalled();
            }
        }
    }

    /// Wakes every waiter to read its `Stalled`, leaving each registered. The stall may
    /// end before a woken task polls: it then finds no outcome and, its waker registered
    /// already, waits on; taken off the list here, no `raise` would ever wake it again.
    fn answer_stalled(&self) {
        let woken: Vec<Waker> = self.waiters.lock().iter().map(|(_, w)| w.clone()).collect();
        self.blocked.notify_all();
        for waker in woken {
            waker.wake();
        }
    }

    /// The writer's side: records up to `seq` are durable.
    fn raise(&self, seq: u64, woken: &mut Vec<Waker>) {
        self.durable.store(seq, Ordering::Release);
        self.wake(woken, |waiting_for| waiting_for <= seq);
    }

    /// The writer's side: the journal failed or stopped; every waiter learns it.
    fn end(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        self.wake(&mut Vec::new(), |_| true);
    }

    /// Wakes the waiters `done` selects. The flags and `durable` are set before the lock
    /// is taken, and a waiter checks them under it before registering, so none is missed.
    fn wake(&self, woken: &mut Vec<Waker>, done: impl Fn(u64) -> bool) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|(seq, waker)| {
            if done(*seq) {
                woken.push(waker.clone());
                false
            } else {
                true
            }
        });
        drop(waiters);
        self.blocked.notify_all();
        for waker in woken.drain(..) {
            waker.wake();
        }
    }
}

/// Resolves once a record is durable, or with the error that means "fail closed".
#[must_use = "an approval may only be acknowledged once its record is durable"]
pub struct Durable(DurableState);

enum DurableState {
    Waiting {
        /// The record's number.
        seq: u64,
        mark: Arc<Watermark>,
        /// The waker registered last, so that a future polled again by the same task
        /// (as `join!` does) registers once.
        registered: Option<Waker>,
    },
    Done(Option<Result<(), StoreError>>),
}

impl Durable {
    /// A `Durable` that is already resolved (e.g. nothing needed writing).
    pub fn ready(result: Result<(), StoreError>) -> Durable {
        Durable(DurableState::Done(Some(result)))
    }

    /// Blocks the current thread until durable. For threads outside an async runtime
    /// (tests, tools); async code awaits instead.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            DurableState::Waiting { seq, mark, .. } => {
                let mut waiters = mark.waiters.lock();
                loop {
                    if let Some(outcome) = mark.outcome(seq) {
                        return outcome;
                    }
                    mark.blocked.wait(&mut waiters);
                }
            }
            DurableState::Done(r) => r.unwrap_or(Err(StoreError::Closed)),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            DurableState::Waiting {
                seq,
                mark,
                registered,
            } => {
                if let Some(outcome) = mark.outcome(*seq) {
                    return Poll::Ready(outcome);
                }
                if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    return Poll::Pending;
                }
                let mut waiters = mark.waiters.lock();
                // Again under the lock: the writer raises the mark before taking it.
                if let Some(outcome) = mark.outcome(*seq) {
                    return Poll::Ready(outcome);
                }
                waiters.push((*seq, cx.waker().clone()));
                *registered = Some(cx.waker().clone());
                Poll::Pending
            }
            DurableState::Done(r) => Poll::Ready(r.take().unwrap_or(Err(StoreError::Closed))),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable")
    }
}

/// Counters about the journal, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records written.
    pub records: AtomicU64,
    /// Batches written (one `fdatasync` each).
    pub batches: AtomicU64,
    /// Bytes written to the current segment.
    pub segment_bytes: AtomicU64,
    /// Pauses after a busy commit ([`BUSY_PAUSE`]).
    pub pauses: AtomicU64,
}

/// The queue between appenders and the writer thread.
struct Queue<R> {
    state: Mutex<QueueState<R>>,
    /// [`MAX_BACKLOG`], but in the tests.
    max_backlog: usize,
    /// Signalled when the writer sleeps and something arrives (or the journal closes).
    wake: Condvar,
}

struct QueueState<R> {
    /// Commands not yet taken by the writer, in order.
    commands: Vec<Command<R>>,
    /// Records queued so far: the last one's sequence number.
    appended: u64,
    /// The writer sleeps on `wake` and must be woken.
    writer_asleep: bool,
    /// No more commands will come: the writer finishes what is queued and stops.
    closed: bool,
}

/// Why a command was not queued.
#[derive(Debug, PartialEq, Eq)]
enum NotQueued {
    /// The journal is closed.
    Closed,
    /// [`MAX_BACKLOG`] commands wait already.
    Backlog,
}

impl<R> Queue<R> {
    /// Queues `cmd`; returns the number of the last record queued (this one's, for an
    /// append).
    fn push(&self, cmd: Command<R>) -> Result<u64, NotQueued> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(NotQueued::Closed);
        }
        if s.commands.len() >= self.max_backlog {
            return Err(NotQueued::Backlog);
        }
        if matches!(cmd, Command::Append(_)) {
            s.appended += 1;
        }
        let seq = s.appended;
        s.commands.push(cmd);
        let wake = std::mem::take(&mut s.writer_asleep);
        drop(s);
        if wake {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// The writer's side: everything queued (swapped into `into`, which must be empty),
    /// sleeping while there is nothing; false once closed and drained.
    fn take_all(&self, into: &mut Vec<Command<R>>) -> bool {
        let mut s = self.state.lock();
        while s.commands.is_empty() {
            if s.closed {
                return false;
            }
            s.writer_asleep = true;
            self.wake.wait(&mut s);
        }
        std::mem::swap(&mut s.commands, into);
        true
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
    }
}

/// The journal: a handle to its writer thread. Cheap to share behind an `Arc`.
pub struct Journal<R: Encode + Send + 'static> {
    /// Where records go to the writer.
    queue: Arc<Queue<R>>,
    /// How far the records are durable; its `failed` is set once a write or sync failed,
    /// and every later append fails at once.
    mark: Arc<Watermark>,
    /// Counters.
    stats: Arc<JournalStats>,
    /// The writer thread, joined on drop after the queue closes.
    thread: Option<JoinHandle<()>>,
}

/// The file name of segment `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("journal-{n:010}.log"))
}

/// The file whose presence beside segment `path` says the operators accepted the loss of
/// records cut from its end ([`StoreError::UnclosedSegment`]); deleted with the segment.
pub fn loss_accepted_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".loss-accepted");
    PathBuf::from(name)
}

/// The segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("journal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Makes a directory entry (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl<R: Encode + Send + 'static> Journal<R> {
    /// Starts a writer on a new segment `segment` in `dir` (which must exist), signing its
    /// commit markers with `markers`.
    pub fn start(dir: &Path, segment: u64, markers: MarkerKey) -> Result<Journal<R>, StoreError> {
        Journal::start_bounded(dir, segment, markers, MAX_BACKLOG)
    }

    /// [`Journal::start`] with a backlog of `max_backlog` commands at most.
    fn start_bounded(
        dir: &Path,
        segment: u64,
        markers: MarkerKey,
        max_backlog: usize,
    ) -> Result<Journal<R>, StoreError> {
        let segment = Segment::create(dir, segment, &markers)
            .map_err(StoreError::io("opening the journal"))?;
        let queue = Arc::new(Queue {
            max_backlog,
            state: Mutex::new(QueueState {
                commands: Vec::with_capacity(1024),
                appended: 0,
                writer_asleep: false,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let mark = Arc::new(Watermark::default());
        let stats = Arc::new(JournalStats::default());
        let writer = Writer {
            dir: dir.to_path_buf(),
            segment,
            markers,
            queue: queue.clone(),
            mark: mark.clone(),
            written: 0,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("vpan-journal".into())
            .spawn(move || writer.run())
            .map_err(StoreError::io("starting the journal writer"))?;
        let watched = mark.clone();
        std::thread::Builder::new()
            .name("vpan-journal-watch".into())
            .spawn(move || watched.watch())
            .map_err(StoreError::io("starting the journal watchdog"))?;
        Ok(Journal {
            queue,
            mark,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues `record`; the returned future resolves once it is on disk (`fdatasync`ed).
    pub fn append(&self, record: R) -> Durable {
        if self.is_failed() {
            return Durable::ready(Err(StoreError::Failed));
        }
        match self.queue.push(Command::Append(record)) {
            Ok(seq) => Durable(DurableState::Waiting {
                seq,
                mark: self.mark.clone(),
                registered: None,
            }),
            Err(NotQueued::Closed) => Durable::ready(Err(StoreError::Closed)),
            Err(NotQueued::Backlog) => Durable::ready(Err(self.fail_for_backlog())),
        }
    }

    /// The writer is [`MAX_BACKLOG`] commands behind: a disk that has stopped answering
    /// for that long. The journal fails (closed) rather than hold records in memory
    /// without bound: the switch answers 96 to whatever needs a record, and `/healthz`
    /// says the store is down, until it is restarted once the disk answers. A record
    /// could not simply be dropped: those after it (an outcome after its hold) would
    /// reach the disk without it.
    fn fail_for_backlog(&self) -> StoreError {
        // Swapped, not read: two threads meeting the bound in the same instant say it once.
        if !self.mark.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                records = self.queue.max_backlog,
                "the journal's disk is this many records behind: the store fails closed rather than grow without bound"
            );
        }
        self.mark.end(&self.mark.failed);
        StoreError::Backlog(self.queue.max_backlog)
    }

    /// Queues `record` without a way to wait for it (it is still written in order, in the
    /// next batch). For records whose loss in a crash is covered by recovery's rules.
    pub fn append_detached(&self, record: R) {
        if !self.is_failed() && self.queue.push(Command::Append(record)) == Err(NotQueued::Backlog)
        {
            self.fail_for_backlog();
        }
    }

    /// Closes the current segment (everything queued before is written and synced) and
    /// starts the next. Returns the new segment's number. Blocks the calling thread.
    pub fn rotate(&self) -> Result<u64, StoreError> {
        if self.is_failed() {
            return Err(StoreError::Failed);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        match self.queue.push(Command::Rotate(tx)) {
            Ok(_) => {}
            Err(NotQueued::Closed) => return Err(StoreError::Closed),
            Err(NotQueued::Backlog) => return Err(self.fail_for_backlog()),
        }
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Resolves once every record queued so far is durable, or with the error that stops
    /// the journal: for work that must not outlive the records it read (a snapshot).
    pub fn barrier(&self) -> Durable {
        let seq = self.queue.state.lock().appended;
        Durable(DurableState::Waiting {
            seq,
            mark: self.mark.clone(),
            registered: None,
        })
    }

    /// True while a commit has run past [`STALL_AFTER`] (records are answered
    /// [`StoreError::Stalled`]); for health checks.
    pub fn is_stalled(&self) -> bool {
        self.mark.commit.load(Ordering::Acquire) & STALLED != 0
    }

    /// True once a write or sync failed: the store must be treated as down.
    pub fn is_failed(&self) -> bool {
        self.mark.failed.load(Ordering::Acquire)
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }
}

impl<R: Encode + Send + 'static> Drop for Journal<R> {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's state.
struct Writer<R> {
    /// Data directory, for rotation.
    dir: PathBuf,
    /// The segment being written.
    segment: Segment,
    /// Signs the marker that ends each batch.
    markers: MarkerKey,
    /// Commands from appenders.
    queue: Arc<Queue<R>>,
    /// How far the records are durable, and the shared failure flag.
    mark: Arc<Watermark>,
    /// Records framed so far: the last one's sequence number.
    written: u64,
    /// Shared counters.
    stats: Arc<JournalStats>,
}

/// Tells every waiter when the writer thread ends, however it ends, so that none waits
/// forever for a record that will never be written. A panic marks the journal failed:
/// nothing queued after it will be written, so the store is down (`is_failed`, and the
/// switch fails closed) rather than only stopped.
struct Stopped(Arc<Watermark>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.end(&self.0.failed);
        } else {
            self.0.end(&self.0.stopped);
        }
    }
}

impl<R: Encode + Send + 'static> Writer<R> {
    fn run(mut self) {
        let _stopped = Stopped(self.mark.clone());
        let mut buf = Vec::with_capacity(1 << 20);
        let mut woken = Vec::with_capacity(1024);
        let mut batch = Vec::with_capacity(1024);
        let mut count = 0u64;
        let mut taken_at = Instant::now();
        while self.queue.take_all(&mut batch) {
            let now = Instant::now();
            let gathered = now - taken_at;
            taken_at = now;
            for cmd in batch.drain(..) {
                match cmd {
                    Command::Append(record) => {
                        // A failed journal writes nothing: framing the backlog it may hold
                        // would only double its memory.
                        if !self.is_failed() {
                            let at = buf.len();
                            frame(&record, &mut buf);
                            debug_assert!(
                                super::marker::batch_start(&buf[at + 8..]).is_none(),
                                "a record that reads as a commit marker"
                            );
                        }
                        count += 1;
                        self.written += 1;
                    }
                    Command::Rotate(reply) => {
                        self.flush(&mut buf, &mut woken, &mut count);
                        let _ = reply.send(self.rotate());
                    }
                }
            }
            let carried = count;
            self.flush(&mut buf, &mut woken, &mut count);
            if batch.capacity() > 64 * 1024 {
                // A backlog that built up behind a stalled disk is not kept allocated.
                batch.shrink_to(1024);
            }
            if let Some(pause) = pause_after(carried, gathered) {
                self.stats.pauses.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(pause);
            }
        }
        self.flush(&mut buf, &mut woken, &mut count);
        if !self.is_failed() {
            self.segment.close();
        }
    }

    fn is_failed(&self) -> bool {
        self.mark.failed.load(Ordering::Acquire)
    }

    /// The store fails closed from now on: every waiter above the mark gets the error.
    fn fail(&self) {
        self.mark.end(&self.mark.failed);
    }

    /// Writes and syncs the batch, then raises the watermark over it.
    fn flush(&mut self, buf: &mut Vec<u8>, woken: &mut Vec<Waker>, count: &mut u64) {
        if buf.is_empty() {
            *count = 0;
            return;
        }
        // Closed by its marker, which a start needs to tell damage to this batch (once it
        // is acknowledged) from a torn write of the last one.
        super::marker::push(&self.markers, self.segment.number, self.segment.end(), buf);
        let started = Instant::now();
        let committed = self.watched(|w| (!w.is_failed()).then(|| w.segment.commit(buf)));
        // Looked up per commit, not cached: the journal starts before the switch installs
        // its metrics recorder, and a handle taken then would count nowhere.
        metrics::histogram!("vpan_store_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        self.stats.records.fetch_add(*count, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .segment_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        // The counters first, then the waiters: a caller whose record is durable sees it
        // counted.
        match committed {
            Some(Ok(())) => self.mark.raise(self.written, woken),
            Some(Err(e)) => {
                tracing::error!(error = %e, "journal write failed: the store fails closed");
                self.fail();
            }
            None => {}
        }
        buf.clear();
        if buf.capacity() > 8 << 20 {
            buf.shrink_to(1 << 20);
        }
        *count = 0;
    }

    /// Runs `io` (a commit, or a new segment's creation) under the stall watchdog: past
    /// [`STALL_AFTER`], the records waiting behind it are answered `Stalled` rather than
    /// left waiting on a disk that does not answer.
    fn watched<T>(&mut self, io: impl FnOnce(&mut Self) -> T) -> T {
        let started = Instant::now();
        self.mark.commit.store(monotonic_nanos(), Ordering::Release);
        let out = io(self);
        if self.mark.commit.swap(0, Ordering::AcqRel) & STALLED != 0 {
            tracing::warn!(
                took_ms = started.elapsed().as_millis() as u64,
                "journal write returned after a stall: answering again"
            );
        }
        out
    }

    fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.is_failed() {
            return Err(StoreError::Failed);
        }
        let next = self.segment.number + 1;
        // Closed first, so that no later segment is ever there without this one's closing
        // marker. A closing marker or a new segment that cannot be written (a disk without
        // room for an extent) fails the rotation, not the journal: the records before are
        // durable, `create` leaves nothing behind, the current segment goes on (its next
        // batch written over the closing marker, or over a torn one: where it began), and
        // the snapshot that asked tries again later.
        self.watched(|w| w.segment.seal(&w.markers))
            .map_err(StoreError::io("closing the journal segment"))?;
        let segment = match self.watched(|w| create_over_leftover(&w.dir, next, &w.markers)) {
            Ok(segment) => segment,
            Err(e) => {
                self.segment.unseal();
                return Err(StoreError::io("starting the next journal segment")(e));
            }
        };
        std::mem::replace(&mut self.segment, segment).close();
        self.stats.segment_bytes.store(0, Ordering::Relaxed);
        Ok(next)
    }
}

/// Creates segment `number`, first removing an empty file under its name: what a create
/// leaves when a power loss undoes its removal, or a file made there by hand. A start
/// removes such leftovers too; without this, every rotation would fail on the name until
/// a restart, and the journal grow meanwhile. A file that holds anything is left where it
/// is, named in the error, for someone to look at.
fn create_over_leftover(dir: &Path, number: u64, key: &MarkerKey) -> io::Result<Segment> {
    match Segment::create(dir, number, key) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let path = segment_path(dir, number);
            if !holds_nothing(&path)? {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} is already there and holds something: a journal segment is never made over one; move it aside",
                        path.display()
                    ),
                ));
            }
            tracing::warn!(path = %path.display(), "removing an empty file where the next journal segment goes");
            // The leftover's accepted loss first, if one was left beside it: kept, it would
            // accept a later cut of the segment made here (and a crash between the two
            // removals must not leave it without the leftover to go with).
            match std::fs::remove_file(loss_accepted_path(&path)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::remove_file(&path)?;
            Segment::create(dir, number, key)
        }
        made => made,
    }
}

/// Appends one framed record to `out`.
pub fn frame<R: Encode + ?Sized>(record: &R, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    record.encode(out);
    let len = (out.len() - start - 8) as u32;
    // A zero length marks the end of a segment's records (the zeros written ahead of
    // them): a record must not look like it. Every record encodes a tag byte first.
    debug_assert!(len > 0, "an empty journal record");
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment::EXTENT_BYTES;

    struct Bytes(Vec<u8>);

    impl Encode for Bytes {
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0);
        }
    }

    /// The marker key of the tests' journals.
    fn test_key() -> MarkerKey {
        MarkerKey::derive(&[7; 32])
    }

    /// A commit marker's bytes in a segment: one ends every batch, and one opens every
    /// segment (where its first record begins: `OPENING`).
    const MARKER: u64 = crate::store::marker::FRAME_BYTES as u64;
    const OPENING: u64 = MARKER;

    fn read_all(path: &Path) -> (Vec<Vec<u8>>, ReadReport) {
        let mut got = Vec::new();
        let report = read_segment(path, 1, &test_key(), |p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        (got, report)
    }

    /// A waker that counts its wakes.
    struct Counter(AtomicU64);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waiting(mark: &Arc<Watermark>, seq: u64) -> Durable {
        Durable(DurableState::Waiting {
            seq,
            mark: mark.clone(),
            registered: None,
        })
    }

    #[test]
    fn a_record_resolves_when_the_watermark_passes_it_and_wakes_its_task_once() {
        let mark = Arc::new(Watermark::default());
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut durable = waiting(&mark, 5);
        // Polled again by the same task (as `join!` does): registered once.
        assert!(Pin::new(&mut durable).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut durable).poll(&mut cx).is_pending());
        assert_eq!(mark.waiters.lock().len(), 1);

        let mut woken = Vec::new();
        mark.raise(4, &mut woken);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "record 5 is not durable at 4"
        );
        assert!(Pin::new(&mut durable).poll(&mut cx).is_pending());
        mark.raise(5, &mut woken);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(mark.waiters.lock().is_empty());
        assert!(matches!(
            Pin::new(&mut durable).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // A record below the mark is durable at once, without registering.
        let mut earlier = waiting(&mark, 3);
        assert!(matches!(
            Pin::new(&mut earlier).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn a_task_woken_by_a_stall_that_ends_before_it_polls_is_woken_by_the_next_raise() {
        let mark = Arc::new(Watermark::default());
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut durable = waiting(&mark, 1);
        assert!(Pin::new(&mut durable).poll(&mut cx).is_pending());
        // The watchdog marks the commit stalled and wakes the task...
        mark.commit.store(1 | STALLED, Ordering::Release);
        mark.answer_stalled();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // ...but the commit returns before the task is polled: no outcome yet.
        mark.commit.store(0, Ordering::Release);
        assert!(Pin::new(&mut durable).poll(&mut cx).is_pending());
        mark.raise(1, &mut Vec::new());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            2,
            "the record's sync must wake the task"
        );
        assert!(matches!(
            Pin::new(&mut durable).poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn a_writer_that_panics_leaves_the_journal_failed_not_only_stopped() {
        let mark = Arc::new(Watermark::default());
        let writer = std::thread::spawn({
            let mark = mark.clone();
            move || {
                let _stopped = Stopped(mark);
                panic!("the writer's bug");
            }
        });
        assert!(writer.join().is_err());
        assert!(mark.failed.load(Ordering::Acquire));
        assert!(matches!(waiting(&mark, 1).wait(), Err(StoreError::Failed)));
        // An orderly end is only stopped.
        let closed = Arc::new(Watermark::default());
        drop(Stopped(closed.clone()));
        assert!(!closed.failed.load(Ordering::Acquire));
        assert!(closed.stopped.load(Ordering::Acquire));
    }

    #[test]
    fn a_failed_or_stopped_journal_resolves_every_waiter_above_the_mark_with_its_error() {
        let mark = Arc::new(Watermark::default());
        mark.raise(2, &mut Vec::new());
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut above = waiting(&mark, 3);
        assert!(Pin::new(&mut above).poll(&mut cx).is_pending());
        let blocked = std::thread::spawn({
            let mark = mark.clone();
            move || waiting(&mark, 4).wait()
        });
        mark.end(&mark.failed);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            Pin::new(&mut above).poll(&mut cx),
            Poll::Ready(Err(StoreError::Failed))
        ));
        assert!(matches!(blocked.join().unwrap(), Err(StoreError::Failed)));
        // What was durable before the failure stays durable.
        assert!(waiting(&mark, 2).wait().is_ok());

        let stopped = Arc::new(Watermark::default());
        stopped.end(&stopped.stopped);
        assert!(matches!(
            waiting(&stopped, 1).wait(),
            Err(StoreError::Closed)
        ));
    }

    #[test]
    fn a_record_is_durable_only_once_its_sync_returns_and_a_failed_sync_fails_the_journal() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap();
        j.append(Bytes(vec![1; 10])).wait().unwrap();
        let held = sync_gate::set(dir.path(), Gate::Held);
        let mut second = j.append(Bytes(vec![2; 10]));
        // Written, its sync not returned: not durable.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let written = || {
            let mut n = 0;
            read_segment(&segment_path(dir.path(), 1), 1, &test_key(), |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
            n
        };
        while written() < 2 {
            assert!(Instant::now() < deadline, "the batch was never written");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        drop(held);
        second.wait().unwrap();

        let _failing = sync_gate::set(dir.path(), Gate::Failing);
        assert!(j.append(Bytes(vec![3; 10])).wait().is_err());
        assert!(j.is_failed());
    }

    #[test]
    fn a_commit_stalled_past_the_limit_answers_its_waiters_and_later_ones_until_it_returns() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap();
        j.append(Bytes(vec![1; 10])).wait().unwrap();
        let held = sync_gate::set(dir.path(), Gate::Held);
        let started = Instant::now();
        let stuck = j.append(Bytes(vec![2; 10])).wait();
        assert!(matches!(stuck, Err(StoreError::Stalled(_))), "{stuck:?}");
        assert!(started.elapsed() >= STALL_AFTER);
        // Queued behind the stalled commit: answered at once, not after another limit.
        let queued = Instant::now();
        assert!(matches!(
            j.append(Bytes(vec![3; 10])).wait(),
            Err(StoreError::Stalled(_))
        ));
        assert!(queued.elapsed() < STALL_AFTER);
        // The disk answers again: not failed, and records are durable as before (once the
        // stalled commit has returned; one queued just before that is still answered
        // `Stalled`).
        drop(held);
        let appended = 3 + appends_until_durable_again(&j);
        assert!(!j.is_failed());
        assert_eq!(
            read_all(&segment_path(dir.path(), 1)).0.len(),
            appended,
            "the stalled records reached the disk too"
        );
    }

    #[test]
    fn a_new_segment_that_the_disk_does_not_create_in_time_is_a_stall_too() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap());
        j.append(Bytes(vec![1; 10])).wait().unwrap();
        let held = sync_gate::set(dir.path(), Gate::Held);
        let rotating = std::thread::spawn({
            let j = j.clone();
            move || j.rotate()
        });
        // The writer at the gate in the new segment's creation first (a record queued
        // before the rotation would meet the gate in its own commit instead).
        sync_gate::wait_until_one_is_held(dir.path());
        // Behind the rotation the disk does not finish: answered `Stalled`, not left waiting.
        let (answered, answer) = mpsc::channel();
        let waiting = j.append(Bytes(vec![2; 10]));
        std::thread::spawn(move || answered.send(waiting.wait()));
        let behind = answer
            .recv_timeout(STALL_AFTER * 5)
            .expect("an append behind a rotation the disk does not finish is answered");
        assert!(matches!(behind, Err(StoreError::Stalled(_))), "{behind:?}");
        drop(held);
        assert_eq!(rotating.join().unwrap().unwrap(), 2);
        appends_until_durable_again(&j);
        assert!(!j.is_failed());
    }

    /// After a stall: appends until one is durable (those answered `Stalled` meanwhile
    /// are written too, once the stalled commit returns); how many it took. Fails after 5 s.
    fn appends_until_durable_again(j: &Journal<Bytes>) -> usize {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut appended = 0;
        loop {
            appended += 1;
            match j.append(Bytes(vec![4; 10])).wait() {
                Ok(()) => return appended,
                Err(StoreError::Stalled(_)) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_barrier_resolves_only_once_every_record_queued_before_it_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap();
        for i in 0..1_000u32 {
            // Not waited for: only the barrier is.
            drop(j.append(Bytes(i.to_le_bytes().to_vec())));
        }
        j.barrier().wait().unwrap();
        assert!(j.mark.durable.load(Ordering::Acquire) >= 1_000);
        let mut read = 0;
        read_segment(&segment_path(dir.path(), 1), 1, &test_key(), |_| {
            read += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(read, 1_000, "all on disk when the barrier resolved");
    }

    #[test]
    fn a_disk_that_stops_answering_fails_the_journal_once_the_backlog_is_full() {
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        // The bound itself would take 4M records and half a gigabyte here.
        let max = 10_000;
        let j = Journal::<Bytes>::start_bounded(dir.path(), 1, test_key(), max).unwrap();
        let held = sync_gate::set(dir.path(), Gate::Held);
        let first = j.append(Bytes(vec![1]));
        sync_gate::wait_until_one_is_held(dir.path());
        // The writer is stuck in its sync: everything from now on waits in the queue.
        for i in 0..max {
            j.append_detached(Bytes(vec![i as u8]));
        }
        assert!(!j.is_failed(), "a full backlog, not yet a refused record");
        // Polled once, not waited for: were the record queued, it would wait for the held
        // sync, and the test would hang rather than fail.
        let waker = Waker::from(Arc::new(Counter(AtomicU64::new(0))));
        let mut refused = j.append(Bytes(vec![2]));
        assert!(matches!(
            Pin::new(&mut refused).poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Err(StoreError::Backlog(n))) if n == max
        ));
        assert!(j.is_failed(), "failed closed, for good");
        assert_eq!(j.append(Bytes(vec![3])).wait(), Err(StoreError::Failed));
        assert_eq!(j.rotate(), Err(StoreError::Failed));
        // The record in the commit held at the sync was not durable when the journal
        // failed: its waiter has the failure.
        assert_eq!(first.wait(), Err(StoreError::Failed));
        drop(held);
    }

    #[test]
    fn only_a_big_batch_gathered_fast_makes_the_writer_pause() {
        let us = Duration::from_micros;
        assert_eq!(pause_after(0, us(0)), None);
        assert_eq!(pause_after(BUSY_BATCH - 1, us(1)), None, "a small batch");
        assert_eq!(
            pause_after(BUSY_BATCH, us(100)),
            Some(BUSY_PAUSE),
            "320,000/s"
        );
        assert_eq!(
            pause_after(10_000, us(5_000)),
            Some(BUSY_PAUSE),
            "2,000,000/s"
        );
        // 10,000 approvals a second (20,000 records) after a 5 ms hiccup of the disk: a
        // big batch, gathered slowly.
        assert_eq!(pause_after(100, us(5_000)), None);
        assert_eq!(pause_after(BUSY_BATCH, us(400)), None, "80,000/s");
    }

    #[test]
    fn records_queued_around_the_pauses_after_busy_commits_are_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap());
        // A lost wake-up would hang the test: it fails after a bound instead.
        let (done, finished) = mpsc::channel();
        let journal = j.clone();
        std::thread::spawn(move || {
            let j = journal;
            for round in 0..20u8 {
                // Queued faster than any disk commits: the batches behind the first commit
                // are big and gathered fast, and the writer pauses after them. The next
                // round's first records are queued during such a pause, when the writer
                // does not sleep on the queue and no one wakes it: it must take them when
                // the pause ends.
                let queued: Vec<_> = (0..1024u32)
                    .map(|i| j.append(Bytes(vec![round, i as u8])))
                    .collect();
                for d in queued {
                    d.wait().unwrap();
                }
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("every record made durable");
        assert!(
            j.stats().pauses.load(Ordering::Relaxed) > 0,
            "the writer paused after busy commits"
        );
    }

    fn write_three(dir: &Path) -> PathBuf {
        let j = Journal::<Bytes>::start(dir, 1, test_key()).unwrap();
        for i in 1..=3u8 {
            j.append(Bytes(vec![i; 10 * i as usize])).wait().unwrap();
        }
        drop(j);
        segment_path(dir, 1)
    }

    /// Three records written (see `write_three`), then `tail` appended to the segment as
    /// a crash could leave it, read back: the records, the report, and where the three end.
    fn read_three_then(dir: &Path, tail: &[&[u8]]) -> (Vec<Vec<u8>>, ReadReport, u64) {
        let path = write_three(dir);
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.len() as u64;
        for part in tail {
            bytes.extend_from_slice(part);
        }
        std::fs::write(&path, &bytes).unwrap();
        let (got, report) = read_all(&path);
        (got, report, good)
    }

    #[test]
    fn appended_records_read_back_in_order_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let (got, report) = read_all(&path);
        assert_eq!(got, vec![vec![1; 10], vec![2; 20], vec![3; 30]]);
        assert_eq!(report.bad_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut inside the third record (before its batch's marker).
        for cut in [1, 7, 8, 20] {
            let copy = dir.path().join("copy.log");
            std::fs::copy(&path, &copy).unwrap();
            truncate(&copy, len - MARKER - cut).unwrap();
            let (got, report) = read_all(&copy);
            assert_eq!(got.len(), 2, "cut {cut}");
            assert_eq!(
                report.good_bytes,
                OPENING + 8 + 10 + MARKER + 8 + 20 + MARKER
            );
            truncate(&copy, report.good_bytes).unwrap();
            assert_eq!(read_all(&copy).1.bad_bytes, 0);
        }
    }

    #[test]
    fn a_corrupted_record_is_cut_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        // The opening marker, then the first batch: its record and marker.
        let first = (OPENING + 8 + 10 + MARKER) as usize;
        bytes[first + 8 + 5] ^= 0x01; // one bit of the second payload
        std::fs::write(&path, &bytes).unwrap();
        let (got, report) = read_all(&path);
        assert_eq!(got, vec![vec![1; 10]]);
        assert_eq!(report.good_bytes, first as u64);
        assert_eq!(report.bad_bytes, (bytes.len() - first) as u64);
    }

    #[test]
    fn a_damaged_marker_between_batches_is_passed_over_and_a_torn_last_one_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_three(dir.path());
        let clean = std::fs::read(&path).unwrap();
        // The first batch's marker, its start field hit: every record still reads.
        let mut bytes = clean.clone();
        bytes[OPENING as usize + 18 + 10] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        let (got, report) = read_all(&path);
        assert_eq!(got, vec![vec![1; 10], vec![2; 20], vec![3; 30]]);
        assert_eq!((report.records, report.bad_bytes), (3, 0));
        assert_eq!(report.good_bytes, bytes.len() as u64);
        // The last batch's marker torn: nothing after it, so it is the torn tail.
        let mut bytes = clean.clone();
        let last = bytes.len() - MARKER as usize;
        bytes[last + 10] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        let (got, report) = read_all(&path);
        assert_eq!(got.len(), 3);
        assert_eq!((report.good_bytes, report.bad_bytes), (last as u64, MARKER));
        // A damaged record is not passed over, even with a whole batch after it.
        let mut bytes = clean;
        bytes[(OPENING + 18 + MARKER) as usize + 10] ^= 0x08;
        std::fs::write(&path, &bytes).unwrap();
        let (got, _) = read_all(&path);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn a_zero_filled_tail_is_not_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (got, report, _) = read_three_then(dir.path(), &[&[0; 4096]]);
        assert_eq!(got.len(), 3);
        assert_eq!((report.bad_bytes, report.zeros), (0, 4096));
    }

    #[test]
    fn a_record_torn_inside_the_zeros_ahead_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        // A fourth record whose header reached the disk and whose payload did not.
        let (got, report, good) =
            read_three_then(dir.path(), &[&[40, 0, 0, 0, 1, 2, 3, 4], &[0; 4096]]);
        assert_eq!(got.len(), 3);
        assert_eq!(report.good_bytes, good);
        assert_eq!((report.bad_bytes, report.zeros), (8 + 4096, 0));
    }

    #[test]
    fn zeros_with_a_later_page_written_are_damage_not_the_end() {
        // A crash inside a batch can leave its first page unwritten (zeros) and a later
        // one written: that batch was never acknowledged, and what follows is not zeros.
        let dir = tempfile::tempdir().unwrap();
        let (got, report, good) = read_three_then(dir.path(), &[&[0; 4096], &[7; 100], &[0; 4096]]);
        assert_eq!(got.len(), 3);
        assert_eq!(report.good_bytes, good);
        assert_eq!((report.bad_bytes, report.zeros), (8192 + 100, 0));
    }

    #[test]
    fn a_segment_is_written_over_zeros_ahead_and_cut_to_its_records_when_closed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap();
        let path = segment_path(dir.path(), 1);
        j.append(Bytes(vec![7; 100])).wait().unwrap();
        // While open: one extent, records then durable zeros.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), EXTENT_BYTES);
        let (got, report) = read_all(&path);
        assert_eq!(got, vec![vec![7; 100]]);
        assert_eq!(
            (report.bad_bytes, report.zeros),
            (0, EXTENT_BYTES - OPENING - 108 - MARKER)
        );
        // A batch larger than what is left of the extent gets the next ones.
        let big = vec![9; EXTENT_BYTES as usize];
        j.append(Bytes(big.clone())).wait().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * EXTENT_BYTES);
        drop(j);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            OPENING + 108 + MARKER + 8 + EXTENT_BYTES + MARKER
        );
        let (got, report) = read_all(&path);
        assert_eq!(got, vec![vec![7; 100], big]);
        assert_eq!((report.bad_bytes, report.zeros), (0, 0));
    }

    #[test]
    fn rotation_moves_later_records_to_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 5, test_key()).unwrap();
        j.append(Bytes(vec![1])).wait().unwrap();
        assert_eq!(j.rotate().unwrap(), 6);
        // The closed segment is cut to its opening marker, its one record (8 + 1 bytes),
        // its batch's marker and its closing marker, zeros ahead gone.
        let closed = segment_path(dir.path(), 5);
        assert_eq!(
            std::fs::metadata(&closed).unwrap().len(),
            OPENING + 9 + MARKER + MARKER
        );
        j.append(Bytes(vec![2])).wait().unwrap();
        drop(j);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![5, 6]);
        let open = segment_path(dir.path(), 6);
        assert_eq!(read_all(&open).0, vec![vec![2]]);
        // Each opens with its marker; only the one a later segment follows is closed, and
        // only under its own number and key.
        let read = |path: &Path, segment: u64, key: &MarkerKey| {
            let report = read_segment(path, segment, key, |_| Ok(())).unwrap();
            (report.records, report.opened, report.closed)
        };
        assert_eq!(read(&closed, 5, &test_key()), (1, true, true));
        assert_eq!(read(&open, 6, &test_key()), (1, true, false));
        assert_eq!(read(&closed, 6, &test_key()), (1, false, false));
        let other = MarkerKey::derive(&[8; 32]);
        assert_eq!(read(&closed, 5, &other), (1, false, false));
        // Cut at a record boundary (before its closing marker, or its last batch): no
        // longer closed, though every frame left reads whole.
        for cut in [MARKER, 2 * MARKER + 9] {
            truncate(&closed, OPENING + 9 + 2 * MARKER - cut).unwrap();
            let (_, opened, closed_now) = read(&closed, 5, &test_key());
            assert!(opened && !closed_now, "cut {cut}");
        }
    }

    #[test]
    fn a_rotation_that_cannot_make_the_next_segment_goes_on_over_its_closing_marker() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 5, test_key()).unwrap();
        j.append(Bytes(vec![1])).wait().unwrap();
        // Segment 6 cannot be made (something holds its name): the rotation fails, not the
        // journal, and segment 5 goes on after the closing marker it was given first.
        let blocker = segment_path(dir.path(), 6);
        std::fs::write(&blocker, b"in the way").unwrap();
        let refused = j.rotate().unwrap_err().to_string();
        assert!(
            refused.contains(&format!(
                "{} is already there and holds something",
                blocker.display()
            )),
            "{refused}"
        );
        j.append(Bytes(vec![2])).wait().unwrap();
        let path = segment_path(dir.path(), 5);
        let read = || {
            let mut got = Vec::new();
            let report = read_segment(&path, 5, &test_key(), |p| {
                got.push(p.to_vec());
                Ok(())
            })
            .unwrap();
            (got, report.opened, report.closed, report.bad_bytes)
        };
        // A closing marker with records after it does not close the segment.
        assert_eq!(read(), (vec![vec![1], vec![2]], true, false, 0));
        std::fs::remove_file(&blocker).unwrap();
        assert_eq!(j.rotate().unwrap(), 6);
        drop(j);
        assert_eq!(read(), (vec![vec![1], vec![2]], true, true, 0));
        // The failed rotation's closing marker was written over: only the last frame is one.
        let closing: Vec<bool> = frames(&path)
            .iter()
            .map(|(_, p)| {
                crate::store::marker::batch_start(p) == Some(crate::store::marker::CLOSES_SEGMENT)
            })
            .collect();
        assert_eq!(closing.iter().filter(|&&c| c).count(), 1, "{closing:?}");
        assert_eq!(closing.last(), Some(&true));
    }

    #[test]
    fn a_rotation_removes_an_empty_file_where_the_next_segment_goes() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 5, test_key()).unwrap();
        j.append(Bytes(vec![1])).wait().unwrap();
        // A create's leftover (empty, or its extent of zeros) under each of the next two
        // numbers: each rotation makes its segment over it.
        std::fs::write(segment_path(dir.path(), 6), []).unwrap();
        std::fs::write(segment_path(dir.path(), 7), vec![0; EXTENT_BYTES as usize]).unwrap();
        // A loss accepted beside a leftover goes with it: kept, it would accept a later
        // cut of the segment made there.
        let accepted = loss_accepted_path(&segment_path(dir.path(), 6));
        std::fs::write(&accepted, []).unwrap();
        assert_eq!(j.rotate().unwrap(), 6);
        assert!(!accepted.exists());
        j.append(Bytes(vec![2])).wait().unwrap();
        assert_eq!(j.rotate().unwrap(), 7);
        j.append(Bytes(vec![3])).wait().unwrap();
        drop(j);
        let read = |n: u64| {
            let mut got = Vec::new();
            let report = read_segment(&segment_path(dir.path(), n), n, &test_key(), |p| {
                got.push(p.to_vec());
                Ok(())
            })
            .unwrap();
            (got, report.opened, report.closed)
        };
        assert_eq!(read(5), (vec![vec![1]], true, true));
        assert_eq!(read(6), (vec![vec![2]], true, true));
        assert_eq!(read(7), (vec![vec![3]], true, false));
    }

    #[test]
    fn many_concurrent_appenders_share_batches() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        j.append(Bytes(vec![t, i])).wait().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(j.stats().records.load(Ordering::Relaxed), 400);
        assert!(j.stats().batches.load(Ordering::Relaxed) <= 400);
        drop(j);
        let (records, _) = read_all(&segment_path(dir.path(), 1));
        assert_eq!(records.len(), 400);
    }

    /// Every frame of `path` up to its records' end: where it begins, and its payload.
    fn frames(path: &Path) -> Vec<(u64, Vec<u8>)> {
        let mut at = 0;
        let mut out = Vec::new();
        read_records(path, |p| {
            out.push((at, p.to_vec()));
            at += 8 + p.len() as u64;
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn every_batch_ends_with_a_marker_naming_where_it_began() {
        use crate::store::marker::batch_start;
        use crate::store::segment::sync_gate::{self, Gate};
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Bytes>::start(dir.path(), 1, test_key()).unwrap();
        j.append(Bytes(vec![1; 10])).wait().unwrap();
        // While the second batch's sync is held, three more records queue: one batch.
        let held = sync_gate::set(dir.path(), Gate::Held);
        let second = j.append(Bytes(vec![2; 10]));
        sync_gate::wait_until_one_is_held(dir.path());
        let queued: Vec<_> = (3..=5u8).map(|i| j.append(Bytes(vec![i; 10]))).collect();
        drop(held);
        second.wait().unwrap();
        for d in queued {
            d.wait().unwrap();
        }
        drop(j);
        let path = segment_path(dir.path(), 1);
        let got: Vec<_> = frames(&path)
            .into_iter()
            .map(|(at, p)| (at, batch_start(&p).ok_or(p[0])))
            .collect();
        let m = MARKER;
        let o = OPENING;
        assert_eq!(
            got,
            vec![
                (0, Ok(crate::store::marker::OPENS_SEGMENT)),
                (o, Err(1)),
                (o + 18, Ok(o)),
                (o + 18 + m, Err(2)),
                (o + 36 + m, Ok(o + 18 + m)),
                (o + 36 + 2 * m, Err(3)),
                (o + 54 + 2 * m, Err(4)),
                (o + 72 + 2 * m, Err(5)),
                (o + 90 + 2 * m, Ok(o + 36 + 2 * m)),
            ],
            "records (Err: their first byte) and markers (Ok: their batch's start)"
        );
        assert_eq!(read_all(&path).0.len(), 5, "markers are not records");

        // Damage in the last batch, even with records of it intact after the bad one (a
        // power loss that wrote its pages out of order): no later batch was written, so
        // it was never acknowledged.
        let later = |damaged_record: u64| {
            let copy = dir.path().join("copy.log");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[damaged_record as usize + 9] ^= 0x40;
            std::fs::write(&copy, &bytes).unwrap();
            let report = read_segment(&copy, 1, &test_key(), |_| Ok(())).unwrap();
            assert_eq!(report.good_bytes, damaged_record);
            crate::store::marker::later_commits(&copy, 1, report.good_bytes, &test_key()).unwrap()
        };
        assert_eq!(later(o + 36 + 2 * m), 0, "the last batch's first record");
        assert_eq!(
            read::intact_records_after_the_first(
                &std::fs::read(&path).unwrap()[(o + 36 + 2 * m) as usize..]
            ),
            2
        );
        // Damage in an earlier batch: a later one was written once its sync had returned.
        assert_eq!(later(o + 18 + m), 1, "the second batch");
        assert_eq!(later(o), 2, "the first batch");
    }
}
