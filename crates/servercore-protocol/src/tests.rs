//! The protocol's tests: exact ids, the test vectors of
//! `proto/test_vectors.txt` in both directions, and the generated dispatch.

use super::*;
use proptest::prelude::*;
use servercore::packet::{split_frame, DispatchError, DispatchResult, Packet, MAX_PACKET_SIZE};

const TIME_US: u64 = 1_700_000_000_123_456;

/// Parses `proto/test_vectors.txt`: `NAME hex...` entries, continuation
/// lines indented, `#` comments.
fn test_vectors() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../proto/test_vectors.txt");
    let mut vectors: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut tokens = line.split_whitespace();
        if !line.starts_with(char::is_whitespace) {
            let name = tokens.next().unwrap().to_owned();
            vectors.push((name, Vec::new()));
        }
        let (_, bytes) = vectors
            .last_mut()
            .expect("continuation line before any entry");
        for token in tokens {
            assert_eq!(token.len(), 2, "bad hex byte {token:?}");
            bytes.push(u8::from_str_radix(token, 16).expect("hex byte"));
        }
    }
    vectors
}

/// The vectors' `POS`, for player `object_id`.
fn pos(object_id: u64) -> PosInfo {
    PosInfo {
        object_id,
        x: 150.5,
        y: 42.25,
        z: 0.0,
        yaw: 90.0,
        state: MoveState::Run as i32,
    }
}

/// The messages the vectors encode, as the comments of the file describe.
fn expected_message(name: &str) -> ServerOrClient {
    match name {
        "C_LOGIN" => ServerOrClient::Server(ServerPacket::CLogin(CLogin {
            account: "knight01".into(),
        })),
        "S_LOGIN" => ServerOrClient::Client(ClientPacket::SLogin(SLogin {
            success: true,
            players: vec![
                Player {
                    id: 1,
                    name: "Arthur".into(),
                    player_type: PlayerType::Knight as i32,
                },
                Player {
                    id: 300,
                    name: "Merlin".into(),
                    player_type: PlayerType::Mage as i32,
                },
            ],
            reason: LoginRefusal::Unspecified as i32,
        })),
        "S_LOGIN/refused" => ServerOrClient::Client(ClientPacket::SLogin(SLogin {
            success: false,
            players: Vec::new(),
            reason: LoginRefusal::AccountLimit as i32,
        })),
        "C_ENTER_GAME" => {
            ServerOrClient::Server(ServerPacket::CEnterGame(CEnterGame { player_index: 1 }))
        }
        "S_ENTER_GAME" => ServerOrClient::Client(ClientPacket::SEnterGame(SEnterGame {
            success: true,
            player_id: 300,
            player: None,
        })),
        "C_CHAT" => ServerOrClient::Server(ServerPacket::CChat(CChat {
            msg: "hello".into(),
            client_time_us: TIME_US,
        })),
        "S_CHAT" => ServerOrClient::Client(ClientPacket::SChat(SChat {
            player_id: 300,
            msg: "안녕".into(),
            client_time_us: TIME_US,
        })),
        "C_LEAVE_GAME" => ServerOrClient::Server(ServerPacket::CLeaveGame(CLeaveGame {})),
        "S_LEAVE_GAME" => ServerOrClient::Client(ClientPacket::SLeaveGame(SLeaveGame {})),
        "S_SPAWN" => ServerOrClient::Client(ClientPacket::SSpawn(SSpawn {
            players: vec![
                ObjectInfo {
                    object_id: 300,
                    player_type: PlayerType::Mage as i32,
                    pos_info: Some(pos(300)),
                    name: "Merlin".into(),
                },
                ObjectInfo {
                    object_id: 1,
                    player_type: PlayerType::Knight as i32,
                    pos_info: None,
                    name: "Arthur".into(),
                },
            ],
        })),
        "S_DESPAWN" => ServerOrClient::Client(ClientPacket::SDespawn(SDespawn {
            object_ids: vec![1, 300],
        })),
        "C_MOVE" => ServerOrClient::Server(ServerPacket::CMove(CMove {
            info: Some(pos(0)),
            client_time_us: TIME_US,
        })),
        "S_MOVE" => ServerOrClient::Client(ClientPacket::SMove(SMove {
            info: Some(pos(300)),
            client_time_us: TIME_US,
        })),
        "S_TRANSFER" => ServerOrClient::Client(ClientPacket::STransfer(STransfer {
            node: "b".to_owned(),
            addr: "h:1".to_owned(),
            ws_url: String::new(),
            token: "t".to_owned(),
            pos: Some(pos(300)),
        })),
        other => panic!("test vector for unknown message {other}"),
    }
}

#[derive(Debug, PartialEq)]
enum ServerOrClient {
    Server(ServerPacket),
    Client(ClientPacket),
}

impl ServerOrClient {
    fn id(&self) -> PacketId {
        match self {
            ServerOrClient::Server(packet) => packet.id(),
            ServerOrClient::Client(packet) => packet.id(),
        }
    }

    fn encode(&self) -> bytes::Bytes {
        match self {
            ServerOrClient::Server(ServerPacket::CLogin(m)) => make_packet(m),
            ServerOrClient::Server(ServerPacket::CEnterGame(m)) => make_packet(m),
            ServerOrClient::Server(ServerPacket::CChat(m)) => make_packet(m),
            ServerOrClient::Server(ServerPacket::CLeaveGame(m)) => make_packet(m),
            ServerOrClient::Server(ServerPacket::CMove(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SLogin(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SEnterGame(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SChat(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SLeaveGame(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SSpawn(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SDespawn(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::SMove(m)) => make_packet(m),
            ServerOrClient::Client(ClientPacket::STransfer(m)) => make_packet(m),
        }
    }

    fn decode(id: u16, body: &[u8]) -> ServerOrClient {
        match PacketId::try_from(id).unwrap().is_client_to_server() {
            true => ServerOrClient::Server(ServerPacket::decode(id, body).unwrap()),
            false => ServerOrClient::Client(ClientPacket::decode(id, body).unwrap()),
        }
    }
}

#[test]
fn ids_are_the_reference_numbering() {
    let ids: Vec<(u16, &str)> = PacketId::ALL
        .iter()
        .map(|id| (id.as_u16(), id.name()))
        .collect();
    assert_eq!(
        ids,
        [
            (1000, "C_LOGIN"),
            (1001, "S_LOGIN"),
            (1002, "C_ENTER_GAME"),
            (1003, "S_ENTER_GAME"),
            (1004, "C_CHAT"),
            (1005, "S_CHAT"),
            (1006, "C_LEAVE_GAME"),
            (1007, "S_LEAVE_GAME"),
            (1008, "S_SPAWN"),
            (1009, "S_DESPAWN"),
            (1010, "C_MOVE"),
            (1011, "S_MOVE"),
            (1012, "S_TRANSFER"),
        ]
    );
    assert_eq!(CLogin::ID, 1000);
    assert_eq!(SChat::ID, 1005);
    assert_eq!(SChat::NAME, "S_CHAT");
    assert_eq!(SMove::ID, 1011);
    assert_eq!(
        ALL_IDS,
        [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012]
    );
    assert_eq!(SERVER_RECEIVES_IDS, [1000, 1002, 1004, 1006, 1010]);
    assert_eq!(
        CLIENT_RECEIVES_IDS,
        [1001, 1003, 1005, 1007, 1008, 1009, 1011, 1012]
    );
    for id in PacketId::ALL {
        assert_eq!(PacketId::try_from(u16::from(id)), Ok(id));
        assert_eq!(id.to_string(), id.name());
        assert_eq!(id.is_client_to_server(), id.name().starts_with("C_"));
    }
    assert_eq!(PacketId::try_from(999), Err(DispatchError::UnknownId(999)));
    assert_eq!(PacketId::from_u16(1013), None);
    // Messages named neither C_ nor S_ are plain structs: no id.
    assert!(PacketId::ALL
        .iter()
        .all(|id| !["Player", "PosInfo", "ObjectInfo"].contains(&id.name())));
}

/// A vector's message name: its name before any `/variant`.
fn message_name(vector: &str) -> &str {
    vector.split('/').next().unwrap_or(vector)
}

#[test]
fn test_vectors_cover_every_message_once() {
    let names: Vec<String> = test_vectors()
        .into_iter()
        .filter(|(name, _)| !name.contains('/'))
        .map(|(name, _)| name)
        .collect();
    let mut expected: Vec<String> = PacketId::ALL
        .iter()
        .map(|id| id.name().to_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "one vector per message type");
}

#[test]
fn encoding_gives_the_test_vector_bytes() {
    for (name, bytes) in test_vectors() {
        let message = expected_message(&name);
        assert_eq!(message.id().name(), message_name(&name));
        assert_eq!(
            &message.encode()[..],
            &bytes[..],
            "{name}: encoded bytes differ from proto/test_vectors.txt"
        );
    }
}

#[test]
fn decoding_the_test_vector_bytes_gives_the_message() {
    for (name, bytes) in test_vectors() {
        let packet = split_frame(&bytes, MAX_PACKET_SIZE)
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: vector is not a whole packet"));
        assert_eq!(packet.wire_len(), bytes.len(), "{name}: trailing bytes");
        let id = PacketId::try_from(packet.id).unwrap();
        assert_eq!(id.name(), message_name(&name));
        assert_eq!(
            ServerOrClient::decode(packet.id, packet.body),
            expected_message(&name),
            "{name}: decoded message differs"
        );
    }
}

/// Records which method each packet reached. Context `()`: the generated
/// traits are generic over the session type, so no socket is needed.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
}

impl ServerHandler<()> for Recorder {
    fn handle_c_login(&mut self, _: &(), msg: CLogin) -> DispatchResult {
        self.calls.push(format!("c_login {}", msg.account));
        Ok(())
    }

    fn handle_c_enter_game(&mut self, _: &(), msg: CEnterGame) -> DispatchResult {
        self.calls
            .push(format!("c_enter_game {}", msg.player_index));
        Ok(())
    }

    fn handle_c_chat(&mut self, _: &(), msg: CChat) -> DispatchResult {
        if msg.msg.len() > 100 {
            return Err(DispatchError::rejected(CChat::ID, "chat line too long"));
        }
        self.calls
            .push(format!("c_chat {} {}", msg.msg, msg.client_time_us));
        Ok(())
    }

    fn handle_c_leave_game(&mut self, _: &(), _msg: CLeaveGame) -> DispatchResult {
        self.calls.push("c_leave_game".into());
        Ok(())
    }

    fn handle_c_move(&mut self, _: &(), msg: CMove) -> DispatchResult {
        let info = msg.info.unwrap_or_default();
        self.calls.push(format!(
            "c_move {} {} {}",
            info.x, info.y, msg.client_time_us
        ));
        Ok(())
    }
}

impl ClientHandler<()> for Recorder {
    fn handle_s_login(&mut self, _: &(), msg: SLogin) -> DispatchResult {
        self.calls.push(format!(
            "s_login {} {} {}",
            msg.success,
            msg.players.len(),
            msg.reason().as_str_name()
        ));
        Ok(())
    }

    fn handle_s_enter_game(&mut self, _: &(), msg: SEnterGame) -> DispatchResult {
        self.calls.push(format!("s_enter_game {}", msg.player_id));
        Ok(())
    }

    fn handle_s_chat(&mut self, _: &(), msg: SChat) -> DispatchResult {
        self.calls
            .push(format!("s_chat {} {}", msg.player_id, msg.msg));
        Ok(())
    }

    fn handle_s_leave_game(&mut self, _: &(), _msg: SLeaveGame) -> DispatchResult {
        self.calls.push("s_leave_game".into());
        Ok(())
    }

    fn handle_s_spawn(&mut self, _: &(), msg: SSpawn) -> DispatchResult {
        let names: Vec<&str> = msg.players.iter().map(|p| p.name.as_str()).collect();
        self.calls.push(format!("s_spawn {}", names.join(",")));
        Ok(())
    }

    fn handle_s_despawn(&mut self, _: &(), msg: SDespawn) -> DispatchResult {
        self.calls.push(format!("s_despawn {:?}", msg.object_ids));
        Ok(())
    }

    fn handle_s_move(&mut self, _: &(), msg: SMove) -> DispatchResult {
        let info = msg.info.unwrap_or_default();
        self.calls
            .push(format!("s_move {} {}", info.object_id, info.yaw));
        Ok(())
    }

    fn handle_s_transfer(&mut self, _: &(), msg: STransfer) -> DispatchResult {
        let pos = msg.pos.unwrap_or_default();
        self.calls.push(format!(
            "s_transfer {} {} {} {}",
            msg.node, msg.addr, msg.token, pos.object_id
        ));
        Ok(())
    }
}

/// Implements nothing: every packet reaches the defaults.
struct Nothing;
impl ServerHandler<()> for Nothing {}
impl ClientHandler<()> for Nothing {}

fn split(packet: &[u8]) -> (u16, &[u8]) {
    let raw = split_frame(packet, MAX_PACKET_SIZE).unwrap().unwrap();
    (raw.id, raw.body)
}

#[test]
fn dispatch_reaches_the_right_method_for_every_message() {
    let mut recorder = Recorder::default();
    for (name, bytes) in test_vectors() {
        let (id, body) = split(&bytes);
        if name.starts_with("C_") {
            dispatch_server(&mut recorder, &(), id, body).unwrap();
        } else {
            dispatch_client(&mut recorder, &(), id, body).unwrap();
        }
    }
    let mut calls = recorder.calls;
    calls.sort();
    assert_eq!(
        calls,
        [
            "c_chat hello 1700000000123456",
            "c_enter_game 1",
            "c_leave_game",
            "c_login knight01",
            "c_move 150.5 42.25 1700000000123456",
            "s_chat 300 안녕",
            "s_despawn [1, 300]",
            "s_enter_game 300",
            "s_leave_game",
            "s_login false 0 LOGIN_REFUSAL_ACCOUNT_LIMIT",
            "s_login true 2 LOGIN_REFUSAL_UNSPECIFIED",
            "s_move 300 90",
            "s_spawn Merlin,Arthur",
            "s_transfer b h:1 t 300",
        ]
    );
}

#[test]
fn unexpected_messages_reach_the_default() {
    // The other side's packets, with a handler that implements everything.
    let mut recorder = Recorder::default();
    let s_chat = make_packet(&SChat::default());
    let (id, body) = split(&s_chat);
    assert_eq!(
        dispatch_server(&mut recorder, &(), id, body),
        Err(DispatchError::Unexpected {
            id: 1005,
            name: "S_CHAT"
        })
    );
    let c_login = make_packet(&CLogin::default());
    let (id, body) = split(&c_login);
    assert_eq!(
        dispatch_client(&mut recorder, &(), id, body),
        Err(DispatchError::Unexpected {
            id: 1000,
            name: "C_LOGIN"
        })
    );
    assert!(recorder.calls.is_empty());

    // This side's packets, with a handler that implements nothing.
    for id in SERVER_RECEIVES_IDS {
        let error = dispatch_server(&mut Nothing, &(), *id, &[]).unwrap_err();
        let name = PacketId::try_from(*id).unwrap().name();
        assert_eq!(error, DispatchError::Unexpected { id: *id, name });
        assert_eq!(
            error.to_string(),
            format!("unexpected packet {name} (id {id}): this side has no handler for it")
        );
    }
    for id in CLIENT_RECEIVES_IDS {
        assert!(matches!(
            dispatch_client(&mut Nothing, &(), *id, &[]),
            Err(DispatchError::Unexpected { .. })
        ));
    }
}

#[test]
fn unknown_ids_and_bad_bodies_are_errors() {
    let mut recorder = Recorder::default();
    assert_eq!(
        dispatch_server(&mut recorder, &(), 999, &[]),
        Err(DispatchError::UnknownId(999))
    );
    assert_eq!(
        dispatch_client(&mut recorder, &(), 0, &[]),
        Err(DispatchError::UnknownId(0))
    );
    // C_CHAT whose msg claims 5 bytes but has 1.
    let error = dispatch_server(&mut recorder, &(), 1004, &[0x0a, 0x05, b'h']).unwrap_err();
    assert!(matches!(
        error,
        DispatchError::Decode {
            id: 1004,
            name: "C_CHAT",
            ..
        }
    ));
    assert!(
        error
            .to_string()
            .starts_with("packet C_CHAT (id 1004) does not decode: "),
        "{error}"
    );
    // A string field that is not UTF-8.
    let error = dispatch_server(&mut recorder, &(), 1000, &[0x0a, 0x01, 0xff]).unwrap_err();
    assert!(
        matches!(error, DispatchError::Decode { id: 1000, .. }),
        "{error}"
    );
    // A handler's own refusal.
    let long = make_packet(&CChat {
        msg: "x".repeat(101),
        client_time_us: 0,
    });
    let (id, body) = split(&long);
    assert_eq!(
        dispatch_server(&mut recorder, &(), id, body)
            .unwrap_err()
            .to_string(),
        "packet id 1004 rejected: chat line too long"
    );
    assert!(recorder.calls.is_empty());
}

#[test]
fn unknown_fields_are_ignored_for_compatibility() {
    // A newer peer's C_CHAT with a field 9 (varint 7) appended still decodes.
    let mut body = vec![0x0a, 0x02, b'h', b'i'];
    body.extend([0x48, 0x07]);
    let mut recorder = Recorder::default();
    dispatch_server(&mut recorder, &(), 1004, &body).unwrap();
    assert_eq!(recorder.calls, ["c_chat hi 0"]);
}

#[test]
fn the_decoded_enum_dispatches_later() {
    // A packet can be decoded on the I/O thread and handled later (a job).
    let packet = ServerPacket::decode(1002, &[0x08, 0x07]).unwrap();
    assert_eq!(packet.id(), PacketId::CEnterGame);
    let mut recorder = Recorder::default();
    packet.dispatch(&mut recorder, &()).unwrap();
    assert_eq!(recorder.calls, ["c_enter_game 7"]);
}

fn player() -> impl Strategy<Value = Player> {
    (any::<u64>(), ".{0,20}", 0i32..4).prop_map(|(id, name, player_type)| Player {
        id,
        name,
        player_type,
    })
}

/// Finite floats only: NaN is not equal to itself, so it cannot round-trip
/// through `PartialEq` (its bits do; prost copies them).
fn pos_info() -> impl Strategy<Value = PosInfo> {
    (
        any::<u64>(),
        -1e6f32..1e6,
        -1e6f32..1e6,
        -1e3f32..1e3,
        0f32..360.0,
        0i32..3,
    )
        .prop_map(|(object_id, x, y, z, yaw, state)| PosInfo {
            object_id,
            x,
            y,
            z,
            yaw,
            state,
        })
}

fn object_info() -> impl Strategy<Value = ObjectInfo> {
    (
        any::<u64>(),
        0i32..4,
        prop::option::of(pos_info()),
        ".{0,20}",
    )
        .prop_map(|(object_id, player_type, pos_info, name)| ObjectInfo {
            object_id,
            player_type,
            pos_info,
            name,
        })
}

fn server_packet() -> impl Strategy<Value = ServerPacket> {
    prop_oneof![
        ".{0,40}".prop_map(|account| ServerPacket::CLogin(CLogin { account })),
        any::<u64>().prop_map(|player_index| ServerPacket::CEnterGame(CEnterGame { player_index })),
        (".{0,200}", any::<u64>()).prop_map(|(msg, client_time_us)| {
            ServerPacket::CChat(CChat {
                msg,
                client_time_us,
            })
        }),
        Just(ServerPacket::CLeaveGame(CLeaveGame {})),
        (prop::option::of(pos_info()), any::<u64>()).prop_map(|(info, client_time_us)| {
            ServerPacket::CMove(CMove {
                info,
                client_time_us,
            })
        }),
    ]
}

fn client_packet() -> impl Strategy<Value = ClientPacket> {
    prop_oneof![
        (
            any::<bool>(),
            prop::collection::vec(player(), 0..5),
            0..8i32
        )
            .prop_map(|(success, players, reason)| ClientPacket::SLogin(SLogin {
                success,
                players,
                reason,
            })),
        (any::<bool>(), any::<u64>(), prop::option::of(object_info())).prop_map(
            |(success, player_id, player)| {
                ClientPacket::SEnterGame(SEnterGame {
                    success,
                    player_id,
                    player,
                })
            }
        ),
        Just(ClientPacket::SLeaveGame(SLeaveGame {})),
        prop::collection::vec(object_info(), 0..5)
            .prop_map(|players| ClientPacket::SSpawn(SSpawn { players })),
        prop::collection::vec(any::<u64>(), 0..10)
            .prop_map(|object_ids| ClientPacket::SDespawn(SDespawn { object_ids })),
        (prop::option::of(pos_info()), any::<u64>()).prop_map(|(info, client_time_us)| {
            ClientPacket::SMove(SMove {
                info,
                client_time_us,
            })
        }),
        (any::<u64>(), ".{0,200}", any::<u64>()).prop_map(|(player_id, msg, client_time_us)| {
            ClientPacket::SChat(SChat {
                player_id,
                msg,
                client_time_us,
            })
        }),
        (
            ".{0,20}",
            ".{0,40}",
            ".{0,40}",
            ".{0,200}",
            prop::option::of(pos_info())
        )
            .prop_map(|(node, addr, ws_url, token, pos)| {
                ClientPacket::STransfer(STransfer {
                    node,
                    addr,
                    ws_url,
                    token,
                    pos,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_server_packet_round_trips(packet in server_packet()) {
        let wrapped = ServerOrClient::Server(packet);
        let bytes = wrapped.encode();
        let (id, body) = split(&bytes);
        prop_assert_eq!(id, wrapped.id().as_u16());
        prop_assert_eq!(ServerOrClient::decode(id, body), wrapped);
    }

    #[test]
    fn every_client_packet_round_trips(packet in client_packet()) {
        let wrapped = ServerOrClient::Client(packet);
        let bytes = wrapped.encode();
        let (id, body) = split(&bytes);
        prop_assert_eq!(id, wrapped.id().as_u16());
        prop_assert_eq!(ServerOrClient::decode(id, body), wrapped);
    }

    #[test]
    fn arbitrary_bodies_never_panic(id in 995u16..1015, body in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = dispatch_server(&mut Recorder::default(), &(), id, &body);
        let _ = dispatch_client(&mut Recorder::default(), &(), id, &body);
    }
}
