//! The game server's counters: what was answered, refused and relayed, what
//! the world did with moves (accepted, corrected, dropped by reason), how
//! many spawns, despawns and moves it sent and how its ticks went, and the
//! gauges (players in the room, players in the world, crowded cells, live
//! player states) that must fall back to zero once every client has left,
//! the proof that sessions, players, the room and the regions do not keep
//! each other alive.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live counters, shared by every session, the room and the database
/// replies. Relaxed atomics: each is exact, their snapshot is not atomic.
#[derive(Debug, Default)]
pub struct GameCounters {
    pub(super) logins: AtomicU64,
    pub(super) logins_refused: AtomicU64,
    pub(super) logins_failed_db_down: AtomicU64,
    pub(super) duplicate_login_kicks: AtomicU64,
    pub(super) remote_chats: AtomicU64,
    pub(super) enters: AtomicU64,
    pub(super) enters_refused: AtomicU64,
    pub(super) chats_relayed: AtomicU64,
    pub(super) chat_deliveries: AtomicU64,
    pub(super) chats_refused_not_in_room: AtomicU64,
    pub(super) chats_refused_too_long: AtomicU64,
    pub(super) login_timeouts: AtomicU64,
    pub(super) packet_timeouts: AtomicU64,
    pub(super) conns_refused_per_ip: AtomicU64,
    pub(super) accounts_refused: AtomicU64,
    pub(super) tokens_refused: AtomicU64,
    pub(super) pending_overflows: AtomicU64,
    pub(super) players_in_room: AtomicI64,
    pub(super) player_states: AtomicI64,
    pub(crate) moves: AtomicU64,
    pub(crate) moves_clamped: AtomicU64,
    pub(crate) moves_cut: AtomicU64,
    pub(crate) moves_dropped_rate: AtomicU64,
    pub(crate) moves_dropped_queue_full: AtomicU64,
    pub(crate) moves_dropped_not_in_world: AtomicU64,
    pub(crate) chats_dropped_rate: AtomicU64,
    pub(crate) chats_dropped_queue_full: AtomicU64,
    pub(crate) spawns_sent: AtomicU64,
    pub(crate) despawns_sent: AtomicU64,
    pub(crate) move_deliveries: AtomicU64,
    pub(crate) handovers: AtomicU64,
    pub(crate) transfers_out: AtomicU64,
    pub(crate) transfers_never_arrived: AtomicU64,
    pub(crate) transfers_in: AtomicU64,
    pub(crate) transfer_tokens_refused: AtomicU64,
    pub(crate) world_leaves: AtomicU64,
    pub(crate) players_in_world: AtomicI64,
    pub(crate) world_enters: AtomicU64,
    pub(crate) world_leave_requests: AtomicU64,
    pub(crate) ticks: AtomicU64,
    pub(crate) tick_overruns: AtomicU64,
    pub(crate) crowded_cells: AtomicI64,
    pub(crate) thinned_deliveries: AtomicU64,
    pub(crate) positions_saved: AtomicU64,
    pub(crate) http_served: AtomicU64,
    pub(crate) http_not_found: AtomicU64,
    pub(crate) logins_refused_in_use: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) remote_chats_shed: AtomicU64,
}

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl GameCounters {
    /// A snapshot of every counter.
    pub fn snapshot(&self) -> GameStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GameStats {
            logins: get(&self.logins),
            logins_refused: get(&self.logins_refused),
            logins_failed_db_down: get(&self.logins_failed_db_down),
            duplicate_login_kicks: get(&self.duplicate_login_kicks),
            remote_chats: get(&self.remote_chats),
            enters: get(&self.enters),
            enters_refused: get(&self.enters_refused),
            chats_relayed: get(&self.chats_relayed),
            chat_deliveries: get(&self.chat_deliveries),
            chats_refused_not_in_room: get(&self.chats_refused_not_in_room),
            chats_refused_too_long: get(&self.chats_refused_too_long),
            login_timeouts: get(&self.login_timeouts),
            packet_timeouts: get(&self.packet_timeouts),
            conns_refused_per_ip: get(&self.conns_refused_per_ip),
            accounts_refused: get(&self.accounts_refused),
            tokens_refused: get(&self.tokens_refused),
            pending_overflows: get(&self.pending_overflows),
            players_in_room: self.players_in_room.load(Ordering::Relaxed),
            player_states: self.player_states.load(Ordering::Relaxed),
            moves: get(&self.moves),
            moves_clamped: get(&self.moves_clamped),
            moves_cut: get(&self.moves_cut),
            moves_dropped_rate: get(&self.moves_dropped_rate),
            moves_dropped_queue_full: get(&self.moves_dropped_queue_full),
            moves_dropped_not_in_world: get(&self.moves_dropped_not_in_world),
            chats_dropped_rate: get(&self.chats_dropped_rate),
            chats_dropped_queue_full: get(&self.chats_dropped_queue_full),
            spawn_packets_sent: get(&self.spawns_sent),
            despawn_packets_sent: get(&self.despawns_sent),
            move_deliveries: get(&self.move_deliveries),
            handovers: get(&self.handovers),
            transfers_out: get(&self.transfers_out),
            transfers_never_arrived: get(&self.transfers_never_arrived),
            transfers_in: get(&self.transfers_in),
            transfer_tokens_refused: get(&self.transfer_tokens_refused),
            world_leaves: get(&self.world_leaves),
            players_in_world: self.players_in_world.load(Ordering::Relaxed),
            world_enters: get(&self.world_enters),
            world_leave_requests: get(&self.world_leave_requests),
            ticks: get(&self.ticks),
            tick_overruns: get(&self.tick_overruns),
            crowded_cells: self.crowded_cells.load(Ordering::Relaxed),
            thinned_deliveries: get(&self.thinned_deliveries),
            positions_saved: get(&self.positions_saved),
            http_requests_served: get(&self.http_served),
            http_requests_not_found: get(&self.http_not_found),
            logins_refused_in_use: get(&self.logins_refused_in_use),
            leases_lost: get(&self.leases_lost),
            remote_chats_shed: get(&self.remote_chats_shed),
        }
    }
}

/// A snapshot of the game server's counters.
///
/// Its `Display` is one line of `key=value` pairs, [`GameStats::fields`] in
/// order (what `servercore server` prints when it stops, off a terminal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GameStats {
    /// Successful logins (`S_LOGIN success=true`).
    pub logins: u64,
    /// Refused logins: a second login on one session, an account name too
    /// long, a database error.
    pub logins_refused: u64,
    /// Of the refused logins, those refused because the database was
    /// unavailable (down, unreachable, stopped).
    pub logins_failed_db_down: u64,
    /// Sessions disconnected because their account logged in again (here
    /// or on another node).
    pub duplicate_login_kicks: u64,
    /// World chats from other nodes relayed to this node's players.
    pub remote_chats: u64,
    /// Players that entered the room.
    pub enters: u64,
    /// Refused `C_ENTER_GAME`: not logged in, index out of range, already
    /// in the room, the player already in the room from another session.
    pub enters_refused: u64,
    /// Chat messages broadcast to the room (one `S_CHAT` buffer each).
    pub chats_relayed: u64,
    /// `S_CHAT` sends, over all members (the broadcast's fan-out).
    pub chat_deliveries: u64,
    /// Chats dropped because the sender was not in the room.
    pub chats_refused_not_in_room: u64,
    /// Chats dropped because the message was longer than the maximum.
    pub chats_refused_too_long: u64,
    /// Connections disconnected for sending no `C_LOGIN` within the login deadline.
    pub login_timeouts: u64,
    /// Connections disconnected for leaving a started packet incomplete past the packet deadline.
    pub packet_timeouts: u64,
    /// Connections closed because their address already held `max_conns_per_ip`.
    pub conns_refused_per_ip: u64,
    /// Logins refused because their address created `max_new_accounts_per_min` accounts in the last minute (and the account did not exist).
    pub accounts_refused: u64,
    /// Logins refused for a bad, expired or malformed token.
    pub tokens_refused: u64,
    /// Sessions disconnected because their queued work passed its byte bound.
    pub pending_overflows: u64,
    /// Players in the room now.
    pub players_in_room: i64,
    /// Per-connection player states still alive (0 once every session has
    /// gone and its jobs have run).
    pub player_states: i64,
    /// Moves accepted (after clamping and the speed cut).
    pub moves: u64,
    /// Accepted moves whose point was outside the map and was clamped.
    pub moves_clamped: u64,
    /// Accepted moves that jumped too far and were cut to the speed limit.
    pub moves_cut: u64,
    /// Moves dropped: past the player's move rate.
    pub moves_dropped_rate: u64,
    /// Moves dropped: the player already had the most moves waiting for
    /// a tick.
    pub moves_dropped_queue_full: u64,
    /// Moves dropped: the sender was not in the world.
    pub moves_dropped_not_in_world: u64,
    /// Chats dropped: past the player's chat rate.
    pub chats_dropped_rate: u64,
    /// Chats dropped: the tick's world chat was full.
    pub chats_dropped_queue_full: u64,
    /// `S_SPAWN` packets sent (each lists one or more players).
    pub spawn_packets_sent: u64,
    /// `S_DESPAWN` packets sent.
    pub despawn_packets_sent: u64,
    /// `S_MOVE`s delivered as sent, over all receivers (the moves'
    /// fan-out).
    pub move_deliveries: u64,
    /// Players handed from one region to another at a tick.
    pub handovers: u64,
    /// Players handed over to another node's zone (`S_TRANSFER` sent).
    pub transfers_out: u64,
    /// Of those, players the target never showed within 10 s (they left).
    pub transfers_never_arrived: u64,
    /// Players that logged in here with a transfer token.
    pub transfers_in: u64,
    /// Transfer tokens refused (reused, expired, for another node, or
    /// signed with another secret).
    pub transfer_tokens_refused: u64,
    /// Players that left the world (`C_LEAVE_GAME` or a disconnect).
    pub world_leaves: u64,
    /// Players in the world now.
    pub players_in_world: i64,
    /// Players put into the world (each appears at the next tick).
    pub world_enters: u64,
    /// Leaves asked of the world (`C_LEAVE_GAME` or a disconnect; each is
    /// taken at the next tick).
    pub world_leave_requests: u64,
    /// World ticks run.
    pub ticks: u64,
    /// Ticks whose scheduled start came while the one before still ran
    /// (each started late, as soon as that one ended).
    pub tick_overruns: u64,
    /// Cells whose receivers got a crowd's thinned positions at the last
    /// tick.
    pub crowded_cells: i64,
    /// Latest positions sent to receivers in a crowd instead of every move
    /// (each an `S_MOVE` with `client_time_us` 0), over all receivers.
    pub thinned_deliveries: u64,
    /// Positions of moving players saved by the periodic saves (besides
    /// the save of every leave).
    pub positions_saved: u64,
    /// Plain HTTP requests on the WebSocket listener answered with a file
    /// of the browser client (page, scripts, favicon).
    pub http_requests_served: u64,
    /// Plain HTTP requests on the WebSocket listener for a path it does not
    /// serve (answered 404).
    pub http_requests_not_found: u64,
    /// Of the refused logins, those whose account another node held and
    /// did not let go (in a cluster).
    pub logins_refused_in_use: u64,
    /// Sessions disconnected because another node took their account's lease (this
    /// node was paused or cut off past the lease's time).
    pub leases_lost: u64,
    /// World chats from other nodes shed: the room had too much work
    /// waiting (the bound local chat is shed under).
    pub remote_chats_shed: u64,
}

impl GameStats {
    /// Every counter and gauge by its name, in the order the closing
    /// summary and the `key=value` line show them.
    pub fn fields(&self) -> [(&'static str, i64); 49] {
        let n = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        [
            ("logins", n(self.logins)),
            ("logins_refused", n(self.logins_refused)),
            ("logins_failed_db_down", n(self.logins_failed_db_down)),
            ("duplicate_login_kicks", n(self.duplicate_login_kicks)),
            ("remote_chats", n(self.remote_chats)),
            ("enters", n(self.enters)),
            ("enters_refused", n(self.enters_refused)),
            ("chats_relayed", n(self.chats_relayed)),
            ("chat_deliveries", n(self.chat_deliveries)),
            (
                "chats_refused_not_in_room",
                n(self.chats_refused_not_in_room),
            ),
            ("chats_refused_too_long", n(self.chats_refused_too_long)),
            ("players_in_room", self.players_in_room),
            ("player_states", self.player_states),
            ("moves", n(self.moves)),
            ("moves_clamped", n(self.moves_clamped)),
            ("moves_cut", n(self.moves_cut)),
            ("moves_dropped_rate", n(self.moves_dropped_rate)),
            ("moves_dropped_queue_full", n(self.moves_dropped_queue_full)),
            (
                "moves_dropped_not_in_world",
                n(self.moves_dropped_not_in_world),
            ),
            ("chats_dropped_rate", n(self.chats_dropped_rate)),
            ("chats_dropped_queue_full", n(self.chats_dropped_queue_full)),
            ("spawn_packets_sent", n(self.spawn_packets_sent)),
            ("despawn_packets_sent", n(self.despawn_packets_sent)),
            ("move_deliveries", n(self.move_deliveries)),
            ("handovers", n(self.handovers)),
            ("transfers_out", n(self.transfers_out)),
            ("transfers_never_arrived", n(self.transfers_never_arrived)),
            ("transfers_in", n(self.transfers_in)),
            ("transfer_tokens_refused", n(self.transfer_tokens_refused)),
            ("world_enters", n(self.world_enters)),
            ("world_leave_requests", n(self.world_leave_requests)),
            ("world_leaves", n(self.world_leaves)),
            ("players_in_world", self.players_in_world),
            ("ticks", n(self.ticks)),
            ("tick_overruns", n(self.tick_overruns)),
            ("crowded_cells", self.crowded_cells),
            ("thinned_deliveries", n(self.thinned_deliveries)),
            ("positions_saved", n(self.positions_saved)),
            ("login_timeouts", n(self.login_timeouts)),
            ("packet_timeouts", n(self.packet_timeouts)),
            ("conns_refused_per_ip", n(self.conns_refused_per_ip)),
            ("accounts_refused", n(self.accounts_refused)),
            ("tokens_refused", n(self.tokens_refused)),
            ("pending_overflows", n(self.pending_overflows)),
            ("http_requests_served", n(self.http_requests_served)),
            ("http_requests_not_found", n(self.http_requests_not_found)),
            ("logins_refused_in_use", n(self.logins_refused_in_use)),
            ("leases_lost", n(self.leases_lost)),
            ("remote_chats_shed", n(self.remote_chats_shed)),
        ]
    }

    /// Every move dropped, whatever the reason (clamped and cut moves were
    /// delivered, changed: they are not drops).
    pub fn moves_dropped(&self) -> u64 {
        self.moves_dropped_rate + self.moves_dropped_queue_full + self.moves_dropped_not_in_world
    }
}

impl fmt::Display for GameStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, (key, value)) in self.fields().iter().enumerate() {
            if at > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}
