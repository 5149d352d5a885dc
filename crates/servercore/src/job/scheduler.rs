//! The scheduler: the global queue, the timer and the threads that serve
//! them (attached I/O workers, or the fallback thread when none is
//! attached), and the rule for waking them.
//!
//! Waking is edge-triggered, so a steady stream of jobs costs no wake-ups:
//! one worker is woken when the global queue goes from empty to non-empty,
//! or when a timer becomes the earliest. The thread that caused it is never
//! the one woken: an attached worker (or the fallback thread) calls
//! `run_slice` again before it blocks, and `run_slice` reports leftover work
//! and the earliest timer in its return value.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Instant;

use parking_lot::Mutex;

use super::context::{self, SliceGuard};
use super::global::{GlobalQueue, Runnable};
use super::timer::{Fire, JobTimer};
use super::DEFAULT_TIME_SLICE;
use crate::driver::Wake;

/// The process-wide scheduler behind [`Actor::new`](super::Actor::new) and
/// `attach_worker` (the course's `GGlobalQueue` and `GJobTimer`).
pub(super) static SCHEDULER: Scheduler = Scheduler::new();

/// Source of worker ids (attached workers and fallback threads alike);
/// 0 means "no worker".
static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

struct WorkerEntry {
    id: u64,
    waker: Arc<dyn Wake>,
}

struct Fallback {
    id: u64,
    thread: Thread,
}

/// A global queue, a timer, and the threads that serve them.
pub(crate) struct Scheduler {
    global: GlobalQueue,
    timer: JobTimer,
    /// Attached I/O workers, in attach order.
    workers: Mutex<Vec<WorkerEntry>>,
    /// Round-robin cursor over `workers`.
    next_wake: AtomicUsize,
    /// Started on the first wake-up needed while no worker is attached.
    fallback: OnceLock<Fallback>,
}

impl Scheduler {
    pub(super) const fn new() -> Self {
        Scheduler {
            global: GlobalQueue::new(),
            timer: JobTimer::new(),
            workers: Mutex::new(Vec::new()),
            next_wake: AtomicUsize::new(0),
            fallback: OnceLock::new(),
        }
    }

    /// Puts an actor whose run this thread owns into the global queue.
    pub(super) fn hand_off(&'static self, runnable: Arc<dyn Runnable>) {
        if self.global.push(runnable) {
            self.wake_one();
        }
    }

    /// Adds a timer entry due at `due`.
    pub(super) fn add_timer(&'static self, due: Instant, fire: Fire) {
        if self.timer.add(due, fire) {
            self.wake_one();
        }
    }

    /// One worker's turn at the job layer: distributes due timers, then runs
    /// actors from the global queue until `slice_end` or until it is empty.
    ///
    /// Returns when to call again at the latest: now if actors are left in
    /// the global queue, else the earliest timer's due time, else `None`.
    pub(super) fn run_slice(&self, slice_end: Instant) -> Option<Instant> {
        let _slice = SliceGuard::enter(slice_end, false);
        self.timer.distribute(Instant::now());
        while Instant::now() < slice_end {
            match self.global.pop() {
                Some(runnable) => runnable.run(slice_end),
                None => break,
            }
        }
        if !self.global.is_empty() {
            return Some(Instant::now());
        }
        self.timer.next_due()
    }

    /// Registers an I/O worker; returns its id.
    pub(super) fn attach(&'static self, waker: Arc<dyn Wake>) -> u64 {
        let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
        self.workers.lock().push(WorkerEntry { id, waker });
        id
    }

    /// Unregisters worker `id`. If work is waiting, another worker (or the
    /// fallback thread, when this was the last worker) is woken to take
    /// over whatever this one was about to do.
    pub(super) fn detach(&'static self, id: u64) {
        self.workers.lock().retain(|w| w.id != id);
        if !self.global.is_empty() || !self.timer.is_empty() {
            self.wake_one();
        }
    }

    /// Number of attached workers.
    #[cfg(test)]
    pub(super) fn attached_workers(&self) -> usize {
        self.workers.lock().len()
    }

    /// Number of actors waiting in the global queue.
    pub(super) fn global_len(&self) -> usize {
        self.global.len()
    }

    /// Wakes one attached worker other than the calling thread, round-robin;
    /// with none attached, the fallback thread (started on first use).
    fn wake_one(&'static self) {
        let me = context::current_worker();
        let waker = {
            let workers = self.workers.lock();
            let n = workers.len();
            if n == 0 {
                None
            } else {
                let start = self.next_wake.fetch_add(1, Ordering::Relaxed);
                let picked = (0..n)
                    .map(|i| &workers[(start + i) % n])
                    .find(|w| w.id != me)
                    .map(|w| Arc::clone(&w.waker));
                if picked.is_none() {
                    // The caller is the only worker: it runs `run_slice`
                    // before it blocks, which sees the work.
                    return;
                }
                picked
            }
        };
        match waker {
            Some(waker) => waker.wake(),
            None => {
                let fallback = self.fallback();
                if fallback.id != me {
                    fallback.thread.unpark();
                }
            }
        }
    }

    /// Wakes up to `n` attached workers other than the calling thread
    /// (round-robin), so that work just handed out starts on several at
    /// once. Without attached workers it does nothing: the fallback thread
    /// is woken by the hand-off itself.
    pub(super) fn wake_many(&'static self, n: usize) {
        if n == 0 {
            return;
        }
        let me = context::current_worker();
        let wakers: Vec<Arc<dyn Wake>> = {
            let workers = self.workers.lock();
            let count = workers.len();
            if count == 0 {
                return;
            }
            let start = self.next_wake.fetch_add(n, Ordering::Relaxed);
            (0..count)
                .map(|i| &workers[(start + i) % count])
                .filter(|w| w.id != me)
                .take(n)
                .map(|w| Arc::clone(&w.waker))
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// The fallback thread, started on first call.
    fn fallback(&'static self) -> &'static Fallback {
        self.fallback.get_or_init(|| {
            let id = NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed);
            let handle = thread::Builder::new()
                .name("servercore-jobs".to_owned())
                .spawn(move || self.fallback_loop(id))
                .expect("servercore: cannot spawn the job fallback thread");
            tracing::debug!("job fallback thread started (no I/O worker attached)");
            Fallback {
                id,
                thread: handle.thread().clone(),
            }
        })
    }

    /// The fallback thread: the workers' part of the job layer for as long
    /// as no worker is attached; parked otherwise.
    fn fallback_loop(&'static self, id: u64) {
        context::set_current_worker(id);
        loop {
            if !self.workers.lock().is_empty() {
                // Workers serve the job layer; `detach` of the last one or
                // the next wake-up with none attached unparks us.
                thread::park();
                continue;
            }
            let now = Instant::now();
            match self.run_slice(now + DEFAULT_TIME_SLICE) {
                Some(next) => {
                    let now = Instant::now();
                    if next > now {
                        thread::park_timeout(next - now);
                    }
                }
                None => thread::park(),
            }
        }
    }
}
