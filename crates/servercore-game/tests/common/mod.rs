//! Shared helpers of the game's integration tests: the `backend_tests!`
//! macro (one test per backend), a blocking test client over a std
//! `TcpStream` speaking the protocol crate's packets, and a server started
//! on a database whose players stand where the test put them.

#![allow(dead_code)] // each test file uses its own part

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use servercore::packet::{split_frame, Packet, RateLimits, MAX_PACKET_SIZE};
use servercore::Backend;
use servercore_game::storage::{Position, SqliteStorage, Storage as _, StorageOptions};
use servercore_game::{GameConfig, GameServer, WorldConfig};
use servercore_protocol::{
    make_packet, CEnterGame, CLogin, CMove, ClientPacket, PosInfo, SEnterGame, SLogin, SMove,
};

/// Runs a test function once per backend: `backend_tests!(name, ...)` makes
/// `name::poll` and `name::uring` (skipped, with a note, where io_uring is
/// unavailable unless `SERVERCORE_REQUIRE_URING` is set).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn poll() {
                    super::$name(servercore::Backend::Poll);
                }

                #[test]
                fn uring() {
                    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
                        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
                            panic!("io_uring required but unavailable: {reason}");
                        }
                        eprintln!("skipping io_uring test: {reason}");
                        return;
                    }
                    super::$name(servercore::Backend::IoUring);
                }
            }
        )*
    };
}

/// How long a test waits for a packet it expects.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A world for tests: no rate limits, so every move counts, and a short
/// tick (10 ms), so a test waits little for each.
pub fn world(size: f32, cell: f32, region_cells: u32, max_speed: f32) -> WorldConfig {
    WorldConfig {
        size,
        cell,
        max_speed,
        region_cells,
        move_rate: None,
        chat_rate: None,
        tick: Duration::from_millis(10),
        max_pending_moves: 1 << 20,
        ..WorldConfig::default()
    }
}

/// The same world, ticking only when the test steps it
/// ([`GameServer::step_world_tick`]).
pub fn manual_world(size: f32, cell: f32, region_cells: u32, max_speed: f32) -> WorldConfig {
    WorldConfig {
        manual_ticks: true,
        ..world(size, cell, region_cells, max_speed)
    }
}

/// Starts a game server on `backend` with `world`, on the database file
/// `db`, two workers.
pub fn start(backend: Backend, world: WorldConfig, db: &Path) -> GameServer {
    let config = GameConfig {
        backend,
        workers: Some(2),
        idle_timeout: None,
        rate_limits: RateLimits::unlimited(),
        world,
        db_path: db.to_owned(),
        // Every test client comes from 127.0.0.1.
        max_conns_per_ip: 0,
        max_new_accounts_per_min: 0,
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    servercore_game::start(config).expect("game server starts")
}

/// Creates the accounts named in `placed` in the database `db` (before the
/// server opens it) with their first player saved at the given point.
/// Returns the first player's id of each, in order.
pub fn place(db: &Path, placed: &[(&str, f32, f32)]) -> Vec<u64> {
    let mut database =
        SqliteStorage::open(db, &StorageOptions::default()).expect("open the test database");
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    for (account, x, y) in placed {
        let record = database.login_batch(&[account]).remove(0).expect("login");
        let id = record.players[0].id;
        ids.push(id);
        positions.push((
            id,
            Position {
                x: *x,
                y: *y,
                z: 0.0,
                yaw: 0.0,
            },
        ));
    }
    database.save_positions(&positions).expect("save positions");
    ids
}

/// A blocking game client.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    pending: VecDeque<ClientPacket>,
    /// The player it entered with (0 before).
    pub player_id: u64,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            player_id: 0,
        }
    }

    /// Connects, logs in as `account` and enters with its first player.
    pub fn join(addr: SocketAddr, account: &str) -> (Client, SEnterGame) {
        let mut client = Client::connect(addr);
        let login = client.login(account);
        assert!(login.success, "login of {account}");
        let entered = client.enter(0);
        assert!(entered.success, "enter of {account}");
        (client, entered)
    }

    /// Sends one packet.
    pub fn send<M: Packet>(&mut self, msg: &M) {
        self.stream.write_all(&make_packet(msg)).expect("send");
    }

    /// Writes raw bytes (several packets at once, say).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Closes the sending side (FIN after everything sent): the server
    /// reads every packet, then sees the connection end. (Dropping a socket
    /// with unread data would reset it and could lose what was sent.)
    pub fn close_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }

    /// Sends a move to `(x, y)` stamped `client_time_us`.
    pub fn send_move(&mut self, x: f32, y: f32, client_time_us: u64) {
        self.send(&CMove {
            info: Some(PosInfo {
                x,
                y,
                ..PosInfo::default()
            }),
            client_time_us,
        });
    }

    /// Logs in and reads the answer.
    pub fn login(&mut self, account: &str) -> SLogin {
        self.send(&CLogin {
            account: account.into(),
        });
        match self.recv() {
            ClientPacket::SLogin(msg) => msg,
            other => panic!("expected S_LOGIN, got {other:?}"),
        }
    }

    /// Enters with player `index` and reads the answer.
    pub fn enter(&mut self, index: u64) -> SEnterGame {
        self.send(&CEnterGame {
            player_index: index,
        });
        match self.recv() {
            ClientPacket::SEnterGame(msg) => {
                if msg.success {
                    self.player_id = msg.player_id;
                }
                msg
            }
            other => panic!("expected S_ENTER_GAME, got {other:?}"),
        }
    }

    /// The next packet, waiting at most `wait`; `None` on a timeout or a
    /// closed connection.
    pub fn recv_within(&mut self, wait: Duration) -> Option<ClientPacket> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(packet) = self.pending.pop_front() {
                return Some(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_nonblocking(false).unwrap();
            self.stream.set_read_timeout(Some(left)).unwrap();
            if !self.read_some() {
                return None;
            }
        }
    }

    /// The next packet (panics after [`TIMEOUT`]).
    pub fn recv(&mut self) -> ClientPacket {
        self.recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("player {}: no packet within {TIMEOUT:?}", self.player_id))
    }

    /// Every packet already received, without waiting.
    pub fn drain(&mut self) -> Vec<ClientPacket> {
        self.stream.set_nonblocking(true).unwrap();
        while self.read_some() {}
        self.stream.set_nonblocking(false).unwrap();
        self.pending.drain(..).collect()
    }

    /// Reads once into the buffer and splits off whole packets. False if
    /// nothing came (timeout, would block, closed).
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let n = match self.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::Interrupted => return true, // read again
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionReset
                ) =>
            {
                return false
            }
            Err(error) => panic!("read: {error}"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some(frame) = split_frame(&self.buf[used..], MAX_PACKET_SIZE).expect("framing") {
            let packet = ClientPacket::decode(frame.id, frame.body).expect("a client packet");
            used += frame.wire_len();
            self.pending.push_back(packet);
        }
        self.buf.drain(..used);
        true
    }

    /// Expects an `S_SPAWN`; returns its players' ids in order.
    pub fn expect_spawn(&mut self) -> Vec<u64> {
        match self.recv() {
            ClientPacket::SSpawn(msg) => msg.players.iter().map(|p| p.object_id).collect(),
            other => panic!("player {}: expected S_SPAWN, got {other:?}", self.player_id),
        }
    }

    /// Expects an `S_DESPAWN`; returns its ids.
    pub fn expect_despawn(&mut self) -> Vec<u64> {
        match self.recv() {
            ClientPacket::SDespawn(msg) => msg.object_ids,
            other => panic!(
                "player {}: expected S_DESPAWN, got {other:?}",
                self.player_id
            ),
        }
    }

    /// Expects an `S_MOVE`.
    pub fn expect_move(&mut self) -> SMove {
        match self.recv() {
            ClientPacket::SMove(msg) => msg,
            other => panic!("player {}: expected S_MOVE, got {other:?}", self.player_id),
        }
    }

    /// Expects an `S_MOVE` of `player` at `(x, y)`.
    pub fn expect_move_of(&mut self, player: u64, x: f32, y: f32) -> SMove {
        let msg = self.expect_move();
        let info = msg.info.unwrap_or_default();
        assert_eq!(
            (info.object_id, info.x, info.y),
            (player, x, y),
            "player {}: S_MOVE",
            self.player_id
        );
        msg
    }

    /// Asserts that nothing arrives within `wait` (the absence of an extra
    /// packet; a slow server can only make this pass, never fail).
    pub fn expect_nothing(&mut self, wait: Duration) {
        if let Some(packet) = self.recv_within(wait) {
            panic!("player {}: unexpected {packet:?}", self.player_id);
        }
    }
}
