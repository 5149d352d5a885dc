//! Flood control for the world: the per-player token bucket that moves and
//! chats pass before they become jobs, the log line that says so at most
//! once a period, and the small random source for new players' positions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use servercore::packet::Rate;

/// A token bucket: `burst` tokens at first, refilled at `per_second`; each
/// accepted action takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        let burst = f64::from(rate.burst.max(1));
        TokenBucket {
            tokens: burst,
            burst,
            per_second: f64::from(rate.per_second),
            last: now,
        }
    }

    /// Takes a token if there is one (true), else false.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets a log line through at most once per period, from any thread.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    start: Instant,
    period_ms: u64,
    /// Milliseconds since `start` of the next allowed line.
    next_ms: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(period: Duration) -> LogLimiter {
        LogLimiter {
            start: Instant::now(),
            period_ms: period.as_millis().max(1) as u64,
            next_ms: AtomicU64::new(0),
        }
    }

    /// True for the first call of each period.
    pub(crate) fn allow(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// A seed that differs between calls and runs.
pub(crate) fn seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// SplitMix64: a small, good-enough generator for spawn points.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate::per_second(10).burst(3), start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(150)));
        // Refill stops at the burst.
        let later = start + Duration::from_secs(10);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3);
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_period() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert!(limiter.allow());
        assert!(!limiter.allow());
    }
}
