//! The player: one connection's game-side state, an
//! [`Actor<Player>`](servercore::job::Actor) (the course's `GameSession` with
//! its `_players` and `_currentPlayer`).
//!
//! This module owns the conversation's rules: log in once, then enter the
//! game with one of the account's players (the room for chat, the world for
//! movement), then chat, move, leave and enter again. Every decoded `C_`
//! packet of the session becomes one job of this actor, so packets are
//! handled in arrival order, away from the I/O worker's callbacks, and the
//! results of the database thread, the room and the world's regions come
//! back as jobs too.
//!
//! The player actor is the authority on its player's position: it applies
//! the movement rules ([`World::accept_move`](crate::world::World::accept_move))
//! and leaves each accepted move in the player's [`Seat`], where the
//! world's next tick takes it (see the world's docs). It saves the position
//! through the database thread when the player leaves the world or the
//! session closes.
//!
//! While a login, an enter or a leave waits for its answer, later packets are kept, in order, and handled once the answer is
//! in: a client may pipeline `C_LOGIN`, `C_ENTER_GAME`, `C_MOVE` and `C_CHAT`
//! without waiting, and they mean what they would mean one by one. At most
//! [`MAX_PENDING_BYTES`] of packets wait (counted on the wire); a client
//! past that is disconnected. (The session's handler bounds the packets
//! queued as jobs for this actor the same way.)
//!
//! Logging in: with a token key, `C_LOGIN.account` must be a valid token
//! and the player logs in as the account it names. A login that might
//! create an account first takes one of its address's creation tokens
//! (module `limits`); without one it may only find an existing account.
//!
//! Ownership: the session's handler and pending jobs hold the actor; the
//! player holds its session's handle, the shared game context (the room's
//! and the regions' actors among it) and only a weak handle to itself. The
//! room and the regions hold the session's handle, never the player; only
//! an answer in flight (a job) holds the player. So nothing is left once the
//! session has closed and the player's last job has run.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use servercore::job::{Actor, WeakActor};
use servercore::packet::LogThrottle;
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    make_packet, try_make_packet, CChat, CMove, LoginRefusal, ObjectInfo, Player as PlayerInfo,
    PosInfo, SChat, SEnterGame, SLogin, ServerPacket,
};

use super::sessions;
use super::stats::bump;
use super::storage::{AccountRecord, DbError, PlayerRecord, Position, MAX_ACCOUNT_LEN};
use super::world::{Identity, Seat};
use super::{GameContext, PendingLogin};

/// Most bytes (on the wire) of packets a session may have waiting: queued
/// as jobs for its player, or kept while a login or an enter waits.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

static ACCOUNT_LIMIT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static TOKEN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static DEFERRED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// Where the connection stands with the game.
#[derive(Clone)]
enum Presence {
    /// Not in the game.
    Out,
    /// Asked the room to let this player in; no answer yet.
    Entering,
    /// In the game: in the room, and in the world through `seat`.
    In { player_id: u64, seat: Arc<Seat> },
    /// Leaving the room and the world.
    Leaving,
}

impl Presence {
    fn is_out(&self) -> bool {
        matches!(self, Presence::Out)
    }
}

/// The player in the world: what the actor knows of it.
struct Body {
    identity: Arc<Identity>,
    pos: PosInfo,
    /// When the last move was accepted (or the player entered).
    last_move: Instant,
}

/// One connection's game-side state, owned by its actor.
pub struct Player {
    handle: SessionHandle,
    ctx: Arc<GameContext>,
    /// This player's own actor, weakly (set by the first job).
    me: Option<WeakActor<Player>>,
    /// The account's players, once logged in.
    account: Option<AccountRecord>,
    /// The account's name, once logged in with one (guests have none).
    account_name: Option<String>,
    /// This session holds `account_name` on this node and in the cluster.
    holds_account: bool,
    presence: Presence,
    body: Option<Body>,
    /// An answer is awaited; packets wait in `deferred`.
    waiting: bool,
    /// Packets kept while waiting: arrival time and size on the wire.
    deferred: VecDeque<(ServerPacket, Instant, usize)>,
    deferred_bytes: usize,
    /// The pending login took one of the address's account-creation tokens.
    creation_reserved: bool,
    closed: bool,
    /// The peer finished sending: close once every packet is answered.
    peer_finished: bool,
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
            holds_account: false,
            presence: Presence::Out,
            body: None,
            waiting: false,
            deferred: VecDeque::new(),
            deferred_bytes: 0,
            creation_reserved: false,
            closed: false,
            peer_finished: false,
        });
        let me = actor.downgrade();
        actor.do_async(move |player| player.me = Some(me));
        actor
    }

    /// Handles one packet of the session, received at `received` (`size`
    /// bytes on the wire), or keeps it for later while an answer is awaited.
    pub fn on_packet(&mut self, packet: ServerPacket, received: Instant, size: usize) {
        if self.closed {
            return;
        }
        if self.waiting {
            if self.deferred_bytes + size > MAX_PENDING_BYTES {
                bump(&self.ctx.counters.pending_overflows);
                if let Some(cuts) = DEFERRED_LOG.event() {
                    tracing::warn!(
                        session = %self.handle.id(),
                        peer = %self.handle.peer_addr(),
                        cuts,
                        "more than {MAX_PENDING_BYTES} bytes of packets while waiting for an \
                         answer; disconnecting"
                    );
                }
                self.handle
                    .disconnect_with(DisconnectReason::RateLimited(format!(
                        "more than {MAX_PENDING_BYTES} bytes of packets sent while a login, \
                         enter, border crossing or leave was pending"
                    )));
                self.deferred.clear();
                self.deferred_bytes = 0;
                return;
            }
            self.deferred_bytes += size;
            self.deferred.push_back((packet, received, size));
            return;
        }
        match packet {
            ServerPacket::CLogin(msg) => self.login(msg.account),
            ServerPacket::CEnterGame(msg) => self.enter(msg.player_index),
            ServerPacket::CChat(msg) => self.chat(msg),
            ServerPacket::CMove(msg) => self.move_to(msg, received),
            ServerPacket::CLeaveGame(_) => self.leave_game(),
        }
    }

    /// The peer sent its last packet (it half-closed). Runs after the jobs of
    /// every packet it sent; the session closes once they are all answered,
    /// so a client that sends `C_LOGIN` and shuts its write side down still
    /// gets its `S_LOGIN`.
    pub fn peer_finished(&mut self) {
        self.peer_finished = true;
        self.close_if_answered();
    }

    fn close_if_answered(&mut self) {
        if self.peer_finished && !self.waiting && self.deferred.is_empty() && !self.closed {
            self.handle.disconnect_with(DisconnectReason::ClosedByPeer);
        }
    }

    /// The session closed (or lost its account to a newer login): leave
    /// the game (now, or once the pending answer is in), save the position,
    /// let go of the account, and drop whatever waits. Running it twice does
    /// nothing the second time.
    pub fn leave(&mut self) {
        self.closed = true;
        self.deferred.clear();
        self.deferred_bytes = 0;
        match self.presence {
            Presence::In { .. } => self.exit(false),
            // Entering: the answer's handler sees `closed` and leaves;
            // Leaving: already on its way out.
            Presence::Out | Presence::Entering | Presence::Leaving => {}
        }
        self.release_account();
    }

    fn strong_me(&self) -> Option<Actor<Player>> {
        self.me.as_ref().and_then(WeakActor::upgrade)
    }

    fn login(&mut self, account: String) {
        if self.account.is_some() {
            tracing::debug!(session = %self.handle.id(), "login refused: already logged in");
            self.refuse_login(LoginRefusal::AlreadyLoggedIn);
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
                    self.refuse_login(LoginRefusal::BadToken);
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
            self.refuse_login(LoginRefusal::AccountNameTooLong);
            return;
        }
        let Some(pending) = self.ctx.logins.admit() else {
            // The server is stopping: the login is left unread.
            return;
        };
        self.creation_reserved = self
            .ctx
            .limits
            .try_reserve_account(self.handle.peer_addr().ip());
        self.waiting = true;
        if account.is_empty() {
            return self.ask_storage(account, pending);
        }
        // One account, one session: whoever holds it (here or on another
        // node) is disconnected and its save committed before we log in.
        let me = self.me.clone();
        let name = account.clone();
        self.ctx.take_over(
            account,
            Box::new(move || {
                if let Some(player) = me.and_then(|me| me.upgrade()) {
                    player.post(move |player| player.ask_storage(name, pending));
                }
            }),
        );
    }

    fn ask_storage(&mut self, account: String, pending: PendingLogin) {
        if self.closed {
            self.waiting = false;
            if std::mem::take(&mut self.creation_reserved) {
                self.ctx.limits.refund_account(self.handle.peer_addr().ip());
            }
            return;
        }
        let me = self.me.clone();
        let name = account.clone();
        self.ctx.db.login(
            account,
            self.creation_reserved,
            Box::new(move |result| {
                // On the database thread: hand the result back as a job.
                if let Some(player) = me.and_then(|me| me.upgrade()) {
                    player.post(move |player| {
                        player.logged_in(name, result);
                        // The answer is queued: a stop may close the session.
                        drop(pending);
                    });
                }
            }),
        );
    }

    fn refuse_login(&mut self, reason: LoginRefusal) {
        bump(&self.ctx.counters.logins_refused);
        let _ = self.handle.send(login_refusal(reason));
    }

    fn logged_in(&mut self, name: String, result: Result<AccountRecord, DbError>) {
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
                    reason: LoginRefusal::Unspecified as i32,
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
                self.refuse_login(LoginRefusal::AccountLimit);
            }
            Err(error) => {
                tracing::debug!(session = %self.handle.id(), %error, "login failed");
                let reason = if matches!(error, DbError::Unavailable(_) | DbError::Closed) {
                    bump(&self.ctx.counters.logins_failed_db_down);
                    LoginRefusal::DatabaseUnavailable
                } else {
                    LoginRefusal::ServerError
                };
                self.refuse_login(reason);
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
        self.holds_account = true;
    }

    /// Lets go of the account: here at once, in the cluster once every save
    /// of it sent so far is committed (so a login elsewhere reads it).
    fn release_account(&mut self) {
        if !std::mem::take(&mut self.holds_account) {
            return;
        }
        let Some(name) = self.account_name.clone() else {
            return;
        };
        if !self.ctx.sessions.release(&name, self.handle.id()) {
            return;
        }
        if let Some(cluster) = self.ctx.cluster.clone() {
            let account = name.clone();
            self.ctx
                .db
                .barrier(&name, Box::new(move || cluster.offline(account)));
        }
    }

    fn enter(&mut self, index: u64) {
        let Some(account) = &self.account else {
            tracing::debug!(session = %self.handle.id(), "enter refused: not logged in");
            return self.refuse_enter();
        };
        if !self.presence.is_out() {
            tracing::debug!(session = %self.handle.id(), "enter refused: already in the game");
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
        let player_id = record.id;
        let world = &self.ctx.world;
        let pos = match record.position {
            Some(saved) => world.restore_pos(player_id, saved.x, saved.y, saved.z, saved.yaw),
            None => world.random_pos(player_id),
        };
        let identity = Arc::new(Identity {
            name: record.name.clone(),
            player_type: record.player_type,
        });
        let info = ObjectInfo {
            object_id: player_id,
            player_type: identity.player_type,
            pos_info: Some(pos),
            name: identity.name.clone(),
        };
        self.body = Some(Body {
            identity,
            pos,
            last_move: Instant::now(),
        });
        self.presence = Presence::Entering;
        self.waiting = true;
        let handle = self.handle.clone();
        let me = self.me.clone();
        let world = Arc::clone(&self.ctx.world);
        let identity = Arc::clone(&self.body.as_ref().expect("just set").identity);
        self.ctx.room.do_async(move |room| {
            let seat = room.enter(&world, identity, handle, info);
            if let Some(player) = me.and_then(|me| me.upgrade()) {
                player.do_async(move |player| player.entered(player_id, seat));
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

    /// The room's answer to an enter: the player's seat in the world if it
    /// was let in.
    fn entered(&mut self, player_id: u64, seat: Option<Arc<Seat>>) {
        let Some(seat) = seat else {
            self.presence = Presence::Out;
            self.body = None;
            self.waiting = false;
            self.replay();
            return;
        };
        if self.closed {
            let session = self.handle.id();
            let world = Arc::clone(&self.ctx.world);
            self.ctx.room.do_async(move |room| {
                room.leave(player_id, session);
                world.leave(&seat, false, Box::new(|| {}));
            });
            self.presence = Presence::Out;
            self.body = None;
            return;
        }
        self.presence = Presence::In { player_id, seat };
        self.waiting = false;
        self.replay();
    }

    fn move_to(&mut self, msg: CMove, received: Instant) {
        let Presence::In { seat, .. } = &self.presence else {
            tracing::debug!(session = %self.handle.id(), "move dropped: not in the world");
            bump(&self.ctx.counters.moves_dropped_not_in_world);
            return;
        };
        let world = &self.ctx.world;
        let body = self.body.as_mut().expect("in the world");
        let requested = msg.info.unwrap_or_default();
        let since_last = received.saturating_duration_since(body.last_move);
        let accepted = world.accept_move(&body.pos, &requested, since_last);
        body.pos = accepted.pos;
        body.last_move = body.last_move.max(received);
        world.push_move(seat, accepted.pos, msg.client_time_us);
        // Counted once queued for the tick (a test steps the tick then).
        let counters = &self.ctx.counters;
        if accepted.clamped {
            bump(&counters.moves_clamped);
        }
        if accepted.cut {
            bump(&counters.moves_cut);
        }
        bump(&counters.moves);
    }

    fn leave_game(&mut self) {
        if !matches!(self.presence, Presence::In { .. }) {
            tracing::debug!(session = %self.handle.id(), "leave ignored: not in the game");
            return;
        }
        self.exit(true);
    }

    /// Leaves the room, then the world (`S_LEAVE_GAME` if `tell`, at the
    /// next tick), and saves the position. Only from `In`.
    fn exit(&mut self, tell: bool) {
        let Presence::In { player_id, seat } =
            std::mem::replace(&mut self.presence, Presence::Leaving)
        else {
            return;
        };
        self.save_position(player_id);
        self.waiting = true;
        let me = self.strong_me();
        let left = Box::new(move || {
            if let Some(player) = me {
                player.post(Player::left);
            }
        });
        // The room first, then the world: once the room has let the player
        // go, no enter of it from another session is refused.
        let session = self.handle.id();
        let world = Arc::clone(&self.ctx.world);
        self.ctx.room.do_async(move |room| {
            room.leave(player_id, session);
            world.leave(&seat, tell, left);
        });
    }

    /// Saves where player `player_id` stands, through the database thread
    /// of its account (ordered with the account's logins), and remembers it
    /// for the next enter on this session.
    fn save_position(&mut self, player_id: u64) {
        let Some(body) = &self.body else { return };
        let saved = Position {
            x: body.pos.x,
            y: body.pos.y,
            z: body.pos.z,
            yaw: body.pos.yaw,
        };
        let account = self.account_name.as_deref().unwrap_or("");
        self.ctx.db.save_position(account, player_id, saved, None);
        if let Some(record) = self
            .account
            .as_mut()
            .and_then(|account| account.players.iter_mut().find(|p| p.id == player_id))
        {
            record.position = Some(saved);
        }
    }

    /// The world let the player go.
    fn left(&mut self) {
        bump(&self.ctx.counters.world_leaves);
        self.presence = Presence::Out;
        self.body = None;
        self.waiting = false;
        self.replay();
    }

    fn chat(&mut self, msg: CChat) {
        let Presence::In { player_id, .. } = self.presence else {
            // S_CHAT has no success field: the refusal is a drop, logged and
            // counted.
            tracing::debug!(session = %self.handle.id(), "chat refused: not in the game");
            bump(&self.ctx.counters.chats_refused_not_in_room);
            return;
        };
        let packet = match try_make_packet(&SChat {
            player_id,
            msg: msg.msg,
            client_time_us: msg.client_time_us,
        }) {
            Ok(packet) => packet,
            Err(error) => {
                // Only if the configured chat limit exceeds the frame size.
                tracing::warn!(player_id, %error, "chat not relayed");
                bump(&self.ctx.counters.chats_refused_too_long);
                return;
            }
        };
        if !self.ctx.world.push_chat(&packet) {
            return;
        }
        bump(&self.ctx.counters.chats_relayed);
        if let Some(cluster) = &self.ctx.cluster {
            cluster.publish_chat(packet);
        }
    }

    /// Handles the packets kept while waiting, until one waits again.
    fn replay(&mut self) {
        while !self.waiting && !self.closed {
            let Some((packet, received, size)) = self.deferred.pop_front() else {
                break;
            };
            self.deferred_bytes -= size;
            self.on_packet(packet, received, size);
        }
        self.close_if_answered();
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

/// The `S_LOGIN` that refuses a login, saying why.
pub(crate) fn login_refusal(reason: LoginRefusal) -> bytes::Bytes {
    make_packet(&SLogin {
        success: false,
        players: Vec::new(),
        reason: reason as i32,
    })
}

fn player_info(record: &PlayerRecord) -> PlayerInfo {
    PlayerInfo {
        id: record.id,
        name: record.name.clone(),
        player_type: record.player_type,
    }
}
