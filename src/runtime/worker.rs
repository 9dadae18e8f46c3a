//! The CPU worker loop: take a task, run its kernel, release its successors.
//!
//! Hot-path rules: no allocation per task (operand and ready-list buffers are reused), one
//! atomic decrement per successor edge and one per task for termination, tracing spans that
//! cost a branch when tracing is off, and the *immediate successor* shortcut: of the tasks a
//! completion makes ready, the highest-priority one this worker may run is run next without
//! touching a queue.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};
use hexec_kernels::{CpuContext, ElemType, RawOperand};

use super::cores::CoreGate;
use super::data::DataCell;
use super::queues::{LocalQueues, SharedQueues};
use crate::gpu::{GpuDevice, GpuOperand};
use crate::graph::compile::CompiledGraph;
use crate::graph::Graph;
use crate::memory::Transfers;
use crate::sched::{Pick, Policy};
use crate::topology::WorkerId;
use crate::trace::{TaskFailure, TraceEvent};

/// A datum bound for this run: where its bytes are (null for size-only data).
#[derive(Clone, Copy)]
pub(crate) struct BoundDatum {
    pub ptr: *mut u8,
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
    pub deps: Vec<AtomicU32>,
    pub poisoned: Vec<AtomicBool>,
    pub remaining: CachePadded<AtomicUsize>,
    pub done: AtomicBool,
    pub failures: Mutex<Vec<TaskFailure>>,
    pub start: Instant,
    pub record_trace: bool,
}

// SAFETY: `BoundDatum` pointers refer to data cells the run holds `in_use` for its whole
// duration; workers dereference them only through `RawOperand`s built for tasks whose
// accesses the graph's dependencies order (see `runtime::data` and `graph` invariants).
unsafe impl Sync for RunState<'_> {}

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
    pub events: Vec<TraceEvent>,
}

struct TaskLabel<'a>(&'a Graph, u32);
impl std::fmt::Display for TaskLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.task_name(self.1 as usize))
    }
}

/// Runs tasks until the graph is done.
pub(crate) fn run_worker<P: Policy>(
    policy: &P,
    run: &RunState<'_>,
    mut q: LocalQueues<'_>,
    me: WorkerId,
) -> WorkerStats {
    let plan = &run.compiled.plan;
    run.queues.sleep.register(me);
    let mut stats = WorkerStats::default();
    let mut slot: Option<u32> = None;
    let mut ready: Vec<u32> = Vec::new();
    let mut operands: Vec<RawOperand<'_>> = Vec::new();
    loop {
        let task = match slot.take() {
            Some(t) => t,
            None => match policy
                .next(plan, &mut q, me)
                .or_else(|| wait_for_work(policy, run, &mut q, me, &mut stats))
            {
                Some(Pick { task, stolen_from }) => {
                    stats.steals += u64::from(stolen_from.is_some());
                    task
                }
                None => break,
            },
        };
        let cores = run.graph.tasks[task as usize].cores as usize;
        if let Some(gate) = &run.core_gate {
            gate.acquire(cores);
        }
        let ok = execute(run, task, me, &mut operands, &mut stats);
        if let Some(gate) = &run.core_gate {
            gate.release(cores);
        }

        ready.clear();
        for &s in run.compiled.successors(task) {
            if !ok {
                // Published by the AcqRel decrement below, before `s` can become ready.
                run.poisoned[s as usize].store(true, Ordering::Relaxed);
            }
            if run.deps[s as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                ready.push(s);
            }
        }
        if !ready.is_empty() {
            let mut best: Option<usize> = None;
            for (i, &s) in ready.iter().enumerate() {
                if plan.eligible(s, me)
                    && best.is_none_or(|b| {
                        run.graph.tasks[s as usize].priority > run.graph.tasks[ready[b] as usize].priority
                    })
                {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                slot = Some(ready.swap_remove(b));
            }
            for &s in &ready {
                policy.place(plan, &mut q, s, Some(me));
            }
        }
        if run.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            run.done.store(true, Ordering::SeqCst);
            run.queues.sleep.wake_all();
        }
    }
    stats.wall = run.start.elapsed();
    stats
}

/// Spins, then parks, until a task turns up (`Some`) or the run is done (`None`).
fn wait_for_work<P: Policy>(
    policy: &P,
    run: &RunState<'_>,
    q: &mut LocalQueues<'_>,
    me: WorkerId,
    stats: &mut WorkerStats,
) -> Option<Pick> {
    let plan = &run.compiled.plan;
    let idle_since = Instant::now();
    let backoff = Backoff::new();
    let found = loop {
        if run.done.load(Ordering::SeqCst) {
            break None;
        }
        if let Some(p) = policy.next(plan, q, me) {
            break Some(p);
        }
        if !backoff.is_completed() {
            backoff.snooze();
            continue;
        }
        run.queues.sleep.announce(me);
        if let Some(p) = policy.next(plan, q, me) {
            run.queues.sleep.cancel(me);
            break Some(p);
        }
        if run.done.load(Ordering::SeqCst) {
            run.queues.sleep.cancel(me);
            break None;
        }
        run.queues.sleep.park(me);
        backoff.reset();
    };
    stats.idle += idle_since.elapsed();
    found
}

/// Runs one task's kernel on this worker's device; false if it failed or was skipped.
fn execute<'a>(
    run: &RunState<'a>,
    task: u32,
    me: WorkerId,
    operands: &mut Vec<RawOperand<'a>>,
    stats: &mut WorkerStats,
) -> bool {
    stats.tasks += 1;
    if run.poisoned[task as usize].load(Ordering::Relaxed) {
        stats.skipped += 1;
        return false;
    }
    let graph = run.graph;
    let rec = &graph.tasks[task as usize];
    let kernel = &graph.kernels[rec.kernel as usize];
    let _span =
        tracing::trace_span!("task", id = task, name = %TaskLabel(graph, task), kernel = kernel.name()).entered();
    let started = run.record_trace.then(|| run.start.elapsed());
    let outcome = match run.gpu_of_worker[me.index()] {
        Some(g) => execute_gpu(run, task, g),
        None => execute_cpu(run, task, operands),
    };
    if let Some(s) = started {
        let end = run.start.elapsed();
        stats.events.push(TraceEvent {
            task,
            start_ns: s.as_nanos() as u64,
            end_ns: end.as_nanos() as u64,
        });
    }
    match outcome {
        Ok(()) => {
            stats.completed += 1;
            true
        }
        Err(message) => {
            stats.failed += 1;
            tracing::warn!(task = %TaskLabel(graph, task), kernel = kernel.name(), %message, "task failed");
            let failure = TaskFailure {
                task: graph.task_name(task as usize),
                kernel: kernel.name().to_string(),
                worker: run.worker_names[me.index()].clone(),
                message,
            };
            run.failures.lock().unwrap_or_else(|e| e.into_inner()).push(failure);
            false
        }
    }
}

/// Runs a task's CPU implementation over host copies (fetched from a GPU when stale).
fn execute_cpu<'a>(run: &RunState<'a>, task: u32, operands: &mut Vec<RawOperand<'a>>) -> Result<(), String> {
    let graph = run.graph;
    let rec = &graph.tasks[task as usize];
    let kernel = &graph.kernels[rec.kernel as usize];
    let accesses = &graph.accesses[rec.accesses.range()];
    if !run.gpus.is_empty() {
        for &(d, access) in accesses {
            if let (true, Some(cell)) = (access.reads(), &run.cells[d as usize]) {
                cell.ensure_host(run.gpus, &run.transfers)?;
            }
        }
    }
    operands.clear();
    for &(d, access) in accesses {
        let b = run.bound[d as usize];
        operands.push(match b.elem {
            // SAFETY: `b.ptr` points to a live, 8-aligned buffer of `b.bytes` bytes held
            // `in_use` by this run, whose host copy is valid when read (ensured above); the
            // graph's dependencies guarantee that while this task runs no other task writes
            // this datum, nor reads it if this access writes, and compile rejected a task
            // naming a datum twice with a write.
            Some(elem) => unsafe { RawOperand::new(b.ptr, b.bytes, elem, access) },
            None => RawOperand::virtual_(b.bytes, access),
        });
    }
    let params = &graph.params[rec.params.range()];
    let outcome = match kernel.cpu_impl() {
        None => Err(format!("kernel '{}' has no CPU implementation", kernel.name())),
        Some(f) => {
            let ctx = CpuContext::new(operands, params, rec.cores);
            match catch_unwind(AssertUnwindSafe(|| f(&ctx))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
            }
        }
    };
    operands.clear();
    if outcome.is_ok() && !run.gpus.is_empty() {
        for &(d, access) in accesses {
            if let (true, Some(cell)) = (access.writes(), &run.cells[d as usize]) {
                cell.host_written();
            }
        }
    }
    outcome
}

/// Runs a task's GPU implementation on GPU `g`, making its inputs valid there first.
fn execute_gpu(run: &RunState<'_>, task: u32, g: usize) -> Result<(), String> {
    let graph = run.graph;
    let rec = &graph.tasks[task as usize];
    let kernel = &graph.kernels[rec.kernel as usize];
    let Some(gpu_impl) = kernel.gpu_impl() else {
        return Err(format!("kernel '{}' has no GPU implementation", kernel.name()));
    };
    let accesses = &graph.accesses[rec.accesses.range()];
    let mut buffers = Vec::with_capacity(accesses.len());
    for &(d, access) in accesses {
        let Some(cell) = &run.cells[d as usize] else {
            return Err(format!(
                "operand {} has no storage (a size-only datum) and cannot go to a GPU",
                graph.datum_label(d)
            ));
        };
        buffers.push((
            cell.ensure_gpu(g, access.reads(), run.gpus, &run.transfers)?,
            cell.len as u64,
            access,
        ));
    }
    let ops: Vec<GpuOperand<'_>> = buffers
        .iter()
        .map(|(buffer, elements, access)| GpuOperand {
            buffer,
            elements: *elements,
            access: *access,
        })
        .collect();
    run.gpus[g].dispatch(kernel.name(), gpu_impl, &ops, &graph.params[rec.params.range()])?;
    for &(d, access) in accesses {
        if let (true, Some(cell)) = (access.writes(), &run.cells[d as usize]) {
            cell.gpu_written(g);
        }
    }
    Ok(())
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}
