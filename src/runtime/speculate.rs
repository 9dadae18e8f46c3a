//! Speculative re-execution of stragglers: a CPU worker that finds nothing to run looks for a
//! task that has been running much longer than expected (on a slow core, a throttled or
//! busy GPU) and runs a copy of it on private buffers. The first attempt to finish is the
//! task's result; the other is told it is no longer wanted ([`CpuContext::cancelled`]) and
//! its result is ignored. On by default when the run has a deadline ([`RunOptions`]).
//!
//! Per task, a state machine (`state`):
//!
//! ```text
//! IDLE ──copy starts──▶ COPYING ──one finishes first──▶ SETTLING ──▶ SETTLED
//!   │                      │  └─the original fails─▶ ORPHANED ──copy finishes──▶ SETTLING
//!   │                      │                            └─copy fails─▶ NO_COPY (task retried)
//!   │                      └─the copy fails─▶ NO_COPY ──the original finishes──▶ SETTLED
//!   └──the original finishes, no copy──────────────────────────────────────────▶ SETTLED
//! ```
//!
//! Invariants:
//! - at most one copy per task, started only while an attempt of it runs; exactly one attempt
//!   settles a task (a compare-and-swap), and only its outcome counts;
//! - a copy writes only private buffers: its read-write operands start from the values the
//!   task started with (the original's saved copies on a CPU, the host copy for a task
//!   running on a GPU), and it installs them ([`DataCell::install_host`]) only if it wins;
//! - when an attempt wins against one still running, it holds every datum of the task for
//!   that straggler ([`DataCell::hold_for_straggler`]) before publishing `SETTLED` and
//!   before its successors are released; the straggler waits for `SETTLED`, then lets go.
//!   While held, nothing overwrites or frees a host buffer the straggler may use;
//! - an original attempt that fails while its copy runs leaves the task to the copy
//!   (`ORPHANED`): no retry overlaps a copy, so there is never more than one straggler.
//!
//! [`CpuContext::cancelled`]: hexec_kernels::CpuContext::cancelled
//! [`RunOptions`]: super::RunOptions
//! [`DataCell::install_host`]: super::data::DataCell::install_host
//! [`DataCell::hold_for_straggler`]: super::data::DataCell::hold_for_straggler

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_utils::Backoff;
use hexec_kernels::RawOperand;

use super::worker::{call_cpu_kernel, RunState};
use crate::memory::Node;
use crate::sched::{kind_index, TaskCost};
use crate::sync::MutexExt;
use crate::topology::{DeviceKind, WorkerId};

const IDLE: u8 = 0;
const COPYING: u8 = 1;
const ORPHANED: u8 = 2;
const NO_COPY: u8 = 3;
const SETTLING: u8 = 4;
const SETTLED: u8 = 5;

/// A task is a straggler once it has run this many times its expected time...
pub const STRAGGLER_FACTOR: f64 = 2.0;
/// ...and at least this long: copying shorter tasks costs more than it can save.
pub const MIN_STRAGGLE: Duration = Duration::from_micros(500);
/// Completed attempts of a kernel needed before their mean stands for its expected time,
/// when the performance model does not know it.
const MIN_SAMPLES: u64 = 3;
/// The attempt number fault injection sees for a copy (its draws differ from the original's).
pub const COPY_ATTEMPT: u32 = 0x8000_0000;

const NONE: u32 = u32::MAX;

/// What a worker runs now, as speculation sees it.
struct Running {
    /// The task on a CPU worker (`NONE`: nothing).
    task: AtomicU32,
    /// Since when, in nanoseconds from the run's start.
    since_ns: AtomicU64,
    /// The tasks of the batch in flight on a GPU worker.
    batch: Mutex<Vec<u32>>,
}

/// The race state of one task (module docs): every transition is a compare-and-swap, so
/// that of two attempts finishing together exactly one settles the task.
struct Race(AtomicU8);

/// What became of a copy that failed, as its race state says.
#[derive(Debug, PartialEq, Eq)]
enum CopyFailed {
    /// The original still runs and decides the task.
    OriginalRunsOn,
    /// The original had failed already: the task goes on as after a failed attempt.
    Orphan,
    /// The original won meanwhile.
    Lost,
}

impl Race {
    fn new() -> Self {
        Race(AtomicU8::new(IDLE))
    }

    fn settled(&self) -> bool {
        self.0.load(Ordering::Acquire) >= SETTLING
    }

    fn may_copy(&self) -> bool {
        self.0.load(Ordering::Acquire) == IDLE
    }

    /// An idle worker starts the task's one copy.
    fn start_copy(&self) -> bool {
        self.0
            .compare_exchange(IDLE, COPYING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// An attempt finished well.
    fn settle(&self) -> Settled {
        loop {
            let s = self.0.load(Ordering::Acquire);
            let (next, straggler) = match s {
                IDLE | NO_COPY => (SETTLED, false),
                COPYING => (SETTLING, true),
                ORPHANED => (SETTLING, false),
                _ => return Settled::Lost,
            };
            if self
                .0
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Settled::Won { straggler };
            }
        }
    }

    /// The winner's result is in place.
    fn publish(&self) {
        self.0.store(SETTLED, Ordering::Release);
    }

    fn published(&self) -> bool {
        self.0.load(Ordering::Acquire) == SETTLED
    }

    /// The original attempt failed.
    fn original_failed(&self) -> OnFailure {
        match self
            .0
            .compare_exchange(COPYING, ORPHANED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => OnFailure::LeftToCopy,
            Err(SETTLING | SETTLED) => OnFailure::Lost,
            Err(_) => OnFailure::Alone,
        }
    }

    /// The copy failed; no copy runs again.
    fn copy_failed(&self) -> CopyFailed {
        let from = |s| {
            self.0
                .compare_exchange(s, NO_COPY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        if from(COPYING) {
            CopyFailed::OriginalRunsOn
        } else if from(ORPHANED) {
            CopyFailed::Orphan
        } else {
            CopyFailed::Lost
        }
    }
}

/// Speculation state of one run.
pub(crate) struct Speculation {
    state: Vec<Race>,
    running: Vec<Running>,
    /// Per task and device kind: expected seconds from the performance model.
    expected: Vec<TaskCost>,
    /// Per kernel: (nanoseconds, count) of completed attempts, for kernels the model lacks.
    observed: Vec<(AtomicU64, AtomicU64)>,
    /// Read-write operands saved by the CPU attempt running each task: where a copy starts.
    saved: Mutex<HashMap<u32, SavedOperands>>,
    /// Copies started.
    pub launched: AtomicU64,
    /// Copies whose result was used.
    pub won: AtomicU64,
}

/// A CPU attempt's read-write operands as they were before it ran: (operand index, bytes).
pub(crate) type SavedOperands = Arc<Vec<(usize, Vec<u8>)>>;

/// How an attempt that finished stands against the other attempt of its task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Its outcome is the task's; `straggler` when the other attempt still runs (it was
    /// held for; call [`Speculation::publish`] once the result is in place).
    Won { straggler: bool },
    /// The other attempt won: ignore this one's outcome (after [`Speculation::let_go`]).
    Lost,
}

/// What became of a failed original attempt.
#[derive(Debug)]
pub(crate) enum OnFailure {
    /// No copy runs: retry or fail as usual.
    Alone,
    /// The copy runs on: it decides the task.
    LeftToCopy,
    /// The copy already won: ignore the failure (after [`Speculation::let_go`]).
    Lost,
}

/// What became of a copy.
pub(crate) enum CopyOutcome {
    /// Its result is installed; the caller completes the task.
    Won,
    /// The original won first; nothing to do.
    Lost,
    /// It failed while the original still runs: nothing to do.
    Failed,
    /// It failed after the original had failed: the caller handles the task's failure.
    FailedOrphan(String),
}

impl Speculation {
    pub fn new(tasks: usize, workers: usize, kernels: usize, expected: Vec<TaskCost>) -> Self {
        Speculation {
            state: (0..tasks).map(|_| Race::new()).collect(),
            running: (0..workers)
                .map(|_| Running {
                    task: AtomicU32::new(NONE),
                    since_ns: AtomicU64::new(0),
                    batch: Mutex::new(Vec::new()),
                })
                .collect(),
            expected,
            observed: (0..kernels).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect(),
            saved: Mutex::new(HashMap::new()),
            launched: AtomicU64::new(0),
            won: AtomicU64::new(0),
        }
    }

    /// Whether another attempt settled `task`: this one's result is not wanted.
    pub fn settled(&self, task: u32) -> bool {
        self.state[task as usize].settled()
    }

    /// CPU worker `w` starts (`Some`) or ends (`None`) an attempt of a task.
    pub fn cpu_running(&self, w: WorkerId, task: Option<u32>, now: Duration) {
        let r = &self.running[w.index()];
        r.since_ns.store(now.as_nanos() as u64, Ordering::Relaxed);
        r.task.store(task.unwrap_or(NONE), Ordering::Release);
    }

    /// GPU worker `w` submitted `tasks` at `now` (its batches in flight are timed from the
    /// latest submission: a straggler is caught late rather than early).
    pub fn gpu_batch_started(&self, w: WorkerId, tasks: &[u32], now: Duration) {
        let r = &self.running[w.index()];
        r.since_ns.store(now.as_nanos() as u64, Ordering::Relaxed);
        r.batch.locked().extend_from_slice(tasks);
    }

    /// GPU worker `w` has the results of `tasks`.
    pub fn gpu_batch_finished(&self, w: WorkerId, tasks: &[u32]) {
        let r = &self.running[w.index()];
        r.batch.locked().retain(|t| !tasks.contains(t));
    }

    /// An attempt of a task of `kernel` completed in `took` (on a GPU: its share of the batch).
    pub fn observe(&self, kernel: u32, took: Duration) {
        let (ns, n) = &self.observed[kernel as usize];
        ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// A CPU attempt of `task` saved its read-write operands (`None`: it ended).
    pub fn publish_saved(&self, task: u32, saved: Option<SavedOperands>) {
        let mut map = self.saved.locked();
        match saved {
            Some(s) => map.insert(task, s),
            None => map.remove(&task),
        };
    }

    /// Expected seconds of `task` on a worker of kind index `kind`: the model's, else the
    /// mean of its kernel's completed attempts in this run (on any device).
    fn expected_s(&self, run: &RunState<'_>, task: u32, kind: usize) -> Option<f64> {
        if let Some(s) = self.expected.get(task as usize).and_then(|c| c[kind]) {
            return Some(s);
        }
        let (ns, n) = &self.observed[run.graph.tasks[task as usize].kernel as usize];
        let n = n.load(Ordering::Relaxed);
        (n >= MIN_SAMPLES).then(|| ns.load(Ordering::Relaxed) as f64 / n as f64 / 1e9)
    }

    /// A straggler idle CPU worker `me` may copy: the running task furthest past its expected
    /// time, once past [`STRAGGLER_FACTOR`] times it and [`MIN_STRAGGLE`]. Marks it `COPYING`.
    pub fn pick(&self, run: &RunState<'_>, me: WorkerId) -> Option<u32> {
        let now = run.start.elapsed();
        let mut best: Option<(f64, u32)> = None;
        for (w, r) in self.running.iter().enumerate() {
            if w == me.index() {
                continue;
            }
            // The task before its start time: a task published after `since_ns` (Release /
            // Acquire) is never timed from the start of the one before it.
            let cpu_task = r.task.load(Ordering::Acquire);
            let elapsed = now.saturating_sub(Duration::from_nanos(r.since_ns.load(Ordering::Relaxed)));
            if elapsed < MIN_STRAGGLE {
                continue;
            }
            let on_gpu = run.gpu_of_worker[w].is_some();
            let kind = kind_index(if on_gpu { DeviceKind::Gpu } else { DeviceKind::Cpu });
            let mut consider = |task: u32| {
                if let Some(expected) = self.expected_s(run, task, kind) {
                    let ratio = elapsed.as_secs_f64() / expected.max(1e-9);
                    if ratio > STRAGGLER_FACTOR
                        && best.is_none_or(|(b, _)| ratio > b)
                        && self.state[task as usize].may_copy()
                        && copyable(run, self, task, me, on_gpu)
                    {
                        best = Some((ratio, task));
                    }
                }
            };
            if on_gpu {
                r.batch.locked().iter().for_each(|&t| consider(t));
            } else if cpu_task != NONE {
                consider(cpu_task);
            }
        }
        let (_, task) = best?;
        if !self.state[task as usize].start_copy() {
            return None;
        }
        self.launched.fetch_add(1, Ordering::Relaxed);
        Some(task)
    }

    /// An attempt of `task` finished well: settles the task if no other attempt did.
    pub fn settle(&self, run: &RunState<'_>, task: u32) -> Settled {
        let settled = self.state[task as usize].settle();
        if settled == (Settled::Won { straggler: true }) {
            for_each_cell(run, task, |c| c.hold_for_straggler());
        }
        settled
    }

    /// The winner's result is in place: the loser may let go, successors may run.
    pub fn publish(&self, task: u32) {
        self.state[task as usize].publish();
    }

    /// A losing attempt is done with the task's data.
    pub fn let_go(&self, run: &RunState<'_>, task: u32) {
        let backoff = Backoff::new();
        while !self.state[task as usize].published() {
            backoff.snooze();
        }
        for_each_cell(run, task, |c| c.straggler_done());
    }

    /// The original attempt of `task` failed.
    pub fn original_failed(&self, run: &RunState<'_>, task: u32) -> OnFailure {
        let outcome = self.state[task as usize].original_failed();
        if let OnFailure::Lost = outcome {
            self.let_go(run, task);
        }
        outcome
    }
}

/// Calls `f` on the stored cell of every datum `task` accesses.
fn for_each_cell(run: &RunState<'_>, task: u32, mut f: impl FnMut(&super::data::DataCell)) {
    let rec = &run.graph.tasks[task as usize];
    for &(d, _) in &run.graph.accesses[rec.accesses.range()] {
        if let Some(c) = &run.cells[d as usize] {
            f(c);
        }
    }
}

/// Whether idle CPU worker `me` can run a copy of `task`: allowed there, with a CPU kernel,
/// no temporaries (freed by their last user, which a straggler may outlive), and the values it
/// started from at hand (saved by a CPU original; the host copy for a GPU original).
fn copyable(run: &RunState<'_>, spec: &Speculation, task: u32, me: WorkerId, on_gpu: bool) -> bool {
    let rec = &run.graph.tasks[task as usize];
    if !run.compiled.plan.eligible(task, me) || !run.graph.kernels[rec.kernel as usize].has_cpu() {
        return false;
    }
    let accesses = &run.graph.accesses[rec.accesses.range()];
    let temps = !run.temp_uses.is_empty();
    let mut read_write = false;
    for &(d, access) in accesses {
        if temps && run.temp_uses[d as usize].load(Ordering::Relaxed) != u32::MAX {
            return false;
        }
        if let Some(cell) = &run.cells[d as usize] {
            read_write |= access.reads() && access.writes();
            if on_gpu && access.reads() && !cell.is_valid_on(Node::Host) {
                return false;
            }
        }
    }
    on_gpu || !read_write || spec.saved.locked().contains_key(&task)
}

/// Runs a copy of straggler `task` (marked `COPYING` by [`Speculation::pick`]) on CPU worker
/// `me`, over private buffers for what it writes, and installs its result if it wins.
pub(crate) fn run_copy(run: &RunState<'_>, spec: &Speculation, task: u32, me: WorkerId) -> CopyOutcome {
    let graph = run.graph;
    let rec = &graph.tasks[task as usize];
    let kernel = &graph.kernels[rec.kernel as usize];
    let accesses = &graph.accesses[rec.accesses.range()];
    let numa = run.worker_numa[me.index()];
    let saved = spec.saved.locked().get(&task).cloned();
    tracing::info!(task = %graph.task_name(task as usize), worker = %run.worker_names[me.index()], "straggler: running a copy");
    // Private buffers for what the copy writes, by operand index.
    let mut private: Vec<Option<super::hostbuf::HostBuf>> = Vec::with_capacity(accesses.len());
    let mut prepared: Result<(), String> = Ok(());
    for (i, &(d, access)) in accesses.iter().enumerate() {
        let buf = match (&run.cells[d as usize], access.writes()) {
            (Some(cell), true) => {
                let mut buf = cell.blank_host();
                if access.reads() {
                    match saved.as_ref().and_then(|s| s.iter().find(|(j, _)| *j == i)) {
                        Some((_, bytes)) => buf.bytes_mut()[..bytes.len()].copy_from_slice(bytes),
                        // A GPU original leaves the host copy as the task found it.
                        // SAFETY: this run holds the datum; the original, on a GPU, writes
                        // its own copy there, and every other writer of the datum waits for
                        // this task (dependencies), so no task writes the host bytes now.
                        None => match unsafe { cell.host_copy() } {
                            Some(b) => buf = b,
                            None => prepared = Err(format!("no starting values for {}", cell.name)),
                        },
                    }
                }
                Some(buf)
            }
            _ => None,
        };
        private.push(buf);
    }
    let attempt = COPY_ATTEMPT | run.attempts[task as usize].load(Ordering::Acquire);
    let outcome = prepared.and_then(|()| {
        if let Some(fault) = run
            .faults
            .and_then(|f| f.fails(super::faults::Site::Cpu, task, attempt, kernel.name()))
        {
            return Err(fault);
        }
        let mut operands: Vec<RawOperand<'_>> = Vec::with_capacity(accesses.len());
        for (i, &(d, access)) in accesses.iter().enumerate() {
            let b = run.bound[d as usize];
            let ptr = match (&run.cells[d as usize], private[i].as_mut()) {
                (_, Some(buf)) => Some(buf.as_ptr()),
                (Some(cell), None) => Some(
                    cell.pin_host(true, numa, run.gpus, &run.transfers)
                        .map_err(|e| e.to_string())?,
                ),
                (None, None) => None,
            };
            operands.push(match (b.elem, ptr) {
                // SAFETY: a private buffer is `b.bytes` long, aligned for its type, owned here and
                // used by this copy alone; a read operand's host buffer is valid and live, and
                // nothing writes or frees it while this copy may read it: the task's writers
                // wait for the task, and once another attempt settles it the datum is held
                // for this copy until `let_go` (module invariants).
                (Some(elem), Some(ptr)) => unsafe { RawOperand::new(ptr, b.bytes, elem, access) },
                _ => RawOperand::virtual_(b.bytes, access),
            });
        }
        let worker = &run.worker_names[me.index()];
        if let Some(delay) = run
            .faults
            .and_then(|f| f.slowdown(task, attempt, kernel.name(), worker))
        {
            hexec_kernels::builtin::sleep_unless(delay, || spec.settled(task) || run.end.is_stopped());
        }
        let Some(f) = kernel.cpu_impl() else {
            return Err(format!("kernel '{}' has no CPU implementation", kernel.name()));
        };
        let stop = || spec.settled(task) || run.end.is_stopped();
        match call_cpu_kernel(
            f,
            &mut operands,
            &graph.params[rec.params.range()],
            rec.cores,
            Some(&stop),
        ) {
            Ok(true) => Ok(()),
            // Told to stop, it may have returned half-done: never install that.
            Ok(false) => Err("cancelled".to_string()),
            Err(e) => Err(e.message),
        }
    });
    match outcome {
        Ok(()) => match spec.settle(run, task) {
            Settled::Won { .. } => {
                for (i, &(d, _)) in accesses.iter().enumerate() {
                    if let (Some(cell), Some(buf)) = (&run.cells[d as usize], private[i].take()) {
                        cell.install_host(buf);
                    }
                }
                run.lineage.cpu_task_done(graph, run.cells, task);
                spec.publish(task);
                spec.won.fetch_add(1, Ordering::Relaxed);
                CopyOutcome::Won
            }
            Settled::Lost => {
                spec.let_go(run, task);
                CopyOutcome::Lost
            }
        },
        Err(message) => {
            match spec.state[task as usize].copy_failed() {
                CopyFailed::OriginalRunsOn => {
                    tracing::info!(task = %graph.task_name(task as usize), %message, "the copy failed; the original runs on");
                    CopyOutcome::Failed
                }
                // Both failed: the task goes on as after any failed attempt (no copy again).
                CopyFailed::Orphan => CopyOutcome::FailedOrphan(message),
                CopyFailed::Lost => {
                    spec.let_go(run, task);
                    CopyOutcome::Lost
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_copy_the_original_settles_alone() {
        let r = Race::new();
        assert_eq!(r.settle(), Settled::Won { straggler: false });
        assert!(r.published() && r.settled());
        assert!(!r.start_copy(), "no copy of a settled task");
    }

    #[test]
    fn the_first_to_finish_wins_and_holds_for_the_other() {
        let r = Race::new();
        assert!(r.start_copy());
        assert!(!r.start_copy(), "one copy per task");
        assert_eq!(r.settle(), Settled::Won { straggler: true });
        assert!(r.settled() && !r.published(), "the loser waits for the result");
        assert_eq!(r.settle(), Settled::Lost);
        assert!(matches!(r.original_failed(), OnFailure::Lost));
        assert_eq!(r.copy_failed(), CopyFailed::Lost);
        r.publish();
        assert!(r.published());
    }

    #[test]
    fn a_failed_original_leaves_the_task_to_its_copy() {
        let r = Race::new();
        assert!(r.start_copy());
        assert!(matches!(r.original_failed(), OnFailure::LeftToCopy));
        assert_eq!(r.settle(), Settled::Won { straggler: false }, "nobody left to hold for");
        // Both failing: the copy hands the task back, and no copy runs again.
        let r = Race::new();
        assert!(r.start_copy());
        assert!(matches!(r.original_failed(), OnFailure::LeftToCopy));
        assert_eq!(r.copy_failed(), CopyFailed::Orphan);
        assert!(!r.start_copy());
        assert!(
            matches!(r.original_failed(), OnFailure::Alone),
            "a retry fails as usual"
        );
        assert_eq!(r.settle(), Settled::Won { straggler: false });
    }

    #[test]
    fn a_failed_copy_leaves_the_original_alone() {
        let r = Race::new();
        assert!(r.start_copy());
        assert_eq!(r.copy_failed(), CopyFailed::OriginalRunsOn);
        assert!(!r.start_copy(), "one copy per task, even a failed one");
        assert!(matches!(r.original_failed(), OnFailure::Alone));
        assert_eq!(r.settle(), Settled::Won { straggler: false });
    }

    #[test]
    fn of_two_attempts_finishing_together_exactly_one_wins() {
        for _ in 0..2000 {
            let r = Race::new();
            assert!(r.start_copy());
            let wins = std::thread::scope(|s| {
                let a = s.spawn(|| r.settle());
                let b = s.spawn(|| r.settle());
                [a.join().unwrap(), b.join().unwrap()]
                    .iter()
                    .filter(|o| matches!(o, Settled::Won { straggler: true }))
                    .count()
            });
            assert_eq!(wins, 1);
        }
    }
}
