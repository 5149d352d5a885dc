//! The admin listener's HTTP/1.1 server: one thread, one `mio` poll, every
//! connection non-blocking, so no peer can stall another.
//!
//! This module owns the connections and their bounds:
//! - one request per connection (`Connection: close`), `GET` and `HEAD`
//!   only; the head is parsed by `httparse` and may be at most
//!   [`MAX_HEAD`] bytes (past it: `431`, then close);
//! - a connection has [`Limits::request_timeout`] to send its head and
//!   [`Limits::response_timeout`] to read the answer; past either it is
//!   closed, so a peer that trickles its request or never reads its answer
//!   holds nothing for long;
//! - at most [`Limits::max_connections`] at once; one more closes the
//!   oldest, so a flood of idle connections cannot lock a health check out;
//! - answers are written as the peer takes them: a peer that does not read
//!   a large `/status` delays only itself.
//!
//! Refusals and disconnects are logged at most once a second with a count.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

/// The largest request head accepted, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// Most header lines in a request.
const MAX_HEADERS: usize = 32;

/// How long a connection that has its answer may still send bytes we
/// read and drop before it is closed (closing with unread bytes would
/// reset the connection and could lose the answer).
const LINGER: Duration = Duration::from_millis(500);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// The bounds of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a connection may take to send its request head.
    pub request_timeout: Duration,
    /// Longest a connection may take to read its whole answer.
    pub response_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
}

/// A parsed request: what the router needs.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `HEAD`, ...
    pub method: &'a str,
    /// The path, query string included.
    pub target: &'a str,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "",
    }
}

/// The bytes of `response` as sent (no body for `HEAD`).
fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// Where a connection stands.
enum Phase {
    /// Reading the request head.
    Reading(Vec<u8>),
    /// Writing the answer from `written` on.
    Writing { data: Vec<u8>, written: usize },
    /// Answered; dropping what the peer still sends until it closes.
    Lingering,
}

struct Connection {
    stream: TcpStream,
    token: Token,
    peer: SocketAddr,
    accepted: Instant,
    deadline: Instant,
    phase: Phase,
}

/// What happened to a connection after an event.
enum Next {
    Keep,
    Close,
}

/// Why connections were disconnected, for the log.
#[derive(Clone, Copy, Debug)]
enum CloseCause {
    HeadTooLarge,
    BadRequest,
    RequestTimeout,
    ResponseTimeout,
    Evicted,
}

impl CloseCause {
    fn describe(self) -> &'static str {
        match self {
            CloseCause::HeadTooLarge => "request head too large (431)",
            CloseCause::BadRequest => "malformed request (400)",
            CloseCause::RequestTimeout => "request head not sent in time",
            CloseCause::ResponseTimeout => "answer not read in time",
            CloseCause::Evicted => "too many connections: the oldest closed",
        }
    }
}

/// At most one log line a second, with the count of the others.
struct CloseLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl CloseLog {
    fn note(&mut self, cause: CloseCause, peer: SocketAddr) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        let others = std::mem::take(&mut self.suppressed);
        self.last = Some(now);
        tracing::warn!(%peer, others, "admin HTTP: {}", cause.describe());
    }
}

/// The server's thread body: serves until `stop` is set and the waker
/// wakes it.
pub(crate) struct Server<F> {
    poll: Poll,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    limits: Limits,
    route: F,
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    open: usize,
    closes: CloseLog,
}

impl<F: Fn(&Request<'_>) -> Response> Server<F> {
    /// A server on `listener` (bound, non-blocking); returns it with the
    /// waker that interrupts its wait.
    pub(crate) fn new(
        listener: std::net::TcpListener,
        limits: Limits,
        stop: Arc<AtomicBool>,
        route: F,
    ) -> std::io::Result<(Server<F>, Arc<Waker>)> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok((
            Server {
                poll,
                listener,
                stop,
                limits,
                route,
                connections: Vec::new(),
                free: Vec::new(),
                open: 0,
                closes: CloseLog {
                    last: None,
                    suppressed: 0,
                },
            },
            waker,
        ))
    }

    /// Serves until stopped.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Acquire) {
            let timeout = self.next_deadline().map(|deadline| {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "admin HTTP poll failed; the listener stops");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(token) => self.on_ready(token - FIRST_CONNECTION),
                }
            }
            self.expire(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .iter()
            .flatten()
            .map(|connection| connection.deadline)
            .min()
    }

    fn accept(&mut self) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors, most likely: the waiting peers stay
                    // queued until a connection closes.
                    tracing::warn!(%error, "admin HTTP accept failed");
                    return;
                }
            };
            if self.open >= self.limits.max_connections {
                self.evict_oldest();
            }
            self.add(stream, peer);
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.connections.push(None);
                self.connections.len() - 1
            }
        };
        let token = Token(index + FIRST_CONNECTION);
        if let Err(error) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            tracing::warn!(%peer, %error, "admin HTTP: cannot register a connection");
            self.free.push(index);
            return;
        }
        let now = Instant::now();
        self.connections[index] = Some(Connection {
            stream,
            token,
            peer,
            accepted: now,
            deadline: now + self.limits.request_timeout,
            phase: Phase::Reading(Vec::new()),
        });
        self.open += 1;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(index, connection)| Some((index, connection.as_ref()?.accepted)))
            .min_by_key(|(_, accepted)| *accepted)
            .map(|(index, _)| index);
        if let Some(index) = oldest {
            self.close_with(index, CloseCause::Evicted);
        }
    }

    fn close(&mut self, index: usize) {
        if let Some(mut connection) = self.connections[index].take() {
            let _ = self.poll.registry().deregister(&mut connection.stream);
            self.free.push(index);
            self.open -= 1;
        }
    }

    fn close_with(&mut self, index: usize, cause: CloseCause) {
        if let Some(connection) = &self.connections[index] {
            self.closes.note(cause, connection.peer);
        }
        self.close(index);
    }

    fn expire(&mut self, now: Instant) {
        for index in 0..self.connections.len() {
            let Some(connection) = &self.connections[index] else {
                continue;
            };
            if connection.deadline > now {
                continue;
            }
            match connection.phase {
                Phase::Reading(_) => self.close_with(index, CloseCause::RequestTimeout),
                Phase::Writing { .. } => self.close_with(index, CloseCause::ResponseTimeout),
                Phase::Lingering => self.close(index),
            }
        }
    }

    fn on_ready(&mut self, index: usize) {
        let Some(mut connection) = self.connections.get_mut(index).and_then(Option::take) else {
            return;
        };
        let next = match &mut connection.phase {
            Phase::Reading(_) => self.read_request(&mut connection),
            Phase::Writing { .. } => write_answer(&mut connection, &self.limits),
            Phase::Lingering => drain(&mut connection),
        };
        self.connections[index] = Some(connection);
        match next {
            Next::Keep => {}
            Next::Close => self.close(index),
        }
    }

    /// Reads what the peer sent; answers once the head is complete.
    fn read_request(&mut self, connection: &mut Connection) -> Next {
        let Phase::Reading(head) = &mut connection.phase else {
            return Next::Keep;
        };
        let mut chunk = [0u8; 4096];
        loop {
            // One byte past the bound is enough to know it was passed.
            let room = (MAX_HEAD + 1 - head.len()).min(chunk.len());
            match connection.stream.read(&mut chunk[..room]) {
                Ok(0) => return Next::Close,
                Ok(read) => {
                    head.extend_from_slice(&chunk[..read]);
                    if head.len() > MAX_HEAD {
                        break;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let (response, head_only) = match request.parse(head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                let parsed = Request {
                    method,
                    target: request.path.unwrap_or("/"),
                };
                ((self.route)(&parsed), method == "HEAD")
            }
            Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => return Next::Keep,
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                self.closes.note(CloseCause::HeadTooLarge, connection.peer);
                (Response::text(431, "request head too large\n"), false)
            }
            Err(_) => {
                self.closes.note(CloseCause::BadRequest, connection.peer);
                (Response::text(400, "bad request\n"), false)
            }
        };
        connection.phase = Phase::Writing {
            data: encode(&response, head_only),
            written: 0,
        };
        connection.deadline = Instant::now() + self.limits.response_timeout;
        if self
            .poll
            .registry()
            .reregister(
                &mut connection.stream,
                connection.token,
                // Readable too: the lingering after the answer reads.
                Interest::WRITABLE | Interest::READABLE,
            )
            .is_err()
        {
            return Next::Close;
        }
        write_answer(connection, &self.limits)
    }
}

/// Writes what the peer takes of its answer; once all is out, stops
/// sending and lingers for the peer's close.
fn write_answer(connection: &mut Connection, limits: &Limits) -> Next {
    let Phase::Writing { data, written } = &mut connection.phase else {
        return Next::Keep;
    };
    while *written < data.len() {
        match connection.stream.write(&data[*written..]) {
            Ok(0) => return Next::Close,
            Ok(sent) => *written += sent,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
    let _ = connection.stream.shutdown(Shutdown::Write);
    connection.phase = Phase::Lingering;
    connection.deadline = Instant::now() + LINGER.min(limits.response_timeout);
    drain(connection)
}

/// Reads and drops what a peer sends after its answer; closes at its EOF.
fn drain(connection: &mut Connection) -> Next {
    let mut sink = [0u8; 4096];
    loop {
        match connection.stream.read(&mut sink) {
            Ok(0) => return Next::Close,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
}
