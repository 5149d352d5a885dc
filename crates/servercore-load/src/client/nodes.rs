//! A load run over several game-server nodes (`servercore client --addr
//! A,B,C`): the sessions are spread round-robin over the nodes, one client
//! service per node ([`Clients`]), and every chat delivery is sorted into
//! local (sender and receiver on the same node) or cross-node, each with
//! its own count and latency ([`NodeSplit`]).
//!
//! How a receiver knows the sender's node: with more than one node, each
//! chat's text starts with `@<node index> `. The latency of any delivery is
//! `now - client_time_us` (every session of a run shares one clock), so a
//! cross-node delivery measures the whole path: sender → its node → NATS →
//! the receiver's node → receiver.

use std::net::SocketAddr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use servercore::ClientService;

use super::report::LatencySummary;

/// Local against cross-node deliveries of a run over several nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSplit {
    /// The nodes, in `--addr` order.
    pub addrs: Vec<String>,
    /// Sessions that connected to each node, in the same order.
    pub sessions_per_node: Vec<u64>,
    /// Deliveries whose sender was on the receiver's node.
    pub local_deliveries: u64,
    /// Deliveries whose sender was on another node.
    pub cross_deliveries: u64,
    /// Send-to-receive latency of the local deliveries.
    pub local_latency_us: LatencySummary,
    /// Send-to-receive latency of the cross-node deliveries.
    pub cross_latency_us: LatencySummary,
}

/// The latency histograms of the split, kept by the run's stats.
pub(crate) struct SplitLatency {
    pub(crate) local: Histogram<u64>,
    pub(crate) cross: Histogram<u64>,
}

impl Default for SplitLatency {
    fn default() -> Self {
        SplitLatency {
            local: super::stats::new_histogram(),
            cross: super::stats::new_histogram(),
        }
    }
}

/// The chat text prefix naming the sender's node.
pub(crate) fn tag(node: usize) -> String {
    format!("@{node} ")
}

/// The sender's node of a chat text carrying [`tag`].
pub(crate) fn sender_node(msg: &str) -> Option<usize> {
    let rest = msg.strip_prefix('@')?;
    let (node, _) = rest.split_once(' ')?;
    node.parse().ok()
}

/// The sessions of node `node` of `nodes` when `total` are spread evenly.
pub(crate) fn share(total: usize, nodes: usize, node: usize) -> usize {
    total / nodes + usize::from(node < total % nodes)
}

/// One client service per node.
pub(crate) struct Clients {
    services: Vec<ClientService>,
    pub(crate) addrs: Vec<SocketAddr>,
}

impl Clients {
    pub(crate) fn new(services: Vec<ClientService>, addrs: Vec<SocketAddr>) -> Clients {
        Clients { services, addrs }
    }

    pub(crate) fn connected(&self) -> u64 {
        self.services.iter().map(ClientService::connected).sum()
    }

    pub(crate) fn connected_per_node(&self) -> Vec<u64> {
        self.services.iter().map(ClientService::connected).collect()
    }

    pub(crate) fn failed(&self) -> u64 {
        self.services.iter().map(ClientService::failed).sum()
    }

    /// Packets received by QUIC datagram over all sessions (0 over TCP):
    /// the server sends only `S_MOVE`s that way.
    pub(crate) fn datagram_packets(&self) -> u64 {
        self.services
            .iter()
            .filter_map(ClientService::quic_metrics)
            .map(|quic| quic.datagram_packets_received)
            .sum()
    }

    pub(crate) fn connecting_done(&self) -> bool {
        self.services.iter().all(ClientService::connecting_done)
    }

    pub(crate) fn stop(&self) {
        for service in &self.services {
            service.stop();
        }
    }

    pub(crate) fn join(&self) {
        for service in &self.services {
            service.join();
        }
    }

    pub(crate) fn backend(&self) -> servercore::Backend {
        self.services[0].backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_shares() {
        assert_eq!(sender_node(&format!("{}hello world", tag(12))), Some(12));
        assert_eq!(sender_node("hello"), None);
        assert_eq!(sender_node("@x hello"), None);
        let shares: Vec<usize> = (0..3).map(|n| share(10, 3, n)).collect();
        assert_eq!(shares, [4, 3, 3]);
    }
}
