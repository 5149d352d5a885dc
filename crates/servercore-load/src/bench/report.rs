//! Results and how they are shown: the per-scenario result records (also
//! the `--json` output), the text tables with ratios against the tokio
//! baseline, and the targets printed beside them (reported, never asserted).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::load::Window;
use super::procfs::MachineInfo;

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

    fn value(&self, count: f64) -> Option<f64> {
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

/// How a target compares a measured value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// measured / baseline must be at most `limit`.
    RatioAtMost,
    /// measured (bytes) must be at most `limit`.
    BytesAtMost,
    /// measured / baseline must be at least `limit`.
    RatioAtLeast,
}

/// A target evaluated for one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    /// What the target says, e.g. `echo 500 clients: server CPU/request ≤ 0.8× tokio`.
    pub description: String,
    /// Implementation measured.
    pub implementation: String,
    /// How to read `measured` and `limit`.
    pub kind: TargetKind,
    /// The ratio or value measured.
    pub measured: f64,
    /// The limit.
    pub limit: f64,
    /// measured ≤ limit (≥ for [`TargetKind::RatioAtLeast`]).
    pub met: bool,
    /// How far over the limit, in percent of the limit (`None` when met).
    pub missed_by_percent: Option<f64>,
}

impl TargetResult {
    /// Evaluates `measured` against `limit`.
    pub fn new(
        description: &str,
        implementation: &str,
        kind: TargetKind,
        measured: f64,
        limit: f64,
    ) -> TargetResult {
        let met = match kind {
            TargetKind::RatioAtLeast => measured >= limit,
            TargetKind::RatioAtMost | TargetKind::BytesAtMost => measured <= limit,
        };
        let missed_by = match kind {
            TargetKind::RatioAtLeast => (1.0 - measured / limit) * 100.0,
            TargetKind::RatioAtMost | TargetKind::BytesAtMost => (measured / limit - 1.0) * 100.0,
        };
        TargetResult {
            description: description.to_string(),
            implementation: implementation.to_string(),
            kind,
            measured,
            limit,
            met,
            missed_by_percent: (!met).then_some(missed_by),
        }
    }

    /// `uring 0.74× met` / `poll 1.2 KiB missed by 17%`.
    pub fn verdict(&self) -> String {
        let value = match self.kind {
            TargetKind::RatioAtMost | TargetKind::RatioAtLeast => {
                format!("{:.2}×", self.measured)
            }
            TargetKind::BytesAtMost => format_bytes(self.measured),
        };
        match self.missed_by_percent {
            None => format!("{} {value} met", self.implementation),
            Some(percent) => format!("{} {value} MISSED by {percent:.0}%", self.implementation),
        }
    }
}

/// Groups target results by description, one line each.
pub fn render_targets(targets: &[TargetResult]) -> String {
    let mut out = String::new();
    let mut descriptions: Vec<&str> = Vec::new();
    for target in targets {
        if !descriptions.contains(&target.description.as_str()) {
            descriptions.push(&target.description);
        }
    }
    let width = descriptions
        .iter()
        .map(|d| d.chars().count())
        .max()
        .unwrap_or(0);
    for description in descriptions {
        let verdicts: Vec<String> = targets
            .iter()
            .filter(|target| target.description == description)
            .map(TargetResult::verdict)
            .collect();
        let pad = width - description.chars().count();
        let _ = writeln!(
            out,
            "  {description}{}  {}",
            " ".repeat(pad),
            verdicts.join("; ")
        );
    }
    out
}

/// Everything one `servercore bench` run measured (the `--json` document).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The machine.
    pub machine: MachineInfo,
    /// The run's settings.
    pub settings: Settings,
    /// Echo measurements: with `--repeat`, the median run of each
    /// implementation and client count (by server CPU per request).
    pub echo: Vec<EchoResult>,
    /// Broadcast measurements: the median runs (by server CPU per delivery).
    pub broadcast: Vec<BroadcastResult>,
    /// Idle measurements: the median runs (by RSS per session).
    pub idle: Vec<IdleResult>,
    /// Every echo run (`round` tells them apart).
    pub echo_runs: Vec<EchoResult>,
    /// Every broadcast run.
    pub broadcast_runs: Vec<BroadcastResult>,
    /// Every idle run.
    pub idle_runs: Vec<IdleResult>,
    /// Move measurements at the run's player count, one per server variant.
    #[serde(default)]
    pub moves: Vec<super::move_report::MoveResult>,
    /// The move scenario's capacity sweep, one per server variant.
    #[serde(default)]
    pub capacity: Vec<super::move_report::CapacityResult>,
    /// Targets, evaluated.
    pub targets: Vec<TargetResult>,
    /// Anything the run had to change or noticed (scaled-down counts,
    /// server errors, unclean exits).
    pub notes: Vec<String>,
}

/// The settings of a run, as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Measured window per measurement, seconds.
    pub duration_seconds: f64,
    /// Runs per measurement (`--repeat`); the tables show the median run.
    pub repeat: usize,
    /// Warm-up before each window, seconds.
    pub warmup_seconds: f64,
    /// `--quick`.
    pub quick: bool,
    /// Scenarios run.
    pub scenarios: Vec<String>,
    /// Implementations compared, baseline last.
    pub implementations: Vec<String>,
    /// Server worker threads (`None`: available cores).
    pub workers: Option<usize>,
    /// Echo client counts.
    pub echo_clients: Vec<usize>,
    /// Broadcast room size.
    pub broadcast_sessions: usize,
    /// Engine server of the broadcast scenario: `game` or `minimal`.
    pub broadcast_server: String,
    /// Idle connections.
    pub idle_sessions: usize,
    /// Client source addresses in use.
    pub source_addresses: usize,
    /// Open-file limit of the harness process.
    pub open_file_limit: u64,
    /// The move scenario's settings.
    #[serde(default)]
    pub moves: Option<super::move_report::MoveSettings>,
}

/// How a row's numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Per second, with k/M suffixes.
    Rate,
    /// Microseconds, shown as µs, ms or s.
    Micros,
    /// Bytes, shown as B, KiB or MiB.
    Bytes,
    /// KiB, shown as B, KiB or MiB.
    KiB,
    /// CPU cores busy.
    Cores,
    /// A plain count.
    Count,
    /// A small number, three significant digits.
    Decimal,
    /// A fraction shown as a percentage.
    Percent,
}

/// One metric across the implementations.
#[derive(Debug, Clone)]
pub struct Row {
    /// Metric name.
    pub label: String,
    /// How to write it.
    pub unit: Unit,
    /// Show the ratio against the baseline.
    pub ratio: bool,
    /// One value per column (`None`: not measured).
    pub values: Vec<Option<f64>>,
}

/// A table: one scenario setting, a column per implementation.
#[derive(Debug, Clone)]
pub struct Section {
    /// The heading.
    pub title: String,
    /// Implementation names; the one named [`BASELINE`] is the baseline.
    pub columns: Vec<String>,
    /// The metrics.
    pub rows: Vec<Row>,
}

impl Section {
    /// An empty table.
    pub fn new(title: impl Into<String>, columns: Vec<String>) -> Section {
        Section {
            title: title.into(),
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a metric whose ratio to the baseline is shown.
    pub fn row(&mut self, label: &str, unit: Unit, values: Vec<Option<f64>>) -> &mut Section {
        self.push(label, unit, true, values)
    }

    /// Adds a metric shown without a ratio.
    pub fn plain_row(&mut self, label: &str, unit: Unit, values: Vec<Option<f64>>) -> &mut Section {
        self.push(label, unit, false, values)
    }

    /// Adds a metric with ratios only if some column has a value.
    pub fn optional_row(
        &mut self,
        label: &str,
        unit: Unit,
        values: Vec<Option<f64>>,
    ) -> &mut Section {
        if values.iter().any(Option::is_some) {
            self.push(label, unit, true, values);
        }
        self
    }

    fn push(
        &mut self,
        label: &str,
        unit: Unit,
        ratio: bool,
        values: Vec<Option<f64>>,
    ) -> &mut Section {
        self.rows.push(Row {
            label: label.to_string(),
            unit,
            ratio,
            values,
        });
        self
    }

    /// The table as text: a heading, a header line and one line per row;
    /// cells of other columns carry `(ratio×)` against the baseline.
    pub fn render(&self) -> String {
        let baseline = self.columns.iter().position(|c| c == BASELINE);
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                (0..self.columns.len())
                    .map(|column| {
                        let value = row.values.get(column).copied().flatten();
                        let base = baseline.and_then(|b| row.values.get(b).copied().flatten());
                        cell(row, value, base, Some(column) == baseline)
                    })
                    .collect()
            })
            .collect();
        let label_width = self
            .rows
            .iter()
            .map(|row| row.label.chars().count())
            .max()
            .unwrap_or(0)
            .max(6);
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|column| {
                cells
                    .iter()
                    .map(|row| row[column].chars().count())
                    .chain(std::iter::once(self.columns[column].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let mut header = format!("  {:label_width$}", "");
        for (column, name) in self.columns.iter().enumerate() {
            let _ = write!(header, "  {}", pad_left(name, widths[column]));
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for (row, row_cells) in self.rows.iter().zip(&cells) {
            let mut line = format!("  {}", pad_right(&row.label, label_width));
            for (column, text) in row_cells.iter().enumerate() {
                let _ = write!(line, "  {}", pad_left(text, widths[column]));
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

fn cell(row: &Row, value: Option<f64>, base: Option<f64>, is_baseline: bool) -> String {
    let Some(value) = value else {
        return "-".to_string();
    };
    let text = format_value(row.unit, value);
    if !row.ratio || is_baseline {
        return text;
    }
    match base.and_then(|base| ratio(value, base)) {
        Some(ratio) => format!("{text} ({ratio:.2}×)"),
        None => text,
    }
}

fn pad_left(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{}{text}", " ".repeat(width.saturating_sub(len)))
}

fn pad_right(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

/// value / base, when both are meaningful.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite() && base.is_finite()).then(|| value / base)
}

/// A value in its unit, three significant digits.
pub fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::Rate => format_rate(value),
        Unit::Micros => format_micros(value),
        Unit::Bytes => format_bytes(value),
        Unit::KiB => format_bytes(value * 1024.0),
        Unit::Cores => format!("{value:.2}"),
        Unit::Count => format_count(value),
        Unit::Decimal => decimal(value),
        Unit::Percent => format!("{:.0}%", value * 100.0),
    }
}

fn significant(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A plain number with three significant digits, small ones included:
/// `0.00412`, `0.17`, `2.35`, `123`.
fn decimal(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 || magnitude >= 1.0 || !magnitude.is_finite() {
        return significant(value);
    }
    let digits = (2.0 - magnitude.log10().floor()).clamp(2.0, 9.0) as usize;
    format!("{value:.digits$}")
}

/// `950`, `12.3k`, `1.23M` per second.
pub fn format_rate(value: f64) -> String {
    // Thresholds just below the next unit, so 999,999 reads 1.00M, not 1000k.
    if value.abs() >= 999_500.0 {
        format!("{}M/s", significant(value / 1e6))
    } else if value.abs() >= 999.5 {
        format!("{}k/s", significant(value / 1e3))
    } else {
        format!("{}/s", significant(value))
    }
}

/// Microseconds as `µs`, `ms` or `s`.
pub fn format_micros(value: f64) -> String {
    if value.abs() >= 999_500.0 {
        format!("{} s", significant(value / 1e6))
    } else if value.abs() >= 999.5 {
        format!("{} ms", significant(value / 1e3))
    } else {
        format!("{} µs", significant(value))
    }
}

/// Bytes as `B`, `KiB` or `MiB`.
pub fn format_bytes(value: f64) -> String {
    if value.abs() >= 1023.5 * 1024.0 {
        format!("{} MiB", significant(value / (1024.0 * 1024.0)))
    } else if value.abs() >= 1023.5 {
        format!("{} KiB", significant(value / 1024.0))
    } else {
        format!("{value:.0} B")
    }
}

/// An integer with thousands separators: `15,000`.
pub fn format_count(value: f64) -> String {
    let rounded = value.round();
    let digits = crate::client::count(rounded.abs() as u64);
    if rounded < 0.0 {
        format!("-{digits}")
    } else {
        digits
    }
}

/// The tables of the echo scenario: one per client count.
pub fn echo_sections(results: &[EchoResult], columns: &[String], duration: f64) -> Vec<Section> {
    let mut counts: Vec<usize> = results.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
        .into_iter()
        .map(|clients| {
            let picked = in_columns(columns, |column| {
                results
                    .iter()
                    .find(|r| r.clients == clients && r.implementation == column)
            });
            let pick = |f: &dyn Fn(&EchoResult) -> Option<f64>| -> Vec<Option<f64>> {
                picked.iter().map(|r| r.and_then(f)).collect()
            };
            let mut section = Section::new(
                format!(
                    "echo: {clients} clients, {} B ping-pong, {duration:.1} s window",
                    super::load::ECHO_SIZE
                ),
                columns.to_vec(),
            );
            section
                .row(
                    "requests/s",
                    Unit::Rate,
                    pick(&|r| Some(r.requests_per_sec)),
                )
                .row(
                    "server CPU/request",
                    Unit::Micros,
                    pick(&|r| r.server_cpu_us_per_request),
                )
                .optional_row(
                    "TCP segments/request",
                    Unit::Decimal,
                    pick(&|r| r.tcp_segments_per_request),
                )
                .optional_row(
                    "server syscalls/request",
                    Unit::Decimal,
                    pick(&|r| r.server_syscalls_per_request),
                )
                .optional_row(
                    "server ctx switches/request",
                    Unit::Decimal,
                    pick(&|r| r.server_context_switches_per_request),
                );
            let latencies: Vec<_> = picked.iter().map(|r| r.map(|r| &r.latency)).collect();
            let cpus: Vec<_> = picked.iter().map(|r| r.map(|r| &r.cpu)).collect();
            latency_rows(&mut section, &latencies, false);
            cpu_rows(&mut section, &cpus);
            section
        })
        .collect()
}

/// The table of the broadcast scenario.
pub fn broadcast_section(
    results: &[BroadcastResult],
    columns: &[String],
    duration: f64,
    engine_server: &str,
) -> Option<Section> {
    let first = results.first()?;
    let picked = in_columns(columns, |column| {
        results.iter().find(|r| r.implementation == column)
    });
    let pick = |f: &dyn Fn(&BroadcastResult) -> Option<f64>| -> Vec<Option<f64>> {
        picked.iter().map(|r| r.and_then(f)).collect()
    };
    let mut section = Section::new(
        format!(
            "broadcast ({engine_server} server on the engine): {} sessions in one room, one {} B chat each per {} ms ({} deliveries/s offered), {duration:.1} s window",
            first.sessions,
            super::load::CHAT_SIZE,
            first.interval_ms,
            format_count(first.expected_deliveries_per_sec)
        ),
        columns.to_vec(),
    );
    section
        .row(
            "deliveries/s",
            Unit::Rate,
            pick(&|r| Some(r.deliveries_per_sec)),
        )
        .row(
            "server CPU/delivery",
            Unit::Micros,
            pick(&|r| r.server_cpu_us_per_delivery),
        )
        .optional_row(
            "TCP segments/delivery",
            Unit::Decimal,
            pick(&|r| r.tcp_segments_per_delivery),
        )
        .optional_row(
            "server writes/delivery",
            Unit::Decimal,
            pick(&|r| r.server_writes_per_delivery),
        )
        .optional_row(
            "server syscalls/delivery",
            Unit::Decimal,
            pick(&|r| r.server_syscalls_per_delivery),
        )
        .optional_row(
            "server ctx switches/delivery",
            Unit::Decimal,
            pick(&|r| r.server_context_switches_per_delivery),
        );
    let latencies: Vec<_> = picked.iter().map(|r| r.map(|r| &r.latency)).collect();
    let cpus: Vec<_> = picked.iter().map(|r| r.map(|r| &r.cpu)).collect();
    latency_rows(&mut section, &latencies, true);
    cpu_rows(&mut section, &cpus);
    section.plain_row(
        "sessions lost",
        Unit::Count,
        pick(&|r| Some(r.disconnects as f64)),
    );
    Some(section)
}

/// Each column's result, in column order.
fn in_columns<'a, R>(
    columns: &[String],
    find: impl Fn(&str) -> Option<&'a R>,
) -> Vec<Option<&'a R>> {
    columns.iter().map(|column| find(column)).collect()
}

/// The latency rows every load scenario shows (`max` only where asked).
fn latency_rows(section: &mut Section, latencies: &[Option<&Latency>], with_max: bool) {
    let percentile = |f: fn(&Latency) -> u64| -> Vec<Option<f64>> {
        latencies
            .iter()
            .map(|l| l.and_then(|l| l.value(f(l) as f64)))
            .collect()
    };
    section
        .row("latency p50", Unit::Micros, percentile(|l| l.p50_us))
        .row("latency p99", Unit::Micros, percentile(|l| l.p99_us))
        .row("latency p99.9", Unit::Micros, percentile(|l| l.p999_us));
    if with_max {
        section.row("latency max", Unit::Micros, percentile(|l| l.max_us));
    }
}

/// Where the CPU went: the server's cores and user share, the load
/// generator, the kernel outside any process, and everything else.
fn cpu_rows(section: &mut Section, cpus: &[Option<&WindowCpu>]) {
    let share = |f: fn(&WindowCpu) -> Option<f64>| -> Vec<Option<f64>> {
        cpus.iter().map(|c| c.and_then(f)).collect()
    };
    section
        .plain_row(
            "server CPU (cores)",
            Unit::Cores,
            share(|c| Some(c.server_cpu_cores)),
        )
        .plain_row(
            "server CPU in user space",
            Unit::Percent,
            share(|c| c.server_user_share),
        )
        .plain_row(
            "load gen CPU (cores)",
            Unit::Cores,
            share(|c| Some(c.load_cpu_cores)),
        )
        .plain_row(
            "kernel, no process (cores)",
            Unit::Cores,
            share(|c| Some(c.kernel_cpu_cores)),
        )
        .plain_row(
            "other processes (cores)",
            Unit::Cores,
            share(|c| Some(c.other_cpu_cores)),
        );
}

/// The table of the idle scenario.
pub fn idle_section(results: &[IdleResult], columns: &[String]) -> Option<Section> {
    let first = results.first()?;
    let pick = |f: &dyn Fn(&IdleResult) -> Option<f64>| -> Vec<Option<f64>> {
        columns
            .iter()
            .map(|column| {
                results
                    .iter()
                    .find(|r| &r.implementation == column)
                    .and_then(f)
            })
            .collect()
    };
    let mut section = Section::new(
        format!(
            "idle: {} connected sessions that send nothing",
            format_count(first.sessions_requested as f64)
        ),
        columns.to_vec(),
    );
    section
        .plain_row(
            "sessions (server)",
            Unit::Count,
            pick(&|r| Some(r.server_sessions as f64)),
        )
        .plain_row(
            "RSS before",
            Unit::KiB,
            pick(&|r| Some(r.rss_before_kib as f64)),
        )
        .plain_row(
            "RSS with sessions",
            Unit::KiB,
            pick(&|r| Some(r.rss_after_kib as f64)),
        )
        .row(
            "RSS per session",
            Unit::Bytes,
            pick(&|r| r.bytes_per_session),
        );
    Some(section)
}

/// Evaluates the targets for every implementation that is not the baseline.
pub fn evaluate_targets(report: &Report) -> Vec<TargetResult> {
    let mut targets = Vec::new();
    let engines: Vec<&String> = report
        .settings
        .implementations
        .iter()
        .filter(|name| name.as_str() != BASELINE)
        .collect();

    // Echo: at 500 clients, or the largest count measured.
    let echo_clients = if report.echo.iter().any(|r| r.clients == 500) {
        Some(500)
    } else {
        report.echo.iter().map(|r| r.clients).max()
    };
    if let Some(clients) = echo_clients {
        let find = |name: &str| {
            report
                .echo
                .iter()
                .find(|r| r.clients == clients && r.implementation == name)
        };
        let description = format!("echo {clients} clients: server CPU/request ≤ 0.80× tokio");
        if let Some(base) = find(BASELINE).and_then(|r| r.server_cpu_us_per_request) {
            for engine in &engines {
                if let Some(value) = find(engine).and_then(|r| r.server_cpu_us_per_request) {
                    if let Some(r) = ratio(value, base) {
                        targets.push(TargetResult::new(
                            &description,
                            engine,
                            TargetKind::RatioAtMost,
                            r,
                            0.8,
                        ));
                    }
                }
            }
        }
    }

    // Broadcast: CPU/delivery ≤ 1/3 of tokio, p99 no worse.
    let find = |name: &str| report.broadcast.iter().find(|r| r.implementation == name);
    if let Some(base) = find(BASELINE) {
        for engine in &engines {
            let Some(result) = find(engine) else { continue };
            if let (Some(value), Some(base_value)) = (
                result.server_cpu_us_per_delivery,
                base.server_cpu_us_per_delivery,
            ) {
                if let Some(r) = ratio(value, base_value) {
                    targets.push(TargetResult::new(
                        "broadcast: server CPU/delivery ≤ 0.33× tokio",
                        engine,
                        TargetKind::RatioAtMost,
                        r,
                        1.0 / 3.0,
                    ));
                }
            }
            if result.latency.count > 0 && base.latency.count > 0 {
                if let Some(r) = ratio(result.latency.p99_us as f64, base.latency.p99_us as f64) {
                    targets.push(TargetResult::new(
                        "broadcast: latency p99 ≤ 1.00× tokio",
                        engine,
                        TargetKind::RatioAtMost,
                        r,
                        1.0,
                    ));
                }
            }
        }
    }

    // Idle: ≤ 1 KiB RSS per session.
    for engine in &engines {
        if let Some(bytes) = report
            .idle
            .iter()
            .find(|r| &&r.implementation == engine)
            .and_then(|r| r.bytes_per_session)
        {
            targets.push(TargetResult::new(
                "idle: RSS per session ≤ 1 KiB",
                engine,
                TargetKind::BytesAtMost,
                bytes,
                1024.0,
            ));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_in_their_units() {
        assert_eq!(format_rate(950.0), "950/s");
        assert_eq!(format_rate(12_345.0), "12.3k/s");
        assert_eq!(format_rate(1_234_567.0), "1.23M/s");
        assert_eq!(format_rate(999_999.0), "1.00M/s");
        assert_eq!(format_rate(999.7), "1.00k/s");
        assert_eq!(format_value(Unit::Decimal, 0.0123), "0.0123");
        assert_eq!(format_value(Unit::Decimal, 0.00412), "0.00412");
        assert_eq!(format_value(Unit::Decimal, 0.17), "0.170");
        assert_eq!(format_value(Unit::Decimal, 0.0), "0.00");
        assert_eq!(format_value(Unit::Decimal, 2.345), "2.35");
        assert_eq!(format_value(Unit::Percent, 0.256), "26%");
        assert_eq!(format_micros(8.765), "8.77 µs");
        assert_eq!(format_micros(12_500.0), "12.5 ms");
        assert_eq!(format_micros(2_500_000.0), "2.50 s");
        assert_eq!(format_micros(999.9), "1.00 ms");
        assert_eq!(format_bytes(900.0), "900 B");
        assert_eq!(format_bytes(1536.0), "1.50 KiB");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(format_value(Unit::KiB, 2048.0), "2.00 MiB");
        assert_eq!(format_count(15_000.0), "15,000");
        assert_eq!(format_count(999.0), "999");
        assert_eq!(format_count(1_000_000.0), "1,000,000");
        assert_eq!(format_count(-1234.0), "-1,234");
    }

    #[test]
    fn median_run_of_each_group() {
        let runs = [("a", 3.0), ("b", 1.0), ("a", 1.0), ("a", 2.0), ("b", 5.0)];
        let medians = median_runs(&runs, |r| r.0, |r| Some(r.1));
        assert_eq!(medians, vec![("a", 2.0), ("b", 1.0)]);
        let one = median_runs(&runs[..1], |r| r.0, |_| None);
        assert_eq!(one, vec![("a", 3.0)]);
    }

    #[test]
    fn ratios_need_a_positive_baseline() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn table_shows_ratios_against_the_baseline_column() {
        let columns = vec!["uring".to_string(), "poll".to_string(), "tokio".to_string()];
        let mut section = Section::new("echo: 500 clients", columns);
        section
            .row(
                "requests/s",
                Unit::Rate,
                vec![Some(150_000.0), None, Some(100_000.0)],
            )
            .plain_row(
                "server CPU (cores)",
                Unit::Cores,
                vec![Some(1.0), Some(1.5), Some(2.0)],
            );
        let text = section.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "echo: 500 clients");
        assert!(lines[1].ends_with("tokio"), "{text}");
        assert!(lines[2].contains("150k/s (1.50×)"), "{text}");
        assert!(lines[2].contains(" - "), "{text}");
        assert!(lines[2].ends_with("100k/s"), "{text}");
        assert!(!lines[3].contains('×'), "{text}");
        // Columns line up: every cell ends where its header ends.
        let header_end = lines[1].chars().count();
        assert_eq!(lines[2].chars().count(), header_end, "{text}");
        assert_eq!(lines[3].chars().count(), header_end, "{text}");
    }

    #[test]
    fn targets_say_by_how_much_they_were_missed() {
        let met = TargetResult::new("t", "uring", TargetKind::RatioAtMost, 0.7, 0.8);
        assert!(met.met);
        assert_eq!(met.verdict(), "uring 0.70× met");
        let missed = TargetResult::new("t", "poll", TargetKind::RatioAtMost, 1.0, 0.8);
        assert!(!missed.met);
        assert_eq!(missed.missed_by_percent.map(|p| p.round()), Some(25.0));
        assert_eq!(missed.verdict(), "poll 1.00× MISSED by 25%");
        let bytes = TargetResult::new("idle", "uring", TargetKind::BytesAtMost, 2048.0, 1024.0);
        assert_eq!(bytes.verdict(), "uring 2.00 KiB MISSED by 100%");
        let text = render_targets(&[met, missed, bytes]);
        assert_eq!(text.lines().count(), 2);
        assert!(text
            .lines()
            .next()
            .unwrap()
            .contains("uring 0.70× met; poll 1.00× MISSED by 25%"));
    }

    #[test]
    fn latency_of_an_histogram() {
        let mut histogram = super::super::load::latency_histogram();
        for value in 1..=1000u64 {
            histogram.record(value).unwrap();
        }
        let latency = Latency::from_histogram(&histogram);
        assert_eq!(latency.count, 1000);
        assert_eq!(latency.p50_us, 500);
        assert_eq!(latency.p99_us, 990);
        assert_eq!(latency.max_us, 1000);
        assert_eq!(
            Latency::from_histogram(&super::super::load::latency_histogram()).count,
            0
        );
    }
}
