//! The game server end to end: `servercore server` runs as a child process
//! on a loopback port with a database in a temporary directory, and blocking
//! test clients (std `TcpStream`, the protocol crate's builders and
//! decoders) talk to it. Every test runs on both backends (the io_uring one
//! is skipped with a message where the kernel refuses it) and is bounded by
//! read timeouts and deadlines.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_protocol::{
    make_packet, CChat, CEnterGame, CLeaveGame, CLogin, CMove, ClientPacket, LoginRefusal,
    PlayerType, PosInfo, SChat, SEnterGame, SLogin,
};

use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::{chat_of, GameClient};

use servercore_testkit::backend_tests;

backend_tests!(
    full_flow,
    restart_keeps_players,
    refused_cases,
    pipelined_packets_keep_their_order,
    malformed_packet_disconnects,
    idle_sessions_time_out,
    two_hundred_clients_chat,
    world_flags_moves_and_saved_position,
    login_then_half_close_is_answered,
    signed_logins_with_the_token_command,
);

/// How long a client waits for one expected packet.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client listens to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// The server process

/// A `servercore server` child process; killed on drop if still running,
/// with its log printed when the test failed.
struct Server {
    process: ChildProcess,
    addr: SocketAddr,
}

impl Server {
    /// Starts a server on a free loopback port with the database `db`.
    fn start(backend: Backend, db: &Path, extra: &[&str]) -> Server {
        let (process, ready) = ChildProcess::spawn_ready(
            Command::new(env!("CARGO_BIN_EXE_servercore"))
                .args([
                    "--log",
                    "warn",
                    "server",
                    "--addr",
                    "127.0.0.1:0",
                    "--workers",
                    "2",
                ])
                .args(["--backend", backend.name()])
                .arg("--db")
                .arg(db)
                .args(extra),
            READ_TIMEOUT,
        );
        assert_eq!(ready.backend, backend.name());
        Server {
            process,
            addr: ready.addr,
        }
    }

    /// The stderr so far.
    fn log(&self) -> String {
        self.process.log()
    }

    /// Ctrl-C (SIGINT), then the final counters it prints, parsed.
    fn stop(mut self) -> Stats {
        self.process.signal("INT");
        let line = self.process.line_starting("stopped: ", READ_TIMEOUT);
        let stats = Stats::parse(&line);
        let status = self.process.wait_exit(READ_TIMEOUT);
        assert!(status.success(), "server exited with {status}");
        stats
    }
}

/// The `key=value` counters of the server's last line.
struct Stats(HashMap<String, i64>);

impl Stats {
    fn parse(line: &str) -> Stats {
        let rest = line
            .strip_prefix("stopped: ")
            .unwrap_or_else(|| panic!("unexpected last line: {line}"));
        Stats(
            rest.split_whitespace()
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("key=value");
                    (key.to_owned(), value.parse().expect("a number"))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> i64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no counter {key}"))
    }

    /// Asserts the listed counters, and that nothing was left behind.
    fn assert(&self, expected: &[(&str, i64)]) {
        for (key, value) in expected {
            assert_eq!(self.get(key), *value, "counter {key}");
        }
        assert_eq!(self.get("players_in_room"), 0, "players left in the room");
        assert_eq!(self.get("player_states"), 0, "player states left alive");
        assert_eq!(self.get("players_in_world"), 0, "players left in the world");
    }
}

// ---------------------------------------------------------------------------
// The test client

/// Connects a client that skips the world's packets: the chat and login
/// tests' players may see each other.
fn connect(addr: SocketAddr) -> GameClient {
    GameClient::connect(addr).skipping_world()
}

/// Connects, logs in and enters with the first player; returns the
/// player's id.
fn join(addr: SocketAddr, account: &str) -> (GameClient, u64) {
    let (client, entered) = GameClient::join(addr, account);
    (client.skipping_world(), entered.player_id)
}

// ---------------------------------------------------------------------------
// The tests

/// Login (named and guest), enter, chat seen by everyone in order, leave.
fn full_flow(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(backend, &dir.path().join("game.db"), &[]);
    let addr = server.addr;

    let mut alice = connect(addr);
    let login = alice.login("alice");
    assert!(login.success);
    let kinds: Vec<_> = login
        .players
        .iter()
        .map(|p| (p.name.as_str(), p.player_type))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alice_knight", PlayerType::Knight as i32),
            ("alice_mage", PlayerType::Mage as i32),
            ("alice_archer", PlayerType::Archer as i32),
        ]
    );
    let mut bob = connect(addr);
    let bob_login = bob.login("bob");
    let mut guest = connect(addr);
    let guest_login = guest.login("");
    assert!(bob_login.success && guest_login.success);
    assert_eq!(guest_login.players.len(), 3);
    let mut ids: Vec<u64> = [&login, &bob_login, &guest_login]
        .iter()
        .flat_map(|l| l.players.iter().map(|p| p.id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 9, "every player has its own id");

    // Each enters with another of its players.
    let a = alice.enter(0);
    assert_eq!((a.success, a.player_id), (true, login.players[0].id));
    let b = bob.enter(1);
    assert_eq!((b.success, b.player_id), (true, bob_login.players[1].id));
    let g = guest.enter(2);
    assert_eq!((g.success, g.player_id), (true, guest_login.players[2].id));

    // Chats, one after another: everyone (the sender too) sees each.
    let script = [
        (0usize, "hello from alice", 11u64),
        (1, "bob here", 22),
        (2, "guest says hi", 33),
        (0, "héllo again ✓", 44),
    ];
    let pids = [a.player_id, b.player_id, g.player_id];
    for (from, msg, time) in script {
        [&mut alice, &mut bob, &mut guest][from].chat(msg, time);
        for client in [&mut alice, &mut bob, &mut guest] {
            assert_eq!(client.recv_chat(), chat_of(pids[from], msg, time));
        }
    }

    // A burst from two senders: each receiver sees each sender's in order.
    for i in 0..20 {
        alice.chat(&format!("a{i}"), i);
        bob.chat(&format!("b{i}"), i);
    }
    for client in [&mut alice, &mut bob, &mut guest] {
        let mut next = HashMap::from([(pids[0], 0u64), (pids[1], 0u64)]);
        for _ in 0..40 {
            let chat = client.recv_chat();
            let expected = next.get_mut(&chat.player_id).expect("a sender in the room");
            let prefix = if chat.player_id == pids[0] { "a" } else { "b" };
            assert_eq!(
                chat,
                chat_of(chat.player_id, &format!("{prefix}{expected}"), *expected)
            );
            *expected += 1;
        }
    }

    // Bob leaves: the others no longer reach him, and go on. He closes his
    // side and waits for the server's close, so his session has ended
    // before the next chat is relayed (the room then finds it closed).
    bob.close_write();
    bob.expect_closed();
    drop(bob);
    guest.chat("bye bob", 55);
    for client in [&mut alice, &mut guest] {
        assert_eq!(client.recv_chat(), chat_of(pids[2], "bye bob", 55));
        client.expect_nothing(QUIET);
    }
    drop(alice);
    drop(guest);
    let stats = server.stop();
    stats.assert(&[
        ("sessions", 3),
        ("logins", 3),
        ("logins_refused", 0),
        ("enters", 3),
        ("enters_refused", 0),
        ("chats_relayed", 45),
        ("chat_deliveries", 4 * 3 + 40 * 3 + 2),
        ("chats_refused_not_in_room", 0),
        ("chats_refused_too_long", 0),
    ]);
}

/// Accounts and players survive a restart on the same database file.
fn restart_keeps_players(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("persist.db");

    let server = Server::start(backend, &db, &[]);
    let mut client = connect(server.addr);
    let first = client.login("carol");
    assert!(first.success);
    let mut guest = connect(server.addr);
    let first_guest = guest.login("");
    assert!(first_guest.success);
    drop((client, guest));
    server.stop().assert(&[("logins", 2)]);

    let server = Server::start(backend, &db, &[]);
    let mut client = connect(server.addr);
    let again = client.login("carol");
    assert_eq!(again, first, "the same players, ids, names and kinds");
    // A guest is a new account every time: new players.
    let mut guest = connect(server.addr);
    let second_guest = guest.login("");
    assert!(second_guest.success);
    for player in &second_guest.players {
        assert!(!first_guest.players.iter().any(|p| p.id == player.id));
        assert!(!first.players.iter().any(|p| p.id == player.id));
    }
    // Entering works with a player loaded from the file.
    let entered = client.enter(2);
    assert_eq!(
        (entered.success, entered.player_id),
        (true, first.players[2].id)
    );
    drop((client, guest));
    server.stop().assert(&[("logins", 2), ("enters", 1)]);
}

/// Every refusal: answered `success = false` (or, for chats, dropped), and
/// the session stays usable.
fn refused_cases(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        backend,
        &dir.path().join("refuse.db"),
        &["--max-chat-len", "16"],
    );
    let addr = server.addr;
    let (mut watcher, watcher_id) = join(addr, "watcher");

    let mut client = connect(addr);
    // Entering before logging in.
    assert_eq!(
        client.enter(0),
        SEnterGame {
            success: false,
            player_id: 0,
            player: None,
        }
    );
    // Chatting before logging in or entering: dropped, no one sees it.
    client.chat("too early", 1);
    client.expect_nothing(QUIET);
    watcher.expect_nothing(QUIET);
    // An account name over 64 bytes.
    let long = client.login(&"x".repeat(65));
    assert_eq!(
        long,
        SLogin {
            success: false,
            players: vec![],
            reason: LoginRefusal::AccountNameTooLong as i32,
        }
    );
    // The session is still fine: log in for real.
    let login = client.login("dave");
    assert!(login.success);
    // Logging in twice.
    assert_eq!(
        client.login("dave"),
        SLogin {
            success: false,
            players: vec![],
            reason: LoginRefusal::AlreadyLoggedIn as i32,
        }
    );
    // Chat after login but before entering: dropped.
    client.chat("still early", 2);
    client.expect_nothing(QUIET);
    watcher.expect_nothing(QUIET);
    // Index out of range.
    assert!(!client.enter(3).success);
    assert!(!client.enter(u64::MAX).success);
    // Now in.
    let entered = client.enter(1);
    assert_eq!(
        (entered.success, entered.player_id),
        (true, login.players[1].id)
    );
    // Entering twice.
    assert_eq!(
        client.enter(0),
        SEnterGame {
            success: false,
            player_id: 0,
            player: None,
        }
    );

    // A chat over the limit is dropped; one at the limit goes through.
    client.chat(&"y".repeat(17), 3);
    client.chat(&"z".repeat(16), 4);
    let expected = chat_of(entered.player_id, &"z".repeat(16), 4);
    for c in [&mut client, &mut watcher] {
        assert_eq!(c.recv_chat(), expected);
        c.expect_nothing(QUIET);
    }
    watcher.chat("ok", 5);
    for c in [&mut client, &mut watcher] {
        assert_eq!(c.recv_chat(), chat_of(watcher_id, "ok", 5));
    }
    // One account, one session: a second login of it closes the first.
    let mut twin = connect(addr);
    assert!(twin.login("dave").success);
    client.expect_closed();
    drop((client, watcher, twin));
    server.stop().assert(&[
        ("logins", 3),
        ("logins_refused", 2),
        ("duplicate_login_kicks", 1),
        ("enters", 2),
        ("enters_refused", 4),
        ("chats_relayed", 2),
        ("chats_refused_not_in_room", 2),
        ("chats_refused_too_long", 1),
    ]);
}

/// A client that does not wait for answers: login, enter and chat in one
/// write mean what they mean one by one.
fn pipelined_packets_keep_their_order(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(backend, &dir.path().join("pipe.db"), &[]);
    let mut client = connect(server.addr);
    let mut burst = Vec::new();
    burst.extend_from_slice(&make_packet(&CChat {
        msg: "before".into(),
        client_time_us: 0,
    }));
    burst.extend_from_slice(&make_packet(&CLogin {
        account: "erin".into(),
    }));
    burst.extend_from_slice(&make_packet(&CEnterGame { player_index: 2 }));
    for i in 1..=3u64 {
        burst.extend_from_slice(&make_packet(&CChat {
            msg: format!("m{i}"),
            client_time_us: i,
        }));
    }
    client.send_raw(&burst);
    let login = client.recv_login();
    assert!(login.success);
    let entered = client.recv_enter();
    assert_eq!(
        (entered.success, entered.player_id),
        (true, login.players[2].id)
    );
    for i in 1..=3u64 {
        assert_eq!(
            client.recv_chat(),
            chat_of(entered.player_id, &format!("m{i}"), i)
        );
    }
    client.expect_nothing(QUIET);
    drop(client);
    server
        .stop()
        .assert(&[("chats_relayed", 3), ("chats_refused_not_in_room", 1)]);
}

/// A client that sends `C_LOGIN` and at once shuts its write side down
/// still gets `S_LOGIN` (answered by the database thread, after the EOF
/// arrived), then an orderly close.
fn login_then_half_close_is_answered(backend: Backend) {
    const TRIES: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(backend, &dir.path().join("half.db"), &[]);
    let mut answered = 0;
    for i in 0..TRIES {
        let mut client = connect(server.addr);
        client.send(&CLogin {
            account: format!("half{i}"),
        });
        client.close_write();
        match client.recv_within(READ_TIMEOUT) {
            Some(ClientPacket::SLogin(login)) if login.success => {
                assert!(client.drain().is_empty(), "nothing after S_LOGIN");
                let mut rest = Vec::new();
                client
                    .stream()
                    .read_to_end(&mut rest)
                    .expect("FIN, not RST");
                assert!(rest.is_empty(), "nothing after S_LOGIN");
                answered += 1;
            }
            Some(other) => panic!("expected S_LOGIN, got {other:?}"),
            None => {}
        }
    }
    assert_eq!(answered, TRIES, "logins answered after a half-close");
    server.stop().assert(&[("logins", TRIES as i64)]);
}

/// A packet the server does not take ends that session only.
fn malformed_packet_disconnects(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(backend, &dir.path().join("bad.db"), &[]);
    let (mut good, good_id) = join(server.addr, "good");
    let (mut bad, _) = join(server.addr, "bad");
    // An S_ packet sent to the server.
    bad.send(&SChat::default());
    bad.expect_closed();
    // A size below the header.
    let mut bad = connect(server.addr);
    bad.send_raw(&[2, 0, 0xe8, 0x03]);
    bad.expect_closed();
    // A body that does not decode (C_LOGIN with a truncated field).
    let mut bad = connect(server.addr);
    bad.send_raw(&[6, 0, 0xe8, 0x03, 0x0a, 0x05]);
    bad.expect_closed();
    // The others carry on; the bad player left the room.
    std::thread::sleep(Duration::from_millis(100));
    good.chat("still here", 9);
    assert_eq!(good.recv_chat(), chat_of(good_id, "still here", 9));
    good.expect_nothing(QUIET);
    drop(good);
    server
        .stop()
        .assert(&[("chats_relayed", 1), ("chat_deliveries", 1)]);
}

/// `--idle-timeout` disconnects a silent session (and its player leaves).
fn idle_sessions_time_out(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        backend,
        &dir.path().join("idle.db"),
        &["--idle-timeout", "1"],
    );
    let (mut idle, _) = join(server.addr, "sleepy");
    let started = Instant::now();
    idle.expect_closed();
    assert!(started.elapsed() >= Duration::from_millis(500));
    server.stop().assert(&[("enters", 1)]);
}

/// 200 clients in the room each send 5 chats at once: every client receives
/// all 1000, and each sender's 5 in the order sent.
fn two_hundred_clients_chat(backend: Backend) {
    const CLIENTS: usize = 200;
    const CHATS: u64 = 5;
    const THREADS: usize = 8;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = tempfile::tempdir().unwrap();
    // All 200 come from one address and create 200 accounts.
    let server = Server::start(
        backend,
        &dir.path().join("load.db"),
        &["--max-conns-per-ip", "0", "--max-new-accounts-per-min", "0"],
    );
    let addr = server.addr;

    // Join from a few threads; every client is in before anyone chats.
    let mut clients: Vec<(GameClient, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (t..CLIENTS)
                        .step_by(THREADS)
                        .map(|i| {
                            let account = if i % 4 == 0 {
                                String::new()
                            } else {
                                format!("load{i}")
                            };
                            join(addr, &account)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(clients.len(), CLIENTS);
    let senders: HashMap<u64, usize> = clients
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (*id, i))
        .collect();
    assert_eq!(senders.len(), CLIENTS, "distinct player ids");

    // Everyone sends its chats at once (threads interleave the senders),
    // then everyone reads.
    let chunk = CLIENTS.div_ceil(THREADS);
    std::thread::scope(|scope| {
        for group in clients.chunks_mut(chunk) {
            scope.spawn(move || {
                for k in 0..CHATS {
                    for (client, id) in group.iter_mut() {
                        client.chat(&format!("p{id}-m{k}"), k);
                    }
                }
                for (client, _) in group.iter_mut() {
                    let mut next = HashMap::<u64, u64>::new();
                    for _ in 0..CLIENTS as u64 * CHATS {
                        assert!(Instant::now() < deadline, "the load test ran out of time");
                        let chat = client.recv_chat();
                        let k = next.entry(chat.player_id).or_insert(0);
                        assert_eq!(
                            chat,
                            chat_of(chat.player_id, &format!("p{}-m{k}", chat.player_id), *k),
                            "per-sender order"
                        );
                        *k += 1;
                    }
                    assert_eq!(next.len(), CLIENTS, "a chat from every sender");
                    assert!(next.values().all(|&k| k == CHATS));
                }
            });
        }
    });
    std::thread::sleep(QUIET);
    for (client, _) in &mut clients {
        client.expect_nothing(Duration::from_millis(1));
    }
    drop(clients);
    server.stop().assert(&[
        ("sessions", CLIENTS as i64),
        ("logins", CLIENTS as i64),
        ("enters", CLIENTS as i64),
        ("chats_relayed", CLIENTS as i64 * CHATS as i64),
        ("chat_deliveries", (CLIENTS * CLIENTS) as i64 * CHATS as i64),
    ]);
}

/// The world through the command's flags: a one-cell map where everyone
/// sees everyone, spawn on enter, a clamped move, leave and re-enter,
/// despawn on disconnect, the position saved across a restart, and
/// `--max-speed` cutting a jump.
fn world_flags_moves_and_saved_position(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("world.db");
    let flags = [
        "--world-size",
        "100",
        "--cell",
        "100",
        "--max-speed",
        "1e12",
    ];
    let server = Server::start(backend, &db, &flags);
    let world_client = |account: &str| {
        let mut client = connect(server.addr);
        client.skip_world = false;
        assert!(client.login(account).success);
        let entered = client.enter(0);
        assert!(entered.success);
        let pos = entered
            .player
            .expect("S_ENTER_GAME.player")
            .pos_info
            .unwrap();
        assert!((0.0..100.0).contains(&pos.x) && (0.0..100.0).contains(&pos.y));
        (client, entered.player_id)
    };
    let spawned = |client: &mut GameClient| match client.recv() {
        ClientPacket::SSpawn(msg) => msg.players.iter().map(|p| p.object_id).collect::<Vec<_>>(),
        other => panic!("expected S_SPAWN, got {other:?}"),
    };
    let moved = |client: &mut GameClient| match client.recv() {
        ClientPacket::SMove(msg) => {
            let info = msg.info.unwrap();
            (info.object_id, info.x, info.y, msg.client_time_us)
        }
        other => panic!("expected S_MOVE, got {other:?}"),
    };
    let move_to = |client: &mut GameClient, x: f32, y: f32, client_time_us: u64| {
        client.send(&CMove {
            info: Some(PosInfo {
                x,
                y,
                ..PosInfo::default()
            }),
            client_time_us,
        });
    };
    let (mut alice, alice_id) = world_client("alice");
    let (mut bob, bob_id) = world_client("bob");
    assert_eq!(spawned(&mut bob), [alice_id]);
    assert_eq!(spawned(&mut alice), [bob_id]);

    let below_100 = f32::from_bits(100f32.to_bits() - 1);
    move_to(&mut alice, 150.0, -20.0, 5);
    assert_eq!(moved(&mut alice), (alice_id, below_100, 0.0, 5));
    assert_eq!(moved(&mut bob), (alice_id, below_100, 0.0, 5));

    bob.send(&CLeaveGame {});
    assert!(matches!(bob.recv(), ClientPacket::SLeaveGame(_)));
    match alice.recv() {
        ClientPacket::SDespawn(msg) => assert_eq!(msg.object_ids, [bob_id]),
        other => panic!("expected S_DESPAWN, got {other:?}"),
    }
    let again = bob.enter(0);
    assert!(again.success);
    assert_eq!(spawned(&mut bob), [alice_id]);
    assert_eq!(spawned(&mut alice), [bob_id]);

    drop(alice);
    match bob.recv() {
        ClientPacket::SDespawn(msg) => assert_eq!(msg.object_ids, [alice_id]),
        other => panic!("expected S_DESPAWN, got {other:?}"),
    }
    bob.expect_nothing(QUIET);
    drop(bob);
    server
        .stop()
        .assert(&[("moves", 1), ("moves_clamped", 1), ("world_leaves", 3)]);

    // Restart on the same file with --max-speed 0: alice is where she left,
    // and a 100-long jump is cut to 50.
    let flags = ["--world-size", "100", "--cell", "100", "--max-speed", "0"];
    let server = Server::start(backend, &db, &flags);
    let mut alice = connect(server.addr);
    alice.skip_world = false;
    assert!(alice.login("alice").success);
    let entered = alice.enter(0);
    let pos = entered.player.unwrap().pos_info.unwrap();
    assert_eq!((pos.object_id, pos.x, pos.y), (alice_id, below_100, 0.0));
    move_to(&mut alice, 0.0, 0.0, 6);
    let cut = (f64::from(below_100) - 50.0) as f32;
    assert_eq!(moved(&mut alice), (alice_id, cut, 0.0, 6));
    drop(alice);
    server.stop().assert(&[("moves", 1), ("moves_cut", 1)]);
}

/// `servercore token` mints a token that a server started with the same
/// `--auth-secret` accepts; the plain account name is refused there. A
/// short secret is a clear start error, and an open server says so once.
fn signed_logins_with_the_token_command(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of at least 32 bytes\n").unwrap();
    let minted = Command::new(env!("CARGO_BIN_EXE_servercore"))
        .arg("token")
        .arg("--secret-file")
        .arg(&secret)
        .args(["--account", "erin", "--ttl", "10m"])
        .output()
        .expect("run servercore token");
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let secret_arg = secret.to_str().unwrap();
    let server = Server::start(
        backend,
        &dir.path().join("auth.db"),
        &["--auth-secret", secret_arg],
    );
    let mut client = connect(server.addr);
    let login = client.login(&token);
    assert!(login.success);
    assert_eq!(login.players[0].name, "erin_knight");
    let mut plain = connect(server.addr);
    assert!(!plain.login("erin").success, "a plain name is refused");
    assert!(!server.log().contains("the server is open"));
    server
        .stop()
        .assert(&[("logins", 1), ("tokens_refused", 1), ("logins_refused", 1)]);

    let short = dir.path().join("short");
    std::fs::write(&short, "too short\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_servercore"))
        .args(["server", "--addr", "127.0.0.1:0", "--db", ":memory:"])
        .args(["--backend", backend.name()])
        .arg("--auth-secret")
        .arg(&short)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + READ_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with a short secret");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("the auth secret is 9 bytes; at least 32 are needed"),
        "{stderr}"
    );

    let open = Server::start(backend, &dir.path().join("open.db"), &[]);
    let deadline = Instant::now() + READ_TIMEOUT;
    while !open.log().contains("the server is open") {
        assert!(
            Instant::now() < deadline,
            "no warning that the server is open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open.log().matches("the server is open").count(), 1);
    open.stop().assert(&[("logins", 0)]);
}
