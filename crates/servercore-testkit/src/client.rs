//! A blocking game client for tests: the protocol crate's packets over a
//! std `TcpStream` (or rustls over one), read into a buffer so a timeout
//! never loses half a packet.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use servercore::packet::{split_frame, Packet, MAX_PACKET_SIZE};
use servercore_protocol::{
    make_packet, CChat, CEnterGame, CLogin, CMove, ClientPacket, PosInfo, SChat, SEnterGame,
    SLogin, SMove,
};

/// How long a client waits for a packet it expects.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The `S_CHAT` a server sends for `player_id`'s chat `msg`.
pub fn chat_of(player_id: u64, msg: &str, client_time_us: u64) -> SChat {
    SChat {
        player_id,
        msg: msg.into(),
        client_time_us,
    }
}

/// A byte stream a [`GameClient`] speaks over: a socket, or TLS over one.
pub trait ClientStream: Read + Write {
    /// The socket underneath (for timeouts and blocking mode).
    fn socket(&self) -> &TcpStream;
}

impl ClientStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

/// A TLS client stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl ClientStream for TlsStream {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// What one wait for a packet found.
#[derive(Debug)]
pub enum Next {
    /// A packet.
    Packet(ClientPacket),
    /// Nothing within the wait.
    Timeout,
    /// The server closed (or reset) the connection.
    Closed,
}

/// A blocking game client.
pub struct GameClient<S: ClientStream = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    pending: VecDeque<ClientPacket>,
    closed: bool,
    /// Skip the world's packets (`S_SPAWN`, `S_DESPAWN`, `S_MOVE`): for
    /// tests of chat or login whose players may see each other.
    pub skip_world: bool,
    /// The player it entered with (0 before).
    pub player_id: u64,
    /// Where that player stands: from `S_ENTER_GAME`, then from its own
    /// `S_MOVE`s read by [`step`](Self::step).
    pub pos: (f32, f32),
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

impl GameClient<TcpStream> {
    /// Connects to `addr` over plain TCP.
    pub fn connect(addr: SocketAddr) -> GameClient {
        GameClient::over(tcp(addr))
    }

    /// Connects, logs in as `account` and enters with its first player.
    pub fn join(addr: SocketAddr, account: &str) -> (GameClient, SEnterGame) {
        let mut client = GameClient::connect(addr);
        let entered = client.join_as(account);
        (client, entered)
    }

    /// Closes the sending side (FIN after everything sent): the server
    /// reads every packet, then sees the connection end. (Dropping a socket
    /// with unread data would reset it and could lose what was sent.)
    pub fn close_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    }
}

impl GameClient<TlsStream> {
    /// Connects to `addr` over TLS, checking the certificate for
    /// `localhost` against `config`'s roots.
    pub fn tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> GameClient<TlsStream> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(config, name).expect("a TLS client");
        GameClient::over(rustls::StreamOwned::new(connection, tcp(addr)))
    }
}

impl<S: ClientStream> GameClient<S> {
    /// A client over a connected stream.
    pub fn over(stream: S) -> GameClient<S> {
        GameClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            closed: false,
            skip_world: false,
            player_id: 0,
            pos: (0.0, 0.0),
        }
    }

    /// The same client, skipping the world's packets.
    pub fn skipping_world(mut self) -> Self {
        self.skip_world = true;
        self
    }

    /// The stream (to reach the socket underneath).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Sends one packet.
    pub fn send<M: Packet>(&mut self, msg: &M) {
        self.send_raw(&make_packet(msg));
    }

    /// Writes raw bytes (several packets at once, or garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("send");
    }

    /// Sends a move to `(x, y)` stamped `client_time_us`.
    pub fn send_move(&mut self, x: f32, y: f32, client_time_us: u64) {
        self.send(&CMove {
            info: Some(PosInfo {
                x,
                y,
                ..PosInfo::default()
            }),
            client_time_us,
        });
    }

    /// Moves to `(x, y)` and waits for the server's echo of that move
    /// (other packets in between are passed over); asserts it was accepted
    /// as sent.
    pub fn walk_to(&mut self, x: f32, y: f32, client_time_us: u64) {
        self.send_move(x, y, client_time_us);
        loop {
            if let ClientPacket::SMove(msg) = self.recv() {
                if msg.client_time_us == client_time_us {
                    let info = msg.info.unwrap_or_default();
                    assert_eq!((info.x, info.y), (x, y), "the move was accepted as sent");
                    return;
                }
            }
        }
    }

    /// Moves one step of `(dx, dy)` from where the player stands and waits
    /// for its own `S_MOVE` (whatever else comes in between is passed
    /// over, world packets included); returns where the server put it.
    pub fn step(&mut self, dx: f32, dy: f32) -> (f32, f32) {
        self.send_move(self.pos.0 + dx, self.pos.1 + dy, 7);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_of(left, false) {
                Next::Packet(ClientPacket::SMove(moved))
                    if moved.info.as_ref().map(|i| i.object_id) == Some(self.player_id) =>
                {
                    let info = moved.info.unwrap_or_default();
                    self.pos = (info.x, info.y);
                    return self.pos;
                }
                Next::Packet(_) => {}
                Next::Timeout => panic!("player {}: no answer to its move", self.player_id),
                Next::Closed => panic!(
                    "player {}: the server closed the connection",
                    self.player_id
                ),
            }
        }
    }

    /// Reads until an `S_CHAT` whose text is `msg` arrives; false if `limit`
    /// passes (or the connection closes) first.
    pub fn wait_chat(&mut self, msg: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_of(left, true) {
                Next::Packet(ClientPacket::SChat(chat)) if chat.msg == msg => return true,
                Next::Packet(_) => {}
                Next::Timeout | Next::Closed => return false,
            }
        }
    }

    /// True once the server has closed the connection, within `limit`
    /// (whatever it sends before is passed over).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_of(left, false) {
                Next::Closed => return true,
                Next::Timeout => return false,
                Next::Packet(_) => {}
            }
        }
    }

    /// Sends a chat line stamped `client_time_us`.
    pub fn chat(&mut self, msg: &str, client_time_us: u64) {
        self.send(&CChat {
            msg: msg.into(),
            client_time_us,
        });
    }

    /// Logs in and reads the answer.
    pub fn login(&mut self, account: &str) -> SLogin {
        self.send(&CLogin {
            account: account.into(),
        });
        self.recv_login()
    }

    /// Expects an `S_LOGIN`.
    pub fn recv_login(&mut self) -> SLogin {
        match self.recv() {
            ClientPacket::SLogin(msg) => msg,
            other => panic!("expected S_LOGIN, got {other:?}"),
        }
    }

    /// Enters with player `index` and reads the answer.
    pub fn enter(&mut self, index: u64) -> SEnterGame {
        self.send(&CEnterGame {
            player_index: index,
        });
        self.recv_enter()
    }

    /// Expects an `S_ENTER_GAME` (remembering the player it entered with).
    pub fn recv_enter(&mut self) -> SEnterGame {
        match self.recv() {
            ClientPacket::SEnterGame(msg) => {
                if msg.success {
                    self.player_id = msg.player_id;
                    let pos = msg.player.as_ref().and_then(|p| p.pos_info.as_ref());
                    self.pos = pos.map_or((0.0, 0.0), |pos| (pos.x, pos.y));
                }
                msg
            }
            other => panic!("expected S_ENTER_GAME, got {other:?}"),
        }
    }

    /// Logs in as `account` and enters with its first player (both must
    /// succeed).
    pub fn join_as(&mut self, account: &str) -> SEnterGame {
        let login = self.login(account);
        assert!(login.success, "login of {account}: {login:?}");
        let entered = self.enter(0);
        assert!(entered.success, "enter of {account}: {entered:?}");
        assert_eq!(entered.player_id, login.players[0].id);
        entered
    }

    /// The next packet (skipping the world's if [`skip_world`](Self::skip_world)),
    /// waiting at most `wait`.
    pub fn next_within(&mut self, wait: Duration) -> Next {
        self.next_of(wait, self.skip_world)
    }

    /// The next packet within `wait`, skipping the world's if `skip_world`.
    fn next_of(&mut self, wait: Duration, skip_world: bool) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(packet) = self.pending.pop_front() {
                let world = matches!(
                    packet,
                    ClientPacket::SSpawn(_) | ClientPacket::SDespawn(_) | ClientPacket::SMove(_)
                );
                if !(world && skip_world) {
                    return Next::Packet(packet);
                }
            }
            if self.closed {
                return Next::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Timeout;
            }
            let socket = self.stream.socket();
            socket.set_nonblocking(false).unwrap();
            socket.set_read_timeout(Some(left)).unwrap();
            self.read_some();
        }
    }

    /// The next packet within `wait`; `None` on a timeout or a closed
    /// connection.
    pub fn recv_within(&mut self, wait: Duration) -> Option<ClientPacket> {
        match self.next_within(wait) {
            Next::Packet(packet) => Some(packet),
            Next::Timeout | Next::Closed => None,
        }
    }

    /// The next packet (panics after [`TIMEOUT`]).
    pub fn recv(&mut self) -> ClientPacket {
        match self.next_within(TIMEOUT) {
            Next::Packet(packet) => packet,
            Next::Timeout => panic!("player {}: no packet within {TIMEOUT:?}", self.player_id),
            Next::Closed => panic!(
                "player {}: the server closed the connection",
                self.player_id
            ),
        }
    }

    /// Expects an `S_CHAT`.
    pub fn recv_chat(&mut self) -> SChat {
        match self.recv() {
            ClientPacket::SChat(msg) => msg,
            other => panic!("player {}: expected S_CHAT, got {other:?}", self.player_id),
        }
    }

    /// Every packet already received, without waiting (world packets
    /// included).
    pub fn drain(&mut self) -> Vec<ClientPacket> {
        self.stream.socket().set_nonblocking(true).unwrap();
        while !self.closed && self.read_some() {}
        self.stream.socket().set_nonblocking(false).unwrap();
        self.pending.drain(..).collect()
    }

    /// Reads once into the buffer and splits off whole packets. False if
    /// nothing came (timeout, would block, closed).
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let n = match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                return false;
            }
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::Interrupted => return true,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::UnexpectedEof
                ) =>
            {
                self.closed = true;
                return false;
            }
            Err(error) => panic!("read: {error}"),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some(frame) = split_frame(&self.buf[used..], MAX_PACKET_SIZE).expect("framing") {
            let packet = ClientPacket::decode(frame.id, frame.body).expect("a client packet");
            used += frame.wire_len();
            self.pending.push_back(packet);
        }
        self.buf.drain(..used);
        true
    }

    /// Expects an `S_SPAWN`; returns its players' ids in order.
    pub fn expect_spawn(&mut self) -> Vec<u64> {
        match self.recv() {
            ClientPacket::SSpawn(msg) => msg.players.iter().map(|p| p.object_id).collect(),
            other => panic!("player {}: expected S_SPAWN, got {other:?}", self.player_id),
        }
    }

    /// Expects an `S_DESPAWN`; returns its ids.
    pub fn expect_despawn(&mut self) -> Vec<u64> {
        match self.recv() {
            ClientPacket::SDespawn(msg) => msg.object_ids,
            other => panic!(
                "player {}: expected S_DESPAWN, got {other:?}",
                self.player_id
            ),
        }
    }

    /// Expects an `S_MOVE`.
    pub fn expect_move(&mut self) -> SMove {
        match self.recv() {
            ClientPacket::SMove(msg) => msg,
            other => panic!("player {}: expected S_MOVE, got {other:?}", self.player_id),
        }
    }

    /// Expects an `S_MOVE` of `player` at `(x, y)`.
    pub fn expect_move_of(&mut self, player: u64, x: f32, y: f32) -> SMove {
        let msg = self.expect_move();
        let info = msg.info.unwrap_or_default();
        assert_eq!(
            (info.object_id, info.x, info.y),
            (player, x, y),
            "player {}: S_MOVE",
            self.player_id
        );
        msg
    }

    /// Asserts that nothing arrives within `wait` and the connection stays
    /// open (the absence of an extra packet; a slow server can only make
    /// this pass, never fail).
    pub fn expect_nothing(&mut self, wait: Duration) {
        match self.next_within(wait) {
            Next::Timeout => {}
            Next::Closed => panic!(
                "player {}: the server closed the connection",
                self.player_id
            ),
            Next::Packet(packet) => panic!("player {}: unexpected {packet:?}", self.player_id),
        }
    }

    /// Asserts that the server closes the connection within [`TIMEOUT`]
    /// (EOF or reset), whatever it sends before.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "player {}: the server kept the connection",
                self.player_id
            );
            let socket = self.stream.socket();
            socket.set_nonblocking(false).unwrap();
            socket.set_read_timeout(Some(left)).unwrap();
            self.read_some();
            self.pending.clear();
        }
    }
}
