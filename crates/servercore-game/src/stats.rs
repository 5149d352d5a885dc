//! The game server's counters: what was answered, refused and relayed, and
//! two gauges (players in the room, live player states) that must fall back
//! to zero once every client has left, the proof that sessions, players and
//! the room do not keep each other alive.

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
    pub(super) players_in_room: AtomicI64,
    pub(super) player_states: AtomicI64,
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
            players_in_room: self.players_in_room.load(Ordering::Relaxed),
            player_states: self.player_states.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the game server's counters.
///
/// Its `Display` is one line of `key=value` pairs (what `servercore server`
/// prints when it stops).
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
    /// Players in the room now.
    pub players_in_room: i64,
    /// Per-connection player states still alive (0 once every session has
    /// gone and its jobs have run).
    pub player_states: i64,
}

impl fmt::Display for GameStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "logins={} logins_refused={} logins_failed_db_down={} duplicate_login_kicks={} \
             remote_chats={} enters={} enters_refused={} chats_relayed={} \
             chat_deliveries={} chats_refused_not_in_room={} chats_refused_too_long={} \
             players_in_room={} player_states={}",
            self.logins,
            self.logins_refused,
            self.logins_failed_db_down,
            self.duplicate_login_kicks,
            self.remote_chats,
            self.enters,
            self.enters_refused,
            self.chats_relayed,
            self.chat_deliveries,
            self.chats_refused_not_in_room,
            self.chats_refused_too_long,
            self.players_in_room,
            self.player_states,
        )
    }
}
