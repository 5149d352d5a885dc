//! The game server against abusive clients, in process over loopback
//! sockets on both backends: slow-trickling connections disconnected by the login and
//! packet deadlines while a well-behaved player keeps chatting, the
//! per-address connection and account-creation limits, and signed login
//! tokens. Every wait is bounded; outcomes are read from the server's
//! counters and the clients' sockets, never decided by a sleep.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use servercore::Backend;
use servercore_game::auth::TokenKey;
use servercore_game::{start, GameConfig, GameServer};
use servercore_protocol::{make_packet, CChat, CEnterGame, CLogin, ClientPacket, SLogin};

use servercore_testkit::backend_tests;
use servercore_testkit::net::wait_until;

backend_tests!(
    slow_clients_are_disconnected_while_a_player_chats,
    connections_are_limited_per_address,
    account_creation_is_limited_per_address,
    signed_tokens_are_required_when_configured,
);

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn config(backend: Backend) -> GameConfig {
    GameConfig {
        backend,
        workers: Some(2),
        ..GameConfig::in_memory(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects to `addr` from the source address `from` (another loopback
/// address stands for another machine).
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

fn recv(stream: &mut TcpStream) -> ClientPacket {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("read a header");
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let mut body = vec![0u8; size - 4];
    stream.read_exact(&mut body).expect("read a body");
    ClientPacket::decode(u16::from_le_bytes([header[2], header[3]]), &body).unwrap()
}

fn login(stream: &mut TcpStream, account: &str) -> SLogin {
    stream
        .write_all(&make_packet(&CLogin {
            account: account.into(),
        }))
        .unwrap();
    match recv(stream) {
        ClientPacket::SLogin(login) => login,
        other => panic!("expected S_LOGIN, got {other:?}"),
    }
}

/// True once the server closed `stream` (EOF or reset); false while it is
/// open. Never blocks.
fn is_closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // discard what the server sent
            Err(error) if error.kind() == ErrorKind::WouldBlock => break false,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Waits up to `limit` for the server to close `stream`.
fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    wait_until(limit, || is_closed(stream))
}

/// 25 clients send whole packets (chats before logging in, refused) but
/// never `C_LOGIN`; 25 log in, then trickle a chat one byte per 200 ms. With
/// 1 s deadlines each is disconnected with its own reason, although all of them keep
/// the idle timer fresh, while a player in the room chats throughout and
/// gets every line back.
fn slow_clients_are_disconnected_while_a_player_chats(backend: Backend) {
    const EACH: usize = 25;
    let server = start(GameConfig {
        login_deadline: Some(Duration::from_secs(1)),
        packet_deadline: Some(Duration::from_secs(1)),
        idle_timeout: Some(Duration::from_secs(60)),
        max_new_accounts_per_min: 0,
        ..config(backend)
    })
    .unwrap();
    let addr = server.local_addr();

    let mut player = connect(addr);
    let me = login(&mut player, "steady");
    assert!(me.success);
    player
        .write_all(&make_packet(&CEnterGame { player_index: 0 }))
        .unwrap();
    assert!(matches!(recv(&mut player), ClientPacket::SEnterGame(e) if e.success));

    let chat = make_packet(&CChat {
        msg: "still here".into(),
        client_time_us: 1,
    });
    let mut never_login: Vec<TcpStream> = (0..EACH).map(|_| connect(addr)).collect();
    // One account each: a second login of an account would close the first.
    let mut tricklers: Vec<TcpStream> = (0..EACH)
        .map(|i| {
            let mut stream = connect(addr);
            assert!(login(&mut stream, &format!("trickler{i}")).success);
            stream
        })
        .collect();

    let started = Instant::now();
    let mut cut_never_login = vec![false; EACH];
    let mut cut_tricklers = vec![false; EACH];
    let mut chats_back = 0;
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(10)
        && !(cut_never_login.iter().all(|c| *c) && cut_tricklers.iter().all(|c| *c))
    {
        for (stream, cut) in never_login.iter_mut().zip(&mut cut_never_login) {
            if !*cut {
                *cut = is_closed(stream) || stream.write_all(&chat).is_err();
            }
        }
        for (stream, cut) in tricklers.iter_mut().zip(&mut cut_tricklers) {
            if !*cut {
                let byte = chat[round % chat.len()];
                *cut = is_closed(stream) || stream.write_all(&[byte]).is_err();
            }
        }
        player
            .write_all(&make_packet(&CChat {
                msg: format!("line {round}"),
                client_time_us: round as u64,
            }))
            .unwrap();
        match recv(&mut player) {
            ClientPacket::SChat(got) => {
                assert_eq!(got.msg, format!("line {round}"));
                assert_eq!(got.player_id, me.players[0].id);
                chats_back += 1;
            }
            other => panic!("expected S_CHAT, got {other:?}"),
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let uncut = cut_never_login.iter().filter(|c| !**c).count()
        + cut_tricklers.iter().filter(|c| !**c).count();
    assert_eq!(uncut, 0, "slow clients still connected after 10 s");
    assert_eq!(chats_back, round, "the steady player got every line back");
    assert!(wait_until(Duration::from_secs(5), || {
        let stats = server.stats();
        stats.login_timeouts == EACH as u64 && stats.packet_timeouts == EACH as u64
    }));
    let stats = server.stats();
    assert_eq!((stats.login_timeouts, stats.packet_timeouts), (25, 25));
    assert_eq!(stats.logins, 1 + EACH as u64);
    assert!(!is_closed(&mut player), "the steady player stays");
    assert_eq!(server.stats().players_in_room, 1);
    finish(server);
}

/// With `max_conns_per_ip = 5`: five connections from 127.0.0.1 log in, a
/// sixth is closed at once and counted, 127.0.0.2 still gets in, and once
/// one of the five leaves 127.0.0.1 may connect again.
fn connections_are_limited_per_address(backend: Backend) {
    let server = start(GameConfig {
        max_conns_per_ip: 5,
        ..config(backend)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut five: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut stream = connect(addr);
            assert!(login(&mut stream, &format!("local{i}")).success);
            stream
        })
        .collect();
    let mut sixth = connect(addr);
    assert!(
        closes_within(&mut sixth, Duration::from_secs(5)),
        "the sixth connection from one address is closed"
    );
    assert_eq!(server.stats().conns_refused_per_ip, 1);

    let mut other = connect_from([127, 0, 0, 2], addr);
    assert!(
        login(&mut other, "elsewhere").success,
        "another address gets in"
    );

    drop(five.pop());
    let mut again = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let mut stream = connect(addr);
            let ok = !closes_within(&mut stream, Duration::from_millis(200))
                && login(&mut stream, "local4").success;
            if ok {
                again = Some(stream);
            }
            ok
        }),
        "a freed place can be taken again"
    );
    for stream in five.iter_mut() {
        assert!(!is_closed(stream), "the first connections stay");
    }
    finish(server);
}

/// With `max_new_accounts_per_min = 3`: three new accounts are created,
/// the fourth (and a guest) is refused with `S_LOGIN{success=false}`, and an
/// existing account still logs in.
fn account_creation_is_limited_per_address(backend: Backend) {
    let server = start(GameConfig {
        max_new_accounts_per_min: 3,
        ..config(backend)
    })
    .unwrap();
    let addr = server.local_addr();
    let mut results = Vec::new();
    for account in ["new1", "new2", "new3", "new4", "", "new1", "new2"] {
        let mut stream = connect(addr);
        let login = login(&mut stream, account);
        results.push((account, login.success, login.players.len()));
    }
    assert_eq!(
        results,
        [
            ("new1", true, 3),
            ("new2", true, 3),
            ("new3", true, 3),
            ("new4", false, 0),
            ("", false, 0),
            ("new1", true, 3),
            ("new2", true, 3),
        ]
    );
    let stats = server.stats();
    assert_eq!((stats.accounts_refused, stats.logins), (2, 5));
    finish(server);
}

/// With a token key, a valid token logs in as its account; one signed with
/// another key, an expired one and a plain name are refused.
fn signed_tokens_are_required_when_configured(backend: Backend) {
    let key = TokenKey::from_secret(b"the game's shared secret, 32+ bytes long").unwrap();
    let server = start(GameConfig {
        auth: Some(key.clone()),
        ..config(backend)
    })
    .unwrap();
    let addr = server.local_addr();

    let valid = key.mint("alice", Duration::from_secs(3600)).unwrap();
    let forged = TokenKey::from_secret(b"somebody else's secret, 32+ bytes")
        .unwrap()
        .mint("alice", Duration::from_secs(3600))
        .unwrap();
    let expired = key
        .mint_expiring_at("alice", SystemTime::now() - Duration::from_secs(2))
        .unwrap();

    let mut stream = connect(addr);
    let login_ok = login(&mut stream, &valid);
    assert!(login_ok.success);
    let names: Vec<&str> = login_ok.players.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alice_knight", "alice_mage", "alice_archer"]);

    for refused in [forged.as_str(), expired.as_str(), "alice", ""] {
        let mut stream = connect(addr);
        assert!(!login(&mut stream, refused).success, "{refused:?} refused");
    }
    let stats = server.stats();
    assert_eq!((stats.logins, stats.tokens_refused), (1, 4));
    finish(server);
}

fn finish(server: GameServer) {
    let stats = server.stop_and_join();
    assert_eq!(stats.player_states, 0);
    assert_eq!(stats.players_in_room, 0);
}
