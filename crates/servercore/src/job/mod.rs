//! The job layer: [`JobQueue`] / [`Actor`] actors, the global queue and the
//! timer (the course's `JobQueue`, `GlobalQueue` and `JobTimer`).
//!
//! An actor is a queue of jobs (closures) that never run concurrently and run
//! in push order, so the state they touch needs no lock of its own. Nobody
//! owns a thread for an actor: whoever makes an empty queue non-empty runs
//! it, on its own thread, for at most one time slice:
//!
//! - the **first pusher** (the thread whose push made the queue non-empty)
//!   runs the queue itself, unless it is already running a queue (no nesting)
//!   or its time slice is spent; then the queue goes to the global queue;
//! - a thread running a queue executes jobs until the queue is empty or its
//!   time slice ends, then hands the rest to the global queue;
//! - I/O workers take queues from the global queue between I/O rounds, and
//!   hand out due timers (`do_timer` jobs) first.
//!
//! When no I/O worker is attached (a program that uses actors without a
//! running service, or a test), one internal fallback thread does the
//! workers' part, so jobs and timers always run.
//!
//! ```
//! use std::time::Duration;
//! use servercore::job::Actor;
//!
//! #[derive(Default)]
//! struct Room {
//!     members: Vec<u64>,
//! }
//!
//! let room = Actor::new(Room::default());
//! room.do_async(|room| room.members.push(7));
//! room.do_timer(Duration::from_millis(10), |room| room.members.retain(|&id| id != 7));
//! ```
//!
//! Submodules (private; everything public is re-exported here):
//! - `queue`: [`JobQueue`], [`Actor`] and their weak handles: pushing, the
//!   first-pusher rule, executing a queue for one slice;
//! - `context`: the per-thread execution context (running a queue? slice
//!   end? which worker?);
//! - `global`: the global queue of actors handed off for any worker;
//! - `timer`: the timer heap of `do_timer` jobs and their distribution;
//! - `scheduler`: ties global queue, timer and workers together: waking one
//!   worker when needed, the fallback thread, `run_slice`;
//! - `worker`: the crate-visible worker API the service layer calls
//!   (`attach_worker`, `WorkerAttachment::run_slice`).

#![forbid(unsafe_code)]

mod context;
mod global;
mod queue;
mod scheduler;
mod timer;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use queue::{Actor, JobQueue, WeakActor, WeakJobQueue};
pub(crate) use worker::{attach_worker, WorkerAttachment};

/// Actors waiting in the global queue for a worker right now: the process's
/// job-queue depth (one atomic load, no lock; what an admin page shows).
pub fn global_queue_depth() -> usize {
    scheduler::SCHEDULER.global_len()
}

/// Wakes up to `n` I/O workers other than the calling thread, so that
/// actors just handed to the global queue (with [`Actor::post`], say) start
/// on several workers side by side rather than one after another on the
/// first one woken. A push wakes one worker by itself; this is for a burst
/// of independent jobs, such as a game tick's one job per region. Costs one
/// wake-up per worker woken; does nothing when no worker is attached.
pub fn wake_workers(n: usize) {
    scheduler::SCHEDULER.wake_many(n);
}

/// The time slice a thread gets when it runs a queue as its first pusher
/// outside of a worker's slice (a session callback, a plain thread), and the
/// slice of the fallback thread.
///
/// After each job, the running thread checks its slice; once it is spent,
/// the rest of the queue goes to the global queue for a worker. A single job
/// is never interrupted, so a slice can overrun by one job.
pub const DEFAULT_TIME_SLICE: Duration = Duration::from_millis(10);
