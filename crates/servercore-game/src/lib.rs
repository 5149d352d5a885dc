//! servercore-game: the sample game server (the course's `GameServer`) as a
//! library; the `servercore server` command is a thin shell over [`start`].
//!
//! It speaks the reference protocol (`proto/protocol.proto`):
//! - `C_LOGIN { account }` → `S_LOGIN { success, players }`: the account is
//!   found or created in the database (an empty name is a new guest account
//!   every time); a new account gets three players (knight, mage, archer).
//!   A second login on one session, or a name over 64 bytes, is answered
//!   `success = false`.
//! - `C_ENTER_GAME { player_index }` → `S_ENTER_GAME { success, player_id }`,
//!   and the player joins the room. Entering before logging in, an index out
//!   of range, entering twice, or entering with a player already in the room
//!   from another session is answered `success = false`; the session stays.
//! - `C_CHAT { msg, client_time_us }` → `S_CHAT { player_id, msg,
//!   client_time_us }` to everyone in the room, the sender included, as one
//!   shared buffer. `S_CHAT` has no success field, so a refused chat (sent
//!   before entering, or longer than `max_chat_len` bytes) is dropped,
//!   logged at debug level and counted in [`GameStats`]; the session stays.
//! - A disconnect leaves the room.
//!
//! - One account, one session: a login of a named account that is already
//!   in game (on this node, or on another node of the cluster) disconnects
//!   the older session, waits for its save, then succeeds.
//!
//! This crate owns the configuration ([`GameConfig`]) and the running server
//! ([`GameServer`], [`start`]). Its modules:
//! - `storage`: the [`storage::Storage`] trait, its SQLite (default) and
//!   PostgreSQL implementations with their migrations, and the pool of
//!   database threads;
//! - `cluster`: the NATS link between nodes (world chat, presence,
//!   duplicate logins, node liveness);
//! - `sessions`: the node's account → session registry and the handover;
//! - `handler`: [`handler::GameSession`], the packet handler on the I/O
//!   workers;
//! - `player`: [`player::Player`], a connection's game state, an actor;
//! - `room`: [`room::Room`], the room, an actor;
//! - `stats`: the counters;
//! - `web`: the browser client's files, served on the WebSocket listener.
//!
//! Threads: the engine's I/O workers decode packets and push jobs; the
//! actors (players, the room) run on whichever worker picks them up; the
//! database runs on its own threads (`--db-pool`) and answers by pushing a
//! job onto the asking player's actor; the cluster link runs NATS on a
//! thread of its own and answers the same way. No database or NATS call
//! ever runs on an I/O worker.

#![warn(missing_docs)]

pub mod cluster;
pub mod handler;
pub mod player;
pub mod room;
pub mod sessions;
pub mod stats;
pub mod storage;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use servercore::job::Actor;
use servercore::packet::{PacketConfig, PacketSession, RateLimits, HEADER_SIZE, MAX_PACKET_SIZE};
use servercore::transport::rustls;
use servercore::{Backend, ServerService, ServerTransport, ServiceStats, WebSocketConfig};
use servercore_protocol::SERVER_RECEIVES_IDS;

use bytes::Bytes;
use cluster::{ClusterConfig, ClusterEvents, ClusterHandle, ClusterLink, ClusterStats};
use handler::GameSession;
use room::Room;
use sessions::LocalSessions;
pub use stats::{GameCounters, GameStats};
use storage::{DbTarget, StorageHandle, StorageKind, StorageOptions, StoragePool};

/// The default database file, relative to the working directory.
pub const DEFAULT_DB_PATH: &str = "servercore-game.db";

/// The largest `max_chat_len` accepted: an `S_CHAT` carrying it must still
/// fit one packet.
pub const MAX_CHAT_LEN_LIMIT: usize = 60_000;

/// Everything [`start`] needs.
#[derive(Debug, Clone)]
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
    /// TLS on every listener (`addr` then speaks TLS only, and the
    /// WebSocket listener serves WSS). `None`: plain.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A WebSocket listener beside the TCP one, for browser clients: the
    /// same world, binary messages carrying the same packets (see
    /// `servercore::transport`). `None`: none.
    pub ws_addr: Option<SocketAddr>,
}

impl Default for GameConfig {
    /// `127.0.0.1:7777`, [`DEFAULT_DB_PATH`], the automatic backend, 10,000
    /// sessions, a 60 s idle timeout, chats up to 256 bytes, packets up to
    /// 8 KiB.
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
            tls: None,
            ws_addr: None,
        }
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

/// What every session of one game server shares.
pub struct GameContext {
    /// The room, an actor.
    pub room: Actor<Room>,
    /// Requests to the database threads.
    pub db: StorageHandle,
    /// The counters.
    pub counters: Arc<GameCounters>,
    /// Longest chat message relayed, in bytes.
    pub max_chat_len: usize,
    /// The logged-in named accounts of this node.
    pub sessions: Arc<LocalSessions>,
    /// The cluster link, if this node is in a cluster.
    pub cluster: Option<ClusterHandle>,
}

impl GameContext {
    /// Makes sure no session holds `account` any more, here or on another
    /// node (disconnecting it and waiting for its save), then calls `done`.
    pub fn take_over(&self, account: String, done: Box<dyn FnOnce() + Send>) {
        let cluster = self.cluster.clone();
        let then_cluster = move |account: String| match cluster {
            Some(cluster) => cluster.claim(account, done),
            None => done(),
        };
        let local_cluster = self.cluster.clone();
        let name = account.clone();
        sessions::kick_local(
            &self.sessions,
            account,
            self.db.clone(),
            &self.counters,
            Box::new(move |kicked| {
                if kicked {
                    if let Some(cluster) = &local_cluster {
                        cluster.offline(name.clone());
                    }
                }
                then_cluster(name);
            }),
        );
    }
}

/// What the cluster link calls: chats from other nodes go to the room,
/// kicks to the account registry.
struct ClusterBridge {
    room: Actor<Room>,
    sessions: Arc<LocalSessions>,
    db: StorageHandle,
    counters: Arc<GameCounters>,
}

impl ClusterEvents for ClusterBridge {
    fn remote_chat(&self, packet: Bytes) {
        // `post`, not `do_async`: the broadcast runs on a worker, never on
        // the link's thread.
        self.room.post(move |room| room.remote_chat(packet));
    }

    fn kick(&self, account: String, done: Box<dyn FnOnce(bool) + Send>) {
        sessions::kick_local(
            &self.sessions,
            account,
            self.db.clone(),
            &self.counters,
            done,
        );
    }
}

/// A running game server: the engine's service, the database threads, the
/// cluster link and the room. Dropping it stops it like
/// [`GameServer::stop_and_join`].
pub struct GameServer {
    service: ServerService,
    db: StoragePool,
    cluster: Option<ClusterLink>,
    db_path: PathBuf,
    ctx: Arc<GameContext>,
    stopped: bool,
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
    let room = Actor::new(Room::new(Arc::clone(&counters)));
    let sessions = Arc::new(LocalSessions::default());
    let cluster = match &config.cluster {
        Some(cluster_config) => {
            let bridge = ClusterBridge {
                room: room.clone(),
                sessions: Arc::clone(&sessions),
                db: db.handle(),
                counters: Arc::clone(&counters),
            };
            let link = ClusterLink::start(cluster_config.clone(), Arc::new(bridge))
                .with_context(|| format!("joining the cluster as node {}", cluster_config.node))?;
            let handle = link.handle();
            room.do_async(move |room| room.set_cluster(handle));
            Some(link)
        }
        None => None,
    };
    let ctx = Arc::new(GameContext {
        room,
        db: db.handle(),
        counters,
        max_chat_len: config.max_chat_len,
        sessions,
        cluster: cluster.as_ref().map(ClusterLink::handle),
    });
    let packets = PacketConfig::default()
        .with_max_packet_size(config.effective_max_packet_size())
        .with_known_ids(SERVER_RECEIVES_IDS.iter().copied())
        .with_rate_limits(config.rate_limits.clone());
    let session_ctx = Arc::clone(&ctx);
    let mut builder = ServerService::builder(config.addr)
        .backend(config.backend)
        .max_sessions(config.max_sessions)
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
    if let Some(ws_addr) = config.ws_addr {
        let pages = web::pages(web::WebWorld {
            world_size: 2000.0,
            cell: 100.0,
        });
        let mut websocket = ServerTransport::websocket(WebSocketConfig::default().pages(pages));
        if let Some(tls) = &config.tls {
            websocket = websocket.with_tls(Arc::clone(tls));
        }
        builder = builder.listener(ws_addr, websocket);
    }
    let service = builder
        .start()
        .with_context(|| format!("starting the game server on {}", config.addr))?;
    Ok(GameServer {
        service,
        db,
        cluster,
        db_path: config.db_path.clone(),
        ctx,
        stopped: false,
    })
}

impl GameServer {
    /// The address the server listens on (the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// The WebSocket listener's address, if one was configured.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.service.local_addrs().get(1).copied()
    }

    /// The I/O backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.service.backend()
    }

    /// The configured database path (or URL, password included: prefer
    /// [`GameServer::db_name`] for display).
    pub fn db_path(&self) -> &std::path::Path {
        &self.db_path
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

    /// The game's counters now.
    pub fn stats(&self) -> GameStats {
        self.ctx.counters.snapshot()
    }

    /// The engine's counters (sessions now, total, refused).
    pub fn service_stats(&self) -> ServiceStats {
        self.service.stats()
    }

    /// Stops cleanly: no new sessions, every session disconnected (each
    /// player leaves the room), the database thread finishes what is queued
    /// and stops. Waits up to a second for the players' last jobs, then
    /// returns the final counters.
    pub fn stop_and_join(mut self) -> GameStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.service.stop();
        self.service.join();
        // Leaving saves; the leave jobs run shortly after the sessions are
        // gone, so give them that moment before the database stops.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && self.stats().player_states > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.db.stop_and_join();
        if let Some(cluster) = &mut self.cluster {
            cluster.stop_and_join();
        }
        // Leaving runs as jobs (player, then room); they finish on the job
        // layer's threads shortly after the sessions are gone.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let stats = self.stats();
            if stats.player_states == 0 && stats.players_in_room == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
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
