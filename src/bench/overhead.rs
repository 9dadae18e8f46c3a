//! Per-task overhead: empty tasks in standard shapes, on hexec and, as the floor for
//! fork-join overhead on this machine, on rayon.
//!
//! hexec's figure is the wall time of `Runtime::run` (validation, compilation, waking the
//! persistent worker threads, execution, report) divided by the number of tasks: everything a user pays per task once
//! the graph is built. Graph building is reported separately.
//!
//! A shape read from a file whose file is missing is not measured: it is reported as
//! [`Skipped`], never silently dropped.
//!
//! The large shapes (a million tasks, [`Shape::large`]) check that the cost per task stays
//! flat as graphs grow: each row also gives the peak resident memory per task (sampled from
//! `/proc/self/statm` while the graph is built and run), and [`measure_sim`] gives the wall
//! time of simulating them under every policy.

use super::resident_bytes;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Skipped;
use crate::graph::formats::{self, BuildOptions};
use crate::graph::Graph;
use crate::kernels::builtin;
use crate::runtime::{BuildError, Runtime};
use crate::sched::compile::Successors;
use crate::sched::PolicyKind;
use crate::sim::{simulate, SimMachine, SimOptions};

/// A benchmark graph shape.
#[derive(Clone, Debug)]
pub enum Shape {
    /// `n` tasks with no dependencies.
    Independent(usize),
    /// `n` tasks, each after the previous.
    Chain(usize),
    /// A fan-out binary tree of `2^depth - 1` tasks: each node after its parent.
    BinaryTree(u32),
    /// A graph loaded from a file (the Dask graphs), run with empty tasks.
    File { label: String, path: std::path::PathBuf },
}

impl Shape {
    /// The shapes the issue asks for; `dask_dir` holds `tree-15.json.gz` and
    /// `merge-10000.json.gz` (their shapes are listed even when the files are missing:
    /// [`measure`] reports them skipped, [`Shape::missing_input`] says why).
    pub fn standard(dask_dir: Option<&std::path::Path>) -> Vec<Shape> {
        let mut v = vec![
            Shape::Independent(100_000),
            Shape::Chain(100_000),
            Shape::BinaryTree(15),
        ];
        if let Some(dir) = dask_dir {
            for name in ["tree-15", "merge-10000"] {
                v.push(Shape::File {
                    label: format!("dask {name}"),
                    path: dir.join(format!("{name}.json.gz")),
                });
            }
        }
        v
    }

    /// The million-task shapes: where a policy's cost per decision that grows with the
    /// number of tasks shows (HEFT's planning was quadratic).
    pub fn large() -> Vec<Shape> {
        vec![Shape::Independent(1_000_000), Shape::Chain(1_000_000)]
    }

    /// Why the shape cannot be built for want of its input, if so (a file shape whose file
    /// is not there).
    pub fn missing_input(&self) -> Option<String> {
        match self {
            Shape::File { path, .. } if !path.is_file() => Some(format!("{} not found", path.display())),
            _ => None,
        }
    }

    /// A short label.
    pub fn label(&self) -> String {
        match self {
            Shape::Independent(n) => format!("independent {n}"),
            Shape::Chain(n) => format!("chain {n}"),
            Shape::BinaryTree(d) => format!("binary tree {}", (1usize << d) - 1),
            Shape::File { label, .. } => label.clone(),
        }
    }

    /// Builds the graph of empty tasks.
    pub fn build(&self, rt: &Runtime) -> Result<Graph, String> {
        let noop = builtin::noop();
        Ok(match *self {
            Shape::Independent(n) => {
                let mut g = Graph::new();
                for _ in 0..n {
                    g.task(&noop).add();
                }
                g
            }
            Shape::Chain(n) => {
                let mut g = Graph::new();
                let mut prev = None;
                for _ in 0..n {
                    let b = g.task(&noop);
                    prev = Some(match prev {
                        Some(p) => b.after(p).add(),
                        None => b.add(),
                    });
                }
                g
            }
            Shape::BinaryTree(depth) => {
                let mut g = Graph::new();
                let n = (1usize << depth) - 1;
                let mut ids = Vec::with_capacity(n);
                for i in 0..n {
                    let b = g.task(&noop);
                    ids.push(if i == 0 {
                        b.add()
                    } else {
                        b.after(ids[(i - 1) / 2]).add()
                    });
                }
                g
            }
            Shape::File { ref path, .. } => {
                let spec = formats::load(path, None).map_err(|e| e.to_string())?;
                spec.build(
                    rt,
                    &BuildOptions {
                        time_scale: 0.0,
                        empty_tasks: true,
                    },
                )
                .map_err(|e| e.to_string())?
            }
        })
    }
}

/// One row of the overhead table.
#[derive(Clone, Debug, Serialize)]
pub struct OverheadRow {
    pub shape: String,
    pub tasks: usize,
    pub edges: usize,
    /// Graph construction, ns per task.
    pub build_ns_per_task: f64,
    /// `Runtime::run` per policy, ns per task (median of the repetitions).
    pub hexec_ns_per_task: Vec<(String, f64)>,
    /// The same shape on rayon, ns per task (median), and how it was expressed.
    pub rayon_ns_per_task: f64,
    pub rayon_method: String,
    /// Peak resident memory while the graph was built and run (every policy, every
    /// repetition) above the resident memory before, KiB per task; `None` off Linux.
    pub rss_kib_per_task: Option<f64>,
}

/// Settings of an overhead run.
#[derive(Clone, Debug)]
pub struct OverheadConfig {
    pub cpus: Option<usize>,
    pub reps: usize,
    pub policies: Vec<PolicyKind>,
}

/// The measured rows and the shapes skipped for want of their input.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Table {
    pub rows: Vec<OverheadRow>,
    pub skipped: Vec<Skipped>,
}

/// Measures every shape whose input is there; the others are in [`Table::skipped`].
pub fn measure(shapes: &[Shape], cfg: &OverheadConfig) -> Result<Table, String> {
    let make_rt = |p: PolicyKind| -> Result<Runtime, BuildError> {
        // Empty tasks on all cores: GPU workers would only idle beside them.
        let b = Runtime::builder().policy(p).gpus(crate::gpu::GpuRequest::None);
        match cfg.cpus {
            Some(n) => b.cpus(n).build(),
            None => b.build(),
        }
    };
    let runtimes: Vec<Runtime> = cfg
        .policies
        .iter()
        .map(|&p| make_rt(p))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let threads = runtimes.first().map_or(1, |r| r.machine().num_workers());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    let mut table = Table::default();
    for shape in shapes {
        if let Some(why) = shape.missing_input() {
            table.skipped.push(Skipped {
                row: shape.label(),
                why,
            });
            continue;
        }
        let base = resident_before();
        let peak = Peak::start();
        let t = Instant::now();
        let g = shape.build(&runtimes[0])?;
        let build = t.elapsed();
        let n = g.len().max(1);
        let per_task = |d: Duration| d.as_nanos() as f64 / n as f64;
        let mut hexec = Vec::new();
        for rt in &runtimes {
            rt.run(&g).map_err(|e| e.to_string())?; // warm-up
            let times: Vec<Duration> = (0..cfg.reps)
                .map(|_| {
                    let t = Instant::now();
                    rt.run(&g).map(|_| t.elapsed())
                })
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            hexec.push((rt.policy().name().to_string(), per_task(median(times))));
        }
        let rss = kib_per_task(base, peak.stop(), n);
        let (method, rayon_time) = rayon_baseline(&pool, shape, &g, cfg.reps);
        table.rows.push(OverheadRow {
            shape: shape.label(),
            tasks: g.len(),
            edges: g.num_edges(),
            build_ns_per_task: per_task(build),
            hexec_ns_per_task: hexec,
            rayon_ns_per_task: per_task(rayon_time),
            rayon_method: method.to_string(),
            rss_kib_per_task: rss,
        });
    }
    Ok(table)
}

/// One shape simulated under every policy.
#[derive(Clone, Debug, Serialize)]
pub struct SimRow {
    pub shape: String,
    pub tasks: usize,
    pub machine: String,
    /// Wall time of `simulate` per policy, ns per task (one run each: the simulator is
    /// deterministic, and a million tasks average out the noise).
    pub sim_ns_per_task: Vec<(String, f64)>,
    /// Peak resident memory while the graph was built and simulated, above the resident
    /// memory before, KiB per task.
    pub rss_kib_per_task: Option<f64>,
}

/// The machine of the `sim` rows: heterogeneous, so that `locality` and `heft` weigh every
/// task on two kinds of worker and their transfers.
pub const SIM_MACHINE: &str = "cpus:16,gpus:4,gpu-speedup:20";

/// Simulates each shape (tasks that spin 10 µs on a CPU) under each policy on
/// [`SIM_MACHINE`], timing the simulation itself.
pub fn measure_sim(shapes: &[Shape], policies: &[PolicyKind]) -> Result<Vec<SimRow>, String> {
    let sm = SimMachine::parse(SIM_MACHINE)?;
    let spin = sm.kernel("spin");
    let mut rows = Vec::new();
    for shape in shapes {
        let base = resident_before();
        let peak = Peak::start();
        let mut g = Graph::new();
        match *shape {
            Shape::Independent(n) => {
                for _ in 0..n {
                    g.task(&spin).param(1e-5).add();
                }
            }
            Shape::Chain(n) => {
                let mut prev = None;
                for _ in 0..n {
                    let b = g.task(&spin).param(1e-5);
                    prev = Some(match prev {
                        Some(p) => b.after(p).add(),
                        None => b.add(),
                    });
                }
            }
            _ => {
                return Err(format!(
                    "{}: only independent and chain shapes are simulated",
                    shape.label()
                ))
            }
        }
        let n = g.len().max(1);
        let mut per_policy = Vec::new();
        for &p in policies {
            let t = Instant::now();
            let report = simulate(&g, &sm, p, &SimOptions::default()).map_err(|e| e.to_string())?;
            let took = t.elapsed();
            if report.run.completed != g.len() {
                return Err(format!(
                    "{} under {p}: {} of {} completed",
                    shape.label(),
                    report.run.completed,
                    g.len()
                ));
            }
            per_policy.push((p.name().to_string(), took.as_nanos() as f64 / n as f64));
        }
        rows.push(SimRow {
            shape: shape.label(),
            tasks: g.len(),
            machine: SIM_MACHINE.to_string(),
            sim_ns_per_task: per_policy,
            rss_kib_per_task: kib_per_task(base, peak.stop(), n),
        });
    }
    Ok(rows)
}

/// The resident set size before a row: memory the earlier rows freed is handed back to the
/// kernel first (glibc keeps it otherwise, and the row would reuse it unseen).
fn resident_before() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live
    // allocation.
    unsafe {
        libc::malloc_trim(0);
    }
    resident_bytes()
}

/// The highest resident set size seen by a thread that samples it every 5 ms (rarely
/// enough to stay out of the measured times on two cores) until stopped.
struct Peak {
    stop: std::sync::Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Option<u64>>,
}

impl Peak {
    fn start() -> Peak {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = resident_bytes();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                peak = peak.max(resident_bytes());
            }
            peak
        });
        Peak { stop, sampler }
    }

    fn stop(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        // A final sample: the last run may have ended between two.
        self.sampler.join().ok().flatten().max(resident_bytes())
    }
}

fn kib_per_task(base: Option<u64>, peak: Option<u64>, n: usize) -> Option<f64> {
    Some(peak?.saturating_sub(base?) as f64 / 1024.0 / n.max(1) as f64)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// How [`run_on_rayon`] expresses a shape.
pub fn rayon_method(shape: &Shape) -> &'static str {
    match shape {
        Shape::Independent(_) => "scope + spawn per task",
        Shape::Chain(_) => "each task spawns the next",
        Shape::BinaryTree(_) => "recursive join",
        Shape::File { .. } => "DAG on scope + atomic counters",
    }
}

/// Runs the shape once on rayon, the way a rayon user would write it (`g` is the shape's
/// graph, used for the general DAG case).
pub fn run_on_rayon(pool: &rayon::ThreadPool, shape: &Shape, g: &Graph) {
    match *shape {
        Shape::Independent(n) => pool.scope(|s| {
            for i in 0..n {
                s.spawn(move |_| {
                    std::hint::black_box(i);
                });
            }
        }),
        Shape::Chain(n) => pool.scope(|s| chain_step(s, n)),
        Shape::BinaryTree(depth) => pool.install(|| tree(depth)),
        Shape::File { .. } => Csr::of(g).run_on(pool),
    }
}

/// Median time of `reps` rayon runs after a warm-up.
fn rayon_baseline(pool: &rayon::ThreadPool, shape: &Shape, g: &Graph, reps: usize) -> (&'static str, Duration) {
    run_on_rayon(pool, shape, g);
    let times = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            run_on_rayon(pool, shape, g);
            t.elapsed()
        })
        .collect();
    (rayon_method(shape), median(times))
}

fn chain_step<'s>(s: &rayon::Scope<'s>, left: usize) {
    if left > 0 {
        s.spawn(move |s| {
            std::hint::black_box(left);
            chain_step(s, left - 1);
        });
    }
}

fn tree(depth: u32) {
    std::hint::black_box(depth);
    if depth > 1 {
        rayon::join(|| tree(depth - 1), || tree(depth - 1));
    }
}

/// The rayon baseline for a general DAG: atomic counters over hexec's successor lists.
struct Csr(Successors);

impl Csr {
    fn of(g: &Graph) -> Csr {
        Csr(Successors::of(g))
    }

    fn run_on(&self, pool: &rayon::ThreadPool) {
        let deps: Vec<AtomicU32> = self.0.indegree.iter().map(|&d| AtomicU32::new(d)).collect();
        pool.scope(|s| {
            for t in 0..self.0.indegree.len() as u32 {
                if self.0.indegree[t as usize] == 0 {
                    let deps = &deps;
                    s.spawn(move |s| self.task(s, deps, t));
                }
            }
        });
    }

    fn task<'s>(&'s self, s: &rayon::Scope<'s>, deps: &'s [AtomicU32], t: u32) {
        std::hint::black_box(t);
        for &c in self.0.of_task(t) {
            if deps[c as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                s.spawn(move |s| self.task(s, deps, c));
            }
        }
    }
}

/// Formats rows as a Markdown table.
pub fn markdown(rows: &[OverheadRow]) -> String {
    let policies: Vec<String> = rows
        .first()
        .map(|r| {
            r.hexec_ns_per_task
                .iter()
                .map(|(p, _)| format!("hexec {p} µs/task"))
                .collect()
        })
        .unwrap_or_default();
    let mut s = super::policy_table_header(
        &[("shape", "---"), ("tasks", "---:"), ("edges", "---:")],
        &policies,
        &[
            ("rayon µs/task", "---:"),
            ("rayon as", "---"),
            ("build µs/task", "---:"),
            ("peak RSS KiB/task", "---:"),
        ],
    );
    for r in rows {
        s.push_str(&format!("| {} | {} | {} |", r.shape, r.tasks, r.edges));
        for (_, ns) in &r.hexec_ns_per_task {
            s.push_str(&format!(" {:.3} |", ns / 1e3));
        }
        s.push_str(&format!(
            " {:.3} | {} | {:.3} | {} |\n",
            r.rayon_ns_per_task / 1e3,
            r.rayon_method,
            r.build_ns_per_task / 1e3,
            kib(r.rss_kib_per_task)
        ));
    }
    s
}

fn kib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |k| format!("{k:.2}"))
}

/// Formats `sim` rows as a Markdown table.
pub fn sim_markdown(rows: &[SimRow]) -> String {
    let policies: Vec<String> = rows
        .first()
        .map(|r| {
            r.sim_ns_per_task
                .iter()
                .map(|(p, _)| format!("sim {p} µs/task"))
                .collect()
        })
        .unwrap_or_default();
    let mut s = super::policy_table_header(
        &[("sim shape", "---"), ("tasks", "---:"), ("machine", "---")],
        &policies,
        &[("peak RSS KiB/task", "---:")],
    );
    for r in rows {
        s.push_str(&format!("| {} | {} | `{}` |", r.shape, r.tasks, r.machine));
        for (_, ns) in &r.sim_ns_per_task {
            s.push_str(&format!(" {:.3} |", ns / 1e3));
        }
        s.push_str(&format!(" {} |\n", kib(r.rss_kib_per_task)));
    }
    s
}
