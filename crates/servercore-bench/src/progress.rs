//! The harness's progress display: one indicatif bar that says which
//! scenario and implementation runs, and what phase (connecting, warming up,
//! measuring) it is in. Hidden when stderr is not a terminal; text printed
//! through it appears above the bar either way.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A cheap-to-clone handle on the bar.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr (hidden if stderr is not a terminal).
    pub fn new() -> Progress {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner:.green} {prefix:.bold} {msg:<28} [{bar:30.cyan/blue}] {pos}/{len} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// Starts a phase: `prefix` names the run, `message` the phase, `len`
    /// the units of work (connections, milliseconds).
    pub fn phase(&self, prefix: &str, message: &str, len: u64) {
        self.bar.set_prefix(prefix.to_string());
        self.bar.set_message(message.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
    }

    /// Starts a step of the current phase: a new message and length, the
    /// same prefix.
    pub fn step(&self, message: &str, len: u64) {
        self.bar.set_message(message.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
    }

    /// Advances the phase by `n` units.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Sets the phase position.
    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// Prints a line to stdout above the bar.
    pub fn println(&self, text: &str) {
        self.bar.suspend(|| println!("{text}"));
    }

    /// Prints a line to stderr above the bar.
    pub fn eprintln(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
