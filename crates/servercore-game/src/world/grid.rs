//! The map's geometry: the interest grid of cells, the regions (blocks of
//! cells) laid over it, and the movement rules that are pure arithmetic
//! (clamping to the map, cutting a jump to the speed limit).
//!
//! This module owns no state besides the fixed numbers of one map; the
//! regions and players ask it which cell a point is in, which region owns a
//! cell, and which regions must hear about a change in a cell.

use std::fmt;

/// A cell of the interest grid: `(column, row)`, each from 0 to
/// [`Grid::cells_per_side`] − 1.
pub type Cell = (u32, u32);

/// Most cells along one side (keeps cell indices and region counts small).
pub const MAX_CELLS_PER_SIDE: u32 = 4096;

/// Why a map cannot be built from the numbers given.
#[derive(Debug, Clone, PartialEq)]
pub struct GridError(String);

impl fmt::Display for GridError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GridError {}

impl GridError {
    pub(crate) fn new(message: String) -> GridError {
        GridError(message)
    }
}

/// One map: the square `[0, size)²` cut into `cell × cell` cells, the cells
/// grouped into square regions of `region_cells × region_cells` cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    size: f32,
    cell: f32,
    cells: u32,
    region_cells: u32,
    regions: u32,
    /// The largest coordinate inside the map (the float just below `size`).
    max_coord: f32,
}

impl Grid {
    /// The map of side `size` with cells of side `cell` and regions of
    /// `region_cells` cells per side. A cell larger than the map is the
    /// whole map; the last row and column of cells may be cut short.
    pub fn new(size: f32, cell: f32, region_cells: u32) -> Result<Grid, GridError> {
        if !(size.is_finite() && size >= 1.0) {
            return Err(GridError(format!(
                "world size {size} must be a finite number of at least 1"
            )));
        }
        if !(cell.is_finite() && cell > 0.0) {
            return Err(GridError(format!(
                "cell size {cell} must be a finite number above 0"
            )));
        }
        let cells = (size / cell).ceil().max(1.0);
        if cells > MAX_CELLS_PER_SIDE as f32 {
            return Err(GridError(format!(
                "world size {size} / cell size {cell} gives {cells} cells per side, \
                 more than {MAX_CELLS_PER_SIDE}"
            )));
        }
        if region_cells == 0 {
            return Err(GridError("a region must hold at least one cell".into()));
        }
        let cells = cells as u32;
        let region_cells = region_cells.min(cells);
        Ok(Grid {
            size,
            cell,
            cells,
            region_cells,
            regions: cells.div_ceil(region_cells),
            max_coord: f32::from_bits(size.to_bits() - 1),
        })
    }

    /// The map's side.
    pub fn size(&self) -> f32 {
        self.size
    }

    /// A cell's side.
    pub fn cell_size(&self) -> f32 {
        self.cell
    }

    /// Cells along one side.
    pub fn cells_per_side(&self) -> u32 {
        self.cells
    }

    /// Regions along one side.
    pub fn regions_per_side(&self) -> u32 {
        self.regions
    }

    /// How many regions there are.
    pub fn region_count(&self) -> usize {
        (self.regions * self.regions) as usize
    }

    /// `v` clamped into `[0, size)`; not-a-number becomes 0.
    pub fn clamp(&self, v: f32) -> f32 {
        if v.is_nan() {
            return 0.0;
        }
        v.clamp(0.0, self.max_coord)
    }

    /// The cell holding the point `(x, y)` (clamped into the map first).
    pub fn cell_of(&self, x: f32, y: f32) -> Cell {
        let index = |v: f32| ((self.clamp(v) / self.cell) as u32).min(self.cells - 1);
        (index(x), index(y))
    }

    /// The region owning `cell`: regions are numbered row by row.
    pub fn region_of(&self, cell: Cell) -> usize {
        let column = cell.0 / self.region_cells;
        let row = cell.1 / self.region_cells;
        (row * self.regions + column) as usize
    }

    /// Whether a player in `a` sees a player in `b`: their cells are at
    /// most one apart in each direction (the 3×3 block; symmetric).
    pub fn sees(a: Cell, b: Cell) -> bool {
        a.0.abs_diff(b.0) <= 1 && a.1.abs_diff(b.1) <= 1
    }

    /// The cells a player in `cell` sees (up to nine; fewer at the edges).
    pub fn around(&self, cell: Cell) -> impl Iterator<Item = Cell> {
        let last = self.cells - 1;
        let columns = cell.0.saturating_sub(1)..=(cell.0 + 1).min(last);
        let rows = cell.1.saturating_sub(1)..=(cell.1 + 1).min(last);
        rows.flat_map(move |row| columns.clone().map(move |column| (column, row)))
    }

    /// The regions owning a cell that sees `cell` (its own region first):
    /// the regions that must hear of a player appearing in, leaving, or
    /// moving out of `cell`. Appended to `out` unless already there.
    pub fn regions_seeing(&self, cell: Cell, out: &mut Vec<usize>) {
        for seen in self.around(cell) {
            let region = self.region_of(seen);
            if !out.contains(&region) {
                out.push(region);
            }
        }
    }

    /// Whether region `region` owns a cell that sees `cell`.
    pub fn region_sees(&self, region: usize, cell: Cell) -> bool {
        self.around(cell).any(|seen| self.region_of(seen) == region)
    }

    /// A region's side, in cells (the regions of the last row and column
    /// may own fewer).
    pub fn region_cells(&self) -> u32 {
        self.region_cells
    }

    /// Slots for one region's cells: `region_cells²`, indexed by
    /// [`Grid::local_index`].
    pub fn cells_per_region(&self) -> usize {
        (self.region_cells * self.region_cells) as usize
    }

    /// `cell`'s place among its region's cells, row by row.
    pub fn local_index(&self, cell: Cell) -> usize {
        let column = cell.0 % self.region_cells;
        let row = cell.1 % self.region_cells;
        (row * self.region_cells + column) as usize
    }

    /// The cell at place `local` of region `region` (see
    /// [`Grid::local_index`]); `None` past the map's edge.
    pub fn cell_at(&self, region: usize, local: usize) -> Option<Cell> {
        let region = region as u32;
        let local = local as u32;
        let column = (region % self.regions) * self.region_cells + local % self.region_cells;
        let row = (region / self.regions) * self.region_cells + local / self.region_cells;
        (column < self.cells && row < self.cells).then_some((column, row))
    }

    /// The regions around `region` (itself included), as `(column, row)`
    /// offsets from -1 to 1 paired with the region's index: every region
    /// that can own a cell seen from one of `region`'s cells.
    pub fn regions_around(&self, region: usize) -> impl Iterator<Item = ((i32, i32), usize)> + '_ {
        let region = region as u32;
        let (column, row) = (region % self.regions, region / self.regions);
        (-1i32..=1).flat_map(move |dy| {
            (-1i32..=1).filter_map(move |dx| {
                let c = column.checked_add_signed(dx)?;
                let r = row.checked_add_signed(dy)?;
                (c < self.regions && r < self.regions)
                    .then_some(((dx, dy), (r * self.regions + c) as usize))
            })
        })
    }

    /// A cell's index in the whole map, row by row.
    pub fn cell_index(&self, cell: Cell) -> usize {
        (cell.1 * self.cells + cell.0) as usize
    }
}

/// Cuts the jump from `from` to `to` to at most `max_len` along the same
/// direction. Returns the accepted point and whether it was disconnected.
pub fn limit_jump(from: (f32, f32), to: (f32, f32), max_len: f64) -> ((f32, f32), bool) {
    // f64: the cut point of an exact jump stays exact (300, 400 cut to 50
    // gives 30, 40, not 30.000002).
    let (dx, dy) = (
        f64::from(to.0) - f64::from(from.0),
        f64::from(to.1) - f64::from(from.1),
    );
    let len = dx.hypot(dy);
    if len <= max_len {
        return (to, false);
    }
    let k = max_len / len;
    (
        (
            (f64::from(from.0) + dx * k) as f32,
            (f64::from(from.1) + dy * k) as f32,
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_regions_and_clamping() {
        let grid = Grid::new(400.0, 100.0, 2).unwrap();
        assert_eq!(grid.cells_per_side(), 4);
        assert_eq!(grid.regions_per_side(), 2);
        assert_eq!(grid.region_count(), 4);
        assert_eq!(grid.cell_of(0.0, 0.0), (0, 0));
        assert_eq!(grid.cell_of(99.99, 100.0), (0, 1));
        assert_eq!(grid.cell_of(400.0, -5.0), (3, 0));
        assert_eq!(grid.clamp(400.0), 399.99997);
        assert_eq!(grid.clamp(-1.0), 0.0);
        assert_eq!(grid.clamp(f32::NAN), 0.0);
        assert_eq!(grid.clamp(f32::INFINITY), 399.99997);
        assert_eq!(grid.region_of((1, 1)), 0);
        assert_eq!(grid.region_of((2, 1)), 1);
        assert_eq!(grid.region_of((1, 2)), 2);
        assert_eq!(grid.region_of((3, 3)), 3);
        assert!(Grid::sees((1, 1), (2, 2)));
        assert!(!Grid::sees((1, 1), (3, 2)));
        assert_eq!(grid.around((0, 0)).count(), 4);
        assert_eq!(grid.around((1, 1)).count(), 9);
        let mut regions = Vec::new();
        grid.regions_seeing((1, 1), &mut regions);
        assert_eq!(regions, [0, 1, 2, 3]);
        regions.clear();
        grid.regions_seeing((0, 0), &mut regions);
        assert_eq!(regions, [0]);
        assert!(grid.region_sees(1, (1, 0)));
        assert!(!grid.region_sees(1, (0, 0)));
        // A map that is not a whole number of cells: the last cell is short.
        let odd = Grid::new(250.0, 100.0, 5).unwrap();
        assert_eq!(odd.cells_per_side(), 3);
        assert_eq!(odd.region_count(), 1);
        assert!(Grid::new(0.0, 1.0, 1).is_err());
        assert!(Grid::new(100.0, 0.0, 1).is_err());
        assert!(Grid::new(1e9, 1.0, 1).is_err());
    }

    #[test]
    fn local_places_and_neighbouring_regions() {
        // 5 cells a side in regions of 2: regions 3 a side, the last ones short.
        let grid = Grid::new(500.0, 100.0, 2).unwrap();
        assert_eq!(grid.regions_per_side(), 3);
        assert_eq!(grid.cells_per_region(), 4);
        for row in 0..5 {
            for column in 0..5 {
                let cell = (column, row);
                let region = grid.region_of(cell);
                assert_eq!(grid.cell_at(region, grid.local_index(cell)), Some(cell));
            }
        }
        // Region 8 (bottom right) owns only cell (4, 4).
        assert_eq!(grid.cell_at(8, 0), Some((4, 4)));
        assert_eq!(grid.cell_at(8, 1), None);
        assert_eq!(grid.cell_at(8, 2), None);
        let around: Vec<_> = grid.regions_around(0).collect();
        assert_eq!(around, [((0, 0), 0), ((1, 0), 1), ((0, 1), 3), ((1, 1), 4)]);
        assert_eq!(grid.regions_around(4).count(), 9);
        assert_eq!(grid.cell_index((3, 2)), 13);
    }

    #[test]
    fn jumps_are_cut_along_their_direction() {
        assert_eq!(
            limit_jump((0.0, 0.0), (30.0, 40.0), 50.0),
            ((30.0, 40.0), false)
        );
        assert_eq!(
            limit_jump((100.0, 100.0), (400.0, 500.0), 50.0),
            ((130.0, 140.0), true)
        );
        assert_eq!(limit_jump((10.0, 0.0), (0.0, 0.0), 2.5), ((7.5, 0.0), true));
    }
}
