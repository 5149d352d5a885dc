//! The worker API the service layer calls: an I/O worker attaches itself
//! (with its driver's waker) and gives the job layer a turn between I/O
//! rounds, the course's `DoWorkerJob`:
//!
//! ```text
//! let jobs = attach_worker(driver.waker());
//! loop {
//!     dispatch I/O completions (poll timeout bounded by `next`)
//!     let next = jobs.run_slice(Instant::now() + slice);
//! }
//! ```

use std::sync::Arc;
use std::time::Instant;

use super::context;
use super::scheduler::{Scheduler, SCHEDULER};
use crate::driver::Wake;

/// Registers an I/O worker with the process-wide job scheduler. `waker`
/// wakes the worker's driver; the job layer calls it (sparingly: only when
/// the global queue goes from empty to non-empty, or a new timer becomes the
/// earliest, and never for the thread that caused it) so that the worker
/// calls [`WorkerAttachment::run_slice`] soon.
///
/// While at least one worker is attached, the fallback thread stays idle.
/// Dropping the attachment unregisters the worker.
pub(crate) fn attach_worker(waker: Arc<dyn Wake>) -> WorkerAttachment {
    WorkerAttachment::new(&SCHEDULER, waker)
}

/// An attached I/O worker; dropping it detaches the worker (another worker,
/// or the fallback thread, takes over pending work).
///
/// Use it from the worker's own thread: `run_slice` records that thread as
/// this worker, so that work the worker causes itself does not wake it.
pub(crate) struct WorkerAttachment {
    scheduler: &'static Scheduler,
    id: u64,
}

impl WorkerAttachment {
    pub(super) fn new(scheduler: &'static Scheduler, waker: Arc<dyn Wake>) -> Self {
        WorkerAttachment {
            scheduler,
            id: scheduler.attach(waker),
        }
    }

    /// The worker's turn at the job layer, between I/O dispatches: hands out
    /// due timers (pushes their jobs into their actors' queues), then runs
    /// actors from the global queue until `slice_end` or until the global
    /// queue is empty. Jobs pushed meanwhile by this thread follow the
    /// first-pusher rule within this slice.
    ///
    /// Returns when to call it again at the latest, to bound the worker's
    /// poll timeout: now if actors are still waiting (the slice ended first),
    /// else the earliest pending timer's due time, else `None` (sleep until
    /// woken).
    pub(crate) fn run_slice(&self, slice_end: Instant) -> Option<Instant> {
        context::set_current_worker(self.id);
        self.scheduler.run_slice(slice_end)
    }
}

impl Drop for WorkerAttachment {
    fn drop(&mut self) {
        if context::current_worker() == self.id {
            context::set_current_worker(0);
        }
        self.scheduler.detach(self.id);
    }
}

impl std::fmt::Debug for WorkerAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerAttachment")
            .field("id", &self.id)
            .finish()
    }
}
