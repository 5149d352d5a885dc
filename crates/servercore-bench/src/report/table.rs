//! The report document and its text tables: settings, rows, sections,
//! and how a section renders with ratios against the baseline.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::procfs::MachineInfo;

use super::*;

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
    pub moves: Vec<crate::move_report::MoveResult>,
    /// The move scenario's capacity sweep, one per server variant.
    #[serde(default)]
    pub capacity: Vec<crate::move_report::CapacityResult>,
    /// Zones measurements, one per backend and node count.
    #[serde(default)]
    pub zones: Vec<crate::zones_report::ZoneResult>,
    /// The zones scenario's capacity sweeps, one per backend and node count.
    #[serde(default)]
    pub zone_capacity: Vec<crate::zones_report::ZoneCapacity>,
    /// Targets, evaluated.
    pub targets: Vec<TargetResult>,
    /// Anything the run had to change or noticed (scaled-down counts,
    /// server errors, unclean exits).
    pub notes: Vec<String>,
}

fn default_transport() -> String {
    "tcp".to_string()
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
    /// The transport of this report (`tcp`, `tls`, `ws`, `quic`; reports
    /// written before it was recorded were all tcp).
    #[serde(default = "default_transport")]
    pub transport: String,
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
    pub moves: Option<crate::move_report::MoveSettings>,
    /// The zones scenario's settings.
    #[serde(default)]
    pub zones: Option<crate::zones_report::ZoneSettings>,
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

pub(crate) fn cell(row: &Row, value: Option<f64>, base: Option<f64>, is_baseline: bool) -> String {
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
