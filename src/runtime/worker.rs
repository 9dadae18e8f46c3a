//! The worker loops — a CPU worker takes a task, runs its kernel and releases its successors;
//! a GPU worker stages batches of tasks on its device — with what they share: completing,
//! failing and retrying a task, passing work on from a lost worker, waiting for work, and
//! recovering the data a lost GPU took (lineage replay under a write pause).
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

/// No cancellation asked for the task.
pub(crate) const CANCEL_NONE: u8 = 0;
/// Cancellation asked: not started, the task is dropped; running, its kernel sees
/// `cancelled()`.
pub(crate) const CANCEL_REQUESTED: u8 = 1;
/// The task was dropped before it started (a worker reached it after the request).
pub(crate) const CANCEL_DROPPED: u8 = 2;

impl RunState<'_> {
    /// Whether `task` is not to run: a task it depends on did not complete, or it was
    /// cancelled before it started (which this marks as dropped).
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
    pub fn retire_requested(&self, w: WorkerId) -> bool {
        self.retiring[w.index()].load(Ordering::Acquire) != ACTIVE
    }

    /// Whether cancellation of `task` was asked for (it may be running).
    pub fn task_cancelled(&self, task: u32) -> bool {
        self.task_cancel
            .is_some_and(|c| c[task as usize].load(Ordering::Acquire) != CANCEL_NONE)
    }

    /// Copies the inputs of `task` to GPU `g` ahead of time. Failures are ignored here: the
    /// task meets them again, and reports them, when it runs.
    pub fn prefetch_inputs(&self, task: u32, g: usize) {
        let rec = &self.graph.tasks[task as usize];
        let kernel = &self.graph.kernels[rec.kernel as usize];
        if !kernel.has_gpu() || self.poisoned[task as usize].load(Ordering::Relaxed) || self.task_cancelled(task) {
            return;
        }
        for &(d, access) in &self.graph.accesses[rec.accesses.range()] {
            if let (true, Some(cell)) = (access.reads(), &self.cells[d as usize]) {
                if let Err(e) = cell.ensure_gpu(g, true, false, self.gpus, &self.transfers) {
                    // Includes "no room": a prefetch uses free room only, never evicts.
                    tracing::debug!(task, error = %e, "prefetch failed");
                    return;
                }
            }
        }
        self.prefetched.fetch_add(1, Ordering::Relaxed);
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

/// Runs tasks until the graph is done.
pub(crate) fn run_worker<P: Policy>(policy: &P, run: &RunState<'_>, q: LocalQueues<'_>, me: WorkerId) -> WorkerStats {
    let plan = &run.compiled.plan;
    let mut w = WorkerLoop::new(policy, run, q, me);
    let mut operands: Vec<RawOperand<'_>> = Vec::new();
    // When to lose this worker (fault injection), read once: it is checked every task.
    let lose_at = run.worker_losses[me.index()];
    loop {
        if run.end.is_stopped() {
            break;
        }
        if run.retire_requested(me) {
            w.retire(&mut Vec::new());
            break;
        }
        if let Some(at) = lose_at {
            if run.start.elapsed() >= at {
                // Injected loss: this worker runs nothing more; what reaches it goes on.
                run.dead[me.index()].store(true, Ordering::Release);
                tracing::warn!(worker = %run.worker_names[me.index()], "injected fault: losing the worker");
                w.forward_until_done(&mut Vec::new());
                break;
            }
        }
        let task = match w.slot.take() {
            Some(t) => t,
            None => match policy
                .next(plan, &mut w.q, me)
                .map(Work::Task)
                .or_else(|| w.wait_for_work(run.speculation.is_some()))
            {
                Some(Work::Task(Pick { task, stolen_from })) => {
                    w.stats.steals += u64::from(stolen_from.is_some());
                    task
                }
                Some(Work::Copy(task)) => {
                    w.run_copy(task);
                    continue;
                }
                Some(Work::Retire) => {
                    w.retire(&mut Vec::new());
                    break;
                }
                None => break,
            },
        };
        run.phases.start(task, RUNNING, me.index());
        let cores = run.graph.tasks[task as usize].cores as usize;
        if let Some(gate) = &run.core_gate {
            gate.acquire(cores);
        }
        let outcome = execute(run, task, me, &mut operands, &mut w.stats);
        if let Some(gate) = &run.core_gate {
            gate.release(cores);
        }
        match outcome {
            Outcome::Completed => w.complete(task, true),
            Outcome::Skipped => w.complete(task, false),
            Outcome::Failed(failure) => w.fail_attempt(task, failure),
            // A copy won the race and completed the task.
            Outcome::Superseded => {}
        }
    }
    w.finish()
}

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Runs a copy of a straggler (speculation) and settles the task with it if it wins.
    fn run_copy(&mut self, task: u32) {
        let (run, me) = (self.run, self.me);
        let Some(spec) = &run.speculation else { return };
        // Its result is installed as the data: a write (counted out before a failure is handled).
        let writing = run.pause.enabled().then(|| Writing::enter(run, me));
        let outcome = super::speculate::run_copy(run, spec, task, me);
        drop(writing);
        match outcome {
            CopyOutcome::Won => {
                self.stats.tasks += 1;
                self.stats.completed += 1;
                self.complete(task, true);
            }
            CopyOutcome::FailedOrphan(message) => {
                self.stats.tasks += 1;
                self.fail_attempt(task, message.into());
            }
            CopyOutcome::Lost | CopyOutcome::Failed => {}
        }
    }

    /// Releases the successors of a finished task: poisons them if it failed, keeps the
    /// highest-priority one this worker may run as its next task (`slot`), places the others,
    /// and ends the run when this was the last task.
    fn complete(&mut self, task: u32, ok: bool) {
        let (policy, run, me) = (self.policy, self.run, self.me);
        let (q, ready, slot) = (&mut self.q, &mut self.ready, &mut self.slot);
        let plan = &run.compiled.plan;
        run.phases.set(task, DONE);
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
                policy.pick_immediate(plan, ready, me, |s| run.graph.tasks[s as usize].priority)
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

/// A batch staged on a GPU: its tasks, what became of each so far, and the submission.
struct StagedBatch {
    tasks: Vec<(u32, Staging)>,
    /// Data used by the batch, kept from eviction until it completes.
    pinned: Vec<std::sync::Arc<DataCell>>,
    in_flight: InFlight,
    started: Duration,
}

impl StagedBatch {
    /// Whether any of its tasks reached the GPU.
    fn submitted(&self) -> bool {
        self.tasks.iter().any(|(_, s)| matches!(s, Staging::Submitted(_)))
    }
}

enum Staging {
    /// Item `i` of the submitted batch.
    Submitted(usize),
    /// Not submitted: skipped (a dependency failed) or failed while staging.
    Skipped,
    Failed(String),
}

/// The loop of a GPU worker: take up to [`MAX_BATCH`] ready tasks, make their inputs valid on
/// the device, submit them together, and stage the next batch while this one runs.
pub(crate) fn run_gpu_worker<P: Policy>(
    policy: &P,
    run: &RunState<'_>,
    q: LocalQueues<'_>,
    me: WorkerId,
    g: usize,
) -> WorkerStats {
    let plan = &run.compiled.plan;
    let mut w = WorkerLoop::new(policy, run, q, me);
    let mut in_flight: Option<StagedBatch> = None;
    // Tasks taken but not yet staged, waiting for GPU memory in use to be released.
    let mut carry: Vec<u32> = Vec::new();
    loop {
        if let Some(at) = run.device_losses[g] {
            if run.start.elapsed() >= at && run.gpus[g].lost().is_none() {
                tracing::warn!(gpu = g, "injected fault: losing the device");
                run.gpus[g].destroy();
            }
        }
        if run.end.is_stopped() {
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
            break;
        }
        if run.retire_requested(me) {
            // Retired: the batch in flight finishes, then this worker only passes tasks on
            // (`Runtime::retire` brings the device's only copies home once it has left).
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
            w.retire(&mut carry);
            break;
        }
        if run.gpus[g].lost().is_some() {
            // The batch in flight fails (its tasks are retried elsewhere), the device's copies
            // are forgotten, and from now on this worker only passes tasks on.
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
            recover_from_lost_gpu(run, g, me, false);
            run.dead[me.index()].store(true, Ordering::Release);
            w.forward_until_done(&mut carry);
            break;
        }
        let mut batch: Vec<u32> = std::mem::take(&mut carry);
        let carried = batch.len();
        batch.extend(w.slot.take());
        while batch.len() < carried + MAX_BATCH {
            match policy.next(plan, &mut w.q, me) {
                Some(Pick { task, stolen_from }) => {
                    w.stats.steals += u64::from(stolen_from.is_some());
                    batch.push(task);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
                continue;
            }
            match w.wait_for_work(false) {
                Some(Work::Task(Pick { task, stolen_from })) => {
                    w.stats.steals += u64::from(stolen_from.is_some());
                    batch.push(task);
                }
                Some(Work::Copy(_)) => unreachable!("GPU workers run no copies"),
                Some(Work::Retire) => continue,
                None => break,
            }
        }
        // Backpressure: with this GPU's memory nearly full, tasks that only produce data wait
        // while tasks that consume data are ready, so that produced data are used before
        // they have to be evicted.
        let mut held = Vec::new();
        if run.backpressure && run.budgets.nearly_full(Node::Gpu(g as u16)) {
            let (producers, consumers): (Vec<u32>, Vec<u32>) = batch.iter().partition(|&&t| run.graph.only_produces(t));
            if !producers.is_empty() && !consumers.is_empty() {
                held = producers;
                batch = consumers;
            }
        }
        // After a ping-pong, one task at a time, alone on the GPU, until one completes. And a
        // batch in flight with nothing submitted (all deferred) releases nothing by running:
        // close it first, so that waiting for the batch in flight always means waiting for
        // work that frees memory.
        let serial = run.budgets.serial(Node::Gpu(g as u16));
        if serial || in_flight.as_ref().is_some_and(|b| !b.submitted()) {
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
        }
        if serial {
            held.extend(batch.drain(1..));
        }
        if run.pause.enabled() && !run.pause.try_enter(me) {
            // Writes are paused for a recovery: finish what is in flight (its count holds the
            // recovery up), wait, and stage these later.
            carry = batch;
            carry.extend(held);
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
            run.pause.wait_while_paused();
            continue;
        }
        let (staged, deferred) = stage_gpu_batch(run, me.index(), g, &batch, in_flight.is_some(), &mut w.stats);
        for &t in &deferred {
            run.phases.start(t, WAITING_FOR_MEMORY, me.index());
        }
        carry = deferred;
        carry.extend(held);
        if let Some(done) = in_flight.replace(staged) {
            w.finish_gpu_batch(g, done);
        }
    }
    w.finish()
}

/// Makes the batch's inputs valid on GPU `g` and submits it. When the GPU's memory is full
/// of data in use (this batch's, or the batch still running), the remaining tasks are
/// returned, to be staged again once that data is released: memory backpressure rather than a
/// failure. `can_wait` says whether a batch is still running (and so will release data).
fn stage_gpu_batch(
    run: &RunState<'_>,
    me: usize,
    g: usize,
    batch: &[u32],
    can_wait: bool,
    stats: &mut WorkerStats,
) -> (StagedBatch, Vec<u32>) {
    let graph = run.graph;
    let started = run.start.elapsed();
    let mut items = Vec::with_capacity(batch.len());
    let mut tasks = Vec::with_capacity(batch.len());
    let mut pinned = Vec::new();
    let mut deferred = Vec::new();
    // Mark what the batch reads, so that making room for one task does not evict the input of
    // another before it is staged.
    let nb = run.budgets.node(Node::Gpu(g as u16));
    let epoch = nb.stage_epoch.fetch_add(1, Ordering::Relaxed) + 1;
    for &task in batch {
        let rec = &graph.tasks[task as usize];
        for &(d, access) in &graph.accesses[rec.accesses.range()] {
            if let (true, Some(cell)) = (access.reads(), &run.cells[d as usize]) {
                cell.want(g, epoch);
            }
        }
    }
    for (i, &task) in batch.iter().enumerate() {
        if run.skips(task) {
            stats.tasks += 1;
            tasks.push((task, Staging::Skipped));
            continue;
        }
        let rec = &graph.tasks[task as usize];
        let kernel = &graph.kernels[rec.kernel as usize];
        let attempt = run.attempts[task as usize].load(Ordering::Acquire);
        if let Some(fault) = run
            .faults
            .and_then(|f| f.fails(Site::Gpu, task, attempt, kernel.name()))
        {
            stats.tasks += 1;
            tasks.push((task, Staging::Failed(fault)));
            continue;
        }
        // Pins taken for this task; given back at once if it is not submitted, so that a
        // deferred task holds no memory while it waits.
        let pinned_before = pinned.len();
        let staged = (|| {
            let gpu_impl = kernel
                .gpu_impl()
                .ok_or_else(|| PrepError::Failed(format!("kernel '{}' has no GPU implementation", kernel.name())))?;
            let mut ops = Vec::with_capacity(rec.accesses.len as usize);
            for &(d, access) in &graph.accesses[rec.accesses.range()] {
                let cell = run.cells[d as usize].as_ref().ok_or_else(|| {
                    PrepError::Failed(format!(
                        "operand {} has no storage (a size-only datum) and cannot go to a GPU",
                        graph.datum_label(d)
                    ))
                })?;
                cell.pin(g);
                pinned.push(cell.clone());
                let buffer = cell.ensure_gpu(g, access.reads(), true, run.gpus, &run.transfers)?;
                ops.push(GpuOperand {
                    buffer,
                    elements: cell.len as u64,
                    access,
                });
            }
            Ok(BatchItem {
                kernel: kernel.name(),
                gpu_impl,
                ops,
                params: &graph.params[rec.params.range()],
            })
        })();
        if staged.is_err() {
            for cell in pinned.drain(pinned_before..) {
                cell.unpin(g);
            }
        }
        match staged {
            Ok(item) => {
                stats.tasks += 1;
                run.phases.start(task, RUNNING, me);
                tasks.push((task, Staging::Submitted(items.len())));
                items.push(item);
            }
            Err(PrepError::NoRoom(_)) if can_wait || !items.is_empty() => {
                deferred.extend_from_slice(&batch[i..]);
                break;
            }
            // Host pins are held only by running CPU tasks and reads, which end: wait a little.
            Err(PrepError::HostBusy(_)) => {
                if items.is_empty() && !can_wait {
                    std::thread::sleep(Duration::from_micros(50));
                }
                deferred.extend_from_slice(&batch[i..]);
                break;
            }
            Err(e) => {
                stats.tasks += 1;
                tasks.push((task, Staging::Failed(e.to_string())));
            }
        }
    }
    let in_flight = run.gpus[g].submit_batch(&items);
    if let Some(spec) = &run.speculation {
        let submitted: Vec<u32> = tasks
            .iter()
            .filter(|(_, s)| matches!(s, Staging::Submitted(_)))
            .map(|&(t, _)| t)
            .collect();
        spec.gpu_batch_started(WorkerId(me as u32), &submitted, run.start.elapsed());
    }
    (
        StagedBatch {
            tasks,
            pinned,
            in_flight,
            started,
        },
        deferred,
    )
}

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Waits for a staged batch, records its outcomes, and completes its tasks.
    fn finish_gpu_batch(&mut self, g: usize, staged: StagedBatch) {
        let (run, me) = (self.run, self.me);
        let graph = run.graph;
        let finished = run.gpus[g].finish_batch(staged.in_flight);
        let items = finished.results.len();
        // The batch and its estimated slices' window, for the trace only.
        let traced = run.record_trace.then(|| {
            let first = finished
                .results
                .iter()
                .filter_map(|r| r.as_ref().ok().copied().flatten())
                .map(|s| s.start_ns)
                .min();
            let ns = |at: Instant| at.saturating_duration_since(run.start).as_nanos() as u64;
            self.stats
                .gpu_timeline
                .batch(ns(finished.submitted_at), ns(finished.done_at), first)
        });
        let mut results: Vec<Option<Result<Option<GpuSpan>, String>>> =
            finished.results.into_iter().map(Some).collect();
        if run.pause.enabled() {
            // Its writes are done: a recovery need not wait for the bookkeeping below.
            run.pause.leave(me);
        }
        staged.pinned.iter().for_each(|c| c.unpin(g));
        if let Some(spec) = &run.speculation {
            let done: Vec<u32> = staged.tasks.iter().map(|&(t, _)| t).collect();
            spec.gpu_batch_finished(me, &done);
        }
        // Progress on this GPU: copies evicted before now may come back without a ping-pong.
        let completions = &run.budgets.node(Node::Gpu(g as u16)).completions;
        completions.fetch_add(staged.tasks.len() as u64, Ordering::AcqRel);
        let ended = run.start.elapsed();
        let batch_len = staged.tasks.len().max(1);
        for (task, staging) in staged.tasks {
            let (outcome, item) = match staging {
                Staging::Skipped => {
                    self.stats.skipped += 1;
                    self.complete(task, false);
                    continue;
                }
                Staging::Failed(e) => (Err(e), None),
                Staging::Submitted(i) => (
                    results
                        .get_mut(i)
                        .and_then(Option::take)
                        .unwrap_or_else(|| Err("the batch lost a result".into())),
                    Some(i),
                ),
            };
            let ok = match outcome {
                Ok(span) => {
                    let kernel_s = span.map(GpuSpan::seconds);
                    if let Some(spec) = &run.speculation {
                        match spec.settle(run, task) {
                            Settled::Won { .. } => spec.publish(task),
                            Settled::Lost => {
                                // Its copy on a CPU finished first and completed the task.
                                spec.let_go(run, task);
                                continue;
                            }
                        }
                    }
                    // Logged before any replica is downloaded, which dates the host's copy after it.
                    run.lineage.gpu_task_done(graph, run.cells, task);
                    let rec = &graph.tasks[task as usize];
                    for &(d, access) in &graph.accesses[rec.accesses.range()] {
                        if let (true, Some(cell)) = (access.writes(), &run.cells[d as usize]) {
                            cell.gpu_written(g);
                            if cell.replicas_wanted() >= 2 {
                                // Replication: a host copy too, so that losing the GPU loses nothing.
                                if let Err(e) = cell.ensure_host(run.gpus, &run.transfers) {
                                    tracing::warn!(datum = %cell.name, error = %e, "could not replicate to the host");
                                }
                            }
                        }
                    }
                    if let Some(spec) = &run.speculation {
                        // Its share of the batch: what a task of its kernel takes, for spotting
                        // stragglers of kernels that mostly run on GPUs.
                        let share = (ended - staged.started) / batch_len as u32;
                        spec.observe(graph.tasks[task as usize].kernel, share);
                    }
                    self.stats.completed += 1;
                    self.stats.kernel_s += kernel_s.unwrap_or(0.0);
                    if run.calibrate {
                        // GPU time from timestamps, else this task's share of the batch.
                        let share = (ended - staged.started).as_secs_f64() / batch_len as f64;
                        self.stats.samples.push((task, kernel_s.unwrap_or(share)));
                    }
                    if let (Some((batch, window)), Some(i)) = (traced, item) {
                        // Measured spans are dated when the worker ends (`GpuTimeline`);
                        // until then the slice is its even share of the batch.
                        let (start_ns, end_ns) = even_share(window, i, items);
                        if let Some(s) = span {
                            self.stats
                                .gpu_timeline
                                .push(self.stats.events.len(), s.start_ns, s.end_ns);
                        }
                        self.stats.events.push(TraceEvent {
                            task,
                            start_ns,
                            end_ns,
                            gpu_ns: span.map(|s| s.end_ns - s.start_ns),
                            batch: Some(batch),
                        });
                    }
                    true
                }
                Err(message) => {
                    // A lost device or a full memory may not recur elsewhere; anything else
                    // (the shader, a check of its operands) is the GPU code's own and would
                    // fail on every GPU: only a CPU implementation may still run the task.
                    let circumstantial = item.is_none()
                        || run.gpus[g].lost().is_some()
                        || message.contains(crate::gpu::OUT_OF_GPU_MEMORY);
                    let failure = if circumstantial {
                        AttemptFailure::from(message)
                    } else {
                        AttemptFailure {
                            message,
                            retriable: graph.kernels[graph.tasks[task as usize].kernel as usize].has_cpu(),
                            cpu_only: true,
                        }
                    };
                    self.fail_attempt(task, failure);
                    continue;
                }
            };
            self.complete(task, ok);
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

/// Why an attempt failed, and whether another attempt could do better.
struct AttemptFailure {
    message: String,
    /// False when a retry cannot help: a deterministic error, inputs left half-overwritten,
    /// no live worker left.
    retriable: bool,
    /// Only a CPU may try again: the GPU implementation itself failed (its code, a check of
    /// its operands), which another GPU would repeat.
    cpu_only: bool,
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
    fn fatal(message: String) -> Self {
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
    fn fail_attempt(&mut self, task: u32, failure: AttemptFailure) {
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
fn retry_worker(run: &RunState<'_>, task: u32, me: WorkerId, cpu_only: bool) -> Option<WorkerId> {
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

/// Forgets the copies of lost GPU `g` and recomputes, on this thread's CPU, the data whose only
/// valid copy was there and whose lineage allows (`lineage`); tasks that need them meanwhile
/// wait, as for memory. What cannot be recomputed stays lost, and its readers say so.
/// Done once per run and GPU, by whichever worker notices the loss first (the GPU's own, or
/// one whose attempt failed on it); with `wait`, a worker that finds another one recovering
/// waits until it is done.
fn recover_from_lost_gpu(run: &RunState<'_>, g: usize, me: WorkerId, wait: bool) {
    let state = &run.recovery[g];
    if state
        .compare_exchange(RECOVERY_NONE, RECOVERY_RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // The recovering worker waits for nothing this one holds (its attempt is over).
        while wait && state.load(Ordering::Acquire) != RECOVERY_DONE {
            std::thread::sleep(Duration::from_micros(50));
        }
        return;
    }
    let candidates = run.lineage.written_on_gpus();
    for &d in &candidates {
        if let Some(cell) = &run.cells[d as usize] {
            cell.recovering.store(true, Ordering::Release);
        }
    }
    // No task writes anything while writes are replayed from the data they read.
    let paused = run.pause.enabled().then(|| run.pause.pause(me));
    let numa = run.worker_numa[me.index()];
    // A reader may have forgotten some copies already; what has no valid copy now is lost.
    run.cells.iter().flatten().for_each(|c| {
        c.forget_gpu(g);
    });
    let lost: Vec<u32> = (0..run.cells.len() as u32)
        .filter(|&d| run.cells[d as usize].as_ref().is_some_and(|c| c.is_lost()))
        .collect();
    let mut operands = Vec::new();
    let mut recomputed = 0;
    for &d in &lost {
        match recompute(run, d, numa, &mut operands, 0) {
            Ok(()) => recomputed += 1,
            Err(why) => tracing::warn!(datum = %run.graph.datum_label(d), %why, "lost with the device"),
        }
    }
    for &d in &candidates {
        if let Some(cell) = &run.cells[d as usize] {
            cell.recovering.store(false, Ordering::Release);
        }
    }
    drop(paused);
    tracing::warn!(
        gpu = g,
        lost = lost.len(),
        recomputed,
        "device lost: its tasks go to other workers"
    );
    state.store(RECOVERY_DONE, Ordering::Release);
}

/// No worker has handled the GPU's loss in this run.
pub(crate) const RECOVERY_NONE: u8 = 0;
/// A worker is forgetting the GPU's copies and recomputing what it can.
pub(crate) const RECOVERY_RUNNING: u8 = 1;
/// Done: what could be recomputed is valid again.
pub(crate) const RECOVERY_DONE: u8 = 2;

/// Makes datum `d` valid again by re-running its producer on the CPU, its lost inputs first.
fn recompute<'a>(
    run: &RunState<'a>,
    d: u32,
    numa: usize,
    operands: &mut Vec<RawOperand<'a>>,
    depth: usize,
) -> Result<(), String> {
    let Some(cell) = &run.cells[d as usize] else {
        return Err("a size-only datum".into());
    };
    if cell.has_valid_copy() {
        return Ok(());
    }
    if depth > 64 {
        return Err("its lineage is too deep".into());
    }
    let current = run.lineage.version(d);
    let recipe = run.lineage.recipe(d, cell)?;
    let graph = run.graph;
    for step in &recipe.steps {
        let rec = &graph.tasks[step.task as usize];
        let name = graph.task_name(step.task as usize);
        if !graph.kernels[rec.kernel as usize].has_cpu() {
            return Err(format!("its writer '{name}' has no CPU implementation"));
        }
        if graph.accesses[rec.accesses.range()]
            .iter()
            .filter(|(_, a)| a.writes())
            .count()
            != 1
        {
            // Re-running it would also overwrite its other outputs, which may have moved on.
            return Err(format!("its writer '{name}' also wrote other data"));
        }
        for &(e, version) in &step.inputs {
            if run.lineage.version(e) != version {
                return Err(format!(
                    "its writer '{name}' read {}, written again since",
                    graph.datum_label(e)
                ));
            }
            recompute(run, e, numa, operands, depth + 1)?;
        }
    }
    tracing::info!(datum = %graph.datum_label(d), steps = recipe.steps.len(), from_host = recipe.from_host, "recomputing from lineage");
    for step in &recipe.steps {
        execute_cpu(run, step.task, numa, operands, CpuRun::Rebuild(d)).map_err(|f| f.message)?;
        run.lineage.recomputed.fetch_add(1, Ordering::Relaxed);
    }
    // Whole again, on the host only.
    cell.host_written();
    run.lineage.restore(d, current, run.cells);
    Ok(())
}

impl<P: Policy> WorkerLoop<'_, '_, '_, P> {
    /// Stops taking tasks for `Runtime::retire`: this worker is dead to the run, says it has
    /// left (the retiring call waits for that), and passes on whatever reaches it.
    fn retire(&mut self, carry: &mut Vec<u32>) {
        let (run, me) = (self.run, self.me);
        run.dead[me.index()].store(true, Ordering::Release);
        let _ = run.retiring[me.index()].compare_exchange(RETIRING, RETIRED, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(worker = %run.worker_names[me.index()], "retired: passing tasks on");
        self.forward_until_done(carry);
    }

    /// The loop of a lost worker: whatever reaches it goes to a live worker that may run it,
    /// without counting as a failed attempt; a task no live worker may run fails. One task per
    /// turn: completing one may hand this worker the next (`slot`).
    fn forward_until_done(&mut self, carry: &mut Vec<u32>) {
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
    fn forward_from_lost(&mut self, task: u32) {
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

    /// Spins, then parks, until a task turns up (`Some`) or the run is done (`None`).
    /// With `may_copy`, a straggler found while idle is returned as a copy to run.
    fn wait_for_work(&mut self, may_copy: bool) -> Option<Work> {
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

/// Stops the run: workers start nothing more and leave once their current work is done.
pub(crate) fn cancel(run: &RunState<'_>) {
    run.end.stop(&run.queues.sleep);
}

/// Runs one task's CPU kernel; false if it failed or was skipped.
fn execute<'a>(
    run: &RunState<'a>,
    task: u32,
    me: WorkerId,
    operands: &mut Vec<RawOperand<'a>>,
    stats: &mut WorkerStats,
) -> Outcome {
    stats.tasks += 1;
    if run.skips(task) {
        stats.skipped += 1;
        return Outcome::Skipped;
    }
    let graph = run.graph;
    let _span =
        tracing::trace_span!("task", id = task, name = %TaskLabel(graph, task), kernel = graph.task_kernel(task as usize))
            .entered();
    let started = (run.record_trace || run.calibrate || run.speculation.is_some()).then(|| run.start.elapsed());
    if let (Some(spec), Some(s)) = (&run.speculation, started) {
        spec.cpu_running(me, Some(task), s);
    }
    let injected = run.faults.and_then(|f| {
        let attempt = run.attempts[task as usize].load(Ordering::Acquire);
        f.fails(Site::Cpu, task, attempt, graph.task_kernel(task as usize))
    });
    let outcome = match injected {
        Some(fault) => Err(fault.into()),
        None => execute_cpu(run, task, run.worker_numa[me.index()], operands, CpuRun::Attempt(me)),
    };
    if let (Some(spec), Some(s)) = (&run.speculation, started) {
        let now = run.start.elapsed();
        spec.cpu_running(me, None, now);
        if let Ok(true) = outcome {
            spec.observe(graph.tasks[task as usize].kernel, now - s);
        }
    }
    if let (true, Some(s), Ok(true)) = (run.calibrate, started, &outcome) {
        stats.samples.push((task, (run.start.elapsed() - s).as_secs_f64()));
    }
    if let (true, Some(s)) = (run.record_trace, started) {
        let end = run.start.elapsed();
        stats.events.push(TraceEvent {
            task,
            start_ns: s.as_nanos() as u64,
            end_ns: end.as_nanos() as u64,
            gpu_ns: None,
            batch: None,
        });
    }
    match outcome {
        Ok(true) => {
            stats.completed += 1;
            Outcome::Completed
        }
        Ok(false) => Outcome::Superseded,
        Err(failure) => Outcome::Failed(failure),
    }
}

/// Why a CPU kernel runs.
#[derive(Clone, Copy, Debug)]
enum CpuRun {
    /// An attempt of the task on this worker: it settles the task.
    Attempt(WorkerId),
    /// A recomputation from lineage that rebuilds this datum: it does not settle the task;
    /// the datum is used as its host buffer holds it (not fetched) and left invalid (its
    /// rebuild marks it valid once whole).
    Rebuild(u32),
}

/// Runs a task's CPU implementation over host copies (fetched from a GPU when stale).
/// `numa` is the worker's NUMA node (host buffers it brings into memory are charged there).
/// `Ok(false)`: it ran, but a speculative copy of the task finished first and its result
/// stands.
fn execute_cpu<'a>(
    run: &RunState<'a>,
    task: u32,
    numa: usize,
    operands: &mut Vec<RawOperand<'a>>,
    why: CpuRun,
) -> Result<bool, AttemptFailure> {
    let (attempt_on, replay) = match why {
        CpuRun::Attempt(w) => (Some(w), None),
        CpuRun::Rebuild(d) => (None, Some(d)),
    };
    let graph = run.graph;
    let rec = &graph.tasks[task as usize];
    let kernel = &graph.kernels[rec.kernel as usize];
    let accesses = &graph.accesses[rec.accesses.range()];
    // After a host ping-pong, one CPU task at a time until one completes.
    // (Not for a recomputation: the worker recovering holds off writers, which may hold this.)
    let _serial = (attempt_on.is_some() && run.counted_pins && run.budgets.serial(Node::Host))
        .then(|| run.budgets.host_serial.locked());
    if !accesses.is_empty() {
        pin_operands(run, numa, accesses, operands, replay)?;
    }
    // Counted in as a writer once its operands are pinned (pinning may wait for a recovery).
    let _writing = attempt_on
        .filter(|_| run.pause.enabled() && accesses.iter().any(|(_, a)| a.writes()))
        .map(|w| Writing::enter(run, w));
    // A failed attempt must leave its inputs as it found them, so that a retry computes the
    // same thing: save what it may both read and overwrite.
    let (saved, restorable, charged) = save_read_write_operands(run, numa, operands);
    // Speculation: a copy of this task starts from the saved values, and may finish first.
    let spec = run.speculation.as_ref().filter(|_| attempt_on.is_some());
    let published = match (spec, &saved) {
        (Some(spec), Some(saved)) => {
            spec.publish_saved(task, Some(saved.clone()));
            true
        }
        _ => false,
    };
    let stop = || spec.is_some_and(|s| s.settled(task)) || run.end.is_stopped() || run.task_cancelled(task);
    // Kernels hear of a stop only where one can come: a straggler's copy won, or the task
    // was cancelled through its handle.
    let listens = spec.is_some() || run.task_cancel.is_some();
    if let (Some(f), Some(w)) = (run.faults, attempt_on) {
        inject_slowdown(run, f, task, w, &stop);
    }
    let outcome = match kernel.cpu_impl() {
        None => Err(AttemptFailure::fatal(format!(
            "kernel '{}' has no CPU implementation",
            kernel.name()
        ))),
        Some(f) => match call_cpu_kernel(
            f,
            operands,
            &graph.params[rec.params.range()],
            rec.cores,
            listens.then_some(&stop as _),
        ) {
            // Told the run stopped, it may have returned half-done: undo it below. (Told a
            // copy won, its result is ignored anyway.)
            Ok(false) if run.end.is_stopped() => Err(AttemptFailure::from(
                "stopped: the run was cancelled".to_string(),
            )),
            Ok(false) if run.task_cancelled(task) => Err(AttemptFailure::fatal("cancelled while running".to_string())),
            Ok(_) => Ok(()),
            Err(KernelFailure { message, class }) => Err(match class {
                FailureClass::Transient => AttemptFailure::from(message),
                FailureClass::Deterministic => AttemptFailure::fatal(message),
                FailureClass::Panic if kernel.retries_panics() || run.retry_panics => AttemptFailure::from(message),
                FailureClass::Panic => AttemptFailure::fatal(format!(
                    "{message} (panics are not retried: Kernel::retry_panics, RuntimeBuilder::retry_panics or --retry-panics ask for it)"
                )),
            }),
        },
    };
    if let (Err(_), Some(saved)) = (&outcome, &saved) {
        restore_operands(saved, operands);
    }
    // Without saved inputs they may be half-overwritten: another attempt would compute garbage.
    let outcome = outcome.map_err(|f| match (restorable, f.retriable) {
        (false, true) => AttemptFailure::fatal(format!(
            "{} (not retried: no host room to save its read-write operands first)",
            f.message
        )),
        _ => f,
    });
    if let Some((bytes, node)) = charged {
        run.budgets.release_host(bytes, node);
    }
    if published {
        if let Some(spec) = spec {
            spec.publish_saved(task, None);
        }
    }
    operands.clear();
    // Settle the task: with a copy of it running, the first to finish wins.
    let won = match (spec, &outcome) {
        (Some(spec), Ok(())) => match spec.settle(run, task) {
            Settled::Won { .. } => {
                spec.publish(task);
                true
            }
            Settled::Lost => {
                // It wrote buffers the copy's results replaced: nothing of it is kept.
                unpin_operands(run, accesses);
                spec.let_go(run, task);
                return Ok(false);
            }
        },
        _ => true,
    };
    if outcome.is_ok() && !run.gpus.is_empty() {
        for &(d, access) in accesses {
            if let (true, Some(cell), false) = (access.writes(), &run.cells[d as usize], replay == Some(d)) {
                cell.host_written();
            }
        }
        run.lineage.cpu_task_done(graph, run.cells, task);
    }
    unpin_operands(run, accesses);
    outcome.map(|()| won)
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

/// Calls a CPU kernel over bound operands, catching a panic; `cancelled` is what the kernel
/// sees through `CpuContext::cancelled`. `Ok(false)`: it returned after being told it was
/// cancelled, so what it wrote may be partial. The operands are borrowed exclusively for the
/// call (`CpuContext::new` requires it): the context is the only view of them meanwhile.
#[inline]
pub(crate) fn call_cpu_kernel(
    f: &hexec_kernels::CpuFn,
    operands: &mut [RawOperand<'_>],
    params: &[f64],
    cores: u32,
    cancelled: Option<&(dyn Fn() -> bool + Sync)>,
) -> Result<bool, KernelFailure> {
    let mut ctx = CpuContext::new(operands, params, cores);
    if let Some(c) = cancelled {
        ctx = ctx.with_cancellation(c);
    }
    match catch_unwind(AssertUnwindSafe(|| f(&ctx))) {
        Ok(Ok(())) => Ok(!ctx.saw_cancellation()),
        Ok(Err(e)) => Err(KernelFailure {
            class: if e.is_transient() {
                FailureClass::Transient
            } else {
                FailureClass::Deterministic
            },
            message: e.to_string(),
        }),
        Err(panic) => Err(KernelFailure {
            message: format!("panicked: {}", hexec_kernels::panic_message(&*panic)),
            class: FailureClass::Panic,
        }),
    }
}

/// Why a kernel call failed.
pub(crate) struct KernelFailure {
    pub message: String,
    pub class: FailureClass,
}

/// Whether another attempt of a failed kernel may succeed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureClass {
    /// The kernel said so (`KernelError::Transient`): try again.
    Transient,
    /// Same inputs, same error (operand mismatches, plain messages): fail at once.
    Deterministic,
    /// A panic: tried again only when the kernel or the run asks for it.
    Panic,
}

/// Puts a failed attempt's read-write operands back as they were before it ran.
#[cold]
fn restore_operands(saved: &SavedOperands, operands: &[RawOperand<'_>]) {
    for (i, bytes) in saved.iter() {
        let o = &operands[*i];
        // SAFETY: the operand is pinned for this task, `len_bytes` long, and the kernel
        // has returned (or its panic was caught), so this is again the only view of it.
        unsafe { std::slice::from_raw_parts_mut(o.as_ptr(), o.len_bytes()) }.copy_from_slice(bytes);
    }
}

/// An injected straggler (`slow` fault): delays this attempt of `task` on worker `w`, ending
/// early once `stop` says its result is no longer wanted.
#[cold]
fn inject_slowdown(
    run: &RunState<'_>,
    faults: &super::faults::FaultPlan,
    task: u32,
    w: WorkerId,
    stop: &dyn Fn() -> bool,
) {
    let attempt = run.attempts[task as usize].load(Ordering::Acquire);
    let kernel = run.graph.task_kernel(task as usize);
    if let Some(delay) = faults.slowdown(task, attempt, kernel, &run.worker_names[w.index()]) {
        hexec_kernels::builtin::sleep_unless(delay, stop);
    }
}

/// Copies of a CPU attempt's read-write operands (operand index, bytes), to restore them if
/// it fails, so that a retry starts from the same inputs. Under a host limit the copies take
/// room in the budget like any host copy (charged to `numa`); when there is none, nothing is
/// saved and `false` says a failure of this attempt must be final. The last item is what to
/// give back to the budget afterwards: (bytes, NUMA node).
fn save_read_write_operands(
    run: &RunState<'_>,
    numa: usize,
    operands: &[RawOperand<'_>],
) -> (Option<SavedOperands>, bool, Option<(u64, usize)>) {
    if (run.retries == 0 && run.speculation.is_none()) || !operands.iter().any(|o| o.access() == Access::ReadWrite) {
        return (None, true, None);
    }
    let rw = || {
        operands
            .iter()
            .enumerate()
            .filter(|(_, o)| o.access() == Access::ReadWrite && !o.is_virtual())
    };
    let mut charged = None;
    if run.budgets.spillable() {
        let bytes = rw().map(|(_, o)| o.len_bytes() as u64).sum::<u64>();
        if bytes > 0 {
            let preferred = numa.min(run.budgets.numa_count().saturating_sub(1));
            match run.budgets.reserve_host(bytes, None, preferred) {
                Ok(node) => charged = Some((bytes, node)),
                Err(_) => return (None, false, None),
            }
        }
    }
    let saved: Vec<(usize, Vec<u8>)> = rw()
        // SAFETY: the operand is pinned in memory for this task, `len_bytes` long, and no
        // other task touches it while this one may write it (graph dependencies).
        .map(|(i, o)| {
            (
                i,
                unsafe { std::slice::from_raw_parts(o.as_ptr(), o.len_bytes()) }.to_vec(),
            )
        })
        .collect();
    // Most tasks have no read-write operand: nothing saved, nothing allocated.
    ((!saved.is_empty()).then(|| std::sync::Arc::new(saved)), true, charged)
}

/// How long a CPU task waits for host memory held by other tasks before it fails.
const HOST_ROOM_WAIT: Duration = Duration::from_secs(30);

/// Binds a CPU task's operands to host copies, pinned in memory (valid when read). When
/// pinned data of other tasks leave no host room, gives back what it pinned and retries, so
/// that two tasks each holding part of their operands cannot wait on each other forever.
/// Under a host limit the operands are marked wanted meanwhile, so that making room for one
/// does not spill another before it is pinned.
fn pin_operands<'a>(
    run: &RunState<'a>,
    numa: usize,
    accesses: &[(u32, Access)],
    operands: &mut Vec<RawOperand<'a>>,
    replay: Option<u32>,
) -> Result<(), String> {
    if !run.budgets.spillable() {
        return pin_each(run, numa, accesses, operands, replay);
    }
    let cells = || accesses.iter().filter_map(|&(d, _)| run.cells[d as usize].as_ref());
    cells().for_each(|c| c.want_host(true));
    let pinned = pin_each(run, numa, accesses, operands, replay);
    cells().for_each(|c| c.want_host(false));
    pinned
}

fn pin_each<'a>(
    run: &RunState<'a>,
    numa: usize,
    accesses: &[(u32, Access)],
    operands: &mut Vec<RawOperand<'a>>,
    replay: Option<u32>,
) -> Result<(), String> {
    // Read the clock only once room runs out: this is the hot path of every CPU task.
    let mut deadline: Option<Instant> = None;
    'retry: loop {
        operands.clear();
        for (i, &(d, access)) in accesses.iter().enumerate() {
            let b = run.bound[d as usize];
            let cell = &run.cells[d as usize];
            if let (Some(cell), true, true) = (cell, access.writes(), run.speculation.is_some()) {
                // A straggler may still use the bytes this task is about to overwrite.
                cell.unshare_host();
            }
            let ptr = match cell {
                None => None,
                // A datum being rebuilt is used as its host buffer holds it.
                Some(cell) => {
                    match cell.pin_host(access.reads() && replay != Some(d), numa, run.gpus, &run.transfers) {
                        Ok(ptr) => Some(ptr),
                        Err(e) => {
                            unpin_operands(run, &accesses[..i]);
                            match e {
                                PrepError::NoRoom(_) | PrepError::HostBusy(_)
                                    if Instant::now()
                                        < *deadline.get_or_insert_with(|| Instant::now() + HOST_ROOM_WAIT) =>
                                {
                                    std::thread::sleep(Duration::from_micros(50));
                                    continue 'retry;
                                }
                                e => return Err(e.to_string()),
                            }
                        }
                    }
                }
            };
            operands.push(match (b.elem, ptr) {
                // SAFETY: `ptr` points to the live host buffer, aligned for `elem` (data.rs
                // invariants), of `b.bytes` bytes of
                // a datum held `in_use` by this run, pinned in memory until
                // `unpin_operands`, and valid when read (`pin_host`); the graph's dependencies
                // guarantee that while this task runs no other task writes this datum, nor
                // reads it if this access writes, and compile rejected a task naming a datum
                // twice with a write. The operand is used (by `call_cpu_kernel`, saved and
                // restored through `as_ptr`) only until `execute_cpu` clears `operands`, which
                // it does before `unpin_operands`; a failed pin leaves stale operands that
                // nothing uses before the next pin clears them.
                (Some(elem), Some(ptr)) => unsafe { RawOperand::new(ptr, b.bytes, elem, access) },
                _ => RawOperand::virtual_(b.bytes, access),
            });
        }
        return Ok(());
    }
}

fn unpin_operands(run: &RunState<'_>, accesses: &[(u32, Access)]) {
    if !run.counted_pins {
        return; // host pins are only counted under a host limit or for temporaries
    }
    for &(d, _) in accesses {
        if let Some(cell) = &run.cells[d as usize] {
            cell.unpin_host();
        }
    }
}
