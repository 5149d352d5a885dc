//! The admin listener of the server commands (`--admin ADDR`): which
//! numbers each server exposes, read from its atomic counters on the admin
//! thread (a scrape takes no lock the I/O workers use).

use std::sync::Arc;

use servercore::{DisconnectKind, EngineMetrics, ServerService, ServiceStats};
use servercore_admin::{AdminOptions, AdminServer, Histogram, ServerInfo, Snapshot, StatusSource};
use servercore_game::latency::LatencySnapshot;
use servercore_game::{GameServer, GameStats};

use crate::cli::AdminArgs;
use crate::limits::FileLimit;

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

/// The game server's numbers.
pub fn game_metrics(out: &mut Snapshot, stats: &GameStats, db_queue_depth: usize) {
    out.counter("servercore_game_logins", "Successful logins.", stats.logins);
    out.counter(
        "servercore_game_logins_refused",
        "Refused logins (second login, name too long, database error).",
        stats.logins_refused,
    );
    out.counter(
        "servercore_game_enters",
        "Players that entered the game.",
        stats.enters,
    );
    out.counter(
        "servercore_game_enters_refused",
        "Refused C_ENTER_GAME requests.",
        stats.enters_refused,
    );
    out.counter(
        "servercore_game_chats",
        "Chat messages broadcast (one S_CHAT buffer each).",
        stats.chats_relayed,
    );
    out.counter(
        "servercore_game_chat_deliveries",
        "S_CHAT sends over all receivers (the broadcasts' fan-out).",
        stats.chat_deliveries,
    );
    out.counter_by(
        "servercore_game_chats_dropped",
        "Chat messages dropped, by reason.",
        "reason",
        [
            ("not_in_game", stats.chats_refused_not_in_room),
            ("too_long", stats.chats_refused_too_long),
        ],
    );
    out.gauge(
        "servercore_game_players_in_game",
        "Players in the game now.",
        stats.players_in_room as f64,
    );
    out.gauge(
        "servercore_game_player_states",
        "Per-connection player states alive.",
        stats.player_states as f64,
    );
    out.gauge(
        "servercore_game_db_queue_depth",
        "Requests waiting for the database thread.",
        db_queue_depth as f64,
    );
    out.counter(
        "servercore_game_moves",
        "C_MOVE packets accepted.",
        stats.moves,
    );
    out.counter(
        "servercore_game_move_deliveries",
        "S_MOVE sends over all receivers.",
        stats.move_deliveries,
    );
    out.counter(
        "servercore_game_spawn_packets_sent",
        "S_SPAWN packets sent (each lists one or more players).",
        stats.spawn_packets_sent,
    );
    out.counter(
        "servercore_game_despawn_packets_sent",
        "S_DESPAWN packets sent (each lists one or more players).",
        stats.despawn_packets_sent,
    );
    out.counter(
        "servercore_game_handovers",
        "Players handed from one region to another at a tick.",
        stats.handovers,
    );
    out.counter("servercore_game_ticks", "World ticks run.", stats.ticks);
    out.counter(
        "servercore_game_tick_overruns",
        "World ticks that started late because the one before was still running.",
        stats.tick_overruns,
    );
    out.gauge(
        "servercore_game_crowded_cells",
        "Cells whose receivers got a crowd's thinned positions at the last tick.",
        stats.crowded_cells as f64,
    );
    out.counter(
        "servercore_game_thinned_deliveries",
        "Latest positions sent to receivers in a crowd in place of every move (degraded deliveries).",
        stats.thinned_deliveries,
    );
    out.counter_by(
        "servercore_game_moves_dropped",
        "Moves dropped (never delivered), by reason.",
        "reason",
        [
            ("rate", stats.moves_dropped_rate),
            ("tick_full", stats.moves_dropped_queue_full),
            ("not_in_world", stats.moves_dropped_not_in_world),
        ],
    );
    out.counter_by(
        "servercore_game_moves_corrected",
        "Moves accepted and delivered at another position than asked, by reason: \
         clamped to the map, or cut to the speed limit.",
        "reason",
        [("clamped", stats.moves_clamped), ("cut", stats.moves_cut)],
    );
    out.counter_by(
        "servercore_game_http_requests",
        "Plain HTTP requests on the WebSocket listener (the browser client's files), \
         by result; they are not game sessions.",
        "result",
        [
            ("served", stats.http_requests_served),
            ("not_found", stats.http_requests_not_found),
        ],
    );
    out.counter_by(
        "servercore_game_chats_shed",
        "Chats shed by the world's limits, by reason.",
        "reason",
        [
            ("rate", stats.chats_dropped_rate),
            ("tick_full", stats.chats_dropped_queue_full),
            ("remote_tick_full", stats.remote_chats_shed),
        ],
    );
    out.counter(
        "servercore_game_logins_refused_in_use",
        "Logins refused because another node held the account and did not let it go.",
        stats.logins_refused_in_use,
    );
    out.counter(
        "servercore_game_leases_lost",
        "Sessions cut because another node took their account's lease.",
        stats.leases_lost,
    );
}

/// Most often the world map is copied for `/status` (each copy takes each
/// region's position lock once).
const WORLD_MAP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The live map's `/status` field: `{size, cell, players: [[x, y], ...]}`,
/// copied at most every [`WORLD_MAP_EVERY`].
fn world_map(
    server: &GameServer,
    cache: &parking_lot::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
) -> serde_json::Value {
    let mut cache = cache.lock();
    if let Some((at, value)) = cache.as_ref() {
        if at.elapsed() < WORLD_MAP_EVERY {
            return value.clone();
        }
    }
    let grid = server.world_grid();
    let players: Vec<[f32; 2]> = server
        .world_snapshot()
        .into_iter()
        .map(|(_, x, y)| [x, y])
        .collect();
    let value = serde_json::json!({
        "size": grid.size(),
        "cell": grid.cell_size(),
        "players": players,
    });
    *cache = Some((std::time::Instant::now(), value.clone()));
    value
}

/// A latency histogram in seconds.
fn seconds(latency: &LatencySnapshot) -> Histogram {
    Histogram {
        buckets: latency
            .buckets
            .iter()
            .map(|&(bound_us, count)| (bound_us as f64 / 1e6, count))
            .collect(),
        sum: latency.sum_us as f64 / 1e6,
        count: latency.count,
    }
}

/// The database's login latency and the world's tick durations, in
/// seconds.
fn game_histograms(out: &mut Snapshot, server: &GameServer) {
    out.histogram(
        "servercore_game_db_login_seconds",
        "Login latency through the database: request to committed answer.",
        seconds(&server.db_latency()),
    );
    out.histogram(
        "servercore_game_tick_seconds",
        "World tick durations: from the tick's start to the end of its last phase.",
        seconds(&server.tick_histogram()),
    );
    out.histogram(
        "servercore_game_tick_work_seconds",
        "World tick work: the tick's region jobs' run times summed over the workers (the rest of a tick's duration is waiting for a worker).",
        seconds(&server.tick_work_histogram()),
    );
}

/// The process's numbers.
fn process_metrics(out: &mut Snapshot, limit: FileLimit) {
    out.gauge(
        "servercore_open_files_limit",
        "The soft open-file limit in force.",
        limit.soft as f64,
    );
}

/// Starts the admin listener for an engine service (`echo`), if asked
/// (bound, not yet announced: see [`announce`]).
pub fn start_for_service(
    args: &AdminArgs,
    kind: &str,
    service: &Arc<ServerService>,
    limit: FileLimit,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    let info = ServerInfo {
        kind: kind.to_owned(),
        backend: service.backend().to_string(),
        listen: service.local_addr().to_string(),
    };
    let service = Arc::clone(service);
    let admin = start(args, addr, info, move |out: &mut Snapshot| {
        engine_metrics(out, &service.stats(), &service.metrics());
        if let Some(quic) = service.quic_metrics() {
            quic_metrics(out, &quic);
        }
        process_metrics(out, limit);
    })?;
    Ok(Some(admin))
}

/// Starts the admin listener for the game server, if asked (bound, not yet
/// announced: see [`announce`]).
pub fn start_for_game(
    args: &AdminArgs,
    server: &Arc<GameServer>,
    limit: FileLimit,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    let info = ServerInfo {
        kind: "game".to_owned(),
        backend: server.backend().to_string(),
        listen: server.local_addr().to_string(),
    };
    let server = Arc::clone(server);
    let map_cache = parking_lot::Mutex::new(None);
    let admin = start(args, addr, info, move |out: &mut Snapshot| {
        engine_metrics(out, &server.service_stats(), &server.engine_metrics());
        game_metrics(out, &server.stats(), server.db_queue_depth());
        if let Some(quic) = server.quic_metrics() {
            quic_metrics(out, &quic);
        }
        out.status_field("world", world_map(&server, &map_cache));
        game_histograms(out, &server);
        process_metrics(out, limit);
    })?;
    Ok(Some(admin))
}

/// Starts the listener as `args` allow; a refused public address says which
/// flag allows it.
fn start(
    args: &AdminArgs,
    addr: std::net::SocketAddr,
    info: ServerInfo,
    source: impl StatusSource,
) -> anyhow::Result<AdminServer> {
    let options = AdminOptions {
        allow_public: args.admin_public,
        ..AdminOptions::default()
    };
    AdminServer::start_with(addr, options, info, source).map_err(|error| {
        if error.is_not_loopback() {
            anyhow::anyhow!("{error}; pass --admin-public to serve it there anyway")
        } else {
            error.into()
        }
    })
}

/// Prints where the admin listener serves, if there is one. A command calls
/// it after its own banner, once every listener it has is bound.
pub fn announce(admin: Option<&AdminServer>) {
    if let Some(admin) = admin {
        println!(
            "admin HTTP on http://{}/ (/metrics, /healthz, /status)",
            admin.local_addr()
        );
    }
}
