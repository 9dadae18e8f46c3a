//! The worker loops — a CPU worker takes a task, runs its kernel and releases its successors;
//! a GPU worker stages batches of tasks on its device — with what they share: completing,
//! failing and retrying a task, passing work on from a lost worker, waiting for work, and
//! recovering the data a lost GPU took (lineage replay under a write pause).
//!
//! Here: the run's shared state (`RunState`), a worker's own (`WorkerLoop`: its queues, its
//! statistics, its immediate successor) and completing a task. One job per file beside it:
//! `cpu.rs` (the CPU loop and running a kernel), `gpu.rs` (the GPU loop and batch staging),
//! `failure.rs` (failed attempts and retries), `forward.rs` (lost and retired workers passing
//! work on), `idle.rs` (waiting for work), `operands.rs` (pinning, saving and restoring a
//! CPU task's operands), `recovery.rs` (lost-GPU recovery by lineage replay).
//!
//! Hot-path rules: no allocation per task (operand and ready-list buffers are reused), one
//! atomic decrement per successor edge and one per task for termination, tracing spans that
//! cost a branch when tracing is off, and the *immediate successor* shortcut: of the tasks a
//! completion makes ready, the highest-priority one this worker may run is run next without
//! touching a queue.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use hexec_kernels::{Access, CpuContext, ElemType, RawOperand};

use super::cores::CoreGate;
use super::data::{DataCell, PrepError};
use super::faults::Site;
use super::queues::{LocalQueues, SharedQueues};
use super::speculate::{CopyOutcome, OnFailure, SavedOperands, Settled};
use super::watchdog::{DONE, READY, RUNNING, WAITING_FOR_MEMORY};
use crate::gpu::{BatchItem, GpuDevice, GpuOperand, GpuSpan, InFlight, MAX_BATCH};
use crate::graph::Graph;
use crate::memory::{Node, Transfers};
use crate::sched::compile::CompiledGraph;
use crate::sched::{Pick, Policy};
use crate::sync::MutexExt;
use crate::topology::WorkerId;
use crate::trace::{even_share, GpuTimeline, TaskFailure, TraceEvent};

mod cpu;
mod failure;
mod forward;
mod gpu;
mod idle;
mod operands;
mod recovery;

use cpu::*;
use failure::*;
use operands::*;
use recovery::*;

pub(crate) use cpu::{call_cpu_kernel, run_worker};
pub(crate) use gpu::run_gpu_worker;
pub(crate) use recovery::RECOVERY_NONE;

/// A datum bound for this run: its size and type (`None` for size-only data).
#[derive(Clone, Copy)]
pub(crate) struct BoundDatum {
    pub bytes: usize,
    pub elem: Option<ElemType>,
}

/// State shared by the workers of one run.
pub(crate) struct RunState<'a> {
    pub graph: &'a Graph,
    pub compiled: &'a CompiledGraph,
    pub bound: &'a [BoundDatum],
    /// Store cells of the graph's data (`None` for size-only data), by graph-local index.
    pub cells: &'a [Option<std::sync::Arc<DataCell>>],
    pub gpus: &'a [std::sync::Arc<GpuDevice>],
    /// Per worker: the index of its GPU, for GPU workers.
    pub gpu_of_worker: &'a [Option<usize>],
    /// Times measured in this run for kernels the model had no time for (planning policies
    /// on machines with GPUs).
    pub learned: Option<&'a super::costs::LearnedCosts>,
    pub transfers: Transfers,
    pub queues: &'a SharedQueues,
    /// Present when some task requests more than one core.
    pub core_gate: Option<CoreGate>,
    pub worker_names: &'a [String],
    /// Per worker: its NUMA node.
    pub worker_numa: Vec<usize>,
    pub deps: Vec<AtomicU32>,
    pub poisoned: Vec<AtomicBool>,
    /// Tasks left, and whether the run is over or was stopped.
    pub end: super::end::RunEnd,
    pub failures: Mutex<Vec<TaskFailure>>,
    /// The report's warnings (GPU-to-CPU fallbacks).
    pub warnings: Mutex<Vec<String>>,
    pub start: Instant,
    pub record_trace: bool,
    /// Tasks whose inputs were copied to their GPU when they were placed.
    pub prefetched: std::sync::atomic::AtomicU64,
    /// Time every kernel for the performance model.
    pub calibrate: bool,
    /// Memory budgets of the nodes.
    pub budgets: &'a super::budget::Budgets,
    /// Hold back data-producing tasks on GPUs whose memory is nearly full.
    pub backpressure: bool,
    /// Per datum: accesses by tasks not yet finished, for temporaries (empty when the graph
    /// has none). The task that takes it to zero frees the temporary.
    pub temp_uses: Vec<AtomicU32>,
    /// Whether host pins are counted (a host limit, or temporaries): else unpinning is skipped.
    pub counted_pins: bool,
    /// Data-producing roots held back under memory limits (backpressure).
    pub roots: Option<crate::sched::RootGate>,
    /// Retries of a failed task.
    pub retries: u32,
    /// Whether panics are tried again (else only a kernel's own `retry_panics` does).
    pub retry_panics: bool,
    /// Per task: its failed attempts so far.
    pub attempts: Vec<AtomicU32>,
    /// Every failed attempt: (task, worker, error).
    pub attempt_log: Mutex<Vec<(u32, String, String)>>,
    /// Failed attempts that were tried again.
    pub retried: std::sync::atomic::AtomicU64,
    /// Faults to inject, if any.
    pub faults: Option<&'a super::faults::FaultPlan>,
    /// Per GPU: when to lose it (fault injection).
    pub device_losses: Vec<Option<Duration>>,
    /// Go on past a task's final failure (else stop starting tasks).
    pub keep_going: bool,
    /// Where each task is (for the stall report).
    pub phases: super::watchdog::Phases,
    /// Per worker: lost (its GPU, or itself by injection); it runs nothing more.
    pub dead: Vec<AtomicBool>,
    /// Per worker: when to lose it (fault injection).
    pub worker_losses: Vec<Option<Duration>>,
    /// What produced the data written on GPUs, to recompute them after a device loss.
    pub lineage: super::lineage::Lineage,
    /// Per GPU: handling of its loss in this run (copies forgotten, data recomputed):
    /// [`RECOVERY_NONE`], [`RECOVERY_RUNNING`] or [`RECOVERY_DONE`].
    pub recovery: Vec<std::sync::atomic::AtomicU8>,
    /// The stall report, when the watchdog stopped the run.
    pub stalled: Mutex<Option<String>>,
    /// Speculative re-execution of stragglers, when on for this run.
    pub speculation: Option<super::speculate::Speculation>,
    /// Writes pause while lost data are recomputed.
    pub pause: super::pause::WritePause,
    /// Per task, when the run's tasks may be cancelled one by one (the submission flow's
    /// handles): [`CANCEL_NONE`], [`CANCEL_REQUESTED`] or [`CANCEL_DROPPED`].
    pub task_cancel: Option<&'a [AtomicU8]>,
    /// Per worker: [`ACTIVE`], [`RETIRING`] or [`RETIRED`] (the runtime's, read by every run).
    pub retiring: &'a [AtomicU8],
}

/// The worker takes tasks.
pub(crate) const ACTIVE: u8 = 0;

/// `Runtime::retire` asked the worker to stop taking tasks.
pub(crate) const RETIRING: u8 = 1;

/// The worker has left its last task (a GPU worker: its last batch) and only passes tasks on.
pub(crate) const RETIRED: u8 = 2;

/// The failure of a task whose kernel returned early after its cancellation (the flow reports
/// it as cancelled).
pub(crate) const CANCELLED_WHILE_RUNNING: &str = "cancelled while running";

/// No cancellation asked for the task.
pub(crate) const CANCEL_NONE: u8 = 0;

/// Cancellation asked: not started, the task is dropped; running, its kernel sees
/// `cancelled()`.
pub(crate) const CANCEL_REQUESTED: u8 = 1;

/// The task was dropped before it started (a worker reached it after the request).
pub(crate) const CANCEL_DROPPED: u8 = 2;
/// The task completed: too late to cancel it.
pub(crate) const CANCEL_TOO_LATE: u8 = 3;

impl RunState<'_> {
    /// Whether `task` is not to run: a task it depends on did not complete, or it was
    /// cancelled before it started (which this marks as dropped).
    #[inline]
    pub fn skips(&self, task: u32) -> bool {
        self.poisoned[task as usize].load(Ordering::Relaxed)
            || self.task_cancel.is_some_and(|c| {
                let c = &c[task as usize];
                c.load(Ordering::Acquire) == CANCEL_DROPPED
                    || c.compare_exchange(CANCEL_REQUESTED, CANCEL_DROPPED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            })
    }

    /// Whether worker `w` was asked to retire (or has).
    #[inline]
    pub fn retire_requested(&self, w: WorkerId) -> bool {
        self.retiring[w.index()].load(Ordering::Acquire) != ACTIVE
    }

    /// Whether cancellation of `task` was asked for (it may be running).
    #[inline]
    pub fn task_cancelled(&self, task: u32) -> bool {
        self.task_cancel.is_some_and(|c| {
            matches!(
                c[task as usize].load(Ordering::Acquire),
                CANCEL_REQUESTED | CANCEL_DROPPED
            )
        })
    }

    /// Copies what `producer` (finished) wrote that `consumer` (not ready yet) reads to the
    /// memory of `w`, where `consumer` will run: an early prefetch. Sound while `consumer`'s
    /// other inputs are still being written: only `producer`'s outputs are copied, and none of
    /// them is written again before `consumer` has read it (a later writer depends on
    /// `consumer`). Never to a CPU, nor to a GPU being retired; free room only.
    pub fn prefetch_output(&self, producer: u32, consumer: u32, w: WorkerId) {
        if let Some(g) = self.prefetch_target(w) {
            self.copy_to_gpu(consumer, g, self.graph.handed_over(producer, consumer));
        }
    }

    /// Copies the inputs of `task` to GPU `g` ahead of time. Failures are ignored here: the
    /// task meets them again, and reports them, when it runs.
    pub fn prefetch_inputs(&self, task: u32, g: usize) {
        let rec = &self.graph.tasks[task as usize];
        let reads = self.graph.accesses[rec.accesses.range()]
            .iter()
            .filter(|(_, a)| a.reads())
            .map(|&(d, _)| d);
        if self.copy_to_gpu(task, g, reads) {
            self.prefetched.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The GPU a copy ahead of `w`'s task goes to: `w`'s, unless `w` is a CPU or a GPU being
    /// retired (its copies are being brought home).
    pub fn prefetch_target(&self, w: WorkerId) -> Option<usize> {
        self.gpu_of_worker[w.index()].filter(|_| !self.retire_requested(w))
    }

    /// Copies `data` (read by `task`) to GPU `g` when `task` may run there and will run:
    /// whether every copy was made. A prefetch uses free room only, never evicts ("no room"
    /// is one of the failures ignored).
    fn copy_to_gpu(&self, task: u32, g: usize, data: impl Iterator<Item = u32>) -> bool {
        let rec = &self.graph.tasks[task as usize];
        let kernel = &self.graph.kernels[rec.kernel as usize];
        if !kernel.has_gpu() || self.poisoned[task as usize].load(Ordering::Relaxed) || self.task_cancelled(task) {
            return false;
        }
        for d in data {
            if let Some(cell) = &self.cells[d as usize] {
                if let Err(e) = cell.ensure_gpu(g, true, false, self.gpus, &self.transfers) {
                    tracing::debug!(task, error = %e, "prefetch failed");
                    return false;
                }
            }
        }
        true
    }
}

/// What one worker did.
#[derive(Default)]
pub(crate) struct WorkerStats {
    pub tasks: u64,
    pub completed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub steals: u64,
    pub idle: Duration,
    pub wall: Duration,
    /// GPU kernel time from timestamp queries (GPU workers on devices that have them).
    pub kernel_s: f64,
    /// Measured (task, seconds) for the performance model, when calibrating.
    pub samples: Vec<(u32, f64)>,
    pub events: Vec<TraceEvent>,
    /// GPU workers, when tracing: kernel spans on the GPU clock, dated when the worker ends.
    pub gpu_timeline: GpuTimeline,
}

struct TaskLabel<'a>(&'a Graph, u32);

impl std::fmt::Display for TaskLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.task_name(self.1 as usize))
    }
}

/// One worker's loop: its policy, the run, its queues and the state its steps share.
struct WorkerLoop<'w, 'r, 'q, P> {
    policy: &'w P,
    run: &'w RunState<'r>,
    q: LocalQueues<'q>,
    me: WorkerId,
    stats: WorkerStats,
    /// Tasks made ready by the last completion (a buffer reused for every completion).
    ready: Vec<u32>,
    /// The next task to run, taken without going through a queue (the immediate successor).
    slot: Option<u32>,
    /// When this worker's loop started.
    began: Instant,
    /// The policy's [`Policy::follows_fused_chains`], read once.
    follows_chains: bool,
}

impl<'w, 'r, 'q, P: Policy> WorkerLoop<'w, 'r, 'q, P> {
    fn new(policy: &'w P, run: &'w RunState<'r>, q: LocalQueues<'q>, me: WorkerId) -> Self {
        run.queues.sleep.register(me);
        WorkerLoop {
            policy,
            run,
            q,
            me,
            began: Instant::now(),
            follows_chains: policy.follows_fused_chains(),
            stats: WorkerStats::default(),
            ready: Vec::new(),
            slot: None,
        }
    }

    fn finish(mut self) -> WorkerStats {
        // From this worker's own start: the run's setup before the workers start (planning,
        // placing the roots, their prefetches) is nobody's busy time.
        self.stats.wall = self.began.elapsed();
        std::mem::take(&mut self.stats.gpu_timeline).apply(&mut self.stats.events);
        self.stats
    }
}

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Releases the successors of a finished task: poisons them if it failed, keeps the
    /// highest-priority one this worker may run as its next task (`slot`), places the others,
    /// and ends the run when this was the last task.
    fn complete(&mut self, task: u32, ok: bool) {
        let (policy, run, me, follows_chains) = (self.policy, self.run, self.me, self.follows_chains);
        let (q, ready, slot) = (&mut self.q, &mut self.ready, &mut self.slot);
        let plan = &run.compiled.plan;
        run.phases.set(task, DONE);
        if let (true, Some(flags)) = (ok, run.task_cancel) {
            // A cancellation asked while it ran, which its kernel did not see, comes too late.
            flags[task as usize].store(CANCEL_TOO_LATE, Ordering::Release);
        }
        if !run.temp_uses.is_empty() {
            free_dead_temps(run, task);
        }
        if run.budgets.spillable() {
            // Progress: host copies spilled before now may come back without a ping-pong.
            run.budgets.node(Node::Host).completions.fetch_add(1, Ordering::AcqRel);
        }
        ready.clear();
        for &s in run.compiled.successors(task) {
            if !ok {
                // Published by the AcqRel decrement below, before `s` can become ready.
                run.poisoned[s as usize].store(true, Ordering::Relaxed);
            }
            if run.deps[s as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                run.phases.set(s, READY);
                ready.push(s);
            }
        }
        if !ready.is_empty() {
            let best = if slot.is_none() {
                policy.pick_immediate(plan, task, ready, me, follows_chains, |s| {
                    run.graph.tasks[s as usize].priority
                })
            } else {
                None
            };
            if let Some(b) = best {
                *slot = Some(ready.swap_remove(b));
            }
            for &s in ready.iter() {
                policy.place(plan, q, s, Some(me));
            }
        }
        if ok && policy.copies_ahead() {
            // Early copies after the ready successors are placed, so that those wait for no
            // copy; only to successors still waiting for other inputs (a ready one had its
            // inputs copied when it was placed).
            for &s in run.compiled.successors(task) {
                if let Some(w) = policy.expected_worker(s) {
                    if run.deps[s as usize].load(Ordering::Acquire) > 0 {
                        run.prefetch_output(task, s, w);
                    }
                }
            }
        }
        // After the successors, so that consumers are queued before the producers let in now.
        if let Some(gate) = &run.roots {
            gate.finished(task);
            gate.release(run.budgets.any_nearly_full(), |r| policy.place(plan, q, r, None));
        }
        run.end.task_finished(&run.queues.sleep);
    }
}

/// Frees the temporaries whose last use was `task` (finished, failed or skipped: either way
/// it will not touch them again). Its pins were released before it completed.
fn free_dead_temps(run: &RunState<'_>, task: u32) {
    let rec = &run.graph.tasks[task as usize];
    for &(d, _) in &run.graph.accesses[rec.accesses.range()] {
        let left = &run.temp_uses[d as usize];
        // Non-temporaries start at u32::MAX and are never counted down.
        if left.load(Ordering::Relaxed) != u32::MAX && left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(cell) = &run.cells[d as usize] {
                cell.discard();
            }
        }
    }
}

/// What became of one attempt of a task on a CPU worker.
enum Outcome {
    Completed,
    /// Not run: a task it depends on failed.
    Skipped,
    Failed(AttemptFailure),
    /// Ran, but a speculative copy finished first: the copy's result is the task's.
    Superseded,
}

/// What an idle worker found to do.
enum Work {
    Task(Pick),
    /// A copy of a straggler to run (speculation).
    Copy(u32),
    /// `Runtime::retire` asked this worker to stop taking tasks.
    Retire,
}

/// Stops the run: workers start nothing more and leave once their current work is done.
pub(crate) fn cancel(run: &RunState<'_>) {
    run.end.stop(&run.queues.sleep);
}

/// A worker counted in as a writer ([`super::pause`]) until dropped.
struct Writing<'r>(&'r super::pause::WritePause, WorkerId);

impl<'r> Writing<'r> {
    fn enter(run: &'r RunState<'_>, w: WorkerId) -> Self {
        run.pause.enter(w);
        Writing(&run.pause, w)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}
