//! In-process tests of [`super::start`]: the API the demo and the benchmark
//! embed. The protocol end to end, on both backends, is in
//! `tests/game.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use servercore::Backend;
use servercore_protocol::{make_packet, CChat, CEnterGame, CLogin, ClientPacket, SChat};

use super::storage::Storage as _;
use super::{start, GameConfig, MAX_CHAT_LEN_LIMIT};

fn config() -> GameConfig {
    GameConfig {
        backend: Backend::Poll,
        workers: Some(2),
        // Every test client comes from 127.0.0.1.
        max_conns_per_ip: 0,
        max_new_accounts_per_min: 0,
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn recv(stream: &mut TcpStream) -> ClientPacket {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut body = vec![0u8; size - 4];
    stream.read_exact(&mut body).unwrap();
    ClientPacket::decode(u16::from_le_bytes([header[2], header[3]]), &body).unwrap()
}

#[test]
fn embedded_server_runs_and_stops_clean() {
    let server = start(config()).unwrap();
    assert_eq!(server.backend(), Backend::Poll);
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut burst = Vec::new();
    burst.extend_from_slice(&make_packet(&CLogin::default()));
    burst.extend_from_slice(&make_packet(&CEnterGame { player_index: 0 }));
    burst.extend_from_slice(&make_packet(&CChat {
        msg: "hi".into(),
        client_time_us: 7,
    }));
    stream.write_all(&burst).unwrap();
    let ClientPacket::SLogin(login) = recv(&mut stream) else {
        panic!("expected S_LOGIN")
    };
    assert!(login.success);
    let ClientPacket::SEnterGame(entered) = recv(&mut stream) else {
        panic!("expected S_ENTER_GAME")
    };
    assert_eq!(entered.player_id, login.players[0].id);
    let ClientPacket::SChat(chat) = recv(&mut stream) else {
        panic!("expected S_CHAT")
    };
    assert_eq!(
        chat,
        SChat {
            player_id: entered.player_id,
            msg: "hi".into(),
            client_time_us: 7,
        }
    );
    assert_eq!(server.stats().players_in_room, 1);
    assert_eq!(server.stats().player_states, 1);
    // Stopping with the client still connected: it is disconnected, its
    // player leaves, and nothing is left alive.
    let stats = server.stop_and_join();
    assert_eq!((stats.logins, stats.enters, stats.chats_relayed), (1, 1, 1));
    assert_eq!(stats.players_in_room, 0);
    assert_eq!(stats.player_states, 0);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

#[test]
fn refuses_a_chat_limit_that_cannot_fit_a_packet() {
    let error = start(GameConfig {
        max_chat_len: MAX_CHAT_LEN_LIMIT + 1,
        ..config()
    })
    .err()
    .expect("refused");
    assert!(error.to_string().contains("max chat length"), "{error}");
}

#[test]
fn reports_a_database_that_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let error = start(GameConfig {
        db_path: dir.path().join("no/such/dir/game.db"),
        ..config()
    })
    .err()
    .expect("refused");
    assert!(
        format!("{error:#}").contains("opening the database"),
        "{error:#}"
    );
}

#[test]
fn packet_limit_leaves_room_for_refusing_long_chats() {
    let small = GameConfig {
        max_chat_len: 256,
        ..config()
    };
    assert_eq!(small.effective_max_packet_size(), 8 * 1024);
    let large = GameConfig {
        max_chat_len: 20_000,
        ..config()
    };
    assert_eq!(large.effective_max_packet_size(), 40_064);
    let huge = GameConfig {
        max_chat_len: MAX_CHAT_LEN_LIMIT,
        ..config()
    };
    assert_eq!(huge.effective_max_packet_size(), 65_535);
}

/// Logins still queued for the database when the server stops are
/// committed and answered: a client whose account was written gets its
/// `S_LOGIN` before the connection closes, and a client that got no answer
/// has no account (its login was never read). Checked per account against
/// the database file after the stop, on every backend.
#[test]
fn logins_queued_at_stop_are_committed_and_answered() {
    const CLIENTS: usize = 100;
    for backend in servercore::driver::available_backends() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("game.db");
        let server = start(GameConfig {
            backend,
            db_path: db_path.clone(),
            ..config()
        })
        .unwrap();
        let addr = server.local_addr();
        let mut clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| {
                let stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                stream
            })
            .collect();
        for (i, client) in clients.iter_mut().enumerate() {
            client
                .write_all(&make_packet(&CLogin {
                    account: format!("queued{i}"),
                }))
                .unwrap();
        }
        // Stop as soon as the first answer shows the database at work:
        // the later logins are still queued.
        let ClientPacket::SLogin(first) = recv(&mut clients[0]) else {
            panic!("expected S_LOGIN")
        };
        assert!(first.success);
        let stats = server.stop_and_join();

        let mut answered = [false; CLIENTS];
        answered[0] = true;
        for (i, client) in clients.iter_mut().enumerate().skip(1) {
            let mut rest = Vec::new();
            client
                .read_to_end(&mut rest)
                .expect("closed, not timed out");
            if !rest.is_empty() {
                let size = u16::from_le_bytes([rest[0], rest[1]]) as usize;
                let id = u16::from_le_bytes([rest[2], rest[3]]);
                assert_eq!(rest.len(), size, "{backend}: client {i}: one packet");
                let ClientPacket::SLogin(login) = ClientPacket::decode(id, &rest[4..]).unwrap()
                else {
                    panic!("{backend}: client {i}: expected S_LOGIN");
                };
                assert!(login.success, "{backend}: client {i}");
                answered[i] = true;
            }
        }
        let mut db = super::storage::SqliteStorage::open(
            &db_path,
            &super::storage::StorageOptions::default(),
        )
        .unwrap();
        for (i, answered) in answered.iter().enumerate() {
            let committed = !db.login(&format!("queued{i}")).unwrap().created;
            assert_eq!(
                committed, *answered,
                "{backend}: client {i}: committed {committed}, answered {answered}"
            );
        }
        let answered = answered.iter().filter(|a| **a).count();
        assert_eq!(stats.logins as usize, answered, "{backend}");
        eprintln!("{backend}: {answered} of {CLIENTS} logins answered at stop");
    }
}
