//! A worker's inbox ([`Mailbox`]): how any thread asks the worker that owns
//! a session to flush or disconnect it, hands it a new connection, or
//! stops it; with the worker's counters, which its sessions reach through
//! it.

use std::cell::Cell;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;

use super::link::Link;
use super::shared::SessionShared;
use crate::driver::Wake;
use crate::service::metrics::WorkerCounters;

/// Makes one connection's session on its worker (sessions need not be
/// `Send`; what makes them must).
pub(crate) type SessionMaker = Box<dyn FnOnce() -> Box<dyn super::Session> + Send>;

/// A request to the worker that owns a session.
pub(crate) enum Request {
    /// The session has queued bytes to write.
    Flush(Arc<SessionShared>),
    /// The session was asked to disconnect (its reason is stored).
    Disconnect(Arc<SessionShared>),
    /// Adopt a connected stream as a new session (round-robin hand-out).
    Adopt(TcpStream, SocketAddr),
    /// Adopt a stream the application connected, with the session the
    /// closure makes (on the worker), instead of the factory's.
    AdoptWith(TcpStream, SocketAddr, SessionMaker),
    /// Adopt one end of a bridge to another transport (QUIC) as a new
    /// session.
    AdoptBridged(TcpStream, Box<Bridged>),
    /// Queue one shared buffer to every session of the worker.
    Broadcast(Bytes),
    /// Stop: close listeners, flush, disconnect everything, exit.
    Stop,
}

/// What the worker needs to adopt a bridged connection besides its stream.
pub(crate) struct Bridged {
    /// The real peer (the QUIC client's address).
    pub peer: SocketAddr,
    /// The transport's side of the session.
    pub link: Arc<dyn Link>,
}

/// A worker's inbox, usable from any thread. A push wakes the worker only
/// when the inbox was idle, and never from the worker's own thread (it
/// drains its inbox before it blocks).
pub(crate) struct Mailbox {
    queue: SegQueue<Request>,
    notified: AtomicBool,
    waker: Arc<dyn Wake>,
    /// The owning worker's counters (reached from its sessions' handles).
    pub(crate) counters: WorkerCounters,
    /// False once the worker left its loop: new sessions are refused. A
    /// lock, not a flag, so no adoption slips in between the worker's last
    /// look at its inbox and the close (taken once per new session only).
    adopting: Mutex<bool>,
}

thread_local! {
    /// The mailbox of the worker running on this thread (its address).
    static CURRENT_MAILBOX: Cell<usize> = const { Cell::new(0) };
}

impl Mailbox {
    pub(crate) fn new(waker: Arc<dyn Wake>) -> Mailbox {
        Mailbox {
            queue: SegQueue::new(),
            notified: AtomicBool::new(false),
            waker,
            counters: WorkerCounters::default(),
            adopting: Mutex::new(true),
        }
    }

    /// Hands a new connection to the worker, or gives it back if the worker
    /// has left its loop (see [`Mailbox::close`]).
    pub(crate) fn push_adopt(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), (TcpStream, SocketAddr)> {
        let adopting = self.adopting.lock();
        if !*adopting {
            return Err((stream, peer));
        }
        self.push(Request::Adopt(stream, peer));
        Ok(())
    }

    /// Hands a stream with its own session maker to the worker, or gives
    /// the stream back if the worker has left its loop.
    pub(crate) fn push_adopt_with(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        make: SessionMaker,
    ) -> Result<(), TcpStream> {
        let adopting = self.adopting.lock();
        if !*adopting {
            return Err(stream);
        }
        self.push(Request::AdoptWith(stream, peer, make));
        Ok(())
    }

    /// Hands a new bridged connection to the worker, or gives it back if
    /// the worker has left its loop.
    pub(crate) fn push_adopt_bridged(
        &self,
        stream: TcpStream,
        bridged: Box<Bridged>,
    ) -> Result<(), TcpStream> {
        let adopting = self.adopting.lock();
        if !*adopting {
            return Err(stream);
        }
        self.push(Request::AdoptBridged(stream, bridged));
        Ok(())
    }

    /// Called by the worker when it leaves its loop: later `push_adopt`s
    /// fail. Returns the connections handed over before, never adopted.
    pub(crate) fn close(&self) -> Vec<(TcpStream, SocketAddr)> {
        *self.adopting.lock() = false;
        let mut orphans = Vec::new();
        while let Some(request) = self.queue.pop() {
            match request {
                Request::Adopt(stream, peer) | Request::AdoptWith(stream, peer, _) => {
                    orphans.push((stream, peer))
                }
                Request::AdoptBridged(stream, bridged) => orphans.push((stream, bridged.peer)),
                _ => {}
            }
        }
        orphans
    }

    pub(crate) fn push(&self, request: Request) {
        self.queue.push(request);
        if self.is_current() {
            return;
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Marks this thread as the mailbox's worker.
    pub(crate) fn enter_worker_thread(&self) {
        CURRENT_MAILBOX.with(|current| current.set(self as *const Mailbox as usize));
    }

    fn is_current(&self) -> bool {
        CURRENT_MAILBOX.with(|current| current.get() == self as *const Mailbox as usize)
    }

    /// Takes the next request. Call `rearm` before draining a round so a push
    /// racing with the drain wakes the worker again.
    pub(crate) fn pop(&self) -> Option<Request> {
        self.queue.pop()
    }

    pub(crate) fn rearm(&self) {
        self.notified.store(false, Ordering::Release);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
