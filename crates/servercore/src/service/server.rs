//! [`ServerService`]: listens, accepts up to `max_sessions`, and runs the
//! accepted sessions on its workers.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::config::{common_builder_methods, ServiceConfig};
use super::engine::{engine_control_methods, Engine, SessionFactory};
use super::StartError;
use crate::Session;

/// Configures and starts a [`ServerService`].
pub struct ServerServiceBuilder {
    addr: String,
    resolved: std::io::Result<Vec<SocketAddr>>,
    config: ServiceConfig,
    factory: Option<SessionFactory>,
    backlog: i32,
    bind_retry: Duration,
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
        let addrs = self.resolved.map_err(|source| StartError::Bind {
            addr: self.addr.clone(),
            source,
        })?;
        let listener =
            bind_any(&addrs, self.backlog, self.bind_retry).map_err(|source| StartError::Bind {
                addr: self.addr.clone(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.addr.clone(),
            source,
        })?;
        let engine = Engine::start(self.config, factory, Some(listener))?;
        tracing::info!(addr = %local_addr, backend = %engine.backend, "listening");
        Ok(ServerService { engine, local_addr })
    }
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
    local_addr: SocketAddr,
}

impl ServerService {
    /// Starts configuring a server listening on `addr` (IPv4 or IPv6).
    pub fn builder(addr: impl ToSocketAddrs + std::fmt::Debug) -> ServerServiceBuilder {
        let shown = format!("{addr:?}").trim_matches('"').to_string();
        ServerServiceBuilder {
            resolved: addr.to_socket_addrs().map(Iterator::collect),
            addr: shown,
            config: ServiceConfig::default(),
            factory: None,
            backlog: 4096,
            bind_retry: DEFAULT_BIND_RETRY,
        }
    }

    /// The address the server listens on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    engine_control_methods!();

    /// Waits for the workers to end (after `stop`, or forever).
    pub fn join(&self) {
        self.engine.join();
    }
}
