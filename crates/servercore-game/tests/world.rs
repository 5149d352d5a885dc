//! The world over real sockets, on every backend: scripted clients on a
//! small map check the exact packet sequence each of them gets on enter, a
//! move inside a cell, a move across cells, a border crossing (both ways,
//! with a move pipelined behind it, and with the session closing right
//! behind it), leave, re-enter and disconnect; a
//! clamped move, a too-fast move cut to the speed limit, and a position
//! that survives a restart on the same database file.
//!
//! The map of the scripted test is 600 × 600 in cells of 100 (6 × 6 cells)
//! and regions of 3 × 3 cells: region 0 holds the cell columns 0–2 and
//! region 1 the columns 3–5 of the rows 0–2, so x = 300 is a border.

mod common;

use std::time::Duration;

use common::{place, start, world, Client};
use servercore::Backend;
use servercore_protocol::{CEnterGame, CLeaveGame, ClientPacket};

/// How long a client must stay silent to count as "got nothing more".
const QUIET: Duration = Duration::from_millis(150);

/// Polls `done` until it holds, failing after the test timeout.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort_unstable();
    ids
}

fn scripted_world(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("world.db");
    let ids = place(
        &db,
        &[
            ("a", 50.0, 50.0),   // cell (0, 0), region 0
            ("b", 150.0, 50.0),  // cell (1, 0), region 0
            ("c", 550.0, 550.0), // cell (5, 5), region 3
            ("d", 450.0, 50.0),  // cell (4, 0), region 1
            ("e", 250.0, 150.0), // cell (2, 1), region 0, at the border
        ],
    );
    let [a_id, b_id, c_id, d_id, e_id] = ids[..] else {
        unreachable!()
    };
    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    assert_eq!(server.world_grid().region_count(), 4);
    let addr = server.local_addr();

    // Enter: the saved position comes back in S_ENTER_GAME; the newcomer
    // gets one S_SPAWN of everyone it sees, each of them one of it.
    let (mut a, entered) = Client::join(addr, "a");
    assert_eq!(entered.player_id, a_id);
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.object_id, pos.x, pos.y), (a_id, 50.0, 50.0));
    let (mut b, _) = Client::join(addr, "b");
    assert_eq!(b.expect_spawn(), [a_id]);
    assert_eq!(a.expect_spawn(), [b_id]);
    let (mut c, _) = Client::join(addr, "c");
    let (mut d, _) = Client::join(addr, "d");
    let (mut e, _) = Client::join(addr, "e");
    assert_eq!(e.expect_spawn(), [b_id]);
    assert_eq!(b.expect_spawn(), [e_id]);
    for client in [&mut a, &mut c, &mut d] {
        client.expect_nothing(QUIET);
    }
    assert_eq!(
        server.world_snapshot(),
        [
            (a_id, 50.0, 50.0),
            (b_id, 150.0, 50.0),
            (c_id, 550.0, 550.0),
            (d_id, 450.0, 50.0),
            (e_id, 250.0, 150.0)
        ]
    );

    // A move inside a cell: S_MOVE to the mover (its client time back) and
    // to whoever sees it.
    a.send_move(60.0, 60.0, 11);
    assert_eq!(a.expect_move_of(a_id, 60.0, 60.0).client_time_us, 11);
    b.expect_move_of(a_id, 60.0, 60.0);

    // A move across cells in one region: a loses sight of b and b of a;
    // e still sees b. Despawns come before the move.
    b.send_move(250.0, 50.0, 12);
    assert_eq!(b.expect_despawn(), [a_id]);
    b.expect_move_of(b_id, 250.0, 50.0);
    assert_eq!(a.expect_despawn(), [b_id]);
    e.expect_move_of(b_id, 250.0, 50.0);

    // Across the border into region 1: b now sees d (and d b), e (in
    // region 0) still sees b from across the border.
    b.send_move(350.0, 50.0, 13);
    assert_eq!(b.expect_spawn(), [d_id]);
    b.expect_move_of(b_id, 350.0, 50.0);
    assert_eq!(d.expect_spawn(), [b_id]);
    d.expect_move_of(b_id, 350.0, 50.0);
    e.expect_move_of(b_id, 350.0, 50.0);

    // And back into region 0.
    b.send_move(250.0, 50.0, 14);
    assert_eq!(b.expect_despawn(), [d_id]);
    b.expect_move_of(b_id, 250.0, 50.0);
    assert_eq!(d.expect_despawn(), [b_id]);
    e.expect_move_of(b_id, 250.0, 50.0);

    // A crossing with a second move right behind it: the second waits for
    // the handover and is applied once, in the new region, in order.
    b.send_move(350.0, 50.0, 15);
    b.send_move(360.0, 50.0, 16);
    assert_eq!(b.expect_spawn(), [d_id]);
    b.expect_move_of(b_id, 350.0, 50.0);
    b.expect_move_of(b_id, 360.0, 50.0);
    assert_eq!(d.expect_spawn(), [b_id]);
    d.expect_move_of(b_id, 350.0, 50.0);
    d.expect_move_of(b_id, 360.0, 50.0);
    e.expect_move_of(b_id, 350.0, 50.0);
    e.expect_move_of(b_id, 360.0, 50.0);
    for client in [&mut a, &mut c] {
        client.expect_nothing(QUIET);
    }

    // Leave: whoever saw b gets its despawn, b gets S_LEAVE_GAME.
    b.send(&CLeaveGame {});
    assert!(matches!(b.recv(), ClientPacket::SLeaveGame(_)));
    assert_eq!(d.expect_despawn(), [b_id]);
    assert_eq!(e.expect_despawn(), [b_id]);
    assert!(!server.world_snapshot().iter().any(|(id, _, _)| *id == b_id));

    // Enter again: where it left, one S_SPAWN of all it sees.
    b.send(&CEnterGame { player_index: 0 });
    let ClientPacket::SEnterGame(again) = b.recv() else {
        panic!("expected S_ENTER_GAME")
    };
    assert!(again.success);
    let pos = again.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.x, pos.y), (360.0, 50.0));
    assert_eq!(sorted(b.expect_spawn()), sorted(vec![d_id, e_id]));
    assert_eq!(d.expect_spawn(), [b_id]);
    assert_eq!(e.expect_spawn(), [b_id]);

    // Disconnect: those who saw d get its despawn.
    drop(d);
    assert_eq!(b.expect_despawn(), [d_id]);

    // A jump that loses one player and finds another, into region 3: one
    // S_DESPAWN, then one S_SPAWN, then the move.
    b.send_move(450.0, 450.0, 18);
    assert_eq!(b.expect_despawn(), [e_id]);
    assert_eq!(b.expect_spawn(), [c_id]);
    b.expect_move_of(b_id, 450.0, 450.0);
    assert_eq!(e.expect_despawn(), [b_id]);
    assert_eq!(c.expect_spawn(), [b_id]);
    c.expect_move_of(b_id, 450.0, 450.0);

    // A move outside the map is clamped into [0, 600).
    a.send_move(-30.0, 700.0, 17);
    let below_600 = f32::from_bits(600f32.to_bits() - 1);
    a.expect_move_of(a_id, 0.0, below_600);

    for client in [&mut a, &mut b, &mut c, &mut e] {
        client.expect_nothing(QUIET);
    }
    // e at (250, 150) is seen from region 1; nobody else near a border.
    wait_until("one ghost", || server.stats().ghosts == 1);
    drop((a, b, c, e));
    wait_until("no ghosts", || server.stats().ghosts == 0);
    let stats = server.stop_and_join();
    assert_eq!(stats.moves, 8);
    assert_eq!(stats.moves_clamped, 1);
    assert_eq!(stats.moves_cut, 0);
    assert_eq!(stats.handovers, 5); // b four times, a once (clamped into region 2)
    assert_eq!(stats.players_in_world, 0);
    assert_eq!(stats.player_states, 0);
}

fn too_fast_move_is_cut(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("speed.db");
    let ids = place(&db, &[("runner", 100.0, 100.0)]);
    // Speed 0: a jump may be 50 long, whatever the time since the last.
    let server = start(backend, world(600.0, 100.0, 3, 0.0), &db);
    let (mut runner, _) = Client::join(server.local_addr(), "runner");
    runner.send_move(400.0, 500.0, 1);
    // 300 × 400 is 500 long; cut to 50 along it: +30, +40.
    runner.expect_move_of(ids[0], 130.0, 140.0);
    // Exactly 50: accepted as sent.
    runner.send_move(160.0, 180.0, 2);
    runner.expect_move_of(ids[0], 160.0, 180.0);
    runner.expect_nothing(QUIET);
    drop(runner); // a session still open at stop lingers for its peer's close
    let stats = server.stop_and_join();
    assert_eq!((stats.moves, stats.moves_cut), (2, 1));
}

fn position_survives_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let ids = place(&db, &[("keeper", 10.0, 10.0)]);
    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let (mut keeper, _) = Client::join(server.local_addr(), "keeper");
    keeper.send_move(123.5, 456.25, 1);
    keeper.expect_move_of(ids[0], 123.5, 456.25);
    drop(keeper); // a disconnect saves the position
    server.stop_and_join();

    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let (keeper, entered) = Client::join(server.local_addr(), "keeper");
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.object_id, pos.x, pos.y), (ids[0], 123.5, 456.25));
    drop(keeper);
    server.stop_and_join();
}

/// A session that closes right behind a move across a border: the move is
/// applied and handed over, then the player leaves from its new region,
/// and its position is the one it moved to.
fn disconnect_during_a_crossing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crossing.db");
    let ids = place(
        &db,
        &[
            ("b", 250.0, 50.0),  // cell (2, 0), region 0
            ("d", 450.0, 50.0),  // cell (4, 0), region 1
            ("e", 250.0, 150.0), // cell (2, 1), region 0
        ],
    );
    let [b_id, d_id, e_id] = ids[..] else {
        unreachable!()
    };
    let server = start(backend, world(600.0, 100.0, 3, 1e12), &db);
    let addr = server.local_addr();
    let (mut b, _) = Client::join(addr, "b");
    let (mut d, _) = Client::join(addr, "d");
    let (mut e, _) = Client::join(addr, "e");
    assert_eq!(e.expect_spawn(), [b_id]);
    assert_eq!(b.expect_spawn(), [e_id]);

    b.send_move(350.0, 50.0, 1);
    b.close_write();
    assert_eq!(d.expect_spawn(), [b_id]);
    d.expect_move_of(b_id, 350.0, 50.0);
    assert_eq!(d.expect_despawn(), [b_id]);
    e.expect_move_of(b_id, 350.0, 50.0);
    assert_eq!(e.expect_despawn(), [b_id]);
    wait_until("b left", || server.stats().players_in_world == 2);
    drop(b);

    let (mut b, entered) = Client::join(addr, "b");
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.x, pos.y), (350.0, 50.0));
    assert_eq!(sorted(b.expect_spawn()), sorted(vec![d_id, e_id]));
    assert_eq!(d.expect_spawn(), [b_id]);
    assert_eq!(e.expect_spawn(), [b_id]);
    for client in [&mut b, &mut d, &mut e] {
        client.expect_nothing(QUIET);
    }
    drop((b, d, e));
    let stats = server.stop_and_join();
    assert_eq!((stats.handovers, stats.world_leaves), (1, 4));
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
    let (mut neighbour, _) = Client::join(addr, "n");
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
        let mut r = Client::connect(addr);
        assert!(r.login("r").success);
        let deadline = std::time::Instant::now() + common::TIMEOUT;
        while !r.enter(0).success {
            assert!(std::time::Instant::now() < deadline, "r never entered");
        }
        assert_eq!(r.player_id, ids[0]);
        r
    };
    for _ in 0..20 {
        drop(enter_r());
        watch(neighbour.drain());
    }
    let mut r = enter_r();
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    while !watch(neighbour.drain()) || server.stats().players_in_world != 2 {
        assert!(std::time::Instant::now() < deadline, "{}", server.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.expect_spawn(), [ids[1]]);
    let snapshot = server.world_snapshot();
    assert_eq!(snapshot, [(ids[0], 50.0, 50.0), (ids[1], 60.0, 60.0)]);
    drop((r, neighbour));
    server.stop_and_join();
}

backend_tests!(
    quick_reconnects,
    scripted_world,
    too_fast_move_is_cut,
    position_survives_a_restart,
    disconnect_during_a_crossing,
);
