//! The move scenario's records and tables: one [`MoveResult`] per server
//! at the run's player count, one [`CapacityResult`] per server from the
//! sweep, their tables with ratios against tokio (every server at the same
//! send tick), and their targets (CPU per delivery ≤ 0.6× tokio, capacity
//! ≥ 1.5× tokio).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{
    format_count, ratio, Latency, Section, TargetKind, TargetResult, Unit, WindowCpu, BASELINE,
};
use servercore_load::client::{LatencySummary, LoadReport};

/// What the move scenario ran with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveSettings {
    /// Players of the main measurement.
    pub players: usize,
    /// `C_MOVE` per second per player.
    pub move_rate: f64,
    /// Walking speed, units per second.
    pub speed: f64,
    /// The send tick of every server, ms.
    #[serde(default)]
    pub tick_ms: f64,
    /// The world, in words.
    #[serde(default)]
    pub world: String,
    /// The server variants compared (columns), tokio last.
    pub variants: Vec<String>,
    /// Player counts the capacity sweep tries, in order.
    pub capacity_steps: Vec<usize>,
    /// Measured window of each sweep step, seconds.
    pub capacity_window_seconds: f64,
    /// Own-move p99 a sweep step may reach and still pass, µs.
    pub capacity_p99_limit_us: u64,
}

/// One move measurement of one server variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveResult {
    /// The variant: `uring`, `uring+5ms` (send coalescing), `tokio`, ...
    pub implementation: String,
    /// Players asked for.
    pub players: usize,
    /// Players that entered the world.
    pub entered: u64,
    /// Window length, seconds.
    pub seconds: f64,
    /// `C_MOVE` sent in the window.
    pub moves_sent: u64,
    /// Of those, the ones whose own `S_MOVE` came back (by the end of the
    /// drain); a server that sheds load loses the rest.
    #[serde(default)]
    pub own_moves: u64,
    /// `S_MOVE` received in the window, by all players.
    pub deliveries: u64,
    /// `S_MOVE`s that came by QUIC datagram, over the whole run (0 over
    /// TCP).
    #[serde(default)]
    pub moves_by_datagram: u64,
    /// Deliveries per second of the window.
    pub deliveries_per_sec: f64,
    /// Server CPU per delivery, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Where the CPU went during the window.
    #[serde(flatten)]
    pub cpu: WindowCpu,
    /// TCP segments sent per delivery (both sides, the whole machine).
    pub tcp_segments_per_delivery: Option<f64>,
    /// Own-move latency: `C_MOVE` sent until its `S_MOVE` came back.
    pub latency: Latency,
    /// Players spawned to players (each listed player of an `S_SPAWN`).
    pub spawns: u64,
    /// Players despawned from players.
    pub despawns: u64,
    /// Own moves the server corrected.
    pub corrections: u64,
    /// Errors by kind (the client's kinds: `move_from_unseen`, ...).
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub errors_total: u64,
    /// The world's side.
    #[serde(default)]
    pub world_size: f32,
    /// The server's gathered socket writes per delivery.
    #[serde(default)]
    pub writes_per_delivery: Option<f64>,
    /// The server's resident memory after the window, KiB.
    #[serde(default)]
    pub server_rss_kib: Option<u64>,
    /// The load generator used its cores' worth of CPU: the measurement
    /// shows the load generator's limit, not the server's.
    #[serde(default)]
    pub load_saturated: bool,
}

impl MoveResult {
    /// The record of one load run whose window the harness measured.
    pub fn new(
        implementation: &str,
        report: &LoadReport,
        seconds: f64,
        cpu: WindowCpu,
        deliveries: u64,
        tcp_segments: u64,
    ) -> MoveResult {
        let movement = report.movement.unwrap_or_default();
        MoveResult {
            implementation: implementation.to_string(),
            players: report.sessions.requested as usize,
            entered: report.sessions.entered,
            seconds,
            moves_sent: movement.moves_sent,
            own_moves: movement.own_moves,
            deliveries,
            moves_by_datagram: movement.by_datagram,
            deliveries_per_sec: deliveries as f64 / seconds.max(1e-9),
            server_cpu_us_per_delivery: cpu.server_us_per(deliveries),
            cpu,
            tcp_segments_per_delivery: (deliveries > 0)
                .then(|| tcp_segments as f64 / deliveries as f64),
            latency: latency_of(&movement.latency_us),
            spawns: movement.players_spawned,
            despawns: movement.players_despawned,
            corrections: movement.corrections,
            errors: report.errors.clone(),
            errors_total: report.errors_total,
            world_size: 0.0,
            writes_per_delivery: None,
            server_rss_kib: None,
            load_saturated: false,
        }
    }

    /// Why this measurement does not hold a step of a capacity sweep, in a
    /// few words: a player that did not enter, any error, no own move back,
    /// more than 0.1 % of the own moves lost, or own-move p99 above
    /// `p99_limit_us` (`None`: it holds).
    pub fn failure(&self, p99_limit_us: u64) -> Option<String> {
        if self.entered < self.players as u64 {
            Some(format!(
                "{} of {} players entered",
                self.entered, self.players
            ))
        } else if self.errors_total > 0 {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            Some(format!("errors: {}", kinds.join(", ")))
        } else if self.latency.count == 0 {
            Some("no own move came back".to_string())
        } else if self.moves_sent.saturating_sub(self.own_moves) > self.moves_sent / 1000 {
            Some(format!(
                "{} of {} own moves never came back",
                self.moves_sent - self.own_moves,
                self.moves_sent
            ))
        } else if self.latency.p99_us > p99_limit_us {
            Some(format!(
                "own-move p99 {} ms",
                self.latency.p99_us as f64 / 1000.0
            ))
        } else {
            None
        }
    }
}

/// The client's latency summary in the harness's shape.
pub fn latency_of(summary: &LatencySummary) -> Latency {
    Latency {
        count: summary.samples,
        mean_us: summary.mean,
        p50_us: summary.p50,
        p90_us: summary.p90,
        p99_us: summary.p99,
        p999_us: summary.p999,
        max_us: summary.max,
    }
}

/// One step of a capacity sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityStep {
    /// Players in the world.
    pub players: usize,
    /// Own-move p50, µs.
    #[serde(default)]
    pub p50_us: u64,
    /// Own-move p99, µs.
    pub p99_us: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Server CPU per delivery, µs.
    #[serde(default)]
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The server's gathered writes per delivery.
    #[serde(default)]
    pub writes_per_delivery: Option<f64>,
    /// Server CPU, cores.
    pub server_cpu_cores: f64,
    /// Load generator CPU, cores.
    pub load_cpu_cores: f64,
    /// The load generator was saturated: the step is invalid.
    #[serde(default)]
    pub load_saturated: bool,
    /// All errors.
    pub errors_total: u64,
    /// Why the step failed (`None`: it held).
    pub failure: Option<String>,
}

/// The capacity sweep of one server variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityResult {
    /// The variant.
    pub implementation: String,
    /// The steps run, in order.
    pub steps: Vec<CapacityStep>,
    /// The most players a step held with (`None`: not even the first).
    pub capacity: Option<usize>,
    /// Why the sweep stopped: the failing step, the last step, or the time
    /// budget.
    pub stopped: String,
}

/// The tables of the move scenario: the measurement at the run's player
/// count, then the capacity sweep.
pub fn move_sections(
    settings: Option<&MoveSettings>,
    results: &[MoveResult],
    capacity: &[CapacityResult],
) -> Vec<Section> {
    let Some(settings) = settings else {
        return Vec::new();
    };
    let columns = &settings.variants;
    let mut sections = Vec::new();
    if !results.is_empty() {
        let picked: Vec<Option<&MoveResult>> = columns
            .iter()
            .map(|c| results.iter().find(|r| &r.implementation == c))
            .collect();
        let pick = |f: &dyn Fn(&MoveResult) -> Option<f64>| -> Vec<Option<f64>> {
            picked.iter().map(|r| r.and_then(f)).collect()
        };
        let mut section = Section::new(
            format!(
                "move: {} players random-walking {} at {} moves/s, {} units/s; every server sends once per {} ms tick; window {:.1} s",
                format_count(settings.players as f64),
                if settings.world.is_empty() {
                    "the default world (2000², 100-unit cells)"
                } else {
                    &settings.world
                },
                settings.move_rate,
                settings.speed,
                settings.tick_ms,
                results[0].seconds
            ),
            columns.clone(),
        );
        section
            .row(
                "deliveries/s",
                Unit::Rate,
                pick(&|r| Some(r.deliveries_per_sec)),
            )
            .row(
                "server CPU/delivery",
                Unit::Micros,
                pick(&|r| r.server_cpu_us_per_delivery),
            )
            .optional_row(
                "writes/delivery",
                Unit::Decimal,
                pick(&|r| r.writes_per_delivery),
            )
            .optional_row(
                "TCP segments/delivery",
                Unit::Decimal,
                pick(&|r| r.tcp_segments_per_delivery),
            );
        let latency = |f: fn(&Latency) -> u64| {
            pick(&move |r: &MoveResult| (r.latency.count > 0).then(|| f(&r.latency) as f64))
        };
        section
            .row("own-move p50", Unit::Micros, latency(|l| l.p50_us))
            .row("own-move p90", Unit::Micros, latency(|l| l.p90_us))
            .row("own-move p99", Unit::Micros, latency(|l| l.p99_us))
            .row("own-move p99.9", Unit::Micros, latency(|l| l.p999_us))
            .row("own-move max", Unit::Micros, latency(|l| l.max_us))
            .plain_row(
                "server CPU (cores)",
                Unit::Cores,
                pick(&|r| Some(r.cpu.server_cpu_cores)),
            )
            .plain_row(
                "load gen CPU (cores)",
                Unit::Cores,
                pick(&|r| Some(r.cpu.load_cpu_cores)),
            )
            .plain_row(
                "load gen saturated (1: invalid)",
                Unit::Count,
                pick(&|r| Some(f64::from(u8::from(r.load_saturated)))),
            )
            .plain_row(
                "other processes (cores)",
                Unit::Cores,
                pick(&|r| Some(r.cpu.other_cpu_cores)),
            )
            .optional_row(
                "server RSS (KiB)",
                Unit::Count,
                pick(&|r| r.server_rss_kib.map(|kib| kib as f64)),
            )
            .plain_row("spawns", Unit::Count, pick(&|r| Some(r.spawns as f64)))
            .plain_row("despawns", Unit::Count, pick(&|r| Some(r.despawns as f64)))
            .plain_row(
                "corrections",
                Unit::Count,
                pick(&|r| Some(r.corrections as f64)),
            )
            .plain_row(
                "own moves lost",
                Unit::Count,
                pick(&|r| Some(r.moves_sent.saturating_sub(r.own_moves) as f64)),
            )
            .plain_row(
                "errors",
                Unit::Count,
                pick(&|r| Some(r.errors_total as f64)),
            );
        sections.push(section);
    }
    if !capacity.is_empty() {
        let mut section = Section::new(
            format!(
                "move capacity: the most players held at own-move p99 ≤ {} ms with no errors (steps {}; {:.1} s window each)",
                settings.capacity_p99_limit_us / 1000,
                settings
                    .capacity_steps
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                settings.capacity_window_seconds
            ),
            columns.clone(),
        );
        let picked: Vec<Option<&CapacityResult>> = columns
            .iter()
            .map(|c| capacity.iter().find(|r| &r.implementation == c))
            .collect();
        section.row(
            "capacity (players)",
            Unit::Count,
            picked
                .iter()
                .map(|r| r.and_then(|r| r.capacity.map(|n| n as f64)))
                .collect(),
        );
        for &players in &settings.capacity_steps {
            let step = |r: &CapacityResult| r.steps.iter().find(|s| s.players == players).cloned();
            let values: Vec<Option<CapacityStep>> =
                picked.iter().map(|r| r.and_then(step)).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let at = format_count(players as f64);
            let column = |f: &dyn Fn(&CapacityStep) -> Option<f64>| -> Vec<Option<f64>> {
                values.iter().map(|s| s.as_ref().and_then(f)).collect()
            };
            section
                .plain_row(
                    &format!("{at}: own-move p50"),
                    Unit::Micros,
                    column(&|s| Some(s.p50_us as f64)),
                )
                .plain_row(
                    &format!("{at}: own-move p99"),
                    Unit::Micros,
                    column(&|s| Some(s.p99_us as f64)),
                )
                .plain_row(
                    &format!("{at}: server CPU/delivery"),
                    Unit::Micros,
                    column(&|s| s.server_cpu_us_per_delivery),
                )
                .plain_row(
                    &format!("{at}: writes/delivery"),
                    Unit::Decimal,
                    column(&|s| s.writes_per_delivery),
                )
                .plain_row(
                    &format!("{at}: server / load gen CPU (cores)"),
                    Unit::Cores,
                    column(&|s| Some(s.server_cpu_cores)),
                )
                .plain_row(
                    &format!("{at}: load gen CPU (cores; invalid if saturated)"),
                    Unit::Cores,
                    column(&|s| Some(s.load_cpu_cores)),
                );
        }
        sections.push(section);
    }
    sections
}

/// The capacity a sweep found is only a lower bound when no step failed:
/// the sweep ran out of steps (or time) before the server did.
fn is_lower_bound(result: &CapacityResult) -> bool {
    result.capacity.is_some()
        && !result.steps.is_empty()
        && result.steps.iter().all(|step| step.failure.is_none())
}

/// Why each variant's sweep stopped, one line each; a sweep whose every
/// step held says its capacity is at least its last step.
pub fn capacity_notes(capacity: &[CapacityResult]) -> Vec<String> {
    capacity
        .iter()
        .map(|r| match r.capacity {
            Some(players) if is_lower_bound(r) => format!(
                "move capacity of {}: ≥ {} players, sweep too short ({}; add larger --capacity-steps)",
                r.implementation,
                format_count(players as f64),
                r.stopped
            ),
            _ => format!("move capacity of {}: {}", r.implementation, r.stopped),
        })
        .collect()
}

/// The move scenario's targets for every variant that is not tokio.
pub fn move_targets(results: &[MoveResult], capacity: &[CapacityResult]) -> Vec<TargetResult> {
    let mut targets = Vec::new();
    if let Some(base) = results
        .iter()
        .find(|r| r.implementation == BASELINE)
        .and_then(|r| r.server_cpu_us_per_delivery)
    {
        for result in results.iter().filter(|r| r.implementation != BASELINE) {
            if let Some(r) = result
                .server_cpu_us_per_delivery
                .and_then(|value| ratio(value, base))
            {
                targets.push(TargetResult::new(
                    "move: server CPU/delivery ≤ 0.6× tokio at the same tick",
                    &result.implementation,
                    TargetKind::RatioAtMost,
                    r,
                    0.6,
                ));
            }
        }
    }
    if let Some(base) = capacity
        .iter()
        .find(|r| r.implementation == BASELINE)
        .and_then(|r| r.capacity)
    {
        for result in capacity.iter().filter(|r| r.implementation != BASELINE) {
            let value = result.capacity.unwrap_or(0);
            if let Some(r) = ratio(value as f64, base as f64) {
                if is_lower_bound(result) && r < 3.0 {
                    // The sweep stopped before this variant did: short of
                    // the target says nothing of it (its note says so).
                    continue;
                }
                targets.push(TargetResult::new(
                    "move: capacity at p99 ≤ 100 ms ≥ 1.5× tokio at the same tick",
                    &result.implementation,
                    TargetKind::RatioAtLeast,
                    r,
                    1.5,
                ));
            }
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, cpu_us: f64, p99_us: u64) -> MoveResult {
        MoveResult {
            implementation: name.into(),
            players: 100,
            entered: 100,
            seconds: 1.0,
            moves_sent: 1000,
            own_moves: 1000,
            deliveries: 10_000,
            moves_by_datagram: 0,
            deliveries_per_sec: 10_000.0,
            server_cpu_us_per_delivery: Some(cpu_us),
            cpu: WindowCpu::default(),
            tcp_segments_per_delivery: Some(0.5),
            latency: Latency {
                count: 1000,
                p99_us,
                ..Latency::default()
            },
            spawns: 5,
            despawns: 4,
            corrections: 0,
            errors: BTreeMap::new(),
            errors_total: 0,
            world_size: 2000.0,
            writes_per_delivery: Some(0.1),
            server_rss_kib: None,
            load_saturated: false,
        }
    }

    #[test]
    fn a_step_holds_only_when_everything_is_in_order() {
        let ok = result("uring", 1.0, 40_000);
        assert_eq!(ok.failure(100_000), None);
        let slow = result("uring", 1.0, 140_000);
        assert_eq!(slow.failure(100_000).unwrap(), "own-move p99 140 ms");
        let mut broken = result("uring", 1.0, 1_000);
        broken.errors.insert("move_from_unseen".into(), 3);
        broken.errors_total = 3;
        assert!(broken
            .failure(100_000)
            .unwrap()
            .contains("move_from_unseen 3"));
    }

    #[test]
    fn targets_compare_cpu_and_capacity_with_tokio() {
        let results = [result("uring", 1.0, 1), result("tokio", 4.0, 1)];
        let capacity = [
            CapacityResult {
                implementation: "uring".into(),
                steps: Vec::new(),
                capacity: Some(4000),
                stopped: String::new(),
            },
            CapacityResult {
                implementation: "tokio".into(),
                steps: Vec::new(),
                capacity: Some(2000),
                stopped: String::new(),
            },
        ];
        let targets = move_targets(&results, &capacity);
        assert_eq!(targets.len(), 2);
        assert!(targets[0].met, "0.25× ≤ 0.6×");
        assert!(targets[1].met, "2× ≥ 1.5×");
        let tight = [
            CapacityResult {
                capacity: Some(2500),
                ..capacity[0].clone()
            },
            capacity[1].clone(),
        ];
        let targets = move_targets(&results, &tight);
        assert!(!targets[1].met, "1.25× < 1.5×");
        assert_eq!(targets[1].missed_by_percent.map(f64::round), Some(17.0));
    }

    fn step(players: usize, failure: Option<&str>) -> CapacityStep {
        CapacityStep {
            players,
            p50_us: 500,
            p99_us: 1_000,
            deliveries_per_sec: 1.0,
            server_cpu_us_per_delivery: Some(1.0),
            writes_per_delivery: Some(0.1),
            server_cpu_cores: 0.1,
            load_cpu_cores: 0.1,
            load_saturated: false,
            errors_total: 0,
            failure: failure.map(str::to_owned),
        }
    }

    #[test]
    fn a_sweep_that_held_every_step_is_a_lower_bound_not_a_miss() {
        let results = [result("uring", 1.0, 1), result("tokio", 4.0, 1)];
        let capacity = [
            CapacityResult {
                implementation: "uring".into(),
                steps: vec![step(100, None), step(200, None)],
                capacity: Some(200),
                stopped: "every step held, up to 200 players (the sweep's last)".into(),
            },
            CapacityResult {
                implementation: "tokio".into(),
                steps: vec![step(100, None), step(200, Some("own-move p99 140 ms"))],
                capacity: Some(100),
                stopped: "200 players failed: own-move p99 140 ms".into(),
            },
        ];
        let targets = move_targets(&results, &capacity);
        assert!(
            targets.iter().all(|t| !t.description.contains("capacity")),
            "2× at the sweep's top is no miss: {targets:?}"
        );
        let notes = capacity_notes(&capacity);
        assert!(
            notes[0].starts_with("move capacity of uring: ≥ 200 players, sweep too short"),
            "{notes:?}"
        );
        assert_eq!(
            notes[1],
            "move capacity of tokio: 200 players failed: own-move p99 140 ms"
        );
        // A lower bound that already meets the target is met.
        let capacity = [
            CapacityResult {
                capacity: Some(300),
                steps: vec![step(300, None)],
                ..capacity[0].clone()
            },
            capacity[1].clone(),
        ];
        let targets = move_targets(&results, &capacity);
        assert!(targets
            .iter()
            .any(|t| t.description.contains("capacity") && t.met));
    }

    #[test]
    fn tables_have_a_column_per_variant() {
        let settings = MoveSettings {
            players: 100,
            move_rate: 10.0,
            speed: 150.0,
            tick_ms: 50.0,
            world: "the default world".into(),
            variants: vec!["uring".into(), "tokio".into()],
            capacity_steps: vec![50, 100],
            capacity_window_seconds: 1.0,
            capacity_p99_limit_us: 100_000,
        };
        let results = [result("uring", 1.0, 2_000), result("tokio", 2.0, 4_000)];
        let capacity = [CapacityResult {
            implementation: "uring".into(),
            steps: vec![CapacityStep {
                players: 50,
                p50_us: 700,
                p99_us: 1_500,
                deliveries_per_sec: 1.0,
                server_cpu_us_per_delivery: Some(1.2),
                writes_per_delivery: Some(0.1),
                server_cpu_cores: 0.1,
                load_cpu_cores: 0.1,
                load_saturated: false,
                errors_total: 0,
                failure: None,
            }],
            capacity: Some(50),
            stopped: "the last step held".into(),
        }];
        let sections = move_sections(Some(&settings), &results, &capacity);
        assert_eq!(sections.len(), 2);
        let text = sections[0].render();
        assert!(text.contains("server CPU/delivery"), "{text}");
        assert!(text.contains("(0.50×)"), "{text}");
        let text = sections[1].render();
        assert!(text.contains("capacity (players)"), "{text}");
        assert!(text.contains("50: own-move p99"), "{text}");
        assert!(text.contains("50: writes/delivery"), "{text}");
        assert!(
            !text.contains("100: own-move p99"),
            "no step of 100 ran: {text}"
        );
    }
}
