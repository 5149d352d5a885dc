//! The per-thread execution context: whether this thread is running a queue
//! right now, when its time slice ends, and which worker (if any) it is.
//!
//! The first-pusher rule reads it ([`placement`]); queue execution and
//! `run_slice` set it with guards that restore the previous state on drop.

use std::cell::Cell;
use std::time::Instant;

use super::DEFAULT_TIME_SLICE;

thread_local! {
    /// True while this thread executes a queue's jobs.
    static RUNNING: Cell<bool> = const { Cell::new(false) };
    /// End of this thread's current time slice, if it is inside one.
    static SLICE_END: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Id of the worker (attached I/O worker or fallback thread) this
    /// thread is, 0 for none.
    static WORKER: Cell<u64> = const { Cell::new(0) };
}

/// Where the first pusher of a queue runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// On this thread, now, until the given slice end.
    Here(Instant),
    /// In the global queue, for any worker.
    HandOff,
}

/// Applies the first-pusher rule to the calling thread: run here unless the
/// thread already runs a queue or its slice is spent. A thread outside any
/// slice gets a fresh [`DEFAULT_TIME_SLICE`].
pub(super) fn placement() -> Placement {
    if RUNNING.get() {
        return Placement::HandOff;
    }
    let now = Instant::now();
    match SLICE_END.get() {
        Some(end) if now >= end => Placement::HandOff,
        Some(end) => Placement::Here(end),
        None => Placement::Here(now + DEFAULT_TIME_SLICE),
    }
}

/// Marks the thread as inside a time slice (and, with `running`, as running a
/// queue) until dropped.
pub(super) struct SliceGuard {
    prev_running: bool,
    prev_end: Option<Instant>,
}

impl SliceGuard {
    /// Enters a slice ending at `end`; `running` says whether the thread now
    /// executes a queue.
    pub(super) fn enter(end: Instant, running: bool) -> Self {
        SliceGuard {
            prev_running: RUNNING.replace(running),
            prev_end: SLICE_END.replace(Some(end)),
        }
    }
}

impl Drop for SliceGuard {
    fn drop(&mut self) {
        RUNNING.set(self.prev_running);
        SLICE_END.set(self.prev_end);
    }
}

/// The worker id of the calling thread, 0 if it is no worker.
pub(super) fn current_worker() -> u64 {
    WORKER.get()
}

/// Records that the calling thread is worker `id` (0: none).
pub(super) fn set_current_worker(id: u64) {
    WORKER.set(id);
}
