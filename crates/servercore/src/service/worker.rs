//! One worker thread: the course's `DoWorkerJob` loop.
//!
//! Each round: take requests from the mailbox (flushes, disconnects, new
//! sessions, broadcast, stop), run due timers and queued jobs for one time
//! slice, write the sessions whose send-coalescing hold is due, run the
//! periodic housekeeping (deadlines, `on_tick`; once a second also giving
//! back what a peak left: session queues far above their recent use, idle
//! pooled vectors, the driver's idle pool entries), then wait on the driver
//! (one `io_uring_enter` on io_uring) and dispatch its completions.
//!
//! The worker owns its sessions' objects and the table they live in
//! (`slots`); each session's lifecycle is a [`Connection`] (sans-IO, in
//! `connection.rs`), and this module only wires driver events and mailbox
//! requests to it, runs the session's callbacks (each under
//! `catch_unwind`) and hands the connection's outputs to the driver. It
//! also keeps the one list the connections cannot keep themselves: the
//! sessions held by send coalescing, with the earliest due time, which
//! bounds the round's wait (one deadline per round, no timer or syscall
//! per session).
//!
//! The clock is read twice a round (after the wait, and after the job
//! slice, which runs application code), never per packet or per session.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::batch_pool::BatchPool;
use super::connection::{Closing, Connection, Panic, Timing, Write};
use super::engine::EngineShared;
use super::log_limit::AcceptErrorLog;
use super::slots::Slots;
use crate::driver::{poll::PollDriver, CloseMode, Driver, DriverConfig, ResolvedBackend, Token};
use crate::log_throttle::LogThrottle;
use crate::session::{
    Bridged, DisconnectReason, Mailbox, Request, Session, SessionHandle, SessionId, SessionMaker,
    SessionShared,
};
use crate::transport;
use calls::{call, log_disconnect, panic_message, Placeholder};

/// How often idle timeouts and drain deadlines are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// How often memory left by a peak is given back: session queues far
/// larger than their recent use, idle pooled vectors.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a worker sleeps when nothing is due (it is woken for work).
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Panics in session callbacks, over every session of the process.
static PANIC_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
/// New connections that could not be set up (`failures` counts those since
/// the last line).
static ADOPT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

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

/// A session of this worker: the application's object, its handle and its
/// connection state.
struct Entry {
    session: Box<dyn Session>,
    handle: SessionHandle,
    conn: Connection,
}

/// Work found while the driver was dispatching (when the driver cannot be
/// called), done right after.
#[derive(Default)]
struct Deferred {
    adopt: Vec<(TcpStream, SocketAddr)>,
    close: Vec<(Token, CloseMode)>,
    /// Sessions whose connection has output for the driver.
    drive: Vec<u32>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.adopt.is_empty() && self.close.is_empty() && self.drive.is_empty()
    }
}

/// The worker's idea of now: read from the system clock on first use after
/// [`advance`](RoundClock::advance), so a round reads it once per phase.
#[derive(Default)]
struct RoundClock {
    now: Option<Instant>,
}

impl RoundClock {
    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// Time has passed (a wait, a job slice): the next `now` reads the clock.
    fn advance(&mut self) {
        self.now = None;
    }
}

struct Core {
    index: u16,
    engine: Arc<EngineShared>,
    mailbox: Arc<Mailbox>,
    /// Boxed, so a slot left vacant by a peak costs 16 bytes, not the
    /// entry's 288.
    slots: Slots<Box<Entry>>,
    /// Serial number of the next session of this worker (see `SessionId`).
    next_serial: u64,
    deferred: Deferred,
    batch_pool: BatchPool,
    stopping: Option<Instant>,
    next_housekeeping: Instant,
    next_trim: Instant,
    accept_errors: AcceptErrorLog,
    timing: Timing,
    clock: RoundClock,
    /// Sessions whose queued sends are held back by coalescing.
    held: Vec<u32>,
    /// The earliest time a held session is due, if any is held.
    next_due: Option<Instant>,
    /// Scratch list for `flush_due`, kept to reuse its allocation.
    due_now: Vec<u32>,
}

impl Core {
    fn new(index: u16, engine: Arc<EngineShared>, mailbox: Arc<Mailbox>) -> Core {
        let mut clock = RoundClock::default();
        Core {
            index,
            mailbox,
            slots: Slots::default(),
            next_serial: 1,
            deferred: Deferred::default(),
            batch_pool: BatchPool::default(),
            stopping: None,
            next_housekeeping: clock.now() + HOUSEKEEPING_INTERVAL,
            next_trim: clock.now() + TRIM_INTERVAL,
            accept_errors: AcceptErrorLog::default(),
            timing: Timing::of(&engine.config),
            engine,
            clock,
            held: Vec::new(),
            next_due: None,
            due_now: Vec::new(),
        }
    }

    fn run<D: Driver>(&mut self, driver: &mut D, jobs: &crate::job::WorkerAttachment) {
        let slice = self.engine.config.job_slice;
        loop {
            self.mailbox.rearm();
            self.process_mailbox(driver);
            self.apply_deferred(driver);

            let next_timer = jobs.run_slice(self.clock.now() + slice);
            self.clock.advance();
            self.process_mailbox(driver);
            self.apply_deferred(driver);

            let now = self.clock.now();
            if self.next_due.is_some_and(|due| now >= due) {
                self.flush_due(driver, now);
                self.apply_deferred(driver);
            }
            if now >= self.next_housekeeping {
                let trim = now >= self.next_trim;
                self.housekeeping(now, trim);
                self.apply_deferred(driver);
                if trim {
                    self.trim();
                    driver.trim();
                    self.next_trim = now + TRIM_INTERVAL;
                }
                self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            }
            if let Some(hard_deadline) = self.stopping {
                if self.slots.live() == 0 {
                    break;
                }
                if now >= hard_deadline {
                    tracing::warn!(
                        worker = self.index,
                        live = self.slots.live(),
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
                wake_at.saturating_duration_since(now).min(MAX_WAIT)
            };
            self.clock.advance();
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
        let engine = &self.engine;
        self.slots.drain(|mut entry| {
            entry.conn.discard();
            engine.release_session();
            engine.live_slots.fetch_sub(1, Ordering::AcqRel);
        });
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
            sessions = self.slots.live(),
            "the I/O driver failed; the worker ends and the service stops"
        );
        let reason = DisconnectReason::IoError {
            kind: error.kind(),
            message: format!("the worker's I/O driver failed: {error}"),
        };
        for slot in 0..self.slots.end() {
            if let Some(entry) = self.slots.get_mut(slot) {
                entry.conn.close(Some(reason.clone()), CloseMode::Abort);
                self.settle(slot);
            }
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
                        self.entry(slot).conn.request_flush();
                        self.drive(driver, slot);
                    }
                }
                Request::Disconnect(shared) => {
                    if let Some(slot) = self.slot_of(&shared) {
                        let now = self.clock.now();
                        self.entry(slot).conn.handle_disconnect_request(now);
                        self.drive(driver, slot);
                    }
                }
                Request::Adopt(stream, peer) => self.adopt(driver, stream, peer, None, None),
                Request::AdoptWith(stream, peer, make) => {
                    self.adopt(driver, stream, peer, None, Some(make))
                }
                Request::AdoptBridged(stream, bridged) => {
                    let peer = bridged.peer;
                    self.adopt(driver, stream, peer, Some(bridged), None)
                }
                Request::Broadcast(data) => self.broadcast(data),
                Request::Stop => self.begin_stop(driver),
            }
        }
    }

    fn slot_of(&self, shared: &Arc<SessionShared>) -> Option<u32> {
        let slot = shared.token as u32;
        let entry = self.slots.get(slot)?;
        Arc::ptr_eq(&entry.handle.inner, shared).then_some(slot)
    }

    fn broadcast(&mut self, data: Bytes) {
        for (_, entry) in self.slots.iter() {
            if entry.conn.is_open() {
                let _ = entry.handle.send(data.clone());
            }
        }
    }

    fn begin_stop<D: Driver>(&mut self, driver: &mut D) {
        if self.stopping.is_some() {
            return;
        }
        let config = &self.engine.config;
        let flush_deadline = self.clock.now() + config.shutdown_timeout;
        let hard_deadline = flush_deadline + config.disconnect_linger + Duration::from_secs(1);
        self.stopping = Some(hard_deadline);
        driver.close_listeners();
        for slot in 0..self.slots.end() {
            if let Some(entry) = self.slots.get_mut(slot) {
                entry.conn.begin_stop(flush_deadline, hard_deadline);
                self.drive(driver, slot);
            }
        }
    }

    // ---- session life ----------------------------------------------------

    fn adopt<D: Driver>(
        &mut self,
        driver: &mut D,
        stream: TcpStream,
        peer: SocketAddr,
        bridged: Option<Box<Bridged>>,
        make: Option<SessionMaker>,
    ) {
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
            if let Some(failures) = ADOPT_LOG.event() {
                tracing::warn!(%peer, %error, failures, "cannot make socket non-blocking");
            }
            self.engine.release_session();
            return;
        }
        let (slot, token) = self.slots.reserve();
        // A bridged session's transport is the bridge: its stream is plain.
        let transport = if self.engine.transports.all_plain() || bridged.is_some() {
            None
        } else {
            self.engine.transports.start(local, peer)
        };
        if let Err(error) = driver.add_stream(token, stream) {
            if let Some(failures) = ADOPT_LOG.event() {
                tracing::warn!(%peer, %error, failures, "cannot register connection");
            }
            self.slots.give_back(slot);
            self.engine.release_session();
            return;
        }
        let id = SessionId::new(self.index, self.next_serial);
        self.next_serial += 1;
        let shared = SessionShared::new(
            id,
            token,
            peer,
            local,
            self.engine.config.session_limits(),
            Arc::clone(&self.mailbox),
        );
        let shared = Arc::new(match bridged {
            Some(bridged) => shared.with_link(bridged.link),
            None => shared,
        });
        let factory = &self.engine.factory;
        let (session, factory_panic) = match catch_unwind(AssertUnwindSafe(|| match make {
            Some(make) => make(),
            None => factory(),
        })) {
            Ok(session) => (session, None),
            // The slot still holds an entry so that `Released` frees it
            // through the usual path.
            Err(panic) => (Box::new(Placeholder) as Box<dyn Session>, Some(panic)),
        };
        let now = self.clock.now();
        let conn = Connection::new(Arc::clone(&shared), transport, self.timing, now);
        let handle = SessionHandle::from_shared(shared);
        self.slots.fill(
            slot,
            Box::new(Entry {
                session,
                handle,
                conn,
            }),
        );
        self.mailbox.counters.set_sessions(self.slots.live());
        self.engine.live_slots.fetch_add(1, Ordering::AcqRel);
        self.engine.sessions_total.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(session = %id, %peer, "connected");

        let connected = match factory_panic {
            Some(panic) => Err(("session factory", panic)),
            None => {
                let entry = self.entry(slot);
                call(|| entry.session.on_connected(&entry.handle)).map_err(|p| ("on_connected", p))
            }
        };
        match connected {
            Ok(()) => self.entry(slot).conn.handle_connected(now),
            Err((callback, panic)) => self.callback_panicked(slot, callback, panic),
        }
        self.drive(driver, slot);
    }

    /// The driver released `token`: the session is gone for good.
    fn release(&mut self, token: Token) {
        // `on_disconnected` already ran and the queue was emptied.
        if self.slots.remove(token).is_some() {
            self.mailbox.counters.set_sessions(self.slots.live());
            self.engine.release_session();
            self.engine.live_slots.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn callback_panicked(&mut self, slot: u32, callback: &str, panic: Panic) {
        let message = panic_message(&panic);
        let now = self.clock.now();
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        if let Some(panics) = PANIC_LOG.event() {
            tracing::error!(
                session = %entry.handle.id(),
                peer = %entry.handle.peer_addr(),
                callback,
                panic = %message,
                panics,
                total = PANIC_LOG.total(),
                "session callback panicked; disconnecting the session (panics counts this one \
                 and those since the last line, over all sessions)"
            );
        }
        entry.conn.callback_panicked(now, message);
    }

    /// After an input to a session's connection: runs the session's end if
    /// the connection closed, and lists it for the driver if it has output.
    fn settle(&mut self, slot: u32) {
        self.finish(slot);
        if self
            .slots
            .get(slot)
            .is_some_and(|entry| entry.conn.has_output())
        {
            self.deferred.drive.push(slot);
        }
    }

    /// The connection decided to close: counts and logs the end, runs
    /// `on_disconnected` (once) and has the driver close the socket.
    fn finish(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(Closing { reason, mode }) = entry.conn.poll_close() else {
            return;
        };
        let reason = match &entry.handle.inner.link {
            Some(link) => link.session_ended(reason),
            None => reason,
        };
        entry.handle.counters().note_disconnect(reason.kind());
        if transport::is_transport_reason(&reason) {
            transport::log_rejection(entry.handle.peer_addr(), &reason);
        }
        log_disconnect(&entry.handle, &reason);
        if let Err(panic) = call(|| entry.session.on_disconnected(&entry.handle, &reason)) {
            tracing::error!(
                session = %entry.handle.id(),
                panic = panic_message(&panic),
                "on_disconnected panicked"
            );
        }
        self.deferred.close.push((entry.handle.inner.token, mode));
    }

    /// Hands a session's connection output to the driver: its close, a
    /// write (or its hold by coalescing), a shutdown of its write side.
    fn drive<D: Driver>(&mut self, driver: &mut D, slot: u32) {
        self.finish(slot);
        let now = self.clock.now();
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let token = entry.handle.inner.token;
        match entry.conn.poll_write(now, &mut self.batch_pool) {
            Write::Nothing => {}
            Write::Batch(batch) => {
                self.engine.writes_total.fetch_add(1, Ordering::Relaxed);
                driver.send(token, batch);
            }
            Write::Held { due, newly } => {
                if newly {
                    self.held.push(slot);
                }
                self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
            }
        }
        if entry.conn.poll_shutdown_write() {
            driver.shutdown_write(token);
        }
        self.finish(slot);
    }

    fn apply_deferred<D: Driver>(&mut self, driver: &mut D) {
        while !self.deferred.is_empty() {
            for (stream, peer) in std::mem::take(&mut self.deferred.adopt) {
                self.adopt(driver, stream, peer, None, None);
            }
            let mut drive = std::mem::take(&mut self.deferred.drive);
            for slot in drive.drain(..) {
                self.drive(driver, slot);
            }
            if self.deferred.drive.is_empty() {
                self.deferred.drive = drive;
            }
            for (token, mode) in std::mem::take(&mut self.deferred.close) {
                driver.close(token, mode);
            }
        }
    }

    // ---- lookups ---------------------------------------------------------

    /// The entry in `slot`, which the caller knows is occupied.
    fn entry(&mut self, slot: u32) -> &mut Entry {
        self.slots.get_mut(slot).expect("an occupied slot")
    }
}

mod calls;
mod events;
mod housekeeping;
