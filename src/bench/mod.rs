//! The benchmarks behind `hexec bench` (`overhead` is also run by the criterion bench in
//! `benches/overhead.rs`). A row whose input is missing is a [`Skipped`], printed, never
//! silently left out.

pub mod gpu;
pub mod kernels;
pub mod memory;
pub mod overhead;
pub mod schedule;
pub mod soak;

use std::fmt;

/// A row of a benchmark table that was not measured, and why (its input is missing). Tables
/// print these as `skipped: ROW: WHY` lines so that a missing input is never a silently
/// shorter table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub row: String,
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}: {}", self.row, self.why)
    }
}
