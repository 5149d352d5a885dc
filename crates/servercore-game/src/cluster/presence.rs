//! The presence table: which account is online on which node, as this node
//! last heard it (heartbeats carry a node's whole list, online/offline
//! events the changes between them), and the accounts of this node itself.
//! Advisory (stats, the live nodes): the database's leases decide who holds
//! an account.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Another node as last heard.
struct NodeEntry {
    last_seen: Instant,
    accounts: HashSet<String>,
    /// Its TCP address and WebSocket URL for players handed to it.
    addrs: Option<(String, String)>,
}

/// The table. Owned by the link's thread (behind a lock so stats can read
/// it from any thread).
#[derive(Default)]
pub(crate) struct Presence {
    /// This node's accounts.
    pub(crate) local: HashSet<String>,
    nodes: HashMap<String, NodeEntry>,
}

impl Presence {
    fn entry(&mut self, node: &str, now: Instant) -> (&mut NodeEntry, bool) {
        let new = !self.nodes.contains_key(node);
        let entry = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeEntry {
                last_seen: now,
                accounts: HashSet::new(),
                addrs: None,
            });
        entry.last_seen = entry.last_seen.max(now);
        (entry, new)
    }

    /// A heartbeat: `node` is alive and holds exactly `accounts`. Returns
    /// true if the node was not known.
    pub(crate) fn heartbeat(&mut self, node: &str, accounts: Vec<String>, now: Instant) -> bool {
        let (entry, new) = self.entry(node, now);
        entry.accounts = accounts.into_iter().collect();
        new
    }

    /// `account` came online on `node`.
    pub(crate) fn online(&mut self, node: &str, account: String, now: Instant) {
        self.entry(node, now).0.accounts.insert(account);
    }

    /// `account` went offline on `node`.
    pub(crate) fn offline(&mut self, node: &str, account: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.accounts.remove(account);
        }
    }

    /// Forgets `node` (it left); returns how many accounts it held.
    pub(crate) fn remove_node(&mut self, node: &str) -> Option<usize> {
        self.nodes.remove(node).map(|entry| entry.accounts.len())
    }

    /// Forgets the nodes silent for longer than `timeout`; returns them
    /// with the number of accounts each held.
    pub(crate) fn sweep(&mut self, timeout: Duration, now: Instant) -> Vec<(String, usize)> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, entry)| now.saturating_duration_since(entry.last_seen) > timeout)
            .map(|(node, _)| node.clone())
            .collect();
        dead.into_iter()
            .filter_map(|node| {
                let held = self.remove_node(&node)?;
                Some((node, held))
            })
            .collect()
    }

    /// Where players handed to `node` connect, as it said last.
    pub(crate) fn set_addrs(&mut self, node: &str, addrs: (String, String)) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.addrs = Some(addrs);
        }
    }

    /// Where players handed to `node` connect.
    pub(crate) fn addrs(&self, node: &str) -> Option<(String, String)> {
        self.nodes.get(node)?.addrs.clone()
    }

    /// The other live nodes' names, in no order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The other live nodes and their account counts, sorted by name.
    pub(crate) fn summary(&self) -> Vec<(String, usize)> {
        let mut nodes: Vec<(String, usize)> = self
            .nodes
            .iter()
            .map(|(node, entry)| (node.clone(), entry.accounts.len()))
            .collect();
        nodes.sort();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_events_and_sweeps() {
        let start = Instant::now();
        let mut presence = Presence::default();
        assert!(presence.heartbeat("a", vec!["x".into(), "y".into()], start));
        assert!(!presence.heartbeat("a", vec!["x".into()], start));
        presence.online("b", "x".into(), start + Duration::from_secs(2));
        assert_eq!(
            presence.summary(),
            [("a".to_owned(), 1), ("b".to_owned(), 1)]
        );
        presence.offline("a", "x");
        let dead = presence.sweep(Duration::from_secs(1), start + Duration::from_millis(2500));
        assert_eq!(dead, [("a".to_owned(), 0)]);
        assert_eq!(presence.summary(), [("b".to_owned(), 1)]);
    }
}
