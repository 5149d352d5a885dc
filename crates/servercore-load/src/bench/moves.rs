//! The move scenario of `servercore bench`: players random-walking the
//! default world, on each server variant (the engine on each backend, with
//! send coalescing off and on, and the tokio world server), then a capacity
//! sweep per variant.
//!
//! The load is the dummy client's own move scenario
//! ([`crate::client::run_load_observed`]) on the engine's client side, in
//! the harness process; the server runs in its own `bench-server` process,
//! fresh for every measurement (an empty world each time). The harness
//! reads the server's CPU and the machine's TCP segments exactly over the
//! client's measured window (a [`LoadObserver`]), and divides by the
//! `S_MOVE` deliveries counted in that window.
//!
//! Capacity: the sweep runs its player counts in order, each for a short
//! window, and stops at the first that fails (own-move p99 above the limit,
//! any error, a player that did not enter) or when the variant's time
//! budget is spent. The capacity is the last count that held. The load
//! generator shares the machine: where it saturates first, the capacity is
//! the machine's, not the server's (the tables show its CPU).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::child::ServerProcess;
use super::load::{Timing, Window, WindowStart};
use super::move_report::{CapacityResult, CapacityStep, MoveResult};
use super::report::{format_micros, format_rate, WindowCpu};
use super::{Bench, Impl, Scenario, Transport};
use crate::client::{run_load_observed, LoadConfig, LoadObserver, Scenario as Load, WindowCounts};
use crate::stop::StopSignal;

/// One server setting the move scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The implementation.
    pub implementation: Impl,
    /// The engine's send coalescing interval (`None`: off; tokio: none).
    pub coalescing: Option<Duration>,
}

impl Variant {
    /// The column name: `uring`, `uring+5ms`, `tokio`.
    pub fn label(&self) -> String {
        match self.coalescing {
            Some(interval) => format!(
                "{}+{}ms",
                self.implementation.name(),
                interval.as_secs_f64() * 1000.0
            ),
            None => self.implementation.name().to_string(),
        }
    }
}

/// The move scenario's resolved settings.
#[derive(Debug, Clone)]
pub struct MovePlan {
    /// Players of the main measurement.
    pub players: usize,
    /// The variants, tokio last.
    pub variants: Vec<Variant>,
    /// The capacity sweep's player counts, ascending.
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

/// Reads the server's CPU and the machine's counters over the client's
/// measured window.
struct WindowProbe {
    server_pid: u32,
    timing: Timing,
    start: Option<anyhow::Result<WindowStart>>,
    window: Option<anyhow::Result<Window>>,
    counts: WindowCounts,
}

impl LoadObserver for WindowProbe {
    fn window_opened(&mut self) {
        self.start = Some(WindowStart::now(self.server_pid, &self.timing));
    }

    fn window_closed(&mut self, counts: WindowCounts) {
        self.counts = counts;
        self.window = match self.start.take() {
            Some(Ok(start)) => Some(start.close(self.server_pid)),
            Some(Err(error)) => Some(Err(error)),
            None => None,
        };
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
            let capacity = self.sweep(*variant, &plan, main);
            self.report.capacity.push(capacity);
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
            let failure = result.failure(limit_us);
            self.progress.println(&format!(
                "  move {players} · {label}: {} deliveries, own-move p99 {}, server {:.2} cores, load gen {:.2} cores: {}",
                format_rate(result.deliveries_per_sec),
                format_micros(result.latency.p99_us as f64),
                result.cpu.server_cpu_cores,
                result.cpu.load_cpu_cores,
                failure.as_deref().unwrap_or("held")
            ));
            steps.push(CapacityStep {
                players,
                p99_us: result.latency.p99_us,
                deliveries_per_sec: result.deliveries_per_sec,
                server_cpu_cores: result.cpu.server_cpu_cores,
                load_cpu_cores: result.cpu.load_cpu_cores,
                errors_total: result.errors_total,
                failure: failure.clone(),
            });
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
        let server = ServerProcess::spawn(
            variant.implementation,
            Scenario::Move,
            self.plan.workers,
            self.plan.max_sessions,
            self.plan.chat_server,
            Some(variant.coalescing.unwrap_or(Duration::ZERO)),
            // The world runs over plain TCP.
            Transport::Tcp,
            None,
            &self.progress,
        )?;
        self.progress
            .step("players entering, walking, measuring", 0);
        let plan = &self.plan.moves;
        let mut config = LoadConfig::new(server.addr());
        config.sessions = players;
        config.scenario = Load::Move;
        config.rate = 0.0;
        config.move_rate = plan.move_rate;
        config.speed = plan.speed;
        config.warmup = plan.warmup;
        config.duration = window;
        config.connect_timeout = Duration::from_secs(10);
        config.setup_timeout = Duration::from_secs(60);
        config.drain_timeout = Duration::from_secs(3);
        config.account_prefix = "bench".to_owned();
        let mut probe = WindowProbe {
            server_pid: server.pid(),
            timing: Timing {
                warmup: plan.warmup,
                duration: window,
                perf: false,
            },
            start: None,
            window: None,
            counts: WindowCounts::default(),
        };
        let report = run_load_observed(config, false, &StopSignal::new(), &mut probe);
        self.finish(server);
        let report = report?;
        let measured = probe
            .window
            .context("the measured window never closed")?
            .context("reading the server's counters")?;
        self.check_quiet(&format!("move {players} on {label}"), &measured);
        Ok(MoveResult::new(
            &label,
            &report,
            measured.elapsed.as_secs_f64(),
            WindowCpu::from_window(&measured),
            probe.counts.move_deliveries,
            measured.tcp_segments,
        ))
    }
}
