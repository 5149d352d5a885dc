//! The connection's lifecycle on a made-up clock: every time is `t0` plus
//! an offset, no socket is involved, and each step's output is checked.

use std::net::SocketAddr;

use bytes::Bytes;

use super::*;
use crate::driver::Wake;
use crate::service::batch_pool::BatchPool;
use crate::session::{Mailbox, OverflowPolicy, SendError, SendLimits, SessionHandle, SessionId};

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

const LINGER: Duration = Duration::from_secs(2);
const SHUTDOWN: Duration = Duration::from_secs(5);

fn timing() -> Timing {
    Timing {
        coalesce: None,
        idle_timeout: None,
        linger: LINGER,
        shutdown_timeout: SHUTDOWN,
        max_receive_backlog: 16,
    }
}

fn limits() -> SendLimits {
    SendLimits {
        high_watermark: 1 << 20,
        low_watermark: 1 << 19,
        hard_limit: 2 << 20,
        max_buffers: 1 << 20,
        policy: OverflowPolicy::Disconnect,
        coalesce_max_bytes: usize::MAX,
    }
}

/// One connection, its handle (the app's side) and a pool, at `t0`.
struct Harness {
    conn: Connection,
    handle: SessionHandle,
    pool: BatchPool,
    t0: Instant,
}

impl Harness {
    fn new(timing: Timing, limits: SendLimits) -> Harness {
        let t0 = Instant::now();
        let mailbox = Arc::new(Mailbox::new(Arc::new(NoWake)));
        let addr: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let shared = Arc::new(SessionShared::new(
            SessionId::new(0, 1),
            1,
            addr,
            addr,
            limits,
            mailbox,
        ));
        Harness {
            conn: Connection::new(Arc::clone(&shared), None, timing, t0),
            handle: SessionHandle::from_shared(shared),
            pool: BatchPool::default(),
            t0,
        }
    }

    fn plain() -> Harness {
        Harness::new(timing(), limits())
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// `request_flush` then `poll_write` at `ms`.
    fn flush(&mut self, ms: u64) -> Write {
        self.conn.request_flush();
        let now = self.at(ms);
        self.conn.poll_write(now, &mut self.pool)
    }

    /// Expects a batch and returns its bytes with the batch.
    fn expect_batch(&mut self, ms: u64) -> (Vec<u8>, SendBatch) {
        match self.flush(ms) {
            Write::Batch(batch) => (batch.bufs().concat(), batch),
            other => panic!("expected a batch at {ms} ms, got {other:?}"),
        }
    }

    /// Writes the whole batch and reports it.
    fn complete(&mut self, batch: SendBatch) -> usize {
        let len = batch.len();
        self.conn.handle_sent(Ok(len), batch, &mut self.pool)
    }

    fn send(&self, data: &'static [u8]) {
        self.handle.send(Bytes::from_static(data)).unwrap();
    }

    fn closing(&mut self) -> (DisconnectReason, CloseMode) {
        let closing = self.conn.poll_close().expect("a close");
        assert!(self.conn.poll_close().is_none(), "a close is reported once");
        (closing.reason, closing.mode)
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[test]
fn writes_what_is_queued_and_resumes_a_partial_write() {
    let mut h = Harness::plain();
    h.send(b"hello");
    h.send(b"world");
    let (bytes, batch) = h.expect_batch(0);
    assert_eq!(bytes, b"helloworld");
    assert!(
        matches!(h.flush(0), Write::Nothing),
        "one write in flight at a time"
    );
    assert_eq!(h.conn.handle_sent(Ok(3), batch, &mut h.pool), 3);
    assert_eq!(h.handle.queued_bytes(), 7);
    assert!(h.conn.has_output(), "the rest is to be written");
    let (bytes, batch) = h.expect_batch(1);
    assert_eq!(bytes, b"loworld");
    assert_eq!(h.complete(batch), 7);
    assert_eq!(h.handle.queued_bytes(), 0);
    assert!(matches!(h.flush(2), Write::Nothing));
    assert_eq!(h.handle.write_count(), 2);
}

#[test]
fn coalescing_holds_sends_until_the_interval_since_the_last_write() {
    let mut h = Harness::new(
        Timing {
            coalesce: Some(ms(10)),
            ..timing()
        },
        SendLimits {
            coalesce_max_bytes: 1000,
            ..limits()
        },
    );
    h.send(b"a");
    // The first write is never held.
    let (bytes, batch) = h.expect_batch(0);
    assert_eq!(bytes, b"a");
    h.complete(batch);
    assert!(matches!(h.flush(1), Write::Nothing), "nothing queued");

    h.send(b"b");
    match h.flush(2) {
        Write::Held { due, newly: true } => assert_eq!(due, h.at(10)),
        other => panic!("expected a hold, got {other:?}"),
    }
    assert!(matches!(h.flush(3), Write::Held { newly: false, .. }));
    assert_eq!(h.conn.poll_timeout(), Some(h.at(10)));
    assert_eq!(h.conn.handle_due(h.at(9)), Due::NotYet(h.at(10)));
    assert_eq!(h.conn.handle_due(h.at(10)), Due::Now);
    assert_eq!(h.conn.handle_due(h.at(10)), Due::Gone, "no longer held");
    let now = h.at(10);
    let Write::Batch(batch) = h.conn.poll_write(now, &mut h.pool) else {
        panic!("the due write");
    };
    assert_eq!(batch.bufs().concat(), b"b");
}

#[test]
fn coalescing_lets_a_full_queue_or_an_explicit_flush_through() {
    static BIG: [u8; 600] = [7; 600];
    let mut h = Harness::new(
        Timing {
            coalesce: Some(ms(10)),
            ..timing()
        },
        SendLimits {
            coalesce_max_bytes: 1000,
            ..limits()
        },
    );
    h.send(b"x");
    let (_, batch) = h.expect_batch(0);
    h.complete(batch);

    h.send(&BIG);
    assert!(matches!(h.flush(1), Write::Held { .. }));
    h.send(&BIG);
    let (bytes, batch) = h.expect_batch(2);
    assert_eq!(bytes.len(), 1200, "the bound ends the hold");
    h.complete(batch);

    h.handle.send_now(Bytes::from_static(b"now")).unwrap();
    let (bytes, _) = h.expect_batch(3);
    assert_eq!(bytes, b"now", "an explicit flush is not held");
}

#[test]
fn a_graceful_disconnect_writes_the_queue_then_lingers_until_the_peers_eof() {
    let mut h = Harness::plain();
    h.send(b"bye");
    h.handle.disconnect();
    h.conn.handle_disconnect_request(h.at(0));
    assert_eq!(
        h.conn.phase(),
        Phase::Draining {
            deadline: h.at(0) + LINGER
        }
    );
    assert!(
        h.handle.send_copy(b"late").is_err(),
        "closing refuses sends"
    );
    let (bytes, batch) = h.expect_batch(0);
    assert_eq!(bytes, b"bye");
    h.complete(batch);
    assert!(!h.conn.poll_shutdown_write());
    assert!(matches!(h.flush(5), Write::Nothing));
    assert_eq!(
        h.conn.phase(),
        Phase::Lingering {
            deadline: h.at(5) + LINGER
        }
    );
    assert!(h.conn.poll_shutdown_write(), "FIN after the last byte");
    assert!(!h.conn.poll_shutdown_write(), "once");
    assert!(h.conn.poll_close().is_none());
    // Input while lingering is discarded, never delivered.
    h.conn
        .handle_received(h.at(6), b"ignored", |_| panic!("delivered"))
        .unwrap();
    assert!(!h.conn.handle_read_closed(None));
    assert_eq!(
        h.closing(),
        (DisconnectReason::ClosedByApp, CloseMode::Graceful)
    );
}

#[test]
fn an_unanswered_linger_closes_gracefully_at_its_deadline() {
    let mut h = Harness::plain();
    h.handle.disconnect();
    h.conn.handle_disconnect_request(h.at(0));
    assert!(matches!(h.flush(0), Write::Nothing), "nothing queued");
    assert!(h.conn.poll_shutdown_write());
    let deadline = h.at(0) + LINGER;
    assert_eq!(h.conn.poll_timeout(), Some(deadline));
    assert!(!h.conn.handle_timeout(deadline - ms(1)));
    assert!(h.conn.poll_close().is_none());
    assert!(!h.conn.handle_timeout(deadline));
    assert_eq!(
        h.closing(),
        (DisconnectReason::ClosedByApp, CloseMode::Graceful)
    );
}

#[test]
fn a_drain_that_cannot_finish_is_aborted_at_its_deadline() {
    let mut h = Harness::plain();
    h.send(b"never read");
    h.handle.disconnect();
    h.conn.handle_disconnect_request(h.at(0));
    let (_, batch) = h.expect_batch(0);
    let deadline = h.at(0) + LINGER;
    assert!(!h.conn.handle_timeout(deadline - ms(1)));
    assert!(h.conn.poll_close().is_none());
    h.conn.handle_timeout(deadline);
    assert_eq!(
        h.closing(),
        (DisconnectReason::ClosedByApp, CloseMode::Abort)
    );
    // The write in flight completes after the close: its bytes leave the
    // count once, and nothing more is asked of the session.
    assert_eq!(h.handle.queued_bytes(), 10);
    assert_eq!(h.complete(batch), 0);
    assert_eq!(h.handle.queued_bytes(), 0);
    assert!(matches!(h.flush(1), Write::Nothing));
}

#[test]
fn the_peers_eof_while_open_lets_the_session_answer_then_closes_after_the_write() {
    let mut h = Harness::plain();
    assert!(h.conn.handle_read_closed(None), "the session is told");
    // What the default `on_read_closed` does, after queuing a reply.
    h.send(b"reply");
    h.handle.disconnect_with(DisconnectReason::ClosedByPeer);
    h.conn.handle_disconnect_request(h.at(1));
    assert_eq!(
        h.conn.phase(),
        Phase::Draining {
            deadline: h.at(1) + SHUTDOWN
        }
    );
    let (bytes, batch) = h.expect_batch(1);
    assert_eq!(bytes, b"reply");
    h.complete(batch);
    assert!(matches!(h.flush(2), Write::Nothing));
    assert!(!h.conn.poll_shutdown_write(), "the peer is gone: no linger");
    assert_eq!(
        h.closing(),
        (DisconnectReason::ClosedByPeer, CloseMode::Graceful)
    );
}

#[test]
fn an_idle_session_is_cut_and_a_busy_one_is_not() {
    let mut h = Harness::new(
        Timing {
            idle_timeout: Some(Duration::from_secs(1)),
            ..timing()
        },
        limits(),
    );
    h.conn
        .handle_received(h.at(500), b"ping", |data| Ok(data.len()))
        .unwrap();
    assert_eq!(h.conn.poll_timeout(), Some(h.at(1500)));
    assert!(h.conn.handle_timeout(h.at(1000)), "open: ticked");
    assert!(h.conn.poll_close().is_none());
    assert!(!h.conn.handle_timeout(h.at(1500)));
    assert_eq!(
        h.closing(),
        (DisconnectReason::IdleTimeout, CloseMode::Graceful)
    );
    assert!(!h.handle.is_connected());
}

#[test]
fn a_queue_overflow_aborts_and_drops_what_was_queued() {
    let mut h = Harness::new(
        timing(),
        SendLimits {
            // Each buffer costs its 60 bytes and a 64-byte overhead.
            high_watermark: 100,
            low_watermark: 10,
            hard_limit: 200,
            ..limits()
        },
    );
    static SIXTY: [u8; 60] = [1; 60];
    h.send(&SIXTY);
    assert!(!h.handle.is_writable());
    assert_eq!(
        h.handle.send(Bytes::from_static(&SIXTY)),
        Err(SendError::QueueFull)
    );
    h.conn.handle_disconnect_request(h.at(0));
    assert_eq!(
        h.closing(),
        (DisconnectReason::SendQueueOverflow, CloseMode::Abort)
    );
    assert_eq!(h.handle.queued_bytes(), 0);
    assert!(matches!(h.flush(1), Write::Nothing));
}

#[test]
fn unconsumed_input_is_shown_again_and_bounded_by_the_backlog_limit() {
    let mut h = Harness::plain();
    let mut seen = Vec::new();
    // Consumes whole 4-byte units only.
    let mut units = |data: &[u8]| -> Result<usize, Panic> {
        seen.push(data.to_vec());
        Ok(data.len() / 4 * 4)
    };
    h.conn
        .handle_received(h.at(0), b"abcdef", &mut units)
        .unwrap();
    h.conn.handle_received(h.at(1), b"gh", &mut units).unwrap();
    // Called again while it makes progress, then shown the rest again in
    // front of the next bytes.
    assert_eq!(seen, [b"abcdef".to_vec(), b"ef".to_vec(), b"efgh".to_vec()]);
    assert!(h.conn.poll_close().is_none());

    // A session that never consumes: past 16 bytes it is disconnected.
    h.conn
        .handle_received(h.at(2), &[0; 16], |_| Ok(0))
        .unwrap();
    assert!(h.conn.poll_close().is_none());
    h.conn.handle_received(h.at(3), b"x", |_| Ok(0)).unwrap();
    assert_eq!(
        h.closing(),
        (DisconnectReason::ReceiveOverflow, CloseMode::Abort)
    );
}

#[test]
fn a_panic_in_on_recv_is_returned_and_ends_the_session_with_its_message() {
    let mut h = Harness::plain();
    let result = h.conn.handle_received(h.at(0), b"boom", |_| {
        Err(Box::new("on_recv exploded") as Panic)
    });
    assert!(result.is_err());
    h.conn
        .callback_panicked(h.at(0), "on_recv exploded".to_string());
    assert_eq!(
        h.closing(),
        (
            DisconnectReason::CallbackPanic("on_recv exploded".into()),
            CloseMode::Abort
        )
    );
}

#[test]
fn a_failed_write_aborts_with_the_errors_reason_and_uncounts_its_bytes() {
    let mut h = Harness::plain();
    h.send(b"lost");
    let (_, batch) = h.expect_batch(0);
    h.send(b"queued behind");
    let error = io::Error::from(io::ErrorKind::ConnectionReset);
    assert_eq!(h.conn.handle_sent(Err(error), batch, &mut h.pool), 0);
    assert_eq!(h.closing(), (DisconnectReason::Reset, CloseMode::Abort));
    assert_eq!(h.handle.queued_bytes(), 0);
}

#[test]
fn stop_drains_open_sessions_and_caps_their_linger() {
    let mut h = Harness::plain();
    h.send(b"last words");
    let flush_deadline = h.at(5_000);
    let hard_deadline = h.at(8_000);
    h.conn.begin_stop(flush_deadline, hard_deadline);
    assert_eq!(
        h.conn.phase(),
        Phase::Draining {
            deadline: flush_deadline
        }
    );
    let (bytes, batch) = h.expect_batch(7_000);
    assert_eq!(bytes, b"last words");
    h.complete(batch);
    assert!(matches!(h.flush(7_500), Write::Nothing));
    assert_eq!(
        h.conn.phase(),
        Phase::Lingering {
            deadline: hard_deadline
        },
        "7.5 s + a 2 s linger is past the hard deadline"
    );
    assert!(!h.conn.handle_read_closed(None));
    assert_eq!(
        h.closing(),
        (DisconnectReason::Shutdown, CloseMode::Graceful)
    );
}

#[test]
fn a_close_during_a_write_counts_the_in_flight_bytes_once() {
    let mut h = Harness::plain();
    h.send(b"in flight");
    let (_, batch) = h.expect_batch(0);
    h.send(b"queued");
    assert_eq!(h.handle.queued_bytes(), 15);
    h.conn
        .close(Some(DisconnectReason::ClosedByApp), CloseMode::Graceful);
    assert_eq!(h.handle.queued_bytes(), 9, "the queue is dropped at once");
    assert_eq!(h.conn.handle_sent(Ok(4), batch, &mut h.pool), 0);
    assert_eq!(h.handle.queued_bytes(), 0);
    assert_eq!(
        h.closing(),
        (DisconnectReason::ClosedByApp, CloseMode::Graceful)
    );
}

#[test]
fn a_write_takes_one_batch_of_buffers_and_the_rest_follows_at_once() {
    let mut h = Harness::new(
        Timing {
            coalesce: Some(ms(10)),
            ..timing()
        },
        SendLimits {
            coalesce_max_bytes: usize::MAX,
            ..limits()
        },
    );
    let total = crate::driver::MAX_BATCH_BUFFERS + 10;
    h.handle
        .send_batch((0..total).map(|_| Bytes::from_static(b"p")))
        .unwrap();
    let Write::Batch(first) = h.flush(0) else {
        panic!("the first write");
    };
    assert_eq!(first.buffers(), crate::driver::MAX_BATCH_BUFFERS);
    h.complete(first);
    assert_eq!(h.handle.queued_bytes(), 10);
    // Within the coalescing interval, yet not held: it is the queue's rest.
    let (bytes, batch) = h.expect_batch(1);
    assert_eq!(bytes.len(), 10);
    h.complete(batch);
    assert_eq!(h.handle.queued_bytes(), 0);
}

#[test]
fn the_queue_is_cut_at_its_most_buffers_too() {
    let h = Harness::new(
        timing(),
        SendLimits {
            max_buffers: 3,
            policy: OverflowPolicy::DropNewest,
            ..limits()
        },
    );
    h.send(b"1");
    h.handle
        .send_batch([Bytes::from_static(b"2"), Bytes::from_static(b"3")])
        .unwrap();
    assert_eq!(
        h.handle.send(Bytes::from_static(b"4")),
        Err(SendError::QueueFull)
    );
    assert_eq!(h.handle.queued_bytes(), 3);
    assert!(h.handle.is_connected(), "DropNewest keeps the session");
}
