//! Engine sessions for tests that record their callbacks.

use std::sync::Arc;

use parking_lot::Mutex;
use servercore::{DisconnectReason, Session, SessionHandle};

/// What sessions of a test saw.
#[derive(Default)]
pub struct Record {
    /// `on_connected` calls.
    pub connected: usize,
    /// Every `on_disconnected` reason, in order.
    pub disconnected: Vec<DisconnectReason>,
    /// Each session's handle, in connection order.
    pub handles: Vec<SessionHandle>,
    /// Bytes `on_send` reported.
    pub sent_bytes: usize,
}

/// A [`Record`] shared by a test and its sessions.
pub type Shared = Arc<Mutex<Record>>;

/// An echo session that records its callbacks.
pub struct RecordingEcho {
    /// Where it records.
    pub record: Shared,
}

impl Session for RecordingEcho {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }

    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        let _ = session.send_copy(data);
        data.len()
    }

    fn on_send(&mut self, _session: &SessionHandle, len: usize) {
        self.record.lock().sent_bytes += len;
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}

/// A session that records its handle and its end and ignores its input
/// (what the application does between packets is not under test).
pub struct Quiet {
    /// Where it records.
    pub record: Shared,
}

impl Session for Quiet {
    fn on_connected(&mut self, session: &SessionHandle) {
        let mut record = self.record.lock();
        record.connected += 1;
        record.handles.push(session.clone());
    }

    fn on_recv(&mut self, _session: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }

    fn on_disconnected(&mut self, _session: &SessionHandle, reason: &DisconnectReason) {
        self.record.lock().disconnected.push(reason.clone());
    }
}
