//! Stall detection: a run in which no task completes (nor fails an attempt) for the stall
//! timeout while work remains is stopped, with a report of what every unfinished task waits
//! for — a kernel still running, room in memory, a worker, or the tasks it depends on.
//!
//! Workers record each task's phase (one relaxed store per change) when the run has a stall
//! timeout; the watchdog thread only reads them. Without one, recording is a single branch.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::worker::RunState;

/// Not ready: some task it depends on has not finished.
pub(crate) const PENDING: u8 = 0;
/// Ready, in a queue, waiting for a worker.
pub(crate) const READY: u8 = 1;
/// Running on `runner`.
pub(crate) const RUNNING: u8 = 2;
/// Taken by `runner`, waiting for room in memory.
pub(crate) const WAITING_FOR_MEMORY: u8 = 3;
/// Completed, failed or skipped.
pub(crate) const DONE: u8 = 4;

/// Where each task is, for the report.
pub(crate) struct Phases {
    phase: Vec<AtomicU8>,
    runner: Vec<AtomicU16>,
}

impl Phases {
    /// Phases of `tasks` tasks, recorded only when `enabled` (a stall timeout is set).
    pub fn new(tasks: usize, enabled: bool) -> Self {
        let n = if enabled { tasks } else { 0 };
        Phases {
            phase: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            runner: (0..n).map(|_| AtomicU16::new(u16::MAX)).collect(),
        }
    }

    pub fn set(&self, task: u32, phase: u8) {
        if let Some(p) = self.phase.get(task as usize) {
            p.store(phase, Ordering::Relaxed);
        }
    }

    /// `task` is taken by `worker`, in `phase` (RUNNING or WAITING_FOR_MEMORY).
    pub fn start(&self, task: u32, phase: u8, worker: usize) {
        if let Some(r) = self.runner.get(task as usize) {
            r.store(worker as u16, Ordering::Relaxed);
            self.set(task, phase);
        }
    }
}

/// Watches a run until it is done; when nothing progresses for `timeout`, writes the report
/// into `run.stall` and returns it (the caller stops the run).
pub(crate) fn watch(run: &RunState<'_>, timeout: Duration) -> Option<String> {
    let tick = (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut last = (usize::MAX, u64::MAX);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(tick);
        if run.end.is_done() {
            return None;
        }
        // Progress: a task finished (`remaining` fell) or an attempt failed (`retried` rose).
        let p = (run.end.remaining(), run.retried.load(Ordering::Relaxed));
        if p != last {
            (last, since) = (p, Instant::now());
            continue;
        }
        if since.elapsed() >= timeout {
            return Some(report(run, since.elapsed()));
        }
    }
}

/// What every unfinished task waits for (the first few of each kind by name, then counts).
fn report(run: &RunState<'_>, idle: Duration) -> String {
    const SHOWN: usize = 8;
    let graph = run.graph;
    let ph = &run.phases;
    let name = |t: usize| format!("'{}'", graph.task_name(t));
    let (mut running, mut memory, mut ready, mut pending) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in 0..graph.len() {
        match ph.phase[t].load(Ordering::Relaxed) {
            RUNNING | WAITING_FOR_MEMORY => {
                let w = ph.runner[t].load(Ordering::Relaxed) as usize;
                let worker = run.worker_names.get(w).map_or("?", String::as_str);
                if ph.phase[t].load(Ordering::Relaxed) == RUNNING {
                    running.push(format!(
                        "{} (kernel '{}') is running on {worker}",
                        name(t),
                        graph.task_kernel(t)
                    ));
                } else {
                    memory.push(format!("{} waits on {worker} for room in memory", name(t)));
                }
            }
            READY => ready.push(t),
            PENDING => pending.push(t),
            _ => {}
        }
    }
    let mut lines = vec![format!(
        "no task finished for {:.1} s while {} of {} remain: {} running, {} waiting for memory, {} ready for a worker, {} waiting for other tasks",
        idle.as_secs_f64(),
        running.len() + memory.len() + ready.len() + pending.len(),
        graph.len(),
        running.len(),
        memory.len(),
        ready.len(),
        pending.len()
    )];
    lines.extend(running.into_iter().take(SHOWN));
    lines.extend(memory.into_iter().take(SHOWN));
    let plan = &run.compiled.plan;
    for &t in ready.iter().take(SHOWN) {
        let workers: Vec<&str> = plan
            .set(plan.task_set(t as u32))
            .workers
            .iter()
            .map(|w| run.worker_names[w.index()].as_str())
            .collect();
        lines.push(format!(
            "{} is ready and waits for a worker among {}",
            name(t),
            workers.join(", ")
        ));
    }
    for &t in pending.iter().take(SHOWN) {
        let waits: Vec<String> = graph
            .edges
            .iter()
            .filter(|&&(from, to)| to as usize == t && ph.phase[from as usize].load(Ordering::Relaxed) != DONE)
            .take(4)
            .map(|&(from, _)| name(from as usize))
            .collect();
        lines.push(format!("{} waits for {}", name(t), waits.join(", ")));
    }
    lines.join("\n  ")
}
