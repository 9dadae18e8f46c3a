//! What a runtime has done since it was built, over every run, task batch and graph: tasks
//! and busy time per worker, bytes copied between memory nodes. A snapshot is cheap (one lock,
//! one small copy); two snapshots subtract ([`RuntimeStats::since`]) to describe the work in
//! between, as `hexec demo` does.

use serde::Serialize;

use crate::trace::RunReport;

/// One worker's totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WorkerTotals {
    /// The worker's name (`cpu0`, `gpu0`).
    pub name: String,
    /// Its class's name.
    pub class: String,
    /// Tasks it ran (successfully or not).
    pub tasks: u64,
    /// Seconds not spent idle.
    pub busy_s: f64,
}

/// A runtime's totals (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RuntimeStats {
    /// Runs: each task batch of the submission flow, each graph.
    pub runs: u64,
    /// Tasks that ran to success.
    pub completed: u64,
    /// Tasks whose kernel failed for good.
    pub failed: u64,
    /// Bytes copied between memory nodes (the host, GPUs).
    pub bytes_transferred: u64,
    /// Per worker, in the machine's order.
    pub workers: Vec<WorkerTotals>,
}

impl RuntimeStats {
    /// Adds one run's report.
    pub(crate) fn add(&mut self, r: &RunReport) {
        self.runs += 1;
        self.completed += r.completed as u64;
        self.failed += r.failed as u64;
        self.bytes_transferred += r.bytes_transferred;
        for w in &r.workers {
            match self.workers.iter_mut().find(|t| t.name == w.name) {
                Some(t) => {
                    t.tasks += w.tasks;
                    t.busy_s += w.busy_s;
                }
                None => self.workers.push(WorkerTotals {
                    name: w.name.clone(),
                    class: w.class.clone(),
                    tasks: w.tasks,
                    busy_s: w.busy_s,
                }),
            }
        }
    }

    /// What was done between `earlier` (a snapshot of the same runtime) and this one.
    pub fn since(&self, earlier: &RuntimeStats) -> RuntimeStats {
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let before = earlier.workers.iter().find(|e| e.name == w.name);
                WorkerTotals {
                    name: w.name.clone(),
                    class: w.class.clone(),
                    tasks: w.tasks - before.map_or(0, |b| b.tasks),
                    busy_s: w.busy_s - before.map_or(0.0, |b| b.busy_s),
                }
            })
            .collect();
        RuntimeStats {
            runs: self.runs - earlier.runs,
            completed: self.completed - earlier.completed,
            failed: self.failed - earlier.failed,
            bytes_transferred: self.bytes_transferred - earlier.bytes_transferred,
            workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::WorkerReport;

    fn report(tasks: &[(&str, u64, f64)], bytes: u64) -> RunReport {
        RunReport {
            completed: tasks.iter().map(|t| t.1 as usize).sum(),
            bytes_transferred: bytes,
            workers: tasks
                .iter()
                .map(|&(name, tasks, busy_s)| WorkerReport {
                    name: name.into(),
                    class: "cpu".into(),
                    tasks,
                    busy_s,
                    steals: 0,
                    kernel_s: None,
                })
                .collect(),
            ..RunReport::default()
        }
    }

    #[test]
    fn totals_add_up_per_worker_and_subtract() {
        let mut s = RuntimeStats::default();
        s.add(&report(&[("cpu0", 3, 1.0), ("cpu1", 2, 0.5)], 10));
        let snap = s.clone();
        s.add(&report(&[("cpu1", 4, 2.0), ("gpu0", 1, 0.25)], 5));
        assert_eq!((s.runs, s.completed, s.bytes_transferred), (2, 10, 15));
        let d = s.since(&snap);
        assert_eq!((d.runs, d.completed, d.bytes_transferred), (1, 5, 5));
        let by = |n: &str| d.workers.iter().find(|w| w.name == n).map(|w| (w.tasks, w.busy_s));
        assert_eq!(by("cpu0"), Some((0, 0.0)));
        assert_eq!(by("cpu1"), Some((4, 2.0)));
        assert_eq!(by("gpu0"), Some((1, 0.25)));
    }
}
