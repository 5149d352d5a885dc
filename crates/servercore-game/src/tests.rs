//! In-process tests of [`super::start`]: the API the demo and the benchmark
//! embed. The protocol end to end, on both backends, is in
//! `tests/game.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use servercore::{Backend, DisconnectKind};
use servercore_protocol::{make_packet, CChat, CEnterGame, CLogin, ClientPacket, SChat};

use super::player::MAX_PENDING_BYTES;
use super::storage::Storage as _;
use super::{start, GameConfig, WorldConfig, MAX_CHAT_LEN_LIMIT};

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

/// Reads the next packet that is not the world's (`S_SPAWN`, `S_DESPAWN`,
/// `S_MOVE`: players entering at random points may see each other).
fn recv_game(stream: &mut TcpStream) -> ClientPacket {
    loop {
        let packet = recv(stream);
        if !matches!(
            packet,
            ClientPacket::SSpawn(_) | ClientPacket::SDespawn(_) | ClientPacket::SMove(_)
        ) {
            return packet;
        }
    }
}

/// Waits up to ten seconds for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bound on what waits for a player is in bytes on the wire, not in
/// packets: with the database held, a login stays pending and every packet
/// behind it is kept. A client whose kept packets come to exactly
/// [`MAX_PENDING_BYTES`] is served in full, in order, once the login is
/// answered; one a single chat over it is disconnected (`RateLimited`, counted once)
/// without an answer, and meanwhile the server keeps serving a bystander
/// and, after, new logins. On every backend.
#[test]
fn pending_packets_are_bounded_in_bytes() {
    for backend in servercore::driver::available_backends() {
        let server = start(GameConfig {
            backend,
            world: WorldConfig {
                // Every chat of the flood must reach the player, in one
                // tick if it comes to that.
                chat_rate: None,
                chat_bytes_per_tick: 1 << 20,
                ..WorldConfig::default()
            },
            ..config()
        })
        .unwrap();
        let addr = server.local_addr();
        let connect = || {
            let stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        };
        let login = |stream: &mut TcpStream, account: &str| {
            stream
                .write_all(&make_packet(&CLogin {
                    account: account.into(),
                }))
                .unwrap();
        };

        // A bystander in the room before the database is held.
        let mut bystander = connect();
        login(&mut bystander, "bystander");
        let ClientPacket::SLogin(bystander_login) = recv_game(&mut bystander) else {
            panic!("{backend}: expected S_LOGIN")
        };
        assert!(bystander_login.success);
        bystander
            .write_all(&make_packet(&CEnterGame { player_index: 0 }))
            .unwrap();
        let ClientPacket::SEnterGame(bystander_in) = recv_game(&mut bystander) else {
            panic!("{backend}: expected S_ENTER_GAME")
        };
        assert!(bystander_in.success);

        // Chats of about one size (two-byte length and time varints), the
        // first `pad` of them a byte longer, so that the enter and
        // `fitting` chats come to the bound exactly.
        let enter = make_packet(&CEnterGame { player_index: 0 });
        let sized = |i: usize, pad: usize| CChat {
            msg: format!("{i:04}{}", "x".repeat(130 + pad)),
            client_time_us: 1000 + i as u64,
        };
        let chat_size = make_packet(&sized(1, 0)).len();
        let fitting = (MAX_PENDING_BYTES - enter.len()) / chat_size;
        let pad = (MAX_PENDING_BYTES - enter.len()) % chat_size;
        assert!(pad < fitting);
        let chat = |i: usize| sized(i, usize::from(i < pad));
        let kept: usize = enter.len()
            + (0..fitting)
                .map(|i| make_packet(&chat(i)).len())
                .sum::<usize>();
        assert_eq!(kept, MAX_PENDING_BYTES, "{backend}: the flood's arithmetic");
        let flood = |account: &str, chats: usize| {
            let mut burst = make_packet(&CLogin {
                account: account.into(),
            })
            .to_vec();
            burst.extend_from_slice(&enter);
            for i in 0..chats {
                burst.extend_from_slice(&make_packet(&chat(i)));
            }
            burst
        };

        let resume = server.pause_database();
        let mut under = connect();
        under.write_all(&flood("under", fitting)).unwrap();
        let mut over = connect();
        over.write_all(&flood("over", fitting + 1)).unwrap();

        // The one over the bound is disconnected before its login is answered.
        let mut rest = Vec::new();
        match over.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "{backend}: {} bytes to the disconnected client",
                rest.len()
            ),
            Err(error) => assert_eq!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{backend}"
            ),
        }
        eventually("the disconnect counted", || {
            let rate_limited = server
                .engine_metrics()
                .total()
                .disconnects_of(DisconnectKind::RateLimited);
            server.stats().pending_overflows == 1 && rate_limited == 1
        });

        // The bystander is served while the database is held.
        bystander
            .write_all(&make_packet(&CChat {
                msg: "still here".into(),
                client_time_us: 1,
            }))
            .unwrap();
        assert_eq!(
            recv_game(&mut bystander),
            ClientPacket::SChat(SChat {
                player_id: bystander_in.player_id,
                msg: "still here".into(),
                client_time_us: 1,
            }),
            "{backend}"
        );

        // The database answers: everything kept for `under` is handled, in
        // order.
        drop(resume);
        let ClientPacket::SLogin(under_login) = recv_game(&mut under) else {
            panic!("{backend}: expected S_LOGIN")
        };
        assert!(under_login.success, "{backend}");
        let ClientPacket::SEnterGame(under_in) = recv_game(&mut under) else {
            panic!("{backend}: expected S_ENTER_GAME")
        };
        assert!(under_in.success, "{backend}");
        assert_eq!(under_in.player_id, under_login.players[0].id);
        for i in 0..fitting {
            let expected = ClientPacket::SChat(SChat {
                player_id: under_in.player_id,
                msg: chat(i).msg,
                client_time_us: chat(i).client_time_us,
            });
            assert_eq!(recv_game(&mut under), expected, "{backend}: chat {i}");
            assert_eq!(recv_game(&mut bystander), expected, "{backend}: chat {i}");
        }

        // New logins go through; the disconnect stays the only one.
        let mut late = connect();
        login(&mut late, "late");
        let ClientPacket::SLogin(late_login) = recv_game(&mut late) else {
            panic!("{backend}: expected S_LOGIN")
        };
        assert!(late_login.success, "{backend}");
        let stats = server.stop_and_join();
        assert_eq!(stats.pending_overflows, 1, "{backend}");
        assert_eq!(stats.chats_relayed, 1 + fitting as u64, "{backend}");
        eprintln!("{backend}: {fitting} chats of {chat_size} bytes kept, one more disconnected");
    }
}

/// Reads the next packet within `limit`: `None` once the server closed.
fn recv_or_closed(stream: &mut TcpStream, limit: Duration) -> Option<ClientPacket> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return None
        }
        Err(error) => panic!("read: {error}"),
    }
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut body = vec![0u8; size - 4];
    stream.read_exact(&mut body).unwrap();
    Some(ClientPacket::decode(u16::from_le_bytes([header[2], header[3]]), &body).unwrap())
}

/// Two logins of one account on this node, the second while the first
/// is still at the database: the second waits until the first session is
/// gone and saved, then reads the account. So whatever the first did —
/// here it never got in — the second enters where the account really
/// stands; the first never plays once the second has logged in.
#[test]
fn a_local_duplicate_login_waits_for_the_older_session() {
    use servercore_protocol::{CMove, PosInfo};
    let server = start(config()).unwrap();
    let connect = || {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    };
    // The account exists, and stands at a known place.
    let mut setup = connect();
    setup
        .write_all(&make_packet(&CLogin {
            account: "twice".into(),
        }))
        .unwrap();
    assert!(matches!(recv_game(&mut setup), ClientPacket::SLogin(l) if l.success));
    drop(setup);
    eventually("the setup session left", || {
        server.stats().player_states == 0
    });

    let resume = server.pause_database();
    eventually("the database thread is held", || {
        server.db_queue_depth() == 0
    });
    // The first: login, enter and a step, pipelined; its login waits at
    // the database.
    let mut first = connect();
    let mut burst = make_packet(&CLogin {
        account: "twice".into(),
    })
    .to_vec();
    burst.extend_from_slice(&make_packet(&CEnterGame { player_index: 0 }));
    burst.extend_from_slice(&make_packet(&CMove {
        info: Some(PosInfo {
            x: 1000.0,
            y: 1000.0,
            ..PosInfo::default()
        }),
        client_time_us: 1,
    }));
    first.write_all(&burst).unwrap();
    eventually("the first login is at the database", || {
        server.db_queue_depth() >= 1
    });
    // The second, while the first's login is still pending.
    let mut second = connect();
    second
        .write_all(&make_packet(&CLogin {
            account: "twice".into(),
        }))
        .unwrap();
    eventually("the second login has reached the server", || {
        server.db_queue_depth() >= 2
    });
    drop(resume);

    let ClientPacket::SLogin(login) =
        recv_or_closed(&mut second, Duration::from_secs(10)).expect("an answer")
    else {
        panic!("expected S_LOGIN")
    };
    assert!(login.success, "the newer login wins");
    // The first may have been answered before the second was (the bug):
    // then it must be gone by now, and it must not have played.
    let mut first_played = Vec::new();
    while let Some(packet) = recv_or_closed(&mut first, Duration::from_secs(5)) {
        first_played.push(packet);
    }
    assert!(
        !first_played
            .iter()
            .any(|packet| matches!(packet, ClientPacket::SLogin(l) if l.success)),
        "the older session was let in after the newer login had begun: {first_played:?}"
    );
    second
        .write_all(&make_packet(&CEnterGame { player_index: 0 }))
        .unwrap();
    let Some(ClientPacket::SEnterGame(entered)) =
        recv_or_closed(&mut second, Duration::from_secs(10))
    else {
        panic!("expected S_ENTER_GAME")
    };
    assert!(entered.success);
    assert_eq!(server.stats().duplicate_login_kicks, 1);
}
