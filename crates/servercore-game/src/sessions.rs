//! One account, one session: the node's registry of logged-in named
//! accounts (account → the session and player holding it), and the
//! handover that makes a new login of an account wait until the session
//! holding it — here, or on another node of the cluster — is disconnected
//! and its player's last save is committed.
//!
//! Guest logins (an empty account name) are fresh accounts every time and
//! are never registered.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use servercore::job::WeakActor;
use servercore::{SessionHandle, SessionId};

use super::player::Player;
use super::stats::{bump, GameCounters};
use super::storage::StorageHandle;

/// The session holding an account.
struct Holder {
    handle: SessionHandle,
    player: WeakActor<Player>,
}

/// The node's logged-in named accounts.
#[derive(Default)]
pub struct LocalSessions {
    holders: Mutex<HashMap<String, Holder>>,
}

impl LocalSessions {
    /// Records that `handle`'s player now holds `account`. Returns the
    /// session that held it before, if another one did (the caller kicks
    /// it: the newest login wins).
    pub(crate) fn register(
        &self,
        account: &str,
        handle: SessionHandle,
        player: WeakActor<Player>,
    ) -> Option<(SessionHandle, WeakActor<Player>)> {
        let previous = self
            .holders
            .lock()
            .insert(account.to_owned(), Holder { handle, player })?;
        Some((previous.handle, previous.player))
    }

    /// Forgets `account` if `session` holds it; true if it did.
    pub(crate) fn release(&self, account: &str, session: SessionId) -> bool {
        let mut holders = self.holders.lock();
        if holders
            .get(account)
            .is_some_and(|holder| holder.handle.id() == session)
        {
            holders.remove(account);
            return true;
        }
        false
    }

    /// Takes `account` away from whichever session holds it.
    fn take(&self, account: &str) -> Option<Holder> {
        self.holders.lock().remove(account)
    }

    /// How many accounts are held.
    pub fn len(&self) -> usize {
        self.holders.lock().len()
    }

    /// True if no account is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Disconnects the session `handle` holding `account` (as a duplicate
/// login), makes its player leave, and calls `done` once every storage
/// request about the account sent so far — the leave's save among them —
/// is committed.
pub(crate) fn kick(
    account: String,
    handle: SessionHandle,
    player: WeakActor<Player>,
    storage: StorageHandle,
    counters: &Arc<GameCounters>,
    done: Box<dyn FnOnce() + Send>,
) {
    bump(&counters.duplicate_login_kicks);
    tracing::info!(
        %account,
        session = %handle.id(),
        peer = %handle.peer_addr(),
        "duplicate login: disconnecting the older session"
    );
    handle.disconnect();
    match player.upgrade() {
        Some(player) => player.do_async(move |player| {
            // Leaving is idempotent: the disconnect's own leave job, later,
            // finds nothing left to do.
            player.leave();
            storage.barrier(&account, done);
        }),
        None => storage.barrier(&account, done),
    }
}

/// Kicks whichever local session holds `account`; `done(kicked)` once its
/// save is committed (at once if none did).
pub(crate) fn kick_local(
    sessions: &LocalSessions,
    account: String,
    storage: StorageHandle,
    counters: &Arc<GameCounters>,
    done: Box<dyn FnOnce(bool) + Send>,
) {
    match sessions.take(&account) {
        Some(holder) => kick(
            account,
            holder.handle,
            holder.player,
            storage,
            counters,
            Box::new(move || done(true)),
        ),
        None => done(false),
    }
}
