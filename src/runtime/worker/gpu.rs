//! The GPU worker's loop: take up to `MAX_BATCH` ready tasks, make their inputs valid on the
//! device, submit them as one batch, stage the next batch while this one runs, and settle
//! each task from the batch's results.

use super::*;

/// A batch staged on a GPU: its tasks, what became of each so far, and the submission.
pub(super) struct StagedBatch {
    pub(super) tasks: Vec<(u32, Staging)>,
    /// Data used by the batch, kept from eviction until it completes.
    pub(super) pinned: Vec<std::sync::Arc<DataCell>>,
    pub(super) in_flight: InFlight,
    pub(super) started: Duration,
}

impl StagedBatch {
    /// Whether any of its tasks reached the GPU.
    pub(super) fn submitted(&self) -> bool {
        self.tasks.iter().any(|(_, s)| matches!(s, Staging::Submitted(_)))
    }
}

pub(super) enum Staging {
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
        if run.retire_requested(me) {
            // Retired: the batch in flight finishes, then this worker only passes tasks on
            // (`Runtime::retire` brings the device's only copies home once it has left).
            if let Some(done) = in_flight.take() {
                w.finish_gpu_batch(g, done);
            }
            w.retire(&mut carry);
            break;
        }
        let mut batch: Vec<u32> = std::mem::take(&mut carry);
        let carried = batch.len();
        let kept = w.slot.take();
        batch.extend(kept);
        // The fused successor kept for this worker counts as a task taken.
        let mut full = kept.is_some_and(|t| ends_batch(&w.q, run, t));
        while !full && batch.len() < carried + MAX_BATCH {
            match policy.next(plan, &mut w.q, me) {
                Some(Pick { task, stolen_from }) => {
                    w.stats.steals += u64::from(stolen_from.is_some());
                    batch.push(task);
                    full = ends_batch(&w.q, run, task);
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
pub(super) fn stage_gpu_batch(
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
                cell.gpu.want(g, epoch);
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
                cell.gpu.pin(g);
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
                cell.gpu.unpin(g);
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
    pub(super) fn finish_gpu_batch(&mut self, g: usize, staged: StagedBatch) {
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
        staged.pinned.iter().for_each(|c| c.gpu.unpin(g));
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
                        let secs = kernel_s.unwrap_or(share);
                        self.stats.samples.push((task, secs));
                        // Not a share of a mixed batch: it would price a large task like its
                        // small neighbours for the rest of the run.
                        if let (Some(l), true) = (run.learned, kernel_s.is_some() || batch_len == 1) {
                            l.record(task, crate::DeviceKind::Gpu, secs);
                        }
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

/// Whether `task`, taken by a GPU worker, ends its batch: a CPU may run it too, and no task
/// of its kernel has been timed on a GPU yet, or its GPU time is longer than a CPU's
/// (`LocalQueues::alone_on_gpu`). The GPU then takes such tasks one batch at a time rather
/// than `MAX_BATCH` at once, and the cores take the rest. (A GPU slower than the cores,
/// lavapipe on two: the demo's first factorisation of 3072² took 5.5 s with the GPU taking
/// 225 of its 610 tasks in batches; 0.28–0.31 s so, with `LearnedCosts`; 0.07 s without the
/// GPU.)
fn ends_batch(q: &LocalQueues<'_>, run: &RunState<'_>, task: u32) -> bool {
    q.alone_on_gpu(task) && may_run_off_gpus(run, task)
}

/// Whether a worker that is not a GPU may run `task`.
fn may_run_off_gpus(run: &RunState<'_>, task: u32) -> bool {
    let plan = &run.compiled.plan;
    plan.set(plan.task_set(task))
        .workers
        .iter()
        .any(|w| run.gpu_of_worker[w.index()].is_none())
}
