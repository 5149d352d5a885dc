//! The global queue: actors handed off by a thread that could not (or may no
//! longer) run them, waiting for any worker to pick them up.
//!
//! An actor is in the global queue at most once at a time (being there is
//! what owning its run means while nobody executes it), so entries are few
//! and pushes are rare compared to jobs: a short lock around a `VecDeque`,
//! with an atomic length so idle workers check it without locking.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Something the global queue can run: an actor's queue, type-erased.
pub(super) trait Runnable: Send + Sync {
    /// Executes queued jobs on this thread until the queue is empty or
    /// `slice_end` has passed, handing the rest back to the global queue.
    fn run(self: Arc<Self>, slice_end: Instant);
}

/// FIFO of actors waiting for a worker.
pub(super) struct GlobalQueue {
    queue: Mutex<VecDeque<Arc<dyn Runnable>>>,
    /// Mirror of `queue.len()`, written under the lock.
    len: AtomicUsize,
}

impl GlobalQueue {
    pub(super) const fn new() -> Self {
        GlobalQueue {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    /// Appends `runnable`; returns true if the queue was empty before (the
    /// moment a worker needs waking).
    pub(super) fn push(&self, runnable: Arc<dyn Runnable>) -> bool {
        let mut queue = self.queue.lock();
        let was_empty = queue.is_empty();
        queue.push_back(runnable);
        self.len.store(queue.len(), Ordering::Release);
        was_empty
    }

    /// Takes the oldest entry, if any.
    pub(super) fn pop(&self) -> Option<Arc<dyn Runnable>> {
        if self.is_empty() {
            return None;
        }
        let mut queue = self.queue.lock();
        let runnable = queue.pop_front();
        self.len.store(queue.len(), Ordering::Release);
        runnable
    }

    /// True if nothing waits (a snapshot).
    pub(super) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Number of waiting actors (a snapshot).
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}
