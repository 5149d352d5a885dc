//! servercore-admin: the admin HTTP listener of servercore's servers.
//!
//! One small blocking HTTP server on its own thread, bound to the address
//! the operator gave (`--admin 127.0.0.1:9100`), serving:
//! - `/metrics`: every number in the OpenMetrics text format (what
//!   Prometheus scrapes), encoded by `prometheus-client`;
//! - `/healthz`: `ok` while the server runs;
//! - `/status`: the same numbers as JSON, plus what the server adds (the
//!   game server's world map);
//! - `/`: a live status page for a person (`assets/status.html`, plain JS
//!   polling `/status` every second).
//!
//! This crate owns the HTTP side and the metric model ([`Snapshot`]); it
//! knows nothing of the engine or the game. A server hands it a
//! [`StatusSource`], a function that fills a [`Snapshot`] from its atomic
//! counters. The source runs on the admin thread at each request, so a
//! scrape costs the I/O workers nothing: no lock is shared with them.

#![warn(missing_docs)]

mod snapshot;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

pub use snapshot::{Histogram, Kind, Metric, Sample, Snapshot};

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

/// Why the admin listener could not start.
#[derive(Debug)]
pub struct AdminError {
    addr: SocketAddr,
    message: String,
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot listen for admin HTTP on {}: {}",
            self.addr, self.message
        )
    }
}

impl std::error::Error for AdminError {}

/// A running admin listener. Dropping it stops it and waits for its thread.
pub struct AdminServer {
    http: Option<Arc<tiny_http::Server>>,
    local_addr: SocketAddr,
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
    /// Binds `addr` and starts serving on a thread of its own (port 0
    /// picks a free port; see [`AdminServer::local_addr`]).
    pub fn start(
        addr: SocketAddr,
        info: ServerInfo,
        source: impl StatusSource,
    ) -> Result<AdminServer, AdminError> {
        let http = tiny_http::Server::http(addr).map_err(|error| AdminError {
            addr,
            message: error.to_string(),
        })?;
        let local_addr = http.server_addr().to_ip().ok_or_else(|| AdminError {
            addr,
            message: "not an IP listener".into(),
        })?;
        let http = Arc::new(http);
        let source: Arc<dyn StatusSource> = Arc::new(source);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SourceCollector(Arc::clone(&source))));
        let admin = Admin {
            info,
            source,
            registry,
            started: Instant::now(),
        };
        let serving = Arc::clone(&http);
        let thread = std::thread::Builder::new()
            .name("admin-http".into())
            .spawn(move || admin.serve(&serving))
            .map_err(|error| AdminError {
                addr,
                message: error.to_string(),
            })?;
        tracing::info!(%local_addr, "admin HTTP listening");
        Ok(AdminServer {
            http: Some(http),
            local_addr,
            thread: Some(thread),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the thread (also done on drop). The
    /// listening socket closes a moment later, when tiny_http's accept
    /// thread notices.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(http) = self.http.take() {
            http.unblock();
            if let Some(thread) = self.thread.take() {
                if thread.join().is_err() {
                    tracing::error!("the admin HTTP thread panicked");
                }
            }
            // The last reference: dropping it wakes tiny_http's accept
            // thread, which then closes the listening socket.
            drop(http);
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Admin {
    fn serve(&self, http: &tiny_http::Server) {
        for request in http.incoming_requests() {
            let response = self.respond(request.method(), request.url());
            if let Err(error) = request.respond(response) {
                tracing::debug!(%error, "admin HTTP response not sent");
            }
        }
    }

    fn respond(
        &self,
        method: &tiny_http::Method,
        url: &str,
    ) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        use tiny_http::{Method, Response};
        if !matches!(method, Method::Get | Method::Head) {
            return Response::from_string("only GET\n").with_status_code(405);
        }
        let path = url.split('?').next().unwrap_or(url);
        match path {
            "/" | "/index.html" => with_type(
                Response::from_string(STATUS_PAGE),
                "text/html; charset=utf-8",
            ),
            "/metrics" => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                    Ok(()) => with_type(Response::from_string(body), METRICS_CONTENT_TYPE),
                    Err(_) => Response::from_string("encoding failed\n").with_status_code(500),
                }
            }
            "/healthz" => with_type(Response::from_string("ok\n"), "text/plain; charset=utf-8"),
            "/status" => with_type(
                Response::from_string(self.status().to_string()),
                "application/json",
            ),
            _ => Response::from_string("not found\n").with_status_code(404),
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
        });
        if let serde_json::Value::Object(map) = &mut doc {
            for (key, value) in snapshot.take_extra() {
                map.insert(key, value);
            }
        }
        doc
    }
}

fn with_type(
    response: tiny_http::Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a valid header");
    response.with_header(header)
}

#[cfg(test)]
mod tests;
