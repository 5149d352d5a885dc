//! The game server's numbers for the admin listener: its counters, the
//! database's and the tick's histograms (`servercore_game_*`), and the
//! live map of `/status`. Written into the admin crate's [`Snapshot`] by
//! whichever command serves `--admin`, beside the engine's numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use servercore_admin::{Histogram, Snapshot};

use crate::latency::LatencySnapshot;
use crate::{GameServer, GameStats};

/// What a game server adds to every admin request.
pub struct GameMetrics {
    server: Arc<GameServer>,
    /// The last copy of the world map and when it was taken.
    map: Mutex<Option<(Instant, serde_json::Value)>>,
}

impl GameMetrics {
    /// The numbers of `server`.
    pub fn new(server: Arc<GameServer>) -> GameMetrics {
        GameMetrics {
            server,
            map: Mutex::new(None),
        }
    }

    /// Writes the game's counters, histograms and the `/status` world map.
    pub fn write(&self, out: &mut Snapshot) {
        game_metrics(out, &self.server.stats(), self.server.db_queue_depth());
        out.status_field("world", world_map(&self.server, &self.map));
        game_histograms(out, &self.server);
    }
}

/// The game server's numbers.
fn game_metrics(out: &mut Snapshot, stats: &GameStats, db_queue_depth: usize) {
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
const WORLD_MAP_EVERY: Duration = Duration::from_millis(500);

/// The live map's `/status` field: `{size, cell, players: [[x, y, id],
/// ...]}`, and on a node of a shared world also `node` (this node's name)
/// and `zones` (`[{node, x0, x1}]`, the zone map this node uses, in world
/// units), copied at most every [`WORLD_MAP_EVERY`]. The players are the
/// ones this node simulates (a player it is handing over stays listed
/// until the target shows it).
fn world_map(
    server: &GameServer,
    cache: &Mutex<Option<(Instant, serde_json::Value)>>,
) -> serde_json::Value {
    let mut cache = cache.lock();
    if let Some((at, value)) = cache.as_ref() {
        if at.elapsed() < WORLD_MAP_EVERY {
            return value.clone();
        }
    }
    let grid = server.world_grid();
    let players: Vec<serde_json::Value> = server
        .world_snapshot()
        .into_iter()
        .map(|(id, x, y)| serde_json::json!([x, y, id]))
        .collect();
    let mut value = serde_json::json!({
        "size": grid.size(),
        "cell": grid.cell_size(),
        "players": players,
    });
    if let (Some(border), Some(cluster)) = (server.border_stats(), server.cluster_stats()) {
        let cell = grid.cell_size();
        let zones: Vec<serde_json::Value> = border
            .zones
            .iter()
            .map(|(node, start, end)| {
                serde_json::json!({
                    "node": node,
                    "x0": *start as f32 * cell,
                    "x1": *end as f32 * cell,
                })
            })
            .collect();
        value["node"] = serde_json::json!(cluster.node);
        value["zones"] = serde_json::json!(zones);
    }
    *cache = Some((Instant::now(), value.clone()));
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
