//! The benchmark harness's plumbing, cheaply: the `bench-server` process
//! contract (address on the first line, `sessions` queries, exit at the end
//! of stdin) and a tiny `bench` run end to end through its JSON output, its
//! chart and `--replay`.
//! Nothing here times anything; the real runs are `servercore bench`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_servercore");

/// Runs `servercore bench ARGS --json JSON` (stdin closed), killed past
/// `within`; returns its stdout, or panics with both outputs when it fails.
fn run_bench(args: &[&str], json: &std::path::Path, within: Duration) -> String {
    let mut child = Command::new(EXE)
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bench runs");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench {args:?} ran past {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "bench {args:?} failed: {stdout}\n{stderr}"
    );
    stdout
}

fn ask(stdin: &mut impl Write, stdout: &mut impl BufRead, line: &str) -> String {
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let mut answer = String::new();
    stdout.read_line(&mut answer).unwrap();
    answer.trim_end().to_string()
}

fn bench_server_contract(implementation: &str) {
    let mut child = Command::new(EXE)
        .args([
            "bench-server",
            "--impl",
            implementation,
            "--scenario",
            "echo",
        ])
        .args(["--addr", "127.0.0.1:0", "--workers", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bench-server starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));

    assert_eq!(ask(&mut stdin, &mut stdout, "sessions"), "sessions 0");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = ask(&mut stdin, &mut stdout, "sessions");
        if answer == "sessions 1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server never counted the session: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ask(&mut stdin, &mut stdout, "what").starts_with("error"));

    drop(stream);
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "bench-server exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bench-server did not exit when its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bench_server_contract_tokio() {
    bench_server_contract("tokio");
}

#[test]
fn bench_server_contract_engine_poll() {
    bench_server_contract("poll");
}

#[test]
fn tiny_bench_run_writes_json_and_tables() {
    let dir = std::env::temp_dir().join(format!("servercore-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let chart = dir.join("chart.svg");
    let output = Command::new(EXE)
        .args([
            "bench",
            "echo",
            "--backends",
            "poll,tokio",
            "--workers",
            "1",
        ])
        .args([
            "--duration",
            "0.2",
            "--warmup",
            "0.05",
            "--echo-clients",
            "1,2",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--chart")
        .arg(&chart)
        .stdin(Stdio::null())
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("echo: 2 clients"), "{stdout}");
    assert!(stdout.contains("server CPU/request"), "{stdout}");
    assert!(
        stdout.contains('×'),
        "a ratio against tokio is shown: {stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let echo = report["echo"].as_array().unwrap();
    assert_eq!(echo.len(), 4, "two client counts on two implementations");
    for result in echo {
        assert!(result["requests"].as_u64().unwrap() > 0, "{result}");
        assert!(
            result["latency"]["p99_us"].as_u64().unwrap() > 0,
            "{result}"
        );
    }
    assert_eq!(
        report["settings"]["implementations"],
        serde_json::json!(["poll", "tokio"])
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "an SVG chart");

    // The saved report shows the same tables again without measuring.
    let replay = Command::new(EXE)
        .args(["bench", "--replay"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("bench --replay runs");
    let replayed = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{replayed}");
    assert!(replayed.contains("echo: 2 clients"), "{replayed}");
    assert!(
        replayed.contains("targets (reported, not asserted)"),
        "{replayed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench move --quick` end to end on the poll backend and tokio: a move
/// measurement and a capacity sweep per server, their tables, and the same
/// numbers in the JSON.
#[test]
fn quick_move_bench_measures_and_sweeps_each_server() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("move.json");
    let stdout = run_bench(
        &[
            "move",
            "--quick",
            "--backends",
            "poll,tokio",
            "--workers",
            "1",
            "--move-players",
            "60",
            "--capacity-steps",
            "30,60",
        ],
        &json,
        Duration::from_secs(120),
    );
    for needle in [
        "move: 60 players",
        "server CPU/delivery",
        "own-move p99",
        "move capacity",
        "capacity (players)",
        "writes/delivery",
        "every server sends once per 50 ms tick",
        "move: server CPU/delivery ≤ 0.6× tokio at the same tick",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let moves = report["moves"].as_array().unwrap();
    let names: Vec<&str> = moves
        .iter()
        .map(|m| m["implementation"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["poll", "tokio"], "{report:#}");
    for result in moves {
        assert_eq!(result["players"], 60, "{result}");
        assert_eq!(result["entered"], 60, "{result}");
        assert_eq!(result["errors_total"], 0, "{result}");
        assert!(result["deliveries"].as_u64().unwrap() > 0, "{result}");
        assert!(result["latency"]["count"].as_u64().unwrap() > 0, "{result}");
        assert!(result["server_cpu_seconds"].as_f64().is_some(), "{result}");
        // Both servers count their writes: about one per player per tick,
        // each carrying several deliveries.
        let writes = result["writes_per_delivery"].as_f64().unwrap();
        assert!(writes > 0.0 && writes < 1.0, "{result}");
    }
    let capacity = report["capacity"].as_array().unwrap();
    assert_eq!(capacity.len(), 2, "{report:#}");
    for sweep in capacity {
        let steps = sweep["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{sweep}");
        assert_eq!(steps[0]["players"], 30, "{sweep}");
    }
    assert_eq!(
        report["settings"]["moves"]["variants"],
        serde_json::json!(["poll", "tokio"])
    );
    assert_eq!(report["settings"]["moves"]["tick_ms"], 50.0);
}

/// `bench echo move --transports quic --quick`: the engine's servers with
/// their QUIC listener against the tokio + quinn baseline, the load over
/// QUIC (the move clients' moves as datagrams): a row per server and
/// client count, each with deliveries and without errors.
#[test]
fn quick_quic_bench_runs_echo_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("quic.json");
    let stdout = run_bench(
        &[
            "echo",
            "move",
            "--transports",
            "quic",
            "--quick",
            "--backends",
            "poll,tokio",
            "--workers",
            "1",
            "--echo-clients",
            "2,4",
            "--move-players",
            "40",
            "--capacity-steps",
            "40",
        ],
        &json,
        Duration::from_secs(120),
    );
    for needle in [
        "servercore bench over quic (baseline: tokio + quinn)",
        "echo: 4 clients",
        "move: 40 players",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["settings"]["transport"], "quic", "{report:#}");
    assert_eq!(
        report["settings"]["scenarios"],
        serde_json::json!(["echo", "move"])
    );
    let echo = report["echo"].as_array().unwrap();
    let rows: Vec<(&str, u64)> = echo
        .iter()
        .map(|e| {
            (
                e["implementation"].as_str().unwrap(),
                e["clients"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("poll", 2), ("poll", 4), ("tokio", 2), ("tokio", 4)],
        "{report:#}"
    );
    for result in echo {
        assert!(result["requests"].as_u64().unwrap() > 0, "{result}");
        assert_eq!(result["errors"], serde_json::json!([]), "{result}");
    }
    let moves = report["moves"].as_array().unwrap();
    let names: Vec<&str> = moves
        .iter()
        .map(|m| m["implementation"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["poll", "tokio"], "{report:#}");
    for result in moves {
        assert_eq!(result["entered"], 40, "{result}");
        assert_eq!(result["errors_total"], 0, "{result}");
        assert!(result["deliveries"].as_u64().unwrap() > 0, "{result}");
        assert!(result["own_moves"].as_u64().unwrap() > 0, "{result}");
        // Both servers send the moves as datagrams.
        assert!(
            result["moves_by_datagram"].as_u64().unwrap() > 0,
            "{result}"
        );
    }
}

/// `bench move --crowd N`: everyone in one cell on both servers, no sweep.
#[test]
fn quick_crowd_bench_measures_both_servers() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("crowd.json");
    let stdout = run_bench(
        &[
            "move",
            "--quick",
            "--backends",
            "poll,tokio",
            "--workers",
            "1",
            "--crowd",
            "40",
            "--tick-ms",
            "100",
        ],
        &json,
        Duration::from_secs(120),
    );
    assert!(
        stdout.contains("a crowd: a world of one 100 × 100 cell"),
        "{stdout}"
    );
    assert!(stdout.contains("once per 100 ms tick"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let moves = report["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 2, "{report:#}");
    for result in moves {
        assert_eq!(result["players"], 40, "{result}");
        assert_eq!(result["entered"], 40, "{result}");
        assert_eq!(result["world_size"], 100.0, "{result}");
        // Everyone sees everyone: spawned every other one.
        assert!(result["deliveries"].as_u64().unwrap() > 0, "{result}");
        assert!(result["server_rss_kib"].as_u64().unwrap() > 0, "{result}");
    }
    assert!(
        report["capacity"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

/// `bench soak` in a few seconds: the table, the JSON series with the
/// baseline and the after-sample, and a passing verdict (sessions and
/// descriptors back to the baseline, no server error). Only the checks the
/// soak itself makes are asserted; no number is judged here.
#[test]
fn short_soak_passes_and_writes_its_series() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let stdout = run_bench(
        &[
            "soak",
            "--minutes",
            "0.1",
            "--soak-clients",
            "30",
            "--backends",
            "poll",
            "--workers",
            "1",
        ],
        &json,
        Duration::from_secs(120),
    );
    assert!(stdout.contains("soak passed"), "{stdout}");
    assert!(stdout.contains("RSS MiB"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.first().unwrap()["phase"], "baseline");
    assert_eq!(samples.last().unwrap()["phase"], "after");
    assert_eq!(
        samples.first().unwrap()["fds"],
        samples.last().unwrap()["fds"]
    );
    assert_eq!(samples.last().unwrap()["sessions"], 0);
    assert!(samples.iter().any(|s| s["phase"] == "load"));
    // The clients walked, and the allocator was sampled and trimmed.
    assert!(samples.last().unwrap()["moves"].as_u64().unwrap() > 0);
    assert!(samples.iter().all(|s| s["heap_in_use_kib"].is_u64()));
    assert!(report["rss_trimmed_kib"].as_u64().unwrap() > 0);
    assert!(stdout.contains(" trimmed "), "{stdout}");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert_eq!(report["backend"], "poll");
}

/// `bench zones --quick --zone-nodes 1,2` end to end on one backend: its
/// own nats-server and nodes, the players walking one world on one node
/// and on two, a row per node count in the table and the JSON, deliveries
/// on both, players handed over between the two nodes, no errors.
fn quick_zones_bench_measures_one_and_two_nodes(backend: servercore::Backend) {
    // The two backends take turns: each run is five processes on loopback.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("zones.json");
    let stdout = run_bench(
        &[
            "zones",
            "--quick",
            "--zone-nodes",
            "1,2",
            "--backends",
            backend.name(),
            "--workers",
            "1",
        ],
        &json,
        Duration::from_secs(180),
    );
    for needle in [
        &format!("zones on {}: 100 players", backend.name()),
        "1 node",
        "2 nodes",
        "server CPU/delivery (all nodes)",
        "node 2 CPU/own delivery",
        "NATS msgs in/tick",
        "NATS bytes out/tick",
        "cross-border move p99 (sampled)",
        "transfers/s",
        "transfer p99",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let zones = report["zones"].as_array().unwrap();
    let nodes: Vec<u64> = zones.iter().map(|z| z["nodes"].as_u64().unwrap()).collect();
    assert_eq!(nodes, [1, 2], "a row per node count: {report:#}");
    for result in zones {
        assert_eq!(result["implementation"], backend.name(), "{result}");
        assert_eq!(result["entered"], 100, "{result}");
        assert_eq!(result["errors_total"], 0, "{result}");
        assert_eq!(result["transfer_errors"], 0, "{result}");
        assert!(result["deliveries"].as_u64().unwrap() > 0, "{result}");
        assert!(
            result["own_move"]["count"].as_u64().unwrap() > 0,
            "{result}"
        );
        let per_node = result["node_deliveries"].as_array().unwrap();
        assert_eq!(per_node.len() as u64, result["nodes"].as_u64().unwrap());
        assert!(
            per_node.iter().all(|d| d.as_u64().unwrap_or(0) > 0),
            "every node delivered: {result}"
        );
        assert!(
            result["nats_in_msgs_per_tick"].as_f64().is_some(),
            "{result}"
        );
    }
    let (one, two) = (&zones[0], &zones[1]);
    assert_eq!(one["errors_total"], 0, "no hand-over on one node: {one}");
    assert_eq!(one["transfers"], 0, "one node hands nobody over: {one}");
    assert!(two["transfers"].as_u64().unwrap() > 0, "{two}");
    assert!(two["transfer_time"]["count"].as_u64().unwrap() > 0, "{two}");
    // Two nodes send each other their border cells every tick.
    assert!(
        two["nats_in_msgs_per_tick"].as_f64().unwrap()
            > one["nats_in_msgs_per_tick"].as_f64().unwrap(),
        "{report:#}"
    );
    assert_eq!(
        report["settings"]["zones"]["node_counts"],
        serde_json::json!([1, 2])
    );
}

servercore_testkit::backend_tests!(
    #[cfg_attr(
        servercore_missing = "nats_server",
        ignore = "needs nats-server on PATH (scripts/test-env installs it)"
    )]
    quick_zones_bench_measures_one_and_two_nodes,
);
