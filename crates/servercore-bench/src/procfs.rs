//! What the harness reads about a process from `/proc`: CPU time (utime +
//! stime of `/proc/<pid>/stat`) and resident memory (`VmRSS` of
//! `/proc/<pid>/status`), plus raising this process's open-file limit.
//!
//! The parsers are pure functions over the files' text so they can be
//! tested without a running process.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second used by `/proc/<pid>/stat` (`_SC_CLK_TCK`, 100 if
/// the system does not say).
pub fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => 100,
    }
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat_user_system_ticks(stat).map(|(user, system)| user + system)
}

/// utime and stime, in clock ticks, from the text of `/proc/<pid>/stat`.
pub fn parse_stat_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (field 14) is
    // index 11 and stime (field 15) index 12.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The value in KiB of a `Name:   1234 kB` line of `/proc/<pid>/status`
/// (`VmRSS`, `VmHWM`, ...).
pub fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = user_system_time(pid)?;
    Ok(user + system)
}

/// User and system CPU time a process has used so far.
pub fn user_system_time(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (user, system) =
        parse_stat_user_system_ticks(&text).with_context(|| format!("parsing {path}"))?;
    let per_second = clock_ticks_per_second();
    Ok((
        ticks_to_duration(user, per_second),
        ticks_to_duration(system, per_second),
    ))
}

/// Converts clock ticks to a duration.
pub fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// Busy clock ticks of all CPUs together (everything but idle and iowait)
/// from the first line (`cpu  user nice system idle iowait irq softirq
/// steal ...`) of `/proc/stat`.
pub fn parse_system_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if values.len() < 8 {
        return None;
    }
    Some(values[0] + values[1] + values[2] + values[5] + values[6] + values[7])
}

/// CPU time the whole machine has been busy so far, all cores together.
pub fn machine_cpu_time() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_system_busy_ticks(&text).context("parsing /proc/stat")?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// CPU ticks (utime + stime) of every user-space process but `exclude`,
/// by pid. Kernel threads (empty command line) are left out: the kernel's
/// own work shows as what the machine did beyond all processes.
pub fn user_process_ticks(exclude: &[u32]) -> HashMap<u32, u64> {
    let mut ticks = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        let is_user =
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| !cmdline.is_empty());
        if !is_user {
            continue;
        }
        if let Some(count) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat_cpu_ticks(&stat))
        {
            ticks.insert(pid, count);
        }
    }
    ticks
}

/// CPU the processes of `after` used since `before` (a process new in
/// `after` counts whole; one that exited in between is lost).
pub fn ticks_since(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ticks = after
        .iter()
        .map(|(pid, now)| now.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks_to_duration(ticks, clock_ticks_per_second())
}

/// A counter of the `Tcp:` lines of `/proc/net/snmp` (a header line of
/// names, then a line of values), such as `OutSegs`.
pub fn parse_snmp_tcp(snmp: &str, name: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let index = names.split_whitespace().position(|field| field == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// TCP segments sent by the whole machine (network namespace) so far.
pub fn tcp_segments_sent() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    parse_snmp_tcp(&text, "OutSegs").context("no Tcp OutSegs in /proc/net/snmp")
}

/// The 1-minute load average of `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, "VmRSS").with_context(|| format!("no VmRSS in {path}"))
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.count() as u64)
}

pub use servercore_load::raise_nofile_limit;

/// Runs process `pid` (all its threads) on the CPUs in `cpus` only.
pub fn pin(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .with_context(|| format!("CPU {cpu} is out of range"))?;
    }
    // Every thread of the process: a thread started later inherits its
    // creator's mask, so the ones alive now are enough.
    let tasks = format!("/proc/{pid}/task");
    let threads: Vec<i32> = match std::fs::read_dir(&tasks) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => vec![pid as i32],
    };
    for tid in threads {
        sched_setaffinity(Pid::from_raw(tid), &set)
            .with_context(|| format!("setting the CPU affinity of thread {tid}"))?;
    }
    Ok(())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}

/// A few facts about the machine for the report: core count, kernel, CPU
/// model.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MachineInfo {
    /// Cores available to this process.
    pub cores: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu: String,
}

impl MachineInfo {
    /// Reads the facts; unknown ones are `"?"`.
    pub fn read() -> MachineInfo {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| parse_cpu_model(&text))
            .unwrap_or_else(|| "?".into());
        MachineInfo {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            cpu,
        }
    }
}

/// The first `model name : ...` value of `/proc/cpuinfo`.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (serv er) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_user_system_ticks(stat), Some((250, 75)));
    }

    #[test]
    fn stat_of_this_process_parses() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_cpu_ticks(&stat).is_some());
        assert!(cpu_time(std::process::id()).is_ok());
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\tservercore\nVmPeak:\t  20000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(5120));
        assert_eq!(parse_status_kib(status, "VmPeak"), Some(20000));
        assert_eq!(parse_status_kib(status, "Threads"), Some(3));
        assert_eq!(parse_status_kib(status, "VmHWM"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn system_cpu_line() {
        let stat = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n";
        assert_eq!(parse_system_busy_ticks(stat), Some(167));
        assert_eq!(parse_system_busy_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(parse_system_busy_ticks("cpu 1 2 3\n"), None);
        assert!(machine_cpu_time().is_ok());
    }

    #[test]
    fn other_processes_are_listed_and_diffed() {
        let me = std::process::id();
        assert!(!user_process_ticks(&[me]).contains_key(&me));
        assert!(user_process_ticks(&[]).contains_key(&me));
        let before = HashMap::from([(1, 100), (2, 50)]);
        let after = HashMap::from([(1, 130), (3, 20)]);
        assert_eq!(
            ticks_since(&before, &after),
            ticks_to_duration(50, clock_ticks_per_second())
        );
    }

    #[test]
    fn snmp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin InSegs OutSegs\nTcp: 1 200 1000 1234\n\
                    Udp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_snmp_tcp(snmp, "OutSegs"), Some(1234));
        assert_eq!(parse_snmp_tcp(snmp, "InSegs"), Some(1000));
        assert_eq!(parse_snmp_tcp(snmp, "Nothing"), None);
        assert!(tcp_segments_sent().is_ok());
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
        assert_eq!(ticks_to_duration(0, 0), Duration::ZERO);
    }

    #[test]
    fn cpu_model_line() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
    }
}
