//! The targets printed beside the results: what each compares, how one
//! is evaluated for every implementation that is not the baseline, and
//! their table. Reported, never asserted.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::*;

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
    /// measured (µs) must be at most `limit`.
    MicrosAtMost,
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
            TargetKind::RatioAtMost | TargetKind::BytesAtMost | TargetKind::MicrosAtMost => {
                measured <= limit
            }
        };
        let missed_by = match kind {
            TargetKind::RatioAtLeast => (1.0 - measured / limit) * 100.0,
            TargetKind::RatioAtMost | TargetKind::BytesAtMost | TargetKind::MicrosAtMost => {
                (measured / limit - 1.0) * 100.0
            }
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
            TargetKind::MicrosAtMost => format_micros(self.measured),
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
