//! A CPU task's operands: host copies pinned (brought home, charged to the worker's NUMA
//! node, waiting for room under a limit), read-write ones saved so a failed attempt leaves
//! its inputs as it found them, and released afterwards.

use super::*;

/// Puts a failed attempt's read-write operands back as they were before it ran.
#[cold]
#[inline]
pub(super) fn restore_operands(saved: &SavedOperands, operands: &[RawOperand<'_>]) {
    for (i, bytes) in saved.iter() {
        let o = &operands[*i];
        // SAFETY: the operand is pinned for this task, `len_bytes` long, and the kernel
        // has returned (or its panic was caught), so this is again the only view of it.
        unsafe { std::slice::from_raw_parts_mut(o.as_ptr(), o.len_bytes()) }.copy_from_slice(bytes);
    }
}

/// Copies of a CPU attempt's read-write operands (operand index, bytes), to restore them if
/// it fails, so that a retry starts from the same inputs. Under a host limit the copies take
/// room in the budget like any host copy (charged to `numa`); when there is none, nothing is
/// saved and `false` says a failure of this attempt must be final. The last item is what to
/// give back to the budget afterwards: (bytes, NUMA node).
#[inline]
pub(super) fn save_read_write_operands(
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
pub(super) const HOST_ROOM_WAIT: Duration = Duration::from_secs(30);

/// Binds a CPU task's operands to host copies, pinned in memory (valid when read). When
/// pinned data of other tasks leave no host room, gives back what it pinned and retries, so
/// that two tasks each holding part of their operands cannot wait on each other forever.
/// Under a host limit the operands are marked wanted meanwhile, so that making room for one
/// does not spill another before it is pinned.
#[inline]
pub(super) fn pin_operands<'a>(
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

pub(super) fn pin_each<'a>(
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
                // a datum claimed by this run, pinned in memory until
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

#[inline]
pub(super) fn unpin_operands(run: &RunState<'_>, accesses: &[(u32, Access)]) {
    if !run.counted_pins {
        return; // host pins are only counted under a host limit or for temporaries
    }
    for &(d, _) in accesses {
        if let Some(cell) = &run.cells[d as usize] {
            cell.unpin_host();
        }
    }
}
