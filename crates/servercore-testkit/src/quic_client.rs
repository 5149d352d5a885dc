//! A QUIC game client for tests: quinn with the engine's ALPN
//! (`servercore/1`), the protocol crate's packets on the connection's first
//! bidirectional stream and as datagrams, behind blocking calls (a tokio
//! runtime of its own drives the connection in the background).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use servercore::packet::{split_frame, Packet, MAX_PACKET_SIZE};
use servercore_protocol::{
    make_packet, CEnterGame, CLogin, CMove, ClientPacket, PosInfo, SEnterGame, SLogin,
};

use crate::client::TIMEOUT;

/// A blocking QUIC game client.
pub struct QuicGameClient {
    runtime: tokio::runtime::Runtime,
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    pending: VecDeque<ClientPacket>,
    /// The player it entered with (0 before).
    pub player_id: u64,
}

impl QuicGameClient {
    /// Connects to `addr` (its certificate, trusted by `tls`, valid for
    /// `localhost`) and opens the stream. The UDP socket is made on the
    /// calling thread (in its network namespace).
    pub fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> QuicGameClient {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![servercore::transport::quic::ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("a QUIC TLS config");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.datagram_receive_buffer_size(Some(1 << 20));
        config.transport_config(Arc::new(transport));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let mut endpoint = {
            let _entered = runtime.enter();
            quinn::Endpoint::client(bind).expect("a QUIC endpoint")
        };
        endpoint.set_default_client_config(config);
        let (connection, send, recv) = runtime.block_on(async {
            let connecting = endpoint.connect(addr, "localhost").expect("connect");
            let connection = tokio::time::timeout(TIMEOUT, connecting)
                .await
                .expect("a QUIC handshake within the timeout")
                .expect("a QUIC handshake");
            let (send, recv) = connection.open_bi().await.expect("a stream");
            (connection, send, recv)
        });
        QuicGameClient {
            runtime,
            _endpoint: endpoint,
            connection,
            send,
            recv,
            buf: Vec::new(),
            pending: VecDeque::new(),
            player_id: 0,
        }
    }

    /// Sends one packet on the stream.
    pub fn send<M: Packet>(&mut self, msg: &M) {
        let bytes = make_packet(msg);
        let send = &mut self.send;
        self.runtime
            .block_on(send.write_all(&bytes))
            .expect("send on the stream");
    }

    /// Sends one packet as a datagram.
    pub fn send_datagram<M: Packet>(&mut self, msg: &M) {
        self.connection
            .send_datagram(make_packet(msg))
            .expect("send a datagram");
    }

    /// Sends a move to `(x, y)` stamped `client_time_us`, as a datagram.
    pub fn send_move_datagram(&mut self, x: f32, y: f32, client_time_us: u64) {
        self.send_datagram(&CMove {
            info: Some(PosInfo {
                x,
                y,
                ..PosInfo::default()
            }),
            client_time_us,
        });
    }

    /// The next packet on the stream within `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<ClientPacket> {
        loop {
            if let Some(packet) = self.pending.pop_front() {
                return Some(packet);
            }
            let mut chunk = [0u8; 16 * 1024];
            let recv = &mut self.recv;
            let read = self
                .runtime
                .block_on(async { tokio::time::timeout(wait, recv.read(&mut chunk)).await });
            let n = match read {
                Ok(Ok(Some(n))) => n,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some(frame) =
                split_frame(&self.buf[used..], MAX_PACKET_SIZE).expect("framing")
            {
                let packet = ClientPacket::decode(frame.id, frame.body).expect("a client packet");
                used += frame.wire_len();
                self.pending.push_back(packet);
            }
            self.buf.drain(..used);
        }
    }

    /// The next stream packet that is not one of the world's (`S_SPAWN`,
    /// `S_DESPAWN`, `S_MOVE`); panics after [`TIMEOUT`].
    fn recv_skipping_world(&mut self, what: &str) -> ClientPacket {
        loop {
            match self.recv_within(TIMEOUT) {
                Some(
                    ClientPacket::SSpawn(_) | ClientPacket::SDespawn(_) | ClientPacket::SMove(_),
                ) => {}
                Some(packet) => return packet,
                None => panic!("no {what} on the QUIC stream within {TIMEOUT:?}"),
            }
        }
    }

    /// Logs in as `account` and enters with its first player over the
    /// stream (both must succeed).
    pub fn join_as(&mut self, account: &str) -> SEnterGame {
        self.send(&CLogin {
            account: account.into(),
        });
        let login: SLogin = match self.recv_skipping_world("S_LOGIN") {
            ClientPacket::SLogin(msg) => msg,
            other => panic!("expected S_LOGIN, got {other:?}"),
        };
        assert!(login.success, "login of {account}: {login:?}");
        self.send(&CEnterGame { player_index: 0 });
        let entered = match self.recv_skipping_world("S_ENTER_GAME") {
            ClientPacket::SEnterGame(msg) => msg,
            other => panic!("expected S_ENTER_GAME, got {other:?}"),
        };
        assert!(entered.success, "enter of {account}: {entered:?}");
        self.player_id = entered.player_id;
        entered
    }

    /// The packets of the next datagram within `wait` (`None`: none came).
    pub fn datagram_within(&mut self, wait: Duration) -> Option<Vec<ClientPacket>> {
        let connection = &self.connection;
        let datagram = self
            .runtime
            .block_on(async { tokio::time::timeout(wait, connection.read_datagram()).await })
            .ok()?
            .ok()?;
        let mut packets = Vec::new();
        let mut rest = &datagram[..];
        while let Some(frame) = split_frame(rest, MAX_PACKET_SIZE).expect("whole packets") {
            packets.push(ClientPacket::decode(frame.id, frame.body).expect("a client packet"));
            rest = &rest[frame.wire_len()..];
        }
        assert!(rest.is_empty(), "a datagram holds whole packets only");
        Some(packets)
    }
}
