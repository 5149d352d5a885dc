//! The browser client (`web/`) in a real headless Chromium, driven by
//! Playwright (`tests/browser/play.mjs`): it loads the page from the game
//! server's WebSocket listener, logs in, moves with key presses, sees a
//! plain-TCP dummy client appear and move on the canvas, sends a chat the
//! TCP client receives, and receives the TCP client's answer. A screenshot
//! goes to `docs/browser-client.png`. The same over WebTransport, and across
//! a zone border of a world shared by two nodes (`tests/browser/cross.mjs`).
//!
//! Needs `chromium` and `npm ci` in `tests/browser`; without them the test
//! says so and passes, except under `CI`, where `.ci/run` installs both and
//! a missing piece fails it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use servercore::packet::Packet;
use servercore_protocol::{make_packet, CChat, CEnterGame, CLogin, CMove, ClientPacket, PosInfo};
use servercore_testkit::cert::dev_cert;
use servercore_testkit::child::ChildProcess;

mod zones_kit;
use zones_kit::World;

const EXE: &str = env!("CARGO_BIN_EXE_servercore");
const BROWSER_CHAT: &str = "hello from the browser";
const TCP_CHAT: &str = "hello from tcp";

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    if !tools_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci in tests/browser)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    None
}

/// The game server in its own process; killed when dropped.
struct Server {
    _process: ChildProcess,
    tcp: SocketAddr,
    ws: SocketAddr,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let (process, ready) = ChildProcess::spawn_ready(
            Command::new(EXE)
                .args([
                    "server",
                    "--addr",
                    "127.0.0.1:0",
                    "--ws-addr",
                    "127.0.0.1:0",
                ])
                .args(["--db", ":memory:", "--backend", "poll"])
                // A 2×2-cell map: everyone sees everyone.
                .args(["--world-size", "200", "--cell", "100"])
                .args(["--max-conns-per-ip", "0", "--max-new-accounts-per-min", "0"])
                .args(extra),
            Duration::from_secs(20),
        );
        Server {
            _process: process,
            tcp: ready.addr,
            ws: ready
                .ws
                .expect("the ready file names the WebSocket listener"),
        }
    }
}

fn send<M: Packet>(stream: &mut TcpStream, msg: &M) {
    stream.write_all(&make_packet(msg)).unwrap();
}

/// Reads packets off `stream` into a channel until it closes.
fn reader(mut stream: TcpStream) -> mpsc::Receiver<ClientPacket> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut header = [0u8; 4];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let size = u16::from_le_bytes([header[0], header[1]]) as usize;
        let id = u16::from_le_bytes([header[2], header[3]]);
        let mut body = vec![0u8; size.saturating_sub(4)];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let packet = ClientPacket::decode(id, &body).expect("a packet the client knows");
        if tx.send(packet).is_err() {
            return;
        }
    });
    rx
}

/// The dummy: logs in, enters, walks back and forth, and answers the
/// browser's chat. Returns the chats it received, in order.
fn dummy(addr: SocketAddr, stop: mpsc::Receiver<()>) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let packets = reader(stream.try_clone().unwrap());
    send(
        &mut stream,
        &CLogin {
            account: "dummy".into(),
        },
    );
    send(&mut stream, &CEnterGame { player_index: 0 });
    let mut start = None;
    let mut chats = Vec::new();
    let mut answered = false;
    let mut step = 0u32;
    let end = Instant::now() + Duration::from_secs(90);
    while Instant::now() < end && stop.try_recv().is_err() {
        while let Ok(packet) = packets.try_recv() {
            match packet {
                ClientPacket::SEnterGame(msg) => {
                    assert!(msg.success, "the dummy enters");
                    let pos = msg.player.and_then(|p| p.pos_info).unwrap();
                    start = Some((pos.x, pos.y));
                }
                ClientPacket::SChat(msg) => {
                    if msg.msg == BROWSER_CHAT && !answered {
                        answered = true;
                        send(
                            &mut stream,
                            &CChat {
                                msg: TCP_CHAT.into(),
                                client_time_us: 0,
                            },
                        );
                    }
                    chats.push(msg.msg);
                }
                _ => {}
            }
        }
        if let Some((x, y)) = start {
            // 10 moves a second, 8 units apart: well under the speed limit.
            step += 1;
            let offset = if step % 20 < 10 {
                step % 10
            } else {
                10 - step % 10
            } as f32
                * 8.0;
            let x = if x > 100.0 { x - offset } else { x + offset };
            send(
                &mut stream,
                &CMove {
                    info: Some(PosInfo {
                        x,
                        y,
                        ..PosInfo::default()
                    }),
                    client_time_us: 0,
                },
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was already on its way (the dummy's own chat, echoed).
    while let Ok(packet) = packets.recv_timeout(Duration::from_millis(500)) {
        if let ClientPacket::SChat(msg) = packet {
            chats.push(msg.msg);
        }
    }
    chats
}

#[test]
#[cfg_attr(
    any(servercore_missing = "chromium", servercore_missing = "playwright"),
    ignore = "needs Chromium, node and playwright-core (scripts/test-env installs them)"
)]
fn browser_client_plays_the_game() {
    if let Some(missing) = missing_tools() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser test cannot run under CI: {missing}"
        );
        eprintln!("SKIPPED browser_client_plays_the_game: {missing}");
        return;
    }
    let server = Server::start();
    let (stop_dummy, stopped) = mpsc::channel();
    let tcp = server.tcp;
    let dummy = std::thread::spawn(move || dummy(tcp, stopped));

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/browser-client.png");
    let output = Command::new("node")
        .arg(tools_dir().join("play.mjs"))
        .arg(format!("http://{}/", server.ws))
        .args(["webplayer", "dummy_knight", BROWSER_CHAT, TCP_CHAT])
        .arg(&screenshot)
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let _ = stop_dummy.send(());
    let chats = dummy.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|_| panic!("play.mjs printed no result:\n{stdout}\n{stderr}"));
    for step in [
        "loaded",
        "inGame",
        "moved",
        "sawOther",
        "otherMoved",
        "chatSent",
        "chatReceived",
    ] {
        assert_eq!(result[step], true, "{step} failed: {result:#}\n{stderr}");
    }
    assert_eq!(result["errors"], serde_json::json!([]), "{result:#}");
    // The TCP client got the browser's chat, then its own answer, in order.
    let browser_at = chats.iter().position(|c| c == BROWSER_CHAT);
    let answer_at = chats.iter().position(|c| c == TCP_CHAT);
    assert!(
        matches!((browser_at, answer_at), (Some(b), Some(a)) if b < a),
        "chats at the TCP client: {chats:?}"
    );
    assert!(screenshot.exists());
}

/// The same game over WebTransport: the page, opened with
/// `?transport=wt`, finds the QUIC port and the certificate's SHA-256 in
/// `/config.json` (the certificate from `servercore cert`, ECDSA P-256 for
/// 13 days, is taken by hash), logs in, moves with key presses, sees the
/// TCP dummy move (by datagram) and chats both ways.
#[test]
#[cfg_attr(
    any(servercore_missing = "chromium", servercore_missing = "playwright"),
    ignore = "needs Chromium, node and playwright-core (scripts/test-env installs them)"
)]
fn browser_client_plays_over_webtransport() {
    if let Some(missing) = missing_tools() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser test cannot run under CI: {missing}"
        );
        eprintln!("SKIPPED browser_client_plays_over_webtransport: {missing}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = dev_cert(EXE, dir.path());
    assert!(
        pair.printed
            .contains("ECDSA P-256, valid 13 days; SHA-256 "),
        "{}",
        pair.printed
    );
    let (cert, key) = (pair.cert, pair.key);
    let server = Server::start_with(&[
        "--quic-addr",
        "127.0.0.1:0",
        "--quic-cert",
        cert.to_str().unwrap(),
        "--quic-key",
        key.to_str().unwrap(),
    ]);
    let (stop_dummy, stopped) = mpsc::channel();
    let tcp = server.tcp;
    let dummy = std::thread::spawn(move || dummy(tcp, stopped));

    let screenshot = dir.path().join("webtransport.png");
    let output = Command::new("node")
        .arg(tools_dir().join("play.mjs"))
        .arg(format!("http://{}/", server.ws))
        .args(["wtplayer", "dummy_knight", BROWSER_CHAT, TCP_CHAT])
        .arg(&screenshot)
        .arg("wt")
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let _ = stop_dummy.send(());
    let chats = dummy.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|_| panic!("play.mjs printed no result:\n{stdout}\n{stderr}"));
    for step in [
        "loaded",
        "inGame",
        "moved",
        "sawOther",
        "otherMoved",
        "chatSent",
        "chatReceived",
    ] {
        assert_eq!(result[step], true, "{step} failed: {result:#}\n{stderr}");
    }
    assert_eq!(result["errors"], serde_json::json!([]), "{result:#}");
    assert_eq!(result["state"]["transport"], "wt", "{result:#}");
    assert!(
        result["state"]["datagramsReceived"].as_u64().unwrap_or(0) > 0,
        "moves came by datagram: {result:#}"
    );
    assert!(output.status.success(), "{result:#}\n{stderr}");
    let browser_at = chats.iter().position(|c| c == BROWSER_CHAT);
    let answer_at = chats.iter().position(|c| c == TCP_CHAT);
    assert!(
        matches!((browser_at, answer_at), (Some(b), Some(a)) if b < a),
        "chats at the TCP client: {chats:?}"
    );
}

/// One world shared by two nodes (`--world-nodes a,b` over a private
/// nats-server, strips x < 300 and x ≥ 300 of a 600-unit map): the page of
/// node a logs in, walks across the border with the arrow keys, follows
/// the `S_TRANSFER` (the old node closes, the page opens the advertised
/// WebSocket URL and logs in with the token) and walks on at the other
/// node, which alone has the player then.
#[test]
#[cfg_attr(
    any(
        servercore_missing = "chromium",
        servercore_missing = "playwright",
        servercore_missing = "nats_server"
    ),
    ignore = "needs Chromium, node, playwright-core and nats-server (scripts/test-env installs them)"
)]
fn browser_client_follows_a_transfer_across_a_border() {
    if let Some(missing) = missing_tools() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser test cannot run under CI: {missing}"
        );
        eprintln!("SKIPPED browser_client_follows_a_transfer_across_a_border: {missing}");
        return;
    }
    let Some(world) = World::start_with(
        servercore::Backend::Auto,
        &["a", "b"],
        &["--ws-addr", "127.0.0.1:0"],
    ) else {
        return;
    };
    let page = world.nodes[0].ready.ws.expect("node a serves the page");
    let mut child = Command::new("node")
        .arg(tools_dir().join("cross.mjs"))
        .arg(format!("http://{page}/"))
        .args(["crosser", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    // The result line, printed while the page is still in game.
    let (line_tx, line_rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_default();
    let result: serde_json::Value = match serde_json::from_str(line.trim()) {
        Ok(result) => result,
        Err(_) => {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "cross.mjs printed no result: {line}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        }
    };
    for step in ["loaded", "inGame", "inGameAfter", "movedAfter"] {
        assert_eq!(result[step], true, "{step} failed: {result:#}");
    }
    assert_eq!(result["errors"], serde_json::json!([]), "{result:#}");
    // One more hand-over than before the walk, to the node across.
    let start_x = result["startX"].as_f64().unwrap();
    let across = if start_x < 300.0 { "b" } else { "a" };
    let before = result["followedBefore"].as_array().unwrap().len();
    let followed = result["followed"].as_array().unwrap();
    assert_eq!(followed.len(), before + 1, "{result:#}");
    assert_eq!(followed.last().unwrap(), across, "{result:#}");
    // The page's player is on that node alone.
    let placement = world
        .wait_each_on_one_node(1, Duration::from_secs(10))
        .unwrap_or_else(|placement| panic!("placement {placement:?}"));
    let nodes: Vec<&Vec<String>> = placement.values().collect();
    assert_eq!(nodes, [&vec![across.to_owned()]], "{placement:?}");
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
