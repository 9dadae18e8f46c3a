//! A failed attempt: retried where another attempt can pass (on another worker when there is
//! one), else the task fails for good and its dependents are skipped.

use super::*;

/// Why an attempt failed, and whether another attempt could do better.
pub(super) struct AttemptFailure {
    pub(super) message: String,
    /// False when a retry cannot help: a deterministic error, inputs left half-overwritten,
    /// no live worker left.
    pub(super) retriable: bool,
    /// Only a CPU may try again: the GPU implementation itself failed (its code, a check of
    /// its operands), which another GPU would repeat.
    pub(super) cpu_only: bool,
}

impl From<String> for AttemptFailure {
    /// A failure of the circumstances (a fault, a lost device, no memory): retriable.
    fn from(message: String) -> Self {
        AttemptFailure {
            message,
            retriable: true,
            cpu_only: false,
        }
    }
}

impl AttemptFailure {
    /// A failure no retry can help (a deterministic error, no live worker left): final.
    pub(super) fn fatal(message: String) -> Self {
        AttemptFailure {
            message,
            retriable: false,
            cpu_only: false,
        }
    }
}

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// An attempt of `task` on this worker failed: tries it again on another worker that may
    /// run it, while retries remain; else the failure is final (recorded with every attempt,
    /// its dependents skipped) and, unless the run keeps going, the run stops starting tasks.
    pub(super) fn fail_attempt(&mut self, task: u32, failure: AttemptFailure) {
        let (run, me) = (self.run, self.me);
        let AttemptFailure {
            message,
            retriable,
            cpu_only,
        } = failure;
        let graph = run.graph;
        let failed = run.attempts[task as usize].fetch_add(1, Ordering::AcqRel) + 1;
        let worker = run.worker_names[me.index()].clone();
        run.attempt_log.locked().push((task, worker.clone(), message.clone()));
        if let Some(spec) = &run.speculation {
            match spec.original_failed(run, task) {
                OnFailure::Alone => {}
                // The copy finished first: this failure no longer matters.
                OnFailure::Lost => return,
                OnFailure::LeftToCopy => {
                    // No retry while the copy runs: if it fails too, it retries the task.
                    tracing::info!(task = %TaskLabel(graph, task), %worker, %message, "task attempt failed; its copy runs on");
                    return;
                }
            }
        }
        // An attempt may have failed on data a lost GPU took: recover it (or wait for the worker
        // recovering it) before retrying, so that the retry finds the data recomputed.
        for (g, dev) in run.gpus.iter().enumerate() {
            if dev.lost().is_some() {
                recover_from_lost_gpu(run, g, me, true);
            }
        }
        if retriable && failed <= run.retries && !run.end.is_stopped() {
            if let Some(next) = retry_worker(run, task, me, cpu_only) {
                run.retried.fetch_add(1, Ordering::Relaxed);
                if run.gpu_of_worker[me.index()].is_some() && run.gpu_of_worker[next.index()].is_none() {
                    // A GPU task run on a CPU is slower than asked for: say so in the report.
                    run.warnings.locked().push(format!(
                        "task '{}' (kernel {}) failed on {worker} and runs on {} instead: {message}",
                        graph.task_name(task as usize),
                        graph.task_kernel(task as usize),
                        run.worker_names[next.index()]
                    ));
                }
                tracing::info!(task = %TaskLabel(graph, task), %worker, %message, attempt = failed, "task attempt failed; retrying");
                run.phases.set(task, READY);
                self.q.push_retry(next, run.compiled.plan.band(task), task);
                return;
            }
        }
        let kernel = graph.task_kernel(task as usize);
        self.stats.failed += 1;
        tracing::warn!(task = %TaskLabel(graph, task), kernel, %message, "task failed");
        let attempts = run
            .attempt_log
            .locked()
            .iter()
            .filter(|(t, _, _)| *t == task)
            .map(|(_, worker, message)| crate::trace::AttemptReport {
                worker: worker.clone(),
                message: message.clone(),
            })
            .collect();
        let failure = TaskFailure {
            task: graph.task_name(task as usize),
            index: task as usize,
            kernel: kernel.to_string(),
            worker,
            message,
            attempts,
        };
        run.failures.locked().push(failure);
        self.complete(task, false);
        if !run.keep_going {
            cancel(run);
        }
    }
}

/// The worker to retry a failed task on: the next one after `me` in its eligibility set that
/// is still alive (another worker when it has several; the sets list CPUs before GPUs, so a
/// GPU's failure goes to a CPU when one may run it). `None` when every worker that may run
/// it is a lost GPU.
pub(super) fn retry_worker(run: &RunState<'_>, task: u32, me: WorkerId, cpu_only: bool) -> Option<WorkerId> {
    let plan = &run.compiled.plan;
    let workers = &plan.set(plan.task_set(task)).workers;
    let start = workers.iter().position(|&w| w == me).map_or(0, |i| i + 1);
    let alive = |w: WorkerId| {
        let refused = cpu_only && run.gpu_of_worker[w.index()].is_some();
        !refused
            && !run.dead[w.index()].load(Ordering::Acquire)
            && run.gpu_of_worker[w.index()].is_none_or(|g| run.gpus[g].lost().is_none())
    };
    (0..workers.len())
        .map(|k| workers[(start + k) % workers.len()])
        .find(|&w| alive(w))
}
