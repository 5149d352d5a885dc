//! The QUIC listener: a quinn endpoint on its own thread and
//! single-threaded tokio runtime, accepting connections (rate-limited per
//! address, handshakes bounded in number and time) and handing each to a
//! worker as a bridged session.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, EndpointConfig, Incoming, TransportConfig};
use tokio::sync::watch;

use super::bridge::{pump, reason_of, Outbound, QuicLink};
use super::limiter::HandshakeLimiter;
use super::{close_code, Counters, QuicConfig, QuicMetrics, ALPN, ALPN_H3};
use crate::log_throttle::LogThrottle;
use crate::service::engine::EngineShared;
use crate::session::Bridged;

/// How long the listener's stop waits for connections to send their
/// CONNECTION_CLOSE and for the endpoint to go idle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Refused and rate-limited connection attempts, over every listener.
static REFUSE_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
/// Failed and timed-out handshakes, over every listener.
static HANDSHAKE_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

/// A running QUIC listener.
pub(crate) struct QuicListener {
    local: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Builds the quinn server configuration of `config`.
fn server_config(config: &QuicConfig) -> Result<quinn::ServerConfig, String> {
    let mut tls = (*config.tls).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    if config.web_transport.is_some() {
        tls.alpn_protocols.push(ALPN_H3.to_vec());
    }
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|error| format!("the TLS configuration cannot serve QUIC: {error}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            config
                .idle_timeout
                .try_into()
                .map_err(|_| "the QUIC idle timeout is too long".to_string())?,
        ))
        // One stream for servercore/1; HTTP/3 needs its CONNECT stream, the
        // session's stream and its control and QPACK streams besides.
        .max_concurrent_bidi_streams(
            if config.web_transport.is_some() {
                4u32
            } else {
                1
            }
            .into(),
        )
        .max_concurrent_uni_streams(
            if config.web_transport.is_some() {
                4u32
            } else {
                0
            }
            .into(),
        )
        .datagram_receive_buffer_size(Some(config.datagram_receive_buffer))
        .datagram_send_buffer_size(config.datagram_send_buffer);
    server.transport_config(Arc::new(transport));
    server.max_incoming(config.max_handshakes.saturating_mul(2).max(64));
    Ok(server)
}

impl QuicListener {
    /// Binds `addr` and starts accepting; sessions go to `engine`'s workers.
    pub(crate) fn start(
        addr: SocketAddr,
        config: QuicConfig,
        engine: Arc<EngineShared>,
    ) -> std::io::Result<QuicListener> {
        let server = server_config(&config).map_err(std::io::Error::other)?;
        let socket = UdpSocket::bind(addr)?;
        let local = socket.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let endpoint = {
            let _entered = runtime.enter();
            Endpoint::new(
                EndpointConfig::default(),
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let accept = Acceptor {
            endpoint,
            engine,
            counters: Arc::clone(&counters),
            limiter: HandshakeLimiter::new(config.handshakes_per_second, config.handshake_burst),
            config: Arc::new(config),
            local,
        };
        let thread = std::thread::Builder::new()
            .name("servercore-quic".into())
            .spawn(move || runtime.block_on(accept.run(stopped)))?;
        tracing::info!(addr = %local, transport = "quic", "listening");
        Ok(QuicListener {
            local,
            counters,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The UDP address the listener is bound to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The listener's counters now.
    pub(crate) fn metrics(&self) -> QuicMetrics {
        self.counters.snapshot()
    }

    /// Stops accepting, waits (bounded) for the connections' closes to go
    /// out, and ends the thread. Call after the engine's sessions ended.
    pub(crate) fn join(&self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("the QUIC listener thread panicked");
            }
        }
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.join();
    }
}

struct Acceptor {
    endpoint: Endpoint,
    engine: Arc<EngineShared>,
    counters: Arc<Counters>,
    limiter: HandshakeLimiter,
    config: Arc<QuicConfig>,
    local: SocketAddr,
}

impl Acceptor {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if let Some(task) = self.admit(incoming) {
                        tasks.spawn(task);
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // The engine has ended its sessions: their pumps are closing the
        // connections. Handshakes still running are disconnected.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tasks.abort_all();
        }
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.endpoint.wait_idle()).await;
    }

    /// Decides on a connection attempt; returns its task when admitted.
    fn admit(
        &mut self,
        incoming: Incoming,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let counters = &self.counters;
        Counters::add(&counters.incoming, 1);
        let peer = incoming.remote_address();
        if !self.limiter.allow(peer.ip(), Instant::now()) {
            Counters::add(&counters.rate_limited, 1);
            if let Some(refused) = REFUSE_LOG.event() {
                tracing::warn!(%peer, refused, "QUIC: too many new connections from the address; ignoring (refused counts those since the last line)");
            }
            incoming.ignore();
            return None;
        }
        let in_progress = counters.handshakes_in_progress.load(Ordering::Relaxed);
        if in_progress >= self.config.max_handshakes as u64 {
            Counters::add(&counters.refused_busy, 1);
            if let Some(refused) = REFUSE_LOG.event() {
                tracing::warn!(%peer, in_progress, refused, "QUIC: too many handshakes in progress; refusing");
            }
            incoming.refuse();
            return None;
        }
        Counters::add(&counters.handshakes_in_progress, 1);
        let connection = Connection {
            engine: Arc::clone(&self.engine),
            counters: Arc::clone(&self.counters),
            config: Arc::clone(&self.config),
            local: self.local,
        };
        Some(connection.run(incoming))
    }
}

/// The client's stream of a connection, by protocol.
enum Streams {
    /// `servercore/1`: the connection's first bidirectional stream.
    Quic(quinn::SendStream, quinn::RecvStream),
    /// WebTransport: the session's first bidirectional stream.
    WebTransport(Box<super::webtransport::Accepted>),
}

/// One admitted connection attempt.
struct Connection {
    engine: Arc<EngineShared>,
    counters: Arc<Counters>,
    config: Arc<QuicConfig>,
    local: SocketAddr,
}

impl Connection {
    async fn run(self, incoming: Incoming) {
        let peer = incoming.remote_address();
        let web_transport = self.config.web_transport.clone();
        let handshake = async {
            let conn = incoming
                .accept()
                .map_err(|e| reason_of(&e).to_string())?
                .await
                .map_err(|e| reason_of(&e).to_string())?;
            let h3 = conn
                .handshake_data()
                .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|data| data.protocol)
                .is_some_and(|protocol| protocol == ALPN_H3);
            match (h3, web_transport) {
                (true, Some(path)) => {
                    let accepted = super::webtransport::accept(conn.clone(), &path).await?;
                    Ok((conn, Streams::WebTransport(Box::new(accepted))))
                }
                _ => {
                    let (send, recv) = conn
                        .accept_bi()
                        .await
                        .map_err(|e| reason_of(&e).to_string())?;
                    Ok::<_, String>((conn, Streams::Quic(send, recv)))
                }
            }
        };
        let result = tokio::time::timeout(self.config.handshake_timeout, handshake).await;
        self.counters
            .handshakes_in_progress
            .fetch_sub(1, Ordering::Relaxed);
        let (conn, streams) = match result {
            Ok(Ok(ready)) => ready,
            Ok(Err(reason)) => {
                Counters::add(&self.counters.handshake_failures, 1);
                if let Some(failures) = HANDSHAKE_LOG.event() {
                    tracing::info!(%peer, %reason, failures, "QUIC handshake failed (failures counts those since the last line)");
                }
                return;
            }
            Err(_) => {
                Counters::add(&self.counters.handshake_timeouts, 1);
                if let Some(failures) = HANDSHAKE_LOG.event() {
                    tracing::info!(%peer, failures, "QUIC handshake did not finish in time");
                }
                return;
            }
        };
        if !self.engine.try_reserve_session() {
            Counters::add(&self.counters.refused_full, 1);
            self.engine.refused_total.fetch_add(1, Ordering::AcqRel);
            conn.close(close_code::SERVER_FULL.into(), b"server_full");
            return;
        }
        let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%peer, %error, "QUIC: cannot make the session's socket pair");
                self.engine.release_session();
                conn.close(close_code::OTHER.into(), b"io_error");
                return;
            }
        };
        let ours = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours));
        let ours = match ours {
            Ok(ours) => ours,
            Err(error) => {
                tracing::warn!(%peer, %error, "QUIC: cannot register the session's socket");
                self.engine.release_session();
                conn.close(close_code::OTHER.into(), b"io_error");
                return;
            }
        };
        let link = QuicLink::new(conn.clone(), self.local, Arc::clone(&self.counters));
        let link = Arc::new(match &streams {
            Streams::WebTransport(accepted) => link.web_transport(accepted.session_stream),
            Streams::Quic(..) => link,
        });
        // The worker drives its end like an accepted TCP stream: plain
        // reads and writes on a stream socket.
        let stream = TcpStream::from(OwnedFd::from(theirs));
        let bridged = Box::new(Bridged {
            peer: conn.remote_address(),
            link: Arc::clone(&link) as Arc<dyn crate::session::Link>,
        });
        if !self.engine.hand_out_bridged(stream, bridged) {
            conn.close(close_code::SHUTDOWN.into(), b"shutdown");
            return;
        }
        Counters::add(&self.counters.sessions, 1);
        let ids = self.config.datagram_ids.clone();
        match streams {
            Streams::Quic(send, recv) => pump(link, Outbound::Quic(send), recv, ours, ids).await,
            Streams::WebTransport(accepted) => {
                let super::webtransport::Accepted {
                    session,
                    send,
                    recv,
                    ..
                } = *accepted;
                pump(link, Outbound::Other(Box::pin(send)), recv, ours, ids).await;
                // The session lives as long as its bridge.
                drop(session);
            }
        }
    }
}
