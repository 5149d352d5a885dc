//! Faults of one world across nodes, with walkers that follow hand-overs
//! (`servercore client --scenario move --addr A,B`): real `servercore
//! server` nodes of `--world-nodes a,b` as child processes over a real
//! nats-server on loopback, each fault injected mid-walk:
//! - NATS killed and started again: the nodes serve their players
//!   meanwhile, and afterwards every player is on exactly one node, every
//!   client in game, none told of a player it was not shown;
//! - a node SIGKILLed: its clients reconnect to the other address and
//!   enter where they were last saved, on the node that owns that point
//!   now (the survivor, which took the whole map);
//! - a node SIGSTOPped past the liveness timeout, then resumed: afterwards
//!   no player is simulated by two nodes.
//!
//! Every test runs on both backends, bounded by deadlines; without
//! nats-server it is ignored.

mod zones_kit;

use std::time::Duration;

use servercore::Backend;
use servercore_protocol::ClientPacket;
use servercore_testkit::backend_tests;
use servercore_testkit::client::GameClient;

use zones_kit::{one_at_a_time, Walkers, World};

backend_tests!(
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    nats_killed_and_restarted_mid_walk,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_node_killed_mid_walk_has_its_clients_reconnect,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_killed_nodes_player_enters_where_it_was_last_saved,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    a_node_paused_past_the_liveness_timeout_leaves_no_player_twice,
);

const WALKERS: usize = 30;

/// The rules after any fault: what the clients were told kept the
/// world's rules (no S_MOVE of a player not shown, no despawn of one not
/// shown, no second spawn), and every client is in game at the end.
fn assert_rules_held(report: &serde_json::Value) {
    for kind in ["move_from_unseen", "despawn_of_unseen", "spawn_of_seen"] {
        assert!(report["errors"].get(kind).is_none(), "{kind}: {report:#}");
    }
    assert_eq!(
        report["sessions"]["in_game_at_end"], WALKERS,
        "every client in game at the end: {report:#}"
    );
    assert_eq!(report["follow"]["in_transit_at_end"], 0, "{report:#}");
}

/// Waits for every walker to be on exactly one node (while they are held).
fn assert_each_on_one_node(world: &World) -> std::collections::BTreeMap<u64, Vec<String>> {
    world
        .wait_each_on_one_node(WALKERS, Duration::from_secs(15))
        .unwrap_or_else(|placement| {
            let doubles: Vec<_> = placement.iter().filter(|(_, on)| on.len() > 1).collect();
            panic!(
                "{} of {WALKERS} players placed; on two nodes: {doubles:?}",
                placement.len()
            )
        })
}

/// NATS goes away for 2 s mid-walk and comes back.
fn nats_killed_and_restarted_mid_walk(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(mut world) = World::start(backend, &["a", "b"]) else {
        return;
    };
    let walkers = Walkers::start(backend, &world.addrs(), WALKERS, "8s", "10s", "outage");
    std::thread::sleep(Duration::from_secs(3));
    world.nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    world.nats.restart();
    // The nodes hear each other again and split the map as before.
    world.wait_split(2);
    let placement = assert_each_on_one_node(&world);
    let report = walkers.report(Duration::from_secs(40));
    assert_rules_held(&report);
    assert_eq!(report["follow"]["reconnects"], 0, "{report:#}");
    eprintln!(
        "transfers {} (errors {}); players placed {}",
        report["follow"]["transfers"],
        report["follow"]["transfer_errors"],
        placement.len()
    );
}

/// b is SIGKILLed mid-walk: its clients reconnect to a, which owns the
/// whole map then, and enter where they were last saved.
fn a_node_killed_mid_walk_has_its_clients_reconnect(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(mut world) = World::start(backend, &["a", "b"]) else {
        return;
    };
    let walkers = Walkers::start(backend, &world.addrs(), WALKERS, "8s", "8s", "killed");
    std::thread::sleep(Duration::from_secs(3));
    let mut b = world.nodes.pop().unwrap();
    b.process.signal("KILL");
    b.process.wait_exit(Duration::from_secs(5));
    world.wait_split(1);
    let placement = assert_each_on_one_node(&world);
    assert!(placement.values().all(|on| on == &["a".to_owned()]));
    let report = walkers.report(Duration::from_secs(40));
    assert_rules_held(&report);
    let follow = &report["follow"];
    assert!(follow["reconnects"].as_u64().unwrap() > 0, "{report:#}");
}

/// A player on node X (the owner of where it stands) steps a few times,
/// its position is saved (`--save-interval 1s`), and X is SIGKILLed: the
/// player logs in again on the other node, which owns the whole map then,
/// and enters exactly where it was last saved.
fn a_killed_nodes_player_enters_where_it_was_last_saved(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(mut world) = World::start_with(backend, &["a", "b"], &["--save-interval", "1s"])
    else {
        return;
    };
    let (mut client, entered) = GameClient::join(world.nodes[0].ready.addr, "saved");
    let start = entered.player.and_then(|player| player.pos_info).unwrap();
    // a owns x < 300 of the 600-unit map; a player standing more than
    // half a cell (25) into b's strip is handed over to b at once.
    let owner = usize::from(start.x > 325.0);
    if owner == 1 {
        let transfer = loop {
            if let ClientPacket::STransfer(transfer) = client.recv() {
                break transfer;
            }
        };
        client = GameClient::connect(world.nodes[1].ready.addr);
        client.join_as(&transfer.token);
    }
    let dy = if start.y > 300.0 { -10.0 } else { 10.0 };
    let mut last = (start.x, start.y);
    for _ in 0..5 {
        last = client.step(0.0, dy);
    }
    // A save interval and a tick later it is saved.
    std::thread::sleep(Duration::from_millis(2500));
    let mut killed = world.nodes.remove(owner);
    killed.process.signal("KILL");
    killed.process.wait_exit(Duration::from_secs(5));
    drop(client);
    world.wait_split(1);
    // The lease of the killed node expires (--lease-ms 3000) before the
    // login on the survivor succeeds.
    let (_again, entered) = GameClient::join(world.nodes[0].ready.addr, "saved");
    let pos = entered.player.and_then(|player| player.pos_info).unwrap();
    assert_eq!((pos.x, pos.y), last, "entered where it was last saved");
}

/// b is SIGSTOPped for 3 s (past the 1.5 s liveness timeout: a takes the
/// whole map meanwhile) and resumed: afterwards the map is split again and
/// no player is simulated by both nodes.
fn a_node_paused_past_the_liveness_timeout_leaves_no_player_twice(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(world) = World::start(backend, &["a", "b"]) else {
        return;
    };
    let walkers = Walkers::start(backend, &world.addrs(), WALKERS, "9s", "10s", "paused");
    std::thread::sleep(Duration::from_secs(2));
    world.nodes[1].process.signal("STOP");
    std::thread::sleep(Duration::from_secs(3));
    world.nodes[1].process.signal("CONT");
    world.wait_split(2);
    assert_each_on_one_node(&world);
    let report = walkers.report(Duration::from_secs(40));
    assert_rules_held(&report);
}
