//! [`SessionShared`]: the state of one session that its handles (any
//! thread) and its worker share: open or closing and why, the send queue
//! and its charge against the send limits ([`SendLimits`]), the writable
//! flag, and the flush requests.
//!
//! The charge (bytes and buffers queued or being written, see
//! [`Charge`]) and the writable flag change only under the queue's lock,
//! so neither a count the worker lowers nor a "writable again" can be
//! overwritten by a sender; readers load them without the lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::link::Link;
use super::mailbox::Mailbox;
use super::send_queue::{Charge, SendQueue, COMPACT_STEP};
use super::{DisconnectReason, SessionId};

/// What happens when a session's send queue passes its hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Disconnect with [`DisconnectReason::SendQueueOverflow`] (default).
    #[default]
    Disconnect,
    /// Refuse the new data with [`SendError::QueueFull`](super::SendError::QueueFull);
    /// the session stays.
    DropNewest,
}

/// Send-queue limits. The watermarks and the hard limit compare the
/// queue's cost ([`Charge::cost`]: its bytes plus an overhead per buffer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLimits {
    /// `is_writable()` turns false above this...
    pub high_watermark: usize,
    /// ...and true again at or below this.
    pub low_watermark: usize,
    /// Past this the overflow policy applies.
    pub hard_limit: usize,
    /// Past this many buffers queued or being written, too.
    pub max_buffers: usize,
    pub policy: OverflowPolicy,
    /// With send coalescing: queued bytes that end the hold at once.
    /// `usize::MAX` when coalescing is off.
    pub coalesce_max_bytes: usize,
}

/// Why [`SessionShared::enqueue`] took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The session is closing.
    Closed,
    /// The buffers would take the queue past a limit.
    Full,
}

const OPEN: u8 = 0;
const CLOSING: u8 = 1;

/// State of one session shared between its handles and its worker.
pub(crate) struct SessionShared {
    pub(crate) id: SessionId,
    /// The owning worker's key of the session: its slot (low 32 bits) and
    /// the slot's generation (high 32 bits); also the driver token.
    pub(crate) token: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    state: AtomicU8,
    reason: Mutex<Option<DisconnectReason>>,
    queue: Mutex<SendQueue>,
    /// Bytes queued or being written.
    queued: AtomicUsize,
    /// Buffers queued or being written (until the worker releases them).
    buffers: AtomicUsize,
    writable: AtomicBool,
    flush_scheduled: AtomicBool,
    /// [`SessionHandle::flush`](super::SessionHandle::flush) asked for a
    /// write that coalescing must not hold.
    flush_now: AtomicBool,
    writes: AtomicU64,
    limits: SendLimits,
    pub(crate) mailbox: Arc<Mailbox>,
    /// The transport side of a bridged session (QUIC); `None` on TCP,
    /// TLS and WebSocket.
    pub(crate) link: Option<Arc<dyn Link>>,
}

impl SessionShared {
    pub(crate) fn new(
        id: SessionId,
        token: u64,
        peer: SocketAddr,
        local: SocketAddr,
        limits: SendLimits,
        mailbox: Arc<Mailbox>,
    ) -> SessionShared {
        SessionShared {
            id,
            token,
            peer,
            local,
            state: AtomicU8::new(OPEN),
            reason: Mutex::new(None),
            queue: Mutex::new(SendQueue::default()),
            queued: AtomicUsize::new(0),
            buffers: AtomicUsize::new(0),
            writable: AtomicBool::new(true),
            flush_scheduled: AtomicBool::new(false),
            flush_now: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            limits,
            mailbox,
            link: None,
        }
    }

    /// The same session, carried by a bridged transport.
    pub(crate) fn with_link(mut self, link: Arc<dyn Link>) -> SessionShared {
        self.link = Some(link);
        self
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// Moves the session to closing with `reason`; true for the first caller.
    pub(crate) fn begin_close(&self, reason: DisconnectReason) -> bool {
        if self
            .state
            .compare_exchange(OPEN, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *self.reason.lock() = Some(reason);
            true
        } else {
            false
        }
    }

    pub(crate) fn peek_reason(&self) -> Option<DisconnectReason> {
        self.reason.lock().clone()
    }

    pub(crate) fn take_reason(&self) -> DisconnectReason {
        self.reason
            .lock()
            .take()
            .unwrap_or(DisconnectReason::ClosedByApp)
    }

    pub(crate) fn limits(&self) -> &SendLimits {
        &self.limits
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Queues `bufs` (empty ones skipped) as one unit: all of them, in
    /// order, or, if they would take the queue past its hard limit or its
    /// most buffers, none. `Ok(Some((before, after)))`: the queued bytes
    /// before and after; `Ok(None)`: there was nothing to queue.
    pub(crate) fn enqueue(
        &self,
        bufs: impl IntoIterator<Item = Bytes>,
    ) -> Result<Option<(usize, usize)>, Refused> {
        let mut queue = self.queue.lock();
        if !self.is_open() {
            return Err(Refused::Closed);
        }
        let start = queue.len();
        let mut added = Charge::default();
        for buf in bufs {
            if buf.is_empty() {
                continue;
            }
            added.bytes += buf.len();
            added.buffers += 1;
            queue.push(buf);
        }
        if added.buffers == 0 {
            return Ok(None);
        }
        let before = self.charge();
        let after = Charge {
            bytes: before.bytes + added.bytes,
            buffers: before.buffers + added.buffers,
        };
        let limits = &self.limits;
        if after.cost() > limits.hard_limit || after.buffers > limits.max_buffers {
            queue.truncate(start);
            return Err(Refused::Full);
        }
        self.queued.store(after.bytes, Ordering::Release);
        self.buffers.store(after.buffers, Ordering::Release);
        if after.cost() > limits.high_watermark {
            self.writable.store(false, Ordering::Release);
        }
        Ok(Some((before.bytes, after.bytes)))
    }

    /// Marks the session as having bytes the worker has not taken; true if
    /// it was not marked yet (the worker is to be told).
    pub(crate) fn mark_unflushed(&self) -> bool {
        !self.flush_scheduled.swap(true, Ordering::AcqRel)
    }

    /// Asks that the next write is not held by coalescing.
    pub(crate) fn request_flush_now(&self) {
        self.flush_now.store(true, Ordering::Release);
    }

    /// Moves up to `max` queued buffers, oldest first, to `out`; returns how
    /// many moved. They stay counted until written (see `note_written`).
    pub(crate) fn take_queued(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let mut queue = self.queue.lock();
        let taken = queue.take_into(out, max);
        if queue.len() == 0 {
            // Under the lock: a send after it finds the mark cleared and
            // tells the worker again.
            self.flush_scheduled.store(false, Ordering::Release);
        }
        taken.buffers
    }

    /// Bytes and buffers queued or being written.
    pub(crate) fn charge(&self) -> Charge {
        Charge {
            bytes: self.queued.load(Ordering::Acquire),
            buffers: self.buffers.load(Ordering::Acquire),
        }
    }

    /// Bytes queued or being written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Called by the worker when `written` bytes (and buffers) reached the
    /// socket or were dropped: they leave the charge.
    pub(crate) fn note_written(&self, written: Charge) {
        if written == Charge::default() {
            return;
        }
        let _queue = self.queue.lock();
        let bytes = self.queued.fetch_sub(written.bytes, Ordering::AcqRel) - written.bytes;
        let buffers = self.buffers.fetch_sub(written.buffers, Ordering::AcqRel) - written.buffers;
        let left = Charge { bytes, buffers };
        if left.cost() <= self.limits.low_watermark {
            self.writable.store(true, Ordering::Release);
        }
    }

    /// Queued bytes at which send coalescing stops holding the session.
    pub(crate) fn coalesce_max_bytes(&self) -> usize {
        self.limits.coalesce_max_bytes
    }

    /// Takes the "write at once" request of `SessionHandle::flush`.
    pub(crate) fn take_flush_now(&self) -> bool {
        self.flush_now.swap(false, Ordering::AcqRel)
    }

    /// True if something was queued since the worker last emptied the queue.
    pub(crate) fn has_unflushed(&self) -> bool {
        self.flush_scheduled.load(Ordering::Acquire)
    }

    /// Counts one gathered write submitted to the driver.
    pub(crate) fn note_write_started(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn write_count(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Copies small buffers that are the last users of a larger allocation
    /// (a pooled writer chunk) out of it, so the chunk is freed while they
    /// wait: looks at up to `budget` buffers, resuming where the last call
    /// stopped, in steps that each hold the lock for a bounded time.
    /// Returns how many were copied.
    pub(crate) fn compact_queue(&self, budget: usize) -> usize {
        let len = self.queue.lock().len();
        (0..len.min(budget).div_ceil(COMPACT_STEP))
            .map(|_| self.queue.lock().compact_step())
            .sum()
    }

    /// Gives back queue capacity far beyond recent use (after a peak).
    pub(crate) fn shrink_queue(&self) {
        self.queue.lock().shrink();
    }

    /// Drops whatever is still queued (the session is closing).
    pub(crate) fn discard_queue(&self) {
        let dropped = self.queue.lock().discard();
        self.note_written(dropped);
    }
}
