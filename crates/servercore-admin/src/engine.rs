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

/// The QUIC listener's counters (only when one is configured).
pub fn quic_metrics(out: &mut Snapshot, quic: &servercore::QuicMetrics) {
    let counters = [
        (
            "incoming",
            "QUIC connection attempts that reached the listener.",
            quic.incoming,
        ),
        (
            "rate_limited",
            "QUIC attempts ignored by the per-address rate limit.",
            quic.rate_limited,
        ),
        (
            "refused_busy",
            "QUIC attempts refused: too many handshakes in progress.",
            quic.refused_busy,
        ),
        (
            "refused_full",
            "QUIC connections refused: the server was full or stopping.",
            quic.refused_full,
        ),
        (
            "handshake_failures",
            "QUIC handshakes that failed.",
            quic.handshake_failures,
        ),
        (
            "handshake_timeouts",
            "QUIC handshakes that did not finish in time.",
            quic.handshake_timeouts,
        ),
        (
            "sessions",
            "QUIC connections that became sessions.",
            quic.sessions,
        ),
        (
            "datagrams_sent",
            "QUIC datagrams sent.",
            quic.datagrams_sent,
        ),
        (
            "datagrams_received",
            "QUIC datagrams received and fed to sessions.",
            quic.datagrams_received,
        ),
        (
            "datagrams_rejected",
            "QUIC datagrams dropped: not whole packets, or an id not allowed.",
            quic.datagrams_rejected,
        ),
        (
            "bytes_in",
            "QUIC stream bytes from clients to sessions.",
            quic.bytes_in,
        ),
        (
            "bytes_out",
            "QUIC stream bytes from sessions to clients.",
            quic.bytes_out,
        ),
    ];
    for (name, help, value) in counters {
        out.counter(&format!("servercore_quic_{name}"), help, value);
    }
    out.gauge(
        "servercore_quic_handshakes_in_progress",
        "QUIC handshakes in progress now.",
        quic.handshakes_in_progress as f64,
    );
}
