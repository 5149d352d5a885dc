//! Rate-limited logging of repeated failures, so a persistent condition
//! (the descriptor table full, say) yields one line per interval with a
//! count instead of one line per retry.

use std::io;
use std::time::{Duration, Instant};

/// How often a failure that keeps happening is logged again.
pub(crate) const REPEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Accept failures of one worker, logged at most once per
/// [`REPEAT_INTERVAL`].
#[derive(Debug, Default)]
pub(crate) struct AcceptErrorLog {
    /// When the last line was written; `None` before the first failure.
    last_logged: Option<Instant>,
    /// Failures since the last line (not yet reported).
    unreported: u64,
}

impl AcceptErrorLog {
    /// Counts one failure; writes a line if none was written for an
    /// interval (the first failure always is), with the failures it covers.
    pub(crate) fn failed(&mut self, worker: u16, error: &io::Error, now: Instant) {
        self.unreported += 1;
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < REPEAT_INTERVAL)
        {
            return;
        }
        if self.last_logged.is_none() {
            tracing::warn!(worker, %error, "accept failed");
        } else {
            tracing::warn!(
                worker,
                %error,
                errors = self.unreported,
                "accept failed; errors counts the failures since the last report"
            );
        }
        self.last_logged = Some(now);
        self.unreported = 0;
    }

    /// An accept succeeded: reports failures not logged yet, and lets the
    /// next failure be logged at once.
    pub(crate) fn succeeded(&mut self, worker: u16) {
        if self.last_logged.is_none() {
            return;
        }
        if self.unreported > 0 {
            tracing::warn!(
                worker,
                errors = self.unreported,
                "accepting again; errors counts the failures since the last report"
            );
        }
        *self = AcceptErrorLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_between_lines_and_resets_on_success() {
        let mut log = AcceptErrorLog::default();
        let error = io::Error::from_raw_os_error(24);
        let start = Instant::now();
        log.failed(0, &error, start);
        assert_eq!((log.last_logged, log.unreported), (Some(start), 0));
        for ms in 1..50 {
            log.failed(0, &error, start + Duration::from_millis(ms * 20));
        }
        assert_eq!(log.unreported, 49);
        let later = start + REPEAT_INTERVAL;
        log.failed(0, &error, later);
        assert_eq!((log.last_logged, log.unreported), (Some(later), 0));
        log.failed(0, &error, later + Duration::from_millis(1));
        log.succeeded(0);
        assert_eq!((log.last_logged, log.unreported), (None, 0));
    }
}
