//! The benchmarks behind `servercore bench`: scripted benchmarks of the engine against a plain
//! tokio baseline, one after the other in one run, printed as tables of
//! ratios (see `docs/BENCHMARKS.md`).
//!
//! This module owns the whole harness:
//! - the command-line options ([`BenchOptions`], and [`BenchServerOptions`] of the
//!   hidden `bench-server` subcommand) and the run loop ([`run`]);
//! - [`server`]: the `bench-server` process (engine echo, the engine chat
//!   server of [`engine_chat`], or the tokio baseline of [`tokio_server`]),
//!   and [`child`], the harness's handle on it;
//! - [`load`]: the load generators (echo clients, chatting game clients,
//!   idle connections) on a tokio runtime in the harness process;
//! - [`chat`] and [`proto`]: the room logic and the game protocol that both
//!   chat servers and the load generator share;
//! - [`moves`]: the move scenario (the dummy client's move load against the
//!   game server's world and [`tokio_world`], and the capacity sweep), with
//!   its records and tables in [`move_report`];
//! - [`procfs`]: CPU time and RSS of the server from `/proc`; [`perf`]: its
//!   system calls and context switches from `perf stat` (`--perf`);
//! - [`report`] and [`chart`]: tables, targets, JSON and the SVG chart;
//! - [`progress`]: the progress bar;
//! - [`soak`]: `bench soak`, the long churn run watched for leaks (its own
//!   loop and report, not a comparison).
//!
//! The server under test always runs in its own process, so the load
//! generator's CPU and memory are never counted. Targets are printed beside
//! the results; nothing is asserted.

mod chart;
mod chat;
mod child;
mod engine_chat;
mod load;
mod move_report;
mod moves;
mod perf;
mod procfs;
mod progress;
mod proto;
mod report;
mod server;
pub mod soak;
mod tokio_server;
mod tokio_world;
mod transport;

pub use procfs::raise_nofile_limit;
pub use transport::Transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use servercore::Backend;

use child::ServerProcess;
use load::{Sources, Timing};
use moves::{MovePlan, Variant};
use progress::Progress;
use report::{BroadcastResult, EchoResult, IdleResult, Latency, Report, Settings, WindowCpu};

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
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 4] = [
        Scenario::Echo,
        Scenario::Broadcast,
        Scenario::Idle,
        Scenario::Move,
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

    fn from_backend(backend: Backend) -> Option<Impl> {
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
    /// tokio-tungstenite; the idle scenario runs on tcp only.
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

/// Runs one benchmark server until its stdin ends.
pub fn run_server(args: BenchServerOptions) -> anyhow::Result<()> {
    server::run(args)
}

/// CPU (in cores) other processes may use during a window before the run
/// notes that the machine was busy.
const BUSY_MACHINE_CORES: f64 = 0.25;

/// Descriptors kept free for everything but the benchmark's connections.
const SPARE_FDS: u64 = 512;

/// The run's resolved settings.
struct Plan {
    scenarios: Vec<Scenario>,
    implementations: Vec<Impl>,
    timing: Timing,
    broadcast_warmup: Duration,
    echo_clients: Vec<usize>,
    broadcast_sessions: usize,
    chat_interval: Duration,
    idle_sessions: usize,
    workers: Option<usize>,
    max_sessions: usize,
    chat_server: ChatServer,
    repeat: usize,
    send_coalescing: Option<Duration>,
    tick: Duration,
    tokio_tick: Option<Duration>,
    pin_server: Option<usize>,
    moves: MovePlan,
}

impl Plan {
    fn new(
        args: &BenchOptions,
        open_file_limit: u64,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Plan> {
        let quick = args.quick;
        let duration = args.duration.unwrap_or(if quick { 1.0 } else { 5.0 });
        anyhow::ensure!(
            duration.is_finite() && duration > 0.0,
            "--duration must be positive"
        );
        let mut scenarios: Vec<Scenario> = Vec::new();
        for scenario in &args.scenarios {
            if !scenarios.contains(scenario) {
                scenarios.push(*scenario);
            }
        }
        if scenarios.is_empty() {
            scenarios = Scenario::DEFAULT.to_vec();
        }
        let mut implementations: Vec<Impl> = servercore::driver::available_backends()
            .into_iter()
            .filter_map(Impl::from_backend)
            .collect();
        implementations.push(Impl::Tokio);
        if !args.backends.is_empty() {
            for wanted in &args.backends {
                if !implementations.contains(wanted) {
                    let why = servercore::driver::uring_unavailable_reason().unwrap_or_default();
                    notes.push(format!(
                        "{} is not available here and was skipped: {why}",
                        wanted.name()
                    ));
                }
            }
            implementations.retain(|imp| args.backends.contains(imp));
        }
        anyhow::ensure!(!implementations.is_empty(), "no implementation left to run");
        if !implementations.contains(&Impl::Tokio) {
            notes.push("tokio is not in --backends: no ratios".into());
        }

        let warmup = args
            .warmup
            .unwrap_or(if quick { 0.3 } else { 1.0 })
            .max(0.0);
        let chat_interval = Duration::from_millis(args.chat_interval_ms.max(1));
        let timing = Timing {
            warmup: Duration::from_secs_f64(warmup),
            duration: Duration::from_secs_f64(duration),
            perf: args.perf,
        };
        let echo_clients = if !args.echo_clients.is_empty() {
            args.echo_clients
                .iter()
                .copied()
                .filter(|&c| c > 0)
                .collect()
        } else if quick {
            vec![10, 50]
        } else {
            vec![50, 500]
        };
        let broadcast_sessions = args
            .broadcast_sessions
            .unwrap_or(if quick { 100 } else { 1000 })
            .max(1);
        let mut idle_sessions = args
            .idle_sessions
            .unwrap_or(if quick { 1000 } else { 15_000 })
            .max(1);
        let usable = open_file_limit.saturating_sub(SPARE_FDS) as usize;
        let biggest_load = echo_clients
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(broadcast_sessions);
        anyhow::ensure!(
            biggest_load <= usable,
            "the open-file limit ({open_file_limit}) is too low for {biggest_load} connections"
        );
        if scenarios.contains(&Scenario::Idle) && idle_sessions > usable {
            notes.push(format!(
                "idle scaled down from {idle_sessions} to {usable} sessions: the open-file limit is {open_file_limit}"
            ));
            idle_sessions = usable;
        }
        let move_players = args
            .move_players
            .unwrap_or(if quick { 200 } else { 2000 })
            .max(1);
        let mut capacity_steps: Vec<usize> = if args.capacity_steps.is_empty() {
            if quick {
                vec![100, 200]
            } else {
                vec![
                    500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12_000, 16_000,
                ]
            }
        } else {
            args.capacity_steps
                .iter()
                .copied()
                .filter(|&n| n > 0)
                .collect()
        };
        capacity_steps.sort_unstable();
        capacity_steps.dedup();
        if scenarios.contains(&Scenario::Move) {
            anyhow::ensure!(
                move_players <= usable,
                "the open-file limit ({open_file_limit}) is too low for {move_players} players"
            );
            if capacity_steps.iter().any(|&n| n > usable) {
                notes.push(format!(
                    "capacity steps above {usable} players were dropped: the open-file limit is {open_file_limit}"
                ));
                capacity_steps.retain(|&n| n <= usable);
            }
        }
        let biggest_move = capacity_steps
            .last()
            .copied()
            .unwrap_or(0)
            .max(move_players);
        anyhow::ensure!(
            !args.tick.is_zero() && args.tick <= Duration::from_secs(10),
            "--tick-ms must be between 1 and 10000"
        );
        // Every implementation at the same tick; the baseline last, as in
        // every table.
        let mut variants: Vec<Variant> = implementations
            .iter()
            .map(|&implementation| Variant { implementation })
            .collect();
        variants.sort_by_key(|v| v.implementation == Impl::Tokio);
        let world = match (args.crowd, args.density) {
            (Some(_), true) => {
                anyhow::bail!("--crowd and --density are two different worlds: pick one")
            }
            (Some(players), false) => {
                anyhow::ensure!(players > 0, "--crowd needs at least one player");
                moves::WorldShape::Crowd
            }
            (None, true) => moves::WorldShape::Density,
            (None, false) => moves::WorldShape::Fixed,
        };
        let move_players = args.crowd.unwrap_or(move_players);
        anyhow::ensure!(
            !scenarios.contains(&Scenario::Move) || move_players <= usable,
            "the open-file limit ({open_file_limit}) is too low for {move_players} players"
        );
        let moves = MovePlan {
            players: move_players,
            variants,
            world,
            tick: args.tick,
            steps: if args.crowd.is_some() {
                Vec::new()
            } else {
                capacity_steps
            },
            window: timing.duration,
            step_window: Duration::from_secs_f64(if quick { duration } else { 3.0 }),
            warmup: timing.warmup,
            p99_limit: Duration::from_millis(100),
            sweep_budget: Duration::from_secs(if quick { 20 } else { 60 }),
            move_rate: 10.0,
            speed: 150.0,
        };
        let max_sessions = idle_sessions
            .max(biggest_load)
            .max(biggest_move)
            .max(moves.players)
            + 1000;
        Ok(Plan {
            scenarios,
            implementations,
            timing,
            broadcast_warmup: timing.warmup.max(chat_interval * 2),
            echo_clients,
            broadcast_sessions,
            chat_interval,
            idle_sessions,
            workers: args.workers,
            max_sessions,
            chat_server: args.chat_server,
            repeat: args.repeat.max(1),
            send_coalescing: args.send_coalescing,
            tick: args.tick,
            tokio_tick: args.tokio_tick,
            pin_server: args.pin_server,
            moves,
        })
    }
}

/// What the run loop carries between measurements.
struct Bench {
    plan: Plan,
    runtime: tokio::runtime::Runtime,
    sources: Sources,
    progress: Progress,
    report: Report,
    failures: usize,
    /// The repetition running now.
    round: usize,
    /// The transport of this part of the run.
    transport: Transport,
    /// The load generator's side of it.
    connector: transport::Connector,
    /// The TLS pair the servers use.
    cert_files: Option<(PathBuf, PathBuf)>,
}

/// Runs the benchmarks: every scenario on each transport in turn.
pub fn run(args: BenchOptions) -> anyhow::Result<()> {
    run_until(args, &crate::StopSignal::new())
}

/// Runs the benchmarks until `stop` is set: the measurement running then
/// finishes (its window is bounded), the rest are skipped, and the tables
/// of what was measured are printed as usual.
pub fn run_until(args: BenchOptions, stop: &crate::StopSignal) -> anyhow::Result<()> {
    if let Some(path) = &args.replay {
        return replay(path, &args);
    }
    if args.scenarios.contains(&Scenario::Soak) {
        anyhow::ensure!(
            args.scenarios.iter().all(|s| *s == Scenario::Soak),
            "soak runs alone: `servercore bench soak --minutes N`"
        );
        anyhow::ensure!(
            args.backends.len() <= 1,
            "soak runs one server: give at most one of --backends uring|poll"
        );
        return soak::run(soak::SoakOptions {
            minutes: args.soak_minutes,
            clients: args.soak_clients,
            chat_interval: Duration::from_millis(args.soak_chat_interval_ms.max(1)),
            implementation: args.backends.first().copied(),
            workers: args.workers,
            sources: args.sources,
            json: args.json.clone(),
        });
    }
    if let Some(cpu) = args.pin_server {
        let others: Vec<usize> = procfs::allowed_cpus()
            .into_iter()
            .filter(|&other| other != cpu)
            .collect();
        anyhow::ensure!(
            !others.is_empty(),
            "--pin-server {cpu}: no other CPU is left for the load generator"
        );
        procfs::pin(std::process::id(), &others)
            .context("pinning the load generator to the other CPUs")?;
    }
    let mut transports: Vec<Transport> = Vec::new();
    for transport in &args.transports {
        if !transports.contains(transport) {
            transports.push(*transport);
        }
    }
    if transports.is_empty() {
        transports.push(Transport::Tcp);
    }
    let cert = if transports.contains(&Transport::Tls) {
        Some(transport::DevCert::generate().context("generating the TLS certificate")?)
    } else {
        None
    };
    let mut failures = 0;
    for &transport in &transports {
        let mut one = args.clone();
        if transports.len() > 1 && transport != Transport::Tcp {
            one.json = args
                .json
                .as_ref()
                .map(|path| suffixed(path, transport.name()));
            one.chart = args
                .chart
                .as_ref()
                .map(|path| suffixed(path, transport.name()));
        }
        if transport != Transport::Tcp {
            // Idle measures memory and the world runs over TCP only.
            one.scenarios
                .retain(|s| *s != Scenario::Idle && *s != Scenario::Move);
            if one.scenarios.is_empty() {
                one.scenarios = vec![Scenario::Echo, Scenario::Broadcast];
            }
        }
        failures += run_transport(one, transport, cert.as_ref(), stop)?;
    }
    anyhow::ensure!(
        failures == 0,
        "{failures} measurement(s) failed (see the notes above)"
    );
    Ok(())
}

/// `FILE.json` → `FILE-NAME.json`.
fn suffixed(path: &std::path::Path, name: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let file = match path.extension() {
        Some(ext) => format!("{stem}-{name}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{name}"),
    };
    path.with_file_name(file)
}

/// Runs every scenario of `args` on one transport; returns the failed
/// measurements.
fn run_transport(
    args: BenchOptions,
    transport: Transport,
    cert: Option<&transport::DevCert>,
    stop: &crate::StopSignal,
) -> anyhow::Result<usize> {
    let connector = transport::Connector::new(transport, cert)?;
    let mut notes = Vec::new();
    let open_file_limit = match procfs::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(error) => {
            notes.push(format!(
                "could not read or raise the open-file limit: {error}"
            ));
            1024
        }
    };
    let plan = Plan::new(&args, open_file_limit, &mut notes)?;
    let machine = procfs::MachineInfo::read();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(machine.cores)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let sources = Sources::loopback(args.sources);
    if sources.len() < usize::from(args.sources) {
        notes.push(format!(
            "only {} of {} client source addresses could be bound",
            sources.len(),
            args.sources
        ));
    }
    let columns: Vec<String> = plan
        .implementations
        .iter()
        .map(|imp| imp.name().to_string())
        .collect();
    let settings = Settings {
        duration_seconds: plan.timing.duration.as_secs_f64(),
        repeat: plan.repeat,
        warmup_seconds: plan.timing.warmup.as_secs_f64(),
        quick: args.quick,
        scenarios: plan
            .scenarios
            .iter()
            .map(|s| s.name().to_string())
            .collect(),
        implementations: columns.clone(),
        workers: plan.workers,
        echo_clients: plan.echo_clients.clone(),
        broadcast_sessions: plan.broadcast_sessions,
        broadcast_server: match plan.send_coalescing {
            Some(interval) => format!(
                "{}, send coalescing {} ms",
                plan.chat_server.name(),
                interval.as_secs_f64() * 1000.0
            ),
            None => plan.chat_server.name().to_string(),
        },
        idle_sessions: plan.idle_sessions,
        source_addresses: sources.len(),
        open_file_limit,
        moves: plan
            .scenarios
            .contains(&Scenario::Move)
            .then(|| move_report::MoveSettings {
                players: plan.moves.players,
                move_rate: plan.moves.move_rate,
                speed: plan.moves.speed,
                tick_ms: plan.moves.tick.as_secs_f64() * 1000.0,
                world: plan.moves.world.describe().to_string(),
                variants: plan.moves.variants.iter().map(Variant::label).collect(),
                capacity_steps: plan.moves.steps.clone(),
                capacity_window_seconds: plan.moves.step_window.as_secs_f64(),
                capacity_p99_limit_us: plan.moves.p99_limit.as_micros() as u64,
            }),
    };
    println!(
        "servercore bench over {}: {} cores, kernel {}, {}; load average {}",
        match transport {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls (baseline: tokio-rustls)",
            Transport::Ws => "ws (baseline: tokio-tungstenite)",
        },
        machine.cores,
        machine.kernel,
        machine.cpu,
        procfs::load_average().map_or_else(|| "?".to_string(), |load| format!("{load:.2}"))
    );
    println!(
        "implementations {} (ratios against {}); server workers {}; window {:.1} s after {:.1} s warm-up; {} client source addresses; open-file limit {}",
        columns.join(", "),
        report::BASELINE,
        plan.workers.map_or_else(|| format!("{} (cores)", machine.cores), |w| w.to_string()),
        settings.duration_seconds,
        settings.warmup_seconds,
        sources.len(),
        open_file_limit
    );
    println!();
    let mut bench = Bench {
        plan,
        runtime,
        sources,
        progress: Progress::new(),
        report: Report {
            machine,
            settings,
            echo: Vec::new(),
            broadcast: Vec::new(),
            idle: Vec::new(),
            echo_runs: Vec::new(),
            broadcast_runs: Vec::new(),
            idle_runs: Vec::new(),
            moves: Vec::new(),
            capacity: Vec::new(),
            targets: Vec::new(),
            notes,
        },
        failures: 0,
        round: 0,
        transport,
        connector,
        cert_files: cert.map(|c| (c.cert.clone(), c.key.clone())),
    };
    let mut skipped = 0usize;
    for scenario in bench.plan.scenarios.clone() {
        if scenario == Scenario::Move {
            bench.moves();
            for section in scenario_sections(&bench.report, scenario) {
                bench.progress.println(&section.render());
            }
            continue;
        }
        for round in 0..bench.plan.repeat {
            bench.round = round;
            for imp in bench.plan.implementations.clone() {
                if stop.is_set() {
                    skipped += 1;
                    continue;
                }
                let result = match scenario {
                    Scenario::Echo => bench.echo(imp),
                    Scenario::Broadcast => bench.broadcast(imp),
                    Scenario::Idle => bench.idle(imp),
                    Scenario::Move => unreachable!("the move scenario runs above"),
                    Scenario::Soak => unreachable!("soak runs alone, before this loop"),
                };
                if let Err(error) = result {
                    bench.failures += 1;
                    let note = format!("{} on {} failed: {error:#}", scenario.name(), imp.name());
                    bench.progress.eprintln(&format!("  {note}"));
                    bench.report.notes.push(note);
                }
            }
        }
        bench.take_medians();
        if bench.plan.repeat > 1 {
            bench.progress.println(&format!(
                "({}: median of {} runs per cell, by {})",
                scenario.name(),
                bench.plan.repeat,
                match scenario {
                    Scenario::Echo => "server CPU/request",
                    Scenario::Broadcast => "server CPU/delivery",
                    Scenario::Idle => "RSS per session",
                    Scenario::Move => "server CPU/delivery",
                    Scenario::Soak => unreachable!("soak runs alone, before this loop"),
                }
            ));
        }
        let sections = scenario_sections(&bench.report, scenario);
        for section in sections {
            bench.progress.println(&section.render());
        }
    }
    if skipped > 0 {
        let note = format!("stopped by a signal: {skipped} measurement(s) skipped");
        bench.progress.eprintln(&note);
        bench.report.notes.push(note);
    }
    bench.progress.finish();
    finish_report(&mut bench.report, &args)?;
    Ok(bench.failures)
}

/// The tables of one scenario of a report.
fn scenario_sections(report: &Report, scenario: Scenario) -> Vec<report::Section> {
    let columns = &report.settings.implementations;
    let duration = report.settings.duration_seconds;
    match scenario {
        Scenario::Echo => report::echo_sections(&report.echo, columns, duration),
        Scenario::Broadcast => report::broadcast_section(
            &report.broadcast,
            columns,
            duration,
            &report.settings.broadcast_server,
        )
        .into_iter()
        .collect(),
        Scenario::Idle => report::idle_section(&report.idle, columns)
            .into_iter()
            .collect(),
        Scenario::Move => move_report::move_sections(
            report.settings.moves.as_ref(),
            &report.moves,
            &report.capacity,
        ),
        // The soak prints its own table and is never in a comparison report.
        Scenario::Soak => Vec::new(),
    }
}

/// Evaluates and prints the targets and notes, then writes `--json` and
/// `--chart`.
fn finish_report(report: &mut Report, args: &BenchOptions) -> anyhow::Result<()> {
    report.targets = report::evaluate_targets(report);
    report
        .targets
        .extend(move_report::move_targets(&report.moves, &report.capacity));
    for note in move_report::capacity_notes(&report.capacity) {
        if !report.notes.contains(&note) {
            report.notes.push(note);
        }
    }
    if !report.targets.is_empty() {
        println!("targets (reported, not asserted):");
        print!("{}", report::render_targets(&report.targets));
        println!();
    }
    if !report.notes.is_empty() {
        println!("notes:");
        for note in &report.notes {
            println!("  - {note}");
        }
        println!();
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    if let Some(path) = &args.chart {
        chart::write(
            path,
            &report.settings.implementations,
            &report.echo,
            &report.broadcast,
        )?;
        println!("chart written to {}", path.display());
    }
    Ok(())
}

/// `--replay FILE`: shows the tables of a saved `--json` report again (and
/// writes `--chart`/`--json` from it) without measuring anything.
fn replay(path: &std::path::Path, args: &BenchOptions) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut report: Report =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    println!(
        "servercore bench (replayed from {}): {} cores, kernel {}, {}",
        path.display(),
        report.machine.cores,
        report.machine.kernel,
        report.machine.cpu
    );
    println!();
    for name in report.settings.scenarios.clone() {
        let Some(scenario) = Scenario::ALL.into_iter().find(|s| s.name() == name) else {
            continue;
        };
        for section in scenario_sections(&report, scenario) {
            println!("{}", section.render());
        }
    }
    finish_report(&mut report, args)
}

impl Bench {
    /// Keeps the median run of each cell (the only run without `--repeat`).
    fn take_medians(&mut self) {
        let report = &mut self.report;
        report.echo = report::median_runs(
            &report.echo_runs,
            |r| (r.implementation.clone(), r.clients),
            |r| r.server_cpu_us_per_request,
        );
        report.broadcast = report::median_runs(
            &report.broadcast_runs,
            |r| r.implementation.clone(),
            |r| r.server_cpu_us_per_delivery,
        );
        report.idle = report::median_runs(
            &report.idle_runs,
            |r| r.implementation.clone(),
            |r| r.bytes_per_session,
        );
    }

    fn spawn(&self, imp: Impl, scenario: Scenario) -> anyhow::Result<ServerProcess> {
        self.progress.phase(
            &format!("{} · {}", scenario.name(), imp.name()),
            "starting the server",
            0,
        );
        ServerProcess::spawn(&self.server_spec(imp, scenario), &self.progress)
    }

    /// How this run starts a server of `imp` for `scenario`.
    fn server_spec(&self, imp: Impl, scenario: Scenario) -> child::ServerSpec {
        child::ServerSpec {
            implementation: imp,
            scenario,
            workers: self.plan.workers,
            max_sessions: self.plan.max_sessions,
            chat: self.plan.chat_server,
            send_coalescing: self.plan.send_coalescing,
            transport: self.transport,
            cert: self.cert_files.clone(),
            tick: Some(self.plan.tick),
            tokio_tick: self.plan.tokio_tick,
            world_size: None,
            pin_cpu: self.plan.pin_server,
        }
    }

    /// Notes a window during which other processes used noticeable CPU.
    fn check_quiet(&mut self, what: &str, window: &load::Window) {
        let other = window.other_cpu.as_secs_f64() / window.elapsed.as_secs_f64().max(1e-9);
        if other > BUSY_MACHINE_CORES {
            self.report.notes.push(format!(
                "{what}: other processes used {other:.2} cores during the window; the machine was not quiet"
            ));
        }
    }

    /// The server's system calls and context switches per unit of work in
    /// a window, when `--perf` counted them; notes why not otherwise.
    fn perf_per(
        &mut self,
        what: &str,
        window: &load::Window,
        units: u64,
    ) -> (Option<f64>, Option<f64>) {
        match &window.perf {
            Some(Ok(counts)) if units > 0 => (
                Some(counts.syscalls as f64 / units as f64),
                Some(counts.context_switches as f64 / units as f64),
            ),
            Some(Err(error)) => {
                self.report.notes.push(format!("{what}: {error}"));
                (None, None)
            }
            _ => (None, None),
        }
    }

    /// Stops a server and records anything unusual it did.
    fn finish(&mut self, server: ServerProcess) {
        let (note, stderr) = server.stop(Duration::from_secs(15));
        self.report.notes.extend(note);
        if let Some(first) = stderr.first() {
            self.report.notes.push(format!(
                "the server wrote {} line(s) to stderr; first: {first}",
                stderr.len()
            ));
        }
    }

    fn echo(&mut self, imp: Impl) -> anyhow::Result<()> {
        let server = self.spawn(imp, Scenario::Echo)?;
        for clients in self.plan.echo_clients.clone() {
            self.progress.phase(
                &format!("echo {clients} · {}", imp.name()),
                "connecting",
                clients as u64,
            );
            let outcome = self.runtime.block_on(load::echo(
                server.addr(),
                server.pid(),
                clients,
                self.plan.timing,
                &self.sources,
                &self.progress,
                &self.connector,
            ));
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    self.finish(server);
                    return Err(error);
                }
            };
            let seconds = outcome.window.elapsed.as_secs_f64();
            let cpu = WindowCpu::from_window(&outcome.window);
            self.check_quiet(
                &format!("echo {clients} on {}", imp.name()),
                &outcome.window,
            );
            let (syscalls, switches) = self.perf_per(
                &format!("echo {clients} on {}", imp.name()),
                &outcome.window,
                outcome.requests,
            );
            if !outcome.errors.is_empty() {
                self.report.notes.push(format!(
                    "echo {clients} on {}: {} client(s) failed; first: {}",
                    imp.name(),
                    outcome.errors.len(),
                    outcome.errors[0]
                ));
            }
            self.report.echo_runs.push(EchoResult {
                round: self.round,
                implementation: imp.name().to_string(),
                clients,
                requests: outcome.requests,
                seconds,
                requests_per_sec: outcome.requests as f64 / seconds,
                server_cpu_us_per_request: cpu.server_us_per(outcome.requests),
                cpu,
                tcp_segments_per_request: (outcome.requests > 0)
                    .then(|| outcome.window.tcp_segments as f64 / outcome.requests as f64),
                server_syscalls_per_request: syscalls,
                server_context_switches_per_request: switches,
                latency: Latency::from_histogram(&outcome.latency),
                errors: outcome.errors,
            });
        }
        self.finish(server);
        Ok(())
    }

    fn broadcast(&mut self, imp: Impl) -> anyhow::Result<()> {
        let server = self.spawn(imp, Scenario::Broadcast)?;
        let sessions = self.plan.broadcast_sessions;
        self.progress.phase(
            &format!("broadcast {sessions} · {}", imp.name()),
            "connecting",
            sessions as u64,
        );
        let timing = Timing {
            warmup: self.plan.broadcast_warmup,
            ..self.plan.timing
        };
        let mut server = server;
        let (addr, pid) = (server.addr(), server.pid());
        let mut server_writes = || server.writes().ok().flatten();
        let probe = load::ServerProbe {
            pid,
            writes: &mut server_writes,
        };
        let outcome = self.runtime.block_on(load::broadcast(
            addr,
            probe,
            sessions,
            self.plan.chat_interval,
            timing,
            &self.sources,
            &self.progress,
            &self.connector,
        ));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                self.finish(server);
                return Err(error);
            }
        };
        self.finish(server);
        let seconds = outcome.window.elapsed.as_secs_f64();
        let cpu = WindowCpu::from_window(&outcome.window);
        self.check_quiet(&format!("broadcast on {}", imp.name()), &outcome.window);
        let (syscalls, switches) = self.perf_per(
            &format!("broadcast on {}", imp.name()),
            &outcome.window,
            outcome.deliveries,
        );
        if outcome.disconnects > 0 {
            self.report.notes.push(format!(
                "broadcast on {}: {} session(s) lost; first errors: {}",
                imp.name(),
                outcome.disconnects,
                outcome.errors.join(" | ")
            ));
        }
        let sessions = outcome.sessions as f64;
        self.report.broadcast_runs.push(BroadcastResult {
            round: self.round,
            implementation: imp.name().to_string(),
            sessions: outcome.sessions,
            interval_ms: outcome.interval.as_millis() as u64,
            seconds,
            chats_sent: outcome.chats_sent,
            deliveries: outcome.deliveries,
            expected_deliveries_per_sec: sessions * sessions / outcome.interval.as_secs_f64(),
            deliveries_per_sec: outcome.deliveries as f64 / seconds,
            server_cpu_us_per_delivery: cpu.server_us_per(outcome.deliveries),
            cpu,
            tcp_segments_per_delivery: (outcome.deliveries > 0)
                .then(|| outcome.window.tcp_segments as f64 / outcome.deliveries as f64),
            server_writes_per_delivery: outcome
                .window
                .server_writes
                .filter(|_| outcome.deliveries > 0)
                .map(|writes| writes as f64 / outcome.deliveries as f64),
            server_syscalls_per_delivery: syscalls,
            server_context_switches_per_delivery: switches,
            latency: Latency::from_histogram(&outcome.latency),
            disconnects: outcome.disconnects,
            errors: outcome.errors,
            setup_seconds: outcome.setup.as_secs_f64(),
        });
        Ok(())
    }

    fn idle(&mut self, imp: Impl) -> anyhow::Result<()> {
        let mut server = self.spawn(imp, Scenario::Idle)?;
        let result = self.measure_idle(imp, &mut server);
        self.finish(server);
        let result = result?;
        if result.connect_failures > 0 {
            self.report.notes.push(format!(
                "idle on {}: {} connection(s) failed; first: {}",
                imp.name(),
                result.connect_failures,
                result.first_error.clone().unwrap_or_default()
            ));
        }
        self.report.idle_runs.push(result);
        Ok(())
    }

    fn measure_idle(
        &mut self,
        imp: Impl,
        server: &mut ServerProcess,
    ) -> anyhow::Result<IdleResult> {
        let sessions = self.plan.idle_sessions;
        self.progress
            .phase(&format!("idle {sessions} · {}", imp.name()), "settling", 0);
        std::thread::sleep(Duration::from_millis(500));
        let rss_before_kib = server.rss_kib()?;
        let connected = self.runtime.block_on(load::connect_many(
            server.addr(),
            sessions,
            &self.sources,
            &self.progress,
        ));
        let open = connected.streams.len();
        self.progress.step("waiting for the server", open as u64);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut server_sessions = server.sessions()?;
        while server_sessions < open && Instant::now() < deadline {
            self.progress.set_position(server_sessions as u64);
            std::thread::sleep(Duration::from_millis(100));
            server_sessions = server.sessions()?;
        }
        self.progress.step("settling", 0);
        std::thread::sleep(Duration::from_secs(1));
        let rss_after_kib = server.rss_kib()?;
        let server_sessions = server.sessions()?;
        let streams = connected.streams;
        self.runtime.block_on(async move { drop(streams) });
        let grown = rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0;
        Ok(IdleResult {
            implementation: imp.name().to_string(),
            round: self.round,
            sessions_requested: sessions,
            sessions_open: open,
            server_sessions,
            connect_failures: connected.failed,
            first_error: connected.first_error,
            rss_before_kib,
            rss_after_kib,
            bytes_per_session: (server_sessions > 0).then(|| grown / server_sessions as f64),
        })
    }
}
