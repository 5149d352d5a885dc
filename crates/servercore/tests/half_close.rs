//! Closing without losing replies, on every backend: a peer that sends and
//! then half-closes (`shutdown(SHUT_WR)`) still receives everything the
//! server owes it, and an application `disconnect()` delivers what was queued
//! before it, ending in FIN (never RST) while the peer keeps sending.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use servercore::{Backend, DisconnectReason, ServerService, Session, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

backend_tests!(
    fifty_clients_echo_a_mebibyte_then_half_close,
    one_client_sends_100_kb_then_half_closes,
    disconnect_delivers_the_reply_then_fin_while_peer_keeps_sending,
);

fn echo_server(backend: Backend) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(5))
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

fn stop(service: &ServerService) {
    service.stop();
    service.join();
    let stats = service.stats();
    assert_eq!(stats.live_slots, 0, "every slot freed: {stats:?}");
}

/// Reads until EOF or an error; returns what arrived and how it ended.
fn read_to_end_or_error(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (data, None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return (data, Some(error.kind())),
        }
    }
}

/// Sends `payload`, half-closes, and reads the echo to the end in parallel.
fn echo_and_half_close(
    addr: std::net::SocketAddr,
    payload: Vec<u8>,
) -> (Vec<u8>, Option<ErrorKind>) {
    let mut stream = connect(addr);
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        writer.write_all(&payload).expect("write");
        writer.shutdown(Shutdown::Write).expect("shutdown");
    });
    let result = read_to_end_or_error(&mut stream);
    sender.join().expect("writer");
    result
}

fn fifty_clients_echo_a_mebibyte_then_half_close(backend: Backend) {
    const CLIENTS: usize = 50;
    const LEN: usize = 1 << 20;
    let (service, record) = echo_server(backend);
    let addr = service.local_addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let payload = payload(LEN, i as u64 + 1);
                let (echo, error) = echo_and_half_close(addr, payload.clone());
                (echo == payload, echo.len(), error)
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let complete = results.iter().filter(|(same, _, _)| *same).count();
    assert_eq!(
        complete,
        CLIENTS,
        "clients with the full echo, byte for byte (others: {:?})",
        results
            .iter()
            .filter(|(same, _, _)| !same)
            .map(|(_, len, error)| (len, error))
            .collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(_, _, error)| error.is_none()));
    assert!(wait_until(Duration::from_secs(10), || record
        .lock()
        .disconnected
        .len()
        == CLIENTS));
    let reasons = record.lock().disconnected.clone();
    assert!(
        reasons.iter().all(|r| *r == DisconnectReason::ClosedByPeer),
        "{reasons:?}"
    );
    stop(&service);
}

fn one_client_sends_100_kb_then_half_closes(backend: Backend) {
    let (service, record) = echo_server(backend);
    let payload = payload(100_000, 7);
    let (echo, error) = echo_and_half_close(service.local_addr(), payload.clone());
    assert_eq!(error, None, "ends in EOF");
    assert_eq!(echo.len(), payload.len());
    assert!(echo == payload, "the echo arrives byte for byte");
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .disconnected
        .len()
        == 1));
    assert_eq!(
        record.lock().disconnected,
        vec![DisconnectReason::ClosedByPeer]
    );
    stop(&service);
}

/// Length of the reply queued before `disconnect()`.
const REPLY_LEN: usize = 512 * 1024;

/// On its first bytes: queues a large reply, then disconnects; counts what
/// it is shown afterwards.
struct ReplyThenDisconnect {
    record: Shared,
    replied: bool,
}

impl Session for ReplyThenDisconnect {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.record.lock().connected += 1;
        self.record.lock().handles.push(session.clone());
    }

    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        if !self.replied {
            self.replied = true;
            session
                .send(bytes::Bytes::from(payload(REPLY_LEN, 99)))
                .expect("queue the reply");
            session.disconnect();
        }
        data.len()
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn disconnect_delivers_the_reply_then_fin_while_peer_keeps_sending(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .session(move || ReplyThenDisconnect {
            record: Arc::clone(&shared),
            replied: false,
        })
        .start()
        .expect("start");
    let mut stream = connect(service.local_addr());
    let done = Arc::new(AtomicBool::new(false));
    let mut writer = stream.try_clone().expect("clone");
    let keep_sending = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            // The peer goes on talking until it has seen the end.
            let chunk = vec![5u8; 16 * 1024];
            let mut sent = 0usize;
            while !done.load(Ordering::Acquire) && sent < (256 << 20) {
                if writer.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        })
    };
    // Read slowly at first, so the reply is still queued at the server
    // while the peer's bytes keep arriving there.
    std::thread::sleep(Duration::from_millis(50));
    let (reply, error) = read_to_end_or_error(&mut stream);
    done.store(true, Ordering::Release);
    keep_sending.join().unwrap();
    assert_eq!(error, None, "the reply ends in FIN, not RST");
    assert_eq!(reply.len(), REPLY_LEN);
    assert!(reply == payload(REPLY_LEN, 99), "the reply arrives in full");
    drop(stream);
    assert!(wait_until(Duration::from_secs(5), || record
        .lock()
        .disconnected
        .len()
        == 1));
    assert_eq!(
        record.lock().disconnected,
        vec![DisconnectReason::ClosedByApp]
    );
    stop(&service);
}
