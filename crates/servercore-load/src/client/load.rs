//! [`run_load`]: one load run from start to report, for `servercore client`,
//! `servercore demo` and the benchmarks.
//!
//! The phases:
//! 1. **set-up**: the sessions connect (spread over the source addresses),
//!    log in and enter the game; the run waits until every connected
//!    session is in game or gave up, and every connect was tried (at most
//!    [`LoadConfig::setup_timeout`], or 10 s without progress once every
//!    connect was tried);
//! 2. **chat / move**: sending starts; each session chats (and moves) at its
//!    staggered slot, once per period; after [`LoadConfig::warmup`] the
//!    counters start again from zero and the measured window runs for
//!    [`LoadConfig::duration`] (a [`LoadObserver`] hears when it opens and
//!    closes: the benchmarks read the server's CPU then);
//! 3. **drain**: sending stops; the run waits for the messages in flight
//!    (every message and move back to its sender and deliveries quiet), at
//!    most [`LoadConfig::drain_timeout`];
//! 4. **stop**: after [`LoadConfig::hold`] (idle, in game), the sessions
//!    are closed and the report built.
//!
//! Clients that follow a transfer or reconnect after their node died get
//! their later connections from the follower (`follow`); the drain also
//! waits (within its timeout) for the clients in transit to be in game
//! again.
//!
//! A run whose every session is gone (failed, refused or disconnected: a
//! server that stopped, a closed port) stops there, at any phase, with a
//! warning: its rates are over the time sessions were live, and the report
//! says it ended early.
//!
//! Messages sent before every session has entered would reach fewer
//! members; the set-up barrier keeps `deliveries = sent × members` exact on
//! a healthy run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use servercore::packet::{PacketConfig, PacketSession, RateLimits};
use servercore::ClientService;
use servercore_protocol::CLIENT_RECEIVES_IDS;

use super::config::{LoadConfig, Scenario};
use super::follow::Follower;
use super::nodes::{share, Clients, NodeSplit};
use super::progress::Progress;
use super::report::{
    human_duration, FollowSummary, LatencySummary, LoadReport, MoveSummary, SessionSummary,
    ZoneLatency,
};
use super::session::{GameClient, RunShared};
use super::stats::{kind, now_us, LoadStats};
use crate::stop::StopSignal;

/// How often the run looks at its counters and redraws the progress.
const TICK: Duration = Duration::from_millis(100);

/// Once every connect was tried, the set-up ends early when no session
/// entered or gave up for this long (a server that stopped answering).
const SETUP_STALL: Duration = Duration::from_secs(10);

/// Connect failures logged one by one; the rest are only counted.
const LOGGED_CONNECT_ERRORS: u64 = 5;

/// Runs one load test as `config` says and returns its report. Shows the
/// live progress on standard error when `progress` (and it is a terminal).
///
/// Sessions that fail are counted in the report, never an error of this
/// function, which fails only when the client service cannot start.
pub fn run_load(config: LoadConfig, progress: bool) -> anyhow::Result<LoadReport> {
    run_load_until(config, progress, &StopSignal::new())
}

/// [`run_load`] with the caller's stop signal: once it is set the chat
/// ends early and the report says `interrupted`.
pub fn run_load_until(
    config: LoadConfig,
    progress: bool,
    stop: &StopSignal,
) -> anyhow::Result<LoadReport> {
    run_load_observed(config, progress, stop, &mut ())
}

/// What the traffic counters held when the measured window closed (before
/// the drain), for an observer that measures the same window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// `C_CHAT` sent in the window.
    pub chats_sent: u64,
    /// `S_CHAT` received in the window.
    pub chat_deliveries: u64,
    /// `C_MOVE` sent in the window.
    pub moves_sent: u64,
    /// `S_MOVE` received in the window.
    pub move_deliveries: u64,
    /// `S_TRANSFER`s received in the window.
    pub transfers_told: u64,
    /// Transfers followed (in game on the new node) in the window.
    pub transfers: u64,
    /// Transfers that could not be followed, in the window.
    pub transfer_errors: u64,
}

/// Hears when a run's measured window opens and closes (see
/// [`run_load_observed`]); `()` hears nothing.
pub trait LoadObserver {
    /// The window opens now: the warm-up is over and the counters are zero.
    fn window_opened(&mut self) {}
    /// The window closed now, with these counts; the drain comes next.
    fn window_closed(&mut self, _counts: WindowCounts) {}
}

impl LoadObserver for () {}

/// [`run_load_until`] that also tells `observer` when the measured window
/// opens and closes.
pub fn run_load_observed(
    config: LoadConfig,
    progress: bool,
    stop: &StopSignal,
    observer: &mut dyn LoadObserver,
) -> anyhow::Result<LoadReport> {
    config.validate()?;
    let sources = config.resolved_source_addrs();
    let shared = Arc::new(RunShared::new(&config).with_nodes(config.addrs()));
    let moving = config.move_period().is_some();
    let mut display = Progress::new(progress, config.sessions, moving);
    let mut follower = Follower::start(&config, &shared)?;
    let clients = start_clients(&config, &sources, &shared)?;
    let stats = &shared.stats;

    // 1. Set-up: everyone connects, logs in and enters.
    let setup_end = Instant::now() + config.setup_timeout;
    let mut last_settled = 0;
    let mut settled_since = Instant::now();
    while Instant::now() < setup_end && !stop.is_set() {
        display.setup(stats);
        let settled = LoadStats::get(&stats.entered) + LoadStats::get(&stats.gave_up);
        if settled != last_settled {
            last_settled = settled;
            settled_since = Instant::now();
        }
        if clients.connecting_done() {
            if settled >= clients.connected() {
                break;
            }
            if settled_since.elapsed() >= SETUP_STALL {
                tracing::warn!(
                    settled,
                    connected = clients.connected(),
                    "set-up made no progress for {SETUP_STALL:?}; starting the chat"
                );
                break;
            }
        }
        stop.wait(TICK);
    }

    // 2. Chat (and move) for the warm-up, then the window.
    let (warmup_start, _) = shared.open_chat(config.warmup + config.duration);
    let mut all_gone = none_alive(&clients, stats);
    if !config.warmup.is_zero() {
        display.warming_up();
        let warmup_end = warmup_start + config.warmup;
        while !stop.is_set() && !all_gone {
            let now = Instant::now();
            if now >= warmup_end {
                break;
            }
            stop.wait(TICK.min(warmup_end - now));
            all_gone = none_alive(&clients, stats);
        }
        stats.reset_window();
    }
    display.start_chat(config.duration, stats);
    let follow_at_open = follow_counts(stats);
    observer.window_opened();
    let chat_start = Instant::now();
    let chat_start_us = now_us();
    let chat_end = warmup_start + config.warmup + config.duration;
    while !all_gone {
        let now = Instant::now();
        if now >= chat_end || stop.is_set() {
            break;
        }
        display.chat(now - chat_start, stats);
        stop.wait(TICK.min(chat_end - now));
        all_gone = none_alive(&clients, stats);
    }
    shared.close_chat();
    let follow_at_close = follow_counts(stats);
    observer.window_closed(WindowCounts {
        chats_sent: LoadStats::get(&stats.sent),
        chat_deliveries: LoadStats::get(&stats.deliveries),
        moves_sent: LoadStats::get(&stats.moves_sent),
        move_deliveries: LoadStats::get(&stats.move_deliveries),
        transfers_told: follow_at_close[0].saturating_sub(follow_at_open[0]),
        transfers: follow_at_close[1].saturating_sub(follow_at_open[1]),
        transfer_errors: follow_at_close[2].saturating_sub(follow_at_open[2]),
    });
    let chat_time = if all_gone {
        // The rates are over the time anyone was there to send.
        let last = LoadStats::get(&stats.last_disconnect_us);
        Duration::from_micros(last.saturating_sub(chat_start_us))
    } else {
        chat_start.elapsed()
    }
    .min(config.duration);
    display.chat(chat_time, stats);
    let ended_early = all_gone.then(|| {
        let text = format!(
            "no session alive after {} of the {} window",
            human_duration(chat_time),
            human_duration(config.duration)
        );
        tracing::warn!("{text}: stopping early");
        text
    });

    // 3. Drain what is in flight.
    display.draining();
    let last_delivery = if !all_gone && (config.period().is_some() || moving) {
        drain(&config, stats, stop)
    } else {
        Instant::now()
    };
    let receive_time = if all_gone {
        chat_time
    } else {
        last_delivery
            .saturating_duration_since(chat_start)
            .max(chat_time)
    };

    if !config.hold.is_zero() && !all_gone {
        stop.wait(config.hold);
    }

    // 4. Stop the sessions; what ends now is not an error.
    stats.finishing.store(true, Ordering::Release);
    clients.stop();
    follower.stop();
    clients.join();
    display.finish();

    let mut report = build_report(
        &config,
        &sources,
        &clients,
        stats,
        (chat_time, receive_time),
        stop.is_set(),
    );
    report.ended_early = ended_early;
    Ok(report)
}

/// The transfer counters (told, followed, failed), which run over the
/// whole run: the window's are the difference of two readings.
fn follow_counts(stats: &LoadStats) -> [u64; 3] {
    [
        LoadStats::get(&stats.transfers_told),
        LoadStats::get(&stats.transfers),
        LoadStats::get(&stats.transfer_errors),
    ]
}

/// True once every connect was tried and no session is connected: nobody
/// is left to send or receive.
fn none_alive(clients: &Clients, stats: &LoadStats) -> bool {
    clients.connecting_done()
        && LoadStats::get(&stats.connected) <= LoadStats::get(&stats.disconnected)
        && LoadStats::get(&stats.in_transit) == 0
}

/// The packet settings of every client connection: the ids a client
/// takes, no rate limits.
pub(crate) fn packet_config() -> PacketConfig {
    PacketConfig::default()
        .with_known_ids(CLIENT_RECEIVES_IDS.iter().copied())
        .with_rate_limits(RateLimits::unlimited())
}

/// One client service per node, the sessions spread evenly.
fn start_clients(
    config: &LoadConfig,
    sources: &[std::net::IpAddr],
    shared: &Arc<RunShared>,
) -> anyhow::Result<Clients> {
    let addrs = config.addrs();
    let mut services = Vec::with_capacity(addrs.len());
    for (node, addr) in addrs.iter().enumerate() {
        let mut node_config = config.clone();
        node_config.addr = *addr;
        node_config.sessions = share(config.sessions, addrs.len(), node);
        services.push(start_node_clients(&node_config, sources, shared)?);
    }
    Ok(Clients::new(services, addrs))
}

fn start_node_clients(
    config: &LoadConfig,
    sources: &[std::net::IpAddr],
    shared: &Arc<RunShared>,
) -> anyhow::Result<ClientService> {
    let packet_config = packet_config();
    let on_error = Arc::clone(shared);
    let factory = Arc::clone(shared);
    let mut builder = ClientService::builder(config.addr)
        .backend(config.backend)
        .sessions(config.sessions)
        .source_addrs(sources.to_vec())
        .connect_timeout(config.connect_timeout)
        .transport(config.transport.clone())
        .shutdown_timeout(Duration::from_secs(2))
        .on_connect_error(move |failure| {
            let stats = &on_error.stats;
            let failed = stats.connect_failed.fetch_add(1, Ordering::Relaxed) + 1;
            stats.error(kind::CONNECT_FAILED);
            if failed <= LOGGED_CONNECT_ERRORS {
                tracing::warn!(
                    session = failure.index,
                    addr = %failure.addr,
                    source = ?failure.source,
                    "connect failed: {}",
                    failure.error
                );
            }
        })
        .session(move || {
            PacketSession::new(GameClient::new(Arc::clone(&factory)), packet_config.clone())
        });
    if let Some(workers) = config.workers {
        builder = builder.workers(workers);
    }
    if let Some(quic) = &config.quic {
        builder = builder.quic(quic.clone());
    }
    Ok(builder.start()?)
}

/// Waits until every message sent came back to its sender and deliveries
/// have been quiet for a moment, or deliveries stopped for a second, or the
/// drain timeout passed. Returns when the last delivery was seen.
fn drain(config: &LoadConfig, stats: &LoadStats, stop: &StopSignal) -> Instant {
    const QUIET_WHEN_COMPLETE: Duration = Duration::from_millis(150);
    const QUIET_GIVE_UP: Duration = Duration::from_secs(1);
    let deadline = Instant::now() + config.drain_timeout;
    let delivered = || LoadStats::get(&stats.deliveries) + LoadStats::get(&stats.move_deliveries);
    let mut last = delivered();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && !stop.is_set() {
        stop.wait(Duration::from_millis(25));
        let now = Instant::now();
        let deliveries = delivered();
        if deliveries != last {
            last = deliveries;
            quiet_since = now;
            continue;
        }
        let quiet = now - quiet_since;
        let complete = LoadStats::get(&stats.own_echoes) >= LoadStats::get(&stats.sent)
            && LoadStats::get(&stats.own_moves) >= LoadStats::get(&stats.moves_sent);
        // A client between two nodes is waited for (a transfer, a
        // reconnect after its node died), within the drain's timeout.
        let settled = LoadStats::get(&stats.in_transit) == 0;
        if settled && ((complete && quiet >= QUIET_WHEN_COMPLETE) || quiet >= QUIET_GIVE_UP) {
            break;
        }
    }
    quiet_since
}

fn build_report(
    config: &LoadConfig,
    sources: &[std::net::IpAddr],
    clients: &Clients,
    stats: &LoadStats,
    (chat_time, receive_time): (Duration, Duration),
    interrupted: bool,
) -> LoadReport {
    let chat_secs = chat_time.as_secs_f64();
    let receive_secs = receive_time.as_secs_f64();
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let sent = LoadStats::get(&stats.sent);
    let deliveries = LoadStats::get(&stats.deliveries);
    let connect_failed = clients.failed();
    let errors = stats.errors();
    let moves_sent = LoadStats::get(&stats.moves_sent);
    let move_deliveries = LoadStats::get(&stats.move_deliveries);
    let spawns = LoadStats::get(&stats.spawns);
    let movement =
        (config.scenario == Scenario::Move || move_deliveries > 0 || spawns > 0).then(|| {
            MoveSummary {
                rate_per_session: if config.scenario == Scenario::Move {
                    config.move_rate
                } else {
                    0.0
                },
                speed: config.speed,
                moves_sent,
                moves_per_sec: per_sec(moves_sent, chat_secs),
                deliveries: move_deliveries,
                deliveries_per_sec: per_sec(move_deliveries, receive_secs),
                own_moves: LoadStats::get(&stats.own_moves),
                by_datagram: clients.datagram_packets().min(move_deliveries),
                by_stream: move_deliveries.saturating_sub(clients.datagram_packets()),
                lost: moves_sent.saturating_sub(LoadStats::get(&stats.own_moves)),
                latency_us: LatencySummary::from_histogram(&stats.move_latency_snapshot()),
                players_spawned: spawns,
                players_despawned: LoadStats::get(&stats.despawns),
                largest_spawn_bytes: LoadStats::get(&stats.largest_spawn_bytes),
                corrections: LoadStats::get(&stats.corrections),
            }
        });
    LoadReport {
        scenario: config.scenario.name().to_owned(),
        addr: clients
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        backend: clients.backend().to_string(),
        rate_per_session: config.rate,
        duration_secs: config.duration.as_secs_f64(),
        chat_secs,
        receive_secs,
        source_addrs: sources.iter().map(ToString::to_string).collect(),
        interrupted,
        sessions: SessionSummary {
            requested: config.sessions as u64,
            connected: clients.connected(),
            logged_in: LoadStats::get(&stats.logged_in),
            entered: LoadStats::get(&stats.entered),
            in_game_at_end: LoadStats::get(&stats.entered)
                .saturating_sub(LoadStats::get(&stats.lost_in_game))
                .saturating_sub(LoadStats::get(&stats.in_transit)),
            failed: connect_failed + LoadStats::get(&stats.failed_sessions),
        },
        messages_sent: sent,
        deliveries_received: deliveries,
        own_echoes: LoadStats::get(&stats.own_echoes),
        sent_per_sec: per_sec(sent, chat_secs),
        deliveries_per_sec: per_sec(deliveries, receive_secs),
        latency_us: LatencySummary::from_histogram(&stats.latency_snapshot()),
        movement,
        follow: (clients.addrs.len() > 1 || LoadStats::get(&stats.transfers_told) > 0).then(|| {
            FollowSummary {
                transfers_told: LoadStats::get(&stats.transfers_told),
                transfers: LoadStats::get(&stats.transfers),
                transfer_time_us: LatencySummary::from_histogram(&stats.transfer_time_snapshot()),
                transfer_errors: LoadStats::get(&stats.transfer_errors),
                reconnects: LoadStats::get(&stats.reconnects),
                reconnect_attempts_failed: LoadStats::get(&stats.reconnect_attempts_failed),
                in_transit_at_end: LoadStats::get(&stats.in_transit),
                violations: [
                    kind::MOVE_FROM_UNSEEN,
                    kind::SPAWN_OF_SEEN,
                    kind::DESPAWN_OF_UNSEEN,
                ]
                .iter()
                .map(|kind| errors.get(*kind).copied().unwrap_or(0))
                .sum(),
            }
        }),
        errors_total: errors.values().sum(),
        errors,
        ended_early: None,
        zone_latency: config.zones.as_ref().map(|_| {
            let split = stats.move_split.lock();
            ZoneLatency {
                local_us: LatencySummary::from_histogram(&split.local),
                cross_us: LatencySummary::from_histogram(&split.cross),
            }
        }),
        nodes: (clients.addrs.len() > 1).then(|| {
            let split = stats.split.lock();
            NodeSplit {
                addrs: clients.addrs.iter().map(ToString::to_string).collect(),
                sessions_per_node: clients.connected_per_node(),
                local_deliveries: LoadStats::get(&stats.local_deliveries),
                cross_deliveries: LoadStats::get(&stats.cross_deliveries),
                local_latency_us: LatencySummary::from_histogram(&split.local),
                cross_latency_us: LatencySummary::from_histogram(&split.cross),
            }
        }),
    }
}
