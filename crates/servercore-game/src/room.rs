//! The room: who is in the game, an [`Actor<Room>`](servercore::job::Actor)
//! (the course's `Room : JobQueue`).
//!
//! This module owns the game's membership (player id → the member's
//! [`SessionHandle`]) and the two things done to it: enter (one player in
//! the game once, answered with `S_ENTER_GAME` from inside the room) and
//! leave. World chat goes out with the world's tick (see
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
        player_id: u64,
        name: String,
        handle: SessionHandle,
        info: ObjectInfo,
    ) -> bool {
        if !handle.is_connected() {
            return false;
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
                return false;
            }
            self.remove(player_id);
        }
        let answer = make_packet(&SEnterGame {
            success: true,
            player_id,
            player: Some(info),
        });
        if handle.send(answer).is_err() {
            return false;
        }
        tracing::debug!(player_id, %name, session = %handle.id(), "entered the room");
        self.members.insert(player_id, Member { handle, name });
        self.counters
            .players_in_room
            .fetch_add(1, Ordering::Relaxed);
        bump(&self.counters.enters);
        true
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
