//! Cases of accepting and its failures: a socket that cannot accept, and
//! the back-off at the descriptor limit.

use std::io;
#[cfg(target_os = "linux")]
use std::net::SocketAddr;
use std::time::Duration;

use super::harness::*;
use crate::driver::Driver;

/// A socket that is bound but not listening makes accepting fail for
/// good: one `AcceptError(InvalidInput)`, then silence.
#[cfg(target_os = "linux")]
pub(crate) fn a_listener_that_cannot_accept_reports_once<D: Driver>() {
    let mut driver: D = driver();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.set_nonblocking(true).unwrap();
    driver.add_listener(socket.into()).unwrap();
    let mut sink = Collect::default();
    poll_for(&mut driver, &mut sink, Duration::from_millis(100));
    match &sink.events[..] {
        [Ev::AcceptError(error)] => assert_eq!(error.kind(), io::ErrorKind::InvalidInput),
        other => panic!("expected one AcceptError, got {other:?}"),
    }
}

/// Set in the child process that runs the descriptor-limit scenario, to the
/// name of the test it runs.
#[cfg(unix)]
const EMFILE_CHILD: &str = "SERVERCORE_DRIVER_EMFILE_CHILD";

/// Running out of descriptors reports `AcceptError(EMFILE)` at a bounded
/// rate (the listener rests between tries) and accepting resumes once
/// descriptors are free again. The limit is per process, so the test (named
/// `name`) runs this scenario in a child process: this same test binary,
/// running only this test.
#[cfg(unix)]
pub(crate) fn accept_backs_off_on_emfile_and_resumes<D: Driver>(name: &str) {
    if std::env::var(EMFILE_CHILD).as_deref() == Ok(name) {
        emfile_scenario::<D>();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
}

#[cfg(unix)]
fn emfile_scenario<D: Driver>() {
    use std::os::fd::AsRawFd;

    let mut driver: D = driver();
    let mut sink = Collect::default();
    let addr: socket2::SockAddr = listen(&mut driver).into();
    let clients: Vec<socket2::Socket> = (0..3)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    // Allow no new descriptor: the lowest free one is at the limit. (An
    // io_uring accept reads the limit when it is submitted, so lower it
    // before the connections arrive.)
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd() as libc::rlim_t;
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to rlimit structs.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut saved), 0);
        let low = libc::rlimit {
            rlim_cur: lowest_free,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    for client in &clients {
        client.connect(&addr).unwrap();
    }
    poll_for(&mut driver, &mut sink, Duration::from_millis(300));
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &saved), 0);
    }
    let emfile = sink
        .events
        .iter()
        .filter(
            |e| matches!(e, Ev::AcceptError(error) if error.raw_os_error() == Some(libc::EMFILE)),
        )
        .count();
    assert!(emfile >= 1, "no EMFILE reported: {:?}", sink.events);
    assert!(emfile <= 40, "{emfile} EMFILE errors in 300 ms: a hot loop");
    assert!(
        sink.events.iter().all(|e| matches!(e, Ev::AcceptError(_))),
        "{:?}",
        sink.events
    );
    sink.events.clear();
    poll_until(&mut driver, &mut sink, "accepting to resume", |s| {
        s.events
            .iter()
            .filter(|e| matches!(e, Ev::Accepted(..)))
            .count()
            == clients.len()
    });
}
