//! The chat room logic both benchmark chat servers share (the tokio
//! baseline and the engine's own minimal chat server): login offers three
//! players, entering joins the one room, a chat becomes one `S_CHAT` packet
//! for every member, the sender included.
//!
//! It is a pure state machine over decoded packets, with no I/O, so the two
//! servers differ only in how they move bytes: what the benchmark measures.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message;

use super::proto::{self, CChat, CEnterGame, SChat, SEnterGame, SLogin};

/// Hands out player ids, unique within one server.
#[derive(Debug)]
pub struct PlayerIds {
    next: AtomicU64,
}

impl Default for PlayerIds {
    fn default() -> Self {
        PlayerIds::new()
    }
}

impl PlayerIds {
    /// Ids start at 1.
    pub fn new() -> PlayerIds {
        PlayerIds {
            next: AtomicU64::new(1),
        }
    }

    fn take(&self, count: u64) -> u64 {
        self.next.fetch_add(count, Ordering::Relaxed)
    }
}

/// What the connection has to do after a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the sender only.
    Reply(Bytes),
    /// Join the room as `player_id`, then send `reply` to the sender.
    Enter {
        /// The id the player chats as.
        player_id: u64,
        /// `S_ENTER_GAME` for the sender.
        reply: Bytes,
    },
    /// Send this `S_CHAT` packet to every member of the room.
    Broadcast(Bytes),
}

/// One connection's conversation state.
#[derive(Debug, Default)]
pub struct ChatPeer {
    first_player: Option<u64>,
    player_id: Option<u64>,
}

impl ChatPeer {
    /// A connection that has not logged in.
    pub fn new() -> ChatPeer {
        ChatPeer::default()
    }

    /// The player this connection entered as, if it did.
    pub fn player_id(&self) -> Option<u64> {
        self.player_id
    }

    /// The player left the game (`C_LEAVE_GAME` of the world): the
    /// connection may enter again.
    pub fn leave(&mut self) {
        self.player_id = None;
    }

    /// Handles one packet. `Err` means the peer broke the protocol and the
    /// connection should be closed; `Ok(None)` means nothing to do (a chat
    /// before entering is dropped, as the course server does).
    pub fn handle(
        &mut self,
        ids: &PlayerIds,
        id: u16,
        body: &[u8],
    ) -> Result<Option<Action>, String> {
        match id {
            proto::C_LOGIN => {
                proto::CLogin::decode(body).map_err(|error| format!("C_LOGIN: {error}"))?;
                let first = *self
                    .first_player
                    .get_or_insert_with(|| ids.take(proto::PLAYERS_PER_ACCOUNT));
                let players = (0..proto::PLAYERS_PER_ACCOUNT)
                    .map(|index| proto::Player {
                        id: first + index,
                        name: format!("player-{}", first + index),
                        player_type: index as i32 + 1,
                    })
                    .collect();
                let reply = SLogin {
                    success: true,
                    players,
                    ..SLogin::default()
                };
                Ok(Some(Action::Reply(proto::packet(proto::S_LOGIN, &reply))))
            }
            proto::C_ENTER_GAME => {
                let enter =
                    CEnterGame::decode(body).map_err(|error| format!("C_ENTER_GAME: {error}"))?;
                let (Some(first), None) = (self.first_player, self.player_id) else {
                    let reply = SEnterGame::default();
                    return Ok(Some(Action::Reply(proto::packet(
                        proto::S_ENTER_GAME,
                        &reply,
                    ))));
                };
                if enter.player_index >= proto::PLAYERS_PER_ACCOUNT {
                    let reply = SEnterGame::default();
                    return Ok(Some(Action::Reply(proto::packet(
                        proto::S_ENTER_GAME,
                        &reply,
                    ))));
                }
                let player_id = first + enter.player_index;
                self.player_id = Some(player_id);
                let reply = SEnterGame {
                    success: true,
                    player_id,
                    player: None,
                };
                Ok(Some(Action::Enter {
                    player_id,
                    reply: proto::packet(proto::S_ENTER_GAME, &reply),
                }))
            }
            proto::C_CHAT => {
                let chat = CChat::decode(body).map_err(|error| format!("C_CHAT: {error}"))?;
                let Some(player_id) = self.player_id else {
                    return Ok(None);
                };
                let out = SChat {
                    player_id,
                    msg: chat.msg,
                    client_time_us: chat.client_time_us,
                };
                Ok(Some(Action::Broadcast(proto::packet(proto::S_CHAT, &out))))
            }
            other => Err(format!("unexpected packet id {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<M: Message>(msg: &M) -> Vec<u8> {
        msg.encode_to_vec()
    }

    fn decode_reply<M: Message + Default>(action: Option<Action>, id: u16) -> M {
        let bytes = match action {
            Some(Action::Reply(bytes)) | Some(Action::Enter { reply: bytes, .. }) => bytes,
            other => panic!("expected a reply, got {other:?}"),
        };
        let frame = proto::split_frame(&bytes).unwrap().unwrap();
        assert_eq!(frame.id, id);
        M::decode(frame.body).unwrap()
    }

    #[test]
    fn login_enter_chat() {
        let ids = PlayerIds::new();
        let mut peer = ChatPeer::new();
        let login = peer
            .handle(&ids, proto::C_LOGIN, &body(&proto::CLogin::default()))
            .unwrap();
        let login: SLogin = decode_reply(login, proto::S_LOGIN);
        assert!(login.success);
        assert_eq!(login.players.len(), 3);

        // A chat before entering is dropped.
        let chat = CChat {
            msg: "hi".into(),
            client_time_us: 7,
        };
        assert_eq!(
            peer.handle(&ids, proto::C_CHAT, &body(&chat)).unwrap(),
            None
        );

        let enter = peer
            .handle(
                &ids,
                proto::C_ENTER_GAME,
                &body(&CEnterGame { player_index: 2 }),
            )
            .unwrap();
        assert!(
            matches!(enter, Some(Action::Enter { player_id, .. }) if player_id == login.players[2].id)
        );
        assert_eq!(peer.player_id(), Some(login.players[2].id));

        let Some(Action::Broadcast(bytes)) =
            peer.handle(&ids, proto::C_CHAT, &body(&chat)).unwrap()
        else {
            panic!("a chat after entering is broadcast");
        };
        let frame = proto::split_frame(&bytes).unwrap().unwrap();
        assert_eq!(frame.id, proto::S_CHAT);
        assert_eq!(proto::peek_chat(frame.body), Some((login.players[2].id, 7)));
    }

    #[test]
    fn bad_input_is_refused_or_answered() {
        let ids = PlayerIds::new();
        let mut peer = ChatPeer::new();
        assert!(peer.handle(&ids, proto::S_CHAT, &[]).is_err());
        assert!(peer.handle(&ids, proto::C_CHAT, &[0xff]).is_err());
        // Entering before login is answered with a failure.
        let reply: SEnterGame = decode_reply(
            peer.handle(
                &ids,
                proto::C_ENTER_GAME,
                &body(&CEnterGame { player_index: 0 }),
            )
            .unwrap(),
            proto::S_ENTER_GAME,
        );
        assert!(!reply.success);
    }

    #[test]
    fn players_of_two_logins_differ() {
        let ids = PlayerIds::new();
        let (mut a, mut b) = (ChatPeer::new(), ChatPeer::new());
        let login = body(&proto::CLogin::default());
        let a: SLogin = decode_reply(
            a.handle(&ids, proto::C_LOGIN, &login).unwrap(),
            proto::S_LOGIN,
        );
        let b: SLogin = decode_reply(
            b.handle(&ids, proto::C_LOGIN, &login).unwrap(),
            proto::S_LOGIN,
        );
        assert!(a
            .players
            .iter()
            .all(|p| b.players.iter().all(|q| p.id != q.id)));
    }
}
