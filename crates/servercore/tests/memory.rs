//! The send limits bound real memory, and memory comes back after a peak:
//! measured with an instrumented allocator (bytes in live allocations over
//! the whole process), over real loopback sockets, on every backend.

use std::alloc::System;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use servercore::{Backend, DisconnectReason, ServerService};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator's counts are process-wide: one test at a time.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

backend_tests!(
    a_never_reading_peer_under_a_flood_of_small_packets_is_cut_near_the_limit_in_memory,
    queues_and_pools_give_their_memory_back_after_a_peak,
);

/// Bytes in live allocations since `region` began.
fn in_use(region: &Region<System>) -> isize {
    let stats = region.change();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

fn quiet_server(backend: Backend, hard_limit: usize) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .send_limits(hard_limit / 4, hard_limit / 2, hard_limit)
        .session(move || Quiet {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

/// A client whose receive buffer is small, so the kernel takes little of
/// what the server writes (set before connecting, as TCP requires).
fn small_window_client(service: &ServerService) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&service.local_addr().into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// 8-byte packets, each in an allocation of its own, to a peer that never
/// reads: the queue must be disconnected where what it holds in memory (the packets,
/// their queue slots, the batch being written) reaches about the limit, not
/// where their payload alone does, which takes nine times as much memory.
fn a_never_reading_peer_under_a_flood_of_small_packets_is_cut_near_the_limit_in_memory(
    backend: Backend,
) {
    const HARD: usize = 1 << 20;
    let _alone = ONE_AT_A_TIME.lock();
    let (service, record) = quiet_server(backend, HARD);
    let client = small_window_client(&service);
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    let handle = record.lock().handles[0].clone();

    let region = Region::new(GLOBAL);
    let mut peak = 0;
    let mut sent = 0u64;
    while handle
        .send(Bytes::copy_from_slice(&sent.to_le_bytes()))
        .is_ok()
    {
        sent += 1;
        if sent % 256 == 0 {
            peak = peak.max(in_use(&region));
        }
        assert!(sent < 50_000_000, "the flood was never cut");
    }
    peak = peak.max(in_use(&region));
    assert!(wait_until(Duration::from_secs(5), || !record
        .lock()
        .disconnected
        .is_empty()));
    assert_eq!(
        record.lock().disconnected,
        [DisconnectReason::SendQueueOverflow]
    );
    let bound = (2 * HARD + 256 * 1024) as isize;
    assert!(
        peak <= bound,
        "{sent} packets of 8 bytes held {peak} bytes at the peak; the limit is {HARD}, \
         the bound {bound}"
    );
    drop(client);
    service.stop();
    service.join();
}

/// A peak (sessions with deep queues of small packets, drained by readers
/// that start late), then quiet: the queues' and the worker's pooled
/// capacity is given back, not kept at the peak's size.
fn queues_and_pools_give_their_memory_back_after_a_peak(backend: Backend) {
    const SESSIONS: usize = 50;
    const PACKETS: usize = 8192;
    const PACKET: &[u8] = b"0123456789abcdef";
    let _alone = ONE_AT_A_TIME.lock();
    let (service, record) = quiet_server(backend, 64 << 20);
    let clients: Vec<TcpStream> = (0..SESSIONS)
        .map(|_| small_window_client(&service))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == SESSIONS));
    let handles = record.lock().handles.clone();
    // Let the first housekeeping rounds settle what connecting allocated.
    std::thread::sleep(Duration::from_millis(300));

    let region = Region::new(GLOBAL);
    for handle in &handles {
        for _ in 0..PACKETS {
            handle.send(Bytes::from_static(PACKET)).unwrap();
        }
    }
    let at_peak = in_use(&region);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let mut data = vec![0u8; PACKETS * PACKET.len()];
                client.read_exact(&mut data).unwrap();
                assert!(data.chunks(PACKET.len()).all(|chunk| chunk == PACKET));
                client
            })
        })
        .collect();
    let clients: Vec<TcpStream> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(wait_until(Duration::from_secs(5), || handles
        .iter()
        .all(|handle| handle.queued_bytes() == 0)));
    // Quiet for longer than the pools' trim interval.
    let bound = (SESSIONS * 2048 + 128 * 1024) as isize;
    let returned = wait_until(Duration::from_secs(4), || in_use(&region) <= bound);
    assert!(
        returned,
        "{} bytes still held after the peak ({at_peak} at the peak), over {SESSIONS} idle \
         sessions; the bound is {bound}",
        in_use(&region)
    );
    drop(clients);
    service.stop();
    service.join();
}
