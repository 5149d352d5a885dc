//! `servercore echo`: the course's echo server.

use std::time::Duration;

use servercore::{DisconnectReason, ServerService, Session, SessionHandle};

use crate::cli::{EchoArgs, EngineArgs};
use crate::shutdown::StopSignal;

/// Sends back every byte it receives.
pub struct EchoSession {
    verbose: bool,
}

impl EchoSession {
    /// An echo session; `verbose` prints every receive and send.
    pub fn new(verbose: bool) -> EchoSession {
        EchoSession { verbose }
    }
}

impl Session for EchoSession {
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        if self.verbose {
            println!("OnRecv Len = {}", data.len());
        }
        let _ = session.send_copy(data);
        data.len()
    }

    fn on_send(&mut self, _session: &SessionHandle, len: usize) {
        if self.verbose {
            println!("OnSend Len = {len}");
        }
    }

    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        if self.verbose {
            println!("Disconnected {} ({reason})", session.peer_addr());
        }
    }
}

/// Starts an echo server with the shared engine options.
pub fn start(
    addr: std::net::SocketAddr,
    engine: &EngineArgs,
    max_sessions: usize,
    verbose: bool,
) -> anyhow::Result<ServerService> {
    let mut builder = ServerService::builder(addr)
        .backend(engine.backend)
        .max_sessions(max_sessions)
        .session(move || EchoSession::new(verbose));
    if let Some(workers) = engine.workers {
        builder = builder.workers(workers);
    }
    Ok(builder.start()?)
}

/// Runs until Ctrl-C.
pub fn run(args: EchoArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let service = start(args.addr, &args.engine, args.max_sessions, args.verbose)?;
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
