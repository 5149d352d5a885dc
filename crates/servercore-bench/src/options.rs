//! The benchmark run's options: what the `bench` command and the hidden
//! `bench-server` subcommand turn their flags into.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use servercore::Backend;

use crate::Transport;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Ping-pong 128-byte echo at several client counts.
    Echo,
    /// Chat broadcast in one room of many sessions.
    Broadcast,
    /// Many idle connections: server memory per session.
    Idle,
    /// Players random-walking the world: move deliveries, CPU per delivery
    /// and a capacity sweep.
    Move,
    /// The game server under a long churn of live clients, watched for
    /// leaks (--minutes; runs alone).
    Soak,
    /// One world over 1, 2 and 3 nodes (--zone-nodes): CPU per delivery
    /// per node, NATS traffic per tick, cross-border latency, transfers.
    Zones,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Echo,
        Scenario::Broadcast,
        Scenario::Idle,
        Scenario::Move,
        Scenario::Zones,
    ];

    /// What a run without scenarios named runs: all but move, whose
    /// capacity sweep takes minutes (`servercore bench move`).
    pub const DEFAULT: [Scenario; 3] = [Scenario::Echo, Scenario::Broadcast, Scenario::Idle];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Broadcast => "broadcast",
            Scenario::Idle => "idle",
            Scenario::Move => "move",
            Scenario::Soak => "soak",
            Scenario::Zones => "zones",
        }
    }
}

/// A server implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Impl {
    /// servercore on its io_uring backend.
    Uring,
    /// servercore on its poll (mio) backend.
    Poll,
    /// The plain tokio baseline.
    Tokio,
}

impl Impl {
    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Uring => "uring",
            Impl::Poll => "poll",
            Impl::Tokio => "tokio",
        }
    }

    pub(crate) fn from_backend(backend: Backend) -> Option<Impl> {
        match backend {
            Backend::IoUring => Some(Impl::Uring),
            Backend::Poll => Some(Impl::Poll),
            Backend::Auto => None,
        }
    }
}

/// Which engine server the broadcast scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ChatServer {
    /// The sample game server (`servercore server`): packet sessions, the
    /// room and players as job-queue actors, an in-memory database.
    #[default]
    Game,
    /// The benchmark's minimal chat server: the tokio baseline's room logic
    /// on plain engine sessions, so only the I/O layers differ.
    Minimal,
}

impl ChatServer {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ChatServer::Game => "game",
            ChatServer::Minimal => "minimal",
        }
    }
}

/// What `servercore bench` runs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenarios to run, in this order (default: echo broadcast idle).
    pub scenarios: Vec<Scenario>,

    /// Length of each measured window, in seconds (default 5, --quick 1).
    pub duration: Option<f64>,

    /// Load before each window opens, in seconds (default 1, --quick 0.3;
    /// broadcast waits at least two chat intervals).
    pub warmup: Option<f64>,

    /// Short windows and small counts: a smoke test for CI.
    pub quick: bool,

    /// Also write every result as JSON to FILE.
    pub json: Option<PathBuf>,

    /// Measure nothing: show the tables of a saved --json report again (and
    /// write --chart or --json from it).
    pub replay: Option<PathBuf>,

    /// Draw latency against load into an SVG file.
    pub chart: Option<PathBuf>,

    /// Implementations to compare, comma-separated: uring, poll, tokio
    /// (default: each available backend and tokio; ratios need tokio).
    pub backends: Vec<Impl>,

    /// Server worker threads, engine and tokio alike (default: available cores).
    pub workers: Option<usize>,

    /// Echo client counts, comma-separated (default 50,500; --quick 10,50).
    pub echo_clients: Vec<usize>,

    /// Sessions in the broadcast room (default 1000; --quick 100).
    pub broadcast_sessions: Option<usize>,

    /// Engine server of the broadcast scenario: the sample game server, or
    /// the minimal chat server with the tokio baseline's room logic.
    pub chat_server: ChatServer,

    /// Milliseconds between two chats of one broadcast session.
    pub chat_interval_ms: u64,

    /// Idle connections (default 15000; --quick 1000).
    pub idle_sessions: Option<usize>,

    /// Run every measurement N times (implementations interleaved) and
    /// report the median run of each.
    pub repeat: usize,

    /// Also count the server's system calls and context switches in each
    /// window with `perf stat` (needs `perf` and tracepoint access).
    pub perf: bool,

    /// Client source addresses 127.0.0.1 ..= 127.0.0.N, used round-robin.
    pub sources: u8,

    /// Send coalescing of the engine servers (`None`: each server's
    /// default: off for echo and the minimal chat, the game's own default).
    pub send_coalescing: Option<Duration>,

    /// Players of the move scenario's main measurement (default 2000;
    /// --quick 200).
    pub move_players: Option<usize>,

    /// Player counts of the move scenario's capacity sweep, ascending
    /// (default 500,1000,1500,2000,3000,4000,6000,8000,12000,16000;
    /// --quick 100,200).
    pub capacity_steps: Vec<usize>,

    /// `soak`: minutes of churn.
    pub soak_minutes: f64,

    /// `soak`: live clients.
    pub soak_clients: usize,

    /// `soak`: milliseconds between two chats of one client.
    pub soak_chat_interval_ms: u64,

    /// Transports to measure, one after the other in this run (default:
    /// tcp). Over tls the baseline is tokio-rustls, over ws
    /// tokio-tungstenite, over quic tokio + quinn; the idle scenario runs
    /// on tcp only, move on tcp and quic, broadcast on all but quic.
    pub transports: Vec<Transport>,

    /// The send interval of every chat and world server: the game server's
    /// world tick, and how long the tokio baseline's writers wait before
    /// they drain, so every ratio is same-interval (default 50 ms).
    pub tick: Duration,

    /// The tokio baseline's writer wait when it differs from `tick`
    /// (`Some(ZERO)`: the tokio server drains at once, no tick).
    pub tokio_tick: Option<Duration>,

    /// Move scenario: a constant-density sweep, the world growing with the
    /// players (1,000 players per 2,000 × 2,000), instead of the fixed
    /// default world.
    pub density: bool,

    /// Move scenario: a crowd of N players in one cell (a world of one
    /// 100 × 100 cell) instead of the walking world; no sweep.
    pub crowd: Option<usize>,

    /// Pin each server to this CPU and the load generator to the others
    /// (`None`: no pinning).
    pub pin_server: Option<usize>,

    /// Zones scenario: the node counts one world is measured on, each
    /// against the same players (default 1,2,3).
    pub zone_nodes: Vec<usize>,
}

/// What one `servercore bench-server` process serves (started by the
/// harness; see [`server`] for the contract).
#[derive(Debug, Clone)]
pub struct BenchServerOptions {
    /// Implementation: uring, poll or tokio.
    pub implementation: Impl,

    /// Which server: echo (echo and idle) or the broadcast chat server.
    pub scenario: Scenario,

    /// Address to listen on; the bound address is the first stdout line.
    pub addr: SocketAddr,

    /// Worker threads (default: available cores).
    pub workers: Option<usize>,

    /// Engine broadcast server: the game server or the minimal chat server.
    pub chat: ChatServer,

    /// Most sessions at once (engine servers).
    pub max_sessions: usize,

    /// Send coalescing of an engine server (`None`: its default).
    pub send_coalescing: Option<Duration>,

    /// The transport served.
    pub transport: Transport,

    /// TLS certificate (PEM), for the tls transport.
    pub tls_cert: Option<PathBuf>,

    /// TLS key (PEM), for the tls transport.
    pub tls_key: Option<PathBuf>,

    /// The send tick: the game server's world tick (`None`: its default),
    /// and how long the tokio baseline's writers wait before draining
    /// (`None` or zero: they drain at once).
    pub tick: Option<Duration>,

    /// The tokio baseline's writer tick when it differs from `tick`
    /// (`Some(ZERO)`: no tick for tokio while the game ticks).
    pub tokio_tick: Option<Duration>,

    /// The world's side for the move scenario (`None`: 2000).
    pub world_size: Option<f32>,

    /// Wake batching of the game server (`None`: its default).
    pub wake_batching: Option<Duration>,
}
