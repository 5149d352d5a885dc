//! [`SessionGroup`]: a set of sessions that receive the same broadcasts (a
//! room's membership).

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::session::{SessionHandle, SessionId};

/// Membership of a room: add, remove, broadcast. Usable from any thread.
///
/// A broadcast hands the same `Bytes` to every member (no copy per member);
/// each member's worker gathers it into its next write. Members that
/// disconnected leave by themselves: they are dropped on the next broadcast
/// or `len`.
#[derive(Default)]
pub struct SessionGroup {
    members: Mutex<HashMap<SessionId, SessionHandle>>,
}

impl SessionGroup {
    /// An empty group.
    pub fn new() -> SessionGroup {
        SessionGroup::default()
    }

    /// Adds a member; false if it was already in or is closed.
    pub fn add(&self, session: SessionHandle) -> bool {
        if !session.is_connected() {
            return false;
        }
        self.members.lock().insert(session.id(), session).is_none()
    }

    /// Removes a member; false if it was not in.
    pub fn remove(&self, id: SessionId) -> bool {
        self.members.lock().remove(&id).is_some()
    }

    /// True if `id` is a connected member.
    pub fn contains(&self, id: SessionId) -> bool {
        self.members
            .lock()
            .get(&id)
            .is_some_and(SessionHandle::is_connected)
    }

    /// Connected members now.
    pub fn len(&self) -> usize {
        let mut members = self.members.lock();
        members.retain(|_, handle| handle.is_connected());
        members.len()
    }

    /// True when no connected member is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `data` to every member; returns how many it was queued to.
    pub fn broadcast(&self, data: &Bytes) -> usize {
        self.broadcast_except(data, None)
    }

    /// Sends `data` to every member but `except` (typically the sender).
    ///
    /// The members are copied out under the lock and sent to without it, so
    /// other threads can join, leave or broadcast meanwhile; members found
    /// closed are removed afterwards.
    pub fn broadcast_except(&self, data: &Bytes, except: Option<SessionId>) -> usize {
        let targets: Vec<SessionHandle> = self
            .members
            .lock()
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .map(|(_, handle)| handle.clone())
            .collect();
        let mut delivered = 0;
        let mut gone = Vec::new();
        for handle in &targets {
            match handle.send(data.clone()) {
                Ok(()) => delivered += 1,
                Err(_) if !handle.is_connected() => gone.push(handle.id()),
                Err(_) => {}
            }
        }
        if !gone.is_empty() {
            let mut members = self.members.lock();
            for id in gone {
                members.remove(&id);
            }
        }
        delivered
    }

    /// A snapshot of the connected members.
    pub fn members(&self) -> Vec<SessionHandle> {
        self.members
            .lock()
            .values()
            .filter(|handle| handle.is_connected())
            .cloned()
            .collect()
    }
}
