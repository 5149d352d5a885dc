//! The INFO log's account of disconnects: at most one line per interval for
//! the whole service, with the counts by reason, instead of a line per
//! session (each session's end is logged at DEBUG). Any worker's
//! housekeeping may write it; the last one is written when the service has
//! stopped.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::session::{DisconnectKind, Mailbox};

/// How often the summary is written while sessions keep ending.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// The disconnects already summarised, and when the next line is due.
pub(crate) struct DisconnectSummary {
    state: Mutex<State>,
}

struct State {
    /// `None` until the first housekeeping round.
    next_at: Option<Instant>,
    /// Disconnects by kind covered by the lines so far.
    logged: [u64; DisconnectKind::COUNT],
}

impl DisconnectSummary {
    pub(crate) fn new() -> DisconnectSummary {
        DisconnectSummary {
            state: Mutex::new(State {
                next_at: None,
                logged: [0; DisconnectKind::COUNT],
            }),
        }
    }

    /// A worker's housekeeping at `now`: writes the line if the interval
    /// has passed and another worker is not writing it.
    pub(crate) fn tick(&self, now: Instant, mailboxes: &[Arc<Mailbox>]) {
        let Some(mut state) = self.state.try_lock() else {
            return;
        };
        match state.next_at {
            Some(at) if now < at => return,
            Some(_) => write(&mut state, mailboxes),
            None => {}
        }
        state.next_at = Some(now + SUMMARY_INTERVAL);
    }

    /// Writes what the lines so far have not covered (the service stopped).
    pub(crate) fn flush(&self, mailboxes: &[Arc<Mailbox>]) {
        write(&mut self.state.lock(), mailboxes);
    }
}

fn write(state: &mut State, mailboxes: &[Arc<Mailbox>]) {
    let mut now = [0u64; DisconnectKind::COUNT];
    for mailbox in mailboxes {
        for (sum, n) in now.iter_mut().zip(mailbox.counters.disconnects()) {
            *sum += n;
        }
    }
    let mut since = [0u64; DisconnectKind::COUNT];
    for ((new, seen), logged) in since.iter_mut().zip(now).zip(state.logged) {
        *new = seen.saturating_sub(logged);
    }
    state.logged = now;
    let disconnects: u64 = since.iter().sum();
    if disconnects > 0 {
        tracing::info!(
            disconnects,
            by_reason = %ByReason(&since),
            "sessions disconnected since the last summary"
        );
    }
}

/// `malformed_packet=1000,closed_by_peer=3`: the kinds that occurred.
struct ByReason<'a>(&'a [u64; DisconnectKind::COUNT]);

impl fmt::Display for ByReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in DisconnectKind::ALL {
            let count = self.0[kind.index()];
            if count > 0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{}={count}", kind.name())?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_reason_names_only_what_occurred() {
        let mut counts = [0; DisconnectKind::COUNT];
        counts[DisconnectKind::MalformedPacket.index()] = 1000;
        counts[DisconnectKind::ClosedByPeer.index()] = 3;
        assert_eq!(
            ByReason(&counts).to_string(),
            "closed_by_peer=3,malformed_packet=1000"
        );
        assert_eq!(ByReason(&[0; DisconnectKind::COUNT]).to_string(), "");
    }
}
