//! Waiting for work: spin, then park under the sleep protocol (`sleep.rs`) until a task
//! turns up, a retirement is asked for, or the run is over.

use super::*;

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Spins, then parks, until a task turns up (`Some`) or the run is done (`None`).
    /// With `may_copy`, a straggler found while idle is returned as a copy to run.
    pub(super) fn wait_for_work(&mut self, may_copy: bool) -> Option<Work> {
        let (policy, run, me) = (self.policy, self.run, self.me);
        let plan = &run.compiled.plan;
        let idle_since = Instant::now();
        let backoff = Backoff::new();
        let found = loop {
            if run.end.is_done() {
                break None;
            }
            if !run.dead[me.index()].load(Ordering::Acquire) && run.retire_requested(me) {
                break Some(Work::Retire);
            }
            if let Some(p) = policy.next(plan, &mut self.q, me) {
                break Some(Work::Task(p));
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            // Idle with nothing to take: near the end of the graph, or of a narrow phase of it.
            if let (true, Some(spec)) = (may_copy, &run.speculation) {
                if let Some(task) = spec.pick(run, me) {
                    break Some(Work::Copy(task));
                }
            }
            run.queues.sleep.announce(me);
            if let Some(p) = policy.next(plan, &mut self.q, me) {
                run.queues.sleep.cancel(me);
                break Some(Work::Task(p));
            }
            if run.end.is_done() {
                run.queues.sleep.cancel(me);
                break None;
            }
            run.queues.sleep.park(me);
            backoff.reset();
        };
        self.stats.idle += idle_since.elapsed();
        found
    }
}
