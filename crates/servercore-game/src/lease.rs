//! Account leases, the node's side (the database's side is in `storage`):
//! what a session knows of its account's lease, and the thread that keeps
//! the node's leases alive.
//!
//! This module owns:
//! - [`Lease`]: one session's lease — its epoch, and until when this node
//!   can vouch for it. A session may act (its packets are handled) only
//!   while its lease is fresh: the last renewal (or the login) that
//!   confirmed it started less than the lease's time to live ago, so the
//!   database cannot have let another node take it yet. A node that was
//!   paused or cut off past that holds its sessions' packets until a
//!   renewal says which leases it kept;
//! - [`LeaseKeeper`]: a thread that renews every lease of the node with
//!   one statement every third of the time to live (or at once when a
//!   session finds its lease stale), then confirms the sessions whose
//!   leases are still held, wakes those that waited, and disconnects those
//!   whose accounts another node took.
//!
//! Time: a lease's freshness is measured on the monotonic clock, which
//! runs on while the process is stopped (SIGSTOP) — exactly what makes a
//! resumed node see its leases stale. (A whole machine suspended stops
//! that clock too; the database's fenced saves still keep its data safe.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::sessions::{self, LocalSessions};
use super::stats::GameCounters;
use super::storage::StorageHandle;

/// The reason a session whose account another node took is disconnected with.
pub const LEASE_LOST: servercore::DisconnectReason =
    servercore::DisconnectReason::App("account_taken_by_another_node");

/// The instant lease times are counted from (set before the first lease).
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn to_nanos(at: Instant) -> u64 {
    at.saturating_duration_since(clock_base()).as_nanos() as u64
}

/// One session's lease of its account.
#[derive(Debug)]
pub struct Lease {
    epoch: u64,
    /// When the login that took it was asked for: renewals that started
    /// earlier may not have seen it, and do not judge it.
    taken_at: Instant,
    /// Nanoseconds from [`clock_base`] until which it is fresh.
    fresh_until: AtomicU64,
    /// The session holds its packets until a renewal says.
    waiting: AtomicBool,
}

impl Lease {
    /// A lease taken under `epoch` by a login asked for at `asked_at`,
    /// lasting `ttl`.
    pub fn new(epoch: u64, asked_at: Instant, ttl: Duration) -> Arc<Lease> {
        clock_base();
        Arc::new(Lease {
            epoch,
            taken_at: asked_at,
            fresh_until: AtomicU64::new(to_nanos(asked_at + ttl)),
            waiting: AtomicBool::new(false),
        })
    }

    /// The epoch the database gave it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True while this node can vouch for it at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        to_nanos(now) < self.fresh_until.load(Ordering::Acquire)
    }

    /// A renewal that started at `started` found it held: fresh until
    /// `started + ttl`.
    fn confirm(&self, started: Instant, ttl: Duration) {
        self.fresh_until
            .fetch_max(to_nanos(started + ttl), Ordering::AcqRel);
    }

    /// Its session holds packets until the next renewal.
    pub fn wait_for_renewal(&self) {
        self.waiting.store(true, Ordering::Release);
    }

    fn take_waiting(&self) -> bool {
        self.waiting.swap(false, Ordering::AcqRel)
    }
}

/// What a renewal found for the node's sessions.
pub(crate) struct Judged<T> {
    /// Held and renewed: fresh again; `true` if the session was waiting.
    pub(crate) kept: Vec<(T, bool)>,
    /// Taken by another node (or let go): the session must go.
    pub(crate) lost: Vec<T>,
}

/// Judges the leases `held` (account, lease) against a renewal that
/// started at `started` and found `renewed` (account, epoch).
pub(crate) fn judge<T>(
    held: Vec<(String, Arc<Lease>, T)>,
    renewed: &[(String, u64)],
    started: Instant,
    ttl: Duration,
) -> Judged<T> {
    let renewed: std::collections::HashMap<&str, u64> = renewed
        .iter()
        .map(|(account, epoch)| (account.as_str(), *epoch))
        .collect();
    let mut judged = Judged {
        kept: Vec::new(),
        lost: Vec::new(),
    };
    for (account, lease, holder) in held {
        if lease.taken_at >= started {
            continue; // newer than the renewal: it may not have seen it
        }
        if renewed.get(account.as_str()) == Some(&lease.epoch) {
            lease.confirm(started, ttl);
            let waited = lease.take_waiting();
            judged.kept.push((holder, waited));
        } else {
            judged.lost.push(holder);
        }
    }
    judged
}

/// The thread that renews the node's leases.
pub struct LeaseKeeper {
    wake: Sender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper").finish_non_exhaustive()
    }
}

/// Asks the keeper for a renewal now; cheap, from any thread.
#[derive(Debug, Clone)]
pub struct RenewNow(Sender<()>);

impl RenewNow {
    /// Renew as soon as possible (requests made meanwhile are one).
    pub fn renew(&self) {
        let _ = self.0.try_send(());
    }
}

/// What the keeper needs.
pub(crate) struct KeeperParts {
    pub(crate) node: String,
    pub(crate) ttl: Duration,
    pub(crate) db: StorageHandle,
    pub(crate) sessions: Arc<LocalSessions>,
    pub(crate) counters: Arc<GameCounters>,
}

impl LeaseKeeper {
    /// Starts the thread; it renews every `ttl / 3`, and at once when
    /// asked ([`LeaseKeeper::renew_now`]).
    pub(crate) fn start(parts: KeeperParts) -> std::io::Result<LeaseKeeper> {
        clock_base();
        let (wake, woken) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("game-leases".into())
            .spawn(move || keep(parts, woken, stopping))?;
        Ok(LeaseKeeper {
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// A handle that asks for a renewal now.
    pub fn renew_now(&self) -> RenewNow {
        RenewNow(self.wake.clone())
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = self.wake.try_send(());
            if thread.join().is_err() {
                tracing::error!("the lease thread panicked");
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's loop.
fn keep(parts: KeeperParts, woken: Receiver<()>, stop: Arc<AtomicBool>) {
    let interval = (parts.ttl / 3).max(Duration::from_millis(10));
    let stopped = || stop.load(Ordering::Acquire);
    let mut failures = 0u64;
    let mut last_failure_log: Option<Instant> = None;
    loop {
        match woken.recv_timeout(interval) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if stopped() {
            return;
        }
        let started = Instant::now();
        let (answer_tx, answer) = crossbeam_channel::bounded(1);
        parts.db.renew_leases(
            parts.node.clone(),
            parts.ttl,
            Box::new(move |result| {
                let _ = answer_tx.send(result);
            }),
        );
        // A stop (or a request for a renewal, which this one answers) may
        // come while the database works.
        let result = loop {
            crossbeam_channel::select! {
                recv(answer) -> result => break result.ok(),
                recv(woken) -> wake => {
                    if wake.is_err() || stopped() {
                        return;
                    }
                }
            }
        };
        match result {
            Some(Ok(renewed)) => {
                failures = 0;
                settle(&parts, &renewed, started);
            }
            Some(Err(error)) => {
                failures += 1;
                let now = Instant::now();
                if last_failure_log
                    .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
                {
                    last_failure_log = Some(now);
                    tracing::warn!(
                        %error,
                        failures,
                        "account leases not renewed; sessions hold their packets once their \
                         leases are stale"
                    );
                }
            }
            None => return,
        }
    }
}

/// Applies a renewal: wakes the sessions that waited, disconnects those that
/// lost their accounts.
fn settle(parts: &KeeperParts, renewed: &[(String, u64)], started: Instant) {
    let judged = parts.sessions.judge_leases(renewed, started, parts.ttl);
    for (holder, waited) in judged.kept {
        if waited {
            holder.wake();
        }
    }
    for holder in judged.lost {
        sessions::note_lease_lost(&parts.counters);
        tracing::warn!(
            account = %holder.account,
            session = %holder.handle.id(),
            "the account's lease was taken by another node; disconnecting its session"
        );
        holder.disconnect(LEASE_LOST);
    }
}
