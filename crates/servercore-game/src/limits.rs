//! Per-address limits: how many connections one address may hold at once
//! and how many accounts it may create per minute.
//!
//! This module owns [`AddressLimits`], shared by every session of a game
//! server, and what "one address" is ([`AddressKey`]): an IPv4 address, or
//! an IPv6 /64 (the block one subscriber, one machine or one cloud VM
//! gets: an IPv6 client can pick any of 2⁶⁴ source addresses, so counting
//! single IPv6 addresses limits nothing). An IPv4-mapped IPv6 address
//! (`::ffff:192.0.2.7`, how a dual-stack listener sees an IPv4 peer) is its
//! IPv4 address.
//!
//! Connections are counted from `on_connected` to `on_disconnected` (a
//! refused one is closed at once with
//! [`DisconnectReason::App`](servercore::DisconnectReason)`("too_many_connections_from_address")`);
//! account creation is a token bucket per address (`burst` = the per-minute
//! limit, refilled evenly over the minute). A login reserves a token before
//! it goes to the database and gives it back if the account already
//! existed; without a token the login may only find an existing account, so
//! a client past the limit can still log in to the accounts it has.
//!
//! Memory is bounded and so is the work per connection: an address is
//! forgotten once it holds no connection and its bucket is full again, at
//! its last disconnect if it is idle then, otherwise by an incremental
//! sweep: each new address looks at [`SWEEP_STEP`] entries after the
//! sweep's cursor and forgets those that are idle and refilled. The table
//! is split into [`SHARDS`] locks by address, so workers seldom wait for
//! each other.

use std::fmt;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indexmap::IndexMap;
use parking_lot::Mutex;

/// Entries a new address looks at in the sweep.
pub const SWEEP_STEP: usize = 4;

/// How many independently locked parts the table has.
pub const SHARDS: usize = 16;

/// What the limits count as one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressKey {
    /// An IPv4 address (also seen as `::ffff:a.b.c.d`).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl AddressKey {
    /// The key `ip` is counted under.
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    AddressKey::V6Prefix(prefix)
                }
            },
        }
    }
}

impl fmt::Display for AddressKey {
    /// `192.0.2.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKey::V4(v4) => write!(f, "{v4}"),
            AddressKey::V6Prefix(prefix) => {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(prefix);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
        }
    }
}

#[derive(Debug)]
struct AddressState {
    connections: usize,
    /// Account-creation tokens left.
    tokens: f64,
    refilled: Instant,
}

impl AddressState {
    /// Holds nothing and its bucket is full again at `now`: it may go.
    fn is_idle(&self, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.connections == 0 && self.tokens + elapsed * burst / 60.0 >= burst
    }
}

/// One lock's part of the table, with its sweep's cursor.
#[derive(Debug, Default)]
struct Shard {
    table: IndexMap<AddressKey, AddressState>,
    cursor: usize,
}

impl Shard {
    /// Looks at up to [`SWEEP_STEP`] entries from the cursor on, forgetting
    /// the idle ones; returns how many it looked at.
    fn sweep(&mut self, burst: f64, now: Instant) -> u64 {
        let mut examined = 0;
        for _ in 0..SWEEP_STEP {
            if self.table.is_empty() {
                break;
            }
            if self.cursor >= self.table.len() {
                self.cursor = 0;
            }
            examined += 1;
            let (_, state) = self
                .table
                .get_index(self.cursor)
                .expect("the cursor is in range");
            if state.is_idle(burst, now) {
                // The last entry moves into the cursor's place: looked at
                // next.
                self.table.swap_remove_index(self.cursor);
            } else {
                self.cursor += 1;
            }
        }
        examined
    }
}

/// The per-address limits of one game server (`0` means unlimited).
#[derive(Debug)]
pub struct AddressLimits {
    max_connections: usize,
    new_accounts_per_min: u32,
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    examined: AtomicU64,
}

impl AddressLimits {
    /// Limits of `max_connections` at once and `new_accounts_per_min`
    /// account creations per minute per address (0: unlimited).
    pub fn new(max_connections: usize, new_accounts_per_min: u32) -> AddressLimits {
        AddressLimits {
            max_connections,
            new_accounts_per_min,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            examined: AtomicU64::new(0),
        }
    }

    fn burst(&self) -> f64 {
        f64::from(self.new_accounts_per_min)
    }

    fn shard(&self, key: &AddressKey) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize]
    }

    /// The state of `key` in its shard, created (after a sweep step) if
    /// new.
    fn state<'s>(
        &self,
        shard: &'s mut Shard,
        key: AddressKey,
        now: Instant,
    ) -> &'s mut AddressState {
        let burst = self.burst();
        if !shard.table.contains_key(&key) {
            let examined = shard.sweep(burst, now);
            self.examined.fetch_add(examined, Ordering::Relaxed);
        }
        shard.table.entry(key).or_insert(AddressState {
            connections: 0,
            tokens: burst,
            refilled: now,
        })
    }

    /// Counts one more connection from `ip`, or returns false (counting
    /// nothing) if its address already holds the maximum.
    pub fn try_connect(&self, ip: IpAddr) -> bool {
        if self.max_connections == 0 {
            return true;
        }
        let key = AddressKey::of(ip);
        let mut shard = self.shard(&key).lock();
        let state = self.state(&mut shard, key, Instant::now());
        if state.connections >= self.max_connections {
            return false;
        }
        state.connections += 1;
        true
    }

    /// A connection counted by [`try_connect`](Self::try_connect) ended.
    pub fn disconnected(&self, ip: IpAddr) {
        if self.max_connections == 0 {
            return;
        }
        let key = AddressKey::of(ip);
        let burst = self.burst();
        let mut shard = self.shard(&key).lock();
        let Some(state) = shard.table.get_mut(&key) else {
            return;
        };
        state.connections = state.connections.saturating_sub(1);
        if state.is_idle(burst, Instant::now()) {
            shard.table.swap_remove(&key);
        }
    }

    /// Takes one account-creation token of `ip`'s address; false if none
    /// is left.
    pub fn try_reserve_account(&self, ip: IpAddr) -> bool {
        self.try_reserve_account_at(ip, Instant::now())
    }

    fn try_reserve_account_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.new_accounts_per_min == 0 {
            return true;
        }
        let burst = self.burst();
        let key = AddressKey::of(ip);
        let mut shard = self.shard(&key).lock();
        let state = self.state(&mut shard, key, now);
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * burst / 60.0).min(burst);
        state.refilled = now;
        if state.tokens < 1.0 {
            return false;
        }
        state.tokens -= 1.0;
        true
    }

    /// Gives back a token taken by [`try_reserve_account`](Self::try_reserve_account)
    /// for a login that created nothing.
    pub fn refund_account(&self, ip: IpAddr) {
        if self.new_accounts_per_min == 0 {
            return;
        }
        let burst = self.burst();
        let key = AddressKey::of(ip);
        if let Some(state) = self.shard(&key).lock().table.get_mut(&key) {
            state.tokens = (state.tokens + 1.0).min(burst);
        }
    }

    /// Table entries the sweeps have looked at so far (for tests of the
    /// work per new address).
    pub fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// Addresses tracked now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().table.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn connections_are_counted_per_address() {
        let limits = AddressLimits::new(2, 0);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(limits.try_connect(a) && limits.try_connect(a));
        assert!(!limits.try_connect(a));
        assert!(limits.try_connect(b));
        limits.disconnected(a);
        assert!(limits.try_connect(a));
        for _ in 0..3 {
            limits.disconnected(a);
            limits.disconnected(b);
        }
        assert_eq!(limits.tracked(), 0, "idle addresses are forgotten");
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_peers_are_counted_per_64() {
        let limits = AddressLimits::new(2, 0);
        assert!(limits.try_connect(v6("2001:db8:1:2::1")));
        assert!(limits.try_connect(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd")));
        assert!(
            !limits.try_connect(v6("2001:db8:1:2::3")),
            "a third address of one /64 is over the limit of 2"
        );
        assert!(limits.try_connect(v6("2001:db8:1:3::1")), "another /64");
        limits.disconnected(v6("2001:db8:1:2::1"));
        assert!(limits.try_connect(v6("2001:db8:1:2::ffff")));
        let accounts = AddressLimits::new(0, 1);
        assert!(accounts.try_reserve_account(v6("2001:db8::1")));
        assert!(
            !accounts.try_reserve_account(v6("2001:db8::2")),
            "one /64 shares its account-creation budget"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_address() {
        let limits = AddressLimits::new(1, 0);
        assert!(limits.try_connect([192, 0, 2, 7].into()));
        assert!(
            !limits.try_connect(v6("::ffff:192.0.2.7")),
            "::ffff:192.0.2.7 is 192.0.2.7"
        );
        // ...and not the /64 of every IPv4 address (::ffff:0:0/96).
        assert!(limits.try_connect(v6("::ffff:192.0.2.8")));
        limits.disconnected(v6("::ffff:192.0.2.7"));
        assert!(limits.try_connect([192, 0, 2, 7].into()));
    }

    #[test]
    fn keys_display_as_the_counted_block() {
        assert_eq!(
            AddressKey::of(v6("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            AddressKey::of(v6("::ffff:10.1.2.3")).to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn a_new_address_costs_a_bounded_sweep() {
        const ACTIVE: u32 = 5_000;
        const NEW: u32 = 5_000;
        let limits = AddressLimits::new(8, 0);
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..ACTIVE {
            assert!(limits.try_connect(ip(n)));
        }
        for n in ACTIVE..ACTIVE + NEW {
            assert!(limits.try_connect(ip(n)));
            limits.disconnected(ip(n));
        }
        let per_new = limits.examined() as f64 / f64::from(ACTIVE + NEW);
        assert!(
            per_new <= 8.0,
            "each new address examined {per_new:.0} entries on average ({} in all)",
            limits.examined()
        );
        assert_eq!(limits.tracked(), ACTIVE as usize);
    }

    #[test]
    fn idle_addresses_are_swept_out_as_new_ones_come() {
        const WAVE: u32 = 20_000;
        let limits = AddressLimits::new(0, 2);
        let start = Instant::now();
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        // A wave of addresses that each created an account: kept until their
        // buckets refill (30 s for one token of two a minute).
        for n in 0..WAVE {
            assert!(limits.try_reserve_account_at(ip(n), start));
        }
        assert_eq!(limits.tracked(), WAVE as usize);
        // A minute later a new wave: the old one is swept out as it comes.
        let later = start + Duration::from_secs(61);
        for n in WAVE..2 * WAVE {
            assert!(limits.try_reserve_account_at(ip(n), later));
        }
        assert!(
            limits.tracked() <= WAVE as usize + WAVE as usize / 2,
            "the idle wave is being swept: {} tracked",
            limits.tracked()
        );
        let per_new = limits.examined() as f64 / f64::from(2 * WAVE);
        assert!(per_new <= SWEEP_STEP as f64, "{per_new}");
    }

    #[test]
    fn account_tokens_refund_and_run_out() {
        let limits = AddressLimits::new(0, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        assert!(limits.try_reserve_account(a));
        limits.refund_account(a);
        assert!(limits.try_reserve_account(a));
        assert!(limits.try_reserve_account(a));
        assert!(!limits.try_reserve_account(a));
        let unlimited = AddressLimits::new(0, 0);
        assert!((0..100).all(|_| unlimited.try_reserve_account(a)));
    }
}
