//! One worker thread: the course's `DoWorkerJob` loop.
//!
//! Each round: take requests from the mailbox (flushes, disconnects, new
//! sessions, broadcast, stop), submit every session's pending write, run due
//! timers and queued jobs for one time slice, then wait on the driver (one
//! `io_uring_enter` on io_uring) and dispatch its completions to sessions.
//! The worker owns the per-connection state no other thread touches: the
//! session object, its receive leftovers and its write in flight.

use std::any::Any;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::engine::EngineShared;
use crate::driver::{
    poll::PollDriver, CloseMode, Driver, DriverConfig, Event, EventSink, ResolvedBackend,
    SendBatch, Token,
};
use crate::session::{
    DisconnectReason, Mailbox, Request, Session, SessionHandle, SessionId, SessionShared,
};

/// How often idle timeouts and drain deadlines are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a worker sleeps when nothing is due (it is woken for work).
const MAX_WAIT: Duration = Duration::from_millis(500);
/// Emptied send-batch vectors kept for reuse.
const BATCH_POOL_LIMIT: usize = 256;
/// A drained leftover buffer larger than this is freed rather than kept.
const LEFTOVER_KEEP: usize = 4 * 1024;

/// Entry point of a worker thread.
pub(crate) fn run_thread(
    backend: ResolvedBackend,
    index: u16,
    driver_config: DriverConfig,
    listener: Option<TcpListener>,
    ready: Sender<io::Result<Arc<Mailbox>>>,
    go: Receiver<Arc<EngineShared>>,
) {
    match backend {
        #[cfg(target_os = "linux")]
        ResolvedBackend::IoUring => {
            run::<crate::driver::uring::UringDriver>(index, driver_config, listener, ready, go)
        }
        ResolvedBackend::Poll => run::<PollDriver>(index, driver_config, listener, ready, go),
    }
}

fn run<D: Driver>(
    index: u16,
    driver_config: DriverConfig,
    listener: Option<TcpListener>,
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
    if let Some(listener) = listener {
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
    /// Closing once queued bytes are written, or at the deadline.
    Draining {
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
    /// Bytes taken from the queue but not written yet (not in flight).
    pending: Vec<Bytes>,
    phase: Phase,
    last_recv: Instant,
}

struct Slot {
    generation: u16,
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
    free: Vec<u32>,
    live: usize,
    deferred: Deferred,
    batch_pool: Vec<Vec<Bytes>>,
    stopping: Option<Instant>,
    next_housekeeping: Instant,
}

impl Core {
    fn new(index: u16, engine: Arc<EngineShared>, mailbox: Arc<Mailbox>) -> Core {
        Core {
            index,
            engine,
            mailbox,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            deferred: Deferred::default(),
            batch_pool: Vec::new(),
            stopping: None,
            next_housekeeping: Instant::now() + HOUSEKEEPING_INTERVAL,
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
            let timeout = if !self.mailbox.is_empty() || !self.deferred.is_empty() {
                Duration::ZERO
            } else {
                wake_at
                    .saturating_duration_since(Instant::now())
                    .min(MAX_WAIT)
            };
            if let Err(error) = driver.poll(Some(timeout), self) {
                tracing::error!(worker = self.index, %error, "driver poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.apply_deferred(driver);
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
    }

    // ---- mailbox ---------------------------------------------------------

    fn process_mailbox<D: Driver>(&mut self, driver: &mut D) {
        while let Some(request) = self.mailbox.pop() {
            match request {
                Request::Flush(shared) => {
                    if let Some(slot) = self.slot_of(&shared) {
                        self.flush(driver, slot);
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
        let slot = shared.id.slot();
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
        let Some(entry) = self.entry_mut(slot) else {
            return;
        };
        if !matches!(entry.phase, Phase::Open) {
            return;
        }
        let reason = entry.handle.inner.peek_reason();
        if matches!(reason, Some(DisconnectReason::ClosedByApp)) {
            let deadline = Instant::now() + linger;
            entry.phase = Phase::Draining { deadline };
            self.flush(driver, slot);
        } else {
            let mode = match reason {
                Some(DisconnectReason::SendQueueOverflow) => CloseMode::Abort,
                _ => CloseMode::Graceful,
            };
            self.close(slot, None, mode);
        }
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
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[slot as usize].generation;
        let id = SessionId::new(self.index, slot, generation);
        if let Err(error) = driver.add_stream(id.token(), stream) {
            tracing::warn!(%peer, %error, "cannot register connection");
            self.free.push(slot);
            self.engine.release_session();
            return;
        }
        let shared = Arc::new(SessionShared::new(
            id,
            peer,
            local,
            self.engine.config.send,
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
        });
        self.live += 1;
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
        }
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
        for buf in entry.pending.drain(..) {
            shared.note_written(buf.len());
        }
        let token = shared.id.token();
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
            self.free.push(slot);
            self.live -= 1;
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
        self.close(
            slot,
            Some(DisconnectReason::CallbackPanic(message)),
            CloseMode::Abort,
        );
    }

    // ---- sending ---------------------------------------------------------

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
        entry.handle.inner.drain_queue_into(&mut entry.pending);
        if entry.pending.is_empty() {
            let spare = std::mem::take(&mut entry.pending);
            let draining = matches!(entry.phase, Phase::Draining { .. });
            recycle(&mut self.batch_pool, spare);
            if draining {
                self.close(slot, None, CloseMode::Graceful);
            }
            return;
        }
        let bufs = std::mem::take(&mut entry.pending);
        entry.sending = true;
        driver.send(entry.handle.inner.id.token(), SendBatch { bufs });
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
                shared.note_written(written);
                let mut batch = batch;
                batch.advance(written);
                if batch.bufs.is_empty() {
                    recycle(&mut self.batch_pool, batch.bufs);
                } else {
                    entry.pending = batch.bufs;
                }
                let result = catch_unwind(AssertUnwindSafe(|| {
                    entry.session.on_send(&entry.handle, written)
                }));
                if let Err(panic) = result {
                    self.callback_panicked(slot, "on_send", panic);
                    return;
                }
                self.deferred.flush.push(slot);
            }
            result => {
                // Closed meanwhile, or the write failed: nothing more goes
                // out, and the unsent bytes leave the queued count.
                shared.note_written(batch.len());
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
        if !matches!(entry.phase, Phase::Open) {
            return;
        }
        entry.last_recv = Instant::now();
        match deliver(entry, data, max_backlog) {
            Ok(()) => {}
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
        let reason = match &error {
            None => DisconnectReason::ClosedByPeer,
            Some(error) => DisconnectReason::from_io(error),
        };
        let mode = if error.is_some() {
            CloseMode::Abort
        } else {
            CloseMode::Graceful
        };
        self.close(slot, Some(reason), mode);
    }

    // ---- housekeeping ----------------------------------------------------

    fn housekeeping(&mut self, now: Instant) {
        let idle_timeout = self.engine.config.idle_timeout;
        for slot in 0..self.slots.len() as u32 {
            let Some(entry) = self.slots[slot as usize].entry.as_ref() else {
                continue;
            };
            match entry.phase {
                Phase::Open => {
                    if let Some(timeout) = idle_timeout {
                        if now.duration_since(entry.last_recv) >= timeout {
                            self.close(
                                slot,
                                Some(DisconnectReason::IdleTimeout),
                                CloseMode::Graceful,
                            );
                            continue;
                        }
                    }
                    self.tick(slot, now);
                }
                Phase::Draining { deadline } if now >= deadline => {
                    self.close(slot, None, CloseMode::Abort);
                }
                _ => {}
            }
        }
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
                self.flush(driver, slot);
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
        let generation = (token >> 32) as u16;
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
        match event {
            Event::Accepted { stream, peer } => {
                if self.engine.try_reserve_session() {
                    let worker = self.engine.pick_worker();
                    if worker == self.index as usize {
                        self.deferred.adopt.push((stream, peer));
                    } else {
                        self.engine.mailboxes[worker].push(Request::Adopt(stream, peer));
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
                tracing::warn!(worker = self.index, %error, "accept failed");
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
    if pool.len() < BATCH_POOL_LIMIT && bufs.capacity() > 0 && bufs.capacity() <= 4096 {
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
