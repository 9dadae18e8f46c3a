//! `ws`: work stealing that respects compatibility.
//!
//! A task made ready by a worker that may run it goes onto that worker's own deque (it is
//! hot in that core's caches); other ready tasks go to a mailbox or a shared queue as in
//! `eager`. An idle worker pops its own deque (newest first), then its mailbox and shared
//! queues (taking a batch into its deque), then steals the oldest task of a victim of its
//! own class, closest victim first. A stolen task the thief may not run (a restriction to a
//! named worker or feature) is placed again where an eligible worker will find it.

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::topology::WorkerId;

/// The work-stealing policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkStealing;

impl Policy for WorkStealing {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, releasing: Option<WorkerId>) {
        match releasing {
            Some(w) if plan.eligible(task, w) => q.push_local(w, task),
            _ => place_unpreferred(plan, q, task),
        }
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        if let Some(task) = q.pop_local(worker) {
            return Some(Pick {
                task,
                stolen_from: None,
            });
        }
        if let Some(task) = take_queued(plan, q, worker, true) {
            return Some(Pick {
                task,
                stolen_from: None,
            });
        }
        for &victim in plan.victims(worker) {
            while let Some(task) = q.steal(worker, victim) {
                if plan.eligible(task, worker) {
                    return Some(Pick {
                        task,
                        stolen_from: Some(victim),
                    });
                }
                place_unpreferred(plan, q, task);
            }
        }
        None
    }
}
