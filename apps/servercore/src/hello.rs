//! `servercore hello`: the course's dummy client. Each session sends
//! "Hello World" (with its NUL, 12 bytes) once connected, and again one
//! second after each reply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use servercore::job::JobQueue;
use servercore::{ClientService, ClientTransport, DisconnectReason, Session, SessionHandle};

use crate::cli::{EngineArgs, HelloArgs};
use crate::shutdown::{Install as _, StopSignal};

/// The greeting, with the trailing NUL of the C++ client's string.
pub const HELLO: &[u8; 12] = b"Hello World\0";

/// Counts shared by every hello session.
#[derive(Default)]
pub struct HelloCounters {
    /// Replies received (whole or partial reads).
    pub received_bytes: AtomicU64,
    /// Greetings written.
    pub sent_bytes: AtomicU64,
    /// Sessions that got `on_disconnected`.
    pub disconnected: AtomicU64,
}

/// One dummy client.
pub struct HelloSession {
    verbose: bool,
    counters: Arc<HelloCounters>,
    /// Owns the session's one-second timer; dropping it cancels the timer.
    timer: JobQueue,
}

impl HelloSession {
    /// A session that prints its events when `verbose`.
    pub fn new(verbose: bool, counters: Arc<HelloCounters>) -> HelloSession {
        HelloSession {
            verbose,
            counters,
            timer: JobQueue::new(),
        }
    }
}

impl Session for HelloSession {
    fn on_connected(&mut self, session: &SessionHandle) {
        if self.verbose {
            println!("Connected To Server");
        }
        let _ = session.send_copy(HELLO);
    }

    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        if self.verbose {
            println!("OnRecv Len = {}", data.len());
        }
        self.counters
            .received_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let session = session.clone();
        self.timer.do_timer(Duration::from_secs(1), move || {
            let _ = session.send_copy(HELLO);
        });
        data.len()
    }

    fn on_send(&mut self, _session: &SessionHandle, len: usize) {
        if self.verbose {
            println!("OnSend Len = {len}");
        }
        self.counters
            .sent_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        if self.verbose {
            println!("Disconnected ({reason})");
        }
        self.counters.disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts `sessions` hello clients against `addr`.
pub fn start(
    addr: std::net::SocketAddr,
    sessions: usize,
    engine: &EngineArgs,
    transport: ClientTransport,
    verbose: bool,
    counters: Arc<HelloCounters>,
) -> anyhow::Result<ClientService> {
    let mut builder = ClientService::builder(addr)
        .backend(engine.backend)
        .transport(transport)
        .sessions(sessions)
        .on_connect_error(|failure| {
            eprintln!(
                "session {} could not connect to {}: {}",
                failure.index, failure.addr, failure.error
            )
        })
        .session(move || HelloSession::new(verbose, Arc::clone(&counters)));
    if let Some(workers) = engine.workers {
        builder = builder.workers(workers);
    }
    Ok(builder.start()?)
}

/// Runs until Ctrl-C or until every session is gone.
pub fn run(args: HelloArgs) -> anyhow::Result<()> {
    let stop = StopSignal::install();
    let counters = Arc::new(HelloCounters::default());
    let transport = args.tls.client_transport(args.addr, None)?;
    let clients = start(
        args.addr,
        args.sessions,
        &args.engine,
        transport,
        true,
        Arc::clone(&counters),
    )?;
    loop {
        if stop.wait(Duration::from_millis(200)) {
            break;
        }
        if clients.connecting_done() && clients.stats().active_sessions == 0 {
            break;
        }
    }
    clients.stop();
    clients.join();
    println!(
        "hello: {} connected, {} failed, {} bytes sent, {} bytes received",
        clients.connected(),
        clients.failed(),
        counters.sent_bytes.load(Ordering::Relaxed),
        counters.received_bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
