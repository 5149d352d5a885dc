//! Results and how they are shown: the per-scenario result records (also
//! the `--json` output, [`results`]), the text tables with ratios against
//! the tokio baseline ([`table`], with number formats in [`format`] and
//! each scenario's tables in [`sections`]), and the targets printed beside
//! them ([`targets`]: reported, never asserted).

mod format;
mod results;
mod sections;
mod table;
mod targets;
#[cfg(test)]
mod tests;

pub use format::*;
pub use results::*;
pub use sections::*;
pub use table::*;
pub use targets::*;
