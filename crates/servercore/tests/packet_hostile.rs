//! The packet layer over real loopback sockets, on every backend: hostile
//! input ends in `MalformedPacket` with the right detail while another
//! session on the same worker keeps working; half a header is left to the
//! idle timeout; a flooding session meets its rate policy while a quiet one
//! is never touched; a packet trickled byte by byte meets the packet
//! deadline while packets that complete, even in pieces, never do.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use servercore::packet::{
    decode_body, make_raw_packet, DispatchError, Limit, Packet, PacketConfig, PacketHandler,
    PacketSession, Rate, RateLimits, RatePolicy,
};
use servercore::{Backend, DisconnectReason, ServerService, SessionHandle};

use servercore_testkit::backend_tests;
use servercore_testkit::net::{connect, wait_until, write_all};

/// Echoed back as `ECHO_REPLY` with the same body.
const ECHO: u16 = 1;
const ECHO_REPLY: u16 = 2;
/// Decoded as [`Chat`]; echoed back as `ECHO_REPLY` with the text.
const CHAT: u16 = 3;
/// Counted only; rate limited to 20/s in these tests.
const FLOOD: u16 = 4;

const MAX_PACKET: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, PartialEq, prost::Message)]
struct Chat {
    #[prost(string, tag = "1")]
    msg: String,
}

impl Packet for Chat {
    const ID: u16 = CHAT;
    const NAME: &'static str = "CHAT";
}

/// What the server saw, per peer address.
#[derive(Default)]
struct Seen {
    delivered: HashMap<SocketAddr, u64>,
    flood_delivered: HashMap<SocketAddr, u64>,
    reasons: HashMap<SocketAddr, DisconnectReason>,
}

type Shared = Arc<Mutex<Seen>>;

struct TestHandler {
    seen: Shared,
}

impl PacketHandler for TestHandler {
    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        let peer = session.peer_addr();
        *self.seen.lock().delivered.entry(peer).or_default() += 1;
        match id {
            ECHO => {
                let _ = session.send(make_raw_packet(ECHO_REPLY, body)?);
            }
            CHAT => {
                let chat: Chat = decode_body(body)?;
                let _ = session.send(make_raw_packet(ECHO_REPLY, chat.msg.as_bytes())?);
            }
            FLOOD => *self.seen.lock().flood_delivered.entry(peer).or_default() += 1,
            _ => return Err(DispatchError::UnknownId(id)),
        }
        Ok(())
    }

    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        self.seen
            .lock()
            .reasons
            .insert(session.peer_addr(), reason.clone());
    }
}

fn server(
    backend: Backend,
    config: PacketConfig,
    idle: Option<Duration>,
) -> (ServerService, Shared) {
    let seen = Shared::default();
    let for_factory = Arc::clone(&seen);
    // One worker: every session of a test shares it.
    let mut builder = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1);
    if let Some(idle) = idle {
        builder = builder.idle_timeout(idle);
    }
    let service = builder
        .session(move || {
            PacketSession::new(
                TestHandler {
                    seen: Arc::clone(&for_factory),
                },
                config.clone(),
            )
        })
        .start()
        .expect("start server");
    (service, seen)
}

fn stop(service: ServerService) {
    service.stop();
    service.join();
}

fn packet(id: u16, body: &[u8]) -> Vec<u8> {
    let size = (4 + body.len()) as u16;
    let mut out = size.to_le_bytes().to_vec();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads one packet; panics on timeout or close.
fn read_packet(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("read header");
    let size = u16::from_le_bytes([header[0], header[1]]) as usize;
    let id = u16::from_le_bytes([header[2], header[3]]);
    let mut body = vec![0u8; size - 4];
    stream.read_exact(&mut body).expect("read body");
    (id, body)
}

/// The client sends an echo and gets it back.
fn assert_echoes(stream: &mut TcpStream, text: &str) {
    write_all(stream, &packet(ECHO, text.as_bytes()));
    assert_eq!(read_packet(stream), (ECHO_REPLY, text.as_bytes().to_vec()));
}

/// True once the server closed the connection (EOF or reset).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn reason_of(seen: &Shared, peer: SocketAddr) -> DisconnectReason {
    assert!(
        wait_until(TIMEOUT, || seen.lock().reasons.contains_key(&peer)),
        "session of {peer} was not disconnected"
    );
    seen.lock().reasons[&peer].clone()
}

fn malformed_detail(reason: DisconnectReason) -> String {
    match reason {
        DisconnectReason::MalformedPacket(detail) => detail,
        other => panic!("expected MalformedPacket, got {other:?}"),
    }
}

backend_tests!(
    hostile_input_is_malformed_and_others_keep_working,
    half_a_header_is_left_to_the_idle_timeout,
    flood_is_disconnected_and_a_quiet_session_untouched,
    flood_is_dropped_and_the_session_stays,
    flood_is_logged_and_delivered,
    split_packets_are_reassembled,
    a_trickled_packet_meets_the_packet_deadline,
);

fn hostile_input_is_malformed_and_others_keep_working(backend: Backend) {
    let config = PacketConfig::default()
        .with_max_packet_size(MAX_PACKET)
        .with_known_ids([ECHO, CHAT, FLOOD]);
    let (service, seen) = server(backend, config, None);
    let addr = service.local_addr();
    let mut good = connect(addr);
    assert_echoes(&mut good, "before");

    // Field 1 claims a 5-byte string but holds 1 byte.
    let bad_chat = [0x0a, 0x05, b'h'];
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "size below the header",
            vec![2, 0, 1, 0],
            "packet size 2 is below the 4-byte header (id 1)".into(),
        ),
        (
            "size zero",
            vec![0, 0, 0, 0],
            "packet size 0 is below the 4-byte header (id 0)".into(),
        ),
        (
            "size above the configured maximum",
            // 1025 bytes announced, no body sent: refused at the header.
            vec![0x01, 0x04, 1, 0],
            "packet size 1025 exceeds the maximum of 1024 bytes (id 1)".into(),
        ),
        (
            "size at the u16 limit",
            vec![0xff, 0xff, 3, 0],
            "packet size 65535 exceeds the maximum of 1024 bytes (id 3)".into(),
        ),
        (
            "unknown id",
            packet(77, b"??"),
            "unknown packet id 77".into(),
        ),
        (
            "body that does not decode",
            packet(CHAT, &bad_chat),
            "packet CHAT (id 3) does not decode: ".into(),
        ),
        (
            "valid packets, then garbage",
            [packet(ECHO, b"fine"), vec![3, 0, 0, 0]].concat(),
            "packet size 3 is below the 4-byte header (id 0)".into(),
        ),
    ];

    for (what, bytes, detail) in cases {
        let mut bad = connect(addr);
        let peer = bad.local_addr().unwrap();
        write_all(&mut bad, &bytes);
        let got = malformed_detail(reason_of(&seen, peer));
        assert!(
            got.starts_with(&detail),
            "{what}: detail {got:?}, expected {detail:?}"
        );
        bad.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert!(closed_by_server(&mut bad), "{what}: connection left open");
        // The other session on the same worker is unaffected.
        assert_echoes(&mut good, what);
    }

    let good_peer = good.local_addr().unwrap();
    assert!(!seen.lock().reasons.contains_key(&good_peer));
    assert_eq!(seen.lock().delivered[&good_peer], 8);
    drop(good);
    stop(service);
}

fn half_a_header_is_left_to_the_idle_timeout(backend: Backend) {
    let config = PacketConfig::default();
    let (service, seen) = server(backend, config, Some(Duration::from_millis(300)));
    let mut half = connect(service.local_addr());
    let peer = half.local_addr().unwrap();
    write_all(&mut half, &[9, 0]);
    assert_eq!(reason_of(&seen, peer), DisconnectReason::IdleTimeout);
    assert!(closed_by_server(&mut half));
    assert_eq!(seen.lock().delivered.get(&peer), None);
    stop(service);
}

fn flood_config(policy: RatePolicy) -> PacketConfig {
    PacketConfig::default().with_rate_limits(
        RateLimits::default()
            .id(FLOOD, Limit::NONE.packets(Rate::per_second(20).burst(20)))
            .policy(policy),
    )
}

/// Sends 200 FLOOD packets in one write, then an echo. Meanwhile a quiet
/// client sends 10 packets/s, half its limit, and must never be touched.
/// Returns what the server saw of the flooder (the service is stopped).
fn flood(backend: Backend, policy: RatePolicy) -> (u64, DisconnectReason) {
    let (service, seen) = server(backend, flood_config(policy), None);
    let addr = service.local_addr();
    let mut quiet = connect(addr);
    let quiet_peer = quiet.local_addr().unwrap();
    let mut flooder = connect(addr);
    let flood_peer = flooder.local_addr().unwrap();

    let mut burst = Vec::new();
    for i in 0..200u32 {
        burst.extend(packet(FLOOD, &i.to_le_bytes()));
    }
    burst.extend(packet(ECHO, b"after the flood"));
    write_all(&mut flooder, &burst);

    for i in 0..5 {
        write_all(&mut quiet, &packet(FLOOD, b"q"));
        assert_echoes(&mut quiet, &format!("quiet {i}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    if policy == RatePolicy::Disconnect {
        reason_of(&seen, flood_peer);
        assert!(closed_by_server(&mut flooder));
    } else {
        // The echo behind the flood went through: the session stays.
        assert_eq!(
            read_packet(&mut flooder),
            (ECHO_REPLY, b"after the flood".to_vec())
        );
        assert!(!seen.lock().reasons.contains_key(&flood_peer));
    }

    assert!(
        !seen.lock().reasons.contains_key(&quiet_peer),
        "quiet session touched"
    );
    assert_eq!(seen.lock().flood_delivered[&quiet_peer], 5);
    assert_eq!(seen.lock().delivered[&quiet_peer], 10);
    drop(quiet);
    assert!(wait_until(TIMEOUT, || seen
        .lock()
        .reasons
        .contains_key(&quiet_peer)));
    assert_eq!(
        seen.lock().reasons[&quiet_peer],
        DisconnectReason::ClosedByPeer
    );
    stop(service);
    let seen = seen.lock();
    (
        seen.flood_delivered[&flood_peer],
        seen.reasons[&flood_peer].clone(),
    )
}

fn flood_is_disconnected_and_a_quiet_session_untouched(backend: Backend) {
    let (delivered, reason) = flood(backend, RatePolicy::Disconnect);
    assert_eq!(
        reason,
        DisconnectReason::RateLimited(
            "packet id 4 (8 bytes) over the limit of 20 packets/s (burst 20) for this id".into()
        )
    );
    assert!((20..200).contains(&delivered), "{delivered} delivered");
}

fn flood_is_dropped_and_the_session_stays(backend: Backend) {
    let (delivered, reason) = flood(backend, RatePolicy::Drop);
    // Cut to the burst, plus what refilled meanwhile.
    assert!((20..200).contains(&delivered), "{delivered} delivered");
    assert_eq!(reason, DisconnectReason::Shutdown);
}

fn flood_is_logged_and_delivered(backend: Backend) {
    let (delivered, reason) = flood(backend, RatePolicy::Log);
    assert_eq!(delivered, 200);
    assert_eq!(reason, DisconnectReason::Shutdown);
}

fn split_packets_are_reassembled(backend: Backend) {
    let (service, seen) = server(backend, PacketConfig::default(), None);
    let mut client = connect(service.local_addr());
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50usize {
        let text = "x".repeat(i * 7);
        let chat = Chat { msg: text.clone() };
        stream.extend(packet(CHAT, &prost::Message::encode_to_vec(&chat)));
        expected.push(text);
    }
    // Odd-sized pieces with pauses, so packets and headers straddle reads.
    for piece in stream.chunks(13) {
        write_all(&mut client, piece);
        if piece[0] % 4 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for text in expected {
        assert_eq!(read_packet(&mut client), (ECHO_REPLY, text.into_bytes()));
    }
    let peer = client.local_addr().unwrap();
    assert!(!seen.lock().reasons.contains_key(&peer));
    stop(service);
}

/// With a 500 ms packet deadline (and a 60 s idle timeout that every byte
/// resets): a client trickling one byte of a packet every 100 ms is disconnected with
/// `PacketTimeout`; one sending whole echoes and one sending each echo in two
/// halves 50 ms apart keep getting replies for three deadlines and stay.
fn a_trickled_packet_meets_the_packet_deadline(backend: Backend) {
    let config = PacketConfig::default().with_packet_deadline(Some(Duration::from_millis(500)));
    let (service, seen) = server(backend, config, Some(Duration::from_secs(60)));
    let addr = service.local_addr();
    let mut trickler = connect(addr);
    let mut whole = connect(addr);
    let mut halves = connect(addr);
    let trickler_peer = trickler.local_addr().unwrap();
    let echo = packet(ECHO, b"a packet sent one byte at a time");
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(1500)
        || !seen.lock().reasons.contains_key(&trickler_peer)
    {
        assert!(started.elapsed() < TIMEOUT, "the trickler was never cut");
        if !seen.lock().reasons.contains_key(&trickler_peer) {
            let _ = std::io::Write::write_all(&mut trickler, &[echo[round % echo.len()]]);
        }
        assert_echoes(&mut whole, &format!("whole {round}"));
        let split = packet(ECHO, format!("halves {round}").as_bytes());
        write_all(&mut halves, &split[..3]);
        std::thread::sleep(Duration::from_millis(50));
        write_all(&mut halves, &split[3..]);
        assert_eq!(
            read_packet(&mut halves).1,
            format!("halves {round}").into_bytes()
        );
        std::thread::sleep(Duration::from_millis(50));
        round += 1;
    }
    assert_eq!(
        reason_of(&seen, trickler_peer),
        DisconnectReason::PacketTimeout
    );
    assert!(closed_by_server(&mut trickler));
    assert_eq!(seen.lock().delivered.get(&trickler_peer), None);
    assert_eq!(
        seen.lock().reasons.len(),
        1,
        "only the trickler was disconnected"
    );
    stop(service);
}
