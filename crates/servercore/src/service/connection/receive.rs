//! The receive side of a [`Connection`]: decoding through the transport,
//! the leftovers `on_recv` did not consume, and the backlog bound.

use std::time::{Duration, Instant};

use super::{Connection, Panic, Phase, LEFTOVER_KEEP};
use crate::driver::CloseMode;
use crate::log_throttle::LogThrottle;
use crate::session::{DisconnectReason, SessionShared};

/// Receive-backlog disconnects, over every session of the process.
static BACKLOG_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

impl Connection {
    /// Bytes arrived. Decodes them through the transport, if any, and hands
    /// them, behind any leftover, to `on_recv` (which returns how many
    /// bytes it consumed) while it makes progress. A closing connection
    /// discards what arrives. Err: `on_recv` panicked; the caller reports
    /// it and calls [`callback_panicked`](Self::callback_panicked).
    pub(crate) fn handle_received(
        &mut self,
        now: Instant,
        data: &[u8],
        on_recv: impl FnMut(&[u8]) -> Result<usize, Panic>,
    ) -> Result<(), Panic> {
        if self.phase != Phase::Open || !self.shared.is_open() {
            // Closing: what still arrives is read and discarded, never kept.
            self.leftover = Vec::new();
            return Ok(());
        }
        self.last_recv = now;
        self.shared.mailbox.counters.note_bytes_in(data.len());
        let mut on_recv = on_recv;
        let (delivered, ending) = match self.transport.take() {
            None => (self.deliver(data, &mut on_recv), None),
            Some(mut transport) => {
                let was_ready = transport.is_ready();
                let ending = transport.receive(data);
                if !was_ready && transport.is_ready() {
                    tracing::debug!(
                        session = %self.shared.id,
                        peer = %self.shared.peer,
                        owed = transport.wants_flush(),
                        "transport handshake done"
                    );
                }
                let delivered = self.deliver(transport.plain(), &mut on_recv);
                transport.clear_plain();
                if ending.is_none() && transport.wants_flush() {
                    self.flush_requested = true;
                }
                self.transport = Some(transport);
                (delivered, ending)
            }
        };
        match delivered {
            Ok(None) => {
                if !self.shared.is_open() {
                    self.leftover = Vec::new();
                }
                if let Some(reason) = ending {
                    self.end_after_goodbye(now, reason);
                }
                Ok(())
            }
            Ok(Some(held)) => {
                if let Some(disconnects) = BACKLOG_LOG.event() {
                    tracing::warn!(
                        session = %self.shared.id,
                        peer = %self.shared.peer,
                        held,
                        disconnects,
                        total = BACKLOG_LOG.total(),
                        "unconsumed input passed the receive backlog limit; disconnecting \
                         (disconnects counts this one and those since the last line, over all sessions)"
                    );
                }
                self.close(Some(DisconnectReason::ReceiveOverflow), CloseMode::Abort);
                Ok(())
            }
            Err(panic) => Err(panic),
        }
    }

    /// Hands `data` to `on_recv`, in front of any leftover; keeps what it
    /// did not consume. `Ok(Some(held))`: the leftover passed the receive
    /// backlog limit.
    fn deliver(
        &mut self,
        data: &[u8],
        on_recv: &mut impl FnMut(&[u8]) -> Result<usize, Panic>,
    ) -> Result<Option<usize>, Panic> {
        if self.leftover.is_empty() {
            let consumed = consume(&self.shared, data, on_recv)?;
            if consumed < data.len() {
                self.leftover.extend_from_slice(&data[consumed..]);
            }
        } else {
            self.leftover.extend_from_slice(data);
            let consumed = consume(&self.shared, &self.leftover, on_recv)?;
            self.leftover.drain(..consumed);
        }
        if self.leftover.len() > self.timing.max_receive_backlog {
            return Ok(Some(self.leftover.len()));
        }
        if self.leftover.is_empty() && self.leftover.capacity() > LEFTOVER_KEEP {
            self.leftover = Vec::new();
        }
        Ok(None)
    }
}

/// Calls `on_recv` until all is consumed, it asks for more, or the session
/// starts closing. Returns the bytes consumed.
fn consume(
    shared: &SessionShared,
    data: &[u8],
    on_recv: &mut impl FnMut(&[u8]) -> Result<usize, Panic>,
) -> Result<usize, Panic> {
    let mut offset = 0;
    while offset < data.len() && shared.is_open() {
        let rest = &data[offset..];
        let consumed = on_recv(rest)?;
        if consumed == 0 {
            break;
        }
        offset += consumed.min(rest.len());
    }
    Ok(offset)
}
