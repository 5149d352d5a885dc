//! The zones scenario of `servercore bench`: one world shared by 1, 2 and 3
//! nodes (`--zone-nodes`), the same players walking it on each, so that
//! what a node count costs or gains is read side by side.
//!
//! This module owns the cluster a measurement runs on and the measurement:
//! - [`Cluster`]: a private nats-server (loopback, a free port, its
//!   monitoring port on so `/varz` counts the messages and bytes), a
//!   cluster secret and one SQLite file in a temporary directory, and N
//!   `servercore server --world-nodes n1,..,nN` children (this very
//!   executable), each waited for through its `--ready-file`, then until
//!   every node's `/status` shows N zones;
//! - the load: the dummy client's move scenario over every node's address
//!   ([`servercore_load::client::run_load_observed`]), which follows the
//!   `S_TRANSFER`s, given the zone map so it sorts the other players' moves
//!   into local and cross-border ones;
//! - the window ([`ZoneProbe`]): each node's CPU from `/proc`, its
//!   `S_MOVE` deliveries and ticks from `/metrics`, the nats-server's CPU
//!   and `/varz`, read when the client's measured window opens and closes;
//! - the capacity sweep (`--capacity-steps`): per node count, the most
//!   players held at the move scenario's own-move p99 limit.
//!
//! The world keeps the move scenario's `--density` (1,000 players per
//! 2000², 100-unit cells): at the same players every node count walks the
//! same square map, each node a vertical strip of it, so players per cell
//! are the same on one node and on three. (The game's map is square, so a
//! world cannot be widened on x alone; a sweep's larger player counts get
//! a larger map at the same density.) Every measurement starts a fresh
//! cluster and database. The one-node run is the baseline: tokio has no
//! cluster.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;

use super::move_report::latency_of;
use super::moves::WorldShape;
use super::report::{format_micros, format_rate};
use super::zones_report::{ZoneCapacity, ZoneResult, ZoneStep};
use super::{procfs, Bench, Impl};
use servercore_load::client::{
    run_load_observed, LoadConfig, LoadObserver, Scenario as Load, WindowCounts, ZoneSplit,
};
use servercore_load::StopSignal;

/// The map's cell side (the game's default, as in the move scenario).
const CELL: f32 = 100.0;

/// Share of its cores at which the load generator counts as saturated.
const SATURATED: f64 = 0.9;

/// The signing secret of the benchmark's clusters (any 32 bytes or more).
const SECRET: &[u8] = b"servercore bench zones: a throwaway cluster secret";

/// The zones scenario's resolved settings.
#[derive(Debug, Clone)]
pub struct ZonesPlan {
    /// Node counts, ascending, each measured with the same players.
    pub node_counts: Vec<usize>,
    /// Engine backends to run the nodes on.
    pub backends: Vec<Impl>,
    /// Players of the main measurement, over all nodes.
    pub players: usize,
    /// The world tick of every node.
    pub tick: Duration,
    /// The main measurement's window.
    pub window: Duration,
    /// Moves before each window opens (it also absorbs the hand-overs of
    /// players who entered on a node that does not own their position).
    pub warmup: Duration,
    /// The capacity sweep's player counts, ascending (empty: no sweep).
    pub steps: Vec<usize>,
    /// Each sweep step's window.
    pub step_window: Duration,
    /// Own-move p99 a sweep step may reach.
    pub p99_limit: Duration,
    /// Longest one node count's sweep may take before it stops starting
    /// steps.
    pub sweep_budget: Duration,
    /// `C_MOVE` per second per player.
    pub move_rate: f64,
    /// Walking speed.
    pub speed: f64,
    /// Worker threads of each node (`None`: the server's default).
    pub workers: Option<usize>,
}

impl ZonesPlan {
    /// The plan from the run's options; `implementations` are those the
    /// run compares (tokio is left out: it has no cluster).
    pub fn new(
        args: &super::BenchOptions,
        implementations: &[Impl],
        timing: &super::load::Timing,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<ZonesPlan> {
        let quick = args.quick;
        let mut node_counts: Vec<usize> = if args.zone_nodes.is_empty() {
            vec![1, 2, 3]
        } else {
            args.zone_nodes.clone()
        };
        node_counts.sort_unstable();
        node_counts.dedup();
        anyhow::ensure!(
            node_counts.iter().all(|&n| (1..=16).contains(&n)),
            "--zone-nodes takes node counts from 1 to 16"
        );
        let backends: Vec<Impl> = implementations
            .iter()
            .copied()
            .filter(|imp| *imp != Impl::Tokio)
            .collect();
        if args.pin_server.is_some() {
            notes.push("zones: --pin-server is not applied to the nodes (several processes share the cores)".into());
        }
        if implementations.contains(&Impl::Tokio) {
            notes.push("zones: tokio has no cluster; the one-node run is the baseline".into());
        }
        anyhow::ensure!(
            !backends.is_empty(),
            "zones runs the engine's game server: give --backends uring and/or poll"
        );
        let mut steps: Vec<usize> = args
            .capacity_steps
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .collect();
        steps.sort_unstable();
        steps.dedup();
        Ok(ZonesPlan {
            node_counts,
            backends,
            players: args
                .move_players
                .unwrap_or(if quick { 100 } else { 2000 })
                .max(1),
            tick: args.tick,
            // A border must be crossed inside the window for transfers to
            // be measured: the quick window is longer than other scenarios'.
            window: if quick && args.duration.is_none() {
                Duration::from_secs(2)
            } else {
                timing.duration
            },
            warmup: if quick && args.warmup.is_none() {
                Duration::from_secs(1)
            } else {
                timing.warmup.max(Duration::from_millis(500))
            },
            steps,
            step_window: if quick {
                timing.duration
            } else {
                Duration::from_secs(3)
            },
            p99_limit: Duration::from_millis(100),
            sweep_budget: Duration::from_secs(if quick { 30 } else { 120 }),
            move_rate: 10.0,
            speed: 150.0,
            workers: args.workers,
        })
    }

    /// The world's side for `players`: the move scenario's constant
    /// density, whole units.
    pub fn side(players: usize) -> f32 {
        WorldShape::Density.side(players).round().max(CELL)
    }
}

/// A blocking HTTP GET on loopback: the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path} on {addr}: no HTTP answer"))?;
    anyhow::ensure!(
        head.lines()
            .next()
            .is_some_and(|line| line.contains(" 200 ")),
        "GET {path} on {addr}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_owned())
}

/// The value of an unlabelled sample `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Keeps a child's stderr lines (the last thousand) from a thread.
fn keep_stderr(
    child: &mut Child,
) -> (Arc<Mutex<Vec<String>>>, Option<std::thread::JoinHandle<()>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let thread = child.stderr.take().map(|pipe| {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut lines = lines.lock();
                if lines.len() < 1000 {
                    lines.push(line);
                }
            }
        })
    });
    (lines, thread)
}

/// Asks a child to stop (SIGTERM: a graceful stop).
fn terminate(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// Waits until `deadline` for a child told to stop ([`terminate`]) to
/// exit, then kills it. Returns a note when the exit was not clean.
fn wait_stopped(
    child: &mut Child,
    label: &str,
    deadline: Instant,
    timeout: Duration,
) -> Option<String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return None,
            Ok(Some(status)) => return Some(format!("{label} exited with {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Some(format!(
                    "{label} did not stop within {:.0} s and was killed",
                    timeout.as_secs_f64()
                ));
            }
        }
    }
}

/// The private nats-server of one measurement.
struct Nats {
    child: Child,
    url: String,
    monitor: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Message counters of a nats-server (`/varz`).
#[derive(Debug, Clone, Copy, Default)]
struct Varz {
    in_msgs: u64,
    in_bytes: u64,
    out_msgs: u64,
    out_bytes: u64,
}

impl Nats {
    /// Starts `nats-server` on loopback, a free client port and a free
    /// monitoring port, both read from its log.
    fn start() -> anyhow::Result<Nats> {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nats-server (zones needs it on PATH)")?;
        let pipe = child.stderr.take().context("nats-server's stderr")?;
        let (found, lines) = std::sync::mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&stderr);
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = found.send(line.clone());
                let mut kept = kept.lock();
                if kept.len() < 1000 {
                    kept.push(line);
                }
            }
        });
        let addr_after = |line: &str, marker: &str| -> Option<SocketAddr> {
            line.split_once(marker)?.1.trim().parse().ok()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut client, mut monitor) = (None, None);
        while client.is_none() || monitor.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "nats-server did not say where it listens within 10 s: {}",
                    stderr.lock().join(" | ")
                );
            };
            client = client.or_else(|| addr_after(&line, "Listening for client connections on"));
            monitor = monitor.or_else(|| addr_after(&line, "Starting http monitor on"));
        }
        let (client, monitor) = (client.expect("seen"), monitor.expect("seen"));
        Ok(Nats {
            child,
            url: format!("nats://{client}"),
            monitor,
            stderr,
            thread: Some(thread),
        })
    }

    fn varz(&self) -> anyhow::Result<Varz> {
        let body = http_get(self.monitor, "/varz")?;
        let varz: serde_json::Value = serde_json::from_str(&body).context("parsing /varz")?;
        let field = |name: &str| varz[name].as_u64().unwrap_or(0);
        Ok(Varz {
            in_msgs: field("in_msgs"),
            in_bytes: field("in_bytes"),
            out_msgs: field("out_msgs"),
            out_bytes: field("out_bytes"),
        })
    }

    /// Stops it (its state is thrown away: a kill is enough, and
    /// nats-server exits non-zero on SIGTERM anyway); returns a note when it
    /// had died before.
    fn stop(&mut self) -> Option<String> {
        let note = match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("nats-server had exited with {status}")),
            _ => None,
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        note
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `servercore server` node of the shared world.
struct Node {
    name: String,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one node's `/metrics` counts so far.
#[derive(Debug, Clone, Copy, Default)]
struct NodeCounts {
    move_deliveries: Option<u64>,
    ticks: Option<u64>,
}

impl Node {
    fn counts(&self) -> NodeCounts {
        match http_get(self.admin, "/metrics") {
            Ok(page) => NodeCounts {
                move_deliveries: metric(&page, "servercore_game_move_deliveries_total")
                    .map(|v| v as u64),
                ticks: metric(&page, "servercore_game_ticks_total").map(|v| v as u64),
            },
            Err(_) => NodeCounts::default(),
        }
    }

    /// The zone map this node uses now: `(node, x0, x1)`.
    fn zones(&self) -> Option<Vec<(String, f32, f32)>> {
        let body = http_get(self.admin, "/status").ok()?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        let zones = status["world"]["zones"].as_array()?;
        Some(
            zones
                .iter()
                .map(|zone| {
                    (
                        zone["node"].as_str().unwrap_or_default().to_owned(),
                        zone["x0"].as_f64().unwrap_or_default() as f32,
                        zone["x1"].as_f64().unwrap_or_default() as f32,
                    )
                })
                .collect(),
        )
    }
}

/// A shared world on N nodes over its own nats-server.
struct Cluster {
    nats: Nats,
    nodes: Vec<Node>,
    /// The zone map the nodes agreed on, in node order.
    zones: Vec<(String, f32, f32)>,
    _dir: tempfile::TempDir,
}

/// How the nodes of a cluster run.
struct NodeSpec {
    backend: Impl,
    nodes: usize,
    world_size: f32,
    tick: Duration,
    workers: Option<usize>,
    max_sessions: usize,
}

impl Cluster {
    fn start(spec: &NodeSpec) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("servercore-bench-zones")
            .tempdir()
            .context("creating the cluster's directory")?;
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, SECRET).context("writing the cluster secret")?;
        let nats = Nats::start()?;
        let names: Vec<String> = (1..=spec.nodes).map(|i| format!("n{i}")).collect();
        let exe = own_executable()?;
        let mut children = Vec::new();
        for name in &names {
            let ready = dir.path().join(format!("{name}.ready"));
            let mut command = Command::new(&exe);
            command
                .args(["--log", "warn", "server", "--addr", "127.0.0.1:0"])
                .args(["--admin", "127.0.0.1:0"])
                .args(["--backend", spec.backend.name()])
                .arg("--db")
                .arg(dir.path().join("world.db"))
                .args(["--nats", &nats.url, "--node", name])
                .args(["--world-nodes", &names.join(",")])
                .arg("--cluster-secret")
                .arg(&secret)
                .args(["--world-size", &spec.world_size.to_string()])
                .args(["--cell", &CELL.to_string()])
                .args(["--tick-ms", &spec.tick.as_millis().to_string()])
                .args(["--coalesce-ms", "0"])
                .args(["--max-sessions", &spec.max_sessions.to_string()])
                .args(["--max-conns-per-ip", "0", "--max-new-accounts-per-min", "0"])
                .arg("--ready-file")
                .arg(&ready);
            if let Some(workers) = spec.workers {
                command.args(["--workers", &workers.to_string()]);
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting node {name}"))?;
            let (stderr, thread) = keep_stderr(&mut child);
            children.push((name.clone(), child, ready, stderr, thread));
        }
        let mut nodes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for (name, mut child, ready, stderr, thread) in children {
            let (addr, admin) = loop {
                if let Some(found) = read_ready(&ready) {
                    break found;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "node {name} exited ({status}) before it was ready: {}",
                        stderr.lock().join(" | ")
                    );
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    bail!("node {name} was not ready within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            nodes.push(Node {
                name,
                child,
                addr,
                admin,
                stderr,
                thread,
            });
        }
        let mut cluster = Cluster {
            nats,
            nodes,
            zones: Vec::new(),
            _dir: dir,
        };
        cluster.zones = cluster.wait_split(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Waits until every node's `/status` shows one zone per node, the same
    /// map on every node; returns it.
    fn wait_split(&self, limit: Duration) -> anyhow::Result<Vec<(String, f32, f32)>> {
        let deadline = Instant::now() + limit;
        loop {
            let maps: Vec<Option<Vec<(String, f32, f32)>>> =
                self.nodes.iter().map(Node::zones).collect();
            if let Some(Some(first)) = maps.first() {
                if first.len() == self.nodes.len() && maps.iter().all(|m| m.as_ref() == Some(first))
                {
                    return Ok(first.clone());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the {} nodes never agreed on {} zones: {maps:?}",
                    self.nodes.len(),
                    self.nodes.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' game addresses, in zone order.
    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.addr).collect()
    }

    /// The borders between the zones, for the load's local and
    /// cross-border split.
    fn split(&self) -> ZoneSplit {
        let mut bounds: Vec<f32> = Vec::new();
        for node in self.nodes.iter().take(self.nodes.len().saturating_sub(1)) {
            if let Some((_, _, x1)) = self.zones.iter().find(|(name, _, _)| *name == node.name) {
                bounds.push(*x1);
            }
        }
        ZoneSplit {
            bounds,
            band: CELL / 2.0,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|node| node.child.id()).collect()
    }

    /// Stops every node, then nats-server; returns notes of unclean exits
    /// and of what the nodes logged.
    fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        // What the nodes log while they stop (a neighbour gone silent) is
        // not news: only the lines from before count.
        let before: Vec<usize> = self.nodes.iter().map(|n| n.stderr.lock().len()).collect();
        // All at once: a node stopping while its neighbours still run
        // would see them go silent.
        for node in &self.nodes {
            terminate(&node.child);
        }
        let timeout = Duration::from_secs(15);
        let deadline = Instant::now() + timeout;
        for node in &mut self.nodes {
            notes.extend(wait_stopped(
                &mut node.child,
                &format!("node {}", node.name),
                deadline,
                timeout,
            ));
        }
        for (node, before) in self.nodes.iter_mut().zip(before) {
            if let Some(thread) = node.thread.take() {
                let _ = thread.join();
            }
            let lines = node.stderr.lock();
            // An open server says so at start; the benchmark's nodes are.
            let unexpected: Vec<&String> = lines[..before.min(lines.len())]
                .iter()
                .filter(|line| !line.contains("no --auth-secret"))
                .collect();
            if let Some(first) = unexpected.first() {
                notes.push(format!(
                    "node {} wrote {} line(s) to stderr; first: {first}",
                    node.name,
                    unexpected.len()
                ));
            }
        }
        if let Some(note) = self.nats.stop() {
            let last = self.nats.stderr.lock().last().cloned().unwrap_or_default();
            notes.push(format!("{note}; its last line: {last}"));
        }
        notes
    }
}

/// This very executable (see `child::own_executable`): the nodes are the
/// same build as the harness.
fn own_executable() -> anyhow::Result<PathBuf> {
    let proc_self = Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe().context("locating the servercore executable")
}

/// The game and admin addresses of a ready file, once it is there whole.
fn read_ready(path: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(path).ok()?;
    let ready: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        ready["addr"].as_str()?.parse().ok()?,
        ready["admin"].as_str()?.parse().ok()?,
    ))
}

/// The readings at one end of the measured window.
struct Snapshot {
    at: Instant,
    node_cpu: Vec<Duration>,
    node_counts: Vec<NodeCounts>,
    nats_cpu: Duration,
    varz: Option<Varz>,
    load_cpu: Duration,
    others: HashMap<u32, u64>,
}

impl Snapshot {
    fn take(cluster: &Cluster) -> anyhow::Result<Snapshot> {
        let at = Instant::now();
        let node_cpu = cluster
            .pids()
            .into_iter()
            .map(procfs::cpu_time)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nats_cpu = procfs::cpu_time(cluster.nats.child.id())?;
        let load_cpu = procfs::cpu_time(std::process::id())?;
        let mut exclude = cluster.pids();
        exclude.push(cluster.nats.child.id());
        exclude.push(std::process::id());
        let others = procfs::user_process_ticks(&exclude);
        let node_counts = cluster.nodes.iter().map(Node::counts).collect();
        let varz = cluster.nats.varz().ok();
        Ok(Snapshot {
            at,
            node_cpu,
            node_counts,
            nats_cpu,
            varz,
            load_cpu,
            others,
        })
    }
}

/// Reads the cluster at the client's window's opening and closing.
struct ZoneProbe<'a> {
    cluster: &'a Cluster,
    open: Option<anyhow::Result<Snapshot>>,
    close: Option<anyhow::Result<Snapshot>>,
    counts: WindowCounts,
}

impl LoadObserver for ZoneProbe<'_> {
    fn window_opened(&mut self) {
        self.open = Some(Snapshot::take(self.cluster));
    }

    fn window_closed(&mut self, counts: WindowCounts) {
        self.counts = counts;
        self.close = Some(Snapshot::take(self.cluster));
    }
}

impl Bench {
    /// Runs the zones scenario on every engine backend: the main
    /// measurement on each node count, then, with `--capacity-steps`, a
    /// capacity sweep per node count.
    pub(super) fn zones(&mut self) {
        let plan = self.plan.zones.clone();
        for &backend in &plan.backends {
            for &nodes in &plan.node_counts {
                match self.zones_once(backend, nodes, plan.players, plan.window) {
                    Ok(result) => {
                        if let Some(failure) = result.failure(u64::MAX) {
                            self.report.notes.push(format!(
                                "zones {} players on {nodes} node(s), {}: {failure}",
                                plan.players,
                                backend.name()
                            ));
                        }
                        self.report.zones.push(result);
                    }
                    Err(error) => {
                        self.failures += 1;
                        let note = format!(
                            "zones on {nodes} node(s), {} failed: {error:#}",
                            backend.name()
                        );
                        self.progress.eprintln(&format!("  {note}"));
                        self.report.notes.push(note);
                    }
                }
            }
            if !plan.steps.is_empty() {
                for &nodes in &plan.node_counts {
                    let capacity = self.zones_sweep(backend, nodes, &plan);
                    self.report.zone_capacity.push(capacity);
                }
            }
        }
    }

    /// The capacity sweep of one backend on one node count.
    fn zones_sweep(&mut self, backend: Impl, nodes: usize, plan: &ZonesPlan) -> ZoneCapacity {
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
            let result = match self.zones_once(backend, nodes, players, plan.step_window) {
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
                "  zones {players} · {nodes} node(s) · {}: {} deliveries, own-move p99 {}, transfer p99 {}, nodes {:.2} cores, load gen {:.2} cores: {}",
                backend.name(),
                format_rate(result.deliveries_per_sec),
                format_micros(result.own_move.p99_us as f64),
                if result.transfer_time.count > 0 {
                    format_micros(result.transfer_time.p99_us as f64)
                } else {
                    "-".to_string()
                },
                result.server_cpu_cores,
                result.load_cpu_cores,
                if saturated {
                    "invalid: the load generator was saturated"
                } else {
                    failure.as_deref().unwrap_or("held")
                }
            ));
            steps.push(ZoneStep {
                players,
                own_move_p50_us: result.own_move.p50_us,
                own_move_p99_us: result.own_move.p99_us,
                transfer_p99_us: result.transfer_time.p99_us,
                deliveries_per_sec: result.deliveries_per_sec,
                server_cpu_us_per_delivery: result.server_cpu_us_per_delivery,
                server_cpu_cores: result.server_cpu_cores,
                load_cpu_cores: result.load_cpu_cores,
                load_saturated: saturated,
                errors_total: result.errors_total,
                failure: failure.clone(),
            });
            if saturated {
                stopped = Some(format!(
                    "the load generator was saturated at {players} players ({:.2} cores): that step is invalid, and the capacity is at least the last step held",
                    result.load_cpu_cores
                ));
                break;
            }
            if let Some(failure) = failure {
                stopped = Some(format!("{players} players failed: {failure}"));
                break;
            }
            capacity = Some(players);
        }
        ZoneCapacity {
            implementation: backend.name().to_string(),
            nodes,
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

    /// One measurement: a fresh cluster of `nodes` nodes on `backend`,
    /// `players` walking its world for the warm-up and `window`.
    fn zones_once(
        &mut self,
        backend: Impl,
        nodes: usize,
        players: usize,
        window: Duration,
    ) -> anyhow::Result<ZoneResult> {
        let plan = self.plan.zones.clone();
        let label = format!("zones {players} · {nodes} node(s) · {}", backend.name());
        self.progress
            .phase(&label, "starting nats-server and the nodes", 0);
        let world_size = ZonesPlan::side(players);
        let cluster = Cluster::start(&NodeSpec {
            backend,
            nodes,
            world_size,
            tick: plan.tick,
            workers: plan.workers,
            max_sessions: players + 1000,
        })?;
        self.progress
            .step("players entering, walking, measuring", 0);
        let addrs = cluster.addrs();
        let mut config = LoadConfig::new(addrs[0]);
        config.more_addrs = addrs[1..].to_vec();
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
        config.account_prefix = "zbench".to_owned();
        config.zones = Some(cluster.split());
        let mut probe = ZoneProbe {
            cluster: &cluster,
            open: None,
            close: None,
            counts: WindowCounts::default(),
        };
        let report = run_load_observed(config, false, &StopSignal::new(), &mut probe);
        let (open, close, counts) = (probe.open.take(), probe.close.take(), probe.counts);
        let notes = cluster.stop();
        for note in notes {
            if !self.report.notes.contains(&note) {
                self.report.notes.push(note);
            }
        }
        let report = report?;
        let open = open
            .context("the measured window never opened")?
            .context("reading the cluster at the window's start")?;
        let close = close
            .context("the measured window never closed")?
            .context("reading the cluster at the window's end")?;
        let seconds = close.at.duration_since(open.at).as_secs_f64().max(1e-9);
        let node_cpu: Vec<f64> = open
            .node_cpu
            .iter()
            .zip(&close.node_cpu)
            .map(|(a, b)| b.saturating_sub(*a).as_secs_f64())
            .collect();
        let node_deliveries: Vec<Option<u64>> = open
            .node_counts
            .iter()
            .zip(&close.node_counts)
            .map(|(a, b)| Some(b.move_deliveries?.saturating_sub(a.move_deliveries?)))
            .collect();
        let ticks = open
            .node_counts
            .first()
            .zip(close.node_counts.first())
            .and_then(|(a, b)| Some(b.ticks?.saturating_sub(a.ticks?)))
            .filter(|&t| t > 0)
            .map(|t| t as f64)
            .unwrap_or_else(|| seconds / plan.tick.as_secs_f64());
        let nats = open.varz.zip(close.varz).map(|(a, b)| Varz {
            in_msgs: b.in_msgs.saturating_sub(a.in_msgs),
            in_bytes: b.in_bytes.saturating_sub(a.in_bytes),
            out_msgs: b.out_msgs.saturating_sub(a.out_msgs),
            out_bytes: b.out_bytes.saturating_sub(a.out_bytes),
        });
        let other_cpu = procfs::ticks_since(&open.others, &close.others).as_secs_f64();
        if other_cpu / seconds > super::plan::BUSY_MACHINE_CORES {
            self.report.notes.push(format!(
                "{label}: other processes used {:.2} cores during the window; the machine was not quiet",
                other_cpu / seconds
            ));
        }
        let load_cpu_cores = close.load_cpu.saturating_sub(open.load_cpu).as_secs_f64() / seconds;
        let deliveries = counts.move_deliveries;
        let server_cpu: f64 = node_cpu.iter().sum();
        let movement = report.movement.unwrap_or_default();
        let follow = report.follow.unwrap_or_default();
        let zone_latency = report.zone_latency.unwrap_or_default();
        let per = |n: f64| (ticks > 0.0).then(|| n / ticks);
        Ok(ZoneResult {
            implementation: backend.name().to_string(),
            nodes,
            players,
            entered: report.sessions.entered,
            world_size,
            seconds,
            ticks,
            deliveries,
            deliveries_per_sec: deliveries as f64 / seconds,
            server_cpu_us_per_delivery: (deliveries > 0)
                .then(|| server_cpu * 1e6 / deliveries as f64),
            server_cpu_cores: server_cpu / seconds,
            node_cpu_cores: node_cpu.iter().map(|cpu| cpu / seconds).collect(),
            node_cpu_us_per_delivery: node_cpu
                .iter()
                .zip(&node_deliveries)
                .map(|(cpu, d)| d.filter(|&d| d > 0).map(|d| cpu * 1e6 / d as f64))
                .collect(),
            node_deliveries,
            nats_cpu_cores: close.nats_cpu.saturating_sub(open.nats_cpu).as_secs_f64() / seconds,
            nats_in_msgs_per_tick: nats.and_then(|n| per(n.in_msgs as f64)),
            nats_in_bytes_per_tick: nats.and_then(|n| per(n.in_bytes as f64)),
            nats_out_msgs_per_tick: nats.and_then(|n| per(n.out_msgs as f64)),
            nats_out_bytes_per_tick: nats.and_then(|n| per(n.out_bytes as f64)),
            load_cpu_cores,
            other_cpu_cores: other_cpu / seconds,
            load_saturated: load_cpu_cores
                >= SATURATED * procfs::allowed_cpus().len().max(1) as f64,
            moves_sent: movement.moves_sent,
            own_moves: movement.own_moves,
            own_move: latency_of(&movement.latency_us),
            local_move: latency_of(&zone_latency.local_us),
            cross_move: latency_of(&zone_latency.cross_us),
            transfers_told: counts.transfers_told,
            transfers: counts.transfers,
            transfers_per_sec: counts.transfers as f64 / seconds,
            transfer_errors: counts.transfer_errors,
            transfer_time: latency_of(&follow.transfer_time_us),
            reconnects: follow.reconnects,
            spawns: movement.players_spawned,
            errors: report.errors.clone(),
            errors_total: report.errors_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_name() {
        let page = "# HELP x\nservercore_game_move_deliveries_total 1234\nservercore_game_move_deliveries_total_other 9\nservercore_game_ticks_total 40\n";
        assert_eq!(
            metric(page, "servercore_game_move_deliveries_total"),
            Some(1234.0)
        );
        assert_eq!(metric(page, "servercore_game_ticks_total"), Some(40.0));
        assert_eq!(metric(page, "servercore_game_ticks"), None);
    }

    #[test]
    fn the_world_keeps_the_move_density() {
        assert_eq!(ZonesPlan::side(1000), 2000.0);
        assert_eq!(ZonesPlan::side(4000), 4000.0);
        assert_eq!(ZonesPlan::side(100), 632.0);
    }
}
