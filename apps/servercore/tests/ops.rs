//! Operations end to end, driving the real `servercore` binary as a child
//! process: stop signals (SIGTERM keeps every acknowledged account, a
//! second SIGINT exits at once), restarts on the same port, the admin
//! listener (`/metrics` checked with Python's Prometheus parser, the status
//! page rendered by a headless Chromium), the config file with its
//! environment and flag overrides, the open-file limit and JSON logs.
//!
//! Tests needing Chromium or the Python parser skip with a loud message
//! where they are missing, and fail when `CI` is set (CI installs them).
//! Every wait is bounded by a deadline.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use servercore::Backend;
use servercore_protocol::{make_packet, CLogin};

use servercore_testkit::child::ChildProcess;
use servercore_testkit::client::GameClient;

use servercore_testkit::backend_tests;

backend_tests!(
    sigterm_keeps_acknowledged_accounts,
    restart_twenty_times_after_sigterm,
    restart_twenty_times_after_sigkill,
    a_sigkill_loses_at_most_one_save_interval_of_walking,
    second_sigint_exits_at_once,
    #[cfg_attr(
        servercore_missing = "prometheus_client",
        ignore = "needs python3 with prometheus_client (scripts/test-env installs it)"
    )]
    metrics_count_the_traffic,
);

/// How long one expected event may take.
const DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// The server process

/// A `servercore server` child; killed on drop if still running, its log
/// printed when the test failed.
struct Server {
    process: ChildProcess,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Server {
    /// Starts `servercore server` with `args` and waits for its banner
    /// (and the admin line when `--admin` is among `args`).
    fn start(backend: Backend, args: &[&str]) -> Server {
        let (process, ready) = ChildProcess::spawn_ready(
            Command::new(env!("CARGO_BIN_EXE_servercore"))
                .args(["server", "--workers", "2", "--backend", backend.name()])
                .args(args)
                .env_remove("SERVERCORE_LOG"),
            DEADLINE,
        );
        assert_eq!(ready.backend, backend.name());
        assert_eq!(ready.admin.is_some(), args.contains(&"--admin"));
        Server {
            process,
            addr: ready.addr,
            admin: ready.admin,
        }
    }

    fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Waits for the process to end, within the deadline.
    fn wait_exit(&mut self) -> ExitStatus {
        self.process.wait_exit(DEADLINE)
    }

    /// SIGTERM; asserts a clean exit (0) and returns the final line.
    fn terminate(mut self) -> String {
        self.signal("TERM");
        let last = self.process.line_starting("stopped: ", DEADLINE);
        let status = self.wait_exit();
        assert!(
            status.success(),
            "exit after SIGTERM: {status}; log:\n{}",
            self.log()
        );
        last
    }

    /// Waits until the log has a line containing `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The stderr so far.
    fn log(&self) -> String {
        self.process.log()
    }
}

/// The `key=value` counters of a `stopped: ...` line.
fn counters(line: &str) -> HashMap<String, i64> {
    line.strip_prefix("stopped: ")
        .unwrap_or_else(|| panic!("unexpected last line: {line}"))
        .split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("key=value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The game client

/// Enters with the first player and returns where the server put it.
fn enter_at(client: &mut GameClient) -> (f32, f32) {
    let entered = client.enter(0);
    assert!(entered.success);
    let pos = entered.player.and_then(|p| p.pos_info).unwrap_or_default();
    (pos.x, pos.y)
}

fn db_arg(dir: &Path) -> String {
    dir.join("game.db").to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// Signals and restarts

/// SIGTERM with players logged in: exit 0 within the deadline, and after a
/// restart on the same port every acknowledged account is there (its
/// players keep their ids).
fn sigterm_keeps_acknowledged_accounts(backend: Backend) {
    const PLAYERS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let db = db_arg(dir.path());
    let server = Server::start(backend, &["--addr", "127.0.0.1:0", "--db", &db]);
    let addr = server.addr;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for i in 0..PLAYERS {
        let mut client = GameClient::connect(addr);
        let login = client.login(&format!("kept{i}"));
        assert!(login.success);
        ids.push(login.players.iter().map(|p| p.id).collect::<Vec<_>>());
        assert!(client.enter(0).success);
        clients.push(client);
    }
    let last = server.terminate();
    let stats = counters(&last);
    assert_eq!(stats["logins"], PLAYERS as i64);
    assert_eq!(stats["enters"], PLAYERS as i64);
    assert_eq!(stats["players_in_room"], 0);
    for client in &mut clients {
        client.expect_closed();
    }

    let port = addr.port().to_string();
    let addr_arg = format!("127.0.0.1:{port}");
    let server = Server::start(backend, &["--addr", &addr_arg, "--db", &db]);
    assert_eq!(server.addr, addr, "restarted on the same port");
    for (i, expected) in ids.iter().enumerate() {
        let mut client = GameClient::connect(server.addr);
        let login = client.login(&format!("kept{i}"));
        assert!(login.success);
        let found: Vec<u64> = login.players.iter().map(|p| p.id).collect();
        assert_eq!(
            &found, expected,
            "account kept{i} and its players are on disk"
        );
    }
    let stats = counters(&server.terminate());
    assert_eq!(stats["logins"], PLAYERS as i64);
}

/// A server killed with SIGKILL loses at most one `--save-interval` of a
/// player's walking: the position a restart shows is the last one the
/// player stood at for longer than the interval, not where it entered.
fn a_sigkill_loses_at_most_one_save_interval_of_walking(backend: Backend) {
    const INTERVAL: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let db = db_arg(dir.path());
    let args = [
        "--addr",
        "127.0.0.1:0",
        "--db",
        &db,
        "--save-interval",
        "300ms",
    ];
    let mut server = Server::start(backend, &args);
    let mut walker = GameClient::connect(server.addr);
    assert!(walker.login("walker").success);
    let (x, y) = enter_at(&mut walker);
    // A few steps (each within the speed limit), then a stand past the
    // interval: that last point must be on disk.
    let mut at = (x, y);
    for step in 1..=5u64 {
        at = ((at.0 + 20.0).min(1990.0), at.1);
        walker.walk_to(at.0, at.1, step);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(INTERVAL * 3);
    server.signal("KILL");
    let status = server.wait_exit();
    assert!(!status.success(), "killed, not stopped: {status}");
    drop(walker);

    let server = Server::start(backend, &args);
    let mut again = GameClient::connect(server.addr);
    assert!(again.login("walker").success);
    let restored = enter_at(&mut again);
    assert_eq!(
        restored,
        at,
        "entered at {restored:?} after the kill; it stood at {at:?} (entered at {:?})",
        (x, y)
    );
    server.terminate();
}

/// Starts on one port 20 times in a row, each run stopped by `signal`
/// with a session connected; every start must bind on the first try.
fn restart_twenty_times(backend: Backend, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = db_arg(dir.path());
    let first = Server::start(backend, &["--addr", "127.0.0.1:0", "--db", &db]);
    let addr_arg = first.addr.to_string();
    first.terminate();
    for round in 0..20 {
        let mut server = Server::start(backend, &["--addr", &addr_arg, "--db", &db]);
        assert_eq!(server.addr.to_string(), addr_arg, "round {round}");
        let mut client = GameClient::connect(server.addr);
        assert!(client.login(&format!("restart{round}")).success);
        if signal == "TERM" {
            // After a clean stop the port is free at once: no retry.
            assert!(
                !server.log().contains("address in use"),
                "round {round}: bound on the first try; log:\n{}",
                server.log()
            );
            server.terminate();
        } else {
            server.signal(signal);
            let status = server.wait_exit();
            assert!(!status.success(), "round {round}: killed, not exited");
        }
    }
}

fn restart_twenty_times_after_sigterm(backend: Backend) {
    restart_twenty_times(backend, "TERM");
}

fn restart_twenty_times_after_sigkill(backend: Backend) {
    restart_twenty_times(backend, "KILL");
}

/// The first SIGINT starts the graceful stop; a second one while it is
/// still running exits at once with 130 and says so. The stop is held up
/// deterministically: the test holds the database's write lock, so the
/// login the server accepted cannot commit and the stop waits to drain it.
fn second_sigint_exits_at_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = db_arg(dir.path());
    let mut server = Server::start(backend, &["--addr", "127.0.0.1:0", "--db", &db]);
    let lock = rusqlite::Connection::open(&db).expect("open the database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the database");
    let mut client = GameClient::connect(server.addr);
    client.send(&CLogin {
        account: "blocked".into(),
    });
    // The login is queued behind the lock; the graceful stop waits for it.
    std::thread::sleep(Duration::from_millis(100));
    server.signal("INT");
    server.wait_log("stopping gracefully");
    let started = Instant::now();
    server.signal("INT");
    let status = server.wait_exit();
    assert_eq!(
        status.code(),
        Some(130),
        "exit code; log:\n{}",
        server.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exited at once, before the database lock timed out"
    );
    server.wait_log("second signal: exiting now");
    lock.execute_batch("ROLLBACK").unwrap();
}

// ---------------------------------------------------------------------------
// The admin listener

/// A blocking HTTP GET of `path`; the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to admin");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header end");
    assert!(head.contains(" 200 "), "GET {path}: {head}");
    body.to_owned()
}

/// True if `CI` is set: missing tools fail instead of skipping.
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty())
}

/// Skips (or, in CI, fails) a test whose tool is missing.
fn missing(tool: &str) -> bool {
    if in_ci() {
        panic!("{tool} is required in CI (.ci/run installs it)");
    }
    eprintln!("!!!!! SKIPPING: {tool} is not installed (CI installs it; see .ci/run) !!!!!");
    true
}

/// Parses an exposition with Python's `prometheus_client` (both its
/// OpenMetrics and its Prometheus text parser) and returns every sample
/// as `name{label="value",...}` → value. `None` if the parser is missing.
fn parse_metrics(text: &str) -> Option<HashMap<String, f64>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus
text = sys.stdin.read()
list(prometheus(text))
out = {}
for family in openmetrics(text):
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|status| status.success()) {
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("the parser's JSON"))
}

/// `/metrics` parses as Prometheus text, and its counters move by exactly
/// the traffic sent: 100 logins → logins +100, sessions accepted +100.
fn metrics_count_the_traffic(backend: Backend) {
    let server = Server::start(
        backend,
        &[
            "--addr",
            "127.0.0.1:0",
            "--db",
            ":memory:",
            "--admin",
            "127.0.0.1:0",
            // A hundred new accounts from one address.
            "--max-new-accounts-per-min",
            "0",
        ],
    );
    let admin = server.admin.unwrap();
    assert_eq!(http_get(admin, "/healthz"), "ok\n");
    let Some(before) = parse_metrics(&http_get(admin, "/metrics")) else {
        missing("python3 with prometheus_client");
        return;
    };
    let mut login_bytes = 0;
    for i in 0..100 {
        let mut client = GameClient::connect(server.addr);
        let account = format!("metrics{i}");
        login_bytes += make_packet(&CLogin {
            account: account.clone(),
        })
        .len();
        assert!(client.login(&account).success);
    }
    // Three packets whose size is below the header's: each disconnects.
    for _ in 0..3 {
        let mut client = GameClient::connect(server.addr);
        client.send_raw(&[2, 0, 0, 0]);
        client.expect_closed();
    }
    // Each client closed; wait until the server has seen every disconnect
    // (the send-queue gauge is a sample each worker takes every 100 ms).
    let deadline = Instant::now() + DEADLINE;
    let after = loop {
        let now = parse_metrics(&http_get(admin, "/metrics")).unwrap();
        let settled =
            now["servercore_sessions_active"] == 0.0 && now["servercore_send_queue_bytes"] == 0.0;
        if settled || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let reason = |name: &str| format!("servercore_disconnects_total{{reason=\"{name}\"}}");
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(delta("servercore_game_logins_total"), 100.0);
    assert_eq!(delta("servercore_game_logins_refused_total"), 0.0);
    assert_eq!(delta("servercore_sessions_accepted_total"), 103.0);
    assert_eq!(delta(&reason("malformed_packet")), 3.0);
    assert_eq!(delta(&reason("closed_by_peer")), 100.0);
    assert_eq!(delta("servercore_packets_in_total"), 100.0);
    assert_eq!(delta("servercore_packets_out_total"), 100.0);
    assert_eq!(
        delta("servercore_bytes_in_total"),
        (login_bytes + 3 * 4) as f64
    );
    assert_eq!(after["servercore_send_queue_bytes"], 0.0);
    assert_eq!(delta("servercore_sessions_refused_total"), 0.0);
    assert_eq!(delta("servercore_game_db_login_seconds_count"), 100.0);
    assert_eq!(
        after["servercore_game_db_login_seconds_bucket{le=\"+Inf\"}"],
        after["servercore_game_db_login_seconds_count"]
    );
    assert_eq!(after["servercore_sessions_active"], 0.0);
    assert_eq!(after["servercore_game_players_in_game"], 0.0);

    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status")).expect("/status is JSON");
    assert_eq!(status["server"], "game");
    assert_eq!(status["backend"], backend.name());
    assert_eq!(status["listen"], server.addr.to_string());
    // The game's own panels, in order: its figures, then the world map (no
    // zones: this node's world is its own).
    let panels = status["panels"].as_array().expect("panels");
    assert_eq!(panels.len(), 2, "{panels:?}");
    assert_eq!(panels[0]["kind"], "table");
    assert_eq!(panels[0]["title"], "Game");
    assert_eq!(panels[0]["rows"][0][0], "players in game");
    assert_eq!(panels[0]["rows"][0][1], "0");
    assert_eq!(panels[1]["kind"], "map");
    assert_eq!(panels[1]["title"], "World");
    assert_eq!(panels[1]["strips"].as_array().unwrap().len(), 0);
    server.terminate();
}

/// The chromium binary, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let output = Command::new("which").arg(name).output().ok()?;
            output
                .status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        })
}

/// Loads `url` in headless Chromium, lets its scripts run for a few
/// (virtual) seconds, and returns the DOM; with `screenshot`, saves a PNG.
fn render_page(chromium: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            "--virtual-time-budget=2500",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let mut child = command
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dom = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut dom)
        .unwrap();
    dom
}

/// The text of the element with id `id` in a dumped DOM.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let start = dom[at..].find('>').unwrap() + at + 1;
    let end = dom[start..].find('<').unwrap() + start;
    &dom[start..end]
}

/// The status page renders in a real headless Chromium, shows the live
/// session count, and the count follows clients connecting.
#[test]
#[cfg_attr(
    servercore_missing = "chromium",
    ignore = "needs Chromium (scripts/test-env installs it)"
)]
fn status_page_renders_live_counts_in_chromium() {
    let Some(chromium) = chromium() else {
        missing("chromium");
        return;
    };
    let server = Server::start(
        Backend::Poll,
        &[
            "--addr",
            "127.0.0.1:0",
            "--db",
            ":memory:",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let url = format!("http://{}/", server.admin.unwrap());
    let dom = render_page(&chromium, &url, None);
    assert_eq!(
        element_text(&dom, "state"),
        "live",
        "the page polled /status"
    );
    assert_eq!(element_text(&dom, "server-kind"), "game");
    assert_eq!(element_text(&dom, "sessions"), "0");

    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = GameClient::connect(server.addr);
        assert!(client.login(&format!("page{i}")).success);
        assert!(client.enter(0).success);
        clients.push(client);
    }
    let dom = render_page(&chromium, &url, None);
    assert_eq!(element_text(&dom, "sessions"), "3", "the count follows");
    assert!(
        dom.contains("servercore_game_logins_total"),
        "every metric listed"
    );
    assert!(
        dom.contains("<h2>World</h2>") && dom.contains("3 players"),
        "the game's map panel drawn with its note: {dom}"
    );
    assert!(
        dom.contains("<td>players in game</td><td>3</td>"),
        "the game's table panel"
    );

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("status.png");
    render_page(&chromium, &url, Some(&png));
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    if let Some(target) = std::env::var_os("SERVERCORE_SCREENSHOT") {
        std::fs::copy(&png, target).expect("copy the screenshot");
    }
    drop(clients);
    server.terminate();
}

// ---------------------------------------------------------------------------
// Configuration, limits, logs

/// `servercore` with `args`, a clean SERVERCORE_* environment plus `env`.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_servercore"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SERVERCORE_") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run servercore")
}

#[test]
fn config_file_is_overridden_by_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        "max-sessions = 123\nidle_timeout = 7\nmax-chat-len = 100\nbackend = \"poll\"\n\
         addr = \"127.0.0.1:7001\"\nlog-format = \"json\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let output = run_cli(
        &[
            "server",
            "--config",
            file,
            "--print-config",
            "--idle-timeout",
            "8",
        ],
        &[("SERVERCORE_MAX_CHAT_LEN", "50")],
    );
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in [
        "max-sessions = 123\n", // from the file
        "idle-timeout = 8\n",   // the flag beats the file
        "max-chat-len = 50\n",  // the environment beats the file
        "backend = \"poll\"\n", // from the file
        "addr = \"127.0.0.1:7001\"\n",
        "log-format = \"json\"\n",       // a global option from the file
        "db = \"servercore-game.db\"\n", // the default
        "# workers = (not set)\n",
    ] {
        assert!(printed.contains(line), "{line:?} in:\n{printed}");
    }

    // What --print-config prints reads back as the same configuration.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let output = run_cli(
        &[
            "server",
            "--config",
            again.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), printed);

    // The environment alone, no file.
    let output = run_cli(
        &["server", "--print-config"],
        &[
            ("SERVERCORE_MAX_SESSIONS", "77"),
            ("SERVERCORE_ADMIN", "127.0.0.1:9100"),
        ],
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("max-sessions = 77\n"), "{printed}");
    assert!(
        printed.contains("admin = \"127.0.0.1:9100\"\n"),
        "{printed}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("max-sesions = 5\n", "unknown key `max-sesions`"),
        (
            "max-sessions = \"lots\"\n",
            "key `max-sessions`: invalid value \"lots\"",
        ),
        (
            "backend = \"bogus\"\n",
            "key `backend`: invalid value \"bogus\"",
        ),
        (
            "idle-timeout = [1, 2]\n",
            "key `idle-timeout`: expected one value",
        ),
        ("max-sessions = \n", "not valid TOML"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let output = run_cli(&["server", "--config", file.to_str().unwrap()], &[]);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(expected), "{text:?}: {stderr}");
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "names the file: {stderr}"
        );
    }
    // A bad value in the environment is clap's error naming the flag.
    let output = run_cli(
        &["server", "--print-config"],
        &[("SERVERCORE_MAX_SESSIONS", "x")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-sessions"));
}

/// Runs `servercore server` under `ulimit` settings (a shell prefix).
fn run_under_ulimit(ulimit: &str, max_sessions: &str) -> std::process::Output {
    let script = format!(
        "{ulimit}; exec \"$0\" server --addr 127.0.0.1:0 --db :memory: --workers 2 \
         --backend poll --max-sessions {max_sessions}"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_servercore")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    // A server that started prints its banner; stop it then.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    let _ = stdout.read_line(&mut banner);
    if banner.starts_with("game server listening") {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let mut output = child.wait_with_output().unwrap();
    output.stdout = format!("{banner}{rest}").into_bytes();
    output
}

#[test]
fn open_file_limit_is_raised_and_checked() {
    // Hard limit 256: 1000 sessions cannot fit, the server refuses.
    let output = run_under_ulimit("ulimit -n 256", "1000");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-sessions 1000 needs up to") && stderr.contains("limit is 256"),
        "{stderr}"
    );
    // Within the limit it starts.
    let output = run_under_ulimit("ulimit -n 256", "100");
    assert!(output.status.success(), "{output:?}");
    // Only the soft limit low: raised to the hard one, so it starts.
    let hard = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -H -n"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let hard: u64 = hard.trim().parse().unwrap_or(u64::MAX);
    if hard >= 2000 {
        let output = run_under_ulimit("ulimit -S -n 256", "1000");
        assert!(output.status.success(), "{output:?}");
    }
}

#[test]
fn json_logs_one_object_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_servercore"))
        .args([
            "--log-format",
            "json",
            "server",
            "--addr",
            "127.0.0.1:0",
            "--db",
            ":memory:",
            "--backend",
            "poll",
            "--workers",
            "1",
        ])
        .env_remove("SERVERCORE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("game server listening"), "{banner}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let started = events
        .iter()
        .find(|event| event["message"] == "game server started")
        .unwrap_or_else(|| panic!("a start event in {stderr}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["backend"], "poll");
    assert_eq!(started["max_sessions"], 10_000);
    assert!(started["open_files_limit"].as_u64().unwrap() > 0);
    assert!(
        events
            .iter()
            .any(|event| event["message"] == "game server stopped"),
        "a stop event with totals in {stderr}"
    );
}

#[test]
fn deploy_example_config_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/server.toml");
    let output = run_cli(&["server", "--config", file, "--print-config"], &[]);
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("admin = \"127.0.0.1:9100\"\n"),
        "{printed}"
    );
    assert!(printed.contains("max-sessions = 50000\n"), "{printed}");
}

/// Starts `servercore args`, waits for a stdout line starting with
/// `ready`, sends SIGTERM, and returns (exit status, all stdout).
fn sigterm_after(args: &[&str], ready: &str) -> (ExitStatus, String) {
    let mut process = ChildProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_servercore"))
            .args(args)
            .env_remove("SERVERCORE_LOG"),
    );
    let mut seen = String::new();
    loop {
        let line = process
            .try_next_line(DEADLINE)
            .unwrap_or_else(|| panic!("no {ready:?} line from {args:?}; got:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with(ready) {
            break;
        }
    }
    process.signal("TERM");
    let status = process.wait_exit(DEADLINE);
    while let Some(line) = process.try_next_line(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    (status, seen)
}

/// `echo`, `hello`, `demo` and `bench` stop on SIGTERM with their report
/// and exit 0 (`server` is covered above, `client` shares `demo`'s load
/// loop).
#[test]
fn other_commands_stop_gracefully_on_sigterm() {
    // An echo server for hello, stopped after it.
    let (mut echo, ready) = ChildProcess::spawn_ready(
        Command::new(env!("CARGO_BIN_EXE_servercore")).args([
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--backend",
            "poll",
            "--workers",
            "1",
        ]),
        DEADLINE,
    );
    assert_eq!(ready.kind, "echo");
    let addr = ready.addr.to_string();

    let (status, out) = sigterm_after(
        &["hello", "--addr", &addr, "--backend", "poll"],
        "OnRecv Len = 12",
    );
    assert!(status.success(), "hello: {status}\n{out}");
    assert!(out.contains("hello: 1 connected, 0 failed"), "{out}");

    echo.signal("TERM");
    let last = echo.line_starting("stopped: ", DEADLINE);
    assert!(echo.wait_exit(DEADLINE).success());
    assert_eq!(last, "stopped: 1 sessions served, 0 refused");

    let (status, out) = sigterm_after(
        &[
            "demo",
            "--seconds",
            "60",
            "--clients",
            "10",
            "--no-progress",
            "--backend",
            "poll",
        ],
        "demo: game server on",
    );
    assert!(status.success(), "demo: {status}\n{out}");
    assert!(out.contains("server: "), "the demo's report: {out}");

    // bench finishes the measurement running, skips the rest, reports.
    let (status, out) = sigterm_after(
        &[
            "bench",
            "echo",
            "broadcast",
            "--quick",
            "--backends",
            "poll",
            "--echo-clients",
            "10",
        ],
        "implementations",
    );
    assert!(status.success(), "bench: {status}\n{out}");
    assert!(
        out.contains("stopped by a signal: "),
        "the bench's report: {out}"
    );
}
