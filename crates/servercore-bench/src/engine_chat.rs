//! The engine side of the broadcast scenario: a minimal chat server on
//! servercore sessions that speaks the game protocol (login, enter, chat to
//! the one room) with exactly the room logic of the tokio baseline
//! ([`super::chat`]), so the comparison measures the I/O layers.
//!
//! A room is a [`SessionGroup`]: a chat builds one `Bytes` and queues it to
//! every member's handle; each worker gathers what its sessions have queued
//! into one write per session per round.

use std::net::SocketAddr;
use std::sync::Arc;

use servercore::{
    Backend, DisconnectReason, ServerService, ServerTransport, Session, SessionGroup, SessionHandle,
};

use super::chat::{Action, ChatPeer, PlayerIds};
use super::proto;

/// What every session of one server shares: the room and the id source.
#[derive(Default)]
struct Shared {
    room: SessionGroup,
    ids: PlayerIds,
}

/// One connection of the engine chat server.
struct ChatSession {
    shared: Arc<Shared>,
    peer: ChatPeer,
}

impl Session for ChatSession {
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let mut consumed = 0;
        loop {
            let frame = match proto::split_frame(&data[consumed..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => return consumed,
                Err(error) => {
                    session.disconnect_with(DisconnectReason::MalformedPacket(error.to_string()));
                    return data.len();
                }
            };
            consumed += frame.len;
            match self.peer.handle(&self.shared.ids, frame.id, frame.body) {
                Ok(None) => {}
                Ok(Some(Action::Reply(packet))) => {
                    let _ = session.send(packet);
                }
                Ok(Some(Action::Enter { reply, .. })) => {
                    self.shared.room.add(session.clone());
                    let _ = session.send(reply);
                }
                Ok(Some(Action::Broadcast(packet))) => {
                    self.shared.room.broadcast(&packet);
                }
                Err(error) => {
                    session.disconnect_with(DisconnectReason::MalformedPacket(error));
                    return data.len();
                }
            }
        }
    }

    fn on_disconnected(&mut self, session: &SessionHandle, _reason: &DisconnectReason) {
        if self.peer.player_id().is_some() {
            self.shared.room.remove(session.id());
        }
    }
}

/// Starts the engine chat server.
pub fn start(
    addr: SocketAddr,
    backend: Backend,
    workers: Option<usize>,
    max_sessions: usize,
    send_coalescing: std::time::Duration,
    transport: ServerTransport,
) -> anyhow::Result<ServerService> {
    let shared = Arc::new(Shared::default());
    let mut builder = ServerService::builder(addr)
        .backend(backend)
        .max_sessions(max_sessions)
        .send_coalescing(send_coalescing)
        .transport(transport)
        .session(move || ChatSession {
            shared: shared.clone(),
            peer: ChatPeer::new(),
        });
    if let Some(workers) = workers {
        builder = builder.workers(workers);
    }
    Ok(builder.start()?)
}
