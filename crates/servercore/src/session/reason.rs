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
    /// The peer did not log in within the application's login deadline
    /// (a connection that holds a slot without ever starting to play).
    LoginTimeout,
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

    /// A short stable name for logs and counters (`closed_by_peer`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            DisconnectReason::ClosedByPeer => "closed_by_peer",
            DisconnectReason::Reset => "reset",
            DisconnectReason::IoError { .. } => "io_error",
            DisconnectReason::ClosedByApp => "closed_by_app",
            DisconnectReason::MalformedPacket(_) => "malformed_packet",
            DisconnectReason::RateLimited(_) => "rate_limited",
            DisconnectReason::SendQueueOverflow => "send_queue_overflow",
            DisconnectReason::ReceiveOverflow => "receive_overflow",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::LoginTimeout => "login_timeout",
            DisconnectReason::PacketTimeout => "packet_timeout",
            DisconnectReason::App(name) => name,
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::CallbackPanic(_) => "callback_panic",
        }
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
            DisconnectReason::LoginTimeout => f.write_str("login timeout"),
            DisconnectReason::PacketTimeout => f.write_str("packet timeout"),
            DisconnectReason::App(name) => write!(f, "closed by the application: {name}"),
            DisconnectReason::Shutdown => f.write_str("service shutdown"),
            DisconnectReason::CallbackPanic(message) => write!(f, "callback panicked: {message}"),
        }
    }
}
