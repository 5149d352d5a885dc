//! One worker thread: the course's `DoWorkerJob` loop.
//!
//! Each round: take requests from the mailbox (flushes, disconnects, new
//! sessions, broadcast, stop), submit every session's pending write, run due
//! timers and queued jobs for one time slice, then wait on the driver (one
//! `io_uring_enter` on io_uring) and dispatch its completions to sessions.
//! The worker owns the per-connection state no other thread touches: the
//! session object, its receive leftovers and its write in flight.
//!
//! It also owns two send-side policies:
//! - send coalescing: sessions whose queued sends are held back sit in one
//!   list with the earliest due time, which bounds the round's wait (one
//!   deadline per round, no timer or syscall per session);
//! - closing without losing replies: a session that closes gracefully (peer
//!   EOF, `disconnect()`, stop) first writes what is queued, then shuts its
//!   write side down and reads and discards until the peer's EOF or the
//!   linger deadline (so unread input never turns the close into an RST that
//!   destroys the last reply), and only then closes.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::engine::EngineShared;
use super::log_limit::AcceptErrorLog;
use crate::driver::{
    poll::PollDriver, CloseMode, Driver, DriverConfig, Event, EventSink, ResolvedBackend,
    SendBatch, Token,
};
use crate::session::{
    copy_out_straggler, DisconnectReason, Mailbox, Request, Session, SessionHandle, SessionId,
    SessionShared,
};
use crate::transport::{self, Transport};

/// How often idle timeouts and drain deadlines are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a worker sleeps when nothing is due (it is woken for work).
const MAX_WAIT: Duration = Duration::from_millis(500);
/// Emptied send-batch vectors kept for reuse.
const BATCH_POOL_LIMIT: usize = 256;
/// Capacity (buffers) a pooled send-batch vector is cut back to: the pool
/// holds at most `BATCH_POOL_LIMIT` × this × 32 bytes (1 MiB) per worker,
/// however large a peak (a slow reader's queue drained in one batch) grew
/// one of them. Uncut, the pool kept 2.8 MB after a 3-minute soak's
/// peaks with no session left (docs/BENCHMARKS.md, "Soak").
const POOLED_BATCH_CAPACITY: usize = 128;
/// A drained leftover buffer larger than this is freed rather than kept.
const LEFTOVER_KEEP: usize = 4 * 1024;

/// Entry point of a worker thread.
pub(crate) fn run_thread(
    backend: ResolvedBackend,
    index: u16,
    driver_config: DriverConfig,
    listeners: Vec<TcpListener>,
    ready: Sender<io::Result<Arc<Mailbox>>>,
    go: Receiver<Arc<EngineShared>>,
) {
    match backend {
        #[cfg(target_os = "linux")]
        ResolvedBackend::IoUring => {
            run::<crate::driver::uring::UringDriver>(index, driver_config, listeners, ready, go)
        }
        ResolvedBackend::Poll => run::<PollDriver>(index, driver_config, listeners, ready, go),
    }
}

fn run<D: Driver>(
    index: u16,
    driver_config: DriverConfig,
    listeners: Vec<TcpListener>,
    ready: Sender<io::Result<Arc<Mailbox>>>,
    go: Receiver<Arc<EngineShared>>,
) {
    let mut driver = match D::new(&driver_config) {
        Ok(driver) => driver,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    for listener in listeners {
        if let Err(error) = driver.add_listener(listener) {
            let _ = ready.send(Err(error));
            return;
        }
    }
    let waker = driver.waker();
    let mailbox = Arc::new(Mailbox::new(Arc::clone(&waker)));
    mailbox.enter_worker_thread();
    if ready.send(Ok(Arc::clone(&mailbox))).is_err() {
        return;
    }
    let Ok(engine) = go.recv() else {
        return;
    };
    let jobs = crate::job::attach_worker(waker);
    let mut core = Core::new(index, engine, mailbox);
    core.run(&mut driver, &jobs);
}

/// Where a session is in its life.
enum Phase {
    Open,
    /// Writing what is queued before closing; aborted at the deadline.
    Draining {
        deadline: Instant,
    },
    /// Everything was written and the write side shut down: input is
    /// discarded until the peer's EOF, or the deadline.
    Lingering {
        deadline: Instant,
    },
    /// `driver.close` was asked; waiting for `Released`.
    Closed,
}

struct Entry {
    session: Box<dyn Session>,
    handle: SessionHandle,
    /// Received bytes `on_recv` has not consumed yet.
    leftover: Vec<u8>,
    /// A write is in flight (its batch is with the driver).
    sending: bool,
    /// Bytes taken from the queue but not written yet (not in flight);
    /// wire bytes when a transport is present.
    pending: Vec<Bytes>,
    phase: Phase,
    last_recv: Instant,
    /// The peer's EOF arrived: nothing more will be received.
    read_closed: bool,
    /// When the last write was submitted (send coalescing measures from it);
    /// `None` before the first.
    last_write: Option<Instant>,
    /// Listed in `Core::held` (send coalescing).
    held: bool,
    /// The app asked for a write at once; kept until the next write starts.
    flush_now: bool,
    /// TLS / WebSocket state; `None` for plain TCP.
    transport: Option<Box<Transport>>,
}

/// One place for a session. The generation counts the sessions the slot
/// has held, so a token of an earlier one never matches.
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Work found while the driver was dispatching, done right after.
#[derive(Default)]
struct Deferred {
    adopt: Vec<(TcpStream, SocketAddr)>,
    close: Vec<(Token, CloseMode)>,
    flush: Vec<u32>,
}

struct Core {
    index: u16,
    engine: Arc<EngineShared>,
    mailbox: Arc<Mailbox>,
    slots: Vec<Slot>,
    /// Vacant slots, oldest first: a slot is reused as late as possible.
    free: VecDeque<u32>,
    live: usize,
    /// Serial number of the next session of this worker (see `SessionId`).
    next_serial: u64,
    deferred: Deferred,
    batch_pool: Vec<Vec<Bytes>>,
    stopping: Option<Instant>,
    next_housekeeping: Instant,
    accept_errors: AcceptErrorLog,
    /// Send coalescing interval (`None`: off).
    coalesce: Option<Duration>,
    /// Sessions whose queued sends are held back by coalescing.
    held: Vec<u32>,
    /// The earliest time a held session is due, if any is held.
    next_due: Option<Instant>,
}

impl Core {
    fn new(index: u16, engine: Arc<EngineShared>, mailbox: Arc<Mailbox>) -> Core {
        Core {
            index,
            mailbox,
            slots: Vec::new(),
            free: VecDeque::new(),
            live: 0,
            next_serial: 1,
            deferred: Deferred::default(),
            batch_pool: Vec::new(),
            stopping: None,
            next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
            accept_errors: AcceptErrorLog::default(),
            coalesce: engine.config.coalesce_interval,
            engine,
            held: Vec::new(),
            next_due: None,
        }
    }

    fn run<D: Driver>(&mut self, driver: &mut D, jobs: &crate::job::WorkerAttachment) {
        let slice = self.engine.config.job_slice;
        loop {
            self.mailbox.rearm();
            self.process_mailbox(driver);
            self.apply_deferred(driver);

            let now = Instant::now();
            let next_timer = jobs.run_slice(now + slice);
            self.process_mailbox(driver);
            self.apply_deferred(driver);

            let now = Instant::now();
            if self.next_due.is_some_and(|due| now >= due) {
                self.flush_due(driver, now);
                self.apply_deferred(driver);
            }
            if now >= self.next_housekeeping {
                self.housekeeping(now);
                self.apply_deferred(driver);
                self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            }
            if let Some(hard_deadline) = self.stopping {
                if self.live == 0 {
                    break;
                }
                if now >= hard_deadline {
                    tracing::warn!(
                        worker = self.index,
                        live = self.live,
                        "stop deadline passed with sessions still closing"
                    );
                    break;
                }
            }

            let mut wake_at = self.next_housekeeping;
            if let Some(at) = next_timer {
                wake_at = wake_at.min(at);
            }
            if let Some(due) = self.next_due {
                wake_at = wake_at.min(due);
            }
            let timeout = if !self.mailbox.is_empty() || !self.deferred.is_empty() {
                Duration::ZERO
            } else {
                wake_at
                    .saturating_duration_since(Instant::now())
                    .min(MAX_WAIT)
            };
            if let Err(error) = driver.poll(Some(timeout), self) {
                // Drivers report only errors they cannot recover from.
                self.fail(driver, error);
                break;
            }
            self.apply_deferred(driver);
        }
        // Connections handed to this worker that it will never adopt.
        for (stream, _peer) in self.mailbox.close() {
            drop(stream);
            self.engine.release_session();
        }
        // Whatever is left (only after the stop deadline) is dropped with the
        // driver, which cancels its operations.
        for slot in &mut self.slots {
            if let Some(entry) = slot.entry.take() {
                entry.handle.inner.discard_queue();
                self.engine.release_session();
                self.engine.live_slots.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.live = 0;
        self.mailbox.counters.set_sessions(0);
        self.mailbox.counters.set_queued_bytes(0);
    }

    /// The driver failed for good: disconnects every session (their
    /// `on_disconnected` runs, with an `IoError`), reports the failure and
    /// stops the service. The caller leaves the loop.
    fn fail<D: Driver>(&mut self, driver: &mut D, error: io::Error) {
        tracing::error!(
            worker = self.index,
            %error,
            sessions = self.live,
            "the I/O driver failed; the worker ends and the service stops"
        );
        let reason = DisconnectReason::IoError {
            kind: error.kind(),
            message: format!("the worker's I/O driver failed: {error}"),
        };
        for slot in 0..self.slots.len() as u32 {
            self.close(slot, Some(reason.clone()), CloseMode::Abort);
        }
        // Best effort: the driver may still close the sockets; whatever it
        // does not release goes with it when it is dropped.
        self.apply_deferred(driver);
        self.engine.worker_failed(self.index, &error);
    }

    // ---- mailbox ---------------------------------------------------------

    fn process_mailbox<D: Driver>(&mut self, driver: &mut D) {
        while let Some(request) = self.mailbox.pop() {
            match request {
                Request::Flush(shared) => {
                    if let Some(slot) = self.slot_of(&shared) {
                        self.request_flush(driver, slot);
                    }
                }
                Request::Disconnect(shared) => {
                    if let Some(slot) = self.slot_of(&shared) {
                        self.on_disconnect_request(driver, slot);
                    }
                }
                Request::Adopt(stream, peer) => self.adopt(driver, stream, peer),
                Request::Broadcast(data) => self.broadcast(data),
                Request::Stop => self.begin_stop(driver),
            }
        }
    }

    fn slot_of(&self, shared: &Arc<SessionShared>) -> Option<u32> {
        let slot = shared.token as u32;
        let entry = self.slots.get(slot as usize)?.entry.as_ref()?;
        Arc::ptr_eq(&entry.handle.inner, shared).then_some(slot)
    }

    fn broadcast(&mut self, data: Bytes) {
        for slot in &self.slots {
            if let Some(entry) = &slot.entry {
                if matches!(entry.phase, Phase::Open) {
                    let _ = entry.handle.send(data.clone());
                }
            }
        }
    }

    fn on_disconnect_request<D: Driver>(&mut self, driver: &mut D, slot: u32) {
        let linger = self.engine.config.disconnect_linger;
        let shutdown_timeout = self.engine.config.shutdown_timeout;
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if !matches!(entry.phase, Phase::Open) {
            return;
        }
        let reason = entry.handle.inner.peek_reason();
        // A graceful close writes what is queued first: the app's within the
        // linger time, the reply to a half-closed peer within the shutdown
        // deadline.
        let drain_for = match reason {
            Some(DisconnectReason::ClosedByApp) => Some(linger),
            Some(DisconnectReason::ClosedByPeer) => Some(shutdown_timeout),
            _ => None,
        };
        if let Some(drain_for) = drain_for {
            entry.phase = Phase::Draining {
                deadline: Instant::now() + drain_for,
            };
            self.flush(driver, slot);
        } else {
            let mode = match reason {
                Some(DisconnectReason::SendQueueOverflow) => CloseMode::Abort,
                _ => CloseMode::Graceful,
            };
            match reason {
                Some(reason) if mode == CloseMode::Graceful => self.cut(slot, reason),
                _ => self.close(slot, None, mode),
            }
        }
    }

    /// Cuts a session (bad input, a deadline, an app's reason): what it
    /// queued is dropped. Over an open WebSocket the close frame saying why
    /// still goes out first, so the peer learns the reason; otherwise the
    /// socket closes at once.
    fn cut(&mut self, slot: u32, reason: DisconnectReason) {
        if self.can_say_why(slot) {
            self.end_after_goodbye(slot, reason);
        } else {
            self.close(slot, Some(reason), CloseMode::Graceful);
        }
    }

    /// True when the session's transport can still send a close frame that
    /// tells the peer why it is cut.
    fn can_say_why(&mut self, slot: u32) -> bool {
        self.entry_mut(slot)
            .and_then(|entry| entry.transport.as_ref())
            .is_some_and(|transport| transport.can_send_close_frame())
    }

    fn begin_stop<D: Driver>(&mut self, driver: &mut D) {
        if self.stopping.is_some() {
            return;
        }
        let config = &self.engine.config;
        let flush_deadline = Instant::now() + config.shutdown_timeout;
        self.stopping = Some(flush_deadline + config.disconnect_linger + Duration::from_secs(1));
        driver.close_listeners();
        for slot in 0..self.slots.len() as u32 {
            let Some(entry) = self.entry_mut(slot) else {
                continue;
            };
            if matches!(entry.phase, Phase::Open) {
                entry.handle.inner.begin_close(DisconnectReason::Shutdown);
                entry.phase = Phase::Draining {
                    deadline: flush_deadline,
                };
                self.flush(driver, slot);
            }
        }
    }

    // ---- session life ----------------------------------------------------

    fn adopt<D: Driver>(&mut self, driver: &mut D, stream: TcpStream, peer: SocketAddr) {
        if self.stopping.is_some() {
            self.engine.release_session();
            return;
        }
        if self.engine.config.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Err(error) = stream.set_nonblocking(true) {
            tracing::warn!(%peer, %error, "cannot make socket non-blocking");
            self.engine.release_session();
            return;
        }
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let transport = if self.engine.transports.all_plain() {
            None
        } else {
            self.engine.transports.start(local, peer)
        };
        let generation = self.slots[slot as usize].generation;
        let token = (u64::from(generation) << 32) | u64::from(slot);
        if let Err(error) = driver.add_stream(token, stream) {
            tracing::warn!(%peer, %error, "cannot register connection");
            self.free.push_front(slot);
            self.engine.release_session();
            return;
        }
        let id = SessionId::new(self.index, self.next_serial);
        self.next_serial += 1;
        let shared = Arc::new(SessionShared::new(
            id,
            token,
            peer,
            local,
            self.engine.config.session_limits(),
            Arc::clone(&self.mailbox),
        ));
        let handle = SessionHandle::from_shared(shared);
        let (session, factory_panic) =
            match catch_unwind(AssertUnwindSafe(|| (self.engine.factory)())) {
                Ok(session) => (session, None),
                // The slot still holds an entry so that `Released` frees it
                // through the usual path.
                Err(panic) => (Box::new(Placeholder) as Box<dyn Session>, Some(panic)),
            };
        self.slots[slot as usize].entry = Some(Entry {
            session,
            handle,
            leftover: Vec::new(),
            sending: false,
            pending: Vec::new(),
            phase: Phase::Open,
            last_recv: Instant::now(),
            read_closed: false,
            last_write: None,
            held: false,
            flush_now: false,
            transport,
        });
        self.live += 1;
        self.mailbox.counters.set_sessions(self.live);
        self.engine.live_slots.fetch_add(1, Ordering::AcqRel);
        self.engine.sessions_total.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(session = %id, %peer, "connected");

        if let Some(panic) = factory_panic {
            self.callback_panicked(slot, "session factory", panic);
            return;
        }
        let entry = self.slots[slot as usize]
            .entry
            .as_mut()
            .expect("just stored");
        let result = catch_unwind(AssertUnwindSafe(|| {
            entry.session.on_connected(&entry.handle)
        }));
        if let Err(panic) = result {
            self.callback_panicked(slot, "on_connected", panic);
            return;
        }
        if let Some(transport) = entry.transport.as_mut() {
            match transport.take_startup_failure() {
                Some(reason) => self.end_after_goodbye(slot, reason),
                // A client's hello (TLS, the upgrade request) goes out now.
                None if transport.wants_flush() => self.deferred.flush.push(slot),
                None => {}
            }
        }
    }

    /// Ends a session once the transport's goodbye (alert, close frame,
    /// HTTP error) is written; nothing more of the session's queue is sent.
    fn end_after_goodbye(&mut self, slot: u32, reason: DisconnectReason) {
        let linger = self.engine.config.disconnect_linger;
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if matches!(entry.phase, Phase::Closed) {
            return;
        }
        entry.handle.inner.begin_close(reason);
        entry.handle.inner.discard_queue();
        if matches!(entry.phase, Phase::Open) {
            entry.phase = Phase::Draining {
                deadline: Instant::now() + linger,
            };
        }
        self.deferred.flush.push(slot);
    }

    /// Ends a session: runs `on_disconnected` once and asks the driver to
    /// close. `reason` overrides the stored one only if none was stored.
    fn close(&mut self, slot: u32, reason: Option<DisconnectReason>, mode: CloseMode) {
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if matches!(entry.phase, Phase::Closed) {
            return;
        }
        let shared = &entry.handle.inner;
        if let Some(reason) = reason {
            shared.begin_close(reason);
        }
        let reason = shared.take_reason();
        shared.discard_queue();
        entry.phase = Phase::Closed;
        entry.leftover = Vec::new();
        let unsent = match entry.transport.as_mut() {
            Some(transport) => {
                entry.pending.clear();
                transport.discard()
            }
            None => entry.pending.drain(..).map(|buf| buf.len()).sum(),
        };
        shared.note_written(unsent);
        let token = shared.token;
        entry.handle.counters().note_disconnect(reason.kind());
        if transport::is_transport_reason(&reason) {
            transport::log_rejection(entry.handle.peer_addr(), &reason);
        }
        log_disconnect(&entry.handle, &reason);
        let result = catch_unwind(AssertUnwindSafe(|| {
            entry.session.on_disconnected(&entry.handle, &reason)
        }));
        if let Err(panic) = result {
            tracing::error!(
                session = %entry.handle.id(),
                panic = panic_message(&panic),
                "on_disconnected panicked"
            );
        }
        self.deferred.close.push((token, mode));
    }

    fn release(&mut self, token: Token) {
        let Some(slot) = self.slot_for_token(token) else {
            return;
        };
        let slot_ref = &mut self.slots[slot as usize];
        // `close` already ran `on_disconnected` and emptied the queue.
        if slot_ref.entry.take().is_some() {
            slot_ref.generation = slot_ref.generation.wrapping_add(1);
            self.free.push_back(slot);
            self.live -= 1;
            self.mailbox.counters.set_sessions(self.live);
            self.engine.release_session();
            self.engine.live_slots.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn callback_panicked(&mut self, slot: u32, callback: &str, panic: Box<dyn Any + Send>) {
        let message = panic_message(&panic);
        if let Some(entry) = self.entry_mut(slot) {
            tracing::error!(
                session = %entry.handle.id(),
                peer = %entry.handle.peer_addr(),
                callback,
                panic = %message,
                "session callback panicked; disconnecting the session"
            );
        }
        let reason = DisconnectReason::CallbackPanic(message);
        if self.can_say_why(slot) {
            // The transport lives beside the session, untouched by the
            // panic: a WebSocket peer still learns it was an internal error.
            self.end_after_goodbye(slot, reason);
        } else {
            self.close(slot, Some(reason), CloseMode::Abort);
        }
    }

    // ---- sending ---------------------------------------------------------

    /// Something was queued (or a write finished): writes now, or, with send
    /// coalescing, holds the session until its interval since the last write
    /// has passed, its queue reached the bound, or the app asked to flush.
    fn request_flush<D: Driver>(&mut self, driver: &mut D, slot: u32) {
        let Some(interval) = self.coalesce else {
            self.flush(driver, slot);
            return;
        };
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        let shared = &entry.handle.inner;
        entry.flush_now |= shared.take_flush_now();
        if entry.sending || matches!(entry.phase, Phase::Closed) {
            return;
        }
        // The rest of a partial write, a closing session, a full queue or
        // an explicit flush go out now; so does a session idle for longer
        // than the interval. So do the transport's own bytes (handshake
        // flights, the HTTP upgrade answer, pongs) and the data a finished
        // handshake released: they are not in the session's queue, so
        // holding them would wait for a packet the session may never send
        // (a WebSocket client sends nothing before the 101 arrives).
        let now = Instant::now();
        let due = entry.last_write.map_or(now, |at| at + interval);
        let transport_owes = entry
            .transport
            .as_ref()
            .is_some_and(|transport| transport.wants_flush());
        if !entry.pending.is_empty()
            || transport_owes
            || entry.flush_now
            || !matches!(entry.phase, Phase::Open)
            || shared.queued_bytes() >= shared.coalesce_max_bytes()
            || now >= due
        {
            self.flush(driver, slot);
            return;
        }
        if !shared.has_unflushed() {
            return;
        }
        if !entry.held {
            entry.held = true;
            self.held.push(slot);
        }
        self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
    }

    /// Writes the held sessions that are due; recomputes the next due time.
    fn flush_due<D: Driver>(&mut self, driver: &mut D, now: Instant) {
        let Some(interval) = self.coalesce else {
            return;
        };
        self.next_due = None;
        let mut due_now = Vec::new();
        let mut held = std::mem::take(&mut self.held);
        held.retain(|&slot| {
            let Some(entry) = self
                .slots
                .get_mut(slot as usize)
                .and_then(|s| s.entry.as_mut())
            else {
                return false;
            };
            if !entry.held {
                return false;
            }
            let due = entry.last_write.map_or(now, |at| at + interval);
            if due > now && matches!(entry.phase, Phase::Open) {
                self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
                return true;
            }
            entry.held = false;
            due_now.push(slot);
            false
        });
        self.held = held;
        for slot in due_now {
            self.mailbox.counters.note_coalesced_flush();
            self.flush(driver, slot);
        }
    }

    /// Starts a write of everything queued, unless one is in flight.
    fn flush<D: Driver>(&mut self, driver: &mut D, slot: u32) {
        let Some(entry) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.entry.as_mut())
        else {
            return;
        };
        if entry.sending || matches!(entry.phase, Phase::Closed) {
            return;
        }
        if entry.pending.is_empty() {
            if let Some(reused) = self.batch_pool.pop() {
                entry.pending = reused;
            }
        }
        let taken = match entry.transport.as_mut() {
            None => entry.handle.inner.drain_queue_into(&mut entry.pending),
            Some(transport) => {
                let mut plain = self.batch_pool.pop().unwrap_or_default();
                let taken = entry.handle.inner.drain_queue_into(&mut plain);
                let draining = matches!(entry.phase, Phase::Draining { .. });
                transport.encode(&mut plain, &mut entry.pending);
                if entry.pending.is_empty() && draining {
                    let reason = entry.handle.inner.peek_reason();
                    let reason = reason.unwrap_or(DisconnectReason::ClosedByApp);
                    if transport.farewell(&reason) {
                        transport.encode(&mut plain, &mut entry.pending);
                    }
                }
                recycle(&mut self.batch_pool, plain);
                taken
            }
        };
        self.mailbox.counters.note_packets_out(taken);
        entry.flush_now = false;
        if entry.pending.is_empty() {
            let spare = std::mem::take(&mut entry.pending);
            let draining = matches!(entry.phase, Phase::Draining { .. });
            recycle(&mut self.batch_pool, spare);
            if draining {
                self.finish_draining(driver, slot);
            }
            return;
        }
        let bufs = std::mem::take(&mut entry.pending);
        entry.sending = true;
        self.mailbox.counters.note_write();
        entry.last_write = Some(Instant::now());
        entry.handle.inner.note_write_started();
        self.engine.writes_total.fetch_add(1, Ordering::Relaxed);
        driver.send(entry.handle.inner.token, SendBatch { bufs });
    }

    /// Everything queued is written: close now if the peer already sent its
    /// EOF, else shut the write side down and linger for that EOF.
    fn finish_draining<D: Driver>(&mut self, driver: &mut D, slot: u32) {
        let linger = self.engine.config.disconnect_linger;
        let hard_deadline = self.stopping;
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if entry.read_closed {
            self.close(slot, None, CloseMode::Graceful);
            return;
        }
        let mut deadline = Instant::now() + linger;
        if let Some(hard_deadline) = hard_deadline {
            deadline = deadline.min(hard_deadline);
        }
        entry.phase = Phase::Lingering { deadline };
        entry.leftover = Vec::new();
        driver.shutdown_write(entry.handle.inner.token);
    }

    fn on_sent(&mut self, token: Token, result: io::Result<usize>, batch: SendBatch) {
        let Some(slot) = self.slot_for_token(token) else {
            return;
        };
        let entry = self.slots[slot as usize]
            .entry
            .as_mut()
            .expect("slot_for_token");
        entry.sending = false;
        let shared = &entry.handle.inner;
        match result {
            Ok(written) if !matches!(entry.phase, Phase::Closed) => {
                self.mailbox.counters.note_bytes_out(written);
                let written_plain = match entry.transport.as_mut() {
                    Some(transport) => transport.wire_written(written),
                    None => written,
                };
                shared.note_written(written_plain);
                let mut batch = batch;
                batch.advance(written);
                if batch.bufs.is_empty() {
                    recycle(&mut self.batch_pool, batch.bufs);
                } else {
                    entry.pending = batch.bufs;
                }
                if written_plain > 0 {
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        entry.session.on_send(&entry.handle, written_plain)
                    }));
                    if let Err(panic) = result {
                        self.callback_panicked(slot, "on_send", panic);
                        return;
                    }
                }
                self.deferred.flush.push(slot);
            }
            result => {
                // Closed meanwhile, or the write failed: nothing more goes
                // out, and the unsent bytes leave the queued count.
                let unsent = match entry.transport.as_mut() {
                    Some(transport) => transport.discard(),
                    None => batch.len(),
                };
                shared.note_written(unsent);
                recycle(&mut self.batch_pool, batch.bufs);
                if let Err(error) = result {
                    self.close(
                        slot,
                        Some(DisconnectReason::from_io(&error)),
                        CloseMode::Abort,
                    );
                }
            }
        }
    }

    // ---- receiving -------------------------------------------------------

    fn on_received(&mut self, token: Token, data: &[u8]) {
        let Some(slot) = self.slot_for_token(token) else {
            return;
        };
        let max_backlog = self.engine.config.max_receive_backlog;
        let entry = self.slots[slot as usize]
            .entry
            .as_mut()
            .expect("slot_for_token");
        if !matches!(entry.phase, Phase::Open) || !entry.handle.is_connected() {
            // Closing: what still arrives is read and discarded, never kept.
            entry.leftover = Vec::new();
            return;
        }
        entry.last_recv = Instant::now();
        self.mailbox.counters.note_bytes_in(data.len());
        let mut ending = None;
        let result = match entry.transport.take() {
            None => deliver(entry, data, max_backlog),
            Some(mut transport) => {
                let was_ready = transport.is_ready();
                ending = transport.receive(data);
                if !was_ready && transport.is_ready() {
                    tracing::debug!(
                        session = %entry.handle.id(),
                        peer = %entry.handle.peer_addr(),
                        owed = transport.wants_flush(),
                        "transport handshake done"
                    );
                }
                let result = deliver(entry, transport.plain(), max_backlog);
                transport.clear_plain();
                if ending.is_none() && transport.wants_flush() {
                    self.deferred.flush.push(slot);
                }
                entry.transport = Some(transport);
                result
            }
        };
        match result {
            Ok(()) => {
                if !entry.handle.is_connected() {
                    entry.leftover = Vec::new();
                }
                if let Some(reason) = ending {
                    self.end_after_goodbye(slot, reason);
                }
            }
            Err(Failure::Panic(panic)) => self.callback_panicked(slot, "on_recv", panic),
            Err(Failure::Backlog(held)) => {
                tracing::warn!(
                    session = %entry.handle.id(),
                    peer = %entry.handle.peer_addr(),
                    held,
                    "unconsumed input passed the receive backlog limit; disconnecting"
                );
                self.close(
                    slot,
                    Some(DisconnectReason::ReceiveOverflow),
                    CloseMode::Abort,
                );
            }
        }
    }

    fn on_read_closed(&mut self, token: Token, error: Option<io::Error>) {
        let Some(slot) = self.slot_for_token(token) else {
            return;
        };
        if let Some(error) = error {
            let reason = DisconnectReason::from_io(&error);
            self.close(slot, Some(reason), CloseMode::Abort);
            return;
        }
        let handshake_failure = self.slots[slot as usize]
            .entry
            .as_ref()
            .and_then(|entry| entry.transport.as_ref())
            .filter(|transport| !transport.is_ready())
            .map(|transport| {
                transport.handshake_failure("the peer closed the connection during the handshake")
            });
        if let Some(reason) = handshake_failure {
            self.close(slot, Some(reason), CloseMode::Graceful);
            return;
        }
        let entry = self.slots[slot as usize]
            .entry
            .as_mut()
            .expect("slot_for_token");
        entry.read_closed = true;
        match entry.phase {
            // The peer half-closed: the session has seen every byte; it
            // decides when to close (by default at once: what is queued is
            // written first, then `on_disconnected(ClosedByPeer)`).
            Phase::Open if entry.handle.is_connected() => {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    entry.session.on_read_closed(&entry.handle)
                }));
                if let Err(panic) = result {
                    self.callback_panicked(slot, "on_read_closed", panic);
                }
            }
            // A disconnect is on its way through the mailbox, or the queue is
            // being written: that path closes when done.
            Phase::Open | Phase::Draining { .. } => {}
            Phase::Lingering { .. } => self.close(slot, None, CloseMode::Graceful),
            Phase::Closed => {}
        }
    }

    // ---- housekeeping ----------------------------------------------------

    fn housekeeping(&mut self, now: Instant) {
        let idle_timeout = self.engine.config.idle_timeout;
        let mut queued = 0;
        for slot in 0..self.slots.len() as u32 {
            let Some(entry) = self.slots[slot as usize].entry.as_ref() else {
                continue;
            };
            if entry.sending && entry.handle.queued_bytes() > 0 {
                // A backlog behind a write in flight: free the chunks its
                // small packets would keep alive (the send limits count
                // their bytes, not the chunks).
                let entry = self.slots[slot as usize].entry.as_mut().expect("checked");
                entry.handle.inner.compact_queue();
                for buf in &mut entry.pending {
                    copy_out_straggler(buf);
                }
            }
            let Some(entry) = self.slots[slot as usize].entry.as_ref() else {
                continue;
            };
            queued += entry.handle.queued_bytes();
            match entry.phase {
                Phase::Open => {
                    let handshake_due = entry
                        .transport
                        .as_ref()
                        .and_then(|transport| transport.handshake_deadline())
                        .filter(|deadline| now >= *deadline);
                    if handshake_due.is_some() {
                        let transport = entry.transport.as_ref().expect("has a deadline");
                        let reason = transport.handshake_failure("timed out");
                        self.close(slot, Some(reason), CloseMode::Abort);
                        continue;
                    }
                    if let Some(timeout) = idle_timeout {
                        if now.duration_since(entry.last_recv) >= timeout {
                            self.cut(slot, DisconnectReason::IdleTimeout);
                            continue;
                        }
                    }
                    self.tick(slot, now);
                }
                Phase::Draining { deadline } if now >= deadline => {
                    self.close(slot, None, CloseMode::Abort);
                }
                // Everything was written and FIN sent; the peer did not
                // answer with its own in time.
                Phase::Lingering { deadline } if now >= deadline => {
                    self.close(slot, None, CloseMode::Graceful);
                }
                _ => {}
            }
        }
        self.mailbox.counters.set_queued_bytes(queued);
    }

    /// Runs `on_tick` of an open, still connected session.
    fn tick(&mut self, slot: u32, now: Instant) {
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if !entry.handle.is_connected() {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            entry.session.on_tick(&entry.handle, now)
        }));
        if let Err(panic) = result {
            self.callback_panicked(slot, "on_tick", panic);
        }
    }

    fn apply_deferred<D: Driver>(&mut self, driver: &mut D) {
        while !self.deferred.is_empty() {
            for (stream, peer) in std::mem::take(&mut self.deferred.adopt) {
                self.adopt(driver, stream, peer);
            }
            for slot in std::mem::take(&mut self.deferred.flush) {
                self.request_flush(driver, slot);
            }
            for (token, mode) in std::mem::take(&mut self.deferred.close) {
                driver.close(token, mode);
            }
        }
    }

    // ---- lookups ---------------------------------------------------------

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize)?.entry.as_mut()
    }

    fn slot_for_token(&self, token: Token) -> Option<u32> {
        let slot = token as u32;
        let generation = (token >> 32) as u32;
        let entry = self.slots.get(slot as usize)?;
        (entry.generation == generation && entry.entry.is_some()).then_some(slot)
    }
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.adopt.is_empty() && self.close.is_empty() && self.flush.is_empty()
    }
}

impl EventSink for Core {
    fn event(&mut self, event: Event<'_>) {
        self.mailbox.counters.note_events(1);
        match event {
            Event::Accepted { stream, peer } => {
                self.mailbox.counters.note_accepted();
                self.accept_errors.succeeded(self.index);
                if self.engine.try_reserve_session() {
                    let worker = self.engine.pick_worker();
                    if worker == self.index as usize {
                        self.deferred.adopt.push((stream, peer));
                    } else {
                        self.engine.hand_to(worker, stream, peer);
                    }
                } else {
                    let refused = self.engine.refused_total.fetch_add(1, Ordering::AcqRel) + 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            %peer,
                            max_sessions = self.engine.config.max_sessions,
                            refused_total = refused,
                            "refusing connection: max_sessions reached or stopping"
                        );
                    }
                    drop(stream);
                }
            }
            Event::AcceptError(error) => {
                self.accept_errors
                    .failed(self.index, &error, Instant::now());
            }
            Event::Received { token, data } => self.on_received(token, data),
            Event::ReadClosed { token, error } => self.on_read_closed(token, error),
            Event::Sent {
                token,
                result,
                batch,
            } => self.on_sent(token, result, batch),
            Event::Released { token } => self.release(token),
        }
    }
}

enum Failure {
    Panic(Box<dyn Any + Send>),
    Backlog(usize),
}

/// Hands `data` to `on_recv`, in front of any leftover, calling it again
/// while it makes progress; keeps what it did not consume.
fn deliver(entry: &mut Entry, data: &[u8], max_backlog: usize) -> Result<(), Failure> {
    let Entry {
        session,
        handle,
        leftover,
        ..
    } = entry;
    if leftover.is_empty() {
        let consumed = consume(session.as_mut(), handle, data)?;
        if consumed < data.len() {
            leftover.extend_from_slice(&data[consumed..]);
        }
    } else {
        leftover.extend_from_slice(data);
        let consumed = consume(session.as_mut(), handle, leftover)?;
        leftover.drain(..consumed);
    }
    if leftover.len() > max_backlog {
        return Err(Failure::Backlog(leftover.len()));
    }
    if leftover.is_empty() && leftover.capacity() > LEFTOVER_KEEP {
        *leftover = Vec::new();
    }
    Ok(())
}

/// Calls `on_recv` until all is consumed, it asks for more, or the session
/// starts closing. Returns the bytes consumed.
fn consume(
    session: &mut dyn Session,
    handle: &SessionHandle,
    data: &[u8],
) -> Result<usize, Failure> {
    let mut offset = 0;
    while offset < data.len() && handle.is_connected() {
        let rest = &data[offset..];
        let consumed = catch_unwind(AssertUnwindSafe(|| session.on_recv(handle, rest)))
            .map_err(Failure::Panic)?;
        if consumed == 0 {
            break;
        }
        offset += consumed.min(rest.len());
    }
    Ok(offset)
}

fn recycle(pool: &mut Vec<Vec<Bytes>>, mut bufs: Vec<Bytes>) {
    bufs.clear();
    if pool.len() < BATCH_POOL_LIMIT && bufs.capacity() > 0 {
        // Shrinking in place frees the tail; no copy (the vector is empty).
        bufs.shrink_to(POOLED_BATCH_CAPACITY);
        pool.push(bufs);
    }
}

fn log_disconnect(handle: &SessionHandle, reason: &DisconnectReason) {
    match reason {
        DisconnectReason::ClosedByPeer
        | DisconnectReason::ClosedByApp
        | DisconnectReason::Shutdown => {
            tracing::debug!(session = %handle.id(), peer = %handle.peer_addr(), %reason, "disconnected")
        }
        _ => {
            tracing::info!(session = %handle.id(), peer = %handle.peer_addr(), %reason, "disconnected")
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Stands in for a session whose factory panicked; it drops all input.
struct Placeholder;

impl Session for Placeholder {
    fn on_recv(&mut self, _: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
}
