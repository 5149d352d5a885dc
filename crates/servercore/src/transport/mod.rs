//! The transport layer: optional layers between the socket and the session,
//! TLS (rustls) and WebSocket (RFC 6455), on both backends. A session never
//! knows which carried its bytes: `on_recv` sees the plain stream, `send`
//! queues plain `Bytes`, and backpressure, coalescing and disconnect reasons
//! work the same on every transport.
//!
//! This module owns the per-connection transport state ([`Transport`], kept
//! by the worker beside the session), the listener and client settings
//! ([`ServerTransport`], [`ClientTransport`]) and the accounting that maps
//! written wire bytes back to the plain bytes the session queued.
//!
//! A plain-TCP connection has no transport state at all: the worker passes
//! the driver's receive buffer and the session's queued `Bytes` straight
//! through, as without this layer.
//!
//! # Life of a transported session
//! - `on_connected` runs when the TCP connection is established; what it
//!   sends is held until the handshake (TLS, then the WebSocket upgrade) is
//!   done, then goes out first.
//! - A handshake that fails ends the session with
//!   [`DisconnectReason::TlsHandshake`] or
//!   [`DisconnectReason::WebSocketHandshake`] (after the TLS alert or the
//!   HTTP error response is written), and one that does not finish within
//!   the handshake timeout (default 10 s) ends the same way.
//! - A graceful end (`disconnect`, service stop) sends the WebSocket close
//!   frame (1000, or 1001 on shutdown) and TLS `close_notify` before the
//!   socket is closed.
//! - A session the engine or the app disconnects over an open WebSocket (a
//!   malformed packet, a rate limit, the idle, login or packet deadline, an
//!   [`DisconnectReason::App`] reason, a panic in its callbacks) drops its
//!   queued sends but still gets a close frame before the socket closes:
//!   1002 for a malformed packet, 1011 for a panic, 1008 for the others,
//!   with the reason's name (`idle_timeout`) as the close reason.
//!
//! # The WebSocket listener
//! - The upgrade is a `GET` to `/` or `/ws` (a query string is ignored) with
//!   `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Version: 13`
//!   and a `Sec-WebSocket-Key`; other requests get an HTTP error status
//!   (400, 404, 405, 426 or 431) and are closed. If the client offers the
//!   subprotocol `servercore` it is selected; none is required.
//! - The client sends binary messages; their payloads, concatenated, are the
//!   session's byte stream, so a message carries one or more whole
//!   `[size][id][body]` packets (a packet may also span messages). Messages
//!   may be fragmented; pings are answered with pongs.
//! - The server sends one binary message per batch of queued sends (one
//!   flush), cut at send boundaries past 64 KiB: each message carries whole
//!   sends, that is whole packets.
//! - Close codes sent: 1000 (normal), 1001 (shutdown), 1002 (protocol
//!   error: unmasked frame, reserved bits, unknown opcode, fragmented or
//!   long control frame, invalid close code), 1003 (text frame), 1007
//!   (close reason not UTF-8), 1009 (message over the maximum, default
//!   1 MiB). The session ends with [`DisconnectReason::WebSocket`] carrying
//!   the code; a peer's close with 1000/1001 ends it with
//!   [`DisconnectReason::ClosedByPeer`]. Text the peer sent (its close
//!   reason, a server's HTTP reason phrase) is escaped and cut short before
//!   it goes into a reason, so it can never forge or flood a log line.
//! - WSS is TLS under the WebSocket layer on the same listener.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub mod quic;
pub mod tls;
pub mod websocket;

pub use quic::{QuicClientConfig, QuicConfig, QuicMetrics};
pub use rustls;
pub use websocket::{close_code, PageLookup, WebPage, WebSocketConfig};

use crate::session::DisconnectReason;
use websocket::WebSocket;

/// Default time allowed for the TLS and WebSocket handshakes together.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most unwritten bytes the transport itself may owe the peer (handshake
/// records, pongs, closes). A peer that sends pings but never reads the
/// pongs passes it and is disconnected with `SendQueueOverflow`.
const OWN_BACKLOG_LIMIT: usize = 64 * 1024;

/// The transport of one listener: plain TCP, TLS, WebSocket or both.
#[derive(Clone)]
pub struct ServerTransport {
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) websocket: Option<Arc<WebSocketConfig>>,
    pub(crate) handshake_timeout: Duration,
}

impl ServerTransport {
    /// Plain TCP: bytes pass untouched.
    pub fn plain() -> ServerTransport {
        ServerTransport {
            tls: None,
            websocket: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// TLS only.
    pub fn tls(config: Arc<rustls::ServerConfig>) -> ServerTransport {
        ServerTransport::plain().with_tls(config)
    }

    /// WebSocket over plain TCP.
    pub fn websocket(config: WebSocketConfig) -> ServerTransport {
        ServerTransport::plain().with_websocket(config)
    }

    /// Adds TLS under whatever is configured (WebSocket + TLS = WSS).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> ServerTransport {
        self.tls = Some(config);
        self
    }

    /// Adds the WebSocket layer.
    pub fn with_websocket(mut self, config: WebSocketConfig) -> ServerTransport {
        self.websocket = Some(Arc::new(config));
        self
    }

    /// Time allowed for the handshakes (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ServerTransport {
        self.handshake_timeout = timeout;
        self
    }

    /// True when no layer is configured.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.websocket.is_none()
    }

    /// A short name for logs: `tcp`, `tls`, `ws` or `wss`.
    pub fn name(&self) -> &'static str {
        name(self.tls.is_some(), self.websocket.is_some())
    }

    pub(crate) fn start(&self) -> Option<Box<Transport>> {
        if self.is_plain() {
            return None;
        }
        let mut transport = Transport::new(self.handshake_timeout);
        if let Some(config) = &self.tls {
            match tls::Tls::server(config) {
                Ok(layer) => transport.tls = Some(layer),
                Err(reason) => transport.failed = Some(reason),
            }
        }
        if let Some(config) = &self.websocket {
            transport.websocket = Some(WebSocket::server(config));
        }
        Some(Box::new(transport))
    }
}

impl Default for ServerTransport {
    fn default() -> Self {
        ServerTransport::plain()
    }
}

impl std::fmt::Debug for ServerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTransport")
            .field("kind", &self.name())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// The transport of a [`ClientService`](crate::ClientService)'s connections.
#[derive(Clone)]
pub struct ClientTransport {
    pub(crate) tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) websocket: Option<Arc<WebSocketConfig>>,
    pub(crate) handshake_timeout: Duration,
}

impl ClientTransport {
    /// Plain TCP.
    pub fn plain() -> ClientTransport {
        ClientTransport {
            tls: None,
            websocket: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// TLS to a server that must present a certificate for `server_name`
    /// (a DNS name or an IP address) trusted by `config`.
    pub fn tls(
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> ClientTransport {
        ClientTransport::plain().with_tls(config, server_name)
    }

    /// WebSocket over plain TCP.
    pub fn websocket(config: WebSocketConfig) -> ClientTransport {
        ClientTransport::plain().with_websocket(config)
    }

    /// Adds TLS under whatever is configured (WebSocket + TLS = WSS).
    pub fn with_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> ClientTransport {
        self.tls = Some((config, server_name));
        self
    }

    /// Adds the WebSocket layer.
    pub fn with_websocket(mut self, config: WebSocketConfig) -> ClientTransport {
        self.websocket = Some(Arc::new(config));
        self
    }

    /// Time allowed for the handshakes (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> ClientTransport {
        self.handshake_timeout = timeout;
        self
    }

    /// True when no layer is configured.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.websocket.is_none()
    }

    /// A short name for logs: `tcp`, `tls`, `ws` or `wss`.
    pub fn name(&self) -> &'static str {
        name(self.tls.is_some(), self.websocket.is_some())
    }

    pub(crate) fn start(&self, peer: std::net::SocketAddr) -> Option<Box<Transport>> {
        if self.is_plain() {
            return None;
        }
        let mut transport = Transport::new(self.handshake_timeout);
        if let Some((config, name)) = &self.tls {
            match tls::Tls::client(config, name.clone()) {
                Ok(layer) => transport.tls = Some(layer),
                Err(reason) => transport.failed = Some(reason),
            }
        }
        if let Some(config) = &self.websocket {
            let mut request = Vec::new();
            let host = peer.to_string();
            transport.websocket = Some(WebSocket::client(config, &host, &mut request));
            transport.send_own(&request);
        }
        transport.collect_tls_output(0);
        Some(Box::new(transport))
    }
}

impl Default for ClientTransport {
    fn default() -> Self {
        ClientTransport::plain()
    }
}

impl std::fmt::Debug for ClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTransport")
            .field("kind", &self.name())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

fn name(tls: bool, websocket: bool) -> &'static str {
    match (tls, websocket) {
        (false, false) => "tcp",
        (true, false) => "tls",
        (false, true) => "ws",
        (true, true) => "wss",
    }
}

/// Wire bytes that complete `plain` queued bytes once written.
struct Mark {
    wire: usize,
    plain: usize,
}

/// One connection's transport state, owned by its worker.
pub(crate) struct Transport {
    tls: Option<tls::Tls>,
    websocket: Option<WebSocket>,
    /// Set when a layer could not even be created.
    failed: Option<DisconnectReason>,
    /// Wire bytes ready to go, in order.
    outgoing: Vec<Bytes>,
    /// Wire bytes in `outgoing` or written to the driver, not yet reported
    /// written, with the plain bytes they carry.
    marks: VecDeque<Mark>,
    /// Plain bytes the session sent before the handshake finished.
    held: Vec<Bytes>,
    held_len: usize,
    /// Decoded bytes for the session (reused between reads).
    plain: Vec<u8>,
    /// TLS-decrypted bytes on their way to the WebSocket layer.
    middle: Vec<u8>,
    /// Bytes a layer wants to send (handshake answers, pongs, closes).
    scratch: Vec<u8>,
    handshake_deadline: Option<Instant>,
    goodbye_queued: bool,
    /// Wire bytes of the transport's own output not yet written.
    own_unwritten: usize,
}

/// Counts transport rejections, for rate-limited logging.
static REJECTED: AtomicU64 = AtomicU64::new(0);

impl Transport {
    fn new(handshake_timeout: Duration) -> Transport {
        Transport {
            tls: None,
            websocket: None,
            failed: None,
            outgoing: Vec::new(),
            marks: VecDeque::new(),
            held: Vec::new(),
            held_len: 0,
            plain: Vec::new(),
            middle: Vec::new(),
            scratch: Vec::new(),
            handshake_deadline: Some(Instant::now() + handshake_timeout),
            goodbye_queued: false,
            own_unwritten: 0,
        }
    }

    /// True once every handshake is done and plain bytes can flow.
    pub(crate) fn is_ready(&self) -> bool {
        self.handshake_deadline.is_none()
    }

    /// When an unfinished handshake times out.
    pub(crate) fn handshake_deadline(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// The reason for a handshake that did not finish in time (or whose
    /// peer left during it).
    pub(crate) fn handshake_failure(&self, what: &str) -> DisconnectReason {
        match &self.tls {
            Some(tls) if tls.is_handshaking() => DisconnectReason::TlsHandshake(what.to_string()),
            _ => DisconnectReason::WebSocketHandshake(what.to_string()),
        }
    }

    /// A reason set at creation (a TLS layer rustls refused to build).
    pub(crate) fn take_startup_failure(&mut self) -> Option<DisconnectReason> {
        self.failed.take()
    }

    /// The bytes decoded by the last [`Transport::receive`].
    pub(crate) fn plain(&self) -> &[u8] {
        &self.plain
    }

    /// Empties the decoded bytes (after the session saw them).
    pub(crate) fn clear_plain(&mut self) {
        self.plain.clear();
        if self.plain.capacity() > 64 * 1024 {
            self.plain = Vec::new();
        }
    }

    /// Feeds wire bytes from the driver. Decoded bytes are in
    /// [`Transport::plain`]; bytes to send wait in the outgoing queue.
    /// `Some(reason)`: the connection ends once the outgoing bytes are
    /// written.
    pub(crate) fn receive(&mut self, wire: &[u8]) -> Option<DisconnectReason> {
        let mut ending = None;
        let mut peer_done = false;
        match (&mut self.tls, &mut self.websocket) {
            (None, Some(ws)) => {
                ending = ws.read(wire, &mut self.plain, &mut self.scratch);
            }
            (Some(tls), ws) => {
                let target = if ws.is_some() {
                    &mut self.middle
                } else {
                    &mut self.plain
                };
                match tls.read(wire, target) {
                    Ok(tls::TlsRead::Open) => {}
                    Ok(tls::TlsRead::Closed) => peer_done = true,
                    Err(reason) => ending = Some(reason),
                }
                if let Some(ws) = ws {
                    if !self.middle.is_empty() {
                        if let Some(reason) =
                            ws.read(&self.middle, &mut self.plain, &mut self.scratch)
                        {
                            ending = ending.or(Some(reason));
                        }
                        self.middle.clear();
                    }
                }
            }
            (None, None) => {}
        }
        if !self.scratch.is_empty() {
            let own = std::mem::take(&mut self.scratch);
            self.send_own(&own);
            self.scratch = own;
            self.scratch.clear();
        }
        if ending.is_none() && peer_done {
            ending = Some(DisconnectReason::ClosedByPeer);
        }
        if ending.is_none() && self.own_unwritten > OWN_BACKLOG_LIMIT {
            ending = Some(DisconnectReason::SendQueueOverflow);
        }
        if let Some(reason) = &ending {
            // No more plain bytes after an ending; the layers have queued
            // their goodbye (alert, close frame, HTTP error).
            self.goodbye_queued = true;
            if self.tls.is_some()
                && !matches!(
                    reason,
                    DisconnectReason::TlsHandshake(_) | DisconnectReason::Tls(_)
                )
            {
                if let Some(tls) = &mut self.tls {
                    tls.close_notify();
                }
            }
        }
        self.collect_tls_output(0);
        if self.handshake_deadline.is_some() && ending.is_none() && self.handshake_complete() {
            self.handshake_deadline = None;
        }
        ending
    }

    fn handshake_complete(&self) -> bool {
        self.tls.as_ref().is_none_or(|tls| !tls.is_handshaking())
            && self.websocket.as_ref().is_none_or(WebSocket::is_open)
    }

    /// Queues bytes a layer above TLS produced (it goes through TLS if any).
    fn send_own(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match &mut self.tls {
            Some(tls) => tls.write(data),
            None => self.push_wire(Bytes::copy_from_slice(data), 0),
        }
    }

    /// Moves TLS records rustls has ready to the outgoing queue, crediting
    /// `plain` bytes to them.
    fn collect_tls_output(&mut self, plain: usize) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        let mut records = Vec::new();
        tls.take_output(&mut records);
        if records.is_empty() {
            if plain > 0 {
                self.marks.push_back(Mark { wire: 0, plain });
            }
            return;
        }
        self.push_wire(Bytes::from(records), plain);
    }

    fn push_wire(&mut self, wire: Bytes, plain: usize) {
        if plain == 0 {
            self.own_unwritten += wire.len();
        }
        self.marks.push_back(Mark {
            wire: wire.len(),
            plain,
        });
        self.outgoing.push(wire);
    }

    /// True when [`Transport::encode`] would produce something.
    pub(crate) fn wants_flush(&self) -> bool {
        !self.outgoing.is_empty() || (self.is_ready() && !self.held.is_empty())
    }

    /// Turns the session's queued plain bytes (drained from `plain`) into
    /// wire bytes appended to `wire`: first what the transport itself has
    /// to send, then the data. Before the handshake is done the plain bytes
    /// are held.
    pub(crate) fn encode(&mut self, plain: &mut Vec<Bytes>, wire: &mut Vec<Bytes>) {
        if !self.is_ready() || self.goodbye_queued {
            self.held_len += plain.iter().map(Bytes::len).sum::<usize>();
            self.held.append(plain);
        } else {
            if !self.held.is_empty() {
                let mut held = std::mem::take(&mut self.held);
                held.append(plain);
                *plain = held;
                self.held_len = 0;
            }
            if !plain.is_empty() {
                self.encode_data(plain);
            }
        }
        wire.append(&mut self.outgoing);
    }

    fn encode_data(&mut self, plain: &mut Vec<Bytes>) {
        let len: usize = plain.iter().map(Bytes::len).sum();
        match (&mut self.tls, &mut self.websocket) {
            (None, Some(ws)) => {
                let start = self.outgoing.len();
                ws.write_messages(plain, &mut self.outgoing);
                let wire = self.outgoing[start..].iter().map(Bytes::len).sum();
                self.marks.push_back(Mark { wire, plain: len });
            }
            (Some(tls), None) => {
                tls.write_bufs(plain);
                plain.clear();
                self.collect_tls_output(len);
            }
            (Some(_), Some(ws)) => {
                let mut frames = Vec::new();
                ws.write_messages(plain, &mut frames);
                let tls = self.tls.as_mut().expect("matched");
                tls.write_bufs(&frames);
                self.collect_tls_output(len);
            }
            (None, None) => {
                let bufs = std::mem::take(plain);
                let wire = bufs.iter().map(Bytes::len).sum();
                self.marks.push_back(Mark { wire, plain: len });
                self.outgoing.extend(bufs);
            }
        }
    }

    /// The driver wrote `written` wire bytes; returns the plain bytes that
    /// are now fully on the wire.
    pub(crate) fn wire_written(&mut self, mut written: usize) -> usize {
        let mut plain = 0;
        while let Some(mark) = self.marks.front_mut() {
            if mark.wire > written {
                mark.wire -= written;
                if mark.plain == 0 {
                    self.own_unwritten -= written;
                }
                break;
            }
            written -= mark.wire;
            plain += mark.plain;
            if mark.plain == 0 {
                self.own_unwritten -= mark.wire;
            }
            self.marks.pop_front();
        }
        plain
    }

    /// Forgets everything not yet written; returns the plain bytes that
    /// will never be written (to leave the session's queued count).
    pub(crate) fn discard(&mut self) -> usize {
        let plain = self.marks.drain(..).map(|m| m.plain).sum::<usize>() + self.held_len;
        self.held.clear();
        self.held_len = 0;
        self.outgoing.clear();
        self.own_unwritten = 0;
        plain
    }

    /// True when a WebSocket close frame can still go out: the handshakes
    /// are done and no goodbye was queued yet.
    pub(crate) fn can_send_close_frame(&self) -> bool {
        self.is_ready()
            && !self.goodbye_queued
            && self
                .websocket
                .as_ref()
                .is_some_and(WebSocket::can_send_close)
    }

    /// Queues the goodbye of a graceful end (WebSocket close frame, TLS
    /// `close_notify`) once; true if that added bytes to send.
    pub(crate) fn queue_goodbye(&mut self, reason: &DisconnectReason) -> bool {
        if self.goodbye_queued {
            return false;
        }
        self.goodbye_queued = true;
        if !self.is_ready() {
            return false;
        }
        if let Some(ws) = &mut self.websocket {
            let code = close_code_for(reason);
            // A disconnect names its reason; a normal close or a shutdown needs none.
            let text = match code {
                close_code::NORMAL | close_code::GOING_AWAY => "",
                _ => reason.name(),
            };
            let mut frame = Vec::new();
            ws.write_close(code, text, &mut frame);
            self.send_own(&frame);
        }
        if let Some(tls) = &mut self.tls {
            tls.close_notify();
        }
        self.collect_tls_output(0);
        !self.outgoing.is_empty()
    }
}

/// The WebSocket close code that tells the peer why this end closed.
fn close_code_for(reason: &DisconnectReason) -> u16 {
    match reason {
        DisconnectReason::Shutdown => close_code::GOING_AWAY,
        DisconnectReason::MalformedPacket(_) => close_code::PROTOCOL_ERROR,
        DisconnectReason::RateLimited(_)
        | DisconnectReason::IdleTimeout
        | DisconnectReason::PacketTimeout
        | DisconnectReason::App(_) => close_code::POLICY_VIOLATION,
        DisconnectReason::CallbackPanic(_) => close_code::INTERNAL_ERROR,
        _ => close_code::NORMAL,
    }
}

/// Logs a connection the transport turned away, at most at powers of two
/// of the running count (hostile peers must not flood the log).
pub(crate) fn log_rejection(peer: std::net::SocketAddr, reason: &DisconnectReason) {
    let count = REJECTED.fetch_add(1, Ordering::Relaxed) + 1;
    if count.is_power_of_two() {
        tracing::warn!(%peer, %reason, rejected_total = count, "transport closed a connection");
    }
}

/// Text a peer sent (a WebSocket close reason, an HTTP reason phrase), made
/// safe to keep in a disconnect reason and to print in a log line: control
/// characters, quotes and backslashes escaped as Rust escapes them, and cut
/// after `max_chars` characters (with `…`), so a peer can neither forge log
/// lines nor make them long.
pub(crate) fn escape_peer_text(text: &str, max_chars: usize) -> String {
    let mut escaped = String::with_capacity(text.len().min(max_chars) + 8);
    for (n, c) in text.chars().enumerate() {
        if n == max_chars {
            escaped.push('…');
            break;
        }
        escaped.extend(c.escape_debug());
    }
    escaped
}

/// True for reasons the transport layer produces.
pub(crate) fn is_transport_reason(reason: &DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::TlsHandshake(_)
            | DisconnectReason::Tls(_)
            | DisconnectReason::WebSocketHandshake(_)
            | DisconnectReason::WebSocket { .. }
    )
}
