//! The timer: `do_timer` jobs waiting for their due time, in a binary heap
//! ordered by (due, sequence number), and their distribution (pushing due
//! jobs into their actors' queues), done by one thread at a time.
//!
//! Entries are type-erased "fire" closures that hold only a `Weak` to their
//! actor: firing upgrades it and pushes the job, or drops the job if the
//! actor is gone.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Hands a due job to its actor (or drops it if the actor is gone).
pub(super) type Fire = Box<dyn FnOnce() + Send>;

struct Entry {
    due: Instant,
    seq: u64,
    fire: Fire,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` (a max-heap) yields the earliest
    /// (due, seq) first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct Heap {
    entries: BinaryHeap<Entry>,
    next_seq: u64,
}

/// The timer heap and its distribution flag (the course's `JobTimer`).
pub(super) struct JobTimer {
    heap: Mutex<Heap>,
    /// Set while one thread distributes (the course's `_distributing`).
    distributing: AtomicBool,
    /// Due entries popped by the distributor, fired outside the heap lock.
    /// Only the thread holding `distributing` touches it.
    scratch: Mutex<Vec<Entry>>,
}

impl JobTimer {
    pub(super) const fn new() -> Self {
        JobTimer {
            heap: Mutex::new(Heap {
                entries: BinaryHeap::new(),
                next_seq: 0,
            }),
            distributing: AtomicBool::new(false),
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Adds `fire`, due at `due`. Returns true if it is now the earliest
    /// entry (the moment a worker needs waking to shorten its wait).
    pub(super) fn add(&self, due: Instant, fire: Fire) -> bool {
        let mut heap = self.heap.lock();
        let seq = heap.next_seq;
        heap.next_seq += 1;
        heap.entries.push(Entry { due, seq, fire });
        heap.entries.peek().is_some_and(|top| top.seq == seq)
    }

    /// Fires every entry due at `now`, in (due, seq) order, unless another
    /// thread is distributing already.
    pub(super) fn distribute(&self, now: Instant) {
        if self.distributing.swap(true, Ordering::Acquire) {
            return;
        }
        let _flag = ClearOnDrop(&self.distributing);
        let mut scratch = self.scratch.lock();
        {
            let mut heap = self.heap.lock();
            while heap.entries.peek().is_some_and(|top| top.due <= now) {
                if let Some(entry) = heap.entries.pop() {
                    scratch.push(entry);
                }
            }
        }
        // Firing only pushes jobs (never runs them), so this is short; the
        // flag stays set so that a second distributor cannot push later
        // entries of the same actor before these.
        for entry in scratch.drain(..) {
            (entry.fire)();
        }
    }

    /// Due time of the earliest entry, if any.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.heap.lock().entries.peek().map(|top| top.due)
    }

    /// True if no entry waits.
    pub(super) fn is_empty(&self) -> bool {
        self.heap.lock().entries.is_empty()
    }
}

/// Clears the distribution flag even if firing unwinds.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
