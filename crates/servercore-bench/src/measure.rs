//! One measurement at a time: the state the run loop carries between
//! measurements and how each scenario's cell is measured and kept.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::child::ServerProcess;
use crate::load::{Sources, Timing};
use crate::options::*;
use crate::plan::Plan;
use crate::plan::BUSY_MACHINE_CORES;
use crate::progress::Progress;
use crate::report::{self, BroadcastResult, EchoResult, IdleResult, Latency, Report, WindowCpu};
use crate::{child, load, transport, Transport};

/// What the run loop carries between measurements.
pub(crate) struct Bench {
    pub(crate) plan: Plan,
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) sources: Sources,
    pub(crate) progress: Progress,
    pub(crate) report: Report,
    pub(crate) failures: usize,
    /// The repetition running now.
    pub(crate) round: usize,
    /// The transport of this part of the run.
    pub(crate) transport: Transport,
    /// The load generator's side of it.
    pub(crate) connector: transport::Connector,
    /// The TLS pair the servers use.
    pub(crate) cert_files: Option<(PathBuf, PathBuf)>,
}

impl Bench {
    /// Keeps the median run of each cell (the only run without `--repeat`).
    pub(crate) fn take_medians(&mut self) {
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

    pub(crate) fn spawn(&self, imp: Impl, scenario: Scenario) -> anyhow::Result<ServerProcess> {
        self.progress.phase(
            &format!("{} · {}", scenario.name(), imp.name()),
            "starting the server",
            0,
        );
        ServerProcess::spawn(&self.server_spec(imp, scenario), &self.progress)
    }

    /// How this run starts a server of `imp` for `scenario`.
    pub(crate) fn server_spec(&self, imp: Impl, scenario: Scenario) -> child::ServerSpec {
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
    pub(crate) fn check_quiet(&mut self, what: &str, window: &load::Window) {
        let other = window.other_cpu.as_secs_f64() / window.elapsed.as_secs_f64().max(1e-9);
        if other > BUSY_MACHINE_CORES {
            self.report.notes.push(format!(
                "{what}: other processes used {other:.2} cores during the window; the machine was not quiet"
            ));
        }
    }

    /// The server's system calls and context switches per unit of work in
    /// a window, when `--perf` counted them; notes why not otherwise.
    pub(crate) fn perf_per(
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
    pub(crate) fn finish(&mut self, server: ServerProcess) {
        let (note, stderr) = server.stop(Duration::from_secs(15));
        self.report.notes.extend(note);
        if let Some(first) = stderr.first() {
            self.report.notes.push(format!(
                "the server wrote {} line(s) to stderr; first: {first}",
                stderr.len()
            ));
        }
    }

    pub(crate) fn echo(&mut self, imp: Impl) -> anyhow::Result<()> {
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

    pub(crate) fn broadcast(&mut self, imp: Impl) -> anyhow::Result<()> {
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

    pub(crate) fn idle(&mut self, imp: Impl) -> anyhow::Result<()> {
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

    pub(crate) fn measure_idle(
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
