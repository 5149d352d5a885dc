//! The dummy clients and the demo, through the `servercore` binary, over
//! loopback, on both backends.
//!
//! Each test starts its own server as a child process on a free port (it
//! prints `... listening on ADDR ...` as its first line), runs
//! `servercore client --json FILE` against it and checks the JSON report's
//! numbers. Every child runs under a time limit and is killed if it
//! overstays; servers are killed when their test ends.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use servercore::Backend;

const BIN: &str = env!("CARGO_BIN_EXE_servercore");

use servercore_testkit::backend_tests;

backend_tests!(
    sessions_chat_and_every_member_gets_every_message,
    idle_sessions_enter_and_send_nothing,
    a_server_that_speaks_another_protocol_is_reported_not_fatal,
    a_server_that_dies_mid_run_ends_the_run_early,
    refused_logins_name_their_reason_and_fail_the_run,
    connections_past_the_per_address_limit_are_told_why,
    demo_runs_and_prints_the_table,
    players_walk_the_game_world_and_see_only_spawned_neighbours,
);

/// A server child process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Held open: a `bench-server` runs until its stdin ends.
    _stdin: Option<ChildStdin>,
}

impl Server {
    /// Starts `servercore <args>` and reads the address from its first
    /// stdout line (`... listening on ADDR ...`).
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the server printed no address line within 20 s");
            }
        };
        let addr = line
            .split_whitespace()
            .skip_while(|word| *word != "on")
            .nth(1)
            .and_then(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("no address in the server's first line: {line:?}"));
        Server {
            child,
            addr,
            _stdin: stdin,
        }
    }

    /// The game server on a free port with an in-memory database.
    fn game(backend: &str) -> Server {
        Server::start(&[
            "server",
            "--addr",
            "127.0.0.1:0",
            "--db",
            ":memory:",
            "--max-conns-per-ip",
            "0",
            "--max-new-accounts-per-min",
            "0",
            "--backend",
            backend,
        ])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `servercore <args>` to its end, killing it past `limit`.
fn run(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn servercore");
    // Drain the pipes on threads so a chatty child never blocks.
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || read_all(stdout));
    let err = std::thread::spawn(move || read_all(stderr));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for servercore") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`servercore {}` ran past its limit of {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn read_all(mut reader: impl std::io::Read) -> Vec<u8> {
    let mut data = Vec::new();
    let _ = reader.read_to_end(&mut data);
    data
}

/// Runs `servercore client` against `addr` with `--json` and returns the
/// process output and the parsed report.
fn client(addr: SocketAddr, backend: &str, extra: &[&str]) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let addr = addr.to_string();
    let mut args = vec![
        "client",
        "--addr",
        &addr,
        "--backend",
        backend,
        "--workers",
        "2",
        "--no-progress",
        "--setup-timeout",
        "20s",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = run(&args, Duration::from_secs(60));
    let report = read_report(&json, &output);
    (output, report)
}

fn read_report(path: &Path, output: &Output) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| {
        panic!(
            "no JSON report ({error}); status {}, stdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(&text).expect("the report is JSON")
}

fn num(report: &Value, path: &str) -> u64 {
    let mut value = report;
    for key in path.split('.') {
        value = &value[key];
    }
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a count in {report:#}"))
}

fn sessions_chat_and_every_member_gets_every_message(backend: Backend) {
    let backend = backend.name();
    let server = Server::game(backend);
    const SESSIONS: u64 = 40;
    const RATE: u64 = 5;
    const SECONDS: u64 = 2;
    let (output, report) = client(
        server.addr,
        backend,
        &["--sessions", "40", "--rate", "5", "--duration", "2s"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed: {output:?}");
    assert_eq!(num(&report, "sessions.requested"), SESSIONS, "{report:#}");
    assert_eq!(num(&report, "sessions.connected"), SESSIONS, "{report:#}");
    assert_eq!(num(&report, "sessions.logged_in"), SESSIONS, "{report:#}");
    assert_eq!(num(&report, "sessions.entered"), SESSIONS, "{report:#}");
    assert_eq!(num(&report, "sessions.failed"), 0, "{report:#}");
    assert_eq!(num(&report, "errors_total"), 0, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(report["backend"], backend, "{report:#}");

    // Each session sends RATE a second for the window: its slot falls in
    // every period, so exactly RATE × SECONDS each on a healthy run; a timer
    // skipped on an overloaded machine may lose a few.
    let sent = num(&report, "messages_sent");
    let expected = SESSIONS * RATE * SECONDS;
    assert!(
        sent <= expected && sent >= expected * 9 / 10,
        "sent {sent}, expected about {expected}: {report:#}"
    );
    // One room: every message reaches every member, the sender included.
    let deliveries = num(&report, "deliveries_received");
    assert!(
        deliveries <= sent * SESSIONS && deliveries >= sent * SESSIONS * 99 / 100,
        "deliveries {deliveries} for {sent} messages to {SESSIONS} members: {report:#}"
    );
    assert_eq!(num(&report, "own_echoes"), sent, "{report:#}");

    let latency = &report["latency_us"];
    assert_eq!(num(&report, "latency_us.samples"), sent);
    let (p50, p90, p99, p999, max) = (
        num(&report, "latency_us.p50"),
        num(&report, "latency_us.p90"),
        num(&report, "latency_us.p99"),
        num(&report, "latency_us.p999"),
        num(&report, "latency_us.max"),
    );
    assert!(
        0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{latency:#}"
    );
    assert!(report["deliveries_per_sec"].as_f64().unwrap() > 0.0);

    // The table carries the same numbers.
    for needle in [
        "sessions connected",
        "40 / 40",
        "latency p50",
        "latency p99.9",
        "latency max",
        "errors",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

fn idle_sessions_enter_and_send_nothing(backend: Backend) {
    let backend = backend.name();
    let server = Server::game(backend);
    let (output, report) = client(
        server.addr,
        backend,
        &["--sessions", "30", "--rate", "0", "--duration", "500ms"],
    );
    assert!(output.status.success(), "client failed: {output:?}");
    assert_eq!(num(&report, "sessions.entered"), 30, "{report:#}");
    assert_eq!(num(&report, "messages_sent"), 0, "{report:#}");
    assert_eq!(num(&report, "deliveries_received"), 0, "{report:#}");
    assert_eq!(num(&report, "latency_us.samples"), 0, "{report:#}");
    assert_eq!(num(&report, "errors_total"), 0, "{report:#}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("no samples"), "{stdout}");
}

/// The echo server sends our C_LOGIN straight back: an id a client never
/// receives, so every session ends with a malformed reply. Each is counted,
/// the run still finishes with a report, and the command fails: every
/// session failed.
fn a_server_that_speaks_another_protocol_is_reported_not_fatal(backend: Backend) {
    let backend = backend.name();
    let server = Server::start(&["echo", "--addr", "127.0.0.1:0", "--backend", backend]);
    let (output, report) = client(
        server.addr,
        backend,
        &["--sessions", "10", "--duration", "300ms"],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: 10 of 10 sessions failed"),
        "{stderr}"
    );
    assert_eq!(num(&report, "sessions.connected"), 10, "{report:#}");
    assert_eq!(num(&report, "sessions.entered"), 0, "{report:#}");
    assert_eq!(num(&report, "sessions.failed"), 10, "{report:#}");
    assert_eq!(num(&report, "errors.malformed_reply"), 10, "{report:#}");
    assert_eq!(num(&report, "errors_total"), 10, "{report:#}");
}

/// The server is killed while the sessions chat: every session is counted
/// as failed (by its disconnect reason, or as a failed connect if the kill
/// came first), the run stops at once instead of waiting out its window,
/// its counts agree (none in game at the end, all failed) and the command
/// fails.
fn a_server_that_dies_mid_run_ends_the_run_early(backend: Backend) {
    let backend = backend.name();
    let mut server = Server::game(backend);
    let addr = server.addr;
    let backend_name = backend.to_owned();
    let started = Instant::now();
    let run = std::thread::spawn(move || {
        client(
            addr,
            &backend_name,
            &["--sessions", "20", "--rate", "5", "--duration", "40s"],
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    server.child.kill().expect("kill the server");
    let killed = Instant::now();
    let (output, report) = run.join().expect("the client thread");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the client ran {:?} past the server's death ({:?} in all)",
        killed.elapsed(),
        started.elapsed()
    );
    assert_eq!(num(&report, "sessions.failed"), 20, "{report:#}");
    assert_eq!(num(&report, "sessions.in_game_at_end"), 0, "{report:#}");
    assert_eq!(num(&report, "errors_total"), 20, "{report:#}");
    let errors = report["errors"].as_object().unwrap();
    assert!(
        errors
            .keys()
            .all(|kind| kind.starts_with("disconnect:") || kind == "connect_failed"),
        "{report:#}"
    );
    let ended = report["ended_early"].as_str().unwrap_or_default();
    assert!(ended.starts_with("no session alive after "), "{report:#}");
    let chat_secs = report["chat_secs"].as_f64().unwrap();
    assert!(chat_secs < 5.0, "rates over the live time: {report:#}");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no session alive after") && stderr.contains("stopping early"),
        "{stderr}"
    );
}

/// A server that creates at most 5 accounts a minute for an address:
/// 12 sessions from one address get 5 players in game, and the 7 others
/// are refused with the reason; the client says what to do and fails.
fn refused_logins_name_their_reason_and_fail_the_run(backend: Backend) {
    let backend = backend.name();
    let server = Server::start(&[
        "server",
        "--addr",
        "127.0.0.1:0",
        "--db",
        ":memory:",
        "--max-conns-per-ip",
        "0",
        "--max-new-accounts-per-min",
        "5",
        "--backend",
        backend,
    ]);
    let (output, report) = client(
        server.addr,
        backend,
        &["--sessions", "12", "--duration", "300ms"],
    );
    assert_eq!(num(&report, "sessions.entered"), 5, "{report:#}");
    assert_eq!(num(&report, "sessions.in_game_at_end"), 5, "{report:#}");
    assert_eq!(num(&report, "sessions.failed"), 7, "{report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({"login_refused:account_limit": 7}),
        "{report:#}"
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("7 sessions refused: one address may create at most")
            && stderr.contains("--max-new-accounts-per-min 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: 7 of 12 sessions failed"),
        "{stderr}"
    );
}

/// A server that holds 4 connections per address: of 10 sessions, the 6
/// past the limit hear why (an `S_LOGIN` refusal before the close), and
/// the client says which flag lifts the limit.
fn connections_past_the_per_address_limit_are_told_why(backend: Backend) {
    let backend = backend.name();
    let server = Server::start(&[
        "server",
        "--addr",
        "127.0.0.1:0",
        "--db",
        ":memory:",
        "--max-conns-per-ip",
        "4",
        "--max-new-accounts-per-min",
        "0",
        "--backend",
        backend,
    ]);
    let (output, report) = client(
        server.addr,
        backend,
        &["--sessions", "10", "--duration", "300ms"],
    );
    assert_eq!(num(&report, "sessions.in_game_at_end"), 4, "{report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({"login_refused:too_many_connections": 6}),
        "{report:#}"
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("6 sessions turned away: the server holds at most")
            && stderr.contains("--max-conns-per-ip 0"),
        "{stderr}"
    );
}

/// Runs `client --scenario move` against `server` and checks the world
/// through the JSON report: every player entered, moved, got its own moves
/// back unchanged (the walk never leaves the map nor outruns the speed
/// limit), saw neighbours spawn, and never got a move of a player it had
/// not been spawned.
fn walk_and_check(server: &Server, backend: &str) {
    const SESSIONS: u64 = 60;
    let (output, report) = client(
        server.addr,
        backend,
        &["--scenario", "move", "--sessions", "60", "--duration", "2s"],
    );
    assert!(output.status.success(), "client failed: {output:?}");
    assert_eq!(report["scenario"], "move", "{report:#}");
    assert_eq!(num(&report, "sessions.entered"), SESSIONS, "{report:#}");
    assert_eq!(num(&report, "errors_total"), 0, "{report:#}");
    assert!(
        report["errors"].get("move_from_unseen").is_none(),
        "{report:#}"
    );
    assert_eq!(num(&report, "messages_sent"), 0, "no chat by default");
    let sent = num(&report, "movement.moves_sent");
    // 10 moves/s for 2 s each; a timer skipped on a busy machine may lose
    // a few.
    let expected = SESSIONS * 10 * 2;
    assert!(
        sent <= expected && sent >= expected * 9 / 10,
        "sent {sent}, expected about {expected}: {report:#}"
    );
    assert_eq!(num(&report, "movement.own_moves"), sent, "{report:#}");
    assert!(num(&report, "movement.deliveries") >= sent, "{report:#}");
    assert!(num(&report, "movement.players_spawned") > 0, "{report:#}");
    assert_eq!(num(&report, "movement.corrections"), 0, "{report:#}");
    assert_eq!(num(&report, "movement.latency_us.samples"), sent);
    let (p50, p99, max) = (
        num(&report, "movement.latency_us.p50"),
        num(&report, "movement.latency_us.p99"),
        num(&report, "movement.latency_us.max"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
    assert!(report["movement"]["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "move deliveries per second",
        "own-move latency p99",
        "players spawned",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

fn players_walk_the_game_world_and_see_only_spawned_neighbours(backend: Backend) {
    let backend = backend.name();
    walk_and_check(&Server::game(backend), backend);
}

/// The same walk against the benchmark's tokio world server: it keeps the
/// game's rules, so the client sees the same world.
#[test]
fn players_walk_the_tokio_world_baseline() {
    let server = Server::start(&[
        "bench-server",
        "--impl",
        "tokio",
        "--scenario",
        "move",
        "--workers",
        "2",
    ]);
    walk_and_check(&server, "poll");
}

fn demo_runs_and_prints_the_table(backend: Backend) {
    let backend = backend.name();
    let output = run(
        &[
            "demo",
            "--seconds",
            "2",
            "--clients",
            "20",
            "--backend",
            backend,
            "--workers",
            "2",
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {output:?}\nstdout:\n{stdout}"
    );
    for needle in [
        "sessions connected",
        "20 / 20",
        "deliveries per second",
        "latency p99",
        "move deliveries per second",
        "own-move latency p99",
        "players spawned",
        "errors",
        "none",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

/// Nothing listens: every connect fails, each is counted, the JSON report
/// is still written, and the command fails at once because nobody
/// connected (it does not wait out its window).
#[test]
fn connect_failures_are_counted() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let (output, report) = client(
        addr,
        "poll",
        &[
            "--sessions",
            "5",
            "--duration",
            "30s",
            "--connect-timeout",
            "2s",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a closed port fails fast, not after the window: {:?}",
        started.elapsed()
    );
    assert!(
        !output.status.success(),
        "nobody connected, yet it succeeded"
    );
    assert_eq!(num(&report, "sessions.connected"), 0, "{report:#}");
    assert_eq!(num(&report, "sessions.failed"), 5, "{report:#}");
    assert_eq!(num(&report, "errors.connect_failed"), 5, "{report:#}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no session could connect"), "{stderr}");
}

/// `--duration` takes human durations and refuses nonsense.
#[test]
fn duration_is_parsed() {
    let output = run(
        &["client", "--duration", "10 parsecs", "--sessions", "1"],
        Duration::from_secs(20),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown unit"), "{stderr}");
}
