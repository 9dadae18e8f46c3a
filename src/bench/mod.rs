//! The benchmarks behind `hexec bench` (`overhead` is also run by the criterion bench in
//! `benches/overhead.rs`). A row whose input is missing is a [`Skipped`], printed, never
//! silently left out.

pub mod gpu;
pub mod kernels;
pub mod linalg;
pub mod memory;
pub mod overhead;
pub mod schedule;
pub mod soak;
pub mod stream;

use std::fmt;

/// Why a benchmark that needs a GPU measured nothing, and how to get one.
pub const NO_GPU: &str =
    "no GPU found: nothing to measure (without a hardware GPU, install mesa-vulkan-drivers and pass --software-gpus to use lavapipe)";

/// The process's resident set size, from `/proc/self/statm` (Linux; the page size taken as
/// 4 KiB).
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(v: Vec<f64>) -> f64 {
    quantile(v, 0.5)
}

/// The value at quantile `q` (0 to 1, nearest rank) of `v`, which must not be empty.
pub(crate) fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

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

/// The two header lines of a Markdown table with a column per policy: the `lead` columns,
/// then one right-aligned column per title in `per_policy`, then the `tail` columns; each
/// lead or tail column a title and its alignment line (`---` or `---:`).
fn policy_table_header(lead: &[(&str, &str)], per_policy: &[String], tail: &[(&str, &str)]) -> String {
    let mut titles = String::from("|");
    let mut aligns = String::from("|");
    let policy_cols = per_policy.iter().map(|t| (t.as_str(), "---:"));
    for (title, align) in lead.iter().copied().chain(policy_cols).chain(tail.iter().copied()) {
        titles.push_str(&format!(" {title} |"));
        aligns.push_str(align);
        aligns.push('|');
    }
    format!("{titles}\n{aligns}\n")
}

#[cfg(test)]
mod tests {
    use super::overhead::{self, OverheadRow, SimRow};
    use super::schedule::{self, QualityRow};

    #[test]
    fn policy_tables_have_a_column_per_policy() {
        let policies = || vec![("eager".to_string(), 1500.0), ("ws".to_string(), 2500.0)];
        let row = OverheadRow {
            shape: "chain".into(),
            tasks: 3,
            edges: 2,
            build_ns_per_task: 500.0,
            hexec_ns_per_task: policies(),
            rayon_ns_per_task: 1000.0,
            rayon_method: "scope".into(),
            rss_kib_per_task: None,
        };
        assert_eq!(
            overhead::markdown(&[row]),
            "| shape | tasks | edges | hexec eager µs/task | hexec ws µs/task | rayon µs/task | rayon as | build µs/task | peak RSS KiB/task |\n\
             |---|---:|---:|---:|---:|---:|---|---:|---:|\n\
             | chain | 3 | 2 | 1.500 | 2.500 | 1.000 | scope | 0.500 | - |\n"
        );
        let row = SimRow {
            shape: "chain".into(),
            tasks: 3,
            machine: "cpus:2".into(),
            sim_ns_per_task: policies(),
            rss_kib_per_task: Some(1.0),
        };
        assert_eq!(
            overhead::sim_markdown(&[row]),
            "| sim shape | tasks | machine | sim eager µs/task | sim ws µs/task | peak RSS KiB/task |\n\
             |---|---:|---|---:|---:|---:|\n\
             | chain | 3 | `cpus:2` | 1.500 | 2.500 | 1.00 |\n"
        );
        let row = QualityRow {
            workload: "STG".into(),
            machine: "cpus:4".into(),
            graphs: 1,
            tasks: 3,
            ratio: vec![("eager".to_string(), 1.25), ("ws".to_string(), 1.5)],
            over_best: vec![("eager".to_string(), 1.0), ("ws".to_string(), 1.2)],
            best_over_bound: 1.25,
        };
        assert_eq!(
            schedule::markdown(&[row]),
            "| workload | machine | graphs | tasks | eager | ws | best / bound |\n\
             |---|---|---:|---:|---:|---:|---:|\n\
             | STG | cpus:4 | 1 | 3 | 1.000 | 1.200 | 1.250 |\n"
        );
        assert_eq!(
            schedule::markdown(&[]),
            "| workload | machine | graphs | tasks | best / bound |\n|---|---|---:|---:|---:|\n"
        );
    }
}
