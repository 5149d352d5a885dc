//! Following clients to other nodes: the connections a run opens after its
//! start, for a client told `S_TRANSFER` (to the advertised address, with
//! the token) or one whose node died (to the next address of the run).
//!
//! The run's first connections come from one client service per node
//! (`nodes::Clients`), which connects its sessions once, at its start. The
//! later ones all run in one more service of the run, started with no
//! connection of its own: the follower thread connects each when it is due
//! (a reconnect waits a little between attempts), to whichever node, and
//! hands the stream to the service with the session the client carries
//! over (`ClientService::adopt`). A client that moves costs one session,
//! not a service.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
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

/// How often the thread wakes when nothing is due (to see the stop).
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Places in the followers' service beyond one per client of the run (old
/// connections still closing).
const SPARE_PLACES: usize = 64;

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
    let mut service: Option<ClientService> = None;
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
                follow(config, shared, &mut service, request);
            } else {
                index += 1;
            }
        }
    }
    // The run is over: what is still pending stays in transit.
    if let Some(service) = service {
        service.stop();
        service.join();
    }
}

/// The service the followed connections run in, started at the first
/// one (with no connection of its own).
fn start_service(config: &LoadConfig, shared: &Arc<RunShared>) -> anyhow::Result<ClientService> {
    let packet_config = super::load::packet_config();
    let factory = Arc::clone(shared);
    let mut builder = ClientService::builder(config.addr)
        .backend(config.backend)
        .sessions(0)
        .max_sessions(config.sessions + SPARE_PLACES)
        .transport(config.transport.clone())
        .shutdown_timeout(Duration::from_secs(2))
        // Every session is adopted with its own; never called.
        .session(move || {
            PacketSession::new(GameClient::new(Arc::clone(&factory)), packet_config.clone())
        });
    if let Some(workers) = config.workers {
        builder = builder.workers(workers);
    }
    Ok(builder.start()?)
}

/// Connects `request`'s client and hands the stream, with the client's
/// next connection, to the followers' service. A connect that fails hands
/// the client to its next attempt.
fn follow(
    config: &LoadConfig,
    shared: &Arc<RunShared>,
    service: &mut Option<ClientService>,
    request: Request,
) {
    let Request { carry, addr, .. } = request;
    let Some(target) = addr.to_socket_addrs().ok().and_then(|mut all| all.next()) else {
        tracing::debug!(%addr, "cannot follow to this address");
        shared.attempt_failed(carry, "bad_address");
        return;
    };
    let stream = match TcpStream::connect_timeout(&target, config.connect_timeout) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%addr, %error, "a follow connect failed");
            shared.attempt_failed(carry, "connect");
            return;
        }
    };
    if service.is_none() {
        match start_service(config, shared) {
            Ok(started) => *service = Some(started),
            Err(error) => {
                tracing::warn!(%error, "cannot start the service for followed connections");
                shared.attempt_failed(carry, "connect");
                return;
            }
        }
    }
    let Some(service) = service.as_ref() else {
        return;
    };
    let packet_config = super::load::packet_config();
    let carried = Arc::clone(shared);
    if let Err(error) = service.adopt(stream, move || {
        PacketSession::new(GameClient::carried(carried, carry), packet_config)
    }) {
        // The client is lost with its session: the run is ending, or more
        // clients move at once than the service has places for.
        tracing::debug!(%addr, %error, "a followed connection was not taken");
    }
}
