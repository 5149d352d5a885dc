//! What a newcomer meets first, through the real binary: a port in use
//! fails the command before any banner says it is listening, a bad `--db`
//! names its cause, and loading the browser client's page counts as HTTP
//! requests, without warnings or handshake failures. Every test runs on
//! both backends and is bounded by deadlines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use servercore::Backend;

use servercore_testkit::child::ChildProcess;

use servercore_testkit::backend_tests;

backend_tests!(
    admin_port_in_use_fails_before_the_banner,
    db_that_is_a_directory_says_so,
    unreachable_postgres_says_connection_refused,
    page_loads_are_http_requests_not_failed_handshakes,
);

const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `servercore server` with `extra` and waits for it to exit; its
/// status, stdout lines and stderr.
fn server_exit(
    backend: Backend,
    extra: &[&str],
) -> (std::process::ExitStatus, Vec<String>, String) {
    let mut process = ChildProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_servercore"))
            .args(["server", "--addr", "127.0.0.1:0", "--workers", "1"])
            .args(["--backend", backend.name()])
            .args(extra),
    );
    let status = process.wait_exit(DEADLINE);
    let mut lines = Vec::new();
    while let Some(line) = process.try_next_line(Duration::from_millis(200)) {
        lines.push(line);
    }
    (status, lines, process.log())
}

/// Runs `server` with `extra` expecting it to fail at startup: exit code
/// 1, nothing on stdout, and one `error: ` line on stderr, returned.
fn server_error(backend: Backend, extra: &[&str]) -> String {
    let (status, stdout, stderr) = server_exit(backend, extra);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"))
        .to_owned()
}

/// `--admin` on a port something else holds: the command fails naming the
/// address, and never printed that it listens.
fn admin_port_in_use_fails_before_the_banner(backend: Backend) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for extra in [
        vec!["--db", ":memory:", "--admin", addr.as_str()],
        vec![
            "--db",
            ":memory:",
            "--ws-addr",
            "127.0.0.1:0",
            "--admin",
            addr.as_str(),
        ],
    ] {
        let (status, stdout, stderr) = server_exit(backend, &extra);
        assert_eq!(status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{extra:?}: nothing is announced before every listener is bound: {stdout:?}"
        );
        assert!(
            stderr.contains(&format!("cannot listen for admin HTTP on {addr}")),
            "{extra:?}: {stderr}"
        );
    }
}

/// `--db` naming a directory: the error says it is a directory, once.
fn db_that_is_a_directory_says_so(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let error = server_error(backend, &["--db", path]);
    assert!(
        error.contains(&format!("{path} is a directory")),
        "the cause is named: {error}"
    );
    assert!(
        error.to_lowercase().matches("unable to open").count() <= 1,
        "said once at most: {error}"
    );
}

/// `--db postgres://...` where nothing listens: the error keeps the
/// operating system's "connection refused".
fn unreachable_postgres_says_connection_refused(backend: Backend) {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://nobody@127.0.0.1:{port}/nothing");
    let error = server_error(backend, &["--db", &url]);
    assert!(
        error.to_lowercase().contains("connection refused"),
        "the cause is named: {error}"
    );
    assert!(!error.contains("nobody:"), "no password shown: {error}");
}

/// A plain HTTP GET of `path` on `addr`: the status line, the headers and
/// the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    (head, response[end + 4..].to_vec())
}

/// The value of the sample `name` in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The browser client's page, a script, the favicon and a path the server
/// does not serve: each is answered (200, 200, 200 with an icon, 404),
/// counted as an HTTP request, and none is a WebSocket handshake failure,
/// a session the application closed, or a warning: each ends as
/// `http_served`.
fn page_loads_are_http_requests_not_failed_handshakes(backend: Backend) {
    let mut process = ChildProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_servercore"))
            .args(["server", "--addr", "127.0.0.1:0", "--workers", "1"])
            .args(["--backend", backend.name(), "--db", ":memory:"])
            .args(["--ws-addr", "127.0.0.1:0", "--admin", "127.0.0.1:0"]),
    );
    let banner = process.next_line("the listening banner", DEADLINE);
    let ws: SocketAddr = banner
        .split(", WebSocket on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no WebSocket address in {banner:?}"));
    let admin_line = process.next_line("the admin line", DEADLINE);
    let admin: SocketAddr = admin_line
        .strip_prefix("admin HTTP on http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {admin_line:?}"));

    let (head, body) = http_get(ws, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("favicon.ico"));
    let (head, _) = http_get(ws, "/app.js");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, icon) = http_get(ws, "/favicon.ico");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: image/x-icon"), "{head}");
    assert_eq!(&icon[..4], &[0, 0, 1, 0], "an ICO file");
    let (head, _) = http_get(ws, "/robots.txt");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let served = r#"servercore_game_http_requests_total{result="served"}"#;
    let not_found = r#"servercore_game_http_requests_total{result="not_found"}"#;
    let handshakes = r#"servercore_disconnects_total{reason="websocket_handshake"}"#;
    let by_app = r#"servercore_disconnects_total{reason="closed_by_app"}"#;
    let http_served = r#"servercore_disconnects_total{reason="http_served"}"#;
    let deadline = std::time::Instant::now() + DEADLINE;
    let metrics = loop {
        let (_, body) = http_get(admin, "/metrics");
        let metrics = String::from_utf8(body).unwrap();
        let done = sample(&metrics, served) == Some(3.0)
            && sample(&metrics, not_found) == Some(1.0)
            && sample(&metrics, "servercore_sessions_active") == Some(0.0)
            && sample(&metrics, http_served) == Some(4.0);
        if done || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(sample(&metrics, served), Some(3.0), "{metrics}");
    assert_eq!(sample(&metrics, not_found), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, handshakes), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, by_app), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, http_served), Some(4.0), "{metrics}");
    let log = process.log();
    assert!(
        !log.lines()
            .any(|line| line.contains("WARN") && !line.contains("--auth-secret")),
        "no warning for page loads:\n{log}"
    );
}
