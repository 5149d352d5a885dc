//! The world's tick over real sockets, on every backend, on a small map
//! whose ticks the test steps itself (`WorldConfig::manual_ticks`).
//!
//! Every tick is checked against a model of the rule in the world's docs:
//! at tick t a receiver r gets one `S_DESPAWN` of V_{t-1}(r) \ V_t(r), one
//! `S_SPAWN` of V_t(r) \ V_{t-1}(r), then the tick's `S_MOVE`s of the
//! players of V_t(r) and its own (its 3×3 block's cells row by row, each
//! cell's players by id, each player's moves in order), then the tick's
//! chats — exactly that, in that order, in **one** write per receiver (the
//! engine's write count goes up by the number of receivers that got
//! anything). The scripted test walks through entering, a move inside a
//! cell, several moves in one tick, a move across cells, a region border
//! crossed with a watcher on the border, two players crossing each other's
//! view in the same tick, leave, re-enter, a disconnect, and a move and a
//! close in the same tick; a seeded random walk of 24 players on a larger
//! map (with jumps across two regions, leaves, re-enters and disconnects)
//! checks 40 ticks more. Then: a move
//! outside the map is clamped, a too-fast one cut, and a position survives
//! a restart.
//!
//! The map is 600 × 600 in cells of 100 (6 × 6 cells) and regions of 3 × 3
//! cells: region 0 holds the cell columns 0–2 and region 1 the columns 3–5
//! of the rows 0–2, so x = 300 is a border.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{manual_world, place, start, world};
use servercore::Backend;
use servercore_game::world::Grid;
use servercore_game::{GameServer, GameStats};
use servercore_protocol::{CChat, CEnterGame, CLeaveGame, ClientPacket};
use servercore_testkit::backend_tests;
use servercore_testkit::client::{GameClient, TIMEOUT};

/// How long the test waits, after the expected packets of a tick came, for
/// anything more (a slow server can only make an extra packet pass
/// unseen, never a missing one).
const SETTLE: Duration = Duration::from_millis(30);

/// A packet as the model predicts it: spawn and despawn lists sorted.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Despawn(Vec<u64>),
    Spawn(Vec<u64>),
    Move { id: u64, x: f32, y: f32, t: u64 },
    Chat { from: u64, msg: String },
    LeaveGame,
}

impl Got {
    fn from_packet(packet: ClientPacket) -> Got {
        match packet {
            ClientPacket::SDespawn(msg) => {
                let mut ids = msg.object_ids;
                ids.sort_unstable();
                Got::Despawn(ids)
            }
            ClientPacket::SSpawn(msg) => {
                let mut ids: Vec<u64> = msg.players.iter().map(|p| p.object_id).collect();
                ids.sort_unstable();
                Got::Spawn(ids)
            }
            ClientPacket::SMove(msg) => {
                let info = msg.info.unwrap_or_default();
                Got::Move {
                    id: info.object_id,
                    x: info.x,
                    y: info.y,
                    t: msg.client_time_us,
                }
            }
            ClientPacket::SChat(msg) => Got::Chat {
                from: msg.player_id,
                msg: msg.msg,
            },
            ClientPacket::SLeaveGame(_) => Got::LeaveGame,
            other => panic!("not a world packet: {other:?}"),
        }
    }
}

/// What happens in one tick, as the test sends it.
#[derive(Default)]
struct TickInput {
    /// `(player, x, y, client_time_us)`, in the order sent.
    moves: Vec<(u64, f32, f32, u64)>,
    /// `(player, text)`.
    chats: Vec<(u64, String)>,
    /// Players that send `C_LEAVE_GAME`.
    leaves: Vec<u64>,
    /// Players whose connection closes.
    disconnects: Vec<u64>,
}

/// The rule, computed from positions alone.
struct Model {
    grid: Grid,
    /// Players in the world at the end of the last tick.
    at: BTreeMap<u64, (f32, f32)>,
    /// Players entered since (they appear at the next tick).
    entering: BTreeMap<u64, (f32, f32)>,
}

impl Model {
    fn new(grid: Grid) -> Model {
        Model {
            grid,
            at: BTreeMap::new(),
            entering: BTreeMap::new(),
        }
    }

    fn sees(&self, from: (f32, f32), other: (f32, f32)) -> bool {
        Grid::sees(
            self.grid.cell_of(from.0, from.1),
            self.grid.cell_of(other.0, other.1),
        )
    }

    /// What every receiver gets in this tick (receivers that get nothing
    /// are absent), and the world after it.
    fn tick(&mut self, input: &TickInput) -> HashMap<u64, Vec<Got>> {
        let before = self.at.clone();
        let mut after = before.clone();
        after.append(&mut self.entering);
        let mut moves: BTreeMap<u64, Vec<Got>> = BTreeMap::new();
        for &(id, x, y, t) in &input.moves {
            after.insert(id, (x, y));
            moves.entry(id).or_default().push(Got::Move { id, x, y, t });
        }
        let mut out: HashMap<u64, Vec<Got>> = HashMap::new();
        for id in input.leaves.iter().chain(&input.disconnects) {
            after.remove(id);
            moves.remove(id);
        }
        for id in &input.leaves {
            out.insert(*id, vec![Got::LeaveGame]);
        }
        for (&r, &pos) in &after {
            let mut got = Vec::new();
            let seen_now: Vec<u64> = after
                .iter()
                .filter(|(id, at)| **id != r && self.sees(pos, **at))
                .map(|(id, _)| *id)
                .collect();
            let seen_before: Vec<u64> = match before.get(&r) {
                Some(&was) => before
                    .iter()
                    .filter(|(id, at)| **id != r && self.sees(was, **at))
                    .map(|(id, _)| *id)
                    .collect(),
                None => Vec::new(),
            };
            let gone: Vec<u64> = seen_before
                .iter()
                .filter(|id| !seen_now.contains(id))
                .copied()
                .collect();
            let came: Vec<u64> = seen_now
                .iter()
                .filter(|id| !seen_before.contains(id))
                .copied()
                .collect();
            if !gone.is_empty() {
                got.push(Got::Despawn(gone));
            }
            if !came.is_empty() {
                got.push(Got::Spawn(came));
            }
            let centre = self.grid.cell_of(pos.0, pos.1);
            for cell in self.grid.around(centre) {
                for (id, at) in &after {
                    if self.grid.cell_of(at.0, at.1) == cell {
                        got.extend(moves.get(id).into_iter().flatten().cloned());
                    }
                }
            }
            for (from, msg) in &input.chats {
                got.push(Got::Chat {
                    from: *from,
                    msg: msg.clone(),
                });
            }
            if !got.is_empty() {
                out.insert(r, got);
            }
        }
        self.at = after;
        out
    }
}

/// The test's side of a stepped world: the clients, the model, and the
/// counts the server must reach before a tick is stepped.
struct Stepper<'s> {
    server: &'s GameServer,
    clients: BTreeMap<u64, GameClient>,
    model: Model,
    sent_moves: u64,
    sent_chats: u64,
    sent_leaves: u64,
    enters: u64,
    ticks: u64,
}

impl<'s> Stepper<'s> {
    fn new(server: &'s GameServer) -> Stepper<'s> {
        Stepper {
            server,
            clients: BTreeMap::new(),
            model: Model::new(server.world_grid().clone()),
            sent_moves: 0,
            sent_chats: 0,
            sent_leaves: 0,
            enters: 0,
            ticks: 0,
        }
    }

    /// Logs `account` in and enters its first player; it appears at the
    /// next tick. Returns its id.
    fn join(&mut self, account: &str) -> u64 {
        let (client, entered) = GameClient::join(self.server.local_addr(), account);
        self.enter_with(client, entered.player.unwrap().pos_info.unwrap())
    }

    fn enter_with(&mut self, client: GameClient, pos: servercore_protocol::PosInfo) -> u64 {
        let id = client.player_id;
        self.model.entering.insert(id, (pos.x, pos.y));
        self.clients.insert(id, client);
        self.enters += 1;
        id
    }

    /// Enters again on `id`'s open connection (after its leave).
    fn reenter(&mut self, id: u64) {
        let client = self.clients.get_mut(&id).unwrap();
        client.send(&CEnterGame { player_index: 0 });
        let ClientPacket::SEnterGame(entered) = client.recv() else {
            panic!("expected S_ENTER_GAME")
        };
        assert!(entered.success);
        let pos = entered.player.unwrap().pos_info.unwrap();
        self.model.entering.insert(id, (pos.x, pos.y));
        self.enters += 1;
    }

    fn wait_for(&self, what: &str, done: impl Fn(&GameStats) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(&self.server.stats()) {
            assert!(
                Instant::now() < deadline,
                "never: {what}: {}",
                self.server.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn writes(&self) -> u64 {
        self.server.engine_metrics().total().writes
    }

    /// Sends `input`, steps one tick once the server has taken all of it,
    /// and checks what every client got against the model.
    fn tick(&mut self, input: TickInput) {
        for &(id, x, y, t) in &input.moves {
            self.clients.get_mut(&id).unwrap().send_move(x, y, t);
        }
        for (id, msg) in &input.chats {
            self.clients.get_mut(id).unwrap().send(&CChat {
                msg: msg.clone(),
                client_time_us: 0,
            });
        }
        for id in &input.leaves {
            self.clients.get_mut(id).unwrap().send(&CLeaveGame {});
        }
        let mut closed = Vec::new();
        for id in &input.disconnects {
            let mut client = self.clients.remove(id).unwrap();
            client.close_write();
            closed.push(client);
        }
        self.sent_moves += input.moves.len() as u64;
        self.sent_chats += input.chats.len() as u64;
        self.sent_leaves += (input.leaves.len() + input.disconnects.len()) as u64;
        let (moves, chats, leaves, enters) = (
            self.sent_moves,
            self.sent_chats,
            self.sent_leaves,
            self.enters,
        );
        self.wait_for("the tick's input taken", |stats| {
            stats.moves == moves
                && stats.chats_relayed == chats
                && stats.world_leave_requests == leaves
                && stats.world_enters == enters
        });
        let expected = self.model.tick(&input);
        let writes_before = self.writes();
        assert!(self.server.step_world_tick(TIMEOUT), "the tick never ended");
        self.ticks += 1;
        for (id, client) in &mut self.clients {
            let want = expected.get(id).cloned().unwrap_or_default();
            // What came, up to what is expected: a missing packet shows in
            // the comparison instead of a wait for it.
            let got: Vec<Got> = (0..want.len())
                .map_while(|_| client.recv_within(Duration::from_secs(2)))
                .map(Got::from_packet)
                .collect();
            assert_eq!(
                by_sender(got),
                by_sender(want),
                "tick {}: player {id}",
                self.ticks
            );
        }
        let receivers = expected.len() as u64;
        let deadline = Instant::now() + TIMEOUT;
        while self.writes() < writes_before + receivers {
            assert!(Instant::now() < deadline, "writes never came");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(SETTLE);
        for (id, client) in &mut self.clients {
            let extra = client.drain();
            assert!(
                extra.is_empty(),
                "tick {}: player {id} got more: {extra:?}",
                self.ticks
            );
        }
        assert_eq!(
            self.writes() - writes_before,
            receivers,
            "tick {}: one write per receiver",
            self.ticks
        );
        drop(closed);
    }
}

/// Chats of different senders are taken in whatever order their players'
/// jobs ran: only each sender's own order is fixed. Sorts the chats (which
/// come last) by sender, keeping each sender's order.
fn by_sender(mut packets: Vec<Got>) -> Vec<Got> {
    let first_chat = packets
        .iter()
        .position(|got| matches!(got, Got::Chat { .. }))
        .unwrap_or(packets.len());
    packets[first_chat..].sort_by_key(|got| match got {
        Got::Chat { from, .. } => *from,
        _ => u64::MAX,
    });
    packets
}

fn mv(id: u64, x: f32, y: f32, t: u64) -> TickInput {
    TickInput {
        moves: vec![(id, x, y, t)],
        ..TickInput::default()
    }
}

fn scripted_ticks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("world.db");
    place(
        &db,
        &[
            ("a", 50.0, 50.0),   // cell (0, 0), region 0
            ("b", 150.0, 50.0),  // cell (1, 0), region 0
            ("c", 550.0, 550.0), // cell (5, 5), region 3
            ("d", 450.0, 50.0),  // cell (4, 0), region 1
            ("e", 250.0, 150.0), // cell (2, 1), region 0, by the border
        ],
    );
    let server = start(backend, manual_world(600.0, 100.0, 3, 1e12), &db);
    assert_eq!(server.world_grid().region_count(), 4);
    let mut world = Stepper::new(&server);

    // Enter: the newcomer alone gets nothing; the next one gets one
    // S_SPAWN of everyone it sees, and they one of it.
    let a = world.join("a");
    world.tick(TickInput::default());
    let b = world.join("b");
    world.tick(TickInput::default());
    let c = world.join("c");
    let d = world.join("d");
    let e = world.join("e");
    world.tick(TickInput::default());
    assert_eq!(
        server.world_snapshot(),
        [
            (a, 50.0, 50.0),
            (b, 150.0, 50.0),
            (c, 550.0, 550.0),
            (d, 450.0, 50.0),
            (e, 250.0, 150.0)
        ]
    );

    // A move inside a cell; then two moves of one player and a chat in one
    // tick.
    world.tick(mv(a, 60.0, 60.0, 11));
    world.tick(TickInput {
        moves: vec![(a, 70.0, 70.0, 12), (a, 80.0, 80.0, 13)],
        chats: vec![(b, "hi".into())],
        ..TickInput::default()
    });
    // Across cells inside region 0: b loses a, a loses b, e keeps b.
    world.tick(mv(b, 250.0, 50.0, 14));
    // Across the border into region 1: b finds d; e, on the border, sees
    // b on both sides: no despawn, no respawn, each move once.
    world.tick(mv(b, 350.0, 50.0, 15));
    // Back into region 0 with a second move behind it, in one tick.
    world.tick(TickInput {
        moves: vec![(b, 250.0, 50.0, 16), (b, 260.0, 50.0, 17)],
        ..TickInput::default()
    });
    // Two players crossing into each other's view in the same tick.
    world.tick(TickInput {
        moves: vec![(a, 250.0, 250.0, 18), (c, 350.0, 350.0, 19)],
        ..TickInput::default()
    });
    // Leave: S_LEAVE_GAME for b, a despawn for whoever saw it.
    world.tick(TickInput {
        leaves: vec![b],
        ..TickInput::default()
    });
    assert!(!server.world_snapshot().iter().any(|(id, _, _)| *id == b));
    // Enter again, where it left.
    world.reenter(b);
    world.tick(TickInput::default());
    // A disconnect: despawned for everyone who saw d.
    world.tick(TickInput {
        disconnects: vec![d],
        ..TickInput::default()
    });
    // A move across the border and a close in the same tick: nobody is
    // shown the move (the mover is gone at the tick's end); e, who saw b,
    // gets its despawn.
    world.tick(TickInput {
        moves: vec![(b, 350.0, 50.0, 20)],
        disconnects: vec![b],
        ..TickInput::default()
    });
    let (mut b_again, entered) = GameClient::join(server.local_addr(), "b");
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!(
        (pos.x, pos.y),
        (350.0, 50.0),
        "saved where the last move put it"
    );
    b_again.expect_nothing(SETTLE);
    world.enter_with(b_again, pos);
    world.tick(TickInput::default());

    let stats = server.stats();
    assert_eq!(stats.moves, world.sent_moves);
    assert_eq!(stats.handovers, 2, "b across the border and back: {stats}");
    drop(world);
    let stats = server.stop_and_join();
    assert_eq!(stats.players_in_world, 0);
    assert_eq!(stats.player_states, 0);
}

/// A small deterministic generator.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn random_ticks_follow_the_rule(backend: Backend) {
    const PLAYERS: usize = 24;
    const TICKS: usize = 40;
    // 9 × 9 cells in 3 × 3 regions: a jump can land two regions away from
    // where the receiver stood, so its old block is read from regions that
    // are not its new region's neighbours.
    let server = start(
        backend,
        manual_world(900.0, 100.0, 3, 1e12),
        std::path::Path::new(":memory:"),
    );
    let mut world = Stepper::new(&server);
    let mut ids: Vec<u64> = (0..PLAYERS)
        .map(|i| world.join(&format!("walker{i}")))
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut stamp = 0;
    let mut joined = PLAYERS;
    for tick in 0..TICKS {
        let mut input = TickInput::default();
        let mut out = Vec::new();
        for &id in &ids {
            let roll = next(&mut rng) % 100;
            if roll < 50 {
                let moves = 1 + next(&mut rng) % 2;
                let (mut x, mut y) = world
                    .model
                    .at
                    .get(&id)
                    .copied()
                    .unwrap_or_else(|| world.model.entering.get(&id).copied().unwrap());
                for _ in 0..moves {
                    x = (x + (next(&mut rng) % 601) as f32 - 300.0).clamp(0.0, 899.0);
                    y = (y + (next(&mut rng) % 601) as f32 - 300.0).clamp(0.0, 899.0);
                    stamp += 1;
                    input.moves.push((id, x, y, stamp));
                }
            } else if roll < 54 {
                input.chats.push((id, format!("chat {stamp}")));
                stamp += 1;
            } else if roll < 56 && tick % 5 == 1 {
                input.leaves.push(id);
                out.push(id);
            } else if roll < 58 && tick % 7 == 3 {
                input.disconnects.push(id);
                out.push(id);
            }
        }
        world.tick(input);
        for id in out {
            if world.clients.contains_key(&id) {
                world.reenter(id);
            } else {
                ids.retain(|other| *other != id);
                ids.push(world.join(&format!("walker{joined}")));
                joined += 1;
            }
        }
    }
    world.tick(TickInput::default());
    drop(world);
    let stats = server.stop_and_join();
    assert_eq!(stats.players_in_world, 0);
    assert_eq!(stats.moves_dropped(), 0);
}

fn too_fast_move_is_cut(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("speed.db");
    let ids = place(&db, &[("runner", 100.0, 100.0)]);
    // Speed 0: a jump may be 50 long, whatever the time since the last.
    let server = start(backend, world(600.0, 100.0, 3, 0.0), &db);
    let (mut runner, _) = GameClient::join(server.local_addr(), "runner");
    runner.send_move(400.0, 500.0, 1);
    // 300 × 400 is 500 long; cut to 50 along it: +30, +40.
    runner.expect_move_of(ids[0], 130.0, 140.0);
    // Exactly 50: accepted as sent.
    runner.send_move(160.0, 180.0, 2);
    runner.expect_move_of(ids[0], 160.0, 180.0);
    // Outside the map: clamped into [0, 600).
    runner.send_move(150.0, 700.0, 3);
    let below_600 = f32::from_bits(600f32.to_bits() - 1);
    let moved = runner.expect_move();
    let info = moved.info.unwrap();
    assert_eq!((info.object_id, moved.client_time_us), (ids[0], 3));
    // Clamped to the map's edge, then cut to 50 from (160, 180).
    assert!(
        info.y < below_600 && (info.y - 180.0 - 50.0).abs() < 1.0,
        "{info:?}"
    );
    runner.expect_nothing(SETTLE);
    drop(runner);
    let stats = server.stop_and_join();
    assert_eq!(
        (stats.moves, stats.moves_cut, stats.moves_clamped),
        (3, 2, 1)
    );
}

fn position_survives_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let ids = place(&db, &[("keeper", 10.0, 10.0)]);
    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let (mut keeper, _) = GameClient::join(server.local_addr(), "keeper");
    keeper.send_move(123.5, 456.25, 1);
    keeper.expect_move_of(ids[0], 123.5, 456.25);
    drop(keeper); // a disconnect saves the position
    server.stop_and_join();

    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let (keeper, entered) = GameClient::join(server.local_addr(), "keeper");
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.object_id, pos.x, pos.y), (ids[0], 123.5, 456.25));
    drop(keeper);
    server.stop_and_join();
}

/// A player reconnecting again and again, each new session entering right
/// after the old one closed (often before the server has seen the close):
/// every enter succeeds, the world holds the player once, and a neighbour's
/// spawns and despawns of it always alternate and end with it spawned.
fn quick_reconnects(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reconnect.db");
    let ids = place(&db, &[("r", 50.0, 50.0), ("n", 60.0, 60.0)]);
    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let addr = server.local_addr();
    let (mut neighbour, _) = GameClient::join(addr, "n");
    let mut seen = false;
    let mut watch = |packets: Vec<ClientPacket>| {
        for packet in packets {
            match packet {
                ClientPacket::SSpawn(msg) => {
                    assert_eq!(msg.players.len(), 1);
                    assert_eq!(msg.players[0].object_id, ids[0]);
                    assert!(!seen, "spawned twice");
                    seen = true;
                }
                ClientPacket::SDespawn(msg) => {
                    assert_eq!(msg.object_ids, [ids[0]]);
                    assert!(seen, "despawned while not spawned");
                    seen = false;
                }
                other => panic!("neighbour: unexpected {other:?}"),
            }
        }
        seen
    };
    // An enter while the old session still counts as connected is refused
    // (the player is in the game from another session): try again.
    let enter_r = || {
        let mut r = GameClient::connect(addr);
        assert!(r.login("r").success);
        let deadline = Instant::now() + TIMEOUT;
        while !r.enter(0).success {
            assert!(Instant::now() < deadline, "r never entered");
        }
        assert_eq!(r.player_id, ids[0]);
        r
    };
    for _ in 0..20 {
        drop(enter_r());
        watch(neighbour.drain());
    }
    let mut r = enter_r();
    let deadline = Instant::now() + TIMEOUT;
    while !watch(neighbour.drain()) || server.stats().players_in_world != 2 {
        assert!(Instant::now() < deadline, "{}", server.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.expect_spawn(), [ids[1]]);
    let snapshot = server.world_snapshot();
    assert_eq!(snapshot, [(ids[0], 50.0, 50.0), (ids[1], 60.0, 60.0)]);
    drop((r, neighbour));
    server.stop_and_join();
}

backend_tests!(
    scripted_ticks,
    random_ticks_follow_the_rule,
    quick_reconnects,
    too_fast_move_is_cut,
    position_survives_a_restart,
);
