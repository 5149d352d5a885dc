//! The per-address rate limit of new QUIC connections: a token bucket per
//! IPv4 address or IPv6 /64, in a table of bounded size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most addresses tracked; when full, buckets that have refilled are
/// forgotten, and if none has, a new address is limited until one has.
const MAX_TRACKED: usize = 16 * 1024;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of new connections per address.
pub(super) struct HandshakeLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

/// The address a limit counts: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl HandshakeLimiter {
    /// `rate` new connections a second per address, `burst` at once; a
    /// rate of 0 allows everything.
    pub(super) fn new(rate: u32, burst: u32) -> HandshakeLimiter {
        HandshakeLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// True if `ip` may start one more connection at `now`.
    pub(super) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let key = key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_TRACKED {
                return false;
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_address_and_per_ipv6_64() {
        let mut limiter = HandshakeLimiter::new(10, 3);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!((0..5).filter(|_| limiter.allow(a, now)).count(), 3);
        assert!(limiter.allow(b, now));
        assert!(limiter.allow(a, now + Duration::from_millis(100)));
        assert!(!limiter.allow(a, now + Duration::from_millis(100)));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(
            (0..3)
                .filter(|_| limiter.allow(v6, now) || limiter.allow(same_64, now))
                .count(),
            3
        );
        assert!(!limiter.allow(same_64, now));
    }
}
