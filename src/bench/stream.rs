//! The live runtime's costs: empty tasks submitted one by one (submission plus execution,
//! from one and from two threads) beside StarPU's `tasks_overhead` in the same run, the
//! latency of one task on an idle runtime (blocking wait and `.await`), and the resident
//! memory of a long stream (it must stay flat: the cap bounds what is in flight).

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{median, quantile, resident_bytes, Skipped};
use crate::gpu::GpuRequest;
use crate::kernels::builtin;
use crate::runtime::Runtime;
use crate::sched::PolicyKind;

/// What to measure.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub cpus: Option<usize>,
    pub tasks: usize,
    pub reps: usize,
    pub policies: Vec<PolicyKind>,
    /// Tasks of the long stream whose memory is sampled (0: none).
    pub long_stream: usize,
}

/// Streaming cost of one policy.
#[derive(Clone, Debug, Serialize)]
pub struct StreamRow {
    pub policy: String,
    pub threads: usize,
    pub tasks: usize,
    /// Wall time from the first `submit` to the end of `wait_all`, per task.
    pub ns_per_task: f64,
}

/// StarPU's `tasks_overhead` in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct StarpuRow {
    pub sched: String,
    pub tasks: usize,
    pub submit_ns_per_task: f64,
    pub total_ns_per_task: f64,
}

/// Every figure of the benchmark.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamTable {
    pub rows: Vec<StreamRow>,
    pub starpu: Vec<StarpuRow>,
    /// One empty task on an idle runtime, submit to result: median and 99th percentile, µs.
    pub latency_wait_us: Option<(f64, f64)>,
    pub latency_await_us: Option<(f64, f64)>,
    /// (tasks submitted so far, resident MiB) along the long stream.
    pub rss_curve: Vec<(usize, f64)>,
    pub skipped: Vec<Skipped>,
}

fn runtime(cfg: &StreamConfig, p: PolicyKind) -> Result<Runtime, String> {
    let b = Runtime::builder().policy(p).gpus(GpuRequest::None);
    match cfg.cpus {
        Some(n) => b.cpus(n).build(),
        None => b.build(),
    }
    .map_err(|e| e.to_string())
}

/// Submits `tasks` empty tasks from `threads` threads and waits for them: seconds.
fn stream(rt: &Runtime, tasks: usize, threads: usize) -> Result<Duration, String> {
    let noop = builtin::noop();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (rt, noop) = (rt, &noop);
                let mine = tasks / threads + usize::from(i < tasks % threads);
                s.spawn(move || -> Result<(), String> {
                    for _ in 0..mine {
                        rt.task(noop).submit().map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a submitting thread panicked".to_string())?)
    })?;
    rt.wait_all().map_err(|e| e.to_string())?;
    Ok(t.elapsed())
}

/// Wakes a parked thread: the smallest executor, for the `.await` latency.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// StarPU's `tasks_overhead` example, where Debian's `starpu-examples` put it.
pub const STARPU_TASKS_OVERHEAD: &str = "/usr/lib/x86_64-linux-gnu/starpu/examples/tasks_overhead";

fn starpu(sched: &str, tasks: usize, cpus: Option<usize>) -> Result<StarpuRow, String> {
    let mut cmd = std::process::Command::new(STARPU_TASKS_OVERHEAD);
    cmd.args(["-i", &tasks.to_string()])
        .env("STARPU_SCHED", sched)
        .env("STARPU_SILENT", "1")
        .env("STARPU_NCUDA", "0")
        .env("STARPU_NOPENCL", "0");
    if let Some(n) = cpus {
        cmd.env("STARPU_NCPU", n.to_string());
    }
    let out = cmd.output().map_err(|e| format!("{STARPU_TASKS_OVERHEAD}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let field = |label: &str| -> Result<f64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|rest| rest.trim().trim_end_matches("usecs").trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no '{label}' line in tasks_overhead's output: {}", text.trim()))
    };
    Ok(StarpuRow {
        sched: sched.to_string(),
        tasks,
        submit_ns_per_task: field("Per task submit:")? * 1e3,
        total_ns_per_task: field("Per task:")? * 1e3,
    })
}

/// Measures everything in [`StreamTable`].
pub fn measure(cfg: &StreamConfig) -> Result<StreamTable, String> {
    let mut table = StreamTable::default();
    for &p in &cfg.policies {
        let rt = runtime(cfg, p)?;
        stream(&rt, cfg.tasks.min(10_000), 1)?; // warm-up
        for threads in [1, 2] {
            let times: Vec<f64> = (0..cfg.reps.max(1))
                .map(|_| stream(&rt, cfg.tasks, threads).map(|d| d.as_nanos() as f64 / cfg.tasks as f64))
                .collect::<Result<_, _>>()?;
            table.rows.push(StreamRow {
                policy: p.name().to_string(),
                threads,
                tasks: cfg.tasks,
                ns_per_task: median(times),
            });
        }
    }
    if std::path::Path::new(STARPU_TASKS_OVERHEAD).exists() {
        for sched in ["eager", "ws"] {
            let rows: Vec<StarpuRow> = (0..cfg.reps.max(1))
                .map(|_| starpu(sched, cfg.tasks, cfg.cpus))
                .collect::<Result<_, _>>()?;
            let pick = median(rows.iter().map(|r| r.total_ns_per_task).collect());
            table
                .starpu
                .extend(rows.into_iter().find(|r| r.total_ns_per_task == pick));
        }
    } else {
        table.skipped.push(Skipped {
            row: "StarPU tasks_overhead".into(),
            why: format!("{STARPU_TASKS_OVERHEAD} is missing (apt-get install starpu-examples)"),
        });
    }
    // Latency on an idle runtime (the default policy).
    let rt = runtime(cfg, PolicyKind::Locality)?;
    let noop = builtin::noop();
    let mut wait = Vec::new();
    let mut awaited = Vec::new();
    for i in 0..2000 {
        // Idle: the previous task's batch has ended and the workers are parked.
        std::thread::sleep(Duration::from_micros(200));
        let t = Instant::now();
        if i % 2 == 0 {
            rt.task(&noop)
                .submit()
                .map_err(|e| e.to_string())?
                .wait()
                .map_err(|e| e.to_string())?;
            wait.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            let h = rt.task(&noop).submit().map_err(|e| e.to_string())?;
            block_on(h).map_err(|e| e.to_string())?;
            awaited.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    table.latency_wait_us = Some((median(wait.clone()), quantile(wait, 0.99)));
    table.latency_await_us = Some((median(awaited.clone()), quantile(awaited, 0.99)));
    if cfg.long_stream > 0 {
        let rt = runtime(cfg, PolicyKind::Eager)?;
        let step = (cfg.long_stream / 10).max(1);
        let mut submitted = 0;
        table
            .rss_curve
            .extend(resident_bytes().map(|b| b as f64 / (1024.0 * 1024.0)).map(|m| (0, m)));
        while submitted < cfg.long_stream {
            let n = step.min(cfg.long_stream - submitted);
            for _ in 0..n {
                rt.task(&noop).submit().map_err(|e| e.to_string())?;
            }
            submitted += n;
            table.rss_curve.extend(
                resident_bytes()
                    .map(|b| b as f64 / (1024.0 * 1024.0))
                    .map(|m| (submitted, m)),
            );
        }
        rt.wait_all().map_err(|e| e.to_string())?;
    }
    Ok(table)
}

/// The table as markdown.
pub fn markdown(t: &StreamTable) -> String {
    let mut out = String::from("| submitter | threads | tasks | µs/task (submit + execute) |\n|---|---:|---:|---:|\n");
    for r in &t.rows {
        out += &format!(
            "| hexec {} | {} | {} | {:.3} |\n",
            r.policy,
            r.threads,
            r.tasks,
            r.ns_per_task / 1e3
        );
    }
    for r in &t.starpu {
        out += &format!(
            "| StarPU {} (`tasks_overhead`; submit alone {:.3}) | 1 | {} | {:.3} |\n",
            r.sched,
            r.submit_ns_per_task / 1e3,
            r.tasks,
            r.total_ns_per_task / 1e3
        );
    }
    if let (Some(w), Some(a)) = (t.latency_wait_us, t.latency_await_us) {
        out += &format!(
            "\none empty task on an idle runtime, submit to result: `wait()` median {:.1} µs (p99 {:.1}), `.await` median {:.1} µs (p99 {:.1})\n",
            w.0, w.1, a.0, a.1
        );
    }
    if !t.rss_curve.is_empty() {
        out += "\nresident memory along the stream (tasks submitted: MiB): ";
        out += &t
            .rss_curve
            .iter()
            .map(|(n, m)| format!("{n}: {m:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        out += "\n";
    }
    for s in &t.skipped {
        out += &format!("{s}\n");
    }
    out
}
