//! The worker's side of the driver: each completion the driver reports is
//! handed to the session's connection, with the session's callbacks run
//! around it.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use super::calls::call;
use super::{Core, Entry};
use crate::driver::{Event, EventSink, SendBatch, Token};

impl Core {
    fn on_sent(&mut self, token: Token, result: io::Result<usize>, batch: SendBatch) {
        let Some(slot) = self.slots.slot_of(token) else {
            return;
        };
        let entry = self.slots.get_mut(slot).expect("slot_of");
        let written = entry.conn.handle_sent(result, batch, &mut self.batch_pool);
        if written > 0 {
            if let Err(panic) = call(|| entry.session.on_send(&entry.handle, written)) {
                self.callback_panicked(slot, "on_send", panic);
            }
        }
        self.settle(slot);
    }

    fn on_received(&mut self, token: Token, data: &[u8]) {
        let Some(slot) = self.slots.slot_of(token) else {
            return;
        };
        let now = self.clock.now();
        let Entry {
            session,
            handle,
            conn,
        } = self.entry(slot);
        let delivered = conn.handle_received(now, data, |bytes| {
            catch_unwind(AssertUnwindSafe(|| session.on_recv(handle, bytes)))
        });
        if let Err(panic) = delivered {
            self.callback_panicked(slot, "on_recv", panic);
        }
        self.settle(slot);
    }

    fn on_read_closed(&mut self, token: Token, error: Option<io::Error>) {
        let Some(slot) = self.slots.slot_of(token) else {
            return;
        };
        let entry = self.entry(slot);
        if entry.conn.handle_read_closed(error) {
            // The peer half-closed: the session has seen every byte; it
            // decides when to close (by default at once: what is queued is
            // written first, then `on_disconnected(ClosedByPeer)`).
            if let Err(panic) = call(|| entry.session.on_read_closed(&entry.handle)) {
                self.callback_panicked(slot, "on_read_closed", panic);
            }
        }
        self.settle(slot);
    }
}

impl EventSink for Core {
    fn event(&mut self, event: Event<'_>) {
        self.mailbox.counters.note_events(1);
        match event {
            Event::Accepted { stream, peer } => {
                self.mailbox.counters.note_accepted();
                self.accept_errors.succeeded(self.index);
                if self.engine.try_reserve_session() {
                    let worker = self.engine.pick_worker();
                    if worker == self.index as usize {
                        self.deferred.adopt.push((stream, peer));
                    } else {
                        self.engine.hand_to(worker, stream, peer);
                    }
                } else {
                    let refused = self.engine.refused_total.fetch_add(1, Ordering::AcqRel) + 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            %peer,
                            max_sessions = self.engine.config.max_sessions,
                            refused_total = refused,
                            "refusing connection: max_sessions reached or stopping"
                        );
                    }
                    drop(stream);
                }
            }
            Event::AcceptError(error) => {
                let now = self.clock.now();
                self.accept_errors.failed(self.index, &error, now);
            }
            Event::Received { token, data } => self.on_received(token, data),
            Event::ReadClosed { token, error } => self.on_read_closed(token, error),
            Event::Sent {
                token,
                result,
                batch,
            } => self.on_sent(token, result, batch),
            Event::Released { token } => self.release(token),
        }
    }
}
