//! `servercore demo`: the game server and its dummy clients in one process,
//! a newcomer's first run.
//!
//! Starts the game server on a free loopback port with an in-memory
//! database (nothing to set up, nothing left behind), runs `--clients`
//! dummy clients against it for `--seconds` (log in, enter the world,
//! random-walk at `--move-rate` and `--speed`, chat at `--rate`) with the
//! live progress display, then stops both and prints the clients' table
//! (movement and chat) and the server's counters.

use std::time::Duration;

use crate::cli::DemoArgs;
use servercore_game::GameConfig;
use servercore_load::client::{run_load_until, LoadConfig, Scenario};

use crate::shutdown::{Install as _, StopSignal};

/// Runs the demo; fails if the server cannot start, no client could
/// connect, or most clients failed.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut game = GameConfig::in_memory("127.0.0.1:0".parse()?);
    game.backend = args.engine.backend;
    game.workers = args.engine.workers;
    game.max_sessions = game.max_sessions.max(args.clients + 16);
    // Every dummy client comes from this machine's one address.
    game.max_conns_per_ip = 0;
    game.max_new_accounts_per_min = 0;
    let server = std::sync::Arc::new(servercore_game::start(game)?);
    // Every listener is bound before the banner says so.
    let admin = crate::admin::start_for_game(&args.admin, &server, crate::limits::raised())?;
    let addr = server.local_addr();
    println!(
        "demo: game server on {addr} (backend {}, in-memory database); \
         {} dummy clients walk the world ({} moves/s at {} units/s) and chat {} msg/s each for {} s",
        server.backend(),
        args.clients,
        args.move_rate,
        args.speed,
        args.rate,
        args.seconds
    );

    let mut load = LoadConfig::new(addr);
    load.sessions = args.clients;
    load.scenario = if args.move_rate > 0.0 {
        Scenario::Move
    } else {
        Scenario::Chat
    };
    load.move_rate = args.move_rate;
    load.speed = args.speed;
    load.rate = args.rate;
    load.duration = Duration::from_secs(args.seconds);
    load.backend = args.engine.backend;
    load.workers = args.engine.workers;
    load.account_prefix = "demo".to_owned();
    crate::admin::announce(admin.as_ref());
    let report = run_load_until(load, !args.no_progress, &StopSignal::install());

    drop(admin);
    let server = std::sync::Arc::into_inner(server).expect("nothing else holds the game server");
    let sessions = server.service_stats();
    let stats = server.stop_and_join();
    let report = report?;
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if json_to_stdout {
        eprintln!("{}", report.table());
    } else {
        println!("{}", report.table());
        println!(
            "server: {} sessions served; {stats}",
            sessions.sessions_total
        );
    }
    for line in report.advice() {
        eprintln!("{line}");
    }
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    crate::client::verdict(&report, StopSignal::install().is_set())
}
