//! The io_uring backend: one ring per worker thread.
//!
//! [`UringDriver`] owns, for the lifetime of every operation it submits:
//! - the ring itself (set up with `SINGLE_ISSUER | DEFER_TASKRUN` where the
//!   kernel has it, `COOP_TASKRUN` or plain otherwise);
//! - the provided receive-buffer ring (`buf_ring`): every multishot receive
//!   of this driver picks its buffers from it, `Event::Received` lends a
//!   buffer to the sink in place, and the buffer goes back to the ring as soon
//!   as the sink returns;
//! - the sockets of the connections and listeners it adopted (closed only
//!   after the last completion that refers to them);
//! - one heap block per write in flight (the `SendBatch`, its iovec array and
//!   the `msghdr`), freed or recycled when the write's completion arrives;
//! - the eventfd of its [`Wake`] handle and the 8-byte buffer the ring reads
//!   it into.
//!
//! Every submission carries a `user_data` naming its kind, its slot and the
//! slot's generation, so a completion always finds what it belongs to. Nothing
//! the kernel may still write to or read from is freed before the operation's
//! last completion (one without `IORING_CQE_F_MORE`) has been reaped; when the
//! driver is dropped it cancels everything and waits (bounded) for those
//! completions, and leaks rather than frees what is still outstanding.
//!
//! `probe` (in `probe.rs`) checks that this kernel and sandbox give the driver
//! everything it needs.

mod buf_ring;
mod probe;
#[cfg(test)]
mod tests;

pub(crate) use probe::probe;

use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::accept::{self, AcceptFailure, ACCEPT_BACKOFF};
use super::pool::IdlePool;
use super::token_map::TokenMap;
use super::{CloseMode, Driver, DriverConfig, Event, EventSink, SendBatch, Token, Wake};
use buf_ring::BufRing;

/// Buffer group id of the driver's receive-buffer ring (one per ring).
const BUF_GROUP: u16 = 0;
/// Most iovecs one `sendmsg` takes.
const IOV_MAX: usize = super::MAX_BATCH_BUFFERS;
/// Flags of every accepted socket: the poll backend and the worker expect
/// non-blocking, close-on-exec streams.
const ACCEPT_FLAGS: i32 = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
/// How long `drop` waits for cancelled operations to complete.
const DROP_GRACE: Duration = Duration::from_secs(1);
/// Recycled send blocks kept for reuse.
const SEND_POOL_MAX: usize = 256;
/// Capacity (iovecs) a recycled send block's iovec array is disconnected back to,
/// so the pool holds at most `SEND_POOL_MAX` × 2 KiB per ring however
/// large a peak's batch was (uncut it kept 1.6 MB after a soak's peaks).
const POOLED_IOVS: usize = 128;
/// Completions copied out of the queue at a time, as a rule (a flood may
/// take more; `trim` disconnects the vector back).
const CQE_BATCH: usize = 256;
/// Longest single wait (the kernel's timespec is signed).
const MAX_WAIT: Duration = Duration::from_secs(1 << 30);

// ---------------------------------------------------------------------------
// user_data: [kind: 8 bits][generation: 24 bits][index: 32 bits]

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The eventfd read of the waker.
    Wake = 1,
    /// A listener's multishot accept; index = listener slot.
    Accept = 2,
    /// The cancel of a listener's accept; index = listener slot.
    AcceptCancel = 3,
    /// A connection's multishot receive; index = connection slot.
    Recv = 4,
    /// A connection's gathered write; index = connection slot.
    Send = 5,
    /// The cancel of a connection's operations; index = connection slot.
    Cancel = 6,
    /// The cancel-everything of `drop`.
    CancelAll = 7,
}

const GEN_MASK: u32 = 0x00FF_FFFF;

fn pack(kind: Kind, generation: u32, index: u32) -> u64 {
    ((kind as u64) << 56) | (u64::from(generation & GEN_MASK) << 32) | u64::from(index)
}

fn unpack(user_data: u64) -> (Option<Kind>, u32, u32) {
    let kind = match (user_data >> 56) as u8 {
        1 => Some(Kind::Wake),
        2 => Some(Kind::Accept),
        3 => Some(Kind::AcceptCancel),
        4 => Some(Kind::Recv),
        5 => Some(Kind::Send),
        6 => Some(Kind::Cancel),
        7 => Some(Kind::CancelAll),
        _ => None,
    };
    (
        kind,
        ((user_data >> 32) as u32) & GEN_MASK,
        user_data as u32,
    )
}

fn os_error(negative_res: i32) -> io::Error {
    io::Error::from_raw_os_error(-negative_res)
}

// ---------------------------------------------------------------------------
// Ring setup

/// How the ring was set up (the first the kernel accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetupMode {
    /// `SUBMIT_ALL | SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+).
    DeferTaskrun,
    /// `SUBMIT_ALL | COOP_TASKRUN | TASKRUN_FLAG` (Linux 5.19+).
    CoopTaskrun,
    /// Only `CQSIZE | CLAMP` (Linux 5.6+).
    Plain,
}

impl SetupMode {
    /// Every mode, the cheapest first.
    const ALL: [SetupMode; 3] = [
        SetupMode::DeferTaskrun,
        SetupMode::CoopTaskrun,
        SetupMode::Plain,
    ];
}

/// Builds a ring with `sq_entries` submission entries and a completion queue
/// four times as large, trying the cheapest task-run mode first.
pub(super) fn build_ring(sq_entries: u32) -> io::Result<(IoUring, SetupMode)> {
    build_ring_with(sq_entries, &SetupMode::ALL)
}

/// Like [`build_ring`], trying only `modes`, in order.
fn build_ring_with(sq_entries: u32, modes: &[SetupMode]) -> io::Result<(IoUring, SetupMode)> {
    let sq_entries = sq_entries.clamp(2, 32_768);
    let cq_entries = sq_entries.saturating_mul(4);
    let mut last_error = None;
    for &mode in modes {
        let mut builder = IoUring::builder();
        builder.setup_clamp().setup_cqsize(cq_entries);
        match mode {
            SetupMode::DeferTaskrun => {
                builder
                    .setup_submit_all()
                    .setup_single_issuer()
                    .setup_defer_taskrun();
            }
            SetupMode::CoopTaskrun => {
                builder
                    .setup_submit_all()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            }
            SetupMode::Plain => {}
        }
        match builder.build(sq_entries) {
            Ok(ring) => return Ok((ring, mode)),
            // An older kernel rejects flags it does not know with EINVAL.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

// ---------------------------------------------------------------------------
// Submission

/// The ring and the submissions that did not fit into its queue yet.
struct Sq {
    ring: IoUring,
    /// Entries waiting for room in the submission queue, in order. Once it
    /// is non-empty every new entry goes behind it, so order is kept.
    backlog: VecDeque<squeue::Entry>,
    /// Operations pushed whose last completion has not been reaped.
    inflight: usize,
    /// Wake batching: microseconds a wait may go on for more completions
    /// once one is there (0: off, or the kernel lacks `min_wait`).
    wake_batch_us: u32,
}

/// Completions a batched wait asks for before its `min_wait` runs out: more
/// than a window ever brings, so the window, not the count, ends the wait.
const WAKE_BATCH_WANT: usize = 256;

impl Sq {
    /// Queues `entry`, which starts an operation that ends with one
    /// completion without `F_MORE`. Submits early if the queue is full.
    ///
    /// The caller guarantees that everything `entry` points at stays valid
    /// until that completion is reaped.
    fn push(&mut self, entry: squeue::Entry) {
        self.inflight += 1;
        if self.backlog.is_empty() {
            if self.try_push(&entry) {
                return;
            }
            // Make room: hand what is queued to the kernel now.
            if self.ring.submit().is_ok() && self.try_push(&entry) {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry this driver builds points only at memory it
        // keeps alive until the entry's last completion (see `push`'s
        // contract, kept by each caller: send blocks, the buffer ring and the
        // wake buffer are owned by the driver and freed only after reaping).
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    /// Moves the backlog into the submission queue, submitting in between
    /// when it fills up. Stops (keeping the rest) if the kernel takes nothing.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            let entry = entry.clone();
            if self.try_push(&entry) {
                self.backlog.pop_front();
                continue;
            }
            match self.ring.submit() {
                Ok(submitted) if submitted > 0 => {}
                _ => break,
            }
        }
    }

    /// Submits everything queued and waits for at least one completion or
    /// `wait` (`None`: forever; zero: no waiting), in one `io_uring_enter`.
    fn enter(&mut self, wait: Option<Duration>) -> io::Result<()> {
        self.flush_backlog();
        let result = match wait {
            Some(wait) if wait.is_zero() => {
                let to_submit = self.ring.submission().len() as u32;
                // SAFETY: no argument pointer is passed (size of the unused
                // sigset type only), and GETEVENTS with min_complete 0 only
                // runs pending completion work without waiting.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        0,
                        io_uring::EnterFlags::GETEVENTS.bits(),
                        None,
                    )
                }
            }
            Some(wait) if self.wake_batch_us == 0 => {
                let timespec = types::Timespec::from(wait.min(MAX_WAIT));
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None if self.wake_batch_us == 0 => self.ring.submitter().submit_and_wait(1),
            // Batched: the kernel waits for the first completion as usual,
            // then up to `min_wait` more for others (or `wait`, if sooner).
            wait => {
                let timespec = types::Timespec::from(wait.unwrap_or(MAX_WAIT).min(MAX_WAIT));
                let args = types::SubmitArgs::new()
                    .timespec(&timespec)
                    .min_wait_usec(self.wake_batch_us);
                self.ring
                    .submitter()
                    .submit_with_args(WAKE_BATCH_WANT, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(error) => match error.raw_os_error() {
                // Timed out, interrupted by a signal, or the completion queue
                // is backed up (reaping makes room): all normal.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                // The kernel dropped completions (it could not hold back an
                // overflowing one); `check_dropped` gives the count.
                Some(libc::EBADR) => Err(io::Error::other(
                    "io_uring completion queue overflow: the kernel dropped completions (EBADR)",
                )),
                _ => Err(error),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Waking

/// The cross-thread half of the driver: an eventfd the ring keeps a read on.
struct EventFdWaker {
    fd: OwnedFd,
    /// Set by the first `wake` after the driver consumed the last one, so
    /// repeated wakes cost one `write` per driver round at most.
    pending: AtomicBool,
}

impl EventFdWaker {
    fn new() -> io::Result<EventFdWaker> {
        // Blocking on purpose: io_uring then parks the read on the eventfd's
        // wait queue instead of failing it with EAGAIN. `wake` never blocks:
        // the counter stays far from its maximum.
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFdWaker {
            // SAFETY: `fd` was just created and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }
}

impl Wake for EventFdWaker {
    fn wake(&self) {
        // AcqRel: the caller's earlier writes (its inbox push) happen before
        // the driver's swap that reads this `true`.
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: the fd is open for as long as `self` lives; the buffer is a
        // live, readable u64 of exactly the 8 bytes written.
        let written = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        if written != std::mem::size_of::<u64>() as isize {
            self.pending.store(false, Ordering::Release);
            tracing::error!(error = %io::Error::last_os_error(), "io_uring waker: eventfd write failed");
        }
    }
}

// ---------------------------------------------------------------------------
// Per-connection and per-listener state

/// One gathered write in flight: what its `sendmsg` points at.
struct SendOp {
    msg: libc::msghdr,
    iovs: Vec<libc::iovec>,
    batch: SendBatch,
}

impl SendOp {
    fn new() -> SendOp {
        SendOp {
            // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
            msg: unsafe { std::mem::zeroed() },
            iovs: Vec::new(),
            batch: SendBatch::default(),
        }
    }
}

struct Conn {
    token: Token,
    stream: TcpStream,
    /// Operations of this connection whose last completion is outstanding
    /// (receive, send, cancel).
    ops: u32,
    /// The read side ended (EOF or error reported); no receive is re-armed.
    read_closed: bool,
    /// `close` was called: nothing more is reported but `Sent` and
    /// `Released`.
    closing: bool,
    /// The write in flight; owned by the driver, referenced by the kernel.
    send: Option<NonNull<SendOp>>,
}

struct ConnSlot {
    generation: u32,
    conn: Option<Conn>,
}

struct Listener {
    socket: TcpListener,
    /// A multishot accept is outstanding.
    armed: bool,
    /// Operations whose last completion is outstanding (accept, cancel).
    ops: u32,
    /// `close_listeners` was called.
    closing: bool,
    /// The accept stopped for lack of resources; arm it again at this time.
    retry_at: Option<Instant>,
}

/// Events decided outside `poll`, reported at the start of the next one.
enum Deferred {
    Sent {
        token: Token,
        error: io::Error,
        batch: SendBatch,
    },
    Released(Token),
}

/// A sink for the completions reaped while the driver shuts down.
struct DiscardSink;

impl EventSink for DiscardSink {
    fn event(&mut self, _event: Event<'_>) {}
}

// ---------------------------------------------------------------------------
// The driver

/// The io_uring driver of one worker thread. Not `Send`: the ring is set up
/// for the single thread that created it.
pub(crate) struct UringDriver {
    /// Declared before `bufs` so the ring closes before the buffers unmap.
    sq: Sq,
    bufs: BufRing,
    slots: Vec<ConnSlot>,
    free_slots: Vec<u32>,
    tokens: TokenMap<u32>,
    listeners: Vec<Option<Listener>>,
    deferred: VecDeque<Deferred>,
    /// Spare send blocks. Boxed on purpose: a block's address is what the
    /// kernel reads while its write is in flight.
    send_pool: IdlePool<Box<SendOp>>,
    /// Completions copied out of the queue for one dispatch pass.
    cqes: Vec<cqueue::Entry>,
    waker: Arc<EventFdWaker>,
    /// Where the ring reads the eventfd counter; freed only when no read is
    /// outstanding.
    wake_buf: NonNull<u64>,
    wake_armed: bool,
    /// Set by `drop`: nothing is re-armed any more.
    shutting_down: bool,
    /// The kernel's count of dropped completions when last checked.
    cq_dropped_seen: u32,
}

impl UringDriver {
    fn conn_mut(&mut self, index: u32, generation: u32) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation & GEN_MASK != generation {
            return None;
        }
        slot.conn.as_mut()
    }

    fn arm_wake(&mut self) {
        if self.wake_armed || self.shutting_down {
            return;
        }
        let entry = opcode::Read::new(
            types::Fd(self.waker.fd.as_raw_fd()),
            self.wake_buf.as_ptr().cast::<u8>(),
            std::mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(pack(Kind::Wake, 0, 0));
        // The wake buffer lives until `drop` has seen this read complete.
        self.sq.push(entry);
        self.wake_armed = true;
    }

    fn arm_recv(&mut self, index: u32) {
        if self.shutting_down {
            return;
        }
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation;
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let entry = opcode::RecvMulti::new(types::Fd(conn.stream.as_raw_fd()), BUF_GROUP)
            .build()
            .user_data(pack(Kind::Recv, generation, index));
        conn.ops += 1;
        // Points at the buffer ring only, which outlives every operation.
        self.sq.push(entry);
    }

    fn arm_accept(&mut self, index: u32) {
        if self.shutting_down {
            return;
        }
        let Some(listener) = self.listeners[index as usize].as_mut() else {
            return;
        };
        if listener.armed || listener.closing {
            return;
        }
        let entry = opcode::AcceptMulti::new(types::Fd(listener.socket.as_raw_fd()))
            .flags(ACCEPT_FLAGS)
            .build()
            .user_data(pack(Kind::Accept, 0, index));
        listener.armed = true;
        listener.ops += 1;
        listener.retry_at = None;
        // No memory is referenced (no sockaddr: the peer is asked later).
        self.sq.push(entry);
    }

    /// Arms accepts whose backoff has passed; returns the earliest pending
    /// retry time, if any.
    fn retry_accepts(&mut self) -> Option<Instant> {
        let mut next = None;
        let mut now = None;
        for index in 0..self.listeners.len() {
            let Some(retry_at) = self.listeners[index].as_ref().and_then(|l| l.retry_at) else {
                continue;
            };
            let now = *now.get_or_insert_with(Instant::now);
            if retry_at <= now {
                self.arm_accept(index as u32);
            } else {
                next = Some(next.map_or(retry_at, |n: Instant| n.min(retry_at)));
            }
        }
        next
    }

    /// Frees the connection in `index` and returns its token. Only when no
    /// operation of it is outstanding.
    fn release(&mut self, index: u32) -> Token {
        let slot = &mut self.slots[index as usize];
        let conn = slot.conn.take().expect("release of an empty slot");
        debug_assert_eq!(conn.ops, 0);
        debug_assert!(conn.send.is_none());
        slot.generation = slot.generation.wrapping_add(1) & GEN_MASK;
        self.tokens.remove(&conn.token);
        self.free_slots.push(index);
        // Dropping the stream closes the socket (with SO_LINGER 0 already set
        // for an abortive close).
        conn.token
    }

    /// Reports `Released` if the closing connection has nothing in flight.
    fn release_if_done(&mut self, index: u32, sink: &mut dyn EventSink) {
        let Some(conn) = self.slots[index as usize].conn.as_ref() else {
            return;
        };
        if conn.closing && conn.ops == 0 {
            let token = self.release(index);
            sink.event(Event::Released { token });
        }
    }

    /// Reaps completions until the queue is empty (bounded, so one round
    /// cannot run forever under a flood).
    fn drain(&mut self, sink: &mut dyn EventSink) {
        let budget = (self.sq.ring.params().cq_entries() as usize).saturating_mul(2);
        let mut handled = 0;
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(self.sq.ring.completion());
            if cqes.is_empty() {
                break;
            }
            handled += cqes.len();
            for cqe in &cqes {
                self.dispatch(cqe, sink);
            }
            if handled >= budget {
                break;
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }

    fn dispatch(&mut self, cqe: &cqueue::Entry, sink: &mut dyn EventSink) {
        let flags = cqe.flags();
        let more = cqueue::more(flags);
        if !more {
            self.sq.inflight -= 1;
        }
        let (kind, generation, index) = unpack(cqe.user_data());
        let res = cqe.result();
        match kind {
            Some(Kind::Recv) => self.on_recv(index, generation, res, flags, sink),
            Some(Kind::Send) => self.on_send(index, generation, res, sink),
            Some(Kind::Cancel) => {
                if let Some(conn) = self.conn_mut(index, generation) {
                    conn.ops -= 1;
                    self.release_if_done(index, sink);
                }
            }
            Some(Kind::Accept) => self.on_accept(index, res, more, sink),
            Some(Kind::AcceptCancel) => self.listener_op_done(index),
            Some(Kind::Wake) => self.on_wake(res),
            Some(Kind::CancelAll) => {}
            None => {
                tracing::error!(
                    user_data = cqe.user_data(),
                    "io_uring: completion of unknown kind"
                );
            }
        }
    }

    fn on_recv(
        &mut self,
        index: u32,
        generation: u32,
        res: i32,
        flags: u32,
        sink: &mut dyn EventSink,
    ) {
        let more = cqueue::more(flags);
        let buffer = cqueue::buffer_select(flags);
        let Some(conn) = self.conn_mut(index, generation) else {
            // Cannot happen: a slot is freed only after its last completion.
            tracing::error!(index, "io_uring: receive completion for a freed slot");
            if let Some(bid) = buffer {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            conn.ops -= 1;
        }
        let token = conn.token;
        let deliver = !conn.closing && !conn.read_closed;
        if let Some(bid) = buffer {
            if deliver && res > 0 {
                // SAFETY: the kernel filled `res` bytes of buffer `bid` and
                // handed it to us with this completion; it is not in the ring
                // until `recycle` below, so nothing writes to it meanwhile.
                let data = unsafe { self.bufs.filled(bid, res as usize) };
                sink.event(Event::Received { token, data });
            }
            self.bufs.recycle(bid);
        } else if res > 0 {
            tracing::error!(index, res, "io_uring: receive completion without a buffer");
        }
        if more {
            return;
        }
        // The multishot receive ended: find out why.
        let conn = self.slots[index as usize]
            .conn
            .as_mut()
            .expect("slot checked above");
        if conn.closing {
            self.release_if_done(index, sink);
            return;
        }
        if conn.read_closed {
            return;
        }
        if res > 0 || res == -libc::ENOBUFS || res == -libc::EINTR {
            // Data stays queued in the socket; the buffers taken so far are
            // already back in the ring, so the next receive finds room.
            self.arm_recv(index);
            return;
        }
        conn.read_closed = true;
        let error = if res == 0 { None } else { Some(os_error(res)) };
        sink.event(Event::ReadClosed { token, error });
    }

    fn on_send(&mut self, index: u32, generation: u32, res: i32, sink: &mut dyn EventSink) {
        let Some(conn) = self.conn_mut(index, generation) else {
            tracing::error!(index, "io_uring: send completion for a freed slot");
            return;
        };
        conn.ops -= 1;
        let token = conn.token;
        let Some(op) = conn.send.take() else {
            tracing::error!(index, "io_uring: send completion without a send in flight");
            return;
        };
        // SAFETY: `op` came from `Box::leak` in `send`, and this is the
        // completion of the only operation that referenced it: the kernel is
        // done with the msghdr, the iovecs and the buffers.
        let mut op = unsafe { Box::from_raw(op.as_ptr()) };
        let batch = std::mem::take(&mut op.batch);
        op.iovs.clear();
        op.iovs.shrink_to(POOLED_IOVS);
        self.send_pool.put(op);
        let result = match res {
            n if n > 0 => Ok(n as usize),
            0 => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket accepted no bytes",
            )),
            n => Err(os_error(n)),
        };
        sink.event(Event::Sent {
            token,
            result,
            batch,
        });
        self.release_if_done(index, sink);
    }

    fn on_accept(&mut self, index: u32, res: i32, more: bool, sink: &mut dyn EventSink) {
        let accepted = (res >= 0).then(|| {
            // SAFETY: a successful accept completion carries a new descriptor
            // that nobody else owns.
            unsafe { TcpStream::from_raw_fd(res) }
        });
        let Some(listener) = self
            .listeners
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        else {
            // Cannot happen; the accepted stream (if any) is dropped (closed).
            return;
        };
        if !more {
            listener.armed = false;
            listener.ops -= 1;
        }
        let active = !listener.closing && !self.shutting_down;
        let failure = (res < 0).then(|| {
            let error = os_error(res);
            (accept::classify(&error), error)
        });
        // A connection accepted while closing is dropped (closed) here.
        if let Some(stream) = accepted.filter(|_| active) {
            match stream.peer_addr() {
                Ok(peer) => sink.event(Event::Accepted { stream, peer }),
                // Reset before we saw it: nothing to hand out.
                Err(error) => tracing::debug!(%error, "accepted connection is already gone"),
            }
        }
        let failure = match failure {
            Some((kind, error)) if active => {
                if kind == AcceptFailure::Stop {
                    accept::log_stopped(&error);
                }
                if kind != AcceptFailure::Retry {
                    sink.event(Event::AcceptError(error));
                }
                Some(kind)
            }
            _ => None,
        };
        if more {
            return;
        }
        if !active {
            self.listener_op_done_inner(index);
            return;
        }
        match failure {
            // Out of resources (or an unknown error): the connection waits
            // in the backlog; retry after a pause instead of spinning.
            Some(AcceptFailure::BackOff) => {
                if let Some(listener) = self.listeners[index as usize].as_mut() {
                    listener.retry_at = Some(Instant::now() + ACCEPT_BACKOFF);
                }
            }
            Some(AcceptFailure::Stop) => {}
            Some(AcceptFailure::Retry | AcceptFailure::Skip) | None => self.arm_accept(index),
        }
    }

    fn listener_op_done(&mut self, index: u32) {
        if let Some(listener) = self
            .listeners
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        {
            listener.ops -= 1;
        }
        self.listener_op_done_inner(index);
    }

    /// Closes a closing listener once nothing of it is in flight.
    fn listener_op_done_inner(&mut self, index: u32) {
        let slot = &mut self.listeners[index as usize];
        if slot.as_ref().is_some_and(|l| l.closing && l.ops == 0) {
            *slot = None;
        }
    }

    fn on_wake(&mut self, res: i32) {
        self.wake_armed = false;
        self.waker.pending.swap(false, Ordering::AcqRel);
        if res >= 0 || res == -libc::EINTR || res == -libc::EAGAIN {
            self.arm_wake();
        } else if !self.shutting_down {
            tracing::error!(error = %os_error(res), "io_uring: waker read failed; wakes are lost");
        }
    }

    /// Compares the kernel's count of completions it dropped (`dropped`,
    /// read from the ring's overflow counter) with the last check. With
    /// `IORING_FEAT_NODROP` the kernel drops a completion only when it
    /// cannot even allocate room to hold it back; the operation it finished
    /// is then lost to the driver, and its slot, buffers and socket would
    /// never be released. There is no way to tell which one it was, so the
    /// driver fails: the worker ends cleanly and the service reports it.
    fn check_dropped(&mut self, dropped: u32) -> io::Result<()> {
        let lost = dropped.wrapping_sub(self.cq_dropped_seen);
        if lost == 0 {
            return Ok(());
        }
        self.cq_dropped_seen = dropped;
        tracing::error!(
            lost,
            in_flight = self.sq.inflight,
            "io_uring: the completion queue overflowed and the kernel dropped completions; \
             the operations they finished are lost; failing this worker"
        );
        Err(io::Error::other(format!(
            "io_uring completion queue overflow: the kernel dropped {lost} completions"
        )))
    }

    fn report_deferred(&mut self, sink: &mut dyn EventSink) -> bool {
        let any = !self.deferred.is_empty();
        while let Some(deferred) = self.deferred.pop_front() {
            match deferred {
                Deferred::Sent {
                    token,
                    error,
                    batch,
                } => sink.event(Event::Sent {
                    token,
                    result: Err(error),
                    batch,
                }),
                Deferred::Released(token) => sink.event(Event::Released { token }),
            }
        }
        any
    }
}

impl UringDriver {
    /// Builds a driver whose ring is set up in the first of `modes` the
    /// kernel accepts.
    fn with_setup(config: &DriverConfig, modes: &[SetupMode]) -> io::Result<Self> {
        let entries = config.recv_ring_entries;
        if entries == 0 || !entries.is_power_of_two() || entries > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_ring_entries must be a power of two between 1 and 32768",
            ));
        }
        if config.recv_buffer_size == 0 || u32::try_from(config.recv_buffer_size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer_size must be between 1 byte and 4 GiB",
            ));
        }
        let waker = Arc::new(EventFdWaker::new()?);
        let bufs = BufRing::new(entries, config.recv_buffer_size)?;
        let (ring, mode) = build_ring_with(config.sq_entries, modes)?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG or IORING_FEAT_NODROP (Linux 5.11+)",
            ));
        }
        // Locals drop in reverse order: on failure the ring goes before the
        // buffer ring it may have registered.
        bufs.register(&ring, BUF_GROUP)?;
        let wake_buf = NonNull::from(Box::leak(Box::new(0u64)));
        let mut driver = UringDriver {
            sq: Sq {
                wake_batch_us: wake_batch_us(config, &ring),
                ring,
                backlog: VecDeque::new(),
                inflight: 0,
            },
            bufs,
            slots: Vec::new(),
            free_slots: Vec::new(),
            tokens: TokenMap::default(),
            listeners: Vec::new(),
            deferred: VecDeque::new(),
            send_pool: IdlePool::new(SEND_POOL_MAX),
            cqes: Vec::with_capacity(CQE_BATCH),
            waker,
            wake_buf,
            wake_armed: false,
            shutting_down: false,
            cq_dropped_seen: 0,
        };
        tracing::debug!(
            ?mode,
            sq_entries = config.sq_entries,
            "io_uring driver ready"
        );
        driver.arm_wake();
        Ok(driver)
    }
}

/// The wake-batching window in microseconds, where asked for and the
/// kernel has `min_wait` (`IORING_FEAT_MIN_TIMEOUT`, Linux 6.12); 0 otherwise.
fn wake_batch_us(config: &DriverConfig, ring: &IoUring) -> u32 {
    match config.wake_batch {
        Some(window) if ring.params().is_feature_min_timeout() => {
            u32::try_from(window.as_micros()).unwrap_or(u32::MAX).max(1)
        }
        Some(_) => {
            tracing::debug!("wake batching asked for, but this kernel lacks min_wait (6.12+): off");
            0
        }
        None => 0,
    }
}

impl Driver for UringDriver {
    fn new(config: &DriverConfig) -> io::Result<Self> {
        Self::with_setup(config, &SetupMode::ALL)
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = Listener {
            socket: listener,
            armed: false,
            ops: 0,
            closing: false,
            retry_at: None,
        };
        let index = match self.listeners.iter().position(Option::is_none) {
            Some(index) => {
                self.listeners[index] = Some(listener);
                index
            }
            None => {
                self.listeners.push(Some(listener));
                self.listeners.len() - 1
            }
        };
        self.arm_accept(index as u32);
        Ok(())
    }

    fn close_listeners(&mut self) {
        for index in 0..self.listeners.len() {
            let Some(listener) = self.listeners[index].as_mut() else {
                continue;
            };
            if listener.closing {
                continue;
            }
            listener.closing = true;
            listener.retry_at = None;
            stop_listening(&listener.socket);
            if listener.armed {
                // The listening socket stays open until the accept's last
                // completion: closing it earlier would not stop the accept.
                listener.ops += 1;
                let entry = opcode::AsyncCancel::new(pack(Kind::Accept, 0, index as u32))
                    .build()
                    .user_data(pack(Kind::AcceptCancel, 0, index as u32));
                self.sq.push(entry);
            } else {
                self.listener_op_done_inner(index as u32);
            }
        }
    }

    fn add_stream(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        if self.tokens.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already in use by this driver",
            ));
        }
        let conn = Conn {
            token,
            stream,
            ops: 0,
            read_closed: false,
            closing: false,
            send: None,
        };
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index as usize].conn = Some(conn);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::other("too many connections on one driver"))?;
                self.slots.push(ConnSlot {
                    generation: 0,
                    conn: Some(conn),
                });
                index
            }
        };
        self.tokens.insert(token, index);
        self.arm_recv(index);
        Ok(())
    }

    fn send(&mut self, token: Token, batch: SendBatch) {
        let Some(&index) = self.tokens.get(&token) else {
            tracing::debug!(token, "io_uring: send to an unknown token dropped");
            return;
        };
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation;
        let conn = slot.conn.as_mut().expect("token map points at a live slot");
        if conn.closing {
            // Closed: no event of this token but `Released` any more.
            return;
        }
        if conn.send.is_some() {
            tracing::error!(token, "io_uring: a second send while one is in flight");
            self.deferred.push_back(Deferred::Sent {
                token,
                error: io::Error::other("a send is already in flight on this connection"),
                batch,
            });
            return;
        }
        let mut op = self
            .send_pool
            .take()
            .unwrap_or_else(|| Box::new(SendOp::new()));
        op.iovs.clear();
        for buf in batch
            .bufs()
            .iter()
            .filter(|buf| !buf.is_empty())
            .take(IOV_MAX)
        {
            op.iovs.push(libc::iovec {
                iov_base: buf.as_ptr().cast_mut().cast::<libc::c_void>(),
                iov_len: buf.len(),
            });
        }
        if op.iovs.is_empty() {
            self.send_pool.put(op);
            self.deferred.push_back(Deferred::Sent {
                token,
                error: io::Error::new(io::ErrorKind::InvalidInput, "empty send batch"),
                batch,
            });
            return;
        }
        // The iovecs point into the Bytes' heap data, which moving the Vec
        // of Bytes into the block does not move.
        op.batch = batch;
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        op.msg = unsafe { std::mem::zeroed() };
        op.msg.msg_iov = op.iovs.as_mut_ptr();
        op.msg.msg_iovlen = op.iovs.len() as _;
        let op = NonNull::from(Box::leak(op));
        // SAFETY: `op` is a live heap block we just leaked; taking the
        // address of its field creates no reference.
        let msg = unsafe { &raw const (*op.as_ptr()).msg };
        let entry = opcode::SendMsg::new(types::Fd(conn.stream.as_raw_fd()), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(pack(Kind::Send, generation, index));
        conn.send = Some(op);
        conn.ops += 1;
        // The block (msghdr, iovecs, buffers) is freed only in `on_send`,
        // after this operation's completion, or leaked by `drop`.
        self.sq.push(entry);
    }

    fn shutdown_write(&mut self, token: Token) {
        let Some(&index) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.slots[index as usize].conn.as_ref() else {
            return;
        };
        if conn.closing {
            return;
        }
        debug_assert!(conn.send.is_none(), "shutdown with a send in flight");
        // Nothing of ours is queued in the ring for this socket's write side
        // (no send in flight), so a direct call keeps the order: FIN after
        // the last written byte. The multishot receive stays armed.
        if let Err(error) = conn.stream.shutdown(std::net::Shutdown::Write) {
            tracing::debug!(token, %error, "io_uring: shutting down the write side failed");
        }
    }

    fn close(&mut self, token: Token, mode: CloseMode) {
        let Some(&index) = self.tokens.get(&token) else {
            return;
        };
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation;
        let conn = slot.conn.as_mut().expect("token map points at a live slot");
        if mode == CloseMode::Abort {
            // The peer sees RST when the socket is finally closed.
            if let Err(error) =
                socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO))
            {
                tracing::debug!(token, %error, "io_uring: SO_LINGER 0 failed");
            }
        }
        if conn.closing {
            return;
        }
        conn.closing = true;
        if conn.ops == 0 {
            self.release(index);
            self.deferred.push_back(Deferred::Released(token));
            return;
        }
        // Cancel every operation on the socket (receive and send); the
        // socket stays open until their last completions are reaped.
        let entry = opcode::AsyncCancel2::new(
            types::CancelBuilder::fd(types::Fd(conn.stream.as_raw_fd())).all(),
        )
        .build()
        .user_data(pack(Kind::Cancel, generation, index));
        conn.ops += 1;
        self.sq.push(entry);
    }

    fn poll(&mut self, timeout: Option<Duration>, sink: &mut dyn EventSink) -> io::Result<()> {
        let mut wait = timeout;
        if let Some(retry_at) = self.retry_accepts() {
            let until = retry_at.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        if self.report_deferred(sink) {
            wait = Some(Duration::ZERO);
        }
        self.sq.enter(wait)?;
        self.drain(sink);
        let dropped = self.sq.ring.completion().overflow();
        self.check_dropped(dropped)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn trim(&mut self) {
        self.send_pool.trim();
        let live = self.tokens.len();
        if self.tokens.capacity() > 4 * live.max(64) {
            self.tokens.shrink_to(2 * live);
        }
        if self.cqes.capacity() > CQE_BATCH {
            self.cqes.shrink_to(CQE_BATCH);
        }
        if self.deferred.capacity() > 4 * self.deferred.len().max(64) {
            self.deferred.shrink_to(2 * self.deferred.len());
        }
    }
}

/// Takes `socket` out of the listening state at once (`shutdown(SHUT_RD)`
/// makes a listener drop its accept queue and unhash): its port is free for
/// a successor even while an armed accept still holds a reference to the
/// socket, which lasts until the ring is torn down, and after a crash until
/// the kernel gets to it.
fn stop_listening(socket: &TcpListener) {
    if let Err(error) = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read) {
        // ENOTCONN: it was not listening (any more); nothing holds the port.
        if error.raw_os_error() != Some(libc::ENOTCONN) {
            tracing::debug!(%error, "io_uring: shutting a listener down failed");
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        self.shutting_down = true;
        // Listeners first: their ports are free before anything else is
        // waited for, whatever happens to the ring afterwards.
        for listener in self.listeners.iter().flatten() {
            stop_listening(&listener.socket);
        }
        if self.sq.inflight > 0 {
            // Cancel everything submitted so far (the backlog is flushed
            // first by `enter`, in order, so this cancel comes last).
            self.sq.push(
                opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(pack(Kind::CancelAll, 0, 0)),
            );
            let deadline = Instant::now() + DROP_GRACE;
            loop {
                let now = Instant::now();
                if self.sq.inflight == 0 || now >= deadline {
                    break;
                }
                if self.sq.enter(Some(deadline - now)).is_err() {
                    break;
                }
                self.drain(&mut DiscardSink);
            }
        }
        if self.sq.inflight > 0 {
            tracing::error!(
                outstanding = self.sq.inflight,
                "io_uring: operations still outstanding at drop; leaking their memory"
            );
            // The kernel may still write into the receive buffers, read send
            // blocks or fill the wake buffer: leave all of it allocated. The
            // send blocks of connections are raw pointers, leaked by default.
            self.bufs.leak();
            return;
        }
        for slot in &mut self.slots {
            if let Some(op) = slot.conn.as_mut().and_then(|conn| conn.send.take()) {
                // SAFETY: no operation is outstanding, so nothing references
                // the block; it came from `Box::leak` in `send`.
                drop(unsafe { Box::from_raw(op.as_ptr()) });
            }
        }
        // SAFETY: no operation is outstanding (the wake read included), and
        // the pointer came from `Box::leak` in `new`.
        drop(unsafe { Box::from_raw(self.wake_buf.as_ptr()) });
    }
}
