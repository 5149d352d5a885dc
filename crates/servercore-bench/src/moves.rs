//! The move scenario of `servercore bench`: players random-walking a world,
//! on each server (the engine on each backend and the tokio world server,
//! all at the same send interval: the game's world tick, and the tokio
//! writers waiting one tick before they drain), then a capacity sweep per
//! server.
//!
//! The load is the dummy client's own move scenario
//! ([`servercore_load::client::run_load_observed`]) on the engine's client side, in
//! the harness process; the server runs in its own `bench-server` process,
//! fresh for every measurement (an empty world each time). The harness
//! reads the server's CPU, its gathered writes and the machine's TCP
//! segments exactly over the client's measured window (a [`LoadObserver`]),
//! and divides by the `S_MOVE` deliveries counted in that window.
//!
//! Over `--transports quic` the servers are the game server with its QUIC
//! listener and the tokio world on a quinn endpoint, and the dummy clients
//! connect over QUIC: moves go both ways as datagrams.
//!
//! Worlds ([`WorldShape`]): the fixed default world (2000 × 2000); a
//! constant density (the world grows with the players, 1,000 per 2000 ×
//! 2000); or a crowd (everyone in a world of one cell).
//!
//! Capacity: the sweep runs its player counts in order, each for a short
//! window, and stops at the first that fails (own-move p99 above the limit,
//! any error, a player that did not enter) or when the server's time budget
//! is spent. The capacity is the last count that held. A step where the
//! load generator itself was saturated (its CPU at its cores' worth) is
//! invalid: the sweep stops there without blaming the server.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::child::ServerProcess;
use super::load::{Timing, Window, WindowStart};
use super::move_report::{CapacityResult, CapacityStep, MoveResult};
use super::report::{format_micros, format_rate, WindowCpu};
use super::{Bench, Impl, Scenario};
use servercore_load::client::{
    run_load_observed, LoadConfig, LoadObserver, Scenario as Load, WindowCounts,
};
use servercore_load::StopSignal;

/// Share of its cores at which the load generator counts as saturated.
const SATURATED: f64 = 0.9;

/// One server the move scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The implementation.
    pub implementation: Impl,
}

impl Variant {
    /// The column name: `uring`, `poll`, `tokio`.
    pub fn label(&self) -> String {
        self.implementation.name().to_string()
    }
}

/// The world the players walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldShape {
    /// The game's default world, 2000 × 2000, whatever the player count.
    Fixed,
    /// 1,000 players per 2000 × 2000: the side grows with √players.
    Density,
    /// Everyone in one 100 × 100 cell (the whole world).
    Crowd,
}

impl WorldShape {
    /// The world's side for `players`.
    pub fn side(self, players: usize) -> f32 {
        match self {
            WorldShape::Fixed => 2000.0,
            WorldShape::Density => (2000.0 * (players as f64 / 1000.0).sqrt()).max(100.0) as f32,
            WorldShape::Crowd => 100.0,
        }
    }

    /// How the tables describe it.
    pub fn describe(self) -> &'static str {
        match self {
            WorldShape::Fixed => "the default world (2000², 100-unit cells)",
            WorldShape::Density => {
                "a world that grows with the players (1,000 per 2000², 100-unit cells)"
            }
            WorldShape::Crowd => "a crowd: a world of one 100 × 100 cell",
        }
    }
}

/// The move scenario's resolved settings.
#[derive(Debug, Clone)]
pub struct MovePlan {
    /// Players of the main measurement.
    pub players: usize,
    /// The servers, tokio last.
    pub variants: Vec<Variant>,
    /// The world they walk.
    pub world: WorldShape,
    /// The send interval of every server.
    pub tick: Duration,
    /// The capacity sweep's player counts, ascending (none for a crowd).
    pub steps: Vec<usize>,
    /// The main measurement's window.
    pub window: Duration,
    /// Each sweep step's window.
    pub step_window: Duration,
    /// Moves before each window opens.
    pub warmup: Duration,
    /// Own-move p99 a sweep step may reach.
    pub p99_limit: Duration,
    /// Longest a variant's sweep may take before it stops starting steps.
    pub sweep_budget: Duration,
    /// `C_MOVE` per second per player.
    pub move_rate: f64,
    /// Walking speed.
    pub speed: f64,
}

/// Reads the server's CPU, its writes and the machine's counters over the
/// client's measured window.
struct WindowProbe<'a> {
    server: &'a mut ServerProcess,
    timing: Timing,
    start: Option<anyhow::Result<WindowStart>>,
    writes_before: Option<u64>,
    window: Option<anyhow::Result<Window>>,
    counts: WindowCounts,
}

impl LoadObserver for WindowProbe<'_> {
    fn window_opened(&mut self) {
        self.writes_before = self.server.writes().ok().flatten();
        self.start = Some(WindowStart::now(self.server.pid(), &self.timing));
    }

    fn window_closed(&mut self, counts: WindowCounts) {
        self.counts = counts;
        let pid = self.server.pid();
        self.window = match self.start.take() {
            Some(Ok(start)) => Some(start.close(pid)),
            Some(Err(error)) => Some(Err(error)),
            None => None,
        };
        let writes_after = self.server.writes().ok().flatten();
        if let Some(Ok(window)) = &mut self.window {
            window.server_writes = match (self.writes_before, writes_after) {
                (Some(before), Some(after)) => Some(after.saturating_sub(before)),
                _ => None,
            };
        }
    }
}

impl Bench {
    /// Runs the move scenario on every variant: the main measurement, then
    /// the capacity sweep.
    pub(super) fn moves(&mut self) {
        let plan = self.plan.moves.clone();
        for variant in &plan.variants {
            let label = variant.label();
            let main = match self.move_once(*variant, plan.players, plan.window) {
                Ok(result) => {
                    if let Some(failure) = result.failure(u64::MAX) {
                        self.report
                            .notes
                            .push(format!("move {} on {label}: {failure}", plan.players));
                    }
                    self.report.moves.push(result.clone());
                    Some(result)
                }
                Err(error) => {
                    self.failures += 1;
                    let note = format!("move on {label} failed: {error:#}");
                    self.progress.eprintln(&format!("  {note}"));
                    self.report.notes.push(note);
                    None
                }
            };
            if !plan.steps.is_empty() {
                let capacity = self.sweep(*variant, &plan, main);
                self.report.capacity.push(capacity);
            }
        }
    }

    /// The capacity sweep of one variant (`main`, the main measurement,
    /// stands in for the step of the same player count).
    fn sweep(
        &mut self,
        variant: Variant,
        plan: &MovePlan,
        main: Option<MoveResult>,
    ) -> CapacityResult {
        let label = variant.label();
        let limit_us = plan.p99_limit.as_micros() as u64;
        let started = Instant::now();
        let mut steps = Vec::new();
        let mut capacity = None;
        let mut stopped = None;
        for &players in &plan.steps {
            if started.elapsed() >= plan.sweep_budget {
                stopped = Some(format!(
                    "the sweep's time budget ({:.0} s) was spent before {players} players",
                    plan.sweep_budget.as_secs_f64()
                ));
                break;
            }
            let result = match &main {
                Some(main) if main.players == players => Ok(main.clone()),
                _ => self.move_once(variant, players, plan.step_window),
            };
            let result = match result {
                Ok(result) => result,
                Err(error) => {
                    stopped = Some(format!(
                        "{players} players could not be measured: {error:#}"
                    ));
                    break;
                }
            };
            let saturated = result.load_saturated;
            let failure = if saturated {
                None
            } else {
                result.failure(limit_us)
            };
            self.progress.println(&format!(
                "  move {players} · {label}: {} deliveries, own-move p99 {}, server {:.2} cores, load gen {:.2} cores: {}",
                format_rate(result.deliveries_per_sec),
                format_micros(result.latency.p99_us as f64),
                result.cpu.server_cpu_cores,
                result.cpu.load_cpu_cores,
                if saturated {
                    "invalid: the load generator was saturated"
                } else {
                    failure.as_deref().unwrap_or("held")
                }
            ));
            steps.push(CapacityStep {
                players,
                p50_us: result.latency.p50_us,
                p99_us: result.latency.p99_us,
                deliveries_per_sec: result.deliveries_per_sec,
                server_cpu_us_per_delivery: result.server_cpu_us_per_delivery,
                writes_per_delivery: result.writes_per_delivery,
                server_cpu_cores: result.cpu.server_cpu_cores,
                load_cpu_cores: result.cpu.load_cpu_cores,
                load_saturated: saturated,
                errors_total: result.errors_total,
                failure: failure.clone(),
            });
            if saturated {
                stopped = Some(format!(
                    "the load generator was saturated at {players} players ({:.2} cores): that step is invalid, and the capacity is at least the last step held",
                    result.cpu.load_cpu_cores
                ));
                break;
            }
            if let Some(failure) = failure {
                stopped = Some(format!("{players} players failed: {failure}"));
                break;
            }
            capacity = Some(players);
        }
        CapacityResult {
            implementation: label,
            steps,
            capacity,
            stopped: stopped.unwrap_or_else(|| {
                format!(
                    "every step held, up to {} players (the sweep's last)",
                    plan.steps.last().copied().unwrap_or(0)
                )
            }),
        }
    }

    /// One measurement: a fresh server of `variant`, `players` walking for
    /// the warm-up and `window`.
    fn move_once(
        &mut self,
        variant: Variant,
        players: usize,
        window: Duration,
    ) -> anyhow::Result<MoveResult> {
        let label = variant.label();
        self.progress.phase(
            &format!("move {players} · {label}"),
            "starting the server",
            0,
        );
        let world_size = self.plan.moves.world.side(players);
        let mut spec = self.server_spec(variant.implementation, Scenario::Move);
        // The world runs over plain TCP or QUIC, at the plan's tick for
        // every server.
        let quic = self.transport == super::Transport::Quic;
        if !quic {
            spec.transport = super::Transport::Tcp;
            spec.cert = None;
        }
        let quic_client = match (&self.cert_files, quic) {
            (Some((cert, _)), true) => Some(servercore::QuicClientConfig::new(
                servercore::transport::tls::client_config_from_pem(cert)?,
                "localhost",
            )),
            (None, true) => anyhow::bail!("no certificate for the quic transport"),
            _ => None,
        };
        spec.send_coalescing = Some(Duration::ZERO);
        spec.tick = Some(self.plan.moves.tick);
        spec.world_size = Some(world_size);
        let mut server = ServerProcess::spawn(&spec, &self.progress)?;
        self.progress
            .step("players entering, walking, measuring", 0);
        let plan = &self.plan.moves;
        let mut config = LoadConfig::new(server.addr());
        config.sessions = players;
        config.scenario = Load::Move;
        config.rate = 0.0;
        config.move_rate = plan.move_rate;
        config.speed = plan.speed;
        config.world_size = f64::from(world_size);
        config.warmup = plan.warmup;
        config.duration = window;
        config.connect_timeout = Duration::from_secs(10);
        config.setup_timeout = Duration::from_secs(60);
        config.drain_timeout = Duration::from_secs(3);
        config.account_prefix = "bench".to_owned();
        // The dummy client over QUIC: its moves and the server's go as
        // datagrams.
        config.quic = quic_client;
        let mut probe = WindowProbe {
            server: &mut server,
            timing: Timing {
                warmup: plan.warmup,
                duration: window,
                perf: false,
            },
            start: None,
            writes_before: None,
            window: None,
            counts: WindowCounts::default(),
        };
        let report = run_load_observed(config, false, &StopSignal::new(), &mut probe);
        let (window, counts) = (probe.window.take(), probe.counts);
        let rss_kib = server.rss_kib().ok();
        self.finish(server);
        let report = report?;
        let measured = window
            .context("the measured window never closed")?
            .context("reading the server's counters")?;
        self.check_quiet(&format!("move {players} on {label}"), &measured);
        let mut result = MoveResult::new(
            &label,
            &report,
            measured.elapsed.as_secs_f64(),
            WindowCpu::from_window(&measured),
            counts.move_deliveries,
            measured.tcp_segments,
        );
        result.world_size = world_size;
        result.writes_per_delivery = measured
            .server_writes
            .filter(|_| counts.move_deliveries > 0)
            .map(|writes| writes as f64 / counts.move_deliveries as f64);
        result.server_rss_kib = rss_kib;
        result.load_saturated =
            result.cpu.load_cpu_cores >= SATURATED * self.load_generator_cores() as f64;
        Ok(result)
    }
}

impl Bench {
    /// The cores the load generator may use: those not given to the server
    /// when it is pinned, else every core but the server's workers' worth.
    fn load_generator_cores(&self) -> usize {
        let cpus = super::procfs::allowed_cpus().len().max(1);
        match (self.plan.pin_server, self.plan.workers) {
            (Some(_), _) => cpus.saturating_sub(1).max(1),
            (None, Some(workers)) => cpus.saturating_sub(workers).max(1),
            (None, None) => cpus,
        }
    }
}
