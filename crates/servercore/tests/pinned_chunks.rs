//! A small packet waiting in a slow session's queue must not keep its whole
//! pooled writer chunk alive: the send limit bounds real memory. On every
//! backend, over real loopback sockets.

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use servercore::packet::{PacketWriter, CHUNK_SIZE};
use servercore::{Backend, ServerService};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocation count is process-wide: one test at a time.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

backend_tests!(stragglers_do_not_pin_their_chunks);

fn stragglers_do_not_pin_their_chunks(backend: Backend) {
    const PACKETS: usize = 400;
    const BLOB: usize = 8 << 20;
    let _alone = ONE_AT_A_TIME.lock();
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .send_limits(1 << 20, 2 << 20, 32 << 20)
        .session(move || Quiet {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    let mut client = connect(service.local_addr());
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    let handle = record.lock().handles[0].clone();
    // Fill the socket: the client does not read yet, so what follows waits
    // in the session's queue.
    let blob = Bytes::from(payload(BLOB, 3));
    handle.send(blob.clone()).unwrap();
    let mut last = usize::MAX;
    assert!(wait_until(Duration::from_secs(5), || {
        let now = handle.queued_bytes();
        let settled = now == last && now > 0;
        last = now;
        std::thread::sleep(Duration::from_millis(20));
        settled
    }));

    let region = Region::new(GLOBAL);
    let mut expected = Vec::new();
    for n in 0..PACKETS {
        // Each packet is disconnected from a chunk of its own; the writer goes away,
        // so the queued packet is the chunk's only user.
        let mut writer = PacketWriter::new();
        let packet = writer.write_raw(7, &(n as u32).to_le_bytes()).unwrap();
        expected.extend_from_slice(&packet);
        handle.send(packet).unwrap();
    }
    let held = |region: &Region<System>| {
        let stats = region.change();
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize
    };
    let pinned_before_compaction = held(&region);
    let bound = (PACKETS * CHUNK_SIZE / 8) as isize;
    assert!(
        wait_until(Duration::from_secs(3), || held(&region) < bound),
        "{PACKETS} queued packets of 8 bytes still hold {} bytes (at first {pinned_before_compaction})",
        held(&region)
    );

    // Everything still arrives, in order.
    let received = read_exact(&mut client, BLOB + expected.len());
    assert!(received[..BLOB] == blob[..]);
    assert!(received[BLOB..] == expected[..]);
    drop(client);
    service.stop();
    service.join();
}
