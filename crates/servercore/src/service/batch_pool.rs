//! Emptied send-batch vectors, pooled per worker so a steady flow of writes
//! does not allocate, with the pool's memory bounded after a peak.

use bytes::Bytes;

/// Emptied send-batch vectors kept for reuse.
const BATCH_POOL_LIMIT: usize = 256;
/// Capacity (buffers) a pooled send-batch vector is cut back to: the pool
/// holds at most `BATCH_POOL_LIMIT` × this × 32 bytes (1 MiB) per worker,
/// however large a peak (a slow reader's queue drained in one batch) grew
/// one of them. Uncut, the pool kept 2.8 MB after a 3-minute soak's
/// peaks with no session left (docs/BENCHMARKS.md, "Soak").
const POOLED_BATCH_CAPACITY: usize = 128;

/// Emptied send-batch vectors, reused so a steady flow of writes does not
/// allocate.
#[derive(Default)]
pub(crate) struct BatchPool {
    vecs: Vec<Vec<Bytes>>,
}

impl BatchPool {
    /// An empty vector, reused if one is pooled.
    pub(crate) fn take(&mut self) -> Vec<Bytes> {
        self.vecs.pop().unwrap_or_default()
    }

    /// Gives `bufs` back (emptied, cut back to a bounded capacity).
    pub(crate) fn put(&mut self, mut bufs: Vec<Bytes>) {
        bufs.clear();
        if self.vecs.len() < BATCH_POOL_LIMIT && bufs.capacity() > 0 {
            // Shrinking in place frees the tail; no copy (the vector is empty).
            bufs.shrink_to(POOLED_BATCH_CAPACITY);
            self.vecs.push(bufs);
        }
    }
}
