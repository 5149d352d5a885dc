//! "No allocation per packet in the steady state", measured: a counting
//! global allocator counts this thread's allocations while packets are built
//! with the generated `make_packet` (servercore's pooled writer).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;

use servercore_protocol::{make_packet, SChat, SLogin};

struct Counting;

thread_local! {
    // `const` and without a destructor: usable from inside the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards every call to the system allocator unchanged; the
// counter is a plain thread-local cell that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
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
    let before = allocations();
    let boxed = std::hint::black_box(Box::new(7u64));
    assert_eq!(allocations() - before, 1);
    drop(boxed);
}

#[test]
fn packets_written_and_freed_allocate_nothing() {
    let msg = chat();
    let login = SLogin {
        success: true,
        players: vec![Default::default(); 3],
    };
    // Warm up: the first chunk of this thread.
    drop(make_packet(&msg));

    let before = allocations();
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
    let allocated = allocations() - before;
    assert!(total > 6_000_000, "{total} bytes built");
    assert_eq!(allocated, 0, "allocations while building 100000 packets");
}

#[test]
fn packets_kept_in_flight_allocate_only_per_chunk() {
    let msg = chat();
    // A send queue of 256 packets in flight at any time.
    let mut in_flight = VecDeque::with_capacity(256);
    drop(make_packet(&msg));

    let before = allocations();
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
    let allocated = allocations() - before;
    // A new 64 KiB chunk (its buffer and its shared header: 2 allocations)
    // only when the current one is full while packets of it are in flight.
    let chunks = bytes / (64 * 1024) + 1;
    assert!(
        allocated <= 2 * chunks,
        "{allocated} allocations for {packets} packets ({chunks} chunks' worth)"
    );
    assert!(allocated * 100 < packets, "far below one per packet");
}
