//! What both backends do when accepting fails: which errors concern one
//! connection only, which mean the listener must rest, and which mean it
//! can never accept; and how long it rests.

use std::io;
use std::time::Duration;

/// How long a listener rests after an accept error such as `EMFILE`, so a
/// full descriptor table does not turn into a hot loop.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// What an accept error asks of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// Interrupted by a signal: try again at once; not worth reporting.
    Retry,
    /// The error concerns the one connection being accepted (aborted or
    /// reset before it was accepted, refused by a firewall, a network
    /// error pending on it): report it and go on accepting.
    Skip,
    /// Out of descriptors or memory, or anything not known to be harmless:
    /// report it and rest for [`ACCEPT_BACKOFF`] before accepting again.
    BackOff,
    /// The socket cannot accept at all (not listening, not a socket):
    /// report it once and stop accepting on it.
    Stop,
}

/// Classifies an accept error (never `WouldBlock`, which only means the
/// backlog is empty).
pub(crate) fn classify(error: &io::Error) -> AcceptFailure {
    #[cfg(unix)]
    match error.raw_os_error() {
        Some(libc::EINTR) => return AcceptFailure::Retry,
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL) => return AcceptFailure::Stop,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            return AcceptFailure::BackOff
        }
        // accept(2): errors already pending on the new connection, to be
        // treated like EAGAIN by retrying.
        #[cfg(target_os = "linux")]
        Some(
            libc::ENETDOWN
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH,
        ) => return AcceptFailure::Skip,
        _ => {}
    }
    match error.kind() {
        io::ErrorKind::Interrupted => AcceptFailure::Retry,
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::PermissionDenied => AcceptFailure::Skip,
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported => AcceptFailure::Stop,
        _ => AcceptFailure::BackOff,
    }
}

/// Logs that a listener stopped accepting for good.
pub(crate) fn log_stopped(error: &io::Error) {
    tracing::error!(%error, "accepting stopped on a listener that cannot accept");
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn of(errno: i32) -> AcceptFailure {
        classify(&io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn each_error_gets_its_action() {
        assert_eq!(of(libc::EINTR), AcceptFailure::Retry);
        assert_eq!(of(libc::ECONNABORTED), AcceptFailure::Skip);
        assert_eq!(of(libc::EPERM), AcceptFailure::Skip);
        assert_eq!(of(libc::EMFILE), AcceptFailure::BackOff);
        assert_eq!(of(libc::ENFILE), AcceptFailure::BackOff);
        assert_eq!(of(libc::ENOMEM), AcceptFailure::BackOff);
        assert_eq!(of(libc::EINVAL), AcceptFailure::Stop);
        assert_eq!(of(libc::ENOTSOCK), AcceptFailure::Stop);
        assert_eq!(of(libc::EBADF), AcceptFailure::Stop);
        // Unknown: rest rather than spin.
        assert_eq!(of(libc::EIO), AcceptFailure::BackOff);
    }
}
