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
//! At most [`MAX_PENDING_BYTES`] of packets wait (counted on the wire); a
//! client past that is disconnected. (The session's handler bounds the
//! packets queued as jobs for this actor the same way.)
//!
//! Logging in: with a token key, `C_LOGIN.account` must be a valid token
//! and the player logs in as the account it names. A login that might
//! create an account first takes one of its address's creation tokens
//! (module `limits`); without one it may only find an existing account.
//!
//! Ownership: the session's handler and pending jobs hold the actor; the
//! player holds its session's handle, the shared game context (the room's
//! actor among it) and only a weak handle to itself. The room holds the
//! session's handle, never the player. So nothing is left once the session
//! has closed and the player's last job has run.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use servercore::job::{Actor, WeakActor};
use servercore::packet::LogThrottle;
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    make_packet, CChat, Player as PlayerInfo, SEnterGame, SLogin, ServerPacket,
};

use super::db::{AccountRecord, DbError, PlayerRecord, MAX_ACCOUNT_LEN};
use super::stats::bump;
use super::GameContext;

/// Most bytes (on the wire) of packets a session may have waiting: queued
/// as jobs for its player, or kept while a login or an enter waits.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

static ACCOUNT_LIMIT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static TOKEN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

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
    room: InRoom,
    /// A login or an enter awaits its answer; packets wait in `deferred`.
    waiting: bool,
    /// Packets kept while waiting, with their size on the wire.
    deferred: VecDeque<(ServerPacket, usize)>,
    deferred_bytes: usize,
    /// The pending login took one of the address's account-creation tokens.
    creation_reserved: bool,
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
            room: InRoom::Out,
            waiting: false,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            creation_reserved: false,
            closed: false,
        });
        let me = actor.downgrade();
        actor.do_async(move |player| player.me = Some(me));
        actor
    }

    /// Handles one packet of the session (`size` bytes on the wire), or
    /// keeps it for later while an answer is awaited.
    pub fn on_packet(&mut self, packet: ServerPacket, size: usize) {
        if self.closed {
            return;
        }
        if self.waiting {
            if self.deferred_bytes + size > MAX_PENDING_BYTES {
                bump(&self.ctx.counters.pending_overflows);
                tracing::warn!(
                    session = %self.handle.id(),
                    peer = %self.handle.peer_addr(),
                    "more than {MAX_PENDING_BYTES} bytes of packets while waiting for an answer; \
                     disconnecting"
                );
                self.handle
                    .disconnect_with(DisconnectReason::RateLimited(format!(
                        "more than {MAX_PENDING_BYTES} bytes of packets sent while a login or \
                         enter was pending"
                    )));
                self.deferred.clear();
                self.deferred_bytes = 0;
                return;
            }
            self.deferred_bytes += size;
            self.deferred.push_back((packet, size));
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

    /// The session closed: leave the room and drop whatever waits.
    pub fn leave(&mut self) {
        self.closed = true;
        self.deferred.clear();
        self.deferred_bytes = 0;
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
        let account = match &self.ctx.auth {
            None => account,
            Some(key) => match key.verify(&account) {
                Ok(account) => account,
                Err(error) => {
                    bump(&self.ctx.counters.tokens_refused);
                    if let Some(refused) = TOKEN_LOG.event() {
                        tracing::warn!(
                            session = %self.handle.id(),
                            peer = %self.handle.peer_addr(),
                            %error,
                            refused,
                            "login refused: bad token"
                        );
                    }
                    self.refuse_login();
                    return;
                }
            },
        };
        if account.len() > MAX_ACCOUNT_LEN {
            tracing::debug!(
                session = %self.handle.id(),
                len = account.len(),
                "login refused: account name too long"
            );
            self.refuse_login();
            return;
        }
        self.creation_reserved = self
            .ctx
            .limits
            .try_reserve_account(self.handle.peer_addr().ip());
        self.waiting = true;
        let me = self.me.clone();
        self.ctx.db.login(
            account,
            self.creation_reserved,
            Box::new(move |result| {
                // On the database thread: hand the result back as a job.
                if let Some(player) = me.and_then(|me| me.upgrade()) {
                    player.post(move |player| player.logged_in(result));
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

    fn logged_in(&mut self, result: Result<AccountRecord, DbError>) {
        self.waiting = false;
        let created = matches!(&result, Ok(record) if record.created);
        if std::mem::take(&mut self.creation_reserved) && !created {
            self.ctx.limits.refund_account(self.handle.peer_addr().ip());
        }
        if self.closed {
            return;
        }
        match result {
            Ok(record) => {
                bump(&self.ctx.counters.logins);
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
            Err(DbError::NoSuchAccount) => {
                bump(&self.ctx.counters.accounts_refused);
                if let Some(refused) = ACCOUNT_LIMIT_LOG.event() {
                    tracing::warn!(
                        session = %self.handle.id(),
                        peer = %self.handle.peer_addr(),
                        refused,
                        total = ACCOUNT_LIMIT_LOG.total(),
                        "login refused: the address created the most accounts allowed this \
                         minute"
                    );
                }
                self.refuse_login();
            }
            Err(error) => {
                tracing::warn!(session = %self.handle.id(), %error, "login failed");
                self.refuse_login();
            }
        }
        self.replay();
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
            let Some((packet, size)) = self.deferred.pop_front() else {
                break;
            };
            self.deferred_bytes -= size;
            self.on_packet(packet, size);
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
