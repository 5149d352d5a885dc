//! What the real binary exposes, and to whom.
//!
//! No credentials in output: `--print-config`, the start-up errors, and
//! every log line of a node that joins a cluster through a NATS URL with a
//! user and password, at `debug` level (the libraries' own lines
//! included). The forms: a NATS URL's user and password, a PostgreSQL
//! password in the authority and as `?password=`, an `@` inside a password.
//!
//! The admin listener: an address that is not loopback is refused unless
//! `--admin-public` is given.

use std::process::Command;
use std::time::Duration;

use servercore_testkit::child::ChildProcess;
use servercore_testkit::services::NatsServer;

/// Every secret the tests put in a URL; none may appear in any output.
const SECRETS: &[&str] = &[
    "n4tsPw",
    "n4tsUser",
    "pgS3cret",
    "qS3cret",
    "p@ssw0rd",
    "p%40ssw0rd",
];

fn servercore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_servercore"))
}

#[track_caller]
fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

fn print_config(db: &str, nats: &str) -> String {
    let output = servercore()
        .args(["server", "--print-config", "--node", "a"])
        .args(["--db", db, "--nats", nats])
        .output()
        .expect("run servercore");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn print_config_redacts_every_form() {
    let forms = [
        (
            "postgres://game:pgS3cret@db:5432/game",
            "nats://n4tsUser:n4tsPw@127.0.0.1:4222",
            "db = \"postgres://game:***@db:5432/game\"",
            "nats = \"nats://***@127.0.0.1:4222\"",
        ),
        (
            "postgres://game@db/game?password=qS3cret&sslmode=disable",
            "n4tsUser:n4tsPw@127.0.0.1:4222",
            "db = \"postgres://game@db/game?password=***&sslmode=disable\"",
            "nats = \"***@127.0.0.1:4222\"",
        ),
        (
            "postgres://game:p@ssw0rd@db/game",
            "nats://n4tsUser:p%40ssw0rd@127.0.0.1:4222",
            "db = \"postgres://game:***@db/game\"",
            "nats = \"nats://***@127.0.0.1:4222\"",
        ),
    ];
    for (db, nats, db_line, nats_line) in forms {
        let printed = print_config(db, nats);
        assert_clean("--print-config", &printed);
        assert!(printed.contains(db_line), "{db_line} in:\n{printed}");
        assert!(printed.contains(nats_line), "{nats_line} in:\n{printed}");
    }
    // What has no credentials is printed as given.
    let plain = print_config("saves/game.db", "nats://127.0.0.1:4222");
    assert!(plain.contains("db = \"saves/game.db\""), "{plain}");
    assert!(
        plain.contains("nats = \"nats://127.0.0.1:4222\""),
        "{plain}"
    );
}

#[test]
fn start_errors_redact_the_urls() {
    let cases = [
        // Nothing listens there: the connection error names the database.
        vec!["--db", "postgres://game:pgS3cret@127.0.0.1:1/game"],
        vec!["--db", "postgres://game:p@ssw0rd@127.0.0.1:1/game"],
        // A malformed NATS URL.
        vec![
            "--db",
            ":memory:",
            "--nats",
            "nats://n4tsUser:n4tsPw@bad host:4222",
            "--node",
            "a",
        ],
    ];
    for args in cases {
        let output = servercore()
            .args(["--log", "debug", "server", "--addr", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run servercore");
        assert!(!output.status.success(), "{args:?} should fail: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_clean(&format!("the error of {args:?}"), &stderr);
        assert_clean(&format!("the output of {args:?}"), &stdout);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
#[cfg_attr(
    servercore_missing = "nats_server",
    ignore = "needs nats-server on PATH (scripts/test-env installs it)"
)]
fn a_cluster_node_logs_no_credentials() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    // The test's nats-server takes any credentials.
    let url = format!("nats://n4tsUser:n4tsPw@127.0.0.1:{}", nats.port);
    let mut node = ChildProcess::spawn(
        servercore()
            .args(["--log", "debug", "server", "--addr", "127.0.0.1:0"])
            .args(["--db", ":memory:", "--workers", "1"])
            .args(["--nats", &url, "--node", "redacted"])
            .args(["--heartbeat-ms", "100", "--node-timeout-ms", "1000"]),
    );
    let banner = node.next_line("the banner", Duration::from_secs(20));
    assert!(banner.starts_with("game server listening on"), "{banner}");
    let cluster = node.next_line("the cluster line", Duration::from_secs(5));
    assert_clean("stdout", &cluster);
    assert!(
        cluster.contains("nats://***@127.0.0.1"),
        "the cluster line names the server: {cluster}"
    );
    // Connected, a few heartbeats, then a clean stop.
    assert!(
        servercore_testkit::net::wait_until(Duration::from_secs(10), || node
            .log()
            .contains("joined the cluster")),
        "the node did not join: {}",
        node.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    while let Some(line) = node.try_next_line(Duration::from_millis(100)) {
        assert_clean("stdout", &line);
    }
    let log = node.log();
    assert!(log.contains("nats://***@127.0.0.1"), "{log}");
    assert_clean("the log", &log);
}

#[test]
fn a_public_admin_address_needs_admin_public() {
    for command in [
        vec!["server", "--db", ":memory:", "--addr", "127.0.0.1:0"],
        vec!["echo", "--addr", "127.0.0.1:0"],
    ] {
        let output = servercore()
            .args(&command)
            .args(["--admin", "0.0.0.0:0"])
            .output()
            .expect("run servercore");
        assert!(!output.status.success(), "{command:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot listen for admin HTTP on 0.0.0.0:0: not a loopback address")
                && stderr.contains("pass --admin-public"),
            "{command:?}: {stderr}"
        );
    }
    // The flag means nothing without --admin.
    let output = servercore()
        .args(["server", "--admin-public", "--print-config"])
        .output()
        .expect("run servercore");
    assert!(!output.status.success(), "{output:?}");
}
