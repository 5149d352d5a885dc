//! The room: the game's one shared space, an [`Actor<Room>`](servercore::job::Actor)
//! (the course's `Room : JobQueue`).
//!
//! This module owns the room's membership (player id → the member's
//! [`SessionHandle`]) and the three things done to it: enter (answering
//! `S_ENTER_GAME` from inside the room, so the answer reaches the client
//! before any chat broadcast that includes it), leave, and chat (one
//! `S_CHAT` buffer built per message and handed to every member).
//!
//! Every method runs as a job of the room's actor: one at a time, in push
//! order, so a sender's chats reach every member in the order it sent them.
//! The room holds members' handles only, never their player states, so no
//! ownership cycle can form: a member that disconnects is removed when its
//! player leaves, or earlier, when a send finds its session closed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use servercore::{SessionHandle, SessionId};
use servercore_protocol::{make_packet, try_make_packet, ObjectInfo, SChat, SEnterGame};

use super::cluster::ClusterHandle;
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
    /// The cluster link, if this node is in one: every chat relayed here
    /// goes to the other nodes too.
    cluster: Option<ClusterHandle>,
}

impl Room {
    /// An empty room that keeps its counts in `counters`.
    pub fn new(counters: Arc<GameCounters>) -> Room {
        Room {
            members: HashMap::new(),
            counters,
            cluster: None,
        }
    }

    /// Joins the cluster: chats from now on go to the other nodes too.
    pub fn set_cluster(&mut self, cluster: ClusterHandle) {
        self.cluster = Some(cluster);
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

    /// Broadcasts `msg` from player `player_id` (in the room through
    /// `session`) as one `S_CHAT` buffer shared by every member, the sender
    /// included. Members whose session has closed are removed.
    pub fn chat(&mut self, player_id: u64, session: SessionId, msg: String, client_time_us: u64) {
        if !self.is_member(player_id, session) {
            // The room dropped the sender (its session closed) before its
            // player heard of it.
            bump(&self.counters.chats_refused_not_in_room);
            return;
        }
        let packet = match try_make_packet(&SChat {
            player_id,
            msg: msg.clone(),
            client_time_us,
        }) {
            Ok(packet) => packet,
            Err(error) => {
                // Only if the configured chat limit exceeds the frame size.
                tracing::warn!(player_id, %error, "chat not relayed");
                bump(&self.counters.chats_refused_too_long);
                return;
            }
        };
        let delivered = self.send_to_members(&packet);
        if let Some(cluster) = &self.cluster {
            cluster.publish_chat(player_id, &msg, client_time_us);
        }
        bump(&self.counters.chats_relayed);
        self.counters
            .chat_deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Relays a world chat from another node (the `S_CHAT` packet this
    /// node built from the checked chat) to every member.
    pub fn remote_chat(&mut self, packet: Bytes) {
        let delivered = self.send_to_members(&packet);
        bump(&self.counters.remote_chats);
        self.counters
            .chat_deliveries
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Sends `packet` to every member; removes those whose session closed.
    /// Returns how many got it.
    fn send_to_members(&mut self, packet: &Bytes) -> u64 {
        let mut delivered = 0u64;
        let mut gone = Vec::new();
        for (id, member) in &self.members {
            match member.handle.send(packet.clone()) {
                Ok(()) => delivered += 1,
                Err(_) if !member.handle.is_connected() => gone.push(*id),
                Err(error) => {
                    tracing::debug!(player_id = id, %error, "chat not queued to member");
                }
            }
        }
        for id in gone {
            self.remove(id);
        }
        delivered
    }
}
