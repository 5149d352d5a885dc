//! Emptied send-batch vectors, pooled per worker so a steady flow of writes
//! does not allocate, with the pool's memory bounded after a peak and
//! given back once the peak is over ([`BatchPool::trim`]).

use bytes::Bytes;

use crate::driver::pool::IdlePool;

/// Emptied send-batch vectors kept for reuse.
const BATCH_POOL_LIMIT: usize = 256;
/// Capacity (buffers) a pooled send-batch vector is disconnected back to: the pool
/// holds at most `BATCH_POOL_LIMIT` × this × 32 bytes (1 MiB) per worker,
/// however large a peak (a slow reader's queue drained in one batch) grew
/// one of them. Uncut, the pool kept 2.8 MB after a 3-minute soak's
/// peaks with no session left (docs/BENCHMARKS.md, "Soak").
const POOLED_BATCH_CAPACITY: usize = 128;

/// Emptied send-batch vectors, reused so a steady flow of writes does not
/// allocate.
pub(crate) struct BatchPool {
    vecs: IdlePool<Vec<Bytes>>,
}

impl Default for BatchPool {
    fn default() -> Self {
        BatchPool {
            vecs: IdlePool::new(BATCH_POOL_LIMIT),
        }
    }
}

impl BatchPool {
    /// An empty vector, reused if one is pooled.
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        self.vecs.take().unwrap_or_default()
    }

    /// Gives `bufs` back (emptied, cut back to a bounded capacity).
    pub(crate) fn put(&mut self, mut bufs: Vec<Bytes>) {
        bufs.clear();
        if bufs.capacity() > 0 {
            // Shrinking in place frees the tail; no copy (the vector is empty).
            bufs.shrink_to(POOLED_BATCH_CAPACITY);
            self.vecs.put(bufs);
        }
    }

    /// Drops the vectors no write needed since the last call.
    pub(crate) fn trim(&mut self) {
        self.vecs.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_cut_back_and_a_bursts_worth_is_given_back_when_quiet() {
        let mut pool = BatchPool::default();
        let burst: Vec<Vec<Bytes>> = (0..50)
            .map(|_| {
                let mut bufs = pool.take();
                bufs.extend((0..1000).map(|_| Bytes::from_static(b"x")));
                bufs
            })
            .collect();
        for bufs in burst {
            pool.put(bufs);
        }
        let vec = pool.take();
        assert!(vec.is_empty() && vec.capacity() <= POOLED_BATCH_CAPACITY);
        pool.put(vec);
        pool.trim();
        assert_eq!(pool.vecs.len(), 50, "in use during the interval");
        pool.trim();
        assert_eq!(pool.vecs.len(), 0, "quiet since: given back");
    }
}
