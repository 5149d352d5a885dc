//! One QUIC connection's bridge to its session: the [`Link`] the session
//! holds (datagrams out, reasons both ways) and the pump that moves the
//! client's stream and datagrams into the session's socket and the
//! session's bytes out to the stream.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::{Connection, ConnectionError, SendDatagramError, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::inbound::{check_datagram, Boundary, Rejected};
use super::{close_code, Counters};
use crate::log_throttle::LogThrottle;
use crate::session::{DatagramRefused, DisconnectReason, Link};

/// Client datagrams held while the stream is inside a packet; past it the
/// oldest is dropped (the stream is stalled, and newer moves matter more).
const HELD_DATAGRAMS: usize = 64;
/// How long a closing session's last stream bytes may take to be
/// acknowledged before the connection is closed anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the pump waits for the worker's reason once the session's
/// socket ended.
const REASON_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a peer's text kept in a reason.
const MAX_DETAIL: usize = 120;

/// Datagrams dropped by the check, over every connection.
static REJECT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// The transport side of one QUIC session.
pub(super) struct QuicLink {
    conn: Connection,
    local: SocketAddr,
    counters: Arc<Counters>,
    /// The QUIC end the pump saw, reported instead of what the stream saw.
    peer_reason: Mutex<Option<DisconnectReason>>,
    /// The reason the worker ended the session with (for CONNECTION_CLOSE).
    ended: Mutex<Option<DisconnectReason>>,
    /// Told when `ended` is set: the session's socket may reach its end
    /// (a graceful stop shuts its write side down first) before the worker
    /// has decided the reason.
    ended_notify: tokio::sync::Notify,
    /// Packets of the peer's datagrams fed to the session.
    datagram_packets: AtomicU64,
    /// What starts every datagram of the session: nothing on a servercore
    /// connection, the quarter stream id of the session on WebTransport
    /// (RFC 9297).
    datagram_prefix: Vec<u8>,
}

impl QuicLink {
    pub(super) fn new(conn: Connection, local: SocketAddr, counters: Arc<Counters>) -> QuicLink {
        QuicLink {
            conn,
            local,
            counters,
            peer_reason: Mutex::new(None),
            ended: Mutex::new(None),
            ended_notify: tokio::sync::Notify::new(),
            datagram_packets: AtomicU64::new(0),
            datagram_prefix: Vec::new(),
        }
    }

    /// The same for a WebTransport session whose CONNECT stream is
    /// `session_stream`: its datagrams carry the quarter stream id.
    pub(super) fn web_transport(mut self, session_stream: u64) -> QuicLink {
        let mut prefix = Vec::new();
        put_varint(session_stream / 4, &mut prefix);
        self.datagram_prefix = prefix;
        self
    }

    fn note_peer_end(&self, reason: DisconnectReason) {
        self.peer_reason.lock().get_or_insert(reason);
    }
}

impl Link for QuicLink {
    fn transport(&self) -> &'static str {
        "quic"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn max_datagram_size(&self) -> Option<usize> {
        let max = self.conn.max_datagram_size()?;
        max.checked_sub(self.datagram_prefix.len())
            .filter(|max| *max > 0)
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused> {
        let datagram = if self.datagram_prefix.is_empty() {
            datagram
        } else {
            let mut framed = Vec::with_capacity(self.datagram_prefix.len() + datagram.len());
            framed.extend_from_slice(&self.datagram_prefix);
            framed.extend_from_slice(&datagram);
            Bytes::from(framed)
        };
        match self.conn.send_datagram(datagram) {
            Ok(()) => {
                Counters::add(&self.counters.datagrams_sent, 1);
                Ok(())
            }
            Err(SendDatagramError::TooLarge)
            | Err(SendDatagramError::UnsupportedByPeer)
            | Err(SendDatagramError::Disabled) => Err(DatagramRefused::TooLarge),
            Err(SendDatagramError::ConnectionLost(_)) => Err(DatagramRefused::Closed),
        }
    }

    fn datagram_packets_received(&self) -> u64 {
        self.datagram_packets.load(Ordering::Relaxed)
    }

    fn session_ended(&self, reason: DisconnectReason) -> DisconnectReason {
        let reason = match reason {
            DisconnectReason::ClosedByPeer | DisconnectReason::Reset => {
                self.peer_reason.lock().clone().unwrap_or(reason)
            }
            other => other,
        };
        *self.ended.lock() = Some(reason.clone());
        self.ended_notify.notify_one();
        reason
    }
}

/// A QUIC variable-length integer (RFC 9000 16).
fn put_varint(value: u64, out: &mut Vec<u8>) {
    if value < 1 << 6 {
        out.push(value as u8);
    } else if value < 1 << 14 {
        out.extend_from_slice(&((value as u16) | 0x4000).to_be_bytes());
    } else if value < 1 << 30 {
        out.extend_from_slice(&((value as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(value | 0xC000_0000_0000_0000).to_be_bytes());
    }
}

/// The application error code a session's end is sent with.
fn close_code_of(reason: &DisconnectReason) -> u32 {
    match reason {
        DisconnectReason::ClosedByApp | DisconnectReason::ClosedByPeer => close_code::NO_ERROR,
        DisconnectReason::Shutdown => close_code::SHUTDOWN,
        DisconnectReason::MalformedPacket(_) => close_code::PROTOCOL,
        _ => close_code::OTHER,
    }
}

/// Escaped and cut short: a peer's text never forges a log line.
fn escape(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out: String = text.escape_debug().collect();
    if out.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// What a connection's end means for its session.
pub(super) fn reason_of(error: &ConnectionError) -> DisconnectReason {
    match error {
        ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == 0 => {
            DisconnectReason::ClosedByPeer
        }
        ConnectionError::ApplicationClosed(close) => DisconnectReason::QuicClosed {
            code: close.error_code.into_inner(),
            detail: escape(&close.reason),
        },
        ConnectionError::TimedOut => DisconnectReason::Quic("idle timeout".into()),
        ConnectionError::Reset => DisconnectReason::Quic("stateless reset".into()),
        ConnectionError::LocallyClosed => DisconnectReason::ClosedByApp,
        ConnectionError::ConnectionClosed(close) => DisconnectReason::Quic(format!(
            "closed by the peer: {} {}",
            close.error_code,
            escape(&close.reason)
        )),
        ConnectionError::TransportError(error) => DisconnectReason::Quic(error.to_string()),
        other => DisconnectReason::Quic(other.to_string()),
    }
}

/// Runs one connection's bridge until both directions are done: the
/// client's stream and datagrams into `socket`, the session's bytes from
/// `socket` to the client's stream; then closes the connection with the
/// session's reason.
pub(super) async fn pump<R>(
    link: Arc<QuicLink>,
    send: Outbound,
    recv: R,
    socket: UnixStream,
    datagram_ids: Option<Arc<[u16]>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (from_session, to_session) = socket.into_split();
    let session_done = Arc::new(tokio::sync::Notify::new());
    let inbound = tokio::spawn(pump_in(
        Arc::clone(&link),
        recv,
        to_session,
        datagram_ids,
        Arc::clone(&session_done),
    ));
    pump_out(&link, send, from_session).await;
    // The session closed its side: like a TCP peer that sees the FIN, the
    // bridge closes the other, so the session's lingering close ends now.
    session_done.notify_one();
    if link.ended.lock().is_none() {
        let _ = tokio::time::timeout(REASON_TIMEOUT, link.ended_notify.notified()).await;
    }
    let reason = link
        .ended
        .lock()
        .clone()
        .unwrap_or(DisconnectReason::ClosedByApp);
    link.conn
        .close(close_code_of(&reason).into(), reason.name().as_bytes());
    let _ = inbound.await;
}

/// The session's bytes to the client's stream, until the session closes
/// its socket; then the stream is finished and given a bounded time to be
/// acknowledged.
async fn pump_out(
    link: &QuicLink,
    mut send: Outbound,
    mut socket: tokio::net::unix::OwnedReadHalf,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let written = match &mut send {
            Outbound::Quic(send) => send.write_all(&buf[..n]).await.is_ok(),
            Outbound::Other(send) => send.write_all(&buf[..n]).await.is_ok(),
        };
        if !written {
            // The client stopped the stream or the connection is gone; the
            // session learns it from its inbound side.
            return;
        }
        Counters::add(&link.counters.bytes_out, n as u64);
    }
    match send {
        Outbound::Quic(mut send) => {
            if send.finish().is_ok() {
                let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
            }
        }
        Outbound::Other(mut send) => {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.shutdown()).await;
        }
    }
}

/// Where a session's bytes go: a QUIC stream, or a stream of another
/// layer over QUIC (WebTransport).
pub(super) enum Outbound {
    /// The connection's own stream: finished, then its acknowledgement
    /// awaited.
    Quic(SendStream),
    /// Another layer's stream: shut down.
    Other(Pin<Box<dyn AsyncWrite + Send>>),
}

/// The client's stream and datagrams to the session's socket.
async fn pump_in<R: AsyncRead + Unpin>(
    link: Arc<QuicLink>,
    mut recv: R,
    mut socket: tokio::net::unix::OwnedWriteHalf,
    datagram_ids: Option<Arc<[u16]>>,
    session_done: Arc<tokio::sync::Notify>,
) {
    let mut boundary = Boundary::default();
    let mut held: VecDeque<Bytes> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stream_open = true;
    loop {
        tokio::select! {
            () = session_done.notified() => {
                let _ = socket.shutdown().await;
                return;
            }
            read = recv.read(&mut buf), if stream_open => match read {
                Ok(n) if n > 0 => {
                    boundary.feed(&buf[..n]);
                    if socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    Counters::add(&link.counters.bytes_in, n as u64);
                    if boundary.at_boundary() {
                        while let Some(datagram) = held.pop_front() {
                            if socket.write_all(&datagram).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(_) => {
                    // The client finished its stream: the session sees EOF
                    // (and may still send until it closes).
                    stream_open = false;
                    let _ = socket.shutdown().await;
                }
                Err(error) => {
                    link.note_peer_end(match link.conn.close_reason() {
                        Some(lost) => reason_of(&lost),
                        None => DisconnectReason::Quic(format!("the client's stream: {error}")),
                    });
                    let _ = socket.shutdown().await;
                    return;
                }
            },
            datagram = link.conn.read_datagram() => match datagram {
                Ok(datagram) => {
                    let datagram = match datagram.strip_prefix(&link.datagram_prefix[..]) {
                        Some(_) => datagram.slice(link.datagram_prefix.len()..),
                        None => Bytes::new(),
                    };
                    let packets = match check_datagram(&datagram, datagram_ids.as_deref()) {
                        Ok(packets) => packets,
                        Err(rejected) => {
                        Counters::add(&link.counters.datagrams_rejected, 1);
                        if let Some(dropped) = REJECT_LOG.event() {
                            tracing::debug!(
                                peer = %link.conn.remote_address(),
                                ?rejected,
                                len = datagram.len(),
                                dropped,
                                "dropping a QUIC datagram (dropped counts those since the last line)"
                            );
                        }
                        let _: Rejected = rejected;
                        continue;
                        }
                    };
                    Counters::add(&link.counters.datagrams_received, 1);
                    link.datagram_packets.fetch_add(packets, Ordering::Relaxed);
                    Counters::add(&link.counters.datagram_packets_received, packets);
                    if stream_open && boundary.at_boundary() && held.is_empty() {
                        if socket.write_all(&datagram).await.is_err() {
                            return;
                        }
                    } else if stream_open {
                        if held.len() == HELD_DATAGRAMS {
                            held.pop_front();
                        }
                        held.push_back(datagram);
                    }
                }
                Err(error) => {
                    link.note_peer_end(reason_of(&error));
                    let _ = socket.shutdown().await;
                    return;
                }
            },
        }
    }
}
