//! servercore-game: the sample game server (the course's `GameServer`) as a
//! library; the `servercore server` command is a thin shell over [`start`].
//!
//! It speaks the reference protocol (`proto/protocol.proto`):
//! - `C_LOGIN { account }` → `S_LOGIN { success, players }`: the account is
//!   found or created in the database (an empty name is a new guest account
//!   every time); a new account gets three players (knight, mage, archer).
//!   A second login on one session, or a name over 64 bytes, is answered
//!   `success = false`.
//! - `C_ENTER_GAME { player_index }` → `S_ENTER_GAME { success, player_id,
//!   player }`, and the player joins the room (chat) and the world (at its
//!   saved position, or a random one; `player` says where). Entering before
//!   logging in, an index out of range, entering twice, or entering with a
//!   player already in the game from another session is answered
//!   `success = false`; the session stays.
//! - `C_MOVE`, `C_LEAVE_GAME` and the world's `S_SPAWN`, `S_DESPAWN`,
//!   `S_MOVE`, `S_LEAVE_GAME`: see [`world`] for the exact rules. After
//!   `S_LEAVE_GAME` the session may enter again.
//! - `C_CHAT { msg, client_time_us }` → `S_CHAT { player_id, msg,
//!   client_time_us }` to everyone in the game, the sender included, with
//!   the world's next tick (one chat buffer per tick shared by everyone). `S_CHAT` has no success field, so a refused chat (sent
//!   before entering, or longer than `max_chat_len` bytes) is dropped,
//!   logged at debug level and counted in [`GameStats`]; the session stays.
//! - Moves and chats past the per-player rates ([`WorldConfig`]) are
//!   dropped and counted.
//! - A disconnect leaves the room and the world; the position is saved.
//!
//! Against abusive clients (all configurable in [`GameConfig`], `0`/`None`
//! turning a limit off):
//! - a connection that sends no `C_LOGIN` within `login_deadline` is disconnected
//!   (`DisconnectReason::App("login_timeout")`, [`handler::LOGIN_TIMEOUT`]), and
//!   one whose started packet stays incomplete for `packet_deadline` too
//!   (`PacketTimeout`, the engine's packet layer);
//! - one address holds at most `max_conns_per_ip` connections and creates
//!   at most `max_new_accounts_per_min` accounts a minute (module `limits`);
//!   a login past the latter is refused (`success = false`) unless its
//!   account exists;
//! - what a session has queued for its player (jobs not yet run, packets
//!   kept while a login or enter is pending) is bounded in bytes
//!   ([`player::MAX_PENDING_BYTES`]); past it the session is disconnected
//!   (`RateLimited`);
//! - with `auth` set, `C_LOGIN.account` must carry a signed token (module
//!   `auth`); without it the server is open: anyone may log in as any
//!   account.
//!
//! Each refusal and disconnect is counted in [`GameStats`] and logged at `warn`,
//! at most one line a second per kind with the count of the others.
//!
//! - One account, one session: a login of a named account that is already
//!   claimed or in game on this node disconnects the older session, waits
//!   for its save, then reads the account; in a cluster the database's
//!   lease decides across nodes (modules `lease` and `storage`): a login
//!   whose account another node holds asks it to kick its session and let
//!   go (or waits for the lease to expire, if it does not answer), and is
//!   refused if the account stays held.
//!
//! This crate owns the configuration ([`GameConfig`]) and the running server
//! ([`GameServer`], [`start`]). Its modules:
//! - `auth`: signed login tokens (minting and checking);
//! - `storage`: the [`storage::Storage`] trait, its SQLite (default) and
//!   PostgreSQL implementations with their migrations, and the pool of
//!   database threads;
//! - `cluster`: the NATS link between nodes (world chat, presence,
//!   duplicate logins, node liveness);
//! - `lease`: the node's side of the account leases (freshness, renewal);
//! - `sessions`: the node's account → session registry and the handover;
//! - `handler`: [`handler::GameSession`], the packet handler on the I/O
//!   workers;
//! - `heap_trim`: the thread that gives the allocator's free memory back
//!   after peaks ([`GameConfig::heap_trim_interval`]);
//! - `limits`: the per-address limits;
//! - `player`: [`player::Player`], a connection's game state, an actor;
//! - `redact`: the one URL redactor every log line, error, `Debug` and
//!   printed configuration goes through (no credentials in output);
//! - `room`: [`room::Room`], who is in the game, an actor;
//! - `world`: [`world::World`], the map, its regions (actors), the tick
//!   and the movement and visibility rules;
//! - `stats`: the counters;
//! - `web`: the browser client's files, served on the WebSocket listener;
//! - `zones`: one world across nodes, the zone map (the border cells are
//!   `world::border`).
//!
//! Threads: the engine's I/O workers decode packets and push jobs; the
//! actors (players, the room, the regions) run on whichever worker picks
//! them up; the world's tick thread only starts each tick on schedule (its
//! phases are region jobs on the workers); the database runs on its own threads (`--db-pool`) and answers
//! by pushing a job onto the asking player's actor; the cluster link runs
//! NATS on a thread of its own and answers the same way. No database or
//! NATS call ever runs on an I/O worker.

#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod handler;
pub mod heap_trim;
pub mod latency;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod player;
pub mod redact;
pub mod room;
pub mod sessions;
pub mod stats;
pub mod storage;
pub mod transfer;
pub mod web;
pub mod world;
pub mod zones;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use servercore::job::Actor;
use servercore::packet::{PacketConfig, PacketSession, RateLimits, HEADER_SIZE, MAX_PACKET_SIZE};
use servercore::transport::rustls;
use servercore::{
    Backend, QuicConfig, ServerService, ServerTransport, ServiceStats, WebSocketConfig,
};
use servercore_protocol::{PacketId, SERVER_RECEIVES_IDS};

use auth::TokenKey;
use cluster::{ClusterConfig, ClusterEvents, ClusterHandle, ClusterLink, ClusterStats, RemoteChat};
use handler::GameSession;
use heap_trim::HeapTrimmer;
use lease::{KeeperParts, LeaseKeeper, RenewNow};
use limits::AddressLimits;
use player::Player;
use room::Room;
use servercore::job::WeakActor;
use servercore::SessionHandle;
use servercore_protocol::{make_packet, SChat};
use sessions::LocalSessions;
use stats::bump;
pub use stats::{GameCounters, GameStats};
use storage::{DbTarget, OwnedLease, StorageHandle, StorageKind, StorageOptions, StoragePool};
use world::limit::LogLimiter;
use world::World;
pub use world::WorldConfig;

/// The default database file, relative to the working directory.
pub const DEFAULT_DB_PATH: &str = "servercore-game.db";

/// The largest `max_chat_len` accepted: an `S_CHAT` carrying it must still
/// fit one packet.
pub const MAX_CHAT_LEN_LIMIT: usize = 60_000;

/// Everything [`start`] needs. Its `Debug` shows the database redacted
/// (module `redact`).
#[derive(Clone)]
pub struct GameConfig {
    /// Address to listen on (port 0 picks a free one; see
    /// [`GameServer::local_addr`]).
    pub addr: SocketAddr,
    /// The database: an SQLite file ([`storage::IN_MEMORY`] for one that
    /// keeps nothing), or a PostgreSQL URL (`postgres://user@host/db`,
    /// see [`DbTarget::from_path`]).
    pub db_path: PathBuf,
    /// Database threads, each with its own connection.
    pub db_pool: usize,
    /// Join a cluster of nodes through NATS (None: a single node).
    pub cluster: Option<ClusterConfig>,
    /// The I/O backend.
    pub backend: Backend,
    /// Worker threads (`None`: available cores).
    pub workers: Option<usize>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Disconnect sessions silent for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Longest chat message relayed, in bytes (at most
    /// [`MAX_CHAT_LEN_LIMIT`]).
    pub max_chat_len: usize,
    /// Largest packet accepted, header included; raised to fit a chat of
    /// `max_chat_len` with room to spare, so an over-long chat is refused
    /// rather than treated as malformed. A packet above it disconnects.
    pub max_packet_size: usize,
    /// Per-session flood limits (default: the engine's, far above a
    /// player's needs; a load test may want [`RateLimits::unlimited`]).
    pub rate_limits: RateLimits,
    /// Send coalescing: a session's packets wait up to this long after its
    /// last write (`Duration::ZERO`: off, the default). The world's tick
    /// already sends each player one write per tick; this is for other
    /// traffic.
    pub send_coalescing: Duration,
    /// Wake batching of the I/O workers (io_uring on Linux 6.12+; ignored
    /// elsewhere): a waiting worker sleeps up to this long more once its
    /// first completion is there, so players' moves wake it once per batch
    /// instead of once per packet (`Duration::ZERO`: off). The world
    /// applies moves at its tick anyway; default [`DEFAULT_WAKE_BATCHING`].
    pub wake_batching: Duration,

    /// Disconnect a connection that sends no `C_LOGIN` for this long (`None`:
    /// never).
    pub login_deadline: Option<Duration>,
    /// Disconnect a connection whose started packet is still incomplete after this
    /// long (`None`: never).
    pub packet_deadline: Option<Duration>,
    /// Most connections at once from one IP address, an IPv6 /64 counting
    /// as one (0: unlimited, and then the QUIC listener does not limit new
    /// connections per address either).
    pub max_conns_per_ip: usize,
    /// Most accounts one IP address (or IPv6 /64) may create per minute (0:
    /// unlimited).
    pub max_new_accounts_per_min: u32,
    /// The key of signed login tokens; `None` runs the server open (any
    /// `C_LOGIN.account` is taken as the account name).
    pub auth: Option<TokenKey>,
    /// TLS on every listener (`addr` then speaks TLS only, and the
    /// WebSocket listener serves WSS). `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A WebSocket listener beside the TCP one, for browser clients: the
    /// same world, binary messages carrying the same packets (see
    /// `servercore::transport`). `None`: none.
    pub ws_addr: Option<SocketAddr>,
    /// A QUIC listener (UDP) beside the TCP one, with the certificate of
    /// `tls` (required): the same world, moves as datagrams (see
    /// `servercore::transport::quic`). `None`: none.
    pub quic_addr: Option<SocketAddr>,
    /// The SHA-256 (hex) of the certificate of `tls`: with `quic_addr` and
    /// `ws_addr`, the page learns it (and the QUIC port) from
    /// `/config.json` to open WebTransport with `serverCertificateHashes`.
    pub cert_sha256: Option<String>,
    /// The QUIC listener's own certificate (`None`: that of `tls`): a
    /// browser takes a certificate by hash only if it is valid for less
    /// than 14 days, which the TCP and WebSocket ports need not be.
    pub quic_tls: Option<Arc<rustls::ServerConfig>>,
    /// The world: map and cell size, speed, regions, per-player move and
    /// chat rates, queue bounds.
    pub world: WorldConfig,
    /// Give the C allocator's free memory back to the kernel this often,
    /// on a thread of its own (`None`: never). Default
    /// [`DEFAULT_HEAP_TRIM_INTERVAL`].
    pub heap_trim_interval: Option<Duration>,
}

/// How often the game server trims its heap by default: 5 s. Without it
/// the RSS of the 10-minute soak ratcheted up to its worst peak (+21 %
/// after the warm-up) while the bytes in use stayed flat; see
/// docs/BENCHMARKS.md, "Soak".
pub const DEFAULT_HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// The game server's send coalescing by default: off. Moves and world chat
/// go out with the world's tick, one write per player per tick
/// ([`WorldConfig::tick`]); what is left (login and enter answers) is one
/// packet now and then.
pub const DEFAULT_SEND_COALESCING: Duration = Duration::ZERO;

/// The game server's default wake batching: 1 ms, a fiftieth of the
/// default tick.
pub const DEFAULT_WAKE_BATCHING: Duration = Duration::from_millis(1);

impl Default for GameConfig {
    /// `127.0.0.1:7777`, [`DEFAULT_DB_PATH`], the automatic backend, 10,000
    /// sessions, a 60 s idle timeout, chats up to 256 bytes, packets up to
    /// 8 KiB, the default [`WorldConfig`], send coalescing
    /// [`DEFAULT_SEND_COALESCING`], 10 s login and packet deadlines, 64
    /// connections and 20 new accounts a minute per address, no token check,
    /// a heap trim every [`DEFAULT_HEAP_TRIM_INTERVAL`].
    fn default() -> Self {
        GameConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            db_pool: 1,
            cluster: None,
            backend: Backend::Auto,
            workers: None,
            max_sessions: 10_000,
            idle_timeout: Some(Duration::from_secs(60)),
            max_chat_len: 256,
            max_packet_size: 8 * 1024,
            rate_limits: RateLimits::default(),
            send_coalescing: DEFAULT_SEND_COALESCING,
            wake_batching: DEFAULT_WAKE_BATCHING,
            login_deadline: Some(Duration::from_secs(10)),
            packet_deadline: Some(Duration::from_secs(10)),
            max_conns_per_ip: 64,
            max_new_accounts_per_min: 20,
            auth: None,
            tls: None,
            ws_addr: None,
            quic_addr: None,
            cert_sha256: None,
            quic_tls: None,
            world: WorldConfig::default(),
            heap_trim_interval: Some(DEFAULT_HEAP_TRIM_INTERVAL),
        }
    }
}

impl std::fmt::Debug for GameConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field by name, so a new one has to be placed here (and
        // whoever adds a field that can hold a secret sees this).
        let GameConfig {
            addr,
            db_path,
            db_pool,
            cluster,
            backend,
            workers,
            max_sessions,
            idle_timeout,
            max_chat_len,
            max_packet_size,
            rate_limits,
            send_coalescing,
            wake_batching,
            login_deadline,
            packet_deadline,
            max_conns_per_ip,
            max_new_accounts_per_min,
            auth,
            tls,
            ws_addr,
            quic_addr,
            cert_sha256,
            quic_tls,
            world,
            heap_trim_interval,
        } = self;
        f.debug_struct("GameConfig")
            .field("addr", addr)
            .field("db_path", &DbTarget::from_path(db_path))
            .field("db_pool", db_pool)
            .field("cluster", cluster)
            .field("backend", backend)
            .field("workers", workers)
            .field("max_sessions", max_sessions)
            .field("idle_timeout", idle_timeout)
            .field("max_chat_len", max_chat_len)
            .field("max_packet_size", max_packet_size)
            .field("rate_limits", rate_limits)
            .field("send_coalescing", send_coalescing)
            .field("wake_batching", wake_batching)
            .field("login_deadline", login_deadline)
            .field("packet_deadline", packet_deadline)
            .field("max_conns_per_ip", max_conns_per_ip)
            .field("max_new_accounts_per_min", max_new_accounts_per_min)
            .field("auth", auth)
            .field("tls", tls)
            .field("ws_addr", ws_addr)
            .field("quic_addr", quic_addr)
            .field("cert_sha256", cert_sha256)
            .field("quic_tls", quic_tls)
            .field("world", world)
            .field("heap_trim_interval", heap_trim_interval)
            .finish()
    }
}

impl GameConfig {
    /// The defaults, but on `addr` with an in-memory database: for running
    /// the game server inside another program (demo, benchmarks).
    pub fn in_memory(addr: SocketAddr) -> GameConfig {
        GameConfig {
            addr,
            db_path: PathBuf::from(storage::IN_MEMORY),
            ..GameConfig::default()
        }
    }

    /// The packet size limit actually applied (see `max_packet_size`).
    fn effective_max_packet_size(&self) -> usize {
        self.max_packet_size
            .max(self.max_chat_len.saturating_mul(2).saturating_add(64))
            .clamp(HEADER_SIZE, MAX_PACKET_SIZE)
    }
}

/// Logins handed to the database whose answer is not queued yet, and
/// whether the server has begun stopping (no login is taken then): lets a
/// stop answer every login it took before the sessions close.
#[derive(Debug, Default)]
pub struct LoginGate {
    pending: AtomicUsize,
    closed: AtomicBool,
}

impl LoginGate {
    /// Takes one login, unless the server is stopping (the login is then
    /// left unread, as if it had arrived after the stop). The login is
    /// pending until the returned guard is dropped: after its answer has
    /// been queued, or when its player is gone.
    pub fn admit(self: &Arc<Self>) -> Option<PendingLogin> {
        // Count first, then look: `close_and_drain` closes first, then
        // counts, so a login either sees the gate closed or is waited for.
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(PendingLogin(Arc::clone(self)))
    }

    /// Takes no more logins and waits up to `limit` for the pending ones;
    /// false if some were still pending then.
    pub fn close_and_drain(&self, limit: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// One login taken by [`LoginGate::admit`]; dropping it ends it.
#[derive(Debug)]
pub struct PendingLogin(Arc<LoginGate>);

impl Drop for PendingLogin {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a stop waits for the logins it took to be answered.
const LOGIN_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What every session of one game server shares.
pub struct GameContext {
    /// The room (who is in the game), an actor.
    pub room: Actor<Room>,
    /// Requests to the database threads.
    pub db: StorageHandle,
    /// The counters.
    pub counters: Arc<GameCounters>,
    /// Longest chat message relayed, in bytes.
    pub max_chat_len: usize,
    /// The world and its regions.
    pub world: Arc<World>,
    /// Each player's move rate (`None`: unlimited).
    pub move_rate: Option<servercore::packet::Rate>,
    /// Each player's chat rate (`None`: unlimited).
    pub chat_rate: Option<servercore::packet::Rate>,
    /// Rate-limits the "shedding chats" warning.
    pub(crate) chat_shed_log: LogLimiter,
    /// Logins in flight to the database, drained by a stop.
    pub logins: Arc<LoginGate>,
    /// Disconnect a connection without `C_LOGIN` after this long.
    pub login_deadline: Option<Duration>,
    /// The per-address limits.
    pub limits: AddressLimits,
    /// The token key, when logins must carry a signed token.
    pub auth: Option<TokenKey>,
    /// The logged-in named accounts of this node.
    pub sessions: Arc<LocalSessions>,
    /// The cluster link, if this node is in a cluster.
    pub cluster: Option<ClusterHandle>,
    /// Asks for a renewal of the node's leases now (in a cluster).
    renew_leases: Option<RenewNow>,
    /// Transfer tokens, on a node of a shared world (`--world-nodes`).
    pub transfers: Option<Arc<transfer::Transfers>>,
}

/// Where a chat comes from, for [`GameContext::admit_chat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatSource {
    /// A player of this node.
    Local,
    /// A player of another node (checked by the cluster link).
    Remote,
}

/// Logins wait for another node to let an account go at most this much
/// longer than the kick timeout and the lease's time together.
const LEASE_WAIT_SLACK: Duration = Duration::from_secs(1);

impl GameContext {
    /// Claims `account` for `handle`'s player on this node; a session that
    /// claimed or held it before is disconnected, and `done` runs once its
    /// player has left and every storage request about the account (its
    /// save among them) is committed; at once if there was none.
    pub(crate) fn take_over(
        &self,
        account: &str,
        handle: SessionHandle,
        player: WeakActor<Player>,
        done: Box<dyn FnOnce() + Send>,
    ) {
        match self.sessions.claim(account, handle, player) {
            Some((older, older_player)) => sessions::kick(
                account.to_owned(),
                older,
                older_player,
                sessions::LOGGED_IN_AGAIN,
                self.db.clone(),
                &self.counters,
                done,
            ),
            None => done(),
        }
    }

    /// The lease a login of a named account takes: in a cluster, this
    /// node's for the cluster's lease time; none outside one.
    pub(crate) fn lease_terms(&self) -> Option<OwnedLease> {
        let cluster = self.cluster.as_ref()?;
        Some(OwnedLease {
            node: cluster.node().to_owned(),
            ttl: cluster.config().lease_ttl,
        })
    }

    /// How long a lease lasts without a renewal.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.cluster
            .as_ref()
            .map_or(Duration::MAX, |cluster| cluster.config().lease_ttl)
    }

    /// Lets go of this node's lease of `account` up to `epoch`, after
    /// every request about the account sent so far.
    pub(crate) fn release_lease(&self, account: &str, epoch: u64) {
        if let Some(cluster) = &self.cluster {
            self.db
                .release_lease(account, cluster.node().to_owned(), epoch, None);
        }
    }

    /// Renews the node's leases as soon as possible.
    pub(crate) fn renew_leases_now(&self) {
        if let Some(renew) = &self.renew_leases {
            renew.renew();
        }
    }

    /// True while a login that began at `began` may still wait for another
    /// node to let its account go.
    pub(crate) fn may_wait_for_lease(&self, began: Instant) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let config = cluster.config();
        began.elapsed() < config.kick_timeout + config.lease_ttl + LEASE_WAIT_SLACK
    }

    /// `node` holds `account`'s lease under `epoch`, for `expires_in` more
    /// unless it renews: asks it to let go, then calls `retry(delay)` —
    /// with no delay once it did, else with the time the lease has left
    /// (a node that does not answer is dead, paused or cut off: its lease
    /// runs out).
    pub(crate) fn resolve_lease(
        &self,
        account: String,
        node: String,
        epoch: u64,
        expires_in: Duration,
        retry: Box<dyn FnOnce(Duration) + Send>,
    ) {
        let ttl = self.lease_ttl();
        let wait = (expires_in + Duration::from_millis(20)).min(ttl);
        match &self.cluster {
            Some(cluster) => cluster.kick_remote(
                node,
                account,
                epoch,
                Box::new(move |released| {
                    retry(if released { Duration::ZERO } else { wait });
                }),
            ),
            None => retry(wait),
        }
    }

    /// Takes one `S_CHAT` into the world's next tick, or sheds it: the one
    /// decision for local and remote chat alike, under the tick's chat
    /// bound (shed chats are counted by source and logged at most once a
    /// second).
    pub fn admit_chat(&self, source: ChatSource, packet: &[u8]) -> bool {
        if self.world.push_chat(packet) {
            return true;
        }
        let counter = match source {
            ChatSource::Local => &self.counters.chats_dropped_queue_full,
            ChatSource::Remote => &self.counters.remote_chats_shed,
        };
        let dropped = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if self.chat_shed_log.allow() {
            tracing::warn!(
                ?source,
                dropped,
                "a tick's world chat is full: shedding chats"
            );
        }
        false
    }
}

/// What the cluster link calls: chats from other nodes go to the world's
/// next tick (under the same bound as local chat), kicks to the account
/// registry.
/// Holds the game weakly: the link stops after it.
struct ClusterBridge {
    ctx: std::sync::Weak<GameContext>,
}

impl ClusterEvents for ClusterBridge {
    fn remote_chat(&self, chat: RemoteChat) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        // Built here from the checked fields: nothing from the network is
        // relayed verbatim. The tick's regions send it, never the link's
        // thread.
        let packet = make_packet(&SChat {
            player_id: chat.player_id,
            msg: chat.text,
            client_time_us: chat.client_time_us,
        });
        if ctx.admit_chat(ChatSource::Remote, &packet) {
            bump(&ctx.counters.remote_chats);
        }
    }

    fn kick(&self, account: String, up_to_epoch: u64, done: Box<dyn FnOnce(bool) + Send>) {
        let Some(ctx) = self.ctx.upgrade() else {
            return done(false);
        };
        let Some(node) = ctx
            .cluster
            .as_ref()
            .map(|cluster| cluster.node().to_owned())
        else {
            return done(false);
        };
        let db = ctx.db.clone();
        let name = account.clone();
        sessions::kick_local(
            &ctx.sessions,
            account,
            sessions::LOGGED_IN_ELSEWHERE,
            ctx.db.clone(),
            &ctx.counters,
            Box::new(move |_kicked| {
                // After the session's save: whatever lease of the account
                // this node still has, up to the asker's epoch, goes (one
                // its session left behind included).
                db.release_lease(
                    &name,
                    node,
                    up_to_epoch,
                    Some(Box::new(move |result| done(result.is_ok()))),
                );
            }),
        );
    }

    fn border(&self, payload: bytes::Bytes) {
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.world.border_in(payload);
        }
    }

    fn remote_online(&self, node: &str, account: &str, epoch: u64) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        if let Some(transfers) = &ctx.transfers {
            transfers.arrived_elsewhere(account);
        }
        if let Some(older) = ctx.sessions.older_than(account, epoch) {
            sessions::note_lease_lost(&ctx.counters);
            tracing::warn!(
                %account,
                %node,
                epoch,
                session = %older.handle.id(),
                "the account logged in on another node; disconnecting its older session here"
            );
            older.disconnect(lease::LEASE_LOST);
        }
    }
}

/// A running game server: the engine's service, the database threads, the
/// cluster link and the room. Dropping it stops it like
/// [`GameServer::stop_and_join`].
pub struct GameServer {
    service: ServerService,
    db: StoragePool,
    cluster: Option<ClusterLink>,
    leases: Option<LeaseKeeper>,
    ctx: Arc<GameContext>,
    trimmer: Option<HeapTrimmer>,
    stopped: bool,
}

/// Longest a node waits at start for the leases of its earlier run to be
/// let go.
const LEASE_RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// Lets go of every lease an earlier run of `node` left (its sessions are
/// gone with it), waiting for the database up to [`LEASE_RELEASE_LIMIT`].
fn release_earlier_leases(db: &StorageHandle, node: &str) -> anyhow::Result<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    db.release_node_leases(
        node.to_owned(),
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    match rx.recv_timeout(LEASE_RELEASE_LIMIT) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(anyhow::Error::new(error)),
        Err(_) => anyhow::bail!("the database did not answer within {LEASE_RELEASE_LIMIT:?}"),
    }
}

/// Starts a game server: opens and migrates the database, starts its
/// threads, joins the cluster if configured, then listens. Errors name what
/// failed (a database that cannot be opened, a malformed NATS URL or node
/// name, an address in use, an unavailable backend). A NATS server that is
/// down is not an error: the node serves its players and joins once it
/// answers.
pub fn start(config: GameConfig) -> anyhow::Result<GameServer> {
    anyhow::ensure!(
        config.max_chat_len <= MAX_CHAT_LEN_LIMIT,
        "max chat length {} is above the limit of {MAX_CHAT_LEN_LIMIT} bytes",
        config.max_chat_len
    );
    let target = DbTarget::from_path(&config.db_path);
    let options = StorageOptions {
        pool_size: config.db_pool.max(1),
        ..StorageOptions::default()
    };
    let db = StoragePool::start(&target, &options)
        .with_context(|| format!("opening the database {}", target.display_name()))?;
    let counters = Arc::new(GameCounters::default());
    let world = Arc::new(World::new(&config.world, Arc::clone(&counters)).context("the world")?);
    let room = Actor::new(Room::new(Arc::clone(&counters)));
    let sessions = Arc::new(LocalSessions::default());
    let (prepared, leases) = match &config.cluster {
        Some(cluster_config) => {
            let mut cluster_config = cluster_config.clone();
            cluster_config.max_chat_len = config.max_chat_len;
            let node = cluster_config.node.clone();
            let prepared = ClusterLink::prepare(cluster_config.clone())
                .with_context(|| format!("joining the cluster as node {node}"))?;
            release_earlier_leases(&db.handle(), &node)
                .with_context(|| format!("letting go of the leases of node {node}'s last run"))?;
            let keeper = LeaseKeeper::start(KeeperParts {
                node,
                ttl: cluster_config.lease_ttl,
                db: db.handle(),
                sessions: Arc::clone(&sessions),
                counters: Arc::clone(&counters),
            })
            .context("starting the lease thread")?;
            (Some(prepared), Some(keeper))
        }
        None => (None, None),
    };
    let saves = db.handle();
    world.set_saver(Arc::new(move |batch: Vec<world::PositionSave>| {
        saves.save_positions(
            batch
                .into_iter()
                .map(|save| {
                    (
                        save.account.to_string(),
                        save.player_id,
                        storage::Position {
                            x: save.pos.x,
                            y: save.pos.y,
                            z: save.pos.z,
                            yaw: save.pos.yaw,
                        },
                    )
                })
                .collect(),
        );
    }));
    let ctx = Arc::new(GameContext {
        room,
        db: db.handle(),
        counters,
        max_chat_len: config.max_chat_len,
        world,
        move_rate: config.world.move_rate,
        chat_rate: config.world.chat_rate,
        chat_shed_log: LogLimiter::new(Duration::from_secs(1)),
        logins: Arc::default(),
        login_deadline: config.login_deadline,
        limits: AddressLimits::new(config.max_conns_per_ip, config.max_new_accounts_per_min),
        auth: config.auth.clone(),
        sessions,
        cluster: prepared.as_ref().map(cluster::PreparedLink::handle),
        renew_leases: leases.as_ref().map(LeaseKeeper::renew_now),
        transfers: config.cluster.as_ref().and_then(|cluster| {
            let key = cluster.cluster_secret.clone()?;
            (!cluster.world_nodes.is_empty())
                .then(|| Arc::new(transfer::Transfers::new(key, cluster.node.clone())))
        }),
    });
    if let (Some(handle), Some(cluster_config)) = (&ctx.cluster, &config.cluster) {
        if !cluster_config.world_nodes.is_empty() {
            let live = handle.clone();
            let send = handle.clone();
            ctx.world
                .set_transferer(transfer::transferer(Arc::downgrade(&ctx)));
            ctx.world.share(world::border::BorderLink {
                me: handle.node().to_owned(),
                world_nodes: cluster_config.world_nodes.clone(),
                live: Arc::new(move || live.live_nodes()),
                send: Arc::new(move |node, payload| send.publish_border(node, payload)),
            });
        }
    }
    let cluster = match prepared {
        Some(prepared) => {
            let bridge = ClusterBridge {
                ctx: Arc::downgrade(&ctx),
            };
            let node = ctx.cluster.as_ref().map(|c| c.node().to_owned());
            Some(prepared.start(Arc::new(bridge)).with_context(|| {
                format!("joining the cluster as node {}", node.unwrap_or_default())
            })?)
        }
        None => None,
    };
    let packets = PacketConfig::default()
        .with_packet_deadline(config.packet_deadline)
        .with_max_packet_size(config.effective_max_packet_size())
        .with_known_ids(SERVER_RECEIVES_IDS.iter().copied())
        .with_rate_limits(config.rate_limits.clone());
    let session_ctx = Arc::clone(&ctx);
    let mut builder = ServerService::builder(config.addr)
        .backend(config.backend)
        .max_sessions(config.max_sessions)
        .send_coalescing(config.send_coalescing)
        .wake_batching(config.wake_batching)
        .session(move || {
            PacketSession::new(GameSession::new(Arc::clone(&session_ctx)), packets.clone())
        });
    if let Some(workers) = config.workers {
        builder = builder.workers(workers);
    }
    if let Some(timeout) = config.idle_timeout {
        builder = builder.idle_timeout(timeout);
    }
    if let Some(tls) = &config.tls {
        builder = builder.tls(Arc::clone(tls));
    }
    let web_transport = Arc::new(std::sync::OnceLock::new());
    if let Some(ws_addr) = config.ws_addr {
        let pages = web::pages_with_web_transport(
            web::WebWorld {
                world_size: config.world.size,
                cell: config.world.cell,
            },
            Arc::clone(&ctx.counters),
            Arc::clone(&web_transport),
        );
        let mut websocket = ServerTransport::websocket(WebSocketConfig::default().pages(pages));
        if let Some(tls) = &config.tls {
            websocket = websocket.with_tls(Arc::clone(tls));
        }
        builder = builder.listener(ws_addr, websocket);
    }
    if let Some(quic_addr) = config.quic_addr {
        let tls = config
            .quic_tls
            .as_ref()
            .or(config.tls.as_ref())
            .context("a QUIC listener needs a certificate (--tls-cert and --tls-key, or --quic-cert and --quic-key)")?;
        // Clients send only C_MOVEs by datagram, a few dozen bytes each: a
        // small window, and a datagram larger than it closes the connection.
        let mut quic = QuicConfig::new(Arc::clone(tls))
            .datagram_ids([PacketId::CMove as u16])
            .datagram_receive_buffer(4096)
            .web_transport("/wt");
        if config.max_conns_per_ip == 0 {
            // No per-address limit means a load test from one machine:
            // its hundreds of QUIC connections come from one address too,
            // so the per-address handshake rate goes with the limit (the
            // bound on handshakes at once and their deadline stay).
            quic = quic.handshakes_per_second(0, 1);
        }
        builder = builder.quic(quic_addr, quic);
    }
    let service = builder
        .start()
        .with_context(|| format!("starting the game server on {}", config.addr))?;
    if let (Some(addr), Some(hash)) = (service.quic_addr(), &config.cert_sha256) {
        let _ = web_transport.set(web::WebTransportInfo {
            port: addr.port(),
            cert_sha256: hash.clone(),
        });
    }
    if let (Some(handle), Some(cluster_config)) = (&ctx.cluster, &config.cluster) {
        // What a player handed to this node is told to connect to.
        let addrs = service.local_addrs();
        let addr = cluster_config
            .public_addr
            .clone()
            .unwrap_or_else(|| service.local_addr().to_string());
        let scheme = if config.tls.is_some() { "wss" } else { "ws" };
        let ws_url = cluster_config.public_ws_url.clone().or_else(|| {
            config
                .ws_addr
                .and(addrs.get(1))
                .map(|ws| format!("{scheme}://{ws}/ws"))
        });
        handle.advertise(addr, ws_url.unwrap_or_default());
    }
    let trimmer = config
        .heap_trim_interval
        .filter(|interval| !interval.is_zero())
        .map(HeapTrimmer::start)
        .transpose()
        .context("starting the heap trimmer thread")?;
    Ok(GameServer {
        service,
        db,
        cluster,
        leases,
        ctx,
        trimmer,
        stopped: false,
    })
}

impl GameServer {
    /// The address the server listens on (the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// The QUIC listener's UDP address, if one was configured.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.service.quic_addr()
    }

    /// The QUIC listener's counters, if one was configured.
    pub fn quic_metrics(&self) -> Option<servercore::QuicMetrics> {
        self.service.quic_metrics()
    }

    /// The WebSocket listener's address, if one was configured.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.service.local_addrs().get(1).copied()
    }

    /// The I/O backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.service.backend()
    }

    /// The database: a file's path, or a PostgreSQL URL without its
    /// password.
    pub fn db_name(&self) -> String {
        self.db.target().display_name()
    }

    /// The database's backend.
    pub fn db_kind(&self) -> StorageKind {
        self.db.kind()
    }

    /// The cluster link's counters and the nodes it sees (None: not in a
    /// cluster).
    pub fn cluster_stats(&self) -> Option<ClusterStats> {
        self.ctx.cluster.as_ref().map(ClusterHandle::stats)
    }

    /// The world's border with other nodes' zones: counters and the zone
    /// map (None: this node's world is its own).
    pub fn border_stats(&self) -> Option<world::border::BorderStats> {
        self.ctx.world.border_stats()
    }

    /// The game's counters now.
    pub fn stats(&self) -> GameStats {
        self.ctx.counters.snapshot()
    }

    /// Every player in the world at the end of the last tick, as
    /// `(player_id, x, y)` sorted by id: a cheap copy of the regions'
    /// published positions (no job, one lock per region), for a live map.
    pub fn world_snapshot(&self) -> Vec<(u64, f32, f32)> {
        self.ctx.world.snapshot()
    }

    /// Runs one world tick now and waits (up to `limit`) for its end: for
    /// a world configured with [`WorldConfig::manual_ticks`].
    pub fn step_world_tick(&self, limit: Duration) -> bool {
        self.ctx.world.step(limit)
    }

    /// How long the world's ticks have taken, start to the end of the last
    /// phase.
    pub fn tick_histogram(&self) -> latency::LatencySnapshot {
        self.ctx.world.tick_histogram()
    }

    /// The work of each world tick: its region jobs' run times summed over
    /// the workers.
    pub fn tick_work_histogram(&self) -> latency::LatencySnapshot {
        self.ctx.world.tick_work_histogram()
    }

    /// The world's map (size, cells, regions).
    pub fn world_grid(&self) -> &world::Grid {
        self.ctx.world.grid()
    }

    /// Requests waiting for the database threads now.
    pub fn db_queue_depth(&self) -> usize {
        self.ctx.db.queued()
    }

    /// Holds the database thread until the returned sender is dropped:
    /// logins asked for meanwhile stay pending (tests of what waits).
    #[cfg(test)]
    pub(crate) fn pause_database(&self) -> crossbeam_channel::Sender<()> {
        self.ctx.db.pause()
    }

    /// Login latency through the database: request to committed answer.
    pub fn db_latency(&self) -> latency::LatencySnapshot {
        self.ctx.db.latency()
    }

    /// Jobs waiting in the room actor now (a queue that only grows means
    /// the room cannot keep up with enters and leaves).
    pub fn room_pending_jobs(&self) -> usize {
        self.ctx.room.pending_jobs()
    }

    /// The engine's counters (sessions now, total, refused).
    pub fn service_stats(&self) -> ServiceStats {
        self.service.stats()
    }

    /// The engine's per-worker counters (bytes, packets, writes, queued
    /// bytes, disconnects by kind, ...): relaxed loads, no lock.
    pub fn engine_metrics(&self) -> servercore::EngineMetrics {
        self.service.metrics()
    }

    /// Stops cleanly: no new sessions, every session disconnected (each
    /// player leaves the room and the world and has its position saved),
    /// then the database thread finishes what is queued and stops. Waits up
    /// to two seconds for the players' last jobs, then returns the final
    /// counters.
    pub fn stop_and_join(mut self) -> GameStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // Logins the database already has are answered while their
        // sessions are still open (the stop then flushes the answers); none
        // is taken meanwhile.
        if !self.ctx.logins.close_and_drain(LOGIN_DRAIN_LIMIT) {
            tracing::warn!("logins still unanswered after {LOGIN_DRAIN_LIMIT:?}; stopping anyway");
        }
        self.service.stop();
        self.service.join();
        // Leaving runs as jobs (player, room, region); they finish on the job
        // layer's threads shortly after the sessions are gone, and queue the
        // positions to save before the database threads stop.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let stats = self.stats();
            if stats.player_states == 0 && stats.players_in_room == 0 && stats.players_in_world == 0
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // The tick stops; a player still in the world now is let go (its
        // leave answered) before the database threads drain.
        self.ctx.world.stop(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.stats().player_states != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The saves' barriers tell the cluster which accounts went offline,
        // so the link stops after the database threads (and the lease
        // thread, which asks them, before).
        if let Some(mut leases) = self.leases.take() {
            leases.stop();
        }
        self.db.stop_and_join();
        if let Some(cluster) = &mut self.cluster {
            cluster.stop_and_join();
        }
        if let Some(mut trimmer) = self.trimmer.take() {
            trimmer.stop();
        }
    }
}

impl Drop for GameServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests;
