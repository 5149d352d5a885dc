//! Log lines a peer can cause are rate-limited and carry counts: a thousand
//! peers that each send a malformed packet give a handful of `warn` lines
//! whose counts add up, and the INFO log shows their disconnects as a
//! summary by reason, not a line per session. Over real loopback sockets,
//! on every backend; each run is a child process, since capturing the log
//! installs the process's global subscriber.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use servercore::packet::{DispatchError, PacketConfig, PacketHandler, PacketSession};
use servercore::{Backend, DisconnectReason, ServerService, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{logging::*, net::*};

backend_tests!(a_thousand_malformed_sessions_log_a_bounded_number_of_lines);

/// Set in the child process, to the backend it runs.
const CHILD: &str = "SERVERCORE_TEST_LOG_CHILD";
const SESSIONS: usize = 1000;

fn a_thousand_malformed_sessions_log_a_bounded_number_of_lines(backend: Backend) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "malformed_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, backend.name())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("malformed child: ok"), "{stdout}\n{stderr}");
}

/// Counts the sessions that ended, and why.
struct Counting {
    malformed: Arc<AtomicUsize>,
}

impl PacketHandler for Counting {
    fn on_packet(&mut self, _: &SessionHandle, _: u16, _: &[u8]) -> Result<(), DispatchError> {
        Ok(())
    }

    fn on_disconnected(&mut self, _: &SessionHandle, reason: &DisconnectReason) {
        if matches!(reason, DisconnectReason::MalformedPacket(_)) {
            self.malformed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The child's half: see the test above.
#[test]
fn malformed_child() {
    let Ok(backend) = std::env::var(CHILD) else {
        return;
    };
    let backend: Backend = backend.parse().unwrap();
    let logs = LogCapture::install();
    let malformed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&malformed);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .max_sessions(2 * SESSIONS)
        .session(move || {
            PacketSession::new(
                Counting {
                    malformed: Arc::clone(&counted),
                },
                PacketConfig::default(),
            )
        })
        .start()
        .unwrap();
    let addr = service.local_addr();
    let started = Instant::now();
    // Eight peers at a time, each sending a header whose size (2) is below
    // the header's own and reading until the server closes.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..SESSIONS / 8 {
                    let mut stream = connect(addr);
                    stream.write_all(&[2, 0, 1, 0]).unwrap();
                    let mut buf = [0u8; 64];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(error) if error.kind() == ErrorKind::ConnectionReset => break,
                            Err(error) => panic!("waiting for the close: {error}"),
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || malformed
        .load(Ordering::Acquire)
        == SESSIONS));
    service.stop();
    service.join();
    let elapsed = started.elapsed();

    let warnings = logs.lines_containing("malformed packet");
    let bound = 2 + elapsed.as_secs() as usize;
    assert!(
        (1..=bound).contains(&warnings.len()),
        "{} malformed-packet lines for {SESSIONS} sessions in {elapsed:?}:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    let disconnects: u64 = warnings
        .iter()
        .map(|line| field(line, "disconnects").unwrap_or_else(|| panic!("no count: {line}")))
        .sum();
    assert!(
        disconnects <= SESSIONS as u64,
        "{disconnects} disconnects counted:\n{}",
        warnings.join("\n")
    );

    let per_session = logs.lines_containing("disconnected session=");
    assert!(
        per_session.is_empty(),
        "{} per-session disconnect lines at INFO, for example {}",
        per_session.len(),
        per_session[0]
    );
    let summaries = logs.lines_containing("sessions disconnected since the last summary");
    let summed: u64 = summaries
        .iter()
        .filter_map(|line| field(line, "malformed_packet"))
        .sum();
    assert_eq!(
        summed,
        SESSIONS as u64,
        "the summaries count every malformed session:\n{}",
        summaries.join("\n")
    );
    assert!(summaries.len() <= bound, "{}", summaries.join("\n"));
    println!(
        "malformed child: ok, {} warning lines (disconnects {disconnects}) and {} summaries in {elapsed:?}",
        warnings.len(),
        summaries.len()
    );
}
