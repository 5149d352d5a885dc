//! Zones: one world across nodes. The map's columns of cells are split into
//! vertical strips, one per live node of `--world-nodes`, in that order;
//! each node owns (simulates) the players standing in its strip.
//!
//! This module owns the pure zone map ([`ZoneMap`]): given the nodes of
//! the world in order, which of them are alive, and the number of columns,
//! every node computes the same strips (nothing else goes into the
//! split), so two nodes that see the same live nodes agree on every
//! column's owner. A dead node's strip is re-split over the live ones (all
//! strips move: the split is always the even one over the nodes alive
//! now), and when it comes back the strips are what they were before.
//!
//! What crosses a border each tick is in `world::border`; the map only
//! answers which node owns a column, which nodes see a column (its owner
//! and the owners of the columns next to it), and whether a point lies far
//! enough inside another node's strip for its player to be handed over.

use std::ops::Range;

use crate::cluster::is_node_name;

/// The world's zone map at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneMap {
    /// The live nodes in `--world-nodes` order, each with its strip of
    /// columns (possibly empty when there are more nodes than columns).
    strips: Vec<(String, Range<u32>)>,
    columns: u32,
}

/// Checks a `--world-nodes` list: 1 to 64 distinct valid node names that
/// include `me`.
pub fn check_world_nodes(nodes: &[String], me: &str) -> Result<(), String> {
    if nodes.is_empty() || nodes.len() > 64 {
        return Err(format!(
            "--world-nodes must name 1 to 64 nodes, not {}",
            nodes.len()
        ));
    }
    for (i, node) in nodes.iter().enumerate() {
        if !is_node_name(node) {
            return Err(format!(
                "--world-nodes: {node:?} is not a node name (1 to 64 letters, digits, '-' or '_')"
            ));
        }
        if nodes[..i].contains(node) {
            return Err(format!("--world-nodes names {node:?} twice"));
        }
    }
    if !nodes.iter().any(|node| node == me) {
        return Err(format!(
            "this node ({me}) is not one of --world-nodes {}",
            nodes.join(",")
        ));
    }
    Ok(())
}

impl ZoneMap {
    /// The map of `columns` columns over the nodes of `world_nodes` for
    /// which `is_live` holds, in that order: live node `i` of `k` owns
    /// columns `[i·columns/k, (i+1)·columns/k)`. No live node: no owner
    /// anywhere.
    pub fn split(world_nodes: &[String], is_live: impl Fn(&str) -> bool, columns: u32) -> ZoneMap {
        let live: Vec<&String> = world_nodes.iter().filter(|node| is_live(node)).collect();
        let k = live.len() as u64;
        let strips = live
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let i = i as u64;
                let start = (i * u64::from(columns) / k) as u32;
                let end = ((i + 1) * u64::from(columns) / k) as u32;
                ((*node).clone(), start..end)
            })
            .collect();
        ZoneMap { strips, columns }
    }

    /// How many columns the map has.
    pub fn columns(&self) -> u32 {
        self.columns
    }

    /// The live nodes and their strips, in `--world-nodes` order.
    pub fn strips(&self) -> &[(String, Range<u32>)] {
        &self.strips
    }

    /// The node owning `column` (`None` past the map or with no live node).
    pub fn owner(&self, column: u32) -> Option<&str> {
        self.strips
            .iter()
            .find(|(_, strip)| strip.contains(&column))
            .map(|(node, _)| node.as_str())
    }

    /// `node`'s strip, if it is live.
    pub fn strip(&self, node: &str) -> Option<Range<u32>> {
        self.strips
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, strip)| strip.clone())
    }

    /// Whether `node` owns `column`.
    pub fn owns(&self, node: &str, column: u32) -> bool {
        self.strip(node)
            .is_some_and(|strip| strip.contains(&column))
    }

    /// The nodes other than `except` whose players see a cell of `column`:
    /// the owners of `column` and of the columns next to it (at most
    /// three), in column order.
    pub fn seen_by(&self, column: u32, except: &str) -> Vec<&str> {
        let mut nodes: Vec<&str> = Vec::with_capacity(3);
        for c in column.saturating_sub(1)..=column.saturating_add(1) {
            if let Some(owner) = self.owner(c) {
                if owner != except && !nodes.contains(&owner) {
                    nodes.push(owner);
                }
            }
        }
        nodes
    }

    /// The other nodes that see a cell of `node`'s strip or of a column
    /// next to it: the ones `node` sends border cells to.
    pub fn neighbours(&self, node: &str) -> Vec<&str> {
        let Some(strip) = self.strip(node) else {
            return Vec::new();
        };
        let mut nodes = Vec::new();
        for c in [strip.start.checked_sub(1), Some(strip.end)]
            .into_iter()
            .flatten()
        {
            if let Some(owner) = self.owner(c) {
                if owner != node && !nodes.contains(&owner) {
                    nodes.push(owner);
                }
            }
        }
        nodes
    }

    /// Whether `column` is a border column of `node`: in its strip, and
    /// within one column of another node's.
    pub fn is_border(&self, node: &str, column: u32) -> bool {
        self.owns(node, column) && !self.seen_by(column, node).is_empty()
    }

    /// Where a player of `node` standing at `x` (cells of side `cell`) must
    /// be handed over: the owner of its column, when that is another node
    /// and the point lies more than half a cell past `node`'s strip (so a
    /// player walking along a border is not handed back and forth). A
    /// node with no strip (not live, or no column for it) hands every
    /// player to the column's owner.
    pub fn handover_target(&self, node: &str, x: f32, cell: f32) -> Option<&str> {
        if !(x.is_finite() && cell > 0.0) || self.columns == 0 {
            return None;
        }
        let column = ((x.max(0.0) / cell) as u32).min(self.columns - 1);
        let owner = self.owner(column)?;
        if owner == node {
            return None;
        }
        let Some(strip) = self.strip(node).filter(|strip| !strip.is_empty()) else {
            return Some(owner);
        };
        let west = strip.start as f32 * cell;
        let east = strip.end as f32 * cell;
        let past = if x < west { west - x } else { x - east };
        (past > cell / 2.0).then_some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn strips(map: &ZoneMap) -> Vec<(&str, Range<u32>)> {
        map.strips()
            .iter()
            .map(|(node, strip)| (node.as_str(), strip.clone()))
            .collect()
    }

    #[test]
    fn columns_are_split_in_order_over_the_live_nodes() {
        let all = nodes(&["a", "b", "c"]);
        let map = ZoneMap::split(&all, |_| true, 20);
        assert_eq!(strips(&map), [("a", 0..6), ("b", 6..13), ("c", 13..20)]);
        assert_eq!(map.owner(0), Some("a"));
        assert_eq!(map.owner(5), Some("a"));
        assert_eq!(map.owner(6), Some("b"));
        assert_eq!(map.owner(19), Some("c"));
        assert_eq!(map.owner(20), None);
        // Every column has exactly one owner.
        for column in 0..20 {
            let owners = map
                .strips()
                .iter()
                .filter(|(_, strip)| strip.contains(&column))
                .count();
            assert_eq!(owners, 1, "column {column}");
        }
    }

    #[test]
    fn a_dead_node_is_re_split_and_restored_when_it_returns() {
        let all = nodes(&["a", "b", "c"]);
        let before = ZoneMap::split(&all, |_| true, 20);
        let without_b = ZoneMap::split(&all, |node| node != "b", 20);
        assert_eq!(strips(&without_b), [("a", 0..10), ("c", 10..20)]);
        assert_eq!(without_b.strip("b"), None);
        let alone = ZoneMap::split(&all, |node| node == "c", 20);
        assert_eq!(strips(&alone), [("c", 0..20)]);
        let back = ZoneMap::split(&all, |_| true, 20);
        assert_eq!(back, before);
        let none = ZoneMap::split(&all, |_| false, 20);
        assert_eq!(none.owner(3), None);
        assert!(none.neighbours("a").is_empty());
    }

    #[test]
    fn more_nodes_than_columns_leave_some_without_a_strip() {
        let all = nodes(&["a", "b", "c"]);
        let map = ZoneMap::split(&all, |_| true, 2);
        assert_eq!(strips(&map), [("a", 0..0), ("b", 0..1), ("c", 1..2)]);
        assert_eq!(map.owner(0), Some("b"));
        // A node with no strip hands everyone to the owner.
        assert_eq!(map.handover_target("a", 150.0, 100.0), Some("c"));
    }

    #[test]
    fn borders_neighbours_and_who_sees_a_column() {
        let all = nodes(&["a", "b", "c"]);
        let map = ZoneMap::split(&all, |_| true, 20);
        assert_eq!(map.neighbours("a"), ["b"]);
        assert_eq!(map.neighbours("b"), ["a", "c"]);
        assert_eq!(map.neighbours("c"), ["b"]);
        let border: Vec<u32> = (0..20).filter(|&c| map.is_border("b", c)).collect();
        assert_eq!(border, [6, 12]);
        assert!(map.is_border("a", 5));
        assert!(!map.is_border("a", 4));
        assert!(!map.is_border("a", 6), "b's column");
        assert_eq!(map.seen_by(5, "a"), ["b"]);
        assert_eq!(map.seen_by(6, "a"), ["b"]);
        assert_eq!(map.seen_by(7, "a"), ["b"]);
        assert!(map.seen_by(8, "b").is_empty());
        assert!(map.seen_by(4, "a").is_empty());
        assert_eq!(map.seen_by(12, "a"), ["b", "c"]);
    }

    #[test]
    fn a_player_is_handed_over_half_a_cell_past_the_border() {
        let all = nodes(&["a", "b"]);
        let map = ZoneMap::split(&all, |_| true, 20); // a: 0..10, b: 10..20
        let cell = 100.0;
        assert_eq!(map.handover_target("a", 999.0, cell), None);
        assert_eq!(map.handover_target("a", 1000.0, cell), None);
        assert_eq!(map.handover_target("a", 1050.0, cell), None);
        assert_eq!(map.handover_target("a", 1050.5, cell), Some("b"));
        assert_eq!(map.handover_target("a", 1999.0, cell), Some("b"));
        assert_eq!(map.handover_target("b", 1000.0, cell), None);
        assert_eq!(map.handover_target("b", 950.0, cell), None);
        assert_eq!(map.handover_target("b", 949.0, cell), Some("a"));
        assert_eq!(map.handover_target("b", f32::NAN, cell), None);
    }

    #[test]
    fn world_node_lists_are_checked() {
        assert!(check_world_nodes(&nodes(&["a", "b"]), "a").is_ok());
        let err = check_world_nodes(&nodes(&["a", "b"]), "c").unwrap_err();
        assert_eq!(err, "this node (c) is not one of --world-nodes a,b");
        let err = check_world_nodes(&nodes(&["a", "a"]), "a").unwrap_err();
        assert_eq!(err, "--world-nodes names \"a\" twice");
        assert!(check_world_nodes(&nodes(&["a", "b c"]), "a").is_err());
        assert!(check_world_nodes(&[], "a").is_err());
    }
}
