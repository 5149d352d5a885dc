//! Settings shared by server and client services, with their defaults.

use std::time::Duration;

use crate::driver::{Backend, DriverConfig};
use crate::session::{OverflowPolicy, SendLimits};

/// Everything a running service needs to know; built by the builders.
#[derive(Debug, Clone)]
pub(crate) struct ServiceConfig {
    pub workers: usize,
    pub backend: Backend,
    pub max_sessions: usize,
    pub send: SendLimits,
    pub idle_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub disconnect_linger: Duration,
    pub max_receive_backlog: usize,
    pub driver: DriverConfig,
    pub nodelay: bool,
    pub job_slice: Duration,
    /// Send coalescing: hold a session's queued sends until this long after
    /// its last write. `None`: off (every send is written in the next round).
    pub coalesce_interval: Option<Duration>,
    /// Send coalescing: queued bytes that end the hold at once.
    pub coalesce_max_bytes: usize,
}

/// Default most buffers a session's send queue holds (queued or being
/// written). At the default 4 MiB hard limit the charge (bytes plus 64 per
/// buffer) is reached first, even for one-byte packets; the cap binds when
/// the hard limit is raised.
pub(crate) const DEFAULT_MAX_QUEUED_BUFFERS: usize = 64 * 1024;

/// Default bound of a coalesced queue: about a few full TCP segments' worth
/// of game packets, far below the default high watermark.
pub(crate) const DEFAULT_COALESCE_MAX_BYTES: usize = 32 * 1024;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            backend: Backend::Auto,
            max_sessions: 10_000,
            send: SendLimits {
                high_watermark: 256 * 1024,
                low_watermark: 64 * 1024,
                hard_limit: 4 * 1024 * 1024,
                max_buffers: DEFAULT_MAX_QUEUED_BUFFERS,
                policy: OverflowPolicy::Disconnect,
                coalesce_max_bytes: usize::MAX,
            },
            idle_timeout: None,
            shutdown_timeout: Duration::from_secs(5),
            disconnect_linger: Duration::from_secs(2),
            max_receive_backlog: 256 * 1024,
            driver: DriverConfig::default(),
            nodelay: true,
            job_slice: Duration::from_millis(10),
            coalesce_interval: None,
            coalesce_max_bytes: DEFAULT_COALESCE_MAX_BYTES,
        }
    }
}

impl ServiceConfig {
    /// The send limits each session gets, with the coalescing bound filled
    /// in (`usize::MAX` when coalescing is off).
    pub fn session_limits(&self) -> SendLimits {
        let mut limits = self.send;
        limits.coalesce_max_bytes = match self.coalesce_interval {
            Some(_) => self.coalesce_max_bytes,
            None => usize::MAX,
        };
        limits
    }

    /// Checks the settings for contradictions.
    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.workers > u16::MAX as usize {
            return Err("too many workers".into());
        }
        if self.max_sessions == 0 {
            return Err("max_sessions must be at least 1".into());
        }
        let send = &self.send;
        if send.low_watermark > send.high_watermark || send.high_watermark > send.hard_limit {
            return Err(format!(
                "send limits must satisfy low ({}) <= high ({}) <= hard ({})",
                send.low_watermark, send.high_watermark, send.hard_limit
            ));
        }
        if send.max_buffers == 0 {
            return Err("the send queue must hold at least one buffer".into());
        }
        if self.driver.recv_buffer_size < 64 || self.driver.recv_buffer_size > 16 * 1024 * 1024 {
            return Err("receive buffer size must be between 64 B and 16 MiB".into());
        }
        if !self.driver.recv_ring_entries.is_power_of_two() {
            return Err("receive ring entries must be a power of two".into());
        }
        if self.coalesce_interval.is_some() && self.coalesce_max_bytes == 0 {
            return Err("coalesce_max_bytes must be at least 1".into());
        }
        if self.max_receive_backlog == 0 {
            return Err("max_receive_backlog must be at least 1".into());
        }
        Ok(())
    }
}

/// Adds the setters every service builder shares.
macro_rules! common_builder_methods {
    () => {
        /// Worker threads (default: available cores).
        pub fn workers(mut self, workers: usize) -> Self {
            self.config.workers = workers;
            self
        }

        /// I/O backend (default: [`Backend::Auto`]).
        pub fn backend(mut self, backend: $crate::Backend) -> Self {
            self.config.backend = backend;
            self
        }

        /// Send queue watermarks in bytes: `is_writable()` turns false above
        /// `high` and true again at `low`; past `hard` the overflow policy
        /// applies (defaults 256 KiB, 64 KiB, 4 MiB). The limits count what
        /// the queue holds in memory: each queued buffer's bytes plus 64
        /// bytes for its slot and allocation (a flood of tiny packets is
        /// cut at about `hard` in memory, not at `hard` of payload); small
        /// packets waiting behind a backlog are copied out of their pooled
        /// 64 KiB writer chunks, so the count bounds the memory they hold.
        pub fn send_limits(mut self, low: usize, high: usize, hard: usize) -> Self {
            self.config.send.low_watermark = low;
            self.config.send.high_watermark = high;
            self.config.send.hard_limit = hard;
            self
        }

        /// Most buffers a session's send queue holds, queued or being
        /// written (default 65536); past it the overflow policy applies, as
        /// past the hard limit.
        pub fn send_queue_max_buffers(mut self, buffers: usize) -> Self {
            self.config.send.max_buffers = buffers;
            self
        }

        /// What to do when a send queue passes its hard limit.
        pub fn overflow_policy(mut self, policy: $crate::session::OverflowPolicy) -> Self {
            self.config.send.policy = policy;
            self
        }

        /// Disconnects sessions that receive nothing for `timeout`
        /// ([`DisconnectReason::IdleTimeout`](crate::DisconnectReason)). Off by default.
        pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.config.idle_timeout = Some(timeout);
            self
        }

        /// How long `stop` waits for queued sends to be written (default 5 s).
        pub fn shutdown_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.config.shutdown_timeout = timeout;
            self
        }

        /// Most unconsumed received bytes a session may hold before it is
        /// disconnected with `ReceiveOverflow` (default 256 KiB).
        pub fn max_receive_backlog(mut self, bytes: usize) -> Self {
            self.config.max_receive_backlog = bytes;
            self
        }

        /// Receive buffers: `size` bytes each; on io_uring a ring of
        /// `ring_entries` (a power of two) per worker. Defaults: 16 KiB x 256.
        pub fn receive_buffers(mut self, size: usize, ring_entries: u16) -> Self {
            self.config.driver.recv_buffer_size = size;
            self.config.driver.recv_ring_entries = ring_entries;
            self
        }

        /// Wake batching (off by default; io_uring on Linux 6.12+, ignored
        /// elsewhere): a worker waiting for I/O may sleep up to `window`
        /// longer once the first completion is there, so a stream of small
        /// receives (players' moves) wakes it once per batch instead of once
        /// per packet. Every event may wait up to `window` more: for servers
        /// that act on a tick anyway (the world applies moves at its tick),
        /// not for request-response latency. `Duration::ZERO` turns it off.
        pub fn wake_batching(mut self, window: std::time::Duration) -> Self {
            self.config.driver.wake_batch = (!window.is_zero()).then_some(window);
            self
        }

        /// Send coalescing (off by default): a session's queued sends are
        /// held until `interval` has passed since its last write, its queued
        /// bytes reach [`coalesce_max_bytes`](Self::coalesce_max_bytes), or
        /// the app calls [`SessionHandle::flush`](crate::SessionHandle::flush)
        /// (or [`send_now`](crate::SessionHandle::send_now)). Fewer, fuller
        /// writes for broadcast-heavy sessions; order, backpressure and the
        /// flush on stop are unchanged. A transport's own bytes (TLS and
        /// WebSocket handshake answers, pongs, close frames) are never held.
        /// `Duration::ZERO` turns it off.
        pub fn send_coalescing(mut self, interval: std::time::Duration) -> Self {
            self.config.coalesce_interval = (!interval.is_zero()).then_some(interval);
            self
        }

        /// With send coalescing: queued bytes at which a held session is
        /// written at once (default 32 KiB).
        pub fn coalesce_max_bytes(mut self, bytes: usize) -> Self {
            self.config.coalesce_max_bytes = bytes;
            self
        }

        /// Sets `TCP_NODELAY` on every connection (default: on).
        pub fn nodelay(mut self, nodelay: bool) -> Self {
            self.config.nodelay = nodelay;
            self
        }
    };
}
pub(crate) use common_builder_methods;
