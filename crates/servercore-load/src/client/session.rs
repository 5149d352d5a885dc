//! One dummy game client, the course's `ServerSession` of the DummyClient:
//! logs in, enters the game, then chats on a timer and measures how long its
//! own messages take to come back.
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
//!    message back, and `now - client_time_us` its latency.
//!
//! A refusal is counted and closes the session; a reply out of order or
//! with impossible values is a malformed reply and closes it too. Both are
//! counted once per session, and the run goes on.
//!
//! The chat schedule: every session that entered before the chat window
//! opens gets a slot, `period * k / n`, so that the `n` sessions' messages
//! are spread evenly over each period instead of arriving in bursts; each
//! later send is due exactly one period after the previous due time (no
//! drift).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use servercore::job::{JobQueue, WeakJobQueue};
use servercore::packet::{DispatchError, PacketHandler};
use servercore::{DisconnectReason, SessionHandle};
use servercore_protocol::{
    dispatch_client, make_packet, CChat, CEnterGame, CLogin, ClientHandler, PacketId, SChat,
    SDespawn, SEnterGame, SLogin, SMove, SSpawn,
};

use super::stats::{kind, now_us, LoadStats};

/// What every session of one run shares: the counters, the chat settings
/// and the chat schedule.
pub struct RunShared {
    /// The run's counters and latency.
    pub stats: LoadStats,
    period: Option<Duration>,
    message: String,
    account_prefix: String,
    next_index: AtomicUsize,
    chatting: AtomicBool,
    gate: Mutex<Gate>,
    /// The nodes of a run over several (empty: one server).
    nodes: Vec<std::net::SocketAddr>,
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

/// A session in game, as the chat timer sees it.
struct Chatter {
    handle: SessionHandle,
    /// Weak: the session's timers stop when the session is gone.
    queue: WeakJobQueue,
    index: usize,
    /// The session's node in a run over several.
    node: Option<usize>,
}

impl RunShared {
    /// Shared state for a run whose sessions send one `message_bytes`-byte
    /// message every `period` (None: never).
    pub fn new(period: Option<Duration>, message_bytes: usize, account_prefix: &str) -> RunShared {
        const TEXT: &[u8] = b"servercore dummy client chat line. ";
        let message = TEXT
            .iter()
            .cycle()
            .take(message_bytes)
            .map(|&b| b as char)
            .collect();
        RunShared {
            stats: LoadStats::default(),
            period,
            message,
            account_prefix: account_prefix.to_owned(),
            next_index: AtomicUsize::new(0),
            chatting: AtomicBool::new(false),
            gate: Mutex::new(Gate::Waiting(Vec::new())),
            nodes: Vec::new(),
        }
    }

    /// Spreads the run over several nodes: chats are tagged with the
    /// sender's node and deliveries split into local and cross-node.
    pub fn with_nodes(mut self, nodes: Vec<std::net::SocketAddr>) -> RunShared {
        if nodes.len() > 1 {
            self.nodes = nodes;
        }
        self
    }

    /// Opens the chat window for `duration`: every session already in game
    /// gets its slot; returns the window's start and end.
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

    /// Closes the chat window: timers that fire later send nothing.
    pub fn close_chat(&self) {
        self.chatting.store(false, Ordering::Release);
        *self.gate.lock() = Gate::Closed;
    }

    /// A session entered the game: it waits for the window, or starts
    /// chatting at its slot if the window is open.
    fn join_chat(self: &Arc<Self>, chatter: Chatter) {
        if self.period.is_none() {
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

    /// Schedules the first message of `chatter`: slot `slot` of `slots`
    /// after `start`, or, for a session that entered after the window
    /// opened (`late`), the same slot in the next period to come.
    fn schedule_first(
        self: &Arc<Self>,
        chatter: Chatter,
        (start, end): (Instant, Instant),
        (slot, slots): (usize, usize),
        late: bool,
    ) {
        let Some(period) = self.period else { return };
        let mut due = start + period.mul_f64(slot as f64 / slots as f64);
        let now = Instant::now();
        if late && due < now {
            let behind = (now - due).as_secs_f64() / period.as_secs_f64();
            due += period.mul_f64(behind.ceil());
        }
        schedule(Arc::clone(self), chatter, due, end);
    }

    /// One tick of a session's chat timer, due at `due`.
    fn chat(self: Arc<Self>, chatter: Chatter, due: Instant, end: Instant) {
        let Some(period) = self.period else { return };
        if due >= end || !self.chatting.load(Ordering::Acquire) || !chatter.handle.is_connected() {
            return;
        }
        let msg = match chatter.node {
            Some(node) => super::nodes::tag(node) + &self.message,
            None => self.message.clone(),
        };
        let packet = make_packet(&CChat {
            msg,
            client_time_us: now_us(),
        });
        if chatter.handle.send(packet).is_err() {
            // The session is closing; its disconnect is what gets counted.
            return;
        }
        LoadStats::bump(&self.stats.sent);
        let now = Instant::now();
        let mut next = due + period;
        if next + Duration::from_secs(1) < now {
            // Far behind (an overloaded machine): skip ahead rather than
            // send a burst to catch up.
            next = now;
        }
        schedule(self, chatter, next, end);
    }
}

/// Arms `chatter`'s timer for `due`, unless its session is gone.
fn schedule(shared: Arc<RunShared>, chatter: Chatter, due: Instant, end: Instant) {
    if due >= end {
        return;
    }
    let Some(queue) = chatter.queue.upgrade() else {
        return;
    };
    let delay = due.saturating_duration_since(Instant::now());
    queue.do_timer(delay, move || shared.chat(chatter, due, end));
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
    /// Owns the chat timer; dropping the session stops it.
    timer: JobQueue,
    /// This session's node in a run over several (from its peer address).
    node: Option<usize>,
}

impl GameClient {
    /// A new session of the run; numbered in creation order.
    pub fn new(shared: Arc<RunShared>) -> GameClient {
        let index = shared.next_index.fetch_add(1, Ordering::AcqRel);
        GameClient {
            shared,
            index,
            phase: Phase::Connecting,
            failed: false,
            timer: JobQueue::new(),
            node: None,
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
            self.refused(session, kind::LOGIN_REFUSED);
            return Ok(());
        }
        LoadStats::bump(&self.shared.stats.logged_in);
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
            self.refused(session, kind::ENTER_REFUSED);
            return Ok(());
        }
        self.phase = Phase::InGame {
            player_id: msg.player_id,
        };
        LoadStats::bump(&self.shared.stats.entered);
        self.shared.join_chat(Chatter {
            handle: session.clone(),
            queue: self.timer.downgrade(),
            index: self.index,
            node: self.node,
        });
        Ok(())
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

    // The world tells every player who is near it; a chatting client does
    // not move and ignores it.
    fn handle_s_spawn(
        &mut self,
        _session: &SessionHandle,
        _msg: SSpawn,
    ) -> Result<(), DispatchError> {
        Ok(())
    }

    fn handle_s_despawn(
        &mut self,
        _session: &SessionHandle,
        _msg: SDespawn,
    ) -> Result<(), DispatchError> {
        Ok(())
    }

    fn handle_s_move(
        &mut self,
        _session: &SessionHandle,
        _msg: SMove,
    ) -> Result<(), DispatchError> {
        Ok(())
    }
}

impl PacketHandler for GameClient {
    fn on_connected(&mut self, session: &SessionHandle) {
        LoadStats::bump(&self.shared.stats.connected);
        self.phase = Phase::LoggingIn;
        if !self.shared.nodes.is_empty() {
            let peer = session.peer_addr();
            self.node = self.shared.nodes.iter().position(|addr| *addr == peer);
        }
        let account = format!("{}{}", self.shared.account_prefix, self.index);
        let _ = session.send(make_packet(&CLogin { account }));
    }

    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        dispatch_client(self, session, id, body)
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        let stats = &self.shared.stats;
        LoadStats::bump(&stats.disconnected);
        let in_game = matches!(self.phase, Phase::InGame { .. });
        if stats.is_finishing() {
            if !in_game {
                self.fail(kind::NEVER_ENTERED);
            }
            return;
        }
        if !in_game {
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
