//! The CPU worker's loop: take a task (its immediate successor first), run its kernel over
//! host copies of its operands, release its successors; a straggler's copy when idle.

use super::*;

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
    pub(super) fn run_copy(&mut self, task: u32) {
        let (run, me) = (self.run, self.me);
        let Some(spec) = &run.speculation else { return };
        // Its result is installed as the data: a write (counted out before a failure is handled).
        let writing = run.pause.enabled().then(|| Writing::enter(run, me));
        let outcome = super::super::speculate::run_copy(run, spec, task, me);
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
}

/// Runs one task's CPU kernel; false if it failed or was skipped.
pub(super) fn execute<'a>(
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
        let secs = (run.start.elapsed() - s).as_secs_f64();
        stats.samples.push((task, secs));
        if let Some(l) = run.learned {
            l.record(task, crate::DeviceKind::Cpu, secs);
        }
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
pub(super) enum CpuRun {
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
pub(super) fn execute_cpu<'a>(
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
            Ok(false) if run.task_cancelled(task) => Err(AttemptFailure::fatal(CANCELLED_WHILE_RUNNING.to_string())),
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

/// Calls a CPU kernel over bound operands, catching a panic; `cancelled` is what the kernel
/// sees through `CpuContext::cancelled`. `Ok(false)`: it returned after being told it was
/// cancelled, so what it wrote may be partial. The operands are borrowed exclusively for the
/// call (`CpuContext::new` requires it): the context is the only view of them meanwhile.
#[inline(always)]
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

/// An injected straggler (`slow` fault): delays this attempt of `task` on worker `w`, ending
/// early once `stop` says its result is no longer wanted.
#[cold]
pub(super) fn inject_slowdown(
    run: &RunState<'_>,
    faults: &super::super::faults::FaultPlan,
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
