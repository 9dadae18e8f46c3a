//! A worker that is lost or retired passes on what reaches it to a live worker that may run
//! it, and fails what no live worker may run.

use super::*;

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Stops taking tasks for `Runtime::retire`: this worker is dead to the run, says it has
    /// left (the retiring call waits for that), and passes on whatever reaches it.
    pub(super) fn retire(&mut self, carry: &mut Vec<u32>) {
        let (run, me) = (self.run, self.me);
        run.dead[me.index()].store(true, Ordering::Release);
        let _ = run.retiring[me.index()].compare_exchange(RETIRING, RETIRED, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(worker = %run.worker_names[me.index()], "retired: passing tasks on");
        self.forward_until_done(carry);
    }

    /// The loop of a lost worker: whatever reaches it goes to a live worker that may run it,
    /// without counting as a failed attempt; a task no live worker may run fails. One task per
    /// turn: completing one may hand this worker the next (`slot`).
    pub(super) fn forward_until_done(&mut self, carry: &mut Vec<u32>) {
        let plan = &self.run.compiled.plan;
        loop {
            let next = carry.pop().or_else(|| self.slot.take()).or_else(|| {
                self.policy
                    .next(plan, &mut self.q, self.me)
                    .map(|p| p.task)
                    .or_else(|| match self.wait_for_work(false) {
                        Some(Work::Task(p)) => Some(p.task),
                        Some(Work::Copy(_)) => unreachable!("a lost worker runs no copies"),
                        Some(Work::Retire) => unreachable!("a lost worker is not asked to retire"),
                        None => None,
                    })
            });
            match next {
                Some(task) => self.forward_from_lost(task),
                None => return,
            }
        }
    }

    /// A task reached a lost worker (its GPU lost, or the worker itself): sends it to a live
    /// worker that may run it, or fails it when there is none.
    pub(super) fn forward_from_lost(&mut self, task: u32) {
        let (run, me) = (self.run, self.me);
        if run.skips(task) {
            self.stats.tasks += 1;
            self.stats.skipped += 1;
            self.complete(task, false);
            return;
        }
        match retry_worker(run, task, me, false) {
            Some(next) => {
                run.phases.set(task, READY);
                self.q.push_retry(next, run.compiled.plan.band(task), task);
            }
            None => {
                let why = match run.gpu_of_worker[me.index()] {
                    _ if run.retire_requested(me) => format!("worker {} is retired", run.worker_names[me.index()]),
                    Some(g) => format!("gpu{g} was lost ({})", run.gpus[g].lost().unwrap_or_default()),
                    None => format!("worker {} was lost", run.worker_names[me.index()]),
                };
                let message = format!("{why} and no other worker may run this task");
                self.fail_attempt(task, AttemptFailure::fatal(message));
            }
        }
    }
}
