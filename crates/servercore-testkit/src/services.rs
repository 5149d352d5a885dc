//! The real services the storage and cluster tests need: the shared
//! PostgreSQL and NATS that CI starts (`SERVERCORE_TEST_POSTGRES`,
//! `SERVERCORE_TEST_NATS`), and private instances (own ports, own data
//! directories) for the tests that stop or kill them.
//!
//! A test whose service is missing skips with a loud message locally and
//! fails when `CI` (or `SERVERCORE_REQUIRE_SERVICES`, which `.ci/run` sets)
//! is set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::net::{free_port, wait_listening};

/// Says why a test cannot run: panics under CI, else prints and returns.
pub fn missing(what: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os("SERVERCORE_REQUIRE_SERVICES").is_some()
    {
        panic!("{what} is required under CI");
    }
    eprintln!("!!! SKIPPED: {what} is not available (set it up as .ci/run does)");
}

fn on_path(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The shared NATS server's URL, if configured.
pub fn shared_nats() -> Option<String> {
    let url = std::env::var("SERVERCORE_TEST_NATS").ok();
    if url.is_none() {
        missing("SERVERCORE_TEST_NATS (a nats-server URL)");
    }
    url
}

/// A private nats-server on its own port, killed on drop.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one, or says why it cannot (None).
    pub fn start() -> Option<NatsServer> {
        if !on_path("nats-server") {
            missing("the nats-server binary");
            return None;
        }
        let mut server = NatsServer {
            port: free_port(),
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// nats://127.0.0.1:PORT
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        assert!(
            wait_listening(self.port, Duration::from_secs(10)),
            "nats-server did not listen on {}",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{db}?{query}"),
        None => format!("{base}/{db}"),
    }
}

/// A new, empty database on the shared PostgreSQL server (one per test,
/// so tests in parallel never see each other's rows), or None (skipped).
pub fn fresh_postgres() -> Option<String> {
    let Ok(url) = std::env::var("SERVERCORE_TEST_POSTGRES") else {
        missing("SERVERCORE_TEST_POSTGRES (a postgres:// URL)");
        return None;
    };
    let name = format!(
        "servercore_t{}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut admin = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|error| panic!("SERVERCORE_TEST_POSTGRES={url} does not answer: {error}"));
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    Some(with_database(&url, &name))
}

/// A private PostgreSQL cluster in a temporary directory on its own port,
/// stopped and removed on drop. Run as the `postgres` user when the tests
/// run as root (PostgreSQL refuses root).
pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

impl PostgresServer {
    /// Creates and starts one, or says why it cannot (None).
    pub fn start() -> Option<PostgresServer> {
        let Some(bin) = postgres_bin() else {
            missing("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "servercore-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut server = PostgresServer {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        let data = server.dir.join("data");
        server.run_pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        );
        server.resume();
        Some(server)
    }

    fn run_pg(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let output = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        }
        .unwrap_or_else(|error| panic!("{}: {error}", program.display()));
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// postgres://postgres@127.0.0.1:PORT/postgres
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// Stops it (fast shutdown: connections are closed).
    pub fn stop(&mut self) {
        if self.running {
            self.run_pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Starts it (again), waiting until it accepts connections.
    pub fn resume(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        self.running = true;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
