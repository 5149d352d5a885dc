//! The worker's timed work: writing the sessions whose send-coalescing hold
//! is due, the periodic round over every session (compaction, deadlines,
//! `on_tick`), and giving back what a peak left.

use std::time::Instant;

use super::calls::call;
use super::Core;
use crate::driver::Driver;
use crate::service::connection::Due;

impl Core {
    /// Writes the held sessions that are due; recomputes the next due time.
    pub(super) fn flush_due<D: Driver>(&mut self, driver: &mut D, now: Instant) {
        self.next_due = None;
        let mut due_now = std::mem::take(&mut self.due_now);
        let mut held = std::mem::take(&mut self.held);
        held.retain(|&slot| {
            let due = self
                .slots
                .get_mut(slot)
                .map_or(Due::Gone, |entry| entry.conn.handle_due(now));
            match due {
                Due::NotYet(due) => {
                    self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
                    true
                }
                Due::Now => {
                    due_now.push(slot);
                    false
                }
                Due::Gone => false,
            }
        });
        self.held = held;
        for slot in due_now.drain(..) {
            self.mailbox.counters.note_coalesced_flush();
            self.drive(driver, slot);
        }
        self.due_now = due_now;
    }

    /// The periodic round over every session: compaction, deadlines and
    /// `on_tick`; with `trim`, their send queues give back what a peak left.
    pub(super) fn housekeeping(&mut self, now: Instant, trim: bool) {
        let mut queued = 0;
        for slot in 0..self.slots.end() {
            let Some(entry) = self.slots.get_mut(slot) else {
                continue;
            };
            entry.conn.compact();
            if trim {
                entry.conn.trim();
            }
            queued += entry.handle.queued_bytes();
            if entry.conn.handle_timeout(now) {
                if let Err(panic) = call(|| entry.session.on_tick(&entry.handle, now)) {
                    self.callback_panicked(slot, "on_tick", panic);
                }
            }
            self.settle(slot);
        }
        self.mailbox.counters.set_queued_bytes(queued);
        self.engine
            .disconnect_summary
            .tick(now, &self.engine.mailboxes);
    }

    /// Gives back what a peak left in the worker's own pool and lists.
    pub(super) fn trim(&mut self) {
        self.batch_pool.trim();
        shrink_list(&mut self.held);
        shrink_list(&mut self.due_now);
        shrink_list(&mut self.deferred.drive);
        shrink_list(&mut self.deferred.close);
        shrink_list(&mut self.deferred.adopt);
    }
}

/// Cuts a list's capacity back when it is far above its length.
fn shrink_list<T>(list: &mut Vec<T>) {
    if list.capacity() > 4 * list.len().max(16) {
        list.shrink_to(2 * list.len().max(16));
    }
}
