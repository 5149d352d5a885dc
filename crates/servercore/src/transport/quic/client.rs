//! The client side of QUIC: a [`ClientService`](crate::ClientService)
//! whose sessions connect over QUIC ([`QuicClientConfig`]). One quinn
//! endpoint (one UDP socket) on a thread of its own connects the sessions
//! one after the other, opens each connection's bidirectional stream and
//! bridges it into a worker's session exactly as the listener does.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig as QuinnClientCrypto;
use quinn::{Endpoint, TransportConfig};

use super::bridge::{pump, reason_of, Outbound, QuicLink};
use super::{Counters, ALPN};
use crate::service::engine::EngineShared;
use crate::session::{Bridged, Link};

/// How a [`ClientService`](crate::ClientService) connects over QUIC.
#[derive(Clone)]
pub struct QuicClientConfig {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) server_name: String,
    pub(crate) idle_timeout: Duration,
}

impl QuicClientConfig {
    /// Connects to a server whose certificate, trusted by `tls`, is valid
    /// for `server_name` (a DNS name or an IP address). The ALPN list of
    /// `tls` is replaced by [`ALPN`].
    pub fn new(tls: Arc<rustls::ClientConfig>, server_name: impl Into<String>) -> Self {
        QuicClientConfig {
            tls,
            server_name: server_name.into(),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// The QUIC idle timeout (default 30 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    fn quinn(&self) -> Result<quinn::ClientConfig, String> {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuinnClientCrypto::try_from(tls)
            .map_err(|error| format!("the TLS configuration cannot serve QUIC: {error}"))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                self.idle_timeout
                    .try_into()
                    .map_err(|_| "the QUIC idle timeout is too long".to_string())?,
            ))
            .keep_alive_interval(Some(self.idle_timeout / 3))
            .datagram_receive_buffer_size(Some(1 << 20));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

impl std::fmt::Debug for QuicClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClientConfig")
            .field("server_name", &self.server_name)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// What one connect attempt gave.
pub(crate) enum Attempt {
    /// Connected and handed to a worker.
    Connected,
    /// Connected, but the service is full or stopping: no more connects.
    Full,
    /// Failed.
    Failed(std::io::Error),
}

/// A client endpoint connecting a service's sessions.
pub(crate) struct QuicConnector {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    config: QuicClientConfig,
    counters: Arc<Counters>,
    tasks: tokio::task::JoinSet<()>,
}

impl QuicConnector {
    /// Binds an endpoint for `target`'s address family.
    pub(crate) fn new(target: SocketAddr, config: QuicClientConfig) -> std::io::Result<Self> {
        let client = config.quinn().map_err(std::io::Error::other)?;
        // One runtime thread of its own: the bridges run while the
        // connector thread waits between connects.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("servercore-quic")
            .enable_all()
            .build()?;
        let bind: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = {
            let _entered = runtime.enter();
            Endpoint::client(bind)?
        };
        endpoint.set_default_client_config(client);
        Ok(QuicConnector {
            runtime,
            endpoint,
            config,
            counters: Arc::new(Counters::default()),
            tasks: tokio::task::JoinSet::new(),
        })
    }

    /// The connector's counters.
    pub(crate) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Connects one session to `target` within `timeout`.
    pub(crate) fn connect(
        &mut self,
        engine: &Arc<EngineShared>,
        target: SocketAddr,
        timeout: Duration,
    ) -> Attempt {
        let endpoint = self.endpoint.clone();
        let name = self.config.server_name.clone();
        let opened = self.runtime.block_on(async move {
            let connecting = endpoint
                .connect(target, &name)
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            let open = async {
                let conn = connecting.await?;
                let (send, recv) = conn.open_bi().await?;
                Ok::<_, quinn::ConnectionError>((conn, send, recv))
            };
            match tokio::time::timeout(timeout, open).await {
                Ok(Ok(opened)) => Ok(opened),
                Ok(Err(error)) => Err(std::io::Error::other(reason_of(&error).to_string())),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the QUIC handshake timed out",
                )),
            }
        });
        let (conn, send, recv) = match opened {
            Ok(opened) => opened,
            Err(error) => return Attempt::Failed(error),
        };
        if !engine.try_reserve_session() {
            conn.close(super::close_code::SHUTDOWN.into(), b"shutdown");
            return Attempt::Full;
        }
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
            ours.set_nonblocking(true)?;
            let _entered = self.runtime.enter();
            Ok((tokio::net::UnixStream::from_std(ours)?, theirs))
        });
        let (ours, theirs) = match pair {
            Ok(pair) => pair,
            Err(error) => {
                engine.release_session();
                conn.close(super::close_code::OTHER.into(), b"io_error");
                return Attempt::Failed(error);
            }
        };
        let local = self.endpoint.local_addr().unwrap_or(target);
        let link = Arc::new(QuicLink::new(
            conn.clone(),
            local,
            Arc::clone(&self.counters),
        ));
        let bridged = Box::new(Bridged {
            peer: conn.remote_address(),
            link: Arc::clone(&link) as Arc<dyn Link>,
        });
        if !engine.hand_out_bridged(TcpStream::from(OwnedFd::from(theirs)), bridged) {
            conn.close(super::close_code::SHUTDOWN.into(), b"shutdown");
            return Attempt::Full;
        }
        Counters::add(&self.counters.sessions, 1);
        let _entered = self.runtime.enter();
        self.tasks
            .spawn(pump(link, Outbound::Quic(send), recv, ours, None));
        Attempt::Connected
    }

    /// Runs the bridges until every session ended, then lets the endpoint
    /// send its last closes (bounded).
    pub(crate) fn finish(mut self) {
        let tasks = &mut self.tasks;
        let endpoint = &self.endpoint;
        self.runtime.block_on(async {
            while tasks.join_next().await.is_some() {}
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        });
    }
}
