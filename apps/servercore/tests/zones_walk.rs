//! Dummy clients walking one world across nodes follow the hand-overs by
//! themselves: `servercore client --scenario move --addr A,B[,C]` against
//! real `servercore server` nodes of `--world-nodes` (child processes)
//! over a real nats-server on loopback. Each client, told `S_TRANSFER`,
//! connects to the advertised address, logs in with the token and walks
//! on; the report counts the transfers, their time and their errors, and
//! the clients check what every connection was told (no `S_MOVE` of a
//! player never spawned, no second spawn of a player in view).
//!
//! After the walk the clients stand still in game (`--hold`) while the
//! test reads each node's `/status`: every player is simulated by exactly
//! one node. Every test runs on both backends (nodes and clients), bounded
//! by deadlines; without nats-server it is ignored.

mod zones_kit;

use std::time::Duration;

use servercore::Backend;
use servercore_testkit::backend_tests;

use zones_kit::{assert_clean, one_at_a_time, Walkers, World};

backend_tests!(
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    walkers_follow_transfers_between_two_nodes,
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    three_hundred_walkers_on_three_nodes,
);

/// Runs `sessions` walkers over every node of `world` for `duration`,
/// checks the placement while they stand still, and returns the report.
fn walk(world: &World, sessions: usize, duration: &str, prefix: &str) -> serde_json::Value {
    let walkers = Walkers::start(
        world.backend,
        &world.addrs(),
        sessions,
        duration,
        "8s",
        prefix,
    );
    // Within the hold: everyone in the world, each on exactly one node.
    let placed = world.wait_each_on_one_node(sessions, Duration::from_secs(40));
    let report = walkers.report(Duration::from_secs(40));
    let placement = placed.unwrap_or_else(|placement| {
        let doubles: Vec<_> = placement.iter().filter(|(_, on)| on.len() > 1).collect();
        panic!(
            "{} of {sessions} players placed; on two nodes: {doubles:?}; report {report:#}",
            placement.len()
        )
    });
    let mut per_node = std::collections::BTreeMap::<&str, usize>::new();
    for nodes in placement.values() {
        *per_node.entry(nodes[0].as_str()).or_default() += 1;
    }
    eprintln!("players per node while held: {per_node:?}");
    report
}

/// Two nodes, 40 walkers for 4 s on a world whose border they cross:
/// transfers happen and are all followed, with no error and no
/// violation, and every client is in game at the end.
fn walkers_follow_transfers_between_two_nodes(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(world) = World::start(backend, &["a", "b"]) else {
        return;
    };
    let report = walk(&world, 40, "4s", "walker");
    let follow = &report["follow"];
    let transfers = follow["transfers"].as_u64().unwrap();
    assert!(transfers > 0, "no transfer: {report:#}");
    assert_eq!(follow["transfers_told"], transfers, "{report:#}");
    assert_eq!(follow["transfer_errors"], 0, "{report:#}");
    assert_eq!(follow["reconnects"], 0, "{report:#}");
    // At most one transfer time per transfer: one followed in the walk's
    // last moments may see no S_MOVE on its new node before every walker
    // stands still (the hold), and has none.
    let timed = follow["transfer_time_us"]["samples"].as_u64().unwrap();
    assert!(
        timed <= transfers && timed * 10 >= transfers * 9,
        "{timed} transfer times for {transfers} transfers: {report:#}"
    );
    assert!(follow["transfer_time_us"]["p99"].as_u64().unwrap() > 0);
    assert_eq!(report["errors_total"], 0, "{report:#}");
    assert_clean(&report, 40);
    assert!(report["movement"]["own_moves"].as_u64().unwrap() > 0);
}

/// Three nodes, 300 walkers for 5 s: transfers on both borders, no
/// violation, no error, everyone in game and on exactly one node.
fn three_hundred_walkers_on_three_nodes(backend: Backend) {
    let _turn = one_at_a_time();
    let Some(world) = World::start(backend, &["a", "b", "c"]) else {
        return;
    };
    let report = walk(&world, 300, "5s", "crowd");
    let follow = &report["follow"];
    assert!(follow["transfers"].as_u64().unwrap() > 10, "{report:#}");
    assert_eq!(follow["transfer_errors"], 0, "{report:#}");
    assert_eq!(report["sessions"]["connected"], 300, "{report:#}");
    assert_eq!(report["errors_total"], 0, "{report:#}");
    assert_clean(&report, 300);
}
