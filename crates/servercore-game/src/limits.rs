//! Per-address limits: how many connections one IP address may hold at once
//! and how many accounts it may create per minute.
//!
//! This module owns [`AddressLimits`], shared by every session of a game
//! server. Connections are counted from `on_connected` to
//! `on_disconnected` (a refused one is closed at once with
//! [`DisconnectReason::App`](servercore::DisconnectReason)`("too_many_connections_from_address")`);
//! account creation is a token bucket per address (`burst` = the per-minute
//! limit, refilled evenly over the minute). A login reserves a token before
//! it goes to the database and gives it back if the account already
//! existed; without a token the login may only find an existing account, so
//! a client past the limit can still log in to the accounts it has.
//!
//! Memory is bounded: an address is forgotten once it holds no connection
//! and its bucket is full again (swept whenever the table grows past
//! [`SWEEP_AT`] entries).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Table size at which idle addresses are swept out.
pub const SWEEP_AT: usize = 4096;

#[derive(Debug)]
struct AddressState {
    connections: usize,
    /// Account-creation tokens left.
    tokens: f64,
    refilled: Instant,
}

/// The per-address limits of one game server (`0` means unlimited).
#[derive(Debug)]
pub struct AddressLimits {
    max_connections: usize,
    new_accounts_per_min: u32,
    table: Mutex<HashMap<IpAddr, AddressState>>,
}

impl AddressLimits {
    /// Limits of `max_connections` at once and `new_accounts_per_min`
    /// account creations per minute per address (0: unlimited).
    pub fn new(max_connections: usize, new_accounts_per_min: u32) -> AddressLimits {
        AddressLimits {
            max_connections,
            new_accounts_per_min,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn state(
        table: &mut HashMap<IpAddr, AddressState>,
        ip: IpAddr,
        burst: f64,
        now: Instant,
    ) -> &mut AddressState {
        if table.len() >= SWEEP_AT && !table.contains_key(&ip) {
            table.retain(|_, state| {
                let refill = now.saturating_duration_since(state.refilled).as_secs_f64();
                state.connections > 0 || state.tokens + refill * burst / 60.0 < burst
            });
        }
        table.entry(ip).or_insert(AddressState {
            connections: 0,
            tokens: burst,
            refilled: now,
        })
    }

    /// Counts one more connection from `ip`, or returns false (counting
    /// nothing) if the address already holds the maximum.
    pub fn try_connect(&self, ip: IpAddr) -> bool {
        if self.max_connections == 0 {
            return true;
        }
        let burst = f64::from(self.new_accounts_per_min);
        let mut table = self.table.lock();
        let state = Self::state(&mut table, ip, burst, Instant::now());
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
        let mut table = self.table.lock();
        if let Some(state) = table.get_mut(&ip) {
            state.connections = state.connections.saturating_sub(1);
            if state.connections == 0 && state.tokens >= f64::from(self.new_accounts_per_min) {
                table.remove(&ip);
            }
        }
    }

    /// Takes one account-creation token of `ip`; false if none is left.
    pub fn try_reserve_account(&self, ip: IpAddr) -> bool {
        if self.new_accounts_per_min == 0 {
            return true;
        }
        let burst = f64::from(self.new_accounts_per_min);
        let now = Instant::now();
        let mut table = self.table.lock();
        let state = Self::state(&mut table, ip, burst, now);
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
        let burst = f64::from(self.new_accounts_per_min);
        if let Some(state) = self.table.lock().get_mut(&ip) {
            state.tokens = (state.tokens + 1.0).min(burst);
        }
    }

    /// Addresses tracked now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.table.lock().len()
    }
}

#[cfg(test)]
mod tests {
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
