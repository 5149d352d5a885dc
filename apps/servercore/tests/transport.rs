//! The game server over its transports, end to end: `servercore server`
//! with `--tls-cert/--tls-key` (a pair from `servercore cert`) and
//! `--ws-addr`, played by rustls clients, by the `servercore client` load
//! tool over TLS and WSS, and by a WebSocket client from outside the
//! project (Python `websockets`, `tests/ws_client.py`) in the same world as
//! a plain TCP client. Every test runs on both backends.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use servercore::transport::rustls;
use servercore::Backend;
use servercore_protocol::{make_packet, CLogin};

use servercore_testkit::backend_tests;
use servercore_testkit::cert::dev_cert;
use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::{chat_of, GameClient};

backend_tests!(
    tls_game_login_enter_chat,
    load_tool_over_tls_and_wss,
    #[cfg_attr(
        servercore_missing = "websockets",
        ignore = "needs python3 with websockets (scripts/test-env installs it)"
    )]
    python_websocket_client_chats_with_tcp_client,
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

/// A `servercore server` child; killed on drop.
struct Server {
    _process: ChildProcess,
    addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
}

impl Server {
    fn start(backend: Backend, extra: &[&str]) -> Server {
        let (process, ready) = ChildProcess::spawn_ready(
            servercore()
                .args([
                    "--log",
                    "warn",
                    "server",
                    "--addr",
                    "127.0.0.1:0",
                    "--workers",
                    "2",
                ])
                .args(["--db", ":memory:", "--backend", backend.name()])
                .args(extra),
            READ_TIMEOUT,
        );
        assert_eq!(ready.backend, backend.name());
        Server {
            _process: process,
            addr: ready.addr,
            ws_addr: ready.ws,
        }
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn tls_config(cert: &Path) -> Arc<rustls::ClientConfig> {
    servercore::transport::tls::client_config_from_pem(cert).unwrap()
}

fn tls_game_login_enter_chat(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(
        backend,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let config = tls_config(&cert);
    let mut alice = GameClient::tls(server.addr, Arc::clone(&config)).skipping_world();
    let mut bob = GameClient::tls(server.addr, config).skipping_world();
    let a = alice.join_as("alice").player_id;
    let b = bob.join_as("bob").player_id;
    for i in 0..10 {
        alice.chat(&format!("a{i}"), i);
    }
    bob.chat("bob here", 99);
    for client in [&mut alice, &mut bob] {
        let mut next_a = 0;
        let mut seen_b = false;
        for _ in 0..11 {
            let chat = client.recv_chat();
            if chat.player_id == a {
                assert_eq!(chat, chat_of(a, &format!("a{next_a}"), next_a));
                next_a += 1;
            } else {
                assert_eq!(chat, chat_of(b, "bob here", 99));
                seen_b = true;
            }
        }
        assert!(seen_b && next_a == 10);
    }
    // A plain client on the TLS port gets an alert and a close, no game.
    let mut plain = tcp(server.addr);
    plain
        .write_all(&make_packet(&CLogin {
            account: "plain".into(),
        }))
        .unwrap();
    let mut answer = Vec::new();
    match plain.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the TLS port did not close a plain client: {e}"),
    }
    assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
}

fn run_load_tool(args: &[&str]) -> String {
    let out = servercore()
        .args(["--log", "warn", "client", "--sessions", "10", "--rate", "5"])
        .args([
            "--duration",
            "1s",
            "--no-progress",
            "--setup-timeout",
            "10s",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run servercore client");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn load_tool_over_tls_and_wss(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = Server::start(
        backend,
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--ws-addr",
            "127.0.0.1:0",
            // Twenty dummy accounts from one address: not what this tests.
            "--max-new-accounts-per-min",
            "0",
        ],
    );
    let ws_port = server.ws_addr.expect("a WebSocket listener").port();
    let addr = server.addr.to_string();
    let wss = format!("wss://localhost:{ws_port}/ws");
    let backend_flag = ["--backend", backend.name()];
    for args in [
        vec!["--addr", addr.as_str(), "--tls", "--tls-ca", cert],
        vec!["--ws", wss.as_str(), "--tls-ca", cert],
    ] {
        let args: Vec<&str> = args.into_iter().chain(backend_flag).collect();
        let table = run_load_tool(&args);
        // Rows are "label  value", padded to the widest label.
        let row = |label: &str| {
            table
                .lines()
                .find_map(|line| line.trim().strip_prefix(label).map(str::trim))
                .map(str::to_owned)
        };
        assert_eq!(
            row("sessions in game at the end").as_deref(),
            Some("10"),
            "{args:?}:\n{table}"
        );
        assert_eq!(row("errors").as_deref(), Some("none"), "{args:?}:\n{table}");
    }
}

fn python_has_websockets() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("SERVERCORE_REQUIRE_PY").is_some() {
            panic!("python3 with the websockets package is required (pip install websockets)");
        }
        eprintln!("skipping: python3 -c 'import websockets' failed (pip install websockets)");
    }
    ok
}

fn python_websocket_client_chats_with_tcp_client(backend: Backend) {
    if !python_has_websockets() {
        return;
    }
    let server = Server::start(backend, &["--ws-addr", "127.0.0.1:0"]);
    let ws_addr = server.ws_addr.expect("a WebSocket listener");
    let mut tcp = GameClient::connect(server.addr).skipping_world();
    let tcp_id = tcp.join_as("tcp_player").player_id;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ws_client.py");
    let mut python = Command::new("python3")
        .arg(script)
        .arg(format!("ws://{ws_addr}/ws"))
        .args(["py_player", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut to_python = python.stdin.take().unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = python.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut next_line = |what: &str| -> String {
        match lines.recv_timeout(READ_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = python.kill();
                let mut err = String::new();
                let _ = python.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no {what} from the Python client; its stderr:\n{err}")
            }
        }
    };
    let entered = next_line("entered line");
    let py_id: u64 = entered
        .strip_prefix("entered ")
        .unwrap_or_else(|| panic!("{entered}"))
        .parse()
        .unwrap();
    // Its move came back as its own S_MOVE (checked by the script).
    assert_eq!(next_line("own move"), "moved");

    // The WebSocket player's chats reach the TCP player, in order...
    for i in 0..6 {
        assert_eq!(tcp.recv_chat(), chat_of(py_id, &format!("py{i}"), i));
    }
    writeln!(to_python, "expect {py_id} py 6").unwrap();
    assert_eq!(next_line("own chats"), "got py");
    // ...and the TCP player's reach the WebSocket player, in order.
    for i in 0..4 {
        tcp.chat(&format!("tcp{i}"), i);
    }
    writeln!(to_python, "expect {tcp_id} tcp 4").unwrap();
    assert_eq!(next_line("TCP chats"), "got tcp");
    for i in 0..4 {
        assert_eq!(tcp.recv_chat(), chat_of(tcp_id, &format!("tcp{i}"), i));
    }
    writeln!(to_python, "done").unwrap();
    assert_eq!(next_line("the end"), "ok");
    let status = python.wait().unwrap();
    assert!(status.success(), "python exited with {status}");
}
