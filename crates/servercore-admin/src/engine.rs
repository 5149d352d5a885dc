//! The engine's numbers, defined once for every server built on it: the
//! service's counts and every worker's counters, under the names and help
//! texts `/metrics` shows (`servercore_*`). An embedder's server calls
//! [`engine_metrics`] from its [`StatusSource`](crate::StatusSource) and
//! adds its own.

use servercore::{DisconnectKind, EngineMetrics, ServiceStats};

use crate::Snapshot;

/// The engine's numbers: the service's counts and every worker's counters.
pub fn engine_metrics(out: &mut Snapshot, stats: &ServiceStats, metrics: &EngineMetrics) {
    let total = metrics.total();
    out.gauge(
        "servercore_sessions_active",
        "Sessions connected now (including ones closing).",
        stats.active_sessions as f64,
    );
    out.gauge_by(
        "servercore_worker_sessions",
        "Sessions each worker holds now.",
        "worker",
        metrics
            .workers
            .iter()
            .enumerate()
            .map(|(index, worker)| (index, worker.sessions as f64)),
    );
    out.counter(
        "servercore_sessions_accepted",
        "Sessions started since start.",
        stats.sessions_total,
    );
    out.counter(
        "servercore_sessions_refused",
        "Connections refused because max-sessions was reached or the server was stopping.",
        stats.refused_total,
    );
    out.counter_by(
        "servercore_disconnects",
        "Sessions ended, by reason.",
        "reason",
        DisconnectKind::ALL
            .iter()
            .map(|&kind| (kind.name(), total.disconnects_of(kind))),
    );
    out.counter(
        "servercore_bytes_in",
        "Bytes received from peers.",
        total.bytes_in,
    );
    out.counter(
        "servercore_bytes_out",
        "Bytes written to sockets.",
        total.bytes_out,
    );
    out.counter(
        "servercore_packets_in",
        "Packets delivered to handlers by the packet layer.",
        total.packets_in,
    );
    out.counter(
        "servercore_packets_out",
        "Buffers taken from send queues for writing (one per packet).",
        total.packets_out,
    );
    out.counter(
        "servercore_writes",
        "Gathered writes handed to the driver.",
        total.writes,
    );
    out.gauge(
        "servercore_send_queue_bytes",
        "Bytes queued and not yet written, over every session (each worker samples its sessions every 100 ms).",
        total.queued_bytes as f64,
    );
    out.counter(
        "servercore_driver_events",
        "Completions (io_uring) or readiness events (poll) dispatched.",
        total.events,
    );
    out.counter(
        "servercore_coalesced_flushes",
        "Writes that send coalescing held back and sent together.",
        total.coalesced_flushes,
    );
    out.gauge(
        "servercore_session_slots_live",
        "Worker slots still holding a session.",
        stats.live_slots as f64,
    );
    out.gauge(
        "servercore_job_queue_depth",
        "Actors waiting in the global job queue for a worker.",
        servercore::job::global_queue_depth() as f64,
    );
}
