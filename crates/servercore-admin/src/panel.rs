//! Panels a server adds to its status page: the page draws each kind the
//! same way whatever it shows, so the server (not this crate) decides what
//! a map's points or a table's rows mean. Two kinds:
//! - [`MapPanel`]: points on a square, with an optional grid and labelled
//!   vertical strips (e.g. a world's players and the nodes' zones);
//! - [`TablePanel`]: a title, column names and rows of text.
//!
//! They reach the page as `/status`'s `panels` array, in the order added:
//! `{"kind": "map", "title", "size", "grid", "strips": [{"from", "to",
//! "label"}], "points": [[x, y], ...], "note"}` and `{"kind": "table",
//! "title", "columns": [...], "rows": [[...], ...]}`.

use serde::Serialize;

/// One panel of the status page.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Panel {
    /// Points on a square map.
    Map(MapPanel),
    /// Rows of text under column names.
    Table(TablePanel),
}

/// Points on the square `[0, size)²`, drawn to scale.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MapPanel {
    /// The panel's heading.
    pub title: String,
    /// The side of the square, in the points' units.
    pub size: f32,
    /// Grid lines every `grid` units (None: no grid).
    pub grid: Option<f32>,
    /// Vertical strips `[from, to)` with a label each, told apart by
    /// colour (e.g. which node owns which columns).
    pub strips: Vec<MapStrip>,
    /// The points, `[x, y]`.
    pub points: Vec<[f32; 2]>,
    /// A line under the map (e.g. what the points are).
    pub note: String,
}

/// A labelled vertical strip of a [`MapPanel`].
#[derive(Debug, Clone, Serialize)]
pub struct MapStrip {
    /// Where it starts, in the map's units.
    pub from: f32,
    /// Where it ends (exclusive).
    pub to: f32,
    /// What it is.
    pub label: String,
}

/// A small table of text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TablePanel {
    /// The panel's heading.
    pub title: String,
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, one string per column.
    pub rows: Vec<Vec<String>>,
}
