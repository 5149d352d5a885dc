//! servercore: a TCP game-server engine in the shape of the classic IOCP
//! server core, on io_uring with a portable mio fallback.
//!
//! Layers, bottom up (one module each):
//! - [`driver`]: submits socket I/O and reports completions (io_uring or poll);
//! - [`session`]: per-connection state and the [`Session`] callbacks;
//! - [`service`]: worker threads, listeners, connectors, the session
//!   registry, start/stop/join, broadcast;
//! - [`packet`]: `[size][id]` framing, pooled packet building, typed dispatch;
//! - [`job`]: `JobQueue` actors, the global queue and the timer;
//! - [`transport`]: TLS (rustls) and WebSocket between the socket and the
//!   session, per listener; QUIC (quinn) bridged into sessions.
//!
//! Beside them, [`log_throttle`] rate-limits every log line a peer can
//! cause, in whichever layer it is written.
//!
//! ```no_run
//! use servercore::{ServerService, Session, SessionHandle};
//!
//! struct Echo;
//! impl Session for Echo {
//!     fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
//!         let _ = session.send_copy(data);
//!         data.len()
//!     }
//! }
//!
//! let service = ServerService::builder("127.0.0.1:7777")
//!     .max_sessions(10_000)
//!     .workers(2)
//!     .session(|| Echo)
//!     .start()?;
//! service.join();
//! # Ok::<(), servercore::StartError>(())
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod driver;
#[deny(unsafe_code)]
pub mod job;
#[deny(unsafe_code)]
pub mod log_throttle;
#[deny(unsafe_code)]
pub mod packet;
#[deny(unsafe_code)]
pub mod service;
#[deny(unsafe_code)]
pub mod session;
#[deny(unsafe_code)]
pub mod transport;

pub use bytes::Bytes;
pub use driver::{Backend, BackendError};
pub use service::{
    AdoptError, ClientService, ClientServiceBuilder, ConnectError, EngineMetrics, ServerService,
    ServerServiceBuilder, ServiceStats, SessionGroup, StartError, WorkerFailure, WorkerMetrics,
};
pub use session::{
    DisconnectKind, DisconnectReason, OverflowPolicy, SendError, Session, SessionHandle, SessionId,
};
pub use transport::{
    ClientTransport, QuicClientConfig, QuicConfig, QuicMetrics, ServerTransport, WebSocketConfig,
};
