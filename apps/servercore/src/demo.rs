//! `servercore demo`: an echo server and hello clients in one process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::DemoArgs;
use crate::hello::HelloCounters;
use crate::shutdown::StopSignal;

/// Runs the demo for `args.seconds` and prints a one-line summary.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let server = crate::echo::start("127.0.0.1:0".parse()?, &args.engine, 10_000, false)?;
    let addr = server.local_addr();
    println!(
        "demo: echo server on {addr} (backend {}), {} hello clients for {} s",
        server.backend(),
        args.clients,
        args.seconds
    );
    let counters = Arc::new(HelloCounters::default());
    let started = Instant::now();
    let clients = crate::hello::start(addr, args.clients, &args.engine, false, Arc::clone(&counters))?;
    stop.wait(Duration::from_secs(args.seconds));
    clients.stop();
    clients.join();
    server.stop();
    server.join();
    let stats = server.stats();
    println!(
        "demo: {} clients connected ({} failed), {} bytes sent, {} bytes echoed back in {:.1} s; server served {} sessions, {} live at exit",
        clients.connected(),
        clients.failed(),
        counters.sent_bytes.load(Ordering::Relaxed),
        counters.received_bytes.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        stats.sessions_total,
        stats.live_slots,
    );
    Ok(())
}
