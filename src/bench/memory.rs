//! Memory-limit benchmark: a blockwise workload (produce many tiles on the GPU, then reduce
//! them pairwise) whose working set is 4x and 16x the GPU's memory limit, against the same
//! run without a limit; and the simulator's peak for the same limit, from the model the real
//! runs measured. With `host`, the same workload on CPU workers against host limits, where
//! host copies spill to files; with `temps`, the produced tiles are temporaries freed once
//! reduced (the intermediates of a blockwise pipeline, as in Dask's root-task
//! overproduction), which is where holding producers back saves memory.

use std::time::Instant;

use serde::Serialize;

use crate::graph::{Data, Graph};
use crate::kernels::builtin;
use crate::memory::Node;
use crate::runtime::{MemoryLimits, Runtime};
use crate::sched::PolicyKind;
use crate::sim::{simulate, SimMachine, SimOptions};
use crate::topology::DeviceKind;

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRow {
    /// Working set divided by the GPU limit (`None`: unlimited).
    pub oversubscription: Option<u64>,
    /// Whether GPU workers held back data producers when their memory was nearly full.
    pub backpressure: bool,
    pub limit_bytes: Option<u64>,
    pub working_set_bytes: u64,
    pub makespan_s: f64,
    /// Against the unlimited run.
    pub overhead: f64,
    pub peak_gpu_bytes: u64,
    pub evictions: u64,
    pub written_back_bytes: u64,
    /// The simulator's GPU peak for the same graph and limit.
    pub simulated_peak_gpu_bytes: u64,
    pub results_match: bool,
}

/// One row of the host table.
#[derive(Clone, Debug, Serialize)]
pub struct HostMemoryRow {
    /// Working set divided by the host limit (`None`: unlimited).
    pub oversubscription: Option<u64>,
    /// Whether data-producing roots were held back under the limit.
    pub backpressure: bool,
    /// Whether the produced tiles were temporaries (freed once reduced).
    pub temps: bool,
    pub limit_bytes: Option<u64>,
    pub working_set_bytes: u64,
    pub makespan_s: f64,
    /// Against the unlimited run.
    pub overhead: f64,
    pub peak_host_bytes: u64,
    /// Host copies taken out of memory (written to a spill file or dropped when clean).
    pub spills: u64,
    pub spilled_bytes: u64,
    /// The simulator's host peak and spilled bytes for the same graph and limit.
    pub simulated_peak_host_bytes: u64,
    pub simulated_spilled_bytes: u64,
    pub results_match: bool,
}

/// The host table: the same workload on `cpus` CPU workers, unlimited then with the host
/// limited to 1/4 and 1/16 of the working set, with and without backpressure; `temps` makes
/// the produced tiles temporaries.
pub fn measure_host(
    tiles: usize,
    len: usize,
    cpus: usize,
    reps: usize,
    temps: bool,
    policy: PolicyKind,
) -> Result<Vec<HostMemoryRow>, String> {
    let working_set = (tiles * len * 4) as u64;
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<f32>)> = None;
    for (over, backpressure) in CONFIGS {
        let limit = over.map(|o| working_set / o);
        let mut builder = Runtime::builder()
            .machine(crate::topology::Machine::synthetic_cpus(cpus.max(1)))
            .policy(policy)
            .memory_limits(MemoryLimits {
                host: limit,
                ..MemoryLimits::default()
            })
            .calibrate(true);
        if !backpressure {
            builder = builder.no_backpressure();
        }
        let rt = builder.build().map_err(|e| e.to_string())?;
        let (g, data) = build_on(&rt, tiles, len, DeviceKind::Cpu, temps);
        let (makespan, report, result) = timed_runs(&rt, &g, &data, len, reps)?;
        let (base_time, base_result) = baseline.get_or_insert((makespan, result.clone())).clone();
        let host = &report.memory[Node::Host.index()];
        let sim = simulated(
            &rt,
            &g,
            tiles,
            len,
            &format!("cpus:{}", cpus.max(1)),
            policy,
            &SimOptions {
                record_trace: false,
                gpu_memory: None,
                host_memory: limit,
                no_backpressure: !backpressure,
                lp_bound: false,
            },
        )?;
        rows.push(HostMemoryRow {
            oversubscription: over,
            backpressure,
            temps,
            limit_bytes: limit,
            working_set_bytes: working_set,
            makespan_s: makespan,
            overhead: makespan / base_time - 1.0,
            peak_host_bytes: host.peak_bytes,
            spills: host.evictions,
            spilled_bytes: report.spilled_bytes,
            simulated_peak_host_bytes: sim.memory[Node::Host.index()].peak_bytes,
            simulated_spilled_bytes: sim.spilled_bytes,
            results_match: result == base_result,
        });
    }
    Ok(rows)
}

/// Bytes as whole KiB, for the tables.
fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}

/// "4x", or "unlimited".
fn ratio(oversubscription: Option<u64>) -> String {
    oversubscription.map_or("unlimited".to_string(), |o| format!("{o}x"))
}

/// "on"/"off" under a limit, "-" without one (backpressure needs a limit).
fn backpressure_cell(oversubscription: Option<u64>, backpressure: bool) -> &'static str {
    match (oversubscription, backpressure) {
        (None, _) => "-",
        (Some(_), true) => "on",
        (Some(_), false) => "off",
    }
}

/// The host table in Markdown.
pub fn host_markdown(rows: &[HostMemoryRow]) -> String {
    let mut s = String::from("| working set / host limit | backpressure | limit | makespan | overhead | host peak | spills | spilled | simulated host peak | simulated spilled | results |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:+.0}% | {} | {} | {} | {} | {} | {} |\n",
            ratio(r.oversubscription),
            backpressure_cell(r.oversubscription, r.backpressure),
            r.limit_bytes.map_or("-".to_string(), kib),
            r.makespan_s * 1e3,
            r.overhead * 100.0,
            kib(r.peak_host_bytes),
            r.spills,
            kib(r.spilled_bytes),
            kib(r.simulated_peak_host_bytes),
            kib(r.simulated_spilled_bytes),
            if r.results_match { "same" } else { "DIFFERENT" }
        ));
    }
    s
}

/// Simulates graph `g` (built by [`build_on`] on `rt`) on `machine`, over size-only tiles,
/// with the performance model `rt` measured.
fn simulated(
    rt: &Runtime,
    g: &Graph,
    tiles: usize,
    len: usize,
    machine: &str,
    policy: PolicyKind,
    opts: &SimOptions,
) -> Result<crate::trace::RunReport, String> {
    use crate::graph::formats::{BuildOptions, DataSpec, GraphSpec, TaskSpec};
    let mut sm = SimMachine::parse(machine)?;
    sm.model = rt.perf_model();
    let k = |name: &str| sm.kernel(name);
    let mut spec = GraphSpec::new(None);
    for d in &g.data {
        spec.data.push(DataSpec {
            name: format!("t{}", spec.data.len()),
            elem: None,
            len: None,
            bytes: Some((len * 4) as u64),
            init: None,
            read_only: false,
            temp: d.is_temp(),
        });
    }
    debug_assert_eq!(spec.data.len(), tiles);
    for i in 0..g.len() {
        let mut t = TaskSpec::replay(g.task_name(i), 0.0);
        t.kernel = g.task_kernel(i).to_string();
        t.params.clear();
        t.device = g.restrictions[g.tasks[i].restriction as usize]
            .device
            .map(|d| d.to_string());
        t.access = g.accesses[g.tasks[i].accesses.range()]
            .iter()
            .map(|&(d, a)| (format!("t{d}"), a.short().to_string()))
            .collect();
        spec.tasks.push(t);
    }
    let sg = spec
        .build_virtual(&k, &BuildOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(simulate(&sg, &sm, policy, opts).map_err(|e| e.to_string())?.run)
}

/// One warm-up run (pipelines, buffers, the model), then `reps` timed runs from zeroed tiles:
/// the median time, the last run's report and its result (tile 0).
fn timed_runs(
    rt: &Runtime,
    g: &Graph,
    data: &[Data<f32>],
    len: usize,
    reps: usize,
) -> Result<(f64, crate::trace::RunReport, Vec<f32>), String> {
    rt.run(g).map_err(|e| e.to_string())?;
    let zeros = vec![0.0f32; len];
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps.max(1) {
        for d in data {
            rt.write(*d, &zeros).map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        let report = rt.run(g).map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(report);
    }
    times.sort_by(f64::total_cmp);
    let result = rt.read(data[0]).map_err(|e| e.to_string())?;
    Ok((times[times.len() / 2], last.expect("at least one run"), result))
}

/// Limits (working set over limit; `None`: unlimited) and backpressure of the table's rows.
const CONFIGS: [(Option<u64>, bool); 5] = [
    (None, true),
    (Some(4), true),
    (Some(4), false),
    (Some(16), true),
    (Some(16), false),
];

fn build(rt: &Runtime, tiles: usize, len: usize) -> (Graph, Vec<Data<f32>>) {
    build_on(rt, tiles, len, DeviceKind::Gpu, false)
}

/// `tiles` tiles produced on `device`, then reduced pairwise into tile 0. Returns the graph
/// and its stored tiles (all of them, or only tile 0 when the others are `temps`).
fn build_on(rt: &Runtime, tiles: usize, len: usize, device: DeviceKind, temps: bool) -> (Graph, Vec<Data<f32>>) {
    let mut g = rt.graph();
    let stored: Vec<Data<f32>> = (0..if temps { 1 } else { tiles })
        .map(|i| rt.data_named(format!("t{i}"), vec![0.0f32; len]))
        .collect();
    let data: Vec<crate::graph::DataRef> = (0..tiles)
        .map(|i| match stored.get(i) {
            Some(d) => (*d).into(),
            None => g.temp::<f32>(format!("t{i}"), len).into(),
        })
        .collect();
    for (i, d) in data.iter().enumerate() {
        g.task(&builtin::fill())
            .name(format!("produce{i}"))
            .on(device)
            .write(*d)
            .param(1.0 + i as f64)
            .add();
    }
    let mut stride = 1;
    while stride < tiles {
        for i in (0..tiles).step_by(2 * stride) {
            if i + stride < tiles {
                g.task(&builtin::axpy())
                    .name(format!("reduce{i}+{}", i + stride))
                    .on(device)
                    .read(data[i + stride])
                    .read_write(data[i])
                    .param(1.0)
                    .add();
            }
        }
        stride *= 2;
    }
    (g, stored)
}

/// Runs the table: `tiles` tiles of `len` f32 each, unlimited then at 4x and 16x; each time the
/// median of `reps` runs.
pub fn measure(tiles: usize, len: usize, reps: usize) -> Result<Vec<MemoryRow>, String> {
    let working_set = (tiles * len * 4) as u64;
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<f32>)> = None;
    for (over, backpressure) in CONFIGS {
        let limit = over.map(|o| working_set / o);
        let mut builder = Runtime::builder()
            .cpus(1)
            .policy(PolicyKind::Eager)
            .memory_limits(MemoryLimits {
                gpu: limit,
                ..MemoryLimits::default()
            })
            .calibrate(true);
        if !backpressure {
            builder = builder.no_backpressure();
        }
        let rt = builder.build().map_err(|e| e.to_string())?;
        if rt.gpus().is_empty() {
            return Err(super::NO_GPU.into());
        }
        let (g, data) = build(&rt, tiles, len);
        let (makespan, report, result) = timed_runs(&rt, &g, &data, len, reps)?;
        let gpu = report
            .memory
            .iter()
            .find(|m| m.node == Node::Gpu(0).to_string())
            .cloned();
        let (base_time, base_result) = baseline.get_or_insert((makespan, result.clone())).clone();
        let sim = simulated(
            &rt,
            &g,
            tiles,
            len,
            "cpus:1,gpus:1,gpu-speedup:1",
            PolicyKind::Eager,
            &SimOptions {
                record_trace: false,
                gpu_memory: limit,
                host_memory: None,
                no_backpressure: !backpressure,
                lp_bound: false,
            },
        )?;
        let sim_peak = sim
            .memory
            .iter()
            .filter(|m| m.node != "host")
            .map(|m| m.peak_bytes)
            .max()
            .unwrap_or(0);
        rows.push(MemoryRow {
            oversubscription: over,
            backpressure,
            limit_bytes: limit,
            working_set_bytes: working_set,
            makespan_s: makespan,
            overhead: makespan / base_time - 1.0,
            peak_gpu_bytes: gpu.as_ref().map_or(0, |m| m.peak_bytes),
            evictions: gpu.as_ref().map_or(0, |m| m.evictions),
            written_back_bytes: gpu.as_ref().map_or(0, |m| m.written_back_bytes),
            simulated_peak_gpu_bytes: sim_peak,
            results_match: result == base_result,
        });
    }
    Ok(rows)
}

/// The table in Markdown.
pub fn markdown(rows: &[MemoryRow]) -> String {
    let mut s = String::from("| working set / GPU limit | backpressure | limit | makespan | overhead | GPU peak | evictions | written back | simulated GPU peak | results |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:+.0}% | {} | {} | {} | {} | {} |\n",
            ratio(r.oversubscription),
            if r.backpressure { "on" } else { "off" },
            r.limit_bytes.map_or("-".to_string(), kib),
            r.makespan_s * 1e3,
            r.overhead * 100.0,
            kib(r.peak_gpu_bytes),
            r.evictions,
            kib(r.written_back_bytes),
            kib(r.simulated_peak_gpu_bytes),
            if r.results_match { "same" } else { "DIFFERENT" }
        ));
    }
    s
}

/// One row of the Cholesky table.
#[derive(Clone, Debug, Serialize)]
pub struct CholeskyRow {
    /// The limited node: `host` or `gpu0`.
    pub node: String,
    /// Working set divided by the limit (`None`: unlimited).
    pub oversubscription: Option<u64>,
    pub backpressure: bool,
    pub limit_bytes: Option<u64>,
    pub working_set_bytes: u64,
    pub tasks: usize,
    pub makespan_s: f64,
    /// Against the unlimited run.
    pub overhead: f64,
    pub peak_bytes: u64,
    pub evictions: u64,
    /// GPU: bytes written back to the host; host: bytes spilled to files.
    pub written_back_bytes: u64,
    /// The simulator's peak on the same node for the same graph, limit and model.
    pub simulated_peak_bytes: u64,
    /// Largest |L·Lᵀ − A| relative to the largest entry of A.
    pub residual: f64,
    /// Whether the factor equals the unlimited run's, bit for bit.
    pub factor_match: bool,
}

/// The tiled Cholesky of `n`×`n` tiles of side `b` (real kernels), unlimited then with the
/// host (or, with `gpu`, the GPU) limited to 1/4 and 1/16 of the tiles, with and without
/// backpressure, under `locality`; medians of `reps` runs.
pub fn measure_cholesky(n: usize, b: usize, cpus: usize, reps: usize, gpu: bool) -> Result<Vec<CholeskyRow>, String> {
    use crate::linalg::TiledCholesky;
    let mut rows = Vec::new();
    let mut baseline: Option<(f64, Vec<f32>)> = None;
    let node = if gpu { Node::Gpu(0) } else { Node::Host };
    for (over, backpressure) in CONFIGS {
        let working_set = (n * (n + 1) / 2 * b * b * 4) as u64;
        let limit = over.map(|o| working_set / o);
        let limits = if gpu {
            MemoryLimits {
                gpu: limit,
                ..MemoryLimits::default()
            }
        } else {
            MemoryLimits {
                host: limit,
                ..MemoryLimits::default()
            }
        };
        let mut builder = Runtime::builder()
            .policy(PolicyKind::Locality)
            .memory_limits(limits)
            .calibrate(true);
        builder = if gpu {
            builder.cpus(1).gpus(crate::gpu::GpuRequest::Count(1))
        } else {
            builder.machine(crate::topology::Machine::synthetic_cpus(cpus.max(1)))
        };
        if !backpressure {
            builder = builder.no_backpressure();
        }
        let rt = builder.build().map_err(|e| e.to_string())?;
        if gpu && rt.gpus().is_empty() {
            return Err(super::NO_GPU.into());
        }
        // On a GPU run every update goes to the GPU, so that its limit is what is measured.
        let chol = if gpu {
            TiledCholesky::with_updates_on(&rt, n, b, DeviceKind::Gpu)
        } else {
            TiledCholesky::new(&rt, n, b)
        };
        rt.run(&chol.graph).map_err(|e| e.to_string())?; // warm-up: pipelines, the model
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..reps.max(1) {
            chol.reset(&rt).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let report = rt.run(&chol.graph).map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64());
            last = Some(report);
        }
        times.sort_by(f64::total_cmp);
        let makespan = times[times.len() / 2];
        let report = last.expect("at least one run");
        let factor = chol.factor(&rt).map_err(|e| e.to_string())?;
        let residual = chol.residual(&rt).map_err(|e| e.to_string())?;
        let (base_time, base_factor) = baseline.get_or_insert((makespan, factor.clone())).clone();
        let mem = report
            .memory
            .iter()
            .find(|m| m.node == node.to_string())
            .cloned()
            .ok_or("no such memory node in the report")?;
        let machine = if gpu {
            "cpus:1,gpus:1,gpu-speedup:1".to_string()
        } else {
            format!("cpus:{}", cpus.max(1))
        };
        let sim_opts = SimOptions {
            record_trace: false,
            gpu_memory: if gpu { limit } else { None },
            host_memory: if gpu { None } else { limit },
            no_backpressure: !backpressure,
            lp_bound: false,
        };
        let sim = simulated(
            &rt,
            &chol.graph,
            chol.graph.data.len(),
            b * b,
            &machine,
            PolicyKind::Locality,
            &sim_opts,
        )?;
        rows.push(CholeskyRow {
            node: node.to_string(),
            oversubscription: over,
            backpressure,
            limit_bytes: limit,
            working_set_bytes: working_set,
            tasks: chol.graph.len(),
            makespan_s: makespan,
            overhead: makespan / base_time - 1.0,
            peak_bytes: mem.peak_bytes,
            evictions: mem.evictions,
            written_back_bytes: mem.written_back_bytes,
            simulated_peak_bytes: sim
                .memory
                .iter()
                .find(|m| m.node == node.to_string())
                .map_or(0, |m| m.peak_bytes),
            residual,
            factor_match: factor == base_factor,
        });
    }
    Ok(rows)
}

/// The Cholesky table in Markdown.
pub fn cholesky_markdown(rows: &[CholeskyRow]) -> String {
    let mut s = String::from("| node | working set / limit | backpressure | limit | makespan | overhead | peak | evictions | written back | simulated peak | residual | factor |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} ms | {:+.0}% | {} | {} | {} | {} | {:.1e} | {} |\n",
            r.node,
            ratio(r.oversubscription),
            backpressure_cell(r.oversubscription, r.backpressure),
            r.limit_bytes.map_or("-".to_string(), kib),
            r.makespan_s * 1e3,
            r.overhead * 100.0,
            kib(r.peak_bytes),
            r.evictions,
            kib(r.written_back_bytes),
            kib(r.simulated_peak_bytes),
            r.residual,
            if r.factor_match { "same" } else { "differs" }
        ));
    }
    s
}
