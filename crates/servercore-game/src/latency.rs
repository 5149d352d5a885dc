//! A latency histogram of relaxed atomics: fixed buckets, recorded from
//! any thread without a lock, read as a snapshot by whoever reports it
//! (the admin listener's `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket is
/// everything above the last bound).
pub const BOUNDS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// Counts of observations per bucket, their sum and their number.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A snapshot of a [`LatencyHistogram`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// `(upper bound in µs, observations in that bucket)`, ascending; the
    /// observations above the last bound are `count` minus their sum.
    pub buckets: Vec<(u64, u64)>,
    /// Sum of every observation, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now (each exact; together not atomic).
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: BOUNDS_US
                .iter()
                .zip(&self.buckets)
                .map(|(&bound, count)| (bound, count.load(Ordering::Relaxed)))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(100)); // on the bound: first bucket
        histogram.record(Duration::from_micros(101));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60)); // above every bound
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.sum_us, 100 + 101 + 3_000 + 60_000_000);
        assert_eq!(snapshot.buckets[0], (100, 1));
        assert_eq!(snapshot.buckets[1], (250, 1));
        assert_eq!(snapshot.buckets[5], (5_000, 1));
        let in_buckets: u64 = snapshot.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(snapshot.count - in_buckets, 1);
    }
}
