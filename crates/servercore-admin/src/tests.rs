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
            out.status_field(
                "world",
                serde_json::json!({"size": 10.0, "players": [[1.0, 2.0]]}),
            );
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
    assert_eq!(doc["world"]["players"][0][1], 2.0);
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
    // The socket closes when tiny_http's accept thread wakes up: poll for
    // the rebind with a deadline.
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
