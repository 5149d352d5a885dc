//! Tests of what only the poll backend does: per-round caps on reads and
//! accepts (fairness), the reused iovec storage, and a worker whose epoll
//! breaks. The contract both backends keep is tested by the shared suite
//! (`driver::conformance`), instantiated here.

use std::io::{IoSlice, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::driver::conformance::{
    driver_conformance, pair, pattern, poll_for, poll_until, Collect, Ev, LIMIT,
};

driver_conformance!(crate::driver::poll::PollDriver);

fn driver_with(recv_buffer_size: usize) -> PollDriver {
    let config = DriverConfig {
        recv_buffer_size,
        ..DriverConfig::default()
    };
    PollDriver::new(&config).expect("driver")
}

#[test]
fn reads_are_capped_per_round_and_resume_without_waiting() {
    let mut driver = driver_with(1024);
    let (server, mut client) = pair();
    driver.add_stream(8, server).unwrap();
    let sent = pattern(40 * 1024, 8);
    client.write_all(&sent).unwrap();
    thread::sleep(Duration::from_millis(50));
    let mut sink = Collect::default();
    driver.poll(Some(LIMIT), &mut sink).unwrap();
    assert_eq!(sink.events.len(), READS_PER_ROUND);
    assert_eq!(sink.received(8).len(), READS_PER_ROUND * 1024);
    // No new edge comes for the rest: the driver must remember the
    // connection and not wait for the timeout.
    let start = Instant::now();
    driver
        .poll(Some(Duration::from_secs(10)), &mut sink)
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(sink.events.len(), 2 * READS_PER_ROUND);
    poll_until(&mut driver, &mut sink, "all bytes", |s| {
        s.received(8).len() >= sent.len()
    });
    assert!(sink.received(8) == sent, "bytes differ");
}

#[test]
fn accepts_are_capped_per_round_and_resume() {
    let mut driver = driver_with(4096);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(1024).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    socket.set_nonblocking(true).unwrap();
    driver.add_listener(socket.into()).unwrap();
    let total = ACCEPTS_PER_ROUND + 20;
    let clients: Vec<TcpStream> = (0..total)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let mut sink = Collect::default();
    driver
        .poll(Some(Duration::from_secs(2)), &mut sink)
        .unwrap();
    assert!(sink.events.len() <= ACCEPTS_PER_ROUND);
    poll_until(&mut driver, &mut sink, "all accepts", |s| {
        s.events.len() >= total
    });
    assert!(sink.events.iter().all(|e| matches!(e, Ev::Accepted(..))));
    driver.close_listeners();
    poll_for(&mut driver, &mut sink, Duration::from_millis(10));
    drop(clients);
}

#[test]
fn iovec_storage_is_reused() {
    let mut storage: Vec<IoSlice<'static>> = Vec::with_capacity(MAX_IOVECS);
    let ptr = storage.as_ptr();
    let data = [1u8; 4];
    let mut slices = recycle(std::mem::take(&mut storage));
    slices.push(IoSlice::new(&data));
    storage = recycle(slices);
    assert_eq!(storage.as_ptr(), ptr);
    assert_eq!(storage.capacity(), MAX_IOVECS);
    assert!(storage.is_empty());
}

/// Set in the child process that runs [`broken_poll_child`].
#[cfg(target_os = "linux")]
const BROKEN_POLL_CHILD: &str = "SERVERCORE_POLL_BROKEN_CHILD";

/// A worker whose poll fails for good ends, with its sessions
/// disconnected, and the service stops and reports why; it does not loop
/// on the error. Runs in a process of its own: it breaks the worker's
/// epoll descriptor, found among the process's descriptors.
#[cfg(target_os = "linux")]
#[test]
fn fatal_poll_error_ends_the_worker_and_is_reported() {
    let (_, path) = module_path!().split_once("::").unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("{path}::broken_poll_child")])
        .args(["--nocapture", "--test-threads=1"])
        .env(BROKEN_POLL_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("broken poll child: ok"),
        "{stdout}\n{stderr}"
    );
}

/// The epoll descriptors of this process.
#[cfg(target_os = "linux")]
fn epoll_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            (target.to_str()? == "anon_inode:[eventpoll]")
                .then(|| entry.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn broken_poll_child() {
    use std::sync::{Arc, Mutex};

    use crate::{DisconnectReason, ServerService, Session, SessionHandle};

    if std::env::var_os(BROKEN_POLL_CHILD).is_none() {
        return;
    }
    struct Recorder(Arc<Mutex<Vec<DisconnectReason>>>);
    impl Session for Recorder {
        fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
            let _ = session.send_copy(data);
            data.len()
        }
        fn on_disconnected(&mut self, _: &SessionHandle, reason: &DisconnectReason) {
            self.0.lock().unwrap().push(reason.clone());
        }
    }
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&reasons);
    let before = epoll_fds();
    let service = ServerService::builder("127.0.0.1:0")
        .backend(crate::Backend::Poll)
        .workers(1)
        .session(move || Recorder(Arc::clone(&recorded)))
        .start()
        .unwrap();
    let epoll: Vec<i32> = epoll_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    assert_eq!(epoll.len(), 1, "one worker, one epoll: {epoll:?}");
    let mut client = TcpStream::connect(service.local_addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();

    // Put /dev/null where the epoll descriptor was: every later
    // epoll_wait fails with EINVAL.
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup2 on two descriptors this process owns; the epoll one
    // is replaced atomically and stays a valid descriptor throughout.
    assert!(unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), epoll[0]) } >= 0);
    service.broadcast(Bytes::from_static(b"wake"));

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let joiner = thread::spawn(move || {
        service.join();
        done_tx.send(()).unwrap();
        service
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the failed worker ended and the service stopped");
    let service = joiner.join().unwrap();
    let failure = service.failure().expect("the failure is reported");
    assert_eq!(failure.worker, 0);
    assert!(service.is_stopping());
    let stats = service.stats();
    assert_eq!(
        (stats.active_sessions, stats.live_slots),
        (0, 0),
        "{stats:?}"
    );
    let reasons = reasons.lock().unwrap().clone();
    assert!(
        matches!(&reasons[..], [DisconnectReason::IoError { .. }]),
        "{reasons:?}"
    );
    println!("broken poll child: ok ({failure})");
}
