//! The open-file limit: raised to the hard limit at start, and checked
//! against a server's `--max-sessions` before it listens.
//!
//! Policy (documented in the README): a server whose `max_sessions`, plus a
//! reserve for everything else that holds a descriptor, cannot fit under
//! the raised limit refuses to start and says what to change, instead of
//! failing later with `EMFILE` under load.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors kept for what is not a session: standard streams, the
/// database files, the admin listener and its clients, log files.
pub const BASE_RESERVE: u64 = 64;
/// Descriptors each worker holds besides its sessions: its ring or poll
/// instance, its waker, its listener.
pub const PER_WORKER_RESERVE: u64 = 4;

/// The open-file limit after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling of the soft one).
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (or to the kernel's
/// `nr_open` when the hard limit is unlimited) and returns the result.
/// A refusal leaves the limit as it was, logged.
pub fn raise_open_files() -> FileLimit {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return FileLimit {
            soft: u64::MAX,
            hard: u64::MAX,
        };
    };
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft < target {
        if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            return FileLimit { soft, hard };
        }
        tracing::debug!(from = soft, to = target, "raised the open-file limit");
        return FileLimit { soft: target, hard };
    }
    FileLimit { soft, hard }
}

/// Descriptors a server with `workers` workers and `max_sessions`
/// sessions needs at most.
pub fn needed(max_sessions: usize, workers: usize) -> u64 {
    max_sessions as u64 + BASE_RESERVE + PER_WORKER_RESERVE * workers as u64
}

/// The worker count a `--workers` flag means.
pub fn workers(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Refuses a `max_sessions` the limit cannot hold, naming both numbers
/// and the fixes.
pub fn check_sessions(max_sessions: usize, workers: usize, limit: FileLimit) -> anyhow::Result<()> {
    let needed = needed(max_sessions, workers);
    anyhow::ensure!(
        needed <= limit.soft,
        "--max-sessions {max_sessions} needs up to {needed} open files ({max_sessions} sessions \
         + {} reserved for the database, admin, listeners and {workers} workers), but the \
         open-file limit is {} (hard limit {}): raise it (`ulimit -n`, systemd `LimitNOFILE=`, \
         docker `--ulimit nofile=`) or lower --max-sessions to at most {}",
        needed - max_sessions as u64,
        limit.soft,
        limit.hard,
        limit.soft.saturating_sub(needed - max_sessions as u64)
    );
    Ok(())
}

/// The limit raised once per process ([`raise_open_files`] on first use).
pub fn raised() -> FileLimit {
    static LIMIT: std::sync::OnceLock<FileLimit> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(raise_open_files)
}
