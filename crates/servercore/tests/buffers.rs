//! Receive buffers, broadcast, backpressure and idle timeout over real
//! loopback sockets, on every backend.

use std::alloc::System;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use servercore::{Backend, DisconnectReason, ServerService, Session, SessionGroup, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts allocations so a test can prove a broadcast buffer is shared,
/// not copied per receiver.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation count is process-wide: the test that counts runs alone
/// (write lock) while the others of this file share the read lock.
static ALLOCATION_COUNTING: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

/// Joins a shared group on connect and ignores input.
struct Member {
    group: Arc<SessionGroup>,
    record: Shared,
}

impl Session for Member {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.group.add(session.clone());
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn group_server(backend: Backend, hard_limit: usize) -> (ServerService, Arc<SessionGroup>, Shared) {
    let group = Arc::new(SessionGroup::new());
    let record: Shared = Default::default();
    let (g, r) = (Arc::clone(&group), Arc::clone(&record));
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .send_limits(hard_limit / 8, hard_limit / 4, hard_limit)
        .shutdown_timeout(Duration::from_secs(1))
        .session(move || Member {
            group: Arc::clone(&g),
            record: Arc::clone(&r),
        })
        .start()
        .unwrap();
    (service, group, record)
}

backend_tests!(
    broadcast_arrives_complete_and_in_order,
    broadcast_shares_one_buffer,
    member_that_never_reads_overflows_alone,
    partial_frames_at_every_offset,
    ring_exhaustion_loses_nothing,
    idle_timeout_fires_only_on_silent_sessions,
    service_broadcast_reaches_everyone,
);

fn broadcast_arrives_complete_and_in_order(backend: Backend) {
    let _shared = ALLOCATION_COUNTING.read();
    const SESSIONS: usize = 500;
    const MESSAGES: u32 = 10_000;
    let (service, group, _record) = group_server(backend, 4 << 20);
    let addr = service.local_addr();
    let clients: Vec<TcpStream> = (0..SESSIONS).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(10), || group.len() == SESSIONS));
    let readers: Vec<_> = clients
        .chunks(SESSIONS / 10)
        .map(|chunk| {
            let mut chunk: Vec<TcpStream> = chunk.iter().map(|c| c.try_clone().unwrap()).collect();
            std::thread::spawn(move || {
                let mut done = vec![0u32; chunk.len()];
                let mut buf = vec![0u8; 8 * 512];
                // Round-robin over the clients so no socket buffer fills up.
                while done.iter().any(|&d| d < MESSAGES) {
                    for (i, client) in chunk.iter_mut().enumerate() {
                        if done[i] == MESSAGES {
                            continue;
                        }
                        let want = ((MESSAGES - done[i]) as usize * 8).min(buf.len());
                        client.read_exact(&mut buf[..want]).expect("read broadcast");
                        for message in buf[..want].chunks_exact(8) {
                            let seq = u32::from_le_bytes(message[..4].try_into().unwrap());
                            assert_eq!(seq, done[i], "messages arrive in order");
                            assert_eq!(&message[4..], b"BCST");
                            done[i] += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for seq in 0..MESSAGES {
        let mut message = Vec::with_capacity(8);
        message.extend_from_slice(&seq.to_le_bytes());
        message.extend_from_slice(b"BCST");
        assert_eq!(group.broadcast(&Bytes::from(message)), SESSIONS);
    }
    for reader in readers {
        reader.join().expect("every session got every message");
    }
    drop(clients);
    service.stop();
    service.join();
}

fn broadcast_shares_one_buffer(backend: Backend) {
    let _alone = ALLOCATION_COUNTING.write();
    const SESSIONS: usize = 50;
    const SIZE: usize = 1 << 20;
    let (service, group, _record) = group_server(backend, 8 << 20);
    let addr = service.local_addr();
    let clients: Vec<TcpStream> = (0..SESSIONS).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(10), || group.len() == SESSIONS));
    let data = Bytes::from(payload(SIZE, 42));
    // Reader buffers are allocated before counting starts.
    let buffers: Vec<Vec<u8>> = (0..SESSIONS).map(|_| vec![0u8; SIZE]).collect();
    let region = Region::new(GLOBAL);
    assert_eq!(group.broadcast(&data), SESSIONS);
    let readers: Vec<_> = clients
        .into_iter()
        .zip(buffers)
        .map(|(mut client, mut buf)| {
            std::thread::spawn(move || {
                client.read_exact(&mut buf).expect("read broadcast");
                buf
            })
        })
        .collect();
    let received: Vec<Vec<u8>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let allocated = region.change().bytes_allocated;
    // A copy per session would allocate SESSIONS MiB; sharing allocates only
    // queue and bookkeeping memory.
    assert!(
        allocated < SIZE * SESSIONS / 10,
        "{allocated} bytes allocated while broadcasting: the buffer was copied"
    );
    for bytes in &received {
        assert!(bytes[..] == data[..]);
    }
    service.stop();
    service.join();
}

fn member_that_never_reads_overflows_alone(backend: Backend) {
    let _shared = ALLOCATION_COUNTING.read();
    const HARD: usize = 1 << 20;
    let (service, group, record) = group_server(backend, HARD);
    let addr = service.local_addr();
    let stubborn = connect(addr);
    let readers: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || group.len() == 4));
    let message = Bytes::from(vec![5u8; 16 * 1024]);
    const COUNT: usize = 800; // 12.5 MiB: far past the stubborn reader's limit
    let reading: Vec<_> = readers
        .iter()
        .map(|r| {
            let mut r = r.try_clone().unwrap();
            std::thread::spawn(move || read_exact(&mut r, COUNT * 16 * 1024))
        })
        .collect();
    let handles = record.lock().handles.clone();
    let mut max_queued = 0;
    for _ in 0..COUNT {
        group.broadcast(&message);
        for handle in &handles {
            max_queued = max_queued.max(handle.queued_bytes());
        }
        // Let the polite readers keep up.
        while handles
            .iter()
            .filter(|h| h.is_connected())
            .filter(|h| h.peer_addr() != stubborn.local_addr().unwrap())
            .any(|h| !h.is_writable())
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for r in reading {
        let got = r.join().unwrap();
        assert!(got.iter().all(|&b| b == 5));
    }
    assert!(
        max_queued <= HARD,
        "queued {max_queued} > hard limit {HARD}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || record
            .lock()
            .disconnected
            .contains(&DisconnectReason::SendQueueOverflow)),
        "{:?}",
        record.lock().disconnected
    );
    let record_now = record.lock();
    assert_eq!(
        record_now
            .disconnected
            .iter()
            .filter(|r| **r == DisconnectReason::SendQueueOverflow)
            .count(),
        1,
        "only the stubborn member overflowed"
    );
    drop(record_now);
    assert_eq!(group.len(), 3);
    drop(stubborn);
    drop(readers);
    service.stop();
    service.join();
}

/// Parses `[len: u8][body]` frames and echoes each whole frame.
struct Frames;

impl Session for Frames {
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let Some(&len) = data.first() else { return 0 };
        let total = 1 + len as usize;
        if data.len() < total {
            return 0;
        }
        session.send_copy(&data[..total]).unwrap();
        total
    }
}

fn partial_frames_at_every_offset(backend: Backend) {
    let _shared = ALLOCATION_COUNTING.read();
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .session(|| Frames)
        .start()
        .unwrap();
    let mut client = connect(service.local_addr());
    let mut stream = Vec::new();
    for (i, len) in [0u8, 1, 5, 17, 60].iter().enumerate() {
        stream.push(*len);
        stream.extend(payload(*len as usize, i as u64 + 3));
    }
    for split in 1..stream.len() {
        write_all(&mut client, &stream[..split]);
        std::thread::sleep(Duration::from_millis(2));
        write_all(&mut client, &stream[split..]);
        assert_eq!(
            read_exact(&mut client, stream.len()),
            stream,
            "split at {split}"
        );
    }
    drop(client);
    service.stop();
    service.join();
}

fn ring_exhaustion_loses_nothing(backend: Backend) {
    let _shared = ALLOCATION_COUNTING.read();
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .receive_buffers(64, 4)
        .session(|| RecordingEcho {
            record: Default::default(),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let floods: Vec<_> = (0..4)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut client = connect(addr);
                let data = payload(1 << 20, seed + 100);
                let mut reader = client.try_clone().unwrap();
                let len = data.len();
                let read = std::thread::spawn(move || read_exact(&mut reader, len));
                write_all(&mut client, &data);
                assert!(read.join().unwrap() == data, "flood {seed} echoed intact");
            })
        })
        .collect();
    for flood in floods {
        flood.join().unwrap();
    }
    service.stop();
    service.join();
}

/// A session that receives nothing for the idle timeout is closed with
/// `IdleTimeout`: never before the timeout has passed since its last byte,
/// and within one housekeeping period (100 ms) plus scheduling slack after;
/// a session that keeps talking is never touched.
fn idle_timeout_fires_only_on_silent_sessions(backend: Backend) {
    const IDLE: Duration = Duration::from_millis(400);
    /// Housekeeping period (100 ms) and generous scheduling slack.
    const LATE: Duration = Duration::from_millis(1_600);
    let _shared = ALLOCATION_COUNTING.read();
    let record: Shared = Default::default();
    let r = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .idle_timeout(IDLE)
        .session(move || RecordingEcho {
            record: Arc::clone(&r),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let mut chatty = connect(addr);
    let mut silent = connect(addr);
    // The silent peer talks once: the timeout counts from its last byte,
    // which the server received after `sent` and before `echoed`.
    let sent = Instant::now();
    write_all(&mut silent, b"once");
    assert_eq!(read_exact(&mut silent, 4), b"once");
    let echoed = Instant::now();
    silent.set_nonblocking(true).unwrap();

    let deadline = echoed + IDLE + LATE;
    let closed_at = loop {
        write_all(&mut chatty, b"tick");
        assert_eq!(read_exact(&mut chatty, 4), b"tick");
        let mut buf = [0u8; 1];
        match silent.read(&mut buf) {
            Ok(0) => break Instant::now(),
            Ok(_) => panic!("the silent peer was sent data"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("the silent peer was not closed in order: {error}"),
        }
        assert!(
            Instant::now() < deadline,
            "not closed {:?} after its last byte",
            IDLE + LATE
        );
        // Paces the chatty peer, far below the timeout; decides nothing.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        closed_at.duration_since(sent) >= IDLE,
        "closed {:?} after its last byte, before the timeout",
        closed_at.duration_since(sent)
    );
    assert_eq!(
        record.lock().disconnected,
        vec![DisconnectReason::IdleTimeout]
    );
    write_all(&mut chatty, b"still");
    assert_eq!(read_exact(&mut chatty, 5), b"still");
    drop(chatty);
    service.stop();
    service.join();
}

fn service_broadcast_reaches_everyone(backend: Backend) {
    let _shared = ALLOCATION_COUNTING.read();
    let (service, group, _record) = group_server(backend, 4 << 20);
    let addr = service.local_addr();
    let mut clients: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || group.len() == 20));
    service.broadcast(Bytes::from_static(b"to everyone"));
    for client in &mut clients {
        assert_eq!(read_exact(client, 11), b"to everyone");
    }
    drop(clients);
    service.stop();
    service.join();
}
