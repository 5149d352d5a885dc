//! One world across nodes, over a real nats-server on loopback: nodes of
//! `--world-nodes a,b` split the map into two strips (a: x < 1000, b: x ≥
//! 1000 on the default 2000 × 2000 map of 100-unit cells), players on
//! either side of the border see each other's spawns, moves and despawns
//! exactly as inside one node, and a node that stops has its strip taken
//! over (and given back when it returns).
//!
//! Nodes run in this process (`servercore_game::start`), each with its own
//! NATS connections; they share one SQLite file so player ids are unique
//! across them. Every test runs on both backends, bounded by read
//! timeouts and deadlines; without nats-server it is ignored.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_game::auth::TokenKey;
use servercore_game::cluster::ClusterConfig;
use servercore_game::{GameConfig, GameServer, WorldConfig};
use servercore_protocol::{
    make_packet, CEnterGame, CLogin, CMove, ClientPacket, LoginRefusal, PosInfo, STransfer,
};

use servercore_testkit::net::wait_until;
use servercore_testkit::services::NatsServer;

/// `servercore server` with `args`: (exit code, stdout, stderr).
fn server_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_servercore"))
        .arg("server")
        .args(args)
        .output()
        .expect("run servercore");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The zone flags: required together, checked with clear errors, and in
/// --print-config (the secret file's path, never its content).
#[test]
fn zone_flags_are_checked_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret = secret.to_str().unwrap();
    let (code, _, err) = server_cli(&["--world-nodes", "a,b", "--print-config"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--nats") && err.contains("--cluster-secret"),
        "{err}"
    );
    let (code, out, err) = server_cli(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--node",
        "a",
        "--world-nodes",
        "a,b",
        "--cluster-secret",
        secret,
        "--public-addr",
        "game.example:7001",
        "--public-ws-url",
        "wss://game.example/ws",
        "--print-config",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("world-nodes = [\"a\", \"b\"]"), "{out}");
    assert!(
        out.contains(&format!("cluster-secret = \"{secret}\"")),
        "{out}"
    );
    assert!(out.contains("public-addr = \"game.example:7001\""), "{out}");
    assert!(
        out.contains("public-ws-url = \"wss://game.example/ws\""),
        "{out}"
    );
    assert!(!out.contains("a cluster secret"), "never the secret itself");
    // This node not in the list.
    let (code, _, err) = server_cli(&[
        "--addr",
        "127.0.0.1:0",
        "--db",
        ":memory:",
        "--nats",
        "nats://127.0.0.1:1",
        "--node",
        "c",
        "--world-nodes",
        "a,b",
        "--cluster-secret",
        secret,
    ]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("this node (c) is not one of --world-nodes a,b"),
        "{err}"
    );
    // A secret too short.
    std::fs::write(dir.path().join("short"), b"short").unwrap();
    let short = dir.path().join("short");
    let (code, _, err) = server_cli(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--node",
        "a",
        "--world-nodes",
        "a,b",
        "--cluster-secret",
        short.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--cluster-secret"), "{err}");
}

use servercore_testkit::backend_tests;

backend_tests!(
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    players_across_a_border_see_each_other,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_stopped_node_has_its_strip_re_split_and_restored,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_walker_is_handed_over_and_never_vanishes,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_player_that_moves_as_it_arrives_is_despawned_where_it_is_not_seen,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    transfer_tokens_are_refused_when_misused,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_player_that_never_arrives_leaves_after_ten_seconds,
);

const SECRET: &[u8] = b"a cluster secret of at least 32 bytes";

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn node_config(backend: Backend, db: &str, nats: &str, node: &str) -> GameConfig {
    let mut cluster = ClusterConfig::new(nats, node);
    cluster.heartbeat_interval = Duration::from_millis(200);
    cluster.node_timeout = Duration::from_millis(1500);
    cluster.world_nodes = vec!["a".into(), "b".into()];
    cluster.cluster_secret = Some(TokenKey::from_secret(SECRET).unwrap());
    GameConfig {
        backend,
        workers: Some(2),
        db_path: PathBuf::from(db),
        cluster: Some(cluster),
        max_conns_per_ip: 0,
        max_new_accounts_per_min: 0,
        world: WorldConfig {
            // One move goes anywhere: the tests place players directly.
            max_speed: 1.0e9,
            ..WorldConfig::default()
        },
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn start_node(backend: Backend, db: &str, nats: &str, node: &str) -> GameServer {
    servercore_game::start(node_config(backend, db, nats, node)).expect("node starts")
}

/// The zone map `node` uses now, as `(node, first column, end column)`.
fn zones(node: &GameServer) -> Vec<(String, u32, u32)> {
    node.border_stats().expect("a shared world").zones
}

fn split(strips: &[(&str, u32, u32)]) -> Vec<(String, u32, u32)> {
    strips
        .iter()
        .map(|(node, start, end)| ((*node).to_owned(), *start, *end))
        .collect()
}

/// Waits until every node uses `expected`.
fn wait_zones(nodes: &[&GameServer], expected: &[(&str, u32, u32)]) {
    let expected = split(expected);
    assert!(
        wait_until(Duration::from_secs(10), || nodes
            .iter()
            .all(|node| zones(node) == expected)),
        "zone maps {:?}, expected {expected:?}",
        nodes.iter().map(|node| zones(node)).collect::<Vec<_>>()
    );
}

/// What a client saw of another player.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Spawn(f32, f32),
    Move(f32, f32),
    Despawn,
}

/// A blocking game client that records every spawn, move and despawn of
/// other players.
struct Client {
    stream: TcpStream,
    player_id: u64,
    pos: (f32, f32),
    seen: Vec<(u64, Seen)>,
    /// The S_TRANSFERs it got.
    transfers: Vec<STransfer>,
    /// The server closed the connection.
    closed: bool,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            player_id: 0,
            pos: (0.0, 0.0),
            seen: Vec::new(),
            transfers: Vec::new(),
            closed: false,
        }
    }

    /// Logs in; the refusal's reason if refused.
    fn login(&mut self, account: &str) -> Result<(), i32> {
        self.send(&make_packet(&CLogin {
            account: account.into(),
        }));
        loop {
            match self.recv() {
                ClientPacket::SLogin(login) if login.success => return Ok(()),
                ClientPacket::SLogin(login) => return Err(login.reason),
                ClientPacket::SSpawn(_) | ClientPacket::SMove(_) | ClientPacket::SDespawn(_) => {}
                other => panic!("expected S_LOGIN, got {other:?}"),
            }
        }
    }

    fn join(addr: SocketAddr, account: &str) -> Client {
        let mut client = Client::connect(addr);
        client
            .login(account)
            .unwrap_or_else(|reason| panic!("login of {account} refused: {reason}"));
        client.enter();
        client
    }

    /// Follows `S_TRANSFER` `transfer`: connects to its address and logs in
    /// with its token; keeps what it saw.
    fn follow(&mut self, transfer: &STransfer) {
        let addr: SocketAddr = transfer.addr.parse().expect("a TCP address");
        let fresh = Client::connect(addr);
        self.stream = fresh.stream;
        self.closed = false;
        self.login(&transfer.token)
            .unwrap_or_else(|reason| panic!("transfer login refused: {reason}"));
        self.enter();
    }

    fn enter(&mut self) {
        let client = self;
        client.send(&make_packet(&CEnterGame { player_index: 0 }));
        match client.recv() {
            ClientPacket::SEnterGame(entered) => {
                assert!(entered.success, "enter refused");
                client.player_id = entered.player_id;
                let pos = entered.player.and_then(|p| p.pos_info).unwrap();
                client.pos = (pos.x, pos.y);
            }
            other => panic!("expected S_ENTER_GAME, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &[u8]) {
        self.stream.write_all(packet).expect("send");
    }

    /// The next packet (recording world traffic of others), or None once
    /// `limit` passes without one.
    fn next(&mut self, limit: Duration) -> Option<ClientPacket> {
        if self.closed {
            std::thread::sleep(limit);
            return None;
        }
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut header = [0u8; 4];
        let read = self.stream.read_exact(&mut header);
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match read {
            Ok(()) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            // Closed by the server (after a transfer).
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                self.closed = true;
                return None;
            }
            Err(error) => panic!("read: {error}"),
        }
        let size = u16::from_le_bytes([header[0], header[1]]) as usize;
        let mut body = vec![0u8; size - 4];
        self.stream.read_exact(&mut body).expect("body");
        let packet =
            ClientPacket::decode(u16::from_le_bytes([header[2], header[3]]), &body).unwrap();
        match &packet {
            ClientPacket::SSpawn(spawn) => {
                for player in &spawn.players {
                    let pos = player.pos_info.unwrap_or_default();
                    self.seen
                        .push((player.object_id, Seen::Spawn(pos.x, pos.y)));
                }
            }
            ClientPacket::SMove(moved) => {
                let info = moved.info.unwrap_or_default();
                if info.object_id != self.player_id {
                    self.seen.push((info.object_id, Seen::Move(info.x, info.y)));
                }
            }
            ClientPacket::SDespawn(despawn) => {
                for id in &despawn.object_ids {
                    self.seen.push((*id, Seen::Despawn));
                }
            }
            ClientPacket::STransfer(transfer) => self.transfers.push(transfer.clone()),
            _ => {}
        }
        Some(packet)
    }

    fn recv(&mut self) -> ClientPacket {
        self.next(READ_TIMEOUT).expect("a packet in time")
    }

    /// Moves to `(x, y)` and waits for its own S_MOVE.
    fn go(&mut self, x: f32, y: f32) {
        self.send(&make_packet(&CMove {
            info: Some(PosInfo {
                x,
                y,
                ..PosInfo::default()
            }),
            client_time_us: 7,
        }));
        loop {
            match self.next(READ_TIMEOUT) {
                Some(ClientPacket::SMove(moved)) => {
                    let info = moved.info.unwrap();
                    if info.object_id == self.player_id {
                        self.pos = (info.x, info.y);
                        assert_eq!(self.pos, (x, y), "the move is taken as sent");
                        return;
                    }
                }
                // Handed over before the move was taken.
                Some(ClientPacket::STransfer(_)) => return,
                Some(_) => {}
                None => panic!("no answer to a move"),
            }
        }
    }

    /// Reads until `other` has been seen as `what` (up to 10 s).
    fn wait_for(&mut self, other: u64, what: &Seen) {
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self
            .seen
            .iter()
            .any(|(id, seen)| *id == other && seen == what)
        {
            assert!(
                Instant::now() < deadline,
                "player {} never saw {other} as {what:?}; saw {:?}",
                self.player_id,
                self.seen
            );
            self.next(Duration::from_millis(100));
        }
    }

    /// Moves to `(x, y)`, following a transfer if one comes instead of
    /// (or right after) the move's answer, until the player stands there.
    fn go_anywhere(&mut self, x: f32, y: f32) {
        for _ in 0..4 {
            let before = self.transfers.len();
            self.go(x, y);
            self.drain(Duration::from_millis(300));
            match self.transfers.get(before).cloned() {
                Some(transfer) => self.follow(&transfer),
                None => return,
            }
        }
        panic!("transferred back and forth");
    }

    /// Reads until an S_TRANSFER, then until the server closes.
    fn expect_transfer(&mut self) -> STransfer {
        let deadline = Instant::now() + READ_TIMEOUT;
        while self.transfers.is_empty() {
            assert!(Instant::now() < deadline, "no S_TRANSFER");
            self.next(Duration::from_millis(100));
        }
        assert!(
            self.closed || self.closed_within(READ_TIMEOUT),
            "the old session closes"
        );
        self.transfers.last().unwrap().clone()
    }

    /// True once the server has closed the connection (within `limit`).
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Reads everything for `quiet` more.
    fn drain(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            self.next(Duration::from_millis(50));
        }
    }

    /// What it saw of `other` so far.
    fn of(&self, other: u64) -> Vec<Seen> {
        self.seen
            .iter()
            .filter(|(id, _)| *id == other)
            .map(|(_, seen)| seen.clone())
            .collect()
    }
}

/// A player on a just west of the border and one on b just east of it see
/// each other (spawn, moves), both ways, then despawn each other when one
/// walks away: exactly what one node would send.
fn players_across_a_border_see_each_other(backend: Backend) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let a = start_node(backend, db, &nats.url(), "a");
    let b = start_node(backend, db, &nats.url(), "b");
    wait_zones(&[&a, &b], &[("a", 0, 10), ("b", 10, 20)]);

    let mut west = Client::join(a.local_addr(), "west");
    let mut east = Client::join(b.local_addr(), "east");
    // Far apart first (wherever they entered), then nothing in flight.
    west.go_anywhere(100.0, 100.0);
    east.go_anywhere(1900.0, 1900.0);
    west.drain(Duration::from_millis(500));
    east.drain(Duration::from_millis(500));
    west.seen.clear();
    east.seen.clear();
    let (w, e) = (west.player_id, east.player_id);

    west.go(950.0, 500.0);
    // b shows west before east comes near (so east spawns it standing).
    assert!(wait_until(Duration::from_secs(10), || b
        .border_stats()
        .unwrap()
        .remote_players
        == 1));
    east.go(1050.0, 500.0);
    // The first sight of a newcomer from the other node is its spawn where
    // it stands (its move of that tick may come with it, or not).
    west.wait_for(e, &Seen::Spawn(1050.0, 500.0));
    east.wait_for(w, &Seen::Spawn(950.0, 500.0));
    // Moves both ways.
    east.go(1060.0, 510.0);
    west.wait_for(e, &Seen::Move(1060.0, 510.0));
    west.go(960.0, 520.0);
    east.wait_for(w, &Seen::Move(960.0, 520.0));
    // East walks away, out of the border cells: both despawn the other.
    east.go(1500.0, 500.0);
    west.wait_for(e, &Seen::Despawn);
    east.wait_for(w, &Seen::Despawn);
    west.drain(Duration::from_millis(500));
    east.drain(Duration::from_millis(500));

    assert_eq!(
        west.of(e),
        [
            Seen::Spawn(1050.0, 500.0),
            Seen::Move(1050.0, 500.0),
            Seen::Move(1060.0, 510.0),
            Seen::Despawn
        ]
    );
    assert_eq!(
        east.of(w),
        [
            Seen::Spawn(950.0, 500.0),
            Seen::Move(960.0, 520.0),
            Seen::Despawn
        ]
    );
    // Back again: seen again, from the new place.
    east.go(1010.0, 450.0);
    west.wait_for(e, &Seen::Spawn(1010.0, 450.0));
    east.wait_for(w, &Seen::Spawn(960.0, 520.0));
    for node in [&a, &b] {
        let stats = node.border_stats().unwrap();
        assert_eq!(stats.remote_players, 1, "{stats:?}");
        assert_eq!(stats.dropped_malformed + stats.dropped_too_big, 0);
        assert!(stats.messages_in > 0 && stats.messages_out > 0);
    }
    drop(west);
    drop(east);
    a.stop_and_join();
    b.stop_and_join();
}

/// b stops: a takes the whole map; b starts again: the strips are back.
fn a_stopped_node_has_its_strip_re_split_and_restored(backend: Backend) {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let a = start_node(backend, db, &nats.url(), "a");
    let b = start_node(backend, db, &nats.url(), "b");
    wait_zones(&[&a, &b], &[("a", 0, 10), ("b", 10, 20)]);
    b.stop_and_join();
    wait_zones(&[&a], &[("a", 0, 20)]);
    let b = start_node(backend, db, &nats.url(), "b");
    wait_zones(&[&a, &b], &[("a", 0, 10), ("b", 10, 20)]);
    a.stop_and_join();
    b.stop_and_join();
}

/// Both nodes, each with a watcher near the border: a on its side, b on
/// its own, each already seeing the walker.
struct Crossing {
    a: GameServer,
    b: GameServer,
    west: Client,
    east: Client,
    walker: Client,
    _nats: NatsServer,
    _dir: tempfile::TempDir,
}

fn crossing(backend: Backend) -> Option<Crossing> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap().to_owned();
    let a = start_node(backend, &db, &nats.url(), "a");
    let b = start_node(backend, &db, &nats.url(), "b");
    wait_zones(&[&a, &b], &[("a", 0, 10), ("b", 10, 20)]);
    // Every node has the other's address before anyone crosses.
    assert!(wait_until(Duration::from_secs(10), || {
        a.cluster_stats().unwrap().nodes.len() == 1 && b.cluster_stats().unwrap().nodes.len() == 1
    }));
    std::thread::sleep(Duration::from_millis(500));
    let mut walker = Client::join(a.local_addr(), "walker");
    walker.go_anywhere(900.0, 500.0);
    let mut west = Client::join(a.local_addr(), "west");
    west.go_anywhere(960.0, 500.0);
    let mut east = Client::join(b.local_addr(), "east");
    east.go_anywhere(1040.0, 500.0);
    let k = walker.player_id;
    west.wait_for(k, &Seen::Spawn(900.0, 500.0));
    east.wait_for(k, &Seen::Spawn(900.0, 500.0));
    for client in [&mut walker, &mut west, &mut east] {
        client.drain(Duration::from_millis(300));
        client.seen.clear();
    }
    Some(Crossing {
        a,
        b,
        west,
        east,
        walker,
        _nats: nats,
        _dir: dir,
    })
}

/// A walker crosses from a's zone into b's: one S_TRANSFER (b, its
/// address, the position), the old session closes, it logs in at b with
/// the token and stands where it stood; a watcher on each side sees each
/// of its moves exactly once and never a despawn or a second spawn.
fn a_walker_is_handed_over_and_never_vanishes(backend: Backend) {
    let Some(Crossing {
        a,
        b,
        mut west,
        mut east,
        mut walker,
        _nats: _nats_kept,
        _dir: _dir_kept,
    }) = crossing(backend)
    else {
        return;
    };
    let k = walker.player_id;
    let mut expected = Vec::new();
    for step in 1..=8 {
        let x = 900.0 + 20.0 * step as f32;
        walker.go(x, 500.0);
        expected.push(Seen::Move(x, 500.0));
    }
    // 1060 is more than half a cell past a's strip (x < 1000).
    let transfer = walker.expect_transfer();
    let handed = Instant::now();
    assert_eq!(walker.transfers.len(), 1);
    assert_eq!(transfer.node, "b");
    assert_eq!(transfer.addr, b.local_addr().to_string());
    let pos = transfer.pos.unwrap();
    assert_eq!((pos.x, pos.y), (1060.0, 500.0));
    walker.follow(&transfer);
    assert_eq!(walker.player_id, k, "the same player");
    assert_eq!(walker.pos, (1060.0, 500.0), "where it stood");
    // It sees both watchers at once (a fresh client: everyone spawned).
    walker.wait_for(east.player_id, &Seen::Spawn(1040.0, 500.0));
    walker.wait_for(west.player_id, &Seen::Spawn(960.0, 500.0));
    walker.go(1080.0, 500.0);
    // Not asserted (no timing in tests): printed for the notes.
    eprintln!(
        "transfer: S_TRANSFER read to the first own S_MOVE on the new node: {:?}",
        handed.elapsed()
    );
    expected.push(Seen::Move(1080.0, 500.0));
    west.wait_for(k, &Seen::Move(1080.0, 500.0));
    east.wait_for(k, &Seen::Move(1080.0, 500.0));
    west.drain(Duration::from_millis(500));
    east.drain(Duration::from_millis(500));
    assert_eq!(west.of(k), expected, "west watcher");
    assert_eq!(east.of(k), expected, "east watcher");
    // Walking on out of both views: one despawn each.
    walker.go(1300.0, 500.0);
    west.wait_for(k, &Seen::Despawn);
    east.wait_for(k, &Seen::Despawn);
    expected.push(Seen::Despawn);
    west.drain(Duration::from_millis(300));
    east.drain(Duration::from_millis(300));
    assert_eq!(west.of(k), expected, "west watcher");
    assert_eq!(east.of(k), expected, "east watcher");
    // Exactly one node has the player.
    let on = |node: &GameServer| node.world_snapshot().iter().any(|(id, _, _)| *id == k);
    assert!(on(&b) && !on(&a));
    assert_eq!(a.stats().transfers_out, 1);
    assert_eq!(b.stats().transfers_in, 1);
    assert_eq!(a.stats().transfers_never_arrived, 0);
    drop((walker, west, east));
    a.stop_and_join();
    b.stop_and_join();
}

/// A walker handed over to b that moves the moment it is in game (back
/// towards a, into a column a watcher on b does not see): the watcher, who
/// saw it in b's first column while a still had it, is told it left, and
/// spawns it once when it comes back; never a second spawn of a player
/// it still has. (The arrival stays a tick where a's copy stood: moved at
/// once, it left that cell without a departure anyone was told.)
fn a_player_that_moves_as_it_arrives_is_despawned_where_it_is_not_seen(backend: Backend) {
    let Some(Crossing {
        a,
        b,
        west,
        east,
        mut walker,
        _nats: _nats_kept,
        _dir: _dir_kept,
    }) = crossing(backend)
    else {
        return;
    };
    drop((west, east));
    // On b, two columns east of the border column: it sees columns 10 to
    // 12, not 9.
    let mut watcher = Client::join(b.local_addr(), "watcher");
    watcher.go_anywhere(1150.0, 500.0);
    let k = walker.player_id;
    for step in 1..=8 {
        walker.go(900.0 + 20.0 * step as f32, 500.0);
    }
    let transfer = walker.expect_transfer();
    watcher.wait_for(k, &Seen::Spawn(1000.0, 500.0));
    walker.follow(&transfer);
    // At once, before the tick that takes the arrival in: into column 9,
    // a's by less than half a cell (no hand-over back).
    walker.go(980.0, 500.0);
    watcher.wait_for(k, &Seen::Despawn);
    walker.go(1060.0, 500.0);
    watcher.wait_for(k, &Seen::Spawn(1060.0, 500.0));
    watcher.drain(Duration::from_millis(500));
    let changes: Vec<Seen> = watcher
        .of(k)
        .into_iter()
        .filter(|seen| !matches!(seen, Seen::Move(..)))
        .collect();
    assert_eq!(
        changes,
        vec![
            Seen::Spawn(1000.0, 500.0),
            Seen::Despawn,
            Seen::Spawn(1060.0, 500.0)
        ],
        "the watcher's spawns and despawns of the walker: {:?}",
        watcher.of(k)
    );
    let on = |node: &GameServer| node.world_snapshot().iter().any(|(id, _, _)| *id == k);
    assert!(on(&b) && !on(&a));
    drop((walker, watcher));
    a.stop_and_join();
    b.stop_and_join();
}

/// A token taken once is refused the second time, at the other node, when
/// expired, and when signed with another secret: `LOGIN_REFUSAL_BAD_TOKEN`.
fn transfer_tokens_are_refused_when_misused(backend: Backend) {
    let Some(Crossing {
        a,
        b,
        west,
        east,
        mut walker,
        _nats: _nats_kept,
        _dir: _dir_kept,
    }) = crossing(backend)
    else {
        return;
    };
    walker.go(1060.0, 500.0);
    let transfer = walker.expect_transfer();
    let refused = |node: &GameServer, token: &str| {
        let mut client = Client::connect(node.local_addr());
        client.login(token)
    };
    let bad = Err(LoginRefusal::BadToken as i32);
    // For b: refused at a.
    assert_eq!(refused(&a, &transfer.token), bad);
    walker.follow(&transfer);
    // Used once.
    assert_eq!(refused(&b, &transfer.token), bad);
    let minted = |secret: &[u8], exp: u64| {
        servercore_game::transfer::Transfers::new(TokenKey::from_secret(secret).unwrap(), "a")
            .mint_expiring("walker", walker.player_id, "b", exp)
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(refused(&b, &minted(SECRET, now - 1)), bad, "expired");
    assert_eq!(
        refused(
            &b,
            &minted(b"another secret of at least 32 bytes!", now + 30)
        ),
        bad,
        "another secret"
    );
    // A fresh, good one is taken.
    assert_eq!(refused(&b, &minted(SECRET, now + 30)), Ok(()));
    assert_eq!(b.stats().transfer_tokens_refused, 3);
    assert_eq!(a.stats().transfer_tokens_refused, 1);
    drop((walker, west, east));
    a.stop_and_join();
    b.stop_and_join();
}

/// A player handed over that never logs in at the target leaves a's world
/// after 10 s: both watchers see it despawn then, not before.
fn a_player_that_never_arrives_leaves_after_ten_seconds(backend: Backend) {
    let Some(Crossing {
        a,
        b,
        mut west,
        mut east,
        mut walker,
        _nats: _nats_kept,
        _dir: _dir_kept,
    }) = crossing(backend)
    else {
        return;
    };
    let k = walker.player_id;
    walker.go(1060.0, 500.0);
    let _ = walker.expect_transfer();
    let handed = Instant::now();
    west.wait_for(k, &Seen::Move(1060.0, 500.0));
    east.wait_for(k, &Seen::Move(1060.0, 500.0));
    // Still shown for a while.
    west.drain(Duration::from_secs(3));
    assert!(!west.of(k).contains(&Seen::Despawn), "{:?}", west.of(k));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !west.of(k).contains(&Seen::Despawn) || !east.of(k).contains(&Seen::Despawn) {
        assert!(Instant::now() < deadline, "never despawned");
        west.next(Duration::from_millis(50));
        east.next(Duration::from_millis(50));
    }
    assert!(
        handed.elapsed() >= Duration::from_secs(9),
        "{:?}",
        handed.elapsed()
    );
    assert_eq!(west.of(k), [Seen::Move(1060.0, 500.0), Seen::Despawn]);
    assert_eq!(east.of(k), [Seen::Move(1060.0, 500.0), Seen::Despawn]);
    assert_eq!(a.stats().transfers_never_arrived, 1);
    let on = |node: &GameServer| node.world_snapshot().iter().any(|(id, _, _)| *id == k);
    assert!(!on(&a) && !on(&b));
    drop((walker, west, east));
    a.stop_and_join();
    b.stop_and_join();
}
