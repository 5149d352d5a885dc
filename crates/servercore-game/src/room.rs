//! The room: who is in the game, an [`Actor<Room>`](servercore::job::Actor)
//! (the course's `Room : JobQueue`).
//!
//! This module owns the game's membership (player id → the member's
//! [`SessionHandle`]) and the two things done to it: enter (one player in
//! the game once: answered with `S_ENTER_GAME` from inside the room and
//! placed in the world right behind the answer, so every chat sent after
//! the answer reaches the newcomer) and leave. World chat goes out with the world's tick (see
//! [`World::push_chat`](crate::world::World::push_chat)).
//!
//! Every method runs as a job of the room's actor: one at a time, in push
//! order. The room holds members' handles only, never their player states,
//! so no ownership cycle can form.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use servercore::{SessionHandle, SessionId};
use servercore_protocol::{make_packet, ObjectInfo, SEnterGame};

use super::stats::{bump, GameCounters};
use super::world::{Identity, Seat, World};

/// One player in the room.
struct Member {
    handle: SessionHandle,
    name: String,
}

/// The room's state, owned by its actor.
pub struct Room {
    members: HashMap<u64, Member>,
    counters: Arc<GameCounters>,
}

impl Room {
    /// An empty room that keeps its counts in `counters`.
    pub fn new(counters: Arc<GameCounters>) -> Room {
        Room {
            members: HashMap::new(),
            counters,
        }
    }

    /// Lets player `player_id` in through `handle` and answers
    /// `S_ENTER_GAME` on it, carrying `info` (where it enters the world). Refused (`success = false`) if that player is
    /// already in the room from a session still connected. Returns whether
    /// the player entered. A session that closed meanwhile is not added and
    /// gets no answer.
    pub fn enter(
        &mut self,
        world: &World,
        account: Arc<str>,
        identity: Arc<Identity>,
        handle: SessionHandle,
        info: ObjectInfo,
    ) -> Option<Arc<Seat>> {
        let player_id = info.object_id;
        let name = identity.name.clone();
        if !handle.is_connected() {
            return None;
        }
        if let Some(existing) = self.members.get(&player_id) {
            if existing.handle.is_connected() {
                tracing::debug!(
                    player_id,
                    name = %existing.name,
                    session = %handle.id(),
                    "enter refused: the player is already in the room"
                );
                bump(&self.counters.enters_refused);
                let _ = handle.send(make_packet(&SEnterGame {
                    success: false,
                    player_id: 0,
                    player: None,
                }));
                return None;
            }
            self.remove(player_id);
        }
        let pos = info.pos_info.unwrap_or_default();
        let answer = make_packet(&SEnterGame {
            success: true,
            player_id,
            player: Some(info),
        });
        if handle.send(answer).is_err() {
            return None;
        }
        // The answer is queued first, so no tick's packets can overtake it;
        // the newcomer is in the world right behind it, before the answer
        // has even been written, so a chat anyone sends once the newcomer
        // has its answer goes out at a tick the newcomer is in.
        let seat = world.enter(handle.clone(), account, player_id, identity, pos);
        tracing::debug!(player_id, %name, session = %handle.id(), "entered the room");
        self.members.insert(player_id, Member { handle, name });
        self.counters
            .players_in_room
            .fetch_add(1, Ordering::Relaxed);
        bump(&self.counters.enters);
        Some(seat)
    }

    /// Removes player `player_id` if it is in the room through `session`.
    pub fn leave(&mut self, player_id: u64, session: SessionId) {
        if self.is_member(player_id, session) {
            self.remove(player_id);
            tracing::debug!(player_id, %session, "left the room");
        }
    }

    /// True if player `player_id` is in the room through `session`.
    fn is_member(&self, player_id: u64, session: SessionId) -> bool {
        self.members
            .get(&player_id)
            .is_some_and(|member| member.handle.id() == session)
    }

    fn remove(&mut self, player_id: u64) {
        if self.members.remove(&player_id).is_some() {
            self.counters
                .players_in_room
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}
