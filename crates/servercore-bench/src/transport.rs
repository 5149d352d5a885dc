//! The transports of the benchmarks (`--transports tcp,tls,ws,quic`): the
//! development certificate every TLS and QUIC server of a run shares, the
//! load generator's client streams (plain, `tokio-rustls`, a small
//! WebSocket client that sends each write as one masked binary message,
//! and a quinn connection's first bidirectional stream), and the engine's
//! server transport for each.
//!
//! The tokio baselines of TLS and WebSocket are `tokio-rustls` and
//! `tokio-tungstenite` servers, that of QUIC a quinn endpoint (see
//! [`super::tokio_server`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use anyhow::Context as _;
use bytes::{Buf, BytesMut};
use servercore::transport::rustls;
use servercore::transport::rustls::pki_types::{CertificateDer, ServerName};
use servercore::{ServerTransport, WebSocketConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How the benchmark's connections are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// Plain TCP.
    #[default]
    Tcp,
    /// TLS 1.3 (rustls on both sides).
    Tls,
    /// WebSocket binary messages over TCP.
    Ws,
    /// QUIC (quinn on both sides): one bidirectional stream per connection
    /// carries the packets; the world's moves go as datagrams.
    Quic,
}

impl Transport {
    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Quic => "quic",
        }
    }

    /// What the tokio baseline is on this transport, for the tables.
    pub fn baseline(self) -> &'static str {
        match self {
            Transport::Tcp => "tokio",
            Transport::Tls => "tokio-rustls",
            Transport::Ws => "tokio-tungstenite",
            Transport::Quic => "tokio + quinn",
        }
    }
}

/// A self-signed pair for `localhost` written to a temporary directory,
/// shared by every TLS server of one run.
pub struct DevCert {
    _dir: tempfile::TempDir,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    der: CertificateDer<'static>,
}

impl DevCert {
    /// Generates the pair.
    pub fn generate() -> anyhow::Result<DevCert> {
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
        let dir = tempfile::tempdir()?;
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(DevCert {
            _dir: dir,
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        })
    }

    /// A client configuration that trusts this certificate.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(servercore::transport::tls::client_config(vec![self
            .der
            .clone()])?)
    }
}

/// The server side's TLS configuration from the files the harness passed.
pub fn server_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        anyhow::bail!("the tls transport needs --tls-cert and --tls-key");
    };
    Ok(servercore::transport::tls::server_config_from_pem(
        cert, key,
    )?)
}

/// The engine's transport for a benchmark server's TCP listener (plain
/// for QUIC, whose listener is a UDP one beside it).
pub fn engine_transport(
    transport: Transport,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> ServerTransport {
    match (transport, tls) {
        (Transport::Tls, Some(tls)) => ServerTransport::tls(Arc::clone(tls)),
        (Transport::Ws, _) => {
            ServerTransport::websocket(WebSocketConfig::default().max_message_size(16 << 20))
        }
        _ => ServerTransport::plain(),
    }
}

/// What the load generator connects with.
#[derive(Clone)]
pub enum Connector {
    /// Plain TCP.
    Tcp,
    /// TLS to `localhost`.
    Tls(tokio_rustls::TlsConnector),
    /// WebSocket to `/`.
    Ws,
    /// QUIC to `localhost`: a quinn endpoint (one UDP socket) per
    /// connection, as every player is a machine of its own.
    Quic(quinn::ClientConfig),
}

impl Connector {
    /// The connector of `transport` (`cert` is needed for TLS).
    pub fn new(transport: Transport, cert: Option<&DevCert>) -> anyhow::Result<Connector> {
        Ok(match transport {
            Transport::Tcp => Connector::Tcp,
            Transport::Ws => Connector::Ws,
            Transport::Tls => {
                let cert = cert.context("no certificate for the tls transport")?;
                Connector::Tls(tokio_rustls::TlsConnector::from(cert.client_config()?))
            }
            Transport::Quic => {
                let cert = cert.context("no certificate for the quic transport")?;
                Connector::Quic(quic_client_config(cert.client_config()?)?)
            }
        })
    }

    /// Connects over QUIC from `source` and opens the connection's
    /// bidirectional stream (the server sees it once the first bytes are
    /// written).
    pub async fn connect_quic(
        config: &quinn::ClientConfig,
        server: SocketAddr,
        source: IpAddr,
    ) -> io::Result<ClientStream> {
        let bind = if source.is_ipv4() == server.is_ipv4() {
            SocketAddr::new(source, 0)
        } else if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(config.clone());
        let connection = endpoint
            .connect(server, "localhost")
            .map_err(io::Error::other)?
            .await?;
        let (send, recv) = connection.open_bi().await?;
        Ok(ClientStream::Quic(Box::new(QuicStream {
            send,
            recv,
            _connection: connection,
            _endpoint: endpoint,
        })))
    }

    /// Runs the transport's handshake on a connected stream.
    pub async fn upgrade(&self, stream: TcpStream, server: SocketAddr) -> io::Result<ClientStream> {
        match self {
            Connector::Tcp => Ok(ClientStream::Tcp(stream)),
            Connector::Tls(connector) => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                Ok(ClientStream::Tls(Box::new(
                    connector.connect(name, stream).await?,
                )))
            }
            Connector::Ws => Ok(ClientStream::Ws(WsClient::handshake(stream, server).await?)),
            Connector::Quic(_) => Err(io::Error::other("QUIC runs over UDP, not a TCP stream")),
        }
    }
}

/// A load-generator connection on any transport.
pub enum ClientStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// WebSocket.
    Ws(WsClient),
    /// A QUIC connection's bidirectional stream.
    Quic(Box<QuicStream>),
}

/// The stream halves of one QUIC connection, with the connection and its
/// endpoint kept alive as long as the stream.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

/// The quinn client configuration of the load generator: the engine's ALPN
/// (`servercore/1`), the certificate `tls` trusts.
pub fn quic_client_config(tls: Arc<rustls::ClientConfig>) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![servercore::transport::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("the TLS configuration cannot serve QUIC")?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// The quinn server configuration of the QUIC baseline: the certificate of
/// `tls`, the engine's ALPN, and the engine listener's datagram buffers
/// (64 KiB out, 4 KiB in: clients only send small `C_MOVE`s).
pub fn quic_server_config(tls: &Arc<rustls::ServerConfig>) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = (**tls).clone();
    tls.alpn_protocols = vec![servercore::transport::quic::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("the TLS configuration cannot serve QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .datagram_receive_buffer_size(Some(4096))
        .datagram_send_buffer_size(64 * 1024);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Ws(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Quic(s) => Pin::new(&mut s.recv).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Ws(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Quic(s) => AsyncWrite::poll_write(Pin::new(&mut s.send), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Ws(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Quic(s) => Pin::new(&mut s.send).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Ws(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Quic(s) => Pin::new(&mut s.send).poll_shutdown(cx),
        }
    }
}

/// A minimal WebSocket client stream: each write is sent as one masked
/// binary message; reads return the payload bytes of the server's binary
/// messages, in order (pings and pongs are skipped; a close ends the
/// stream). Enough for a load generator, not a general client.
pub struct WsClient {
    stream: TcpStream,
    /// Raw bytes read and not yet parsed.
    input: BytesMut,
    /// Payload bytes left in the frame being read.
    payload_left: u64,
    /// The frame being read is a data frame.
    data_frame: bool,
    /// Framed bytes not yet written.
    output: BytesMut,
    closed: bool,
    mask: u32,
}

impl WsClient {
    async fn handshake(mut stream: TcpStream, server: SocketAddr) -> io::Result<WsClient> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut input = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(at) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if stream.read_buf(&mut input).await? == 0 || input.len() > 8192 {
                return Err(io::Error::other("no WebSocket handshake answer"));
            }
        };
        if !input.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other("the server refused the WebSocket upgrade"));
        }
        input.advance(end);
        Ok(WsClient {
            stream,
            input,
            payload_left: 0,
            data_frame: false,
            output: BytesMut::new(),
            closed: false,
            mask: 0x9E37_79B9,
        })
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_le_bytes()
    }

    /// Writes as much of `output` as the socket takes now.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output.is_empty() {
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.output))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.output.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// Skips frame headers and non-data payloads in `input`; true when
    /// payload bytes of a data frame are at its front.
    fn parse(&mut self) -> io::Result<bool> {
        loop {
            if self.payload_left > 0 {
                if self.input.is_empty() {
                    return Ok(false);
                }
                if self.data_frame {
                    return Ok(true);
                }
                let skip = self.payload_left.min(self.input.len() as u64) as usize;
                self.input.advance(skip);
                self.payload_left -= skip as u64;
                continue;
            }
            if self.input.len() < 2 {
                return Ok(false);
            }
            let opcode = self.input[0] & 0x0F;
            let (len, header) = match self.input[1] & 0x7F {
                126 if self.input.len() >= 4 => {
                    (u16::from_be_bytes([self.input[2], self.input[3]]) as u64, 4)
                }
                127 if self.input.len() >= 10 => (
                    u64::from_be_bytes(self.input[2..10].try_into().expect("8 bytes")),
                    10,
                ),
                126 | 127 => return Ok(false),
                short => (short as u64, 2),
            };
            if opcode == 0x8 {
                self.closed = true;
                return Ok(false);
            }
            self.input.advance(header);
            self.payload_left = len;
            self.data_frame = matches!(opcode, 0x0 | 0x2);
        }
    }
}

impl AsyncRead for WsClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.parse()? {
                let take = (this.payload_left as usize)
                    .min(this.input.len())
                    .min(buf.remaining());
                buf.put_slice(&this.input[..take]);
                this.input.advance(take);
                this.payload_left -= take as u64;
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 16 * 1024];
            let mut read_buf = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read_buf))?;
            if read_buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.input.extend_from_slice(read_buf.filled());
        }
    }
}

impl AsyncWrite for WsClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Backpressure: frame new bytes only once the last frame is out.
        ready!(this.poll_drain(cx))?;
        let mask = this.next_mask();
        this.output.extend_from_slice(&[0x82]);
        match buf.len() {
            n if n < 126 => this.output.extend_from_slice(&[0x80 | n as u8]),
            n if n <= 0xFFFF => {
                this.output.extend_from_slice(&[0x80 | 126]);
                this.output.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                this.output.extend_from_slice(&[0x80 | 127]);
                this.output.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        this.output.extend_from_slice(&mask);
        let start = this.output.len();
        this.output.extend_from_slice(buf);
        for (i, byte) in this.output[start..].iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        // Start writing now; what the socket does not take waits for the
        // next write or flush.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
