//! `bench soak`: the game server in its own process under a long churn of
//! live clients, watched for leaks.
//!
//! About 1,000 clients (`--soak-clients`) each loop: connect, log in, enter,
//! chat and walk (the move scenario's random walk, [`MOVES_PER_SECOND`]
//! steps a second, so the world's regions, cells and handovers churn too)
//! while reading what the server sends for a few seconds, then leave in one
//! of six ways, in turn: close cleanly, reset (`SO_LINGER` 0), vanish in the
//! middle of a packet, stall in the middle of a packet until the server's
//! packet deadline disconnects them, never read anything (the server's send queue
//! for them fills), or half-close and read until the server closes; then
//! reconnect. Every ten seconds (two for runs under two minutes) the server's
//! resident memory, the C allocator's bytes in use and free (so a retained
//! allocation and memory merely kept by the allocator can be told apart),
//! open descriptors, sessions and queue depths (the room actor's pending
//! jobs, the database thread's requests) are sampled and printed as one
//! table row; `--json FILE` writes them all.
//!
//! After the run the clients leave and the server is watched until its
//! sessions and descriptors are back to their values before the first
//! client; then it is asked for one heap trim and sampled once more (the
//! `trimmed` row: what stays resident once free memory is given back). The run fails (non-zero exit) if the RSS grew more than
//! [`MAX_RSS_GROWTH`] between the end of the warm-up (the first fifth of the
//! run) and the last loaded sample, if sessions or descriptors do not return
//! to the baseline within [`SETTLE`], or if the server logged an error.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use parking_lot::Mutex;
use prost::Message;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::child::ServerProcess;
use super::load::{self, Sources};
use super::procfs;
use super::progress::Progress;
use super::proto::{
    self, CChat, CEnterGame, CLogin, CMove, MoveState, PosInfo, SEnterGame, SLogin,
};
use super::transport::ClientStream;
use super::{ChatServer, Impl, Scenario, Transport};
use servercore_load::client::Walker;

/// Largest RSS growth after the warm-up that still passes (10 %).
pub const MAX_RSS_GROWTH: f64 = 0.10;
/// How long the server may take, after the clients left, to be back at its
/// baseline sessions and descriptors.
pub const SETTLE: Duration = Duration::from_secs(30);
/// Descriptors kept free beside the clients' connections.
const SPARE_FDS: u64 = 512;
/// Steps of each client's walk per second.
pub const MOVES_PER_SECOND: f64 = 2.0;
/// Walking speed in world units per second: half the server's default max
/// speed, so no move is disconnected.
const WALK_SPEED: f64 = 150.0;

/// What `bench soak` runs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Minutes of churn (fractions allowed: 0.2 is a 12 s smoke run).
    pub minutes: f64,
    /// Live clients.
    pub clients: usize,
    /// Time between two chats of one client.
    pub chat_interval: Duration,
    /// Backend of the server (`None`: io_uring where available, else poll).
    pub implementation: Option<Impl>,
    /// Server worker threads (default: available cores).
    pub workers: Option<usize>,
    /// Client source addresses 127.0.0.1 ..= 127.0.0.N.
    pub sources: u8,
    /// Also write the report as JSON to FILE.
    pub json: Option<PathBuf>,
}

/// How a client's session ends (each client takes them in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Clean,
    Reset,
    VanishMidPacket,
    StallMidPacket,
    NeverRead,
    HalfClose,
}

impl Leave {
    const ALL: [Leave; 6] = [
        Leave::Clean,
        Leave::Reset,
        Leave::VanishMidPacket,
        Leave::StallMidPacket,
        Leave::NeverRead,
        Leave::HalfClose,
    ];
}

/// The clients' counters.
#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    cycles: AtomicU64,
    chats: AtomicU64,
    moves: AtomicU64,
    /// Stalled clients the server disconnected (the packet deadline working).
    cut_by_server: AtomicU64,
    /// Enters refused because the same player was still leaving the room
    /// from the previous cycle (retried next cycle).
    enter_refused: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(error);
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the clients started (negative: the baseline).
    pub t_s: f64,
    /// `baseline`, `warmup`, `load` or `after`.
    pub phase: &'static str,
    /// Server resident memory, KiB.
    pub rss_kib: u64,
    /// Bytes in live allocations of the server's C allocator, KiB (0 where
    /// it cannot tell).
    pub heap_in_use_kib: u64,
    /// Bytes the allocator holds free (resident until trimmed), KiB.
    pub heap_free_kib: u64,
    /// Server open descriptors.
    pub fds: u64,
    /// Server sessions.
    pub sessions: u64,
    /// Jobs waiting in the room actor.
    pub room_jobs: u64,
    /// Requests waiting for the database thread.
    pub db_queue: u64,
    /// Connections the clients opened so far.
    pub connects: u64,
    /// Client sessions completed so far.
    pub cycles: u64,
    /// Chats sent so far.
    pub chats: u64,
    /// Moves sent so far.
    pub moves: u64,
    /// Stalled clients disconnected by the packet deadline so far.
    pub cut_by_server: u64,
    /// Client errors so far.
    pub client_errors: u64,
}

/// The whole run, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Server backend.
    pub backend: String,
    /// Live clients.
    pub clients: usize,
    /// Minutes of churn.
    pub minutes: f64,
    /// Milliseconds between two chats of one client.
    pub chat_interval_ms: u64,
    /// Steps of each client's walk per second.
    pub moves_per_second: f64,
    /// Seconds of warm-up excluded from the RSS check.
    pub warmup_s: f64,
    /// Every sample, in order.
    pub samples: Vec<SoakSample>,
    /// RSS growth from the end of the warm-up to the last loaded sample.
    pub rss_growth: f64,
    /// The server's RSS after the clients left and one heap trim, KiB (the
    /// `trimmed` row of the table).
    pub rss_trimmed_kib: u64,
    /// Server log lines at ERROR level.
    pub server_errors: Vec<String>,
    /// Server log lines at WARN level (counted).
    pub server_warnings: usize,
    /// The first client error, if any.
    pub first_client_error: Option<String>,
    /// Why the run failed (empty: it passed).
    pub failures: Vec<String>,
}

/// Runs the soak; an error (non-zero exit) if a check failed.
pub fn run(options: SoakOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.minutes.is_finite() && options.minutes > 0.0,
        "--minutes must be positive"
    );
    anyhow::ensure!(options.clients > 0, "--soak-clients must be at least 1");
    let open_file_limit = procfs::raise_nofile_limit().unwrap_or(1024);
    anyhow::ensure!(
        options.clients as u64 + SPARE_FDS <= open_file_limit,
        "the open-file limit ({open_file_limit}) is too low for {} clients",
        options.clients
    );
    let implementation = match options.implementation {
        Some(Impl::Tokio) => bail!("the soak runs the engine's game server: uring or poll"),
        Some(implementation) => implementation,
        None if servercore::driver::uring_unavailable_reason().is_none() => Impl::Uring,
        None => Impl::Poll,
    };
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let interval = if duration < Duration::from_secs(120) {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    };
    let warmup = duration / 5;
    let progress = Progress::new();
    let spec = super::child::ServerSpec {
        implementation,
        scenario: Scenario::Soak,
        workers: options.workers,
        max_sessions: options.clients + 1000,
        chat: ChatServer::Game,
        send_coalescing: None,
        transport: Transport::Tcp,
        cert: None,
        tick: None,
        tokio_tick: None,
        world_size: None,
        pin_cpu: None,
    };
    let mut server = ServerProcess::spawn(&spec, &progress)?;
    progress.finish();
    let sources = Sources::loopback(options.sources);
    println!(
        "servercore bench soak: {} game server (pid {}), {} clients from {} addresses, \
         a chat every {} ms and {} steps a second each, {:.1} min (warm-up {:.0} s), \
         a sample every {} s",
        implementation.name(),
        server.pid(),
        options.clients,
        sources.len(),
        options.chat_interval.as_millis(),
        MOVES_PER_SECOND,
        options.minutes,
        warmup.as_secs_f64(),
        interval.as_secs()
    );
    println!("{}", header());

    let counters = Arc::new(Counters::default());
    let mut samples = Vec::new();
    let baseline = sample(&mut server, &counters, -0.0, "baseline")?;
    println!("{}", row(&baseline));
    samples.push(baseline.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the clients' runtime")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = server.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..options.clients {
        let source = sources.pick(index);
        let counters = Arc::clone(&counters);
        let stop = stop_rx.clone();
        let chat_interval = options.chat_interval;
        tasks.spawn_on(
            client(index, addr, source, chat_interval, counters, stop),
            runtime.handle(),
        );
    }

    let started = Instant::now();
    let mut next = started + interval;
    while next <= started + duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let t = started.elapsed();
        let phase = if t <= warmup { "warmup" } else { "load" };
        let row_sample = sample(&mut server, &counters, t.as_secs_f64(), phase)?;
        println!("{}", row(&row_sample));
        samples.push(row_sample);
        next += interval;
    }

    // The clients leave: every task ends, dropping its connection.
    let _ = stop_tx.send(true);
    runtime.block_on(async {
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let left = Instant::now();
    let after = loop {
        std::thread::sleep(Duration::from_millis(500));
        let t = started.elapsed().as_secs_f64();
        let now = sample(&mut server, &counters, t, "after")?;
        let settled = now.sessions == baseline.sessions && now.fds == baseline.fds;
        if settled || left.elapsed() >= SETTLE {
            break now;
        }
    };
    println!("{}", row(&after));
    samples.push(after.clone());
    let trimmed = server.query("trim")?;
    anyhow::ensure!(
        trimmed.starts_with("trimmed "),
        "unexpected answer to trim: {trimmed:?}"
    );
    let t = started.elapsed().as_secs_f64();
    // Printed, but kept out of the series (which ends with `after`): the
    // report carries it as `rss_trimmed_kib`.
    let after_trim = sample(&mut server, &counters, t, "trimmed")?;
    println!("{}", row(&after_trim));

    let (note, stderr) = server.stop(Duration::from_secs(10));
    let server_errors: Vec<String> = stderr
        .iter()
        .filter(|line| line.contains(" ERROR ") || line.starts_with("ERROR"))
        .cloned()
        .collect();
    let server_warnings = stderr.iter().filter(|line| line.contains(" WARN ")).count();

    let warm = samples
        .iter()
        .find(|s| s.phase == "load")
        .or_else(|| samples.iter().rev().find(|s| s.phase == "warmup"))
        .cloned();
    let last = samples.iter().rev().find(|s| s.phase == "load").cloned();
    let rss_growth = match (&warm, &last) {
        (Some(warm), Some(last)) if warm.rss_kib > 0 => {
            last.rss_kib as f64 / warm.rss_kib as f64 - 1.0
        }
        _ => 0.0,
    };
    let mut failures = Vec::new();
    if rss_growth > MAX_RSS_GROWTH {
        failures.push(format!(
            "RSS grew {:.1} % after the warm-up (limit {:.0} %)",
            rss_growth * 100.0,
            MAX_RSS_GROWTH * 100.0
        ));
    }
    if after.sessions != baseline.sessions {
        failures.push(format!(
            "sessions did not return to the baseline: {} now, {} before",
            after.sessions, baseline.sessions
        ));
    }
    if after.fds != baseline.fds {
        failures.push(format!(
            "open descriptors did not return to the baseline: {} now, {} before",
            after.fds, baseline.fds
        ));
    }
    if !server_errors.is_empty() {
        failures.push(format!(
            "the server logged {} error line(s), the first: {}",
            server_errors.len(),
            server_errors[0]
        ));
    }
    if let Some(note) = note {
        failures.push(note);
    }
    if after.cycles == 0 {
        failures.push("no client completed a session".into());
    }
    let first_client_error = counters.first_error.lock().clone();
    println!();
    println!(
        "rss {:.1} MiB after the warm-up, {:.1} MiB at the end of the load ({:+.1} %), \
         {:.1} MiB once idle and trimmed; heap in use {:.1} -> {:.1} MiB; \
         sessions {} -> {}, fds {} -> {} after the clients left",
        warm.as_ref().map_or(0.0, |s| mib(s.rss_kib)),
        last.as_ref().map_or(0.0, |s| mib(s.rss_kib)),
        rss_growth * 100.0,
        mib(after_trim.rss_kib),
        warm.as_ref().map_or(0.0, |s| mib(s.heap_in_use_kib)),
        last.as_ref().map_or(0.0, |s| mib(s.heap_in_use_kib)),
        baseline.sessions,
        after.sessions,
        baseline.fds,
        after.fds
    );
    println!(
        "clients: {} connections, {} sessions, {} chats, {} moves, {} stalled clients disconnected \
         by the server, {} enters retried, {} errors{}; server log: {} warnings, {} errors",
        after.connects,
        after.cycles,
        after.chats,
        after.moves,
        after.cut_by_server,
        counters.enter_refused.load(Ordering::Relaxed),
        after.client_errors,
        first_client_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})")),
        server_warnings,
        server_errors.len()
    );
    let report = SoakReport {
        backend: implementation.name().to_string(),
        clients: options.clients,
        minutes: options.minutes,
        chat_interval_ms: options.chat_interval.as_millis() as u64,
        moves_per_second: MOVES_PER_SECOND,
        warmup_s: warmup.as_secs_f64(),
        samples,
        rss_growth,
        rss_trimmed_kib: after_trim.rss_kib,
        server_errors,
        server_warnings,
        first_client_error,
        failures: failures.clone(),
    };
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    std::io::stdout().flush()?;
    if failures.is_empty() {
        println!("soak passed");
        Ok(())
    } else {
        bail!("soak failed: {}", failures.join("; "))
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn header() -> String {
    format!(
        "{:>7} {:<8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>5} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6}",
        "t (s)",
        "phase",
        "RSS MiB",
        "heap MiB",
        "free MiB",
        "fds",
        "sessions",
        "room_q",
        "db_q",
        "connects",
        "cycles",
        "chats",
        "moves",
        "closed",
        "errors"
    )
}

fn row(s: &SoakSample) -> String {
    format!(
        "{:>7.0} {:<8} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>8} {:>7} {:>5} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6}",
        s.t_s,
        s.phase,
        mib(s.rss_kib),
        mib(s.heap_in_use_kib),
        mib(s.heap_free_kib),
        s.fds,
        s.sessions,
        s.room_jobs,
        s.db_queue,
        s.connects,
        s.cycles,
        s.chats,
        s.moves,
        s.cut_by_server,
        s.client_errors
    )
}

fn sample(
    server: &mut ServerProcess,
    counters: &Counters,
    t_s: f64,
    phase: &'static str,
) -> anyhow::Result<SoakSample> {
    let queues = server.query("queues")?;
    let field = |name: &str| -> u64 {
        queues
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let heap = server.query("heap")?;
    let heap_field = |name: &str| -> u64 {
        heap.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse::<u64>().ok())
            .map_or(0, |bytes| bytes / 1024)
    };
    Ok(SoakSample {
        t_s,
        phase,
        rss_kib: server.rss_kib()?,
        heap_in_use_kib: heap_field("in_use"),
        heap_free_kib: heap_field("free"),
        fds: procfs::open_fds(server.pid())?,
        sessions: server.sessions()? as u64,
        room_jobs: field("room"),
        db_queue: field("db"),
        connects: get(&counters.connects),
        cycles: get(&counters.cycles),
        chats: get(&counters.chats),
        moves: get(&counters.moves),
        cut_by_server: get(&counters.cut_by_server),
        client_errors: get(&counters.errors),
    })
}

/// A tiny xorshift generator: each client's lifetimes and pauses.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

async fn client(
    index: usize,
    server: SocketAddr,
    source: IpAddr,
    chat_interval: Duration,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x2545_f491));
    // Spread the first connections over a second.
    let start = Duration::from_millis(rng.below(1000));
    tokio::select! {
        _ = tokio::time::sleep(start) => {}
        _ = stop.changed() => return,
    }
    let account = format!("soak{index}");
    for cycle in 0u64.. {
        let leave = Leave::ALL[(index + cycle as usize) % Leave::ALL.len()];
        let life = Duration::from_millis(2000 + rng.below(4000));
        let player = cycle % proto::PLAYERS_PER_ACCOUNT;
        let walk_seed = ((index as u64) << 32) | cycle;
        let outcome = tokio::select! {
            outcome = session(server, source, &account, player, leave, life, chat_interval, walk_seed, &counters) => outcome,
            _ = stop.changed() => return,
        };
        match outcome {
            Ok(()) => {
                counters.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => counters.fail(format!("{leave:?}: {error:#}")),
        }
        let pause = Duration::from_millis(200 + rng.below(800));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One client session: log in, enter, chat and walk for `life`, leave as
/// `leave`.
#[allow(clippy::too_many_arguments)]
async fn session(
    server: SocketAddr,
    source: IpAddr,
    account: &str,
    player: u64,
    leave: Leave,
    life: Duration,
    chat_interval: Duration,
    walk_seed: u64,
    counters: &Counters,
) -> anyhow::Result<()> {
    let mut stream = ClientStream::Tcp(load::connect(server, source).await?);
    counters.connects.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::with_capacity(4096);
    stream
        .write_all(&proto::packet(
            proto::C_LOGIN,
            &CLogin {
                account: account.to_owned(),
            },
        ))
        .await?;
    let login = SLogin::decode(load::read_packet(&mut stream, &mut buf, proto::S_LOGIN).await?)?;
    anyhow::ensure!(login.success, "login refused");
    stream
        .write_all(&proto::packet(
            proto::C_ENTER_GAME,
            &CEnterGame {
                player_index: player,
            },
        ))
        .await?;
    let entered =
        SEnterGame::decode(load::read_packet(&mut stream, &mut buf, proto::S_ENTER_GAME).await?)?;
    if !entered.success {
        // The same player of the previous cycle is still leaving.
        counters.enter_refused.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let ClientStream::Tcp(mut stream) = stream else {
        bail!("the soak's clients speak plain TCP");
    };
    let mut walker = Walker::new(servercore_game::WorldConfig::default().size, walk_seed);
    if let Some(pos) = entered.player.and_then(|player| player.pos_info) {
        walker.place(pos.x, pos.y);
    }
    let reading = leave != Leave::NeverRead;
    let activity = Activity {
        life,
        chat_interval,
        reading,
    };
    play(&mut stream, activity, &mut walker, counters).await?;
    let chat = proto::packet(
        proto::C_CHAT,
        &CChat {
            msg: "bye".repeat(10),
            client_time_us: load::now_us(),
        },
    );
    let half = &chat[..chat.len() / 2];
    match leave {
        Leave::Clean => {
            stream.shutdown().await?;
        }
        Leave::Reset => {
            stream.set_zero_linger()?;
        }
        Leave::VanishMidPacket => {
            stream.write_all(half).await?;
        }
        Leave::NeverRead => {}
        Leave::StallMidPacket => {
            stream.write_all(half).await?;
            // The server's packet deadline (10 s by default) must disconnect us.
            let cut = tokio::time::timeout(Duration::from_secs(20), drain(&mut stream)).await;
            anyhow::ensure!(
                cut.is_ok(),
                "a stalled packet was not disconnected within 20 s"
            );
            counters.cut_by_server.fetch_add(1, Ordering::Relaxed);
        }
        Leave::HalfClose => {
            stream.shutdown().await?;
            let closed = tokio::time::timeout(Duration::from_secs(10), drain(&mut stream)).await;
            anyhow::ensure!(closed.is_ok(), "the server kept a half-closed session");
        }
    }
    Ok(())
}

/// Reads and discards until the server closes (EOF or reset).
async fn drain(stream: &mut TcpStream) {
    let mut scratch = vec![0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut scratch).await {
        if n == 0 {
            break;
        }
    }
}

/// What one session does once in the game.
struct Activity {
    /// How long it stays.
    life: Duration,
    /// Time between two chats.
    chat_interval: Duration,
    /// Whether it reads (and discards) what the server sends.
    reading: bool,
}

/// Chats every `chat_interval` and takes a step of `walker` every
/// 1 / [`MOVES_PER_SECOND`] s for `life`, reading (and discarding) the
/// room's chat and the world's packets meanwhile if `reading`.
async fn play(
    stream: &mut TcpStream,
    activity: Activity,
    walker: &mut Walker,
    counters: &Counters,
) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + activity.life;
    let mut ticker = tokio::time::interval(activity.chat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut steps = tokio::time::interval(Duration::from_secs_f64(1.0 / MOVES_PER_SECOND));
    steps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let step = (WALK_SPEED / MOVES_PER_SECOND) as f32;
    let reading = activity.reading;
    let mut scratch = vec![0u8; 16 * 1024];
    let msg = "s".repeat(load::CHAT_SIZE);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return Ok(()),
            _ = ticker.tick() => {
                let chat = CChat { msg: msg.clone(), client_time_us: load::now_us() };
                stream.write_all(&proto::packet(proto::C_CHAT, &chat)).await?;
                counters.chats.fetch_add(1, Ordering::Relaxed);
            }
            _ = steps.tick() => {
                let (x, y, yaw) = walker.step(step);
                let walk = CMove {
                    info: Some(PosInfo {
                        object_id: 0,
                        x,
                        y,
                        z: 0.0,
                        yaw,
                        state: MoveState::Run as i32,
                    }),
                    client_time_us: load::now_us(),
                };
                stream.write_all(&proto::packet(proto::C_MOVE, &walk)).await?;
                counters.moves.fetch_add(1, Ordering::Relaxed);
            }
            read = stream.read(&mut scratch), if reading => {
                if read? == 0 {
                    bail!("the server closed the session");
                }
            }
        }
    }
}
