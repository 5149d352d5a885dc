//! One connection's lifecycle as a state machine with no I/O and no clock
//! of its own (quinn-proto's `Connection` is the model).
//!
//! [`Connection`] owns what the worker used to keep loose beside each
//! session: where the session is in its life ([`Phase`]: open, writing what
//! is queued before closing, lingering for the peer's EOF, closed), the
//! write in flight and the bytes taken from the queue but not yet written,
//! the receive leftovers, the send-coalescing hold and its due time, the
//! deadlines (idle, handshake, drain, linger), and the transport state
//! (TLS / WebSocket) that sits between the socket and the session.
//!
//! It is driven by inputs, each with the caller's idea of `now`:
//! [`handle_received`](Connection::handle_received),
//! [`handle_sent`](Connection::handle_sent),
//! [`handle_read_closed`](Connection::handle_read_closed),
//! [`handle_disconnect_request`](Connection::handle_disconnect_request),
//! [`handle_timeout`](Connection::handle_timeout),
//! [`handle_due`](Connection::handle_due), [`request_flush`](Connection::request_flush),
//! [`begin_stop`](Connection::begin_stop), [`disconnect`](Connection::disconnect); and it
//! says what to do through outputs the caller polls:
//! [`poll_write`](Connection::poll_write) (a batch to hand the driver, or a
//! hold until a due time), [`poll_shutdown_write`](Connection::poll_shutdown_write),
//! [`poll_close`](Connection::poll_close) (the reason and how to close) and
//! [`poll_timeout`](Connection::poll_timeout). The receive side (decoding,
//! leftovers, the backlog bound) is in `receive.rs`, the send side (when to
//! write, the gathered write, partial writes, the end of a drain) in
//! `write.rs`. The worker (`worker.rs`)
//! only wires driver events and mailbox requests to these, calls the
//! session's callbacks and hands the outputs to the driver; the tests below
//! run the whole lifecycle on a made-up clock, without sockets.
//!
//! Closing without losing replies: a session that closes gracefully (peer
//! EOF, `disconnect()`, stop) first writes what is queued, then shuts its
//! write side down and reads and discards until the peer's EOF or the
//! linger deadline (so unread input never turns the close into an RST that
//! destroys the last reply), and only then closes.

use std::any::Any;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{CloseMode, SendBatch};
use crate::session::{Charge, DisconnectReason, SessionShared};
use crate::transport::Transport;

use super::config::ServiceConfig;

/// A drained leftover buffer larger than this is freed rather than kept.
const LEFTOVER_KEEP: usize = 4 * 1024;
/// The settings of a service that shape a connection's life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Send coalescing interval (`None`: off).
    pub coalesce: Option<Duration>,
    /// Close a session that received nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// How long an app's `disconnect()` may take to write what is queued,
    /// and how long a closing session lingers for the peer's EOF.
    pub linger: Duration,
    /// How long the reply to a half-closed peer may take to be written.
    pub shutdown_timeout: Duration,
    /// Most unconsumed received bytes a session may hold.
    pub max_receive_backlog: usize,
}

impl Timing {
    pub(crate) fn of(config: &ServiceConfig) -> Timing {
        Timing {
            coalesce: config.coalesce_interval,
            idle_timeout: config.idle_timeout,
            linger: config.disconnect_linger,
            shutdown_timeout: config.shutdown_timeout,
            max_receive_backlog: config.max_receive_backlog,
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Writing what is queued before closing; aborted at the deadline.
    Draining {
        deadline: Instant,
    },
    /// Everything was written and the write side shut down: input is
    /// discarded until the peer's EOF, or the deadline.
    Lingering {
        deadline: Instant,
    },
    /// The close was decided; waiting for the driver's `Released`.
    Closed,
}

/// What [`Connection::poll_write`] asks for.
#[derive(Debug)]
pub(crate) enum Write {
    /// Nothing to write now.
    Nothing,
    /// Hand this batch to the driver (one gathered write).
    Batch(SendBatch),
    /// Send coalescing holds the queued bytes until `due`; `newly` is true
    /// the first time, when the caller lists the connection as held.
    Held { due: Instant, newly: bool },
}

/// What [`Connection::handle_due`] found for a held connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Still held, until then.
    NotYet(Instant),
    /// Due: a write is requested ([`Connection::poll_write`] makes it).
    Now,
    /// Not held any more.
    Gone,
}

/// The close [`Connection::poll_close`] reports once.
#[derive(Debug)]
pub(crate) struct Closing {
    /// Why the session ended (given to `on_disconnected`).
    pub reason: DisconnectReason,
    /// How the driver closes the socket.
    pub mode: CloseMode,
}

/// A panic caught in a session callback: its payload.
pub(crate) type Panic = Box<dyn Any + Send>;

/// One connection's state and rules; see the module docs.
pub(crate) struct Connection {
    shared: Arc<SessionShared>,
    timing: Timing,
    phase: Phase,
    /// TLS / WebSocket state; `None` for plain TCP.
    transport: Option<Box<Transport>>,
    /// Received bytes `on_recv` has not consumed yet.
    leftover: Vec<u8>,
    /// A write is in flight (its batch is with the driver).
    sending: bool,
    /// Bytes taken from the queue but not written yet (not in flight);
    /// wire bytes when a transport is present.
    pending: SendBatch,
    /// The last write took a full batch from the queue, which may hold
    /// more: it is written next, not held by coalescing.
    queue_left: bool,
    last_recv: Instant,
    /// The peer's EOF arrived: nothing more will be received.
    read_closed: bool,
    /// When the last write was submitted (send coalescing measures from it);
    /// `None` before the first.
    last_write: Option<Instant>,
    /// Held back by send coalescing (listed by the caller).
    held: bool,
    /// The app asked for a write at once; kept until the next write starts.
    flush_now: bool,
    /// Something may be ready to write: the next `poll_write` decides.
    flush_requested: bool,
    /// The write side is to be shut down (lingering close).
    shutdown_wanted: bool,
    /// The close decided, not yet polled.
    closing: Option<Closing>,
    /// The service is stopping: lingering ends by then at the latest.
    linger_cap: Option<Instant>,
}

impl Connection {
    /// A new open connection (its session's `on_connected` has not run).
    pub(crate) fn new(
        shared: Arc<SessionShared>,
        transport: Option<Box<Transport>>,
        timing: Timing,
        now: Instant,
    ) -> Connection {
        Connection {
            shared,
            timing,
            phase: Phase::Open,
            transport,
            leftover: Vec::new(),
            sending: false,
            pending: SendBatch::default(),
            queue_left: false,
            last_recv: now,
            read_closed: false,
            last_write: None,
            held: false,
            flush_now: false,
            flush_requested: false,
            shutdown_wanted: false,
            closing: None,
            linger_cap: None,
        }
    }

    /// Where the connection is in its life.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// True while the connection is open (not closing in any way).
    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True when a `poll_*` output may have something: a write to decide,
    /// a shutdown or a close to hand out.
    pub(crate) fn has_output(&self) -> bool {
        self.flush_requested || self.shutdown_wanted || self.closing.is_some()
    }

    // ---- inputs ----------------------------------------------------------

    /// The session's `on_connected` ran: a transport that could not start
    /// says goodbye, and a client's hello (TLS, the upgrade request) is to
    /// be written.
    pub(crate) fn handle_connected(&mut self, now: Instant) {
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        match transport.take_startup_failure() {
            Some(reason) => self.end_after_goodbye(now, reason),
            None if transport.wants_flush() => self.flush_requested = true,
            None => {}
        }
    }

    /// The read side ended: `error` is `None` for the peer's EOF. Returns
    /// true when the session is to be told (`on_read_closed`): the peer
    /// half-closed an open session, which has seen every byte and decides
    /// when to close.
    pub(crate) fn handle_read_closed(&mut self, error: Option<io::Error>) -> bool {
        if let Some(error) = error {
            self.close(Some(DisconnectReason::from_io(&error)), CloseMode::Abort);
            return false;
        }
        let handshake_failure = self
            .transport
            .as_ref()
            .filter(|transport| !transport.is_ready())
            .map(|transport| {
                transport.handshake_failure("the peer closed the connection during the handshake")
            });
        if let Some(reason) = handshake_failure {
            self.close(Some(reason), CloseMode::Graceful);
            return false;
        }
        self.read_closed = true;
        match self.phase {
            Phase::Open if self.shared.is_open() => true,
            // A disconnect is on its way through the mailbox, or the queue is
            // being written: that path closes when done.
            Phase::Open | Phase::Draining { .. } => false,
            Phase::Lingering { .. } => {
                self.close(None, CloseMode::Graceful);
                false
            }
            Phase::Closed => false,
        }
    }

    /// The session was asked to disconnect (its reason is stored in the
    /// shared state). A graceful close writes what is queued first: the
    /// app's within the linger time, the reply to a half-closed peer within
    /// the shutdown timeout. A send-queue overflow aborts; other reasons
    /// disconnect the session.
    pub(crate) fn handle_disconnect_request(&mut self, now: Instant) {
        if self.phase != Phase::Open {
            return;
        }
        let reason = self.shared.peek_reason();
        let drain_for = match reason {
            Some(DisconnectReason::ClosedByApp) => Some(self.timing.linger),
            Some(DisconnectReason::ClosedByPeer) => Some(self.timing.shutdown_timeout),
            _ => None,
        };
        if let Some(drain_for) = drain_for {
            self.phase = Phase::Draining {
                deadline: now + drain_for,
            };
            self.flush_requested = true;
            return;
        }
        match reason {
            Some(DisconnectReason::SendQueueOverflow) => self.close(None, CloseMode::Abort),
            Some(reason) => self.disconnect(now, reason),
            None => self.close(None, CloseMode::Graceful),
        }
    }

    /// The periodic check (housekeeping): a handshake or idle deadline of an
    /// open connection, or the drain or linger deadline of a closing one.
    /// Returns true when the session is open and connected, to be ticked.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Open => {
                let handshake_due = self
                    .transport
                    .as_ref()
                    .and_then(|transport| transport.handshake_deadline())
                    .is_some_and(|deadline| now >= deadline);
                if handshake_due {
                    let transport = self.transport.as_ref().expect("has a deadline");
                    let reason = transport.handshake_failure("timed out");
                    self.close(Some(reason), CloseMode::Abort);
                    return false;
                }
                if let Some(timeout) = self.timing.idle_timeout {
                    if now.saturating_duration_since(self.last_recv) >= timeout {
                        self.disconnect(now, DisconnectReason::IdleTimeout);
                        return false;
                    }
                }
                self.shared.is_open()
            }
            Phase::Draining { deadline } if now >= deadline => {
                self.close(None, CloseMode::Abort);
                false
            }
            // Everything was written and FIN sent; the peer did not answer
            // with its own in time.
            Phase::Lingering { deadline } if now >= deadline => {
                self.close(None, CloseMode::Graceful);
                false
            }
            _ => false,
        }
    }

    /// The send-coalescing check of a held connection.
    pub(crate) fn handle_due(&mut self, now: Instant) -> Due {
        let Some(interval) = self.timing.coalesce else {
            return Due::Gone;
        };
        if !self.held {
            return Due::Gone;
        }
        let due = self.last_write.map_or(now, |at| at + interval);
        if due > now && self.phase == Phase::Open {
            return Due::NotYet(due);
        }
        self.held = false;
        self.flush_requested = true;
        Due::Now
    }

    /// The service is stopping: an open session gets `Shutdown` and writes
    /// what is queued until `flush_deadline`; nothing lingers past
    /// `hard_deadline`.
    pub(crate) fn begin_stop(&mut self, flush_deadline: Instant, hard_deadline: Instant) {
        self.linger_cap = Some(hard_deadline);
        if self.phase == Phase::Open {
            self.shared.begin_close(DisconnectReason::Shutdown);
            self.phase = Phase::Draining {
                deadline: flush_deadline,
            };
            self.flush_requested = true;
        }
    }

    /// Disconnects the session (bad input, a deadline, an app's reason): what it
    /// queued is dropped. Over an open WebSocket the close frame saying why
    /// still goes out first, so the peer learns the reason; otherwise the
    /// socket closes at once.
    pub(crate) fn disconnect(&mut self, now: Instant, reason: DisconnectReason) {
        if self.can_send_close_frame() {
            self.end_after_goodbye(now, reason);
        } else {
            self.close(Some(reason), CloseMode::Graceful);
        }
    }

    /// A callback of the session panicked (`message`): the session ends
    /// with `CallbackPanic`. The transport lives beside the session,
    /// untouched by the panic, so a WebSocket peer still learns it was an
    /// internal error.
    pub(crate) fn callback_panicked(&mut self, now: Instant, message: String) {
        let reason = DisconnectReason::CallbackPanic(message);
        if self.can_send_close_frame() {
            self.end_after_goodbye(now, reason);
        } else {
            self.close(Some(reason), CloseMode::Abort);
        }
    }

    /// Ends the session at once: `reason` is used unless one was stored
    /// before. What is queued or unwritten is dropped.
    pub(crate) fn close(&mut self, reason: Option<DisconnectReason>, mode: CloseMode) {
        if self.phase == Phase::Closed {
            return;
        }
        let shared = &self.shared;
        if let Some(reason) = reason {
            shared.begin_close(reason);
        }
        let reason = shared.take_reason();
        shared.discard_queue();
        self.phase = Phase::Closed;
        self.leftover = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        let unsent = match self.transport.as_mut() {
            Some(transport) => Charge {
                bytes: transport.discard(),
                buffers: 0,
            },
            None => Charge {
                bytes: pending.len(),
                buffers: pending.buffers(),
            },
        };
        shared.note_written(unsent);
        self.shutdown_wanted = false;
        self.closing = Some(Closing { reason, mode });
    }

    /// Ends a session once the transport's goodbye (alert, close frame,
    /// HTTP error) is written; nothing more of the session's queue is sent.
    fn end_after_goodbye(&mut self, now: Instant, reason: DisconnectReason) {
        if self.phase == Phase::Closed {
            return;
        }
        self.shared.begin_close(reason);
        self.shared.discard_queue();
        if self.phase == Phase::Open {
            self.phase = Phase::Draining {
                deadline: now + self.timing.linger,
            };
        }
        self.flush_requested = true;
    }

    /// True when the transport can still send a close frame that tells the
    /// peer why the session is disconnected.
    fn can_send_close_frame(&self) -> bool {
        self.transport
            .as_ref()
            .is_some_and(|transport| transport.can_send_close_frame())
    }

    // ---- outputs ---------------------------------------------------------

    /// The close, once: the reason for `on_disconnected` and how the driver
    /// closes the socket.
    pub(crate) fn poll_close(&mut self) -> Option<Closing> {
        self.closing.take()
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) or
    /// [`handle_due`](Self::handle_due) has something to do. The worker
    /// checks every connection on its housekeeping cadence (and keeps the
    /// coalescing holds in a list of its own), so only a caller driving a
    /// single connection, such as the tests, needs it.
    #[cfg(test)]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let held = self
            .timing
            .coalesce
            .filter(|_| self.held)
            .and_then(|interval| self.last_write.map(|at| at + interval));
        let phase = match self.phase {
            Phase::Open => {
                let idle = self.timing.idle_timeout.map(|idle| self.last_recv + idle);
                let handshake = self
                    .transport
                    .as_ref()
                    .and_then(|transport| transport.handshake_deadline());
                min_some(idle, handshake)
            }
            Phase::Draining { deadline } | Phase::Lingering { deadline } => Some(deadline),
            Phase::Closed => None,
        };
        min_some(held, phase)
    }
}

#[cfg(test)]
fn min_some(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

mod receive;
#[cfg(test)]
mod tests;
mod write;
