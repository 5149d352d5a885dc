//! One dummy game client, the course's `ServerSession` of the DummyClient:
//! logs in, enters the game, then chats and (in the move scenario) walks on
//! timers, and measures how long its own messages and moves take to come
//! back.
//!
//! The conversation of one session:
//!
//! 1. connected → `C_LOGIN { account: "<prefix><n>" }`;
//! 2. `S_LOGIN { success }` → `C_ENTER_GAME { player_index: 0 }`;
//! 3. `S_ENTER_GAME { success, player_id }` → in game: the session joins the
//!    run's chat schedule ([`RunShared`]);
//! 4. every period, a timer of the session's own [`JobQueue`] sends
//!    `C_CHAT { msg, client_time_us }`;
//! 5. every `S_CHAT` is a delivery; one whose `player_id` is ours is our own
//!    message back, and `now - client_time_us` its latency;
//! 6. in the move scenario, every move period the same timer takes a step of
//!    the session's random walk ([`Walker`]) and sends
//!    `C_MOVE { info, client_time_us }`;
//! 7. `S_SPAWN` / `S_DESPAWN` add players to and remove them from the set the
//!    session sees; every `S_MOVE` is a move delivery; the own one gives the
//!    own-move latency, and a position other than the one sent is a
//!    correction (the walker then continues from the server's position); an
//!    `S_MOVE` of a player not in the set is a `move_from_unseen` error.
//!    Given the zones of one world across the run's nodes
//!    ([`LoadConfig::zones`]), one in eight of the other players' `S_MOVE`s
//!    is timed by the mover's `client_time_us` and sorted into local or
//!    cross-border by where the mover stands.
//!
//! 8. `S_TRANSFER` (one world across nodes): the node hands the player to
//!    another; the session remembers it, and when the node closes the
//!    connection the client follows ([`super::follow`]): it connects to the
//!    advertised `addr`, logs in with the token as `C_LOGIN.account`,
//!    enters (`C_ENTER_GAME { 0 }`) and walks on from where it stands; the
//!    time from `S_TRANSFER` to the first `S_MOVE` from the new node is the
//!    transfer time;
//! 9. a connection that ends without a transfer (reset, closed: its node
//!    died), in a run over several addresses, is a reconnect: the client
//!    tries the next address of the run in
//!    turn, logs in with its account name and enters where it was last
//!    saved (the node that owns that point may hand it over at once).
//!
//! Each connection checks what it is told against what it saw on that
//! connection: an `S_MOVE` of a player never spawned and a second spawn of
//! a player in view are violations, counted as errors.
//!
//! A refusal is counted (a login's by the reason the server gave,
//! `login_refused:<reason>`) and closes the session; a reply out of order or
//! with impossible values is a malformed reply and closes it too. Both are
//! counted once per session, and the run goes on.
//!
//! The schedule: every session that entered before the window opens gets a
//! slot, `period * k / n`, so that the `n` sessions' messages are spread
//! evenly over each period instead of arriving in bursts; each later send is
//! due exactly one period after the previous due time (no drift). Chat and
//! moves keep separate schedules with the same slots.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::sync::OnceLock;

use parking_lot::Mutex;
use servercore::job::{JobQueue, WeakJobQueue};
use servercore::packet::{DispatchError, PacketHandler};
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    dispatch_client, make_packet, CChat, CEnterGame, CLogin, CMove, ClientHandler, MoveState,
    PacketId, PosInfo, SChat, SDespawn, SEnterGame, SLeaveGame, SLogin, SMove, SSpawn, STransfer,
};

use super::config::LoadConfig;
use super::stats::{kind, now_us, LoadStats};
use super::walk::Walker;

/// Moves sent but not yet seen back that a session remembers; older ones
/// are forgotten (a server that drops moves must not grow the client).
const MAX_PENDING_MOVES: usize = 64;

/// A position difference below this is float noise, not a correction.
const CORRECTION_EPSILON: f32 = 0.01;

/// A session adds its move deliveries to the shared counter in batches of
/// this many (and when it closes): one contended atomic add per delivery
/// would cost the load generator more than the decoding.
const DELIVERY_BATCH: u64 = 64;

/// One in this many of the other players' moves is timed for the local
/// and cross-border split: a lock and a histogram entry per delivery would
/// cost the load generator more than the rest of the delivery.
const MOVE_SPLIT_SAMPLE: u32 = 8;

/// Attempts a client makes to get back into the game (after a transfer it
/// could not follow, or its node's death) before it gives up.
const MAX_FOLLOW_ATTEMPTS: u32 = 12;

/// The wait before reconnect attempt `n` (the first one goes at once): a
/// node that just died is not tried in a tight loop, and a login refused
/// while the dead node's lease runs out is tried again a little later.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(250 * u64::from(attempt.min(4)))
}

/// What every session of one run shares: the counters, the chat and move
/// settings and the schedule.
pub struct RunShared {
    /// The run's counters and latency.
    pub stats: LoadStats,
    period: Option<Duration>,
    move_period: Option<Duration>,
    /// Distance of one step of the walk.
    step: f32,
    world_size: f32,
    message: String,
    account_prefix: String,
    next_index: AtomicUsize,
    chatting: AtomicBool,
    gate: Mutex<Gate>,
    /// The nodes of a run over several (empty: one server).
    nodes: Vec<SocketAddr>,
    /// Every address of the run, in `--addr` order: where a client whose
    /// node died tries next.
    addrs: Vec<SocketAddr>,
    /// Whether this run's transport can follow a transfer (plain TCP or
    /// TLS to the advertised `addr`; not a WebSocket URL or QUIC).
    can_follow: bool,
    /// The world's zones over `addrs`, when the run was given them.
    zones: Option<super::config::ZoneSplit>,
    /// Violations logged so far.
    violations_logged: std::sync::atomic::AtomicU64,
    /// Where follow requests go (set once the follower runs).
    follows: OnceLock<crossbeam_channel::Sender<super::follow::Request>>,
}

/// What a client carries from one connection to the next (a transfer, a
/// reconnect): its number, its walk, and how the next connection logs in.
pub(crate) struct Carry {
    index: usize,
    walk: Arc<Mutex<WalkState>>,
    arrival: Arrival,
    /// Attempts since the client was last in game.
    attempt: u32,
    /// The index in the run's addresses of the node a reconnect tries.
    node: usize,
}

/// How a connection of a client came to be.
#[derive(Debug, Clone)]
enum Arrival {
    /// The client's first connection: logs in with its account name.
    First,
    /// Following an `S_TRANSFER` received at `told`: logs in with `token`
    /// at `addr`.
    Transfer {
        addr: String,
        token: String,
        told: Instant,
    },
    /// Back after its node died or a transfer failed: logs in with its
    /// account name.
    Reconnect,
}

/// What a session's timer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Chat,
    Move,
}

/// The chat schedule's state.
enum Gate {
    /// The window is not open yet: sessions in game wait here.
    Waiting(Vec<Chatter>),
    /// The window is open from `start` to `end`; a session that enters now
    /// gets the slot of its index among `slots`.
    Open {
        start: Instant,
        end: Instant,
        slots: usize,
    },
    /// The window is closed: nobody sends any more.
    Closed,
}

/// A session in game, as its timers see it.
#[derive(Clone)]
struct Chatter {
    handle: SessionHandle,
    /// Weak: the session's timers stop when the session is gone.
    queue: WeakJobQueue,
    index: usize,
    /// The session's node in a run over several.
    node: Option<usize>,
    walk: Arc<Mutex<WalkState>>,
}

/// A session's walk, shared by its move timer and its packet handler.
struct WalkState {
    walker: Walker,
    /// Moves in flight: `(client_time_us, x, y)`, oldest first.
    pending: VecDeque<(u64, f32, f32)>,
}

impl RunShared {
    /// Shared state for a run as `config` describes it: one
    /// `message_bytes`-byte chat every `period()`, one step of the walk
    /// every `move_period()` (None: never).
    pub fn new(config: &LoadConfig) -> RunShared {
        const TEXT: &[u8] = b"servercore dummy client chat line. ";
        let message = TEXT
            .iter()
            .cycle()
            .take(config.message_bytes)
            .map(|&b| b as char)
            .collect();
        RunShared {
            stats: LoadStats::default(),
            period: config.period(),
            move_period: config.move_period(),
            step: (config.speed / config.move_rate.max(1e-9)) as f32,
            world_size: config.world_size as f32,
            message,
            account_prefix: config.account_prefix.clone(),
            next_index: AtomicUsize::new(0),
            chatting: AtomicBool::new(false),
            gate: Mutex::new(Gate::Waiting(Vec::new())),
            nodes: Vec::new(),
            addrs: config.addrs(),
            can_follow: config.quic.is_none() && matches!(config.transport.name(), "tcp" | "tls"),
            follows: OnceLock::new(),
            zones: config.zones.clone(),
            violations_logged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Where follow requests go from now on.
    pub(crate) fn set_follower(&self, follows: crossbeam_channel::Sender<super::follow::Request>) {
        let _ = self.follows.set(follows);
    }

    /// Sends `carry` on its way: to the transfer's address, or to the node
    /// its reconnect tries, after `delay`. Gives up when nobody follows.
    fn follow(&self, carry: Carry, delay: Duration) {
        let addr = match &carry.arrival {
            Arrival::Transfer { addr, .. } => addr.clone(),
            _ => self.addrs[carry.node % self.addrs.len()].to_string(),
        };
        let request = super::follow::Request {
            carry,
            addr,
            due: Instant::now() + delay,
        };
        match self.follows.get() {
            Some(follows) if !self.stats.is_finishing() => {
                if let Err(unsent) = follows.send(request) {
                    self.give_up(unsent.into_inner().carry);
                }
            }
            _ => self.give_up(request.carry),
        }
    }

    /// A follow attempt of `carry` failed (`what`: where): the next one, or
    /// the end of the client after [`MAX_FOLLOW_ATTEMPTS`].
    pub(crate) fn attempt_failed(&self, mut carry: Carry, what: &str) {
        if self.stats.is_finishing() {
            return;
        }
        match carry.arrival {
            Arrival::Transfer { .. } => {
                LoadStats::bump(&self.stats.transfer_errors);
                self.stats
                    .error(&format!("{}{what}", kind::TRANSFER_FAILED_PREFIX));
                tracing::debug!(
                    session = carry.index,
                    what,
                    "a transfer failed; reconnecting"
                );
                // The token did not take: log in by name, at the same node.
                carry.arrival = Arrival::Reconnect;
            }
            _ => {
                LoadStats::bump(&self.stats.reconnect_attempts_failed);
                carry.node = (carry.node + 1) % self.addrs.len();
            }
        }
        carry.attempt += 1;
        if carry.attempt >= MAX_FOLLOW_ATTEMPTS {
            self.give_up(carry);
            return;
        }
        let delay = retry_delay(carry.attempt);
        self.follow(carry, delay);
    }

    /// `carry` found no way back into the game: a failed session, lost.
    fn give_up(&self, carry: Carry) {
        LoadStats::drop_one(&self.stats.in_transit);
        if self.stats.is_finishing() {
            return;
        }
        tracing::warn!(
            session = carry.index,
            "no node took the client back; giving up"
        );
        self.stats.error(kind::RECONNECT_GAVE_UP);
        LoadStats::bump(&self.stats.failed_sessions);
        LoadStats::bump(&self.stats.lost_in_game);
    }

    fn period_of(&self, activity: Activity) -> Option<Duration> {
        match activity {
            Activity::Chat => self.period,
            Activity::Move => self.move_period,
        }
    }

    /// Spreads the run over several nodes: chats are tagged with the
    /// sender's node and deliveries split into local and cross-node.
    pub fn with_nodes(mut self, nodes: Vec<SocketAddr>) -> RunShared {
        if nodes.len() > 1 {
            self.nodes = nodes;
        }
        self
    }

    /// Opens the window for `duration`: every session already in game gets
    /// its slot; returns the window's start and end.
    pub fn open_chat(self: &Arc<Self>, duration: Duration) -> (Instant, Instant) {
        let start = Instant::now();
        let end = start + duration;
        let waiting = {
            let mut gate = self.gate.lock();
            let waiting = match &mut *gate {
                Gate::Waiting(waiting) => std::mem::take(waiting),
                _ => Vec::new(),
            };
            let slots = (waiting.len().max(self.next_index.load(Ordering::Acquire))).max(1);
            *gate = Gate::Open { start, end, slots };
            waiting
        };
        self.chatting.store(true, Ordering::Release);
        let slots = waiting.len().max(1);
        for (slot, chatter) in waiting.into_iter().enumerate() {
            self.schedule_first(chatter, (start, end), (slot, slots), false);
        }
        (start, end)
    }

    /// Closes the window: timers that fire later send nothing.
    pub fn close_chat(&self) {
        self.chatting.store(false, Ordering::Release);
        *self.gate.lock() = Gate::Closed;
    }

    /// A session entered the game: it waits for the window, or starts
    /// at its slot if the window is open.
    fn join_chat(self: &Arc<Self>, chatter: Chatter) {
        if self.period.is_none() && self.move_period.is_none() {
            return;
        }
        let mut gate = self.gate.lock();
        match &mut *gate {
            Gate::Waiting(waiting) => waiting.push(chatter),
            Gate::Open { start, end, slots } => {
                let (start, end, slots) = (*start, *end, *slots);
                drop(gate);
                let slot = chatter.index % slots;
                self.schedule_first(chatter, (start, end), (slot, slots), true);
            }
            Gate::Closed => {}
        }
    }

    /// Schedules the first message and the first move of `chatter`: slot
    /// `slot` of `slots` after `start`, or, for a session that entered after
    /// the window opened (`late`), the same slot in the next period to come.
    fn schedule_first(
        self: &Arc<Self>,
        chatter: Chatter,
        (start, end): (Instant, Instant),
        (slot, slots): (usize, usize),
        late: bool,
    ) {
        for activity in [Activity::Chat, Activity::Move] {
            let Some(period) = self.period_of(activity) else {
                continue;
            };
            let mut due = start + period.mul_f64(slot as f64 / slots as f64);
            let now = Instant::now();
            if late && due < now {
                let behind = (now - due).as_secs_f64() / period.as_secs_f64();
                due += period.mul_f64(behind.ceil());
            }
            schedule(Arc::clone(self), activity, chatter.clone(), due, end);
        }
    }

    /// One tick of a session's chat or move timer, due at `due`.
    fn tick(self: Arc<Self>, activity: Activity, chatter: Chatter, due: Instant, end: Instant) {
        let Some(period) = self.period_of(activity) else {
            return;
        };
        if due >= end || !self.chatting.load(Ordering::Acquire) || !chatter.handle.is_connected() {
            return;
        }
        let (packet, counter) = match activity {
            Activity::Chat => {
                let msg = match chatter.node {
                    Some(node) => super::nodes::tag(node) + &self.message,
                    None => self.message.clone(),
                };
                (
                    make_packet(&CChat {
                        msg,
                        client_time_us: now_us(),
                    }),
                    &self.stats.sent,
                )
            }
            Activity::Move => (self.next_move(&chatter), &self.stats.moves_sent),
        };
        // A move goes by datagram over QUIC (the same as `send` elsewhere).
        let sent = match activity {
            Activity::Move => chatter.handle.send_datagram(packet),
            Activity::Chat => chatter.handle.send(packet),
        };
        if sent.is_err() {
            // The session is closing; its disconnect is what gets counted.
            return;
        }
        LoadStats::bump(counter);
        let now = Instant::now();
        let mut next = due + period;
        if next + Duration::from_secs(1) < now {
            // Far behind (an overloaded machine): skip ahead rather than
            // send a burst to catch up.
            next = now;
        }
        schedule(self, activity, chatter, next, end);
    }

    /// The next step of `chatter`'s walk as a `C_MOVE`, remembered as in
    /// flight (before it is sent: the reply may come back at once).
    fn next_move(&self, chatter: &Chatter) -> bytes::Bytes {
        let mut walk = chatter.walk.lock();
        let (x, y, yaw) = walk.walker.step(self.step);
        let client_time_us = now_us();
        if walk.pending.len() >= MAX_PENDING_MOVES {
            walk.pending.pop_front();
        }
        walk.pending.push_back((client_time_us, x, y));
        drop(walk);
        make_packet(&CMove {
            info: Some(PosInfo {
                object_id: 0,
                x,
                y,
                z: 0.0,
                yaw,
                state: MoveState::Run as i32,
            }),
            client_time_us,
        })
    }
}

/// Arms `chatter`'s timer for `due`, unless its session is gone.
fn schedule(
    shared: Arc<RunShared>,
    activity: Activity,
    chatter: Chatter,
    due: Instant,
    end: Instant,
) {
    if due >= end {
        return;
    }
    let Some(queue) = chatter.queue.upgrade() else {
        return;
    };
    let delay = due.saturating_duration_since(Instant::now());
    queue.do_timer(delay, move || shared.tick(activity, chatter, due, end));
}

/// Where a session is in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    LoggingIn,
    Entering,
    InGame { player_id: u64 },
}

/// One dummy client: the packet handler of one connection.
pub struct GameClient {
    shared: Arc<RunShared>,
    index: usize,
    phase: Phase,
    /// Set once this session's failure was counted (counted once).
    failed: bool,
    /// Owns the chat and move timers; dropping the session stops them.
    timer: JobQueue,
    /// This session's node in a run over several (from its peer address).
    node: Option<usize>,
    walk: Arc<Mutex<WalkState>>,
    /// The players the server spawned for this session and has not
    /// despawned.
    seen: HashSet<u64>,
    /// Move deliveries not yet added to the shared counter.
    unflushed_deliveries: u64,
    /// How this connection came to be.
    arrival: Arrival,
    /// Attempts since the client was last in game (0 on a first
    /// connection).
    attempt: u32,
    /// The index in the run's addresses of this connection's node, when
    /// it is one of them.
    node_index: Option<usize>,
    /// A reconnect's node (where the next attempt starts from).
    reconnect_node: usize,
    /// The `S_TRANSFER` this connection got, and when.
    transfer: Option<(STransfer, Instant)>,
    /// After a transfer: when the `S_TRANSFER` came, until the first
    /// `S_MOVE` from the new node.
    awaiting_first_move: Option<Instant>,
    /// Why this follow attempt failed before entering (set by a refusal).
    attempt_failure: Option<String>,
    /// Other players' moves received on this connection: every
    /// [`MOVE_SPLIT_SAMPLE`]th is sorted into local or cross-border.
    others_moves: u32,
}

impl GameClient {
    /// A new session of the run; numbered in creation order.
    pub fn new(shared: Arc<RunShared>) -> GameClient {
        let index = shared.next_index.fetch_add(1, Ordering::AcqRel);
        let walk = Arc::new(Mutex::new(WalkState {
            walker: Walker::new(shared.world_size, index as u64),
            pending: VecDeque::new(),
        }));
        GameClient::with(
            shared,
            Carry {
                index,
                walk,
                arrival: Arrival::First,
                attempt: 0,
                node: 0,
            },
        )
    }

    /// The next connection of a client that carries `carry` over (a
    /// transfer or a reconnect).
    pub(crate) fn carried(shared: Arc<RunShared>, carry: Carry) -> GameClient {
        // Moves sent on the old connection never come back.
        carry.walk.lock().pending.clear();
        GameClient::with(shared, carry)
    }

    fn with(shared: Arc<RunShared>, carry: Carry) -> GameClient {
        GameClient {
            shared,
            index: carry.index,
            phase: Phase::Connecting,
            failed: false,
            timer: JobQueue::new(),
            node: None,
            walk: carry.walk,
            seen: HashSet::new(),
            unflushed_deliveries: 0,
            arrival: carry.arrival,
            attempt: carry.attempt,
            node_index: None,
            reconnect_node: carry.node,
            transfer: None,
            awaiting_first_move: None,
            attempt_failure: None,
            others_moves: 0,
        }
    }

    /// What the next connection of this client carries over.
    fn carry(&self, arrival: Arrival, attempt: u32, node: usize) -> Carry {
        Carry {
            index: self.index,
            walk: Arc::clone(&self.walk),
            arrival,
            attempt,
            node,
        }
    }

    /// True for a connection that follows a transfer or reconnects.
    fn is_carried(&self) -> bool {
        !matches!(self.arrival, Arrival::First)
    }

    /// Times another player's move as local (the mover stands in this
    /// connection's node's zone) or cross-border (in another node's, so it
    /// came through NATS); a mover near a border is left out.
    fn sort_move(&self, zones: &super::config::ZoneSplit, x: f32, client_time_us: u64) {
        let (Some(here), Some(there)) = (self.node_index, zones.node_of(x)) else {
            return;
        };
        let latency = now_us().saturating_sub(client_time_us).max(1);
        let mut split = self.shared.stats.move_split.lock();
        if here == there {
            split.local.saturating_record(latency);
        } else {
            split.cross.saturating_record(latency);
        }
    }

    /// Adds the move deliveries counted locally to the run's counter.
    fn flush_deliveries(&mut self) {
        let count = std::mem::take(&mut self.unflushed_deliveries);
        if count > 0 {
            self.shared
                .stats
                .move_deliveries
                .fetch_add(count, Ordering::Relaxed);
        }
    }

    /// This session's player id once in game.
    fn in_game(&self, id: PacketId) -> Result<u64, DispatchError> {
        match self.phase {
            Phase::InGame { player_id } => Ok(player_id),
            _ => Err(self.out_of_order(id)),
        }
    }

    /// Our own `S_MOVE` came back: latency, and a correction if the server
    /// put us somewhere else than we asked.
    fn own_move(&self, info: &PosInfo, client_time_us: u64) -> Result<(), DispatchError> {
        let stats = &self.shared.stats;
        LoadStats::bump(&stats.own_moves);
        if client_time_us == 0 {
            return Ok(());
        }
        let now = now_us();
        if client_time_us > now {
            return Err(DispatchError::rejected(
                PacketId::SMove.as_u16(),
                format!("client_time_us {client_time_us} is in the future (now {now})"),
            ));
        }
        stats.record_move_latency(now - client_time_us);
        let mut walk = self.walk.lock();
        while let Some(&(sent_at, x, y)) = walk.pending.front() {
            if sent_at > client_time_us {
                break;
            }
            walk.pending.pop_front();
            if sent_at == client_time_us {
                let off = (info.x - x).abs().max((info.y - y).abs());
                if off > CORRECTION_EPSILON {
                    LoadStats::bump(&stats.corrections);
                    walk.walker.place(info.x, info.y);
                }
                break;
            }
        }
        Ok(())
    }

    /// The node closed the connection after `S_TRANSFER` `transfer` (read
    /// at `told`): the client follows it.
    fn follow_transfer(&mut self, transfer: STransfer, told: Instant) {
        let stats = &self.shared.stats;
        LoadStats::bump(&stats.in_transit);
        let target = self
            .shared
            .addrs
            .iter()
            .position(|addr| addr.to_string() == transfer.addr)
            .unwrap_or(0);
        let carry = self.carry(
            Arrival::Transfer {
                addr: transfer.addr,
                token: transfer.token,
                told,
            },
            0,
            target,
        );
        if self.shared.can_follow {
            self.shared.follow(carry, Duration::ZERO);
        } else {
            self.shared.attempt_failed(carry, "unsupported_transport");
        }
    }

    /// Logs what broke the world's rules (the first few of a run: the
    /// count is in the report).
    fn note_violation(&self, what: &str, own_id: u64, other: u64) {
        const LOGGED: u64 = 10;
        if self
            .shared
            .violations_logged
            .fetch_add(1, Ordering::Relaxed)
            < LOGGED
        {
            tracing::warn!(
                session = self.index,
                player = own_id,
                other,
                node = ?self.node_index,
                arrival = ?self.arrival_name(),
                "{what}"
            );
        }
    }

    fn arrival_name(&self) -> &'static str {
        match self.arrival {
            Arrival::First => "first",
            Arrival::Transfer { .. } => "transfer",
            Arrival::Reconnect => "reconnect",
        }
    }

    /// Counts this session as failed with `kind` (once).
    fn fail(&mut self, kind: &str) {
        if !self.failed {
            self.failed = true;
            self.shared.stats.error(kind);
            LoadStats::bump(&self.shared.stats.failed_sessions);
        }
    }

    /// A refusal: counted, and the session is closed.
    fn refused(&mut self, session: &SessionHandle, kind: &str) {
        self.fail(kind);
        session.disconnect();
    }

    fn out_of_order(&self, id: PacketId) -> DispatchError {
        DispatchError::rejected(id.as_u16(), format!("{} while {:?}", id.name(), self.phase))
    }
}

impl ClientHandler for GameClient {
    fn handle_s_login(
        &mut self,
        session: &SessionHandle,
        msg: SLogin,
    ) -> Result<(), DispatchError> {
        if self.phase != Phase::LoggingIn {
            return Err(self.out_of_order(PacketId::SLogin));
        }
        if !msg.success {
            let why = super::stats::login_refused(msg.reason());
            if self.is_carried() {
                // The next attempt is decided when the connection closes.
                tracing::debug!(session = self.index, %why, "a follow login was refused");
                self.attempt_failure = Some(why);
                session.disconnect();
            } else {
                self.refused(session, &why);
            }
            return Ok(());
        }
        if !self.is_carried() {
            LoadStats::bump(&self.shared.stats.logged_in);
        }
        self.phase = Phase::Entering;
        let _ = session.send(make_packet(&CEnterGame { player_index: 0 }));
        Ok(())
    }

    fn handle_s_enter_game(
        &mut self,
        session: &SessionHandle,
        msg: SEnterGame,
    ) -> Result<(), DispatchError> {
        if self.phase != Phase::Entering {
            return Err(self.out_of_order(PacketId::SEnterGame));
        }
        if !msg.success {
            if self.is_carried() {
                self.attempt_failure = Some(kind::ENTER_REFUSED.to_owned());
                session.disconnect();
            } else {
                self.refused(session, kind::ENTER_REFUSED);
            }
            return Ok(());
        }
        self.phase = Phase::InGame {
            player_id: msg.player_id,
        };
        let stats = &self.shared.stats;
        match &self.arrival {
            Arrival::First => LoadStats::bump(&stats.entered),
            Arrival::Transfer { told, .. } => {
                LoadStats::bump(&stats.transfers);
                LoadStats::drop_one(&stats.in_transit);
                self.awaiting_first_move = Some(*told);
            }
            Arrival::Reconnect => {
                LoadStats::bump(&stats.reconnects);
                LoadStats::drop_one(&stats.in_transit);
            }
        }
        if let Some(pos) = msg
            .player
            .as_ref()
            .and_then(|player| player.pos_info.as_ref())
        {
            self.walk.lock().walker.place(pos.x, pos.y);
        }
        self.shared.join_chat(Chatter {
            handle: session.clone(),
            queue: self.timer.downgrade(),
            index: self.index,
            walk: Arc::clone(&self.walk),
            node: self.node,
        });
        Ok(())
    }

    fn handle_s_spawn(
        &mut self,
        _session: &SessionHandle,
        msg: SSpawn,
    ) -> Result<(), DispatchError> {
        let own_id = self.in_game(PacketId::SSpawn)?;
        let stats = &self.shared.stats;
        for player in &msg.players {
            if player.object_id == own_id {
                continue;
            }
            LoadStats::bump(&stats.spawns);
            if !self.seen.insert(player.object_id) {
                stats.error(kind::SPAWN_OF_SEEN);
                self.note_violation(kind::SPAWN_OF_SEEN, own_id, player.object_id);
            }
        }
        Ok(())
    }

    fn handle_s_despawn(
        &mut self,
        _session: &SessionHandle,
        msg: SDespawn,
    ) -> Result<(), DispatchError> {
        let own_id = self.in_game(PacketId::SDespawn)?;
        let stats = &self.shared.stats;
        for id in &msg.object_ids {
            LoadStats::bump(&stats.despawns);
            if !self.seen.remove(id) {
                stats.error(kind::DESPAWN_OF_UNSEEN);
                self.note_violation(kind::DESPAWN_OF_UNSEEN, own_id, *id);
            }
        }
        Ok(())
    }

    fn handle_s_move(&mut self, session: &SessionHandle, msg: SMove) -> Result<(), DispatchError> {
        let own_id = self.in_game(PacketId::SMove)?;
        if let Some(told) = self.awaiting_first_move.take() {
            let micros = u64::try_from(told.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.shared.stats.record_transfer_time(micros);
        }
        let Some(info) = msg.info else {
            return Err(DispatchError::rejected(
                PacketId::SMove.as_u16(),
                "S_MOVE without a position",
            ));
        };
        self.unflushed_deliveries += 1;
        if self.unflushed_deliveries >= DELIVERY_BATCH {
            self.flush_deliveries();
        }
        if info.object_id == own_id {
            // Every own move (10 a second) also brings the counter up to
            // date.
            self.flush_deliveries();
            return self.own_move(&info, msg.client_time_us);
        }
        if let Some(zones) = &self.shared.zones {
            self.others_moves = self.others_moves.wrapping_add(1);
            if msg.client_time_us != 0 && self.others_moves % MOVE_SPLIT_SAMPLE == 0 {
                self.sort_move(zones, info.x, msg.client_time_us);
            }
        }
        // Over QUIC a move comes by datagram and may overtake the spawn on
        // the stream: it is ignored, as the protocol says, not an error.
        if !self.seen.contains(&info.object_id) && session.max_datagram_size().is_none() {
            self.shared.stats.error(kind::MOVE_FROM_UNSEEN);
            self.note_violation(kind::MOVE_FROM_UNSEEN, own_id, info.object_id);
        }
        Ok(())
    }

    fn handle_s_transfer(
        &mut self,
        _session: &SessionHandle,
        msg: STransfer,
    ) -> Result<(), DispatchError> {
        self.in_game(PacketId::STransfer)?;
        if msg.addr.is_empty() || msg.token.is_empty() {
            return Err(DispatchError::rejected(
                PacketId::STransfer.as_u16(),
                "S_TRANSFER without an address or a token",
            ));
        }
        LoadStats::bump(&self.shared.stats.transfers_told);
        // The node closes the connection after it; the client follows then.
        self.transfer = Some((msg, Instant::now()));
        Ok(())
    }

    fn handle_s_leave_game(
        &mut self,
        _session: &SessionHandle,
        _msg: SLeaveGame,
    ) -> Result<(), DispatchError> {
        // The client never asks to leave: an unasked S_LEAVE_GAME is out
        // of order.
        Err(self.out_of_order(PacketId::SLeaveGame))
    }

    fn handle_s_chat(&mut self, _session: &SessionHandle, msg: SChat) -> Result<(), DispatchError> {
        let own_id = match self.phase {
            Phase::InGame { player_id } => player_id,
            // A room may broadcast before our S_ENTER_GAME is written.
            Phase::Entering => 0,
            _ => return Err(self.out_of_order(PacketId::SChat)),
        };
        let stats = &self.shared.stats;
        LoadStats::bump(&stats.deliveries);
        if let (Some(node), Some(from)) = (self.node, super::nodes::sender_node(&msg.msg)) {
            let latency = now_us().saturating_sub(msg.client_time_us).max(1);
            let mut split = stats.split.lock();
            if from == node {
                LoadStats::bump(&stats.local_deliveries);
                split.local.saturating_record(latency);
            } else {
                LoadStats::bump(&stats.cross_deliveries);
                split.cross.saturating_record(latency);
            }
        }
        if own_id != 0 && msg.player_id == own_id && msg.client_time_us != 0 {
            let now = now_us();
            if msg.client_time_us > now {
                return Err(DispatchError::rejected(
                    PacketId::SChat.as_u16(),
                    format!(
                        "client_time_us {} is in the future (now {now})",
                        msg.client_time_us
                    ),
                ));
            }
            stats.record_latency(now - msg.client_time_us);
            LoadStats::bump(&stats.own_echoes);
        }
        Ok(())
    }
}

impl PacketHandler for GameClient {
    fn on_connected(&mut self, session: &SessionHandle) {
        LoadStats::bump(&self.shared.stats.connected);
        self.phase = Phase::LoggingIn;
        let peer = session.peer_addr();
        self.node_index = self.shared.addrs.iter().position(|addr| *addr == peer);
        if !self.shared.nodes.is_empty() {
            self.node = self.node_index;
        }
        let account = match &self.arrival {
            Arrival::Transfer { token, .. } => token.clone(),
            _ => format!("{}{}", self.shared.account_prefix, self.index),
        };
        let _ = session.send(make_packet(&CLogin { account }));
    }

    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        if id == PacketId::SSpawn.as_u16() {
            let size = (body.len() + servercore::packet::HEADER_SIZE) as u64;
            self.shared
                .stats
                .largest_spawn_bytes
                .fetch_max(size, std::sync::atomic::Ordering::Relaxed);
        }
        dispatch_client(self, session, id, body)
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.flush_deliveries();
        let stats = &self.shared.stats;
        stats
            .last_disconnect_us
            .fetch_max(now_us(), Ordering::Relaxed);
        LoadStats::bump(&stats.disconnected);
        let in_game = matches!(self.phase, Phase::InGame { .. });
        if stats.is_finishing() {
            // A carried connection not in game yet is still in transit,
            // and counted so at the end.
            if !in_game && !self.is_carried() {
                self.fail(kind::NEVER_ENTERED);
            }
            return;
        }
        if let Some((transfer, told)) = self.transfer.take() {
            self.follow_transfer(transfer, told);
            return;
        }
        if self.is_carried() && !in_game {
            // This attempt ended before the client was in game again.
            let what = self
                .attempt_failure
                .take()
                .unwrap_or_else(|| "closed_before_entering".to_owned());
            let carry = self.carry(self.arrival.clone(), self.attempt, self.reconnect_node);
            self.shared.attempt_failed(carry, &what);
            return;
        }
        let node_died = matches!(
            reason,
            DisconnectReason::ClosedByPeer
                | DisconnectReason::Reset
                | DisconnectReason::IoError { .. }
        );
        // A run against one server keeps its old meaning: a server that
        // dies ends its sessions (and the run).
        if in_game && node_died && self.shared.can_follow && self.shared.addrs.len() > 1 {
            tracing::debug!(
                session = self.index,
                "disconnected ({reason}); reconnecting"
            );
            LoadStats::bump(&stats.in_transit);
            let next = self.node_index.map_or(0, |node| node + 1) % self.shared.addrs.len();
            let carry = self.carry(Arrival::Reconnect, 0, next);
            self.shared.follow(carry, Duration::ZERO);
            return;
        }
        if in_game {
            LoadStats::bump(&stats.lost_in_game);
        } else {
            LoadStats::bump(&stats.gave_up);
        }
        match reason {
            DisconnectReason::MalformedPacket(detail) => {
                if !self.failed {
                    tracing::warn!(session = self.index, "malformed reply: {detail}");
                }
                self.fail(kind::MALFORMED_REPLY);
            }
            reason => {
                if !self.failed {
                    tracing::debug!(session = self.index, "disconnected: {reason}");
                }
                self.fail(&format!("{}{}", kind::DISCONNECT_PREFIX, reason.name()));
            }
        }
    }
}
