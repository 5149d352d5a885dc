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
//! A named account is claimed on this node first (module `sessions`: an
//! older session of it here is kicked, and its save committed, before the
//! database is read); in a cluster the login then takes the account's
//! lease in the database. A lease another node holds is asked for (that
//! node kicks its session and lets go) or waited out until it expires,
//! within a bound; past it the login is refused, naming the holder in the
//! log. While its lease cannot be vouched for (module `lease`), the
//! session holds its packets as it does while waiting for an answer.
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

use super::lease::Lease;
use super::stats::bump;
use super::storage::{AccountRecord, DbError, PlayerRecord, Position, MAX_ACCOUNT_LEN};
use super::world::{Identity, Seat};
use super::{ChatSource, GameContext, PendingLogin};

/// Most bytes (on the wire) of packets a session may have waiting: queued
/// as jobs for its player, or kept while a login or an enter waits.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

static ACCOUNT_LIMIT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static TOKEN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static DEFERRED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static IN_USE_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// One login's tries at the database: when the first began, which this is,
/// and when it was sent (a lease it takes is fresh from then on).
#[derive(Debug, Clone, Copy)]
struct LoginTry {
    began: Instant,
    attempt: u32,
    asked: Instant,
}

impl LoginTry {
    fn first() -> LoginTry {
        let now = Instant::now();
        LoginTry {
            began: now,
            attempt: 0,
            asked: now,
        }
    }
}

/// Called once the session has left (its player is out of the room and
/// the world, its save queued).
pub(crate) type GoneReply = Box<dyn FnOnce() + Send>;

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
    /// This session claims or holds `account_name` on this node.
    holds_account: bool,
    /// The account's lease, once the login took it (in a cluster).
    lease: Option<Arc<Lease>>,
    /// Packets wait until a renewal vouches for the lease again.
    lease_hold: bool,
    /// Called once the session has left (a kick waits for it).
    gone_waiters: Vec<GoneReply>,
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
            lease: None,
            lease_hold: false,
            gone_waiters: Vec::new(),
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
        if self.waiting || self.lease_unvouched() {
            if self.deferred_bytes + size > MAX_PENDING_BYTES {
                bump(&self.ctx.counters.pending_overflows);
                if let Some(disconnects) = DEFERRED_LOG.event() {
                    tracing::warn!(
                        session = %self.handle.id(),
                        peer = %self.handle.peer_addr(),
                        disconnects,
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

    /// True if the session holds a lease this node cannot vouch for now
    /// (a renewal is due: the node may have been paused or cut off past
    /// the lease's time); the session then holds its packets until a
    /// renewal confirms the lease, or is disconnected if another node took it.
    fn lease_unvouched(&mut self) -> bool {
        if self.lease_hold {
            return true;
        }
        let Some(lease) = &self.lease else {
            return false;
        };
        if lease.is_fresh(Instant::now()) {
            return false;
        }
        lease.wait_for_renewal();
        self.lease_hold = true;
        self.ctx.renew_leases_now();
        true
    }

    /// A renewal vouched for the lease again: handle what waited.
    pub(crate) fn lease_confirmed(&mut self) {
        if std::mem::take(&mut self.lease_hold) {
            self.replay();
        }
    }

    /// Calls `done` once the session has left: at once if it has.
    pub(crate) fn when_gone(&mut self, done: GoneReply) {
        if self.closed {
            done();
        } else {
            self.gone_waiters.push(done);
        }
    }

    fn close_if_answered(&mut self) {
        if self.peer_finished
            && !self.waiting
            && !self.lease_hold
            && self.deferred.is_empty()
            && !self.closed
        {
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
        // After the save and the release are queued: a barrier a waiter
        // sends comes after them.
        for done in std::mem::take(&mut self.gone_waiters) {
            done();
        }
    }

    fn strong_me(&self) -> Option<Actor<Player>> {
        self.me.as_ref().and_then(WeakActor::upgrade)
    }

    fn login(&mut self, account: String) {
        if self.account.is_some() || self.holds_account {
            tracing::debug!(session = %self.handle.id(), "login refused: already logged in");
            self.refuse_login(LoginRefusal::AlreadyLoggedIn);
            return;
        }
        // On a node of a shared world a token-shaped account is a player
        // handed over from another node's zone (or refused).
        let mut transferred = None;
        if let Some(transfers) = &self.ctx.transfers {
            if crate::transfer::looks_like_token(&account) {
                match transfers.accept(&account) {
                    Ok(claims) => transferred = Some(claims.sub),
                    // A login token of --auth-secret, checked below.
                    Err(crate::transfer::TransferRefusal::BadSignature)
                        if self.ctx.auth.is_some() => {}
                    Err(error) => {
                        bump(&self.ctx.counters.transfer_tokens_refused);
                        self.refuse_bad_token(&error, "login refused: bad transfer token");
                        return;
                    }
                }
            }
        }
        if transferred.is_some() {
            bump(&self.ctx.counters.transfers_in);
        }
        let account = match (&self.ctx.auth, transferred) {
            (_, Some(account)) => account,
            (None, None) => account,
            (Some(key), None) => match key.verify(&account) {
                Ok(account) => account,
                Err(error) => {
                    bump(&self.ctx.counters.tokens_refused);
                    self.refuse_bad_token(&error, "login refused: bad token");
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
        let Some(me) = self.me.clone() else { return };
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
            return self.ask_storage(account, pending, LoginTry::first());
        }
        // One account, one session: claimed here before the database is
        // read, so a login of it on this node, however close behind, kicks
        // this session and waits for its save; whoever claimed it before us
        // is kicked, and its save committed, before we read.
        self.account_name = Some(account.clone());
        self.holds_account = true;
        let name = account.clone();
        let player = me.clone();
        self.ctx.take_over(
            &account,
            self.handle.clone(),
            me,
            Box::new(move || {
                if let Some(player) = player.upgrade() {
                    player.post(move |player| player.ask_storage(name, pending, LoginTry::first()));
                }
            }),
        );
    }

    fn ask_storage(&mut self, account: String, pending: PendingLogin, tried: LoginTry) {
        if self.closed {
            self.waiting = false;
            if std::mem::take(&mut self.creation_reserved) {
                self.ctx.limits.refund_account(self.handle.peer_addr().ip());
            }
            return;
        }
        let me = self.me.clone();
        let name = account.clone();
        let lease = if account.is_empty() {
            None
        } else {
            self.ctx.lease_terms()
        };
        let tried = LoginTry {
            asked: Instant::now(),
            ..tried
        };
        let ctx = Arc::clone(&self.ctx);
        self.ctx.db.login_leased(
            account,
            self.creation_reserved,
            lease,
            Box::new(move |result| {
                // On the database thread: hand the result back as a job.
                match me.and_then(|me| me.upgrade()) {
                    Some(player) => player.post(move |player| {
                        player.logged_in(name, result, pending, tried);
                    }),
                    // Nobody is left to play: let the lease go at once.
                    None => {
                        if let Ok(AccountRecord {
                            lease_epoch: Some(epoch),
                            ..
                        }) = result
                        {
                            ctx.release_lease(&name, epoch);
                        }
                    }
                }
            }),
        );
    }

    /// Refuses a login whose token did not hold, with a rate-limited line.
    fn refuse_bad_token(&mut self, error: &dyn std::fmt::Display, message: &'static str) {
        if let Some(refused) = TOKEN_LOG.event() {
            tracing::warn!(
                session = %self.handle.id(),
                peer = %self.handle.peer_addr(),
                %error,
                refused,
                "{message}"
            );
        }
        self.refuse_login(LoginRefusal::BadToken);
    }

    fn refuse_login(&mut self, reason: LoginRefusal) {
        bump(&self.ctx.counters.logins_refused);
        let _ = self.handle.send(login_refusal(reason));
    }

    fn logged_in(
        &mut self,
        name: String,
        result: Result<AccountRecord, DbError>,
        pending: PendingLogin,
        tried: LoginTry,
    ) {
        if let Err(DbError::LeaseHeld {
            node,
            epoch,
            expires_in,
        }) = &result
        {
            if !self.closed && self.ctx.may_wait_for_lease(tried.began) {
                let (node, epoch, expires_in) = (node.clone(), *epoch, *expires_in);
                return self.wait_for_lease(name, node, epoch, expires_in, pending, tried);
            }
        }
        self.waiting = false;
        let created = matches!(&result, Ok(record) if record.created);
        if std::mem::take(&mut self.creation_reserved) && !created {
            self.ctx.limits.refund_account(self.handle.peer_addr().ip());
        }
        if self.closed {
            // Kicked or gone while the database worked: what it took, it
            // gives back.
            if let Ok(AccountRecord {
                lease_epoch: Some(epoch),
                ..
            }) = result
            {
                self.ctx.release_lease(&name, epoch);
            }
            return;
        }
        match result {
            Ok(record) => {
                bump(&self.ctx.counters.logins);
                if let Some(epoch) = record.lease_epoch {
                    self.hold_lease(&name, epoch, tried.asked);
                }
                let players = record.players.iter().map(player_info).collect();
                tracing::debug!(
                    session = %self.handle.id(),
                    account_id = record.account_id,
                    created = record.created,
                    lease_epoch = record.lease_epoch,
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
                self.release_account();
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
            Err(DbError::LeaseHeld { node, .. }) => {
                self.release_account();
                bump(&self.ctx.counters.logins_refused_in_use);
                if let Some(refused) = IN_USE_LOG.event() {
                    tracing::warn!(
                        session = %self.handle.id(),
                        peer = %self.handle.peer_addr(),
                        account = %name,
                        %node,
                        refused,
                        waited_ms = tried.began.elapsed().as_millis() as u64,
                        "login refused: the account is in use on another node, which did not \
                         let it go"
                    );
                }
                self.refuse_login(LoginRefusal::AccountInUse);
            }
            Err(error) => {
                self.release_account();
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
        // The answer is queued: a stop may close the session.
        drop(pending);
        self.replay();
    }

    /// Another node holds the account's lease: ask it to let go (or wait
    /// the lease out), then try again.
    fn wait_for_lease(
        &mut self,
        name: String,
        node: String,
        epoch: u64,
        expires_in: Duration,
        pending: PendingLogin,
        tried: LoginTry,
    ) {
        let me = self.me.clone();
        let next = LoginTry {
            attempt: tried.attempt + 1,
            ..tried
        };
        let account = name.clone();
        self.ctx.resolve_lease(
            account,
            node,
            epoch,
            expires_in,
            Box::new(move |delay| {
                let Some(player) = me.and_then(|me| me.upgrade()) else {
                    return;
                };
                let again = move |player: &mut Player| player.ask_storage(name, pending, next);
                if delay.is_zero() {
                    player.post(again);
                } else {
                    player.do_timer(delay, again);
                }
            }),
        );
    }

    /// The login took the lease under `epoch`: it is this session's now,
    /// here and for the other nodes.
    fn hold_lease(&mut self, name: &str, epoch: u64, asked: Instant) {
        let lease = Lease::new(epoch, asked, self.ctx.lease_ttl());
        if !self
            .ctx
            .sessions
            .hold(name, self.handle.id(), Arc::clone(&lease))
        {
            // A newer login of the account claimed it meanwhile, and kicked
            // this session: the close that follows lets the lease go.
            tracing::debug!(session = %self.handle.id(), "lease taken after a newer claim");
        }
        self.lease = Some(lease);
        if let Some(cluster) = &self.ctx.cluster {
            cluster.online(name.to_owned(), epoch);
        }
    }

    /// Lets go of the account: here at once; its lease (in a cluster)
    /// after every save of it sent so far, then the other nodes hear it
    /// went offline.
    fn release_account(&mut self) {
        if !std::mem::take(&mut self.holds_account) {
            return;
        }
        let Some(name) = self.account_name.clone() else {
            return;
        };
        self.ctx.sessions.release(&name, self.handle.id());
        if let Some(lease) = self.lease.take() {
            // Only up to its epoch: a newer session's lease of this node
            // stays.
            self.ctx.release_lease(&name, lease.epoch());
        }
        if self.ctx.sessions.is_claimed(&name) {
            return; // a newer session has it now, and says so itself
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
        let account: Arc<str> = self.account_name.as_deref().unwrap_or("").into();
        self.ctx.room.do_async(move |room| {
            let seat = room.enter(&world, account, identity, handle, info);
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
        if seat.transferring().is_some() {
            // Handed over: the position it was handed over at stands (it
            // was saved, and the target enters it there).
            bump(&self.ctx.counters.moves_dropped_not_in_world);
            return;
        }
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
        // A player handed over was saved where it was handed over; a
        // later save here would overwrite what the target reads.
        if seat.transferring().is_none() {
            self.save_position(player_id);
        }
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
        let text = msg.msg;
        let packet = match try_make_packet(&SChat {
            player_id,
            msg: text.clone(),
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
        if !self.ctx.admit_chat(ChatSource::Local, &packet) {
            return;
        }
        bump(&self.ctx.counters.chats_relayed);
        if let Some(cluster) = &self.ctx.cluster {
            cluster.publish_chat(player_id, &text, msg.client_time_us);
        }
    }

    /// Handles the packets kept while waiting, until one waits again.
    fn replay(&mut self) {
        while !self.waiting && !self.lease_hold && !self.closed {
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
