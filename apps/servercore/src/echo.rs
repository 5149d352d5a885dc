//! `servercore echo`: the course's echo server, until a stop signal.

use std::time::Duration;

use servercore::{ServerTransport, WebSocketConfig};
use servercore_load::echo::{self, EchoConfig};

use crate::cli::EchoArgs;
use crate::shutdown::{Install as _, StopSignal};

/// Runs until Ctrl-C.
pub fn run(args: EchoArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let tls = args.tls.server_config()?;
    let transport = match &tls {
        Some(tls) => ServerTransport::tls(std::sync::Arc::clone(tls)),
        None => ServerTransport::plain(),
    };
    let service = echo::start(EchoConfig {
        addr: args.addr,
        backend: args.engine.backend,
        workers: args.engine.workers,
        max_sessions: args.max_sessions,
        verbose: args.verbose,
        transport,
        ws_addr: args.ws_addr.map(|addr| {
            let ws = ServerTransport::websocket(WebSocketConfig::default());
            (
                addr,
                match &tls {
                    Some(tls) => ws.with_tls(std::sync::Arc::clone(tls)),
                    None => ws,
                },
            )
        }),
    })?;
    let addrs: Vec<String> = service
        .local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "echo server listening on {} (backend {}{}); Ctrl-C stops it",
        addrs.join(" and "),
        service.backend(),
        if tls.is_some() { ", TLS" } else { "" }
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
