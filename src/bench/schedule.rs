//! Schedule quality: each policy's makespan over the best of all policies' and over the
//! lower bound, in the simulator, on tiled Cholesky over StarPU's measured machines and over
//! machines built from McSweeney's Skylake + V100 kernel timings (32 cores and 1 or 4 GPUs,
//! tiles of 128 and 1024, links free or measured), the STG random graphs on 4 and 16 cores,
//! and the WfCommons workflows on 16 and 64 cores.
//!
//! Each row reads its inputs from the shared workloads directory; a row whose input is
//! missing is reported as [`Skipped`] (with where it looked), an input that is present but
//! broken is an error.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Skipped;
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
    /// `(policy, mean makespan / the best policy's makespan on the same graph)`.
    pub over_best: Vec<(String, f64)>,
    /// Mean of the best policy's makespan over the lower bound.
    pub best_over_bound: f64,
}

/// The measured rows and the rows skipped for want of their input.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Table {
    pub rows: Vec<QualityRow>,
    pub skipped: Vec<Skipped>,
}

/// Where the shared workloads are.
#[derive(Clone, Debug)]
pub struct Sources {
    pub workloads: PathBuf,
}

/// The StarPU machines of the Cholesky rows.
const STARPU_MACHINES: [&str; 3] = ["sirocco", "mirage", "attila"];

impl Sources {
    fn starpu(&self) -> PathBuf {
        self.workloads.join("heterogeneous/starpu_perfmodels")
    }

    fn stg(&self, set: &str) -> PathBuf {
        self.workloads.join("stg").join(set)
    }

    fn skylake_v100(&self) -> PathBuf {
        self.workloads.join("heterogeneous/cholesky_skylake_v100")
    }

    fn wfcommons(&self) -> PathBuf {
        self.workloads.join("wfcommons")
    }

    /// Every place the table reads, for a message when none of them is there.
    pub fn looked_in(&self) -> Vec<PathBuf> {
        vec![
            self.starpu(),
            self.skylake_v100(),
            self.stg("rand100"),
            self.stg("rand1000"),
            self.wfcommons(),
        ]
    }
}

/// The first `limit` files of `dir` whose names end with `ext`, sorted; why not, when the
/// directory cannot be read or has none.
fn files(dir: &Path, ext: &str, limit: usize) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    if v.is_empty() {
        return Err(format!("no *{ext} file in {}", dir.display()));
    }
    v.sort();
    v.truncate(limit);
    Ok(v)
}

/// Loads the first `limit` graphs of `dir` (a missing or empty directory: `Ok(Err(why))`; a
/// file that does not load: an error).
fn graphs(dir: &Path, ext: &str, limit: usize) -> Result<Result<Vec<GraphSpec>, String>, String> {
    match files(dir, ext, limit) {
        Err(why) => Ok(Err(why)),
        Ok(paths) => paths
            .iter()
            .map(|p| formats::load(p, None).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .map(Ok),
    }
}

/// Measures one row: every policy on every graph, ratios averaged over graphs.
/// The machine's models of the graphs' kernels are read first ([`SimMachine::load_models`]).
pub fn row(
    workload: &str,
    sm: &mut SimMachine,
    specs: &[GraphSpec],
    policies: &[PolicyKind],
) -> Result<QualityRow, String> {
    sm.load_models(specs.iter().flat_map(|s| s.tasks.iter().map(|t| t.kernel.as_str())))?;
    let sm = &*sm;
    let graphs: Vec<_> = specs
        .iter()
        .map(|s| {
            s.build_virtual(&|k| sm.kernel(k), &BuildOptions::default())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let tasks = graphs.iter().map(|g| g.len()).sum();
    // `[graph][policy]` makespans, and each graph's bound.
    let mut makespan = vec![vec![0.0f64; policies.len()]; graphs.len()];
    let mut bound = vec![0.0f64; graphs.len()];
    for (gi, g) in graphs.iter().enumerate() {
        for (pi, &p) in policies.iter().enumerate() {
            // The bound, LP included, once per graph.
            let opts = SimOptions {
                lp_bound: pi == 0,
                ..SimOptions::default()
            };
            let r = simulate(g, sm, p, &opts).map_err(|e| e.to_string())?;
            makespan[gi][pi] = r.run.makespan_s;
            if pi == 0 {
                bound[gi] = r.lower_bound_s;
            }
        }
    }
    let count = graphs.len().max(1) as f64;
    let best: Vec<f64> = makespan
        .iter()
        .map(|m| m.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    // A zero makespan (a graph of empty tasks) is as good as it gets: its ratio is 1.
    let over = |m: f64, by: f64| if by > 0.0 { m / by } else { 1.0 };
    let mean_over =
        |pi: usize, by: &[f64]| (0..graphs.len()).map(|gi| over(makespan[gi][pi], by[gi])).sum::<f64>() / count;
    let named = |by: &[f64]| -> Vec<(String, f64)> {
        policies
            .iter()
            .enumerate()
            .map(|(pi, p)| (p.name().to_string(), mean_over(pi, by)))
            .collect()
    };
    Ok(QualityRow {
        workload: workload.into(),
        machine: sm.name.clone(),
        graphs: graphs.len(),
        tasks,
        ratio: named(&bound),
        over_best: named(&best),
        best_over_bound: (0..graphs.len()).map(|gi| over(best[gi], bound[gi])).sum::<f64>() / count,
    })
}

/// The whole table (`quick`: smaller graphs and fewer of them). Rows whose inputs are missing
/// are in [`Table::skipped`]; when every row is, `rows` is empty and the caller should say
/// where it looked ([`Sources::looked_in`]).
pub fn measure(src: &Sources, quick: bool) -> Result<Table, String> {
    let policies = PolicyKind::ALL;
    let mut table = Table::default();
    let starpu = src.starpu();
    let sampling = if starpu.join("sampling").is_dir() {
        starpu.join("sampling")
    } else {
        starpu.clone()
    };
    let tiles: &[usize] = if quick { &[10] } else { &[10, 20, 40] };
    let cholesky_label = |n: usize| format!("cholesky {n}x{n} (b=960)");
    for machine in STARPU_MACHINES {
        // A machine absent from the directory is a missing input (skipped); a machine present
        // whose files are broken is an error from the loader, naming file and line.
        let config = sampling.join("bus").join(format!("{machine}.config"));
        if !config.is_file() {
            let why = if starpu.is_dir() {
                format!("{} not found", config.display())
            } else {
                format!("{} not found", starpu.display())
            };
            for &n in tiles {
                table.skipped.push(Skipped {
                    row: format!("{} on starpu:{machine}", cholesky_label(n)),
                    why: why.clone(),
                });
            }
            continue;
        }
        let mut sm = SimMachine::parse(&format!("starpu:{}:{machine}", starpu.display()))?;
        for &n in tiles {
            table.rows.push(row(
                &cholesky_label(n),
                &mut sm,
                &[cholesky::generate(n, 960)],
                &policies,
            )?);
        }
    }
    skylake_v100_rows(src, quick, &policies, &mut table)?;
    let stg100 = graphs(&src.stg("rand100"), ".stg", if quick { 5 } else { 90 })?;
    let stg1000 = graphs(&src.stg("rand1000"), ".stg", if quick { 1 } else { 5 })?;
    for cpus in [4, 16] {
        let mut sm = SimMachine::parse(&format!("cpus:{cpus}"))?;
        for (label, specs) in [("STG rand100", &stg100), ("STG rand1000", &stg1000)] {
            match specs {
                Ok(specs) => table.rows.push(row(label, &mut sm, specs, &policies)?),
                Err(why) => table.skipped.push(Skipped {
                    row: format!("{label} on {}", sm.name),
                    why: why.clone(),
                }),
            }
        }
    }
    let wf = graphs(&src.wfcommons(), "-001.json", if quick { 2 } else { 8 })?;
    for cpus in [16, 64] {
        let mut sm = SimMachine::parse(&format!("cpus:{cpus}"))?;
        match &wf {
            Ok(specs) => {
                let label = format!("WfCommons ({} workflows)", specs.len());
                table.rows.push(row(&label, &mut sm, specs, &policies)?);
            }
            Err(why) => table.skipped.push(Skipped {
                row: format!("WfCommons on {}", sm.name),
                why: why.clone(),
            }),
        }
    }
    Ok(table)
}

/// Tiled Cholesky on the machines of McSweeney's Skylake + V100 timings: 32 cores with 1
/// and 4 GPUs, tiles of 1024 and 128, N = 5, 10 and 20 tiles, links free (the policy alone)
/// and measured (a tile's copy costs the mean measured transfer).
fn skylake_v100_rows(src: &Sources, quick: bool, policies: &[PolicyKind], table: &mut Table) -> Result<(), String> {
    let dir = src.skylake_v100();
    let tiles: &[u64] = if quick { &[1024] } else { &[1024, 128] };
    let sizes: &[usize] = if quick { &[10] } else { &[5, 10, 20] };
    let summary = dir.join("kernel_summary.tsv");
    for &b in tiles {
        for &n in sizes {
            let label = format!("cholesky {n}x{n} (b={b})");
            for gpus in [1, 4] {
                for links in ["free", "measured"] {
                    if !summary.is_file() {
                        table.skipped.push(Skipped {
                            row: format!("{label} on 32 Skylake + {gpus} V100 ({links} links)"),
                            why: format!("{} not found", summary.display()),
                        });
                        continue;
                    }
                    let spec = format!(
                        "kernel-summary:{}:cpus=32,gpus={gpus},tile={b},links={links}",
                        dir.display()
                    );
                    let mut sm = SimMachine::parse(&spec)?;
                    table
                        .rows
                        .push(row(&label, &mut sm, &[cholesky::generate(n, b as usize)], policies)?);
                }
            }
        }
    }
    Ok(())
}

/// The table in Markdown: per policy, its makespan over the best policy's on the same graph
/// (1.000: the best), then the best policy's makespan over the lower bound. A policy's
/// makespan over the bound is the product of its cell and the last column.
pub fn markdown(rows: &[QualityRow]) -> String {
    let policies: Vec<String> = rows
        .first()
        .map(|r| r.over_best.iter().map(|(p, _)| p.clone()).collect())
        .unwrap_or_default();
    let mut s = super::policy_table_header(
        &[
            ("workload", "---"),
            ("machine", "---"),
            ("graphs", "---:"),
            ("tasks", "---:"),
        ],
        &policies,
        &[("best / bound", "---:")],
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |",
            r.workload, r.machine, r.graphs, r.tasks
        ));
        for (_, v) in &r.over_best {
            s.push_str(&format!(" {v:.3} |"));
        }
        s.push_str(&format!(" {:.3} |\n", r.best_over_bound));
    }
    s
}
