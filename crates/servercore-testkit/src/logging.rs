//! Logging in tests: the engine's `tracing` output on the test writer, or
//! captured lines for tests that assert on what was logged.

use std::sync::Arc;

use parking_lot::Mutex;

/// Sends `tracing` output to the test's captured output, at the level of
/// `SERVERCORE_LOG` (default `warn`). Safe to call from every test.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SERVERCORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Log lines captured from `tracing` in a test process of its own (installs
/// the global subscriber, so it cannot share a process with
/// [`init_logging`]).
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
