//! The game server over QUIC, end to end: `servercore server --quic-addr`
//! (with a pair from `servercore cert`), played by a QUIC client from
//! outside the project (Python `aioquic`, `tests/quic_client.py`) in the
//! same small world as a TLS-over-TCP client: login and enter over the
//! stream, chats both ways, its own and the neighbour's moves as
//! datagrams (never on the stream), bad datagrams dropped without harm.
//! Every test runs on both backends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use servercore::Backend;
use servercore_protocol::{CMove, PosInfo};

use servercore_testkit::backend_tests;
use servercore_testkit::cert::dev_cert;
use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::{chat_of, GameClient};

backend_tests!(
    #[cfg_attr(
        servercore_missing = "aioquic",
        ignore = "needs python3 with aioquic (scripts/test-env installs it)"
    )]
    aioquic_client_plays_with_a_tcp_client,
    #[cfg_attr(
        servercore_missing = "aioquic",
        ignore = "needs python3 with aioquic (scripts/test-env installs it)"
    )]
    aioquic_oversized_datagram_and_malformed_packet_close_with_the_reason,
    load_tool_over_quic_counts_moves_by_datagram,
    #[cfg_attr(
        servercore_missing = "aioquic",
        ignore = "needs python3 with aioquic (scripts/test-env installs it)"
    )]
    aioquic_webtransport_session_plays,
    quic_connections_count_against_the_per_address_limit,
    quic_handshake_rate_is_lifted_with_the_per_address_limit,
);

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn servercore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_servercore"))
}

/// A development pair from `servercore cert`: (cert, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let pair = dev_cert(env!("CARGO_BIN_EXE_servercore"), dir);
    (pair.cert, pair.key)
}

/// A `servercore server` child with a QUIC listener; killed on drop.
struct Server {
    _process: ChildProcess,
    addr: SocketAddr,
    quic_addr: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Server {
    fn start(backend: Backend, cert: &Path, key: &Path) -> Server {
        Server::start_with(backend, cert, key, &[])
    }

    fn start_with(backend: Backend, cert: &Path, key: &Path, extra: &[&str]) -> Server {
        let (process, ready) = ChildProcess::spawn_ready(
            servercore()
                .args(["--log", "warn", "server", "--addr", "127.0.0.1:0"])
                .args([
                    "--workers",
                    "2",
                    "--db",
                    ":memory:",
                    "--backend",
                    backend.name(),
                ])
                .args(["--quic-addr", "127.0.0.1:0", "--tls-cert"])
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                // Two by two cells: every player sees every other.
                .args(["--world-size", "200", "--cell", "100"])
                // Dummy accounts from one address: not what this tests.
                .args(["--max-new-accounts-per-min", "0"])
                .args(extra),
            READ_TIMEOUT,
        );
        Server {
            _process: process,
            addr: ready.addr,
            quic_addr: ready.quic.expect("the ready file names the QUIC listener"),
            admin: ready.admin,
        }
    }
}

fn python_has_aioquic() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aioquic"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("SERVERCORE_REQUIRE_PY").is_some() {
            panic!("python3 with the aioquic package is required (pip install aioquic)");
        }
        eprintln!("skipping: python3 -c 'import aioquic' failed (pip install aioquic)");
    }
    ok
}

/// `tests/quic_client.py` as a child: orders on its stdin, answers from
/// its stdout; killed on drop.
struct PyClient {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl PyClient {
    fn start(server: &Server, cert: &Path, account: &str) -> PyClient {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quic_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(server.quic_addr.ip().to_string())
            .arg(server.quic_addr.port().to_string())
            .arg(cert)
            .arg(account)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        PyClient {
            child,
            stdin,
            lines,
        }
    }

    fn order(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    fn line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(READ_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no {what} from the QUIC client; its stderr:\n{err}")
            }
        }
    }

    /// Waits for `entered ID` and `moved`; returns the player's id.
    fn entered(&mut self) -> u64 {
        let entered = self.line("entered line");
        let id = entered
            .strip_prefix("entered ")
            .unwrap_or_else(|| panic!("{entered}"))
            .parse()
            .unwrap();
        // Its C_MOVE went by datagram and its S_MOVE came back as one.
        assert_eq!(self.line("own move"), "moved");
        id
    }

    fn wait(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "python exited with {status}");
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aioquic_client_plays_with_a_tcp_client(backend: Backend) {
    if !python_has_aioquic() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(backend, &cert, &key);
    let config = servercore::transport::tls::client_config_from_pem(&cert).unwrap();
    let mut tcp = GameClient::tls(server.addr, config).skipping_world();
    let tcp_id = tcp.join_as("tcp_player").player_id;

    let mut python = PyClient::start(&server, &cert, "quic_player");
    let quic_id = python.entered();

    // The QUIC player's chats reach the TCP player, in order...
    python.order("chat 5");
    for i in 0..5 {
        assert_eq!(tcp.recv_chat(), chat_of(quic_id, &format!("py{i}"), i));
    }
    python.order(&format!("expect {quic_id} py 5"));
    assert_eq!(python.line("own chats"), "got py");
    // ...and the TCP player's reach the QUIC player, in order.
    for i in 0..4 {
        tcp.chat(&format!("tcp{i}"), i);
    }
    python.order(&format!("expect {tcp_id} tcp 4"));
    assert_eq!(python.line("TCP chats"), "got tcp");

    // Datagrams that are not whole packets, or carry a chat, are dropped:
    // the session goes on and no chat "by datagram" reaches anyone.
    python.order("garbage");
    assert_eq!(python.line("garbage"), "sent garbage");

    // The TCP neighbour's move reaches the QUIC player as a datagram.
    tcp.send(&CMove {
        info: Some(PosInfo {
            x: 50.0,
            y: 50.0,
            ..PosInfo::default()
        }),
        client_time_us: 7,
    });
    python.order(&format!("expect_move {tcp_id}"));
    assert_eq!(
        python.line("neighbour's move"),
        format!("saw move {tcp_id}")
    );

    // A last chat both ways: the connection is still whole.
    tcp.chat("end0", 0);
    python.order(&format!("expect {tcp_id} end 1"));
    assert_eq!(python.line("the last chat"), "got end");
    python.order("done");
    let ok = python.line("the end");
    let counts: Vec<u64> = ok
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{ok}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts[0], 0, "no S_MOVE on the stream: {ok}");
    assert!(
        counts[1] >= 2,
        "own and the neighbour's moves by datagram: {ok}"
    );
    python.wait();
    // Every chat the TCP player got was one of these, none "by datagram".
    for i in 0..4 {
        assert_eq!(tcp.recv_chat(), chat_of(tcp_id, &format!("tcp{i}"), i));
    }
    assert_eq!(tcp.recv_chat(), chat_of(tcp_id, "end0", 0));
}

/// Hostile QUIC clients in game: a datagram larger than the server takes
/// closes the connection with PROTOCOL_VIOLATION ("oversized datagram"),
/// a malformed packet on the stream closes it with the protocol code and
/// `malformed_packet`, as the TCP port disconnects it; the server plays on.
fn aioquic_oversized_datagram_and_malformed_packet_close_with_the_reason(backend: Backend) {
    if !python_has_aioquic() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(backend, &cert, &key);
    for (order, expected) in [
        ("oversize", "terminated 10 oversized datagram"),
        ("malformed", "terminated 2 malformed_packet"),
    ] {
        let mut python = PyClient::start(&server, &cert, &format!("hostile_{order}"));
        python.entered();
        python.order(order);
        assert_eq!(python.line("counts"), "ok 0 1", "{order}");
        assert_eq!(python.line("the close"), expected, "{order}");
        python.wait();
    }
    // Still serving.
    let mut python = PyClient::start(&server, &cert, "after");
    python.entered();
    python.order("done");
    assert_eq!(python.line("the end"), "ok 0 1");
    python.wait();
}

/// `servercore client --quic` runs the scenarios over QUIC: every session
/// enters, chats come back, and in the move scenario every move the table
/// counts came by datagram, none by the stream.
fn load_tool_over_quic_counts_moves_by_datagram(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(backend, &cert, &key);
    let quic = server.quic_addr.to_string();
    for scenario in ["chat", "move"] {
        let out = servercore()
            .args(["--log", "warn", "client", "--sessions", "10"])
            .args([
                "--duration",
                "1s",
                "--no-progress",
                "--setup-timeout",
                "10s",
            ])
            .args(["--quic", quic.as_str(), "--tls-ca"])
            .arg(&cert)
            .args(["--scenario", scenario, "--world-size", "200"])
            .args(["--backend", backend.name()])
            .stdin(Stdio::null())
            .output()
            .expect("run servercore client");
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{scenario}: {table}\n{stderr}");
        assert!(stderr.contains("(quic)"), "{stderr}");
        let row = |label: &str| {
            table
                .lines()
                .find_map(|line| line.trim().strip_prefix(label).map(str::trim))
                .map(str::to_owned)
        };
        assert_eq!(
            row("sessions in game at the end").as_deref(),
            Some("10"),
            "{table}"
        );
        assert_eq!(row("errors").as_deref(), Some("none"), "{table}");
        if scenario == "chat" {
            let back = row("own messages back").unwrap_or_else(|| panic!("{table}"));
            let (got, sent) = back.split_once(" of ").unwrap();
            assert_eq!(got, sent, "every chat came back by the stream: {table}");
        } else {
            let split = row("moves by datagram / by stream").unwrap_or_else(|| panic!("{table}"));
            let (datagram, stream) = split.split_once(" / ").unwrap();
            assert_eq!(stream, "0", "no move by the stream: {table}");
            assert_ne!(datagram, "0", "{table}");
            assert!(row("own moves lost").is_some(), "{table}");
        }
    }
}

/// WebTransport on the QUIC port from aioquic's HTTP/3: a CONNECT to
/// another path gets 404, one to /wt (on the connection's second request
/// stream, so the datagrams' quarter stream id is 1, not 0) opens the
/// session: login and enter over its stream, the move and its S_MOVE as
/// datagrams.
fn aioquic_webtransport_session_plays(backend: Backend) {
    if !python_has_aioquic() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(backend, &cert, &key);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wt_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(server.quic_addr.ip().to_string())
        .arg(server.quic_addr.port().to_string())
        .arg(&cert)
        .arg("wt_player")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "refused 404");
    assert!(lines[1].starts_with("entered "), "{stdout}");
    assert_eq!(&lines[2..], ["moved", "ok"]);
}

/// The game's per-address limit counts QUIC sessions by the client's UDP
/// address as it counts TCP ones: of 5 sessions from one address against
/// a limit of 3, 2 are refused with the reason, over QUIC.
fn quic_connections_count_against_the_per_address_limit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start_with(backend, &cert, &key, &["--max-conns-per-ip", "3"]);
    let out = servercore()
        .args([
            "--log",
            "warn",
            "client",
            "--sessions",
            "5",
            "--duration",
            "300ms",
        ])
        .args(["--no-progress", "--setup-timeout", "10s", "--json", "-"])
        .args(["--quic", &server.quic_addr.to_string(), "--tls-ca"])
        .arg(&cert)
        .args(["--backend", backend.name()])
        .stdin(Stdio::null())
        .output()
        .expect("run servercore client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["sessions"]["in_game_at_end"], 3, "{report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({"login_refused:too_many_connections": 2}),
        "{report:#}"
    );
}

/// The value of the sample `name` on the server's `/metrics`.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to /metrics");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `--max-conns-per-ip 0` (a load test from one machine) also lifts the
/// QUIC listener's per-address handshake rate (20 a second, bursts of 40):
/// 120 QUIC sessions from one address all enter and no Initial was
/// ignored.
fn quic_handshake_rate_is_lifted_with_the_per_address_limit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start_with(
        backend,
        &cert,
        &key,
        &["--max-conns-per-ip", "0", "--admin", "127.0.0.1:0"],
    );
    let out = servercore()
        .args(["--log", "warn", "client", "--sessions", "120"])
        .args([
            "--duration",
            "300ms",
            "--no-progress",
            "--setup-timeout",
            "30s",
        ])
        .args([
            "--json",
            "-",
            "--quic",
            &server.quic_addr.to_string(),
            "--tls-ca",
        ])
        .arg(&cert)
        .args(["--backend", backend.name()])
        .stdin(Stdio::null())
        .output()
        .expect("run servercore client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["sessions"]["in_game_at_end"], 120, "{report:#}");
    let admin = server
        .admin
        .expect("the ready file names the admin listener");
    assert!(metric(admin, "servercore_quic_incoming_total") >= 120.0);
    assert_eq!(metric(admin, "servercore_quic_rate_limited_total"), 0.0);
}
