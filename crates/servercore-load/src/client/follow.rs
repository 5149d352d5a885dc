//! Following clients to other nodes: the connections a run opens after its
//! start, for a client told `S_TRANSFER` (to the advertised address, with
//! the token) or one whose node died (to the next address of the run).
//!
//! The run's first connections come from one client service per node
//! (`nodes::Clients`); a service connects its sessions once, at its start,
//! so each later connection is a service of its own: one session, one
//! worker, small receive buffers. The follower thread starts them when
//! they are due (a reconnect waits a little between attempts), and stops
//! and joins each once its session has ended, so the services alive at any
//! time are about the clients that moved at least once.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use servercore::packet::PacketSession;
use servercore::ClientService;

use super::config::LoadConfig;
use super::session::{Carry, GameClient, RunShared};

/// A client to connect again.
pub(crate) struct Request {
    /// What the client carries over.
    pub(crate) carry: Carry,
    /// Where to connect (`host:port`).
    pub(crate) addr: String,
    /// Not before then.
    pub(crate) due: Instant,
}

/// A service is reaped once its session has ended and it is this old (a
/// connected stream is handed to the worker a moment after the connect).
const REAP_AFTER: Duration = Duration::from_millis(500);

/// How often the thread looks for ended services when nothing is due.
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// The thread that opens the clients' later connections.
pub(crate) struct Follower {
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts the thread and tells `shared` where follow requests go.
    pub(crate) fn start(config: &LoadConfig, shared: &Arc<RunShared>) -> anyhow::Result<Follower> {
        let (requests, inbox) = crossbeam_channel::unbounded();
        let (stop, stopped) = crossbeam_channel::bounded(1);
        shared.set_follower(requests);
        let config = config.clone();
        let shared = Arc::clone(shared);
        let thread = std::thread::Builder::new()
            .name("servercore-follow".into())
            .spawn(move || run(&config, &shared, &inbox, &stopped))?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops every connection it opened and waits for them.
    pub(crate) fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    config: &LoadConfig,
    shared: &Arc<RunShared>,
    inbox: &Receiver<Request>,
    stopped: &Receiver<()>,
) {
    let mut pending: Vec<Request> = Vec::new();
    let mut services: Vec<(ClientService, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = pending
            .iter()
            .map(|request| request.due.saturating_duration_since(now))
            .min()
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE);
        crossbeam_channel::select! {
            recv(inbox) -> request => match request {
                Ok(request) => pending.push(request),
                Err(_) => break,
            },
            recv(stopped) -> _ => break,
            default(wait) => {}
        }
        while let Ok(request) = inbox.try_recv() {
            pending.push(request);
        }
        let now = Instant::now();
        let mut index = 0;
        while index < pending.len() {
            if pending[index].due <= now {
                let request = pending.swap_remove(index);
                if let Some(service) = connect(config, shared, request) {
                    services.push((service, now));
                }
            } else {
                index += 1;
            }
        }
        services.retain(|(service, started)| {
            let ended = started.elapsed() >= REAP_AFTER
                && service.connecting_done()
                && service.stats().active_sessions == 0;
            if ended {
                service.stop();
                service.join();
            }
            !ended
        });
    }
    // The run is over: what is still pending stays in transit.
    for (service, _) in &services {
        service.stop();
    }
    for (service, _) in &services {
        service.join();
    }
}

/// Connects `request`'s client: one service with one session, whose
/// factory builds the client's next connection from what it carries. A
/// connect that fails hands the client to its next attempt.
fn connect(
    config: &LoadConfig,
    shared: &Arc<RunShared>,
    request: Request,
) -> Option<ClientService> {
    let Request { carry, addr, .. } = request;
    let slot = Arc::new(Mutex::new(Some(carry)));
    let packet_config = super::load::packet_config();
    let factory = (Arc::clone(shared), Arc::clone(&slot));
    let on_error = (Arc::clone(shared), Arc::clone(&slot));
    let builder = ClientService::builder(addr.as_str())
        .backend(config.backend)
        .workers(1)
        .sessions(1)
        .receive_buffers(16 * 1024, 16)
        .connect_timeout(config.connect_timeout)
        .transport(config.transport.clone())
        .shutdown_timeout(Duration::from_secs(2))
        .on_connect_error(move |failure| {
            tracing::debug!(addr = %failure.addr, error = %failure.error, "a follow connect failed");
            if let Some(carry) = on_error.1.lock().take() {
                on_error.0.attempt_failed(carry, "connect");
            }
        })
        .session(move || {
            let client = match factory.1.lock().take() {
                Some(carry) => GameClient::carried(Arc::clone(&factory.0), carry),
                // One session per service: never reached.
                None => GameClient::new(Arc::clone(&factory.0)),
            };
            PacketSession::new(client, packet_config.clone())
        });
    match builder.start() {
        Ok(service) => Some(service),
        Err(error) => {
            tracing::debug!(%addr, %error, "cannot follow to this address");
            if let Some(carry) = slot.lock().take() {
                shared.attempt_failed(carry, "bad_address");
            }
            None
        }
    }
}
