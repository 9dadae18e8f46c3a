//! Schedule quality: makespan divided by the lower bound, per policy, in the simulator, on
//! tiled Cholesky over StarPU's measured machines, the STG random graphs on 4 and 16 cores,
//! and the WfCommons workflows on 16 and 64 cores.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::graph::formats::{self, cholesky, BuildOptions, GraphSpec};
use crate::sched::PolicyKind;
use crate::sim::{simulate, SimMachine, SimOptions};

/// One row: a workload on a machine, the mean makespan/bound per policy.
#[derive(Clone, Debug, Serialize)]
pub struct QualityRow {
    pub workload: String,
    pub machine: String,
    /// Graphs averaged in this row.
    pub graphs: usize,
    pub tasks: usize,
    /// `(policy, mean makespan / lower bound)`.
    pub ratio: Vec<(String, f64)>,
}

/// Where the shared workloads are.
#[derive(Clone, Debug)]
pub struct Sources {
    pub workloads: PathBuf,
}

impl Sources {
    fn starpu(&self) -> PathBuf {
        self.workloads.join("heterogeneous/starpu_perfmodels")
    }
}

fn files(dir: &Path, ext: &str, limit: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.truncate(limit);
    v
}

/// Measures one row: every policy on every graph, ratios averaged over graphs.
pub fn row(
    workload: &str,
    sm: &SimMachine,
    specs: &[GraphSpec],
    policies: &[PolicyKind],
) -> Result<QualityRow, String> {
    let graphs: Vec<_> = specs
        .iter()
        .map(|s| {
            s.build_virtual(&|k| sm.kernel(k), &BuildOptions::default())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let tasks = graphs.iter().map(|g| g.len()).sum();
    let mut ratio = Vec::new();
    for &p in policies {
        let mut sum = 0.0;
        for g in &graphs {
            sum += simulate(g, sm, p, &SimOptions::default())
                .map_err(|e| e.to_string())?
                .makespan_over_bound;
        }
        ratio.push((p.name().to_string(), sum / graphs.len().max(1) as f64));
    }
    Ok(QualityRow {
        workload: workload.into(),
        machine: sm.name.clone(),
        graphs: graphs.len(),
        tasks,
        ratio,
    })
}

/// The whole table (`quick`: smaller graphs and fewer of them).
pub fn measure(src: &Sources, quick: bool) -> Result<Vec<QualityRow>, String> {
    let policies = PolicyKind::ALL;
    let mut rows = Vec::new();
    let starpu = src.starpu();
    let tiles: &[usize] = if quick { &[10] } else { &[10, 20, 40] };
    for machine in ["sirocco", "mirage", "attila"] {
        let Ok(sm) = SimMachine::parse(&format!("starpu:{}:{machine}", starpu.display())) else {
            continue;
        };
        for &n in tiles {
            rows.push(row(
                &format!("cholesky {n}x{n} (b=960)"),
                &sm,
                &[cholesky::generate(n, 960)],
                &policies,
            )?);
        }
    }
    let load = |p: &Path| formats::load(p, None).map_err(|e| e.to_string());
    let stg100: Vec<GraphSpec> = files(&src.workloads.join("stg/rand100"), ".stg", if quick { 5 } else { 90 })
        .iter()
        .map(|p| load(p))
        .collect::<Result<_, _>>()?;
    let stg1000: Vec<GraphSpec> = files(&src.workloads.join("stg/rand1000"), ".stg", if quick { 1 } else { 5 })
        .iter()
        .map(|p| load(p))
        .collect::<Result<_, _>>()?;
    for cpus in [4, 16] {
        let sm = SimMachine::parse(&format!("cpus:{cpus}"))?;
        if !stg100.is_empty() {
            rows.push(row("STG rand100", &sm, &stg100, &policies)?);
        }
        if !stg1000.is_empty() {
            rows.push(row("STG rand1000", &sm, &stg1000, &policies)?);
        }
    }
    let wf: Vec<GraphSpec> = files(&src.workloads.join("wfcommons"), "-001.json", if quick { 2 } else { 8 })
        .iter()
        .map(|p| load(p))
        .collect::<Result<_, _>>()?;
    if !wf.is_empty() {
        for cpus in [16, 64] {
            let sm = SimMachine::parse(&format!("cpus:{cpus}"))?;
            rows.push(row("WfCommons (8 workflows)", &sm, &wf, &policies)?);
        }
    }
    Ok(rows)
}

/// The table in Markdown.
pub fn markdown(rows: &[QualityRow]) -> String {
    let policies: Vec<&str> = rows
        .first()
        .map(|r| r.ratio.iter().map(|(p, _)| p.as_str()).collect())
        .unwrap_or_default();
    let mut s = String::from("| workload | machine | graphs | tasks |");
    for p in &policies {
        s.push_str(&format!(" {p} |"));
    }
    s.push_str("\n|---|---|---:|---:|");
    for _ in &policies {
        s.push_str("---:|");
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |",
            r.workload, r.machine, r.graphs, r.tasks
        ));
        for (_, v) in &r.ratio {
            s.push_str(&format!(" {v:.3} |"));
        }
        s.push('\n');
    }
    s
}
