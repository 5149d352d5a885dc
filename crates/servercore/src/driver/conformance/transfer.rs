//! Cases that move bytes: receiving exactly, floods, gathered and partial
//! writes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::harness::*;
use crate::driver::{CloseMode, Driver, SendBatch, Token};

/// Accepted streams are non-blocking and carry the peer's address; what a
/// peer sends arrives exactly, in reads no larger than a receive buffer.
pub(crate) fn accept_and_receive_exact_bytes<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let addr = listen(&mut driver);
    for (round, token) in [(0usize, 7u64), (1, 8)] {
        let client = TcpStream::connect(addr).unwrap();
        let message = pattern(300_000, round);
        let writer = {
            let mut client = client.try_clone().unwrap();
            let message = message.clone();
            thread::spawn(move || client.write_all(&message).unwrap())
        };
        poll_until(&mut driver, &mut sink, "Accepted", |s| {
            s.events.iter().any(|e| matches!(e, Ev::Accepted(..)))
        });
        let (stream, peer) = sink.take_accepted().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: F_GETFL on a descriptor the stream owns.
            let flags = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_GETFL) };
            assert!(
                flags & libc::O_NONBLOCK != 0,
                "accepted streams are non-blocking"
            );
        }
        driver.add_stream(token, stream).unwrap();
        poll_until(&mut driver, &mut sink, "the message", |s| {
            s.received(token).len() >= message.len()
        });
        assert!(sink.received(token) == message, "bytes differ");
        writer.join().unwrap();
        client.shutdown(Shutdown::Both).unwrap();
    }
    for event in &sink.events {
        match event {
            Ev::AcceptError(error) => panic!("accepting failed: {error}"),
            Ev::Received(_, data) => assert!(!data.is_empty() && data.len() <= 4096),
            _ => {}
        }
    }
}

/// Floods `tokens` (one peer each) with `bytes_each` bytes and a FIN: every
/// byte arrives, in order, then `ReadClosed(None)`; closing releases each
/// once. On io_uring a small ring makes the receives run out of buffers.
pub(crate) fn flood<D: Driver>(
    mut driver: D,
    tokens: &[Token],
    bytes_each: usize,
    buffer_size: usize,
) {
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
            .poll(Some(Duration::from_millis(20)), &mut sink)
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

pub(crate) fn a_flood_from_several_peers_arrives_complete_and_in_order<D: Driver>() {
    let driver = D::new(&config(4, 64)).expect("driver");
    flood(driver, &[1, 2, 3], 256 << 10, 64);
}

/// More buffers than one gathered write takes (some empty), of assorted
/// sizes, arrive in order over several writes.
pub(crate) fn gathered_send_of_many_buffers_arrives_in_order<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, client) = pair();
    driver.add_stream(1, server).unwrap();
    let bufs: Vec<Bytes> = (0..3000usize)
        .map(|i| match i % 97 {
            0 => Bytes::new(),
            _ => Bytes::from(pattern(1 + i % 61 + usize::from(i % 3 == 0) * 300, i)).slice(i % 2..),
        })
        .collect();
    let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let reader = read_in_thread(client, expected.len(), Duration::ZERO);
    let (sends, _) = send_all(&mut driver, &mut sink, 1, bufs);
    assert!(
        sends >= 3,
        "3000 buffers need at least 3 writes of <= 1024 iovecs, took {sends}"
    );
    assert!(reader.join().unwrap() == expected, "bytes differ");
}

/// 8 MiB to a reader that starts late and reads slowly: partial writes
/// (some waiting for the socket), resumed where they stopped.
pub(crate) fn large_send_to_slow_reader_resumes_partial_writes<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, client) = pair();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    driver.add_stream(1, server).unwrap();
    let bufs: Vec<Bytes> = (0..128)
        .map(|i| Bytes::from(pattern(64 * 1024, i)))
        .collect();
    let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let reader = read_in_thread(client, expected.len(), Duration::from_millis(200));
    let (sends, partial) = send_all(&mut driver, &mut sink, 1, bufs);
    assert!(partial >= 1, "expected partial writes ({sends} sends)");
    assert!(reader.join().unwrap() == expected, "bytes differ");
}

/// `trim` between writes and during a slow one gives back only what is
/// idle: every byte still arrives, in order.
pub(crate) fn trim_between_writes_changes_nothing_that_is_in_use<D: Driver>() {
    let mut driver: D = driver();
    let mut sink = Collect::default();
    let (server, client) = pair();
    driver.add_stream(1, server).unwrap();
    let bufs: Vec<Bytes> = (0..64)
        .map(|i| Bytes::from(pattern(16 * 1024, i)))
        .collect();
    let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    let reader = read_in_thread(client, expected.len(), Duration::from_millis(50));
    let deadline = Instant::now() + LIMIT;
    let mut batch = SendBatch::from(bufs);
    while !batch.is_empty() {
        driver.trim();
        driver.send(1, batch);
        driver.trim();
        batch = loop {
            assert!(Instant::now() < deadline, "timed out sending");
            if let Some((result, mut back)) = sink.take_sent(1) {
                back.advance(result.expect("send"));
                break back;
            }
            driver
                .poll(Some(Duration::from_millis(20)), &mut sink)
                .unwrap();
            driver.trim();
        };
    }
    assert!(reader.join().unwrap() == expected, "bytes differ");
}
