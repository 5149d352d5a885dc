//! The packet session: the course's `PacketSession`, which turns the byte
//! stream of a [`Session`] into one `on_packet(id, body)` call per packet.
//!
//! This module owns the receive-side packet rules and their configuration:
//! - [`PacketConfig`]: maximum packet size, the set of known ids (optional),
//!   the rate limits, the packet deadline;
//! - [`PacketReceiver`]: the engine-free core — framing, the id check, rate
//!   limiting and delivery over one receive buffer, driven by a closure, so
//!   it can be tested and fuzzed without sockets;
//! - [`PacketHandler`] and [`PacketSession`]: the application's callbacks and
//!   the adapter that implements [`Session`] for them, logging and
//!   disconnecting a peer that breaks the rules.
//!
//! Partial packets are not copied here: `on_recv` reports how many bytes the
//! whole packets took, and the engine keeps the rest in front of the next
//! bytes (its receive backlog limit must stay above the maximum packet size).
//!
//! The packet deadline ([`PacketConfig::with_packet_deadline`]) disconnects a peer
//! that starts a packet and does not finish it in time, however slowly it
//! keeps trickling bytes (each byte would reset an idle timeout):
//! [`PacketSession`] notes when the incomplete packet at the front of the
//! stream began and checks it on the worker's housekeeping tick
//! ([`Session::on_tick`]), so no timer is armed per packet. Such a disconnect ends
//! the session with [`DisconnectReason::PacketTimeout`] and a `warn` line
//! rate-limited over all sessions ([`LogThrottle`]). So is every other line
//! a peer can cause: a disconnect for breaking the rules, a packet over a rate
//! limit; each line names one peer and counts the events it stands for.

use std::fmt;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::{Frames, RawPacket, HEADER_SIZE, MAX_PACKET_SIZE};
use super::limits::{LogThrottle, RateExceeded, RateLimiter, RateLimits, RatePolicy};
use super::{DispatchError, FrameError};
use crate::session::{DisconnectReason, Session, SessionHandle};

/// A set of packet ids (a 65536-bit map, 8 KiB).
#[derive(Clone, PartialEq, Eq)]
pub struct IdSet {
    bits: Box<[u64]>,
}

impl IdSet {
    /// An empty set.
    pub fn new() -> IdSet {
        IdSet {
            bits: vec![0u64; 1 << 10].into_boxed_slice(),
        }
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: u16) {
        self.bits[(id >> 6) as usize] |= 1 << (id & 63);
    }

    /// True if `id` is in the set.
    pub fn contains(&self, id: u16) -> bool {
        self.bits[(id >> 6) as usize] & (1 << (id & 63)) != 0
    }

    /// Number of ids in the set.
    pub fn len(&self) -> usize {
        self.bits
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    /// True if the set holds no id.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|word| *word == 0)
    }
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet::new()
    }
}

impl FromIterator<u16> for IdSet {
    fn from_iter<T: IntoIterator<Item = u16>>(iter: T) -> Self {
        let mut set = IdSet::new();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = (0..=u16::MAX).filter(|id| self.contains(*id));
        f.debug_set().entries(ids).finish()
    }
}

/// Receive-side packet rules of a session, shared cheaply between the
/// sessions of a service (clone it in the session factory).
///
/// ```
/// use servercore::packet::{PacketConfig, RateLimits};
///
/// let config = PacketConfig::default()
///     .with_max_packet_size(4096)
///     .with_known_ids([1000, 1002, 1004])
///     .with_rate_limits(RateLimits::default());
/// assert_eq!(config.max_packet_size(), 4096);
/// assert!(config.is_known(1002) && !config.is_known(1001));
/// ```
#[derive(Debug, Clone)]
pub struct PacketConfig {
    max_packet_size: usize,
    known_ids: Option<Arc<IdSet>>,
    rate_limits: Arc<RateLimits>,
    packet_deadline: Option<Duration>,
}

impl Default for PacketConfig {
    /// Packets up to 65535 bytes, every id accepted (the dispatcher still
    /// refuses ids it does not know), [`RateLimits::default`], no packet
    /// deadline.
    fn default() -> Self {
        PacketConfig {
            max_packet_size: MAX_PACKET_SIZE,
            known_ids: None,
            rate_limits: Arc::new(RateLimits::default()),
            packet_deadline: None,
        }
    }
}

impl PacketConfig {
    /// The defaults; see [`PacketConfig::default`].
    pub fn new() -> PacketConfig {
        PacketConfig::default()
    }

    /// Refuses packets larger than `bytes`, header included (clamped to
    /// `4..=65535`; default 65535).
    pub fn with_max_packet_size(mut self, bytes: usize) -> PacketConfig {
        self.max_packet_size = bytes.clamp(HEADER_SIZE, MAX_PACKET_SIZE);
        self
    }

    /// Refuses, before dispatch and before rate accounting, every id not in
    /// `ids` (the generated `SERVER_RECEIVES_IDS`, for instance).
    pub fn with_known_ids(mut self, ids: impl IntoIterator<Item = u16>) -> PacketConfig {
        self.known_ids = Some(Arc::new(ids.into_iter().collect()));
        self
    }

    /// Accepts every id (the default): unknown ones reach the handler.
    pub fn with_any_id(mut self) -> PacketConfig {
        self.known_ids = None;
        self
    }

    /// Sets the flood limits.
    pub fn with_rate_limits(mut self, limits: RateLimits) -> PacketConfig {
        self.rate_limits = Arc::new(limits);
        self
    }

    /// Disconnects a peer whose started packet is still incomplete after
    /// `deadline` ([`DisconnectReason::PacketTimeout`]); checked on the
    /// worker's housekeeping tick, so the disconnect comes up to ~100 ms late.
    /// `None` (the default) leaves a half-sent packet to the idle timeout.
    pub fn with_packet_deadline(mut self, deadline: Option<Duration>) -> PacketConfig {
        self.packet_deadline = deadline;
        self
    }

    /// The packet deadline, if any.
    pub fn packet_deadline(&self) -> Option<Duration> {
        self.packet_deadline
    }

    /// The largest packet accepted, header included.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// The known ids, when unknown ones are refused.
    pub fn known_ids(&self) -> Option<&IdSet> {
        self.known_ids.as_deref()
    }

    /// True if packets of `id` pass the id check.
    pub fn is_known(&self, id: u16) -> bool {
        self.known_ids.as_ref().is_none_or(|ids| ids.contains(id))
    }

    /// The flood limits.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }
}

/// A broken rule that ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A header with a size below 4 or above the maximum.
    Frame(FrameError),
    /// An id outside the configured known set, or one the handler refused
    /// (unknown, unexpected, undecodable, rejected).
    Dispatch(DispatchError),
    /// A limit whose policy is [`RatePolicy::Disconnect`].
    RateLimited(RateExceeded),
}

impl Violation {
    /// [`DisconnectReason::RateLimited`] for a rate limit,
    /// [`DisconnectReason::MalformedPacket`] otherwise, carrying this
    /// violation's text.
    pub fn to_disconnect_reason(&self) -> DisconnectReason {
        match self {
            Violation::RateLimited(_) => DisconnectReason::RateLimited(self.to_string()),
            _ => DisconnectReason::MalformedPacket(self.to_string()),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Frame(error) => error.fmt(f),
            Violation::Dispatch(error) => error.fmt(f),
            Violation::RateLimited(exceeded) => exceeded.fmt(f),
        }
    }
}

impl std::error::Error for Violation {}

/// What one [`PacketReceiver::receive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOutcome {
    /// Bytes taken by whole packets (delivered or dropped). The rest is a
    /// partial packet to show again with the next bytes.
    pub consumed: usize,
    /// The rule broken, if any; processing stopped there.
    pub violation: Option<Violation>,
    /// The delivery closure asked to stop (the session is closing).
    pub stopped: bool,
}

/// The packet rules over a receive buffer, without sockets: framing, the
/// known-id check, rate limits, delivery.
///
/// ```
/// use std::ops::ControlFlow;
/// use std::time::Instant;
/// use servercore::packet::{PacketConfig, PacketReceiver};
///
/// let mut receiver = PacketReceiver::new(PacketConfig::default());
/// let mut ids = Vec::new();
/// let data = [4, 0, 0xe8, 0x03, 5, 0, 0xe9, 0x03, 0x08, 6, 0];
/// let outcome = receiver.receive(&data, Instant::now(), |packet| {
///     ids.push(packet.id);
///     Ok(ControlFlow::Continue(()))
/// });
/// assert_eq!(ids, [1000, 1001]);
/// assert_eq!(outcome.consumed, 9);
/// assert!(outcome.violation.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct PacketReceiver {
    config: PacketConfig,
    limiter: RateLimiter,
    peer: Option<SocketAddr>,
    delivered: u64,
    dropped: u64,
}

impl PacketReceiver {
    /// Fresh per-session state for `config`.
    pub fn new(config: PacketConfig) -> PacketReceiver {
        PacketReceiver {
            limiter: RateLimiter::new(Arc::clone(&config.rate_limits)),
            config,
            peer: None,
            delivered: 0,
            dropped: 0,
        }
    }

    /// Names the peer in the receiver's log lines.
    pub fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = Some(peer);
    }

    /// The configuration.
    pub fn config(&self) -> &PacketConfig {
        &self.config
    }

    /// Packets handed to the delivery closure so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Packets discarded by [`RatePolicy::Drop`] so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Packets past a rate limit so far, whatever the policy.
    pub fn rate_exceeded(&self) -> u64 {
        self.limiter.exceeded_count()
    }

    /// Processes the whole packets at the front of `data`, received at
    /// `now`, handing each accepted one to `deliver`. Stops at the first
    /// incomplete packet, at the first violation, or when `deliver` returns
    /// `ControlFlow::Break`.
    pub fn receive<F>(&mut self, data: &[u8], now: Instant, mut deliver: F) -> ReceiveOutcome
    where
        F: FnMut(RawPacket<'_>) -> Result<ControlFlow<()>, DispatchError>,
    {
        let mut frames = Frames::new(data, self.config.max_packet_size);
        let mut outcome = ReceiveOutcome {
            consumed: 0,
            violation: None,
            stopped: false,
        };
        while let Some(frame) = frames.next() {
            let packet = match frame {
                Ok(packet) => packet,
                Err(error) => {
                    outcome.violation = Some(Violation::Frame(error));
                    break;
                }
            };
            outcome.consumed = frames.consumed();
            if !self.config.is_known(packet.id) {
                outcome.violation = Some(Violation::Dispatch(DispatchError::UnknownId(packet.id)));
                break;
            }
            if let Err(exceeded) = self.limiter.check(packet.id, packet.wire_len(), now) {
                match exceeded.policy {
                    RatePolicy::Disconnect => {
                        outcome.violation = Some(Violation::RateLimited(exceeded));
                        break;
                    }
                    RatePolicy::Drop => {
                        self.dropped += 1;
                        self.log_exceeded(&exceeded, "dropping packet");
                        continue;
                    }
                    RatePolicy::Log => self.log_exceeded(&exceeded, "delivering anyway"),
                }
            }
            self.delivered += 1;
            match deliver(packet) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => {
                    outcome.stopped = true;
                    break;
                }
                Err(error) => {
                    outcome.violation = Some(Violation::Dispatch(error));
                    break;
                }
            }
        }
        outcome
    }

    fn log_exceeded(&mut self, exceeded: &RateExceeded, action: &str) {
        if let Some(events) = RATE_LOG.event() {
            let peer = self.peer.map(|peer| peer.to_string()).unwrap_or_default();
            tracing::warn!(
                peer = %peer,
                events,
                total = RATE_LOG.total(),
                dropped = self.dropped,
                "rate limit: {exceeded}; {action} (events counts the packets over a limit \
                 since the last line, over all sessions; dropped those of this session)"
            );
        }
    }
}

/// The application's side of a [`PacketSession`]: the course's
/// `OnConnected / OnRecvPacket / OnSend / OnDisconnected`.
///
/// With a generated protocol, `on_packet` is one line:
/// `dispatch_server(self, session, id, body)`.
pub trait PacketHandler: 'static {
    /// The connection is established; `session` can already send.
    fn on_connected(&mut self, session: &SessionHandle) {
        let _ = session;
    }

    /// One whole packet arrived. An error disconnects the session with
    /// [`DisconnectReason::MalformedPacket`] carrying its text.
    fn on_packet(
        &mut self,
        session: &SessionHandle,
        id: u16,
        body: &[u8],
    ) -> Result<(), DispatchError>;

    /// A write of `len` bytes to the socket completed.
    fn on_send(&mut self, session: &SessionHandle, len: usize) {
        let _ = (session, len);
    }

    /// The worker's housekeeping tick (see [`Session::on_tick`]): for the
    /// application's own cheap deadline checks.
    fn on_tick(&mut self, session: &SessionHandle, now: Instant) {
        let _ = (session, now);
    }

    /// The peer finished sending; every complete packet it sent was handled.
    /// The default disconnects with `ClosedByPeer` once what is queued is
    /// written (see [`Session::on_read_closed`](crate::Session::on_read_closed)).
    fn on_read_closed(&mut self, session: &SessionHandle) {
        session.disconnect_with(DisconnectReason::ClosedByPeer);
    }

    /// The connection ended; runs exactly once, last.
    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        let _ = (session, reason);
    }
}

/// Adapts a [`PacketHandler`] to [`Session`]: splits the stream into packets
/// however the bytes were disconnected across receives, enforces [`PacketConfig`],
/// and disconnects a peer that breaks it (with a rate-limited log line
/// naming the peer).
#[derive(Debug)]
pub struct PacketSession<H> {
    handler: H,
    receiver: PacketReceiver,
    /// When the incomplete packet at the front of the stream began.
    partial_since: Option<Instant>,
}

/// Packet-deadline disconnects, over every session of the process.
static PACKET_TIMEOUT_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
/// Disconnects for breaking the packet rules (malformed, unknown id, a rate limit
/// that disconnects, a handler's error), over every session.
static VIOLATION_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));
/// Packets over a rate limit that only drops or logs, over every session.
static RATE_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(1));

impl<H: PacketHandler> PacketSession<H> {
    /// Wraps `handler` with `config`.
    pub fn new(handler: H, config: PacketConfig) -> PacketSession<H> {
        PacketSession {
            handler,
            receiver: PacketReceiver::new(config),
            partial_since: None,
        }
    }

    /// The application's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The application's handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The receive state (counters, configuration).
    pub fn receiver(&self) -> &PacketReceiver {
        &self.receiver
    }

    /// Takes the handler back.
    pub fn into_handler(self) -> H {
        self.handler
    }
}

impl<H: PacketHandler> Session for PacketSession<H> {
    fn on_connected(&mut self, session: &SessionHandle) {
        self.receiver.set_peer(session.peer_addr());
        self.handler.on_connected(session);
    }

    fn on_recv(&mut self, session: &SessionHandle, data: &[u8]) -> usize {
        if !session.is_connected() {
            // Closing: whatever still arrives is discarded, never buffered.
            return data.len();
        }
        let handler = &mut self.handler;
        let now = Instant::now();
        let delivered_before = self.receiver.delivered();
        let outcome = self.receiver.receive(data, now, |packet| {
            handler.on_packet(session, packet.id, packet.body)?;
            Ok(if session.is_connected() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        });
        session
            .counters()
            .note_packets_in(self.receiver.delivered() - delivered_before);
        if let Some(violation) = outcome.violation {
            let reason = violation.to_disconnect_reason();
            if let Some(disconnects) = VIOLATION_LOG.event() {
                tracing::warn!(
                    session = %session.id(),
                    peer = %session.peer_addr(),
                    disconnects,
                    total = VIOLATION_LOG.total(),
                    "{reason}; disconnecting (disconnects counts this one and those since the last \
                     line, over all sessions)"
                );
            }
            session.disconnect_with(reason);
            return data.len();
        }
        if outcome.stopped {
            return data.len();
        }
        if outcome.consumed == data.len() {
            self.partial_since = None;
        } else if outcome.consumed > 0 || self.partial_since.is_none() {
            // A new packet starts now (the one before it completed).
            self.partial_since = Some(now);
        }
        outcome.consumed
    }

    fn on_send(&mut self, session: &SessionHandle, len: usize) {
        self.handler.on_send(session, len);
    }

    fn on_tick(&mut self, session: &SessionHandle, now: Instant) {
        if let (Some(since), Some(deadline)) =
            (self.partial_since, self.receiver.config.packet_deadline)
        {
            if now.saturating_duration_since(since) >= deadline {
                self.partial_since = None;
                if let Some(disconnects) = PACKET_TIMEOUT_LOG.event() {
                    tracing::warn!(
                        session = %session.id(),
                        peer = %session.peer_addr(),
                        disconnects,
                        total = PACKET_TIMEOUT_LOG.total(),
                        "packet not completed within {deadline:?}; disconnecting (disconnects counts \
                         this one and those since the last line)"
                    );
                }
                session.disconnect_with(DisconnectReason::PacketTimeout);
                return;
            }
        }
        self.handler.on_tick(session, now);
    }

    fn on_read_closed(&mut self, session: &SessionHandle) {
        self.handler.on_read_closed(session);
    }

    fn on_disconnected(&mut self, session: &SessionHandle, reason: &DisconnectReason) {
        self.handler.on_disconnected(session, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::frame::encode_frame;
    use crate::packet::limits::{Limit, Rate};
    use proptest::prelude::*;
    use std::time::Duration;

    fn packet(id: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(id, body, &mut out).unwrap();
        out
    }

    /// Drives a receiver the way the engine drives `on_recv`.
    struct Harness {
        receiver: PacketReceiver,
        leftover: Vec<u8>,
        got: Vec<(u16, Vec<u8>)>,
        violation: Option<Violation>,
        now: Instant,
    }

    impl Harness {
        fn new(config: PacketConfig) -> Harness {
            Harness {
                receiver: PacketReceiver::new(config),
                leftover: Vec::new(),
                got: Vec::new(),
                violation: None,
                now: Instant::now(),
            }
        }

        fn feed(&mut self, chunk: &[u8]) {
            assert!(self.violation.is_none(), "fed after a violation");
            self.leftover.extend_from_slice(chunk);
            let got = &mut self.got;
            let outcome = self.receiver.receive(&self.leftover, self.now, |packet| {
                if packet.id == 0xdead {
                    return Err(DispatchError::Decode {
                        id: packet.id,
                        name: "DEAD",
                        error: <() as prost::Message>::decode(packet.body).unwrap_err(),
                    });
                }
                got.push((packet.id, packet.body.to_vec()));
                Ok(ControlFlow::Continue(()))
            });
            self.leftover.drain(..outcome.consumed);
            self.violation = outcome.violation;
        }

        fn reason(&self) -> DisconnectReason {
            self.violation.as_ref().unwrap().to_disconnect_reason()
        }
    }

    #[test]
    fn whole_packets_are_delivered_and_partial_ones_kept() {
        let mut h = Harness::new(PacketConfig::default());
        let mut stream = packet(1000, b"abc");
        stream.extend(packet(1001, b""));
        stream.extend(&packet(1002, b"xyz")[..5]);
        h.feed(&stream);
        assert_eq!(h.got, vec![(1000, b"abc".to_vec()), (1001, vec![])]);
        assert_eq!(h.leftover.len(), 5);
        h.feed(b"yz");
        assert_eq!(h.got.len(), 3);
        assert!(h.leftover.is_empty());
        assert!(h.violation.is_none());
        assert_eq!(h.receiver.delivered(), 3);
    }

    #[test]
    fn size_below_header_is_malformed() {
        let mut h = Harness::new(PacketConfig::default());
        let mut stream = packet(1000, b"ok");
        stream.extend([3, 0, 0xe8, 0x03]);
        h.feed(&stream);
        assert_eq!(h.got.len(), 1, "the packet before the bad one is delivered");
        assert_eq!(
            h.reason(),
            DisconnectReason::MalformedPacket(
                "packet size 3 is below the 4-byte header (id 1000)".into()
            )
        );
    }

    #[test]
    fn size_above_configured_max_is_malformed_before_the_body() {
        let mut h = Harness::new(PacketConfig::default().with_max_packet_size(1024));
        h.feed(&[0x01, 0x04, 0xec, 0x03]); // 1025 bytes announced
        assert_eq!(
            h.reason(),
            DisconnectReason::MalformedPacket(
                "packet size 1025 exceeds the maximum of 1024 bytes (id 1004)".into()
            )
        );
    }

    #[test]
    fn unknown_id_is_malformed_when_configured() {
        let mut h = Harness::new(PacketConfig::default().with_known_ids([1000, 1002]));
        h.feed(&packet(1000, b""));
        h.feed(&packet(7, b"zz"));
        assert_eq!(h.got.len(), 1);
        assert_eq!(
            h.reason(),
            DisconnectReason::MalformedPacket("unknown packet id 7".into())
        );
        // Without a known set, the id reaches the handler.
        let mut h = Harness::new(PacketConfig::default());
        h.feed(&packet(7, b"zz"));
        assert_eq!(h.got.len(), 1);
    }

    #[test]
    fn a_handler_error_is_malformed() {
        let mut h = Harness::new(PacketConfig::default());
        h.feed(&packet(0xdead, b"\xff"));
        let DisconnectReason::MalformedPacket(detail) = h.reason() else {
            panic!("not malformed: {:?}", h.reason());
        };
        assert!(
            detail.starts_with("packet DEAD (id 57005) does not decode: failed to decode Protobuf"),
            "{detail}"
        );
    }

    #[test]
    fn half_a_header_waits_without_buffering_here() {
        let mut h = Harness::new(PacketConfig::default());
        h.feed(&[0xff]);
        assert!(h.violation.is_none());
        assert_eq!(h.leftover.len(), 1);
        assert!(h.got.is_empty());
    }

    fn flood(policy: RatePolicy) -> Harness {
        let limits = RateLimits::default().id(
            1004,
            Limit::NONE
                .packets(Rate::per_second(10).burst(10))
                .policy(policy),
        );
        let mut h = Harness::new(PacketConfig::default().with_rate_limits(limits));
        let mut stream = Vec::new();
        for i in 0..50u8 {
            stream.extend(packet(1004, &[i]));
        }
        stream.extend(packet(1000, b"other id"));
        h.feed(&stream);
        h
    }

    #[test]
    fn flood_with_disconnect_policy() {
        let h = flood(RatePolicy::Disconnect);
        assert_eq!(h.got.len(), 10);
        assert_eq!(
            h.reason(),
            DisconnectReason::RateLimited(
                "packet id 1004 (5 bytes) over the limit of 10 packets/s (burst 10) for this id"
                    .into()
            )
        );
    }

    #[test]
    fn flood_with_drop_policy() {
        let h = flood(RatePolicy::Drop);
        assert!(h.violation.is_none());
        assert_eq!(h.got.len(), 11, "10 within the burst and the other id");
        assert_eq!(h.got[10].0, 1000);
        assert_eq!(h.receiver.dropped(), 40);
        assert!(h.leftover.is_empty(), "dropped packets are consumed");
    }

    #[test]
    fn flood_with_log_policy() {
        let h = flood(RatePolicy::Log);
        assert!(h.violation.is_none());
        assert_eq!(h.got.len(), 51);
        assert_eq!(h.receiver.rate_exceeded(), 40);
    }

    #[test]
    fn a_steady_session_below_the_limits_is_never_touched() {
        let limits =
            RateLimits::default().id(1004, Limit::NONE.packets(Rate::per_second(10).burst(10)));
        let mut h = Harness::new(PacketConfig::default().with_rate_limits(limits));
        for i in 0..100u32 {
            h.now += Duration::from_millis(150);
            h.feed(&packet(1004, &i.to_le_bytes()));
        }
        assert!(h.violation.is_none());
        assert_eq!(h.got.len(), 100);
        assert_eq!(h.receiver.rate_exceeded(), 0);
    }

    #[test]
    fn delivery_can_stop_the_loop() {
        let mut receiver = PacketReceiver::new(PacketConfig::default());
        let mut stream = packet(1, b"");
        stream.extend(packet(2, b""));
        let mut seen = 0;
        let outcome = receiver.receive(&stream, Instant::now(), |_| {
            seen += 1;
            Ok(ControlFlow::Break(()))
        });
        assert_eq!(seen, 1);
        assert!(outcome.stopped);
        assert_eq!(outcome.consumed, 4);
    }

    #[test]
    fn id_set() {
        let set: IdSet = [0u16, 63, 64, 1000, u16::MAX].into_iter().collect();
        for id in [0u16, 63, 64, 1000, u16::MAX] {
            assert!(set.contains(id));
        }
        assert!(!set.contains(1));
        assert_eq!(set.len(), 5);
        assert!(IdSet::new().is_empty());
        assert_eq!(format!("{set:?}"), "{0, 63, 64, 1000, 65535}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Through the receiver (ids checked, limits applied), any chunking
        /// of a valid stream yields the same packets.
        #[test]
        fn receiver_any_chunking(
            packets in prop::collection::vec(
                (1000u16..1006, prop::collection::vec(any::<u8>(), 0..200)), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut stream = Vec::new();
            for (id, body) in &packets {
                encode_frame(*id, body, &mut stream).unwrap();
            }
            let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            offsets.sort_unstable();
            let config = PacketConfig::default().with_known_ids(1000..1006);
            let mut h = Harness::new(config);
            let mut start = 0;
            for offset in offsets.into_iter().chain([stream.len()]) {
                h.feed(&stream[start..offset]);
                start = offset;
            }
            prop_assert!(h.violation.is_none());
            prop_assert!(h.leftover.is_empty());
            prop_assert_eq!(h.got, packets);
        }

        /// Arbitrary bytes in arbitrary chunks: no panic, the kept leftover
        /// never exceeds one packet, and processing ends.
        #[test]
        fn receiver_arbitrary_input(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..300,
            max in 4usize..2000,
        ) {
            let mut h = Harness::new(
                PacketConfig::default()
                    .with_max_packet_size(max)
                    .with_rate_limits(RateLimits::default().each_id(
                        Limit::NONE.packets(Rate::per_second(5).burst(5)))),
            );
            for piece in data.chunks(chunk) {
                h.feed(piece);
                if h.violation.is_some() {
                    break;
                }
                prop_assert!(h.leftover.len() < max.max(HEADER_SIZE));
            }
        }
    }
}
