//! What a load run measures, shared by every dummy session, the progress
//! display and the final report: session counters, chat and movement
//! counters, chat and own-move latency (hdrhistogram) and errors by kind.
//!
//! Counters are plain atomics. Latency samples (one per chat message or
//! move that comes back to its sender) go into two histograms under one
//! lock per kind: the run's total, and a recent window the progress display
//! reads and resets for its running p99.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Highest latency the histograms track exactly (60 s, in µs); larger
/// samples are clamped to it.
const MAX_TRACKED_US: u64 = 60_000_000;

/// Microseconds since a process-wide monotonic epoch, never 0 (0 means
/// "unset" for a proto3 field). Only ever compared within this process.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// A new latency histogram: 1 µs to 60 s, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

/// Error kinds, as they appear in the report.
pub mod kind {
    /// A connect that failed.
    pub const CONNECT_FAILED: &str = "connect_failed";
    /// The server answered `S_LOGIN` with `success = false` without saying
    /// why; with a reason the kind is [`login_refused`](super::login_refused).
    pub const LOGIN_REFUSED: &str = "login_refused";
    /// Prefix of "the server refused the login and said why", followed by
    /// the `S_LOGIN.reason` in snake case (`login_refused:account_limit`).
    pub const LOGIN_REFUSED_PREFIX: &str = "login_refused:";
    /// The server answered `S_ENTER_GAME` with `success = false`.
    pub const ENTER_REFUSED: &str = "enter_refused";
    /// A reply that did not decode, arrived out of order, or carried
    /// impossible values.
    pub const MALFORMED_REPLY: &str = "malformed_reply";
    /// A session connected but had not entered the game when the run
    /// stopped.
    pub const NEVER_ENTERED: &str = "never_entered";
    /// An `S_MOVE` of a player the server never spawned for this session
    /// (or despawned since): the interest management lost track.
    pub const MOVE_FROM_UNSEEN: &str = "move_from_unseen";
    /// An `S_SPAWN` of a player this session already sees.
    pub const SPAWN_OF_SEEN: &str = "spawn_of_seen";
    /// An `S_DESPAWN` of a player this session does not see.
    pub const DESPAWN_OF_UNSEEN: &str = "despawn_of_unseen";
    /// Prefix of "the session was disconnected during the run", followed by
    /// [`servercore::DisconnectReason::name`].
    pub const DISCONNECT_PREFIX: &str = "disconnect:";
    /// Prefix of "an `S_TRANSFER` could not be followed", followed by what
    /// failed: `connect`, `login_refused:<reason>`, `closed_before_entering`,
    /// `bad_address`, `unsupported_transport` (WebSocket and QUIC runs do
    /// not follow).
    pub const TRANSFER_FAILED_PREFIX: &str = "transfer_failed:";
    /// A client whose node died (or whose transfer failed) and that found
    /// no node to enter again within its attempts.
    pub const RECONNECT_GAVE_UP: &str = "reconnect_gave_up";
}

/// The error kind of a refused login: `login_refused:<reason>`, or
/// `login_refused` from a server that gave no reason.
pub fn login_refused(reason: servercore_protocol::LoginRefusal) -> String {
    match reason {
        servercore_protocol::LoginRefusal::Unspecified => kind::LOGIN_REFUSED.to_owned(),
        reason => {
            let name = reason.as_str_name();
            let name = name.strip_prefix("LOGIN_REFUSAL_").unwrap_or(name);
            format!("{}{}", kind::LOGIN_REFUSED_PREFIX, name.to_lowercase())
        }
    }
}

/// Counters and latency of one load run.
pub struct LoadStats {
    /// Sessions whose connection was established.
    pub connected: AtomicU64,
    /// Connects that failed.
    pub connect_failed: AtomicU64,
    /// Sessions that got a successful `S_LOGIN`.
    pub logged_in: AtomicU64,
    /// Sessions that got a successful `S_ENTER_GAME`.
    pub entered: AtomicU64,
    /// Sessions that ended before entering the game, during the run
    /// (refused, dropped, malformed replies).
    pub gave_up: AtomicU64,
    /// Sessions that connected and then failed in any way (each counted
    /// once, under its first error).
    pub failed_sessions: AtomicU64,
    /// Sessions disconnected in any way, the run's own stop included.
    pub disconnected: AtomicU64,
    /// Sessions that were in game and disconnected before the run stopped
    /// them.
    pub lost_in_game: AtomicU64,
    /// When the last session disconnected ([`now_us`]; 0: none yet).
    pub last_disconnect_us: AtomicU64,
    /// `C_CHAT` messages queued.
    pub sent: AtomicU64,
    /// `S_CHAT` messages received, by every session, from anyone.
    pub deliveries: AtomicU64,
    /// `S_CHAT` messages that came back to their own sender (latency samples).
    pub own_echoes: AtomicU64,
    /// `C_MOVE` messages queued.
    pub moves_sent: AtomicU64,
    /// `S_MOVE` messages received, by every session, about anyone.
    pub move_deliveries: AtomicU64,
    /// `S_MOVE` messages about the receiver itself (own-move latency
    /// samples).
    pub own_moves: AtomicU64,
    /// Players spawned to a session (each player of an `S_SPAWN` counts,
    /// not the packet).
    pub spawns: AtomicU64,
    /// Players despawned from a session (each player of an `S_DESPAWN`).
    pub despawns: AtomicU64,
    /// The largest `S_SPAWN` received, header included, in bytes.
    pub largest_spawn_bytes: AtomicU64,
    /// Own `S_MOVE`s whose position differs from the one sent: the server
    /// clamped or disconnect the move.
    pub corrections: AtomicU64,
    /// Set when the run stops its sessions: disconnects after it are not
    /// errors.
    pub finishing: AtomicBool,
    /// Deliveries from a sender on the receiver's node (runs over several
    /// nodes only).
    pub local_deliveries: AtomicU64,
    /// Deliveries from a sender on another node (runs over several nodes
    /// only).
    pub cross_deliveries: AtomicU64,
    /// `S_TRANSFER`s received (each one a client told to move to another
    /// node).
    pub transfers_told: AtomicU64,
    /// Transfers followed: the client entered the game on the new node.
    pub transfers: AtomicU64,
    /// Transfers that could not be followed (each attempt that failed).
    pub transfer_errors: AtomicU64,
    /// Clients that entered again after their node died (connection reset
    /// or closed without a transfer).
    pub reconnects: AtomicU64,
    /// Reconnect attempts that failed (a dead node's address tried, a
    /// login refused while the old node's lease ran out).
    pub reconnect_attempts_failed: AtomicU64,
    /// Clients between two connections now (told to transfer or cut off,
    /// not yet in game again): not in game, not lost.
    pub in_transit: AtomicU64,
    latency: Mutex<Latency>,
    move_latency: Mutex<Latency>,
    /// From `S_TRANSFER` to the first `S_MOVE` from the new node.
    transfer_time: Mutex<Histogram<u64>>,
    pub(crate) split: Mutex<super::nodes::SplitLatency>,
    /// Latency of other players' moves, local against cross-border (a run
    /// given the world's zones; sampled, see `session`).
    pub(crate) move_split: Mutex<super::nodes::SplitLatency>,
    errors: Mutex<BTreeMap<String, u64>>,
}

struct Latency {
    total: Histogram<u64>,
    recent: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            total: new_histogram(),
            recent: new_histogram(),
        }
    }
}

impl Latency {
    fn record(&mut self, micros: u64) {
        let micros = micros.clamp(1, MAX_TRACKED_US);
        self.total.saturating_record(micros);
        self.recent.saturating_record(micros);
    }

    fn take_recent_p99(&mut self) -> Option<Duration> {
        let p99 = (!self.recent.is_empty())
            .then(|| Duration::from_micros(self.recent.value_at_quantile(0.99)));
        self.recent.reset();
        p99
    }
}

impl Default for LoadStats {
    fn default() -> Self {
        LoadStats {
            connected: AtomicU64::default(),
            connect_failed: AtomicU64::default(),
            logged_in: AtomicU64::default(),
            entered: AtomicU64::default(),
            gave_up: AtomicU64::default(),
            failed_sessions: AtomicU64::default(),
            disconnected: AtomicU64::default(),
            lost_in_game: AtomicU64::default(),
            last_disconnect_us: AtomicU64::default(),
            sent: AtomicU64::default(),
            deliveries: AtomicU64::default(),
            own_echoes: AtomicU64::default(),
            moves_sent: AtomicU64::default(),
            move_deliveries: AtomicU64::default(),
            own_moves: AtomicU64::default(),
            spawns: AtomicU64::default(),
            despawns: AtomicU64::default(),
            largest_spawn_bytes: AtomicU64::default(),
            corrections: AtomicU64::default(),
            finishing: AtomicBool::default(),
            local_deliveries: AtomicU64::default(),
            cross_deliveries: AtomicU64::default(),
            transfers_told: AtomicU64::default(),
            transfers: AtomicU64::default(),
            transfer_errors: AtomicU64::default(),
            reconnects: AtomicU64::default(),
            reconnect_attempts_failed: AtomicU64::default(),
            in_transit: AtomicU64::default(),
            latency: Mutex::default(),
            move_latency: Mutex::default(),
            transfer_time: Mutex::new(new_histogram()),
            split: Mutex::default(),
            move_split: Mutex::default(),
            errors: Mutex::default(),
        }
    }
}

impl LoadStats {
    /// Adds one transfer-time sample (`S_TRANSFER` to the first `S_MOVE`
    /// from the new node), in microseconds.
    pub fn record_transfer_time(&self, micros: u64) {
        self.transfer_time
            .lock()
            .saturating_record(micros.clamp(1, MAX_TRACKED_US));
    }

    /// A copy of the run's transfer-time histogram.
    pub fn transfer_time_snapshot(&self) -> Histogram<u64> {
        self.transfer_time.lock().clone()
    }

    /// Takes one off a counter that is above zero.
    pub fn drop_one(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Adds one chat latency sample, in microseconds.
    pub fn record_latency(&self, micros: u64) {
        self.latency.lock().record(micros);
    }

    /// Adds one own-move latency sample, in microseconds.
    pub fn record_move_latency(&self, micros: u64) {
        self.move_latency.lock().record(micros);
    }

    /// Starts the measured window: the traffic counters and latencies
    /// counted so far (the warm-up's: own moves, chats, transfer times,
    /// the local and cross-border split of moves) are dropped. Session
    /// counters, transfer counts and errors are kept.
    pub fn reset_window(&self) {
        for counter in [
            &self.sent,
            &self.deliveries,
            &self.own_echoes,
            &self.moves_sent,
            &self.move_deliveries,
            &self.own_moves,
            &self.spawns,
            &self.despawns,
            &self.corrections,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        *self.latency.lock() = Latency::default();
        *self.move_latency.lock() = Latency::default();
        // A run's first tick hands over every player that entered on a node
        // that does not own its position: the warm-up absorbs that burst.
        self.transfer_time.lock().reset();
        *self.move_split.lock() = super::nodes::SplitLatency::default();
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        let mut errors = self.errors.lock();
        match errors.get_mut(kind) {
            Some(count) => *count += 1,
            None => {
                errors.insert(kind.to_owned(), 1);
            }
        }
    }

    /// Errors by kind so far.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// All errors so far.
    pub fn error_total(&self) -> u64 {
        self.errors.lock().values().sum()
    }

    /// The chat p99 of the samples since the last call (None without
    /// samples), then starts a new window.
    pub fn take_recent_p99(&self) -> Option<Duration> {
        self.latency.lock().take_recent_p99()
    }

    /// The own-move p99 since the last call, like [`Self::take_recent_p99`].
    pub fn take_recent_move_p99(&self) -> Option<Duration> {
        self.move_latency.lock().take_recent_p99()
    }

    /// A copy of the run's whole chat latency histogram.
    pub fn latency_snapshot(&self) -> Histogram<u64> {
        self.latency.lock().total.clone()
    }

    /// A copy of the run's whole own-move latency histogram.
    pub fn move_latency_snapshot(&self) -> Histogram<u64> {
        self.move_latency.lock().total.clone()
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// True once the run is stopping its sessions.
    pub fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_us_is_monotonic_and_never_zero() {
        let a = now_us();
        let b = now_us();
        assert!(a >= 1 && b >= a);
    }

    #[test]
    fn errors_and_latency_accumulate() {
        let stats = LoadStats::default();
        stats.error(kind::LOGIN_REFUSED);
        stats.error(kind::LOGIN_REFUSED);
        for _ in 0..3 {
            stats.error(kind::CONNECT_FAILED);
        }
        assert_eq!(stats.error_total(), 5);
        assert_eq!(stats.errors().len(), 2);
        for us in 1..=100 {
            stats.record_latency(us * 1000);
        }
        stats.record_latency(u64::MAX);
        let p99 = stats.take_recent_p99().unwrap();
        assert!(p99 >= Duration::from_millis(99), "{p99:?}");
        assert_eq!(stats.take_recent_p99(), None, "the window was reset");
        let total = stats.latency_snapshot();
        assert_eq!(total.len(), 101);
        assert!(total.max() >= MAX_TRACKED_US - MAX_TRACKED_US / 1000);
    }

    #[test]
    fn refusals_are_named_by_their_reason() {
        use servercore_protocol::LoginRefusal;
        assert_eq!(login_refused(LoginRefusal::Unspecified), "login_refused");
        assert_eq!(
            login_refused(LoginRefusal::AccountLimit),
            "login_refused:account_limit"
        );
        assert_eq!(
            login_refused(LoginRefusal::TooManyConnections),
            "login_refused:too_many_connections"
        );
    }

    #[test]
    fn reset_window_drops_traffic_but_keeps_sessions_and_errors() {
        let stats = LoadStats::default();
        LoadStats::bump(&stats.entered);
        LoadStats::bump(&stats.moves_sent);
        LoadStats::bump(&stats.move_deliveries);
        stats.record_move_latency(500);
        stats.record_latency(700);
        stats.error(kind::MOVE_FROM_UNSEEN);
        stats.reset_window();
        assert_eq!(LoadStats::get(&stats.entered), 1);
        assert_eq!(LoadStats::get(&stats.moves_sent), 0);
        assert_eq!(LoadStats::get(&stats.move_deliveries), 0);
        assert!(stats.move_latency_snapshot().is_empty());
        assert!(stats.latency_snapshot().is_empty());
        assert_eq!(stats.take_recent_move_p99(), None);
        assert_eq!(stats.error_total(), 1);
    }
}
