//! Rate-limited logging for lines any peer can trigger at will (a
//! malformed packet, a send-queue overflow, a disconnect at a deadline): at most
//! one line per interval for each kind, over every session and thread,
//! carrying how many events it stands for. Every layer uses it, so it sits
//! beside them rather than in one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Rate-limits one kind of warning across every session and thread: at
/// most one line per interval, each telling how many events happened since
/// the last line. Meant as a `static` beside the warning it guards.
///
/// ```
/// use std::time::Duration;
/// use servercore::log_throttle::LogThrottle;
///
/// static DISCONNECTS: LogThrottle = LogThrottle::new(Duration::from_secs(1));
/// let mut lines = 0;
/// for _ in 0..1000 {
///     if let Some(events) = DISCONNECTS.event() {
///         lines += 1;
///         assert_eq!(events, 1); // the first line covers one event
///     }
/// }
/// assert_eq!(lines, 1);
/// assert_eq!(DISCONNECTS.total(), 1000);
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    interval_ms: u64,
    /// Milliseconds since the process anchor of the last line, plus one
    /// (0: never logged).
    last_line: AtomicU64,
    /// Events since the last line.
    unlogged: AtomicU64,
    total: AtomicU64,
}

impl LogThrottle {
    /// A throttle allowing one line per `interval`.
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval_ms: interval.as_millis() as u64,
            last_line: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Records one event; returns `Some(events)` when a line should be
    /// written now, `events` being this one plus those not logged since the
    /// previous line.
    pub fn event(&self) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = throttle_clock_ms() + 1;
        let last = self.last_line.load(Ordering::Relaxed);
        if last != 0 && now < last + self.interval_ms {
            return None;
        }
        self.last_line
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unlogged.swap(0, Ordering::Relaxed).max(1))
    }

    /// Every event so far, logged or not.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the first throttled event of the process.
fn throttle_clock_ms() -> u64 {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    ANCHOR.get_or_init(Instant::now).elapsed().as_millis() as u64
}
