//! The admin listener over a real loopback socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A blocking HTTP/1.0 GET; returns (status line, headers+body split).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header end");
    (head.to_owned(), body.to_owned())
}

fn server(counter: Arc<AtomicU64>) -> AdminServer {
    let info = ServerInfo {
        kind: "test".into(),
        backend: "poll".into(),
        listen: "127.0.0.1:1".into(),
    };
    AdminServer::start(
        "127.0.0.1:0".parse().unwrap(),
        info,
        move |out: &mut Snapshot| {
            out.counter(
                "servercore_things",
                "Things seen.",
                counter.load(Ordering::Relaxed),
            );
            out.gauge("servercore_sessions_active", "Sessions now.", 2.0);
            out.counter_by(
                "servercore_disconnects",
                "Disconnects by reason.",
                "reason",
                [("closed_by_peer", 4), ("malformed_packet", 1)],
            );
            out.histogram(
                "servercore_db_latency_seconds",
                "Database latency.",
                Histogram {
                    buckets: vec![(0.001, 3), (0.01, 1)],
                    sum: 0.02,
                    count: 5,
                },
            );
            out.panel(Panel::Map(MapPanel {
                title: "Things".into(),
                size: 10.0,
                grid: Some(5.0),
                strips: vec![MapStrip {
                    from: 0.0,
                    to: 5.0,
                    label: "left".into(),
                }],
                points: vec![[1.0, 2.0]],
                note: String::new(),
            }));
            out.panel(Panel::Table(TablePanel {
                title: "Parts".into(),
                columns: vec!["part".into(), "count".into()],
                rows: vec![vec!["left".into(), "1".into()]],
            }));
        },
    )
    .expect("start admin")
}

#[test]
fn metrics_are_openmetrics_text_with_current_values() {
    let counter = Arc::new(AtomicU64::new(7));
    let admin = server(Arc::clone(&counter));
    let (head, body) = get(admin.local_addr(), "/metrics");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains(METRICS_CONTENT_TYPE), "{head}");
    let expected = "\
# HELP servercore_things Things seen.
# TYPE servercore_things counter
servercore_things_total 7
# HELP servercore_sessions_active Sessions now.
# TYPE servercore_sessions_active gauge
servercore_sessions_active 2.0
# HELP servercore_disconnects Disconnects by reason.
# TYPE servercore_disconnects counter
servercore_disconnects_total{reason=\"closed_by_peer\"} 4
servercore_disconnects_total{reason=\"malformed_packet\"} 1
# HELP servercore_db_latency_seconds Database latency.
# TYPE servercore_db_latency_seconds histogram
servercore_db_latency_seconds_sum 0.02
servercore_db_latency_seconds_count 5
servercore_db_latency_seconds_bucket{le=\"0.001\"} 3
servercore_db_latency_seconds_bucket{le=\"0.01\"} 4
servercore_db_latency_seconds_bucket{le=\"+Inf\"} 5
# EOF
";
    assert_eq!(body, expected);
    counter.store(9, Ordering::Relaxed);
    let (_, body) = get(admin.local_addr(), "/metrics");
    assert!(body.contains("servercore_things_total 9\n"), "{body}");
    admin.stop();
}

#[test]
fn status_is_json_with_metrics_and_extra_fields() {
    let admin = server(Arc::new(AtomicU64::new(1)));
    let (head, body) = get(admin.local_addr(), "/status");
    assert!(head.contains("application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(doc["server"], "test");
    assert_eq!(doc["backend"], "poll");
    assert_eq!(doc["panels"][0]["kind"], "map");
    assert_eq!(doc["panels"][0]["title"], "Things");
    assert_eq!(doc["panels"][0]["points"][0][1], 2.0);
    assert_eq!(doc["panels"][0]["strips"][0]["label"], "left");
    assert_eq!(doc["panels"][1]["kind"], "table");
    assert_eq!(doc["panels"][1]["rows"][0][1], "1");
    let metrics = doc["metrics"].as_array().unwrap();
    assert_eq!(metrics.len(), 4);
    assert_eq!(metrics[0]["name"], "servercore_things_total");
    assert_eq!(metrics[0]["type"], "counter");
    assert_eq!(metrics[0]["samples"][0]["value"], 1.0);
    assert_eq!(
        metrics[2]["samples"][1]["labels"]["reason"],
        "malformed_packet"
    );
    assert_eq!(metrics[3]["samples"][0]["count"], 5);
}

#[test]
fn health_page_and_unknown_paths() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let (head, body) = get(admin.local_addr(), "/healthz");
    assert!(head.contains(" 200"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, body) = get(admin.local_addr(), "/");
    assert!(head.contains("text/html"), "{head}");
    assert_eq!(body, STATUS_PAGE);
    let (head, _) = get(admin.local_addr(), "/nothing");
    assert!(head.contains(" 404"), "{head}");
}

#[test]
fn stop_releases_the_port() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let addr = admin.local_addr();
    admin.stop();
    // The listener is closed once stop returns; the rebind is polled with
    // a deadline all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        let info = ServerInfo {
            kind: "test".into(),
            backend: "poll".into(),
            listen: String::new(),
        };
        match AdminServer::start(addr, info, |_: &mut Snapshot| {}) {
            Ok(again) => break again,
            Err(error) if std::time::Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("rebind the same port: {error}"),
        }
    };
    let (_, body) = get(again.local_addr(), "/healthz");
    assert_eq!(body, "ok\n");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let error = AdminServer::start(
        admin.local_addr(),
        ServerInfo {
            kind: "test".into(),
            backend: "poll".into(),
            listen: String::new(),
        },
        |_: &mut Snapshot| {},
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("cannot listen for admin HTTP on 127.0.0.1:"),
        "{message}"
    );
}

fn info() -> ServerInfo {
    ServerInfo {
        kind: "test".into(),
        backend: "poll".into(),
        listen: String::new(),
    }
}

/// True once the server closed `stream` (EOF or reset) within `limit`;
/// whatever it sent first is discarded.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_non_loopback_address_is_refused() {
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9100"] {
        let result = AdminServer::start(addr.parse().unwrap(), info(), |_: &mut Snapshot| {});
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{addr} was accepted"));
        assert!(
            error.to_string().contains("not a loopback address"),
            "{addr}: {error}"
        );
    }
}

#[test]
fn an_oversized_request_head_is_refused() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let mut stream = TcpStream::connect(admin.local_addr()).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // Header lines, never the blank line that ends the head.
    let line = format!("X-Filler: {}\r\n", "x".repeat(1000));
    let mut answer = Vec::new();
    for _ in 0..1024 {
        if stream.write_all(line.as_bytes()).is_err() {
            break; // the server closed: what it said first is read below
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 1 MiB head is refused with 431, got: {:?}",
        &answer[..answer.len().min(200)]
    );
}

#[test]
fn a_silent_connection_is_closed() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let mut idle = TcpStream::connect(admin.local_addr()).unwrap();
    let mut partial = TcpStream::connect(admin.local_addr()).unwrap();
    partial.write_all(b"GET /heal").unwrap();
    let sent = std::time::Instant::now();
    assert!(
        closed_within(&mut partial, REQUEST_TIMEOUT + Duration::from_secs(3)),
        "a request head left unfinished is disconnected"
    );
    assert!(sent.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(100));
    assert!(
        closed_within(&mut idle, Duration::from_secs(1)),
        "a connection that sends nothing is disconnected"
    );
    let (_, body) = get(admin.local_addr(), "/healthz");
    assert_eq!(body, "ok\n");
}

#[test]
fn a_slow_reader_does_not_stall_healthz() {
    // A big /status (4 MiB), asked for by peers that never read it.
    let blob = "x".repeat(4 << 20);
    let admin = AdminServer::start(
        "127.0.0.1:0".parse().unwrap(),
        info(),
        move |out: &mut Snapshot| out.status_field("blob", serde_json::json!(blob)),
    )
    .unwrap();
    let slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&admin.local_addr().into()).unwrap();
            let mut stream: TcpStream = socket.into();
            stream
                .write_all(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..5 {
        let mut stream = TcpStream::connect(admin.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        write!(stream, "GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        assert!(
            read.is_ok() && response.ends_with("\r\n\r\nok\n"),
            "round {round}: /healthz while 4 peers do not read their /status: {read:?} {response:?}"
        );
    }
    drop(slow);
}

#[test]
fn a_flood_of_idle_connections_does_not_lock_healthz_out() {
    let admin = server(Arc::new(AtomicU64::new(0)));
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 50)
        .map(|_| TcpStream::connect(admin.local_addr()).unwrap())
        .collect();
    let (head, body) = get(admin.local_addr(), "/healthz");
    assert!(head.contains(" 200"), "{head}");
    assert_eq!(body, "ok\n");
    drop(idle);
}

#[test]
fn a_reader_too_slow_is_disconnected() {
    const BLOB: usize = 4 << 20;
    let blob = "x".repeat(BLOB);
    let options = AdminOptions {
        response_timeout: Duration::from_millis(500),
        ..AdminOptions::default()
    };
    let admin = AdminServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        options,
        info(),
        move |out: &mut Snapshot| out.status_field("blob", serde_json::json!(blob)),
    )
    .unwrap();
    let mut slow = TcpStream::connect(admin.local_addr()).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // Not reading past the deadline: what the kernel's buffers hold is all
    // the peer ever gets.
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read_to_end(&mut got);
    assert!(
        got.len() < BLOB,
        "the answer was disconnected at the deadline: {} bytes of {BLOB}",
        got.len()
    );
    let (_, body) = get(admin.local_addr(), "/healthz");
    assert_eq!(body, "ok\n");
}

#[test]
fn loopback_addresses() {
    for addr in [
        "127.0.0.1:1",
        "127.9.9.9:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        assert!(is_loopback(addr.parse().unwrap()), "{addr}");
    }
    for addr in [
        "0.0.0.0:1",
        "[::]:1",
        "10.0.0.1:1",
        "[::ffff:10.0.0.1]:1",
        "[fe80::1]:1",
    ] {
        assert!(!is_loopback(addr.parse().unwrap()), "{addr}");
    }
    // Allowed when asked for (bound on loopback here: tests stay local).
    let options = AdminOptions {
        allow_public: true,
        ..AdminOptions::default()
    };
    let admin = AdminServer::start_with(
        "127.0.0.1:0".parse().unwrap(),
        options,
        info(),
        |_: &mut Snapshot| {},
    )
    .unwrap();
    let (_, body) = get(admin.local_addr(), "/healthz");
    assert_eq!(body, "ok\n");
}
