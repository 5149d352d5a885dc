//! Service robustness over real loopback sockets, on every backend: restart
//! on the same port, accept errors at the descriptor limit, session ids over
//! many reconnects, counters.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use servercore::{Backend, ServerService};
use servercore_testkit::backend_tests;
use servercore_testkit::{logging::*, net::*, sessions::*};

backend_tests!(
    stop_and_rebind_twenty_times_on_the_same_port,
    bind_retries_while_the_port_is_taken,
    accept_errors_at_the_descriptor_limit_are_logged_once_per_second,
    seventy_thousand_reconnects_through_one_slot_never_repeat_an_id,
    counters_move_by_exactly_the_traffic_sent,
    a_coalesced_flush_is_counted,
);

fn start_on(backend: Backend, addr: SocketAddr, record: &Shared) -> ServerService {
    let shared = Arc::clone(record);
    ServerService::builder(addr)
        .backend(backend)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        // No retry: the port must be free at the first try.
        .bind_retry(Duration::ZERO)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap_or_else(|error| panic!("bind {addr}: {error:?}"))
}

/// A restart right after a graceful stop binds at the first try: the
/// listening socket is released when the service stops, not when the kernel
/// gets round to tearing down the ring.
fn stop_and_rebind_twenty_times_on_the_same_port(backend: Backend) {
    let record: Shared = Default::default();
    let first = start_on(backend, "127.0.0.1:0".parse().unwrap(), &record);
    let addr = first.local_addr();
    let mut service = first;
    for round in 0..20 {
        // A live session during the stop, as in production.
        let mut client = connect(addr);
        write_all(&mut client, b"ping");
        assert_eq!(read_exact(&mut client, 4), b"ping", "round {round}");
        service.stop();
        service.join();
        drop(service);
        drop(client);
        service = start_on(backend, addr, &record);
    }
    let mut client = connect(addr);
    write_all(&mut client, b"last");
    assert_eq!(read_exact(&mut client, 4), b"last");
    drop(client);
    service.stop();
    service.join();
    assert_eq!(record.lock().connected, 21);
}

/// `bind_retry` rides out a predecessor that still holds the port, and
/// without it a taken port fails at once with a message that says so.
fn bind_retries_while_the_port_is_taken(backend: Backend) {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let builder = || {
        ServerService::builder(addr)
            .backend(backend)
            .workers(1)
            .session(|| RecordingEcho {
                record: Default::default(),
            })
    };

    let error = match builder().bind_retry(Duration::ZERO).start() {
        Ok(_) => panic!("bound a port that is taken"),
        Err(error) => error,
    };
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(chain.contains("already in use"), "{chain}");

    let started = Instant::now();
    let error = match builder().bind_retry(Duration::from_millis(300)).start() {
        Ok(_) => panic!("bound a port that is taken"),
        Err(error) => error,
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(chain.contains("still in use after retrying"), "{chain}");

    // The holder lets go while the new server is retrying.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(holder);
    });
    let service = builder()
        .bind_retry(Duration::from_secs(10))
        .start()
        .expect("bound once the holder let go");
    releaser.join().unwrap();
    assert_eq!(service.local_addr(), addr);
    let mut client = connect(addr);
    write_all(&mut client, b"ping");
    assert_eq!(read_exact(&mut client, 4), b"ping");
    drop(client);
    service.stop();
    service.join();
}

/// Set in the child process of the descriptor-limit test (to the backend).
const EMFILE_CHILD: &str = "SERVERCORE_TEST_EMFILE_CHILD";

/// At the open-file limit, a waiting connection makes every accept fail
/// with `EMFILE`; the failure is logged once per second with a count, not
/// once per retry. Runs in a child process with a low descriptor limit
/// (set by the shell, `ulimit -n`): a full descriptor table would break the
/// tests running beside it.
fn accept_errors_at_the_descriptor_limit_are_logged_once_per_second(backend: Backend) {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "emfile_child", "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, backend.name())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("emfile child: ok"), "{stdout}\n{stderr}");
}

/// The child's half: see the test above.
#[test]
fn emfile_child() {
    let Ok(backend) = std::env::var(EMFILE_CHILD) else {
        return;
    };
    let backend: Backend = backend.parse().unwrap();
    let logs = LogCapture::install();
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    // The client's socket exists before the table fills; it connects after,
    // so the server cannot accept it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut hog = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hog.push(file);
        assert!(hog.len() < 10_000, "the descriptor limit was not lowered");
    }
    socket.connect(&addr.into()).unwrap();
    let mut client: std::net::TcpStream = socket.into();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(2_500));
    let lines = logs.lines_containing("accept failed");
    let window = window.elapsed();
    drop(hog);

    // Accepting resumes once descriptors are free.
    write_all(&mut client, b"ping");
    assert_eq!(read_exact(&mut client, 4), b"ping");
    assert!(
        (1..=4).contains(&lines.len()),
        "{} accept-failure lines in {window:?}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines[1..].iter().all(|line| line.contains("errors=")),
        "repeats carry a count:\n{}",
        lines.join("\n")
    );
    drop(client);
    service.stop();
    service.join();
    println!("emfile child: ok, {} lines in {window:?}", lines.len());
}

/// Records the id of every session it runs.
struct IdRecorder {
    ids: Arc<parking_lot::Mutex<Vec<u64>>>,
}

impl servercore::Session for IdRecorder {
    fn on_connected(&mut self, session: &servercore::SessionHandle) {
        self.ids.lock().push(session.id().as_u64());
        session.disconnect();
    }

    fn on_recv(&mut self, _: &servercore::SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
}

/// More reconnects than a 16-bit generation can tell apart, one at a time
/// through the same slot (one worker, one session at a time): every session
/// gets an id no earlier session had, so a stale handle or a room comparing
/// ids can never mistake a newcomer for an old session.
fn seventy_thousand_reconnects_through_one_slot_never_repeat_an_id(backend: Backend) {
    const RECONNECTS: usize = 70_000;
    let ids: Arc<parking_lot::Mutex<Vec<u64>>> = Default::default();
    let recorder = Arc::clone(&ids);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .max_sessions(1)
        .session(move || IdRecorder {
            ids: Arc::clone(&recorder),
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    for round in 0..RECONNECTS {
        // The server disconnects each session at once; the peer's EOF means
        // its session ended, and no more than one exists at a time.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        set_linger_zero(&client);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = std::io::Read::read(&mut client, &mut buf).unwrap();
        assert_eq!(n, 0, "round {round}");
        drop(client);
        // Released within microseconds: spin rather than sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.stats().active_sessions != 0 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the session was not released"
            );
            std::thread::yield_now();
        }
    }
    let took = started.elapsed();
    service.stop();
    service.join();
    let ids = ids.lock();
    assert_eq!(ids.len(), RECONNECTS);
    let mut seen = std::collections::HashMap::new();
    for (round, id) in ids.iter().enumerate() {
        if let Some(first) = seen.insert(*id, round) {
            panic!("round {round} repeats the id {id:#x} of round {first}");
        }
    }
    assert_eq!(service.stats().refused_total, 0);
    eprintln!("{RECONNECTS} reconnects in {took:?}");
}

/// Echoes each packet back with the same id and body.
struct PacketEcho;

impl servercore::packet::PacketHandler for PacketEcho {
    fn on_packet(
        &mut self,
        session: &servercore::SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), servercore::packet::DispatchError> {
        let _ = session.send(servercore::packet::make_raw_packet(id, body)?);
        Ok(())
    }
}

fn packet(id: u16, body: &[u8]) -> Vec<u8> {
    let mut out = ((4 + body.len()) as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The engine counters move by exactly what the test sent: bytes and
/// packets both ways, one accept per connection, one disconnect of the
/// right kind per session, sessions per worker up and down again.
fn counters_move_by_exactly_the_traffic_sent(backend: Backend) {
    use servercore::packet::{PacketConfig, PacketSession};
    use servercore::DisconnectKind;

    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .session(|| PacketSession::new(PacketEcho, PacketConfig::default()))
        .start()
        .unwrap();
    let addr = service.local_addr();
    let before = service.metrics();
    assert_eq!(before.workers.len(), 2);
    assert_eq!(before.total(), servercore::WorkerMetrics::default());

    // 5 packets of 100 bytes echoed over one connection.
    let mut client = connect(addr);
    let message: Vec<u8> = (0..5).flat_map(|i| packet(7, &payload(96, i))).collect();
    write_all(&mut client, &message);
    assert_eq!(read_exact(&mut client, message.len()), message);
    // The worker may see the write's completion just after the peer read it.
    assert!(wait_until(Duration::from_secs(10), || {
        service.metrics().total().bytes_out >= 500
    }));
    let metrics = service.metrics();
    let total = metrics.total();
    assert_eq!(total.sessions, 1);
    assert_eq!(
        metrics
            .workers
            .iter()
            .map(|w| w.sessions)
            .collect::<Vec<_>>(),
        vec![1, 0],
        "the first session goes to worker 0"
    );
    assert_eq!(total.accepted, 1);
    assert_eq!(total.bytes_in, 500);
    assert_eq!(total.bytes_out, 500);
    assert_eq!(total.packets_in, 5);
    assert_eq!(total.packets_out, 5);
    assert!((1..=5).contains(&total.writes), "{} writes", total.writes);
    assert!(
        total.events >= 3,
        "accept, receive, write: {}",
        total.events
    );

    // 3 malformed packets (a size below the header) on 3 connections.
    for _ in 0..3 {
        let mut bad = connect(addr);
        write_all(&mut bad, &[2, 0, 7, 0]);
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut bad, &mut buf);
    }
    drop(client);
    assert!(wait_until(Duration::from_secs(10), || {
        service.metrics().total().sessions == 0
    }));
    let total = service.metrics().total();
    assert_eq!(total.accepted, 4);
    assert_eq!(total.disconnects_of(DisconnectKind::MalformedPacket), 3);
    assert_eq!(total.disconnects_of(DisconnectKind::ClosedByPeer), 1);
    assert_eq!(total.disconnects.iter().sum::<u64>(), 4);
    assert_eq!(total.bytes_in, 500 + 12);
    assert_eq!(total.bytes_out, 500);
    assert_eq!(total.packets_in, 5);
    assert_eq!(total.queued_bytes, 0);
    assert_eq!(service.metrics().sessions_total, 4);
    service.stop();
    service.join();
}

/// With send coalescing, a reply queued within the interval of the last
/// write is held and then flushed at its due time: one coalesced flush.
fn a_coalesced_flush_is_counted(backend: Backend) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        // Far longer than a loopback round trip, so the second echo is
        // always within the interval of the first write.
        .send_coalescing(Duration::from_secs(1))
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let mut client = connect(service.local_addr());
    write_all(&mut client, b"one");
    assert_eq!(read_exact(&mut client, 3), b"one");
    write_all(&mut client, b"two");
    assert_eq!(read_exact(&mut client, 3), b"two");
    assert!(wait_until(Duration::from_secs(10), || {
        service.metrics().total().bytes_out == 6
    }));
    let total = service.metrics().total();
    assert_eq!((total.writes, total.coalesced_flushes), (2, 1));
    drop(client);
    service.stop();
    service.join();
}
