//! The send path's bookkeeping over real loopback sockets, on every backend:
//! `is_writable()` under concurrent senders, the `DropNewest` overflow
//! policy, and group broadcasts that never hold the group's lock while they
//! send.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use servercore::{
    Backend, DisconnectReason, OverflowPolicy, SendError, ServerService, SessionGroup,
    SessionHandle,
};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

backend_tests!(
    is_writable_returns_after_eight_concurrent_senders,
    drop_newest_refuses_and_keeps_the_session,
    a_send_inside_broadcast_except_runs_without_the_group_lock,
    a_batch_goes_out_in_one_write_and_all_or_nothing,
);

fn quiet_server(
    backend: Backend,
    low: usize,
    high: usize,
    hard: usize,
    policy: OverflowPolicy,
) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .send_limits(low, high, hard)
        .overflow_policy(policy)
        .session(move || Quiet {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

fn first_handle(record: &Shared) -> SessionHandle {
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    record.lock().handles[0].clone()
}

fn is_writable_returns_after_eight_concurrent_senders(backend: Backend) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 40;
    const PER_THREAD: usize = 200;
    const MESSAGE: usize = 64;
    // Every message passes the high watermark, so every send competes with
    // the worker's "writable again" on the same flag.
    let (service, record) = quiet_server(backend, 0, 1, 64 << 20, OverflowPolicy::Disconnect);
    let mut client = connect(service.local_addr());
    let handle = first_handle(&record);
    let message = Bytes::from(vec![3u8; MESSAGE]);
    for round in 0..ROUNDS {
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let senders: Vec<_> = (0..THREADS)
            .map(|_| {
                let handle = handle.clone();
                let message = message.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..PER_THREAD {
                        handle.send(message.clone()).expect("send");
                    }
                })
            })
            .collect();
        let received = read_exact(&mut client, THREADS * PER_THREAD * MESSAGE);
        assert!(received.iter().all(|&b| b == 3));
        for sender in senders {
            sender.join().unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(2), || handle.queued_bytes() == 0),
            "round {round}: the queue drains"
        );
        assert!(
            wait_until(Duration::from_secs(2), || handle.is_writable()),
            "round {round}: writable again with an empty queue (queued {})",
            handle.queued_bytes()
        );
    }
    drop(client);
    service.stop();
    service.join();
}

fn drop_newest_refuses_and_keeps_the_session(backend: Backend) {
    const HARD: usize = 256 * 1024;
    let (service, record) = quiet_server(
        backend,
        16 * 1024,
        64 * 1024,
        HARD,
        OverflowPolicy::DropNewest,
    );
    let mut client = connect(service.local_addr());
    let handle = first_handle(&record);
    // Numbered 1 KiB messages until the queue refuses one; the client does
    // not read, so the socket fills and the queue passes the hard limit.
    let mut accepted = 0u32;
    let mut refused = 0;
    let message = |n: u32| {
        let mut data = vec![0u8; 1024];
        data[..4].copy_from_slice(&n.to_le_bytes());
        Bytes::from(data)
    };
    let limit = std::time::Instant::now() + Duration::from_secs(10);
    while refused < 10 {
        assert!(std::time::Instant::now() < limit, "the queue never filled");
        match handle.send(message(accepted)) {
            Ok(()) => accepted += 1,
            Err(error) => {
                assert_eq!(error, SendError::QueueFull);
                refused += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    assert!(
        handle.queued_bytes() <= HARD,
        "{} queued",
        handle.queued_bytes()
    );
    assert!(handle.is_connected(), "DropNewest keeps the session");
    // Everything accepted arrives, in order, with nothing refused among it.
    let received = read_exact(&mut client, accepted as usize * 1024);
    for (n, chunk) in received.chunks_exact(1024).enumerate() {
        assert_eq!(u32::from_le_bytes(chunk[..4].try_into().unwrap()), n as u32);
    }
    assert!(wait_until(Duration::from_secs(2), || handle.is_writable()));
    handle
        .send(message(accepted))
        .expect("accepted again once drained");
    assert_eq!(read_exact(&mut client, 1024), &message(accepted)[..]);
    assert!(record.lock().disconnected.is_empty());
    drop(client);
    service.stop();
    service.join();
}

/// On every log event it sees, asks the group how many members it has: a
/// group that still holds its lock then deadlocks.
struct AsksTheGroup {
    group: Arc<SessionGroup>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AsksTheGroup {
    fn on_event(
        &self,
        _event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let _ = self.group.len();
    }
}

fn a_send_inside_broadcast_except_runs_without_the_group_lock(backend: Backend) {
    use tracing_subscriber::layer::SubscriberExt;
    // The member overflows at once, so its send logs a warning.
    let (service, record) = quiet_server(backend, 0, 1, 1024, OverflowPolicy::Disconnect);
    let _client = connect(service.local_addr());
    let handle = first_handle(&record);
    let group = Arc::new(SessionGroup::new());
    assert!(group.add(handle.clone()));
    let (done_tx, done_rx) = mpsc::channel();
    let broadcaster = {
        let group = Arc::clone(&group);
        std::thread::spawn(move || {
            let subscriber = tracing_subscriber::registry().with(AsksTheGroup {
                group: Arc::clone(&group),
            });
            let delivered = tracing::subscriber::with_default(subscriber, || {
                group.broadcast_except(&Bytes::from(vec![1u8; 4096]), None)
            });
            let _ = done_tx.send(delivered);
        })
    };
    let delivered = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the broadcast finished (no lock held across the member's send)");
    broadcaster.join().unwrap();
    assert_eq!(delivered, 0, "the overflowing member was not queued to");
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .disconnected
        == vec![DisconnectReason::SendQueueOverflow]));
    assert_eq!(group.len(), 0, "the closed member left the group");
    service.stop();
    service.join();
}

/// `send_batch` queues its buffers as one unit: they arrive in order in one
/// gathered write; a batch past the hard limit queues none of them.
fn a_batch_goes_out_in_one_write_and_all_or_nothing(backend: Backend) {
    const HARD: usize = 4096;
    let (service, record) = quiet_server(backend, 1024, 2048, HARD, OverflowPolicy::DropNewest);
    let mut client = connect(service.local_addr());
    let handle = first_handle(&record);
    let parts: Vec<Bytes> = (0..10u8)
        .map(|i| Bytes::from(vec![b'a' + i; usize::from(i) + 1]))
        .collect();
    let expected: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
    // Let the first write (none yet) settle so the count below is this batch's.
    let writes_before = handle.write_count();
    handle
        .send_batch(parts.iter().cloned().chain([Bytes::new()]))
        .expect("batch");
    assert_eq!(read_exact(&mut client, expected.len()), expected);
    assert!(wait_until(Duration::from_secs(5), || handle.queued_bytes() == 0));
    assert_eq!(
        handle.write_count() - writes_before,
        1,
        "ten buffers queued as one batch go out in one write"
    );
    // Past the hard limit: refused whole, nothing of it is written.
    let too_big = vec![
        Bytes::from(vec![b'x'; HARD / 2]),
        Bytes::from(vec![b'y'; HARD]),
    ];
    assert_eq!(handle.send_batch(too_big), Err(SendError::QueueFull));
    assert_eq!(handle.queued_bytes(), 0);
    handle.send(Bytes::from_static(b"end")).expect("still open");
    assert_eq!(read_exact(&mut client, 3), b"end");
    assert!(handle.is_connected());
    drop(client);
    service.stop();
    service.join();
}
