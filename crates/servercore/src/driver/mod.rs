//! The driver layer: submits socket I/O and reports completions.
//!
//! Two backends sit side by side behind one internal interface, [`Driver`]:
//! `uring` (io_uring, Linux only) and `poll` (mio: epoll, kqueue, Windows).
//! The driver owns every buffer an operation points at while the operation
//! is in flight (the send batch, its iovec array, the receive buffer ring),
//! so the layers above never hand the kernel memory they could free early.
//! All `unsafe` code of servercore lives below this module, which is why
//! [`heap`] (the C allocator's statistics and trimming, FFI calls) sits
//! here too.
//!
//! The worker (service layer) owns one driver and drives it in rounds:
//! queue operations (`add_stream`, `send`, `close`, ...), then call
//! [`Driver::poll`], which submits everything queued in one go, waits up to a
//! timeout, and hands each completion to an [`EventSink`].
//!
//! What both backends share lives here once: the token map and its hasher
//! (`token_map`), and what an accept error means and how long a listener
//! rests after one (`accept`). The contract [`Driver`] states is tested by
//! one suite (`conformance`), generic over the driver and instantiated
//! unchanged for each backend; each backend's own tests cover only what it
//! alone does.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod accept;
#[cfg(test)]
mod conformance;
pub mod heap;
pub(crate) mod poll;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

mod select;
mod token_map;
pub use select::{available_backends, uring_unavailable_reason, Backend, BackendError};
pub(crate) use select::{resolve_backend, ResolvedBackend};

/// Opaque key of one connection inside one driver (a session's slot and
/// generation, packed by the worker). The driver never interprets it.
pub(crate) type Token = u64;

/// How a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseMode {
    /// Orderly close (FIN): the kernel still delivers what was written.
    Graceful,
    /// Abortive close (RST, `SO_LINGER` 0): for overflowing or hostile peers.
    Abort,
}

/// The buffers of one gathered write. Handed to [`Driver::send`] and handed
/// back, untouched, in [`Event::Sent`], so the worker can resume a partial
/// write where it stopped.
#[derive(Debug, Default)]
pub(crate) struct SendBatch {
    /// Buffers in wire order. Never empty when passed to `send`.
    pub bufs: Vec<Bytes>,
}

impl SendBatch {
    /// Drops the first `written` bytes (what a `Sent { Ok(written) }`
    /// reported), so the rest can be sent again where the write stopped.
    pub fn advance(&mut self, mut written: usize) {
        let mut whole = 0;
        for buf in &mut self.bufs {
            if written < buf.len() {
                bytes::Buf::advance(buf, written);
                break;
            }
            written -= buf.len();
            whole += 1;
        }
        self.bufs.drain(..whole);
    }

    /// The buffers not written yet, in wire order.
    pub fn bufs(&self) -> &[Bytes] {
        &self.bufs
    }

    /// Keeps only the first `len` buffers not written yet.
    #[cfg(test)]
    pub fn truncate(&mut self, len: usize) {
        self.bufs.truncate(len);
    }

    /// True when every byte was written.
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Total bytes of the batch.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(Bytes::len).sum()
    }
}

impl From<Vec<Bytes>> for SendBatch {
    fn from(bufs: Vec<Bytes>) -> SendBatch {
        SendBatch { bufs }
    }
}

/// One completion reported by [`Driver::poll`].
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A listener accepted a connection. The stream is non-blocking and not
    /// yet known to the driver; the worker calls `add_stream` or drops it.
    Accepted {
        /// The accepted connection.
        stream: TcpStream,
        /// The remote address.
        peer: SocketAddr,
    },
    /// Accepting failed (for example `EMFILE`); the listener keeps going.
    AcceptError(io::Error),
    /// Bytes arrived for `token`. `data` is valid only during the call.
    Received {
        /// The connection.
        token: Token,
        /// The bytes, in order after any earlier `Received` of this token.
        data: &'a [u8],
    },
    /// The read side ended: `None` for an orderly EOF, `Some` for an error
    /// (`ECONNRESET` and friends). No more `Received` follow.
    ReadClosed {
        /// The connection.
        token: Token,
        /// Why, when it was not a plain EOF.
        error: Option<io::Error>,
    },
    /// The write started by `send` finished: `Ok(n)` bytes (`n > 0`, maybe
    /// fewer than the batch held) or an error. The batch comes back.
    Sent {
        /// The connection.
        token: Token,
        /// Bytes written, or the error.
        result: io::Result<usize>,
        /// The batch given to `send`.
        batch: SendBatch,
    },
    /// After `close(token)`: every operation of `token` has completed or was
    /// cancelled and the socket is closed. Reported exactly once per token
    /// given to `add_stream`; the worker may reuse the slot afterwards.
    Released {
        /// The connection.
        token: Token,
    },
}

/// Receives the completions of one [`Driver::poll`] round.
pub(crate) trait EventSink {
    /// Called once per completion, in completion order.
    fn event(&mut self, event: Event<'_>);
}

/// Wakes a driver blocked in [`Driver::poll`] from any thread.
pub(crate) trait Wake: Send + Sync {
    /// Makes the current or next `poll` return promptly.
    fn wake(&self);
}

/// Tuning shared by both backends.
#[derive(Debug, Clone)]
pub(crate) struct DriverConfig {
    /// io_uring: number of buffers in the provided receive-buffer ring (a
    /// power of two). poll: unused.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub recv_ring_entries: u16,
    /// Size of one receive buffer (io_uring ring entry, poll scratch buffer).
    pub recv_buffer_size: usize,
    /// io_uring submission queue size.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub sq_entries: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            recv_ring_entries: 256,
            recv_buffer_size: 16 * 1024,
            sq_entries: 1024,
        }
    }
}

/// The completion interface each backend implements. One instance per worker
/// thread; it is never shared between threads (`Wake` is the only part that
/// crosses threads).
///
/// Rules both backends keep:
/// - operations queued by the methods take effect at the next `poll` (or
///   earlier); nothing is lost if they are queued while no poll runs;
/// - at most one `send` per token is in flight; the worker waits for `Sent`;
/// - `Received` data of one token arrives in stream order;
/// - after `close(token)` no further event of that token is reported except
///   the outstanding `Sent` (if a send was in flight) and then exactly one
///   `Released`;
/// - `poll` never blocks longer than its timeout, and returns early when
///   woken or when any completion is ready.
pub(crate) trait Driver: Sized {
    /// Builds a driver for the calling thread.
    fn new(config: &DriverConfig) -> io::Result<Self>;

    /// Starts accepting on `listener` (non-blocking, already listening).
    /// Accepted connections arrive as [`Event::Accepted`].
    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()>;

    /// Stops accepting on every listener and closes them. Their ports are
    /// free when this returns, even if an accept of theirs is still in
    /// flight: a restarted server can bind them at once.
    fn close_listeners(&mut self);

    /// Adopts a connected, non-blocking stream under `token` and starts
    /// receiving on it.
    fn add_stream(&mut self, token: Token, stream: TcpStream) -> io::Result<()>;

    /// Starts one gathered write of `batch` (non-empty) on `token`.
    fn send(&mut self, token: Token, batch: SendBatch);

    /// Shuts down the write side of `token` (`shutdown(SHUT_WR)`: FIN after
    /// everything already written) and goes on receiving, for a lingering
    /// close. Only while no send of `token` is in flight.
    fn shutdown_write(&mut self, token: Token);

    /// Stops reading and writing `token`, cancels what is in flight, closes
    /// the socket and eventually reports [`Event::Released`].
    fn close(&mut self, token: Token, mode: CloseMode);

    /// Submits everything queued, waits up to `timeout` (`None`: until an
    /// event or a wake-up) and reports completions to `sink`.
    fn poll(&mut self, timeout: Option<Duration>, sink: &mut dyn EventSink) -> io::Result<()>;

    /// A handle that wakes this driver from another thread.
    fn waker(&self) -> Arc<dyn Wake>;
}
