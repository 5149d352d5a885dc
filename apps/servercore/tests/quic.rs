//! The game server over QUIC, end to end: `servercore server --quic-addr`
//! (with a pair from `servercore cert`), played by a QUIC client from
//! outside the project (Python `aioquic`, `tests/quic_client.py`) in the
//! same small world as a TLS-over-TCP client: login and enter over the
//! stream, chats both ways, its own and the neighbour's moves as
//! datagrams (never on the stream), bad datagrams dropped without harm.
//! Every test runs on both backends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use servercore::packet::Packet;
use servercore::transport::rustls;
use servercore::transport::rustls::pki_types::ServerName;
use servercore::Backend;
use servercore_protocol::{
    make_packet, CChat, CEnterGame, CLogin, CMove, ClientPacket, PosInfo, SChat,
};

mod common;

backend_tests!(
    #[cfg_attr(
        servercore_missing = "aioquic",
        ignore = "needs python3 with aioquic (scripts/test-env installs it)"
    )]
    aioquic_client_plays_with_a_tcp_client,
);

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn servercore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_servercore"))
}

fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let out = servercore()
        .args(["cert", "--out"])
        .arg(dir)
        .output()
        .expect("run servercore cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A `servercore server` child with a QUIC listener; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    quic_addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(backend: Backend, cert: &Path, key: &Path) -> Server {
        let mut child = servercore()
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn servercore server");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let banner = rx
            .recv_timeout(READ_TIMEOUT)
            .unwrap_or_else(|_| panic!("no banner; server log:\n{}", log.lock().unwrap()));
        // "game server listening on ADDR (TLS), QUIC on udp ADDR (backend ..."
        let rest = banner
            .strip_prefix("game server listening on ")
            .unwrap_or_else(|| panic!("unexpected banner: {banner}"));
        let addr = rest.split([' ', ',']).next().unwrap().parse().unwrap();
        let quic_addr = rest
            .split_once("QUIC on udp ")
            .map(|(_, quic)| quic.split(' ').next().unwrap().parse().unwrap())
            .unwrap_or_else(|| panic!("no QUIC address in the banner: {banner}"));
        Server {
            child,
            addr,
            quic_addr,
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.log.lock().unwrap());
        }
    }
}

/// A blocking game client over TLS on TCP.
struct Client {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    fn tls(addr: SocketAddr, cert: &Path) -> Client {
        let config = servercore::transport::tls::client_config_from_pem(cert).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = TcpStream::connect_timeout(&addr, READ_TIMEOUT).expect("connect");
        tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            stream: rustls::StreamOwned::new(conn, tcp),
        }
    }

    fn send<M: Packet>(&mut self, msg: &M) {
        self.stream.write_all(&make_packet(msg)).expect("send");
        self.stream.flush().unwrap();
    }

    fn recv(&mut self) -> ClientPacket {
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .expect("a packet header");
        let size = u16::from_le_bytes([header[0], header[1]]) as usize;
        let id = u16::from_le_bytes([header[2], header[3]]);
        let mut body = vec![0u8; size - 4];
        self.stream.read_exact(&mut body).expect("a packet body");
        ClientPacket::decode(id, &body).expect("a known packet")
    }

    fn recv_chat(&mut self) -> SChat {
        loop {
            if let ClientPacket::SChat(chat) = self.recv() {
                return chat;
            }
        }
    }

    fn join(&mut self, account: &str) -> u64 {
        self.send(&CLogin {
            account: account.into(),
        });
        let ClientPacket::SLogin(login) = self.recv() else {
            panic!("expected S_LOGIN")
        };
        assert!(login.success);
        self.send(&CEnterGame { player_index: 0 });
        let ClientPacket::SEnterGame(entered) = self.recv() else {
            panic!("expected S_ENTER_GAME")
        };
        assert!(entered.success);
        entered.player_id
    }

    fn chat(&mut self, msg: &str, client_time_us: u64) {
        self.send(&CChat {
            msg: msg.into(),
            client_time_us,
        });
    }
}

fn chat_of(player_id: u64, msg: &str, client_time_us: u64) -> SChat {
    SChat {
        player_id,
        msg: msg.into(),
        client_time_us,
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

fn aioquic_client_plays_with_a_tcp_client(backend: Backend) {
    if !python_has_aioquic() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let server = Server::start(backend, &cert, &key);
    let mut tcp = Client::tls(server.addr, &cert);
    let tcp_id = tcp.join("tcp_player");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quic_client.py");
    let mut python = Command::new("python3")
        .arg(script)
        .arg(server.quic_addr.ip().to_string())
        .arg(server.quic_addr.port().to_string())
        .arg(&cert)
        .arg("quic_player")
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
                panic!("no {what} from the QUIC client; its stderr:\n{err}")
            }
        }
    };
    let entered = next_line("entered line");
    let quic_id: u64 = entered
        .strip_prefix("entered ")
        .unwrap_or_else(|| panic!("{entered}"))
        .parse()
        .unwrap();
    // Its C_MOVE went by datagram and its S_MOVE came back as one.
    assert_eq!(next_line("own move"), "moved");

    // The QUIC player's chats reach the TCP player, in order...
    writeln!(to_python, "chat 5").unwrap();
    for i in 0..5 {
        assert_eq!(tcp.recv_chat(), chat_of(quic_id, &format!("py{i}"), i));
    }
    writeln!(to_python, "expect {quic_id} py 5").unwrap();
    assert_eq!(next_line("own chats"), "got py");
    // ...and the TCP player's reach the QUIC player, in order.
    for i in 0..4 {
        tcp.chat(&format!("tcp{i}"), i);
    }
    writeln!(to_python, "expect {tcp_id} tcp 4").unwrap();
    assert_eq!(next_line("TCP chats"), "got tcp");

    // Datagrams that are not whole packets, or carry a chat, are dropped:
    // the session goes on and no chat "by datagram" reaches anyone.
    writeln!(to_python, "garbage").unwrap();
    assert_eq!(next_line("garbage"), "sent garbage");

    // The TCP neighbour's move reaches the QUIC player as a datagram.
    tcp.send(&CMove {
        info: Some(PosInfo {
            x: 50.0,
            y: 50.0,
            ..PosInfo::default()
        }),
        client_time_us: 7,
    });
    writeln!(to_python, "expect_move {tcp_id}").unwrap();
    assert_eq!(next_line("neighbour's move"), format!("saw move {tcp_id}"));

    // A last chat both ways: the connection is still whole.
    tcp.chat("end0", 0);
    writeln!(to_python, "expect {tcp_id} end 1").unwrap();
    assert_eq!(next_line("the last chat"), "got end");
    writeln!(to_python, "done").unwrap();
    let ok = next_line("the end");
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
    let status = python.wait().unwrap();
    assert!(status.success(), "python exited with {status}");
    // Every chat the TCP player got was one of these, none "by datagram".
    for i in 0..4 {
        assert_eq!(tcp.recv_chat(), chat_of(tcp_id, &format!("tcp{i}"), i));
    }
    assert_eq!(tcp.recv_chat(), chat_of(tcp_id, "end0", 0));
}
