//! The tables of each chat and echo scenario, built from their results.

use super::*;

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
                    crate::load::ECHO_SIZE
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
            crate::load::CHAT_SIZE,
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
pub(crate) fn in_columns<'a, R>(
    columns: &[String],
    find: impl Fn(&str) -> Option<&'a R>,
) -> Vec<Option<&'a R>> {
    columns.iter().map(|column| find(column)).collect()
}

/// The latency rows every load scenario shows (`max` only where asked).
pub(crate) fn latency_rows(section: &mut Section, latencies: &[Option<&Latency>], with_max: bool) {
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
pub(crate) fn cpu_rows(section: &mut Section, cpus: &[Option<&WindowCpu>]) {
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
