//! One account, one session, on this node: the registry of named accounts
//! (account → the session claiming or holding it, and its lease) and the
//! kick that makes a newer login of an account wait until the session
//! holding it is disconnected and its player's last save is committed.
//!
//! A login claims its account here *before* it reads the database: a
//! second login of the account on this node, however close behind, finds
//! the claim, kicks that session and waits for its save, so it never reads
//! a player the first one may still move. (Across nodes the database's
//! lease, module `lease` and `storage`, plays the same part.)
//!
//! Guest logins (an empty account name) are fresh accounts every time and
//! are never registered.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use servercore::job::WeakActor;
use servercore::{DisconnectReason, SessionHandle, SessionId};

use super::lease::{self, Judged, Lease};
use super::player::Player;
use super::stats::{bump, GameCounters};
use super::storage::StorageHandle;

/// The reason a session is disconnected with when its account logs in again on
/// this node.
pub const LOGGED_IN_AGAIN: DisconnectReason = DisconnectReason::App("account_logged_in_again");

/// The reason a session is disconnected with when its account logs in on another
/// node, which asked for it.
pub const LOGGED_IN_ELSEWHERE: DisconnectReason =
    DisconnectReason::App("account_logged_in_on_another_node");

/// The session claiming or holding an account.
struct Holder {
    handle: SessionHandle,
    player: WeakActor<Player>,
    /// Set once its login took the lease (in a cluster); `None` while the
    /// login is on its way, or outside a cluster.
    lease: Option<Arc<Lease>>,
}

/// A session the registry hands out: to kick, or to wake.
pub(crate) struct HolderRef {
    pub(crate) account: String,
    pub(crate) handle: SessionHandle,
    player: WeakActor<Player>,
}

impl HolderRef {
    /// Its lease is confirmed: it handles the packets it held.
    pub(crate) fn wake(&self) {
        if let Some(player) = self.player.upgrade() {
            player.post(Player::lease_confirmed);
        }
    }

    /// Disconnects it with `reason` (its player leaves as on any
    /// disconnect).
    pub(crate) fn disconnect(&self, reason: DisconnectReason) {
        self.handle.disconnect_with(reason);
    }
}

/// The node's named accounts.
#[derive(Default)]
pub struct LocalSessions {
    holders: Mutex<HashMap<String, Holder>>,
}

impl LocalSessions {
    /// Records that `handle`'s player claims `account` (its login is on its
    /// way). Returns the session that claimed or held it before, if
    /// another one did: the caller kicks it, the newest login wins.
    pub(crate) fn claim(
        &self,
        account: &str,
        handle: SessionHandle,
        player: WeakActor<Player>,
    ) -> Option<(SessionHandle, WeakActor<Player>)> {
        let previous = self.holders.lock().insert(
            account.to_owned(),
            Holder {
                handle,
                player,
                lease: None,
            },
        )?;
        Some((previous.handle, previous.player))
    }

    /// `session`'s login took the lease; false if the session no longer
    /// claims the account (a newer login took it over meanwhile).
    pub(crate) fn hold(&self, account: &str, session: SessionId, lease: Arc<Lease>) -> bool {
        match self.holders.lock().get_mut(account) {
            Some(holder) if holder.handle.id() == session => {
                holder.lease = Some(lease);
                true
            }
            _ => false,
        }
    }

    /// Forgets `account` if `session` claims or holds it; true if it did.
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

    /// True if a session claims or holds `account`.
    pub(crate) fn is_claimed(&self, account: &str) -> bool {
        self.holders.lock().contains_key(account)
    }

    /// Takes `account` away from whichever session claims or holds it.
    fn take(&self, account: &str) -> Option<Holder> {
        self.holders.lock().remove(account)
    }

    /// The session holding `account` under a lease older than `epoch`
    /// (another node logged it in since), if any. (It stays registered
    /// until its player leaves, as on any disconnect.)
    pub(crate) fn older_than(&self, account: &str, epoch: u64) -> Option<HolderRef> {
        let holders = self.holders.lock();
        let holder = holders.get(account)?;
        let lease = holder.lease.as_ref()?;
        (lease.epoch() < epoch).then(|| HolderRef {
            account: account.to_owned(),
            handle: holder.handle.clone(),
            player: holder.player.clone(),
        })
    }

    /// Judges every held lease against a renewal (module `lease`). The
    /// sessions that lost theirs stay registered until their players
    /// leave, as on any disconnect.
    pub(crate) fn judge_leases(
        &self,
        renewed: &[(String, u64)],
        started: Instant,
        ttl: Duration,
    ) -> Judged<HolderRef> {
        let holders = self.holders.lock();
        let held: Vec<(String, Arc<Lease>, HolderRef)> = holders
            .iter()
            .filter_map(|(account, holder)| {
                let lease = holder.lease.as_ref()?;
                Some((
                    account.clone(),
                    Arc::clone(lease),
                    HolderRef {
                        account: account.clone(),
                        handle: holder.handle.clone(),
                        player: holder.player.clone(),
                    },
                ))
            })
            .collect();
        drop(holders);
        lease::judge(held, renewed, started, ttl)
    }

    /// How many accounts are claimed or held.
    pub fn len(&self) -> usize {
        self.holders.lock().len()
    }

    /// True if no account is claimed or held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts a session disconnected because its lease was lost.
pub(crate) fn note_lease_lost(counters: &GameCounters) {
    counters.leases_lost.fetch_add(1, Ordering::Relaxed);
}

/// Disconnects the session `handle` holding `account` with `reason`, and
/// calls `done` once it is gone — its player has left, so the socket is
/// closed — and every storage request about the account sent so far (the
/// leave's save and lease release among them) is committed.
pub(crate) fn kick(
    account: String,
    handle: SessionHandle,
    player: WeakActor<Player>,
    reason: DisconnectReason,
    storage: StorageHandle,
    counters: &Arc<GameCounters>,
    done: Box<dyn FnOnce() + Send>,
) {
    bump(&counters.duplicate_login_kicks);
    tracing::info!(
        %account,
        session = %handle.id(),
        peer = %handle.peer_addr(),
        %reason,
        "duplicate login: disconnecting the older session"
    );
    handle.disconnect_with(reason);
    let barrier: Box<dyn FnOnce() + Send> = Box::new(move || storage.barrier(&account, done));
    match player.upgrade() {
        // The disconnect makes the player leave; it calls back once it has.
        Some(player) => player.do_async(move |player| player.when_gone(barrier)),
        None => barrier(),
    }
}

/// Kicks whichever local session claims or holds `account`; `done(kicked)`
/// once it is gone and its save committed (at once if none did).
pub(crate) fn kick_local(
    sessions: &LocalSessions,
    account: String,
    reason: DisconnectReason,
    storage: StorageHandle,
    counters: &Arc<GameCounters>,
    done: Box<dyn FnOnce(bool) + Send>,
) {
    match sessions.take(&account) {
        Some(holder) => kick(
            account,
            holder.handle,
            holder.player,
            reason,
            storage,
            counters,
            Box::new(move || done(true)),
        ),
        None => done(false),
    }
}
