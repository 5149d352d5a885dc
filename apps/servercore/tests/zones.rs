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
use servercore_protocol::{make_packet, CEnterGame, CLogin, CMove, ClientPacket, PosInfo};

mod common;
#[path = "../../../crates/servercore-game/tests/services/mod.rs"]
mod services;

use services::{eventually, NatsServer};

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
);

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn node_config(backend: Backend, db: &str, nats: &str, node: &str) -> GameConfig {
    let mut cluster = ClusterConfig::new(nats, node);
    cluster.heartbeat_interval = Duration::from_millis(200);
    cluster.node_timeout = Duration::from_millis(1500);
    cluster.world_nodes = vec!["a".into(), "b".into()];
    cluster.cluster_secret =
        Some(TokenKey::from_secret(b"a cluster secret of at least 32 bytes").unwrap());
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
        eventually(Duration::from_secs(10), || nodes
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
}

impl Client {
    fn join(addr: SocketAddr, account: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream,
            player_id: 0,
            pos: (0.0, 0.0),
            seen: Vec::new(),
        };
        client.send(&make_packet(&CLogin {
            account: account.into(),
        }));
        match client.recv() {
            ClientPacket::SLogin(login) => assert!(login.success, "login of {account}"),
            other => panic!("expected S_LOGIN, got {other:?}"),
        }
        client.send(&make_packet(&CEnterGame { player_index: 0 }));
        match client.recv() {
            ClientPacket::SEnterGame(entered) => {
                assert!(entered.success, "enter refused");
                client.player_id = entered.player_id;
                let pos = entered.player.and_then(|p| p.pos_info).unwrap();
                client.pos = (pos.x, pos.y);
                client
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
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut header = [0u8; 4];
        let read = self.stream.read_exact(&mut header);
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match read {
            Ok(()) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
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
            if let ClientPacket::SMove(moved) = self.recv() {
                let info = moved.info.unwrap();
                if info.object_id == self.player_id {
                    self.pos = (info.x, info.y);
                    assert_eq!(self.pos, (x, y), "the move is taken as sent");
                    return;
                }
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
    west.go(100.0, 100.0);
    east.go(1900.0, 1900.0);
    west.drain(Duration::from_millis(500));
    east.drain(Duration::from_millis(500));
    west.seen.clear();
    east.seen.clear();
    let (w, e) = (west.player_id, east.player_id);

    west.go(950.0, 500.0);
    // b shows west before east comes near (so east spawns it standing).
    assert!(eventually(Duration::from_secs(10), || b
        .border_stats()
        .unwrap()
        .remote_players
        == 1));
    east.go(1050.0, 500.0);
    west.wait_for(e, &Seen::Move(1050.0, 500.0));
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
