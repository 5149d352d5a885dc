//! The generated protocol end to end over loopback sockets, on every
//! backend: a `ServerHandler` behind a `PacketSession` answers the classic
//! login / enter / chat conversation, and a client that sends a server-bound
//! packet the wrong way round is disconnected with `MalformedPacket`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reasons::Reasons;
use servercore::packet::{
    split_frame, DispatchError, DispatchResult, Packet, PacketConfig, PacketHandler, PacketSession,
    MAX_PACKET_SIZE,
};
use servercore::{Backend, DisconnectReason, ServerService, SessionHandle};
use servercore_protocol::{
    dispatch_server, make_packet, CChat, CEnterGame, CLogin, ClientPacket, PacketId, Player,
    PlayerType, SChat, SEnterGame, SLogin, ServerHandler, SERVER_RECEIVES_IDS,
};

/// Disconnect reasons by peer address, without extra dependencies.
mod reasons {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use servercore::DisconnectReason;

    #[derive(Clone, Default)]
    pub struct Reasons(Arc<Mutex<HashMap<SocketAddr, DisconnectReason>>>);

    impl Reasons {
        pub fn insert(&self, peer: SocketAddr, reason: DisconnectReason) {
            self.0.lock().unwrap().insert(peer, reason);
        }

        pub fn get(&self, peer: SocketAddr) -> Option<DisconnectReason> {
            self.0.lock().unwrap().get(&peer).cloned()
        }
    }
}

/// A tiny game session: the shape of the sample server's.
struct GameSession {
    reasons: Reasons,
    account: Option<String>,
    player_id: Option<u64>,
}

const PLAYERS: [(u64, &str, PlayerType); 2] = [
    (1, "Arthur", PlayerType::Knight),
    (2, "Merlin", PlayerType::Mage),
];

impl ServerHandler for GameSession {
    fn handle_c_login(&mut self, session: &SessionHandle, msg: CLogin) -> DispatchResult {
        self.account = Some(msg.account);
        let players = PLAYERS
            .iter()
            .map(|(id, name, player_type)| Player {
                id: *id,
                name: (*name).into(),
                player_type: *player_type as i32,
            })
            .collect();
        let _ = session.send(make_packet(&SLogin {
            success: true,
            players,
            ..SLogin::default()
        }));
        Ok(())
    }

    fn handle_c_enter_game(&mut self, session: &SessionHandle, msg: CEnterGame) -> DispatchResult {
        if self.account.is_none() {
            return Err(DispatchError::rejected(
                CEnterGame::ID,
                "enter before login",
            ));
        }
        let Some((id, _, _)) = PLAYERS.get(msg.player_index as usize) else {
            return Err(DispatchError::rejected(CEnterGame::ID, "no such player"));
        };
        self.player_id = Some(*id);
        let _ = session.send(make_packet(&SEnterGame {
            success: true,
            player_id: *id,
            player: None,
        }));
        Ok(())
    }

    fn handle_c_chat(&mut self, session: &SessionHandle, msg: CChat) -> DispatchResult {
        let Some(player_id) = self.player_id else {
            return Err(DispatchError::rejected(CChat::ID, "chat before entering"));
        };
        let _ = session.send(make_packet(&SChat {
            player_id,
            msg: msg.msg,
            client_time_us: msg.client_time_us,
        }));
        Ok(())
    }
}

impl PacketHandler for GameSession {
    fn on_packet(&mut self, session: &SessionHandle, id: u16, body: &[u8]) -> DispatchResult {
        dispatch_server(self, session, id, body)
    }

    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        self.reasons.insert(session.peer_addr(), reason.clone());
    }
}

fn start(backend: Backend) -> (ServerService, Reasons) {
    let reasons = Reasons::default();
    let for_factory = reasons.clone();
    let config = PacketConfig::default().with_known_ids(SERVER_RECEIVES_IDS.iter().copied());
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .session(move || {
            PacketSession::new(
                GameSession {
                    reasons: for_factory.clone(),
                    account: None,
                    player_id: None,
                },
                config.clone(),
            )
        })
        .start()
        .expect("start");
    (service, reasons)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn read_packet(stream: &mut TcpStream) -> ClientPacket {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("header");
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut packet = header.to_vec();
    packet.resize(size, 0);
    stream.read_exact(&mut packet[4..]).expect("body");
    let raw = split_frame(&packet, MAX_PACKET_SIZE).unwrap().unwrap();
    ClientPacket::decode(raw.id, raw.body).expect("a client packet")
}

fn wait_reason(reasons: &Reasons, peer: SocketAddr) -> DisconnectReason {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(reason) = reasons.get(peer) {
            return reason;
        }
        assert!(Instant::now() < end, "{peer} not disconnected");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn uring_unavailable() -> bool {
    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
            panic!("io_uring required but unavailable: {reason}");
        }
        eprintln!("skipping io_uring test: {reason}");
        return true;
    }
    false
}

fn conversation(backend: Backend) {
    let (service, reasons) = start(backend);
    let mut client = connect(service.local_addr());

    // Three requests in one write, the way a client pipelines them.
    let mut out = Vec::new();
    out.extend_from_slice(&make_packet(&CLogin {
        account: "knight01".into(),
    }));
    out.extend_from_slice(&make_packet(&CEnterGame { player_index: 1 }));
    out.extend_from_slice(&make_packet(&CChat {
        msg: "안녕".into(),
        client_time_us: 42,
    }));
    client.write_all(&out).unwrap();

    match read_packet(&mut client) {
        ClientPacket::SLogin(login) => {
            assert!(login.success);
            assert_eq!(login.players.len(), 2);
            assert_eq!(login.players[1].name, "Merlin");
        }
        other => panic!("expected S_LOGIN, got {other:?}"),
    }
    assert_eq!(
        read_packet(&mut client),
        ClientPacket::SEnterGame(SEnterGame {
            success: true,
            player_id: 2,
            player: None,
        })
    );
    let chat = read_packet(&mut client);
    assert_eq!(chat.id(), PacketId::SChat);
    assert_eq!(
        chat,
        ClientPacket::SChat(SChat {
            player_id: 2,
            msg: "안녕".into(),
            client_time_us: 42
        })
    );

    // A server-to-client packet sent to the server: refused by the known-id
    // set before dispatch.
    let mut wrong_way = connect(service.local_addr());
    let peer = wrong_way.local_addr().unwrap();
    wrong_way
        .write_all(&make_packet(&SChat::default()))
        .unwrap();
    assert_eq!(
        wait_reason(&reasons, peer),
        DisconnectReason::MalformedPacket("unknown packet id 1005".into())
    );

    // A handler's refusal: chat before entering the game.
    let mut early = connect(service.local_addr());
    let peer = early.local_addr().unwrap();
    early.write_all(&make_packet(&CChat::default())).unwrap();
    assert_eq!(
        wait_reason(&reasons, peer),
        DisconnectReason::MalformedPacket("packet id 1004 rejected: chat before entering".into())
    );

    // The first client is still in the game.
    client
        .write_all(&make_packet(&CChat {
            msg: "still here".into(),
            client_time_us: 7,
        }))
        .unwrap();
    assert!(
        matches!(read_packet(&mut client), ClientPacket::SChat(chat) if chat.msg == "still here")
    );
    assert_eq!(reasons.get(client.local_addr().unwrap()), None);

    service.stop();
    service.join();
}

#[test]
fn conversation_poll() {
    conversation(Backend::Poll);
}

#[test]
fn conversation_uring() {
    if uring_unavailable() {
        return;
    }
    conversation(Backend::IoUring);
}
