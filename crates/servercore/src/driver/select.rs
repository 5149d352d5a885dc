//! Backend selection: `Auto` probes io_uring and falls back to poll.

use std::fmt;
use std::str::FromStr;

/// Which I/O backend a service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring where the kernel and sandbox allow it, poll otherwise.
    #[default]
    Auto,
    /// io_uring only; starting fails with a clear error where it cannot work.
    IoUring,
    /// The portable readiness backend (mio: epoll, kqueue, Windows).
    Poll,
}

impl Backend {
    /// Reads `SERVERCORE_BACKEND` (`auto`, `uring`, `poll`); `Auto` if unset.
    pub fn from_env() -> Result<Backend, BackendError> {
        match std::env::var("SERVERCORE_BACKEND") {
            Ok(value) if !value.trim().is_empty() => value.parse(),
            _ => Ok(Backend::Auto),
        }
    }

    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "uring",
            Backend::Poll => "poll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" | "iouring" | "io-uring" => Ok(Backend::IoUring),
            "poll" | "mio" | "epoll" => Ok(Backend::Poll),
            other => Err(BackendError::UnknownName(other.to_string())),
        }
    }
}

/// Why a backend could not be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The name is none of `auto`, `uring`, `poll`.
    #[error("unknown backend {0:?}: expected auto, uring or poll")]
    UnknownName(String),
    /// io_uring was asked for but cannot work here.
    #[error("the io_uring backend is unavailable: {0}")]
    UringUnavailable(String),
}

/// The backend a service actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolvedBackend {
    #[cfg(target_os = "linux")]
    IoUring,
    Poll,
}

impl ResolvedBackend {
    pub(crate) fn as_backend(self) -> Backend {
        match self {
            #[cfg(target_os = "linux")]
            ResolvedBackend::IoUring => Backend::IoUring,
            ResolvedBackend::Poll => Backend::Poll,
        }
    }
}

/// Turns a requested backend into the one to run, probing io_uring once.
pub(crate) fn resolve_backend(requested: Backend) -> Result<ResolvedBackend, BackendError> {
    match requested {
        Backend::Poll => Ok(ResolvedBackend::Poll),
        Backend::IoUring => probe_uring()
            .map(|()| uring_backend())
            .map_err(BackendError::UringUnavailable),
        Backend::Auto => match probe_uring() {
            Ok(()) => Ok(uring_backend()),
            Err(missing) => {
                tracing::warn!(%missing, "io_uring unavailable, falling back to the poll backend");
                Ok(ResolvedBackend::Poll)
            }
        },
    }
}

#[cfg(target_os = "linux")]
fn uring_backend() -> ResolvedBackend {
    ResolvedBackend::IoUring
}

#[cfg(not(target_os = "linux"))]
fn uring_backend() -> ResolvedBackend {
    unreachable!("the io_uring probe never succeeds off Linux")
}

#[cfg(target_os = "linux")]
fn probe_uring() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(super::uring::probe).clone()
}

#[cfg(not(target_os = "linux"))]
fn probe_uring() -> Result<(), String> {
    Err("io_uring exists only on Linux".to_string())
}

/// The backends that can run here, in preference order (io_uring first when
/// the kernel allows it; poll always).
pub fn available_backends() -> Vec<Backend> {
    let mut backends = Vec::with_capacity(2);
    if probe_uring().is_ok() {
        backends.push(Backend::IoUring);
    }
    backends.push(Backend::Poll);
    backends
}

/// Why io_uring cannot run here, or `None` when it can.
pub fn uring_unavailable_reason() -> Option<String> {
    probe_uring().err()
}
