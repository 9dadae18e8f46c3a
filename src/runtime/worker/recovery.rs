//! A lost GPU: its copies are forgotten and the data whose only valid copy it held are
//! rebuilt from their lineage, with writers paused meanwhile.

use super::*;

/// Forgets the copies of lost GPU `g` and recomputes, on this thread's CPU, the data whose only
/// valid copy was there and whose lineage allows (`lineage`); tasks that need them meanwhile
/// wait, as for memory. What cannot be recomputed stays lost, and its readers say so.
/// Done once per run and GPU, by whichever worker notices the loss first (the GPU's own, or
/// one whose attempt failed on it); with `wait`, a worker that finds another one recovering
/// waits until it is done.
pub(super) fn recover_from_lost_gpu(run: &RunState<'_>, g: usize, me: WorkerId, wait: bool) {
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
pub(super) fn recompute<'a>(
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
