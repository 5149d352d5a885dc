//! The harness's handle on a `servercore bench-server` child process:
//! starting it, learning its address, asking its session count, reading its
//! CPU time and memory from `/proc`, and stopping it. The child's stderr is
//! shown above the progress bar and kept for the report.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;

use super::progress::Progress;
use super::{procfs, ChatServer, Impl, Scenario, Transport};

/// A running benchmark server process.
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
    label: String,
}

/// Which benchmark server to start, and how.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub implementation: Impl,
    pub scenario: Scenario,
    pub workers: Option<usize>,
    pub max_sessions: usize,
    pub chat: ChatServer,
    pub send_coalescing: Option<Duration>,
    pub transport: Transport,
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The game's world tick and the tokio writers' wait.
    pub tick: Option<Duration>,
    /// The tokio writers' wait, where it differs from `tick`.
    pub tokio_tick: Option<Duration>,
    /// The move scenario's world side.
    pub world_size: Option<f32>,
    /// Pin the server to this CPU.
    pub pin_cpu: Option<usize>,
}

impl ServerProcess {
    /// Starts `servercore bench-server` as `spec` says and waits for its
    /// address.
    pub fn spawn(spec: &ServerSpec, progress: &Progress) -> anyhow::Result<ServerProcess> {
        let ServerSpec {
            implementation,
            scenario,
            workers,
            max_sessions,
            chat,
            send_coalescing,
            transport,
            ref cert,
            tick,
            tokio_tick,
            world_size,
            pin_cpu,
        } = *spec;
        let exe = own_executable()?;
        let mut command = Command::new(exe);
        command
            .arg("bench-server")
            .args(["--impl", implementation.name()])
            .args(["--scenario", scenario.name()])
            .args(["--addr", "127.0.0.1:0"])
            .args(["--max-sessions", &max_sessions.to_string()])
            .args(["--chat", chat.name()])
            .args(["--transport", transport.name()]);
        if let Some((cert, key)) = cert {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        if let Some(workers) = workers {
            command.args(["--workers", &workers.to_string()]);
        }
        if let Some(interval) = send_coalescing {
            command.args(["--coalesce-ms", &interval.as_millis().to_string()]);
        }
        if let Some(tick) = tick {
            command.args(["--tick-ms", &tick.as_millis().to_string()]);
        }
        if let Some(tick) = tokio_tick {
            command.args(["--tokio-tick-ms", &tick.as_millis().to_string()]);
        }
        if let Some(size) = world_size {
            command.args(["--world-size", &size.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the bench-server process")?;
        if let Some(cpu) = pin_cpu {
            procfs::pin(child.id(), &[cpu])
                .with_context(|| format!("pinning the server to CPU {cpu}"))?;
        }
        let label = format!("{} {} server", implementation.name(), scenario.name());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = child.stderr.take().map(|pipe| {
            let lines = stderr.clone();
            let progress = progress.clone();
            let label = label.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    progress.eprintln(&format!("  [{label}] {line}"));
                    lines.lock().push(line);
                }
            })
        });
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut process = ServerProcess {
            child,
            stdin,
            stdout,
            stderr,
            stderr_thread,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            label,
        };
        let first = process.read_line()?;
        process.addr = parse_listening_line(&first).with_context(|| {
            format!("{}: no address in its first line {first:?}", process.label)
        })?;
        Ok(process)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        procfs::rss_kib(self.pid())
    }

    /// Connections the server holds now.
    pub fn sessions(&mut self) -> anyhow::Result<usize> {
        let stdin = self.stdin.as_mut().context("server stdin closed")?;
        writeln!(stdin, "sessions")?;
        stdin.flush()?;
        let line = self.read_line()?;
        line.strip_prefix("sessions ")
            .and_then(|count| count.trim().parse().ok())
            .with_context(|| format!("{}: unexpected answer {line:?}", self.label))
    }

    /// Gathered socket writes the server made so far (`None`: it does not
    /// count them).
    pub fn writes(&mut self) -> anyhow::Result<Option<u64>> {
        let stdin = self.stdin.as_mut().context("server stdin closed")?;
        writeln!(stdin, "writes")?;
        stdin.flush()?;
        let line = self.read_line()?;
        let count = line
            .strip_prefix("writes ")
            .with_context(|| format!("{}: unexpected answer {line:?}", self.label))?
            .trim();
        Ok(count.parse().ok())
    }

    /// Sends one command line (`queues`, ...) and returns the answer line.
    pub fn query(&mut self, command: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().context("server stdin closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        self.read_line()
    }

    /// Lines the server wrote to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().clone()
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!(
                "{} exited ({status}); its stderr: {}",
                self.label,
                self.stderr_lines().join(" | ")
            );
        }
        Ok(line.trim_end().to_string())
    }

    /// Asks the server to stop (closes its stdin) and waits up to `timeout`
    /// for it to exit; kills it after that. Returns a note when the exit was
    /// not clean, and everything the server wrote to stderr.
    pub fn stop(mut self, timeout: Duration) -> (Option<String>, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let note = loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break None,
                Ok(Some(status)) => break Some(format!("{} exited with {status}", self.label)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Some(format!(
                        "{} did not stop within {:.1} s and was killed",
                        self.label,
                        timeout.as_secs_f64()
                    ));
                }
            }
        };
        if let Some(thread) = self.stderr_thread.take() {
            let _ = thread.join();
        }
        (note, self.stderr_lines())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This very executable: `/proc/self/exe` where it exists, which still
/// names the running binary after a rebuild replaced the file on disk, so
/// the server is always the same build as the harness.
fn own_executable() -> anyhow::Result<std::path::PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_path_buf());
    }
    std::env::current_exe().context("locating the servercore executable")
}

/// The first socket address among the words of a `listening on ...` line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|word| {
        word.trim_matches(|c| c == '(' || c == ')' || c == ',')
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_found_in_the_first_line() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:40123 (uring echo server)"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            parse_listening_line("listening on [::1]:7777"),
            Some("[::1]:7777".parse().unwrap())
        );
        assert_eq!(parse_listening_line("error: address in use"), None);
    }
}
