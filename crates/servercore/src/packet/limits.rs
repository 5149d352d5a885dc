//! Flood protection: per-session limits on packets per second and bytes per
//! second, for all packets together and for each id, and what happens past
//! them.
//!
//! This module owns the rate configuration ([`RateLimits`], shared by every
//! session of a service) and the per-session state ([`RateLimiter`], a few
//! token buckets). A bucket holds up to `burst` tokens and refills at
//! `per_second`; a packet costs one packet token and `size` byte tokens in the
//! overall buckets and in its id's buckets. A packet that finds any bucket
//! short takes nothing and is reported as [`RateExceeded`]; the session then
//! applies the [`RatePolicy`] of the limit that was hit.
//!
//! It re-exports [`LogThrottle`] (from [`crate::log_throttle`]), the
//! shared "one line a second, with the count of what was not logged" rule
//! for warnings a hostile peer can trigger at will (a packet deadline, a
//! refused address), so that no client can flood the log.
//!
//! The defaults ([`RateLimits::default`]) are far above what a person
//! playing sends (1000 packets/s and 1 MiB/s overall, 500 packets/s per id)
//! and only stop floods. Client-side sessions, which receive the broadcasts
//! of a whole room, should use [`RateLimits::unlimited`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::log_throttle::LogThrottle;

/// A token-bucket rate: `per_second` sustained, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Most tokens the bucket holds (and its content at the start).
    pub burst: u32,
}

impl Rate {
    /// `n` per second, with a burst of `n`.
    pub const fn per_second(n: u32) -> Rate {
        Rate {
            per_second: n,
            burst: n,
        }
    }

    /// The same rate with a burst of `burst`.
    pub const fn burst(self, burst: u32) -> Rate {
        Rate {
            per_second: self.per_second,
            burst,
        }
    }
}

/// What happens to a packet past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RatePolicy {
    /// Deliver the packet anyway and log (at most one line per second per
    /// session).
    Log,
    /// Discard the packet silently (counted, and logged at most once per
    /// second per session); the session stays.
    Drop,
    /// Disconnect with [`DisconnectReason::RateLimited`](crate::DisconnectReason).
    #[default]
    Disconnect,
}

/// Limits on one stream of packets (all of a session's, or one id's).
/// `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    /// Packets per second.
    pub packets: Option<Rate>,
    /// Bytes per second (header included).
    pub bytes: Option<Rate>,
    /// Policy for this limit; `None` uses [`RateLimits::policy`].
    pub policy: Option<RatePolicy>,
}

impl Limit {
    /// No limit.
    pub const NONE: Limit = Limit {
        packets: None,
        bytes: None,
        policy: None,
    };

    /// Limits the packet rate.
    pub const fn packets(self, rate: Rate) -> Limit {
        Limit {
            packets: Some(rate),
            ..self
        }
    }

    /// Limits the byte rate.
    pub const fn bytes(self, rate: Rate) -> Limit {
        Limit {
            bytes: Some(rate),
            ..self
        }
    }

    /// Sets the policy of this limit.
    pub const fn policy(self, policy: RatePolicy) -> Limit {
        Limit {
            policy: Some(policy),
            ..self
        }
    }

    /// True when neither packets nor bytes are limited.
    pub const fn is_unlimited(&self) -> bool {
        self.packets.is_none() && self.bytes.is_none()
    }
}

/// The rate limits of every session of a service (shared, read-only).
///
/// ```
/// use servercore::packet::{Limit, Rate, RateLimits, RatePolicy};
///
/// let limits = RateLimits::default()
///     .overall(Limit::NONE.packets(Rate::per_second(200).burst(400)))
///     // chat: 5 lines a second, bursts of 10; flooders lose their lines
///     .id(1004, Limit::NONE.packets(Rate::per_second(5).burst(10)).policy(RatePolicy::Drop))
///     .policy(RatePolicy::Disconnect);
/// assert_eq!(limits.limit_for(1004).policy, Some(RatePolicy::Drop));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    overall: Limit,
    each_id: Limit,
    ids: HashMap<u16, Limit>,
    policy: RatePolicy,
}

impl Default for RateLimits {
    /// Overall 1000 packets/s (burst 2000) and 1 MiB/s (burst 2 MiB); each
    /// id 500 packets/s (burst 1000); past a limit, disconnect.
    fn default() -> Self {
        RateLimits {
            overall: Limit::NONE
                .packets(Rate::per_second(1000).burst(2000))
                .bytes(Rate::per_second(1 << 20).burst(2 << 20)),
            each_id: Limit::NONE.packets(Rate::per_second(500).burst(1000)),
            ids: HashMap::new(),
            policy: RatePolicy::Disconnect,
        }
    }
}

impl RateLimits {
    /// No limit at all (client sessions, trusted links, benchmarks).
    pub fn unlimited() -> RateLimits {
        RateLimits {
            overall: Limit::NONE,
            each_id: Limit::NONE,
            ids: HashMap::new(),
            policy: RatePolicy::Disconnect,
        }
    }

    /// Sets the limit on all packets of a session together.
    pub fn overall(mut self, limit: Limit) -> RateLimits {
        self.overall = limit;
        self
    }

    /// Sets the limit each id gets unless [`id`](RateLimits::id) overrides it.
    pub fn each_id(mut self, limit: Limit) -> RateLimits {
        self.each_id = limit;
        self
    }

    /// Sets the limit of one id, replacing the [`each_id`](RateLimits::each_id)
    /// default for it.
    pub fn id(mut self, id: u16, limit: Limit) -> RateLimits {
        self.ids.insert(id, limit);
        self
    }

    /// Sets the policy of every limit that has none of its own.
    pub fn policy(mut self, policy: RatePolicy) -> RateLimits {
        self.policy = policy;
        self
    }

    /// The limit on all packets together.
    pub fn overall_limit(&self) -> &Limit {
        &self.overall
    }

    /// The limit that applies to packets of `id`.
    pub fn limit_for(&self, id: u16) -> &Limit {
        self.ids.get(&id).unwrap_or(&self.each_id)
    }

    /// The default policy.
    pub fn default_policy(&self) -> RatePolicy {
        self.policy
    }

    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.overall.is_unlimited()
            && self.each_id.is_unlimited()
            && self.ids.values().all(Limit::is_unlimited)
    }
}

/// Which limit a packet hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// The limit on all packets together.
    Overall,
    /// The limit of the packet's id.
    Id,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    /// Packets per second.
    Packets,
    /// Bytes per second.
    Bytes,
}

/// A packet past a limit: which one, and the policy to apply. Its text is
/// the detail of [`DisconnectReason::RateLimited`](crate::DisconnectReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateExceeded {
    /// The packet's id.
    pub id: u16,
    /// The packet's size on the wire.
    pub size: usize,
    /// Overall or per id.
    pub scope: RateScope,
    /// Packets or bytes.
    pub unit: RateUnit,
    /// The rate that was exceeded.
    pub rate: Rate,
    /// What to do with the packet.
    pub policy: RatePolicy,
}

impl fmt::Display for RateExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            RateUnit::Packets => "packets",
            RateUnit::Bytes => "bytes",
        };
        let scope = match self.scope {
            RateScope::Overall => "all packets",
            RateScope::Id => "this id",
        };
        write!(
            f,
            "packet id {} ({} bytes) over the limit of {} {unit}/s (burst {}) for {scope}",
            self.id, self.size, self.rate.per_second, self.rate.burst
        )
    }
}

impl std::error::Error for RateExceeded {}

/// Most ids with buckets of their own per session; packets of further ids
/// share one set of buckets, so a peer cycling through ids cannot grow a
/// session's memory.
pub const MAX_TRACKED_IDS: usize = 64;

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst as f64,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate.per_second as f64).min(rate.burst as f64);
    }

    /// A cost larger than the burst passes when the bucket is full (and
    /// leaves it in debt), so a burst below the packet size cannot block a
    /// packet forever.
    fn has(&self, rate: Rate, cost: f64) -> bool {
        self.tokens >= cost.min(rate.burst as f64)
    }
}

#[derive(Debug, Clone, Default)]
struct Buckets {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Buckets {
    fn new(limit: &Limit, now: Instant) -> Buckets {
        Buckets {
            packets: limit.packets.map(|rate| Bucket::new(rate, now)),
            bytes: limit.bytes.map(|rate| Bucket::new(rate, now)),
        }
    }

    /// Refills, then tells which unit lacks tokens for a packet of `size`.
    fn check(&mut self, limit: &Limit, size: usize, now: Instant) -> Option<(RateUnit, Rate)> {
        if let (Some(bucket), Some(rate)) = (&mut self.packets, limit.packets) {
            bucket.refill(rate, now);
            if !bucket.has(rate, 1.0) {
                return Some((RateUnit::Packets, rate));
            }
        }
        if let (Some(bucket), Some(rate)) = (&mut self.bytes, limit.bytes) {
            bucket.refill(rate, now);
            if !bucket.has(rate, size as f64) {
                return Some((RateUnit::Bytes, rate));
            }
        }
        None
    }

    fn take(&mut self, size: usize) {
        if let Some(bucket) = &mut self.packets {
            bucket.tokens -= 1.0;
        }
        if let Some(bucket) = &mut self.bytes {
            bucket.tokens -= size as f64;
        }
    }
}

/// One session's rate state: token buckets for all packets and per id.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: Arc<RateLimits>,
    unlimited: bool,
    overall: Option<Buckets>,
    ids: HashMap<u16, Buckets>,
    others: Option<Buckets>,
    exceeded: u64,
    suppressed_logs: u64,
    last_log: Option<Instant>,
}

impl RateLimiter {
    /// Fresh state (full buckets) for one session.
    pub fn new(limits: Arc<RateLimits>) -> RateLimiter {
        RateLimiter {
            unlimited: limits.is_unlimited(),
            limits,
            overall: None,
            ids: HashMap::new(),
            others: None,
            exceeded: 0,
            suppressed_logs: 0,
            last_log: None,
        }
    }

    /// The limits this state applies.
    pub fn limits(&self) -> &Arc<RateLimits> {
        &self.limits
    }

    /// Packets that hit a limit so far.
    pub fn exceeded_count(&self) -> u64 {
        self.exceeded
    }

    /// Accounts for a packet of `id` and `size` bytes (header included)
    /// received at `now`. `Ok` lets it through and takes its tokens; an
    /// error takes nothing and tells which limit was hit and its policy.
    pub fn check(&mut self, id: u16, size: usize, now: Instant) -> Result<(), RateExceeded> {
        if self.unlimited {
            return Ok(());
        }
        let limits = &*self.limits;
        let id_limit = limits.limit_for(id);
        let overall_limit = &limits.overall;

        let overall = self
            .overall
            .get_or_insert_with(|| Buckets::new(overall_limit, now));
        let overall_hit = overall.check(overall_limit, size, now);

        let id_buckets = if id_limit.is_unlimited() {
            None
        } else if let Some(buckets) = self.ids.get_mut(&id) {
            Some(buckets)
        } else if self.ids.len() < MAX_TRACKED_IDS || limits.ids.contains_key(&id) {
            Some(
                self.ids
                    .entry(id)
                    .or_insert_with(|| Buckets::new(id_limit, now)),
            )
        } else {
            Some(
                self.others
                    .get_or_insert_with(|| Buckets::new(id_limit, now)),
            )
        };
        let mut id_hit = None;
        if let Some(buckets) = id_buckets {
            id_hit = buckets.check(id_limit, size, now);
            if id_hit.is_none() && overall_hit.is_none() {
                buckets.take(size);
            }
        }

        let policy_of = |limit: &Limit| limit.policy.unwrap_or(limits.policy);
        let hit = match (overall_hit, id_hit) {
            (None, None) => {
                overall.take(size);
                return Ok(());
            }
            (Some(_), Some(i)) if policy_of(id_limit) > policy_of(overall_limit) => {
                (RateScope::Id, i, policy_of(id_limit))
            }
            (Some(o), _) => (RateScope::Overall, o, policy_of(overall_limit)),
            (None, Some(i)) => (RateScope::Id, i, policy_of(id_limit)),
        };
        self.exceeded += 1;
        let (scope, (unit, rate), policy) = hit;
        Err(RateExceeded {
            id,
            size,
            scope,
            unit,
            rate,
            policy,
        })
    }

    /// Whether to log an exceeded limit now: at most once per second per
    /// session. Returns how many reports were suppressed since the last one.
    pub fn should_log(&mut self, now: Instant) -> Option<u64> {
        match self.last_log {
            Some(last) if now.saturating_duration_since(last) < Duration::from_secs(1) => {
                self.suppressed_logs += 1;
                None
            }
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.suppressed_logs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: RateLimits) -> RateLimiter {
        RateLimiter::new(Arc::new(limits))
    }

    #[test]
    fn unlimited_never_trips() {
        let mut limiter = limiter(RateLimits::unlimited());
        let now = Instant::now();
        for _ in 0..100_000 {
            assert!(limiter.check(1000, 65535, now).is_ok());
        }
        assert!(limiter.ids.is_empty());
    }

    #[test]
    fn per_id_packet_limit_with_burst_and_refill() {
        let limits = RateLimits::unlimited()
            .each_id(Limit::NONE.packets(Rate::per_second(10).burst(5)))
            .policy(RatePolicy::Drop);
        let mut limiter = limiter(limits);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(1004, 10, t0).is_ok());
        }
        let hit = limiter.check(1004, 10, t0).unwrap_err();
        assert_eq!(hit.scope, RateScope::Id);
        assert_eq!(hit.unit, RateUnit::Packets);
        assert_eq!(hit.policy, RatePolicy::Drop);
        assert_eq!(
            hit.to_string(),
            "packet id 1004 (10 bytes) over the limit of 10 packets/s (burst 5) for this id"
        );
        // Another id has its own bucket.
        assert!(limiter.check(1002, 10, t0).is_ok());
        // 100 ms refills one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check(1004, 10, t1).is_ok());
        assert!(limiter.check(1004, 10, t1).is_err());
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check(1004, 10, t2).is_ok());
        }
        assert!(limiter.check(1004, 10, t2).is_err());
        assert_eq!(limiter.exceeded_count(), 3);
    }

    #[test]
    fn overall_byte_limit() {
        let limits = RateLimits::unlimited()
            .overall(Limit::NONE.bytes(Rate::per_second(1000).burst(1000)))
            .policy(RatePolicy::Disconnect);
        let mut limiter = limiter(limits);
        let t0 = Instant::now();
        assert!(limiter.check(1, 600, t0).is_ok());
        let hit = limiter.check(2, 600, t0).unwrap_err();
        assert_eq!((hit.scope, hit.unit), (RateScope::Overall, RateUnit::Bytes));
        assert!(limiter.check(2, 400, t0).is_ok());
    }

    #[test]
    fn a_refused_packet_takes_no_tokens() {
        let limits = RateLimits::unlimited()
            .overall(Limit::NONE.packets(Rate::per_second(1).burst(3)))
            .id(7, Limit::NONE.packets(Rate::per_second(1).burst(1)));
        let mut limiter = limiter(limits);
        let t0 = Instant::now();
        assert!(limiter.check(7, 4, t0).is_ok());
        for _ in 0..10 {
            assert_eq!(limiter.check(7, 4, t0).unwrap_err().scope, RateScope::Id);
        }
        // The overall bucket still holds 2 tokens.
        assert!(limiter.check(8, 4, t0).is_ok());
        assert!(limiter.check(8, 4, t0).is_ok());
        assert_eq!(
            limiter.check(8, 4, t0).unwrap_err().scope,
            RateScope::Overall
        );
    }

    #[test]
    fn per_id_policy_overrides_and_the_stronger_policy_wins() {
        let limits = RateLimits::unlimited()
            .overall(Limit::NONE.packets(Rate::per_second(1).burst(1)))
            .id(
                5,
                Limit::NONE
                    .packets(Rate::per_second(1).burst(1))
                    .policy(RatePolicy::Disconnect),
            )
            .policy(RatePolicy::Log);
        let mut limiter = limiter(limits);
        let t0 = Instant::now();
        assert!(limiter.check(5, 4, t0).is_ok());
        let hit = limiter.check(5, 4, t0).unwrap_err();
        assert_eq!(hit.policy, RatePolicy::Disconnect);
        assert_eq!(hit.scope, RateScope::Id);
        let hit = limiter.check(6, 4, t0).unwrap_err();
        assert_eq!(hit.policy, RatePolicy::Log);
    }

    #[test]
    fn a_packet_above_the_byte_burst_passes_on_a_full_bucket() {
        let limits =
            RateLimits::unlimited().each_id(Limit::NONE.bytes(Rate::per_second(100).burst(100)));
        let mut limiter = limiter(limits);
        let t0 = Instant::now();
        assert!(limiter.check(1, 1000, t0).is_ok());
        assert!(limiter.check(1, 4, t0).is_err());
        // 10 s pays the debt back (1000 - 100 = 900 tokens owed + 4).
        assert!(limiter
            .check(1, 4, t0 + Duration::from_millis(9_100))
            .is_ok());
    }

    #[test]
    fn cycling_ids_cannot_grow_the_state() {
        let mut limiter = limiter(RateLimits::default());
        let now = Instant::now();
        for id in 0..=u16::MAX {
            let _ = limiter.check(id, 4, now);
        }
        assert!(limiter.ids.len() <= MAX_TRACKED_IDS);
    }

    #[test]
    fn defaults_let_normal_play_through() {
        // A busy player: 60 movement packets, 2 chat lines and a few others
        // a second, for a minute.
        let mut limiter = limiter(RateLimits::default());
        let t0 = Instant::now();
        for tick in 0..60 * 60u64 {
            let now = t0 + Duration::from_micros(tick * 16_667);
            assert!(limiter.check(1010, 64, now).is_ok());
            if tick % 30 == 0 {
                assert!(limiter.check(1004, 300, now).is_ok());
            }
            if tick % 10 == 0 {
                assert!(limiter.check(1020, 1000, now).is_ok());
            }
        }
        assert_eq!(limiter.exceeded_count(), 0);
    }

    #[test]
    fn logging_is_throttled() {
        let mut limiter = limiter(RateLimits::default());
        let t0 = Instant::now();
        assert_eq!(limiter.should_log(t0), Some(0));
        assert_eq!(limiter.should_log(t0), None);
        assert_eq!(limiter.should_log(t0 + Duration::from_millis(500)), None);
        assert_eq!(limiter.should_log(t0 + Duration::from_secs(1)), Some(2));
    }
}
