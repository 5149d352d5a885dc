//! Why a session ended.

use std::fmt;
use std::io;

/// Why a session was disconnected; given to [`crate::Session::on_disconnected`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed its side in order (EOF).
    ClosedByPeer,
    /// The peer reset the connection (RST).
    Reset,
    /// Another socket error.
    IoError {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The error as text.
        message: String,
    },
    /// The application called [`crate::SessionHandle::disconnect`].
    ClosedByApp,
    /// The peer sent bytes that break the protocol; the text says what.
    MalformedPacket(String),
    /// The peer sent faster than its configured limits allow.
    RateLimited(String),
    /// The send queue passed its hard limit (a peer that does not read).
    SendQueueOverflow,
    /// Unconsumed received bytes passed their limit.
    ReceiveOverflow,
    /// Nothing was received for longer than the idle timeout.
    IdleTimeout,
    /// A packet the peer started did not complete within the packet
    /// deadline (a peer trickling bytes to hold its slot).
    PacketTimeout,
    /// The application ended the session for a reason of its own; the text
    /// is a stable `snake_case` name (`too_many_connections_from_address`),
    /// used as-is by [`DisconnectReason::name`].
    App(&'static str),
    /// The service was stopped.
    Shutdown,
    /// A callback of this session panicked; the text is the panic message.
    CallbackPanic(String),
    /// The TLS handshake failed (bad or untrusted certificate, a peer that
    /// does not speak TLS, a protocol error) or did not finish within the
    /// handshake timeout; the text is rustls's error or what happened.
    TlsHandshake(String),
    /// A TLS error after the handshake (a corrupt or forged record).
    Tls(String),
    /// The WebSocket opening handshake failed (not an upgrade request, a
    /// missing `Sec-WebSocket-Key`, a wrong path, a bad server answer) or
    /// did not finish within the handshake timeout.
    WebSocketHandshake(String),
    /// The WebSocket connection was closed with `code` (RFC 6455 7.4):
    /// by this end for a protocol violation (1002, 1003, 1007, 1009), or by
    /// the peer with a code other than 1000/1001.
    WebSocket {
        /// The close code sent or received.
        code: u16,
        /// What happened.
        detail: String,
    },
    /// A plain HTTP request on a WebSocket listener that serves pages (a
    /// browser loading the client's page, a script, the favicon) was
    /// answered: a page load, not a session of the game's protocol.
    HttpServed,
    /// The QUIC connection failed: a transport error the peer sent or this
    /// end detected (a protocol violation, an oversized datagram), the
    /// QUIC idle timeout, a stateless reset, or the client's stream reset.
    Quic(String),
    /// The QUIC peer closed the connection with an application error code
    /// other than 0 (its CONNECTION_CLOSE); a close with code 0 is
    /// [`DisconnectReason::ClosedByPeer`].
    QuicClosed {
        /// The peer's application error code.
        code: u64,
        /// The peer's reason text, escaped and cut short.
        detail: String,
    },
}

impl DisconnectReason {
    /// Maps a socket error to a reason.
    pub fn from_io(error: &io::Error) -> DisconnectReason {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => DisconnectReason::Reset,
            io::ErrorKind::UnexpectedEof => DisconnectReason::ClosedByPeer,
            kind => DisconnectReason::IoError {
                kind,
                message: error.to_string(),
            },
        }
    }

    /// A short stable name for logs and counters (`closed_by_peer`, ...;
    /// for [`DisconnectReason::App`], the application's own name).
    pub fn name(&self) -> &'static str {
        match self {
            DisconnectReason::App(name) => name,
            _ => self.kind().name(),
        }
    }

    /// The reason without its details: what disconnect counters index by.
    pub fn kind(&self) -> DisconnectKind {
        match self {
            DisconnectReason::ClosedByPeer => DisconnectKind::ClosedByPeer,
            DisconnectReason::Reset => DisconnectKind::Reset,
            DisconnectReason::IoError { .. } => DisconnectKind::IoError,
            DisconnectReason::ClosedByApp => DisconnectKind::ClosedByApp,
            DisconnectReason::MalformedPacket(_) => DisconnectKind::MalformedPacket,
            DisconnectReason::RateLimited(_) => DisconnectKind::RateLimited,
            DisconnectReason::SendQueueOverflow => DisconnectKind::SendQueueOverflow,
            DisconnectReason::ReceiveOverflow => DisconnectKind::ReceiveOverflow,
            DisconnectReason::IdleTimeout => DisconnectKind::IdleTimeout,
            DisconnectReason::Shutdown => DisconnectKind::Shutdown,
            DisconnectReason::CallbackPanic(_) => DisconnectKind::CallbackPanic,
            DisconnectReason::TlsHandshake(_) => DisconnectKind::TlsHandshake,
            DisconnectReason::Tls(_) => DisconnectKind::Tls,
            DisconnectReason::WebSocketHandshake(_) => DisconnectKind::WebSocketHandshake,
            DisconnectReason::WebSocket { .. } => DisconnectKind::WebSocket,
            DisconnectReason::PacketTimeout => DisconnectKind::PacketTimeout,
            DisconnectReason::App(_) => DisconnectKind::App,
            DisconnectReason::HttpServed => DisconnectKind::HttpServed,
            DisconnectReason::Quic(_) => DisconnectKind::Quic,
            DisconnectReason::QuicClosed { .. } => DisconnectKind::QuicClosed,
        }
    }
}

/// The kinds of [`DisconnectReason`], without details: a small dense index
/// (`kind as usize`, `0..DisconnectKind::COUNT`) for counter arrays, and a
/// stable snake_case name for metrics and logs. Indices are for counter
/// arrays within one process; names are what metrics and logs carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DisconnectKind {
    /// [`DisconnectReason::ClosedByPeer`]: `closed_by_peer`.
    ClosedByPeer,
    /// [`DisconnectReason::Reset`]: `reset`.
    Reset,
    /// [`DisconnectReason::IoError`]: `io_error`.
    IoError,
    /// [`DisconnectReason::ClosedByApp`]: `closed_by_app`.
    ClosedByApp,
    /// [`DisconnectReason::MalformedPacket`]: `malformed_packet`.
    MalformedPacket,
    /// [`DisconnectReason::RateLimited`]: `rate_limited`.
    RateLimited,
    /// [`DisconnectReason::SendQueueOverflow`]: `send_queue_overflow`.
    SendQueueOverflow,
    /// [`DisconnectReason::ReceiveOverflow`]: `receive_overflow`.
    ReceiveOverflow,
    /// [`DisconnectReason::IdleTimeout`]: `idle_timeout`.
    IdleTimeout,
    /// [`DisconnectReason::Shutdown`]: `shutdown`.
    Shutdown,
    /// [`DisconnectReason::CallbackPanic`]: `callback_panic`.
    CallbackPanic,
    /// [`DisconnectReason::TlsHandshake`]: `tls_handshake`.
    TlsHandshake,
    /// [`DisconnectReason::Tls`]: `tls`.
    Tls,
    /// [`DisconnectReason::WebSocketHandshake`]: `websocket_handshake`.
    WebSocketHandshake,
    /// [`DisconnectReason::WebSocket`]: `websocket`.
    WebSocket,
    /// [`DisconnectReason::PacketTimeout`]: `packet_timeout`.
    PacketTimeout,
    /// [`DisconnectReason::App`], whatever the application named it: `app`.
    App,
    /// [`DisconnectReason::HttpServed`]: `http_served`.
    HttpServed,
    /// [`DisconnectReason::Quic`]: `quic`.
    Quic,
    /// [`DisconnectReason::QuicClosed`]: `quic_closed`.
    QuicClosed,
}

impl DisconnectKind {
    /// How many kinds there are.
    pub const COUNT: usize = 20;

    /// Every kind, in index order.
    pub const ALL: [DisconnectKind; DisconnectKind::COUNT] = [
        DisconnectKind::ClosedByPeer,
        DisconnectKind::Reset,
        DisconnectKind::IoError,
        DisconnectKind::ClosedByApp,
        DisconnectKind::MalformedPacket,
        DisconnectKind::RateLimited,
        DisconnectKind::SendQueueOverflow,
        DisconnectKind::ReceiveOverflow,
        DisconnectKind::IdleTimeout,
        DisconnectKind::Shutdown,
        DisconnectKind::CallbackPanic,
        DisconnectKind::TlsHandshake,
        DisconnectKind::Tls,
        DisconnectKind::WebSocketHandshake,
        DisconnectKind::WebSocket,
        DisconnectKind::PacketTimeout,
        DisconnectKind::App,
        DisconnectKind::HttpServed,
        DisconnectKind::Quic,
        DisconnectKind::QuicClosed,
    ];

    /// The index of this kind in counter arrays (`0..COUNT`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stable snake_case name (`closed_by_peer`, `malformed_packet`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DisconnectKind::ClosedByPeer => "closed_by_peer",
            DisconnectKind::Reset => "reset",
            DisconnectKind::IoError => "io_error",
            DisconnectKind::ClosedByApp => "closed_by_app",
            DisconnectKind::MalformedPacket => "malformed_packet",
            DisconnectKind::RateLimited => "rate_limited",
            DisconnectKind::SendQueueOverflow => "send_queue_overflow",
            DisconnectKind::ReceiveOverflow => "receive_overflow",
            DisconnectKind::IdleTimeout => "idle_timeout",
            DisconnectKind::Shutdown => "shutdown",
            DisconnectKind::CallbackPanic => "callback_panic",
            DisconnectKind::TlsHandshake => "tls_handshake",
            DisconnectKind::Tls => "tls",
            DisconnectKind::WebSocketHandshake => "websocket_handshake",
            DisconnectKind::WebSocket => "websocket",
            DisconnectKind::PacketTimeout => "packet_timeout",
            DisconnectKind::App => "app",
            DisconnectKind::HttpServed => "http_served",
            DisconnectKind::Quic => "quic",
            DisconnectKind::QuicClosed => "quic_closed",
        }
    }
}

impl fmt::Display for DisconnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClosedByPeer => f.write_str("closed by peer"),
            DisconnectReason::Reset => f.write_str("connection reset by peer"),
            DisconnectReason::IoError { message, .. } => write!(f, "I/O error: {message}"),
            DisconnectReason::ClosedByApp => f.write_str("closed by the application"),
            DisconnectReason::MalformedPacket(detail) => write!(f, "malformed packet: {detail}"),
            DisconnectReason::RateLimited(detail) => write!(f, "rate limited: {detail}"),
            DisconnectReason::SendQueueOverflow => f.write_str("send queue overflow"),
            DisconnectReason::ReceiveOverflow => f.write_str("receive buffer overflow"),
            DisconnectReason::IdleTimeout => f.write_str("idle timeout"),
            DisconnectReason::PacketTimeout => f.write_str("packet timeout"),
            DisconnectReason::App(name) => write!(f, "closed by the application: {name}"),
            DisconnectReason::Shutdown => f.write_str("service shutdown"),
            DisconnectReason::CallbackPanic(message) => write!(f, "callback panicked: {message}"),
            DisconnectReason::TlsHandshake(detail) => write!(f, "TLS handshake failed: {detail}"),
            DisconnectReason::Tls(detail) => write!(f, "TLS error: {detail}"),
            DisconnectReason::WebSocketHandshake(detail) => {
                write!(f, "WebSocket handshake failed: {detail}")
            }
            DisconnectReason::WebSocket { code, detail } => {
                write!(f, "WebSocket closed with {code}: {detail}")
            }
            DisconnectReason::HttpServed => f.write_str("a plain HTTP request was answered"),
            DisconnectReason::Quic(detail) => write!(f, "QUIC error: {detail}"),
            DisconnectReason::QuicClosed { code, detail } => {
                write!(f, "QUIC closed by the peer with {code}: {detail}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_dense_and_named_once() {
        for (index, kind) in DisconnectKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index);
        }
        let mut names: Vec<_> = DisconnectKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DisconnectKind::COUNT);
        assert_eq!(
            DisconnectReason::MalformedPacket("x".into()).kind().name(),
            "malformed_packet"
        );
    }
}
