//! Wake batching (`wake_batching`) over real loopback sockets, on every
//! backend (io_uring honours it where the kernel has `min_wait`; poll
//! ignores it): a batched wait still wakes for a lone packet, a trickle of
//! small packets comes back complete and in order, and sends from another
//! thread still wake the worker.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use servercore::{Backend, ServerService};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

backend_tests!(
    a_lone_packet_on_an_idle_worker_is_answered,
    a_trickle_of_small_packets_comes_back_whole_and_in_order,
    a_send_from_another_thread_wakes_a_batched_worker,
);

/// An echo server whose workers batch their wakes over `window`.
fn batched_echo(backend: Backend, window: Duration) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .wake_batching(window)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

/// The first completion ends a batched wait once the window is over: a
/// single packet with nothing else going on must not wait for a batch that
/// never comes.
fn a_lone_packet_on_an_idle_worker_is_answered(backend: Backend) {
    let (service, _record) = batched_echo(backend, Duration::from_millis(20));
    let mut client = connect(service.local_addr());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    for round in 0..5u8 {
        // Idle between rounds: the worker is asleep when each arrives.
        std::thread::sleep(Duration::from_millis(50));
        write_all(&mut client, &[round; 3]);
        assert_eq!(read_exact(&mut client, 3), vec![round; 3], "round {round}");
    }
    service.stop();
}

/// 300 packets of 7 bytes, one every 200 µs (several per batch window):
/// every byte comes back, in order.
fn a_trickle_of_small_packets_comes_back_whole_and_in_order(backend: Backend) {
    let (service, record) = batched_echo(backend, Duration::from_millis(2));
    let mut client = connect(service.local_addr());
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sent = payload(300 * 7, 11);
    let mut reader = client.try_clone().expect("clone");
    let expected = sent.len();
    let reading = std::thread::spawn(move || {
        let mut got = vec![0u8; expected];
        reader.read_exact(&mut got).expect("echo");
        got
    });
    for chunk in sent.chunks(7) {
        write_all(&mut client, chunk);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(reading.join().expect("reader"), sent);
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .sent_bytes
        == expected));
    assert_eq!(record.lock().connected, 1);
    service.stop();
}

/// A send queued from a thread that is not the worker's wakes it (the
/// cross-thread wake is a completion like any other).
fn a_send_from_another_thread_wakes_a_batched_worker(backend: Backend) {
    let (service, record) = batched_echo(backend, Duration::from_millis(20));
    let mut client = connect(service.local_addr());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .connected
        == 1));
    let handle = record.lock().handles[0].clone();
    for round in 0..5u8 {
        std::thread::sleep(Duration::from_millis(50));
        handle.send_copy(&[b'a' + round; 4]).expect("send");
        assert_eq!(read_exact(&mut client, 4), vec![b'a' + round; 4]);
    }
    service.stop();
}
