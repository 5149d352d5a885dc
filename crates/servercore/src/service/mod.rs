//! The service layer: worker threads, listeners, connectors, counters,
//! start/stop/join and broadcast.
//!
//! [`ServerService`] accepts connections and hands them to workers
//! round-robin; [`ClientService`] connects sessions to a server. Both run the
//! same worker loop (`worker`), one per thread, each owning one driver and
//! the sessions assigned to it (in `slots`); each session's lifecycle is a
//! sans-IO state machine (`connection`) the worker feeds with driver events
//! and mailbox requests, and the emptied write vectors are pooled per
//! worker (`batch_pool`). [`SessionGroup`] is a room's membership.
//! [`EngineMetrics`] snapshots the per-worker counters (`metrics`); a worker
//! whose driver fails for good stops the service, which reports it as a
//! [`WorkerFailure`]; accept failures are logged at most once a second
//! (`log_limit`), and disconnects once an interval, counted by reason, for
//! the whole service (`disconnect_log`).

mod batch_pool;
mod client;
mod config;
mod connection;
mod disconnect_log;
pub(crate) mod engine;
mod group;
mod log_limit;
pub(crate) mod metrics;
mod server;
mod slots;
#[cfg(test)]
mod tests;
mod worker;

pub use client::{AdoptError, ClientService, ClientServiceBuilder, ConnectError};
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
