//! Game-server nodes over a real nats-server (and PostgreSQL), on
//! loopback: world chat across three nodes, one session per account across
//! nodes, a node killed with SIGKILL, NATS killed and restarted mid-chat,
//! PostgreSQL stopped and started under a node.
//!
//! Every test starts its own nats-server (own port) so killing it cannot
//! disturb another test; nodes run in this process (`servercore_game::start`)
//! except the one that is SIGKILLed, a `servercore server` child process.
//! Each test runs on both backends and is bounded by read timeouts and
//! deadlines; a service that is missing skips the test with a message
//! (fails under CI).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_game::cluster::ClusterConfig;
use servercore_game::{GameConfig, GameServer};
use servercore_protocol::ClientPacket;

use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::GameClient;
use servercore_testkit::net::wait_until;
use servercore_testkit::services::{NatsServer, PostgresServer};

use servercore_testkit::backend_tests;

backend_tests!(
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    three_nodes_sixty_clients_chat,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    duplicate_login_across_nodes,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    killed_node_frees_its_accounts,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    nats_restart_mid_chat,
    #[cfg_attr(
        servercore_missing = "postgres_server",
        ignore = "needs PostgreSQL's server binaries in /usr/lib/postgresql (scripts/test-env installs them)"
    )]
    postgres_stop_and_start,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    load_client_splits_local_and_cross_node,
);

/// How long a client waits for one expected packet.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The liveness bound the issue sets: a dead node noticed within 5 s.
const LIVENESS_BOUND: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Nodes

fn node_config(backend: Backend, db: &str, nats: &str, node: &str) -> GameConfig {
    let mut cluster = ClusterConfig::new(nats, node);
    cluster.heartbeat_interval = Duration::from_millis(300);
    cluster.node_timeout = Duration::from_secs(2);
    GameConfig {
        backend,
        workers: Some(2),
        db_path: PathBuf::from(db),
        cluster: Some(cluster),
        // Every client comes from 127.0.0.1.
        max_conns_per_ip: 0,
        max_new_accounts_per_min: 0,
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn start_node(backend: Backend, db: &str, nats: &str, node: &str) -> GameServer {
    servercore_game::start(node_config(backend, db, nats, node)).expect("node starts")
}

/// Nodes a, b and c sharing one SQLite file in `dir` (so player ids are
/// unique across them, as with one PostgreSQL), once they see each other.
fn start_three(
    backend: Backend,
    dir: &tempfile::TempDir,
    nats: &NatsServer,
) -> (Vec<GameServer>, Vec<SocketAddr>) {
    let db = dir.path().join("shared.db");
    let nodes: Vec<GameServer> = ["a", "b", "c"]
        .iter()
        .map(|name| start_node(backend, db.to_str().unwrap(), &nats.url(), name))
        .collect();
    wait_meshed(&nodes.iter().collect::<Vec<_>>());
    let addrs = nodes.iter().map(GameServer::local_addr).collect();
    (nodes, addrs)
}

/// Waits until every node sees all the others (their subscriptions are in
/// place: heartbeats are subscribed after chat).
fn wait_meshed(nodes: &[&GameServer]) {
    let others = nodes.len() - 1;
    assert!(
        wait_until(Duration::from_secs(10), || nodes.iter().all(|node| {
            let stats = node.cluster_stats().unwrap();
            stats.connected && stats.nodes.len() == others
        })),
        "nodes did not see each other: {:?}",
        nodes.iter().map(|n| n.cluster_stats()).collect::<Vec<_>>()
    );
}

/// How many accounts `observer` sees on `node`.
fn held_on(observer: &GameServer, node: &str) -> Option<usize> {
    observer
        .cluster_stats()
        .unwrap()
        .nodes
        .iter()
        .find(|(name, _)| name == node)
        .map(|(_, held)| *held)
}

// ---------------------------------------------------------------------------
// The test client

/// Connects a client that passes over world traffic (spawns, despawns and
/// moves of players nearby, which these tests do not check).
fn connect(addr: SocketAddr) -> GameClient {
    GameClient::connect(addr).skipping_world()
}

/// Connects, logs in as `account` and enters.
fn join(addr: SocketAddr, account: &str) -> GameClient {
    GameClient::join(addr, account).0.skipping_world()
}

// ---------------------------------------------------------------------------
// The tests

/// 60 clients over three nodes, five chats each: every client receives
/// every chat exactly once, each sender's in the order sent.
fn three_nodes_sixty_clients_chat(backend: Backend) {
    const CLIENTS: usize = 60;
    const CHATS: usize = 5;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_three(backend, &dir, &nats);
    let entered = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let entered = Arc::clone(&entered);
            std::thread::spawn(move || {
                let mut client = join(addr, &format!("chatter{i}"));
                entered.wait();
                for k in 0..CHATS {
                    client.chat(&format!("{i}:{k}"), 1);
                }
                // sender → the sequence numbers received from it, in order
                let mut got: HashMap<usize, Vec<usize>> = HashMap::new();
                let mut total = 0;
                while total < CLIENTS * CHATS {
                    match client.recv() {
                        ClientPacket::SChat(chat) => {
                            let (from, seq) = chat.msg.split_once(':').expect("i:k");
                            got.entry(from.parse().unwrap())
                                .or_default()
                                .push(seq.parse().unwrap());
                            total += 1;
                        }
                        other => panic!("client {i}: unexpected {other:?}"),
                    }
                }
                // Nothing more may come but world traffic: exactly once.
                let more = client.recv_within(Duration::from_millis(300));
                assert!(
                    more.is_none(),
                    "client {i}: a chat more than once: {more:?}"
                );
                got
            })
        })
        .collect();
    let expected: Vec<usize> = (0..CHATS).collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let got = thread.join().expect("client thread");
        assert_eq!(got.len(), CLIENTS, "client {i} heard every sender");
        for (from, seqs) in got {
            assert_eq!(seqs, expected, "client {i}: sender {from}'s chats in order");
        }
    }
    for node in &nodes {
        let cluster = node.cluster_stats().unwrap();
        let stats = node.stats();
        assert_eq!(stats.chats_relayed, (CLIENTS / 3 * CHATS) as u64);
        assert_eq!(stats.remote_chats, (CLIENTS / 3 * 2 * CHATS) as u64);
        assert_eq!(cluster.chats_out, (CLIENTS / 3 * CHATS) as u64);
        assert_eq!(cluster.chats_dropped, 0);
        assert_eq!(
            stats.chat_deliveries,
            (CLIENTS / 3 * CLIENTS * CHATS) as u64,
            "{}",
            cluster.node
        );
    }
}

/// Logging in on B while the account is in game on A disconnects A's
/// session before B's login succeeds; a second login on the same node does
/// the same locally.
fn duplicate_login_across_nodes(backend: Backend) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let a = start_node(backend, db, &nats.url(), "a");
    let b = start_node(backend, db, &nats.url(), "b");
    wait_meshed(&[&a, &b]);
    let mut first = join(a.local_addr(), "twice");
    assert!(
        wait_until(Duration::from_secs(5), || held_on(&b, "a") == Some(1)),
        "b sees the account on a"
    );
    // Walk on A: where the player stands there is saved when A lets go.
    std::thread::sleep(Duration::from_millis(200));
    let walked = first.step(20.0, -15.0);
    let mut second = connect(b.local_addr());
    assert!(second.login("twice").success);
    // B answered only after A let go: A's kick is already counted.
    assert_eq!(a.stats().duplicate_login_kicks, 1);
    assert_eq!(b.cluster_stats().unwrap().kicks_sent, 1);
    assert!(first.closed_within(READ_TIMEOUT), "A's session is closed");
    assert!(second.enter(0).success);
    assert_eq!(second.player_id, first.player_id, "the same player");
    assert_eq!(second.pos, walked, "B enters where A saved the player");
    assert!(
        wait_until(Duration::from_secs(5), || held_on(&a, "b") == Some(1)
            && held_on(&b, "a") == Some(0)),
        "presence moved to b"
    );
    // The same on one node: the newer login wins.
    let mut third = connect(b.local_addr());
    assert!(third.login("twice").success);
    assert_eq!(b.stats().duplicate_login_kicks, 1);
    assert!(
        second.closed_within(READ_TIMEOUT),
        "the older session on B is closed"
    );
    assert!(third.enter(0).success);
    drop(third);
    assert!(
        wait_until(Duration::from_secs(5), || b.stats().player_states == 0
            && held_on(&a, "b") == Some(0)),
        "the account went offline everywhere"
    );
}

/// A `servercore server` node as a child process.
struct ChildNode {
    process: ChildProcess,
    addr: SocketAddr,
}

impl ChildNode {
    fn start(backend: Backend, db: &str, nats: &str, node: &str) -> ChildNode {
        let (process, ready) = ChildProcess::spawn_ready(
            Command::new(env!("CARGO_BIN_EXE_servercore"))
                .args(["--log", "warn", "server", "--addr", "127.0.0.1:0"])
                .args(["--workers", "2", "--backend", backend.name(), "--db", db])
                .args(["--nats", nats, "--node", node])
                .args(["--heartbeat-ms", "300", "--node-timeout-ms", "2000"]),
            Duration::from_secs(20),
        );
        ChildNode {
            process,
            addr: ready.addr,
        }
    }

    fn sigkill(&mut self) {
        self.process.signal("KILL");
        self.process.wait_exit(Duration::from_secs(10));
    }
}

/// A node killed with SIGKILL is noticed within the bound, its accounts are
/// offline, and they log in on another node.
fn killed_node_frees_its_accounts(backend: Backend) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let mut victim = ChildNode::start(backend, db, &nats.url(), "victim");
    let survivor = start_node(backend, db, &nats.url(), "survivor");
    let _held = join(victim.addr, "orphan");
    assert!(
        wait_until(Duration::from_secs(10), || held_on(&survivor, "victim")
            == Some(1)),
        "survivor sees the account on the victim: {:?}",
        survivor.cluster_stats()
    );
    victim.sigkill();
    let killed = Instant::now();
    assert!(
        wait_until(LIVENESS_BOUND, || held_on(&survivor, "victim").is_none()),
        "the dead node was not noticed within {LIVENESS_BOUND:?}"
    );
    let noticed = killed.elapsed();
    assert!(noticed <= LIVENESS_BOUND, "noticed after {noticed:?}");
    assert_eq!(survivor.cluster_stats().unwrap().nodes_lost, 1);
    let mut again = connect(survivor.local_addr());
    assert!(
        again.login("orphan").success,
        "the account logs in elsewhere"
    );
    assert!(again.enter(0).success);
    assert!(killed.elapsed() <= LIVENESS_BOUND + READ_TIMEOUT);
}

/// NATS killed and restarted mid-chat: local chat never stops, cross-node
/// chat resumes without restarting a node, no node crashes.
fn nats_restart_mid_chat(backend: Backend) {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let a = start_node(backend, ":memory:", &nats.url(), "a");
    let b = start_node(backend, ":memory:", &nats.url(), "b");
    wait_meshed(&[&a, &b]);
    let mut speaker = join(a.local_addr(), "speaker");
    let mut neighbour = join(a.local_addr(), "neighbour");
    let mut far = join(b.local_addr(), "far");
    speaker.chat("before", 1);
    assert!(
        far.wait_chat("before", READ_TIMEOUT),
        "cross-node chat works"
    );
    assert!(neighbour.wait_chat("before", READ_TIMEOUT));
    nats.kill();
    assert!(
        wait_until(Duration::from_secs(10), || !a
            .cluster_stats()
            .unwrap()
            .connected),
        "a noticed the outage"
    );
    for n in 0..5 {
        let msg = format!("during{n}");
        speaker.chat(&msg, 1);
        assert!(
            neighbour.wait_chat(&msg, READ_TIMEOUT),
            "local chat goes on"
        );
        assert!(speaker.wait_chat(&msg, READ_TIMEOUT));
    }
    nats.restart();
    // Cross-node chat resumes: keep chatting until one gets across.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let resumed = loop {
        if Instant::now() >= deadline {
            break false;
        }
        let msg = format!("after{n}");
        n += 1;
        speaker.chat(&msg, 1);
        if far.wait_chat(&msg, Duration::from_millis(500)) {
            break true;
        }
    };
    assert!(resumed, "cross-node chat resumed: {:?}", a.cluster_stats());
    let stats = a.cluster_stats().unwrap();
    assert!(stats.connected);
    assert_eq!(stats.outages, 1, "the outage counted once");
    assert!(
        stats.chats_dropped >= 5,
        "chats during the outage were dropped"
    );
    // And the other way.
    far.chat("back", 1);
    assert!(speaker.wait_chat("back", READ_TIMEOUT));
}

/// PostgreSQL stopped under a node: logins fail cleanly (S_LOGIN
/// success=false, counted); started again: logins succeed, no restart.
fn postgres_stop_and_start(backend: Backend) {
    let Some(mut pg) = PostgresServer::start() else {
        return;
    };
    let config = GameConfig {
        backend,
        workers: Some(2),
        db_path: PathBuf::from(pg.url()),
        db_pool: 2,
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let server = servercore_game::start(config).expect("node starts on postgres");
    assert_eq!(server.db_kind().to_string(), "postgres");
    let _first = join(server.local_addr(), "before");
    pg.stop();
    for n in 0..3 {
        let mut client = connect(server.local_addr());
        assert!(
            !client.login(&format!("down{n}")).success,
            "login refused while down"
        );
    }
    let stats = server.stats();
    assert_eq!(stats.logins_failed_db_down, 3);
    assert_eq!(stats.logins_refused, 3);
    pg.resume();
    let mut n = 0;
    let back = wait_until(Duration::from_secs(15), || {
        n += 1;
        connect(server.local_addr())
            .login(&format!("back{n}"))
            .success
    });
    assert!(back, "logins succeed once postgres is back");
    let again = join(server.local_addr(), "before");
    assert_ne!(again.player_id, 0);
    let stats = server.stop_and_join();
    assert_eq!(stats.player_states, 0);
}

/// The load client over three nodes: sessions spread evenly, every
/// delivery sorted into local or cross-node, both with latencies.
fn load_client_splits_local_and_cross_node(backend: Backend) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_nodes, addrs) = start_three(backend, &dir, &nats);
    let mut config = servercore_load::client::LoadConfig::new(addrs[0]);
    config.more_addrs = addrs[1..].to_vec();
    config.sessions = 30;
    config.rate = 4.0;
    config.duration = Duration::from_secs(1);
    config.backend = backend;
    config.workers = Some(2);
    let report = servercore_load::client::run_load(config, false).expect("load run");
    assert_eq!(report.errors_total, 0, "{report}");
    let split = report.nodes.clone().expect("a split report");
    assert_eq!(split.sessions_per_node, [10, 10, 10]);
    let sent = report.messages_sent;
    assert!(sent > 0);
    assert_eq!(report.deliveries_received, sent * 30, "{report}");
    assert_eq!(
        report.own_echoes, sent,
        "each chat came back to its sender once"
    );
    assert_eq!(split.local_deliveries, sent * 10, "{report}");
    assert_eq!(split.cross_deliveries, sent * 20, "{report}");
    assert_eq!(split.local_latency_us.samples, split.local_deliveries);
    assert_eq!(split.cross_latency_us.samples, split.cross_deliveries);
    let table = report.table();
    assert!(table.contains("cross-node deliveries"), "{table}");
}
