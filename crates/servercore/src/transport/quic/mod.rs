//! QUIC (RFC 9000) with datagrams (RFC 9221): a listener on a UDP port
//! whose connections are ordinary engine sessions.
//!
//! This module owns the QUIC listener ([`QuicConfig`], started by
//! [`ServerServiceBuilder::quic`](crate::ServerServiceBuilder::quic)), its
//! counters ([`QuicMetrics`]) and the bridge between a QUIC connection and
//! its session.
//!
//! # How a QUIC connection becomes a session
//! quinn runs the QUIC endpoint on a thread of its own (a single-threaded
//! tokio runtime, `servercore-quic`). Once a connection's handshake is done
//! (ALPN `servercore/1`, TLS 1.3) and the client has opened its first
//! bidirectional stream, the listener reserves a session place (the
//! service's `max_sessions`; past it the connection is closed with
//! `server_full`), makes a local socket pair and hands one end to a worker,
//! which adopts it as it adopts an accepted TCP connection; the other end
//! is pumped to and from the QUIC stream. So every session mechanism is
//! the one TCP sessions have, on both backends, unchanged: the callbacks,
//! framing, receive limits, packet and idle deadlines, send queues and
//! their backpressure, coalescing, disconnect reasons and counters. The
//! session's [`peer_addr`](crate::SessionHandle::peer_addr) is the QUIC
//! client's address, so per-address limits apply as on TCP.
//!
//! The bridge costs a copy each way through the socket pair and a thread;
//! driving `quinn-proto` from each worker's own UDP socket would save both,
//! at the price of a second session life inside the workers (see
//! docs/QUIC.md).
//!
//! # Datagrams
//! [`SessionHandle::send_datagram`](crate::SessionHandle::send_datagram)
//! sends whole packets as datagrams, several per datagram, never one split;
//! each connection's datagram queue is bounded (quinn's send buffer,
//! [`QuicConfig::datagram_send_buffer`]; the oldest is dropped when full).
//! A datagram from the client must hold whole `[size][id][body]` packets of
//! the ids [`QuicConfig::datagram_ids`] allows; they are fed to the
//! session's stream between two stream packets (never inside one), so the
//! session sees them as packets like any other. A datagram that is not
//! whole packets, or carries an id not allowed, is dropped and counted
//! ([`QuicMetrics::datagrams_rejected`]); a datagram larger than the
//! advertised maximum is a protocol violation quinn closes the connection
//! for ([`DisconnectReason::Quic`](crate::DisconnectReason::Quic)).
//!
//! # Ends
//! - A session the engine or the app ends (a malformed packet, a deadline,
//!   `disconnect`, the service's stop) writes what it may, then the
//!   connection is closed with CONNECTION_CLOSE: application error code
//!   [`close_code::NO_ERROR`] for `closed_by_app`/`closed_by_peer`,
//!   [`close_code::SHUTDOWN`] for `shutdown`, [`close_code::PROTOCOL`] for a
//!   malformed packet and [`close_code::OTHER`] for the rest, with the
//!   reason's name (`malformed_packet`) as the reason text.
//! - A client that finishes its stream or closes with code 0 ends the
//!   session with `ClosedByPeer`; a close with another code with
//!   [`DisconnectReason::QuicClosed`](crate::DisconnectReason::QuicClosed);
//!   a transport error, a reset stream, the QUIC idle timeout with
//!   [`DisconnectReason::Quic`](crate::DisconnectReason::Quic).
//!
//! # WebTransport
//! With [`QuicConfig::web_transport`] the same port also speaks HTTP/3
//! (ALPN `h3`) for browsers: a `CONNECT` with `:protocol webtransport` to
//! the path opens a session (other requests get 404 or 400), whose first
//! bidirectional stream from the client is bridged into a session as
//! above, and whose datagrams (the session's quarter stream id, then whole
//! packets) are the session's datagrams. The handshake deadline covers the
//! HTTP/3 set-up and the stream.
//!
//! # Hostile peers
//! Datagrams that are not QUIC are dropped by quinn. New connections are
//! rate-limited per address (an IPv6 /64 counting as one,
//! [`QuicConfig::handshakes_per_second`]; past it the Initial is ignored,
//! so no answer amplifies anything), at most
//! [`QuicConfig::max_handshakes`] handshakes run at once (past it the
//! connection is refused), and a handshake — until the first stream —
//! must finish within [`QuicConfig::handshake_timeout`]. Each event is
//! counted in [`QuicMetrics`] and logged rate-limited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod bridge;
mod client;
mod endpoint;
mod inbound;
mod limiter;
mod webtransport;

pub use client::QuicClientConfig;
pub(crate) use client::{Attempt, QuicConnector};
pub(crate) use endpoint::QuicListener;

/// The ALPN protocol of a servercore QUIC connection.
pub const ALPN: &[u8] = b"servercore/1";
/// The ALPN protocol of HTTP/3, which WebTransport runs on.
pub const ALPN_H3: &[u8] = b"h3";

/// The application error codes of the CONNECTION_CLOSE this end sends.
pub mod close_code {
    /// The session ended normally (`closed_by_app`, `closed_by_peer`).
    pub const NO_ERROR: u32 = 0;
    /// The service stopped (`shutdown`).
    pub const SHUTDOWN: u32 = 1;
    /// The peer broke the protocol (`malformed_packet`).
    pub const PROTOCOL: u32 = 2;
    /// Any other reason; the reason text names it.
    pub const OTHER: u32 = 3;
    /// The service was full (`server_full`) before a session began.
    pub const SERVER_FULL: u32 = 4;
}

/// Settings of a QUIC listener.
#[derive(Clone)]
pub struct QuicConfig {
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) handshakes_per_second: u32,
    pub(crate) handshake_burst: u32,
    pub(crate) max_handshakes: usize,
    pub(crate) datagram_ids: Option<Arc<[u16]>>,
    pub(crate) datagram_send_buffer: usize,
    pub(crate) datagram_receive_buffer: usize,
    pub(crate) web_transport: Option<Arc<str>>,
}

impl QuicConfig {
    /// A listener with the certificate of `tls` (its ALPN list is replaced
    /// by [`ALPN`]; QUIC always runs TLS 1.3).
    pub fn new(tls: Arc<rustls::ServerConfig>) -> QuicConfig {
        QuicConfig {
            tls,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handshakes_per_second: 20,
            handshake_burst: 40,
            max_handshakes: 1024,
            datagram_ids: None,
            datagram_send_buffer: 64 * 1024,
            datagram_receive_buffer: 64 * 1024,
            web_transport: None,
        }
    }

    /// Time from a client's first packet to its first stream (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> QuicConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// The QUIC idle timeout: a connection that hears nothing for this
    /// long is lost (default 30 s; the session's own idle timeout applies
    /// too).
    pub fn idle_timeout(mut self, timeout: Duration) -> QuicConfig {
        self.idle_timeout = timeout;
        self
    }

    /// New connections one address (an IPv6 /64) may start per second, and
    /// the burst it may start at once (defaults 20 and 40). 0 disables the
    /// limit.
    pub fn handshakes_per_second(mut self, rate: u32, burst: u32) -> QuicConfig {
        self.handshakes_per_second = rate;
        self.handshake_burst = burst.max(1);
        self
    }

    /// Most handshakes in progress at once over all addresses (default
    /// 1024).
    pub fn max_handshakes(mut self, max: usize) -> QuicConfig {
        self.max_handshakes = max.max(1);
        self
    }

    /// The packet ids a client may send by datagram (default: any). A
    /// datagram with another id is dropped and counted.
    pub fn datagram_ids(mut self, ids: impl IntoIterator<Item = u16>) -> QuicConfig {
        self.datagram_ids = Some(ids.into_iter().collect());
        self
    }

    /// Bytes of datagrams queued per connection before the oldest are
    /// dropped (default 64 KiB).
    pub fn datagram_send_buffer(mut self, bytes: usize) -> QuicConfig {
        self.datagram_send_buffer = bytes;
        self
    }

    /// Bytes of received datagrams buffered per connection (default 64
    /// KiB, at least 256); it also bounds the largest datagram the peer may
    /// send (at most 65,535 bytes): a larger one is a protocol violation
    /// that closes the connection.
    pub fn datagram_receive_buffer(mut self, bytes: usize) -> QuicConfig {
        self.datagram_receive_buffer = bytes.max(256);
        self
    }
}

impl QuicConfig {
    /// Also serves WebTransport on the same port (ALPN `h3`): a session
    /// opened with a `CONNECT` to `path` (`/wt`) carries the same stream
    /// and datagrams as a `servercore/1` connection. See
    /// [`webtransport`](self#webtransport).
    pub fn web_transport(mut self, path: impl Into<String>) -> QuicConfig {
        self.web_transport = Some(path.into().into());
        self
    }
}

impl std::fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConfig")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshakes_per_second", &self.handshakes_per_second)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

/// Counters of a QUIC listener (since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicMetrics {
    /// Connection attempts (Initials) that reached the listener.
    pub incoming: u64,
    /// Attempts ignored by the per-address rate limit.
    pub rate_limited: u64,
    /// Attempts refused because `max_handshakes` were in progress.
    pub refused_busy: u64,
    /// Connections refused because the service was full or stopping.
    pub refused_full: u64,
    /// Handshakes that failed (TLS or QUIC errors, a wrong ALPN).
    pub handshake_failures: u64,
    /// Handshakes (until the first stream) that did not finish in time.
    pub handshake_timeouts: u64,
    /// Handshakes in progress now (gauge).
    pub handshakes_in_progress: u64,
    /// Connections that became sessions.
    pub sessions: u64,
    /// Datagrams sent to clients.
    pub datagrams_sent: u64,
    /// Datagrams from the peers fed to sessions.
    pub datagrams_received: u64,
    /// Packets in those datagrams.
    pub datagram_packets_received: u64,
    /// Datagrams from clients dropped: not whole packets, or an id not
    /// allowed by datagram.
    pub datagrams_rejected: u64,
    /// Stream bytes from clients to sessions.
    pub bytes_in: u64,
    /// Stream bytes from sessions to clients.
    pub bytes_out: u64,
}

/// The live counters behind [`QuicMetrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub incoming: AtomicU64,
    pub rate_limited: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_full: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub handshakes_in_progress: AtomicU64,
    pub sessions: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagram_packets_received: AtomicU64,
    pub datagrams_rejected: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> QuicMetrics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QuicMetrics {
            incoming: load(&self.incoming),
            rate_limited: load(&self.rate_limited),
            refused_busy: load(&self.refused_busy),
            refused_full: load(&self.refused_full),
            handshake_failures: load(&self.handshake_failures),
            handshake_timeouts: load(&self.handshake_timeouts),
            handshakes_in_progress: load(&self.handshakes_in_progress),
            sessions: load(&self.sessions),
            datagrams_sent: load(&self.datagrams_sent),
            datagrams_received: load(&self.datagrams_received),
            datagram_packets_received: load(&self.datagram_packets_received),
            datagrams_rejected: load(&self.datagrams_rejected),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
        }
    }
}
