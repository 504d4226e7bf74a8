//! A clock finer than tokio's millisecond: wakes each connection when its next instant is
//! due (loadgen's open loop: its next request; the simulator: its next delayed answer), to
//! within tens of microseconds.
//!
//! tokio's timer wheel ticks in milliseconds and rounds every deadline up to the next
//! tick, so requests due every 400 µs left in bursts up to a millisecond late; measured
//! from their due time (as an open loop must, see `mod.rs`), that lateness read as the
//! peer's latency: 0.96 ms p50 at 1,000/s against a simulator that answers in 0.09 ms
//! (2026-12-04). Here one thread sleeps until the earliest instant any connection waits
//! for (`park_timeout`, a futex wait on the kernel's high-resolution timers) and wakes
//! that connection's task. Each connection has one slot, overwritten by its next wait, so
//! a wait dropped unfinished (the connection woke for an answer first) costs at most one
//! needless wake-up at its old instant, never a growing queue. Each wake-up scans every
//! slot: a few thousand connections at most, against the cost of the wake-up itself.
//! Connections known at start take a slot by number ([`Pacer::slot`]); those that come and
//! go (the simulator's) lease one for their life ([`Pacer::lease`]), and a slot given back
//! is leased again.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use parking_lot::Mutex;

/// The clock's thread; stopped when dropped.
pub(crate) struct Pacer {
    /// What the thread and the connections share.
    inner: Arc<Inner>,
    /// The thread, joined on drop (`None` once joined).
    thread: Option<JoinHandle<()>>,
}

/// One connection's handle on the clock.
#[derive(Clone)]
pub(crate) struct PacerSlot {
    /// The clock this slot belongs to.
    inner: Arc<Inner>,
    /// This connection's place in [`State::slots`].
    index: usize,
}

struct Inner {
    /// The waits, and the thread's plan; taken briefly by the thread and by each wait.
    state: Mutex<State>,
    /// Set when the [`Pacer`] is dropped: the thread returns at its next look.
    stop: AtomicBool,
    /// The clock's thread, to unpark when a wait comes earlier than its plan.
    thread: std::sync::OnceLock<Thread>,
}

#[derive(Default)]
struct State {
    /// Per connection: when it wants to be woken, and its task.
    slots: Vec<Option<(Instant, Waker)>>,
    /// Slots given back by their lease, to lease again.
    free: Vec<usize>,
    /// When the clock's thread will next look at the slots (`None`: when unparked).
    planned: Option<Instant>,
}

impl Pacer {
    /// A clock for `connections` slots, its thread started.
    pub(crate) fn start(connections: usize) -> std::io::Result<Pacer> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                slots: vec![None; connections],
                free: Vec::new(),
                planned: None,
            }),
            stop: AtomicBool::new(false),
            thread: std::sync::OnceLock::new(),
        });
        let run = inner.clone();
        let thread = std::thread::Builder::new()
            .name("vpan-pacer".into())
            .spawn(move || run.run())?;
        let _ = inner.thread.set(thread.thread().clone());
        Ok(Pacer {
            inner,
            thread: Some(thread),
        })
    }

    /// The handle of connection `index` (below the `connections` it was started with).
    pub(crate) fn slot(&self, index: usize) -> PacerSlot {
        PacerSlot {
            inner: self.inner.clone(),
            index,
        }
    }

    /// A slot of its own for a connection that comes and goes, until the lease is dropped.
    pub(crate) fn lease(&self) -> Lease {
        let mut state = self.inner.state.lock();
        let index = state.free.pop().unwrap_or_else(|| {
            state.slots.push(None);
            state.slots.len() - 1
        });
        Lease(self.slot(index))
    }
}

/// A slot leased by [`Pacer::lease`]: its wait is forgotten and the slot given back when
/// dropped.
pub(crate) struct Lease(PacerSlot);

impl std::ops::Deref for Lease {
    type Target = PacerSlot;

    fn deref(&self) -> &PacerSlot {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.0.inner.state.lock();
        if let Some(slot) = state.slots.get_mut(self.0.index) {
            *slot = None;
        }
        state.free.push(self.0.index);
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PacerSlot {
    /// Resolves at `due` or soon after, never before.
    pub(crate) fn sleep_until(&self, due: Instant) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            self.arm(due, cx.waker());
            Poll::Pending
        })
    }

    fn arm(&self, due: Instant, waker: &Waker) {
        let mut state = self.inner.state.lock();
        // In range by construction (`Pacer::slot`): a slot out of it would never be woken.
        let slot = &mut state.slots[self.index];
        if !matches!(slot, Some((t, w)) if *t == due && w.will_wake(waker)) {
            *slot = Some((due, waker.clone()));
        }
        if state.planned.is_none_or(|p| due < p) {
            state.planned = Some(due);
            drop(state);
            self.inner.unpark();
        }
    }
}

impl Inner {
    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The clock's thread: wakes what is due, then sleeps until the earliest wait left.
    fn run(&self) {
        // The kernel may delay a sleeping thread's wake-up by its timer slack (50 µs by
        // default) to group it with others; this thread's whole job is to be on time. Best
        // effort: a kernel that refuses leaves the default.
        #[cfg(target_os = "linux")]
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
        let mut to_wake = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let next = {
                let mut state = self.state.lock();
                let mut next: Option<Instant> = None;
                for slot in &mut state.slots {
                    match slot {
                        Some((t, _)) if *t <= now => {
                            to_wake.extend(slot.take().map(|(_, w)| w));
                        }
                        Some((t, _)) => next = Some(next.map_or(*t, |n| n.min(*t))),
                        None => {}
                    }
                }
                state.planned = next;
                next
            };
            to_wake.drain(..).for_each(Waker::wake);
            // A wait armed meanwhile, earlier than `next`, unparks this thread: the park
            // then returns at once (unpark before park is kept). The sleep is measured from
            // the clock read now, after the lock and the wakes, not from `now`: else it
            // would overshoot by their time.
            match next {
                Some(t) => std::thread::park_timeout(t.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Task = tokio::task::JoinHandle<()>;

    /// Far more than any wait here: a lost wake-up fails the test instead of hanging it.
    const GUARD: Duration = Duration::from_secs(20);

    /// Waits on `slot` for each instant of `schedule` (offsets from `start`) in turn, in a
    /// task of its own, and checks that none ends before its instant.
    fn follow(slot: PacerSlot, start: Instant, schedule: Vec<Duration>) -> Task {
        tokio::spawn(async move {
            for offset in schedule {
                let due = start + offset;
                slot.sleep_until(due).await;
                let woke = Instant::now();
                assert!(woke >= due, "woken {:?} early", due - woke);
            }
        })
    }

    /// Waits for `task` up to [`GUARD`]. Only the pacer can wake the task: the guard's
    /// timer polls the handle, never the task's waits, which would find their instants
    /// long past and end, hiding a lost wake-up.
    async fn within_guard(task: Task, what: &str) {
        tokio::time::timeout(GUARD, task)
            .await
            .unwrap_or_else(|_| panic!("{what} was never woken"))
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_on_interleaved_schedules_are_each_woken_for_every_wait_never_before_it() {
        let pacer = Pacer::start(3).unwrap();
        let start = Instant::now() + Duration::from_millis(5);
        // Three connections of an open loop at 7,500/s: each every 400 µs, a third apart.
        let tasks: Vec<_> = [0, 133, 267]
            .into_iter()
            .enumerate()
            .map(|(i, phase)| {
                let schedule = (0..200)
                    .map(|k| Duration::from_micros(400 * k + phase))
                    .collect();
                follow(pacer.slot(i), start, schedule)
            })
            .collect();
        for task in tasks {
            within_guard(task, "a connection's wait").await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_earlier_than_the_threads_plan_is_woken_at_its_own_instant() {
        let pacer = Pacer::start(2).unwrap();
        let start = Instant::now();
        let far_due = Duration::from_secs(2);
        let far = follow(pacer.slot(0), start, vec![far_due]);
        // Let the thread plan its sleep until the far instant before the nearer wait arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let near = follow(pacer.slot(1), start, vec![Duration::from_millis(50)]);
        within_guard(near, "the nearer wait").await;
        // Not a speed bound: had the thread slept on its old plan, the nearer wait would
        // have ended only with the far one, 1.95 s after its own instant.
        assert!(
            Instant::now() < start + far_due,
            "the nearer wait ended only when the far one was due"
        );
        within_guard(far, "the far wait").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leased_slots_are_woken_and_given_back_to_be_leased_again() {
        let pacer = Pacer::start(0).unwrap();
        let start = Instant::now();
        let (a, b) = (pacer.lease(), pacer.lease());
        assert_ne!(a.index, b.index);
        let first = a.index;
        // A lease dropped with its wait still armed: the wait is forgotten.
        a.arm(start + Duration::from_secs(60), Waker::noop());
        drop(a);
        let c = pacer.lease();
        assert_eq!(c.index, first, "the slot given back is leased again");
        assert_eq!(pacer.inner.state.lock().slots.len(), 2, "no slot more");
        let schedule = (1..50).map(|k| Duration::from_micros(300 * k)).collect();
        let slot = c.0.clone();
        within_guard(follow(slot, start, schedule), "a leased slot's wait").await;
        drop((b, c));
    }

    #[test]
    fn a_dropped_pacer_stops_its_thread() {
        let pacer = Pacer::start(1).unwrap();
        let slot = pacer.slot(0);
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(pacer);
            done.send(()).unwrap();
        });
        stopped
            .recv_timeout(GUARD)
            .expect("dropping the pacer did not return: its thread was not stopped");
        // The thread held the other reference: it has returned, not been left parked.
        assert_eq!(Arc::strong_count(&slot.inner), 1);
        // The slot outlives the clock: arming it does nothing, and nothing hangs.
        slot.arm(Instant::now() + Duration::from_secs(60), Waker::noop());
    }
}
