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
pub(crate) mod pool;
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

/// Most buffers one gathered write takes (`IOV_MAX` on Linux and macOS):
/// both backends hand the kernel at most this many iovecs per write, and
/// the worker takes at most this many buffers from a queue per write.
pub(crate) const MAX_BATCH_BUFFERS: usize = 1024;

/// The buffers of one gathered write. Handed to [`Driver::send`] and handed
/// back, untouched, in [`Event::Sent`], so the worker can resume a partial
/// write where it stopped: [`advance`](SendBatch::advance) moves a start
/// index past the written buffers (releasing each at once) instead of
/// shifting the rest, so resuming costs what was written, not what is left.
#[derive(Debug, Default)]
pub(crate) struct SendBatch {
    bufs: Vec<Bytes>,
    /// Buffers before this index are written (and emptied).
    start: usize,
}

impl SendBatch {
    /// Drops the first `written` bytes (what a `Sent { Ok(written) }`
    /// reported), so the rest can be sent again where the write stopped.
    /// Returns how many buffers were written whole.
    pub fn advance(&mut self, mut written: usize) -> usize {
        let mut whole = 0;
        while let Some(buf) = self.bufs.get_mut(self.start) {
            if written < buf.len() {
                bytes::Buf::advance(buf, written);
                break;
            }
            written -= buf.len();
            *buf = Bytes::new();
            self.start += 1;
            whole += 1;
        }
        if self.start == self.bufs.len() {
            self.bufs.clear();
            self.start = 0;
        }
        whole
    }

    /// The buffers not written yet, in wire order.
    pub fn bufs(&self) -> &[Bytes] {
        &self.bufs[self.start..]
    }

    /// How many buffers are not written yet.
    pub fn buffers(&self) -> usize {
        self.bufs.len() - self.start
    }

    /// The buffers not written yet, to append to.
    pub fn vec_mut(&mut self) -> &mut Vec<Bytes> {
        if self.start > 0 {
            self.bufs.drain(..self.start);
            self.start = 0;
        }
        &mut self.bufs
    }

    /// The vector, emptied or not, for reuse.
    pub fn into_vec(self) -> Vec<Bytes> {
        self.bufs
    }

    /// Keeps only the first `len` buffers not written yet.
    #[cfg(test)]
    pub fn truncate(&mut self, len: usize) {
        self.bufs.truncate(self.start + len);
    }

    /// True when every byte was written.
    pub fn is_empty(&self) -> bool {
        self.start == self.bufs.len()
    }

    /// Bytes not written yet.
    pub fn len(&self) -> usize {
        self.bufs().iter().map(Bytes::len).sum()
    }
}

impl From<Vec<Bytes>> for SendBatch {
    fn from(bufs: Vec<Bytes>) -> SendBatch {
        SendBatch { bufs, start: 0 }
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
    /// io_uring: how long a waiting worker may sleep on for more
    /// completions once the first one is there (`min_wait`, Linux 6.12+),
    /// so that a stream of small receives wakes it once per batch instead
    /// of once per packet. `None`: wake for every completion. poll: unused.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub wake_batch: Option<std::time::Duration>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            recv_ring_entries: 256,
            recv_buffer_size: 16 * 1024,
            sq_entries: 1024,
            wake_batch: None,
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

    /// Gives back memory a peak left: pooled items no operation needed
    /// since the last call, bookkeeping far larger than what is in use.
    /// Called on a slow cadence (about once a second).
    fn trim(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_past_whole_buffers_and_into_a_partial_one() {
        let mut batch = SendBatch::from(vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fghi"),
        ]);
        assert_eq!(batch.advance(0), 0);
        assert_eq!(batch.advance(4), 1, "abc whole, d of de");
        assert_eq!(batch.bufs(), [&b"e"[..], &b"fghi"[..]]);
        assert_eq!((batch.buffers(), batch.len()), (2, 5));
        batch.vec_mut().push(Bytes::from_static(b"j"));
        assert_eq!(batch.bufs(), [&b"e"[..], &b"fghi"[..], &b"j"[..]]);
        assert_eq!(batch.advance(6), 3);
        assert!(batch.is_empty());
        assert_eq!(batch.buffers(), 0);
    }

    #[test]
    fn resuming_a_long_batch_costs_what_was_written() {
        // 100,000 one-byte buffers written one iovec array at a time: each
        // advance touches only the buffers it passes (shifting the rest each
        // time, the 98 advances would move about five million handles).
        let mut batch = SendBatch::from(vec![Bytes::from_static(b"x"); 100_000]);
        let mut writes = 0;
        while !batch.is_empty() {
            let expected = MAX_BATCH_BUFFERS.min(batch.buffers());
            assert_eq!(batch.advance(MAX_BATCH_BUFFERS), expected);
            writes += 1;
        }
        assert_eq!(writes, 100_000usize.div_ceil(MAX_BATCH_BUFFERS));
    }

    #[test]
    fn written_buffers_are_released_at_once() {
        let shared = Bytes::from(vec![7u8; 64]);
        let mut batch = SendBatch::from(vec![shared.clone(), Bytes::from_static(b"rest")]);
        assert!(!shared.is_unique());
        batch.advance(64);
        assert!(shared.is_unique(), "the batch let go of the written buffer");
    }
}
