//! A crowd in the world, over real sockets, on every backend: 2,000 dummy
//! players standing in one cell of the default world enter, walk a little
//! and leave, while 50 others walk elsewhere on the map.
//!
//! Checked: no session fails and no client sees a packet out of order (a
//! move of a player it was not spawned, a spawn twice, a despawn of a
//! stranger); every crowd player is spawned every other one (the spawn
//! lists of late comers are split into packets under 64 KiB); the crowd is
//! thinned by design (the crowded-cells gauge and the thinned deliveries
//! move) while the players elsewhere keep getting their own moves back; and
//! once everyone has left, the world is empty and the heap is back near
//! where it was before the crowd came.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use servercore::packet::RateLimits;
use servercore::Backend;
use servercore_game::storage::{Position, SqliteStorage, Storage as _, StorageOptions};
use servercore_game::{GameConfig, WorldConfig};
use servercore_load::client::{run_load, LoadConfig, LoadReport, Scenario};

const CROWD: usize = 2000;
const ELSEWHERE: usize = 50;

/// Creates accounts `{prefix}0..{prefix}{count}` with their first player
/// saved around `(x, y)` (spread over ±`spread`).
fn place(db: &Path, prefix: &str, count: usize, (x, y): (f32, f32), spread: f32) {
    let mut database =
        SqliteStorage::open(db, &StorageOptions::default()).expect("open the test database");
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let mut positions = Vec::with_capacity(count);
    for (i, chunk) in names.chunks(100).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for (j, record) in database.login_batch(&refs).into_iter().enumerate() {
            let n = (i * 100 + j) as f32;
            let record = record.expect("login");
            positions.push((
                record.players[0].id,
                Position {
                    x: x + (n * 0.618).fract() * 2.0 * spread - spread,
                    y: y + (n * 0.382).fract() * 2.0 * spread - spread,
                    z: 0.0,
                    yaw: 0.0,
                },
            ));
        }
    }
    database.save_positions(&positions).expect("save positions");
}

fn walkers(
    addr: SocketAddr,
    backend: Backend,
    prefix: &str,
    sessions: usize,
    speed: f64,
) -> LoadConfig {
    let mut config = LoadConfig::new(addr);
    config.sessions = sessions;
    config.scenario = Scenario::Move;
    config.rate = 0.0;
    config.move_rate = 1.0;
    config.speed = speed;
    // Long enough that the walk outlasts the crowd's entry (the first
    // ticks send every crowd player the 1,999 others).
    config.duration = Duration::from_secs(8);
    // No warm-up: every spawn since entering is counted.
    config.warmup = Duration::ZERO;
    config.backend = backend;
    config.workers = Some(1);
    config.connect_timeout = Duration::from_secs(20);
    config.setup_timeout = Duration::from_secs(120);
    config.drain_timeout = Duration::from_secs(10);
    config.account_prefix = prefix.to_owned();
    config
}

fn heap_in_use() -> Option<u64> {
    servercore::driver::heap::stats().map(|stats| stats.in_use)
}

/// The heap is the process's: one backend's crowd at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn a_crowd_in_one_cell_is_thinned_and_leaves_nothing_behind(backend: Backend) {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Two servers' and their clients' sockets, if both backends run at once.
    let _ = servercore_load::raise_nofile_limit();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crowd.db");
    // The crowd inside cell (5, 5) of the default 100-unit cells, walking
    // slowly enough to stay in it; the others far away.
    place(&db, "crowd", CROWD, (550.0, 550.0), 20.0);
    place(&db, "far", ELSEWHERE, (1500.0, 1500.0), 300.0);
    let config = GameConfig {
        backend,
        workers: Some(2),
        idle_timeout: None,
        max_sessions: CROWD + ELSEWHERE + 10,
        rate_limits: RateLimits::unlimited(),
        max_conns_per_ip: 0,
        max_new_accounts_per_min: 0,
        db_path: db.clone(),
        // A low limit (8 positions a tick per receiver), so the test's
        // clients can read what the crowd is sent.
        world: WorldConfig {
            crowd_limit: 32,
            ..WorldConfig::default()
        },
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let server = servercore_game::start(config).expect("game server starts");
    let addr = server.local_addr();
    std::thread::sleep(Duration::from_millis(200));
    let heap_before = heap_in_use();

    let far = std::thread::spawn(move || {
        run_load(walkers(addr, backend, "far", ELSEWHERE, 150.0), false).expect("far load")
    });
    let crowd: LoadReport =
        run_load(walkers(addr, backend, "crowd", CROWD, 2.0), false).expect("crowd load");
    let far: LoadReport = far.join().unwrap();
    let stats = server.stats();
    eprintln!(
        "{backend} crowd:\n{}\n{backend} elsewhere:\n{}",
        crowd.table(),
        far.table()
    );
    eprintln!("{backend} server: {stats}");

    for (name, report, sessions) in [("crowd", &crowd, CROWD), ("elsewhere", &far, ELSEWHERE)] {
        assert_eq!(
            report.errors_total, 0,
            "{backend} {name}: {:?}",
            report.errors
        );
        assert_eq!(report.sessions.entered, sessions as u64, "{backend} {name}");
        let moves = report.movement.as_ref().unwrap();
        assert!(
            moves.own_moves > 0,
            "{backend} {name}: no own move came back"
        );
    }
    let moves = crowd.movement.as_ref().unwrap();
    // Everyone in the crowd was spawned every other one, once.
    assert_eq!(
        moves.players_spawned,
        (CROWD * (CROWD - 1)) as u64,
        "{backend}"
    );
    assert_eq!(moves.players_despawned, 0, "{backend}");
    assert!(
        moves.largest_spawn_bytes > 32 * 1024 && moves.largest_spawn_bytes < 64 * 1024,
        "{backend}: largest S_SPAWN {} bytes",
        moves.largest_spawn_bytes
    );
    // The crowd was thinned; the players elsewhere were not, and got
    // their own moves back (counted above; how fast is the benchmark's
    // business: a debug build overruns ticks while 2,000 spawn lists go
    // out).
    assert!(stats.thinned_deliveries > 0, "{backend}: {stats}");

    // Everyone has left: the world is empty, the gauges are back at zero,
    // the heap near where it was.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = server.stats();
        if stats.players_in_world == 0 && stats.player_states == 0 && stats.crowded_cells == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{backend}: left behind: {stats}");
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(before) = heap_before {
        // The pools give back what the peak left at their housekeeping
        // rounds: wait a few of those.
        let bound = before + 24 * 1024 * 1024;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut after = heap_in_use().unwrap_or(0);
        while after >= bound && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            after = heap_in_use().unwrap_or(0);
        }
        eprintln!("{backend}: heap in use {before} before the crowd, {after} after");
        assert!(
            after < bound,
            "{backend}: heap in use {before} before the crowd, {after} after"
        );
    }
    let stats = server.stop_and_join();
    assert_eq!(stats.players_in_world, 0);
}

#[test]
fn crowd_poll() {
    a_crowd_in_one_cell_is_thinned_and_leaves_nothing_behind(Backend::Poll);
}

#[test]
fn crowd_uring() {
    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
            panic!("io_uring required but unavailable: {reason}");
        }
        eprintln!("skipping io_uring test: {reason}");
        return;
    }
    a_crowd_in_one_cell_is_thinned_and_leaves_nothing_behind(Backend::IoUring);
}
