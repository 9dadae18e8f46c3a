//! `eager`: shared ready queues, one per eligibility set and priority band. A worker takes
//! the first task, highest band first, from the queues of the sets it belongs to. No deques,
//! no stealing: the baseline that StarPU's `eager` is.

use super::{place_unpreferred, take_queued, Pick, Plan, Policy, ReadyQueues};
use crate::topology::WorkerId;

/// The eager policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

impl Policy for Eager {
    fn name(&self) -> &'static str {
        "eager"
    }

    fn place<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, task: u32, _releasing: Option<WorkerId>) {
        place_unpreferred(plan, q, task);
    }

    fn next<Q: ReadyQueues>(&self, plan: &Plan, q: &mut Q, worker: WorkerId) -> Option<Pick> {
        take_queued(plan, q, worker, false).map(|task| Pick {
            task,
            stolen_from: None,
        })
    }
}
