//! The admin listener of the server commands (`--admin ADDR`): which
//! numbers each server exposes (the engine's from `servercore-admin`, the
//! game's from `servercore_game::metrics`, the process's here), read from
//! atomic counters on the admin thread (a scrape takes no lock the I/O
//! workers use).

use std::sync::Arc;

use servercore::ServerService;
use servercore_admin::{
    engine_metrics, quic_metrics, AdminOptions, AdminServer, ServerInfo, Snapshot, StatusSource,
};
use servercore_game::GameServer;

use crate::cli::AdminArgs;
use crate::limits::FileLimit;

/// The process's numbers.
fn process_metrics(out: &mut Snapshot, limit: FileLimit) {
    out.gauge(
        "servercore_open_files_limit",
        "The soft open-file limit in force.",
        limit.soft as f64,
    );
}

/// Starts the admin listener for an engine service (`echo`), if asked
/// (bound, not yet announced: see [`announce`]).
pub fn start_for_service(
    args: &AdminArgs,
    kind: &str,
    service: &Arc<ServerService>,
    limit: FileLimit,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    let info = ServerInfo {
        kind: kind.to_owned(),
        backend: service.backend().to_string(),
        listen: service.local_addr().to_string(),
    };
    let service = Arc::clone(service);
    let admin = start(args, addr, info, move |out: &mut Snapshot| {
        engine_metrics(out, &service.stats(), &service.metrics());
        if let Some(quic) = service.quic_metrics() {
            quic_metrics(out, &quic);
        }
        process_metrics(out, limit);
    })?;
    Ok(Some(admin))
}

/// Starts the admin listener for the game server, if asked (bound, not yet
/// announced: see [`announce`]).
pub fn start_for_game(
    args: &AdminArgs,
    server: &Arc<GameServer>,
    limit: FileLimit,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    let info = ServerInfo {
        kind: "game".to_owned(),
        backend: server.backend().to_string(),
        listen: server.local_addr().to_string(),
    };
    let server = Arc::clone(server);
    let game = servercore_game::metrics::GameMetrics::new(Arc::clone(&server));
    let admin = start(args, addr, info, move |out: &mut Snapshot| {
        engine_metrics(out, &server.service_stats(), &server.engine_metrics());
        if let Some(quic) = server.quic_metrics() {
            quic_metrics(out, &quic);
        }
        game.write(out);
        process_metrics(out, limit);
    })?;
    Ok(Some(admin))
}

/// Starts the listener as `args` allow; a refused public address says which
/// flag allows it.
fn start(
    args: &AdminArgs,
    addr: std::net::SocketAddr,
    info: ServerInfo,
    source: impl StatusSource,
) -> anyhow::Result<AdminServer> {
    let options = AdminOptions {
        allow_public: args.admin_public,
        ..AdminOptions::default()
    };
    AdminServer::start_with(addr, options, info, source).map_err(|error| {
        if error.is_not_loopback() {
            anyhow::anyhow!("{error}; pass --admin-public to serve it there anyway")
        } else {
            error.into()
        }
    })
}

/// Prints where the admin listener serves, if there is one. A command calls
/// it after its own banner, once every listener it has is bound.
pub fn announce(admin: Option<&AdminServer>) {
    if let Some(admin) = admin {
        println!(
            "admin HTTP on http://{}/ (/metrics, /healthz, /status)",
            admin.local_addr()
        );
    }
}
