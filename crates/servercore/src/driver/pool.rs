//! A bounded pool of reusable objects that gives back what a peak left: the
//! worker's emptied write vectors and the io_uring backend's send blocks
//! live in one. [`IdlePool::trim`], called on a slow cadence, drops the
//! items no `take` needed since the previous call (the pool's low-water
//! mark over the interval), so a steady flow keeps what it uses and a pool
//! that a burst filled empties once the burst is over.

/// Up to `limit` spare items.
#[derive(Debug)]
pub(crate) struct IdlePool<T> {
    items: Vec<T>,
    limit: usize,
    /// The fewest items the pool held since the last trim: that many were
    /// never needed in the interval.
    low: usize,
}

impl<T> IdlePool<T> {
    pub(crate) const fn new(limit: usize) -> IdlePool<T> {
        IdlePool {
            items: Vec::new(),
            limit,
            low: 0,
        }
    }

    /// A spare item, if any.
    pub(crate) fn take(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        item
    }

    /// Keeps `item` for reuse, unless the pool is full (then it is dropped).
    pub(crate) fn put(&mut self, item: T) {
        if self.items.len() < self.limit {
            self.items.push(item);
        }
    }

    /// Drops the items that were spare through the whole interval since the
    /// last call; returns how many.
    pub(crate) fn trim(&mut self) -> usize {
        let idle = self.low.min(self.items.len());
        // The bottom of the stack: the items least recently used.
        self.items.drain(..idle);
        if self.items.capacity() > 2 * self.items.len().max(8) {
            self.items.shrink_to(self.items.len() * 2);
        }
        self.low = self.items.len();
        idle
    }

    /// Spare items now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_given_back_after_a_quiet_interval_and_steady_use_is_kept() {
        let mut pool = IdlePool::new(100);
        // A burst: 50 in use at once, then all back.
        let burst: Vec<Vec<u8>> = (0..50).map(|_| pool.take().unwrap_or_default()).collect();
        for item in burst {
            pool.put(item);
        }
        assert_eq!(pool.len(), 50);
        assert_eq!(pool.trim(), 0, "the pool was empty during the burst");
        // Steady use: two at a time.
        for _ in 0..10 {
            let a = pool.take().unwrap();
            let b = pool.take().unwrap();
            pool.put(a);
            pool.put(b);
        }
        assert_eq!(pool.trim(), 48, "48 were never taken in the interval");
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.trim(), 2, "quiet: the rest goes too");
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let mut pool = IdlePool::new(3);
        for n in 0..10 {
            pool.put(n);
        }
        assert_eq!(pool.len(), 3);
    }
}
