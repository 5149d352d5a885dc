//! The session handler: what runs on the I/O worker for each game
//! connection (the course's `GameSession::OnRecvPacket` and
//! `ClientPacketHandler`).
//!
//! [`GameSession`] is the [`PacketHandler`] inside the engine's
//! [`PacketSession`](servercore::packet::PacketSession) adapter and
//! implements the generated [`ServerHandler`]: each decoded `C_` packet is
//! checked for what needs no state (a chat's length, the per-player move
//! and chat rates: excess is dropped and counted here, before it costs a
//! job) and handed, as one job stamped with its arrival time, to the
//! connection's [`Player`] actor. A packet that does not decode, or an
//! id the server does not take, disconnects the peer (`MalformedPacket`); the
//! packet layer sees to that.
//!
//! It also enforces what needs no player state, before anything is queued:
//! the per-address connection limit (on connect), the login deadline (on
//! the worker's tick), the length of a `C_LOGIN` name or token, and the byte
//! bound of the jobs queued for the player.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use servercore::job::Actor;
use servercore::packet::{DispatchError, LogThrottle, PacketHandler, HEADER_SIZE};
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    dispatch_server, CChat, CEnterGame, CLeaveGame, CLogin, CMove, LoginRefusal, ServerHandler,
    ServerPacket,
};

use super::auth::MAX_TOKEN_LEN;
use super::player::{login_refusal, Player, MAX_PENDING_BYTES};
use super::stats::bump;
use super::storage::MAX_ACCOUNT_LEN;
use super::world::TokenBucket;
use super::GameContext;

/// The connection sent no `C_LOGIN` within the login deadline (it held a
/// slot without starting to play): a rule of this game, so an app reason.
pub const LOGIN_TIMEOUT: DisconnectReason = DisconnectReason::App("login_timeout");

/// The reason a connection past the per-address limit is closed with.
pub const TOO_MANY_CONNECTIONS: DisconnectReason =
    DisconnectReason::App("too_many_connections_from_address");

static LOGIN_TIMEOUT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static PER_IP_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
static PENDING_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// One game connection's handler; its state lives in its [`Player`] actor.
pub struct GameSession {
    ctx: Arc<GameContext>,
    player: Option<Actor<Player>>,
    connected_at: Instant,
    /// A `C_LOGIN` arrived (the login deadline no longer applies).
    login_seen: bool,
    /// The connection counts against its address's limit.
    counted: bool,
    /// Bytes of packets forwarded to the player and not yet handled by it.
    queued: Arc<AtomicUsize>,
    /// The body length of the packet being dispatched.
    body_len: usize,
    moves: Option<TokenBucket>,
    chats: Option<TokenBucket>,
}

impl GameSession {
    /// A handler for a new connection of the game server `ctx`.
    pub fn new(ctx: Arc<GameContext>) -> GameSession {
        let now = Instant::now();
        let moves = ctx.move_rate.map(|rate| TokenBucket::new(rate, now));
        let chats = ctx.chat_rate.map(|rate| TokenBucket::new(rate, now));
        GameSession {
            ctx,
            player: None,
            moves,
            chats,
            connected_at: now,
            login_seen: false,
            counted: false,
            queued: Arc::new(AtomicUsize::new(0)),
            body_len: 0,
        }
    }

    fn forward(&self, session: &SessionHandle, packet: ServerPacket, received: Instant) {
        let Some(player) = &self.player else {
            return;
        };
        let cost = self.body_len + HEADER_SIZE;
        let queued = self.queued.fetch_add(cost, Ordering::AcqRel) + cost;
        if queued > MAX_PENDING_BYTES {
            bump(&self.ctx.counters.pending_overflows);
            if let Some(disconnects) = PENDING_LOG.event() {
                tracing::warn!(
                    session = %session.id(),
                    peer = %session.peer_addr(),
                    queued,
                    disconnects,
                    "more than {MAX_PENDING_BYTES} bytes queued for the player; disconnecting"
                );
            }
            session.disconnect_with(DisconnectReason::RateLimited(format!(
                "more than {MAX_PENDING_BYTES} bytes of packets queued for the player"
            )));
            return;
        }
        let queued = Arc::clone(&self.queued);
        player.do_async(move |player| {
            queued.fetch_sub(cost, Ordering::AcqRel);
            player.on_packet(packet, received, cost)
        });
    }
}

/// Takes a token from `bucket` (none: no limit).
fn allowed(bucket: &mut Option<TokenBucket>, now: Instant) -> bool {
    bucket.as_mut().is_none_or(|bucket| bucket.take(now))
}

impl PacketHandler for GameSession {
    fn on_connected(&mut self, session: &SessionHandle) {
        tracing::debug!(session = %session.id(), peer = %session.peer_addr(), "connected");
        let ip = session.peer_addr().ip();
        if !self.ctx.limits.try_connect(ip) {
            bump(&self.ctx.counters.conns_refused_per_ip);
            if let Some(refused) = PER_IP_LOG.event() {
                tracing::warn!(
                    peer = %session.peer_addr(),
                    refused,
                    total = PER_IP_LOG.total(),
                    "refusing connection: its address holds the most connections allowed"
                );
            }
            // Said before the C_LOGIN is read, so the client knows why.
            let _ = session.send(login_refusal(LoginRefusal::TooManyConnections));
            session.disconnect_with(TOO_MANY_CONNECTIONS);
            return;
        }
        self.counted = true;
        self.player = Some(Player::spawn(session.clone(), Arc::clone(&self.ctx)));
    }

    fn on_tick(&mut self, session: &SessionHandle, now: Instant) {
        let Some(deadline) = self.ctx.login_deadline else {
            return;
        };
        if self.login_seen || now.saturating_duration_since(self.connected_at) < deadline {
            return;
        }
        self.login_seen = true; // disconnected once
        if let Some(disconnects) = LOGIN_TIMEOUT_LOG.event() {
            tracing::warn!(
                session = %session.id(),
                peer = %session.peer_addr(),
                disconnects,
                total = LOGIN_TIMEOUT_LOG.total(),
                "no login within {deadline:?}; disconnecting (disconnects counts this one and those \
                 since the last line)"
            );
        }
        session.disconnect_with(LOGIN_TIMEOUT);
    }

    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        self.body_len = body.len();
        dispatch_server(self, session, id, body)
    }

    fn on_read_closed(&mut self, session: &SessionHandle) {
        // The player's jobs answer the packets; it closes after the last.
        match &self.player {
            Some(player) => player.do_async(Player::peer_finished),
            None => session.disconnect_with(DisconnectReason::ClosedByPeer),
        }
    }

    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        tracing::debug!(session = %session.id(), peer = %session.peer_addr(), %reason, "disconnected");
        match reason {
            reason if *reason == LOGIN_TIMEOUT => bump(&self.ctx.counters.login_timeouts),
            DisconnectReason::PacketTimeout => bump(&self.ctx.counters.packet_timeouts),
            _ => {}
        }
        if std::mem::take(&mut self.counted) {
            self.ctx.limits.disconnected(session.peer_addr().ip());
        }
        if let Some(player) = self.player.take() {
            player.do_async(Player::leave);
        }
    }
}

impl ServerHandler for GameSession {
    fn handle_c_login(
        &mut self,
        session: &SessionHandle,
        msg: CLogin,
    ) -> Result<(), DispatchError> {
        self.login_seen = true;
        let max = if self.ctx.auth.is_some() || self.ctx.transfers.is_some() {
            MAX_TOKEN_LEN
        } else {
            MAX_ACCOUNT_LEN
        };
        if msg.account.len() > max {
            // Refused here, before anything is queued for the player.
            tracing::debug!(
                session = %session.id(),
                len = msg.account.len(),
                "login refused: account name too long"
            );
            bump(&self.ctx.counters.logins_refused);
            let _ = session.send(login_refusal(LoginRefusal::AccountNameTooLong));
            return Ok(());
        }
        self.forward(session, ServerPacket::CLogin(msg), Instant::now());
        Ok(())
    }

    fn handle_c_enter_game(
        &mut self,
        session: &SessionHandle,
        msg: CEnterGame,
    ) -> Result<(), DispatchError> {
        self.forward(session, ServerPacket::CEnterGame(msg), Instant::now());
        Ok(())
    }

    fn handle_c_chat(&mut self, session: &SessionHandle, msg: CChat) -> Result<(), DispatchError> {
        if msg.msg.len() > self.ctx.max_chat_len {
            // S_CHAT has no success field: the refusal is a drop, logged and
            // counted; the session stays.
            tracing::debug!(
                session = %session.id(),
                len = msg.msg.len(),
                max = self.ctx.max_chat_len,
                "chat refused: message too long"
            );
            bump(&self.ctx.counters.chats_refused_too_long);
            return Ok(());
        }
        let now = Instant::now();
        if !allowed(&mut self.chats, now) {
            bump(&self.ctx.counters.chats_dropped_rate);
            return Ok(());
        }
        self.forward(session, ServerPacket::CChat(msg), now);
        Ok(())
    }

    fn handle_c_move(&mut self, session: &SessionHandle, msg: CMove) -> Result<(), DispatchError> {
        let now = Instant::now();
        if !allowed(&mut self.moves, now) {
            bump(&self.ctx.counters.moves_dropped_rate);
            return Ok(());
        }
        self.forward(session, ServerPacket::CMove(msg), now);
        Ok(())
    }

    fn handle_c_leave_game(
        &mut self,
        session: &SessionHandle,
        msg: CLeaveGame,
    ) -> Result<(), DispatchError> {
        self.forward(session, ServerPacket::CLeaveGame(msg), Instant::now());
        Ok(())
    }
}
