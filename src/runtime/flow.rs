//! Sequential task flow: tasks submitted one at a time while others run (StarPU's task
//! insertion with implicit data dependencies, Dask's and Ray's futures), graphs submitted
//! without waiting, and the data operations (`read`, `write`, `free`, ...) ordered after
//! the work submitted before them.
//!
//! Submissions go into *batches*, in the order in which their calls return. A task joins
//! the last batch if that batch is a task batch that has not started yet, else it opens a new
//! one; a graph is a batch of its own. The batches run one after the other on the engine:
//! task batches on the flow's dispatcher thread (one graph run each, going on past
//! failures), a blocking `run` on its caller's thread when its turn comes. Inside a batch the
//! graph infers dependencies from access order as usual; across batches their order keeps
//! every dependency. The dispatcher starts a batch as soon as the previous one ends, so a
//! lone task runs at once and a fast producer's tasks gather into large batches while the
//! previous one runs; only while an operation holds the open batch ([`Flow::hold`]) does it
//! wait for the operation's last task.
//!
//! Invariants:
//! - a batch starts only after every earlier batch has ended (`running` is held by at most
//!   one batch, always the front of `queue`): a dependency across batches needs no edge;
//! - `in_flight` counts tasks submitted and not yet finished; `submit` waits while it is at
//!   the cap (except on the runtime's own worker threads, whose batch must end first);
//! - per datum, `last_access` is the sequence number of the last batch that uses it, and data
//!   operations wait until that batch has ended (`finished`);
//! - a datum freed without waiting ([`Flow::free_later`]) is *doomed*: refused to every later
//!   submission and data operation as freed, and freed once the last batch that uses it has
//!   ended (by whoever ends batches: the dispatcher, or a caller's blocking run);
//! - a datum whose last writer among submitted tasks failed, was skipped or was cancelled is
//!   *poisoned*: later submitted tasks that read it are skipped, naming that writer, until a
//!   task overwrites it (`Access::Write`) successfully. Graph runs do not look at poison
//!   (they read the values there, as always) but their failures poison what they would have
//!   written.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use hexec_kernels::Access;

use super::worker::{CANCEL_DROPPED, CANCEL_NONE, CANCEL_REQUESTED, CANCEL_TOO_LATE};
use super::{Engine, RunError, RunOptions, Runtime};
use crate::graph::{DataRef, Graph, GraphDatum, TaskBuilder, TaskSpec};
use crate::sched::compile::{check_task, DatumInfo, EligibilityKey, SubmitError, TaskToCheck};
use crate::sync::{CondvarExt, MutexExt};
use crate::trace::{RunReport, TaskFailure};

/// Tasks submitted and not finished, at most, when the builder does not say
/// ([`crate::RuntimeBuilder::max_submitted`]): a producer that runs ahead waits in `submit`
/// (StarPU's `STARPU_LIMIT_MAX_SUBMITTED_TASKS`). About 20 MB of task records.
pub const DEFAULT_MAX_SUBMITTED: usize = 1 << 16;

/// Why a submitted task did not complete.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// Its kernel failed for good (every attempt is in the failure).
    #[error("task '{}' failed on {}: {}", .0.task, .0.worker, .0.message)]
    Failed(Box<TaskFailure>),
    /// It did not run because a task it depends on did not complete.
    #[error("task '{task}' was skipped: {cause}")]
    Skipped {
        /// The task.
        task: String,
        /// Which task it depends on did not complete, and why.
        cause: String,
    },
    /// It was cancelled ([`TaskHandle::cancel`]): dropped before it started, or its kernel
    /// returned early after seeing `cancelled()` (its read-write operands restored).
    #[error("task '{task}' was cancelled")]
    Cancelled {
        /// The task.
        task: String,
    },
    /// Its batch could not run (the error names what was wrong).
    #[error("task '{task}' did not run: {message}")]
    NotRun {
        /// The task.
        task: String,
        /// Why its batch could not run.
        message: String,
    },
    /// Waited for from inside a task of the same runtime, which could never end.
    #[error("a task cannot wait for another task of its runtime (it would wait for itself)")]
    WaitInsideTask,
}

/// What became of the tasks of one batch.
#[derive(Debug, Default)]
struct Outcomes {
    /// Tasks that did not complete (by index in the batch); the others did.
    errors: HashMap<u32, TaskError>,
}

/// The shared end of one batch of tasks, which its handles wait on.
#[derive(Debug, Default)]
struct BatchEnd {
    state: Mutex<BatchEndState>,
    ended: Condvar,
}

#[derive(Debug, Default)]
struct BatchEndState {
    outcomes: Option<Outcomes>,
    wakers: Vec<Waker>,
    /// Tasks cancelled before the batch started (by index).
    cancelled: HashSet<u32>,
    /// Once the batch runs: each task's cancellation state (`worker::CANCEL_*`).
    flags: Option<Arc<[AtomicU8]>>,
}

impl BatchEnd {
    fn finish(&self, outcomes: Outcomes) {
        let wakers = {
            let mut st = self.state.locked();
            st.outcomes = Some(outcomes);
            std::mem::take(&mut st.wakers)
        };
        self.ended.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A submitted task: wait for it (`wait`, or `.await`), ask whether it is done, or cancel it.
/// Dropping the handle does not cancel the task.
#[derive(Clone, Debug)]
pub struct TaskHandle {
    end: Arc<BatchEnd>,
    index: u32,
    label: Label,
    /// The runtime's worker threads (a wait there is refused).
    pool_key: usize,
}

/// How a handle names its task without a string per task.
#[derive(Clone, Debug)]
enum Label {
    Named(Arc<str>),
    /// `kernel#N`: the kernel and the task's number in the flow.
    Numbered(Arc<hexec_kernels::Kernel>, u64),
}

impl TaskHandle {
    /// The task's name: its own, or `kernel#N` where N counts the runtime's submitted tasks.
    pub fn name(&self) -> String {
        match &self.label {
            Label::Named(n) => n.to_string(),
            Label::Numbered(k, n) => format!("{}#{n}", k.name()),
        }
    }

    /// Whether the task has finished (completed, failed, skipped or cancelled).
    pub fn is_finished(&self) -> bool {
        self.end.state.locked().outcomes.is_some()
    }

    fn outcome(&self, o: &Outcomes) -> Result<(), TaskError> {
        match o.errors.get(&self.index) {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    /// Blocks until the task has finished; `Ok` if it completed. From inside a task of the
    /// same runtime it does not block: an unfinished task is [`TaskError::WaitInsideTask`].
    pub fn wait(&self) -> Result<(), TaskError> {
        let mut st = self.end.state.locked();
        if st.outcomes.is_none() && super::pool::on_pool_thread(self.pool_key) {
            return Err(TaskError::WaitInsideTask);
        }
        loop {
            if let Some(o) = &st.outcomes {
                return self.outcome(o);
            }
            st = self.end.ended.wait_unpoisoned(st);
        }
    }

    /// Cancels the task. Not started, it is dropped: it and the submitted tasks that depend
    /// on it do not run (their handles say so) and the data it would have written keep their
    /// values. Running on a CPU, its kernel sees `ctx.cancelled()`; if it returns early, the
    /// task counts as cancelled and its read-write operands get their values back (a kernel
    /// that does not look completes). False when the task had already finished.
    pub fn cancel(&self) -> bool {
        let mut st = self.end.state.locked();
        if st.outcomes.is_some() {
            return false;
        }
        match &st.flags {
            // Its batch runs: too late once the task has completed.
            Some(flags) => !matches!(
                flags[self.index as usize].compare_exchange(
                    CANCEL_NONE,
                    CANCEL_REQUESTED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ),
                Err(CANCEL_TOO_LATE)
            ),
            None => {
                st.cancelled.insert(self.index);
                true
            }
        }
    }
}

impl Future for TaskHandle {
    type Output = Result<(), TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.end.state.locked();
        match &st.outcomes {
            Some(o) => Poll::Ready(self.outcome(o)),
            None => {
                push_waker(&mut st.wakers, cx.waker());
                Poll::Pending
            }
        }
    }
}

/// A submitted graph ([`crate::Runtime::submit_graph`]): wait for its report, or `.await` it.
#[derive(Debug)]
pub struct GraphHandle {
    end: Arc<GraphEnd>,
    pool_key: usize,
}

/// A graph run's result, once there, and the wakers waiting for it.
type GraphEndState = (Option<Result<RunReport, RunError>>, Vec<Waker>);

#[derive(Debug, Default)]
struct GraphEnd {
    state: Mutex<GraphEndState>,
    ended: Condvar,
}

impl GraphHandle {
    /// Whether the graph's run has ended.
    pub fn is_finished(&self) -> bool {
        self.end.state.locked().0.is_some()
    }

    /// Blocks until the graph's run has ended and returns what `Runtime::run` would have.
    /// From inside a task of the same runtime it does not block: an unfinished graph is
    /// [`RunError::WaitInsideTask`].
    pub fn wait(self) -> Result<RunReport, RunError> {
        let mut st = self.end.state.locked();
        if st.0.is_none() && super::pool::on_pool_thread(self.pool_key) {
            return Err(RunError::WaitInsideTask);
        }
        loop {
            if let Some(r) = st.0.take() {
                return r;
            }
            st = self.end.ended.wait_unpoisoned(st);
        }
    }
}

impl Future for GraphHandle {
    type Output = Result<RunReport, RunError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.end.state.locked();
        match st.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                push_waker(&mut st.1, cx.waker());
                Poll::Pending
            }
        }
    }
}

/// Tasks gathered for one run.
struct TaskBatch {
    /// Shared once it runs (`Runtime::retire` looks at the running batch's tasks).
    graph: Arc<Graph>,
    /// Per graph datum: its store id.
    ids: Vec<u32>,
    end: Arc<BatchEnd>,
}

enum Work {
    Tasks(TaskBatch),
    /// A graph submitted without waiting: the dispatcher runs it.
    Graph(Arc<Graph>, RunOptions, Arc<GraphEnd>),
    /// A blocking `run`: its caller runs it on its own thread when its turn comes.
    Caller,
}

struct Batch {
    seq: u64,
    /// Tasks it counts in `in_flight`.
    tasks: usize,
    work: Work,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Batch>,
    /// A batch is running (the front of `queue` was taken, or a caller runs its graph).
    running: bool,
    next_seq: u64,
    /// Batches with a smaller sequence number have ended.
    finished: u64,
    in_flight: usize,
    /// Per datum (by store id, which the store hands out densely): one plus the sequence
    /// number of the last batch that uses it, 0 for none.
    last_access: Vec<u64>,
    /// The dispatcher waits for work (only then does a submission wake it).
    dispatcher_waiting: bool,
    /// Poisoned data: the reason later readers are skipped.
    poisoned: HashMap<u32, String>,
    /// Doomed data (freed without waiting) by id, each with the batch after which it may go.
    doomed: HashMap<u32, u64>,
    /// Holds on the open task batch ([`Flow::hold`]): while any is held, it does not start
    /// (unless the cap is reached).
    holds: usize,
    /// Wakers of async waits for room or for data.
    waiters: Vec<Waker>,
    /// Tasks submitted so far (numbers unnamed tasks).
    submitted: u64,
    /// Eligibility keys already found to have a worker on this machine, and the last one
    /// (consecutive tasks usually share it: no hashing then).
    runnable: HashSet<EligibilityKey>,
    last_runnable: Option<EligibilityKey>,
    /// Kernels (by the `Arc`'s address, the `Arc` kept) whose GPU code compiled on every GPU
    /// not retired.
    gpu_code_checked: HashMap<usize, Arc<hexec_kernels::Kernel>>,
    /// The runtime's retired workers, as of the last retire or restore.
    retired: Vec<crate::topology::WorkerId>,
    /// The graph of the batch the dispatcher runs, if any.
    running_graph: Option<Arc<Graph>>,
    shutdown: bool,
    dispatcher: Option<std::thread::JoinHandle<()>>,
}

/// The flow's state, shared with its dispatcher thread.
pub(crate) struct Flow {
    state: Mutex<State>,
    /// A batch was queued, or shutdown.
    work: Condvar,
    /// A batch ended.
    progress: Condvar,
    cap: usize,
    /// The runtime's worker threads ([`super::pool::WorkerPool::key`]).
    pool_key: usize,
    /// The engine whose store frees doomed data (set once, when the runtime is built).
    engine: std::sync::OnceLock<std::sync::Weak<Engine>>,
}

impl Flow {
    pub fn new(cap: usize, pool_key: usize) -> Arc<Flow> {
        Arc::new(Flow {
            state: Mutex::default(),
            work: Condvar::new(),
            progress: Condvar::new(),
            cap: cap.max(1),
            pool_key,
            engine: std::sync::OnceLock::new(),
        })
    }

    /// Whether the calling thread runs one of this runtime's tasks.
    pub fn on_own_thread(&self) -> bool {
        super::pool::on_pool_thread(self.pool_key)
    }

    fn notify_progress(&self, st: &mut State) {
        self.progress.notify_all();
        st.waiters.drain(..).for_each(Waker::wake);
    }

    /// Whether a submission may go in now (room under the cap, or on a pool thread).
    fn has_room(&self, st: &State) -> bool {
        st.in_flight < self.cap || self.on_own_thread()
    }

    /// Holds the open task batch back until the guard drops: the tasks submitted meanwhile
    /// (by any thread) start together, so that the policy sees a whole operation's DAG at
    /// once instead of its first tasks alone. For the crate's own operations, which only
    /// submit while they hold: waiting for submitted work meanwhile would wait for the batch
    /// the hold keeps back (the cap is the one exception: at the cap the batch starts).
    pub fn hold(&self) -> FlowHold<'_> {
        self.state.locked().holds += 1;
        FlowHold { flow: self }
    }

    /// Submits one task, waiting for room under the cap.
    pub fn submit(self: &Arc<Self>, engine: &Arc<Engine>, spec: TaskSpec) -> Result<TaskHandle, SubmitError> {
        let mut st = self.state.locked();
        while !self.has_room(&st) {
            if st.holds > 0 {
                // A held batch starts at the cap: tell the dispatcher, which waits for it.
                self.work.notify_one();
            }
            st = self.progress.wait_unpoisoned(st);
        }
        self.submit_locked(engine, &mut st, spec)
    }

    /// Submits one task if there is room now; `Ok(None)` when the cap is reached (with
    /// `waker` registered for the next progress).
    pub fn try_submit(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        spec: &mut Option<TaskSpec>,
        waker: &Waker,
    ) -> Result<Option<TaskHandle>, SubmitError> {
        let mut st = self.state.locked();
        if !self.has_room(&st) {
            push_waker(&mut st.waiters, waker);
            return Ok(None);
        }
        let spec = spec.take().expect("a submitted future is not polled again");
        self.submit_locked(engine, &mut st, spec).map(Some)
    }

    fn submit_locked(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        st: &mut State,
        spec: TaskSpec,
    ) -> Result<TaskHandle, SubmitError> {
        let number = st.submitted;
        let task_name = || match &spec.name {
            Some(n) => crate::limits::escape_controls(n).into_owned(),
            None => format!("{}#{number}", spec.kernel.name()),
        };
        // Refused alone, before it joins a batch: data of another runtime or freed, explicit
        // dependencies (submitted tasks depend on earlier ones through their data), and what
        // compiling its batch would refuse.
        let mut ids: Vec<u32> = Vec::with_capacity(spec.accesses.len());
        let mut cells: Vec<Arc<super::data::DataCell>> = Vec::with_capacity(spec.accesses.len());
        let mut accesses: Vec<(u32, Access)> = Vec::with_capacity(spec.accesses.len());
        for &(d, a) in &spec.accesses {
            let DataRef::Stored { rt, id } = d else {
                return Err(SubmitError::InvalidTask {
                    task: task_name(),
                    message: "uses a graph's own datum (size-only data and temporaries belong to a graph); submitted tasks use the runtime's data".into(),
                });
            };
            let local = match ids.iter().position(|&x| x == id) {
                Some(i) => i,
                None => {
                    let doomed = !st.doomed.is_empty() && st.doomed.contains_key(&id);
                    let cell = engine.store.cell(rt, id).filter(|_| !doomed);
                    let Some(cell) = cell else {
                        if let (true, Some(c)) = (doomed, engine.store.cell(rt, id)) {
                            return Err(SubmitError::InvalidTask {
                                task: task_name(),
                                message: super::DataError::Freed(c.name.clone()).to_string(),
                            });
                        }
                        let message = match engine.store.freed(rt, id) {
                            Some(e) => e.to_string(),
                            None => format!("uses datum #{id} of another runtime"),
                        };
                        return Err(SubmitError::InvalidTask {
                            task: task_name(),
                            message,
                        });
                    };
                    ids.push(id);
                    cells.push(cell);
                    ids.len() - 1
                }
            };
            accesses.push((local as u32, a));
        }
        if !spec.after.is_empty() {
            return Err(SubmitError::InvalidTask {
                task: task_name(),
                message: "`after` names a task of a graph; a submitted task depends on earlier ones through the data it accesses".into(),
            });
        }
        let data: Vec<DatumInfo<'_>> = cells
            .iter()
            .map(|c| DatumInfo {
                name: &c.name,
                elem: Some(c.elem),
                bytes: c.bytes() as u64,
                read_only: c.read_only,
            })
            .collect();
        let check = TaskToCheck {
            name: &task_name,
            kernel: &spec.kernel,
            data: &data,
            accesses: &accesses,
            params: spec.params.len(),
            restriction: &spec.restriction,
            cores: spec.cores,
        };
        check_task(
            &check,
            &engine.machine,
            &mut st.runnable,
            &mut st.last_runnable,
            &st.retired,
        )
        .map_err(|e| engine.hint_software_gpus(e))?;
        // Its kernel's GPU code, compiled on the GPUs once per kernel (as compiling its batch
        // would, where a refusal would fail every task of the batch).
        let kernel_id = Arc::as_ptr(&spec.kernel) as usize;
        if spec.kernel.gpu_impl().is_some()
            && spec.restriction.device != Some(crate::DeviceKind::Cpu)
            && !st.gpu_code_checked.contains_key(&kernel_id)
        {
            engine.check_kernel_gpu_code(&spec.kernel, &task_name)?;
            // The kernel is kept, so that its address names no other kernel while cached.
            st.gpu_code_checked.insert(kernel_id, spec.kernel.clone());
        }
        self.ensure_dispatcher(engine, st)?;
        // The back batch has not started while it is in the queue (the dispatcher takes a
        // batch out before it runs it).
        if !matches!(
            st.queue.back(),
            Some(Batch {
                work: Work::Tasks(_),
                ..
            })
        ) {
            let seq = st.next_seq;
            st.next_seq += 1;
            let mut graph = Graph::new();
            graph.first_number = number;
            let graph = Arc::new(graph);
            st.queue.push_back(Batch {
                seq,
                tasks: 0,
                work: Work::Tasks(TaskBatch {
                    graph,
                    ids: Vec::new(),
                    end: Arc::default(),
                }),
            });
        }
        let batch = st.queue.back_mut().expect("a batch was just ensured");
        let seq = batch.seq;
        let Work::Tasks(tb) = &mut batch.work else {
            unreachable!("the open batch is a task batch")
        };
        let index = tb.graph.len();
        let label = match &spec.name {
            Some(n) => Label::Named(crate::limits::escape_controls(n).into()),
            None => Label::Numbered(spec.kernel.clone(), number),
        };
        let graph = Arc::get_mut(&mut tb.graph).expect("a batch's graph is not shared before it runs");
        graph.push(spec);
        while tb.ids.len() < graph.data.len() {
            let GraphDatum::Stored { id, .. } = graph.data[tb.ids.len()] else {
                unreachable!("submitted tasks use stored data only")
            };
            tb.ids.push(id);
        }
        batch.tasks += 1;
        let end = tb.end.clone();
        for id in ids {
            mark_access(&mut st.last_access, id, seq);
        }
        st.in_flight += 1;
        st.submitted += 1;
        if st.dispatcher_waiting {
            self.work.notify_one();
        }
        Ok(TaskHandle {
            end,
            index: index as u32,
            label,
            pool_key: self.pool_key,
        })
    }

    /// Queues a graph for the dispatcher to run (its handle holds the refusal when the
    /// dispatcher cannot start).
    pub fn submit_graph(self: &Arc<Self>, engine: &Arc<Engine>, graph: Graph, opts: RunOptions) -> GraphHandle {
        let end = Arc::new(GraphEnd::default());
        let mut st = self.state.locked();
        if let Err(e) = self.ensure_dispatcher(engine, &mut st) {
            end.state.locked().0 = Some(Err(RunError::Submit(e)));
            return GraphHandle {
                end,
                pool_key: self.pool_key,
            };
        }
        let ids = stored_ids(&graph);
        self.enqueue(&mut st, &ids, Work::Graph(Arc::new(graph), opts, end.clone()));
        self.work.notify_one();
        GraphHandle {
            end,
            pool_key: self.pool_key,
        }
    }

    /// Queues a batch that uses `graph`'s data; returns its sequence number.
    fn enqueue(&self, st: &mut State, ids: &[u32], work: Work) -> u64 {
        let seq = st.next_seq;
        st.next_seq += 1;
        for &id in ids {
            mark_access(&mut st.last_access, id, seq);
        }
        st.queue.push_back(Batch { seq, tasks: 0, work });
        seq
    }

    /// Runs `graph` on this thread when its turn comes after everything submitted before.
    /// On one of the runtime's worker threads (a task running a graph) it runs at once, as
    /// that task's batch cannot end before it.
    pub fn run_in_turn<R>(&self, graph: &Graph, run: impl FnOnce() -> R) -> R {
        if self.on_own_thread() {
            return run();
        }
        let mut st = self.state.locked();
        let ids = stored_ids(graph);
        let seq = if st.queue.is_empty() && !st.running {
            // Nothing before it: no queueing, no thread hop.
            let seq = st.next_seq;
            st.next_seq += 1;
            for &id in &ids {
                mark_access(&mut st.last_access, id, seq);
            }
            seq
        } else {
            let seq = self.enqueue(&mut st, &ids, Work::Caller);
            let my_turn = |st: &State| !st.running && st.queue.front().is_some_and(|b| b.seq == seq);
            while !my_turn(&st) {
                st = self.progress.wait_unpoisoned(st);
            }
            st.queue.pop_front();
            seq
        };
        st.running = true;
        drop(st);
        // Ends the turn even if `run` unwinds: a batch left running would stop the flow.
        let _end = EndOnDrop { flow: self, seq };
        run()
    }

    /// Sets the engine whose store frees doomed data.
    pub fn set_engine(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    pub(super) fn end_batch(&self, seq: u64, tasks: usize) {
        // Doomed data this batch was the last to use go before anyone sees it ended.
        let due = self.take_due_frees(seq + 1);
        if let (false, Some(engine)) = (due.is_empty(), self.engine.get().and_then(std::sync::Weak::upgrade)) {
            engine.free_ids(&due);
        }
        let mut st = self.state.locked();
        st.running = false;
        st.finished = st.finished.max(seq + 1);
        st.in_flight -= tasks;
        self.notify_progress(&mut st);
        // The next batch may be the dispatcher's.
        if st.dispatcher_waiting {
            self.work.notify_one();
        }
    }

    /// The sequence number the next batch will get.
    pub fn next_seq(&self) -> u64 {
        self.state.locked().next_seq
    }

    /// Whether every batch before `seq` has ended; if not, `waker` is woken at the next
    /// progress.
    pub fn reached(&self, seq: u64, waker: Option<&Waker>) -> bool {
        let mut st = self.state.locked();
        let done = st.finished >= seq;
        if let (false, Some(w)) = (done, waker) {
            push_waker(&mut st.waiters, w);
        }
        done
    }

    /// Blocks until every batch queued before this call has ended.
    pub fn wait_all(&self) {
        let mut st = self.state.locked();
        let target = st.next_seq;
        while st.finished < target {
            st = self.progress.wait_unpoisoned(st);
        }
    }

    /// Dooms datum `id` (see the module invariants) when submitted work still uses it, and
    /// says so; `false`: nothing submitted uses it, the caller frees it now.
    pub fn free_later(&self, id: u32) -> bool {
        let mut st = self.state.locked();
        if st.doomed.contains_key(&id) {
            return true;
        }
        let after = Self::ready_after(&st, id);
        if st.finished >= after {
            return false;
        }
        st.doomed.insert(id, after);
        true
    }

    /// Whether datum `id` is doomed (freed without waiting, not yet gone).
    pub fn is_doomed(&self, id: u32) -> bool {
        let st = self.state.locked();
        !st.doomed.is_empty() && st.doomed.contains_key(&id)
    }

    /// Doomed data whose last batch is before `finished`: no longer doomed here, the caller
    /// frees them.
    fn take_due_frees(&self, finished: u64) -> Vec<u32> {
        let mut st = self.state.locked();
        if st.doomed.is_empty() {
            return Vec::new();
        }
        let due: Vec<u32> = st
            .doomed
            .iter()
            .filter(|&(_, &after)| finished >= after)
            .map(|(&id, _)| id)
            .collect();
        for id in &due {
            st.doomed.remove(id);
        }
        due
    }

    /// The sequence number after which `id` may be used by a data operation.
    fn ready_after(st: &State, id: u32) -> u64 {
        st.last_access.get(id as usize).copied().unwrap_or(0)
    }

    /// Blocks until every submitted batch that uses datum `id` has ended. Does not block on
    /// one of the runtime's worker threads (the caller is a task of the running batch).
    pub fn wait_for_datum(&self, id: u32) {
        if self.on_own_thread() {
            return;
        }
        let mut st = self.state.locked();
        while st.finished < Self::ready_after(&st, id) {
            st = self.progress.wait_unpoisoned(st);
        }
    }

    /// Whether submitted work still uses datum `id`; if so, `waker` is woken at the next
    /// progress.
    pub fn datum_pending(&self, id: u32, waker: Option<&Waker>) -> bool {
        let mut st = self.state.locked();
        let pending = st.finished < Self::ready_after(&st, id);
        if let (true, Some(w)) = (pending, waker) {
            push_waker(&mut st.waiters, w);
        }
        pending
    }

    /// Starts the dispatcher thread if it is not running. Without it, submitted work would
    /// wait forever: the submission that cannot start it is refused (and the next one tries
    /// again).
    fn ensure_dispatcher(self: &Arc<Self>, engine: &Arc<Engine>, st: &mut State) -> Result<(), SubmitError> {
        if st.dispatcher.is_some() {
            return Ok(());
        }
        let (flow, engine) = (self.clone(), engine.clone());
        let h = std::thread::Builder::new()
            .name("hexec-flow".into())
            .spawn(move || flow.dispatch(&engine))
            .map_err(|e| SubmitError::NoDispatcher(e.to_string()))?;
        st.dispatcher = Some(h);
        Ok(())
    }

    /// The dispatcher: runs task batches and submitted graphs in order.
    fn dispatch(&self, engine: &Engine) {
        loop {
            let mut st = self.state.locked();
            let batch = loop {
                let front_is_mine = st
                    .queue
                    .front()
                    .is_some_and(|b| matches!(b.work, Work::Tasks(_) | Work::Graph(..)));
                // The open batch (the last one) waits while held, unless the cap is reached
                // (then the holder waits for room, which only running it makes).
                let held = st.holds > 0
                    && st.in_flight < self.cap
                    && st.queue.len() == 1
                    && st.queue.front().is_some_and(|b| matches!(b.work, Work::Tasks(_)));
                if !st.running && front_is_mine && !held {
                    st.running = true;
                    let batch = st.queue.pop_front().expect("the front was just seen");
                    st.running_graph = match &batch.work {
                        Work::Tasks(tb) => Some(tb.graph.clone()),
                        Work::Graph(g, ..) => Some(g.clone()),
                        Work::Caller => None,
                    };
                    break batch;
                }
                if st.shutdown && st.queue.is_empty() && !st.running {
                    return;
                }
                st.dispatcher_waiting = true;
                st = self.work.wait_unpoisoned(st);
                st.dispatcher_waiting = false;
            };
            // Task batches skip readers of poisoned data; graphs do not look.
            let poisoned = if matches!(batch.work, Work::Tasks(_)) {
                st.poisoned.clone()
            } else {
                HashMap::new()
            };
            drop(st);
            let (seq, tasks) = (batch.seq, batch.tasks);
            // Kept to settle the batch if hexec's own code panics while running it: its
            // waiters must not wait forever, nor the batches after it.
            let (task_end, graph_end) = match &batch.work {
                Work::Tasks(tb) => (Some(tb.end.clone()), None),
                Work::Graph(_, _, end) => (None, Some(end.clone())),
                Work::Caller => (None, None),
            };
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match batch.work {
                Work::Tasks(tb) => run_tasks(engine, tb, poisoned),
                Work::Graph(graph, opts, end) => run_graph(engine, &graph, opts, &end),
                Work::Caller => unreachable!("callers run their own graphs"),
            }));
            let updates = match ran {
                Ok(updates) => updates,
                Err(panic) => {
                    let message = format!("internal error in hexec: {}", hexec_kernels::panic_message(&*panic));
                    tracing::error!(%message, "a submitted batch stopped");
                    if let Some(end) = task_end.filter(|e| e.state.locked().outcomes.is_none()) {
                        let errors = (0..tasks as u32)
                            .map(|t| {
                                let e = TaskError::NotRun {
                                    task: format!("task #{t} of its batch"),
                                    message: message.clone(),
                                };
                                (t, e)
                            })
                            .collect();
                        end.finish(Outcomes { errors });
                    }
                    if let Some(end) = graph_end {
                        let wakers = {
                            let mut st = end.state.locked();
                            st.0.get_or_insert(Err(RunError::Internal {
                                worker: "hexec-flow".into(),
                                message: message.clone(),
                            }));
                            std::mem::take(&mut st.1)
                        };
                        end.ended.notify_all();
                        wakers.into_iter().for_each(Waker::wake);
                    }
                    let graph = self.state.locked().running_graph.clone();
                    graph.map_or_else(Vec::new, |g| {
                        graph_poison(
                            &g,
                            &Err(RunError::Internal {
                                worker: "hexec-flow".into(),
                                message,
                            }),
                        )
                    })
                }
            };
            {
                let mut st = self.state.locked();
                st.running_graph = None;
                apply_poison_locked(&mut st, updates);
            }
            self.end_batch(seq, tasks);
        }
    }

    /// Takes `excluded` as the runtime's retired workers for new submissions, unless
    /// submitted tasks not yet finished — queued, or in the batch the dispatcher runs — may
    /// run only on workers of `excluded` and `force` is off: then nothing changes and their
    /// names are the error. Checked and changed under one lock, so no submission slips in
    /// between. Returns the stranded tasks' names (failed when they reach a retired worker).
    pub fn exclude(
        &self,
        engine: &Engine,
        excluded: Vec<crate::topology::WorkerId>,
        force: bool,
    ) -> Result<Vec<String>, Vec<String>> {
        let mut st = self.state.locked();
        let graphs = st
            .running_graph
            .iter()
            .chain(st.queue.iter().filter_map(|b| match &b.work {
                Work::Tasks(tb) => Some(&tb.graph),
                Work::Graph(g, ..) => Some(g),
                Work::Caller => None,
            }));
        let mut names = Vec::new();
        for g in graphs {
            for t in 0..g.len() {
                if crate::sched::compile::only_excluded_may_run(g, t, &engine.machine, &excluded) {
                    names.push(g.task_name(t));
                }
            }
        }
        if !names.is_empty() && !force {
            return Err(names);
        }
        Self::take_retired(&mut st, excluded);
        Ok(names)
    }

    /// Forgets which tasks were found runnable (after a retire or restore) and takes the
    /// runtime's retired workers.
    pub fn forget_eligibility(&self, retired: Vec<crate::topology::WorkerId>) {
        Self::take_retired(&mut self.state.locked(), retired);
    }

    /// A new set of retired workers: what was found runnable, and the kernels whose GPU code
    /// was checked on the GPUs then in use (a restored GPU has not seen it), are forgotten.
    fn take_retired(st: &mut State, retired: Vec<crate::topology::WorkerId>) {
        st.runnable.clear();
        st.last_runnable = None;
        st.gpu_code_checked.clear();
        st.retired = retired;
    }

    /// Waits for everything submitted, then stops the dispatcher.
    pub fn shut_down(&self) {
        self.wait_all();
        let handle = {
            let mut st = self.state.locked();
            st.shutdown = true;
            st.dispatcher.take()
        };
        self.work.notify_all();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl<'r> TaskBuilder<&'r Runtime> {
    /// Submits the task: it runs after the earlier submissions that access its data, while
    /// the program goes on. Refused at once, naming the task, when it could never run (a
    /// freed datum or one of another runtime, operands that do not match its kernel, a
    /// restriction no worker satisfies, a write to read-only data). Waits while the runtime
    /// holds [`crate::RuntimeBuilder::max_submitted`] unfinished tasks.
    pub fn submit(self) -> Result<TaskHandle, SubmitError> {
        let (rt, spec) = self.into_parts();
        rt.flow.submit(&rt.engine, spec)
    }

    /// [`TaskBuilder::submit`] as a future: where `submit` would wait for room under the
    /// cap, this yields to the executor (woken through its waker).
    pub fn submit_async(self) -> impl Future<Output = Result<TaskHandle, SubmitError>> + 'r {
        let (rt, spec) = self.into_parts();
        let mut spec = Some(spec);
        std::future::poll_fn(move |cx| match rt.flow.try_submit(&rt.engine, &mut spec, cx.waker()) {
            Ok(Some(h)) => Poll::Ready(Ok(h)),
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        })
    }
}

/// Poison changes a batch makes: per datum, `Some(reason)` poisons it, `None` clears it.
type PoisonUpdates = Vec<(u32, Option<String>)>;

/// Runs a task batch: tasks reading poisoned data or cancelled are skipped from the start;
/// every task's handle gets its outcome.
fn run_tasks(engine: &Engine, tb: TaskBatch, mut poisoned: HashMap<u32, String>) -> PoisonUpdates {
    let TaskBatch { graph, ids, end } = tb;
    let name = |t: usize| graph.task_name(t);
    let n = graph.len();
    // From here on, handles cancel through the flags (the run reads them).
    let flags: Arc<[AtomicU8]> = {
        let mut st = end.state.locked();
        let cancelled = std::mem::take(&mut st.cancelled);
        let flags: Arc<[AtomicU8]> = (0..n as u32)
            .map(|t| {
                AtomicU8::new(if cancelled.contains(&t) {
                    CANCEL_DROPPED
                } else {
                    CANCEL_NONE
                })
            })
            .collect();
        st.flags = Some(flags.clone());
        flags
    };
    let flag = |t: usize| flags[t].load(Ordering::Acquire);
    let accesses = |t: usize| &graph.accesses[graph.tasks[t].accesses.range()];
    // Why each task that will not run does not (None: it runs). Poison is followed through
    // the batch in order: a task that will run clears what it writes (if it then fails, the
    // run skips its dependents itself), one that will not poisons it.
    let mut cause: Vec<Option<TaskError>> = vec![None; n];
    for (t, c) in cause.iter_mut().enumerate() {
        if flag(t) == CANCEL_DROPPED {
            *c = Some(TaskError::Cancelled { task: name(t) });
        } else if let Some((d, why)) = accesses(t)
            .iter()
            .filter(|(_, a)| a.reads())
            .find_map(|&(d, _)| poisoned.get(&ids[d as usize]).map(|w| (d, w)))
        {
            let datum = engine
                .store
                .cell(engine.id, ids[d as usize])
                .map_or_else(|| format!("data#{}", ids[d as usize]), |c| c.name.clone());
            *c = Some(TaskError::Skipped {
                task: name(t),
                cause: format!("it reads '{datum}', which {why}"),
            });
        }
        for &(d, a) in accesses(t) {
            if a.writes() {
                match c {
                    Some(e) => poisoned.insert(ids[d as usize], should_have_written(&name(t), e)),
                    None => poisoned.remove(&ids[d as usize]),
                };
            }
        }
    }
    // Cancelled ones are skipped through their flags.
    let skipped: Vec<u32> = (0..n as u32)
        .filter(|&t| matches!(cause[t as usize], Some(TaskError::Skipped { .. })))
        .collect();
    let result = loop {
        let control = super::TaskControl {
            skipped: &skipped,
            cancels: Some(&flags),
        };
        match engine.run_flow(&graph, RunOptions::keep_going(), &control) {
            // Held by the application (`read_with`) between our turn and now: wait for it.
            Err(RunError::Submit(SubmitError::DataBusy { .. })) => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            r => break r,
        }
    };
    let failures = match result {
        Ok(_) => Vec::new(),
        Err(RunError::TaskFailed { report }) => report.failures,
        Err(e) => {
            // Nothing is known to have run: every task gets the error, every written datum
            // is poisoned.
            let message = e.to_string();
            for (t, c) in cause.iter_mut().enumerate() {
                c.get_or_insert_with(|| TaskError::NotRun {
                    task: name(t),
                    message: message.clone(),
                });
            }
            Vec::new()
        }
    };
    for f in failures {
        let t = f.index;
        // Cancelled only when the cancellation stopped it (not a failure of its own).
        cause[t] = Some(
            if flag(t) == CANCEL_REQUESTED && f.message == super::worker::CANCELLED_WHILE_RUNNING {
                TaskError::Cancelled { task: name(t) }
            } else {
                TaskError::Failed(Box::new(f))
            },
        );
    }
    // Dropped by a worker after a cancellation during the run.
    for (t, c) in cause.iter_mut().enumerate() {
        if c.is_none() && flag(t) == CANCEL_DROPPED {
            *c = Some(TaskError::Cancelled { task: name(t) });
        }
    }
    // Dependents of a task that did not complete were skipped by the run: say which. Edges
    // come grouped by their later task, each after its earlier tasks' own edges.
    let mut root_cause: Vec<Option<u32>> = (0..n as u32).map(|t| cause[t as usize].as_ref().map(|_| t)).collect();
    for &(from, to) in &graph.edges {
        if let (Some(r), None) = (root_cause[from as usize], root_cause[to as usize]) {
            root_cause[to as usize] = Some(r);
            cause[to as usize] = Some(TaskError::Skipped {
                task: name(to as usize),
                cause: format!(
                    "it depends on '{}', which {}",
                    name(r as usize),
                    did_not_complete(cause[r as usize].as_ref())
                ),
            });
        }
    }
    let mut updates = Vec::new();
    for (t, c) in cause.iter().enumerate() {
        for &(d, a) in accesses(t) {
            if !a.writes() {
                continue;
            }
            let id = ids[d as usize];
            match c {
                Some(e) => updates.push((id, Some(should_have_written(&name(t), e)))),
                None => updates.push((id, None)),
            }
        }
    }
    let errors = cause
        .into_iter()
        .enumerate()
        .filter_map(|(t, c)| c.map(|e| (t as u32, e)))
        .collect();
    end.finish(Outcomes { errors });
    updates
}

/// Why a datum is poisoned: `task`, which should have written it, ended as `e` says.
fn should_have_written(task: &str, e: &TaskError) -> String {
    format!("'{task}' should have written, and it {}", did_not_complete(Some(e)))
}

/// How a task that did not complete ended, for a dependent's message.
fn did_not_complete(e: Option<&TaskError>) -> String {
    match e {
        Some(TaskError::Failed(f)) => format!("failed ({})", f.message),
        Some(TaskError::Cancelled { .. }) => "was cancelled".into(),
        Some(TaskError::Skipped { cause, .. }) => format!("was skipped ({cause})"),
        Some(TaskError::NotRun { message, .. }) => format!("did not run ({message})"),
        Some(TaskError::WaitInsideTask) | None => "did not complete".into(),
    }
}

/// Runs a submitted graph; its failures poison what it would have written.
fn run_graph(engine: &Engine, graph: &Graph, opts: RunOptions, end: &GraphEnd) -> PoisonUpdates {
    let result = engine.run_with(graph, opts);
    let updates = graph_poison(graph, &result);
    let wakers = {
        let mut st = end.state.locked();
        st.0 = Some(result);
        std::mem::take(&mut st.1)
    };
    end.ended.notify_all();
    wakers.into_iter().for_each(Waker::wake);
    updates
}

/// The poison changes of a graph run's result: what it wrote is clean when it succeeded;
/// when it did not, everything it would have written is poisoned (a run stopped early does
/// not say which tasks ran).
pub(crate) fn graph_poison(graph: &Graph, result: &Result<RunReport, RunError>) -> PoisonUpdates {
    let mut updates = Vec::new();
    let why = match result {
        Ok(_) => None,
        Err(e) => Some(format!(
            "a graph run that should have written it did not complete ({e})"
        )),
    };
    for t in 0..graph.len() {
        for &(d, a) in &graph.accesses[graph.tasks[t].accesses.range()] {
            if let (true, GraphDatum::Stored { id, .. }) = (a.writes(), &graph.data[d as usize]) {
                updates.push((*id, why.clone()));
            }
        }
    }
    updates
}

/// Applies a blocking graph run's poison changes (the caller ran it on its own thread).
impl Flow {
    pub fn apply_poison(&self, updates: PoisonUpdates) {
        apply_poison_locked(&mut self.state.locked(), updates);
    }

    /// A blocking run's poison changes: none when it succeeded and nothing is poisoned (the
    /// usual case, which then costs no walk over the graph).
    pub fn after_run(&self, graph: &Graph, result: &Result<RunReport, RunError>) {
        if result.is_ok() && self.state.locked().poisoned.is_empty() {
            return;
        }
        self.apply_poison(graph_poison(graph, result));
    }
}

fn apply_poison_locked(st: &mut State, updates: PoisonUpdates) {
    for (id, reason) in updates {
        match reason {
            Some(r) => st.poisoned.insert(id, r),
            None => st.poisoned.remove(&id),
        };
    }
}

/// Adds a waker unless one that wakes the same task is there.
fn push_waker(wakers: &mut Vec<Waker>, w: &Waker) {
    if !wakers.iter().any(|x| x.will_wake(w)) {
        wakers.push(w.clone());
    }
}

/// A hold on the open task batch ([`Flow::hold`]), released when dropped.
pub(crate) struct FlowHold<'f> {
    flow: &'f Flow,
}

impl Drop for FlowHold<'_> {
    fn drop(&mut self) {
        let mut st = self.flow.state.locked();
        st.holds -= 1;
        if st.holds == 0 && st.dispatcher_waiting {
            self.flow.work.notify_one();
        }
    }
}

/// Ends a caller's turn when dropped (see [`Flow::run_in_turn`]).
struct EndOnDrop<'f> {
    flow: &'f Flow,
    seq: u64,
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.flow.end_batch(self.seq, 0);
    }
}

/// Records that batch `seq` uses datum `id`.
fn mark_access(last_access: &mut Vec<u64>, id: u32, seq: u64) {
    let i = id as usize;
    if last_access.len() <= i {
        last_access.resize(i + 1, 0);
    }
    last_access[i] = seq + 1;
}

/// The store ids of a graph's stored data.
fn stored_ids(graph: &Graph) -> Vec<u32> {
    graph
        .data
        .iter()
        .filter_map(|d| match d {
            GraphDatum::Stored { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}
