//! What the game's world tests share beyond the test kit: worlds for tests
//! and a server started on a database whose players stand where the test
//! put them.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use servercore::packet::RateLimits;
use servercore::Backend;
use servercore_game::storage::{Position, SqliteStorage, Storage as _, StorageOptions};
use servercore_game::{GameConfig, GameServer, WorldConfig};

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
