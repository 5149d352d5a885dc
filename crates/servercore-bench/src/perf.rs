//! `--perf`: counts the server's system calls and context switches over a
//! measured window with `perf stat` (the `raw_syscalls:sys_enter`
//! tracepoint and the `context-switches` software event), so the tables can
//! show them per request or per delivery. Optional: without `perf`, or
//! where the kernel refuses the tracepoint, the rows are left out and the
//! run says why.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What `perf stat` counted in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfCounts {
    /// System calls the server's threads entered.
    pub syscalls: u64,
    /// Context switches of the server's threads.
    pub context_switches: u64,
}

/// A `perf stat` attached to the server for one window.
pub struct PerfStat {
    child: Child,
}

impl PerfStat {
    /// Starts counting the threads of `pid` for `duration`.
    pub fn start(pid: u32, duration: Duration) -> std::io::Result<PerfStat> {
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
            ])
            .args(["-p", &pid.to_string(), "--", "sleep"])
            .arg(format!("{:.3}", duration.as_secs_f64()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(PerfStat { child })
    }

    /// Waits for the counts (perf ends by itself when the window does).
    pub fn finish(mut self) -> Result<PerfCounts, String> {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        let status = self.child.wait().map_err(|error| error.to_string())?;
        parse_perf_csv(&text).ok_or_else(|| {
            format!(
                "perf stat ({status}) gave no counts: {}",
                text.lines().next().unwrap_or("no output")
            )
        })
    }
}

impl Drop for PerfStat {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `perf stat -x ,` output: `count,unit,event,...` lines.
pub fn parse_perf_csv(text: &str) -> Option<PerfCounts> {
    let mut syscalls = None;
    let mut context_switches = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 {
            continue;
        }
        let Ok(count) = fields[0].trim().parse::<u64>() else {
            continue;
        };
        match fields[2].trim() {
            "raw_syscalls:sys_enter" => syscalls = Some(count),
            "context-switches" | "cs" => context_switches = Some(count),
            _ => {}
        }
    }
    Some(PerfCounts {
        syscalls: syscalls?,
        context_switches: context_switches.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_counts_are_read() {
        let text = "1234567,,raw_syscalls:sys_enter,5001234567,100.00,,\n\
                    8910,,context-switches,5001234567,100.00,,\n";
        assert_eq!(
            parse_perf_csv(text),
            Some(PerfCounts {
                syscalls: 1_234_567,
                context_switches: 8910
            })
        );
    }

    #[test]
    fn unsupported_events_give_nothing() {
        let text = "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n";
        assert_eq!(parse_perf_csv(text), None);
        assert_eq!(parse_perf_csv(""), None);
    }
}
