//! A session's send queue ([`SendQueue`]) and what a queued buffer costs.
//!
//! The send limits count what the queue holds in memory, not only payload:
//! each buffer is charged its bytes plus [`BUFFER_OVERHEAD`] (its slot, and
//! the allocation a small packet is copied into), so a flood of tiny
//! packets is disconnected at about the limit in memory, where counting payload
//! alone let it hold nine times as much ([`Charge`]).
//!
//! The queue is only touched under its session's lock, so every operation
//! on it is bounded: the worker takes at most one write's worth of buffers
//! at a time, frees the writer chunks that lone small packets would keep
//! alive in steps of [`COMPACT_STEP`] buffers resumed where the last step
//! stopped (`compact_step`), and gives back capacity the queue no longer
//! needs after a peak (`shrink`).

use std::collections::VecDeque;

use bytes::Bytes;

/// What a buffer costs beyond its payload, as the send limits count it:
/// its slot (a `Bytes` handle, in the queue and then in the batch being
/// written) and the allocator's header and rounding of the allocation a
/// small packet is copied into ([`copy_out_straggler`]).
pub(crate) const BUFFER_OVERHEAD: usize = std::mem::size_of::<Bytes>() + 32;
/// Largest buffer [`copy_out_straggler`] copies: packet-sized.
const STRAGGLER_MAX: usize = 2 * 1024;
/// Buffers a compaction step looks at under the lock.
pub(crate) const COMPACT_STEP: usize = 256;
/// Slots a queue keeps however small it became.
const KEEP_SLOTS: usize = 16;

/// Bytes and buffers queued or being written, and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Charge {
    pub bytes: usize,
    pub buffers: usize,
}

impl Charge {
    /// What the send limits compare: the payload and each buffer's overhead.
    pub(crate) fn cost(self) -> usize {
        self.bytes
            .saturating_add(self.buffers.saturating_mul(BUFFER_OVERHEAD))
    }
}

/// The buffers a session queued that the worker has not taken yet.
#[derive(Default)]
pub(crate) struct SendQueue {
    bufs: VecDeque<Bytes>,
    /// Where the next compaction step starts.
    cursor: usize,
    /// The most buffers held since the last `shrink`.
    peak: usize,
}

impl SendQueue {
    pub(crate) fn len(&self) -> usize {
        self.bufs.len()
    }

    pub(crate) fn push(&mut self, buf: Bytes) {
        self.bufs.push_back(buf);
        self.peak = self.peak.max(self.bufs.len());
    }

    /// Drops the buffers from `len` on (a batch refused whole).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.bufs.truncate(len);
    }

    /// Moves up to `max` buffers, oldest first, to `out`; returns their
    /// charge.
    pub(crate) fn take_into(&mut self, out: &mut Vec<Bytes>, max: usize) -> Charge {
        let count = self.bufs.len().min(max);
        let mut bytes = 0;
        out.extend(self.bufs.drain(..count).inspect(|buf| bytes += buf.len()));
        self.cursor = self.cursor.saturating_sub(count);
        Charge {
            bytes,
            buffers: count,
        }
    }

    /// Drops everything queued; returns its charge.
    pub(crate) fn discard(&mut self) -> Charge {
        let charge = Charge {
            bytes: self.bufs.iter().map(Bytes::len).sum(),
            buffers: self.bufs.len(),
        };
        self.bufs = VecDeque::new();
        self.cursor = 0;
        self.peak = 0;
        charge
    }

    /// Looks at up to [`COMPACT_STEP`] buffers from where the last step
    /// stopped (wrapping to the front at the end, so a buffer still shared
    /// when it was first seen is looked at again later) and copies the lone
    /// small ones out of their chunks. Returns how many it copied.
    pub(crate) fn compact_step(&mut self) -> usize {
        let len = self.bufs.len();
        if len == 0 {
            return 0;
        }
        if self.cursor >= len {
            self.cursor = 0;
        }
        let end = (self.cursor + COMPACT_STEP).min(len);
        let copied = self
            .bufs
            .range_mut(self.cursor..end)
            .map(|buf| usize::from(copy_out_straggler(buf)))
            .sum();
        self.cursor = end;
        copied
    }

    /// Gives back slots far beyond what the queue held since the last call
    /// (after a peak the capacity would stay at the peak's size). Returns
    /// true if it shrank.
    pub(crate) fn shrink(&mut self) -> bool {
        let wanted = self.peak.max(self.bufs.len()).max(KEEP_SLOTS);
        self.peak = self.bufs.len();
        if self.bufs.capacity() <= 4 * wanted {
            return false;
        }
        self.bufs.shrink_to(2 * wanted);
        true
    }

    /// Slots allocated now.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bufs.capacity()
    }
}

/// A queued packet cut from a 64 KiB writer chunk keeps the whole chunk
/// alive while the send limits count only its own bytes. When `buf` is small
/// and the only user left of an allocation with room to spare, it is copied
/// into an exact allocation of its own and the chunk is freed. Returns
/// whether it copied. Buffers still shared (a broadcast other sessions have
/// not written yet) and exact allocations are left as they are.
pub(crate) fn copy_out_straggler(buf: &mut Bytes) -> bool {
    if buf.len() > STRAGGLER_MAX || !buf.is_unique() {
        return false;
    }
    match std::mem::take(buf).try_into_mut() {
        Ok(owned) if owned.capacity() > owned.len() => {
            *buf = Bytes::copy_from_slice(&owned);
            true
        }
        Ok(owned) => {
            *buf = owned.freeze();
            false
        }
        Err(shared) => {
            *buf = shared;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_small_packet_leaves_its_chunk() {
        let mut writer = crate::packet::PacketWriter::new();
        let mut packet = writer.write_raw(1, b"abcd").unwrap();
        let neighbour = writer.write_raw(2, b"efgh").unwrap();
        // Still sharing the chunk with the writer and a neighbour: kept.
        assert!(!copy_out_straggler(&mut packet));
        drop(writer);
        drop(neighbour);
        let before = packet.as_ptr();
        assert!(copy_out_straggler(&mut packet));
        assert_ne!(packet.as_ptr(), before, "copied into its own allocation");
        assert_eq!(&packet[..], &[8, 0, 1, 0, b'a', b'b', b'c', b'd']);
        // An exact allocation is not copied again.
        assert!(!copy_out_straggler(&mut packet));
        assert_eq!(&packet[..], &[8, 0, 1, 0, b'a', b'b', b'c', b'd']);
    }

    #[test]
    fn large_or_shared_buffers_are_left_alone() {
        let mut large = Bytes::from(vec![1u8; STRAGGLER_MAX + 1]).slice(1..);
        assert!(!copy_out_straggler(&mut large));
        let mut shared = Bytes::from(vec![2u8; 16]);
        let other = shared.clone();
        assert!(!copy_out_straggler(&mut shared));
        assert_eq!(shared, other);
        let mut fixed = Bytes::from_static(b"static");
        assert!(!copy_out_straggler(&mut fixed));
    }

    #[test]
    fn compaction_goes_in_steps_and_comes_back_to_what_was_still_shared() {
        let mut queue = SendQueue::default();
        let mut writer = crate::packet::PacketWriter::new();
        let mut siblings = Vec::new();
        for n in 0..(COMPACT_STEP * 2) as u32 {
            // Each packet shares its chunk with a sibling, as a broadcast's
            // packet shares it with other sessions' until they are written.
            let packet = writer.write_raw(1, &n.to_le_bytes()).unwrap();
            siblings.push(packet.clone());
            queue.push(packet);
            writer = crate::packet::PacketWriter::new();
        }
        drop(writer);
        assert_eq!(queue.compact_step(), 0, "all still shared");
        siblings.clear();
        assert_eq!(queue.compact_step(), COMPACT_STEP, "the second step");
        assert_eq!(
            queue.compact_step(),
            COMPACT_STEP,
            "the first step's buffers, seen again"
        );
        assert_eq!(queue.compact_step(), 0, "nothing left to copy");
        let mut out = Vec::new();
        let charge = queue.take_into(&mut out, usize::MAX);
        assert_eq!(charge.buffers, 2 * COMPACT_STEP);
        assert_eq!(charge.bytes, 2 * COMPACT_STEP * 8);
        for (n, packet) in out.iter().enumerate() {
            assert_eq!(&packet[4..], &(n as u32).to_le_bytes());
        }
    }

    #[test]
    fn a_queue_gives_back_what_a_peak_left() {
        let mut queue = SendQueue::default();
        for _ in 0..10_000 {
            queue.push(Bytes::from_static(b"x"));
        }
        let mut out = Vec::new();
        assert_eq!(queue.take_into(&mut out, 1024).buffers, 1024);
        assert!(!queue.shrink(), "still holding most of its peak");
        queue.take_into(&mut out, usize::MAX);
        assert!(queue.capacity() >= 10_000);
        assert!(!queue.shrink(), "it held 8976 buffers since the last check");
        assert!(queue.shrink(), "empty for a whole interval");
        assert!(queue.capacity() <= 2 * KEEP_SLOTS, "{}", queue.capacity());
        assert!(!queue.shrink());
    }

    #[test]
    fn a_charge_counts_each_buffers_overhead() {
        let charge = Charge {
            bytes: 800,
            buffers: 100,
        };
        assert_eq!(charge.cost(), 800 + 100 * BUFFER_OVERHEAD);
        assert_eq!(BUFFER_OVERHEAD, 64);
    }
}
