//! [`ServerService`]: listens, accepts up to `max_sessions`, and runs the
//! accepted sessions on its workers.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::config::{common_builder_methods, ServiceConfig};
use super::engine::{engine_control_methods, Engine, SessionFactory, Transports};
use super::StartError;
use crate::transport::quic::{QuicConfig, QuicListener, QuicMetrics};
use crate::{ServerTransport, Session};

/// One address to listen on and its transport.
struct ListenerPlan {
    addr: String,
    resolved: std::io::Result<Vec<SocketAddr>>,
    transport: ServerTransport,
}

/// Configures and starts a [`ServerService`].
pub struct ServerServiceBuilder {
    /// The main listener first, then those added with `listener`.
    listeners: Vec<ListenerPlan>,
    config: ServiceConfig,
    factory: Option<SessionFactory>,
    backlog: i32,
    bind_retry: Duration,
    /// A QUIC listener beside the TCP ones.
    quic: Option<(String, std::io::Result<Vec<SocketAddr>>, QuicConfig)>,
}

/// How long `start` keeps trying a port that is in use, by default: long
/// enough for a predecessor that is still exiting to let go of it.
const DEFAULT_BIND_RETRY: Duration = Duration::from_secs(3);
/// Pause between two binds of a port that is in use.
const BIND_RETRY_INTERVAL: Duration = Duration::from_millis(50);

impl ServerServiceBuilder {
    common_builder_methods!();

    /// Most sessions at once over all workers (default 10,000). Connections
    /// past it are closed at once and counted in `refused_total`.
    pub fn max_sessions(mut self, max_sessions: usize) -> Self {
        self.config.max_sessions = max_sessions;
        self
    }

    /// The transport of the main listener (default: plain TCP).
    pub fn transport(mut self, transport: ServerTransport) -> Self {
        self.listeners[0].transport = transport;
        self
    }

    /// TLS on the main listener: it then speaks TLS only.
    pub fn tls(mut self, config: std::sync::Arc<crate::transport::rustls::ServerConfig>) -> Self {
        let main = &mut self.listeners[0].transport;
        *main = main.clone().with_tls(config);
        self
    }

    /// Another listener feeding the same sessions, with its own transport
    /// (for example a WebSocket listener beside the TCP one). Its bound
    /// address is in [`ServerService::local_addrs`], in the order added.
    pub fn listener(
        mut self,
        addr: impl ToSocketAddrs + std::fmt::Debug,
        transport: ServerTransport,
    ) -> Self {
        let shown = format!("{addr:?}").trim_matches('"').to_string();
        self.listeners.push(ListenerPlan {
            resolved: addr.to_socket_addrs().map(Iterator::collect),
            addr: shown,
            transport,
        });
        self
    }

    /// A QUIC listener on the UDP address `addr`, feeding the same sessions
    /// (see [`crate::transport::quic`]). Its bound address is
    /// [`ServerService::quic_addr`].
    pub fn quic(mut self, addr: impl ToSocketAddrs + std::fmt::Debug, config: QuicConfig) -> Self {
        let shown = format!("{addr:?}").trim_matches('"').to_string();
        self.quic = Some((shown, addr.to_socket_addrs().map(Iterator::collect), config));
        self
    }

    /// The listen backlog (default 4096).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// How long `start` retries a bind that fails with "address in use"
    /// (default 3 s), to ride out a predecessor on the same port that is
    /// still exiting. The retry is logged; `Duration::ZERO` fails at once.
    pub fn bind_retry(mut self, retry: Duration) -> Self {
        self.bind_retry = retry;
        self
    }

    /// The factory that builds each accepted connection's session.
    pub fn session<S, F>(mut self, factory: F) -> Self
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        self.factory = Some(Box::new(move || Box::new(factory()) as Box<dyn Session>));
        self
    }

    /// Binds, starts the workers and begins accepting.
    pub fn start(self) -> Result<ServerService, StartError> {
        let factory = self
            .factory
            .ok_or_else(|| StartError::Config("no session factory: call .session(..)".into()))?;
        self.config.validate().map_err(StartError::Config)?;
        let mut listeners = Vec::with_capacity(self.listeners.len());
        let mut local_addrs = Vec::with_capacity(self.listeners.len());
        let mut transports = Vec::with_capacity(self.listeners.len());
        for plan in self.listeners {
            let (listener, local_addr) =
                bind_plan(&plan.addr, plan.resolved, self.backlog, self.bind_retry)?;
            if transports
                .iter()
                .any(|(port, _): &(u16, ServerTransport)| *port == local_addr.port())
            {
                return Err(StartError::Config(format!(
                    "two listeners on port {}: each transport needs its own port",
                    local_addr.port()
                )));
            }
            transports.push((local_addr.port(), plan.transport));
            listeners.push(listener);
            local_addrs.push(local_addr);
        }
        let names: Vec<&str> = transports.iter().map(|(_, t)| t.name()).collect();
        let engine = Engine::start(
            self.config,
            factory,
            listeners,
            Transports::Server(transports.clone()),
        )?;
        for (addr, name) in local_addrs.iter().zip(names) {
            tracing::info!(%addr, transport = name, backend = %engine.backend, "listening");
        }
        let quic = match self.quic {
            Some((shown, resolved, config)) => {
                let bind_error = |source| StartError::Bind {
                    addr: shown.clone(),
                    source,
                };
                let addr = resolved
                    .map_err(bind_error)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        bind_error(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "address resolved to nothing",
                        ))
                    })?;
                Some(Box::new(
                    QuicListener::start(addr, config, std::sync::Arc::clone(&engine.shared))
                        .map_err(bind_error)?,
                ))
            }
            None => None,
        };
        Ok(ServerService {
            engine,
            local_addrs,
            quic,
        })
    }
}

fn bind_plan(
    shown: &str,
    resolved: std::io::Result<Vec<SocketAddr>>,
    backlog: i32,
    retry: Duration,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: shown.to_string(),
        source,
    };
    let addrs = resolved.map_err(bind_error)?;
    let listener = bind_any(&addrs, backlog, retry).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Binds the first of `addrs` that works. While the only failure is
/// `EADDRINUSE`, tries again every [`BIND_RETRY_INTERVAL`] until `retry` has
/// passed; then the error says how long the port stayed taken.
fn bind_any(addrs: &[SocketAddr], backlog: i32, retry: Duration) -> io::Result<TcpListener> {
    let started = Instant::now();
    let mut logged = false;
    loop {
        let mut last_error = None;
        for addr in addrs {
            match bind(*addr, backlog) {
                Ok(listener) => {
                    if logged {
                        tracing::info!(%addr, waited = ?started.elapsed(), "the port is free now");
                    }
                    return Ok(listener);
                }
                Err(error) => last_error = Some((*addr, error)),
            }
        }
        let Some((addr, error)) = last_error else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address resolved to nothing",
            ));
        };
        if error.kind() != io::ErrorKind::AddrInUse {
            return Err(error);
        }
        let waited = started.elapsed();
        if waited >= retry {
            let message = if retry.is_zero() {
                format!("{addr} is already in use (is another server running on it?)")
            } else {
                format!(
                    "{addr} is still in use after retrying for {waited:.1?} \
                     (is another server running on it?)"
                )
            };
            return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
        }
        if !logged {
            logged = true;
            tracing::warn!(%addr, retry_for = ?retry, "address in use; retrying while a previous server exits");
        }
        std::thread::sleep(BIND_RETRY_INTERVAL.min(retry - waited));
    }
}

fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A running server: accepts connections and runs their sessions.
///
/// Dropping it stops it gracefully and waits for the workers.
pub struct ServerService {
    engine: Engine,
    /// The main listener's address first, then the others in order.
    local_addrs: Vec<SocketAddr>,
    /// Dropped after the engine, whose sessions' ends it sends.
    quic: Option<Box<QuicListener>>,
}

impl ServerService {
    /// Starts configuring a server listening on `addr` (IPv4 or IPv6).
    pub fn builder(addr: impl ToSocketAddrs + std::fmt::Debug) -> ServerServiceBuilder {
        let shown = format!("{addr:?}").trim_matches('"').to_string();
        ServerServiceBuilder {
            listeners: vec![ListenerPlan {
                resolved: addr.to_socket_addrs().map(Iterator::collect),
                addr: shown,
                transport: ServerTransport::plain(),
            }],
            config: ServiceConfig::default(),
            factory: None,
            backlog: 4096,
            bind_retry: DEFAULT_BIND_RETRY,
            quic: None,
        }
    }

    /// The address the server listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Every listener's address: the main one, then those added with
    /// [`ServerServiceBuilder::listener`], in order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The QUIC listener's UDP address, if one was configured.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().map(|quic| quic.local_addr())
    }

    /// The QUIC listener's counters, if one was configured.
    pub fn quic_metrics(&self) -> Option<QuicMetrics> {
        self.quic.as_ref().map(|quic| quic.metrics())
    }

    engine_control_methods!();

    /// Waits for the workers to end (after `stop`, or forever); then the
    /// QUIC listener sends its connections' closes and ends.
    pub fn join(&self) {
        self.engine.join();
        if let Some(quic) = &self.quic {
            quic.join();
        }
    }
}
