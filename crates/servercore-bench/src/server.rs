//! `servercore bench-server`: one benchmark server in its own process, so
//! the harness can read its CPU time and memory from `/proc` without
//! counting the load generator.
//!
//! Engine servers: the echo session of `servercore echo` (echo and idle),
//! for broadcast the sample game server (`servercore_game`, in-memory
//! database, no idle timeout) or, with `--chat minimal`, the bench's own
//! minimal chat server ([`super::engine_chat`]), and for move the sample
//! game server with its default world. Over QUIC the engine's servers
//! serve `--addr` by UDP (QUIC listener, TLS from `--tls-cert`, no
//! per-address handshake rate) with a plain TCP listener on any port
//! beside it, and the first line names the UDP address. Tokio servers: see
//! [`super::tokio_server`] and [`super::tokio_world`].
//!
//! Contract with the harness ([`super::child`]):
//! - the first stdout line is `listening on ADDR (...)`;
//! - each `sessions` line on stdin is answered with `sessions N` (the
//!   connections the server holds now), each `writes` line with `writes N`
//!   (the gathered socket writes so far; `writes -` where not counted),
//!   each `heap` line with `heap in_use=N free=N from_system=N` (the C
//!   allocator's bytes; `heap -` where it cannot tell), each `trim` line
//!   (give the allocator's free memory back now) with `trimmed BOOL`;
//! - `quit` or the end of stdin stops the server and the process exits.

use std::io::{BufRead, Write};
use std::time::Duration;

use servercore::{Backend, ServerService};

use super::tokio_server::{self, TokioServer};
use super::tokio_world::WorldRules;
use super::transport::{engine_transport, server_tls};
use super::{procfs, BenchServerOptions, ChatServer, Impl, Scenario, Transport};
use servercore_game::{GameConfig, GameServer};

/// The environment variable that sets the soak server's heap trim
/// interval in milliseconds (0: never trim); unset, the game's default.
pub const SOAK_HEAP_TRIM_ENV: &str = "SERVERCORE_SOAK_HEAP_TRIM_MS";

/// A running benchmark server of any implementation.
enum Running {
    Engine(ServerService),
    Game(GameServer),
    Tokio(TokioServer),
}

impl Running {
    fn start(args: &BenchServerOptions) -> anyhow::Result<Running> {
        let tls = match args.transport {
            Transport::Tls | Transport::Quic => Some(server_tls(
                args.tls_cert.as_deref(),
                args.tls_key.as_deref(),
            )?),
            _ => None,
        };
        let transport = engine_transport(args.transport, tls.as_ref());
        let backend = match args.implementation {
            Impl::Uring => Backend::IoUring,
            Impl::Poll => Backend::Poll,
            Impl::Tokio => {
                let kind = match args.scenario {
                    Scenario::Echo | Scenario::Idle => tokio_server::Kind::Echo,
                    Scenario::Broadcast => tokio_server::Kind::Chat,
                    Scenario::Zones => anyhow::bail!("zones runs `servercore server` nodes"),
                    Scenario::Move => tokio_server::Kind::World(WorldRules {
                        size: args.world_size.unwrap_or(WorldRules::default().size),
                        ..WorldRules::default()
                    }),
                    Scenario::Soak => anyhow::bail!("the soak runs the engine's game server"),
                };
                let wire = match (&tls, args.transport) {
                    (Some(tls), Transport::Quic) => {
                        tokio_server::Wire::Quic(std::sync::Arc::clone(tls))
                    }
                    (Some(tls), _) => tokio_server::Wire::Tls(std::sync::Arc::clone(tls)),
                    (None, Transport::Ws) => tokio_server::Wire::Ws,
                    _ => tokio_server::Wire::Tcp,
                };
                return Ok(Running::Tokio(TokioServer::start(
                    kind,
                    args.addr,
                    args.workers,
                    wire,
                    args.tokio_tick.or(args.tick),
                )?));
            }
        };
        // Over QUIC the engine's servers listen on `addr` by UDP; their TCP
        // listener takes any port and the harness is told the QUIC address.
        let quic = args.transport == Transport::Quic;
        let tcp_addr = if quic {
            std::net::SocketAddr::new(args.addr.ip(), 0)
        } else {
            args.addr
        };
        let service = match args.scenario {
            Scenario::Echo | Scenario::Idle => {
                servercore_load::echo::start(servercore_load::echo::EchoConfig {
                    addr: tcp_addr,
                    backend,
                    workers: args.workers,
                    max_sessions: args.max_sessions,
                    verbose: false,
                    send_coalescing: args.send_coalescing.unwrap_or(Duration::ZERO),
                    transport,
                    ws_addr: None,
                    // Every benchmark client comes from one address: no
                    // per-address handshake rate.
                    quic: match (&tls, quic) {
                        (Some(tls), true) => Some((
                            args.addr,
                            servercore::QuicConfig::new(std::sync::Arc::clone(tls))
                                .handshakes_per_second(0, 1),
                        )),
                        _ => None,
                    },
                })?
            }
            Scenario::Broadcast if args.chat == ChatServer::Minimal && quic => {
                anyhow::bail!("the minimal chat server has no QUIC listener")
            }
            Scenario::Broadcast if args.chat == ChatServer::Minimal => super::engine_chat::start(
                args.addr,
                backend,
                args.workers,
                args.max_sessions,
                args.send_coalescing.unwrap_or(Duration::ZERO),
                transport,
            )?,
            Scenario::Soak => {
                // The game server as `servercore server` runs it (deadlines
                // and idle timeout at their defaults), but every client
                // comes from a few loopback addresses.
                let mut config = GameConfig::in_memory(args.addr);
                config.backend = backend;
                config.workers = args.workers;
                config.max_sessions = args.max_sessions;
                config.max_conns_per_ip = 0;
                config.max_new_accounts_per_min = 0;
                // The trim interval can be changed for a comparison run
                // (0: no trim), as docs/BENCHMARKS.md's "Soak" did.
                if let Some(ms) = std::env::var(SOAK_HEAP_TRIM_ENV)
                    .ok()
                    .and_then(|ms| ms.trim().parse::<u64>().ok())
                {
                    config.heap_trim_interval = Some(Duration::from_millis(ms));
                }
                return Ok(Running::Game(servercore_game::start(config)?));
            }
            Scenario::Broadcast | Scenario::Move => {
                let mut config = GameConfig::in_memory(args.addr);
                config.backend = backend;
                config.workers = args.workers;
                config.max_sessions = args.max_sessions;
                config.idle_timeout = None;
                if let Some(interval) = args.send_coalescing {
                    config.send_coalescing = interval;
                }
                if let Some(window) = args.wake_batching {
                    config.wake_batching = window;
                }
                if let Some(tick) = args.tick.filter(|tick| !tick.is_zero()) {
                    config.world.tick = tick;
                }
                if let Some(size) = args.world_size {
                    config.world.size = size;
                }
                // Every benchmark client comes from one address.
                config.max_conns_per_ip = 0;
                config.max_new_accounts_per_min = 0;
                if quic {
                    // The QUIC listener on `addr` (without a per-address
                    // handshake rate: max_conns_per_ip is 0), plain TCP
                    // beside it.
                    config.addr = tcp_addr;
                    config.quic_addr = Some(args.addr);
                    config.quic_tls = tls;
                } else {
                    config.tls = tls;
                }
                if args.transport == Transport::Ws {
                    // The game serves WebSocket on its second listener; the
                    // harness is told that one's address.
                    config.addr = std::net::SocketAddr::new(args.addr.ip(), 0);
                    config.ws_addr = Some(args.addr);
                }
                // The benchmark sets the chat rate itself; the game's
                // per-player chat limit would disconnect a fast one short.
                config.world.chat_rate = None;
                return Ok(Running::Game(servercore_game::start(config)?));
            }
            Scenario::Zones => anyhow::bail!("zones runs `servercore server` nodes"),
        };
        Ok(Running::Engine(service))
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        match self {
            Running::Engine(service) => service.quic_addr().unwrap_or_else(|| service.local_addr()),
            Running::Game(server) => server
                .quic_addr()
                .or_else(|| server.ws_addr())
                .unwrap_or_else(|| server.local_addr()),
            Running::Tokio(server) => server.local_addr(),
        }
    }

    fn sessions(&self) -> usize {
        match self {
            Running::Engine(service) => service.stats().active_sessions,
            Running::Game(server) => server.service_stats().active_sessions,
            Running::Tokio(server) => server.sessions(),
        }
    }

    /// Gathered writes the server submitted so far (engine servers).
    fn writes(&self) -> Option<u64> {
        match self {
            Running::Engine(service) => Some(service.stats().writes_total),
            Running::Game(server) => Some(server.service_stats().writes_total),
            Running::Tokio(server) => Some(server.writes()),
        }
    }

    /// `room=N db=N players=N` for the game server (its queue depths and
    /// live player states), empty for the others.
    fn queues(&self) -> String {
        match self {
            Running::Game(server) => format!(
                "room={} db={} players={}",
                server.room_pending_jobs(),
                server.db_queue_depth(),
                server.stats().player_states
            ),
            _ => String::new(),
        }
    }

    fn stop(self) {
        match self {
            Running::Engine(service) => {
                service.stop();
                service.join();
            }
            Running::Game(server) => {
                server.stop_and_join();
            }
            Running::Tokio(server) => server.stop(),
        }
    }
}

/// Runs one benchmark server until stdin ends.
pub fn run(args: BenchServerOptions) -> anyhow::Result<()> {
    if let Err(error) = procfs::raise_nofile_limit() {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
    let running = Running::start(&args)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "listening on {} ({} {} server)",
        running.local_addr(),
        args.implementation.name(),
        args.scenario.name()
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(_) => break,
        };
        match line.trim() {
            "sessions" => writeln!(out, "sessions {}", running.sessions())?,
            "writes" => match running.writes() {
                Some(writes) => writeln!(out, "writes {writes}")?,
                None => writeln!(out, "writes -")?,
            },
            "queues" => writeln!(out, "queues {}", running.queues())?,
            "heap" => match servercore::driver::heap::stats() {
                Some(heap) => writeln!(
                    out,
                    "heap in_use={} free={} from_system={}",
                    heap.in_use, heap.free, heap.from_system
                )?,
                None => writeln!(out, "heap -")?,
            },
            "trim" => writeln!(out, "trimmed {}", servercore::driver::heap::trim())?,
            "quit" => break,
            "" => continue,
            other => writeln!(out, "error unknown command {other:?}")?,
        }
        out.flush()?;
    }
    running.stop();
    Ok(())
}
