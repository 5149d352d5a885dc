//! The service layer: worker threads, listeners, connectors, counters,
//! start/stop/join and broadcast.
//!
//! [`ServerService`] accepts connections and hands them to workers
//! round-robin; [`ClientService`] connects sessions to a server. Both run the
//! same worker loop (`worker`), one per thread, each owning one driver and
//! the sessions assigned to it. [`SessionGroup`] is a room's membership.

mod client;
mod config;
mod engine;
mod group;
mod log_limit;
pub(crate) mod metrics;
mod server;
#[cfg(test)]
mod tests;
mod worker;

pub use client::{ClientService, ClientServiceBuilder, ConnectError};
pub use engine::{ServiceStats, WorkerFailure};
pub use group::SessionGroup;
pub use metrics::{EngineMetrics, WorkerMetrics};
pub use server::{ServerService, ServerServiceBuilder};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The requested backend cannot run here.
    #[error(transparent)]
    Backend(#[from] crate::BackendError),
    /// Binding or listening failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A worker thread or its driver could not be created.
    #[error("cannot start a worker")]
    Worker(#[source] std::io::Error),
}
