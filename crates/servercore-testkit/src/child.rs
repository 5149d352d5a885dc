//! A `servercore` child process for the command's tests, and the ready
//! file it writes once it listens (`--ready-file`, see the CLI's `ready`
//! module for the format).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// What a child server's ready file says.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// `game` or `echo`.
    pub kind: String,
    /// Its process id.
    pub pid: u32,
    /// The I/O backend in use (`uring` or `poll`).
    pub backend: String,
    /// The main TCP listener.
    pub addr: SocketAddr,
    /// The WebSocket listener, if any.
    pub ws: Option<SocketAddr>,
    /// The QUIC (UDP) listener, if any.
    pub quic: Option<SocketAddr>,
    /// The admin HTTP listener, if any.
    pub admin: Option<SocketAddr>,
}

/// A `servercore` child process whose stdout lines a test reads one by one
/// and whose stderr is kept as its log; killed on drop if still running,
/// with the log printed when the test failed. Not every test file uses
/// every method.
pub struct ChildProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Disconnects once the stderr reader has read to the end (the
    /// process exited and its last line is in `log`).
    log_complete: std::sync::mpsc::Receiver<()>,
    /// Holds the ready file of [`ChildProcess::spawn_ready`].
    _ready_dir: Option<tempfile::TempDir>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout and stderr read by
    /// threads of their own.
    pub fn spawn(command: &mut std::process::Command) -> ChildProcess {
        use std::io::{BufRead as _, BufReader};
        use std::process::Stdio;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn servercore");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&log);
        let (log_done, log_complete) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _log_done = log_done;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        ChildProcess {
            child,
            lines,
            log,
            log_complete,
            _ready_dir: None,
        }
    }

    /// Spawns a `server` or `echo` command with `--ready-file` added at the
    /// end and waits (up to `within`) until the file says where it
    /// listens. Panics, with the child's log, if it exits first.
    pub fn spawn_ready(
        command: &mut std::process::Command,
        within: Duration,
    ) -> (ChildProcess, Ready) {
        let dir = tempfile::tempdir().expect("a folder for the ready file");
        let path = dir.path().join("ready.json");
        let mut process = ChildProcess::spawn(command.arg("--ready-file").arg(&path));
        process._ready_dir = Some(dir);
        let deadline = std::time::Instant::now() + within;
        loop {
            // The file appears whole (renamed into place).
            if let Ok(text) = std::fs::read_to_string(&path) {
                let ready: Ready = serde_json::from_str(&text).unwrap_or_else(|error| {
                    panic!("a ready file that does not parse ({error}): {text}")
                });
                assert_eq!(ready.pid, process.pid(), "the ready file names its process");
                return (process, ready);
            }
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "the process exited with {status} before it was ready; its log:\n{}",
                    process.log()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process was not ready within {within:?}; its log:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The next stdout line within `within`, if one comes (None also once
    /// stdout has ended).
    pub fn try_next_line(&mut self, within: std::time::Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The next stdout line (`what` names it in the failure).
    pub fn next_line(&mut self, what: &str, within: std::time::Duration) -> String {
        match self.try_next_line(within) {
            Some(line) => line,
            None => panic!(
                "no {what} from the process within {within:?}; its log:\n{}",
                self.log()
            ),
        }
    }

    /// The first stdout line from now on that starts with `prefix`
    /// (earlier lines, such as the human banner, are skipped), within
    /// `within` in all.
    pub fn line_starting(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.try_next_line(left) {
                Some(line) if line.starts_with(prefix) => return line,
                Some(_) => continue,
                None => panic!(
                    "no line starting with {prefix:?} from the process within {within:?}; its log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// The stderr so far (a copy: no lock is held while a panic formats).
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`INT`, `TERM`, `KILL`, ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to end, within `within`; by then its whole
    /// log has been read.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader may still be behind the exit: wait for the end
                // of the pipe (bounded, in case a grandchild holds it).
                let _ = self.log_complete.recv_timeout(Duration::from_secs(2));
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the process did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("process log:\n{}", self.log());
        }
    }
}
