//! The cluster link: game-server nodes joined through NATS. Each node runs
//! its own world (a channel, as MMOs call it); across nodes they share
//! world chat, presence (which account is online on which node), one
//! session per account, and node liveness. Nodes never talk to each other
//! directly, and the engine knows nothing of any of this.
//!
//! This module owns the NATS connections, on one thread of its own with a
//! small tokio runtime ([`ClusterLink`]); the game talks to it through a
//! [`ClusterHandle`] (a channel: sending never blocks an I/O worker or an
//! actor), and it answers by calling the game's [`ClusterEvents`], whose
//! implementations only push jobs onto actors.
//!
//! Three connections, so one kind of traffic cannot starve another: chat
//! (world chat, the bulk, and what an outsider can flood), control
//! (presence and kicks), and liveness (heartbeats and leaves, on a task of
//! their own: a chat backlog, however deep, never delays a heartbeat, so
//! it cannot make a live node look dead).
//!
//! Subjects, one per purpose:
//!
//! | subject | payload | who publishes / subscribes |
//! |---|---|---|
//! | `servercore.chat.world` | protobuf [`ClusterChat`]: origin node, player id, text, client time | every node, after its local broadcast / every node, which checks and re-encodes chats of other origins for its players |
//! | `servercore.presence.online` | JSON `{node, account, epoch}` | a node whose player logged in (the lease's epoch) / every node |
//! | `servercore.presence.offline` | JSON `{node, account}` | a node whose player left / every node |
//! | `servercore.node.heartbeat.<node>` | JSON `{node, accounts}`: the node's whole presence | every node each `heartbeat_interval` / every node |
//! | `servercore.node.leave.<node>` | JSON `{node}` | a node stopping cleanly / every node |
//! | `servercore.session.kick.<node>` | request: JSON `{account, epoch}`; reply: `released` or `failed` | a node whose login found the account's lease held by `<node>` / that node |
//! | `servercore.world.border.<node>` | protobuf `BorderTick` (`world::border`): a tick's border cells | each node of a shared world (`world_nodes`), every tick / `<node>` |
//!
//! Remote chat is input from the network like a client's packet: a
//! message longer than a chat can be (`max_chat_len` plus the envelope) is
//! dropped unread, one that does not decode, names no valid origin or
//! player, or carries a text longer than `max_chat_len` is dropped; each
//! is counted ([`ClusterStats`]) and logged at most once a second. What
//! passes is handed to the game as a [`RemoteChat`], which builds its own
//! `S_CHAT` from it (nothing a remote sends is relayed verbatim) and sheds
//! it under the same bound as local chat. The chat subscription holds at
//! most [`CHAT_BACKLOG`] messages; past that the client drops them.
//!
//! Ordering: a node publishes its chats on one connection in the order its
//! room relayed them, NATS keeps a publisher's order for each subscriber,
//! and the receiving node posts them to its room in arrival order, so every
//! player sees each sender's chats in the order they were sent, exactly
//! once (a node ignores the chats it published itself: its players already
//! got them from the local broadcast).
//!
//! One account, one session: the database's lease (modules `storage` and
//! `lease`) decides. A login whose lease another node holds asks that node
//! to kick the account's session ([`ClusterHandle::kick_remote`]); the
//! holder disconnects it, commits its last save, lets the lease go, then
//! answers `released`. A node that does not answer (dead, paused, cut
//! off) leaves the asker to wait for the lease to expire. A remote
//! `online` whose epoch is newer than a local session's lease means that
//! session lost its account: it is disconnected.
//!
//! Liveness: a node missing heartbeats for `node_timeout` is dropped from
//! the presence table (the table is advisory now: the leases decide who
//! holds an account).
//!
//! NATS down: the client reconnects on its own (every 100 ms to 1 s); the
//! outage and the reconnection are logged once each; chats published while
//! disconnected are dropped and counted (local chat goes on, the local
//! broadcast does not depend on NATS); subscriptions are restored by the
//! client on reconnect, and the next heartbeat restores this node's
//! presence elsewhere.

mod link;
mod presence;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::mpsc;

use presence::Presence;

use crate::redact::SecretUrl;

/// The world chat subject.
pub const CHAT_SUBJECT: &str = "servercore.chat.world";
/// An account came online on a node.
pub const ONLINE_SUBJECT: &str = "servercore.presence.online";
/// An account went offline on a node.
pub const OFFLINE_SUBJECT: &str = "servercore.presence.offline";
/// Heartbeats: this prefix, then the node name.
pub const HEARTBEAT_PREFIX: &str = "servercore.node.heartbeat";
/// A node stopping cleanly: this prefix, then the node name.
pub const LEAVE_PREFIX: &str = "servercore.node.leave";
/// Kick requests to a node: this prefix, then the node name.
pub const KICK_PREFIX: &str = "servercore.session.kick";

/// Most chats waiting to be published; past it (NATS too slow) they are
/// dropped and counted.
pub const MAX_PENDING_CHATS: u64 = 16_384;

/// Most chats from other nodes waiting to be checked; past it the NATS
/// client drops them (and says so once).
pub const CHAT_BACKLOG: usize = 1024;

/// Bytes of a [`ClusterChat`] besides its text, at most: the origin (a
/// node name of up to 64 bytes) and the numbers with their tags.
pub const CHAT_ENVELOPE: usize = 96;

/// A world chat between nodes, as published on [`CHAT_SUBJECT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClusterChat {
    /// The node whose player sent it.
    #[prost(string, tag = "1")]
    pub origin: String,
    /// The sender's player id.
    #[prost(uint64, tag = "2")]
    pub player_id: u64,
    /// The text.
    #[prost(string, tag = "3")]
    pub text: String,
    /// The sender's client time, copied into `S_CHAT`.
    #[prost(uint64, tag = "4")]
    pub client_time_us: u64,
}

impl ClusterChat {
    /// The wire form.
    pub fn encode_to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }
}

/// A checked world chat from another node, for the game to re-encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChat {
    /// The node it came from.
    pub origin: String,
    /// The sender's player id.
    pub player_id: u64,
    /// The text (valid UTF-8, at most `max_chat_len` bytes).
    pub text: String,
    /// The sender's client time.
    pub client_time_us: u64,
}

/// How a node joins the cluster. Its `Debug` shows the NATS URL redacted.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`, or a comma-separated
    /// list of them; credentials (`nats://user:password@host`, or
    /// `nats://token@host`) are taken out of the URL and given to the
    /// client apart, so no log line of it ever holds them.
    pub nats_url: SecretUrl,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`).
    pub node: String,
    /// How often the node tells the others it is alive.
    pub heartbeat_interval: Duration,
    /// A node silent for this long is taken for dead.
    pub node_timeout: Duration,
    /// Longest wait for another node to hand an account over.
    pub kick_timeout: Duration,
    /// How long an account's lease lasts unless the node renews it (it
    /// renews every third of it): how long a login elsewhere waits for an
    /// account of a node that died or was cut off.
    pub lease_ttl: Duration,
    /// Longest chat text taken from another node, in bytes (the game sets
    /// its own `max_chat_len` here).
    pub max_chat_len: usize,
    /// The nodes sharing one world, in map order (`--world-nodes`; see
    /// [`crate::zones`]); empty: this node runs a world of its own.
    pub world_nodes: Vec<String>,
    /// The cluster secret (`--cluster-secret`): signs and checks the
    /// tokens of players handed from one zone to another. Required with
    /// `world_nodes`.
    pub cluster_secret: Option<crate::auth::TokenKey>,
    /// The TCP address this node gives a player handed to it
    /// (`--public-addr`; default: its listen address).
    pub public_addr: Option<String>,
    /// The WebSocket URL this node gives a player handed to it
    /// (`--public-ws-url`; default: from its WebSocket listen address).
    pub public_ws_url: Option<String>,
}

impl ClusterConfig {
    /// Node `node` on `nats_url`: a heartbeat every second, dead after 3 s
    /// of silence, 2 s for a handover, 6 s leases, 256-byte chats.
    pub fn new(nats_url: impl Into<String>, node: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            nats_url: SecretUrl::new(nats_url),
            node: node.into(),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            kick_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(6),
            max_chat_len: 256,
            world_nodes: Vec::new(),
            cluster_secret: None,
            public_addr: None,
            public_ws_url: None,
        }
    }

    /// Checks the node name (it is part of subjects) and the timings.
    pub fn validate(&self) -> Result<(), String> {
        if !is_node_name(&self.node) {
            return Err(format!(
                "node name {:?} must be 1 to 64 letters, digits, '-' or '_'",
                self.node
            ));
        }
        if self.heartbeat_interval.is_zero() || self.node_timeout <= self.heartbeat_interval {
            return Err(format!(
                "node timeout {:?} must be longer than the heartbeat interval {:?}",
                self.node_timeout, self.heartbeat_interval
            ));
        }
        if !self.world_nodes.is_empty() {
            crate::zones::check_world_nodes(&self.world_nodes, &self.node)?;
            if self.cluster_secret.is_none() {
                return Err(
                    "--world-nodes needs --cluster-secret FILE (it signs the tokens \
                            of players handed from one node's zone to another)"
                        .into(),
                );
            }
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(format!(
                "the lease time {:?} must be at least 300 ms (it is renewed every third of it)",
                self.lease_ttl
            ));
        }
        Ok(())
    }

    /// The largest chat message taken off the wire.
    fn max_chat_payload(&self) -> usize {
        self.max_chat_len + CHAT_ENVELOPE
    }
}

/// True for a valid node name: 1 to 64 letters, digits, `-` or `_`.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the link asks of the game; called on the link's thread, so each
/// implementation only pushes a job and returns.
pub trait ClusterEvents: Send + Sync + 'static {
    /// A checked world chat from another node.
    fn remote_chat(&self, chat: RemoteChat);

    /// Another node needs `account`, whose lease this node holds under an
    /// epoch up to `up_to_epoch`: disconnect its local session, if any, and
    /// call `done(released)` once its last save is committed and the lease
    /// let go.
    fn kick(&self, account: String, up_to_epoch: u64, done: Box<dyn FnOnce(bool) + Send>);

    /// `node` logged `account` in under lease `epoch`: a local session
    /// holding it under an older epoch lost it.
    fn remote_online(&self, node: &str, account: &str, epoch: u64);

    /// A border message for this node's world (unchecked: the world checks
    /// it). Only for a node of a shared world.
    fn border(&self, _payload: Bytes) {}
}

/// Most border messages waiting to be published; past it (NATS too slow)
/// they are dropped and counted by the world.
pub const MAX_PENDING_BORDER: u64 = 256;

/// Most border messages from other nodes waiting to be read; past it the
/// NATS client drops them.
pub const BORDER_BACKLOG: usize = 256;

/// The link's counters.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    chats_out: AtomicU64,
    chats_in: AtomicU64,
    chats_dropped: AtomicU64,
    chats_in_malformed: AtomicU64,
    chats_in_too_long: AtomicU64,
    pending_chats: AtomicU64,
    kicks_sent: AtomicU64,
    kicks_released: AtomicU64,
    kicks_answered: AtomicU64,
    nodes_lost: AtomicU64,
    outages: AtomicU64,
    pending_border: AtomicU64,
}

/// A snapshot of the link: counters, the connection, the nodes it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// This node's name.
    pub node: String,
    /// True while connected to NATS.
    pub connected: bool,
    /// Chats published to the other nodes.
    pub chats_out: u64,
    /// Chats from other nodes checked and handed to the game.
    pub chats_in: u64,
    /// Chats not published (NATS down or too slow).
    pub chats_dropped: u64,
    /// Chat messages from the network that did not decode, or named no
    /// valid origin or player: dropped.
    pub chats_in_malformed: u64,
    /// Chat messages from the network longer than a chat may be: dropped.
    pub chats_in_too_long: u64,
    /// Kick requests sent to other nodes (a login found the account's
    /// lease held there).
    pub kicks_sent: u64,
    /// Of those, answered `released`.
    pub kicks_released: u64,
    /// Kick requests from other nodes answered.
    pub kicks_answered: u64,
    /// Nodes taken for dead (heartbeats missed).
    pub nodes_lost: u64,
    /// Times the NATS connection was lost.
    pub outages: u64,
    /// The other live nodes and how many accounts each holds, by name.
    pub nodes: Vec<(String, usize)>,
}

impl fmt::Display for ClusterStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node={} connected={} chats_out={} chats_in={} chats_dropped={} \
             chats_in_malformed={} chats_in_too_long={} kicks_sent={} kicks_released={} \
             kicks_answered={} nodes_lost={} nats_outages={} peers={}",
            self.node,
            self.connected,
            self.chats_out,
            self.chats_in,
            self.chats_dropped,
            self.chats_in_malformed,
            self.chats_in_too_long,
            self.kicks_sent,
            self.kicks_released,
            self.kicks_answered,
            self.nodes_lost,
            self.outages,
            self.nodes.len()
        )
    }
}

/// State the link's thread and the handles share.
pub(crate) struct Shared {
    pub(crate) config: ClusterConfig,
    pub(crate) counters: ClusterCounters,
    /// The control connection is up.
    pub(crate) connected: AtomicBool,
    /// The chat connection is up.
    pub(crate) chat_connected: AtomicBool,
    /// The world connection (border cells) is up.
    pub(crate) world_connected: AtomicBool,
    /// What this node tells the others players handed to it connect to:
    /// its TCP address and WebSocket URL.
    pub(crate) advertised: Mutex<(String, String)>,
    pub(crate) presence: Mutex<Presence>,
}

impl Shared {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Called on the link's thread with a kick's outcome: true if the other
/// node let the account go.
pub type KickReply = Box<dyn FnOnce(bool) + Send>;

pub(crate) enum Command {
    Chat(Bytes),
    Online {
        account: String,
        epoch: u64,
    },
    Offline(String),
    Kick {
        node: String,
        account: String,
        epoch: u64,
        reply: KickReply,
    },
    Border {
        node: String,
        payload: Bytes,
    },
    Stop,
}

/// Sends requests to the link. Cheap to clone, usable from any thread,
/// never blocks.
#[derive(Clone)]
pub struct ClusterHandle {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("node", &self.shared.config.node)
            .finish()
    }
}

impl ClusterHandle {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.config.node
    }

    /// The cluster's timings and limits.
    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    /// Publishes a world chat of player `player_id` (relayed to the local
    /// players already) to the other nodes; dropped and counted while
    /// NATS is down or behind.
    pub fn publish_chat(&self, player_id: u64, text: &str, client_time_us: u64) {
        let counters = &self.shared.counters;
        let connected = self.shared.chat_connected.load(Ordering::Relaxed);
        if !connected || counters.pending_chats.load(Ordering::Relaxed) >= MAX_PENDING_CHATS {
            Shared::bump(&counters.chats_dropped);
            return;
        }
        let chat = ClusterChat {
            origin: self.shared.config.node.clone(),
            player_id,
            text: text.to_owned(),
            client_time_us,
        };
        counters.pending_chats.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Command::Chat(chat.encode_to_bytes())).is_err() {
            counters.pending_chats.fetch_sub(1, Ordering::Relaxed);
            Shared::bump(&counters.chats_dropped);
        }
    }

    /// Publishes one border message to `node`; false (not sent) while
    /// NATS is down or behind.
    pub fn publish_border(&self, node: &str, payload: Bytes) -> bool {
        let counters = &self.shared.counters;
        if !self.shared.world_connected.load(Ordering::Relaxed)
            || counters.pending_border.load(Ordering::Relaxed) >= MAX_PENDING_BORDER
        {
            return false;
        }
        counters.pending_border.fetch_add(1, Ordering::Relaxed);
        let command = Command::Border {
            node: node.to_owned(),
            payload,
        };
        if self.tx.send(command).is_err() {
            counters.pending_border.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Tells the other nodes (with every heartbeat) where players handed
    /// to this node connect: its TCP address and WebSocket URL ("" for
    /// none).
    pub fn advertise(&self, addr: String, ws_url: String) {
        *self.shared.advertised.lock() = (addr, ws_url);
    }

    /// Where players handed to `node` connect (its TCP address and
    /// WebSocket URL), as its last heartbeat said.
    pub fn node_addrs(&self, node: &str) -> Option<(String, String)> {
        self.shared.presence.lock().addrs(node)
    }

    /// The other nodes alive now (heard within the node timeout), by
    /// name.
    pub fn live_nodes(&self) -> Vec<String> {
        self.shared.presence.lock().names()
    }

    /// `account` is now online on this node, under lease `epoch`.
    pub fn online(&self, account: String, epoch: u64) {
        let _ = self.tx.send(Command::Online { account, epoch });
    }

    /// `account` is no longer online on this node.
    pub fn offline(&self, account: String) {
        let _ = self.tx.send(Command::Offline(account));
    }

    /// Asks `node`, which holds `account`'s lease under `epoch`, to kick
    /// its session and let the lease go; `reply(released)` on the link's
    /// thread once it answers, or once `kick_timeout` passes (false). If
    /// the link has stopped, `reply(false)` runs at once on the caller's
    /// thread.
    pub fn kick_remote(&self, node: String, account: String, epoch: u64, reply: KickReply) {
        let command = Command::Kick {
            node,
            account,
            epoch,
            reply,
        };
        if let Err(error) = self.tx.send(command) {
            if let Command::Kick { reply, .. } = error.0 {
                reply(false);
            }
        }
    }

    /// The link's counters and the nodes it sees now.
    pub fn stats(&self) -> ClusterStats {
        let shared = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &shared.counters;
        ClusterStats {
            node: shared.config.node.clone(),
            connected: shared.connected.load(Ordering::Relaxed),
            chats_out: get(&c.chats_out),
            chats_in: get(&c.chats_in),
            chats_dropped: get(&c.chats_dropped),
            chats_in_malformed: get(&c.chats_in_malformed),
            chats_in_too_long: get(&c.chats_in_too_long),
            kicks_sent: get(&c.kicks_sent),
            kicks_released: get(&c.kicks_released),
            kicks_answered: get(&c.kicks_answered),
            nodes_lost: get(&c.nodes_lost),
            outages: get(&c.outages),
            nodes: shared.presence.lock().summary(),
        }
    }
}

/// A link made but not started: its handle works (requests wait for the
/// start), so the game can be built around it first.
pub struct PreparedLink {
    handle: ClusterHandle,
    commands: mpsc::UnboundedReceiver<Command>,
}

/// The link's thread: owns the NATS clients until
/// [`ClusterLink::stop_and_join`].
pub struct ClusterLink {
    handle: ClusterHandle,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node", &self.handle.node())
            .finish()
    }
}

impl ClusterLink {
    /// Checks `config` and makes the link's handle; a malformed node name
    /// or timing is an error.
    pub fn prepare(config: ClusterConfig) -> anyhow::Result<PreparedLink> {
        config.validate().map_err(anyhow::Error::msg)?;
        let shared = Arc::new(Shared {
            config,
            counters: ClusterCounters::default(),
            connected: AtomicBool::new(false),
            chat_connected: AtomicBool::new(false),
            world_connected: AtomicBool::new(false),
            advertised: Mutex::default(),
            presence: Mutex::new(Presence::default()),
        });
        let (tx, commands) = mpsc::unbounded_channel();
        Ok(PreparedLink {
            handle: ClusterHandle { tx, shared },
            commands,
        })
    }

    /// [`ClusterLink::prepare`], then [`PreparedLink::start`].
    pub fn start(
        config: ClusterConfig,
        events: Arc<dyn ClusterEvents>,
    ) -> anyhow::Result<ClusterLink> {
        ClusterLink::prepare(config)?.start(events)
    }

    /// A handle for the game.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Tells the other nodes this one leaves, closes the connections and
    /// waits for the thread.
    pub fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.tx.send(Command::Stop);
            if thread.join().is_err() {
                tracing::error!("the cluster link thread panicked");
            }
        }
    }
}

impl PreparedLink {
    /// The handle (usable before the start).
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Starts the link's thread and connects. A NATS server that is down
    /// is not an error (the node serves its own players and joins once
    /// NATS answers); a malformed URL is.
    pub fn start(self, events: Arc<dyn ClusterEvents>) -> anyhow::Result<ClusterLink> {
        let PreparedLink { handle, commands } = self;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&handle.shared);
        let thread = std::thread::Builder::new()
            .name("cluster-link".into())
            .spawn(move || link::run(thread_shared, events, commands, started_tx))?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the cluster link thread stopped while starting");
            }
        }
        Ok(ClusterLink {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
