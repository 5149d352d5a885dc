//! The game server's numbers for the admin listener: its counters, the
//! database's and the tick's histograms, the border's and the cluster's
//! counters (`servercore_game_*`), and its status-page panels (the world
//! map with the nodes' zones, the zones table, the game's own figures).
//! Written into the admin crate's [`Snapshot`] by whichever command serves
//! `--admin`, beside the engine's numbers; the admin crate draws the
//! panels without knowing what they show.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use servercore_admin::{Histogram, MapPanel, MapStrip, Panel, Snapshot, TablePanel};

use crate::cluster::ClusterStats;
use crate::latency::LatencySnapshot;
use crate::world::border::BorderStats;
use crate::{GameServer, GameStats};

/// A copy of the world map of `/status` and when it was taken.
type WorldMap = (Instant, serde_json::Value);

/// What a game server adds to every admin request.
pub struct GameMetrics {
    server: Arc<GameServer>,
    /// The last copy of the world map and when it was taken.
    map: Mutex<Option<WorldMap>>,
}

impl GameMetrics {
    /// The numbers of `server`.
    pub fn new(server: Arc<GameServer>) -> GameMetrics {
        GameMetrics {
            server,
            map: Mutex::new(None),
        }
    }

    /// Writes the game's counters, histograms and status-page panels.
    pub fn write(&self, out: &mut Snapshot) {
        let stats = self.server.stats();
        let db_queue_depth = self.server.db_queue_depth();
        game_metrics(out, &stats, db_queue_depth);
        let border = self.server.border_stats();
        if let Some(border) = &border {
            border_metrics(out, border);
        }
        let cluster = self.server.cluster_stats();
        if let Some(cluster) = &cluster {
            cluster_metrics(out, cluster);
        }
        game_histograms(out, &self.server);
        out.panel(Panel::Table(game_panel(&stats, db_queue_depth)));
        // One copy of the world serves both: the `world` field for tools
        // and tests (with ids, this node and its zones) and the map panel.
        let world = world_map(&self.server, &self.map);
        let points = world["players"]
            .as_array()
            .map(|players| {
                players
                    .iter()
                    .map(|p| {
                        [
                            p[0].as_f64().unwrap_or(0.0) as f32,
                            p[1].as_f64().unwrap_or(0.0) as f32,
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.status_field("world", world);
        out.panel(Panel::Map(world_panel(
            &self.server,
            points,
            border.as_ref(),
            cluster.as_ref().map(|cluster| cluster.node.as_str()),
        )));
        if let Some(border) = &border {
            out.panel(Panel::Table(zones_panel(border, cluster.as_ref(), &stats)));
        }
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
        "Sessions disconnected because another node took their account's lease.",
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
fn world_map(server: &GameServer, cache: &Mutex<Option<WorldMap>>) -> serde_json::Value {
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

/// The map: this node's players on the world's cells, and, in a world
/// shared with other nodes, each node's strip.
fn world_panel(
    server: &GameServer,
    points: Vec<[f32; 2]>,
    border: Option<&BorderStats>,
    me: Option<&str>,
) -> MapPanel {
    let grid = server.world_grid();
    let cell = grid.cell_size();
    let strips = border
        .map(|border| {
            border
                .zones
                .iter()
                .map(|(node, from, to)| MapStrip {
                    from: *from as f32 * cell,
                    to: (*to as f32 * cell).min(grid.size()),
                    label: if Some(node.as_str()) == me {
                        format!("{node} (this node)")
                    } else {
                        node.clone()
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let note = match border {
        Some(_) => format!(
            "{} players simulated on this node; strips are the nodes' zones",
            points.len()
        ),
        None => format!("{} players", points.len()),
    };
    MapPanel {
        title: "World".into(),
        size: grid.size(),
        grid: Some(cell),
        strips,
        points,
        note,
    }
}

/// The zones of a shared world: which node owns which columns and how many
/// players each holds (this node's from its own count, the others' from the
/// cluster's presence).
fn zones_panel(
    border: &BorderStats,
    cluster: Option<&ClusterStats>,
    stats: &GameStats,
) -> TablePanel {
    let me = cluster.map(|cluster| cluster.node.as_str());
    let rows = border
        .zones
        .iter()
        .map(|(node, from, to)| {
            let players = if Some(node.as_str()) == me {
                stats.players_in_room.to_string()
            } else {
                cluster
                    .and_then(|cluster| cluster.nodes.iter().find(|(name, _)| name == node))
                    .map_or_else(|| "–".to_owned(), |(_, accounts)| accounts.to_string())
            };
            let name = if Some(node.as_str()) == me {
                format!("{node} (this node)")
            } else {
                node.clone()
            };
            vec![name, format!("{from}–{}", to.saturating_sub(1)), players]
        })
        .collect();
    TablePanel {
        title: "Zones".into(),
        columns: vec!["node".into(), "columns".into(), "players".into()],
        rows,
    }
}

/// The game's own figures at a glance.
fn game_panel(stats: &GameStats, db_queue_depth: usize) -> TablePanel {
    let rows = [
        ("players in game", stats.players_in_room.to_string()),
        ("logins", stats.logins.to_string()),
        ("world ticks", stats.ticks.to_string()),
        ("tick overruns", stats.tick_overruns.to_string()),
        ("crowded cells", stats.crowded_cells.to_string()),
        ("database queue", db_queue_depth.to_string()),
    ];
    TablePanel {
        title: "Game".into(),
        columns: vec!["what".into(), "now".into()],
        rows: rows
            .into_iter()
            .map(|(what, value)| vec![what.to_owned(), value])
            .collect(),
    }
}

/// What crosses this node's borders (a shared world only).
fn border_metrics(out: &mut Snapshot, border: &BorderStats) {
    out.counter(
        "servercore_game_border_messages_out",
        "Border messages published to neighbour nodes (one per neighbour per tick).",
        border.messages_out,
    );
    out.counter(
        "servercore_game_border_bytes_out",
        "Bytes of border messages published.",
        border.bytes_out,
    );
    out.counter(
        "servercore_game_border_messages_in",
        "Border messages from neighbour nodes taken into the world.",
        border.messages_in,
    );
    out.counter(
        "servercore_game_border_bytes_in",
        "Bytes of border messages taken in.",
        border.bytes_in,
    );
    out.counter_by(
        "servercore_game_border_messages_dropped",
        "Border messages dropped, by reason.",
        "reason",
        [
            ("not_sent", border.messages_out_dropped),
            ("too_big", border.dropped_too_big),
            ("malformed", border.dropped_malformed),
            ("backlog", border.dropped_backlog),
        ],
    );
    out.counter(
        "servercore_game_border_moves_dropped",
        "Moves of a remote player past the per-tick limit, dropped.",
        border.moves_dropped,
    );
    out.counter(
        "servercore_game_border_origins_stale",
        "Neighbour nodes dropped from the view for silence (their players despawned).",
        border.origins_stale,
    );
    out.gauge(
        "servercore_game_border_remote_players",
        "Players of other nodes shown here from border messages.",
        border.remote_players as f64,
    );
}

/// The cluster link's counters (with `--nats`).
fn cluster_metrics(out: &mut Snapshot, cluster: &ClusterStats) {
    out.gauge(
        "servercore_game_cluster_connected",
        "1 while the node is connected to NATS.",
        if cluster.connected { 1.0 } else { 0.0 },
    );
    out.counter(
        "servercore_game_cluster_outages",
        "Times the NATS connection was lost.",
        cluster.outages,
    );
    out.counter(
        "servercore_game_cluster_nodes_lost",
        "Nodes taken for dead (heartbeats missed).",
        cluster.nodes_lost,
    );
    out.gauge(
        "servercore_game_cluster_peers",
        "Other live nodes seen.",
        cluster.nodes.len() as f64,
    );
    out.counter_by(
        "servercore_game_cluster_chats",
        "World chats over the cluster, by direction.",
        "direction",
        [("out", cluster.chats_out), ("in", cluster.chats_in)],
    );
    out.counter_by(
        "servercore_game_cluster_chats_dropped",
        "Cluster chats dropped, by reason.",
        "reason",
        [
            ("not_published", cluster.chats_dropped),
            ("malformed", cluster.chats_in_malformed),
            ("too_long", cluster.chats_in_too_long),
        ],
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zones_panel_names_each_strip_and_its_players() {
        let border = BorderStats {
            zones: vec![
                ("a".into(), 0, 5),
                ("b".into(), 5, 10),
                ("c".into(), 10, 20),
            ],
            ..BorderStats::default()
        };
        let cluster = ClusterStats {
            node: "b".into(),
            nodes: vec![("a".into(), 7)],
            ..ClusterStats::default()
        };
        let stats = GameStats {
            players_in_room: 3,
            ..GameStats::default()
        };
        let panel = zones_panel(&border, Some(&cluster), &stats);
        assert_eq!(panel.columns, ["node", "columns", "players"]);
        assert_eq!(
            panel.rows,
            [
                ["a", "0–4", "7"],
                ["b (this node)", "5–9", "3"],
                // Not seen by the cluster's presence (yet).
                ["c", "10–19", "–"],
            ]
        );
    }
}
