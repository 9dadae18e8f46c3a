//! The soak benchmark behind `hexec bench soak`: a large graph run clean, then with injected
//! failures (a share of all attempts fail) and, on a machine with a GPU, that GPU lost part
//! way through; the results must be identical, and the process's resident memory is sampled
//! through the run to show it stays flat.
//!
//! The workload: `tiles` chains of tiny f32 tiles, each task scaling its tile by a power of
//! two (exact on CPUs and GPUs alike, so results do not depend on where tasks ran; the
//! factors of every eight steps multiply to one, so values stay finite) and every eighth step
//! reading its neighbour (`axpy` with alpha 0), which ties the chains together.

use super::resident_bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::graph::Data;
use crate::kernels::builtin;
use crate::runtime::faults::FaultPlan;
use crate::runtime::{RunOptions, Runtime};
use crate::sched::PolicyKind;

/// What the soak measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Whether the runtimes had their GPUs (the faulty run loses the first one).
    pub with_gpus: bool,
    pub tasks: usize,
    pub fault_plan: String,
    pub clean_s: f64,
    pub faulty_s: f64,
    /// Faulty against clean.
    pub overhead: f64,
    /// Failed attempts tried again in the faulty run.
    pub retried: u64,
    pub gpu_lost: bool,
    pub results_identical: bool,
    /// Resident memory during the faulty run, at each tenth of it (bytes).
    pub rss_deciles: Vec<u64>,
    /// Resident memory during the faulty run: first sample, smallest, largest, last (bytes).
    pub rss_first: u64,
    pub rss_min: u64,
    pub rss_max: u64,
    pub rss_last: u64,
    pub rss_samples: usize,
}

/// Runs the soak: `tasks` tasks over `tiles` chains, attempts failing with probability
/// `fail_rate`; `with_gpus`: on CPUs and GPUs, the first GPU (if any) lost after
/// `loss_after`; else on the CPUs alone.
pub fn measure(
    tasks: usize,
    tiles: usize,
    fail_rate: f64,
    loss_after: Duration,
    with_gpus: bool,
) -> Result<SoakReport, String> {
    let tiles = tiles.clamp(1, tasks.max(1));
    let gpus = if with_gpus {
        crate::gpu::GpuRequest::All
    } else {
        crate::gpu::GpuRequest::None
    };
    let build = |plan: &FaultPlan| {
        Runtime::builder()
            .gpus(gpus)
            .policy(PolicyKind::Eager)
            .retries(8)
            .replicate_gpu_results(true)
            .inject(plan.clone())
            .build()
            .map_err(|e| e.to_string())
    };
    let clean_rt = build(&FaultPlan::default())?;
    let has_gpu = !clean_rt.gpus().is_empty();
    let mut spec = format!("panic:p={fail_rate},seed=1");
    if has_gpu {
        spec.push_str(&format!(",gpu-error:p={fail_rate}"));
        spec.push_str(&format!(",device-loss:gpu0:after={}ms", loss_after.as_millis()));
    }
    let plan: FaultPlan = spec.parse()?;

    // Runs on the CPUs alone take a tenth of a second: the median of five, alternating clean
    // and faulty. With a GPU, one each (the GPU is lost in the first faulty run).
    let reps = if has_gpu { 1 } else { 5 };
    let faulty_rt = build(&plan)?;
    let (mut clean_times, mut faulty_times) = (Vec::new(), Vec::new());
    let (mut clean, mut faulty) = (None, None);
    for _ in 0..reps {
        let c = run_once(&clean_rt, tasks, tiles)?;
        clean_times.push(c.secs);
        clean = Some(c);
        let f = run_once(&faulty_rt, tasks, tiles)?;
        faulty_times.push(f.secs);
        faulty = Some(f);
    }
    let (clean, faulty) = (clean.expect("one run at least"), faulty.expect("one run at least"));
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (clean_s, faulty_s) = (median(&mut clean_times), median(&mut faulty_times));
    let samples = &faulty.rss;
    Ok(SoakReport {
        with_gpus: has_gpu,
        tasks,
        fault_plan: spec,
        clean_s,
        faulty_s,
        overhead: faulty_s / clean_s - 1.0,
        retried: faulty.retried,
        gpu_lost: faulty_rt.gpus().first().is_some_and(|g| g.lost().is_some()),
        results_identical: faulty.tiles == clean.tiles,
        rss_deciles: (0..=10)
            .filter_map(|k| samples.get((samples.len().saturating_sub(1)) * k / 10).copied())
            .collect(),
        rss_first: samples.first().copied().unwrap_or(0),
        rss_min: samples.iter().copied().min().unwrap_or(0),
        rss_max: samples.iter().copied().max().unwrap_or(0),
        rss_last: samples.last().copied().unwrap_or(0),
        rss_samples: samples.len(),
    })
}

/// One run of the workload.
struct Run {
    secs: f64,
    retried: u64,
    /// Every tile's final contents.
    tiles: Vec<Vec<f32>>,
    /// Resident memory sampled every 2 ms while the graph ran (after it was built).
    rss: Vec<u64>,
}

/// Builds and runs the workload once.
fn run_once(rt: &Runtime, tasks: usize, tiles: usize) -> Result<Run, String> {
    let data: Vec<Data<f32>> = (0..tiles)
        .map(|i| rt.data((0..16).map(|k| (i * 16 + k) as f32).collect()))
        .collect();
    let mut g = rt.graph();
    let steps = tasks / tiles;
    for step in 0..steps {
        for (i, d) in data.iter().enumerate() {
            if step % 8 == 7 && tiles > 1 {
                g.task(&builtin::axpy())
                    .read(data[(i + 1) % tiles])
                    .read_write(*d)
                    .param(0.0)
                    .add();
            } else {
                // Exact powers of two whose product over eight steps is one.
                let factor = [2.0, 0.5, 4.0, 0.25, 0.5, 2.0, 1.0, 1.0][step % 8];
                g.task(&builtin::scale()).read_write(*d).param(factor).add();
            }
        }
    }
    let sampling = AtomicBool::new(true);
    let (secs, report, rss) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut out = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                out.extend(resident_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
            out
        });
        let t = Instant::now();
        let report = rt.run_with(&g, RunOptions::default());
        let secs = t.elapsed().as_secs_f64();
        sampling.store(false, Ordering::Relaxed);
        (secs, report, sampler.join().unwrap_or_default())
    });
    let report = report.map_err(|e| format!("the run failed: {e}"))?;
    let tiles = data
        .iter()
        .map(|d| rt.read(*d).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(Run {
        secs,
        retried: report.retried,
        tiles,
        rss,
    })
}

/// The reports in Markdown.
pub fn markdown(rows: &[SoakReport]) -> String {
    let mut s = String::from("| workers | tasks | faults | clean | faulty | overhead | retried | GPU lost | results | RSS first / min / max / last (samples) |\n|---|---:|---|---:|---:|---:|---:|---|---|---|\n");
    for r in rows {
        s.push_str(&row(r));
    }
    s
}

fn row(r: &SoakReport) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "| {} | {} | `{}` | {:.2} s | {:.2} s | {:+.0}% | {} | {} | {} | {:.0} / {:.0} / {:.0} / {:.0} MiB ({}) |\n",
        if r.with_gpus { "CPUs + GPU" } else { "CPUs" },
        r.tasks,
        r.fault_plan,
        r.clean_s,
        r.faulty_s,
        r.overhead * 100.0,
        r.retried,
        if r.gpu_lost { "yes" } else { "no GPU" },
        if r.results_identical { "identical" } else { "DIFFERENT" },
        mib(r.rss_first),
        mib(r.rss_min),
        mib(r.rss_max),
        mib(r.rss_last),
        r.rss_samples,
    )
}
