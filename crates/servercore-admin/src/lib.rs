//! servercore-admin: the admin HTTP listener of servercore's servers.
//!
//! One small HTTP/1.1 server on its own thread (module `http`: one `mio`
//! poll, non-blocking connections, `httparse` for the request head), bound
//! to the address the operator gave (`--admin 127.0.0.1:9100`; an address
//! that is not loopback only when asked for, [`AdminOptions`]), serving:
//! - `/metrics`: every number in the OpenMetrics text format (what
//!   Prometheus scrapes), encoded by `prometheus-client`;
//! - `/healthz`: `ok` while the server runs;
//! - `/status`: the same numbers as JSON, plus the panels the server adds
//!   ([`Panel`]: maps and tables whose meaning is the server's);
//! - `/`: a live status page for a person (`assets/status.html`, plain JS
//!   polling `/status` every second).
//!
//! This crate owns the HTTP side, the metric model ([`Snapshot`]) and the
//! engine's metrics ([`engine_metrics`]); it knows nothing of the game
//! (which writes its own numbers into the snapshot). A server hands it a
//! [`StatusSource`], a function that fills a [`Snapshot`] from its atomic
//! counters. The source runs on the admin thread at each request, so a
//! scrape costs the I/O workers nothing: no lock is shared with them.
//!
//! Against hostile or broken peers: the request head is bounded
//! ([`MAX_HEAD`]), each connection has a deadline to send its request and
//! one to read its answer, connections are bounded (the oldest goes), and
//! a peer that does not read delays nobody else.

#![warn(missing_docs)]

mod engine;
mod http;
mod panel;
mod snapshot;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

pub use engine::{engine_metrics, quic_metrics};
pub use panel::{MapPanel, MapStrip, Panel, TablePanel};
pub use snapshot::{Histogram, Kind, Metric, Sample, Snapshot};

/// Longest a connection may take to send its request head, by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may take to read its answer, by default.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once, by default.
pub const MAX_CONNECTIONS: usize = 128;

pub use http::MAX_HEAD;

/// The status page, served at `/`.
pub const STATUS_PAGE: &str = include_str!("../assets/status.html");

/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Fills a [`Snapshot`] with the server's numbers; called on the admin
/// thread for every `/metrics` and `/status` request.
pub trait StatusSource: Send + Sync + 'static {
    /// Adds the current values to `out`.
    fn fill(&self, out: &mut Snapshot);
}

impl<F> StatusSource for F
where
    F: Fn(&mut Snapshot) + Send + Sync + 'static,
{
    fn fill(&self, out: &mut Snapshot) {
        self(out)
    }
}

/// What the status page says about the server besides its numbers.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Which server: `game`, `echo`, ... (the page draws the world map
    /// for `game`).
    pub kind: String,
    /// The I/O backend its workers run on.
    pub backend: String,
    /// The address its sessions connect to.
    pub listen: String,
}

/// How the admin listener guards itself.
#[derive(Debug, Clone, Copy)]
pub struct AdminOptions {
    /// Serve on an address that is not loopback. Its pages are
    /// unauthenticated and tell much about the server, so this must be
    /// asked for.
    pub allow_public: bool,
    /// Longest a connection may take to send its request head
    /// ([`REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Longest a connection may take to read its answer
    /// ([`RESPONSE_TIMEOUT`]).
    pub response_timeout: Duration,
    /// Most connections at once ([`MAX_CONNECTIONS`]); one more closes the
    /// oldest.
    pub max_connections: usize,
}

impl Default for AdminOptions {
    /// Loopback only, [`REQUEST_TIMEOUT`], [`RESPONSE_TIMEOUT`],
    /// [`MAX_CONNECTIONS`].
    fn default() -> Self {
        AdminOptions {
            allow_public: false,
            request_timeout: REQUEST_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// True for addresses only this machine can reach: `127.0.0.0/8`, `::1`,
/// and `::ffff:127.0.0.0/104`.
pub fn is_loopback(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why the admin listener could not start.
#[derive(Debug)]
pub struct AdminError {
    addr: SocketAddr,
    kind: AdminErrorKind,
}

#[derive(Debug)]
enum AdminErrorKind {
    NotLoopback,
    Io(std::io::Error),
}

impl AdminError {
    /// True if it was refused because the address is not loopback (and
    /// [`AdminOptions::allow_public`] was not set).
    pub fn is_not_loopback(&self) -> bool {
        matches!(self.kind, AdminErrorKind::NotLoopback)
    }

    fn io(addr: SocketAddr, error: std::io::Error) -> AdminError {
        AdminError {
            addr,
            kind: AdminErrorKind::Io(error),
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen for admin HTTP on {}: ", self.addr)?;
        match &self.kind {
            AdminErrorKind::NotLoopback => f.write_str(
                "not a loopback address, and its pages (metrics, status) are unauthenticated",
            ),
            AdminErrorKind::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            AdminErrorKind::Io(error) => Some(error),
            AdminErrorKind::NotLoopback => None,
        }
    }
}

/// A running admin listener. Dropping it stops it and waits for its thread.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<mio::Waker>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// The shared state of the admin thread.
struct Admin {
    info: ServerInfo,
    source: Arc<dyn StatusSource>,
    registry: Registry,
    started: Instant,
}

/// The `prometheus-client` collector: asks the source at each scrape.
struct SourceCollector(Arc<dyn StatusSource>);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut snapshot = Snapshot::default();
        self.0.fill(&mut snapshot);
        snapshot.encode(encoder)
    }
}

impl AdminServer {
    /// Binds `addr` (a loopback address) and starts serving on a thread of
    /// its own, with the default [`AdminOptions`] (port 0 picks a free
    /// port; see [`AdminServer::local_addr`]).
    pub fn start(
        addr: SocketAddr,
        info: ServerInfo,
        source: impl StatusSource,
    ) -> Result<AdminServer, AdminError> {
        AdminServer::start_with(addr, AdminOptions::default(), info, source)
    }

    /// [`AdminServer::start`] with `options`; an address that is not
    /// loopback is refused unless [`AdminOptions::allow_public`].
    pub fn start_with(
        addr: SocketAddr,
        options: AdminOptions,
        info: ServerInfo,
        source: impl StatusSource,
    ) -> Result<AdminServer, AdminError> {
        if !options.allow_public && !is_loopback(addr) {
            return Err(AdminError {
                addr,
                kind: AdminErrorKind::NotLoopback,
            });
        }
        let listener =
            std::net::TcpListener::bind(addr).map_err(|error| AdminError::io(addr, error))?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| AdminError::io(addr, error))?;
        let source: Arc<dyn StatusSource> = Arc::new(source);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SourceCollector(Arc::clone(&source))));
        let admin = Admin {
            info,
            source,
            registry,
            started: Instant::now(),
        };
        let limits = http::Limits {
            request_timeout: options.request_timeout,
            response_timeout: options.response_timeout,
            max_connections: options.max_connections.max(1),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (server, waker) =
            http::Server::new(listener, limits, Arc::clone(&stop), move |request| {
                admin.respond(request)
            })
            .map_err(|error| AdminError::io(addr, error))?;
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || server.run())
            .map_err(|error| AdminError::io(addr, error))?;
        if is_loopback(local_addr) {
            tracing::info!(%local_addr, "admin HTTP listening");
        } else {
            tracing::warn!(
                %local_addr,
                "admin HTTP listening on an address other machines may reach; its pages are \
                 unauthenticated"
            );
        }
        Ok(AdminServer {
            local_addr,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving, closes the listening socket and waits for the
    /// thread (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = self.waker.wake();
            if thread.join().is_err() {
                tracing::error!("the admin HTTP thread panicked");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Admin {
    fn respond(&self, request: &http::Request<'_>) -> http::Response {
        if !matches!(request.method, "GET" | "HEAD") {
            return http::Response::text(405, "only GET\n");
        }
        let path = request.target.split('?').next().unwrap_or(request.target);
        match path {
            "/" | "/index.html" => http::Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: STATUS_PAGE.as_bytes().to_vec(),
            },
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => http::Response {
                        status: 200,
                        content_type: METRICS_CONTENT_TYPE,
                        body: body.into_bytes(),
                    },
                    Err(_) => http::Response::text(500, "encoding failed\n"),
                }
            }
            "/healthz" => http::Response::text(200, "ok\n"),
            "/status" => http::Response {
                status: 200,
                content_type: "application/json",
                body: self.status().to_string().into_bytes(),
            },
            _ => http::Response::text(404, "not found\n"),
        }
    }
    /// The `/status` document.
    fn status(&self) -> serde_json::Value {
        let mut snapshot = Snapshot::default();
        self.source.fill(&mut snapshot);
        let mut doc = serde_json::json!({
            "server": self.info.kind,
            "backend": self.info.backend,
            "listen": self.info.listen,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "metrics": snapshot.metrics_json(),
            "panels": snapshot.take_panels(),
        });
        if let serde_json::Value::Object(map) = &mut doc {
            for (key, value) in snapshot.take_extra() {
                map.insert(key, value);
            }
        }
        doc
    }
}

#[cfg(test)]
mod tests;
