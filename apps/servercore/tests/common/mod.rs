//! What the command's integration tests share: one test per backend.

/// Generates `name::poll` and `name::uring` tests for `fn name(Backend)`;
/// the io_uring one is skipped with a message where the kernel forbids
/// io_uring, unless SERVERCORE_REQUIRE_URING is set. Attributes before a
/// name go on both tests (a test that needs an outside tool carries
/// `#[cfg_attr(servercore_missing = "TOOL", ignore = "needs TOOL ...")]`,
/// see `scripts/test_probe.rs`).
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$meta])*
                fn poll() {
                    super::$name(servercore::Backend::Poll);
                }

                #[test]
                $(#[$meta])*
                fn uring() {
                    if let Some(reason) = servercore::driver::uring_unavailable_reason() {
                        if std::env::var_os("SERVERCORE_REQUIRE_URING").is_some() {
                            panic!("io_uring required but unavailable: {reason}");
                        }
                        eprintln!("skipping io_uring test: {reason}");
                        return;
                    }
                    super::$name(servercore::Backend::IoUring);
                }
            }
        )*
    };
}

/// A `servercore` child process whose stdout lines a test reads one by one
/// and whose stderr is kept as its log; killed on drop if still running,
/// with the log printed when the test failed. Not every test file uses
/// every method.
#[allow(dead_code)]
pub struct ChildProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

#[allow(dead_code)]
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        ChildProcess { child, lines, log }
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

    /// Waits for the process to end, within `within`.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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
