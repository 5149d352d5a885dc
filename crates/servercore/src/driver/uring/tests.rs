//! Driver-level tests over real loopback sockets, each bounded in time.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{SetupMode, UringDriver};
use crate::driver::{CloseMode, Driver, DriverConfig, Event, EventSink, SendBatch, Token};

const LIMIT: Duration = Duration::from_secs(4);

#[derive(Debug)]
enum Ev {
    Accepted(TcpStream, SocketAddr),
    AcceptError(io::Error),
    Received(Token, Vec<u8>),
    ReadClosed(Token, Option<io::Error>),
    Sent(Token, io::Result<usize>, SendBatch),
    Released(Token),
}

impl Ev {
    fn token(&self) -> Option<Token> {
        match self {
            Ev::Accepted(..) | Ev::AcceptError(_) => None,
            Ev::Received(t, _) | Ev::ReadClosed(t, _) | Ev::Sent(t, ..) | Ev::Released(t) => {
                Some(*t)
            }
        }
    }
}

#[derive(Default)]
struct Collect {
    events: Vec<Ev>,
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
    fn received(&self, token: Token) -> Vec<u8> {
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

    fn released(&self, token: Token) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Ev::Released(t) if *t == token))
            .count()
    }

    fn read_closed(&self, token: Token) -> Option<&Option<io::Error>> {
        self.events.iter().find_map(|e| match e {
            Ev::ReadClosed(t, error) if *t == token => Some(error),
            _ => None,
        })
    }

    /// Removes and returns the first `Sent` of `token`.
    fn take_sent(&mut self, token: Token) -> Option<(io::Result<usize>, SendBatch)> {
        let at = self
            .events
            .iter()
            .position(|e| matches!(e, Ev::Sent(t, ..) if *t == token))?;
        match self.events.remove(at) {
            Ev::Sent(_, result, batch) => Some((result, batch)),
            _ => unreachable!(),
        }
    }
}

fn config(recv_ring_entries: u16, recv_buffer_size: usize) -> DriverConfig {
    DriverConfig {
        recv_ring_entries,
        recv_buffer_size,
        sq_entries: 64,
    }
}

fn driver() -> UringDriver {
    UringDriver::new(&config(64, 4096)).expect("io_uring driver")
}

/// Polls until `done` holds; panics after `LIMIT`.
fn poll_until(
    driver: &mut UringDriver,
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
            .poll(Some(Duration::from_millis(50)), sink)
            .expect("poll");
    }
}

/// Polls for `time` more, collecting whatever arrives.
fn poll_for(driver: &mut UringDriver, sink: &mut Collect, time: Duration) {
    let deadline = Instant::now() + time;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        driver.poll(Some(deadline - now), sink).expect("poll");
    }
}

/// A connected loopback pair: (server side, client side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (server, client)
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7 + i / 251) % 253) as u8)
        .collect()
}

/// Sends all of `bufs` on `token`, resuming partial writes; returns how many
/// `Sent` events were partial (`n` less than the batch).
fn send_all(
    driver: &mut UringDriver,
    sink: &mut Collect,
    token: Token,
    bufs: Vec<Bytes>,
) -> (usize, usize) {
    let deadline = Instant::now() + LIMIT;
    let mut batch = SendBatch { bufs };
    let mut sends = 0;
    let mut partial = 0;
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
                .poll(Some(Duration::from_millis(50)), sink)
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
        if batch.bufs.is_empty() {
            return (sends, partial);
        }
    }
}

#[test]
fn probe_succeeds_here() {
    super::probe().expect("io_uring probe");
}

#[test]
fn accept_and_receive_exact_bytes() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    driver.add_listener(listener).unwrap();

    for (round, token) in [(0usize, 7u64), (1, 8)] {
        let mut client = TcpStream::connect(addr).unwrap();
        let message = format!("hello, uring #{round}");
        client.write_all(message.as_bytes()).unwrap();
        poll_until(&mut driver, &mut sink, "Accepted", |s| {
            s.events.iter().any(|e| matches!(e, Ev::Accepted(..)))
        });
        let at = sink
            .events
            .iter()
            .position(|e| matches!(e, Ev::Accepted(..)))
            .unwrap();
        let Ev::Accepted(stream, peer) = sink.events.remove(at) else {
            unreachable!()
        };
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: F_GETFL on a valid descriptor.
        let flags = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_GETFL) };
        assert!(
            flags & libc::O_NONBLOCK != 0,
            "accepted streams are non-blocking"
        );

        driver.add_stream(token, stream).unwrap();
        poll_until(&mut driver, &mut sink, "the message", |s| {
            s.received(token).len() >= message.len()
        });
        assert_eq!(sink.received(token), message.as_bytes());
    }
    for event in &sink.events {
        if let Ev::AcceptError(error) = event {
            panic!("accepting failed: {error}");
        }
    }
}

#[test]
fn gathered_send_of_many_buffers_arrives_in_order() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();

    // 3000 buffers (some empty): more than IOV_MAX, so several writes.
    let bufs: Vec<Bytes> = (0..3000)
        .map(|i| Bytes::from(pattern(if i % 97 == 0 { 0 } else { 1 + i % 61 }, i)))
        .collect();
    let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let total = expected.len();
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; total];
        client.read_exact(&mut got).unwrap();
        got
    });
    let (sends, _) = send_all(&mut driver, &mut sink, 1, bufs);
    assert!(
        sends >= 3,
        "3000 buffers need at least 3 writes of <= 1024 iovecs, took {sends}"
    );
    let got = reader.join().unwrap();
    assert!(got == expected, "bytes differ");
}

#[test]
fn large_send_to_slow_reader_resumes_partial_writes() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();

    let bufs: Vec<Bytes> = (0..128)
        .map(|i| Bytes::from(pattern(64 * 1024, i)))
        .collect();
    let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let total = expected.len();
    assert_eq!(total, 8 << 20);
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        let mut got = vec![0u8; total];
        client.read_exact(&mut got).unwrap();
        got
    });
    let (sends, partial) = send_all(&mut driver, &mut sink, 1, bufs);
    assert!(
        partial >= 1,
        "expected partial writes to a slow reader ({sends} sends)"
    );
    let got = reader.join().unwrap();
    assert!(got == expected, "bytes differ");
}

#[test]
fn peer_close_reports_eof_then_release() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    client.write_all(b"bye").unwrap();
    drop(client);
    poll_until(&mut driver, &mut sink, "ReadClosed", |s| {
        s.read_closed(1).is_some()
    });
    assert!(
        sink.read_closed(1).unwrap().is_none(),
        "EOF is not an error"
    );
    assert_eq!(sink.received(1), b"bye");
    let closed_at = sink
        .events
        .iter()
        .position(|e| matches!(e, Ev::ReadClosed(..)))
        .unwrap();
    assert!(
        !sink.events[closed_at + 1..]
            .iter()
            .any(|e| matches!(e, Ev::Received(..))),
        "nothing after ReadClosed"
    );

    // The receive already ended by itself: close still reports Released.
    driver.close(1, CloseMode::Graceful);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    assert_eq!(sink.released(1), 1);
}

#[test]
fn peer_reset_reports_connection_reset() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, client) = pair();
    driver.add_stream(1, server).unwrap();
    // Let the receive arm first, then reset.
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    poll_until(&mut driver, &mut sink, "ReadClosed", |s| {
        s.read_closed(1).is_some()
    });
    let error = sink
        .read_closed(1)
        .unwrap()
        .as_ref()
        .expect("a reset is an error");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    driver.close(1, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
}

#[test]
fn close_with_recv_and_send_in_flight_releases_once() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();

    // Fill the socket: the first write is partial, the second stays pending
    // because the client never reads.
    let bufs: Vec<Bytes> = (0..256)
        .map(|i| Bytes::from(pattern(64 * 1024, i)))
        .collect();
    driver.send(1, SendBatch { bufs });
    poll_until(&mut driver, &mut sink, "first Sent", |s| {
        s.events.iter().any(|e| matches!(e, Ev::Sent(..)))
    });
    let (result, mut batch) = sink.take_sent(1).unwrap();
    let n = result.unwrap();
    assert!(n < batch.len(), "the first write should be partial");
    batch.advance(n);
    driver.send(1, batch);
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    assert!(
        sink.take_sent(1).is_none(),
        "the second write should be pending"
    );

    // Data racing with the close must not be reported.
    client.write_all(b"late data").unwrap();
    let before = sink.events.len();
    driver.close(1, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) >= 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(200));

    let after: Vec<&Ev> = sink.events[before..].iter().collect();
    assert_eq!(sink.released(1), 1, "exactly one Released: {after:?}");
    let released_at = after
        .iter()
        .position(|e| matches!(e, Ev::Released(_)))
        .unwrap();
    assert_eq!(
        released_at,
        after.len() - 1,
        "nothing after Released: {after:?}"
    );
    assert_eq!(
        released_at, 1,
        "the outstanding Sent, then Released: {after:?}"
    );
    for event in &after[..released_at] {
        match event {
            Ev::Sent(1, result, _) => {
                let error = result
                    .as_ref()
                    .expect_err("the pending write was cancelled");
                assert_eq!(error.raw_os_error(), Some(libc::ECANCELED), "{error}");
            }
            other => panic!("unexpected event after close: {other:?}"),
        }
    }

    // The peer sees the abortive close as a reset once it drains its buffer.
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut scratch = vec![0u8; 1 << 20];
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "no reset seen by the peer");
        match client.read(&mut scratch) {
            Ok(0) => panic!("expected a reset, got EOF"),
            Ok(_) => continue,
            Err(error) => {
                assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
                break;
            }
        }
    }
}

#[test]
fn graceful_close_with_idle_recv_gives_peer_eof() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close(1, CloseMode::Graceful);
    // Calls on a closing token are ignored.
    driver.send(
        1,
        SendBatch {
            bufs: vec![Bytes::from_static(b"ignored")],
        },
    );
    driver.close(1, CloseMode::Graceful);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    assert_eq!(sink.events.len(), 1, "{:?}", sink.events);
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the peer sees EOF");

    // The token can be used again after Released.
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    client.write_all(b"again").unwrap();
    poll_until(&mut driver, &mut sink, "data on the reused token", |s| {
        s.received(1) == b"again"
    });
}

#[test]
fn close_right_after_add_stream_releases_once() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, _client) = pair();
    driver.add_stream(5, server).unwrap();
    // The receive is still queued, not submitted.
    driver.close(5, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(5) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    assert_eq!(sink.events.len(), 1, "{:?}", sink.events);
}

fn flood(tokens: &[Token], bytes_each: usize, ring_entries: u16, buffer_size: usize) {
    let driver = UringDriver::new(&config(ring_entries, buffer_size)).unwrap();
    flood_on(driver, tokens, bytes_each, buffer_size);
}

fn flood_on(mut driver: UringDriver, tokens: &[Token], bytes_each: usize, buffer_size: usize) {
    let mut sink = Collect::default();
    let mut writers = Vec::new();
    let mut expected = Vec::new();
    for (i, &token) in tokens.iter().enumerate() {
        let (server, mut client) = pair();
        driver.add_stream(token, server).unwrap();
        let data = pattern(bytes_each, i + 1);
        expected.push(data.clone());
        writers.push(thread::spawn(move || {
            for chunk in data.chunks(8 * 1024) {
                client.write_all(chunk).unwrap();
            }
            client.shutdown(Shutdown::Write).unwrap();
            // Keep the socket open until the driver has read everything.
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest);
        }));
    }
    let deadline = Instant::now() + LIMIT;
    while !tokens.iter().all(|&t| sink.read_closed(t).is_some()) {
        assert!(
            Instant::now() < deadline,
            "timed out; received {:?}",
            tokens
                .iter()
                .map(|&t| sink.received(t).len())
                .collect::<Vec<_>>()
        );
        driver
            .poll(Some(Duration::from_millis(50)), &mut sink)
            .unwrap();
    }
    for (&token, expected) in tokens.iter().zip(&expected) {
        assert!(sink.read_closed(token).unwrap().is_none());
        let got = sink.received(token);
        assert_eq!(got.len(), expected.len(), "token {token}: byte count");
        assert!(got == *expected, "token {token}: bytes lost or reordered");
    }
    for event in &sink.events {
        if let Ev::Received(_, data) = event {
            assert!(!data.is_empty() && data.len() <= buffer_size);
        }
    }
    for &token in tokens {
        driver.close(token, CloseMode::Graceful);
    }
    poll_until(&mut driver, &mut sink, "Released", |s| {
        tokens.iter().all(|&t| s.released(t) == 1)
    });
    for writer in writers {
        writer.join().unwrap();
    }
}

#[test]
fn ring_exhaustion_loses_and_reorders_nothing() {
    flood(&[1], 1 << 20, 4, 64);
}

#[test]
fn ring_exhaustion_with_two_connections_sharing_the_ring() {
    flood(&[1, 2], 512 << 10, 4, 64);
}

#[test]
fn wake_from_another_thread_returns_poll_promptly() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let waker = driver.waker();

    let remote = waker.clone();
    let thread = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        remote.wake();
    });
    let start = Instant::now();
    driver
        .poll(Some(Duration::from_secs(30)), &mut sink)
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "woken after {:?}",
        start.elapsed()
    );
    thread.join().unwrap();

    // A wake before the poll (many of them, coalesced) makes the next poll
    // return, even without a timeout.
    for _ in 0..100 {
        waker.wake();
    }
    let start = Instant::now();
    driver.poll(None, &mut sink).unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));

    // Still works after that.
    let remote = waker.clone();
    let thread = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        remote.wake();
    });
    let start = Instant::now();
    driver.poll(None, &mut sink).unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
    thread.join().unwrap();
    assert!(sink.events.is_empty());
}

#[test]
fn zero_timeout_does_not_block() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let start = Instant::now();
    for _ in 0..100 {
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    let start = Instant::now();
    driver
        .poll(Some(Duration::from_millis(20)), &mut sink)
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(sink.events.is_empty());
}

#[test]
fn close_listeners_stops_accepting() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    driver.add_listener(listener).unwrap();
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close_listeners();
    let deadline = Instant::now() + LIMIT;
    while driver.listeners.iter().any(Option::is_some) {
        assert!(Instant::now() < deadline, "listener not closed");
        driver
            .poll(Some(Duration::from_millis(50)), &mut sink)
            .unwrap();
    }
    let error = TcpStream::connect(addr).expect_err("the listener is closed");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    assert!(sink.events.is_empty(), "{:?}", sink.events);
}

#[test]
fn drop_with_operations_in_flight_is_prompt() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    driver.add_listener(listener).unwrap();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    let bufs: Vec<Bytes> = (0..256)
        .map(|i| Bytes::from(pattern(64 * 1024, i)))
        .collect();
    driver.send(1, SendBatch { bufs });
    poll_until(&mut driver, &mut sink, "Sent", |s| {
        s.events.iter().any(|e| e.token() == Some(1))
    });
    let (_, mut batch) = sink.take_sent(1).unwrap();
    batch.bufs.truncate(8);
    driver.send(1, batch);
    driver
        .poll(Some(Duration::from_millis(20)), &mut sink)
        .unwrap();

    let start = Instant::now();
    drop(driver);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        start.elapsed()
    );

    // The socket was closed: the peer reaches EOF after the data.
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut scratch = vec![0u8; 1 << 20];
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "the peer never saw the close");
        match client.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[test]
fn empty_batch_is_reported_as_an_error() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let (server, _client) = pair();
    driver.add_stream(1, server).unwrap();
    driver.send(
        1,
        SendBatch {
            bufs: vec![Bytes::new()],
        },
    );
    poll_until(&mut driver, &mut sink, "Sent", |s| {
        s.events.iter().any(|e| matches!(e, Ev::Sent(..)))
    });
    let (result, batch) = sink.take_sent(1).unwrap();
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(batch.bufs.len(), 1);
}

#[test]
fn fallback_ring_setups_work_too() {
    for mode in [SetupMode::CoopTaskrun, SetupMode::Plain] {
        // Receive with ring exhaustion.
        let driver = UringDriver::with_setup(&config(4, 64), &[mode]).expect("ring setup");
        flood_on(driver, &[1, 2], 128 << 10, 64);

        // Send, wake, zero timeout, close with a receive in flight.
        let mut driver = UringDriver::with_setup(&config(4, 64), &[mode]).expect("ring setup");
        let mut sink = Collect::default();
        let (server, mut client) = pair();
        driver.add_stream(1, server).unwrap();
        let bufs: Vec<Bytes> = (0..10).map(|i| Bytes::from(pattern(1000, i))).collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        send_all(&mut driver, &mut sink, 1, bufs);
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).unwrap();
        assert!(got == expected);

        let waker = driver.waker();
        let thread = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let start = Instant::now();
        driver.poll(None, &mut sink).unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
        thread.join().unwrap();
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();

        driver.close(1, CloseMode::Graceful);
        poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
        assert!(
            sink.events.iter().all(|e| matches!(e, Ev::Released(1))),
            "{:?}",
            sink.events
        );
    }
}

#[test]
fn tiny_queues_overflow_without_losing_anything() {
    // 4 submission entries for 40 connections: pushes overflow the queue;
    // 16 completion entries: completions overflow into the kernel's list.
    let mut driver = UringDriver::new(&DriverConfig {
        recv_ring_entries: 64,
        recv_buffer_size: 256,
        sq_entries: 4,
    })
    .unwrap();
    let mut sink = Collect::default();
    let mut clients = Vec::new();
    for token in 0..40u64 {
        let (server, client) = pair();
        driver.add_stream(token, server).unwrap();
        clients.push(client);
    }
    let message = Bytes::from(pattern(3000, 9));
    for token in 0..40u64 {
        driver.send(
            token,
            SendBatch {
                bufs: vec![message.clone(), message.slice(..10)],
            },
        );
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(&pattern(5000, i)).unwrap();
    }
    let mut sent = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        for token in 0..40u64 {
            if let Some((result, _)) = sink.take_sent(token) {
                assert_eq!(result.unwrap(), 3010);
                sent += 1;
            }
        }
        if sent == 40 && (0..40u64).all(|t| sink.received(t).len() >= 5000) {
            break;
        }
        assert!(Instant::now() < deadline, "timed out: {sent} sent");
        driver
            .poll(Some(Duration::from_millis(50)), &mut sink)
            .unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(sink.received(i as Token) == pattern(5000, i), "token {i}");
        let mut got = vec![0u8; 3010];
        client.read_exact(&mut got).unwrap();
        assert!(got[..3000] == message[..] && got[3000..] == message[..10]);
    }
    for token in 0..40u64 {
        driver.close(token, CloseMode::Graceful);
    }
    poll_until(&mut driver, &mut sink, "all Released", |s| {
        (0..40u64).all(|t| s.released(t) == 1)
    });
    // Held back, never dropped: every poll checked the counter.
    assert_eq!(driver.sq.ring.completion().overflow(), 0);
}

/// A completion queue of 8 entries under a flood: the kernel holds the
/// overflow back (NODROP) and nothing is lost; and once the kernel reports
/// dropped completions the next poll fails the driver instead of running on
/// with operations that will never complete.
#[test]
fn dropped_completions_fail_the_next_poll() {
    let mut driver = UringDriver::new(&DriverConfig {
        recv_ring_entries: 64,
        recv_buffer_size: 256,
        sq_entries: 2,
    })
    .unwrap();
    assert_eq!(driver.sq.ring.params().cq_entries(), 8);
    let mut sink = Collect::default();
    let mut clients = Vec::new();
    for token in 0..32u64 {
        let (server, mut client) = pair();
        driver.add_stream(token, server).unwrap();
        client.write_all(&pattern(2000, token as usize)).unwrap();
        clients.push(client);
    }
    poll_until(&mut driver, &mut sink, "every byte", |s| {
        (0..32u64).all(|t| s.received(t).len() == 2000)
    });
    for token in 0..32u64 {
        assert!(sink.received(token) == pattern(2000, token as usize));
    }
    assert_eq!(driver.sq.ring.completion().overflow(), 0);

    assert!(driver.check_dropped(0).is_ok());
    let error = driver.check_dropped(3).unwrap_err();
    assert!(
        error.to_string().contains("dropped 3 completions"),
        "{error}"
    );
    assert!(
        driver.check_dropped(3).is_ok(),
        "each drop is reported once"
    );

    // Through `poll`: the kernel's counter (0) is one past what the driver
    // saw last, as after one dropped completion.
    driver.cq_dropped_seen = u32::MAX;
    let error = driver
        .poll(Some(Duration::ZERO), &mut sink)
        .expect_err("a dropped completion fails the poll");
    assert!(
        error.to_string().contains("dropped 1 completions"),
        "{error}"
    );
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
}

/// Runs `probe` on a fresh thread whose seccomp filter fails
/// `io_uring_setup` with `errno` (a filter binds only its thread).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn probe_under_seccomp(errno: i32) -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    thread::spawn(move || {
        let filter = [
            // Load the architecture; other architectures pass untouched.
            libc::sock_filter {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 4,
            },
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 3,
                k: AUDIT_ARCH,
            },
            // Load the syscall number; io_uring_setup fails with `errno`.
            libc::sock_filter {
                code: LD_W_ABS,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | errno as u32,
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with plain integer arguments, on this thread only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_NO_NEW_PRIVS: {}", io::Error::last_os_error());
        // SAFETY: `program` points at a valid filter that outlives the call;
        // without SECCOMP_FILTER_FLAG_TSYNC it binds this thread only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            )
        };
        assert_eq!(rc, 0, "seccomp: {}", io::Error::last_os_error());
        super::probe()
    })
    .join()
    .unwrap()
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn probe_names_a_sandbox_that_forbids_io_uring() {
    let error = probe_under_seccomp(libc::EPERM).expect_err("EPERM from io_uring_setup");
    assert!(error.contains("not permitted"), "{error}");
    let error = probe_under_seccomp(libc::ENOSYS).expect_err("ENOSYS from io_uring_setup");
    assert!(error.contains("not available"), "{error}");
    // The filter bound only its own thread.
    super::probe().expect("probe on an unfiltered thread");
}

const EMFILE_CHILD: &str = "SERVERCORE_URING_EMFILE_CHILD";

/// Running out of descriptors reports `AcceptError(EMFILE)` at a bounded
/// rate and accepting resumes once descriptors are available again. The
/// descriptor limit is per process, so the scenario runs in a child process
/// (this same test binary, running only this test).
#[test]
fn accept_backs_off_on_emfile_and_resumes() {
    if std::env::var_os(EMFILE_CHILD).is_some() {
        emfile_scenario();
        return;
    }
    let path = module_path!();
    let name = format!(
        "{}::accept_backs_off_on_emfile_and_resumes",
        path.split_once("::").map_or(path, |(_, rest)| rest)
    );
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

fn emfile_scenario() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: socket2::SockAddr = listener.local_addr().unwrap().into();
    let clients: Vec<socket2::Socket> = (0..3)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    driver.add_listener(listener).unwrap();

    // Allow no new descriptor: the lowest free one is at the limit. (The
    // accept reads the limit when it is submitted, so lower it first.)
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd() as libc::rlim_t;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to rlimit structs.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
        let low = libc::rlimit {
            rlim_cur: lowest_free,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    for client in &clients {
        client.connect(&addr).unwrap();
    }
    poll_for(&mut driver, &mut sink, Duration::from_millis(300));
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &saved), 0);
    }
    let emfile = sink
        .events
        .iter()
        .filter(
            |e| matches!(e, Ev::AcceptError(error) if error.raw_os_error() == Some(libc::EMFILE)),
        )
        .count();
    assert!(emfile >= 1, "no EMFILE reported: {:?}", sink.events);
    assert!(emfile <= 40, "{emfile} EMFILE errors in 300 ms: a hot loop");
    assert!(
        sink.events.iter().all(|e| matches!(e, Ev::AcceptError(_))),
        "{:?}",
        sink.events
    );

    sink.events.clear();
    poll_until(&mut driver, &mut sink, "accepting to resume", |s| {
        s.events
            .iter()
            .filter(|e| matches!(e, Ev::Accepted(..)))
            .count()
            == clients.len()
    });
}

/// `close_listeners` gives the port back at once, before any completion is
/// reaped: a process that exits (or crashes) with the accept still armed
/// must not keep its successor from binding the same port.
#[test]
fn close_listeners_frees_the_port_at_once() {
    let mut driver = driver();
    let mut sink = Collect::default();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    driver.add_listener(listener).unwrap();
    // Submit the multishot accept.
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close_listeners();

    let successor =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    successor.set_reuse_address(true).unwrap();
    successor
        .bind(&addr.into())
        .expect("the port is free right after close_listeners");
    successor.listen(16).unwrap();
    drop(successor);
    drop(driver);
    assert!(sink.events.is_empty(), "{:?}", sink.events);
}
