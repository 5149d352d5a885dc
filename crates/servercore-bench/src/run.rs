//! The run loop: every scenario on each transport in turn, the report
//! finished and written, or an earlier report replayed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::load::Sources;
use crate::measure::Bench;
use crate::moves::Variant;
use crate::options::*;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::{self, Report, Settings};
use crate::{chart, move_report, procfs, soak, transport, zones_report, Transport};

/// Runs one benchmark server until its stdin ends.
pub fn run_server(args: BenchServerOptions) -> anyhow::Result<()> {
    crate::server::run(args)
}

/// Runs the benchmarks: every scenario on each transport in turn.
pub fn run(args: BenchOptions) -> anyhow::Result<()> {
    run_until(args, &servercore_load::StopSignal::new())
}

/// Runs the benchmarks until `stop` is set: the measurement running then
/// finishes (its window is bounded), the rest are skipped, and the tables
/// of what was measured are printed as usual.
pub fn run_until(args: BenchOptions, stop: &servercore_load::StopSignal) -> anyhow::Result<()> {
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
    let cert = if transports.contains(&Transport::Tls) || transports.contains(&Transport::Quic) {
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
        match transport {
            Transport::Tcp => {}
            // Idle measures memory and the zones run their cluster over
            // TCP only; the world runs over TCP and QUIC (its moves as
            // datagrams), and QUIC's chat is not compared (the minimal
            // chat server has no QUIC listener).
            Transport::Tls | Transport::Ws => {
                one.scenarios.retain(|s| {
                    *s != Scenario::Idle && *s != Scenario::Move && *s != Scenario::Zones
                });
                if one.scenarios.is_empty() {
                    one.scenarios = vec![Scenario::Echo, Scenario::Broadcast];
                }
            }
            Transport::Quic => {
                one.scenarios
                    .retain(|s| *s == Scenario::Echo || *s == Scenario::Move);
                if one.scenarios.is_empty() {
                    one.scenarios = vec![Scenario::Echo, Scenario::Move];
                }
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
    stop: &servercore_load::StopSignal,
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
    if transport == Transport::Quic {
        notes.push(
            "over quic the TCP segment rows count only other TCP traffic of the machine (QUIC's UDP datagrams are not counted), and writes/delivery only the servers' stream writes (not their datagrams)"
                .to_string(),
        );
    }
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
        transport: transport.name().to_string(),
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
        zones: plan
            .scenarios
            .contains(&Scenario::Zones)
            .then(|| zones_report::ZoneSettings {
                players: plan.zones.players,
                node_counts: plan.zones.node_counts.clone(),
                backends: plan
                    .zones
                    .backends
                    .iter()
                    .map(|b| b.name().to_string())
                    .collect(),
                move_rate: plan.zones.move_rate,
                speed: plan.zones.speed,
                tick_ms: plan.zones.tick.as_secs_f64() * 1000.0,
                warmup_seconds: plan.zones.warmup.as_secs_f64(),
                capacity_steps: plan.zones.steps.clone(),
                capacity_window_seconds: plan.zones.step_window.as_secs_f64(),
                capacity_p99_limit_us: plan.zones.p99_limit.as_micros() as u64,
            }),
    };
    println!(
        "servercore bench over {}: {} cores, kernel {}, {}; load average {}",
        match transport {
            Transport::Tcp => "tcp".to_string(),
            other => format!("{} (baseline: {})", other.name(), other.baseline()),
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
            zones: Vec::new(),
            zone_capacity: Vec::new(),
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
        if scenario == Scenario::Zones {
            if stop.is_set() {
                skipped += 1;
                continue;
            }
            bench.zones();
            for section in scenario_sections(&bench.report, scenario) {
                bench.progress.println(&section.render());
            }
            continue;
        }
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
                    Scenario::Move | Scenario::Zones => {
                        unreachable!("the move and zones scenarios run above")
                    }
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
                    Scenario::Move | Scenario::Zones => "server CPU/delivery",
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
        Scenario::Zones => zones_report::zone_sections(
            report.settings.zones.as_ref(),
            &report.zones,
            &report.zone_capacity,
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
    report.targets.extend(zones_report::zone_targets(
        &report.zones,
        &report.zone_capacity,
    ));
    for note in move_report::capacity_notes(&report.capacity)
        .into_iter()
        .chain(zones_report::zone_capacity_notes(&report.zone_capacity))
    {
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
