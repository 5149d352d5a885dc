//! What servercore's test suites share, in one place instead of a copy per
//! crate:
//!
//! - [`backend_tests!`]: one `#[test]` per I/O backend for a `fn(Backend)`;
//! - [`net`]: blocking loopback clients, deterministic payloads, bounded
//!   waits;
//! - [`sessions`]: engine sessions that record what happened to them;
//! - [`logging`]: test logging and a capture of log lines;
//! - [`client`]: a blocking game client speaking the protocol crate's
//!   packets over TCP or TLS;
//! - [`quic_client`]: a blocking game client over QUIC (stream and
//!   datagrams);
//! - [`child`]: a `servercore` child process and its ready file;
//! - [`netns`]: a network namespace of the test's own whose `lo` loses
//!   packets;
//! - [`cert`]: development certificates from `servercore cert`;
//! - [`services`]: the real NATS and PostgreSQL the cluster and storage
//!   tests run against;
//! - [`probe`]: the build-time probe that marks tests needing a missing
//!   outside tool as ignored (the only part without the `kit` feature, for
//!   build scripts).
//!
//! A dev-dependency only: nothing here is part of the engine's API.

pub mod probe;

#[cfg(feature = "kit")]
mod backend;
#[cfg(feature = "kit")]
pub mod cert;
#[cfg(feature = "kit")]
pub mod child;
#[cfg(feature = "kit")]
pub mod client;
#[cfg(feature = "kit")]
pub mod logging;
#[cfg(feature = "kit")]
pub mod net;
#[cfg(feature = "kit")]
pub mod netns;
#[cfg(feature = "kit")]
pub mod quic_client;
#[cfg(feature = "kit")]
pub mod services;
#[cfg(feature = "kit")]
pub mod sessions;

#[cfg(feature = "kit")]
pub use backend::require_uring;
#[cfg(feature = "kit")]
pub use logging::init_logging;
