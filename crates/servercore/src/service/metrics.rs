//! Engine counters for monitoring: what each worker did, cheap enough for
//! the hot path.
//!
//! Every worker owns one [`WorkerCounters`] block (its own cache lines, so
//! no two workers write the same line) and is its only writer: relaxed
//! atomic adds, no lock, no shared counter on the hot path. Readers take an
//! [`EngineMetrics`] snapshot from any thread, which sums the blocks; values
//! read at one instant from different workers are not one atomic picture,
//! but each counter only grows (gauges aside) and is exact once traffic
//! stops.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::DisconnectKind;

/// The live counters of one worker. Written by the worker (and by the
/// packet layer on the worker's thread); read by snapshots.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    sessions: AtomicU64,
    accepted: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    writes: AtomicU64,
    queued_bytes: AtomicU64,
    events: AtomicU64,
    coalesced_flushes: AtomicU64,
    disconnects: [AtomicU64; DisconnectKind::COUNT],
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl WorkerCounters {
    /// Sets the number of sessions the worker holds now.
    pub(crate) fn set_sessions(&self, sessions: usize) {
        self.sessions.store(sessions as u64, Ordering::Relaxed);
    }

    /// The worker's listener accepted a connection.
    pub(crate) fn note_accepted(&self) {
        add(&self.accepted, 1);
    }

    /// `n` bytes were received and handed to a session.
    pub(crate) fn note_bytes_in(&self, n: usize) {
        add(&self.bytes_in, n as u64);
    }

    /// A write put `n` bytes on a socket.
    pub(crate) fn note_bytes_out(&self, n: usize) {
        add(&self.bytes_out, n as u64);
    }

    /// The packet layer delivered `n` packets.
    pub(crate) fn note_packets_in(&self, n: u64) {
        add(&self.packets_in, n);
    }

    /// `n` queued buffers were taken for writing.
    pub(crate) fn note_packets_out(&self, n: usize) {
        add(&self.packets_out, n as u64);
    }

    /// One gathered write was handed to the driver.
    pub(crate) fn note_write(&self) {
        add(&self.writes, 1);
    }

    /// Sets the bytes queued over all sessions of the worker (published
    /// periodically by the worker).
    pub(crate) fn set_queued_bytes(&self, bytes: usize) {
        self.queued_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// The driver reported `n` completions.
    pub(crate) fn note_events(&self, n: u64) {
        add(&self.events, n);
    }

    /// A flush held back by send coalescing went out.
    pub(crate) fn note_coalesced_flush(&self) {
        add(&self.coalesced_flushes, 1);
    }

    /// A session ended for a reason of `kind`.
    pub(crate) fn note_disconnect(&self, kind: DisconnectKind) {
        add(&self.disconnects[kind.index()], 1);
    }

    /// Sessions ended so far, by [`DisconnectKind`] index.
    pub(crate) fn disconnects(&self) -> [u64; DisconnectKind::COUNT] {
        std::array::from_fn(|kind| self.disconnects[kind].load(Ordering::Relaxed))
    }

    /// The counters as plain numbers.
    pub(crate) fn snapshot(&self) -> WorkerMetrics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WorkerMetrics {
            sessions: load(&self.sessions),
            accepted: load(&self.accepted),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            packets_in: load(&self.packets_in),
            packets_out: load(&self.packets_out),
            writes: load(&self.writes),
            queued_bytes: load(&self.queued_bytes),
            events: load(&self.events),
            coalesced_flushes: load(&self.coalesced_flushes),
            disconnects: self.disconnects(),
        }
    }
}

/// What one worker did since the service started (counters) and holds now
/// (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerMetrics {
    /// Gauge: sessions the worker holds now (including ones still closing).
    pub sessions: u64,
    /// Connections the worker's listener accepted, admitted or refused
    /// (refusals are counted in [`EngineMetrics::refused_total`]).
    pub accepted: u64,
    /// Bytes received from peers and handed to sessions.
    pub bytes_in: u64,
    /// Bytes written to sockets (what completed writes reported).
    pub bytes_out: u64,
    /// Packets the packet layer ([`crate::packet::PacketSession`]) delivered
    /// to handlers; 0 for sessions that do their own framing.
    pub packets_in: u64,
    /// Buffers taken from send queues for writing: one per packet for apps
    /// that send one packet per buffer, as `make_packet` builds them.
    pub packets_out: u64,
    /// Gathered writes handed to the driver: one `sendmsg` SQE on io_uring,
    /// one `writev` (plus a retry per `EAGAIN`) on poll.
    pub writes: u64,
    /// Gauge: bytes queued and not yet written, over the worker's sessions
    /// (refreshed every 100 ms).
    pub queued_bytes: u64,
    /// Completions the driver dispatched to the worker: io_uring completions
    /// or poll readiness turned into events (accepts, receives, writes,
    /// closes).
    pub events: u64,
    /// Flushes that send coalescing held back and then released at their
    /// due time (each sends everything queued meanwhile in one write).
    pub coalesced_flushes: u64,
    /// Sessions ended, by [`DisconnectKind`] index.
    pub disconnects: [u64; DisconnectKind::COUNT],
}

impl WorkerMetrics {
    /// Sessions ended for a reason of `kind`.
    pub fn disconnects_of(&self, kind: DisconnectKind) -> u64 {
        self.disconnects[kind.index()]
    }

    fn add(&mut self, other: &WorkerMetrics) {
        self.sessions += other.sessions;
        self.accepted += other.accepted;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.packets_in += other.packets_in;
        self.packets_out += other.packets_out;
        self.writes += other.writes;
        self.queued_bytes += other.queued_bytes;
        self.events += other.events;
        self.coalesced_flushes += other.coalesced_flushes;
        for (sum, n) in self.disconnects.iter_mut().zip(other.disconnects) {
            *sum += n;
        }
    }
}

/// A snapshot of a service's engine counters: one [`WorkerMetrics`] per
/// worker (index = worker index, as in [`crate::SessionId::worker`]) and the
/// service-wide counts. Taking one costs a few loads per worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Per worker, by worker index.
    pub workers: Vec<WorkerMetrics>,
    /// Connections refused because `max_sessions` was reached or the
    /// service was stopping (closed at once).
    pub refused_total: u64,
    /// Sessions ever started.
    pub sessions_total: u64,
}

impl EngineMetrics {
    /// The workers' metrics summed.
    pub fn total(&self) -> WorkerMetrics {
        let mut total = WorkerMetrics::default();
        for worker in &self.workers {
            total.add(worker);
        }
        total
    }
}
