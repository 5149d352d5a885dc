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

use std::sync::Arc;
use std::time::Instant;

use servercore::job::Actor;
use servercore::packet::{DispatchError, PacketHandler};
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    dispatch_server, CChat, CEnterGame, CLeaveGame, CLogin, CMove, ServerHandler, ServerPacket,
};

use super::player::Player;
use super::stats::bump;
use super::world::TokenBucket;
use super::GameContext;

/// One game connection's handler; its state lives in its [`Player`] actor.
pub struct GameSession {
    ctx: Arc<GameContext>,
    player: Option<Actor<Player>>,
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
        }
    }

    fn forward(&self, packet: ServerPacket, received: Instant) {
        if let Some(player) = &self.player {
            player.do_async(move |player| player.on_packet(packet, received));
        }
    }
}

/// Takes a token from `bucket` (none: no limit).
fn allowed(bucket: &mut Option<TokenBucket>, now: Instant) -> bool {
    bucket.as_mut().is_none_or(|bucket| bucket.take(now))
}

impl PacketHandler for GameSession {
    fn on_connected(&mut self, session: &SessionHandle) {
        tracing::debug!(session = %session.id(), peer = %session.peer_addr(), "connected");
        self.player = Some(Player::spawn(session.clone(), Arc::clone(&self.ctx)));
    }

    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
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
        if let Some(player) = self.player.take() {
            player.do_async(Player::leave);
        }
    }
}

impl ServerHandler for GameSession {
    fn handle_c_login(
        &mut self,
        _session: &SessionHandle,
        msg: CLogin,
    ) -> Result<(), DispatchError> {
        self.forward(ServerPacket::CLogin(msg), Instant::now());
        Ok(())
    }

    fn handle_c_enter_game(
        &mut self,
        _session: &SessionHandle,
        msg: CEnterGame,
    ) -> Result<(), DispatchError> {
        self.forward(ServerPacket::CEnterGame(msg), Instant::now());
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
        self.forward(ServerPacket::CChat(msg), now);
        Ok(())
    }

    fn handle_c_move(&mut self, _session: &SessionHandle, msg: CMove) -> Result<(), DispatchError> {
        let now = Instant::now();
        if !allowed(&mut self.moves, now) {
            bump(&self.ctx.counters.moves_dropped_rate);
            return Ok(());
        }
        self.forward(ServerPacket::CMove(msg), now);
        Ok(())
    }

    fn handle_c_leave_game(
        &mut self,
        _session: &SessionHandle,
        msg: CLeaveGame,
    ) -> Result<(), DispatchError> {
        self.forward(ServerPacket::CLeaveGame(msg), Instant::now());
        Ok(())
    }
}
