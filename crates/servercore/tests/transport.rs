//! The transport layer over real loopback sockets, on every backend: TLS
//! (engine server against a rustls client and against the engine's own
//! client service), WebSocket (raw frames from a hand-written client, and
//! the client service), WSS, a TCP and a WebSocket listener feeding one
//! service, and the hostile cases: plain against TLS and back, expired and
//! wrong certificates, stalled handshakes, and bad frames with their close
//! codes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use servercore::packet::{DispatchError, PacketConfig, PacketHandler, PacketSession};
use servercore::transport::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use servercore::transport::{self, close_code, rustls};
use servercore::{
    Backend, ClientService, ClientTransport, DisconnectReason, ServerService, ServerTransport,
    Session, SessionHandle, WebSocketConfig,
};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

// ---- certificates ---------------------------------------------------------

struct TestCert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn make_cert(names: &[&str], expired: bool) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        der: cert.der().clone(),
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

fn localhost_cert() -> TestCert {
    make_cert(&["localhost", "127.0.0.1"], false)
}

fn server_tls(cert: &TestCert) -> Arc<rustls::ServerConfig> {
    transport::tls::server_config(vec![cert.der.clone()], cert.key.clone_key()).unwrap()
}

fn client_tls(cert: &TestCert) -> Arc<rustls::ClientConfig> {
    transport::tls::client_config(vec![cert.der.clone()]).unwrap()
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

// ---- servers --------------------------------------------------------------

fn echo_server(backend: Backend, transport: ServerTransport) -> (ServerService, Shared) {
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        .transport(transport)
        .session(move || RecordingEcho {
            record: Arc::clone(&shared),
        })
        .start()
        .expect("start");
    (service, record)
}

fn stop(service: &ServerService) {
    service.stop();
    service.join();
    let stats = service.stats();
    assert_eq!(stats.live_slots, 0, "every slot freed: {stats:?}");
    assert_eq!(stats.active_sessions, 0, "no active session: {stats:?}");
}

fn wait_reasons(record: &Shared, count: usize) -> Vec<DisconnectReason> {
    assert!(
        wait_until(Duration::from_secs(10), || record.lock().disconnected.len()
            >= count),
        "{count} disconnects expected, saw {:?}",
        record.lock().disconnected
    );
    record.lock().disconnected.clone()
}

/// Reads until EOF or reset (bounded by the stream's read timeout).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read failed before close: {e}"),
        }
    }
}

const SIZES: [usize; 9] = [1, 2, 100, 4_097, 16_384, 16_385, 65_536, 300_001, 1 << 20];

backend_tests!(
    tls_echo_payloads_to_a_rustls_client,
    tls_client_service_echoes_through_tls_server,
    plain_client_against_tls_port_fails_cleanly,
    tls_client_against_plain_port_fails_cleanly,
    expired_or_wrong_certificate_is_refused,
    stalled_tls_handshake_is_cut_at_the_timeout,
    websocket_echo_with_fragments_and_ping,
    websocket_hostile_frames_get_close_codes,
    websocket_bad_handshakes_end_cleanly,
    websocket_and_wss_client_service_echo,
    tcp_and_websocket_listeners_share_one_service,
    websocket_disconnect_sends_close_frame,
    websocket_ping_flood_without_reading_is_cut,
    many_client_sessions_finish_every_handshake,
    websocket_cuts_send_a_close_frame_with_the_reason,
);

// ---- TLS ------------------------------------------------------------------

fn rustls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let conn = rustls::ClientConnection::new(config, localhost()).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

fn tls_echo_payloads_to_a_rustls_client(backend: Backend) {
    let cert = localhost_cert();
    let (service, record) = echo_server(backend, ServerTransport::tls(server_tls(&cert)));
    let addr = service.local_addr();
    for (i, &size) in SIZES.iter().enumerate() {
        let data = payload(size, i as u64 + 7);
        let mut client = rustls_client(addr, client_tls(&cert));
        // Write in pieces while reading, so neither side's buffers fill up.
        let mut echoed = Vec::with_capacity(size);
        let mut buf = vec![0u8; 64 * 1024];
        for chunk in data.chunks(128 * 1024) {
            client.write_all(chunk).unwrap();
            client.flush().unwrap();
            let target = echoed.len() + chunk.len();
            while echoed.len() < target {
                let n = client.read(&mut buf).expect("echo read");
                assert!(n > 0, "{size}: EOF before the echo");
                echoed.extend_from_slice(&buf[..n]);
            }
        }
        assert!(echoed == data, "{size}-byte payload echoed byte for byte");
        client.conn.send_close_notify();
        client.flush().unwrap();
    }
    let reasons = wait_reasons(&record, SIZES.len());
    assert!(
        reasons.iter().all(|r| *r == DisconnectReason::ClosedByPeer),
        "{reasons:?}"
    );
    let record_sent = record.lock().sent_bytes;
    assert_eq!(
        record_sent,
        SIZES.iter().sum::<usize>(),
        "on_send counts plain bytes"
    );
    stop(&service);
}

/// A client session that sends `data` on connect and records what comes
/// back.
struct Collector {
    data: Bytes,
    got: Arc<Mutex<Vec<u8>>>,
    record: Shared,
}

impl Session for Collector {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.record.lock().connected += 1;
        let _ = session.send(self.data.clone());
    }
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        self.got.lock().extend_from_slice(data);
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

fn client_service(
    backend: Backend,
    addr: SocketAddr,
    transport: ClientTransport,
    data: Bytes,
) -> (ClientService, Arc<Mutex<Vec<u8>>>, Shared) {
    let got: Arc<Mutex<Vec<u8>>> = Default::default();
    let record: Shared = Default::default();
    let (g, r) = (Arc::clone(&got), Arc::clone(&record));
    let client = ClientService::builder(addr)
        .backend(backend)
        .workers(1)
        .shutdown_timeout(Duration::from_secs(1))
        .transport(transport)
        .session(move || Collector {
            data: data.clone(),
            got: Arc::clone(&g),
            record: Arc::clone(&r),
        })
        .start()
        .expect("client start");
    (client, got, record)
}

fn tls_client_service_echoes_through_tls_server(backend: Backend) {
    let cert = localhost_cert();
    let (service, record) = echo_server(backend, ServerTransport::tls(server_tls(&cert)));
    for (i, &size) in [1usize, 70_000, 1 << 20].iter().enumerate() {
        let data = Bytes::from(payload(size, i as u64 + 40));
        let transport = ClientTransport::tls(client_tls(&cert), localhost());
        let (client, got, _) =
            client_service(backend, service.local_addr(), transport, data.clone());
        assert!(
            wait_until(Duration::from_secs(10), || got.lock().len() >= size),
            "{size}: echo arrived"
        );
        assert!(*got.lock() == data[..], "{size}: byte for byte");
        client.stop();
        client.join();
    }
    let reasons = wait_reasons(&record, 3);
    assert!(
        reasons.iter().all(|r| *r == DisconnectReason::ClosedByPeer),
        "the client's close_notify ends the server session in order: {reasons:?}"
    );
    stop(&service);
}

fn plain_client_against_tls_port_fails_cleanly(backend: Backend) {
    let cert = localhost_cert();
    let (service, record) = echo_server(backend, ServerTransport::tls(server_tls(&cert)));
    let mut client = connect(service.local_addr());
    write_all(&mut client, b"Hello World\0");
    let answer = read_to_close(&mut client);
    // A TLS alert record (content type 21), never an echo.
    assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
    let reasons = wait_reasons(&record, 1);
    assert!(
        matches!(&reasons[0], DisconnectReason::TlsHandshake(_)),
        "{reasons:?}"
    );
    stop(&service);
}

fn tls_client_against_plain_port_fails_cleanly(backend: Backend) {
    let cert = localhost_cert();
    let (service, _record) = echo_server(backend, ServerTransport::plain());
    // The engine's client: the echoed ClientHello is no ServerHello.
    let transport = ClientTransport::tls(client_tls(&cert), localhost());
    let (client, got, client_record) = client_service(
        backend,
        service.local_addr(),
        transport,
        Bytes::from_static(b"hi"),
    );
    let reasons = wait_reasons(&client_record, 1);
    assert!(
        matches!(&reasons[0], DisconnectReason::TlsHandshake(_)),
        "{reasons:?}"
    );
    assert!(got.lock().is_empty(), "no plain bytes reach the session");
    client.stop();
    client.join();
    // A rustls client fails with an error, not a hang.
    let mut raw = rustls_client(service.local_addr(), client_tls(&cert));
    assert!(raw
        .write_all(b"x")
        .and_then(|_| raw.flush())
        .and_then(|_| {
            let mut buf = [0u8; 16];
            raw.read(&mut buf).map(|_| ())
        })
        .is_err());
    stop(&service);
}

fn expired_or_wrong_certificate_is_refused(backend: Backend) {
    let cases = [
        (make_cert(&["localhost"], true), "expired"),
        (make_cert(&["other.example"], false), "not valid for name"),
    ];
    for (cert, expect) in cases {
        let (service, record) = echo_server(backend, ServerTransport::tls(server_tls(&cert)));
        let transport = ClientTransport::tls(client_tls(&cert), localhost());
        let (client, got, client_record) = client_service(
            backend,
            service.local_addr(),
            transport,
            Bytes::from_static(b"hi"),
        );
        let reasons = wait_reasons(&client_record, 1);
        match &reasons[0] {
            DisconnectReason::TlsHandshake(text) => {
                assert!(text.to_lowercase().contains(expect), "{expect}: {text}")
            }
            other => panic!("{expect}: {other:?}"),
        }
        assert!(got.lock().is_empty());
        let server_reasons = wait_reasons(&record, 1);
        assert!(
            matches!(&server_reasons[0], DisconnectReason::TlsHandshake(_)),
            "the server sees the client's alert: {server_reasons:?}"
        );
        client.stop();
        client.join();
        stop(&service);
    }
}

fn stalled_tls_handshake_is_cut_at_the_timeout(backend: Backend) {
    let cert = localhost_cert();
    let transport =
        ServerTransport::tls(server_tls(&cert)).handshake_timeout(Duration::from_millis(300));
    let (service, record) = echo_server(backend, transport);
    let mut silent = connect(service.local_addr());
    let mut half = connect(service.local_addr());
    // Half a ClientHello record header, then nothing.
    write_all(&mut half, &[22, 3, 1]);
    let reasons = wait_reasons(&record, 2);
    for reason in &reasons {
        assert_eq!(
            *reason,
            DisconnectReason::TlsHandshake("timed out".into()),
            "{reasons:?}"
        );
    }
    assert!(read_to_close(&mut silent).is_empty());
    assert!(read_to_close(&mut half).is_empty());
    stop(&service);
}

// ---- WebSocket (hand-written client) --------------------------------------

fn ws_handshake(stream: &mut TcpStream, path: &str, key: Option<&str>) -> String {
    let key_line = key
        .map(|k| format!("Sec-WebSocket-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         {key_line}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, servercore\r\n\r\n"
    );
    write_all(stream, request.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8(head).unwrap()
}

fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    frame
}

/// Reads one unmasked server frame: (first byte, payload).
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let head = read_exact(stream, 2);
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => u16::from_be_bytes(read_exact(stream, 2).try_into().unwrap()) as usize,
        127 => u64::from_be_bytes(read_exact(stream, 8).try_into().unwrap()) as usize,
        n => n as usize,
    };
    (head[0], read_exact(stream, len))
}

fn ws_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr);
    let head = ws_handshake(&mut stream, "/ws", Some("dGhlIHNhbXBsZSBub25jZQ=="));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Protocol: servercore\r\n"),
        "{head}"
    );
    stream
}

fn websocket_echo_with_fragments_and_ping(backend: Backend) {
    let (service, record) = echo_server(
        backend,
        ServerTransport::websocket(WebSocketConfig::default()),
    );
    let mut ws = ws_connect(service.local_addr());
    // One message in three fragments with a ping between them.
    let mut wire = masked_frame(0x02, b"abc");
    wire.extend(masked_frame(0x89, b"are you there"));
    wire.extend(masked_frame(0x00, b"def"));
    wire.extend(masked_frame(0x80, b"ghi"));
    write_all(&mut ws, &wire);
    let mut echoed = Vec::new();
    let mut pong = None;
    while echoed.len() < 9 {
        let (first, payload) = read_frame(&mut ws);
        match first {
            0x82 => echoed.extend(payload),
            0x8A => pong = Some(payload),
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert_eq!(echoed, b"abcdefghi");
    if pong.is_none() {
        let (first, payload) = read_frame(&mut ws);
        assert_eq!(first, 0x8A);
        pong = Some(payload);
    }
    assert_eq!(pong.unwrap(), b"are you there");
    // A large message split across reads comes back byte for byte.
    let big = payload(300_000, 9);
    let writer = {
        let mut ws = ws.try_clone().unwrap();
        let frame = masked_frame(0x82, &big);
        std::thread::spawn(move || write_all(&mut ws, &frame))
    };
    let mut back = Vec::new();
    while back.len() < big.len() {
        let (first, payload) = read_frame(&mut ws);
        assert_eq!(first, 0x82);
        back.extend(payload);
    }
    writer.join().unwrap();
    assert!(back == big);
    // The close handshake: our close is answered with the same code.
    write_all(
        &mut ws,
        &masked_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']),
    );
    let (first, payload) = read_frame(&mut ws);
    assert_eq!((first, payload), (0x88, vec![0x03, 0xE8]));
    assert!(read_to_close(&mut ws).is_empty());
    assert_eq!(
        wait_reasons(&record, 1),
        vec![DisconnectReason::ClosedByPeer]
    );
    stop(&service);
}

fn websocket_hostile_frames_get_close_codes(backend: Backend) {
    let config = WebSocketConfig::default().max_message_size(1000);
    let (service, record) = echo_server(backend, ServerTransport::websocket(config));
    let mut unmasked = vec![0x82, 3];
    unmasked.extend_from_slice(b"abc");
    let long_ping = {
        let mut f = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
        f.extend(vec![0u8; 126]);
        f
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked client frame",
            unmasked,
            close_code::PROTOCOL_ERROR,
        ),
        (
            "reserved bits",
            masked_frame(0xC2, b"x"),
            close_code::PROTOCOL_ERROR,
        ),
        (
            "unknown opcode",
            masked_frame(0x83, b"x"),
            close_code::PROTOCOL_ERROR,
        ),
        (
            "fragmented control frame",
            masked_frame(0x09, b"x"),
            close_code::PROTOCOL_ERROR,
        ),
        (
            "control frame over 125 bytes",
            long_ping,
            close_code::PROTOCOL_ERROR,
        ),
        (
            "oversized message",
            masked_frame(0x82, &[7u8; 1001]),
            close_code::MESSAGE_TOO_BIG,
        ),
        (
            "close with an invalid code",
            masked_frame(0x88, &[0x03, 0xED]),
            close_code::PROTOCOL_ERROR,
        ),
        (
            "text frame",
            masked_frame(0x81, b"hello"),
            close_code::UNSUPPORTED_DATA,
        ),
        (
            "continuation without a message",
            masked_frame(0x80, b"x"),
            close_code::PROTOCOL_ERROR,
        ),
    ];
    for (name, frame, code) in &cases {
        let mut ws = ws_connect(service.local_addr());
        write_all(&mut ws, frame);
        let (first, payload) = read_frame(&mut ws);
        assert_eq!(first, 0x88, "{name}: a close frame");
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            *code,
            "{name}"
        );
        assert!(
            read_to_close(&mut ws).is_empty(),
            "{name}: then the socket closes"
        );
    }
    let reasons = wait_reasons(&record, cases.len());
    let mut codes: Vec<u16> = reasons
        .iter()
        .map(|r| match r {
            DisconnectReason::WebSocket { code, .. } => *code,
            other => panic!("{other:?}"),
        })
        .collect();
    let mut expected: Vec<u16> = cases.iter().map(|c| c.2).collect();
    codes.sort();
    expected.sort();
    assert_eq!(codes, expected);
    assert_eq!(record.lock().sent_bytes, 0, "no payload was echoed");
    stop(&service);
}

fn websocket_bad_handshakes_end_cleanly(backend: Backend) {
    let transport = ServerTransport::websocket(WebSocketConfig::default())
        .handshake_timeout(Duration::from_millis(300));
    let (service, record) = echo_server(backend, transport);
    let addr = service.local_addr();
    let mut no_key = connect(addr);
    let head = ws_handshake(&mut no_key, "/", None);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(read_to_close(&mut no_key).is_empty());
    let mut wrong_path = connect(addr);
    let head = ws_handshake(
        &mut wrong_path,
        "/elsewhere",
        Some("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut stalled = connect(addr);
    write_all(&mut stalled, b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(
        read_to_close(&mut stalled).is_empty(),
        "cut without an answer"
    );
    let reasons = wait_reasons(&record, 3);
    assert!(
        reasons.contains(&DisconnectReason::WebSocketHandshake(
            "missing Sec-WebSocket-Key".into()
        )),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&DisconnectReason::WebSocketHandshake("timed out".into())),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .all(|r| matches!(r, DisconnectReason::WebSocketHandshake(_))),
        "{reasons:?}"
    );
    stop(&service);
}

fn websocket_and_wss_client_service_echo(backend: Backend) {
    let cert = localhost_cert();
    let ws = WebSocketConfig::default().max_message_size(4 << 20);
    let cases = [
        (
            ServerTransport::websocket(ws.clone()),
            ClientTransport::websocket(ws.clone().path("/ws")),
        ),
        (
            ServerTransport::websocket(ws.clone()).with_tls(server_tls(&cert)),
            ClientTransport::websocket(ws.clone()).with_tls(client_tls(&cert), localhost()),
        ),
    ];
    for (server_transport, client_transport) in cases {
        let name = server_transport.name();
        let (service, record) = echo_server(backend, server_transport);
        let data = Bytes::from(payload(200_000, 77));
        let (client, got, _) = client_service(
            backend,
            service.local_addr(),
            client_transport,
            data.clone(),
        );
        assert!(
            wait_until(Duration::from_secs(10), || got.lock().len() >= data.len()),
            "{name}: echo arrived ({} bytes)",
            got.lock().len()
        );
        assert!(*got.lock() == data[..], "{name}: byte for byte");
        client.stop();
        client.join();
        assert_eq!(
            wait_reasons(&record, 1),
            vec![DisconnectReason::ClosedByPeer],
            "{name}"
        );
        stop(&service);
    }
}

/// Relays every byte it receives to every session (a tiny chat room).
struct Relay {
    members: Arc<Mutex<Vec<SessionHandle>>>,
}

impl Session for Relay {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.members.lock().push(session.clone());
    }
    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        let shared = Bytes::copy_from_slice(data);
        for member in self.members.lock().iter() {
            let _ = member.send(shared.clone());
        }
        data.len()
    }
}

fn tcp_and_websocket_listeners_share_one_service(backend: Backend) {
    let members: Arc<Mutex<Vec<SessionHandle>>> = Default::default();
    let shared = Arc::clone(&members);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .listener(
            "127.0.0.1:0",
            ServerTransport::websocket(WebSocketConfig::default()),
        )
        .session(move || Relay {
            members: Arc::clone(&shared),
        })
        .start()
        .unwrap();
    let addrs = service.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    let mut tcp = connect(addrs[0]);
    let mut ws = ws_connect(addrs[1]);
    assert!(wait_until(Duration::from_secs(5), || members.lock().len() == 2));
    write_all(&mut ws, &masked_frame(0x82, b"from ws;"));
    assert_eq!(read_exact(&mut tcp, 8), b"from ws;");
    assert_eq!(read_frame(&mut ws), (0x82, b"from ws;".to_vec()));
    write_all(&mut tcp, b"from tcp;");
    assert_eq!(read_exact(&mut tcp, 9), b"from tcp;");
    assert_eq!(read_frame(&mut ws), (0x82, b"from tcp;".to_vec()));
    drop((tcp, ws));
    service.stop();
    service.join();
    assert_eq!(service.stats().live_slots, 0);
}

/// Sends a goodbye and disconnects on the first bytes.
struct Goodbye;

impl Session for Goodbye {
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let _ = session.send_copy(b"bye");
        session.disconnect();
        data.len()
    }
}

fn websocket_disconnect_sends_close_frame(backend: Backend) {
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .transport(ServerTransport::websocket(WebSocketConfig::default()))
        .session(|| Goodbye)
        .start()
        .unwrap();
    let mut ws = ws_connect(service.local_addr());
    write_all(&mut ws, &masked_frame(0x82, b"hi"));
    assert_eq!(read_frame(&mut ws), (0x82, b"bye".to_vec()));
    assert_eq!(
        read_frame(&mut ws),
        (0x88, vec![0x03, 0xE8]),
        "close 1000 follows the data"
    );
    assert!(read_to_close(&mut ws).is_empty());
    // On stop, an open connection gets 1001.
    let mut ws = ws_connect(service.local_addr());
    assert!(wait_until(Duration::from_secs(5), || service
        .stats()
        .active_sessions
        == 1));
    service.stop();
    assert_eq!(read_frame(&mut ws), (0x88, vec![0x03, 0xE9]));
    service.join();
    assert_eq!(service.stats().live_slots, 0);
}

fn websocket_ping_flood_without_reading_is_cut(backend: Backend) {
    let (service, record) = echo_server(
        backend,
        ServerTransport::websocket(WebSocketConfig::default()),
    );
    let mut ws = ws_connect(service.local_addr());
    let burst: Vec<u8> = (0..1000)
        .flat_map(|_| masked_frame(0x89, &[0x55; 125]))
        .collect();
    // Pings whose pongs are never read: once the socket buffers are full the
    // owed pongs pile up in the server, which must give up, not grow.
    for _ in 0..400 {
        if ws.write_all(&burst).is_err() || !record.lock().disconnected.is_empty() {
            break;
        }
    }
    assert_eq!(
        wait_reasons(&record, 1),
        vec![DisconnectReason::SendQueueOverflow]
    );
    drop(ws);
    stop(&service);
}

// ---- many handshakes through the client service -----------------------------

/// Sent by [`GreetingEcho`] from `on_connected`, before the handshake is
/// done: the transport holds it and must release it when the handshake
/// completes.
const GREETING: &[u8] = b"welcome;";

/// Greets from `on_connected`, then echoes; counts its disconnects.
struct GreetingEcho {
    record: Shared,
}

impl Session for GreetingEcho {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.record.lock().connected += 1;
        let _ = session.send_copy(GREETING);
    }
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let _ = session.send_copy(data);
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// A client session that waits for the server's greeting, then sends its
/// own payload and keeps what comes back in its own buffer. It never
/// speaks first, so nothing it sends can push the server's held bytes out.
struct OwnEcho {
    data: Bytes,
    sent: bool,
    got: Arc<Mutex<Vec<u8>>>,
    record: Shared,
}

impl Session for OwnEcho {
    fn on_connected(&mut self, _session: &SessionHandle) {
        self.record.lock().connected += 1;
    }
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let mut got = self.got.lock();
        got.extend_from_slice(data);
        if !self.sent && got.len() >= GREETING.len() {
            self.sent = true;
            let _ = session.send(self.data.clone());
        }
        data.len()
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// Each client session's payload and what came back to it, in the order
/// the sessions were made.
type Exchanges = Arc<Mutex<Vec<(Bytes, Arc<Mutex<Vec<u8>>>)>>>;

/// Sessions per case of [`many_client_sessions_finish_every_handshake`].
const MANY_SESSIONS: usize = 50;

/// Many client-service sessions over WS, TLS and WSS against a server with
/// and without send coalescing: every one finishes its handshakes, gets the
/// server's greeting (queued before the handshake was done), then sends its
/// payload and gets it back byte for byte, and nobody hits a handshake
/// timeout. With coalescing on, the server's last handshake answers (the
/// TLS session tickets, the HTTP 101, the greeting the handshake released)
/// come while its first flight was just written: they must go out at once,
/// not wait for a packet the session never queues.
fn many_client_sessions_finish_every_handshake(backend: Backend) {
    let cert = localhost_cert();
    let ws = WebSocketConfig::default();
    let transports = [
        (
            ServerTransport::websocket(ws.clone()),
            ClientTransport::websocket(ws.clone()),
        ),
        (
            ServerTransport::tls(server_tls(&cert)),
            ClientTransport::tls(client_tls(&cert), localhost()),
        ),
        (
            ServerTransport::websocket(ws.clone()).with_tls(server_tls(&cert)),
            ClientTransport::websocket(ws.clone()).with_tls(client_tls(&cert), localhost()),
        ),
    ];
    // Off, the sample game's default, and one long enough that every
    // client's second flight lands inside it.
    let intervals = [
        Duration::ZERO,
        Duration::from_millis(5),
        Duration::from_millis(200),
    ];
    for (server_transport, client_transport) in &transports {
        for interval in intervals {
            let case = format!("{} with coalescing {interval:?}", server_transport.name());
            let server_record: Shared = Default::default();
            let shared = Arc::clone(&server_record);
            let service = ServerService::builder("127.0.0.1:0")
                .backend(backend)
                .workers(2)
                .send_coalescing(interval)
                .shutdown_timeout(Duration::from_secs(1))
                .transport(server_transport.clone())
                .session(move || GreetingEcho {
                    record: Arc::clone(&shared),
                })
                .start()
                .expect("start");
            let client_record: Shared = Default::default();
            let buffers: Exchanges = Default::default();
            let (r, b) = (Arc::clone(&client_record), Arc::clone(&buffers));
            let client = ClientService::builder(service.local_addr())
                .backend(backend)
                .workers(2)
                .sessions(MANY_SESSIONS)
                .shutdown_timeout(Duration::from_secs(1))
                // Shorter than the wait below: a stall shows as a reason.
                .transport(
                    client_transport
                        .clone()
                        .handshake_timeout(Duration::from_secs(3)),
                )
                .session(move || {
                    let mut buffers = b.lock();
                    let index = buffers.len();
                    let data = Bytes::from(payload(1 + index * 997 % 6000, index as u64 + 500));
                    let got: Arc<Mutex<Vec<u8>>> = Default::default();
                    buffers.push((data.clone(), Arc::clone(&got)));
                    OwnEcho {
                        data,
                        sent: false,
                        got,
                        record: Arc::clone(&r),
                    }
                })
                .start()
                .expect("client start");
            let complete = |buffers: &[(Bytes, Arc<Mutex<Vec<u8>>>)]| {
                buffers
                    .iter()
                    .filter(|(data, got)| got.lock().len() >= GREETING.len() + data.len())
                    .count()
            };
            let all_done = wait_until(Duration::from_secs(15), || {
                let buffers = buffers.lock();
                buffers.len() == MANY_SESSIONS && complete(&buffers) == MANY_SESSIONS
                    || !client_record.lock().disconnected.is_empty()
            });
            let early: Vec<DisconnectReason> = client_record.lock().disconnected.clone();
            assert!(
                all_done && early.is_empty(),
                "{case}: {} of {MANY_SESSIONS} sessions echoed, client disconnects: {early:?}",
                complete(&buffers.lock())
            );
            for (index, (data, got)) in buffers.lock().iter().enumerate() {
                let got = got.lock();
                assert!(
                    got[..GREETING.len()] == *GREETING && got[GREETING.len()..] == data[..],
                    "{case}: session {index} got the greeting, then its {} bytes",
                    data.len()
                );
            }
            assert_eq!(client_record.lock().connected, MANY_SESSIONS, "{case}");
            client.stop();
            client.join();
            let reasons = wait_reasons(&server_record, MANY_SESSIONS);
            assert!(
                reasons.iter().all(|r| *r == DisconnectReason::ClosedByPeer),
                "{case}: {reasons:?}"
            );
            stop(&service);
        }
    }
}

// ---- cuts over WebSocket say why ---------------------------------------------

/// Packet id on which [`SilentPackets`] panics.
const PANIC_ID: u16 = 1200;

/// A packet server that answers nothing; the packet layer cuts bad input,
/// and packet [`PANIC_ID`] makes the handler panic.
struct SilentPackets {
    record: Shared,
}

impl PacketHandler for SilentPackets {
    fn on_packet(
        &mut self,
        _session: &SessionHandle,
        id: u16,
        _body: &[u8],
    ) -> Result<(), DispatchError> {
        assert_ne!(id, PANIC_ID, "the handler fails on purpose");
        Err(DispatchError::UnknownId(id))
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// A session the packet layer, the idle timeout or a panic cuts over an
/// open WebSocket gets a close frame with the fitting code and the reason's
/// name before the socket closes (raw client over WS; the engine's client over
/// WSS reads the code into its own disconnect reason).
fn websocket_cuts_send_a_close_frame_with_the_reason(backend: Backend) {
    let cert = localhost_cert();
    let ws = WebSocketConfig::default();
    let record: Shared = Default::default();
    let shared = Arc::clone(&record);
    let service = ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(1)
        .idle_timeout(Duration::from_millis(300))
        .shutdown_timeout(Duration::from_secs(1))
        .transport(ServerTransport::websocket(ws.clone()))
        .listener(
            "127.0.0.1:0",
            ServerTransport::websocket(ws.clone()).with_tls(server_tls(&cert)),
        )
        .session(move || {
            PacketSession::new(
                SilentPackets {
                    record: Arc::clone(&shared),
                },
                PacketConfig::default(),
            )
        })
        .start()
        .unwrap();
    let addrs = service.local_addrs().to_vec();
    let close_payload = |code: u16, text: &str| {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(text.as_bytes());
        payload
    };

    // A packet header whose size is below the header's own 4 bytes.
    let mut garbage = ws_connect(addrs[0]);
    write_all(&mut garbage, &masked_frame(0x82, &[2, 0, 0xE8, 0x03]));
    assert_eq!(
        read_frame(&mut garbage),
        (
            0x88,
            close_payload(close_code::PROTOCOL_ERROR, "malformed_packet")
        )
    );
    assert!(
        read_to_close(&mut garbage).is_empty(),
        "then the socket closes"
    );
    drop(garbage);
    let reasons = wait_reasons(&record, 1);
    assert!(
        matches!(&reasons[0], DisconnectReason::MalformedPacket(_)),
        "{reasons:?}"
    );

    // Silence past the idle timeout (the read blocks until the cut).
    let mut idle = ws_connect(addrs[0]);
    assert_eq!(
        read_frame(&mut idle),
        (
            0x88,
            close_payload(close_code::POLICY_VIOLATION, "idle_timeout")
        )
    );
    assert!(
        read_to_close(&mut idle).is_empty(),
        "then the socket closes"
    );
    drop(idle);
    assert_eq!(wait_reasons(&record, 2)[1], DisconnectReason::IdleTimeout);

    // A panic in the session's callbacks: 1011, and the panic's text stays
    // in the server's log.
    let mut panicking = ws_connect(addrs[0]);
    let [low, high] = PANIC_ID.to_le_bytes();
    write_all(&mut panicking, &masked_frame(0x82, &[4, 0, low, high]));
    assert_eq!(
        read_frame(&mut panicking),
        (
            0x88,
            close_payload(close_code::INTERNAL_ERROR, "callback_panic")
        )
    );
    assert!(
        read_to_close(&mut panicking).is_empty(),
        "then the socket closes"
    );
    drop(panicking);
    assert!(
        matches!(&wait_reasons(&record, 3)[2], DisconnectReason::CallbackPanic(text) if text.contains("on purpose")),
        "{:?}",
        record.lock().disconnected
    );

    // The engine's client over WSS: the code becomes its reason.
    let transport = ClientTransport::websocket(ws).with_tls(client_tls(&cert), localhost());
    let (client, got, client_record) = client_service(
        backend,
        addrs[1],
        transport,
        Bytes::from_static(&[1, 0, 0, 0]),
    );
    let client_reasons = wait_reasons(&client_record, 1);
    assert_eq!(
        client_reasons,
        vec![DisconnectReason::WebSocket {
            code: close_code::PROTOCOL_ERROR,
            detail: "closed by peer: malformed_packet".into(),
        }]
    );
    assert!(got.lock().is_empty(), "no payload reached the client");
    assert!(
        matches!(
            &wait_reasons(&record, 4)[3],
            DisconnectReason::MalformedPacket(_)
        ),
        "{:?}",
        record.lock().disconnected
    );
    client.stop();
    client.join();
    stop(&service);
}
