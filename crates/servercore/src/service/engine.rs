//! The running core shared by server and client services: the worker
//! threads, their mailboxes, the session factory and the global counters.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;

use super::config::ServiceConfig;
use super::disconnect_log::DisconnectSummary;
use super::metrics::EngineMetrics;
use super::worker;
use super::StartError;
use crate::driver::{resolve_backend, Backend};
use crate::session::{Bridged, Mailbox, Request, Session};
use crate::transport::{ClientTransport, ServerTransport, Transport};

/// Builds the session object of each new connection.
pub(crate) type SessionFactory = Box<dyn Fn() -> Box<dyn Session> + Send + Sync>;

/// Counters of a running service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Sessions connected now (including ones still closing).
    pub active_sessions: usize,
    /// Sessions ever started.
    pub sessions_total: u64,
    /// Connections refused because `max_sessions` was reached.
    pub refused_total: u64,
    /// Worker slots still holding a session (0 after a clean stop).
    pub live_slots: usize,
    /// Gathered writes submitted to sockets (one `sendmsg`/`writev` each,
    /// partial writes included): with deliveries, how well sends coalesce.
    pub writes_total: u64,
}

/// Why a worker ended on its own: its I/O driver failed for good (for
/// example the io_uring completion queue lost completions, or `epoll_wait`
/// failed). The worker's sessions were disconnected with
/// [`DisconnectReason::IoError`](crate::DisconnectReason::IoError) and the
/// whole service stopped itself; [`ServerService::failure`](crate::ServerService::failure)
/// reports the first such failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker} failed: {message}")]
pub struct WorkerFailure {
    /// Index of the worker that failed.
    pub worker: usize,
    /// The driver error's kind.
    pub kind: std::io::ErrorKind,
    /// The driver error as text.
    pub message: String,
}

/// State every worker of one service shares.
pub(crate) struct EngineShared {
    pub config: ServiceConfig,
    pub factory: SessionFactory,
    pub mailboxes: Vec<Arc<Mailbox>>,
    pub active: AtomicUsize,
    pub live_slots: AtomicUsize,
    pub sessions_total: AtomicU64,
    pub refused_total: AtomicU64,
    pub writes_total: AtomicU64,
    pub next_worker: AtomicUsize,
    pub stopping: AtomicBool,
    /// The first worker failure, if any.
    pub failure: Mutex<Option<WorkerFailure>>,
    pub transports: Transports,
    /// The INFO log's disconnect counts, written by the workers.
    pub disconnect_summary: DisconnectSummary,
}

/// Which transport each new connection gets.
pub(crate) enum Transports {
    /// A server's listeners, by the port they listen on.
    Server(Vec<(u16, ServerTransport)>),
    /// Every connection of a client service.
    Client(ClientTransport),
}

impl Transports {
    /// True when every connection is plain TCP (no lookup needed).
    pub fn all_plain(&self) -> bool {
        match self {
            Transports::Server(listeners) => listeners.iter().all(|(_, t)| t.is_plain()),
            Transports::Client(transport) => transport.is_plain(),
        }
    }

    /// The transport state of a new connection (`None`: plain TCP).
    pub fn start(&self, local: SocketAddr, peer: SocketAddr) -> Option<Box<Transport>> {
        match self {
            Transports::Server(listeners) => listeners
                .iter()
                .find(|(port, _)| *port == local.port())
                .and_then(|(_, transport)| transport.start()),
            Transports::Client(transport) => transport.start(peer),
        }
    }
}

impl EngineShared {
    /// Reserves a place for one more session, or says the service is full.
    pub fn try_reserve_session(&self) -> bool {
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        if previous >= self.config.max_sessions || self.stopping.load(Ordering::Acquire) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release_session(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Asks every worker to stop (graceful: flush, then `Shutdown`).
    pub fn request_stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            tracing::info!("stopping service");
            for mailbox in &self.mailboxes {
                mailbox.push(Request::Stop);
            }
        }
    }

    /// Records that worker `worker` failed with `error` (the first failure
    /// is kept) and stops the service.
    pub fn worker_failed(&self, worker: u16, error: &std::io::Error) {
        self.failure.lock().get_or_insert_with(|| WorkerFailure {
            worker: worker.into(),
            kind: error.kind(),
            message: error.to_string(),
        });
        self.request_stop();
    }

    /// Picks the worker of the next session, round-robin.
    pub fn pick_worker(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed) % self.mailboxes.len()
    }

    /// Hands a connected stream, whose place `try_reserve_session` reserved,
    /// to a worker (round-robin).
    pub fn hand_out(&self, stream: TcpStream, peer: SocketAddr) {
        self.hand_to(self.pick_worker(), stream, peer);
    }

    /// Hands a connected stream with a reserved place to worker `index`. If
    /// that worker has already stopped, the stream is closed and the place
    /// given back.
    pub fn hand_to(&self, index: usize, stream: TcpStream, peer: SocketAddr) {
        if let Err((stream, peer)) = self.mailboxes[index].push_adopt(stream, peer) {
            tracing::debug!(%peer, worker = index, "worker stopped; closing the new connection");
            drop(stream);
            self.release_session();
        }
    }
}

impl EngineShared {
    /// Hands a connected stream with a reserved place, and what makes its
    /// session, to a worker (round-robin). If that worker has already
    /// stopped, the stream is closed and the place given back; returns
    /// false then.
    pub fn hand_out_with(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        make: crate::session::SessionMaker,
    ) -> bool {
        let index = self.pick_worker();
        if self.mailboxes[index]
            .push_adopt_with(stream, peer, make)
            .is_err()
        {
            self.release_session();
            return false;
        }
        true
    }

    /// Hands one end of a bridge (a QUIC connection's stream), whose place
    /// `try_reserve_session` reserved, to a worker (round-robin). If that
    /// worker has already stopped, the stream is closed and the place given
    /// back; returns false then.
    pub fn hand_out_bridged(&self, stream: TcpStream, bridged: Box<Bridged>) -> bool {
        let index = self.pick_worker();
        if self.mailboxes[index]
            .push_adopt_bridged(stream, bridged)
            .is_err()
        {
            self.release_session();
            return false;
        }
        true
    }
}

/// A started set of workers.
pub(crate) struct Engine {
    pub shared: Arc<EngineShared>,
    pub backend: Backend,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the workers; the listeners, if any, are served by worker 0.
    pub fn start(
        config: ServiceConfig,
        factory: SessionFactory,
        listeners: Vec<TcpListener>,
        transports: Transports,
    ) -> Result<Engine, StartError> {
        config.validate().map_err(StartError::Config)?;
        let resolved = resolve_backend(config.backend)?;
        let backend = resolved.as_backend();
        tracing::info!(backend = %backend, workers = config.workers, "starting service");

        let mut listeners = listeners;
        let mut threads = Vec::with_capacity(config.workers);
        let mut mailboxes = Vec::with_capacity(config.workers);
        let mut activations = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let (go_tx, go_rx) = crossbeam_channel::bounded::<Arc<EngineShared>>(1);
            let worker_listeners = if index == 0 {
                std::mem::take(&mut listeners)
            } else {
                Vec::new()
            };
            let driver_config = config.driver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("servercore-w{index}"))
                .spawn(move || {
                    worker::run_thread(
                        resolved,
                        index as u16,
                        driver_config,
                        worker_listeners,
                        ready_tx,
                        go_rx,
                    )
                })
                .map_err(StartError::Worker)?;
            let mailbox = match ready_rx.recv() {
                Ok(Ok(mailbox)) => mailbox,
                Ok(Err(error)) => {
                    drop(go_tx);
                    let _ = spawned.join();
                    abort_started(&mut activations, &mut threads);
                    return Err(StartError::Worker(error));
                }
                Err(_) => {
                    let _ = spawned.join();
                    abort_started(&mut activations, &mut threads);
                    return Err(StartError::Worker(std::io::Error::other(
                        "worker thread exited during start",
                    )));
                }
            };
            mailboxes.push(mailbox);
            activations.push(go_tx);
            threads.push(spawned);
        }

        let shared = Arc::new(EngineShared {
            config,
            factory,
            mailboxes,
            active: AtomicUsize::new(0),
            live_slots: AtomicUsize::new(0),
            sessions_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            writes_total: AtomicU64::new(0),
            next_worker: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            failure: Mutex::new(None),
            transports,
            disconnect_summary: DisconnectSummary::new(),
        });
        for go in activations {
            let _ = go.send(Arc::clone(&shared));
        }
        Ok(Engine {
            shared,
            backend,
            threads: Mutex::new(threads),
        })
    }

    pub fn stats(&self) -> ServiceStats {
        let shared = &self.shared;
        ServiceStats {
            active_sessions: shared.active.load(Ordering::Acquire),
            sessions_total: shared.sessions_total.load(Ordering::Acquire),
            refused_total: shared.refused_total.load(Ordering::Acquire),
            live_slots: shared.live_slots.load(Ordering::Acquire),
            writes_total: shared.writes_total.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of the engine counters, summed per worker.
    pub fn metrics(&self) -> EngineMetrics {
        let shared = &self.shared;
        EngineMetrics {
            workers: shared
                .mailboxes
                .iter()
                .map(|mailbox| mailbox.counters.snapshot())
                .collect(),
            refused_total: shared.refused_total.load(Ordering::Acquire),
            sessions_total: shared.sessions_total.load(Ordering::Acquire),
        }
    }

    /// Queues `data` to every connected session; one buffer for all.
    pub fn broadcast(&self, data: Bytes) {
        for mailbox in &self.shared.mailboxes {
            mailbox.push(Request::Broadcast(data.clone()));
        }
    }

    /// Asks every worker to stop (graceful: flush, then `Shutdown`).
    pub fn stop(&self) {
        self.shared.request_stop();
    }

    /// The first worker failure, if a worker ended on its own.
    pub fn failure(&self) -> Option<WorkerFailure> {
        self.shared.failure.lock().clone()
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Waits for every worker thread to end.
    pub fn join(&self) {
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        self.shared.disconnect_summary.flush(&self.shared.mailboxes);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        self.join();
    }
}

fn abort_started(
    activations: &mut Vec<crossbeam_channel::Sender<Arc<EngineShared>>>,
    threads: &mut Vec<JoinHandle<()>>,
) {
    activations.clear();
    for thread in threads.drain(..) {
        let _ = thread.join();
    }
}

/// The methods every service type forwards to its `engine` field.
macro_rules! engine_control_methods {
    () => {
        /// The backend the workers run on (never `Auto`).
        pub fn backend(&self) -> $crate::Backend {
            self.engine.backend
        }

        /// Counters: active sessions, totals, refusals, live slots.
        pub fn stats(&self) -> $crate::ServiceStats {
            self.engine.stats()
        }

        /// A snapshot of the engine counters (per worker, and summed with
        /// [`EngineMetrics::total`](crate::EngineMetrics::total)): sessions,
        /// accepts, refusals, disconnects by kind, bytes, packets, writes,
        /// queued bytes, driver events, coalesced flushes.
        pub fn metrics(&self) -> $crate::EngineMetrics {
            self.engine.metrics()
        }

        /// Queues `data` to every connected session; the buffer is shared,
        /// and each worker submits its sessions' writes together.
        pub fn broadcast(&self, data: bytes::Bytes) {
            self.engine.broadcast(data);
        }

        /// Graceful stop: no new sessions, queued sends flushed within the
        /// shutdown timeout, then every session gets
        /// `on_disconnected(Shutdown)`. Returns at once; `join` waits.
        pub fn stop(&self) {
            self.engine.stop();
        }

        /// True once `stop` was called (or a worker failure stopped the
        /// service).
        pub fn is_stopping(&self) -> bool {
            self.engine.is_stopping()
        }

        /// Why the service stopped on its own: the first worker whose I/O
        /// driver failed for good. `None` while running normally and after
        /// an ordinary `stop`. Check it after `join` to tell a failure from
        /// a requested stop.
        pub fn failure(&self) -> Option<$crate::WorkerFailure> {
            self.engine.failure()
        }
    };
}
pub(crate) use engine_control_methods;
