//! The world under load, over real sockets, on every backend:
//! - 300 clients moving at random for a few seconds: every `S_MOVE` and
//!   `S_DESPAWN` a client gets is of a player it has been spawned (and not
//!   despawned since), no spawn repeats, and once the moves stop each
//!   client sees exactly the players the 3×3 rule says it sees;
//! - a client flooding `C_MOVE` is held to its move rate (the excess
//!   dropped and counted) while a quiet neighbour's moves still come back.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{place, start, world};
use servercore::Backend;
use servercore_game::world::Grid;
use servercore_game::WorldConfig;
use servercore_protocol::{make_packet, CMove, ClientPacket, PosInfo};
use servercore_testkit::backend_tests;
use servercore_testkit::client::{GameClient, TIMEOUT};

/// What one client has been shown, checked packet by packet.
struct View {
    me: u64,
    pos: (f32, f32),
    /// Players spawned and not despawned, with their last known point.
    seen: HashMap<u64, (f32, f32)>,
    moves_sent: u64,
    own_moves: u64,
    /// Every `(mover, client_time_us)` received: each move is stamped
    /// uniquely, so a repeat is a duplicated delivery.
    moves_seen: HashSet<(u64, u64)>,
}

impl View {
    fn apply(&mut self, packet: ClientPacket) {
        match packet {
            ClientPacket::SSpawn(msg) => {
                for player in msg.players {
                    assert_ne!(player.object_id, self.me, "spawned itself");
                    let pos = player.pos_info.unwrap_or_default();
                    let again = self.seen.insert(player.object_id, (pos.x, pos.y));
                    assert!(
                        again.is_none(),
                        "{}: spawned {} twice",
                        self.me,
                        player.object_id
                    );
                }
            }
            ClientPacket::SDespawn(msg) => {
                for id in msg.object_ids {
                    assert!(
                        self.seen.remove(&id).is_some(),
                        "{}: despawn of {id}, never spawned",
                        self.me
                    );
                }
            }
            ClientPacket::SMove(msg) => {
                let info = msg.info.unwrap_or_default();
                // 0: a position without a move (a crowd's thinned view).
                if msg.client_time_us != 0 {
                    assert!(
                        self.moves_seen.insert((info.object_id, msg.client_time_us)),
                        "{}: move {} of {} delivered twice",
                        self.me,
                        msg.client_time_us,
                        info.object_id
                    );
                }
                if info.object_id == self.me {
                    self.pos = (info.x, info.y);
                    self.own_moves += 1;
                } else {
                    let Some(pos) = self.seen.get_mut(&info.object_id) else {
                        panic!("{}: S_MOVE of {}, not spawned", self.me, info.object_id);
                    };
                    *pos = (info.x, info.y);
                }
            }
            other => panic!("{}: unexpected {other:?}", self.me),
        }
    }
}

/// A small deterministic generator (the test must not depend on luck).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn many_movers_see_only_whom_they_should(backend: Backend) {
    const CLIENTS: usize = 300;
    const ROUNDS: usize = 15;
    let config = world(1000.0, 100.0, 3, 1e12);
    let grid = Grid::new(config.size, config.cell, config.region_cells).unwrap();
    let server = start(backend, config, std::path::Path::new(":memory:"));
    let addr = server.local_addr();
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut views = Vec::with_capacity(CLIENTS);
    for index in 0..CLIENTS {
        let (client, entered) = GameClient::join(addr, &format!("mover{index}"));
        let pos = entered.player.unwrap().pos_info.unwrap();
        views.push(View {
            me: client.player_id,
            pos: (pos.x, pos.y),
            seen: HashMap::new(),
            moves_sent: 0,
            own_moves: 0,
            moves_seen: HashSet::new(),
        });
        clients.push(client);
        // Keep the earlier clients' sockets drained while the rest join.
        for (client, view) in clients.iter_mut().zip(views.iter_mut()) {
            for packet in client.drain() {
                view.apply(packet);
            }
        }
    }

    // Rounds of one random move each (up to 150 away, often across cells
    // and borders), checking every packet as it comes.
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..ROUNDS {
        for (client, view) in clients.iter_mut().zip(views.iter_mut()) {
            let dx = (next(&mut rng) % 301) as f32 - 150.0;
            let dy = (next(&mut rng) % 301) as f32 - 150.0;
            client.send_move(view.pos.0 + dx, view.pos.1 + dy, round as u64 + 1);
            view.moves_sent += 1;
        }
        let round_end = Instant::now() + Duration::from_millis(150);
        while Instant::now() < round_end {
            for (client, view) in clients.iter_mut().zip(views.iter_mut()) {
                for packet in client.drain() {
                    view.apply(packet);
                }
            }
        }
    }

    // Every move came back to its sender; then every view settles on the
    // 3×3 rule of the final positions, and on those positions: no move was
    // lost on the way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (client, view) in clients.iter_mut().zip(views.iter_mut()) {
            for packet in client.drain() {
                view.apply(packet);
            }
        }
        let echoed = views.iter().all(|view| view.own_moves == view.moves_sent);
        let cells: HashMap<u64, _> = views
            .iter()
            .map(|view| (view.me, grid.cell_of(view.pos.0, view.pos.1)))
            .collect();
        let finals: HashMap<u64, (f32, f32)> =
            views.iter().map(|view| (view.me, view.pos)).collect();
        let wrong = views
            .iter()
            .filter(|view| {
                let mine = cells[&view.me];
                let mut expected: Vec<u64> = cells
                    .iter()
                    .filter(|(id, cell)| **id != view.me && Grid::sees(mine, **cell))
                    .map(|(id, _)| *id)
                    .collect();
                let mut actual: Vec<u64> = view.seen.keys().copied().collect();
                expected.sort_unstable();
                actual.sort_unstable();
                expected != actual || view.seen.iter().any(|(id, pos)| finals[id] != *pos)
            })
            .count();
        if echoed && wrong == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views did not settle: echoed={echoed}, {wrong} of {CLIENTS} views wrong"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The positions the clients were told are the world's.
    let snapshot = server.world_snapshot();
    assert_eq!(snapshot.len(), CLIENTS);
    for (id, x, y) in snapshot {
        let view = views.iter().find(|view| view.me == id).unwrap();
        assert_eq!(view.pos, (x, y));
    }
    // Everyone leaves: no player is left in any region.
    drop(clients);
    let deadline = Instant::now() + TIMEOUT;
    while server.stats().players_in_world != 0 {
        assert!(Instant::now() < deadline, "left behind: {}", server.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = server.stop_and_join();
    assert_eq!(stats.moves, (CLIENTS * ROUNDS) as u64);
    assert_eq!(stats.moves_dropped(), 0);
    assert!(stats.handovers > 0, "{stats}");
}

fn flooding_mover_is_limited(backend: Backend) {
    const FLOOD: u64 = 3000;
    const QUIET_MOVES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flood.db");
    let ids = place(&db, &[("flooder", 50.0, 50.0), ("quiet", 60.0, 60.0)]);
    let config = WorldConfig {
        move_rate: WorldConfig::default().move_rate, // 20/s, burst 40
        ..world(600.0, 100.0, 3, 1e12)
    };
    let server = start(backend, config, &db);
    let addr = server.local_addr();
    let (mut flooder, _) = GameClient::join(addr, "flooder");
    let flood_start = Instant::now();
    let (mut quiet, _) = GameClient::join(addr, "quiet");
    assert_eq!(quiet.expect_spawn(), [ids[0]]);
    assert_eq!(flooder.expect_spawn(), [ids[1]]);

    // The flood: 3000 moves in one write.
    let mut burst = Vec::new();
    for i in 0..FLOOD {
        burst.extend_from_slice(&make_packet(&CMove {
            info: Some(PosInfo {
                x: 50.0 + (i % 10) as f32,
                y: 50.0,
                ..PosInfo::default()
            }),
            client_time_us: 0,
        }));
    }
    flooder.send_raw(&burst);

    // The quiet neighbour moves every 50 ms and waits for its own S_MOVE
    // each time (the flooder's accepted moves pass by on the way).
    let mut latencies = Vec::new();
    for i in 0..QUIET_MOVES {
        let sent = Instant::now();
        quiet.send_move(60.0 + i as f32, 60.0, (i + 1) as u64);
        loop {
            let ClientPacket::SMove(msg) = quiet.recv() else {
                panic!("quiet: expected only moves");
            };
            if msg.info.unwrap_or_default().object_id == ids[1] {
                assert_eq!(msg.client_time_us, (i + 1) as u64);
                break;
            }
        }
        latencies.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every flooded move is either accepted or dropped by the rate.
    let deadline = Instant::now() + TIMEOUT;
    let stats = loop {
        let stats = server.stats();
        if stats.moves - QUIET_MOVES as u64 + stats.moves_dropped_rate == FLOOD {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "flood not accounted for: {stats}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = flood_start.elapsed().as_secs_f64();
    let accepted = stats.moves - QUIET_MOVES as u64;
    assert!(
        accepted as f64 <= 40.0 + 20.0 * elapsed + 1.0,
        "flooder got {accepted} moves in {elapsed:.2} s"
    );
    assert!(stats.moves_dropped_rate >= FLOOD - accepted);
    latencies.sort();
    eprintln!(
        "flood: {accepted} of {FLOOD} moves accepted in {elapsed:.2} s; quiet neighbour's \
         move round trip p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    drop((flooder, quiet));
    server.stop_and_join();
}

backend_tests!(
    many_movers_see_only_whom_they_should,
    flooding_mover_is_limited
);
