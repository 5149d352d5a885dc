//! The course's echo server: the session behind `servercore echo` and the
//! benchmarks' echo and idle scenarios.

use std::net::SocketAddr;
use std::time::Duration;

use servercore::{
    Backend, DisconnectReason, ServerService, ServerTransport, Session, SessionHandle,
};

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

/// How to run an echo server.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// The I/O backend.
    pub backend: Backend,
    /// Worker threads (`None`: available cores).
    pub workers: Option<usize>,
    /// Most sessions at once.
    pub max_sessions: usize,
    /// Print `OnRecv Len = N` / `OnSend Len = N` for every event.
    pub verbose: bool,
    /// Send coalescing interval (`Duration::ZERO`: off).
    pub send_coalescing: Duration,

    /// The listener's transport (plain TCP, TLS, WebSocket, WSS).
    pub transport: ServerTransport,
    /// A second listener and its transport (a WebSocket one beside TCP).
    pub ws_addr: Option<(SocketAddr, ServerTransport)>,
    /// A QUIC listener (UDP) and its settings.
    pub quic: Option<(SocketAddr, servercore::QuicConfig)>,
}

/// Starts an echo server.
pub fn start(config: EchoConfig) -> anyhow::Result<ServerService> {
    let verbose = config.verbose;
    let mut builder = ServerService::builder(config.addr)
        .backend(config.backend)
        .max_sessions(config.max_sessions)
        .send_coalescing(config.send_coalescing)
        .transport(config.transport)
        .session(move || EchoSession::new(verbose));
    if let Some((addr, transport)) = config.ws_addr {
        builder = builder.listener(addr, transport);
    }
    if let Some((addr, quic)) = config.quic {
        builder = builder.quic(addr, quic);
    }
    if let Some(workers) = config.workers {
        builder = builder.workers(workers);
    }
    Ok(builder.start()?)
}
