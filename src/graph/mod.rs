//! Task graphs: tasks, data accesses, dependencies, priorities, resource requests and
//! restrictions, and their file formats ([`formats`]). Their validation against a machine is
//! `crate::sched::compile`.
//!
//! Dependencies are inferred from the order of data accesses, as StarPU's task insertion
//! does (sequential consistency): a task that reads a datum runs after the last task that
//! wrote it; a task that writes a datum runs after the last writer and after every reader
//! since. Explicit dependencies (`after`) are added on top.
//!
//! Invariants:
//! - every edge goes from a task to a task added *later* (a task can only name tasks that
//!   already exist), so a [`Graph`] is acyclic by construction and insertion order is a
//!   topological order. File loaders order tasks topologically before adding them and report
//!   a cycle with the names of the tasks on it.
//! - per-task storage is flat (accesses, parameters and edges live in shared vectors indexed
//!   by ranges), so building a graph allocates per graph, not per task.
//! - mistakes made while building (a handle from another runtime, a dependency on another
//!   graph's task) are recorded and reported at submit, naming the task.

pub mod formats;
mod handle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hexec_kernels::{Access, ElemType, Element, Kernel};

use crate::topology::DeviceKind;

pub use handle::{Data, DataRef, TaskId, TempData, VirtualData};

static NEXT_GRAPH_ID: AtomicU64 = AtomicU64::new(1);

/// Where a task may run, beyond what its kernel's implementations allow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Restriction {
    /// Only on workers of this kind.
    pub device: Option<DeviceKind>,
    /// Only on the worker with this name (`cpu3`).
    pub worker: Option<String>,
    /// Only on workers that have every one of these features.
    pub features: Vec<String>,
    /// Only on GPUs with at least this much memory (bytes).
    pub gpu_memory: Option<u64>,
}

impl Restriction {
    fn is_none(&self) -> bool {
        self.device.is_none() && self.worker.is_none() && self.features.is_empty() && self.gpu_memory.is_none()
    }
}

/// A datum as a graph knows it.
#[derive(Clone, Debug)]
pub(crate) enum GraphDatum {
    /// In a runtime's data store.
    Stored { rt: u64, id: u32 },
    /// Size only.
    Virtual { name: String, bytes: u64 },
    /// A temporary of this graph: zeroed when first used in a run, freed after its last use.
    Temp { name: String, elem: ElemType, len: usize },
}

impl GraphDatum {
    /// Whether the datum is a temporary (freed after its last use in a run).
    pub fn is_temp(&self) -> bool {
        matches!(self, GraphDatum::Temp { .. })
    }
}

/// Tracks the last writer and the readers since, for dependency inference.
#[derive(Clone, Debug, Default)]
struct AccessTracker {
    last_writer: Option<u32>,
    readers: Vec<u32>,
}

/// Half-open range into one of the graph's flat vectors.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// One task's record; its accesses and parameters live in the graph's flat vectors.
#[derive(Clone, Debug)]
pub(crate) struct TaskRecord {
    pub kernel: u32,
    pub name: Option<Box<str>>,
    pub accesses: Span,
    pub params: Span,
    pub priority: i32,
    pub cores: u32,
    /// Index into `Graph::restrictions`; 0 is "no restriction".
    pub restriction: u32,
}

/// An error recorded while building, reported at submit.
#[derive(Clone, Debug)]
pub(crate) struct DeferredError {
    pub task: u32,
    pub message: String,
}

/// A task graph. Build it with [`Graph::task`]; run it with
/// [`Runtime::run`](crate::Runtime::run).
///
/// ```
/// use hexec::{Graph, kernels::builtin};
/// let mut g = Graph::new();
/// let file = g.virtual_data("input.dat", 1 << 20);
/// let a = g.task(&builtin::noop()).name("produce").write(file).add();
/// let b = g.task(&builtin::noop()).name("consume").read(file).add();
/// assert_eq!(g.len(), 2);
/// assert_eq!(g.dependencies(b), vec![a]);
/// ```
#[derive(Clone, Debug)]
pub struct Graph {
    id: u64,
    pub(crate) kernels: Vec<Arc<Kernel>>,
    /// Kernel identity (the `Arc`'s address, kept alive by `kernels`) → slot.
    kernel_index: HashMap<usize, u32>,
    pub(crate) tasks: Vec<TaskRecord>,
    pub(crate) accesses: Vec<(u32, Access)>,
    pub(crate) params: Vec<f64>,
    /// `(from, to)`, always `from < to`.
    pub(crate) edges: Vec<(u32, u32)>,
    pub(crate) data: Vec<GraphDatum>,
    data_index: HashMap<DataRef, u32>,
    trackers: Vec<AccessTracker>,
    pub(crate) restrictions: Vec<Restriction>,
    pub(crate) deferred: Vec<DeferredError>,
    /// When a run of the graph should be done (from its start).
    pub(crate) deadline: Option<std::time::Duration>,
    /// The number of its first task in unnamed tasks' names (`kernel#N`): 0, or for a batch of
    /// submitted tasks, the tasks submitted before it, so that names run across batches.
    pub(crate) first_number: u64,
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Graph {
            id: NEXT_GRAPH_ID.fetch_add(1, Ordering::Relaxed),
            kernels: Vec::new(),
            kernel_index: HashMap::new(),
            tasks: Vec::new(),
            accesses: Vec::new(),
            params: Vec::new(),
            edges: Vec::new(),
            data: Vec::new(),
            data_index: HashMap::new(),
            trackers: Vec::new(),
            restrictions: vec![Restriction::default()],
            deferred: Vec::new(),
            deadline: None,
            first_number: 0,
        }
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the graph has no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Number of dependency edges (explicit and inferred, each pair once).
    pub fn num_edges(&self) -> usize {
        self.edges.len()
    }

    /// Declares a datum with a size and no storage.
    pub fn virtual_data(&mut self, name: impl Into<String>, bytes: u64) -> VirtualData {
        let id = self.data.len() as u32;
        let v = VirtualData { graph: self.id, id };
        self.data.push(GraphDatum::Virtual {
            name: name.into(),
            bytes,
        });
        self.trackers.push(AccessTracker::default());
        self.data_index.insert(DataRef::Virtual(v), id);
        v
    }

    /// Asks runs of this graph to finish within `d` of their start: the run predicts its
    /// finish from the performance models, warns at submit when the prediction misses, and
    /// reports the prediction, the deadline and whether it was met.
    pub fn set_deadline(&mut self, d: std::time::Duration) {
        self.deadline = Some(d);
    }

    /// The graph's deadline, if it has one.
    pub fn deadline(&self) -> Option<std::time::Duration> {
        self.deadline
    }

    /// A temporary of `len` elements: intermediate data that exists only while a run of this
    /// graph needs it. It reads as zeros until a task writes it, and all of its copies (host,
    /// GPUs, spill file) are freed as soon as the last task that uses it has finished, so that
    /// a graph whose intermediates are consumed as it goes needs memory only for the live
    /// ones. Its contents are not kept after the run (use stored [`Data`] for results).
    ///
    /// ```
    /// use hexec::{Graph, kernels::builtin};
    /// let mut g = Graph::new();
    /// let tile = g.temp::<f32>("tile", 1024);
    /// g.task(&builtin::fill()).write(tile).param(1.0).add();
    /// ```
    pub fn temp<T: Element>(&mut self, name: impl Into<String>, len: usize) -> TempData<T> {
        TempData::new(self.temp_of(name.into(), T::ELEM, len))
    }

    /// An untyped temporary (for loaders).
    pub(crate) fn temp_of(&mut self, name: String, elem: ElemType, len: usize) -> VirtualData {
        let id = self.data.len() as u32;
        let v = VirtualData { graph: self.id, id };
        self.data.push(GraphDatum::Temp { name, elem, len });
        self.trackers.push(AccessTracker::default());
        self.data_index.insert(DataRef::Virtual(v), id);
        v
    }

    /// Starts a task running `kernel`; finish it with [`TaskBuilder::add`].
    pub fn task(&mut self, kernel: &Arc<Kernel>) -> TaskBuilder<&mut Graph> {
        TaskBuilder::new(self, kernel)
    }

    /// The display name of a task: its given name, or `kernel#index`, with control
    /// characters escaped (`crate::limits::escape_controls`): names come from files and
    /// go into error messages, summaries and logs printed on terminals.
    pub fn task_name(&self, index: usize) -> String {
        let t = &self.tasks[index];
        match &t.name {
            Some(n) => crate::limits::escape_controls(n).into_owned(),
            None => format!(
                "{}#{}",
                self.kernels[t.kernel as usize].name(),
                self.first_number + index as u64
            ),
        }
    }

    /// The kernel name of a task.
    pub fn task_kernel(&self, index: usize) -> &str {
        self.kernels[self.tasks[index].kernel as usize].name()
    }

    /// The tasks that `task` directly depends on (explicit and inferred), sorted, deduplicated.
    pub fn dependencies(&self, task: TaskId) -> Vec<TaskId> {
        let mut v: Vec<TaskId> = self
            .edges
            .iter()
            .filter(|&&(_, to)| to == task.index)
            .map(|&(from, _)| TaskId {
                graph: self.id,
                index: from,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The data `consumer` reads that `producer` writes: what one hands the other (the
    /// drivers' copy times between them, and the early copies of planned consumers).
    pub(crate) fn handed_over(&self, producer: u32, consumer: u32) -> impl Iterator<Item = u32> + '_ {
        let acc = |x: u32| &self.accesses[self.tasks[x as usize].accesses.range()];
        acc(consumer)
            .iter()
            .filter(move |(d, a)| a.reads() && acc(producer).iter().any(|(e, b)| e == d && b.writes()))
            .map(|&(d, _)| d)
    }

    /// Whether a task only writes data (reads nothing): a producer.
    pub(crate) fn only_produces(&self, task: u32) -> bool {
        let acc = &self.accesses[self.tasks[task as usize].accesses.range()];
        !acc.is_empty() && acc.iter().all(|(_, a)| !a.reads())
    }

    /// Per datum: the accesses naming it when it is a temporary (the runtime and the
    /// simulator free it when they have all finished), `u32::MAX` otherwise. `None` when the
    /// graph has no temporaries.
    pub(crate) fn temp_uses(&self) -> Option<Vec<u32>> {
        if !self.data.iter().any(GraphDatum::is_temp) {
            return None;
        }
        let mut uses = vec![0u32; self.data.len()];
        for &(d, _) in &self.accesses {
            uses[d as usize] += 1;
        }
        for (u, d) in uses.iter_mut().zip(&self.data) {
            if !d.is_temp() {
                *u = u32::MAX;
            }
        }
        Some(uses)
    }

    /// The graph's display name for a datum.
    pub(crate) fn datum_label(&self, local: u32) -> String {
        match &self.data[local as usize] {
            GraphDatum::Stored { id, .. } => format!("data#{id}"),
            GraphDatum::Virtual { name, .. } | GraphDatum::Temp { name, .. } => format!("'{name}'"),
        }
    }

    fn local_datum(&mut self, d: DataRef) -> Result<u32, String> {
        if let Some(&i) = self.data_index.get(&d) {
            return Ok(i);
        }
        match d {
            DataRef::Virtual(v) => Err(format!(
                "uses datum #{} of another graph (graph {} vs this graph {}): size-only data and temporaries belong to the graph that made them",
                v.id, v.graph, self.id
            )),
            DataRef::Stored { rt, id } => {
                let local = self.data.len() as u32;
                self.data.push(GraphDatum::Stored { rt, id });
                self.trackers.push(AccessTracker::default());
                self.data_index.insert(d, local);
                Ok(local)
            }
        }
    }

    fn kernel_slot(&mut self, k: &Arc<Kernel>) -> u32 {
        let key = Arc::as_ptr(k) as usize;
        if let Some(&i) = self.kernel_index.get(&key) {
            return i;
        }
        let i = self.kernels.len() as u32;
        self.kernels.push(k.clone());
        self.kernel_index.insert(key, i);
        i
    }

    fn restriction_slot(&mut self, r: Restriction) -> u32 {
        if r.is_none() {
            return 0;
        }
        if let Some(i) = self.restrictions.iter().position(|x| *x == r) {
            return i as u32;
        }
        self.restrictions.push(r);
        (self.restrictions.len() - 1) as u32
    }
}

/// A task as described by its builder, before it is added to a graph (or submitted to a
/// runtime, which adds it to the graph of its next batch).
#[derive(Clone, Debug)]
pub(crate) struct TaskSpec {
    pub kernel: Arc<Kernel>,
    pub name: Option<Box<str>>,
    pub accesses: Vec<(DataRef, Access)>,
    pub params: Vec<f64>,
    pub after: Vec<TaskId>,
    pub priority: i32,
    pub cores: u32,
    pub restriction: Restriction,
}

/// Builds one task for its target: a [`Graph`] (finished by [`TaskBuilder::add`]) or a
/// runtime (finished by `submit`, see `Runtime::task`). Nothing reaches the target before
/// that call.
#[must_use = "a task is only added by .add() (or submitted by .submit())"]
pub struct TaskBuilder<T> {
    target: T,
    spec: TaskSpec,
}

impl<T> TaskBuilder<T> {
    /// A builder of a task running `kernel`, for `target`.
    pub(crate) fn new(target: T, kernel: &Arc<Kernel>) -> Self {
        TaskBuilder {
            target,
            spec: TaskSpec {
                kernel: kernel.clone(),
                name: None,
                accesses: Vec::new(),
                params: Vec::new(),
                after: Vec::new(),
                priority: 0,
                cores: 1,
                restriction: Restriction::default(),
            },
        }
    }

    /// The target and the task.
    pub(crate) fn into_parts(self) -> (T, TaskSpec) {
        (self.target, self.spec)
    }

    /// Names the task (names appear in errors, traces and summaries).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.spec.name = Some(name.into().into_boxed_str());
        self
    }

    /// Reads a datum.
    pub fn read(self, d: impl Into<DataRef>) -> Self {
        self.access(d, Access::Read)
    }

    /// Overwrites a datum without reading it.
    pub fn write(self, d: impl Into<DataRef>) -> Self {
        self.access(d, Access::Write)
    }

    /// Reads and updates a datum.
    pub fn read_write(self, d: impl Into<DataRef>) -> Self {
        self.access(d, Access::ReadWrite)
    }

    /// Accesses a datum in the given mode. Operands reach the kernel in this order.
    pub fn access(mut self, d: impl Into<DataRef>, mode: Access) -> Self {
        self.spec.accesses.push((d.into(), mode));
        self
    }

    /// Appends a scalar parameter.
    pub fn param(mut self, v: impl Into<f64>) -> Self {
        self.spec.params.push(v.into());
        self
    }

    /// Appends scalar parameters.
    pub fn params(mut self, vs: &[f64]) -> Self {
        self.spec.params.extend_from_slice(vs);
        self
    }

    /// Runs after `t` (in addition to inferred dependencies), a task of the same graph.
    pub fn after(mut self, t: TaskId) -> Self {
        self.spec.after.push(t);
        self
    }

    /// Higher runs earlier among ready tasks (default 0).
    pub fn priority(mut self, p: i32) -> Self {
        self.spec.priority = p;
        self
    }

    /// Cores the task needs (default 1). While it runs, `n - 1` other CPU workers start
    /// nothing; the kernel sees `ctx.cores()` and may run that many threads.
    pub fn cores(mut self, n: u32) -> Self {
        self.spec.cores = n;
        self
    }

    /// Only on workers of this kind.
    pub fn on(mut self, kind: DeviceKind) -> Self {
        self.spec.restriction.device = Some(kind);
        self
    }

    /// Only on the named worker.
    pub fn on_worker(mut self, name: impl Into<String>) -> Self {
        self.spec.restriction.worker = Some(name.into());
        self
    }

    /// Only on workers with this feature.
    pub fn require_feature(mut self, f: impl Into<String>) -> Self {
        self.spec.restriction.features.push(f.into());
        self
    }

    /// Only on a GPU with at least `bytes` of memory.
    pub fn gpu_memory(mut self, bytes: u64) -> Self {
        self.spec.restriction.gpu_memory = Some(bytes);
        self
    }

    /// Sets the whole restriction.
    pub fn restrict(mut self, r: Restriction) -> Self {
        self.spec.restriction = r;
        self
    }
}

impl TaskBuilder<&mut Graph> {
    /// Adds the task, inferring its dependencies from its accesses.
    pub fn add(self) -> TaskId {
        let (g, spec) = self.into_parts();
        g.push(spec)
    }
}

impl Graph {
    /// Adds a task, inferring its dependencies from its accesses; mistakes (a datum of
    /// another graph, a dependency on a task of another graph) are deferred to submit.
    pub(crate) fn push(&mut self, spec: TaskSpec) -> TaskId {
        let TaskSpec {
            kernel,
            name,
            accesses,
            params,
            after,
            priority,
            cores,
            restriction,
        } = spec;
        let g = self;
        let index = g.tasks.len() as u32;
        let edges_start = g.edges.len();
        let kernel = g.kernel_slot(&kernel);
        let restriction = g.restriction_slot(restriction);
        let acc_start = g.accesses.len() as u32;
        for (d, mode) in accesses {
            match g.local_datum(d) {
                Ok(local) => {
                    g.accesses.push((local, mode));
                    let tr = &mut g.trackers[local as usize];
                    if let Some(w) = tr.last_writer {
                        if w != index {
                            g.edges.push((w, index));
                        }
                    }
                    if mode.writes() {
                        for &r in &tr.readers {
                            if r != index {
                                g.edges.push((r, index));
                            }
                        }
                        tr.readers.clear();
                        tr.last_writer = Some(index);
                    } else {
                        tr.readers.push(index);
                    }
                }
                Err(message) => g.deferred.push(DeferredError { task: index, message }),
            }
        }
        for t in after {
            if t.graph != g.id || t.index >= index {
                g.deferred.push(DeferredError {
                    task: index,
                    message: format!("depends on task #{} of another graph", t.index),
                });
            } else {
                g.edges.push((t.index, index));
            }
        }
        dedup_tail(&mut g.edges, edges_start);
        let params_start = g.params.len() as u32;
        g.params.extend_from_slice(&params);
        g.tasks.push(TaskRecord {
            kernel,
            name,
            accesses: Span {
                start: acc_start,
                len: g.accesses.len() as u32 - acc_start,
            },
            params: Span {
                start: params_start,
                len: params.len() as u32,
            },
            priority,
            cores,
            restriction,
        });
        TaskId { graph: g.id, index }
    }
}

/// Removes repeated edges among `edges[start..]` (one task's incoming edges: an explicit
/// dependency that inference also found, or two data written by the same task).
fn dedup_tail(edges: &mut Vec<(u32, u32)>, start: usize) {
    let tail = &mut edges[start..];
    if tail.len() < 2 {
        return;
    }
    tail.sort_unstable();
    let mut kept = 1;
    for i in 1..tail.len() {
        if tail[i] != tail[kept - 1] {
            tail[kept] = tail[i];
            kept += 1;
        }
    }
    edges.truncate(start + kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexec_kernels::builtin;

    #[test]
    fn infers_raw_war_waw() {
        let mut g = Graph::new();
        let x = g.virtual_data("x", 8);
        let w1 = g.task(&builtin::noop()).write(x).add();
        let r1 = g.task(&builtin::noop()).read(x).add();
        let r2 = g.task(&builtin::noop()).read(x).add();
        let w2 = g.task(&builtin::noop()).read_write(x).add();
        let r3 = g.task(&builtin::noop()).read(x).add();
        assert_eq!(g.dependencies(w1), vec![]);
        assert_eq!(g.dependencies(r1), vec![w1]);
        assert_eq!(g.dependencies(r2), vec![w1]);
        assert_eq!(g.dependencies(w2), vec![w1, r1, r2]);
        assert_eq!(g.dependencies(r3), vec![w2]);
        assert!(g.edges.iter().all(|&(a, b)| a < b));
        // An explicit dependency that inference also finds is stored once.
        let y = g.virtual_data("y", 8);
        let p = g.task(&builtin::noop()).write(x).write(y).add();
        let before = g.num_edges();
        g.task(&builtin::noop()).read(x).read(y).after(p).add();
        assert_eq!(g.num_edges(), before + 1);
    }

    #[test]
    fn explicit_deps_and_foreign_tasks() {
        let mut g = Graph::new();
        let a = g.task(&builtin::noop()).add();
        let b = g.task(&builtin::noop()).after(a).add();
        assert_eq!(g.dependencies(b), vec![a]);
        let mut other = Graph::new();
        let o = other.task(&builtin::noop()).add();
        g.task(&builtin::noop()).name("bad").after(o).add();
        assert_eq!(g.deferred.len(), 1);
        assert_eq!(g.deferred[0].task, 2);
    }

    #[test]
    fn params_and_names() {
        let mut g = Graph::new();
        g.task(&builtin::spin()).param(0.5f32).add();
        g.task(&builtin::noop()).name("second").add();
        g.task(&builtin::axpy()).params(&[1.0, 2.0]).add();
        assert_eq!(&g.params[g.tasks[0].params.range()], &[0.5]);
        assert!(g.params[g.tasks[1].params.range()].is_empty());
        assert_eq!(&g.params[g.tasks[2].params.range()], &[1.0, 2.0]);
        assert_eq!(g.task_name(0), "spin#0");
        assert_eq!(g.task_name(1), "second");
        assert_eq!(g.kernels.len(), 3);
    }
}
