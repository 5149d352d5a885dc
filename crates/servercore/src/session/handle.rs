//! [`SessionHandle`]: the thread-safe face of a session, and the mailbox
//! through which any thread asks the owning worker to flush or disconnect it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;

use super::DisconnectReason;
use crate::driver::Wake;
use crate::log_throttle::LogThrottle;
use crate::service::metrics::WorkerCounters;

/// Identifies one session for its whole life, and no other session of the
/// service ever: the worker's index and the session's serial number on that
/// worker (48 bits, counting from 1, never reused — 2^48 sessions is nine
/// years of a million connects a second). Sessions compare, hash and sort by
/// id; ids of one worker sort in connection order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// Bits of the per-worker serial number; the worker index sits above.
    const SERIAL_BITS: u32 = 48;
    const SERIAL_MASK: u64 = (1 << Self::SERIAL_BITS) - 1;

    pub(crate) fn new(worker: u16, serial: u64) -> SessionId {
        SessionId((u64::from(worker) << Self::SERIAL_BITS) | (serial & Self::SERIAL_MASK))
    }

    /// The id as one number, unique among the sessions of a service.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Index of the worker thread that owns the session.
    pub fn worker(self) -> usize {
        (self.0 >> Self::SERIAL_BITS) as usize
    }

    /// The session's number among its worker's sessions: 1 for the first,
    /// then counting up, never reused.
    pub fn serial(self) -> u64 {
        self.0 & Self::SERIAL_MASK
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.worker(), self.serial())
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session is closed or closing.
    #[error("the session is closed")]
    Closed,
    /// The send queue is past its hard limit; the configured overflow policy
    /// has been applied.
    #[error("the send queue is full")]
    QueueFull,
}

/// What happens when a session's queued bytes pass the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Disconnect with [`DisconnectReason::SendQueueOverflow`] (default).
    #[default]
    Disconnect,
    /// Refuse the new data with [`SendError::QueueFull`]; the session stays.
    DropNewest,
}

/// Send-queue watermarks, in bytes queued and not yet written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendLimits {
    /// `is_writable()` turns false above this...
    pub high_watermark: usize,
    /// ...and true again at or below this.
    pub low_watermark: usize,
    /// Past this the overflow policy applies.
    pub hard_limit: usize,
    pub policy: OverflowPolicy,
    /// With send coalescing: queued bytes that end the hold at once.
    /// `usize::MAX` when coalescing is off.
    pub coalesce_max_bytes: usize,
}

/// A request to the worker that owns a session.
pub(crate) enum Request {
    /// The session has queued bytes to write.
    Flush(Arc<SessionShared>),
    /// The session was asked to disconnect (its reason is stored).
    Disconnect(Arc<SessionShared>),
    /// Adopt a connected stream as a new session (round-robin hand-out).
    Adopt(TcpStream, SocketAddr),
    /// Queue one shared buffer to every session of the worker.
    Broadcast(Bytes),
    /// Stop: close listeners, flush, disconnect everything, exit.
    Stop,
}

/// A worker's inbox, usable from any thread. A push wakes the worker only
/// when the inbox was idle, and never from the worker's own thread (it
/// drains its inbox before it blocks).
pub(crate) struct Mailbox {
    queue: SegQueue<Request>,
    notified: AtomicBool,
    waker: Arc<dyn Wake>,
    /// The owning worker's counters (reached from its sessions' handles).
    pub(crate) counters: WorkerCounters,
    /// False once the worker left its loop: new sessions are refused. A
    /// lock, not a flag, so no adoption slips in between the worker's last
    /// look at its inbox and the close (taken once per new session only).
    adopting: Mutex<bool>,
}

thread_local! {
    /// The mailbox of the worker running on this thread (its address).
    static CURRENT_MAILBOX: Cell<usize> = const { Cell::new(0) };
}

impl Mailbox {
    pub(crate) fn new(waker: Arc<dyn Wake>) -> Mailbox {
        Mailbox {
            queue: SegQueue::new(),
            notified: AtomicBool::new(false),
            waker,
            counters: WorkerCounters::default(),
            adopting: Mutex::new(true),
        }
    }

    /// Hands a new connection to the worker, or gives it back if the worker
    /// has left its loop (see [`Mailbox::close`]).
    pub(crate) fn push_adopt(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), (TcpStream, SocketAddr)> {
        let adopting = self.adopting.lock();
        if !*adopting {
            return Err((stream, peer));
        }
        self.push(Request::Adopt(stream, peer));
        Ok(())
    }

    /// Called by the worker when it leaves its loop: later `push_adopt`s
    /// fail. Returns the connections handed over before, never adopted.
    pub(crate) fn close(&self) -> Vec<(TcpStream, SocketAddr)> {
        *self.adopting.lock() = false;
        let mut orphans = Vec::new();
        while let Some(request) = self.queue.pop() {
            if let Request::Adopt(stream, peer) = request {
                orphans.push((stream, peer));
            }
        }
        orphans
    }

    pub(crate) fn push(&self, request: Request) {
        self.queue.push(request);
        if self.is_current() {
            return;
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Marks this thread as the mailbox's worker.
    pub(crate) fn enter_worker_thread(&self) {
        CURRENT_MAILBOX.with(|current| current.set(self as *const Mailbox as usize));
    }

    fn is_current(&self) -> bool {
        CURRENT_MAILBOX.with(|current| current.get() == self as *const Mailbox as usize)
    }

    /// Takes the next request. Call `rearm` before draining a round so a push
    /// racing with the drain wakes the worker again.
    pub(crate) fn pop(&self) -> Option<Request> {
        self.queue.pop()
    }

    pub(crate) fn rearm(&self) {
        self.notified.store(false, Ordering::Release);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
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
    queue: Mutex<VecDeque<Bytes>>,
    queued: AtomicUsize,
    writable: AtomicBool,
    flush_scheduled: AtomicBool,
    /// [`SessionHandle::flush`] asked for a write that coalescing must not hold.
    flush_now: AtomicBool,
    writes: AtomicU64,
    limits: SendLimits,
    pub(crate) mailbox: Arc<Mailbox>,
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
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            writable: AtomicBool::new(true),
            flush_scheduled: AtomicBool::new(false),
            flush_now: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            limits,
            mailbox,
        }
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

    /// Appends everything queued to `out`; returns how many buffers moved.
    pub(crate) fn drain_queue_into(&self, out: &mut Vec<Bytes>) -> usize {
        self.flush_scheduled.store(false, Ordering::Release);
        let mut queue = self.queue.lock();
        let count = queue.len();
        out.extend(queue.drain(..));
        count
    }

    /// Bytes queued or in flight.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Called by the worker when `written` bytes reached the socket.
    pub(crate) fn note_written(&self, written: usize) {
        // Under the queue lock, like `send`: see there.
        let _queue = self.queue.lock();
        let left = self.queued.fetch_sub(written, Ordering::AcqRel) - written;
        if left <= self.limits.low_watermark {
            self.writable.store(true, Ordering::Release);
        }
    }

    /// Queued bytes at which send coalescing stops holding the session.
    pub(crate) fn coalesce_max_bytes(&self) -> usize {
        self.limits.coalesce_max_bytes
    }

    /// Takes the "write at once" request of [`SessionHandle::flush`].
    pub(crate) fn take_flush_now(&self) -> bool {
        self.flush_now.swap(false, Ordering::AcqRel)
    }

    /// True if something was queued since the worker last drained the queue.
    pub(crate) fn has_unflushed(&self) -> bool {
        self.flush_scheduled.load(Ordering::Acquire)
    }

    /// Counts one gathered write submitted to the driver.
    pub(crate) fn note_write_started(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies small buffers that are the last users of a larger allocation
    /// (a pooled writer chunk) out of it, so the chunk is freed while they
    /// wait; returns how many were copied. See [`copy_out_straggler`].
    pub(crate) fn compact_queue(&self) -> usize {
        let mut queue = self.queue.lock();
        let mut copied = 0;
        for buf in queue.iter_mut() {
            copied += usize::from(copy_out_straggler(buf));
        }
        copied
    }

    /// Drops whatever is still queued (the session is closed).
    pub(crate) fn discard_queue(&self) {
        let mut queue = self.queue.lock();
        let dropped: usize = queue.drain(..).map(|b| b.len()).sum();
        self.queued.fetch_sub(dropped, Ordering::AcqRel);
    }
}

/// Send-queue overflows, over every session of the process.
static OVERFLOW_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// Largest buffer [`copy_out_straggler`] copies: packet-sized.
const STRAGGLER_MAX: usize = 2 * 1024;

/// A queued packet cut from a 64 KiB writer chunk keeps the whole chunk
/// alive while the send limits count only its own bytes. When `buf` is small
/// and the only user left of an allocation with room to spare, it is copied
/// into an exact allocation of its own and the chunk is freed. Returns
/// whether it copied. Buffers still shared (a broadcast other sessions have
/// not written yet) and exact allocations are left as they are.
pub(crate) fn copy_out_straggler(buf: &mut Bytes) -> bool {
    if buf.len() > STRAGGLER_MAX || !buf.is_unique() {
        return false;
    }
    match std::mem::take(buf).try_into_mut() {
        Ok(owned) if owned.capacity() > owned.len() => {
            *buf = Bytes::copy_from_slice(&owned);
            true
        }
        Ok(owned) => {
            *buf = owned.freeze();
            false
        }
        Err(shared) => {
            *buf = shared;
            false
        }
    }
}

/// A session as seen from anywhere: cheap to clone, `Send + Sync`.
///
/// Sends are queued in order and written by the owning worker, gathered into
/// one write per round. Using a handle after its session closed is safe:
/// sends return [`SendError::Closed`].
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) inner: Arc<SessionShared>,
}

impl SessionHandle {
    pub(crate) fn from_shared(inner: Arc<SessionShared>) -> SessionHandle {
        SessionHandle { inner }
    }

    /// The counters of the worker that owns the session.
    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.inner.mailbox.counters
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// True until the session starts closing.
    pub fn is_connected(&self) -> bool {
        self.inner.is_open()
    }

    /// False while queued bytes are above the high watermark (true again at
    /// the low watermark): lets the game shed load before the hard limit.
    pub fn is_writable(&self) -> bool {
        self.inner.writable.load(Ordering::Acquire) && self.inner.is_open()
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }

    /// Queues `data` for sending. The buffer is shared, never copied: one
    /// broadcast `Bytes` can be given to every receiver.
    pub fn send(&self, data: Bytes) -> Result<(), SendError> {
        let shared = &*self.inner;
        if data.is_empty() {
            return if shared.is_open() {
                Ok(())
            } else {
                Err(SendError::Closed)
            };
        }
        let len = data.len();
        let (before, queued) = {
            let mut queue = shared.queue.lock();
            if !shared.is_open() {
                return Err(SendError::Closed);
            }
            // The count and the flag change only under the queue lock (the
            // worker's `note_written` takes it too), so neither a written
            // count nor a "writable again" can be overwritten by a sender.
            let before = shared.queued.load(Ordering::Acquire);
            let queued = before + len;
            if queued > shared.limits.hard_limit {
                drop(queue);
                return Err(self.overflow());
            }
            shared.queued.store(queued, Ordering::Release);
            if queued > shared.limits.high_watermark {
                shared.writable.store(false, Ordering::Release);
            }
            queue.push_back(data);
            (before, queued)
        };
        self.request_flush(before, queued);
        Ok(())
    }

    /// Queues several buffers as one unit: all of them, in order, under one
    /// lock and with one flush request, so they go out in the same gathered
    /// write (a game tick's output for one player). Empty buffers are
    /// skipped. If they would take the queue past its hard limit, none is
    /// queued and the overflow policy applies, as for [`send`](Self::send).
    pub fn send_batch(&self, buffers: impl IntoIterator<Item = Bytes>) -> Result<(), SendError> {
        let shared = &*self.inner;
        let (before, queued) = {
            let mut queue = shared.queue.lock();
            if !shared.is_open() {
                return Err(SendError::Closed);
            }
            let before = shared.queued.load(Ordering::Acquire);
            let start = queue.len();
            let mut added = 0usize;
            for data in buffers {
                if data.is_empty() {
                    continue;
                }
                added += data.len();
                queue.push_back(data);
            }
            if added == 0 {
                return Ok(());
            }
            let queued = before + added;
            if queued > shared.limits.hard_limit {
                queue.truncate(start);
                drop(queue);
                return Err(self.overflow());
            }
            shared.queued.store(queued, Ordering::Release);
            if queued > shared.limits.high_watermark {
                shared.writable.store(false, Ordering::Release);
            }
            (before, queued)
        };
        self.request_flush(before, queued);
        Ok(())
    }

    /// Tells the owning worker that bytes were queued (`before` → `queued`):
    /// once per flush it has not taken yet, and again when a session held
    /// back by send coalescing passes the bound that ends the hold.
    fn request_flush(&self, before: usize, queued: usize) {
        let shared = &*self.inner;
        let first = !shared.flush_scheduled.swap(true, Ordering::AcqRel);
        let bound = shared.limits.coalesce_max_bytes;
        if first || (before < bound && queued >= bound) {
            shared.mailbox.push(Request::Flush(Arc::clone(&self.inner)));
        }
    }

    /// Queues `data` and writes it, with everything queued before it, at
    /// once: it is not held back by send coalescing.
    pub fn send_now(&self, data: Bytes) -> Result<(), SendError> {
        self.send(data)?;
        self.flush();
        Ok(())
    }

    /// Writes everything queued so far at once, without waiting for the
    /// send-coalescing interval. Without coalescing every send is written
    /// in the owning worker's next round anyway, and this does nothing.
    pub fn flush(&self) {
        let shared = &*self.inner;
        if shared.limits.coalesce_max_bytes == usize::MAX || !shared.is_open() {
            return;
        }
        shared.flush_now.store(true, Ordering::Release);
        shared.mailbox.push(Request::Flush(Arc::clone(&self.inner)));
    }

    /// Gathered writes submitted to the socket for this session so far (one
    /// `sendmsg`/`writev` each, partial writes included).
    pub fn write_count(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Copies `data` into a new buffer and queues it.
    pub fn send_copy(&self, data: &[u8]) -> Result<(), SendError> {
        self.send(Bytes::copy_from_slice(data))
    }

    /// Closes the session once what is already queued has been written.
    /// The reason given to `on_disconnected` is [`DisconnectReason::ClosedByApp`].
    pub fn disconnect(&self) {
        self.disconnect_with(DisconnectReason::ClosedByApp);
    }

    /// Closes the session with a reason of the caller's choosing (a packet
    /// layer reports [`DisconnectReason::MalformedPacket`] this way). The
    /// first reason given wins.
    pub fn disconnect_with(&self, reason: DisconnectReason) {
        if self.inner.begin_close(reason) {
            self.inner
                .mailbox
                .push(Request::Disconnect(Arc::clone(&self.inner)));
        }
    }

    fn overflow(&self) -> SendError {
        match self.inner.limits.policy {
            OverflowPolicy::Disconnect => {
                if let Some(cuts) = OVERFLOW_LOG.event() {
                    tracing::warn!(
                        session = %self.id(),
                        peer = %self.peer_addr(),
                        queued = self.queued_bytes(),
                        cuts,
                        total = OVERFLOW_LOG.total(),
                        "send queue overflow, disconnecting (cuts counts this one and those \
                         since the last line, over all sessions)"
                    );
                }
                self.disconnect_with(DisconnectReason::SendQueueOverflow);
            }
            OverflowPolicy::DropNewest => {}
        }
        SendError::QueueFull
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id())
            .field("peer", &self.peer_addr())
            .field("connected", &self.is_connected())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_small_packet_leaves_its_chunk() {
        let mut writer = crate::packet::PacketWriter::new();
        let mut packet = writer.write_raw(1, b"abcd").unwrap();
        let neighbour = writer.write_raw(2, b"efgh").unwrap();
        // Still sharing the chunk with the writer and a neighbour: kept.
        assert!(!copy_out_straggler(&mut packet));
        drop(writer);
        drop(neighbour);
        let before = packet.as_ptr();
        assert!(copy_out_straggler(&mut packet));
        assert_ne!(packet.as_ptr(), before, "copied into its own allocation");
        assert_eq!(&packet[..], &[8, 0, 1, 0, b'a', b'b', b'c', b'd']);
        // An exact allocation is not copied again.
        assert!(!copy_out_straggler(&mut packet));
        assert_eq!(&packet[..], &[8, 0, 1, 0, b'a', b'b', b'c', b'd']);
    }

    #[test]
    fn large_or_shared_buffers_are_left_alone() {
        let mut large = Bytes::from(vec![1u8; STRAGGLER_MAX + 1]).slice(1..);
        assert!(!copy_out_straggler(&mut large));
        let mut shared = Bytes::from(vec![2u8; 16]);
        let other = shared.clone();
        assert!(!copy_out_straggler(&mut shared));
        assert_eq!(shared, other);
        let mut fixed = Bytes::from_static(b"static");
        assert!(!copy_out_straggler(&mut fixed));
    }
}
