//! The run's plan: the options resolved and checked against the machine
//! (scenarios, sizes, timing, descriptor limits) before anything starts.

use std::time::Duration;

use crate::load::Timing;
use crate::moves;
use crate::moves::{MovePlan, Variant};

use crate::options::*;

/// CPU (in cores) other processes may use during a window before the run
/// notes that the machine was busy.
pub(crate) const BUSY_MACHINE_CORES: f64 = 0.25;

/// Descriptors kept free for everything but the benchmark's connections.
pub(crate) const SPARE_FDS: u64 = 512;

/// The run's resolved settings.
pub(crate) struct Plan {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) implementations: Vec<Impl>,
    pub(crate) timing: Timing,
    pub(crate) broadcast_warmup: Duration,
    pub(crate) echo_clients: Vec<usize>,
    pub(crate) broadcast_sessions: usize,
    pub(crate) chat_interval: Duration,
    pub(crate) idle_sessions: usize,
    pub(crate) workers: Option<usize>,
    pub(crate) max_sessions: usize,
    pub(crate) chat_server: ChatServer,
    pub(crate) repeat: usize,
    pub(crate) send_coalescing: Option<Duration>,
    pub(crate) tick: Duration,
    pub(crate) tokio_tick: Option<Duration>,
    pub(crate) pin_server: Option<usize>,
    pub(crate) moves: MovePlan,
    pub(crate) zones: crate::zones::ZonesPlan,
}

impl Plan {
    pub(crate) fn new(
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
        let zones = if scenarios.contains(&Scenario::Zones) {
            let mut zones = crate::zones::ZonesPlan::new(args, &implementations, &timing, notes)?;
            anyhow::ensure!(
                zones.players <= usable,
                "the open-file limit ({open_file_limit}) is too low for {} players",
                zones.players
            );
            zones.steps.retain(|&n| n <= usable);
            zones
        } else {
            crate::zones::ZonesPlan::new(args, &[Impl::Poll], &timing, &mut Vec::new())?
        };
        let max_sessions = max_sessions.max(zones.players + 1000);
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
            zones,
        })
    }
}
