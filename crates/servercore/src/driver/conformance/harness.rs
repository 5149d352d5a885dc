//! The suite's harness: an event collector, bounded polls, loopback pairs
//! and sends resumed after partial writes, as the worker resumes them.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::driver::{Driver, DriverConfig, Event, EventSink, SendBatch, Token};

/// Every wait of a case ends within this, or the case fails.
pub(crate) const LIMIT: Duration = Duration::from_secs(4);

/// One event as a test keeps it.
#[derive(Debug)]
pub(crate) enum Ev {
    Accepted(TcpStream, SocketAddr),
    AcceptError(io::Error),
    Received(Token, Vec<u8>),
    ReadClosed(Token, Option<io::Error>),
    Sent(Token, io::Result<usize>, SendBatch),
    Released(Token),
}

/// Collects every event of the polls it is given to.
#[derive(Default)]
pub(crate) struct Collect {
    pub events: Vec<Ev>,
}

impl EventSink for Collect {
    fn event(&mut self, event: Event<'_>) {
        self.events.push(match event {
            Event::Accepted { stream, peer } => Ev::Accepted(stream, peer),
            Event::AcceptError(error) => Ev::AcceptError(error),
            Event::Received { token, data } => Ev::Received(token, data.to_vec()),
            Event::ReadClosed { token, error } => Ev::ReadClosed(token, error),
            Event::Sent {
                token,
                result,
                batch,
            } => Ev::Sent(token, result, batch),
            Event::Released { token } => Ev::Released(token),
        });
    }
}

impl Collect {
    /// Every byte received for `token`, in order.
    pub(crate) fn received(&self, token: Token) -> Vec<u8> {
        let mut all = Vec::new();
        for event in &self.events {
            if let Ev::Received(t, data) = event {
                if *t == token {
                    all.extend_from_slice(data);
                }
            }
        }
        all
    }

    pub(crate) fn released(&self, token: Token) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Ev::Released(t) if *t == token))
            .count()
    }

    pub(crate) fn read_closed(&self, token: Token) -> Option<&Option<io::Error>> {
        self.events.iter().find_map(|e| match e {
            Ev::ReadClosed(t, error) if *t == token => Some(error),
            _ => None,
        })
    }

    /// Removes and returns the first `Sent` of `token`.
    pub(crate) fn take_sent(&mut self, token: Token) -> Option<(io::Result<usize>, SendBatch)> {
        let at = self
            .events
            .iter()
            .position(|e| matches!(e, Ev::Sent(t, ..) if *t == token))?;
        match self.events.remove(at) {
            Ev::Sent(_, result, batch) => Some((result, batch)),
            _ => unreachable!(),
        }
    }

    /// Removes and returns the first `Accepted`.
    pub(crate) fn take_accepted(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let at = self
            .events
            .iter()
            .position(|e| matches!(e, Ev::Accepted(..)))?;
        match self.events.remove(at) {
            Ev::Accepted(stream, peer) => Some((stream, peer)),
            _ => unreachable!(),
        }
    }
}

pub(crate) fn config(recv_ring_entries: u16, recv_buffer_size: usize) -> DriverConfig {
    DriverConfig {
        recv_ring_entries,
        recv_buffer_size,
        sq_entries: 64,
        wake_batch: None,
    }
}

/// A driver with small receive buffers (4 KiB, 64 of them on io_uring).
pub(crate) fn driver<D: Driver>() -> D {
    D::new(&config(64, 4096)).expect("driver")
}

/// Polls until `done` holds; panics after [`LIMIT`].
pub(crate) fn poll_until<D: Driver>(
    driver: &mut D,
    sink: &mut Collect,
    what: &str,
    done: impl Fn(&Collect) -> bool,
) {
    let deadline = Instant::now() + LIMIT;
    while !done(sink) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events: {:?}",
            sink.events
        );
        driver
            .poll(Some(Duration::from_millis(20)), sink)
            .expect("poll");
    }
}

/// Polls for `time` more, collecting whatever arrives.
pub(crate) fn poll_for<D: Driver>(driver: &mut D, sink: &mut Collect, time: Duration) {
    let deadline = Instant::now() + time;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        driver.poll(Some(deadline - now), sink).expect("poll");
    }
}

/// A connected loopback pair: (server side, non-blocking; client side).
pub(crate) fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    (server, client)
}

/// Adds a non-blocking listener on a free loopback port to `driver`.
pub(crate) fn listen<D: Driver>(driver: &mut D) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    driver.add_listener(listener).expect("add_listener");
    addr
}

pub(crate) fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7 + i / 251) % 253) as u8)
        .collect()
}

/// Sends all of `bufs` on `token`, resuming partial writes as the worker
/// does; returns how many sends it took and how many were partial.
pub(crate) fn send_all<D: Driver>(
    driver: &mut D,
    sink: &mut Collect,
    token: Token,
    bufs: Vec<Bytes>,
) -> (usize, usize) {
    let deadline = Instant::now() + LIMIT;
    let mut batch = SendBatch::from(bufs);
    let (mut sends, mut partial) = (0, 0);
    loop {
        let len = batch.len();
        driver.send(token, batch);
        sends += 1;
        let (result, back) = loop {
            if let Some(sent) = sink.take_sent(token) {
                break sent;
            }
            assert!(
                Instant::now() < deadline,
                "timed out sending; events: {:?}",
                sink.events
            );
            driver
                .poll(Some(Duration::from_millis(20)), sink)
                .expect("poll");
        };
        let n = result.expect("send failed");
        assert!(n > 0 && n <= len, "sent {n} of {len}");
        batch = back;
        assert_eq!(batch.len(), len, "the batch comes back untouched");
        if n < len {
            partial += 1;
        }
        batch.advance(n);
        if batch.is_empty() {
            return (sends, partial);
        }
    }
}

/// Reads `len` bytes on another thread, after `pause`, slowly if paused.
pub(crate) fn read_in_thread(
    mut client: TcpStream,
    len: usize,
    pause: Duration,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
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
