//! Workers that come and go: [`Runtime::retire`](super::Runtime::retire) and
//! [`Runtime::restore`](super::Runtime::restore) (Dask users' "downscaling that loses data").
//!
//! Retiring worker `w`:
//! 1. refuses, naming them, when submitted tasks (queued, or in the running batch of tasks or
//!    graph) could run only on `w` and retired workers — unless forced, in which case they
//!    fail when they reach `w`, saying it is retired;
//! 2. marks `w` `RETIRING`: compiling leaves it out of every eligibility set that has another
//!    worker (so nothing new is placed there), a running run's loop on `w` sees the mark at
//!    its next task (or within a park timeout when idle), finishes what it runs — a GPU worker
//!    its batch in flight — and from then on passes what reaches it to compatible workers,
//!    and no input is prefetched to it;
//! 3. waits (bounded) until `w` has left its last task — or until no run holds the worker
//!    threads — and marks it `RETIRED`;
//! 4. for a GPU: brings home every datum whose only valid copy is there, then drops all its
//!    copies and pooled buffers, so the device's memory is released; nothing is recomputed.
//!
//! Invariants: a worker's state goes `ACTIVE → RETIRING → RETIRED` and back to `ACTIVE` only
//! through `restore`; a GPU's copies are dropped only after its worker has left its last task.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::worker::{ACTIVE, RETIRED, RETIRING};
use super::Engine;
use crate::memory::Transfers;
use crate::sync::MutexExt;
use crate::topology::WorkerId;

/// How long [`Runtime::retire`](super::Runtime::retire) waits for the worker to leave its
/// last task when the options do not say.
pub const DEFAULT_RETIRE_WAIT: Duration = Duration::from_secs(60);

/// How to retire a worker.
#[derive(Clone, Debug)]
pub struct RetireOptions {
    /// Retire even when submitted tasks may run only there: they fail, saying so.
    pub force: bool,
    /// How long to wait for the worker to leave its last task.
    pub wait: Duration,
}

impl Default for RetireOptions {
    fn default() -> Self {
        RetireOptions {
            force: false,
            wait: DEFAULT_RETIRE_WAIT,
        }
    }
}

/// What retiring a worker did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetireReport {
    /// The worker.
    pub worker: String,
    /// From the call to the worker's leaving its last task.
    pub waited_s: f64,
    /// From the call to the device's memory being released (the same as `waited_s` for a
    /// CPU worker).
    pub released_after_s: f64,
    /// Data whose only valid copy was on the GPU, brought home.
    pub data_copied: usize,
    /// Their bytes.
    pub bytes_copied: u64,
    /// The GPU's memory released: data copies and pooled buffers.
    pub bytes_released: u64,
    /// Submitted tasks that only this worker (and retired ones) could run, failed by `force`.
    pub stranded_tasks: Vec<String>,
}

/// Why a worker could not be retired or restored.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetireError {
    /// No worker has that name.
    #[error("no worker is named '{name}' (workers: {known})")]
    UnknownWorker {
        /// The name given.
        name: String,
        /// The machine's workers.
        known: String,
    },
    /// Submitted tasks could run nowhere else.
    #[error("cannot retire {worker}: submitted task(s) {} may run only there (RetireOptions::force fails them instead)", quoted(.tasks))]
    SoleWorker {
        /// The worker.
        worker: String,
        /// The tasks (the first few, then a count).
        tasks: Vec<String>,
    },
    /// The worker did not leave its task in time; it is still retiring, and stops taking
    /// tasks once that task ends.
    #[error("{worker} did not leave its running task within {waited:?}; it is retiring and takes no new task")]
    Timeout {
        /// The worker.
        worker: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// A datum could not be brought home from the GPU (it keeps its copy there).
    #[error("could not bring '{datum}' home from {worker}: {message}")]
    CopyHome {
        /// The worker.
        worker: String,
        /// The datum.
        datum: String,
        /// Why.
        message: String,
    },
    /// A lost GPU cannot come back.
    #[error("{worker} cannot be restored: its device is lost ({reason})")]
    Lost {
        /// The worker.
        worker: String,
        /// The device's loss.
        reason: String,
    },
}

impl Engine {
    /// The workers retired or retiring.
    pub(crate) fn retired(&self) -> Vec<WorkerId> {
        self.retiring
            .iter()
            .enumerate()
            .filter(|(_, s)| s.load(std::sync::atomic::Ordering::Acquire) != ACTIVE)
            .map(|(i, _)| WorkerId(i as u32))
            .collect()
    }

    pub(crate) fn worker_named(&self, name: &str) -> Result<WorkerId, RetireError> {
        self.machine
            .worker_by_name(name)
            .map(|w| w.id)
            .ok_or_else(|| RetireError::UnknownWorker {
                name: crate::limits::escape_controls(name).into_owned(),
                known: self
                    .machine
                    .workers
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Steps 2 to 4 of the module's procedure (the caller checked step 1).
    pub(crate) fn retire_worker(
        &self,
        w: WorkerId,
        opts: &RetireOptions,
        stranded: Vec<String>,
    ) -> Result<RetireReport, RetireError> {
        use std::sync::atomic::Ordering;
        let name = self.machine.workers[w.index()].name.clone();
        let start = Instant::now();
        // One retire or restore of this worker at a time: a restore never lands between the
        // wait and the evacuation, nor is undone by them.
        let mut evacuated = self.retire_locks[w.index()].locked();
        let state = &self.retiring[w.index()];
        if state.load(Ordering::Acquire) == RETIRED && *evacuated {
            return Ok(RetireReport {
                worker: name,
                ..RetireReport::default()
            });
        }
        // (Already RETIRED but not evacuated: an earlier call timed out and the worker left
        // since; the evacuation below is still owed.)
        let _ = state.compare_exchange(ACTIVE, RETIRING, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(worker = %name, "retiring");
        // Left its last task, or no run holds the threads (then none can start meanwhile).
        loop {
            if state.load(Ordering::Acquire) == RETIRED {
                break;
            }
            if let Some(_turn) = self.pool.try_turn() {
                state.store(RETIRED, Ordering::Release);
                break;
            }
            if start.elapsed() >= opts.wait {
                return Err(RetireError::Timeout {
                    worker: name,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let waited_s = start.elapsed().as_secs_f64();
        let mut report = RetireReport {
            worker: name.clone(),
            waited_s,
            released_after_s: waited_s,
            stranded_tasks: stranded,
            ..RetireReport::default()
        };
        if let Some(g) = self.gpu_of_worker[w.index()] {
            let transfers = Transfers::new(self.gpus.len());
            let node = crate::memory::Node::Gpu(g as u16);
            let before = self.budgets.node(node).used.load(Ordering::Acquire);
            for cell in self.store.all() {
                let copied = cell
                    .evacuate_gpu(g, &self.gpus, &transfers)
                    .map_err(|message| RetireError::CopyHome {
                        worker: name.clone(),
                        datum: cell.name.clone(),
                        message,
                    })?;
                if copied > 0 {
                    report.data_copied += 1;
                    report.bytes_copied += copied;
                }
            }
            let pooled = self.gpus[g].release_pooled();
            report.bytes_released =
                before.saturating_sub(self.budgets.node(node).used.load(Ordering::Acquire)) + pooled;
            report.released_after_s = start.elapsed().as_secs_f64();
        }
        *evacuated = true;
        tracing::info!(worker = %name, copied = report.bytes_copied, released = report.bytes_released, "retired");
        Ok(report)
    }

    /// Brings a retired worker back for the next runs and submissions.
    pub(crate) fn restore_worker(&self, w: WorkerId) -> Result<(), RetireError> {
        if let Some(g) = self.gpu_of_worker[w.index()] {
            if let Some(reason) = self.gpus[g].lost() {
                return Err(RetireError::Lost {
                    worker: self.machine.workers[w.index()].name.clone(),
                    reason,
                });
            }
        }
        let mut evacuated = self.retire_locks[w.index()].locked();
        self.retiring[w.index()].store(ACTIVE, std::sync::atomic::Ordering::Release);
        *evacuated = false;
        Ok(())
    }
}

/// Task names for a message: each quoted, except the trailing count.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            if n.starts_with("and ") && n.ends_with(" more") {
                n.clone()
            } else {
                format!("'{n}'")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps the first names of a long list, then a count.
pub(crate) fn first_names(mut names: Vec<String>) -> Vec<String> {
    const SHOWN: usize = 8;
    if names.len() > SHOWN {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        names.push(format!("and {more} more"));
    }
    names
}
