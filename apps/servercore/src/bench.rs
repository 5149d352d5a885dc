//! `servercore bench` and its hidden `bench-server`: the flags of the
//! benchmark harness in `servercore_bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use servercore_bench::{BenchOptions, BenchServerOptions, ChatServer, Impl, Scenario, Transport};
use servercore_load::client::parse_duration;

/// `servercore bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run, in this order (default: echo broadcast idle).
    #[arg(value_enum, value_name = "SCENARIO")]
    pub scenarios: Vec<Scenario>,

    /// Length of each measured window: 5s, 500ms, 1m, ... (a bare number is
    /// seconds; default 5s, --quick 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Load before each window opens, a duration like --duration (default
    /// 1s, --quick 300ms; broadcast waits at least two chat intervals).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Short windows and small counts: a smoke test for CI.
    #[arg(long)]
    pub quick: bool,

    /// Also write every result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Measure nothing: show the tables of a saved --json report again (and
    /// write --chart or --json from it).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// Draw latency against load into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,

    /// Implementations to compare, comma-separated: uring, poll, tokio
    /// (default: each available backend and tokio; ratios need tokio).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub backends: Vec<Impl>,

    /// Server worker threads, engine and tokio alike (default: available cores).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Echo client counts, comma-separated (default 50,500; --quick 10,50).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub echo_clients: Vec<usize>,

    /// Sessions in the broadcast room (default 1000; --quick 100).
    #[arg(long, value_name = "N")]
    pub broadcast_sessions: Option<usize>,

    /// Engine server of the broadcast scenario: the sample game server, or
    /// the minimal chat server with the tokio baseline's room logic.
    #[arg(long, value_enum, default_value_t = ChatServer::Game, value_name = "SERVER")]
    pub chat_server: ChatServer,

    /// Milliseconds between two chats of one broadcast session.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub chat_interval_ms: u64,

    /// Idle connections (default 15000; --quick 1000).
    #[arg(long, value_name = "N")]
    pub idle_sessions: Option<usize>,

    /// Run every measurement N times (implementations interleaved) and
    /// report the median run of each.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: usize,

    /// Also count the server's system calls and context switches in each
    /// window with `perf stat` (needs `perf` and tracepoint access).
    #[arg(long)]
    pub perf: bool,

    /// Client source addresses 127.0.0.1 ..= 127.0.0.N, used round-robin.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub sources: u8,

    /// Send coalescing of the engine servers, in milliseconds (0: off;
    /// default: each server's own, off but for the game server).
    #[arg(long, value_name = "N")]
    pub coalesce_ms: Option<u64>,

    /// Players of the move scenario's main measurement (default 2000;
    /// --quick 200).
    #[arg(long, value_name = "N")]
    pub move_players: Option<usize>,

    /// Player counts of the move scenario's capacity sweep, comma-separated
    /// (default 500,1000,1500,2000,3000,4000,6000,8000,12000,16000;
    /// --quick 100,200).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub capacity_steps: Vec<usize>,

    /// soak: minutes of churn (fractions allowed; 0.2 is a smoke run).
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub minutes: f64,

    /// soak: live clients.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub soak_clients: usize,

    /// soak: milliseconds between two chats of one client.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub soak_chat_interval_ms: u64,

    /// Transports to measure one after the other, comma-separated: tcp,
    /// tls, ws, quic (default tcp). Each gets its own tables, its baseline
    /// being tokio over the same transport (tokio-rustls,
    /// tokio-tungstenite, tokio + quinn); --json/--chart files get a
    /// -tls/-ws/-quic suffix. Idle runs on tcp only, move on tcp and quic
    /// (moves as datagrams), broadcast on all but quic.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub transports: Vec<Transport>,

    /// The send interval of every chat and world server, in milliseconds:
    /// the game server's world tick, and the tokio baseline's writers wait
    /// this long before they drain, so every ratio is same-interval.
    #[arg(long, default_value_t = 50, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tick_ms: u64,

    /// The tokio baseline's writer wait when it should differ from
    /// --tick-ms, in milliseconds (0: tokio drains at once, no tick).
    #[arg(long, value_name = "MS")]
    pub tokio_tick_ms: Option<u64>,

    /// move: a constant-density sweep, the world growing with the players
    /// (1,000 players per 2000 x 2000), instead of the fixed default world.
    #[arg(long)]
    pub density: bool,

    /// move: N players in one cell (a world of one 100 x 100 cell) instead
    /// of the walking world; no capacity sweep.
    #[arg(long, value_name = "N")]
    pub crowd: Option<usize>,

    /// Pin each server to CPU N and the load generator to the other CPUs,
    /// so neither steals the other's core.
    #[arg(long, value_name = "CPU")]
    pub pin_server: Option<usize>,

    /// zones: node counts one shared world is measured on, comma-separated,
    /// each with the same players (--move-players; default 1,2,3). Needs
    /// nats-server on PATH; the nodes run on the engine backends only.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub zone_nodes: Vec<usize>,
}

/// `servercore bench-server` options (started by `bench`).
#[derive(Debug, clap::Args)]
pub struct BenchServerArgs {
    /// Implementation: uring, poll or tokio.
    #[arg(long = "impl", value_enum)]
    pub implementation: Impl,

    /// Which server: echo (echo and idle) or the broadcast chat server.
    #[arg(long, value_enum)]
    pub scenario: Scenario,

    /// Address to listen on; the bound address is the first stdout line.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,

    /// Worker threads (default: available cores).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Engine broadcast server: the game server or the minimal chat server.
    #[arg(long, value_enum, default_value_t = ChatServer::Game)]
    pub chat: ChatServer,

    /// Most sessions at once (engine servers).
    #[arg(long, default_value_t = 20_000)]
    pub max_sessions: usize,

    /// Send coalescing of an engine server, in milliseconds (0: off;
    /// default: the server's own).
    #[arg(long, value_name = "N")]
    pub coalesce_ms: Option<u64>,

    /// The transport served.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,

    /// TLS certificate (PEM), for the tls transport.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// TLS key (PEM), for the tls transport.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The game server's world tick and the tokio writers' wait, in
    /// milliseconds (default: the game's tick; tokio drains at once).
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,

    /// The tokio writers' wait when it differs from --tick-ms (0: none).
    #[arg(long, value_name = "MS")]
    pub tokio_tick_ms: Option<u64>,

    /// The move scenario's world side (default 2000).
    #[arg(long, value_name = "SIZE")]
    pub world_size: Option<f32>,

    /// The game server's wake batching in microseconds (default: the
    /// game's; 0: off). Read from the environment too, so that a whole
    /// `bench` run can compare with and without it.
    #[arg(long, value_name = "US", env = "SERVERCORE_WAKE_BATCH_US")]
    pub wake_batch_us: Option<u64>,
}

impl BenchArgs {
    /// The run these flags describe.
    pub fn to_options(&self) -> BenchOptions {
        BenchOptions {
            scenarios: self.scenarios.clone(),
            duration: self.duration.map(|duration| duration.as_secs_f64()),
            warmup: self.warmup.map(|warmup| warmup.as_secs_f64()),
            quick: self.quick,
            json: self.json.clone(),
            replay: self.replay.clone(),
            chart: self.chart.clone(),
            backends: self.backends.clone(),
            workers: self.workers,
            echo_clients: self.echo_clients.clone(),
            broadcast_sessions: self.broadcast_sessions,
            chat_server: self.chat_server,
            chat_interval_ms: self.chat_interval_ms,
            idle_sessions: self.idle_sessions,
            repeat: self.repeat,
            perf: self.perf,
            sources: self.sources,
            send_coalescing: self.coalesce_ms.map(Duration::from_millis),
            move_players: self.move_players,
            capacity_steps: self.capacity_steps.clone(),
            soak_minutes: self.minutes,
            soak_clients: self.soak_clients,
            soak_chat_interval_ms: self.soak_chat_interval_ms,
            transports: self.transports.clone(),
            tick: Duration::from_millis(self.tick_ms),
            tokio_tick: self.tokio_tick_ms.map(Duration::from_millis),
            density: self.density,
            crowd: self.crowd,
            pin_server: self.pin_server,
            zone_nodes: self.zone_nodes.clone(),
        }
    }
}

impl BenchServerArgs {
    /// The server these flags describe.
    pub fn to_options(&self) -> BenchServerOptions {
        BenchServerOptions {
            implementation: self.implementation,
            scenario: self.scenario,
            addr: self.addr,
            workers: self.workers,
            chat: self.chat,
            max_sessions: self.max_sessions,
            send_coalescing: self.coalesce_ms.map(Duration::from_millis),
            transport: self.transport,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tick: self.tick_ms.map(Duration::from_millis),
            tokio_tick: self.tokio_tick_ms.map(Duration::from_millis),
            world_size: self.world_size,
            wake_batching: self.wake_batch_us.map(Duration::from_micros),
        }
    }
}

/// Runs the benchmarks; SIGINT/SIGTERM skips what is not measured yet
/// and prints the tables so far.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    use crate::shutdown::{Install as _, StopSignal};
    servercore_bench::run_until(args.to_options(), &StopSignal::install())
}

/// Runs one benchmark server until its stdin ends.
pub fn run_server(args: BenchServerArgs) -> anyhow::Result<()> {
    servercore_bench::run_server(args.to_options())
}
