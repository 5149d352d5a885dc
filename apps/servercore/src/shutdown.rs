//! Ctrl-C handling: the first Ctrl-C asks for a clean stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set once Ctrl-C (SIGINT/SIGTERM) arrived.
#[derive(Clone)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Installs the handler (once per process; later calls share the flag).
    pub fn install() -> StopSignal {
        static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
        let flag = FLAG
            .get_or_init(|| {
                let flag = Arc::new(AtomicBool::new(false));
                let handler_flag = Arc::clone(&flag);
                if let Err(error) = ctrlc::set_handler(move || {
                    if handler_flag.swap(true, Ordering::AcqRel) {
                        std::process::exit(130);
                    }
                }) {
                    tracing::warn!(%error, "cannot install the Ctrl-C handler");
                }
                flag
            })
            .clone();
        StopSignal(flag)
    }

    /// True once a stop was asked.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Sleeps up to `limit`, returning early (true) when a stop is asked.
    pub fn wait(&self, limit: Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if self.is_set() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20).min(end - std::time::Instant::now()));
        }
        self.is_set()
    }
}
