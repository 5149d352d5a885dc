//! Send coalescing over real loopback sockets, on every backend: order and
//! completeness with many sessions, at most one write per interval under a
//! flood, an explicit flush that goes out at once, and a stop that writes
//! every held byte before the FIN.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use servercore::{Backend, DisconnectReason, ServerService, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

backend_tests!(
    numbered_sends_to_100_sessions_arrive_complete_and_in_order,
    a_flood_gets_at_most_one_write_per_interval,
    an_explicit_flush_goes_out_at_once,
    stop_writes_held_bytes_before_eof,
);

fn coalescing_server(
    backend: Backend,
    interval: Duration,
    max_bytes: usize,
) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .send_coalescing(interval)
        .coalesce_max_bytes(max_bytes)
        .session(move || Quiet {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

fn handles(record: &Shared, count: usize) -> Vec<SessionHandle> {
    assert!(wait_until(Duration::from_secs(10), || record
        .lock()
        .connected
        == count));
    record.lock().handles.clone()
}

/// Message `seq` for session `session`: 8 bytes.
fn numbered(session: u32, seq: u32) -> Bytes {
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&session.to_le_bytes());
    message[4..].copy_from_slice(&seq.to_le_bytes());
    Bytes::copy_from_slice(&message)
}

fn numbered_sends_to_100_sessions_arrive_complete_and_in_order(backend: Backend) {
    const SESSIONS: usize = 100;
    const PER_SESSION: u32 = 100;
    let (service, record) = coalescing_server(backend, Duration::from_millis(5), 32 * 1024);
    let addr = service.local_addr();
    let clients: Vec<TcpStream> = (0..SESSIONS).map(|_| connect(addr)).collect();
    let handles = handles(&record, SESSIONS);
    // Each client learns its session's number from its first message.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || read_exact(&mut client, PER_SESSION as usize * 8))
        })
        .collect();
    let senders: Vec<_> = handles
        .chunks(SESSIONS / 4)
        .enumerate()
        .map(|(part, handles)| {
            let handles = handles.to_vec();
            std::thread::spawn(move || {
                for seq in 0..PER_SESSION {
                    for (i, handle) in handles.iter().enumerate() {
                        let session = (part * (SESSIONS / 4) + i) as u32;
                        handle.send(numbered(session, seq)).expect("send");
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let mut seen = [false; SESSIONS];
    for reader in readers {
        let received = reader.join().expect("every byte arrives");
        let session = u32::from_le_bytes(received[..4].try_into().unwrap()) as usize;
        assert!(!seen[session], "one client per session");
        seen[session] = true;
        for (seq, message) in received.chunks_exact(8).enumerate() {
            assert_eq!(message, &numbered(session as u32, seq as u32)[..]);
        }
    }
    assert!(seen.iter().all(|&s| s));
    service.stop();
    service.join();
}

fn a_flood_gets_at_most_one_write_per_interval(backend: Backend) {
    const INTERVAL: Duration = Duration::from_millis(20);
    /// Bursts of 16 sends every half millisecond or so: over half a second.
    const BURSTS: usize = 1000;
    const MESSAGE: usize = 64;
    // The byte bound is far above what the flood queues per interval, so
    // only the interval ends a hold.
    let (service, record) = coalescing_server(backend, INTERVAL, 4 << 20);
    let mut client = connect(service.local_addr());
    let handle = handles(&record, 1).remove(0);
    let writes_before = handle.write_count();
    let start = Instant::now();
    let flood = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let message = Bytes::from(vec![9u8; MESSAGE]);
            for _ in 0..BURSTS {
                for _ in 0..16 {
                    handle.send(message.clone()).expect("send");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let sent = BURSTS * 16;
    let received = read_exact(&mut client, sent * MESSAGE).len();
    flood.join().unwrap();
    assert_eq!(received, sent * MESSAGE);
    let elapsed = start.elapsed();
    let writes = handle.write_count() - writes_before;
    let allowed = (elapsed.as_micros() / INTERVAL.as_micros()) as u64 + 1;
    assert!(
        writes <= allowed,
        "{writes} writes in {elapsed:?} for {sent} sends: at most {allowed}"
    );
    assert!(
        writes >= 2 && (writes as usize) < sent / 10,
        "{writes} writes for {sent} sends"
    );
    drop(client);
    service.stop();
    service.join();
}

/// Reads what arrives within `limit` (up to `len` bytes).
fn read_within(client: &mut TcpStream, len: usize, limit: Duration) -> Vec<u8> {
    let end = Instant::now() + limit;
    let mut data = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.set_read_timeout(Some(left)).unwrap();
        match client.read(&mut data[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break
            }
            Err(error) => panic!("read: {error}"),
        }
    }
    data.truncate(filled);
    data
}

fn an_explicit_flush_goes_out_at_once(backend: Backend) {
    const INTERVAL: Duration = Duration::from_secs(2);
    const SOON: Duration = Duration::from_millis(500);
    let (service, record) = coalescing_server(backend, INTERVAL, 1 << 20);
    let mut client = connect(service.local_addr());
    let handle = handles(&record, 1).remove(0);
    // The first write of a session is not held.
    handle.send(numbered(0, 0)).unwrap();
    assert_eq!(read_within(&mut client, 8, SOON), &numbered(0, 0)[..]);
    // The next one waits for the interval...
    handle.send(numbered(0, 1)).unwrap();
    assert_eq!(read_within(&mut client, 8, Duration::from_millis(200)), b"");
    // ...unless the app sends something that must go now: both go.
    handle.send_now(numbered(0, 2)).unwrap();
    let mut expected = numbered(0, 1).to_vec();
    expected.extend_from_slice(&numbered(0, 2));
    assert_eq!(read_within(&mut client, 16, SOON), expected);
    // And `flush` writes what is held.
    handle.send(numbered(0, 3)).unwrap();
    handle.flush();
    assert_eq!(read_within(&mut client, 8, SOON), &numbered(0, 3)[..]);
    drop(client);
    service.stop();
    service.join();
}

fn stop_writes_held_bytes_before_eof(backend: Backend) {
    const MESSAGES: u32 = 1000;
    let (service, record) = coalescing_server(backend, Duration::from_secs(2), 1 << 20);
    let mut client = connect(service.local_addr());
    let handle = handles(&record, 1).remove(0);
    handle.send(numbered(0, 0)).unwrap();
    assert_eq!(read_exact(&mut client, 8), &numbered(0, 0)[..]);
    for seq in 1..MESSAGES {
        handle.send(numbered(0, seq)).unwrap();
    }
    service.stop();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("held bytes, then EOF");
    assert_eq!(rest.len(), (MESSAGES as usize - 1) * 8);
    for (i, message) in rest.chunks_exact(8).enumerate() {
        assert_eq!(message, &numbered(0, i as u32 + 1)[..]);
    }
    drop(client);
    service.join();
    assert_eq!(record.lock().disconnected, vec![DisconnectReason::Shutdown]);
}
