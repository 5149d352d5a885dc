//! Moves over a lossy network: the game server and two players inside a
//! network namespace of the test's own, whose `lo` loses 5 % of what it
//! sends (`tc netem loss 5% delay 20ms` where the kernel has netem, else an
//! nftables random drop without delay; the test says which). One player
//! plays over TCP, the other over QUIC with its moves as datagrams; each
//! walks with moves stamped 1, 2, 3, ... and the test checks what came
//! back of its own moves:
//!
//! - over QUIC every own move that arrives comes by datagram, in the order
//!   they were sent, with gaps (the lost ones are never resent, and later
//!   ones keep arriving meanwhile);
//! - over TCP every own move arrives, in order: what was lost was resent
//!   (the namespace's TCP retransmission counter grew), the moves behind it
//!   waiting — the stall QUIC datagrams do not have.
//!
//! Only counts and order are asserted, never how long anything took.
//! Needs root and `ip netns` (skipped otherwise, failed instead with
//! `SERVERCORE_REQUIRE_NETNS=1`). Every test runs on both backends.

use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_protocol::ClientPacket;

use servercore_testkit::backend_tests;
use servercore_testkit::cert::dev_cert;
use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::GameClient;
use servercore_testkit::netns::NetNs;
use servercore_testkit::quic_client::QuicGameClient;

backend_tests!(own_moves_under_loss_tcp_stalls_quic_skips);

/// Moves each player sends.
const MOVES: u64 = 150;
/// Between two moves: below the game's move rate (20 a second), so a
/// burst that TCP releases after a stall is not rate-limited.
const MOVE_INTERVAL: Duration = Duration::from_millis(80);
/// Loss on `lo`, percent (each packet is sent once on `lo`).
const LOSS_PERCENT: u32 = 5;
/// Delay where netem is there, ms.
const DELAY_MS: u32 = 20;

/// The `client_time_us` of the player's own `S_MOVE`s among `packets`.
fn own_moves(packets: impl IntoIterator<Item = ClientPacket>, player: u64, into: &mut Vec<u64>) {
    for packet in packets {
        if let ClientPacket::SMove(s_move) = packet {
            if s_move.info.is_some_and(|info| info.object_id == player) {
                into.push(s_move.client_time_us);
            }
        }
    }
}

fn own_moves_under_loss_tcp_stalls_quic_skips(backend: Backend) {
    // Declared first, dropped last: the namespace outlives what runs in it.
    let Some(ns) = NetNs::for_test("sc-loss") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pair = dev_cert(env!("CARGO_BIN_EXE_servercore"), dir.path());
    let (cert, key) = (pair.cert, pair.key);
    let (_server, ready) = ChildProcess::spawn_ready(
        ns.command(env!("CARGO_BIN_EXE_servercore"))
            .args(["--log", "warn", "server", "--addr", "127.0.0.1:0"])
            .args(["--workers", "2", "--db", ":memory:"])
            .args(["--backend", backend.name()])
            .args(["--quic-addr", "127.0.0.1:0", "--quic-cert"])
            .arg(&cert)
            .arg("--quic-key")
            .arg(&key)
            // Two by two cells: both players see each other.
            .args(["--world-size", "200", "--cell", "100"])
            .args(["--max-new-accounts-per-min", "0"]),
        Duration::from_secs(10),
    );
    let quic_addr = ready.quic.expect("the ready file names the QUIC listener");
    let tls = servercore::transport::tls::client_config_from_pem(&cert).unwrap();

    // Both players join before the loss starts: only the walk is lossy.
    let (mut tcp, mut quic) = ns.run(move || {
        let (tcp, _) = GameClient::join(ready.addr, "tcp-walker");
        let mut quic = QuicGameClient::connect(quic_addr, tls);
        quic.join_as("quic-walker");
        (tcp, quic)
    });
    let retransmits_before = ns
        .snmp("Tcp", "RetransSegs")
        .expect("the namespace's TCP counters");
    let emulation = ns
        .add_loss(LOSS_PERCENT, DELAY_MS)
        .unwrap_or_else(|error| panic!("{error}"));
    println!("loss emulation: {LOSS_PERCENT}% by {emulation}");

    // Walk back and forth along y = 100 in steps far below the speed
    // limit, reading the QUIC player's datagrams between two moves.
    let mut quic_own = Vec::new();
    let mut quic_datagrams = 0u64;
    for seq in 1..=MOVES {
        let x = 50.0 + (seq % 20) as f32 * 5.0;
        tcp.send_move(x, 100.0, seq);
        quic.send_move_datagram(x, 150.0, seq);
        let next = Instant::now() + MOVE_INTERVAL;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(packets) = quic.datagram_within(left) {
                quic_datagrams += 1;
                own_moves(packets, quic.player_id, &mut quic_own);
            }
        }
    }
    // The last datagrams in flight.
    while let Some(packets) = quic.datagram_within(Duration::from_secs(1)) {
        quic_datagrams += 1;
        own_moves(packets, quic.player_id, &mut quic_own);
    }
    // TCP: every own move, however long the resends take (bounded).
    let mut tcp_own = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tcp_own.last() != Some(&MOVES) && Instant::now() < deadline {
        if let Some(packet) = tcp.recv_within(Duration::from_secs(1)) {
            own_moves([packet], tcp.player_id, &mut tcp_own);
        }
    }
    let retransmits = ns.snmp("Tcp", "RetransSegs").unwrap() - retransmits_before;
    // Nothing of the QUIC player's world came by the stream.
    let mut quic_stream_moves = Vec::new();
    while let Some(packet) = quic.recv_within(Duration::from_millis(200)) {
        own_moves([packet], quic.player_id, &mut quic_stream_moves);
    }
    ns.clear_loss();
    println!(
        "tcp: {} of {MOVES} own moves back, {retransmits} TCP segments resent; \
         quic: {} of {MOVES} own moves back in {quic_datagrams} datagrams",
        tcp_own.len(),
        quic_own.len()
    );

    let all: Vec<u64> = (1..=MOVES).collect();
    assert_eq!(tcp_own, all, "over TCP every own move comes back, in order");
    assert!(
        retransmits > 0,
        "the loss hit TCP: lost segments were resent"
    );

    assert!(
        quic_own.windows(2).all(|pair| pair[0] < pair[1]),
        "over QUIC own moves arrive in the order they were sent: {quic_own:?}"
    );
    assert!(
        quic_own.iter().all(|seq| (1..=MOVES).contains(seq)),
        "{quic_own:?}"
    );
    assert!(
        (quic_own.len() as u64) < MOVES,
        "lost datagrams leave gaps (never resent): {quic_own:?}"
    );
    assert!(
        quic_own.len() as u64 >= MOVES / 2,
        "most own moves come back over QUIC: {quic_own:?}"
    );
    assert!(
        quic_own.iter().any(|&seq| seq > MOVES * 3 / 4),
        "moves keep arriving to the end of the walk: {quic_own:?}"
    );
    assert!(
        quic_stream_moves.is_empty(),
        "no own move of the QUIC player came by the stream: {quic_stream_moves:?}"
    );
}
