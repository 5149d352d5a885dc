//! The portable readiness backend of the driver layer, on `mio` (epoll on
//! Linux, kqueue on macOS and the BSDs, AFD polling on Windows).
//!
//! [`PollDriver`] turns readiness into the completion events of [`Driver`],
//! with the same observable semantics as the io_uring backend. Per worker it
//! owns:
//! - one `mio::Poll`, its event buffer and its `mio::Waker`;
//! - the listening sockets, with their accept backlog and back-off state;
//! - every adopted connection, in a slab indexed by the `mio::Token`, with a
//!   map from the worker's opaque [`Token`] to the slab index;
//! - the send batch of each connection that is waiting for writability (at
//!   most one per connection) and one reusable iovec array for `writev`;
//! - one receive scratch buffer shared by all its connections: `Received`
//!   data points into it and is valid only during the sink call;
//! - the events produced outside `poll` (`Sent` of a write that finished
//!   immediately, `Released`), delivered at the start of the next `poll`.
//!
//! Sources are registered once, edge-triggered, so every readable or
//! writable socket is read or written until `WouldBlock` — or until a
//! per-round cap for fairness, after which the socket is remembered and
//! served first in the next round (that round then polls without waiting).
//! No allocation happens per read or write in the steady state.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};

use super::accept::{self, AcceptFailure, ACCEPT_BACKOFF};
use super::token_map::TokenMap;
use super::{CloseMode, Driver, DriverConfig, Event, EventSink, SendBatch, Token, Wake};

/// Capacity of the `mio` event buffer: readiness reported per `poll` call
/// (more stays pending in the kernel for the next round).
const EVENTS_CAPACITY: usize = 1024;
/// Connections accepted per listener per round before other work runs.
const ACCEPTS_PER_ROUND: usize = 256;
/// Reads per connection per round before other connections are served.
const READS_PER_ROUND: usize = 16;
/// Buffers per `writev`. The rest of a larger batch is left to the worker,
/// which resumes after the partial `Sent`.
const MAX_IOVECS: usize = super::MAX_BATCH_BUFFERS;
/// Whether a read shorter than the buffer proves the socket drained. True
/// for epoll and kqueue (data arriving later raises a new edge); on Windows
/// mio re-arms a socket only when an operation returns `WouldBlock`.
const SHORT_READ_DRAINS: bool = cfg!(not(windows));

/// The slab index recorded for a token between `close` and the delivery of
/// its `Released`: the token stays taken, but no connection is behind it.
const CLOSING: usize = usize::MAX;

/// The `mio` token of the waker.
const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX);
/// The `mio` token of listener `i` is `LISTENER_BASE + i`; connections use
/// their slab index, which stays far below.
const LISTENER_BASE: usize = usize::MAX / 2;

/// The portable driver: one per worker thread. See the module docs.
pub(crate) struct PollDriver {
    poll: Poll,
    events: Events,
    waker: Arc<PollWaker>,
    listeners: Vec<Listener>,
    /// Listeners that stopped at the accept cap with connections left.
    accept_ready: Vec<usize>,
    /// The connection slab, indexed by `mio::Token`.
    conns: Vec<Option<Conn>>,
    /// Vacant slab indices.
    free: Vec<usize>,
    /// The worker's token to the slab index ([`CLOSING`] until `Released`).
    index: TokenMap<usize>,
    /// Connections that stopped at the read cap: served first next round.
    readable: Vec<usize>,
    /// The list being served this round (swapped with `readable`, so
    /// neither allocates in the steady state).
    serving: Vec<usize>,
    /// Events produced outside `poll`, delivered at the start of the next.
    queued: VecDeque<Event<'static>>,
    /// The receive scratch buffer (`DriverConfig::recv_buffer_size`).
    scratch: Box<[u8]>,
    /// Reusable iovec storage; always empty between calls.
    iov: Vec<IoSlice<'static>>,
}

struct Listener {
    socket: mio::net::TcpListener,
    /// Listed in `PollDriver::accept_ready`.
    backlog: bool,
    /// Resting after an accept error until then.
    retry_at: Option<Instant>,
    /// The socket cannot accept (not listening, not a socket): ignored.
    stopped: bool,
}

struct Conn {
    token: Token,
    stream: mio::net::TcpStream,
    /// False once `ReadClosed` was reported.
    read_open: bool,
    /// Listed in `PollDriver::readable`.
    backlog: bool,
    /// Readiness reported the peer's FIN or an error: read to the end even
    /// after a short read, because no further edge will come.
    peer_closed: bool,
    /// The batch of a `send` that hit `WouldBlock`, retried when writable.
    pending: Option<SendBatch>,
}

struct PollWaker(mio::Waker);

impl Wake for PollWaker {
    fn wake(&self) {
        if let Err(error) = self.0.wake() {
            tracing::warn!(%error, "waking the poll driver failed");
        }
    }
}

impl Driver for PollDriver {
    fn new(config: &DriverConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            waker: Arc::new(PollWaker(waker)),
            listeners: Vec::new(),
            accept_ready: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            index: TokenMap::default(),
            readable: Vec::new(),
            serving: Vec::new(),
            queued: VecDeque::new(),
            scratch: vec![0; config.recv_buffer_size.max(1)].into_boxed_slice(),
            iov: Vec::with_capacity(MAX_IOVECS),
        })
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut socket = mio::net::TcpListener::from_std(listener);
        let token = mio::Token(LISTENER_BASE + self.listeners.len());
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)?;
        self.listeners.push(Listener {
            socket,
            backlog: false,
            retry_at: None,
            stopped: false,
        });
        Ok(())
    }

    fn close_listeners(&mut self) {
        for mut listener in self.listeners.drain(..) {
            if let Err(error) = self.poll.registry().deregister(&mut listener.socket) {
                tracing::debug!(%error, "deregistering a listener failed");
            }
        }
        self.accept_ready.clear();
    }

    fn add_stream(&mut self, token: Token, stream: TcpStream) -> io::Result<()> {
        let Entry::Vacant(entry) = self.index.entry(token) else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the token is already in use by this driver",
            ));
        };
        // The contract says it already is; a blocking socket would stall the
        // whole worker, so one cheap call per connection buys certainty.
        stream.set_nonblocking(true)?;
        #[cfg(target_vendor = "apple")]
        socket2::SockRef::from(&stream).set_nosigpipe(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let slot = self.free.pop().unwrap_or(self.conns.len());
        debug_assert!(slot < LISTENER_BASE);
        let registered = self.poll.registry().register(
            &mut stream,
            mio::Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(error) = registered {
            if slot < self.conns.len() {
                self.free.push(slot);
            }
            return Err(error);
        }
        let conn = Conn {
            token,
            stream,
            read_open: true,
            backlog: false,
            peer_closed: false,
            pending: None,
        };
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
        entry.insert(slot);
        Ok(())
    }

    fn send(&mut self, token: Token, batch: SendBatch) {
        let conn = match self.index.get(&token) {
            Some(&slot) if slot != CLOSING => self.conns[slot].as_mut(),
            _ => None,
        };
        let Some(conn) = conn else {
            // Closed (or never added): no event of this token but
            // `Released` any more, so the batch is dropped.
            tracing::debug!(token, "send to an unknown or closed token dropped");
            return;
        };
        if conn.pending.is_some() {
            tracing::error!(token, "a second send while one is in flight");
            let error = io::Error::other("a send of this token is already in flight");
            self.queued.push_back(Event::Sent {
                token,
                result: Err(error),
                batch,
            });
            return;
        }
        match write_batch(&mut conn.stream, &batch, &mut self.iov) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => conn.pending = Some(batch),
            result => self.queued.push_back(Event::Sent {
                token,
                result,
                batch,
            }),
        }
    }

    fn shutdown_write(&mut self, token: Token) {
        let conn = match self.index.get(&token) {
            Some(&slot) if slot != CLOSING => self.conns[slot].as_mut(),
            _ => None,
        };
        let Some(conn) = conn else {
            return;
        };
        debug_assert!(conn.pending.is_none(), "shutdown with a send in flight");
        if let Err(error) = conn.stream.shutdown(std::net::Shutdown::Write) {
            tracing::debug!(%error, token, "shutting down the write side failed");
        }
    }

    fn close(&mut self, token: Token, mode: CloseMode) {
        let Some(slot) = self.index.get_mut(&token).filter(|slot| **slot != CLOSING) else {
            tracing::debug!(token, "close of an unknown or already closed token");
            return;
        };
        // The token stays taken until its `Released` is delivered.
        let slot = std::mem::replace(slot, CLOSING);
        let Some(mut conn) = self.conns[slot].take() else {
            unreachable!("an indexed slot is occupied");
        };
        self.free.push(slot);
        if conn.backlog {
            self.readable.retain(|&listed| listed != slot);
        }
        if let Some(batch) = conn.pending.take() {
            let error = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was closed before the write completed",
            );
            self.queued.push_back(Event::Sent {
                token,
                result: Err(error),
                batch,
            });
        }
        if mode == CloseMode::Abort {
            let linger = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
            if let Err(error) = linger {
                tracing::debug!(%error, token, "setting SO_LINGER 0 failed");
            }
        }
        if let Err(error) = self.poll.registry().deregister(&mut conn.stream) {
            tracing::debug!(%error, token, "deregistering a connection failed");
        }
        drop(conn);
        self.queued.push_back(Event::Released { token });
    }

    fn poll(&mut self, timeout: Option<Duration>, sink: &mut dyn EventSink) -> io::Result<()> {
        let Self {
            poll,
            events,
            index,
            listeners,
            accept_ready,
            conns,
            readable,
            serving,
            queued,
            scratch,
            iov,
            ..
        } = self;

        let delivered = !queued.is_empty();
        while let Some(event) = queued.pop_front() {
            if let Event::Released { token } = event {
                index.remove(&token);
            }
            sink.event(event);
        }

        let busy = delivered || !readable.is_empty() || !accept_ready.is_empty();
        let mut wait = if busy { Some(Duration::ZERO) } else { timeout };
        if let Some(retry_at) = listeners.iter().filter_map(|l| l.retry_at).min() {
            let until = retry_at.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |wait| wait.min(until)));
        }
        match poll.poll(events, wait) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(error) => return Err(error),
        }

        // Connections left readable by the previous round come first.
        std::mem::swap(readable, serving);
        for slot in serving.drain(..) {
            let Some(conn) = conns[slot].as_mut() else {
                continue;
            };
            conn.backlog = false;
            if conn.read_open && read_round(conn, scratch, sink) {
                conn.backlog = true;
                readable.push(slot);
            }
        }

        // Then listeners with a backlog left, or whose rest is over.
        for index in std::mem::take(accept_ready) {
            let listener = &mut listeners[index];
            listener.backlog = false;
            accept_if_ready(listener, index, accept_ready, sink);
        }
        if listeners.iter().any(|l| l.retry_at.is_some()) {
            let now = Instant::now();
            for (index, listener) in listeners.iter_mut().enumerate() {
                if listener.retry_at.is_some_and(|at| at <= now) {
                    listener.retry_at = None;
                    accept_if_ready(listener, index, accept_ready, sink);
                }
            }
        }

        // Then fresh readiness.
        for event in events.iter() {
            let key = event.token().0;
            if key == WAKER_TOKEN.0 {
                continue;
            }
            if key >= LISTENER_BASE {
                let index = key - LISTENER_BASE;
                if let Some(listener) = listeners.get_mut(index) {
                    accept_if_ready(listener, index, accept_ready, sink);
                }
                continue;
            }
            let Some(conn) = conns.get_mut(key).and_then(Option::as_mut) else {
                continue;
            };
            let closed = event.is_read_closed() || event.is_error();
            conn.peer_closed |= closed;
            let readable_now = event.is_readable() || closed;
            if conn.read_open && !conn.backlog && readable_now && read_round(conn, scratch, sink) {
                conn.backlog = true;
                readable.push(key);
            }
            if conn.pending.is_some()
                && (event.is_writable() || event.is_write_closed() || event.is_error())
            {
                if let Some(batch) = conn.pending.take() {
                    match write_batch(&mut conn.stream, &batch, iov) {
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                            conn.pending = Some(batch);
                        }
                        result => sink.event(Event::Sent {
                            token: conn.token,
                            result,
                            batch,
                        }),
                    }
                }
            }
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn trim(&mut self) {
        let live = self.index.len();
        if self.index.capacity() > 4 * live.max(64) {
            self.index.shrink_to(2 * live);
        }
        if self.queued.capacity() > 4 * self.queued.len().max(64) {
            self.queued.shrink_to(2 * self.queued.len());
        }
        for list in [&mut self.readable, &mut self.serving] {
            if list.capacity() > 4 * list.len().max(64) {
                list.shrink_to(2 * list.len());
            }
        }
    }
}

/// Accepts on `listener` unless it rests or is already listed; lists it in
/// `accept_ready` when the cap left connections in its backlog.
fn accept_if_ready(
    listener: &mut Listener,
    index: usize,
    accept_ready: &mut Vec<usize>,
    sink: &mut dyn EventSink,
) {
    if listener.backlog || listener.retry_at.is_some() || listener.stopped {
        return;
    }
    if accept_round(listener, sink) {
        listener.backlog = true;
        accept_ready.push(index);
    }
}

/// Accepts up to [`ACCEPTS_PER_ROUND`] connections; returns whether more
/// may be waiting. Every failure but an interruption is reported as
/// `AcceptError`, then handled as [`accept::classify`] says: go on after an
/// error that concerns one connection only, rest the listener for
/// [`ACCEPT_BACKOFF`] (`EMFILE`, `ENFILE`, `ENOBUFS`, ...) rather than spin
/// on the error, or stop a listener that cannot accept at all.
fn accept_round(listener: &mut Listener, sink: &mut dyn EventSink) -> bool {
    for _ in 0..ACCEPTS_PER_ROUND {
        let error = match listener.socket.accept() {
            Ok((stream, peer)) => {
                sink.event(Event::Accepted {
                    stream: stream.into(),
                    peer,
                });
                continue;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
            Err(error) => error,
        };
        match accept::classify(&error) {
            AcceptFailure::Retry => continue,
            AcceptFailure::Skip => {
                sink.event(Event::AcceptError(error));
                continue;
            }
            AcceptFailure::Stop => {
                accept::log_stopped(&error);
                listener.stopped = true;
            }
            AcceptFailure::BackOff => listener.retry_at = Some(Instant::now() + ACCEPT_BACKOFF),
        }
        sink.event(Event::AcceptError(error));
        return false;
    }
    true
}

/// Reads `conn` up to [`READS_PER_ROUND`] times into `scratch`, reporting
/// each read; returns whether the socket may still hold data.
fn read_round(conn: &mut Conn, scratch: &mut [u8], sink: &mut dyn EventSink) -> bool {
    let token = conn.token;
    for _ in 0..READS_PER_ROUND {
        match conn.stream.read(scratch) {
            Ok(0) => {
                conn.read_open = false;
                sink.event(Event::ReadClosed { token, error: None });
                return false;
            }
            Ok(n) => {
                sink.event(Event::Received {
                    token,
                    data: &scratch[..n],
                });
                if SHORT_READ_DRAINS && n < scratch.len() && !conn.peer_closed {
                    return false;
                }
            }
            Err(error) => match error.kind() {
                io::ErrorKind::WouldBlock => return false,
                io::ErrorKind::Interrupted => {}
                _ => {
                    conn.read_open = false;
                    sink.event(Event::ReadClosed {
                        token,
                        error: Some(error),
                    });
                    return false;
                }
            },
        }
    }
    true
}

/// One gathered write of (up to [`MAX_IOVECS`] buffers of) `batch`,
/// retried on `EINTR`. `iov` lends its allocation and is left empty.
fn write_batch(
    stream: &mut mio::net::TcpStream,
    batch: &SendBatch,
    iov: &mut Vec<IoSlice<'static>>,
) -> io::Result<usize> {
    let mut slices = recycle(std::mem::take(iov));
    slices.extend(
        batch
            .bufs()
            .iter()
            .filter(|buf| !buf.is_empty())
            .take(MAX_IOVECS)
            .map(|buf| IoSlice::new(buf)),
    );
    let result = if slices.is_empty() {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send of an empty batch",
        ))
    } else {
        loop {
            match write_vectored(stream, &slices) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                other => break other,
            }
        }
    };
    *iov = recycle(slices);
    result
}

/// `writev` that never raises `SIGPIPE` (like the io_uring backend's
/// `MSG_NOSIGNAL`), even in a host program that does not ignore it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn write_vectored(stream: &mut mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // epoll needs no re-arming, so the call may bypass `mio`'s wrapper.
    socket2::SockRef::from(&*stream).send_vectored_with_flags(slices, libc::MSG_NOSIGNAL)
}

/// `writev` through `mio`, which re-arms the socket where the platform
/// needs it (Windows). Apple platforms have `SO_NOSIGPIPE` set instead.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn write_vectored(stream: &mut mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    io::Write::write_vectored(stream, slices)
}

/// Empties `slices` and hands its allocation back under another lifetime.
/// The element types differ only in lifetime, so the collect runs in place
/// and reuses the buffer: no allocation, no `unsafe`.
fn recycle<'from, 'to>(mut slices: Vec<IoSlice<'from>>) -> Vec<IoSlice<'to>> {
    slices.clear();
    slices
        .into_iter()
        .map(|_| -> IoSlice<'to> { unreachable!("the vector is empty") })
        .collect()
}

#[cfg(test)]
mod tests;
