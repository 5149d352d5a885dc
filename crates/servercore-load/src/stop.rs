//! The stop flag long runs poll: set by whoever owns the process's signals
//! (the CLI), read by the load and benchmark loops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A shared "stop now" flag; clones share it.
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// A flag nobody has set yet.
    pub fn new() -> StopSignal {
        StopSignal::default()
    }

    /// Asks every holder to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Sets the flag and returns whether it was already set.
    pub fn set_again(&self) -> bool {
        self.0.swap(true, Ordering::AcqRel)
    }

    /// True once a stop was asked.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Sleeps up to `limit`, returning early (true) when a stop is asked.
    pub fn wait(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.is_set() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(end - now));
        }
    }
}
