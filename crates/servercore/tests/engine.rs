//! The engine over real loopback sockets, on every backend: echo integrity,
//! many clients, cross-thread send order, callback counts and reasons,
//! resets, `max_sessions`, graceful stop and slow readers.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use servercore::{Backend, DisconnectReason, ServerService, Session, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

fn echo_server(backend: Backend, workers: usize) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(workers)
        .shutdown_timeout(Duration::from_secs(1))
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    assert_eq!(service.backend(), backend);
    (service, record)
}

fn stop(service: &ServerService) {
    service.stop();
    service.join();
    let stats = service.stats();
    assert_eq!(stats.live_slots, 0, "every slot freed: {stats:?}");
    assert_eq!(stats.active_sessions, 0, "no active session: {stats:?}");
}

backend_tests!(
    echo_random_payloads,
    echo_over_ipv6,
    thousand_clients_echo_hundred_messages,
    eight_threads_send_in_order,
    callbacks_and_reasons,
    peer_reset_during_large_send,
    max_sessions_refuses_extra_connections,
    stop_while_busy_frees_everything,
    reader_that_never_reads_does_not_stall_others,
    panicking_callback_disconnects_only_its_session,
    send_after_close_is_an_error,
    unconsumed_bytes_are_shown_again,
);

fn echo_random_payloads(backend: Backend) {
    let (service, record) = echo_server(backend, 2);
    let addr = service.local_addr();
    let sizes = [
        1usize,
        2,
        7,
        100,
        1_000,
        4_095,
        4_096,
        4_097,
        16_384,
        65_535,
        65_536,
        100_000,
        300_001,
        1 << 20,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = payload(size, i as u64 + 1);
        let mut client = connect(addr);
        let mut reader = client.try_clone().unwrap();
        let expected = data.clone();
        let read = std::thread::spawn(move || read_exact(&mut reader, expected.len()));
        write_all(&mut client, &data);
        let echoed = read.join().unwrap();
        assert!(echoed == data, "{size}-byte payload echoed byte for byte");
    }
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .disconnected
        .len()
        == sizes.len()));
    stop(&service);
    let record = record.lock();
    assert_eq!(record.connected, sizes.len());
    assert!(record
        .disconnected
        .iter()
        .all(|r| *r == DisconnectReason::ClosedByPeer));
}

fn echo_over_ipv6(backend: Backend) {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    drop(probe);
    let service = ServerService::builder("[::1]:0")
        .backend(backend)
        .workers(1)
        .session(|| RecordingEcho {
            record: Default::default(),
        })
        .start()
        .expect("start on ::1");
    let mut client = connect(service.local_addr());
    write_all(&mut client, b"over ipv6");
    assert_eq!(read_exact(&mut client, 9), b"over ipv6");
    drop(client);
    stop(&service);
}

fn thousand_clients_echo_hundred_messages(backend: Backend) {
    const CLIENTS: usize = 1_000;
    const MESSAGES: usize = 100;
    const THREADS: usize = 8;
    let (service, record) = echo_server(backend, 2);
    let addr = service.local_addr();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut clients: Vec<TcpStream> =
                    (0..CLIENTS / THREADS).map(|_| connect(addr)).collect();
                for round in 0..MESSAGES {
                    for (c, client) in clients.iter_mut().enumerate() {
                        let message = format!("t{t}c{c}r{round:03}|");
                        write_all(client, message.as_bytes());
                    }
                    for (c, client) in clients.iter_mut().enumerate() {
                        let message = format!("t{t}c{c}r{round:03}|");
                        let echoed = read_exact(client, message.len());
                        assert_eq!(echoed, message.as_bytes());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    assert!(wait_until(Duration::from_secs(10), || record
        .lock()
        .disconnected
        .len()
        == CLIENTS));
    assert_eq!(record.lock().connected, CLIENTS);
    stop(&service);
}

fn eight_threads_send_in_order(backend: Backend) {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 5_000;
    let (service, record) = echo_server(backend, 2);
    let mut client = connect(service.local_addr());
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    let handle = record.lock().handles[0].clone();
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    let mut message = [0u8; 8];
                    message[..4].copy_from_slice(&t.to_le_bytes());
                    message[4..].copy_from_slice(&seq.to_le_bytes());
                    handle.send(Bytes::copy_from_slice(&message)).expect("send");
                }
            })
        })
        .collect();
    let received = read_exact(&mut client, (THREADS * PER_THREAD * 8) as usize);
    for sender in senders {
        sender.join().unwrap();
    }
    let mut next = [0u32; THREADS as usize];
    for message in received.chunks_exact(8) {
        let t = u32::from_le_bytes(message[..4].try_into().unwrap()) as usize;
        let seq = u32::from_le_bytes(message[4..].try_into().unwrap());
        assert_eq!(seq, next[t], "thread {t}'s messages arrive in its order");
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_THREAD));
    drop(client);
    stop(&service);
}

/// Disconnects when it receives "bye"; otherwise echoes.
struct Hangup {
    record: Shared,
}

impl Session for Hangup {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        session.send_copy(data).unwrap();
        if data.ends_with(b"bye") {
            session.disconnect();
        }
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn callbacks_and_reasons(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        .session(move || Hangup {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let wait_for = |count: usize| {
        assert!(
            wait_until(Duration::from_secs(5), || record.lock().disconnected.len()
                == count),
            "expected {count} disconnects, saw {:?}",
            record.lock().disconnected
        );
    };

    // Peer closes in order.
    let mut client = connect(addr);
    write_all(&mut client, b"hi");
    assert_eq!(read_exact(&mut client, 2), b"hi");
    drop(client);
    wait_for(1);
    assert_eq!(
        record.lock().disconnected[0],
        DisconnectReason::ClosedByPeer
    );

    // Peer resets.
    let mut client = connect(addr);
    write_all(&mut client, b"hi");
    assert_eq!(read_exact(&mut client, 2), b"hi");
    set_linger_zero(&client);
    drop(client);
    wait_for(2);
    assert_eq!(record.lock().disconnected[1], DisconnectReason::Reset);

    // The application disconnects: the reply queued before still arrives,
    // then EOF.
    let mut client = connect(addr);
    write_all(&mut client, b"bye");
    let mut all = Vec::new();
    client.read_to_end(&mut all).expect("read until EOF");
    assert_eq!(all, b"bye");
    wait_for(3);
    assert_eq!(record.lock().disconnected[2], DisconnectReason::ClosedByApp);

    // Shutdown.
    let mut client = connect(addr);
    write_all(&mut client, b"hi");
    assert_eq!(read_exact(&mut client, 2), b"hi");
    stop(&service);
    let record = record.lock();
    assert_eq!(record.disconnected.len(), 4);
    assert_eq!(record.disconnected[3], DisconnectReason::Shutdown);
    assert_eq!(record.connected, 4, "one on_connected per session");
}

/// Sends a large buffer as soon as it connects.
struct Flooder {
    record: Shared,
    size: usize,
}

impl Session for Flooder {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.record.lock().connected += 1;
        let chunk = Bytes::from(vec![0xAB; 256 * 1024]);
        for _ in 0..self.size / chunk.len() {
            if session.send(chunk.clone()).is_err() {
                break;
            }
        }
    }
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn peer_reset_during_large_send(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .send_limits(1 << 20, 32 << 20, 64 << 20)
        .session(move || Flooder {
            record: Arc::clone(&shared),
            size: 32 << 20,
        })
        .start()
        .unwrap();
    let mut client = connect(service.local_addr());
    let first = read_exact(&mut client, 100_000);
    assert!(first.iter().all(|&b| b == 0xAB));
    set_linger_zero(&client);
    drop(client);
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .disconnected
        .len()
        == 1));
    let reason = record.lock().disconnected[0].clone();
    assert!(
        matches!(reason, DisconnectReason::Reset),
        "a reset peer is reported as Reset, got {reason:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || service
        .stats()
        .live_slots
        == 0));
    stop(&service);
    assert_eq!(record.lock().connected, 1);
}

fn max_sessions_refuses_extra_connections(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .max_sessions(5)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let mut kept: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for client in &mut kept {
        write_all(client, b"ping");
        assert_eq!(read_exact(client, 4), b"ping");
    }
    for _ in 0..10 {
        let mut extra = connect(addr);
        let mut buf = [0u8; 16];
        let _ = extra.write_all(b"ping");
        match extra.read(&mut buf) {
            Ok(0) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
            other => panic!("a refused connection is closed, got {other:?}"),
        }
    }
    assert_eq!(service.stats().refused_total, 10);
    for client in &mut kept {
        write_all(client, b"still here");
        assert_eq!(read_exact(client, 10), b"still here");
    }
    assert_eq!(record.lock().connected, 5);
    drop(kept);
    stop(&service);
}

fn stop_while_busy_frees_everything(backend: Backend) {
    const CLIENTS: usize = 100;
    let (service, record) = echo_server(backend, 2);
    let addr = service.local_addr();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Clients that completed at least one echo: all are busy at the stop.
    let busy = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let running = Arc::clone(&running);
            let busy = Arc::clone(&busy);
            std::thread::spawn(move || {
                let mut client = connect(addr);
                client
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let message = payload(1_000, i as u64);
                let mut buf = vec![0u8; 1_000];
                let mut first = true;
                while running.load(Ordering::Relaxed) {
                    if client.write_all(&message).is_err() || client.read_exact(&mut buf).is_err() {
                        return;
                    }
                    assert!(buf == message, "client {i}: echo corrupted");
                    if std::mem::take(&mut first) {
                        busy.fetch_add(1, Ordering::AcqRel);
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || busy
        .load(Ordering::Acquire)
        == CLIENTS));
    let started = Instant::now();
    service.stop();
    service.join();
    let took = started.elapsed();
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    // shutdown_timeout is 1 s; linger and slack give the bound.
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let stats = service.stats();
    assert_eq!(stats.live_slots, 0);
    assert_eq!(stats.active_sessions, 0);
    // Every client was still talking when the stop came: each session ends
    // with `Shutdown`, whatever the peer does while it drains.
    let record = record.lock();
    assert_eq!(record.connected, CLIENTS);
    assert_eq!(
        record.disconnected,
        vec![DisconnectReason::Shutdown; CLIENTS]
    );
}

fn reader_that_never_reads_does_not_stall_others(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .send_limits(64 << 10, 256 << 10, 1 << 20)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    // The stubborn client writes a lot and never reads: its echo piles up.
    let stubborn = connect(addr);
    let writer = {
        let mut stubborn = stubborn.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..(64 << 20) / chunk.len() {
                if stubborn.write_all(&chunk).is_err() {
                    return;
                }
            }
        })
    };
    let mut polite = connect(addr);
    for round in 0..200 {
        let message = format!("round {round}");
        write_all(&mut polite, message.as_bytes());
        assert_eq!(read_exact(&mut polite, message.len()), message.as_bytes());
    }
    assert!(
        wait_until(Duration::from_secs(10), || record
            .lock()
            .disconnected
            .contains(&DisconnectReason::SendQueueOverflow)),
        "the stubborn reader is disconnected for overflow: {:?}",
        record.lock().disconnected
    );
    let _ = writer.join();
    write_all(&mut polite, b"after");
    assert_eq!(read_exact(&mut polite, 5), b"after");
    drop(stubborn);
    drop(polite);
    stop(&service);
}

/// Panics when it receives "boom".
struct Fragile {
    record: Shared,
}

impl Session for Fragile {
    fn on_connected(&mut self, _session: &SessionHandle) {
        self.record.lock().connected += 1;
    }
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        if data == b"boom" {
            panic!("fragile session got boom");
        }
        session.send_copy(data).unwrap();
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn panicking_callback_disconnects_only_its_session(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .session(move || Fragile {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let mut good = connect(addr);
    let mut bad = connect(addr);
    write_all(&mut bad, b"boom");
    let mut buf = [0u8; 4];
    assert!(matches!(bad.read(&mut buf), Ok(0) | Err(_)));
    write_all(&mut good, b"fine");
    assert_eq!(read_exact(&mut good, 4), b"fine");
    let reasons = record.lock().disconnected.clone();
    assert_eq!(reasons.len(), 1);
    assert!(
        matches!(&reasons[0], DisconnectReason::CallbackPanic(m) if m.contains("boom")),
        "{reasons:?}"
    );
    drop(good);
    stop(&service);
}

fn send_after_close_is_an_error(backend: Backend) {
    let (service, record) = echo_server(backend, 1);
    let client = connect(service.local_addr());
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    let handle = record.lock().handles[0].clone();
    assert!(handle.is_connected());
    drop(client);
    assert!(wait_until(Duration::from_secs(5), || !handle.is_connected()));
    assert_eq!(
        handle.send_copy(b"late"),
        Err(servercore::SendError::Closed)
    );
    handle.disconnect();
    stop(&service);
    assert_eq!(
        handle.send_copy(b"later"),
        Err(servercore::SendError::Closed)
    );
}

/// Consumes only whole 4-byte words and echoes each word.
struct Words {
    seen: Arc<AtomicUsize>,
}

impl Session for Words {
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let whole = data.len() / 4 * 4;
        if whole > 0 {
            session.send_copy(&data[..whole]).unwrap();
            self.seen.fetch_add(whole / 4, Ordering::Relaxed);
        }
        whole
    }
}

fn unconsumed_bytes_are_shown_again(backend: Backend) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .session(move || Words {
            seen: Arc::clone(&counter),
        })
        .start()
        .unwrap();
    let mut client = connect(service.local_addr());
    let data = payload(4 * 1000, 9);
    // Dribble the bytes in odd-sized pieces so words straddle receives.
    for piece in data.chunks(7) {
        write_all(&mut client, piece);
        std::thread::sleep(Duration::from_micros(50));
    }
    assert_eq!(read_exact(&mut client, data.len()), data);
    assert_eq!(seen.load(Ordering::Relaxed), 1000);
    drop(client);
    stop(&service);
}
