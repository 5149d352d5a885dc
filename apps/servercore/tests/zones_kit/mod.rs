//! What the shared-world tests with real processes share (`zones_walk.rs`,
//! `zones_faults.rs`): nodes of one world (`--world-nodes`) as child
//! processes over a private nats-server, their `/status` (which players
//! each simulates, the zone map it uses), and `servercore client
//! --scenario move` walking them, with its JSON report.
//!
//! The world is small (600 × 600 of 50-unit cells: 12 columns) so that
//! walkers at 150 units/s cross a border within a few seconds.

#![allow(dead_code)] // Each test file uses its own part of the kit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_testkit::child::{ChildProcess, Ready};
use servercore_testkit::net::wait_until;
use servercore_testkit::services::NatsServer;

/// The side of the test world and of its cells.
pub const WORLD_SIZE: &str = "600";
pub const CELL: &str = "50";

/// The liveness timing of the test nodes: heartbeats every 200 ms, a node
/// silent for 1.5 s is taken for dead, leases last 3 s unless renewed.
pub const TIMING: [&str; 6] = [
    "--heartbeat-ms",
    "200",
    "--node-timeout-ms",
    "1500",
    "--lease-ms",
    "3000",
];

const SECRET: &[u8] = b"a cluster secret of at least 32 bytes";

/// The tests of a file take turns: each runs several processes, and one
/// test's load must not stretch another's deadlines on a small machine.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A node of the world as a child process.
pub struct Node {
    pub name: String,
    pub process: ChildProcess,
    pub ready: Ready,
}

impl Node {
    /// `/status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let admin = self.ready.admin.expect("the test nodes serve --admin");
        let body = http_get(admin, "/status")?;
        serde_json::from_str(&body).ok()
    }

    /// The players this node simulates now (by its `/status` world map).
    pub fn players(&self) -> Option<Vec<u64>> {
        let status = self.status()?;
        let players = status["world"]["players"].as_array()?;
        Some(
            players
                .iter()
                .filter_map(|player| player[2].as_u64())
                .collect(),
        )
    }

    /// The zone map this node uses: `(node, x0, x1)`.
    pub fn zones(&self) -> Option<Vec<(String, f64, f64)>> {
        let status = self.status()?;
        let zones = status["world"]["zones"].as_array()?;
        Some(
            zones
                .iter()
                .map(|zone| {
                    (
                        zone["node"].as_str().unwrap_or_default().to_owned(),
                        zone["x0"].as_f64().unwrap_or_default(),
                        zone["x1"].as_f64().unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }

    /// Waits until the node's log shows `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) {
        assert!(
            wait_until(limit, || self.process.log().contains(text)),
            "no {text:?} in {}'s log within {limit:?}:\n{}",
            self.name,
            self.process.log()
        );
    }
}

/// A blocking HTTP GET; the body of a 200 answer.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_owned())
}

/// Nodes of one shared world over their own nats-server.
pub struct World {
    pub backend: Backend,
    pub nats: NatsServer,
    pub names: Vec<String>,
    pub nodes: Vec<Node>,
    /// Arguments every node gets beyond the kit's own.
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl World {
    /// nats-server and one node per name (None without nats-server); the
    /// nodes have heard each other when it returns.
    pub fn start(backend: Backend, names: &[&str]) -> Option<World> {
        World::start_with(backend, names, &[])
    }

    /// The same, every node started with `extra` arguments too (e.g. a
    /// WebSocket listener).
    pub fn start_with(backend: Backend, names: &[&str], extra: &[&str]) -> Option<World> {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.secret"), SECRET).unwrap();
        let mut world = World {
            backend,
            nats,
            names: names.iter().map(|name| (*name).to_owned()).collect(),
            nodes: Vec::new(),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            dir,
        };
        for name in names {
            let node = world.spawn(name);
            world.nodes.push(node);
        }
        world.wait_split(names.len());
        Some(world)
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("world.db")
    }

    /// Starts node `name` (not added to `nodes`).
    pub fn spawn(&self, name: &str) -> Node {
        let (process, ready) = ChildProcess::spawn_ready(
            Command::new(env!("CARGO_BIN_EXE_servercore"))
                .args(["--log", "info", "server", "--addr", "127.0.0.1:0"])
                .args(["--admin", "127.0.0.1:0"])
                .args(["--workers", "2", "--backend", self.backend.name()])
                .arg("--db")
                .arg(self.db())
                .args(["--nats", &self.nats.url(), "--node", name])
                .args(["--world-nodes", &self.names.join(",")])
                .arg("--cluster-secret")
                .arg(self.dir.path().join("cluster.secret"))
                .args(["--world-size", WORLD_SIZE, "--cell", CELL])
                .args(["--max-conns-per-ip", "0", "--max-new-accounts-per-min", "0"])
                .args(TIMING)
                .args(&self.extra),
            Duration::from_secs(20),
        );
        Node {
            name: name.to_owned(),
            process,
            ready,
        }
    }

    /// Waits until every node's zone map has `live` strips, the same on
    /// every node.
    pub fn wait_split(&self, live: usize) {
        let agreed = || {
            let maps: Vec<_> = self.nodes.iter().map(Node::zones).collect();
            maps.iter()
                .all(|map| map.as_ref().is_some_and(|map| map.len() == live))
                && maps.windows(2).all(|pair| pair[0] == pair[1])
        };
        assert!(
            wait_until(Duration::from_secs(15), agreed),
            "the nodes never agreed on {live} zones: {:?}",
            self.nodes.iter().map(Node::zones).collect::<Vec<_>>()
        );
    }

    /// The nodes' game addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.ready.addr).collect()
    }

    /// Which nodes simulate each player, over the nodes that answer.
    pub fn placement(&self) -> BTreeMap<u64, Vec<String>> {
        let mut placement: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for node in &self.nodes {
            for id in node.players().unwrap_or_default() {
                placement.entry(id).or_default().push(node.name.clone());
            }
        }
        placement
    }

    /// Waits until `players` players are in the world, each simulated by
    /// exactly one node (a player in hand-over is shown by both for a
    /// tick or two); else the fullest placement seen.
    pub fn wait_each_on_one_node(
        &self,
        players: usize,
        limit: Duration,
    ) -> Result<BTreeMap<u64, Vec<String>>, BTreeMap<u64, Vec<String>>> {
        let deadline = Instant::now() + limit;
        let mut fullest = BTreeMap::new();
        loop {
            let placement = self.placement();
            if placement.len() == players && placement.values().all(|nodes| nodes.len() == 1) {
                return Ok(placement);
            }
            if placement.len() >= fullest.len() {
                fullest = placement;
            }
            if Instant::now() >= deadline {
                return Err(fullest);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `servercore client --scenario move` over `addrs`, running.
pub struct Walkers {
    pub process: ChildProcess,
    json: PathBuf,
    _dir: tempfile::TempDir,
}

impl Walkers {
    /// `sessions` walkers at 150 units/s, 10 moves/s, for `duration`, then
    /// held in game, idle, for `hold`; `prefix` names their accounts.
    pub fn start(
        backend: Backend,
        addrs: &[SocketAddr],
        sessions: usize,
        duration: &str,
        hold: &str,
        prefix: &str,
    ) -> Walkers {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let process = ChildProcess::spawn(
            Command::new(env!("CARGO_BIN_EXE_servercore"))
                .args(["--log", "info", "client", "--scenario", "move"])
                .args(["--addr", &list.join(",")])
                .args(["--sessions", &sessions.to_string()])
                .args(["--duration", duration, "--hold", hold])
                .args(["--speed", "150", "--move-rate", "10"])
                .args(["--world-size", WORLD_SIZE])
                .args(["--account-prefix", prefix])
                .args(["--backend", backend.name(), "--workers", "2"])
                .arg("--json")
                .arg(&json)
                .arg("--no-progress"),
        );
        Walkers {
            process,
            json,
            _dir: dir,
        }
    }

    /// Waits for the client to end (within `limit`) and reads its report.
    pub fn report(mut self, limit: Duration) -> serde_json::Value {
        let status = self.process.wait_exit(limit);
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|error| {
            panic!(
                "no report ({error}); the client exited with {status}; its log:\n{}",
                self.process.log()
            )
        });
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        eprintln!("client log:\n{}", self.process.log());
        eprintln!("client report: {report:#}");
        report
    }
}

/// The rules every run keeps, whatever happened during it: no violation
/// (no S_MOVE of a player not spawned, no second spawn of one in view),
/// every client in game at the end.
pub fn assert_clean(report: &serde_json::Value, sessions: u64) {
    let follow = &report["follow"];
    assert_eq!(follow["violations"], 0, "violations: {report:#}");
    for kind in ["move_from_unseen", "spawn_of_seen", "despawn_of_unseen"] {
        assert!(report["errors"].get(kind).is_none(), "{kind}: {report:#}");
    }
    assert_eq!(
        report["sessions"]["in_game_at_end"], sessions,
        "every client in game at the end: {report:#}"
    );
    assert_eq!(follow["in_transit_at_end"], 0, "{report:#}");
}
