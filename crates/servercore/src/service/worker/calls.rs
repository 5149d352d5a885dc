//! Running a session's callbacks: each under `catch_unwind`, a panic
//! turned into its message; and the stand-in for a session whose factory
//! panicked.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::service::connection::Panic;
use crate::session::{DisconnectReason, Session, SessionHandle};

/// Runs a session callback, catching a panic.
pub(super) fn call(callback: impl FnOnce()) -> Result<(), Panic> {
    catch_unwind(AssertUnwindSafe(callback))
}

/// Every session's end at DEBUG: at INFO a service under load would log
/// little else; the INFO log has the counts by reason instead (see
/// `disconnect_log`).
pub(super) fn log_disconnect(handle: &SessionHandle, reason: &DisconnectReason) {
    tracing::debug!(session = %handle.id(), peer = %handle.peer_addr(), %reason, "disconnected");
}

pub(super) fn panic_message(panic: &Panic) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Stands in for a session whose factory panicked; it drops all input.
pub(super) struct Placeholder;

impl Session for Placeholder {
    fn on_recv(&mut self, _: &SessionHandle, data: &[u8]) -> usize {
        data.len()
    }
}
