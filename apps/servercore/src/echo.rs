//! `servercore echo`: the course's echo server, until a stop signal.

use std::time::Duration;

use servercore_load::echo::{self, EchoConfig};

use crate::cli::EchoArgs;
use crate::shutdown::{Install as _, StopSignal};

/// Runs until Ctrl-C.
pub fn run(args: EchoArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let service = echo::start(EchoConfig {
        addr: args.addr,
        backend: args.engine.backend,
        workers: args.engine.workers,
        max_sessions: args.max_sessions,
        verbose: args.verbose,
        send_coalescing: Duration::from_millis(args.coalesce_ms),
    })?;
    println!(
        "echo server listening on {} (backend {}); Ctrl-C stops it",
        service.local_addr(),
        service.backend()
    );
    while !stop.wait(Duration::from_secs(3600)) {}
    service.stop();
    service.join();
    let stats = service.stats();
    println!(
        "stopped: {} sessions served, {} refused",
        stats.sessions_total, stats.refused_total
    );
    Ok(())
}
