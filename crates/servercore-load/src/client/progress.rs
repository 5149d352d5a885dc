//! The live progress display of a load run (indicatif, on standard error):
//! connected sessions, messages (or, in the move scenario, moves) sent and
//! received per second, the running p99 and the error count.
//!
//! Where standard error is not a terminal, indicatif draws nothing; the
//! final table is printed by the caller either way.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{count, human_duration, rate};
use super::stats::LoadStats;

/// How often the rates shown are recomputed.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The progress display of one run (a no-op when disabled).
pub struct Progress {
    bar: Option<ProgressBar>,
    requested: usize,
    /// Show moves instead of chat messages.
    moving: bool,
    window_start: Instant,
    window_sent: u64,
    window_received: u64,
    sent_per_sec: f64,
    received_per_sec: f64,
    p99: Option<Duration>,
}

impl Progress {
    /// A display for a run of `requested` sessions (showing moves when
    /// `moving`); `enabled: false` shows nothing.
    pub fn new(enabled: bool, requested: usize, moving: bool) -> Progress {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>8} {msg}")
                    .expect("static template")
                    .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            );
            bar.set_prefix("setup");
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            bar,
            requested,
            moving,
            window_start: Instant::now(),
            window_sent: 0,
            window_received: 0,
            sent_per_sec: 0.0,
            received_per_sec: 0.0,
            p99: None,
        }
    }

    /// Shows the set-up phase: connects and logins so far.
    pub fn setup(&mut self, stats: &LoadStats) {
        let Some(bar) = &self.bar else { return };
        bar.set_message(format!(
            "connected {}/{} | in game {} | failed {} | errors {}",
            count(LoadStats::get(&stats.connected)),
            count(self.requested as u64),
            count(LoadStats::get(&stats.entered)),
            count(LoadStats::get(&stats.connect_failed) + LoadStats::get(&stats.failed_sessions)),
            count(stats.error_total()),
        ));
    }

    /// Shows the warm-up before the window.
    pub fn warming_up(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_prefix("warm-up");
        }
    }

    /// What the display counts: moves or chat messages, sent and received.
    fn counts(&self, stats: &LoadStats) -> (u64, u64) {
        if self.moving {
            (
                LoadStats::get(&stats.moves_sent),
                LoadStats::get(&stats.move_deliveries),
            )
        } else {
            (
                LoadStats::get(&stats.sent),
                LoadStats::get(&stats.deliveries),
            )
        }
    }

    fn take_recent_p99(&self, stats: &LoadStats) -> Option<Duration> {
        if self.moving {
            stats.take_recent_move_p99()
        } else {
            stats.take_recent_p99()
        }
    }

    /// Switches to the chat phase: a bar over the chat window.
    pub fn start_chat(&mut self, duration: Duration, stats: &LoadStats) {
        self.window_start = Instant::now();
        (self.window_sent, self.window_received) = self.counts(stats);
        let _ = self.take_recent_p99(stats);
        let Some(bar) = &self.bar else { return };
        bar.set_length(duration.as_millis().max(1) as u64);
        bar.set_position(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:24}] {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(if self.moving { "move" } else { "chat" });
    }

    /// Shows the chat phase: `elapsed` of the window, rates, p99, errors.
    pub fn chat(&mut self, elapsed: Duration, stats: &LoadStats) {
        let now = Instant::now();
        let span = now - self.window_start;
        if span >= RATE_WINDOW {
            let (sent, received) = self.counts(stats);
            let secs = span.as_secs_f64();
            self.sent_per_sec = (sent - self.window_sent) as f64 / secs;
            self.received_per_sec = (received - self.window_received) as f64 / secs;
            self.window_start = now;
            self.window_sent = sent;
            self.window_received = received;
            if let Some(p99) = self.take_recent_p99(stats) {
                self.p99 = Some(p99);
            }
        }
        let Some(bar) = &self.bar else { return };
        bar.set_position(elapsed.as_millis() as u64);
        let live = LoadStats::get(&stats.connected) - LoadStats::get(&stats.disconnected);
        let what = if self.moving { "moves" } else { "sent" };
        bar.set_message(format!(
            "conn {} | {what} {}/s | recv {}/s | p99 {} | errors {}",
            count(live),
            rate(self.sent_per_sec),
            rate(self.received_per_sec),
            self.p99.map_or_else(|| "-".to_owned(), human_duration),
            count(stats.error_total()),
        ));
    }

    /// Shows the drain after the chat window.
    pub fn draining(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_prefix("drain");
        }
    }

    /// Removes the display.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
