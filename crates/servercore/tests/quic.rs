//! The QUIC listener over real loopback UDP, on every backend, against
//! quinn clients: a QUIC connection is an ordinary session (callbacks,
//! addresses, reasons both ways, graceful stop with CONNECTION_CLOSE),
//! datagrams both ways (whole packets, several per datagram, the
//! fallback to the stream, rejected datagrams), and the hostile cases:
//! garbage UDP, a malformed packet, a handshake that never finishes, a
//! handshake flood from one address.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::crypto::rustls::QuicClientConfig;
use servercore::packet::{DispatchError, PacketConfig, PacketHandler, PacketSession};
use servercore::transport::quic::{close_code, ALPN};
use servercore::transport::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use servercore::transport::{self, rustls};
use servercore::{Backend, DisconnectReason, QuicConfig, ServerService, Session, SessionHandle};
use servercore_testkit::backend_tests;
use servercore_testkit::{net::*, sessions::*};

backend_tests!(
    quic_echo_is_an_ordinary_session,
    quic_malformed_packet_closes_with_the_reason,
    quic_stop_sends_connection_close_shutdown,
    quic_datagrams_carry_whole_packets_both_ways,
    quic_garbage_and_unfinished_handshakes_make_no_session,
    quic_handshake_flood_from_one_address_is_rate_limited,
);

// ---- set-up ---------------------------------------------------------------

struct TestCert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn localhost_cert() -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        der: cert.der().clone(),
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

fn quic_config(cert: &TestCert) -> QuicConfig {
    QuicConfig::new(
        transport::tls::server_config(vec![cert.der.clone()], cert.key.clone_key()).unwrap(),
    )
}

fn server<S: Session>(
    backend: Backend,
    config: QuicConfig,
    factory: impl Fn() -> S + Send + Sync + 'static,
) -> ServerService {
    ServerService::builder("127.0.0.1:0")
        .backend(backend)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        .quic("127.0.0.1:0", config)
        .session(factory)
        .start()
        .expect("start")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client_endpoint(cert: &TestCert, bind: &str) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(bind.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

async fn open(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("handshake");
    let (send, recv) = conn.open_bi().await.expect("open_bi");
    (conn, send, recv)
}

fn packet(id: u16, body: &[u8]) -> Vec<u8> {
    let mut out = ((4 + body.len()) as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
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

fn recording(record: &Shared) -> impl Fn() -> RecordingEcho + Send + Sync + 'static {
    let record = Arc::clone(record);
    move || RecordingEcho {
        record: Arc::clone(&record),
    }
}

fn application_close(error: &quinn::ConnectionError) -> (u64, Vec<u8>) {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code.into_inner(), close.reason.to_vec())
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

// ---- sessions -------------------------------------------------------------

/// Echo over the client's first stream: on_connected once, the peer and
/// local addresses are the QUIC ones, every byte comes back in order, the
/// client's close with code 0 is `ClosedByPeer`, and the counters see it.
fn quic_echo_is_an_ordinary_session(backend: Backend) {
    let cert = localhost_cert();
    let record: Shared = Default::default();
    let service = server(backend, quic_config(&cert), recording(&record));
    let addr = service.quic_addr().unwrap();
    let rt = runtime();
    let client_addr = rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let (conn, mut send, mut recv) = open(&endpoint, addr).await;
        let data = payload(300_001, 3);
        let writer = async {
            send.write_all(&data).await.unwrap();
        };
        let reader = async {
            let mut echoed = vec![0u8; data.len()];
            recv.read_exact(&mut echoed).await.unwrap();
            echoed
        };
        let ((), echoed) = tokio::join!(writer, reader);
        assert!(echoed == data, "echoed byte for byte");
        let local = endpoint.local_addr().unwrap();
        conn.close(0u32.into(), b"bye");
        endpoint.wait_idle().await;
        local
    });
    assert_eq!(
        wait_reasons(&record, 1),
        vec![DisconnectReason::ClosedByPeer]
    );
    let record = record.lock();
    assert_eq!(record.connected, 1);
    assert_eq!(record.handles[0].peer_addr(), client_addr);
    assert_eq!(record.handles[0].local_addr(), addr);
    assert_eq!(record.handles[0].bridged_transport(), Some("quic"));
    assert_eq!(record.sent_bytes, 300_001);
    drop(record);
    let quic = service.quic_metrics().unwrap();
    assert_eq!(
        (quic.sessions, quic.bytes_in, quic.bytes_out),
        (1, 300_001, 300_001)
    );
    service.stop();
    service.join();
    assert_eq!(service.stats().live_slots, 0);
}

/// A packet server that records what it got and answers nothing.
struct Packets {
    record: Shared,
    got: Got,
    /// Sent by datagram on each packet of id 1.
    reply: Option<Bytes>,
}

impl PacketHandler for Packets {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }
    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        self.got.lock().push((id, body.to_vec()));
        if id == 1 {
            if let Some(reply) = &self.reply {
                let _ = session.send_datagram(reply.clone());
            }
        }
        Ok(())
    }
    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

type Got = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

fn packet_server(
    backend: Backend,
    config: QuicConfig,
    reply: Option<Bytes>,
) -> (ServerService, Shared, Got) {
    let record: Shared = Default::default();
    let got: Got = Default::default();
    let (r, g) = (Arc::clone(&record), Arc::clone(&got));
    let service = server(backend, config, move || {
        PacketSession::new(
            Packets {
                record: Arc::clone(&r),
                got: Arc::clone(&g),
                reply: reply.clone(),
            },
            PacketConfig::default(),
        )
    });
    (service, record, got)
}

/// A packet whose size is below its header's: the session ends with
/// `MalformedPacket` and the client gets CONNECTION_CLOSE with the protocol
/// code and the reason's name, after the packets before it were handled.
fn quic_malformed_packet_closes_with_the_reason(backend: Backend) {
    let cert = localhost_cert();
    let (service, record, got) = packet_server(backend, quic_config(&cert), None);
    let addr = service.quic_addr().unwrap();
    let rt = runtime();
    let closed = rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let (conn, mut send, _recv) = open(&endpoint, addr).await;
        let mut bytes = packet(7, b"fine");
        bytes.extend_from_slice(&[2, 0, 0xE8, 0x03]);
        send.write_all(&bytes).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("closed by the server")
    });
    assert_eq!(
        application_close(&closed),
        (
            u64::from(close_code::PROTOCOL),
            b"malformed_packet".to_vec()
        )
    );
    let reasons = wait_reasons(&record, 1);
    assert!(
        matches!(reasons[..], [DisconnectReason::MalformedPacket(_)]),
        "{reasons:?}"
    );
    assert_eq!(*got.lock(), vec![(7, b"fine".to_vec())]);
    service.stop();
    service.join();
}

/// The service's stop ends the session with `Shutdown` and the client
/// gets CONNECTION_CLOSE `shutdown`; what the session queued before
/// arrives first.
fn quic_stop_sends_connection_close_shutdown(backend: Backend) {
    let cert = localhost_cert();
    let record: Shared = Default::default();
    let service = server(backend, quic_config(&cert), recording(&record));
    let addr = service.quic_addr().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let (conn, mut send, mut recv) = open(&endpoint, addr).await;
        send.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        recv.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        let stopper = std::thread::spawn(move || {
            service.stop();
            service.join();
            service
        });
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("closed by the server");
        assert_eq!(
            application_close(&closed),
            (u64::from(close_code::SHUTDOWN), b"shutdown".to_vec())
        );
        let service = tokio::task::spawn_blocking(move || stopper.join().unwrap())
            .await
            .unwrap();
        assert_eq!(service.stats().live_slots, 0);
    });
    assert_eq!(wait_reasons(&record, 1), vec![DisconnectReason::Shutdown]);
}

/// Server to client: a buffer of whole packets goes as datagrams, packed
/// and never split, and one larger than a datagram by the stream. Client to
/// server: a datagram of allowed packets reaches the handler; one with an
/// id not allowed, or not whole packets, is dropped and counted.
fn quic_datagrams_carry_whole_packets_both_ways(backend: Backend) {
    let cert = localhost_cert();
    // 40 small packets (fit several per datagram) and one of 3000 bytes.
    let mut reply = Vec::new();
    for i in 0..40u16 {
        reply.extend(packet(100 + i, &[i as u8; 60]));
    }
    let big = packet(500, &[5; 2996]);
    reply.extend(&big);
    let reply = Bytes::from(reply);
    let config = quic_config(&cert).datagram_ids([1, 2]);
    let (service, record, got) = packet_server(backend, config, Some(reply.clone()));
    let addr = service.quic_addr().unwrap();
    let rt = runtime();
    rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let (conn, mut send, mut recv) = open(&endpoint, addr).await;
        // The first packet opens the stream (the session exists once the
        // server sees it); then the datagrams.
        send.write_all(&packet(2, b"hello")).await.unwrap();
        assert!(
            wait_until_async(|| got.lock().len() == 1).await,
            "the stream packet arrived"
        );
        conn.send_datagram(Bytes::from(packet(9, b"not allowed")))
            .unwrap();
        conn.send_datagram(Bytes::from_static(&[9, 0, 1, 0, 0]))
            .unwrap();
        let mut two = packet(2, b"a");
        two.extend(packet(1, b"b"));
        conn.send_datagram(Bytes::from(two)).unwrap();
        // The datagrams of the reply.
        let mut datagram_packets = Vec::new();
        let mut datagrams = 0;
        while datagram_packets.len() < 40 * 64 {
            let datagram = tokio::time::timeout(Duration::from_secs(10), conn.read_datagram())
                .await
                .expect("the reply's datagrams")
                .unwrap();
            assert!(datagram.len() <= conn.max_datagram_size().unwrap());
            datagrams += 1;
            datagram_packets.extend_from_slice(&datagram);
        }
        assert_eq!(
            &datagram_packets[..],
            &reply[..40 * 64],
            "whole packets, in order"
        );
        assert!(
            datagrams > 1 && datagrams < 40,
            "packed: {datagrams} datagrams"
        );
        let mut streamed = vec![0u8; big.len()];
        recv.read_exact(&mut streamed).await.unwrap();
        assert_eq!(
            streamed, big,
            "the packet larger than a datagram came by the stream"
        );
        conn.close(0u32.into(), b"");
        endpoint.wait_idle().await;
    });
    assert_eq!(
        *got.lock(),
        vec![
            (2, b"hello".to_vec()),
            (2, b"a".to_vec()),
            (1, b"b".to_vec())
        ]
    );
    let quic = service.quic_metrics().unwrap();
    assert_eq!(quic.datagrams_received, 1);
    assert_eq!(quic.datagrams_rejected, 2);
    assert!(quic.datagrams_sent > 1, "{quic:?}");
    assert_eq!(
        wait_reasons(&record, 1),
        vec![DisconnectReason::ClosedByPeer]
    );
    service.stop();
    service.join();
}

async fn wait_until_async(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

// ---- hostile ----------------------------------------------------------------

/// Garbage datagrams (short, long, random, an Initial-looking header) make
/// no session and no answer; a handshake whose answers never reach the
/// client is disconnected at the handshake timeout without a session; a real client
/// is served afterwards.
fn quic_garbage_and_unfinished_handshakes_make_no_session(backend: Backend) {
    let cert = localhost_cert();
    let record: Shared = Default::default();
    let config = quic_config(&cert).handshake_timeout(Duration::from_millis(500));
    let service = server(backend, config, recording(&record));
    let addr = service.quic_addr().unwrap();

    let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, len) in [1usize, 7, 100, 1200, 1500, 9000, 65_000]
        .into_iter()
        .enumerate()
    {
        let mut bytes = payload(len, i as u64);
        if i % 2 == 0 {
            bytes[0] = 0xC3; // a long header, an Initial's first byte
        }
        garbage.send_to(&bytes, addr).unwrap();
    }
    garbage
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    // quinn may answer a long header of an unknown version with a version
    // negotiation packet; anything else would be a bug.
    while let Ok((n, _)) = garbage.recv_from(&mut buf) {
        assert_eq!(
            &buf[1..5],
            &[0, 0, 0, 0],
            "only version negotiation: {:?}",
            &buf[..n.min(16)]
        );
    }

    // A relay that passes the client's datagrams to the server and drops
    // every answer: the server's handshake never finishes.
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    relay
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop_relay = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay_thread = {
        let stop = Arc::clone(&stop_relay);
        std::thread::spawn(move || {
            let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = vec![0u8; 65_536];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, _)) = relay.recv_from(&mut buf) {
                    let _ = upstream.send_to(&buf[..n], addr);
                }
            }
        })
    };
    let rt = runtime();
    rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let connecting = endpoint.connect(relay_addr, "localhost").unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(200), connecting).await;
    });
    assert!(
        wait_until(Duration::from_secs(10), || {
            service.quic_metrics().unwrap().handshake_timeouts >= 1
        }),
        "{:?}",
        service.quic_metrics()
    );
    stop_relay.store(true, std::sync::atomic::Ordering::Relaxed);
    relay_thread.join().unwrap();
    let quic = service.quic_metrics().unwrap();
    assert_eq!(
        (quic.sessions, quic.handshakes_in_progress),
        (0, 0),
        "{quic:?}"
    );
    assert_eq!(record.lock().connected, 0);

    // Still serving.
    rt.block_on(async {
        let endpoint = client_endpoint(&cert, "127.0.0.1:0");
        let (conn, mut send, mut recv) = open(&endpoint, addr).await;
        send.write_all(b"still here").await.unwrap();
        let mut echoed = [0u8; 10];
        recv.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"still here");
        conn.close(0u32.into(), b"");
        endpoint.wait_idle().await;
    });
    assert_eq!(
        wait_reasons(&record, 1),
        vec![DisconnectReason::ClosedByPeer]
    );
    service.stop();
    service.join();
}

/// 10,000 connection attempts from one address: past the burst and the
/// rate they are ignored (counted, no handshake work, no answer); another
/// address is served meanwhile.
fn quic_handshake_flood_from_one_address_is_rate_limited(backend: Backend) {
    let cert = localhost_cert();
    let record: Shared = Default::default();
    let config = quic_config(&cert).handshakes_per_second(5, 10);
    let service = server(backend, config, recording(&record));
    let addr = service.quic_addr().unwrap();
    let rt = runtime();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let flood = client_endpoint(&cert, "127.0.0.1:0");
        let mut attempts = Vec::with_capacity(10_000);
        for round in 0..20 {
            for _ in 0..500 {
                attempts.push(flood.connect(addr, "localhost").unwrap());
            }
            // Let the batch leave before the next (a loopback UDP buffer
            // drops what it cannot hold; the test counts what arrived).
            tokio::time::sleep(Duration::from_millis(if round % 2 == 0 { 20 } else { 5 })).await;
        }
        // The other address is served.
        let other = client_endpoint(&cert, "127.0.0.2:0");
        let (conn, mut send, mut recv) = open(&other, addr).await;
        send.write_all(b"other").await.unwrap();
        let mut echoed = [0u8; 5];
        recv.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"other");
        conn.close(0u32.into(), b"");
        flood.close(0u32.into(), b"");
        drop(attempts);
        let _ = tokio::time::timeout(Duration::from_secs(2), other.wait_idle()).await;
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        wait_until(Duration::from_secs(10), || {
            service.quic_metrics().unwrap().handshakes_in_progress == 0
        }),
        "{:?}",
        service.quic_metrics()
    );
    let quic = service.quic_metrics().unwrap();
    let admitted = quic.incoming - quic.rate_limited;
    let allowed = 10.0 + 5.0 * (elapsed + 1.0) + 1.0; // the burst, the rate, the other address
    assert!(quic.incoming >= 1_000, "most attempts arrived: {quic:?}");
    assert!(
        (admitted as f64) <= allowed,
        "{admitted} admitted in {elapsed:.1}s, at most {allowed}: {quic:?}"
    );
    assert!(quic.rate_limited >= quic.incoming - allowed as u64);
    service.stop();
    service.join();
}
