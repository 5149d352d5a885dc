//! Helpers shared by the integration tests: backend parameterisation,
//! loopback clients, deterministic payloads and bounded waits.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use servercore::{Backend, DisconnectReason, Session, SessionHandle};

/// Generates one `#[test]` per backend for a `fn(Backend)` test body:
/// `backend_tests!(echo_works);` gives `echo_works::poll` and
/// `echo_works::uring` (the latter is skipped with a message where the
/// kernel forbids io_uring, unless SERVERCORE_REQUIRE_URING is set).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn poll() {
                    $crate::common::init_logging();
                    super::$name(servercore::Backend::Poll);
                }

                #[test]
                fn uring() {
                    $crate::common::init_logging();
                    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
                        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
                            panic!("io_uring required but unavailable: {reason}");
                        }
                        eprintln!("skipping io_uring test: {reason}");
                        return;
                    }
                    super::$name(servercore::Backend::IoUring);
                }
            }
        )*
    };
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SERVERCORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Connects a blocking client with read/write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `len` bytes.
pub fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).expect("read_exact");
    buf
}

/// Writes everything.
pub fn write_all(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("write_all");
}

/// Makes the next close of `stream` send RST instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Polls `condition` every few ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What sessions of a test saw.
#[derive(Default)]
pub struct Record {
    pub connected: usize,
    pub disconnected: Vec<DisconnectReason>,
    pub handles: Vec<SessionHandle>,
    pub sent_bytes: usize,
}

pub type Shared = Arc<Mutex<Record>>;

/// An echo session that records its callbacks.
pub struct RecordingEcho {
    pub record: Shared,
}

impl Session for RecordingEcho {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }

    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let _ = session.send_copy(data);
        data.len()
    }

    fn on_send(&mut self, _session: &SessionHandle, len: usize) {
        self.record.lock().sent_bytes += len;
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// A session that records its handle and its end and ignores its input
/// (what the application does between packets is not under test).
pub struct Quiet {
    pub record: Shared,
}

impl Session for Quiet {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }

    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// Names a backend for messages.
pub fn name(backend: Backend) -> &'static str {
    backend.name()
}

/// Log lines captured from `tracing` in a test process of its own (installs
/// the global subscriber, so it cannot share a process with `init_logging`).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Installs a subscriber that records every event at `info` and above.
    pub fn install() -> LogCapture {
        let capture = LogCapture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    }

    /// The captured lines that contain `needle`.
    pub fn lines_containing(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
