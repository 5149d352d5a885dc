//! [`ClientService`]: connects sessions to a server and runs them with the
//! same callbacks as accepted ones (the course's dummy-client service).
//!
//! Connecting happens on one connector thread (blocking connects with a
//! timeout), which hands each connected stream to a worker round-robin; a
//! failed connect is reported through the `on_connect_error` callback and the
//! `failed` counter.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use super::config::{common_builder_methods, ServiceConfig};
use super::engine::{engine_control_methods, Engine, SessionFactory, Transports};
use super::StartError;
use crate::transport::quic::{Attempt, Counters, QuicClientConfig, QuicConnector, QuicMetrics};
use crate::{ClientTransport, Session};

/// A connect that failed.
#[derive(Debug)]
pub struct ConnectError {
    /// Which session (0-based, in connect order).
    pub index: usize,
    /// The address tried.
    pub addr: SocketAddr,
    /// The local source address the connect was bound to, if one was set.
    pub source: Option<IpAddr>,
    /// What went wrong.
    pub error: io::Error,
}

/// Why [`ClientService::adopt`] did not take a stream.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Every place ([`ClientServiceBuilder::max_sessions`]) is taken, or
    /// the service is stopping.
    #[error("the client service is full or stopping")]
    Full,
    /// The service stopped before a worker took the stream.
    #[error("the client service is stopping")]
    Stopping,
    /// The service's sessions run over QUIC, which adopts no TCP stream.
    #[error("a QUIC client service adopts no TCP stream")]
    Quic,
    /// The stream has no peer address (it is not connected).
    #[error("the stream is not connected: {0}")]
    Socket(#[source] io::Error),
}

type ConnectErrorHook = Box<dyn Fn(&ConnectError) + Send + Sync>;

/// Configures and starts a [`ClientService`].
pub struct ClientServiceBuilder {
    addr: String,
    resolved: io::Result<Vec<SocketAddr>>,
    config: ServiceConfig,
    factory: Option<SessionFactory>,
    sessions: usize,
    /// Places asked for with `max_sessions` (0: the connected ones only).
    room: usize,
    sources: Vec<IpAddr>,
    connect_timeout: Duration,
    on_connect_error: Option<ConnectErrorHook>,
    transport: ClientTransport,
    quic: Option<QuicClientConfig>,
}

impl ClientServiceBuilder {
    common_builder_methods!();

    /// The transport of every connection (default: plain TCP): TLS,
    /// WebSocket or both. The sessions' callbacks see the plain stream.
    pub fn transport(mut self, transport: ClientTransport) -> Self {
        self.transport = transport;
        self
    }

    /// Connect over QUIC instead of TCP (the address is then a UDP one):
    /// each session is a QUIC connection whose first bidirectional stream
    /// carries the session's bytes, with datagrams where the server takes
    /// them (see [`crate::transport::quic`]). The TCP transport is unused.
    pub fn quic(mut self, config: QuicClientConfig) -> Self {
        self.quic = Some(config);
        self
    }

    /// How many sessions to connect (default 1).
    pub fn sessions(mut self, sessions: usize) -> Self {
        self.sessions = sessions;
        self.config.max_sessions = sessions.max(self.room).max(1);
        self
    }

    /// Room for sessions beyond the ones it connects: streams the
    /// application connects itself and hands over with
    /// [`ClientService::adopt`] (default: the connected ones only).
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.room = sessions;
        self.config.max_sessions = sessions.max(self.sessions).max(1);
        self
    }

    /// Local source addresses used in turn (for more connections than one
    /// address has ports). Empty: the system picks.
    pub fn source_addrs(mut self, sources: Vec<IpAddr>) -> Self {
        self.sources = sources;
        self
    }

    /// Time allowed for each connect (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Called on the connector thread for every connect that fails.
    pub fn on_connect_error(
        mut self,
        hook: impl Fn(&ConnectError) + Send + Sync + 'static,
    ) -> Self {
        self.on_connect_error = Some(Box::new(hook));
        self
    }

    /// The factory that builds each connection's session.
    pub fn session<S, F>(mut self, factory: F) -> Self
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        self.factory = Some(Box::new(move || Box::new(factory()) as Box<dyn Session>));
        self
    }

    /// Starts the workers and begins connecting in the background.
    pub fn start(self) -> Result<ClientService, StartError> {
        let factory = self
            .factory
            .ok_or_else(|| StartError::Config("no session factory: call .session(..)".into()))?;
        let addrs = self.resolved.map_err(|source| StartError::Bind {
            addr: self.addr.clone(),
            source,
        })?;
        let target = *addrs.first().ok_or_else(|| StartError::Bind {
            addr: self.addr.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing"),
        })?;
        let engine = Arc::new(Engine::start(
            self.config,
            factory,
            Vec::new(),
            Transports::Client(self.transport),
        )?);
        let counters = Arc::new(ConnectCounters::default());
        let quic = match self.quic {
            Some(config) => Some(QuicConnector::new(target, config).map_err(StartError::Worker)?),
            None => None,
        };
        let quic_counters = quic.as_ref().map(QuicConnector::counters);
        let connector = {
            let engine = Arc::clone(&engine);
            let counters = Arc::clone(&counters);
            let plan = ConnectPlan {
                target,
                sessions: self.sessions,
                sources: self.sources,
                timeout: self.connect_timeout,
                hook: self.on_connect_error,
            };
            std::thread::Builder::new()
                .name("servercore-connect".into())
                .spawn(move || match quic {
                    Some(quic) => plan.run_quic(&engine, &counters, quic),
                    None => plan.run(&engine, &counters),
                })
                .map_err(StartError::Worker)?
        };
        Ok(ClientService {
            engine,
            counters,
            connector: Mutex::new(Some(connector)),
            quic: quic_counters,
        })
    }
}

#[derive(Default)]
struct ConnectCounters {
    connected: AtomicU64,
    failed: AtomicU64,
    done: AtomicBool,
}

struct ConnectPlan {
    target: SocketAddr,
    sessions: usize,
    sources: Vec<IpAddr>,
    timeout: Duration,
    hook: Option<ConnectErrorHook>,
}

impl ConnectPlan {
    fn run(self, engine: &Engine, counters: &ConnectCounters) {
        for index in 0..self.sessions {
            if engine.is_stopping() {
                break;
            }
            let source =
                (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()]);
            match connect(self.target, source, self.timeout) {
                Ok(stream) if engine.shared.try_reserve_session() => {
                    counters.connected.fetch_add(1, Ordering::AcqRel);
                    engine.shared.hand_out(stream, self.target);
                }
                Ok(_) => break,
                Err(error) => {
                    counters.failed.fetch_add(1, Ordering::AcqRel);
                    let failure = ConnectError {
                        index,
                        addr: self.target,
                        source,
                        error,
                    };
                    tracing::debug!(index, addr = %self.target, error = %failure.error, "connect failed");
                    if let Some(hook) = &self.hook {
                        hook(&failure);
                    }
                }
            }
        }
        counters.done.store(true, Ordering::Release);
    }

    /// The same over QUIC; the thread then runs the bridges until every
    /// session ended.
    fn run_quic(self, engine: &Engine, counters: &ConnectCounters, mut quic: QuicConnector) {
        for index in 0..self.sessions {
            if engine.is_stopping() {
                break;
            }
            match quic.connect(&engine.shared, self.target, self.timeout) {
                Attempt::Connected => {
                    counters.connected.fetch_add(1, Ordering::AcqRel);
                }
                Attempt::Full => break,
                Attempt::Failed(error) => {
                    counters.failed.fetch_add(1, Ordering::AcqRel);
                    let failure = ConnectError {
                        index,
                        addr: self.target,
                        source: None,
                        error,
                    };
                    tracing::debug!(index, addr = %self.target, error = %failure.error, "QUIC connect failed");
                    if let Some(hook) = &self.hook {
                        hook(&failure);
                    }
                }
            }
        }
        counters.done.store(true, Ordering::Release);
        quic.finish();
    }
}

fn connect(target: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(source) = source {
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    socket.connect_timeout(&target.into(), timeout)?;
    Ok(socket.into())
}

/// Running client sessions connected to one server.
///
/// Dropping it stops it gracefully and waits for the workers.
pub struct ClientService {
    engine: Arc<Engine>,
    counters: Arc<ConnectCounters>,
    connector: Mutex<Option<JoinHandle<()>>>,
    /// The QUIC bridges' counters, when the sessions connect over QUIC.
    quic: Option<Arc<Counters>>,
}

impl ClientService {
    /// Starts configuring clients of the server at `addr`.
    pub fn builder(addr: impl ToSocketAddrs + std::fmt::Debug) -> ClientServiceBuilder {
        let shown = format!("{addr:?}").trim_matches('"').to_string();
        ClientServiceBuilder {
            resolved: addr.to_socket_addrs().map(Iterator::collect),
            addr: shown,
            config: ServiceConfig::default(),
            factory: None,
            sessions: 1,
            room: 0,
            sources: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            on_connect_error: None,
            transport: ClientTransport::plain(),
            quic: None,
        }
    }

    /// Connects that succeeded so far.
    pub fn connected(&self) -> u64 {
        self.counters.connected.load(Ordering::Acquire)
    }

    /// Connects that failed so far.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Acquire)
    }

    /// True once every connect was attempted.
    pub fn connecting_done(&self) -> bool {
        self.counters.done.load(Ordering::Acquire)
    }

    /// The QUIC counters (datagrams, stream bytes), when the sessions
    /// connect over QUIC.
    pub fn quic_metrics(&self) -> Option<QuicMetrics> {
        self.quic.as_ref().map(|counters| counters.snapshot())
    }

    /// Runs one more session on `stream`, a connection the application
    /// made itself (to this service's server or any other: a player that
    /// moves between servers), with the session `make` builds on the
    /// worker that takes it, instead of the factory's. The service's
    /// transport (TLS, WebSocket) starts on it as on a connected one.
    /// Fails, closing the stream, when the service is full
    /// ([`ClientServiceBuilder::max_sessions`]) or stopping, or over QUIC.
    pub fn adopt<S, F>(&self, stream: TcpStream, make: F) -> Result<(), AdoptError>
    where
        S: Session,
        F: FnOnce() -> S + Send + 'static,
    {
        if self.quic.is_some() {
            return Err(AdoptError::Quic);
        }
        let peer = stream.peer_addr().map_err(AdoptError::Socket)?;
        if !self.engine.shared.try_reserve_session() {
            return Err(AdoptError::Full);
        }
        let make: crate::session::SessionMaker = Box::new(move || Box::new(make()));
        if self.engine.shared.hand_out_with(stream, peer, make) {
            Ok(())
        } else {
            Err(AdoptError::Stopping)
        }
    }

    engine_control_methods!();

    /// Waits for the connector and the workers to end. Over QUIC the
    /// connector thread runs the bridges until the sessions end, so the
    /// workers are waited for first.
    pub fn join(&self) {
        let connector = self.connector.lock().take();
        if self.quic.is_some() {
            self.engine.join();
        }
        if let Some(connector) = connector {
            let _ = connector.join();
        }
        if self.quic.is_none() {
            self.engine.join();
        }
    }
}

impl Drop for ClientService {
    fn drop(&mut self) {
        self.stop();
        self.join();
    }
}
