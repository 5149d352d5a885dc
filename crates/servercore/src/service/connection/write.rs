//! The send side of a [`Connection`]: deciding when to write (send
//! coalescing), taking the queue through the transport into one gathered
//! write, resuming partial writes, and the end of a drain.

use std::io;
use std::time::Instant;

use super::{Connection, Phase, Write};
use crate::driver::{CloseMode, SendBatch, MAX_BATCH_BUFFERS};
use crate::service::batch_pool::BatchPool;
use crate::session::{Charge, DisconnectReason};

/// Queued buffers a housekeeping round looks at for compaction, per
/// session with a write in flight.
const COMPACT_PER_ROUND: usize = 4096;

impl Connection {
    /// Something was queued, a write finished, or the transport has bytes
    /// of its own: the next [`poll_write`](Self::poll_write) decides whether
    /// to write now or hold.
    pub(crate) fn request_flush(&mut self) {
        self.flush_requested = true;
    }

    /// The write handed out by `poll_write` finished: `Ok(n)` wire bytes
    /// (maybe fewer than the batch) or an error. Returns the plain bytes
    /// that reached the socket (for `on_send`; 0 for none).
    pub(crate) fn handle_sent(
        &mut self,
        result: io::Result<usize>,
        mut batch: SendBatch,
        pool: &mut BatchPool,
    ) -> usize {
        self.sending = false;
        match result {
            Ok(written) if self.phase != Phase::Closed => {
                self.shared.mailbox.counters.note_bytes_out(written);
                let whole = batch.advance(written);
                let plain = match self.transport.as_mut() {
                    // The transport's buffers are its own; the session's
                    // left the charge when they were encoded.
                    Some(transport) => Charge {
                        bytes: transport.wire_written(written),
                        buffers: 0,
                    },
                    None => Charge {
                        bytes: written,
                        buffers: whole,
                    },
                };
                self.shared.note_written(plain);
                if batch.is_empty() {
                    pool.put(batch.into_vec());
                } else {
                    self.pending = batch;
                }
                self.flush_requested = true;
                plain.bytes
            }
            result => {
                // Closed meanwhile, or the write failed: nothing more goes
                // out, and the unsent bytes leave the charge.
                let unsent = match self.transport.as_mut() {
                    Some(transport) => Charge {
                        bytes: transport.discard(),
                        buffers: 0,
                    },
                    None => Charge {
                        bytes: batch.len(),
                        buffers: batch.buffers(),
                    },
                };
                self.shared.note_written(unsent);
                pool.put(batch.into_vec());
                if let Err(error) = result {
                    self.close(Some(DisconnectReason::from_io(&error)), CloseMode::Abort);
                }
                0
            }
        }
    }

    /// Frees memory a backlog behind a write in flight would keep alive: the
    /// chunks its small packets pin (the send limits count their bytes and
    /// slots, not the chunks). Looks at up to [`COMPACT_PER_ROUND`] queued
    /// buffers, resuming where the last round stopped.
    pub(crate) fn compact(&mut self) {
        if self.sending && self.shared.queued_bytes() > 0 {
            self.shared.compact_queue(COMPACT_PER_ROUND);
        }
    }

    /// Gives back send-queue capacity far beyond recent use (after a peak).
    pub(crate) fn trim(&mut self) {
        self.shared.shrink_queue();
    }

    /// Drops whatever the session still queued (the worker is going away).
    pub(crate) fn discard(&mut self) {
        self.shared.discard_queue();
    }

    /// What to write now, if a write was requested. Without coalescing
    /// everything queued goes out at once (unless a write is in flight).
    /// With it, the queued bytes are held until the interval since the last
    /// write has passed, unless they are the rest of a partial write, the
    /// session is closing, the queue reached its bound or the app asked to
    /// flush; so do the transport's own bytes (handshake flights, the HTTP
    /// upgrade answer, pongs) and the data a finished handshake released:
    /// they are not in the session's queue, so holding them would wait for
    /// a packet the session may never send (a WebSocket client sends nothing
    /// before the 101 arrives). A connection that has written everything
    /// while draining moves on to lingering (or closes, after the peer's
    /// EOF).
    pub(crate) fn poll_write(&mut self, now: Instant, pool: &mut BatchPool) -> Write {
        if !std::mem::take(&mut self.flush_requested) {
            return Write::Nothing;
        }
        if let Some(interval) = self.timing.coalesce {
            self.flush_now |= self.shared.take_flush_now();
            if self.sending || self.phase == Phase::Closed {
                return Write::Nothing;
            }
            let due = self.last_write.map_or(now, |at| at + interval);
            let transport_owes = self
                .transport
                .as_ref()
                .is_some_and(|transport| transport.wants_flush());
            let write_now = !self.pending.is_empty()
                || self.queue_left
                || transport_owes
                || self.flush_now
                || self.phase != Phase::Open
                || self.shared.queued_bytes() >= self.shared.coalesce_max_bytes()
                || now >= due;
            if !write_now {
                if !self.shared.has_unflushed() {
                    return Write::Nothing;
                }
                let newly = !self.held;
                self.held = true;
                return Write::Held { due, newly };
            }
        }
        self.write(now, pool)
    }

    /// Starts a write of what is queued (at most one write's worth of
    /// buffers: the rest stays in the queue, where compaction reaches it),
    /// unless a write is in flight.
    fn write(&mut self, now: Instant, pool: &mut BatchPool) -> Write {
        if self.sending || self.phase == Phase::Closed {
            return Write::Nothing;
        }
        if self.pending.is_empty() {
            self.pending = SendBatch::from(pool.take());
        }
        let draining = matches!(self.phase, Phase::Draining { .. });
        let taken = match self.transport.as_mut() {
            None => {
                let room = MAX_BATCH_BUFFERS.saturating_sub(self.pending.buffers());
                let taken = self.shared.take_queued(self.pending.vec_mut(), room);
                self.queue_left = taken == room;
                taken
            }
            Some(transport) => {
                let mut plain = pool.take();
                let taken = self.shared.take_queued(&mut plain, usize::MAX);
                self.shared.note_written(Charge {
                    bytes: 0,
                    buffers: taken,
                });
                let wire = self.pending.vec_mut();
                transport.encode(&mut plain, wire);
                if wire.is_empty() && draining {
                    let reason = self.shared.peek_reason();
                    let reason = reason.unwrap_or(DisconnectReason::ClosedByApp);
                    if transport.queue_goodbye(&reason) {
                        transport.encode(&mut plain, wire);
                    }
                }
                pool.put(plain);
                taken
            }
        };
        let counters = &self.shared.mailbox.counters;
        counters.note_packets_out(taken);
        self.flush_now = false;
        if self.pending.is_empty() {
            pool.put(std::mem::take(&mut self.pending).into_vec());
            if draining {
                self.finish_draining(now);
            }
            return Write::Nothing;
        }
        self.sending = true;
        counters.note_write();
        self.last_write = Some(now);
        self.shared.note_write_started();
        Write::Batch(std::mem::take(&mut self.pending))
    }

    /// Everything queued is written: close now if the peer already sent its
    /// EOF, else shut the write side down and linger for that EOF.
    fn finish_draining(&mut self, now: Instant) {
        if self.read_closed {
            self.close(None, CloseMode::Graceful);
            return;
        }
        let mut deadline = now + self.timing.linger;
        if let Some(cap) = self.linger_cap {
            deadline = deadline.min(cap);
        }
        self.phase = Phase::Lingering { deadline };
        self.leftover = Vec::new();
        self.shutdown_wanted = true;
    }

    /// True once, when the write side is to be shut down (`shutdown(SHUT_WR)`:
    /// FIN after everything written) while reading goes on.
    pub(crate) fn poll_shutdown_write(&mut self) -> bool {
        std::mem::take(&mut self.shutdown_wanted)
    }
}
