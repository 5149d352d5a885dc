//! Cases of a connection's and a listener's life: EOF, reset, the two
//! close modes, closes with operations in flight, tokens, wakes, timeouts,
//! closing listeners and dropping the driver.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::harness::*;
use crate::driver::{CloseMode, Driver, SendBatch};

/// The peer's bytes, then its EOF as `ReadClosed(None)`, then nothing until
/// `close`; two closes give exactly one prompt `Released`.
pub(crate) fn peer_close_reports_eof_then_close_releases_once<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(3, server).unwrap();
    client.write_all(b"bye").unwrap();
    drop(client);
    poll_until(&mut driver, &mut sink, "ReadClosed", |s| {
        s.read_closed(3).is_some()
    });
    assert!(
        sink.read_closed(3).unwrap().is_none(),
        "EOF is not an error"
    );
    assert_eq!(sink.received(3), b"bye");
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert!(
        matches!(sink.events.last(), Some(Ev::ReadClosed(3, None))),
        "nothing after ReadClosed: {:?}",
        sink.events
    );
    sink.events.clear();
    driver.close(3, CloseMode::Graceful);
    driver.close(3, CloseMode::Graceful);
    let start = Instant::now();
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(3) == 1);
    assert!(start.elapsed() < Duration::from_secs(2));
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert!(
        matches!(sink.events[..], [Ev::Released(3)]),
        "{:?}",
        sink.events
    );
}

/// A reset reads as `ReadClosed(ConnectionReset)`; a send to the reset
/// connection fails and hands its batch back.
pub(crate) fn peer_reset_reports_connection_reset_and_a_send_fails<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, client) = pair();
    driver.add_stream(4, server).unwrap();
    // Let the receive start first, then reset.
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    poll_until(&mut driver, &mut sink, "ReadClosed", |s| {
        s.read_closed(4).is_some()
    });
    let error = sink
        .read_closed(4)
        .unwrap()
        .as_ref()
        .expect("a reset is an error");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    sink.events.clear();
    driver.send(4, SendBatch::from(vec![Bytes::from_static(b"late")]));
    poll_until(&mut driver, &mut sink, "Sent", |s| !s.events.is_empty());
    assert!(
        matches!(&sink.events[..], [Ev::Sent(4, Err(_), batch)] if batch.len() == 4),
        "{:?}",
        sink.events
    );
    sink.events.clear();
    driver.close(4, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(4) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert!(
        matches!(sink.events[..], [Ev::Released(4)]),
        "{:?}",
        sink.events
    );
}

/// A send waiting on a peer that never reads, then an abortive close with
/// the peer's late bytes in flight: the send comes back as an error with
/// its batch, then exactly one `Released`, nothing else; the peer sees a
/// reset.
pub(crate) fn close_with_a_send_in_flight_returns_the_batch_then_releases_once<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(5, server).unwrap();
    let data = Bytes::from(pattern(4 << 20, 5));
    // Write until one send stays pending.
    let mut batch = SendBatch::from(vec![data.clone()]);
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "the send never blocked");
        driver.send(5, batch);
        poll_for(&mut driver, &mut sink, Duration::from_millis(50));
        match sink.take_sent(5) {
            None => break,
            Some((result, back)) => {
                batch = back;
                batch.advance(result.expect("send"));
                if batch.is_empty() {
                    batch = SendBatch::from(vec![data.clone()]);
                }
            }
        }
        assert!(sink.events.is_empty(), "{:?}", sink.events);
    }
    // Data racing with the close must not be reported.
    client.write_all(b"late data").unwrap();
    driver.close(5, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(5) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    match &sink.events[..] {
        [Ev::Sent(5, Err(_), back), Ev::Released(5)] => {
            assert!(!back.is_empty());
            let last = back.bufs().last().unwrap();
            assert_eq!(last, &data.slice(data.len() - last.len()..));
        }
        other => panic!("expected Sent(Err) then Released, got {other:?}"),
    }
    // The peer sees the abortive close as a reset once it drains its buffer.
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

/// `Graceful` gives the peer EOF, `Abort` a reset.
pub(crate) fn close_modes_send_fin_or_rst<D: Driver>() {
    let mut driver: D = driver();
    let (server, mut graceful) = pair();
    driver.add_stream(10, server).unwrap();
    let (server, mut aborted) = pair();
    driver.add_stream(11, server).unwrap();
    let mut sink = Collect::default();
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close(10, CloseMode::Graceful);
    driver.close(11, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "both Released", |s| {
        s.released(10) == 1 && s.released(11) == 1
    });
    let mut buf = [0; 16];
    assert_eq!(graceful.read(&mut buf).unwrap(), 0);
    let error = aborted.read(&mut buf).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(sink.events.len(), 2, "{:?}", sink.events);
}

/// After a graceful close, a send and another close of the token are
/// ignored; one `Released` follows and the token can be used again.
pub(crate) fn graceful_close_ignores_later_calls_and_frees_the_token<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close(1, CloseMode::Graceful);
    driver.send(1, SendBatch::from(vec![Bytes::from_static(b"ignored")]));
    driver.close(1, CloseMode::Graceful);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert!(
        matches!(sink.events[..], [Ev::Released(1)]),
        "{:?}",
        sink.events
    );
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the peer sees EOF");

    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    client.write_all(b"again").unwrap();
    poll_until(&mut driver, &mut sink, "data on the reused token", |s| {
        s.received(1) == b"again"
    });
}

/// A close before the first poll (nothing submitted yet) releases once.
pub(crate) fn close_right_after_add_stream_releases_once<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, _client) = pair();
    driver.add_stream(5, server).unwrap();
    driver.close(5, CloseMode::Abort);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(5) == 1);
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert_eq!(sink.events.len(), 1, "{:?}", sink.events);
}

/// A send or close of a token never added does nothing and reports
/// nothing; adding a token that is live is refused.
pub(crate) fn unknown_tokens_are_ignored_and_live_ones_refused_twice<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    driver.close(99, CloseMode::Graceful);
    driver.send(99, SendBatch::from(vec![Bytes::from_static(b"x")]));
    poll_for(&mut driver, &mut sink, Duration::from_millis(30));
    assert!(sink.events.is_empty(), "{:?}", sink.events);

    let (server, _client) = pair();
    let twin = server.try_clone().unwrap();
    driver.add_stream(1, server).unwrap();
    let error = driver.add_stream(1, twin).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
    driver.close(1, CloseMode::Graceful);
    poll_until(&mut driver, &mut sink, "Released", |s| s.released(1) == 1);
}

/// A batch of empty buffers only is refused with `InvalidInput`, and comes
/// back.
pub(crate) fn empty_batch_is_reported_as_an_error<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, _client) = pair();
    driver.add_stream(1, server).unwrap();
    driver.send(1, SendBatch::from(vec![Bytes::new()]));
    poll_until(&mut driver, &mut sink, "Sent", |s| {
        s.events.iter().any(|e| matches!(e, Ev::Sent(..)))
    });
    let (result, batch) = sink.take_sent(1).unwrap();
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    assert_eq!(batch.bufs().len(), 1);
}

/// A wake from another thread ends a long poll; wakes before a poll (many,
/// coalesced) make it return too, even without a timeout.
pub(crate) fn wake_from_another_thread_returns_poll_promptly<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let waker = driver.waker();
    for delay in [100, 50] {
        let remote = waker.clone();
        let thread = thread::spawn(move || {
            thread::sleep(Duration::from_millis(delay));
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
        for _ in 0..100 {
            waker.wake();
        }
        let start = Instant::now();
        driver.poll(None, &mut sink).unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
    }
    assert!(sink.events.is_empty(), "{:?}", sink.events);
}

pub(crate) fn zero_timeout_does_not_block<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let start = Instant::now();
    for _ in 0..100 {
        driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    }
    driver
        .poll(Some(Duration::from_millis(20)), &mut sink)
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(sink.events.is_empty(), "{:?}", sink.events);
}

/// `close_listeners` gives the port back at once, before any completion is
/// reaped: a process that exits (or crashes) with an accept outstanding
/// must not keep its successor from binding the same port.
pub(crate) fn close_listeners_frees_the_port_at_once<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    driver.add_listener(listener).unwrap();
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

/// After `close_listeners` a connect is refused and nothing is reported.
pub(crate) fn close_listeners_stops_accepting<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let addr = listen(&mut driver);
    driver.poll(Some(Duration::ZERO), &mut sink).unwrap();
    driver.close_listeners();
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    let error = TcpStream::connect(addr).expect_err("the listener is closed");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    poll_for(&mut driver, &mut sink, Duration::from_millis(50));
    assert!(sink.events.is_empty(), "{:?}", sink.events);
}

/// Dropping a driver with a listener, a receive and a send in flight
/// returns promptly and closes the socket: the peer reads the data, then
/// EOF (or a reset, if unsent bytes were left).
pub(crate) fn drop_with_operations_in_flight_is_prompt_and_closes<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    listen(&mut driver);
    let (server, mut client) = pair();
    driver.add_stream(1, server).unwrap();
    let bufs: Vec<Bytes> = (0..256)
        .map(|i| Bytes::from(pattern(64 * 1024, i)))
        .collect();
    driver.send(1, SendBatch::from(bufs));
    poll_until(&mut driver, &mut sink, "Sent", |s| {
        s.events.iter().any(|e| matches!(e, Ev::Sent(1, ..)))
    });
    let (_, mut batch) = sink.take_sent(1).unwrap();
    batch.truncate(8);
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
    let mut scratch = vec![0u8; 1 << 20];
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "the peer never saw the close");
        match client.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => panic!("the socket was not closed: {error}"),
        }
    }
}
