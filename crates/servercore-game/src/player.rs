//! The player: one connection's game-side state, an
//! [`Actor<Player>`](servercore::job::Actor) (the course's `GameSession` with
//! its `_players` and `_currentPlayer`).
//!
//! This module owns the conversation's rules: log in once, then enter the
//! room with one of the account's players, then chat. Every decoded `C_`
//! packet of the session becomes one job of this actor, so packets are
//! handled in arrival order, away from the I/O worker's callbacks, and the
//! results of the database thread and of the room come back as jobs too.
//!
//! While a login or an enter waits for its answer (from the database thread,
//! or the room), later packets are kept, in order, and handled once the
//! answer is in: a client may pipeline `C_LOGIN`, `C_ENTER_GAME` and
//! `C_CHAT` without waiting, and they mean what they would mean one by one.
//! At most [`MAX_DEFERRED`] packets wait; a client past that is
//! disconnected.
//!
//! Ownership: the session's handler and pending jobs hold the actor; the
//! player holds its session's handle, the shared game context (the room's
//! actor among it) and only a weak handle to itself. The room holds the
//! session's handle, never the player. So nothing is left once the session
//! has closed and the player's last job has run.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use servercore::job::{Actor, WeakActor};
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    make_packet, CChat, Player as PlayerInfo, SEnterGame, SLogin, ServerPacket,
};

use super::sessions;
use super::stats::bump;
use super::storage::{AccountRecord, DbError, PlayerRecord, MAX_ACCOUNT_LEN};
use super::GameContext;

/// Most packets kept while a login or an enter waits for its answer.
pub const MAX_DEFERRED: usize = 256;

/// Where the connection stands with the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InRoom {
    /// Not in the room.
    Out,
    /// Asked the room to let this player in; no answer yet.
    Entering(u64),
    /// In the room as this player.
    In(u64),
}

/// One connection's game-side state, owned by its actor.
pub struct Player {
    handle: SessionHandle,
    ctx: Arc<GameContext>,
    /// This player's own actor, weakly (set by the first job).
    me: Option<WeakActor<Player>>,
    /// The account's players, once logged in.
    account: Option<AccountRecord>,
    /// The account's name, once logged in with one (guests have none):
    /// this session holds it on this node and in the cluster.
    account_name: Option<String>,
    room: InRoom,
    /// A login or an enter awaits its answer; packets wait in `deferred`.
    waiting: bool,
    deferred: VecDeque<ServerPacket>,
    closed: bool,
}

impl Player {
    /// Creates the player of a newly connected session.
    pub fn spawn(handle: SessionHandle, ctx: Arc<GameContext>) -> Actor<Player> {
        ctx.counters.player_states.fetch_add(1, Ordering::Relaxed);
        let actor = Actor::new(Player {
            handle,
            ctx,
            me: None,
            account: None,
            account_name: None,
            room: InRoom::Out,
            waiting: false,
            deferred: VecDeque::new(),
            closed: false,
        });
        let me = actor.downgrade();
        actor.do_async(move |player| player.me = Some(me));
        actor
    }

    /// Handles one packet of the session, or keeps it for later while an
    /// answer is awaited.
    pub fn on_packet(&mut self, packet: ServerPacket) {
        if self.closed {
            return;
        }
        if self.waiting {
            if self.deferred.len() >= MAX_DEFERRED {
                tracing::warn!(
                    session = %self.handle.id(),
                    peer = %self.handle.peer_addr(),
                    "more than {MAX_DEFERRED} packets while waiting for an answer; disconnecting"
                );
                self.handle
                    .disconnect_with(DisconnectReason::RateLimited(format!(
                        "more than {MAX_DEFERRED} packets sent while a login or enter was pending"
                    )));
                self.deferred.clear();
                return;
            }
            self.deferred.push_back(packet);
            return;
        }
        match packet {
            ServerPacket::CLogin(msg) => self.login(msg.account),
            ServerPacket::CEnterGame(msg) => self.enter(msg.player_index),
            ServerPacket::CChat(msg) => self.chat(msg),
            // The world's packets are not handled yet: the handler never
            // forwards them.
            ServerPacket::CLeaveGame(_) | ServerPacket::CMove(_) => {}
        }
    }

    /// The session closed (or lost its account to a newer login): leave
    /// the room, let go of the account, and drop whatever waits. Running it
    /// twice does nothing the second time.
    pub fn leave(&mut self) {
        self.closed = true;
        self.deferred.clear();
        if let Some(name) = self.account_name.take() {
            if self.ctx.sessions.release(&name, self.handle.id()) {
                if let Some(cluster) = &self.ctx.cluster {
                    cluster.offline(name);
                }
            }
        }
        if let InRoom::Entering(player_id) | InRoom::In(player_id) = self.room {
            let session = self.handle.id();
            self.ctx
                .room
                .do_async(move |room| room.leave(player_id, session));
        }
        self.room = InRoom::Out;
    }

    fn login(&mut self, account: String) {
        if self.account.is_some() {
            tracing::debug!(session = %self.handle.id(), "login refused: already logged in");
            self.refuse_login();
            return;
        }
        if account.len() > MAX_ACCOUNT_LEN {
            tracing::debug!(
                session = %self.handle.id(),
                len = account.len(),
                "login refused: account name too long"
            );
            self.refuse_login();
            return;
        }
        self.waiting = true;
        if account.is_empty() {
            return self.ask_storage(account);
        }
        // One account, one session: whoever holds it (here or on another
        // node) is disconnected and its save committed before we log in.
        let me = self.me.clone();
        let name = account.clone();
        self.ctx.take_over(
            account,
            Box::new(move || {
                if let Some(player) = me.and_then(|me| me.upgrade()) {
                    player.post(move |player| player.ask_storage(name));
                }
            }),
        );
    }

    fn ask_storage(&mut self, account: String) {
        if self.closed {
            self.waiting = false;
            return;
        }
        let me = self.me.clone();
        let name = account.clone();
        self.ctx.db.login(
            account,
            Box::new(move |result| {
                // On the database thread: hand the result back as a job.
                if let Some(player) = me.and_then(|me| me.upgrade()) {
                    player.post(move |player| player.logged_in(name, result));
                }
            }),
        );
    }

    fn refuse_login(&mut self) {
        bump(&self.ctx.counters.logins_refused);
        let _ = self.handle.send(make_packet(&SLogin {
            success: false,
            players: Vec::new(),
        }));
    }

    fn logged_in(&mut self, name: String, result: Result<AccountRecord, DbError>) {
        self.waiting = false;
        if self.closed {
            return;
        }
        match result {
            Ok(record) => {
                bump(&self.ctx.counters.logins);
                if !name.is_empty() {
                    self.hold_account(name);
                }
                let players = record.players.iter().map(player_info).collect();
                tracing::debug!(
                    session = %self.handle.id(),
                    account_id = record.account_id,
                    created = record.created,
                    "logged in"
                );
                self.account = Some(record);
                let _ = self.handle.send(make_packet(&SLogin {
                    success: true,
                    players,
                }));
            }
            Err(error) => {
                tracing::debug!(session = %self.handle.id(), %error, "login failed");
                if matches!(error, DbError::Unavailable(_) | DbError::Closed) {
                    bump(&self.ctx.counters.logins_failed_db_down);
                }
                self.refuse_login();
            }
        }
        self.replay();
    }

    /// Registers this session as the holder of `name` here and in the
    /// cluster; a session that logged in the same account meanwhile (a
    /// race the handover cannot see) is the one that goes.
    fn hold_account(&mut self, name: String) {
        let Some(me) = self.me.clone() else { return };
        let previous = self.ctx.sessions.register(&name, self.handle.clone(), me);
        if let Some((handle, player)) = previous {
            if handle.id() != self.handle.id() {
                sessions::kick(
                    name.clone(),
                    handle,
                    player,
                    self.ctx.db.clone(),
                    &self.ctx.counters,
                    Box::new(|| {}),
                );
            }
        }
        if let Some(cluster) = &self.ctx.cluster {
            cluster.online(name.clone());
        }
        self.account_name = Some(name);
    }

    fn enter(&mut self, index: u64) {
        let Some(account) = &self.account else {
            tracing::debug!(session = %self.handle.id(), "enter refused: not logged in");
            return self.refuse_enter();
        };
        if self.room != InRoom::Out {
            tracing::debug!(session = %self.handle.id(), "enter refused: already in the room");
            return self.refuse_enter();
        }
        let Some(record) = usize::try_from(index)
            .ok()
            .and_then(|index| account.players.get(index))
        else {
            tracing::debug!(
                session = %self.handle.id(),
                index,
                players = account.players.len(),
                "enter refused: player index out of range"
            );
            return self.refuse_enter();
        };
        let (player_id, name) = (record.id, record.name.clone());
        self.room = InRoom::Entering(player_id);
        self.waiting = true;
        let handle = self.handle.clone();
        let me = self.me.clone();
        self.ctx.room.do_async(move |room| {
            let entered = room.enter(player_id, name, handle);
            if let Some(player) = me.and_then(|me| me.upgrade()) {
                player.do_async(move |player| player.entered(player_id, entered));
            }
        });
    }

    fn refuse_enter(&mut self) {
        bump(&self.ctx.counters.enters_refused);
        let _ = self.handle.send(make_packet(&SEnterGame {
            success: false,
            player_id: 0,
            player: None,
        }));
    }

    fn entered(&mut self, player_id: u64, entered: bool) {
        self.waiting = false;
        if self.closed {
            return; // `leave` already told the room
        }
        self.room = if entered {
            InRoom::In(player_id)
        } else {
            InRoom::Out
        };
        self.replay();
    }

    fn chat(&mut self, msg: CChat) {
        let InRoom::In(player_id) = self.room else {
            // S_CHAT has no success field: the refusal is a drop, logged and
            // counted.
            tracing::debug!(session = %self.handle.id(), "chat refused: not in the room");
            bump(&self.ctx.counters.chats_refused_not_in_room);
            return;
        };
        let session = self.handle.id();
        self.ctx.room.do_async(move |room| {
            room.chat(player_id, session, msg.msg, msg.client_time_us);
        });
    }

    /// Handles the packets kept while waiting, until one waits again.
    fn replay(&mut self) {
        while !self.waiting && !self.closed {
            let Some(packet) = self.deferred.pop_front() else {
                break;
            };
            self.on_packet(packet);
        }
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.ctx
            .counters
            .player_states
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn player_info(record: &PlayerRecord) -> PlayerInfo {
    PlayerInfo {
        id: record.id,
        name: record.name.clone(),
        player_type: record.player_type,
    }
}
