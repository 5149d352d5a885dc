//! [`SessionHandle`]: the thread-safe face of a session (what any thread
//! may do with it: send, flush, disconnect, ask its state), with the
//! session's id ([`SessionId`]) and why a send can fail ([`SendError`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::mailbox::Request;
use super::shared::{OverflowPolicy, Refused, SessionShared};
use super::{cut_datagrams, DatagramRefused, DisconnectReason, Piece};
use crate::log_throttle::LogThrottle;
use crate::service::metrics::WorkerCounters;

/// Identifies one session for its whole life, and no other session of the
/// service ever: the worker's index and the session's serial number on that
/// worker (48 bits, counting from 1, never reused — 2^48 sessions is nine
/// years of a million connects a second). Sessions compare, hash and sort by
/// id; ids of one worker sort in connection order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// Bits of the per-worker serial number; the worker index sits above.
    const SERIAL_BITS: u32 = 48;
    const SERIAL_MASK: u64 = (1 << Self::SERIAL_BITS) - 1;

    pub(crate) fn new(worker: u16, serial: u64) -> SessionId {
        SessionId((u64::from(worker) << Self::SERIAL_BITS) | (serial & Self::SERIAL_MASK))
    }

    /// The id as one number, unique among the sessions of a service.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Index of the worker thread that owns the session.
    pub fn worker(self) -> usize {
        (self.0 >> Self::SERIAL_BITS) as usize
    }

    /// The session's number among its worker's sessions: 1 for the first,
    /// then counting up, never reused.
    pub fn serial(self) -> u64 {
        self.0 & Self::SERIAL_MASK
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.worker(), self.serial())
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session is closed or closing.
    #[error("the session is closed")]
    Closed,
    /// The send queue is past its hard limit; the configured overflow policy
    /// has been applied.
    #[error("the send queue is full")]
    QueueFull,
}

/// Send-queue overflows, over every session of the process.
static OVERFLOW_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// A session as seen from anywhere: cheap to clone, `Send + Sync`.
///
/// Sends are queued in order and written by the owning worker, gathered into
/// one write per round. Using a handle after its session closed is safe:
/// sends return [`SendError::Closed`].
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) inner: Arc<SessionShared>,
}

impl SessionHandle {
    pub(crate) fn from_shared(inner: Arc<SessionShared>) -> SessionHandle {
        SessionHandle { inner }
    }

    /// The counters of the worker that owns the session.
    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.inner.mailbox.counters
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The local address of the connection (for a QUIC session, the UDP
    /// socket's).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner.link {
            Some(link) => link.local_addr(),
            None => self.inner.local,
        }
    }

    /// True until the session starts closing.
    pub fn is_connected(&self) -> bool {
        self.inner.is_open()
    }

    /// False while the send queue is above its high watermark (true again at
    /// the low watermark): lets the game shed load before the hard limit.
    /// The watermarks compare what the queue holds: its bytes plus an
    /// overhead for each buffer.
    pub fn is_writable(&self) -> bool {
        self.inner.is_writable() && self.inner.is_open()
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }

    /// Queues `data` for sending. The buffer is shared, never copied: one
    /// broadcast `Bytes` can be given to every receiver.
    pub fn send(&self, data: Bytes) -> Result<(), SendError> {
        self.send_batch(std::iter::once(data))
    }

    /// Queues several buffers as one unit: all of them, in order, under one
    /// lock and with one flush request, so they go out in the same gathered
    /// write (a game tick's output for one player). Empty buffers are
    /// skipped. If they would take the queue past its hard limit, none is
    /// queued and the overflow policy applies, as for [`send`](Self::send).
    pub fn send_batch(&self, buffers: impl IntoIterator<Item = Bytes>) -> Result<(), SendError> {
        match self.inner.enqueue(buffers) {
            Ok(Some((before, queued))) => {
                self.request_flush(before, queued);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Refused::Closed) => Err(SendError::Closed),
            Err(Refused::Full) => Err(self.overflow()),
        }
    }

    /// Tells the owning worker that bytes were queued (`before` → `queued`):
    /// once per flush it has not taken yet, and again when a session held
    /// back by send coalescing passes the bound that ends the hold.
    fn request_flush(&self, before: usize, queued: usize) {
        let shared = &*self.inner;
        let first = shared.mark_unflushed();
        let bound = shared.limits().coalesce_max_bytes;
        if first || (before < bound && queued >= bound) {
            shared.mailbox.push(Request::Flush(Arc::clone(&self.inner)));
        }
    }

    /// Queues `data` and writes it, with everything queued before it, at
    /// once: it is not held back by send coalescing.
    pub fn send_now(&self, data: Bytes) -> Result<(), SendError> {
        self.send(data)?;
        self.flush();
        Ok(())
    }

    /// Writes everything queued so far at once, without waiting for the
    /// send-coalescing interval. Without coalescing every send is written
    /// in the owning worker's next round anyway, and this does nothing.
    pub fn flush(&self) {
        let shared = &*self.inner;
        if shared.limits().coalesce_max_bytes == usize::MAX || !shared.is_open() {
            return;
        }
        shared.request_flush_now();
        shared.mailbox.push(Request::Flush(Arc::clone(&self.inner)));
    }

    /// Gathered writes submitted to the socket for this session so far (one
    /// `sendmsg`/`writev` each, partial writes included).
    pub fn write_count(&self) -> u64 {
        self.inner.write_count()
    }

    /// The transport carrying the session when it is not a TCP listener's
    /// (`Some("quic")`); `None` for TCP, TLS and WebSocket sessions.
    pub fn bridged_transport(&self) -> Option<&'static str> {
        self.inner.link.as_ref().map(|link| link.transport())
    }

    /// The largest datagram the peer accepts now: `Some` only on a QUIC
    /// session whose peer takes datagrams (RFC 9221).
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.link.as_ref()?.max_datagram_size()
    }

    /// Packets the peer sent by datagram that were fed to this session so
    /// far (0 except on QUIC): with the packets seen in `on_recv`, how many
    /// came each way.
    pub fn datagram_packets_received(&self) -> u64 {
        self.inner
            .link
            .as_ref()
            .map_or(0, |link| link.datagram_packets_received())
    }

    /// Sends `packets` (whole `[size][id][body]` packets back to back)
    /// unreliably where the transport can: on a QUIC session whose peer
    /// takes datagrams they are disconnected, at packet boundaries only, into
    /// datagrams of at most [`max_datagram_size`](Self::max_datagram_size)
    /// bytes (as many packets in each as fit, never one split), queued in
    /// the connection's own bounded datagram queue (the oldest is dropped
    /// when it is full), never resent, and may arrive out of order or not
    /// at all. Everywhere else — TCP, TLS, WebSocket, a peer without
    /// datagrams, a packet larger than a datagram — the bytes go by the
    /// ordered stream exactly as [`send`](Self::send) would queue them.
    pub fn send_datagram(&self, packets: Bytes) -> Result<(), SendError> {
        let link = match &self.inner.link {
            Some(link) if self.inner.is_open() => link,
            _ => return self.send(packets),
        };
        let Some(max) = link.max_datagram_size() else {
            return self.send(packets);
        };
        let mut result = Ok(());
        cut_datagrams(&packets, max, |piece| {
            if result.is_err() {
                return;
            }
            result = match piece {
                Piece::Datagram(datagram) => match link.send_datagram(datagram.clone()) {
                    Ok(()) => Ok(()),
                    Err(DatagramRefused::TooLarge) => self.send(datagram),
                    Err(DatagramRefused::Closed) => Err(SendError::Closed),
                },
                Piece::Stream(bytes) => self.send(bytes),
            };
        });
        result
    }

    /// Copies `data` into a new buffer and queues it.
    pub fn send_copy(&self, data: &[u8]) -> Result<(), SendError> {
        self.send(Bytes::copy_from_slice(data))
    }

    /// Closes the session once what is already queued has been written.
    /// The reason given to `on_disconnected` is [`DisconnectReason::ClosedByApp`].
    pub fn disconnect(&self) {
        self.disconnect_with(DisconnectReason::ClosedByApp);
    }

    /// Closes the session with a reason of the caller's choosing (a packet
    /// layer reports [`DisconnectReason::MalformedPacket`] this way). The
    /// first reason given wins.
    pub fn disconnect_with(&self, reason: DisconnectReason) {
        if self.inner.begin_close(reason) {
            self.inner
                .mailbox
                .push(Request::Disconnect(Arc::clone(&self.inner)));
        }
    }

    fn overflow(&self) -> SendError {
        match self.inner.limits().policy {
            OverflowPolicy::Disconnect => {
                if let Some(disconnects) = OVERFLOW_LOG.event() {
                    tracing::warn!(
                        session = %self.id(),
                        peer = %self.peer_addr(),
                        queued = self.queued_bytes(),
                        disconnects,
                        total = OVERFLOW_LOG.total(),
                        "send queue overflow, disconnecting (disconnects counts this one and those \
                         since the last line, over all sessions)"
                    );
                }
                self.disconnect_with(DisconnectReason::SendQueueOverflow);
            }
            OverflowPolicy::DropNewest => {}
        }
        SendError::QueueFull
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id())
            .field("peer", &self.peer_addr())
            .field("connected", &self.is_connected())
            .finish()
    }
}
