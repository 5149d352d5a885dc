//! `servercore echo`: the course's echo server, until a stop signal.

use std::sync::Arc;
use std::time::Duration;

use servercore::{ServerTransport, WebSocketConfig};
use servercore_load::echo::{self, EchoConfig};

use crate::cli::EchoArgs;
use crate::shutdown::{Install as _, StopSignal};

/// Runs until SIGINT or SIGTERM, then stops cleanly and prints totals.
pub fn run(args: EchoArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let limit = crate::limits::raised();
    let workers = crate::limits::workers(args.engine.workers);
    crate::limits::check_sessions(args.max_sessions, workers, limit)?;
    let tls = args.tls.server_config()?;
    let transport = match &tls {
        Some(tls) => ServerTransport::tls(std::sync::Arc::clone(tls)),
        None => ServerTransport::plain(),
    };
    let service = Arc::new(echo::start(EchoConfig {
        addr: args.addr,
        backend: args.engine.backend,
        workers: args.engine.workers,
        max_sessions: args.max_sessions,
        verbose: args.verbose,
        send_coalescing: Duration::from_millis(args.coalesce_ms),
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
        quic: match (args.quic_addr, &tls) {
            (Some(addr), Some(tls)) => Some((addr, servercore::QuicConfig::new(Arc::clone(tls)))),
            (Some(_), None) => anyhow::bail!("--quic-addr needs --tls-cert and --tls-key"),
            (None, _) => None,
        },
    })?);
    // Every listener is bound before the banner says so.
    let admin = crate::admin::start_for_service(&args.admin, "echo", &service, limit)?;
    let mut addrs: Vec<String> = service
        .local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if let Some(addr) = service.quic_addr() {
        addrs.push(format!("udp {addr} (QUIC)"));
    }
    println!(
        "echo server listening on {} (backend {}{}); Ctrl-C stops it",
        addrs.join(" and "),
        service.backend(),
        if tls.is_some() { ", TLS" } else { "" }
    );
    crate::admin::announce(admin.as_ref());
    tracing::info!(
        addr = %service.local_addr(),
        backend = %service.backend(),
        admin = ?admin.as_ref().map(|admin| admin.local_addr()),
        workers,
        max_sessions = args.max_sessions,
        open_files_limit = limit.soft,
        "echo server started"
    );
    let ready = args
        .ready_file
        .as_deref()
        .map(|path| {
            crate::ready::Ready {
                kind: "echo",
                pid: std::process::id(),
                backend: service.backend().to_string(),
                addr: service.local_addr(),
                ws: args.ws_addr.and(service.local_addrs().get(1).copied()),
                quic: service.quic_addr(),
                admin: admin.as_ref().map(|admin| admin.local_addr()),
            }
            .write(path)
        })
        .transpose()?;
    while !stop.wait(Duration::from_secs(3600)) {}
    drop(ready);
    drop(admin);
    service.stop();
    service.join();
    let stats = service.stats();
    tracing::info!(
        sessions = stats.sessions_total,
        refused = stats.refused_total,
        "echo server stopped"
    );
    println!(
        "stopped: {} sessions served, {} refused",
        stats.sessions_total, stats.refused_total
    );
    Ok(())
}
