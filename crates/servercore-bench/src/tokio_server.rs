//! The plain tokio baseline every scenario is compared with, written the
//! idiomatic way: one task per connection on a multi-thread runtime.
//!
//! - echo (and idle): the tokio tutorial's echo loop, `read` into a 1 KiB
//!   buffer owned by the task, `write_all` it back;
//! - broadcast: the same room logic as the engine's chat server
//!   ([`super::chat`]); the connection task reads and handles packets, and a
//!   writer task per session drains everything queued on its unbounded
//!   channel (`recv_many`) into one `write_vectored` loop. A chat builds one
//!   `Bytes` that every member's channel shares;
//! - move: the world of [`super::tokio_world`], on the same connection and
//!   writer design (plain TCP only).
//!
//! With a send tick (the game server's world tick, for a same-interval
//! comparison) a writer given a packet waits for the next tick boundary
//! (the server's ticks, every `tick` from its start) and then drains its
//! channel: each session gets at most one gathered write per tick, at the
//! same moments as the game server's, the way a tokio programmer would
//! batch.
//!
//! Over TLS the same loops run on a `tokio-rustls` stream (split with
//! `tokio::io::split`); over WebSocket on a `tokio-tungstenite` stream: echo
//! sends each binary message back, and the chat writer sends everything
//! queued at once as one binary message.
//!
//! Over QUIC the server is a quinn [`Endpoint`](quinn::Endpoint) with a
//! task per connection: the connection's first bidirectional stream
//! carries the same packets (echo and chat run their loops on its two
//! halves); the world ([`super::tokio_world::serve_quic`]) also takes
//! `C_MOVE` by datagram, and its writer ([`write_queued_quic`]) sends the
//! tick's `S_MOVE`s as datagrams, as many packets in each as fit.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use servercore::transport::rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::chat::{Action, ChatPeer, PlayerIds};
use super::proto;
use super::tokio_world::{self, TokioWorld, WorldRules};

/// Listen backlog, the same as the engine's default.
const LISTEN_BACKLOG: u32 = 4096;

/// Which server the baseline runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Echo every byte back.
    Echo,
    /// The chat room of the broadcast scenario.
    Chat,
    /// The world of the move scenario (plain TCP and QUIC).
    World(WorldRules),
}

/// A running tokio baseline server.
pub struct TokioServer {
    runtime: tokio::runtime::Runtime,
    local_addr: SocketAddr,
    sessions: Arc<AtomicUsize>,
    writers: Writers,
}

/// How every writer task of one server writes, and what it counts.
#[derive(Clone)]
pub struct Writers {
    /// Drain at the tick boundaries after the first queued packet
    /// (`None`: drain at once).
    pub tick: Option<std::time::Duration>,
    /// Tick boundaries are `epoch + k × tick`.
    pub epoch: tokio::time::Instant,
    /// Gathered writes (`write_vectored` calls) so far, over all sessions.
    pub writes: Arc<AtomicU64>,
}

impl TokioServer {
    /// Binds `addr` and starts serving on a runtime of `workers` threads
    /// (default: available cores, tokio's own default).
    pub fn start(
        kind: Kind,
        addr: SocketAddr,
        workers: Option<usize>,
        transport: Wire,
        tick: Option<std::time::Duration>,
    ) -> anyhow::Result<TokioServer> {
        let writers = Writers {
            tick: tick.filter(|tick| !tick.is_zero()),
            epoch: tokio::time::Instant::now(),
            writes: Arc::default(),
        };
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Some(workers) = workers {
            builder.worker_threads(workers);
        }
        let runtime = builder.build()?;
        let sessions = Arc::new(AtomicUsize::new(0));
        if let Wire::Quic(tls) = &transport {
            let config = super::transport::quic_server_config(tls)?;
            let endpoint = {
                let _entered = runtime.enter();
                quinn::Endpoint::server(config, addr)?
            };
            let local_addr = endpoint.local_addr()?;
            runtime.spawn(quic_accept_loop(
                kind,
                endpoint,
                sessions.clone(),
                writers.clone(),
            ));
            return Ok(TokioServer {
                runtime,
                local_addr,
                sessions,
                writers,
            });
        }
        let listener = runtime.block_on(async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            // The engine's default backlog; tokio's `TcpListener::bind`
            // would use 128, which overflows when thousands connect at once.
            socket.listen(LISTEN_BACKLOG)
        })?;
        let local_addr = listener.local_addr()?;
        runtime.spawn(accept_loop(
            kind,
            listener,
            sessions.clone(),
            transport,
            writers.clone(),
        ));
        Ok(TokioServer {
            runtime,
            local_addr,
            sessions,
            writers,
        })
    }

    /// Gathered writes so far, over all sessions (TCP writers).
    pub fn writes(&self) -> u64 {
        self.writers.writes.load(Ordering::Relaxed)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Stops serving and drops every connection.
    pub fn stop(self) {
        self.runtime
            .shutdown_timeout(std::time::Duration::from_secs(2));
    }
}

/// Counts a connection for as long as it lives.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The baseline's transport.
#[derive(Clone)]
pub enum Wire {
    /// Plain TCP.
    Tcp,
    /// `tokio-rustls`.
    Tls(Arc<rustls::ServerConfig>),
    /// `tokio-tungstenite`.
    Ws,
    /// quinn, with this certificate.
    Quic(Arc<rustls::ServerConfig>),
}

/// The QUIC server: a task per connection, which waits for the client's
/// first bidirectional stream and serves it.
async fn quic_accept_loop(
    kind: Kind,
    endpoint: quinn::Endpoint,
    sessions: Arc<AtomicUsize>,
    writers: Writers,
) {
    let room = Arc::new(Room::default());
    let world = Arc::new(TokioWorld::new(match kind {
        Kind::World(rules) => rules,
        _ => WorldRules::default(),
    }));
    while let Some(incoming) = endpoint.accept().await {
        let room = room.clone();
        let world = world.clone();
        let writers = writers.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let Ok((send, recv)) = connection.accept_bi().await else {
                return;
            };
            sessions.fetch_add(1, Ordering::Relaxed);
            let _counted = Counted(sessions);
            match kind {
                Kind::Echo => echo(tokio::io::join(recv, send)).await,
                Kind::Chat => chat_halves(recv, send, room, writers).await,
                Kind::World(_) => {
                    tokio_world::serve_quic(connection.clone(), recv, send, world, writers).await
                }
            }
            connection.close(0u32.into(), b"");
        });
    }
}

async fn accept_loop(
    kind: Kind,
    listener: TcpListener,
    sessions: Arc<AtomicUsize>,
    wire: Wire,
    writers: Writers,
) {
    let room = Arc::new(Room::default());
    let world = Arc::new(TokioWorld::new(match kind {
        Kind::World(rules) => rules,
        _ => WorldRules::default(),
    }));
    let acceptor = match &wire {
        Wire::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(Arc::clone(config))),
        _ => None,
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and friends: back off a little and keep accepting.
                tracing::warn!(%error, "tokio baseline: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        sessions.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(sessions.clone());
        let room = room.clone();
        let world = world.clone();
        let acceptor = acceptor.clone();
        let wire = wire.clone();
        let writers = writers.clone();
        tokio::spawn(async move {
            let _counted = counted;
            match (wire, kind) {
                (Wire::Tcp, Kind::Echo) => echo(stream).await,
                (Wire::Tcp, Kind::Chat) => chat(stream, room, writers).await,
                (Wire::Tcp, Kind::World(_)) => tokio_world::serve(stream, world, writers).await,
                (Wire::Tls(_), kind) => {
                    let acceptor = acceptor.expect("a TLS acceptor");
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    match kind {
                        Kind::Echo => echo(stream).await,
                        Kind::Chat => chat_tls(stream, room, writers).await,
                        Kind::World(_) => {}
                    }
                }
                (Wire::Quic(_), _) => unreachable!("QUIC connections come from the endpoint"),
                (Wire::Ws, kind) => {
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    match kind {
                        Kind::Echo => echo_ws(ws).await,
                        Kind::Chat => chat_ws(ws, room).await,
                        Kind::World(_) => {}
                    }
                }
            }
        });
    }
}

/// WebSocket echo: every binary message goes back as it came.
async fn echo_ws(mut ws: WebSocketStream<TcpStream>) {
    while let Some(Ok(message)) = ws.next().await {
        let echoed = match message {
            Message::Binary(data) => ws.send(Message::Binary(data)).await.is_ok(),
            Message::Close(_) => false,
            _ => true,
        };
        if !echoed {
            return;
        }
    }
}

/// WebSocket chat: the payloads of binary messages form the packet stream.
async fn chat_ws(ws: WebSocketStream<TcpStream>, room: Arc<Room>) {
    let connection = room.next_connection.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 1024).await > 0 {
            let mut message = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
            for packet in batch.drain(..) {
                message.extend_from_slice(&packet);
            }
            if sink.send(Message::Binary(message.freeze())).await.is_err() {
                return;
            }
        }
    });
    let mut peer = ChatPeer::new();
    let mut buf = BytesMut::with_capacity(4096);
    'read: while let Some(Ok(message)) = stream.next().await {
        let Message::Binary(data) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        buf.extend_from_slice(&data);
        loop {
            let (len, action) = match proto::split_frame(&buf) {
                Ok(Some(frame)) => (frame.len, peer.handle(&room.ids, frame.id, frame.body)),
                Ok(None) => break,
                Err(_) => break 'read,
            };
            buf.advance(len);
            match action {
                Ok(None) => {}
                Ok(Some(Action::Reply(packet))) => {
                    let _ = tx.send(packet);
                }
                Ok(Some(Action::Enter { reply, .. })) => {
                    room.members
                        .lock()
                        .expect("room lock")
                        .insert(connection, tx.clone());
                    let _ = tx.send(reply);
                }
                Ok(Some(Action::Broadcast(packet))) => room.broadcast(&packet),
                Err(_) => break 'read,
            }
        }
    }
    room.members.lock().expect("room lock").remove(&connection);
    drop(tx);
    let _ = writer.await;
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

/// The one chat room: each member's outgoing channel, by connection number.
#[derive(Default)]
struct Room {
    members: Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>,
    ids: PlayerIds,
    next_connection: AtomicU64,
}

impl Room {
    fn broadcast(&self, packet: &Bytes) {
        let members = self.members.lock().expect("room lock");
        for member in members.values() {
            let _ = member.send(packet.clone());
        }
    }
}

async fn chat(stream: TcpStream, room: Arc<Room>, writers: Writers) {
    let (reader, writer) = stream.into_split();
    chat_halves(reader, writer, room, writers).await;
}

async fn chat_tls<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    room: Arc<Room>,
    writers: Writers,
) {
    let (reader, writer) = tokio::io::split(stream);
    chat_halves(reader, writer, room, writers).await;
}

async fn chat_halves<R, W>(mut reader: R, writer: W, room: Arc<Room>, writers: Writers)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let connection = room.next_connection.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(write_queued(writer, rx, writers));
    let mut peer = ChatPeer::new();
    let mut buf = BytesMut::with_capacity(4096);
    'read: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let (len, action) = match proto::split_frame(&buf) {
                Ok(Some(frame)) => (frame.len, peer.handle(&room.ids, frame.id, frame.body)),
                Ok(None) => break,
                Err(_) => break 'read,
            };
            buf.advance(len);
            match action {
                Ok(None) => {}
                Ok(Some(Action::Reply(packet))) => {
                    let _ = tx.send(packet);
                }
                Ok(Some(Action::Enter { reply, .. })) => {
                    room.members
                        .lock()
                        .expect("room lock")
                        .insert(connection, tx.clone());
                    let _ = tx.send(reply);
                }
                Ok(Some(Action::Broadcast(packet))) => room.broadcast(&packet),
                Err(_) => break 'read,
            }
        }
        buf.reserve(4096);
    }
    room.members.lock().expect("room lock").remove(&connection);
    drop(tx);
    let _ = writer.await;
}

/// The writer task of one session: waits for the first queued packet (and,
/// with a tick, one tick more), takes everything else queued with it, and
/// writes the lot with one gathered write (more only if the socket takes it
/// partially).
pub(super) async fn write_queued<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    writers: Writers,
) {
    // IOV_MAX on Linux.
    const MAX_BATCH: usize = 1024;
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some(tick) = writers.tick {
            let since = writers.epoch.elapsed().as_nanos();
            let step = tick.as_nanos().max(1);
            let next = u64::try_from((since / step + 1) * step).unwrap_or(u64::MAX);
            tokio::time::sleep_until(writers.epoch + std::time::Duration::from_nanos(next)).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(packet) => batch.push(packet),
                    Err(_) => break,
                }
            }
        }
        if write_all_vectored(&mut writer, &batch, &writers.writes)
            .await
            .is_err()
            || writer.flush().await.is_err()
        {
            return;
        }
        batch.clear();
    }
}

/// The writer task of one QUIC session: [`write_queued`]'s batches, with
/// the batch's `S_MOVE`s sent as datagrams (as many whole packets in each
/// as the peer's datagram size takes, never one split) and the rest, in
/// order, by one gathered write on the stream first. A peer without
/// datagrams, or a packet too large for one, gets it on the stream.
pub(super) async fn write_queued_quic(
    connection: quinn::Connection,
    mut writer: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    writers: Writers,
) {
    const MAX_BATCH: usize = 1024;
    let s_move = servercore_protocol::PacketId::SMove.as_u16();
    let mut batch = Vec::with_capacity(64);
    let mut stream = Vec::with_capacity(64);
    let mut datagram = BytesMut::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Some(tick) = writers.tick {
            let since = writers.epoch.elapsed().as_nanos();
            let step = tick.as_nanos().max(1);
            let next = u64::try_from((since / step + 1) * step).unwrap_or(u64::MAX);
            tokio::time::sleep_until(writers.epoch + std::time::Duration::from_nanos(next)).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(packet) => batch.push(packet),
                    Err(_) => break,
                }
            }
        }
        let max = connection.max_datagram_size().unwrap_or(0);
        let mut moves = Vec::new();
        for packet in batch.drain(..) {
            let is_move = packet.len() >= proto::HEADER_SIZE
                && u16::from_le_bytes([packet[2], packet[3]]) == s_move;
            if is_move && packet.len() <= max {
                moves.push(packet);
            } else {
                stream.push(packet);
            }
        }
        if !stream.is_empty() {
            if write_all_vectored(&mut writer, &stream, &writers.writes)
                .await
                .is_err()
            {
                return;
            }
            stream.clear();
        }
        for packet in moves {
            if datagram.len() + packet.len() > max
                && connection.send_datagram(datagram.split().freeze()).is_err()
            {
                return;
            }
            datagram.extend_from_slice(&packet);
        }
        if !datagram.is_empty() && connection.send_datagram(datagram.split().freeze()).is_err() {
            return;
        }
    }
    let _ = writer.finish();
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &[Bytes],
    writes: &AtomicU64,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|bytes| IoSlice::new(bytes)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        writes.fetch_add(1, Ordering::Relaxed);
        let written = writer.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}
