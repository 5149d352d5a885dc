//! The session layer: what one connection is to the application.
//!
//! This module owns the [`Session`] callbacks trait, the thread-safe
//! [`SessionHandle`] (`handle`), the state it shares with the worker
//! (`shared`: connection state, disconnect reason, the send queue's charge
//! against the send limits), the send queue itself (`send_queue`: what a
//! queued buffer costs, compaction, shrinking), the worker's inbox
//! (`mailbox`) and [`DisconnectReason`]. The per-connection state that only the owning worker
//! touches (its lifecycle, receive leftovers, the write in flight) lives in
//! `service::connection`, driven by the worker loop in `service::worker`.

mod handle;
mod link;
mod mailbox;
mod reason;
mod send_queue;
mod shared;

pub use handle::{SendError, SessionHandle, SessionId};
pub(crate) use link::{cut_datagrams, DatagramRefused, Link, Piece};
pub(crate) use mailbox::{Bridged, Mailbox, Request, SessionMaker};
pub use reason::{DisconnectKind, DisconnectReason};
pub(crate) use send_queue::Charge;
pub use shared::OverflowPolicy;
pub(crate) use shared::{SendLimits, SessionShared};

/// A connection's behaviour: the course's `OnConnected / OnRecv / OnSend /
/// OnDisconnected`.
///
/// Every callback of one session runs on the worker thread that owns the
/// connection, one at a time, so they take `&mut self` and need no lock. A
/// panic inside a callback disconnects this session only
/// ([`DisconnectReason::CallbackPanic`]) and is logged.
pub trait Session: 'static {
    /// The connection is established; `session` can already send.
    fn on_connected(&mut self, session: &SessionHandle) {
        let _ = session;
    }

    /// Bytes arrived. Returns how many bytes of `data` were consumed; the
    /// rest is kept and shown again, in front of the next bytes received.
    /// Returning 0 means "wait for more".
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize;

    /// A write of `len` bytes to the socket completed.
    fn on_send(&mut self, session: &SessionHandle, len: usize) {
        let _ = (session, len);
    }

    /// The owning worker's housekeeping round (about every 100 ms) found
    /// this session open: the place for cheap deadline checks (a partial
    /// packet, a login) without a timer per session. `now` is the round's
    /// time. A session closed meanwhile is not ticked.
    fn on_tick(&mut self, session: &SessionHandle, now: std::time::Instant) {
        let _ = (session, now);
    }

    /// The peer finished sending (EOF, for example `shutdown(SHUT_WR)`):
    /// every byte it sent has been shown to `on_recv`. The session can still
    /// send. The default disconnects with
    /// [`DisconnectReason::ClosedByPeer`]: the engine writes everything
    /// queued, closes, then calls `on_disconnected(ClosedByPeer)`. A session
    /// whose replies are produced later (by jobs) may instead disconnect
    /// once they are queued.
    fn on_read_closed(&mut self, session: &SessionHandle) {
        session.disconnect_with(DisconnectReason::ClosedByPeer);
    }

    /// The connection ended. Runs exactly once for every session whose
    /// `on_connected` ran; nothing is called after it.
    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        let _ = (session, reason);
    }
}

impl Session for Box<dyn Session> {
    fn on_connected(&mut self, session: &SessionHandle) {
        (**self).on_connected(session)
    }
    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        (**self).on_recv(session, data)
    }
    fn on_send(&mut self, session: &SessionHandle, len: usize) {
        (**self).on_send(session, len)
    }
    fn on_tick(&mut self, session: &SessionHandle, now: std::time::Instant) {
        (**self).on_tick(session, now)
    }
    fn on_read_closed(&mut self, session: &SessionHandle) {
        (**self).on_read_closed(session)
    }
    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        (**self).on_disconnected(session, reason)
    }
}
