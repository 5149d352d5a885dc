//! The zones scenario's records and tables: one [`ZoneResult`] per backend
//! and node count at the run's players, one [`ZoneCapacity`] per backend and
//! node count from the sweep, their tables (a column per node count, the
//! one-node run being the baseline), and their targets (transfer p99 under
//! 250 ms; two nodes hold at least 1.8× the players of one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{format_count, Latency, Section, TargetKind, TargetResult, Unit};

/// Transfer p99 the issue asks for on loopback, µs.
pub const TRANSFER_P99_TARGET_US: u64 = 250_000;

/// Capacity of two nodes over one the issue asks for.
pub const TWO_NODE_CAPACITY_TARGET: f64 = 1.8;

/// What the zones scenario ran with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneSettings {
    /// Players of the main measurement, over all nodes.
    pub players: usize,
    /// Node counts, ascending.
    pub node_counts: Vec<usize>,
    /// Backends the nodes ran on.
    pub backends: Vec<String>,
    /// `C_MOVE` per second per player.
    pub move_rate: f64,
    /// Walking speed, units per second.
    pub speed: f64,
    /// The world tick of every node, ms.
    pub tick_ms: f64,
    /// Warm-up before each window, seconds.
    pub warmup_seconds: f64,
    /// Player counts the capacity sweep tries, in order (empty: none).
    pub capacity_steps: Vec<usize>,
    /// Measured window of each sweep step, seconds.
    pub capacity_window_seconds: f64,
    /// Own-move p99 a sweep step may reach and still pass, µs.
    pub capacity_p99_limit_us: u64,
}

/// One measurement of one backend on one node count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneResult {
    /// The nodes' backend: `uring` or `poll`.
    pub implementation: String,
    /// Nodes sharing the world.
    pub nodes: usize,
    /// Players asked for, over all nodes.
    pub players: usize,
    /// Players that entered the world.
    pub entered: u64,
    /// The world's side.
    pub world_size: f32,
    /// Window length, seconds.
    pub seconds: f64,
    /// World ticks in the window (the first node's count).
    pub ticks: f64,
    /// `S_MOVE` received by all players in the window.
    pub deliveries: u64,
    /// Deliveries per second of the window.
    pub deliveries_per_sec: f64,
    /// All nodes' CPU over the window / deliveries, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// All nodes' CPU / wall time.
    pub server_cpu_cores: f64,
    /// Each node's CPU / wall time, in node order.
    pub node_cpu_cores: Vec<f64>,
    /// Each node's `S_MOVE` deliveries in the window (its own count).
    pub node_deliveries: Vec<Option<u64>>,
    /// Each node's CPU / its own deliveries, µs.
    pub node_cpu_us_per_delivery: Vec<Option<f64>>,
    /// The nats-server's CPU / wall time.
    pub nats_cpu_cores: f64,
    /// Messages published to NATS per tick (every client of every node).
    pub nats_in_msgs_per_tick: Option<f64>,
    /// Bytes published per tick.
    pub nats_in_bytes_per_tick: Option<f64>,
    /// Messages NATS delivered to subscribers per tick.
    pub nats_out_msgs_per_tick: Option<f64>,
    /// Bytes delivered per tick.
    pub nats_out_bytes_per_tick: Option<f64>,
    /// The load generator's CPU / wall time.
    pub load_cpu_cores: f64,
    /// Every other process's CPU / wall time.
    pub other_cpu_cores: f64,
    /// The load generator used its cores' worth: the step is invalid.
    pub load_saturated: bool,
    /// `C_MOVE` sent in the window.
    pub moves_sent: u64,
    /// Own `S_MOVE`s back.
    pub own_moves: u64,
    /// Own-move latency: `C_MOVE` sent until its own `S_MOVE` came back.
    pub own_move: Latency,
    /// Others' moves from the watcher's own node's zone (sampled).
    pub local_move: Latency,
    /// Others' moves from another node's zone, through NATS (sampled).
    pub cross_move: Latency,
    /// `S_TRANSFER`s told in the window.
    pub transfers_told: u64,
    /// Transfers followed in the window.
    pub transfers: u64,
    /// Transfers followed per second of the window.
    pub transfers_per_sec: f64,
    /// Transfers that could not be followed in the window.
    pub transfer_errors: u64,
    /// `S_TRANSFER` until the first `S_MOVE` from the new node, of the
    /// transfers told after the warm-up.
    pub transfer_time: Latency,
    /// Clients that reconnected by name (a transfer that failed).
    pub reconnects: u64,
    /// Players spawned to players in the window (each listed player of
    /// an `S_SPAWN`).
    #[serde(default)]
    pub spawns: u64,
    /// Errors by kind (the client's kinds), over the whole run.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub errors_total: u64,
}

impl ZoneResult {
    /// Why this measurement does not hold a sweep step (`None`: it holds):
    /// a player that did not enter, any error or failed transfer, no own move back, more
    /// than 0.1 % of own moves lost, or own-move p99 above `p99_limit_us`.
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
        } else if self.transfer_errors > 0 {
            Some(format!("{} transfer(s) failed", self.transfer_errors))
        } else if self.own_move.count == 0 {
            Some("no own move came back".to_string())
        } else if self.moves_sent.saturating_sub(self.own_moves) > self.moves_sent / 1000 {
            Some(format!(
                "{} of {} own moves never came back",
                self.moves_sent - self.own_moves,
                self.moves_sent
            ))
        } else if self.own_move.p99_us > p99_limit_us {
            Some(format!(
                "own-move p99 {} ms",
                self.own_move.p99_us as f64 / 1000.0
            ))
        } else {
            None
        }
    }
}

/// One step of a zones capacity sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneStep {
    /// Players, over all nodes.
    pub players: usize,
    /// Own-move p50, µs.
    pub own_move_p50_us: u64,
    /// Own-move p99, µs.
    pub own_move_p99_us: u64,
    /// Transfer p99, µs.
    pub transfer_p99_us: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// All nodes' CPU per delivery, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// All nodes' CPU, cores.
    pub server_cpu_cores: f64,
    /// Load generator CPU, cores.
    pub load_cpu_cores: f64,
    /// The load generator was saturated: the step is invalid.
    pub load_saturated: bool,
    /// All errors.
    pub errors_total: u64,
    /// Why the step failed (`None`: it held).
    pub failure: Option<String>,
}

/// The capacity sweep of one backend on one node count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneCapacity {
    /// The backend.
    pub implementation: String,
    /// Nodes sharing the world.
    pub nodes: usize,
    /// The steps run, in order.
    pub steps: Vec<ZoneStep>,
    /// The most players a step held with (`None`: not even the first).
    pub capacity: Option<usize>,
    /// Why the sweep stopped.
    pub stopped: String,
}

/// The column name of a node count.
fn column(nodes: usize) -> String {
    if nodes == 1 {
        "1 node".to_string()
    } else {
        format!("{nodes} nodes")
    }
}

/// The tables of the zones scenario: per backend, the measurement at the
/// run's players on each node count, then the capacity sweep.
pub fn zone_sections(
    settings: Option<&ZoneSettings>,
    results: &[ZoneResult],
    capacity: &[ZoneCapacity],
) -> Vec<Section> {
    let Some(settings) = settings else {
        return Vec::new();
    };
    let columns: Vec<String> = settings.node_counts.iter().map(|&n| column(n)).collect();
    let most_nodes = settings.node_counts.iter().copied().max().unwrap_or(1);
    let mut sections = Vec::new();
    for backend in &settings.backends {
        let picked: Vec<Option<&ZoneResult>> = settings
            .node_counts
            .iter()
            .map(|&n| {
                results
                    .iter()
                    .find(|r| &r.implementation == backend && r.nodes == n)
            })
            .collect();
        if picked.iter().any(Option::is_some) {
            let pick = |f: &dyn Fn(&ZoneResult) -> Option<f64>| -> Vec<Option<f64>> {
                picked.iter().map(|r| r.and_then(f)).collect()
            };
            let first = picked.iter().flatten().next().expect("one result");
            let mut section = Section::new(
                format!(
                    "zones on {backend}: {} players walking one world of {}² (1,000 per 2000², 100-unit cells) split over the nodes, {} moves/s at {} units/s, {} ms tick; window {:.1} s after {:.1} s warm-up",
                    format_count(settings.players as f64),
                    format_count(f64::from(first.world_size)),
                    settings.move_rate,
                    settings.speed,
                    settings.tick_ms,
                    first.seconds,
                    settings.warmup_seconds
                ),
                columns.clone(),
            );
            let latency = |f: fn(&Latency) -> u64, of: fn(&ZoneResult) -> &Latency| {
                pick(&move |r: &ZoneResult| {
                    let l = of(r);
                    (l.count > 0).then(|| f(l) as f64)
                })
            };
            section
                .plain_row(
                    "deliveries/s",
                    Unit::Rate,
                    pick(&|r| Some(r.deliveries_per_sec)),
                )
                .plain_row(
                    "server CPU/delivery (all nodes)",
                    Unit::Micros,
                    pick(&|r| r.server_cpu_us_per_delivery),
                );
            for node in 0..most_nodes {
                section.plain_row(
                    &format!("node {} CPU/own delivery", node + 1),
                    Unit::Micros,
                    pick(&|r| r.node_cpu_us_per_delivery.get(node).copied().flatten()),
                );
            }
            section.plain_row(
                "server CPU (cores, all nodes)",
                Unit::Cores,
                pick(&|r| Some(r.server_cpu_cores)),
            );
            for node in 0..most_nodes {
                section.plain_row(
                    &format!("node {} CPU (cores)", node + 1),
                    Unit::Cores,
                    pick(&|r| r.node_cpu_cores.get(node).copied()),
                );
            }
            section
                .plain_row(
                    "nats-server CPU (cores)",
                    Unit::Cores,
                    pick(&|r| Some(r.nats_cpu_cores)),
                )
                .plain_row(
                    "NATS msgs in/tick",
                    Unit::Decimal,
                    pick(&|r| r.nats_in_msgs_per_tick),
                )
                .plain_row(
                    "NATS bytes in/tick",
                    Unit::Bytes,
                    pick(&|r| r.nats_in_bytes_per_tick),
                )
                .plain_row(
                    "NATS msgs out/tick",
                    Unit::Decimal,
                    pick(&|r| r.nats_out_msgs_per_tick),
                )
                .plain_row(
                    "NATS bytes out/tick",
                    Unit::Bytes,
                    pick(&|r| r.nats_out_bytes_per_tick),
                )
                .plain_row(
                    "own-move p50",
                    Unit::Micros,
                    latency(|l| l.p50_us, |r| &r.own_move),
                )
                .plain_row(
                    "own-move p99",
                    Unit::Micros,
                    latency(|l| l.p99_us, |r| &r.own_move),
                )
                .plain_row(
                    "local move p50 (sampled)",
                    Unit::Micros,
                    latency(|l| l.p50_us, |r| &r.local_move),
                )
                .plain_row(
                    "local move p99 (sampled)",
                    Unit::Micros,
                    latency(|l| l.p99_us, |r| &r.local_move),
                )
                .plain_row(
                    "cross-border move p50 (sampled)",
                    Unit::Micros,
                    latency(|l| l.p50_us, |r| &r.cross_move),
                )
                .plain_row(
                    "cross-border move p99 (sampled)",
                    Unit::Micros,
                    latency(|l| l.p99_us, |r| &r.cross_move),
                )
                .plain_row(
                    "transfers",
                    Unit::Count,
                    pick(&|r| Some(r.transfers as f64)),
                )
                .plain_row(
                    "transfers/s",
                    Unit::Rate,
                    pick(&|r| Some(r.transfers_per_sec)),
                )
                .plain_row(
                    "transfer p50",
                    Unit::Micros,
                    latency(|l| l.p50_us, |r| &r.transfer_time),
                )
                .plain_row(
                    "transfer p99",
                    Unit::Micros,
                    latency(|l| l.p99_us, |r| &r.transfer_time),
                )
                .plain_row(
                    "transfer errors",
                    Unit::Count,
                    pick(&|r| Some(r.transfer_errors as f64)),
                )
                .plain_row(
                    "load gen CPU (cores)",
                    Unit::Cores,
                    pick(&|r| Some(r.load_cpu_cores)),
                )
                .plain_row(
                    "load gen saturated (1: invalid)",
                    Unit::Count,
                    pick(&|r| Some(f64::from(u8::from(r.load_saturated)))),
                )
                .plain_row(
                    "other processes (cores)",
                    Unit::Cores,
                    pick(&|r| Some(r.other_cpu_cores)),
                )
                .plain_row(
                    "errors",
                    Unit::Count,
                    pick(&|r| Some(r.errors_total as f64)),
                );
            sections.push(section);
        }
        let sweeps: Vec<Option<&ZoneCapacity>> = settings
            .node_counts
            .iter()
            .map(|&n| {
                capacity
                    .iter()
                    .find(|c| &c.implementation == backend && c.nodes == n)
            })
            .collect();
        if sweeps.iter().any(Option::is_some) {
            let mut section = Section::new(
                format!(
                    "zones capacity on {backend}: the most players held at own-move p99 ≤ {} ms with no errors (steps {}; {:.1} s window each; the world grows with the players)",
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
            let one = sweeps
                .first()
                .copied()
                .flatten()
                .filter(|c| c.nodes == 1)
                .and_then(|c| c.capacity);
            section
                .plain_row(
                    "capacity (players)",
                    Unit::Count,
                    sweeps
                        .iter()
                        .map(|c| c.and_then(|c| c.capacity.map(|n| n as f64)))
                        .collect(),
                )
                .plain_row(
                    "capacity / 1 node",
                    Unit::Decimal,
                    sweeps
                        .iter()
                        .map(|c| {
                            let n = c.and_then(|c| c.capacity)?;
                            let one = one.filter(|&one| one > 0)?;
                            Some(n as f64 / one as f64)
                        })
                        .collect(),
                );
            for &players in &settings.capacity_steps {
                let steps: Vec<Option<&ZoneStep>> = sweeps
                    .iter()
                    .map(|c| c.and_then(|c| c.steps.iter().find(|s| s.players == players)))
                    .collect();
                if steps.iter().all(Option::is_none) {
                    continue;
                }
                let at = format_count(players as f64);
                let row = |f: &dyn Fn(&ZoneStep) -> Option<f64>| -> Vec<Option<f64>> {
                    steps.iter().map(|s| s.and_then(f)).collect()
                };
                section
                    .plain_row(
                        &format!("{at}: own-move p99"),
                        Unit::Micros,
                        row(&|s| Some(s.own_move_p99_us as f64)),
                    )
                    .plain_row(
                        &format!("{at}: transfer p99"),
                        Unit::Micros,
                        row(&|s| (s.transfer_p99_us > 0).then_some(s.transfer_p99_us as f64)),
                    )
                    .plain_row(
                        &format!("{at}: server CPU/delivery"),
                        Unit::Micros,
                        row(&|s| s.server_cpu_us_per_delivery),
                    )
                    .plain_row(
                        &format!("{at}: load gen CPU (cores; invalid if saturated)"),
                        Unit::Cores,
                        row(&|s| Some(s.load_cpu_cores)),
                    );
            }
            sections.push(section);
        }
    }
    sections
}

/// A sweep whose every step held: its capacity is at least its last step.
fn is_lower_bound(sweep: &ZoneCapacity) -> bool {
    sweep.capacity.is_some()
        && !sweep.steps.is_empty()
        && sweep.steps.iter().all(|step| step.failure.is_none())
}

/// Why each sweep stopped, one line each.
pub fn zone_capacity_notes(capacity: &[ZoneCapacity]) -> Vec<String> {
    capacity
        .iter()
        .map(|c| {
            format!(
                "zones capacity of {} on {}: {}",
                c.implementation,
                column(c.nodes),
                c.stopped
            )
        })
        .collect()
}

/// The zones targets: transfer p99 under 250 ms on every run over several
/// nodes that transferred anyone, and two nodes holding at least 1.8× the
/// players of one.
pub fn zone_targets(results: &[ZoneResult], capacity: &[ZoneCapacity]) -> Vec<TargetResult> {
    let mut targets = Vec::new();
    for result in results.iter().filter(|r| r.nodes > 1) {
        if result.transfer_time.count == 0 {
            continue;
        }
        targets.push(TargetResult::new(
            "zones: transfer p99 < 250 ms on loopback",
            &format!("{} {}", result.implementation, column(result.nodes)),
            TargetKind::MicrosAtMost,
            result.transfer_time.p99_us as f64,
            TRANSFER_P99_TARGET_US as f64,
        ));
    }
    for two in capacity.iter().filter(|c| c.nodes == 2) {
        let Some(one) = capacity
            .iter()
            .find(|c| c.nodes == 1 && c.implementation == two.implementation)
            .and_then(|c| c.capacity)
            .filter(|&n| n > 0)
        else {
            continue;
        };
        let held = two.capacity.unwrap_or(0);
        let ratio = held as f64 / one as f64;
        let one_bound = capacity
            .iter()
            .any(|c| c.nodes == 1 && c.implementation == two.implementation && is_lower_bound(c));
        // A sweep whose every step held found only a lower bound: two nodes'
        // short of the target, or one node's past it, says nothing (the
        // sweeps' notes say why they stopped).
        let met = ratio >= TWO_NODE_CAPACITY_TARGET;
        if (is_lower_bound(two) && !met) || (one_bound && met) {
            continue;
        }
        targets.push(TargetResult::new(
            "zones: 2 nodes hold ≥ 1.8× the players of 1 at the same p99",
            &two.implementation,
            TargetKind::RatioAtLeast,
            ratio,
            TWO_NODE_CAPACITY_TARGET,
        ));
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(nodes: usize, transfer_p99_us: u64) -> ZoneResult {
        ZoneResult {
            implementation: "poll".into(),
            nodes,
            players: 100,
            entered: 100,
            world_size: 632.0,
            seconds: 2.0,
            ticks: 40.0,
            deliveries: 10_000,
            deliveries_per_sec: 5_000.0,
            server_cpu_us_per_delivery: Some(3.0),
            server_cpu_cores: 0.1,
            node_cpu_cores: vec![0.05; nodes],
            node_deliveries: vec![Some(5_000); nodes],
            node_cpu_us_per_delivery: vec![Some(2.0); nodes],
            nats_cpu_cores: 0.01,
            nats_in_msgs_per_tick: Some(2.0),
            nats_in_bytes_per_tick: Some(900.0),
            nats_out_msgs_per_tick: Some(2.0),
            nats_out_bytes_per_tick: Some(900.0),
            load_cpu_cores: 0.2,
            other_cpu_cores: 0.0,
            load_saturated: false,
            moves_sent: 2_000,
            own_moves: 2_000,
            own_move: Latency {
                count: 2_000,
                p50_us: 20_000,
                p99_us: 40_000,
                ..Latency::default()
            },
            local_move: Latency::default(),
            cross_move: Latency::default(),
            transfers_told: 3,
            transfers: 3,
            transfers_per_sec: 1.5,
            transfer_errors: 0,
            transfer_time: Latency {
                count: u64::from(nodes > 1) * 3,
                p99_us: transfer_p99_us,
                ..Latency::default()
            },
            reconnects: 0,
            spawns: 1_000,
            errors: BTreeMap::new(),
            errors_total: 0,
        }
    }

    fn sweep(nodes: usize, capacity: Option<usize>) -> ZoneCapacity {
        ZoneCapacity {
            implementation: "poll".into(),
            nodes,
            steps: Vec::new(),
            capacity,
            stopped: "the last step held".into(),
        }
    }

    #[test]
    fn targets_read_transfer_p99_and_the_capacity_ratio() {
        let results = [result(1, 0), result(2, 120_000), result(3, 300_000)];
        let capacity = [sweep(1, Some(1000)), sweep(2, Some(1500))];
        let targets = zone_targets(&results, &capacity);
        assert_eq!(targets.len(), 3, "{targets:?}");
        assert!(targets[0].met, "120 ms < 250 ms");
        assert!(!targets[1].met, "300 ms > 250 ms");
        assert!(!targets[2].met, "1.5× < 1.8×");
        // Two nodes that held every step are not judged short of it.
        let mut held = sweep(2, Some(1500));
        held.steps = vec![ZoneStep {
            players: 1500,
            own_move_p50_us: 1,
            own_move_p99_us: 1,
            transfer_p99_us: 1,
            deliveries_per_sec: 1.0,
            server_cpu_us_per_delivery: None,
            server_cpu_cores: 0.1,
            load_cpu_cores: 0.1,
            load_saturated: false,
            errors_total: 0,
            failure: None,
        }];
        let capacity_bound = [sweep(1, Some(1000)), held];
        assert!(zone_targets(&[], &capacity_bound).is_empty());
        assert_eq!(targets[2].implementation, "poll");
        assert_eq!(targets[0].verdict(), "poll 2 nodes 120 ms met");
        assert_eq!(targets[1].verdict(), "poll 3 nodes 300 ms MISSED by 20%");
    }

    #[test]
    fn a_step_fails_on_errors_and_failed_transfers() {
        assert_eq!(result(2, 1).failure(100_000), None);
        let mut failed = result(2, 1);
        failed.transfer_errors = 2;
        assert_eq!(
            failed.failure(100_000).as_deref(),
            Some("2 transfer(s) failed")
        );
        assert_eq!(
            result(2, 1).failure(30_000).as_deref(),
            Some("own-move p99 40 ms")
        );
        // Any error fails a step (a second spawn of a player in view too).
        let mut doubles = result(2, 1);
        doubles.errors.insert("spawn_of_seen".into(), 1);
        doubles.errors_total = 1;
        assert_eq!(
            doubles.failure(100_000).as_deref(),
            Some("errors: spawn_of_seen 1")
        );
    }

    #[test]
    fn tables_have_a_column_per_node_count() {
        let settings = ZoneSettings {
            players: 100,
            node_counts: vec![1, 2],
            backends: vec!["poll".into()],
            move_rate: 10.0,
            speed: 150.0,
            tick_ms: 50.0,
            warmup_seconds: 1.0,
            capacity_steps: vec![100],
            capacity_window_seconds: 1.0,
            capacity_p99_limit_us: 100_000,
        };
        let results = [result(1, 0), result(2, 120_000)];
        let capacity = [sweep(1, Some(100)), sweep(2, Some(100))];
        let sections = zone_sections(Some(&settings), &results, &capacity);
        assert_eq!(sections.len(), 2);
        let text = sections[0].render();
        assert!(text.contains("1 node"), "{text}");
        assert!(text.contains("2 nodes"), "{text}");
        assert!(text.contains("node 2 CPU/own delivery"), "{text}");
        assert!(text.contains("NATS msgs in/tick"), "{text}");
        assert!(text.contains("transfer p99"), "{text}");
        let text = sections[1].render();
        assert!(text.contains("capacity / 1 node"), "{text}");
    }
}
