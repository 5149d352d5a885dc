//! The result records of each scenario (also the `--json` output) and
//! the median of repeated runs.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::Window;

/// The column every ratio is taken against.
pub const BASELINE: &str = "tokio";

/// Latency percentiles of one measurement, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }

    pub(crate) fn value(&self, count: f64) -> Option<f64> {
        (self.count > 0).then_some(count)
    }
}

/// Where the CPU went during one measured window (flattened into the
/// echo and broadcast records, so the JSON keeps one flat object per run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowCpu {
    /// Server CPU over the window.
    pub server_cpu_seconds: f64,
    /// Server CPU / wall time (cores busy).
    pub server_cpu_cores: f64,
    /// Share of the server's CPU spent in user space (0..1).
    pub server_user_share: Option<f64>,
    /// Load generator CPU / wall time.
    pub load_cpu_cores: f64,
    /// CPU of every other user-space process / wall time.
    pub other_cpu_cores: f64,
    /// CPU of the machine beyond all processes (kernel work charged to no
    /// process, such as loopback softirq processing) / wall time.
    pub kernel_cpu_cores: f64,
}

impl WindowCpu {
    /// The shares of a measured window.
    pub fn from_window(window: &Window) -> WindowCpu {
        let seconds = window.elapsed.as_secs_f64();
        let cpu = window.server_cpu.as_secs_f64();
        WindowCpu {
            server_cpu_seconds: cpu,
            server_cpu_cores: cpu / seconds,
            server_user_share: (cpu > 0.0).then(|| window.server_user_cpu.as_secs_f64() / cpu),
            load_cpu_cores: window.load_cpu.as_secs_f64() / seconds,
            other_cpu_cores: window.other_cpu.as_secs_f64() / seconds,
            kernel_cpu_cores: window.kernel_cpu.as_secs_f64() / seconds,
        }
    }

    /// Server CPU per unit of work (request, delivery), µs.
    pub fn server_us_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| self.server_cpu_seconds * 1e6 / units as f64)
    }
}

/// One echo measurement of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoResult {
    /// `uring`, `poll` or `tokio`.
    pub implementation: String,
    /// Which repetition (0-based).
    pub round: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Round trips in the window.
    pub requests: u64,
    /// Window length.
    pub seconds: f64,
    /// Round trips per second.
    pub requests_per_sec: f64,
    /// Server CPU per round trip, µs.
    pub server_cpu_us_per_request: Option<f64>,
    /// Where the CPU went during the window.
    #[serde(flatten)]
    pub cpu: WindowCpu,
    /// TCP segments sent per round trip, both sides (2 when nothing is
    /// split or coalesced).
    pub tcp_segments_per_request: Option<f64>,
    /// Server system calls per round trip (`--perf`).
    pub server_syscalls_per_request: Option<f64>,
    /// Server context switches per round trip (`--perf`).
    pub server_context_switches_per_request: Option<f64>,
    /// Round-trip latency.
    pub latency: Latency,
    /// Client failures.
    pub errors: Vec<String>,
}

/// One broadcast measurement of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastResult {
    /// `uring`, `poll` or `tokio`.
    pub implementation: String,
    /// Which repetition (0-based).
    pub round: usize,
    /// Sessions in the room.
    pub sessions: usize,
    /// Each session chats once per this many milliseconds.
    pub interval_ms: u64,
    /// Window length.
    pub seconds: f64,
    /// Chats sent in the window.
    pub chats_sent: u64,
    /// `S_CHAT` packets received in the window.
    pub deliveries: u64,
    /// sessions² / interval: what a server that keeps up delivers.
    pub expected_deliveries_per_sec: f64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Server CPU per delivery, µs.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Where the CPU went during the window.
    #[serde(flatten)]
    pub cpu: WindowCpu,
    /// TCP segments sent per delivery, both sides: how many chats the
    /// server packs into one segment.
    pub tcp_segments_per_delivery: Option<f64>,
    /// Gathered socket writes of the server per delivery (engine servers):
    /// how many chats go out in one write.
    #[serde(default)]
    pub server_writes_per_delivery: Option<f64>,
    /// Server system calls per delivery (`--perf`).
    pub server_syscalls_per_delivery: Option<f64>,
    /// Server context switches per delivery (`--perf`).
    pub server_context_switches_per_delivery: Option<f64>,
    /// Chat round trip: sent until the sender got its own `S_CHAT`.
    pub latency: Latency,
    /// Sessions lost during the run.
    pub disconnects: u64,
    /// The first errors.
    pub errors: Vec<String>,
    /// Time to connect, log in and enter all sessions.
    pub setup_seconds: f64,
}

/// One idle-memory measurement of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    /// `uring`, `poll` or `tokio`.
    pub implementation: String,
    /// Which repetition (0-based).
    pub round: usize,
    /// Connections asked for.
    pub sessions_requested: usize,
    /// Connections the load side holds open.
    pub sessions_open: usize,
    /// Sessions the server reported when RSS was read.
    pub server_sessions: usize,
    /// Connections that failed, and the first error.
    pub connect_failures: usize,
    /// First connection error, if any.
    pub first_error: Option<String>,
    /// Server RSS before the connections (KiB).
    pub rss_before_kib: u64,
    /// Server RSS with the connections open (KiB).
    pub rss_after_kib: u64,
    /// (after - before) / server sessions, bytes.
    pub bytes_per_session: Option<f64>,
}

/// The median run of each group: runs are grouped by `group` (in order of
/// first appearance) and, within a group, the run whose `key` is the
/// median (the lower one of an even count) is kept. Runs without a key sort
/// last.
pub fn median_runs<T: Clone, G: PartialEq>(
    runs: &[T],
    group: impl Fn(&T) -> G,
    key: impl Fn(&T) -> Option<f64>,
) -> Vec<T> {
    let mut groups: Vec<(G, Vec<&T>)> = Vec::new();
    for run in runs {
        let id = group(run);
        match groups.iter_mut().find(|(g, _)| *g == id) {
            Some((_, members)) => members.push(run),
            None => groups.push((id, vec![run])),
        }
    }
    groups
        .into_iter()
        .map(|(_, mut members)| {
            members.sort_by(|a, b| {
                let (a, b) = (
                    key(a).unwrap_or(f64::INFINITY),
                    key(b).unwrap_or(f64::INFINITY),
                );
                a.total_cmp(&b)
            });
            members[(members.len() - 1) / 2].clone()
        })
        .collect()
}
