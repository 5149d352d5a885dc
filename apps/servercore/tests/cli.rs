//! What a newcomer meets first, through the real binary: a port in use
//! fails the command before any banner says it is listening, and a bad
//! `--db` names its cause. Every test runs on both backends and is bounded
//! by deadlines.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use servercore::Backend;

mod common;
use common::ChildProcess;

backend_tests!(
    admin_port_in_use_fails_before_the_banner,
    db_that_is_a_directory_says_so,
    unreachable_postgres_says_connection_refused,
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
    let (status, stdout, stderr) = server_exit(backend, &["--db", path]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
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
    let (status, stdout, stderr) = server_exit(backend, &["--db", &url]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        error.to_lowercase().contains("connection refused"),
        "the cause is named: {error}"
    );
    assert!(!error.contains("nobody:"), "no password shown: {error}");
}
