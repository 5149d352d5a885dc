//! The result of a load run: [`LoadReport`], printed as a table for people
//! and written as JSON for scripts (the same numbers in both).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Everything a load run measured. Serialises to the JSON that
/// `servercore client --json FILE` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// What the sessions did: `chat` or `move`.
    #[serde(default = "chat_scenario")]
    pub scenario: String,
    /// The server address.
    pub addr: String,
    /// The client side's backend (`io_uring` or `poll`).
    pub backend: String,
    /// `C_CHAT` messages per second per session, as configured.
    pub rate_per_session: f64,
    /// The chat window asked for, in seconds.
    pub duration_secs: f64,
    /// How long the sessions actually chatted, in seconds (shorter when the
    /// run was interrupted).
    pub chat_secs: f64,
    /// From the start of the chat to the last delivery received, in seconds
    /// (the chat window plus the time the last messages took to arrive).
    pub receive_secs: f64,
    /// The local source addresses the connections were spread over (empty:
    /// the system's choice).
    pub source_addrs: Vec<String>,
    /// True if Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Set when the run stopped before its window's end because no session
    /// was alive any more: says after how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_early: Option<String>,
    /// What became of the sessions.
    pub sessions: SessionSummary,
    /// `C_CHAT` messages queued by all sessions.
    pub messages_sent: u64,
    /// `S_CHAT` messages received by all sessions: each message sent counts
    /// once per room member who received it.
    pub deliveries_received: u64,
    /// `S_CHAT` messages that came back to their own sender: the latency
    /// samples.
    pub own_echoes: u64,
    /// Messages sent per second of chat.
    pub sent_per_sec: f64,
    /// Deliveries received per second, over `receive_secs`.
    pub deliveries_per_sec: f64,
    /// Send-to-own-receive latency of the chat messages.
    pub latency_us: LatencySummary,
    /// The world traffic: moves, spawns, own-move latency (present in the
    /// move scenario, or when the server sent world messages).
    #[serde(default)]
    pub movement: Option<MoveSummary>,
    /// Errors by kind: `connect_failed`, `login_refused`, `enter_refused`,
    /// `malformed_reply`, `never_entered`, `move_from_unseen`,
    /// `spawn_of_seen`, `despawn_of_unseen`, `disconnect:<reason>`.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub errors_total: u64,
    /// Local against cross-node deliveries, for a run over several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<super::nodes::NodeSplit>,
    /// Transfers followed and reconnects, for a run over several nodes (or
    /// one that was told `S_TRANSFER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowSummary>,
    /// Other players' moves, local against cross-border, for a run given
    /// the world's zones ([`super::LoadConfig::zones`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_latency: Option<ZoneLatency>,
}

/// The latency of other players' moves (the mover's `C_MOVE` sent until a
/// watcher received its `S_MOVE`) split by where the mover stood: in the
/// watcher's node's zone (local) or in another node's (cross-border, the
/// move came through NATS, one tick late). A sample of the window's
/// deliveries (one in eight); movers within half a cell of a border, whose
/// node is not known from their position, are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ZoneLatency {
    /// Moves of movers in the watcher's node's zone.
    pub local_us: LatencySummary,
    /// Moves of movers in another node's zone.
    pub cross_us: LatencySummary,
}

/// Clients that moved between nodes: transfers followed (`S_TRANSFER`, one
/// world across nodes) and reconnects after a node died.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowSummary {
    /// `S_TRANSFER`s received.
    pub transfers_told: u64,
    /// Transfers followed: in game on the new node.
    pub transfers: u64,
    /// From `S_TRANSFER` to the first `S_MOVE` received from the new node
    /// (with a warm-up, of the transfers told after it).
    pub transfer_time_us: LatencySummary,
    /// Transfers that could not be followed (the client then reconnected
    /// by name, or gave up).
    pub transfer_errors: u64,
    /// Clients in game again after their node died.
    pub reconnects: u64,
    /// Reconnect attempts that failed (a dead node tried, a login refused).
    pub reconnect_attempts_failed: u64,
    /// Clients still between two nodes when the run stopped (not counted
    /// in game).
    pub in_transit_at_end: u64,
    /// What the clients were told that broke the world's rules on their
    /// connection: `move_from_unseen`, `spawn_of_seen` and
    /// `despawn_of_unseen`, together (each is also under `errors`).
    pub violations: u64,
}

fn chat_scenario() -> String {
    "chat".to_owned()
}

/// The movement part of a run: what the sessions' walks sent and what
/// the world sent back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveSummary {
    /// `C_MOVE` messages per second per session, as configured.
    pub rate_per_session: f64,
    /// Walking speed, units per second.
    pub speed: f64,
    /// `C_MOVE` messages queued by all sessions.
    pub moves_sent: u64,
    /// Moves sent per second of the window.
    pub moves_per_sec: f64,
    /// `S_MOVE` messages received by all sessions (about anyone).
    pub deliveries: u64,
    /// `S_MOVE` deliveries per second, over `receive_secs`.
    pub deliveries_per_sec: f64,
    /// `S_MOVE` messages about their own receiver: the latency samples.
    pub own_moves: u64,
    /// `S_MOVE` messages that came by QUIC datagram (0 over TCP).
    #[serde(default)]
    pub by_datagram: u64,
    /// `S_MOVE` messages that came by the ordered stream.
    #[serde(default)]
    pub by_stream: u64,
    /// Own moves sent whose `S_MOVE` never came back (a datagram lost, or
    /// one the server dropped).
    #[serde(default)]
    pub lost: u64,
    /// Own-move latency: from sending a `C_MOVE` to receiving its `S_MOVE`.
    pub latency_us: LatencySummary,
    /// Players spawned to sessions: each player listed in an `S_SPAWN`
    /// counts (not the packets; the server counts those).
    #[serde(alias = "spawns")]
    pub players_spawned: u64,
    /// Players despawned from sessions (each player of an `S_DESPAWN`).
    #[serde(alias = "despawns")]
    pub players_despawned: u64,
    /// The largest `S_SPAWN` packet received, header included, in bytes
    /// (a crowd's spawn list is split under 64 KiB).
    #[serde(default)]
    pub largest_spawn_bytes: u64,
    /// Own moves the server clamped or cut (position back differs from the
    /// one sent).
    pub corrections: u64,
}

/// The sessions of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Sessions asked for.
    pub requested: u64,
    /// Sessions whose connect succeeded.
    pub connected: u64,
    /// Sessions that logged in.
    pub logged_in: u64,
    /// Sessions that entered the game.
    pub entered: u64,
    /// Sessions still in game when the run stopped them (entered, never
    /// failed): `in_game_at_end + failed = requested` unless Ctrl-C came
    /// before every connect was tried.
    #[serde(default)]
    pub in_game_at_end: u64,
    /// Sessions that failed: connect failures plus connected sessions that
    /// met an error (refused, disconnected early, malformed reply, never
    /// entered).
    pub failed: u64,
}

/// Latency percentiles in microseconds (all 0 without samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                samples: 0,
                mean: 0.0,
                min: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        LatencySummary {
            samples: histogram.len(),
            mean: histogram.mean(),
            min: histogram.min(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

impl LoadReport {
    /// Writes the report as pretty JSON to `path` (`-`: standard output).
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        if path == Path::new("-") {
            print!("{text}");
            return Ok(());
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The report as a table, one metric a line.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |name: &str, value: String| rows.push((name.to_owned(), value));
        let s = &self.sessions;
        row(
            "sessions connected",
            format!("{} / {}", count(s.connected), count(s.requested)),
        );
        row("sessions entered the game", count(s.entered));
        row("sessions in game at the end", count(s.in_game_at_end));
        row("sessions failed", count(s.failed));
        // A move run without chat leaves out the chat rows.
        let chatted =
            self.scenario != "move" || self.rate_per_session > 0.0 || self.deliveries_received > 0;
        if chatted {
            row(
                "messages sent",
                format!(
                    "{} ({}/s)",
                    count(self.messages_sent),
                    rate(self.sent_per_sec)
                ),
            );
            row(
                "own messages back",
                format!(
                    "{} of {}",
                    count(self.own_echoes),
                    count(self.messages_sent)
                ),
            );
            row("deliveries received", count(self.deliveries_received));
            row("deliveries per second", rate(self.deliveries_per_sec));
            latency_rows(&mut row, "latency", &self.latency_us);
        }
        if let Some(m) = &self.movement {
            row(
                "moves sent",
                format!("{} ({}/s)", count(m.moves_sent), rate(m.moves_per_sec)),
            );
            row(
                "own moves back",
                format!("{} of {}", count(m.own_moves), count(m.moves_sent)),
            );
            row("move deliveries", count(m.deliveries));
            if m.by_datagram > 0 {
                row(
                    "moves by datagram / by stream",
                    format!("{} / {}", count(m.by_datagram), count(m.by_stream)),
                );
                row("own moves lost", count(m.lost));
            }
            row("move deliveries per second", rate(m.deliveries_per_sec));
            latency_rows(&mut row, "own-move latency", &m.latency_us);
            row("players spawned", count(m.players_spawned));
            row("players despawned", count(m.players_despawned));
            row("corrections", count(m.corrections));
        }
        if let Some(split) = &self.nodes {
            row("nodes", split.addrs.join(", "));
            let per_node: Vec<String> = split.sessions_per_node.iter().map(|n| count(*n)).collect();
            row("sessions per node", per_node.join(" / "));
            row("local deliveries", count(split.local_deliveries));
            row("cross-node deliveries", count(split.cross_deliveries));
            for (name, l) in [
                ("local", &split.local_latency_us),
                ("cross-node", &split.cross_latency_us),
            ] {
                if l.samples > 0 {
                    row(
                        &format!("{name} latency p50/p99/p99.9"),
                        format!("{} / {} / {}", micros(l.p50), micros(l.p99), micros(l.p999)),
                    );
                }
            }
        }
        if let Some(f) = &self.follow {
            row(
                "transfers followed",
                format!("{} of {}", count(f.transfers), count(f.transfers_told)),
            );
            if f.transfer_time_us.samples > 0 {
                row(
                    "transfer time p50/p99",
                    format!(
                        "{} / {}",
                        micros(f.transfer_time_us.p50),
                        micros(f.transfer_time_us.p99)
                    ),
                );
            }
            row("transfer errors", count(f.transfer_errors));
            row("reconnects", count(f.reconnects));
            if f.reconnect_attempts_failed > 0 {
                row(
                    "reconnect attempts failed",
                    count(f.reconnect_attempts_failed),
                );
            }
            if f.in_transit_at_end > 0 {
                row("between nodes at the end", count(f.in_transit_at_end));
            }
            row("violations", count(f.violations));
        }
        if let Some(z) = &self.zone_latency {
            for (name, l) in [("local", &z.local_us), ("cross-border", &z.cross_us)] {
                if l.samples > 0 {
                    row(
                        &format!("{name} move latency p50/p99 (sampled)"),
                        format!("{} / {}", micros(l.p50), micros(l.p99)),
                    );
                }
            }
        }
        if self.errors.is_empty() {
            row("errors", "none".to_owned());
        } else {
            for (kind, n) in &self.errors {
                row(&format!("errors: {kind}"), count(*n));
            }
        }
        let moving = self
            .movement
            .as_ref()
            .filter(|_| self.scenario == "move")
            .map(|m| {
                format!(
                    ", {} moves/s at {} units/s",
                    trim_float(m.rate_per_session),
                    trim_float(m.speed)
                )
            })
            .unwrap_or_default();
        let title = format!(
            "{} sessions -> {} (backend {}), {} msg/s each{moving}, {:.1} s{}",
            count(s.requested),
            self.addr,
            self.backend,
            trim_float(self.rate_per_session),
            self.chat_secs,
            match (&self.ended_early, self.interrupted) {
                (Some(why), _) => format!(" (ended early: {why})"),
                (None, true) => " (interrupted)".to_owned(),
                (None, false) => String::new(),
            }
        );
        summary_table(&title, &rows)
    }
}

impl LoadReport {
    /// What the errors mean and what to do about them, one line per kind
    /// that has advice: why the server refused logins (as `S_LOGIN.reason`
    /// said), and the server flags that lift a limit.
    pub fn advice(&self) -> Vec<String> {
        let defaults = servercore_game::GameConfig::default();
        let mut lines = Vec::new();
        for (kind, &n) in &self.errors {
            let sessions = if n == 1 { "session" } else { "sessions" };
            let n = count(n);
            let text = match kind.strip_prefix(super::stats::kind::LOGIN_REFUSED_PREFIX) {
                Some("too_many_connections") => format!(
                    "{n} {sessions} turned away: the server holds at most {} connections from one \
                     address (server --max-conns-per-ip); start it with --max-conns-per-ip 0 for a \
                     load test from one machine",
                    defaults.max_conns_per_ip
                ),
                Some("account_limit") => format!(
                    "{n} {sessions} refused: one address may create at most {} accounts a minute \
                     (server --max-new-accounts-per-min); start the server with \
                     --max-new-accounts-per-min 0 for a load test, or reuse accounts already \
                     created (the same --account-prefix)",
                    defaults.max_new_accounts_per_min
                ),
                Some("bad_token") => format!(
                    "{n} {sessions} refused: the server takes only signed tokens \
                     (server --auth-secret), and the dummy clients log in with plain names; \
                     load-test a server started without --auth-secret"
                ),
                Some("account_name_too_long") => format!(
                    "{n} {sessions} refused: the account names are too long; use a shorter \
                     --account-prefix"
                ),
                Some("database_unavailable") => format!(
                    "{n} {sessions} refused: the server's database is unavailable (see the \
                     server's log)"
                ),
                Some("server_error") => format!(
                    "{n} {sessions} refused: the server failed to log them in (see its log)"
                ),
                Some(other) => format!("{n} {sessions} refused: {}", other.replace('_', " ")),
                None if kind == super::stats::kind::LOGIN_REFUSED => format!(
                    "{n} {sessions} refused without a reason (a server older than \
                     S_LOGIN.reason): check its log and its limits (--max-conns-per-ip, \
                     --max-new-accounts-per-min, --auth-secret)"
                ),
                None if kind == super::stats::kind::CONNECT_FAILED => format!(
                    "{n} {sessions} could not connect: is a server listening on {}?",
                    self.addr
                ),
                None => continue,
            };
            lines.push(text);
        }
        lines
    }

    /// True when more than half of the sessions asked for failed: the run
    /// measured something else than what it was asked to.
    pub fn mostly_failed(&self) -> bool {
        self.sessions.requested > 0 && self.sessions.failed * 2 > self.sessions.requested
    }
}

/// A titled table of named values, one a line, names left and values right
/// aligned between two rules: the report of `servercore client` and the
/// closing summary of `servercore server`.
pub fn summary_table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|(_, value)| value.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out, "  {:-<width$}  {:-<value_width$}", "", "");
    for (name, value) in rows {
        let _ = writeln!(out, "  {name:<width$}  {value:>value_width$}");
    }
    let _ = write!(out, "  {:-<width$}  {:-<value_width$}", "", "");
    out
}

/// The percentile rows of one latency summary, named `name p50` ...
fn latency_rows(row: &mut impl FnMut(&str, String), name: &str, l: &LatencySummary) {
    if l.samples == 0 {
        row(name, "no samples".to_owned());
        return;
    }
    row(&format!("{name} p50"), micros(l.p50));
    row(&format!("{name} p90"), micros(l.p90));
    row(&format!("{name} p99"), micros(l.p99));
    row(&format!("{name} p99.9"), micros(l.p999));
    row(&format!("{name} max"), micros(l.max));
    row(&format!("{name} samples"), count(l.samples));
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

/// An integer with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A per-second figure: separators, one decimal below 100.
pub fn rate(per_sec: f64) -> String {
    if per_sec < 100.0 {
        format!("{per_sec:.1}")
    } else {
        count(per_sec.round() as u64)
    }
}

/// A latency in microseconds, in the unit that reads best.
pub fn micros(us: u64) -> String {
    human_duration(Duration::from_micros(us))
}

/// A duration as `850 µs`, `1.25 ms` or `2.40 s`.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

fn trim_float(x: f64) -> String {
    let text = format!("{x:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LoadReport {
        let mut histogram = crate::client::stats::new_histogram();
        for us in [100, 200, 300, 400, 5_000] {
            histogram.record(us).unwrap();
        }
        LoadReport {
            scenario: "move".into(),
            addr: "127.0.0.1:7777".into(),
            backend: "poll".into(),
            rate_per_session: 1.0,
            duration_secs: 10.0,
            chat_secs: 10.0,
            receive_secs: 10.0,
            source_addrs: vec![],
            interrupted: false,
            ended_early: None,
            sessions: SessionSummary {
                requested: 200,
                connected: 200,
                logged_in: 200,
                entered: 200,
                in_game_at_end: 200,
                failed: 0,
            },
            messages_sent: 2_000,
            deliveries_received: 400_000,
            own_echoes: 2_000,
            sent_per_sec: 200.0,
            deliveries_per_sec: 40_000.0,
            latency_us: LatencySummary::from_histogram(&histogram),
            movement: Some(MoveSummary {
                rate_per_session: 10.0,
                speed: 150.0,
                moves_sent: 20_000,
                moves_per_sec: 2_000.0,
                deliveries: 900_000,
                deliveries_per_sec: 90_000.0,
                own_moves: 20_000,
                by_datagram: 0,
                by_stream: 900_000,
                lost: 0,
                latency_us: LatencySummary::from_histogram(&histogram),
                players_spawned: 4_321,
                players_despawned: 1_234,
                largest_spawn_bytes: 900,
                corrections: 3,
            }),
            errors: BTreeMap::from([("disconnect:reset".to_owned(), 2)]),
            errors_total: 2,
            nodes: None,
            follow: None,
            zone_latency: None,
        }
    }

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(rate(12.345), "12.3");
        assert_eq!(rate(40_000.4), "40,000");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_250), "1.25 ms");
        assert_eq!(micros(2_400_000), "2.40 s");
        assert_eq!(trim_float(1.0), "1");
        assert_eq!(trim_float(0.25), "0.25");
    }

    #[test]
    fn table_and_json_carry_the_same_numbers() {
        let report = sample();
        let table = report.table();
        for needle in [
            "sessions connected",
            "200 / 200",
            "400,000",
            "40,000",
            "latency p99.9",
            "5.00 ms",
            "errors: disconnect:reset",
            "2,000 of 2,000",
            "10 moves/s at 150 units/s",
            "move deliveries per second",
            "90,000",
            "own-move latency p99.9",
            "4,321",
            "corrections",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from\n{table}");
        }
        let json = serde_json::to_string(&report).unwrap();
        let back: LoadReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["sessions"]["connected"], 200);
        assert_eq!(value["latency_us"]["p50"], 300);
        assert_eq!(value["errors"]["disconnect:reset"], 2);
        assert_eq!(value["movement"]["deliveries"], 900_000);
        assert_eq!(value["movement"]["latency_us"]["p50"], 300);
    }

    #[test]
    fn refusals_come_with_what_to_do() {
        let mut report = sample();
        report.sessions.failed = 150;
        report.errors = BTreeMap::from([
            ("login_refused:too_many_connections".to_owned(), 36),
            ("login_refused:account_limit".to_owned(), 44),
            ("disconnect:reset".to_owned(), 1),
        ]);
        let advice = report.advice();
        assert_eq!(advice.len(), 2, "{advice:?}");
        assert!(advice[0].starts_with("44 sessions refused: one address may create at most 20"));
        assert!(
            advice[0].contains("--max-new-accounts-per-min 0"),
            "{advice:?}"
        );
        assert!(advice[1].starts_with("36 sessions turned away: the server holds at most 64"));
        assert!(advice[1].contains("--max-conns-per-ip 0"), "{advice:?}");
        assert!(report.mostly_failed());
        report.sessions.failed = 100;
        assert!(!report.mostly_failed(), "half is not most");
    }

    #[test]
    fn the_table_keeps_its_counts_consistent() {
        let mut report = sample();
        report.sessions.entered = 30;
        report.sessions.in_game_at_end = 0;
        report.sessions.failed = 200;
        report.ended_early = Some("no session alive after 1.50 s of the 10.00 s window".into());
        let table = report.table();
        assert!(table.contains("sessions entered the game"), "{table}");
        let in_game = table
            .lines()
            .find(|line| line.contains("sessions in game at the end"))
            .unwrap();
        assert!(in_game.trim_end().ends_with(" 0"), "{table}");
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .ends_with("(ended early: no session alive after 1.50 s of the 10.00 s window)"),
            "{table}"
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: LoadReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        // A report written before the renames still reads.
        let old = json
            .replace("players_spawned", "spawns")
            .replace("players_despawned", "despawns")
            .replace("\"in_game_at_end\":0,", "");
        let back: LoadReport = serde_json::from_str(&old).unwrap();
        assert_eq!(back.movement.unwrap().players_spawned, 4_321);
    }

    #[test]
    fn empty_latency() {
        let summary = LatencySummary::from_histogram(&crate::client::stats::new_histogram());
        assert_eq!(summary.samples, 0);
        assert_eq!(summary.max, 0);
    }
}
