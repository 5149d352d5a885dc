//! The cluster link: game-server nodes joined through NATS. Each node runs
//! its own world (a channel, as MMOs call it); across nodes they share
//! world chat, presence (which account is online on which node), one
//! session per account, and node liveness. Nodes never talk to each other
//! directly, and the engine knows nothing of any of this.
//!
//! This module owns the NATS connection, on one thread of its own with a
//! small tokio runtime ([`ClusterLink`]); the game talks to it through a
//! [`ClusterHandle`] (a channel: sending never blocks an I/O worker or an
//! actor), and it answers by calling the game's [`ClusterEvents`], whose
//! implementations only push jobs onto actors.
//!
//! Subjects, one per purpose:
//!
//! | subject | payload | who publishes / subscribes |
//! |---|---|---|
//! | `servercore.chat.world` | origin node, then the `S_CHAT` packet as sent to clients | every node, after its local broadcast / every node, which relays chats of other origins to its players |
//! | `servercore.presence.online` | JSON `{node, account}` | a node whose player logged in / every node |
//! | `servercore.presence.offline` | JSON `{node, account}` | a node whose player left / every node |
//! | `servercore.node.heartbeat.<node>` | JSON `{node, accounts}`: the node's whole presence | every node each `heartbeat_interval` / every node |
//! | `servercore.node.leave.<node>` | JSON `{node}` | a node stopping cleanly / every node |
//! | `servercore.session.kick.<node>` | request: the account name; reply: `kicked` or `absent` | a node where the account logs in / the node holding it |
//!
//! Ordering: a node publishes its chats on one connection in the order its
//! room relayed them, NATS keeps a publisher's order for each subscriber,
//! and the receiving node posts them to its room in arrival order, so every
//! player sees each sender's chats in the order they were sent, exactly
//! once (a node ignores the chats it published itself: its players already
//! got them from the local broadcast).
//!
//! One account, one session: before a login of a named account reaches the
//! database, the node asks the link to claim it; if the presence table says
//! a live node holds it, the link sends that node a kick request and waits
//! (up to `kick_timeout`) for the reply, which the holder sends once its
//! session is disconnected and the player's last save is committed. A
//! holder that does not answer (dead, or cut off) does not block the login.
//!
//! Liveness: a node missing heartbeats for `node_timeout` is dropped from
//! the presence table, so its accounts can log in elsewhere (a request to a
//! dead node fails at once with "no responders" anyway).
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
}

impl ClusterConfig {
    /// Node `node` on `nats_url`: a heartbeat every second, dead after 3 s
    /// of silence, 2 s for a handover.
    pub fn new(nats_url: impl Into<String>, node: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            nats_url: SecretUrl::new(nats_url),
            node: node.into(),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            kick_timeout: Duration::from_secs(2),
        }
    }

    /// Checks the node name (it is part of subjects) and the timings.
    pub fn validate(&self) -> Result<(), String> {
        let valid = !self.node.is_empty()
            && self.node.len() <= 64
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
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
        Ok(())
    }
}

/// What the link asks of the game; called on the link's thread, so each
/// implementation only pushes a job and returns.
pub trait ClusterEvents: Send + Sync + 'static {
    /// A world chat from another node: `packet` is the `S_CHAT` packet,
    /// ready to send to every local player.
    fn remote_chat(&self, packet: Bytes);

    /// Another node logs `account` in: disconnect its local session, if
    /// any, and call `done(kicked)` once its last save is committed.
    fn kick(&self, account: String, done: Box<dyn FnOnce(bool) + Send>);
}

/// The link's counters.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    chats_out: AtomicU64,
    chats_in: AtomicU64,
    chats_dropped: AtomicU64,
    pending_chats: AtomicU64,
    kicks_sent: AtomicU64,
    kicks_answered: AtomicU64,
    nodes_lost: AtomicU64,
    outages: AtomicU64,
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
    /// Chats from other nodes relayed to local players.
    pub chats_in: u64,
    /// Chats not published (NATS down or too slow).
    pub chats_dropped: u64,
    /// Kick requests sent to other nodes (a login of an account they held).
    pub kicks_sent: u64,
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
            "node={} connected={} chats_out={} chats_in={} chats_dropped={} kicks_sent={} \
             kicks_answered={} nodes_lost={} nats_outages={} peers={}",
            self.node,
            self.connected,
            self.chats_out,
            self.chats_in,
            self.chats_dropped,
            self.kicks_sent,
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
    pub(crate) connected: AtomicBool,
    pub(crate) presence: Mutex<Presence>,
}

impl Shared {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Called on the link's thread once a claim is settled.
pub type ClaimReply = Box<dyn FnOnce() + Send>;

pub(crate) enum Command {
    Chat(Bytes),
    Online(String),
    Offline(String),
    Claim { account: String, reply: ClaimReply },
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

    /// Publishes a world chat (the `S_CHAT` packet the local players got)
    /// to the other nodes; dropped and counted while NATS is down or
    /// behind.
    pub fn publish_chat(&self, packet: Bytes) {
        let counters = &self.shared.counters;
        let connected = self.shared.connected.load(Ordering::Relaxed);
        if !connected || counters.pending_chats.load(Ordering::Relaxed) >= MAX_PENDING_CHATS {
            Shared::bump(&counters.chats_dropped);
            return;
        }
        counters.pending_chats.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Command::Chat(packet)).is_err() {
            counters.pending_chats.fetch_sub(1, Ordering::Relaxed);
            Shared::bump(&counters.chats_dropped);
        }
    }

    /// `account` is now online on this node.
    pub fn online(&self, account: String) {
        let _ = self.tx.send(Command::Online(account));
    }

    /// `account` is no longer online on this node.
    pub fn offline(&self, account: String) {
        let _ = self.tx.send(Command::Offline(account));
    }

    /// Makes sure no other node holds `account` (kicking its session there
    /// and waiting for its save), then calls `reply` on the link's thread.
    /// If the link has stopped, `reply` runs at once on the caller's thread.
    pub fn claim(&self, account: String, reply: ClaimReply) {
        if let Err(error) = self.tx.send(Command::Claim { account, reply }) {
            if let Command::Claim { reply, .. } = error.0 {
                reply();
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
            kicks_sent: get(&c.kicks_sent),
            kicks_answered: get(&c.kicks_answered),
            nodes_lost: get(&c.nodes_lost),
            outages: get(&c.outages),
            nodes: shared.presence.lock().summary(),
        }
    }
}

/// The link's thread: owns the NATS client until
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
    /// Starts the link's thread and connects. A NATS server that is down
    /// is not an error (the node serves its own players and joins once
    /// NATS answers); a malformed URL or node name is.
    pub fn start(
        config: ClusterConfig,
        events: Arc<dyn ClusterEvents>,
    ) -> anyhow::Result<ClusterLink> {
        config.validate().map_err(anyhow::Error::msg)?;
        let shared = Arc::new(Shared {
            config,
            counters: ClusterCounters::default(),
            connected: AtomicBool::new(false),
            presence: Mutex::new(Presence::default()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cluster-link".into())
            .spawn(move || link::run(thread_shared, events, rx, started_tx))?;
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
            handle: ClusterHandle { tx, shared },
            thread: Some(thread),
        })
    }

    /// A handle for the game.
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Tells the other nodes this one leaves (so its accounts are free at
    /// once), closes the connection and waits for the thread.
    pub fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.tx.send(Command::Stop);
            if thread.join().is_err() {
                tracing::error!("the cluster link thread panicked");
            }
        }
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
