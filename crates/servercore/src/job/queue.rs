//! Actors: [`JobQueue`] (jobs are plain closures) and [`Actor<T>`] (jobs get
//! `&mut T`, the state the actor owns), their weak handles, and the queue
//! core both share: the lock-free push, the first-pusher rule and executing
//! a queue for one time slice.
//!
//! Ownership protocol: `count` is the number of jobs pushed and not yet
//! finished. The thread whose `fetch_add` takes it from 0 to 1 owns the run
//! of the queue: it executes it or hands it to the global queue (whence one
//! worker takes over the ownership). Only the owner pops and decrements; the
//! decrement that brings `count` back to 0 ends the ownership. So at most one
//! thread executes a queue at any time, and it executes jobs in the order of
//! the underlying FIFO.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use parking_lot::{Mutex, MutexGuard};

use super::context::{self, Placement, SliceGuard};
use super::global::Runnable;
use super::scheduler::{Scheduler, SCHEDULER};

/// One job of an actor whose state is `T`.
type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Times the state lock of a queue was found taken (a broken ownership
/// protocol: two threads executing one queue). Tests assert it stays 0.
#[cfg(test)]
pub(super) static STATE_CONTENDED: AtomicUsize = AtomicUsize::new(0);

/// The shared part of an actor.
struct Core<T> {
    jobs: SegQueue<Job<T>>,
    /// Jobs pushed and not yet finished (see the module docs).
    count: AtomicUsize,
    /// The actor's state. Only the queue's owner locks it, so it is never
    /// contended; it is what lets the state move between threads safely.
    state: Mutex<T>,
    scheduler: &'static Scheduler,
}

impl<T: Send + 'static> Core<T> {
    /// Pushes `job`; if the queue was empty, runs it here (when `inline` and
    /// the first-pusher rule allow) or hands it to the global queue.
    fn push(self: &Arc<Self>, job: Job<T>, inline: bool) {
        // Count first, then push: `count` never undercounts the FIFO, so the
        // owner never ends its run while a job is in flight.
        let prev = self.count.fetch_add(1, Ordering::AcqRel);
        self.jobs.push(job);
        if prev != 0 {
            return; // the owner (running, or waiting in the global queue) will see it
        }
        let placement = if inline {
            context::placement()
        } else {
            Placement::HandOff
        };
        match placement {
            Placement::Here(slice_end) => self.execute(slice_end),
            Placement::HandOff => self
                .scheduler
                .hand_off(Arc::clone(self) as Arc<dyn Runnable>),
        }
    }

    /// Runs jobs until the queue is empty or `slice_end` has passed; then
    /// hands the rest to the global queue. The caller owns the run.
    fn execute(self: &Arc<Self>, slice_end: Instant) {
        let _slice = SliceGuard::enter(slice_end, true);
        let mut state = self.lock_state();
        loop {
            let job = self.pop_next();
            run_job(job, &mut state);
            if self.count.load(Ordering::Acquire) == 1 {
                // Probably the last job: unlock before giving up the
                // ownership, so the next owner never waits for the lock.
                drop(state);
                if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                    return;
                }
                state = self.lock_state(); // more came in meanwhile; still ours
            } else {
                // count >= 2 and only the owner decrements: stays >= 1.
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
            if Instant::now() >= slice_end {
                drop(state);
                self.scheduler
                    .hand_off(Arc::clone(self) as Arc<dyn Runnable>);
                return;
            }
        }
    }

    /// Pops the next job; `count` says there is one, but its pusher may be
    /// between its `fetch_add` and its push for a moment.
    fn pop_next(&self) -> Job<T> {
        let mut spins = 0u32;
        loop {
            if let Some(job) = self.jobs.pop() {
                return job;
            }
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, T> {
        match self.state.try_lock() {
            Some(guard) => guard,
            None => {
                #[cfg(test)]
                STATE_CONTENDED.fetch_add(1, Ordering::Relaxed);
                self.state.lock()
            }
        }
    }
}

impl<T: Send + 'static> Runnable for Core<T> {
    fn run(self: Arc<Self>, slice_end: Instant) {
        self.execute(slice_end);
    }
}

/// Runs one job; a panic is logged and the queue goes on with its next job
/// (the state keeps whatever the job left in it).
fn run_job<T>(job: Job<T>, state: &mut T) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| job(state))) {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<non-string panic payload>");
        tracing::error!(panic = message, "a job panicked; its queue goes on");
    }
}

/// An actor owning a state `T`: a queue of jobs that each get `&mut T`,
/// never run concurrently, and run in push order.
///
/// The handle is cheap to clone (an `Arc` inside) and `Send + Sync`: push
/// from any thread, for example from session callbacks on I/O workers. The
/// state lives as long as the last handle (or a pending job); timers hold
/// only a weak reference, so [`do_timer`](Actor::do_timer) jobs of a dropped
/// actor are skipped.
///
/// Where a job runs follows the first-pusher rule (see the [module
/// docs](super)): often right inside `do_async`, on the pushing thread. So a
/// job must not block on another job of the same actor, and must not be
/// pushed while holding a lock that one of the actor's jobs takes.
///
/// A job that panics is logged and skipped; the actor goes on with the
/// state as the job left it.
///
/// ```
/// use std::time::Duration;
/// use servercore::job::{Actor, WeakActor};
///
/// struct Room {
///     chat: Vec<String>,
///     ticks: u32,
/// }
///
/// /// A room that ticks every 50 ms for as long as it exists: the timer
/// /// chain holds only a weak handle, so dropping the room ends it.
/// fn tick(room: WeakActor<Room>) {
///     if let Some(actor) = room.upgrade() {
///         actor.do_timer(Duration::from_millis(50), move |state| {
///             state.ticks += 1;
///             tick(room);
///         });
///     }
/// }
///
/// let room = Actor::new(Room { chat: Vec::new(), ticks: 0 });
/// room.do_async(|room| room.chat.push("hello".to_owned()));
/// tick(room.downgrade());
/// ```
pub struct Actor<T> {
    core: Arc<Core<T>>,
}

impl<T: Send + 'static> Actor<T> {
    /// Creates an actor owning `state`.
    pub fn new(state: T) -> Self {
        Self::with_scheduler(state, &SCHEDULER)
    }

    /// Creates an actor scheduled by `scheduler` (tests use private ones).
    pub(super) fn with_scheduler(state: T, scheduler: &'static Scheduler) -> Self {
        Actor {
            core: Arc::new(Core {
                jobs: SegQueue::new(),
                count: AtomicUsize::new(0),
                state: Mutex::new(state),
                scheduler,
            }),
        }
    }

    /// Queues `f` to run with the actor's state, after every job pushed
    /// before it.
    ///
    /// If this push made the queue non-empty and the calling thread is not
    /// already running a queue and has time left in its slice, `f` (and any
    /// job pushed meanwhile) runs right here before `do_async` returns, for
    /// at most one time slice; otherwise the queue goes to the global queue
    /// and a worker runs it.
    pub fn do_async(&self, f: impl FnOnce(&mut T) + Send + 'static) {
        self.core.push(Box::new(f), true);
    }

    /// Queues `f` to run with the actor's state no earlier than `delay` from
    /// now. Timer jobs are pushed in due order (ties in call order); a timer
    /// job of a dropped actor is skipped (dropped unrun at its due time). A
    /// delay too large to represent never fires.
    pub fn do_timer(&self, delay: Duration, f: impl FnOnce(&mut T) + Send + 'static) {
        let Some(due) = Instant::now().checked_add(delay) else {
            return;
        };
        let weak = Arc::downgrade(&self.core);
        self.core.scheduler.add_timer(
            due,
            Box::new(move || {
                if let Some(core) = weak.upgrade() {
                    core.push(Box::new(f), false);
                }
            }),
        );
    }

    /// Queues `f` like [`do_async`](Actor::do_async), but never runs it on
    /// the calling thread: the queue goes to the global queue if it was
    /// empty, and a worker runs it. For threads that must not run game
    /// logic themselves, such as a database thread posting results back.
    pub fn post(&self, f: impl FnOnce(&mut T) + Send + 'static) {
        self.core.push(Box::new(f), false);
    }

    /// A weak handle that does not keep the actor alive: store it in jobs
    /// and timers that should not extend the actor's life (or in the state
    /// itself, which would otherwise form a cycle).
    pub fn downgrade(&self) -> WeakActor<T> {
        WeakActor {
            core: Arc::downgrade(&self.core),
        }
    }
}

impl<T> Actor<T> {
    /// Number of jobs pushed and not yet finished (a snapshot; includes the
    /// running job).
    pub fn pending_jobs(&self) -> usize {
        self.core.count.load(Ordering::Relaxed)
    }

    /// True if both handles are the same actor.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }
}

impl<T> Clone for Actor<T> {
    fn clone(&self) -> Self {
        Actor {
            core: Arc::clone(&self.core),
        }
    }
}

impl<T: Default + Send + 'static> Default for Actor<T> {
    fn default() -> Self {
        Actor::new(T::default())
    }
}

impl<T> fmt::Debug for Actor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Actor")
            .field("pending_jobs", &self.pending_jobs())
            .finish_non_exhaustive()
    }
}

/// A weak handle to an [`Actor`]: does not keep it alive.
pub struct WeakActor<T> {
    core: Weak<Core<T>>,
}

impl<T> WeakActor<T> {
    /// The actor, if it is still alive.
    pub fn upgrade(&self) -> Option<Actor<T>> {
        self.core.upgrade().map(|core| Actor { core })
    }
}

impl<T> Clone for WeakActor<T> {
    fn clone(&self) -> Self {
        WeakActor {
            core: Weak::clone(&self.core),
        }
    }
}

impl<T> fmt::Debug for WeakActor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakActor").finish_non_exhaustive()
    }
}

/// An actor without state of its own: a queue of plain closures that never
/// run concurrently and run in push order (the course's `JobQueue`).
///
/// Cheap to clone, `Send + Sync`; it is an [`Actor<()>`](Actor) and follows
/// the same rules. Use [`Actor<T>`] when the jobs share state.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use servercore::job::JobQueue;
///
/// let queue = JobQueue::new();
/// let hits = Arc::new(AtomicU32::new(0));
/// let h = Arc::clone(&hits);
/// queue.do_async(move || {
///     h.fetch_add(1, Ordering::Relaxed);
/// });
/// ```
#[derive(Clone, Default)]
pub struct JobQueue {
    actor: Actor<()>,
}

impl JobQueue {
    /// Creates an empty queue.
    pub fn new() -> Self {
        JobQueue {
            actor: Actor::new(()),
        }
    }

    /// Creates a queue scheduled by `scheduler` (tests use private ones).
    #[cfg(test)]
    pub(super) fn with_scheduler(scheduler: &'static Scheduler) -> Self {
        JobQueue {
            actor: Actor::with_scheduler((), scheduler),
        }
    }

    /// Queues `f` after every job pushed before it; see
    /// [`Actor::do_async`] for where it runs.
    pub fn do_async(&self, f: impl FnOnce() + Send + 'static) {
        self.actor.do_async(move |_| f());
    }

    /// Queues `f` to run no earlier than `delay` from now; see
    /// [`Actor::do_timer`].
    pub fn do_timer(&self, delay: Duration, f: impl FnOnce() + Send + 'static) {
        self.actor.do_timer(delay, move |_| f());
    }

    /// Queues `f` without ever running it on the calling thread (see
    /// [`Actor::post`]).
    pub fn post(&self, f: impl FnOnce() + Send + 'static) {
        self.actor.post(move |_| f());
    }

    /// A weak handle that does not keep the queue alive.
    pub fn downgrade(&self) -> WeakJobQueue {
        WeakJobQueue {
            actor: self.actor.downgrade(),
        }
    }

    /// Number of jobs pushed and not yet finished (a snapshot).
    pub fn pending_jobs(&self) -> usize {
        self.actor.pending_jobs()
    }

    /// True if both handles are the same queue.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.actor.ptr_eq(&other.actor)
    }
}

impl fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("pending_jobs", &self.pending_jobs())
            .finish_non_exhaustive()
    }
}

/// A weak handle to a [`JobQueue`]: does not keep it alive.
#[derive(Clone, Debug)]
pub struct WeakJobQueue {
    actor: WeakActor<()>,
}

impl WeakJobQueue {
    /// The queue, if it is still alive.
    pub fn upgrade(&self) -> Option<JobQueue> {
        self.actor.upgrade().map(|actor| JobQueue { actor })
    }
}
