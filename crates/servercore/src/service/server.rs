//! [`ServerService`]: listens, accepts up to `max_sessions`, and runs the
//! accepted sessions on its workers.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

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
}

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
        let mut last_error = None;
        let mut listener = None;
        for addr in &addrs {
            match bind(*addr, self.backlog) {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let listener = listener.ok_or_else(|| StartError::Bind {
            addr: self.addr.clone(),
            source: last_error.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "address resolved to nothing",
                )
            }),
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
