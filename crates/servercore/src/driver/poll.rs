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
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};

use super::{CloseMode, Driver, DriverConfig, Event, EventSink, SendBatch, Token, Wake};

/// Capacity of the `mio` event buffer: readiness reported per `poll` call
/// (more stays pending in the kernel for the next round).
const EVENTS_CAPACITY: usize = 1024;
/// Connections accepted per listener per round before other work runs.
const ACCEPTS_PER_ROUND: usize = 256;
/// Reads per connection per round before other connections are served.
const READS_PER_ROUND: usize = 16;
/// Buffers per `writev` (`IOV_MAX` on Linux and macOS). The rest of a larger
/// batch is left to the worker, which resumes after the partial `Sent`.
const MAX_IOVECS: usize = 1024;
/// How long a listener rests after an accept error such as `EMFILE`, so a
/// full descriptor table does not turn into a hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
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
    index: HashMap<Token, usize, BuildHasherDefault<TokenHasher>>,
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

/// A cheap hasher for the worker's `u64` tokens (multiplicative, folded so
/// the low bits used for the bucket depend on every input bit).
#[derive(Default)]
struct TokenHasher(u64);

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(HASH_K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(HASH_K);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
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
            index: HashMap::default(),
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
/// may be waiting. Every failure is reported as `AcceptError`; then an
/// error that concerns one connection only (aborted before it was accepted)
/// lets accepting go on, an error saying the socket cannot accept at all
/// stops this listener, and any other (`EMFILE`, `ENFILE`, `ENOBUFS`, ...)
/// rests it for [`ACCEPT_BACKOFF`] rather than spinning on the error.
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
            Err(error) => error,
        };
        match error.kind() {
            io::ErrorKind::WouldBlock => return false,
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::PermissionDenied => {
                sink.event(Event::AcceptError(error));
                continue;
            }
            _ if cannot_accept(&error) => {
                tracing::error!(%error, "accepting stopped on a listener that cannot accept");
                listener.stopped = true;
            }
            _ => listener.retry_at = Some(Instant::now() + ACCEPT_BACKOFF),
        }
        sink.event(Event::AcceptError(error));
        return false;
    }
    true
}

/// Whether an accept error means the socket can never accept.
fn cannot_accept(error: &io::Error) -> bool {
    #[cfg(unix)]
    if let Some(libc::EBADF | libc::ENOTSOCK) = error.raw_os_error() {
        return true;
    }
    matches!(
        error.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
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
            .bufs
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
mod tests {
    use super::*;

    use std::io::Write as _;
    use std::net::SocketAddr;
    use std::thread;

    use bytes::Bytes;

    /// Every test finishes well within this, or fails.
    const LIMIT: Duration = Duration::from_secs(4);

    enum Ev {
        Accepted(TcpStream, SocketAddr),
        AcceptError(io::ErrorKind),
        Received(Token, Vec<u8>),
        ReadClosed(Token, Option<io::ErrorKind>),
        Sent(Token, io::Result<usize>, SendBatch),
        Released(Token),
    }

    /// Short: a failure message shows event kinds and sizes, not payloads.
    impl std::fmt::Debug for Ev {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Ev::Accepted(_, peer) => write!(f, "Accepted({peer})"),
                Ev::AcceptError(kind) => write!(f, "AcceptError({kind:?})"),
                Ev::Received(t, data) => write!(f, "Received({t}, {} bytes)", data.len()),
                Ev::ReadClosed(t, error) => write!(f, "ReadClosed({t}, {error:?})"),
                Ev::Sent(t, result, batch) => {
                    write!(f, "Sent({t}, {result:?}, {} bytes)", batch.len())
                }
                Ev::Released(t) => write!(f, "Released({t})"),
            }
        }
    }

    #[derive(Default)]
    struct Collect(Vec<Ev>);

    impl EventSink for Collect {
        fn event(&mut self, event: Event<'_>) {
            self.0.push(match event {
                Event::Accepted { stream, peer } => Ev::Accepted(stream, peer),
                Event::AcceptError(error) => Ev::AcceptError(error.kind()),
                Event::Received { token, data } => Ev::Received(token, data.to_vec()),
                Event::ReadClosed { token, error } => {
                    Ev::ReadClosed(token, error.map(|e| e.kind()))
                }
                Event::Sent {
                    token,
                    result,
                    batch,
                } => Ev::Sent(token, result, batch),
                Event::Released { token } => Ev::Released(token),
            });
        }
    }

    fn driver() -> PollDriver {
        driver_with(16 * 1024)
    }

    fn driver_with(recv_buffer_size: usize) -> PollDriver {
        let config = DriverConfig {
            recv_buffer_size,
            ..DriverConfig::default()
        };
        PollDriver::new(&config).expect("driver")
    }

    /// Polls until `done` holds for the collected events, or panics.
    fn poll_until(
        driver: &mut PollDriver,
        sink: &mut Collect,
        what: &str,
        mut done: impl FnMut(&[Ev]) -> bool,
    ) {
        let start = Instant::now();
        while !done(&sink.0) {
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
            driver
                .poll(Some(Duration::from_millis(20)), sink)
                .expect("poll");
        }
    }

    fn listen(driver: &mut PollDriver) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        driver.add_listener(listener).expect("add_listener");
        addr
    }

    /// A client connected to a stream adopted by `driver` under `token`.
    fn connected(driver: &mut PollDriver, token: Token) -> TcpStream {
        let addr = listen(driver);
        let client = TcpStream::connect(addr).expect("connect");
        let mut sink = Collect::default();
        poll_until(driver, &mut sink, "accept", |evs| !evs.is_empty());
        let Some(Ev::Accepted(stream, peer)) = sink.0.pop() else {
            panic!("expected Accepted, got {:?}", sink.0);
        };
        assert_eq!(peer, client.local_addr().unwrap());
        driver.add_stream(token, stream).expect("add_stream");
        client
    }

    fn received(events: &[Ev], token: Token) -> Vec<u8> {
        let mut data = Vec::new();
        for event in events {
            if let Ev::Received(t, bytes) = event {
                assert_eq!(*t, token);
                data.extend_from_slice(bytes);
            }
        }
        data
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// Whether a send of `token` waits for writability inside the driver.
    fn is_pending(driver: &PollDriver, token: Token) -> bool {
        let slot = driver.index[&token];
        driver.conns[slot].as_ref().unwrap().pending.is_some()
    }

    /// Sends `batch` to completion, resuming partial writes as the worker
    /// does; returns how many `Sent` it took and how many of those sends had
    /// to wait for writability.
    fn send_all(driver: &mut PollDriver, token: Token, mut batch: SendBatch) -> (usize, usize) {
        let (mut sents, mut waited) = (0, 0);
        let start = Instant::now();
        while batch.len() > 0 {
            driver.send(token, batch);
            waited += usize::from(is_pending(driver, token));
            let mut sink = Collect::default();
            poll_until(driver, &mut sink, "Sent", |evs| {
                evs.iter().any(|e| matches!(e, Ev::Sent(..)))
            });
            assert!(start.elapsed() < LIMIT, "send_all timed out");
            // A reader that got everything may hang up in the same round.
            sink.0.retain(|e| !matches!(e, Ev::ReadClosed(_, None)));
            let Some(Ev::Sent(t, result, back)) = sink.0.pop() else {
                panic!("expected only Sent, got {:?}", sink.0);
            };
            assert!(sink.0.is_empty(), "unexpected events {:?}", sink.0);
            assert_eq!(t, token);
            let n = result.expect("send");
            assert!(n > 0 && n <= back.len());
            batch = back;
            batch.advance(n);
            sents += 1;
        }
        (sents, waited)
    }

    fn read_exact_in_thread(
        mut client: TcpStream,
        len: usize,
        pause: Duration,
    ) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            client.set_read_timeout(Some(LIMIT)).unwrap();
            thread::sleep(pause);
            let mut data = vec![0; len];
            let mut at = 0;
            while at < len {
                let end = (at + 64 * 1024).min(len);
                let n = client.read(&mut data[at..end]).expect("client read");
                assert!(n > 0, "early EOF at {at}");
                at += n;
                if !pause.is_zero() {
                    thread::sleep(Duration::from_micros(300));
                }
            }
            data
        })
    }

    #[test]
    fn accept_and_receive_exact_bytes() {
        // A small buffer: many reads, more than one round's cap.
        let mut driver = driver_with(4096);
        let mut client = connected(&mut driver, 7);
        let sent = pattern(300_000);
        client.write_all(&sent).unwrap();
        let mut sink = Collect::default();
        poll_until(&mut driver, &mut sink, "all bytes", |evs| {
            received(evs, 7).len() >= sent.len()
        });
        assert_eq!(received(&sink.0, 7), sent);
        assert!(sink
            .0
            .iter()
            .all(|e| matches!(e, Ev::Received(7, d) if d.len() <= 4096)));
    }

    #[test]
    fn reads_are_capped_per_round_and_resume_without_waiting() {
        let mut driver = driver_with(1024);
        let mut client = connected(&mut driver, 8);
        let sent = pattern(40 * 1024);
        client.write_all(&sent).unwrap();
        thread::sleep(Duration::from_millis(50));
        let mut sink = Collect::default();
        driver.poll(Some(LIMIT), &mut sink).unwrap();
        assert_eq!(sink.0.len(), READS_PER_ROUND);
        assert_eq!(received(&sink.0, 8).len(), READS_PER_ROUND * 1024);
        // No new edge comes for the rest: the driver must remember the
        // connection and not wait for the timeout.
        let start = Instant::now();
        driver
            .poll(Some(Duration::from_secs(10)), &mut sink)
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(sink.0.len(), 2 * READS_PER_ROUND);
        poll_until(&mut driver, &mut sink, "all bytes", |evs| {
            received(evs, 8).len() >= sent.len()
        });
        assert_eq!(received(&sink.0, 8), sent);
    }

    #[test]
    fn gathered_send_arrives_in_order() {
        let mut driver = driver();
        let client = connected(&mut driver, 1);
        // More buffers than one writev takes, of assorted sizes, each a
        // distinct slice, with an empty one now and then.
        let bufs: Vec<Bytes> = (0..3000usize)
            .map(|i| match i % 500 {
                499 => Bytes::new(),
                _ => {
                    let len = 2 + i % 97 + usize::from(i % 3 == 0) * 300;
                    let mut buf = pattern(len + i);
                    buf.drain(..i);
                    Bytes::from(buf).slice(i % 2..)
                }
            })
            .collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let reader = read_exact_in_thread(client, expected.len(), Duration::ZERO);
        let (sents, _) = send_all(&mut driver, 1, SendBatch { bufs });
        assert!(sents >= 3, "3000 buffers need at least 3 writev ({sents})");
        assert_eq!(reader.join().unwrap(), expected);
    }

    #[test]
    fn large_send_to_slow_reader_resumes_partial_writes() {
        let mut driver = driver();
        let client = connected(&mut driver, 2);
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let data = Bytes::from(pattern(8 << 20));
        let bufs = vec![data.slice(..1 << 20), data.slice(1 << 20..)];
        let reader = read_exact_in_thread(client, data.len(), Duration::from_millis(200));
        let (sents, waited) = send_all(&mut driver, 2, SendBatch { bufs });
        assert!(sents > 1, "8 MiB to a slow reader takes partial writes");
        assert!(waited > 0, "some sends wait for writability");
        assert!(reader.join().unwrap() == data, "bytes differ");
    }

    #[test]
    fn peer_close_reports_eof_then_close_releases() {
        let mut driver = driver();
        let mut client = connected(&mut driver, 3);
        client.write_all(b"bye").unwrap();
        drop(client);
        let mut sink = Collect::default();
        poll_until(&mut driver, &mut sink, "ReadClosed", |evs| {
            evs.iter().any(|e| matches!(e, Ev::ReadClosed(..)))
        });
        assert_eq!(received(&sink.0, 3), b"bye");
        assert!(matches!(sink.0.last(), Some(Ev::ReadClosed(3, None))));
        // Nothing more of the token until close, then exactly one Released.
        driver
            .poll(Some(Duration::from_millis(30)), &mut sink)
            .unwrap();
        assert!(matches!(sink.0.last(), Some(Ev::ReadClosed(3, None))));
        sink.0.clear();
        driver.close(3, CloseMode::Graceful);
        driver.close(3, CloseMode::Graceful);
        let start = Instant::now();
        driver
            .poll(Some(Duration::from_secs(10)), &mut sink)
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "queued Released must not wait"
        );
        driver
            .poll(Some(Duration::from_millis(30)), &mut sink)
            .unwrap();
        assert!(matches!(sink.0[..], [Ev::Released(3)]), "{:?}", sink.0);
    }

    #[test]
    fn peer_reset_reports_error() {
        let mut driver = driver();
        let client = connected(&mut driver, 4);
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        let mut sink = Collect::default();
        poll_until(&mut driver, &mut sink, "ReadClosed", |evs| {
            evs.iter().any(|e| matches!(e, Ev::ReadClosed(..)))
        });
        assert!(
            matches!(
                sink.0[..],
                [Ev::ReadClosed(4, Some(io::ErrorKind::ConnectionReset))]
            ),
            "{:?}",
            sink.0
        );
        // Writing to the reset connection fails, and the batch comes back.
        sink.0.clear();
        driver.send(
            4,
            SendBatch {
                bufs: vec![Bytes::from_static(b"late")],
            },
        );
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
        assert!(
            matches!(&sink.0[..], [Ev::Sent(4, Err(_), batch)] if batch.len() == 4),
            "{:?}",
            sink.0
        );
        driver.close(4, CloseMode::Abort);
        sink.0.clear();
        driver
            .poll(Some(Duration::from_millis(30)), &mut sink)
            .unwrap();
        driver
            .poll(Some(Duration::from_millis(30)), &mut sink)
            .unwrap();
        assert!(matches!(sink.0[..], [Ev::Released(4)]), "{:?}", sink.0);
    }

    #[test]
    fn close_with_pending_send_returns_batch_then_one_release() {
        let mut driver = driver();
        let client = connected(&mut driver, 5);
        // The client never reads: write until a send stays pending.
        let data = Bytes::from(pattern(4 << 20));
        let mut batch = SendBatch {
            bufs: vec![data.clone()],
        };
        let mut pending = false;
        for _ in 0..1000 {
            driver.send(5, batch);
            let mut sink = Collect::default();
            driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
            match sink.0.pop() {
                None => {
                    pending = true;
                    break;
                }
                Some(Ev::Sent(5, Ok(n), back)) => {
                    batch = back;
                    batch.advance(n);
                    if batch.len() == 0 {
                        batch.bufs.push(data.clone());
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(sink.0.is_empty());
        }
        assert!(pending, "the send never blocked");
        driver.close(5, CloseMode::Abort);
        let mut sink = Collect::default();
        for _ in 0..3 {
            driver
                .poll(Some(Duration::from_millis(20)), &mut sink)
                .unwrap();
        }
        match &sink.0[..] {
            [Ev::Sent(5, Err(_), back), Ev::Released(5)] => {
                assert!(back.len() > 0);
                assert_eq!(
                    back.bufs.last(),
                    Some(&data.slice(data.len() - back.bufs.last().unwrap().len()..))
                );
            }
            other => panic!("expected Sent(Err) then Released, got {other:?}"),
        }
        drop(client);
    }

    #[test]
    fn close_modes_send_fin_or_rst() {
        let mut driver = driver();
        let mut graceful = connected(&mut driver, 10);
        let mut aborted = connected(&mut driver, 11);
        driver.close(10, CloseMode::Graceful);
        driver.close(11, CloseMode::Abort);
        for client in [&graceful, &aborted] {
            client.set_read_timeout(Some(LIMIT)).unwrap();
        }
        let mut buf = [0; 16];
        assert_eq!(graceful.read(&mut buf).unwrap(), 0);
        let error = aborted.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        let mut sink = Collect::default();
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
        assert!(
            matches!(sink.0[..], [Ev::Released(10), Ev::Released(11)]),
            "{:?}",
            sink.0
        );
    }

    #[test]
    fn wake_from_another_thread_returns_poll_promptly() {
        let mut driver = driver();
        let waker = driver.waker();
        let mut sink = Collect::default();

        waker.wake();
        let start = Instant::now();
        driver
            .poll(Some(Duration::from_secs(10)), &mut sink)
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));

        let remote = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            waker.wake();
        });
        let start = Instant::now();
        driver.poll(None, &mut sink).unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
        remote.join().unwrap();
        assert!(sink.0.is_empty());
    }

    #[test]
    fn accepts_are_capped_per_round_and_resume() {
        let mut driver = driver();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(1024).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        socket.set_nonblocking(true).unwrap();
        driver.add_listener(socket.into()).unwrap();
        let total = ACCEPTS_PER_ROUND + 20;
        let clients: Vec<TcpStream> = (0..total)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let mut sink = Collect::default();
        driver
            .poll(Some(Duration::from_secs(2)), &mut sink)
            .unwrap();
        assert!(sink.0.len() <= ACCEPTS_PER_ROUND);
        poll_until(&mut driver, &mut sink, "all accepts", |evs| {
            evs.len() >= total
        });
        assert!(sink.0.iter().all(|e| matches!(e, Ev::Accepted(..))));
        driver.close_listeners();
        drop(clients);
    }

    #[test]
    fn unknown_and_closed_tokens() {
        let mut driver = driver();
        // Unknown tokens: nothing happens, nothing is reported.
        driver.close(99, CloseMode::Graceful);
        let one = || SendBatch {
            bufs: vec![Bytes::from_static(b"x")],
        };
        driver.send(99, one());
        let mut sink = Collect::default();
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
        assert!(sink.0.is_empty(), "{:?}", sink.0);

        let client = connected(&mut driver, 1);
        let twin = client.try_clone().unwrap();
        let error = driver.add_stream(1, twin).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        // Closed: the token stays taken until `Released` is delivered, and a
        // send to it is dropped without an event.
        driver.close(1, CloseMode::Graceful);
        driver.send(1, one());
        let twin = client.try_clone().unwrap();
        let error = driver.add_stream(1, twin).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
        assert!(matches!(sink.0[..], [Ev::Released(1)]), "{:?}", sink.0);
        // Released: the token may be used again.
        driver.add_stream(1, client).unwrap();
        driver.close(1, CloseMode::Graceful);
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
        assert!(
            matches!(sink.0[..], [Ev::Released(1), Ev::Released(1)]),
            "{:?}",
            sink.0
        );
    }

    /// Set in the child process that runs [`emfile_child`].
    #[cfg(unix)]
    const EMFILE_CHILD: &str = "SERVERCORE_POLL_EMFILE_CHILD";

    /// Runs [`emfile_child`] in a process of its own: exhausting the
    /// descriptor table would break the tests running beside it.
    #[cfg(unix)]
    #[test]
    fn accept_error_backs_off_then_recovers() {
        let (_, path) = module_path!().split_once("::").unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{path}::emfile_child")])
            .args(["--nocapture", "--test-threads=1"])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("emfile child: "), "{stdout}\n{stderr}");
    }

    /// With the descriptor table full, a waiting connection yields a few
    /// `AcceptError`s (one per back-off period, not a hot loop), then is
    /// accepted once descriptors are free again.
    #[cfg(unix)]
    #[test]
    fn emfile_child() {
        if std::env::var_os(EMFILE_CHILD).is_none() {
            return;
        }
        let mut driver = driver();
        let addr = listen(&mut driver);
        let _client = TcpStream::connect(addr).unwrap();
        let mut hog = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            hog.push(file);
            if hog.len() > 200_000 {
                println!("emfile child: skipped, the descriptor limit is too high");
                return;
            }
        }
        let mut sink = Collect::default();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            driver
                .poll(Some(Duration::from_millis(5)), &mut sink)
                .unwrap();
        }
        let errors = sink.0.len();
        assert!(sink.0.iter().all(|e| matches!(e, Ev::AcceptError(_))));
        assert!(
            (1..=20).contains(&errors),
            "{errors} accept errors in 200 ms"
        );
        drop(hog);
        sink.0.clear();
        poll_until(&mut driver, &mut sink, "the accept", |evs| !evs.is_empty());
        assert!(matches!(sink.0[..], [Ev::Accepted(..)]), "{:?}", sink.0);
        println!("emfile child: ok after {errors} accept errors");
    }

    /// A socket that is not listening makes accepting fail for good: one
    /// `AcceptError`, then silence.
    #[cfg(target_os = "linux")]
    #[test]
    fn listener_that_cannot_accept_reports_once() {
        let mut driver = driver();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&addr.into()).unwrap();
        driver.add_listener(socket.into()).unwrap();
        let mut sink = Collect::default();
        for _ in 0..10 {
            driver
                .poll(Some(Duration::from_millis(10)), &mut sink)
                .unwrap();
        }
        assert!(
            matches!(sink.0[..], [Ev::AcceptError(io::ErrorKind::InvalidInput)]),
            "{:?}",
            sink.0
        );
    }

    #[test]
    fn iovec_storage_is_reused() {
        let mut storage: Vec<IoSlice<'static>> = Vec::with_capacity(MAX_IOVECS);
        let ptr = storage.as_ptr();
        let data = [1u8; 4];
        let mut slices = recycle(std::mem::take(&mut storage));
        slices.push(IoSlice::new(&data));
        storage = recycle(slices);
        assert_eq!(storage.as_ptr(), ptr);
        assert_eq!(storage.capacity(), MAX_IOVECS);
        assert!(storage.is_empty());
    }

    /// Set in the child process that runs [`broken_poll_child`].
    #[cfg(target_os = "linux")]
    const BROKEN_POLL_CHILD: &str = "SERVERCORE_POLL_BROKEN_CHILD";

    /// A worker whose poll fails for good ends, with its sessions
    /// disconnected, and the service stops and reports why; it does not loop
    /// on the error. Runs in a process of its own: it breaks the worker's
    /// epoll descriptor, found among the process's descriptors.
    #[cfg(target_os = "linux")]
    #[test]
    fn fatal_poll_error_ends_the_worker_and_is_reported() {
        let (_, path) = module_path!().split_once("::").unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("{path}::broken_poll_child")])
            .args(["--nocapture", "--test-threads=1"])
            .env(BROKEN_POLL_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("broken poll child: ok"),
            "{stdout}\n{stderr}"
        );
    }

    /// The epoll descriptors of this process.
    #[cfg(target_os = "linux")]
    fn epoll_fds() -> Vec<i32> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let target = std::fs::read_link(entry.path()).ok()?;
                (target.to_str()? == "anon_inode:[eventpoll]")
                    .then(|| entry.file_name().to_str()?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn broken_poll_child() {
        use std::sync::{Arc, Mutex};

        use crate::{DisconnectReason, ServerService, Session, SessionHandle};

        if std::env::var_os(BROKEN_POLL_CHILD).is_none() {
            return;
        }
        struct Recorder(Arc<Mutex<Vec<DisconnectReason>>>);
        impl Session for Recorder {
            fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
                let _ = session.send_copy(data);
                data.len()
            }
            fn on_disconnected(&mut self, _: &SessionHandle, reason: &DisconnectReason) {
                self.0.lock().unwrap().push(reason.clone());
            }
        }
        let reasons = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&reasons);
        let before = epoll_fds();
        let service = ServerService::builder("127.0.0.1:0")
            .backend(crate::Backend::Poll)
            .workers(1)
            .session(move || Recorder(Arc::clone(&recorded)))
            .start()
            .unwrap();
        let epoll: Vec<i32> = epoll_fds()
            .into_iter()
            .filter(|fd| !before.contains(fd))
            .collect();
        assert_eq!(epoll.len(), 1, "one worker, one epoll: {epoll:?}");
        let mut client = TcpStream::connect(service.local_addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();

        // Put /dev/null where the epoll descriptor was: every later
        // epoll_wait fails with EINVAL.
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup2 on two descriptors this process owns; the epoll one
        // is replaced atomically and stays a valid descriptor throughout.
        assert!(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), epoll[0]) } >= 0);
        service.broadcast(Bytes::from_static(b"wake"));

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let joiner = thread::spawn(move || {
            service.join();
            done_tx.send(()).unwrap();
            service
        });
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the failed worker ended and the service stopped");
        let service = joiner.join().unwrap();
        let failure = service.failure().expect("the failure is reported");
        assert_eq!(failure.worker, 0);
        assert!(service.is_stopping());
        let stats = service.stats();
        assert_eq!(
            (stats.active_sessions, stats.live_slots),
            (0, 0),
            "{stats:?}"
        );
        let reasons = reasons.lock().unwrap().clone();
        assert!(
            matches!(&reasons[..], [DisconnectReason::IoError { .. }]),
            "{reasons:?}"
        );
        println!("broken poll child: ok ({failure})");
    }
}
