//! "No allocation per packet in the steady state", measured: a counting
//! global allocator counts the allocations while packets are built
//! with the generated `make_packet` (servercore's pooled writer).

use std::alloc::System;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use servercore_protocol::{make_packet, SChat, SLogin};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The allocator counts every thread: the tests of this file take turns so
/// that each counts only its own allocations.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn chat() -> SChat {
    SChat {
        player_id: 42,
        msg: "a chat line of a realistic length, say forty-some bytes".into(),
        client_time_us: 1_700_000_000_123_456,
    }
}

#[test]
fn the_counter_counts() {
    let _turn = serial();
    let region = Region::new(GLOBAL);
    let boxed = std::hint::black_box(Box::new(7u64));
    assert_eq!(region.change().allocations, 1);
    drop(boxed);
}

#[test]
fn packets_written_and_freed_allocate_nothing() {
    let _turn = serial();
    let msg = chat();
    let login = SLogin {
        success: true,
        players: vec![Default::default(); 3],
        ..SLogin::default()
    };
    // Warm up: the first chunk of this thread.
    drop(make_packet(&msg));

    let region = Region::new(GLOBAL);
    let mut total = 0usize;
    for i in 0..100_000 {
        // Built, "written", dropped: the chunk is reclaimed when exhausted.
        let packet = if i % 10 == 0 {
            make_packet(&login)
        } else {
            make_packet(&msg)
        };
        total += packet.len();
    }
    let allocated = region.change().allocations as u64;
    assert!(total > 6_000_000, "{total} bytes built");
    // The count is process-wide: the test harness's own threads may allocate
    // a handful of times meanwhile. One allocation per packet would be 100000.
    assert!(
        allocated < 50,
        "{allocated} allocations while building 100000 packets"
    );
}

#[test]
fn packets_kept_in_flight_allocate_only_per_chunk() {
    let _turn = serial();
    let msg = chat();
    // A send queue of 256 packets in flight at any time.
    let mut in_flight = VecDeque::with_capacity(256);
    drop(make_packet(&msg));

    let region = Region::new(GLOBAL);
    let packets = 100_000u64;
    let mut bytes = 0u64;
    for _ in 0..packets {
        if in_flight.len() == 256 {
            in_flight.pop_front();
        }
        let packet = make_packet(&msg);
        bytes += packet.len() as u64;
        in_flight.push_back(packet);
    }
    let allocated = region.change().allocations as u64;
    // A new 64 KiB chunk (its buffer and its shared header: 2 allocations)
    // only when the current one is full while packets of it are in flight.
    let chunks = bytes / (64 * 1024) + 1;
    assert!(
        // (plus a few of the test harness's own: the count is process-wide)
        allocated <= 2 * chunks + 50,
        "{allocated} allocations for {packets} packets ({chunks} chunks' worth)"
    );
    assert!(allocated * 100 < packets, "far below one per packet");
}
