//! Submit-time validation of a [`Graph`] against a [`Machine`], producing the flat form the
//! runtime executes: successor lists (CSR), dependency counts, roots, and the scheduling
//! [`Plan`].
//!
//! Every rejection names the task (and the datum, kernel or worker concerned): an impossible
//! graph is an error before anything runs, never a hang.

use std::collections::HashMap;
use std::sync::Arc;

use hexec_kernels::{Access, ElemType, Kernel};

use super::{EligibleSet, Plan, WorkerMask, MAX_BANDS};
use crate::graph::{Graph, Restriction};
use crate::topology::{DeviceKind, Machine, WorkerId};

/// What compile needs to know about each datum of the graph (resolved by the runtime).
#[derive(Clone, Debug)]
pub struct DatumInfo<'a> {
    /// Name for errors (quoted when shown).
    pub name: &'a str,
    /// `None` for a size-only datum.
    pub elem: Option<ElemType>,
    pub bytes: u64,
    pub read_only: bool,
}

/// Why a graph was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The thread that runs submitted work could not be started (the runtime's; the next
    /// submission tries again).
    #[error("the submission dispatcher thread could not be started: {0}")]
    NoDispatcher(String),
    /// A task that is invalid as built.
    #[error("task '{task}': {message}")]
    InvalidTask {
        /// The task's name.
        task: String,
        /// What is wrong.
        message: String,
    },
    /// A task names a datum this runtime does not know.
    #[error("task '{task}' uses datum {datum}, which this runtime does not know ({detail})")]
    UnknownData {
        /// The task's name.
        task: String,
        /// The datum's name.
        datum: String,
        /// Why it is unknown.
        detail: String,
    },
    /// A task names a datum twice, writing it at least once.
    #[error("task '{task}' accesses datum {datum} twice, and at least once to write it: a kernel would see one buffer as two")]
    DuplicateAccess {
        /// The task's name.
        task: String,
        /// The datum's name.
        datum: String,
    },
    /// A task writes a read-only datum.
    #[error("task '{task}' writes datum {datum}, which is read-only")]
    ReadOnlyWrite {
        /// The task's name.
        task: String,
        /// The datum's name.
        datum: String,
    },
    /// A task's operands or parameters do not match its kernel's signature.
    #[error("task '{task}': kernel '{kernel}' {reason}")]
    Signature {
        /// The task's name.
        task: String,
        /// The kernel's name.
        kernel: String,
        /// The mismatch.
        reason: String,
    },
    /// A kernel's GPU code does not compile or validate on a GPU the task may run on.
    #[error("task '{task}': the GPU code of kernel '{kernel}' cannot run on {worker}: it {message}")]
    GpuCode {
        /// The task's name.
        task: String,
        /// The kernel's name.
        kernel: String,
        /// The GPU worker's name.
        worker: String,
        /// What the GPU reported.
        message: String,
    },
    /// No worker satisfies the task's restrictions.
    #[error("task '{task}' can run on no worker of this machine: {reason}")]
    Unsatisfiable {
        /// The task's name.
        task: String,
        /// Why none does.
        reason: String,
    },
    /// A datum (a temporary, allocated only once a task uses it) too large for the machine.
    #[error("datum '{datum}' would need {bytes} bytes, more than {limit}")]
    DatumTooLarge {
        /// The datum's name.
        datum: String,
        /// The bytes it would need.
        bytes: u128,
        /// What it exceeds.
        limit: String,
    },
    /// A datum is in use by another run.
    #[error("datum {datum} is in use by another run")]
    DataBusy {
        /// The datum's name.
        datum: String,
    },
    /// A datum was freed.
    #[error("datum {datum} was freed")]
    DataFreed {
        /// The datum's name.
        datum: String,
    },
    /// The graph has more tasks than supported.
    #[error("the graph has {tasks} tasks; at most {max} are supported")]
    TooLarge {
        /// Its tasks.
        tasks: usize,
        /// The most supported.
        max: usize,
    },
}

/// A graph's edges in compressed form: who waits for whom.
#[derive(Debug, Clone)]
pub struct Successors {
    /// `succ[off[t]..off[t+1]]` are the tasks that wait for `t`.
    pub off: Vec<u32>,
    pub succ: Vec<u32>,
    /// Number of predecessors per task.
    pub indegree: Vec<u32>,
}

impl Successors {
    /// Builds the successor lists of a graph (counting sort on the source task).
    pub fn of(graph: &Graph) -> Self {
        let n = graph.len();
        let mut off = vec![0u32; n + 1];
        let mut indegree = vec![0u32; n];
        for &(from, to) in &graph.edges {
            debug_assert!(from < to, "graph edges always point forward");
            off[from as usize + 1] += 1;
            indegree[to as usize] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        let mut fill = off.clone();
        let mut succ = vec![0u32; graph.edges.len()];
        for &(from, to) in &graph.edges {
            succ[fill[from as usize] as usize] = to;
            fill[from as usize] += 1;
        }
        Successors { off, succ, indegree }
    }

    /// The tasks that wait for `t`.
    #[inline]
    pub fn of_task(&self, t: u32) -> &[u32] {
        &self.succ[self.off[t as usize] as usize..self.off[t as usize + 1] as usize]
    }
}

/// Predecessor lists as one CSR array (a `Vec` per task would cost an allocation and 24
/// bytes each), for the planners that walk a graph backwards.
#[derive(Debug)]
pub struct Predecessors {
    off: Vec<usize>,
    pred: Vec<u32>,
}

impl Predecessors {
    /// Inverts successor lists; each task's predecessors come in increasing task order.
    pub fn of(edges: &Successors) -> Self {
        let n = edges.indegree.len();
        let mut off = vec![0usize; n + 1];
        for t in 0..n {
            off[t + 1] = off[t] + edges.indegree[t] as usize;
        }
        let mut pred = vec![0u32; off[n]];
        let mut fill = off.clone();
        for t in 0..n as u32 {
            for &s in edges.of_task(t) {
                pred[fill[s as usize]] = t;
                fill[s as usize] += 1;
            }
        }
        Predecessors { off, pred }
    }

    /// The tasks `t` waits for.
    #[inline]
    pub fn of_task(&self, t: u32) -> &[u32] {
        &self.pred[self.off[t as usize]..self.off[t as usize + 1]]
    }
}

/// A graph ready to execute on one machine.
#[derive(Debug)]
pub struct CompiledGraph {
    pub edges: Successors,
    /// Tasks with no predecessor, highest priority first, then insertion order.
    pub roots: Vec<u32>,
    pub plan: Plan,
    /// The largest `cores` request of any task (1 for most graphs).
    pub max_cores: u32,
}

impl CompiledGraph {
    /// Successors of a task.
    #[inline]
    pub fn successors(&self, t: u32) -> &[u32] {
        self.edges.of_task(t)
    }
}

/// The most tasks a graph may have (task indices are `u32`).
pub const MAX_TASKS: usize = u32::MAX as usize - 1;

/// Validates `graph` for `machine` and builds its executable form.
pub fn compile(graph: &Graph, machine: &Machine, data: &[DatumInfo<'_>]) -> Result<CompiledGraph, SubmitError> {
    compile_with_priorities(graph, machine, data, None, &[])
}

/// Priorities for every task computed from a graph's successor lists.
pub type RankFn<'a> = dyn Fn(&Successors) -> Vec<i32> + 'a;

/// [`compile`] with priorities that replace the tasks' own, computed from the graph's
/// successor lists (planning policies derive them from the critical path), so that those
/// lists are built once.
pub fn compile_with_priorities(
    graph: &Graph,
    machine: &Machine,
    data: &[DatumInfo<'_>],
    priorities: Option<&RankFn<'_>>,
    retired: &[WorkerId],
) -> Result<CompiledGraph, SubmitError> {
    let n = graph.len();
    if n > MAX_TASKS {
        return Err(SubmitError::TooLarge {
            tasks: n,
            max: MAX_TASKS,
        });
    }
    if let Some(d) = graph.deferred.first() {
        return Err(SubmitError::InvalidTask {
            task: graph.task_name(d.task as usize),
            message: d.message.clone(),
        });
    }
    debug_assert_eq!(data.len(), graph.data.len());

    let mut eligibility = Eligibility::new(machine);
    eligibility.retired = retired;
    let mut task_set = Vec::with_capacity(n);
    let mut operand_scratch: Vec<(Access, Option<ElemType>)> = Vec::new();
    let mut dup_scratch: Vec<(u32, Access)> = Vec::new();
    for (t, rec) in graph.tasks.iter().enumerate() {
        let kernel = &graph.kernels[rec.kernel as usize];
        let accesses = &graph.accesses[rec.accesses.range()];
        check_accesses(&|| graph.task_name(t), accesses, data, &mut dup_scratch)?;
        operand_scratch.clear();
        operand_scratch.extend(accesses.iter().map(|&(d, a)| (a, data[d as usize].elem)));
        if let Err(reason) = kernel.signature().check(&operand_scratch, rec.params.len as usize) {
            return Err(SubmitError::Signature {
                task: graph.task_name(t),
                kernel: kernel.name().to_string(),
                reason,
            });
        }
        let gpu_fit = eligibility.gpu_fit(kernel, accesses, data);
        let set = eligibility
            .set_for(
                rec.kernel,
                kernel,
                &graph.restrictions[rec.restriction as usize],
                rec.restriction,
                rec.cores,
                gpu_fit,
            )
            .map_err(|reason| SubmitError::Unsatisfiable {
                task: graph.task_name(t),
                reason,
            })?;
        task_set.push(set);
    }

    let edges = Successors::of(graph);
    let prios: Vec<i32> = match priorities {
        Some(rank) => rank(&edges),
        None => graph.tasks.iter().map(|t| t.priority).collect(),
    };
    let (task_band, num_bands, keys) = priority_bands(&prios);

    let mut roots: Vec<u32> = (0..n as u32).filter(|&t| edges.indegree[t as usize] == 0).collect();
    roots.sort_by_key(|&t| std::cmp::Reverse(prios[t as usize]));

    let mut plan = Plan::new(
        task_set,
        task_band,
        num_bands,
        eligibility.sets,
        machine.victims.clone(),
    );
    plan.set_priority_keys(keys);
    // On by default; a driver turns it off with `Plan::unfuse`.
    plan.fuse_chains(&edges, |w| machine.workers[w.index()].kind);
    let max_cores = graph.tasks.iter().map(|t| t.cores).max().unwrap_or(1);
    Ok(CompiledGraph {
        max_cores,
        edges,
        roots,
        plan,
    })
}

/// What a task's eligible workers depend on besides the machine: its kernel (by the `Arc`'s
/// address), its restriction, its cores and the GPUs its operands fit.
pub(crate) type EligibilityKey = (usize, Restriction, u32, u64);

/// One task as [`check_task`] sees it, before it is in any graph.
pub(crate) struct TaskToCheck<'a, 'd> {
    pub name: &'a dyn Fn() -> String,
    pub kernel: &'a Arc<Kernel>,
    /// Its data, each once (by first use), and its accesses as indices into them.
    pub data: &'a [DatumInfo<'d>],
    pub accesses: &'a [(u32, Access)],
    pub params: usize,
    pub restriction: &'a Restriction,
    pub cores: u32,
}

/// The checks [`compile`] makes of one task — its accesses (no write to read-only data, no
/// datum written twice), its kernel's signature against its operands, a worker that may run
/// it — for tasks submitted one at a time, each refused alone before it joins a graph.
/// `runnable` keeps the eligibility keys already found to have a worker, so that a stream of
/// similar tasks pays for that search once.
pub(crate) fn check_task(
    task: &TaskToCheck<'_, '_>,
    machine: &Machine,
    runnable: &mut std::collections::HashSet<EligibilityKey>,
    last: &mut Option<EligibilityKey>,
    retired: &[WorkerId],
) -> Result<(), SubmitError> {
    let TaskToCheck {
        name,
        kernel,
        data,
        accesses,
        ..
    } = *task;
    check_accesses(name, accesses, data, &mut Vec::new())?;
    let operands: Vec<(Access, Option<ElemType>)> = accesses.iter().map(|&(d, a)| (a, data[d as usize].elem)).collect();
    if let Err(reason) = kernel.signature().check(&operands, task.params) {
        return Err(SubmitError::Signature {
            task: name(),
            kernel: kernel.name().to_string(),
            reason,
        });
    }
    let mut eligibility = Eligibility::new(machine);
    eligibility.retired = retired;
    eligibility.refuse_retired_only = true;
    let gpu_fit = eligibility.gpu_fit(kernel, accesses, data);
    let kernel_id = Arc::as_ptr(kernel) as usize;
    // Consecutive submissions usually share the key: no hashing then.
    if last
        .as_ref()
        .is_some_and(|k| k.0 == kernel_id && k.1 == *task.restriction && k.2 == task.cores && k.3 == gpu_fit)
    {
        return Ok(());
    }
    let key = (kernel_id, task.restriction.clone(), task.cores, gpu_fit);
    if !runnable.contains(&key) {
        eligibility
            .mask_for(kernel, task.restriction, task.cores, gpu_fit)
            .map_err(|reason| SubmitError::Unsatisfiable { task: name(), reason })?;
        runnable.insert(key.clone());
    }
    *last = Some(key);
    Ok(())
}

/// Whether task `t` of `graph` may run only on workers of `excluded` (its kernel, its
/// restriction and its cores considered; its operands are assumed to fit every GPU): what
/// `Runtime::retire` refuses to strand.
pub(crate) fn only_excluded_may_run(graph: &Graph, t: usize, machine: &Machine, excluded: &[WorkerId]) -> bool {
    let rec = &graph.tasks[t];
    Eligibility::new(machine)
        .mask_for(
            &graph.kernels[rec.kernel as usize],
            &graph.restrictions[rec.restriction as usize],
            rec.cores,
            u64::MAX,
        )
        .is_ok_and(|m| {
            machine
                .workers
                .iter()
                .filter(|w| m.contains(w.id))
                .all(|w| excluded.contains(&w.id))
        })
}

#[inline(always)]
fn check_accesses(
    name: &dyn Fn() -> String,
    accesses: &[(u32, Access)],
    data: &[DatumInfo<'_>],
    scratch: &mut Vec<(u32, Access)>,
) -> Result<(), SubmitError> {
    for &(d, a) in accesses {
        if a.writes() && data[d as usize].read_only {
            return Err(SubmitError::ReadOnlyWrite {
                task: name(),
                datum: format!("'{}'", data[d as usize].name),
            });
        }
    }
    let duplicate = |d: u32| SubmitError::DuplicateAccess {
        task: name(),
        datum: format!("'{}'", data[d as usize].name),
    };
    if accesses.len() <= 16 {
        for (i, &(d, a)) in accesses.iter().enumerate() {
            for &(d2, a2) in &accesses[i + 1..] {
                if d == d2 && (a.writes() || a2.writes()) {
                    return Err(duplicate(d));
                }
            }
        }
    } else {
        scratch.clear();
        scratch.extend_from_slice(accesses);
        scratch.sort_unstable_by_key(|&(d, _)| d);
        for w in scratch.windows(2) {
            if w[0].0 == w[1].0 && (w[0].1.writes() || w[1].1.writes()) {
                return Err(duplicate(w[0].0));
            }
        }
    }
    Ok(())
}

/// Maps priorities to bands: each distinct priority its own band when there are at most
/// [`MAX_BANDS`], else folded by rank. Band 0 is the highest priority. Also gives each task
/// its priority's exact rank ([`Plan::priority_key`]) when bands fold several priorities
/// (else the band is that rank, and the keys are left empty: nothing to allocate per batch).
fn priority_bands(prios: &[i32]) -> (Vec<u8>, u8, Vec<u32>) {
    let first = prios.first().copied().unwrap_or(0);
    if prios.iter().all(|&p| p == first) {
        return (vec![0; prios.len()], 1, Vec::new());
    }
    let mut distinct: Vec<i32> = prios.to_vec();
    distinct.sort_unstable_by(|a, b| b.cmp(a));
    distinct.dedup();
    let k = distinct.len();
    let bands = k.min(MAX_BANDS as usize);
    let rank_of = |p: i32| distinct.binary_search_by(|x| p.cmp(x)).unwrap_or(0);
    let ranks: Vec<usize> = prios.iter().map(|&p| rank_of(p)).collect();
    let keys = if k > bands {
        ranks.iter().map(|&r| r as u32).collect()
    } else {
        Vec::new()
    };
    (
        ranks.iter().map(|&r| (r * bands / k) as u8).collect(),
        bands as u8,
        keys,
    )
}

/// Computes and deduplicates eligibility sets.
struct Eligibility<'m> {
    machine: &'m Machine,
    /// Retired workers: left out of every set that has other workers. A set of retired
    /// workers only is kept (compile: the task reaches one, which fails it saying so) or
    /// refused (`refuse_retired_only`: a task submitted alone is refused at once).
    retired: &'m [WorkerId],
    refuse_retired_only: bool,
    sets: Vec<EligibleSet>,
    by_mask: HashMap<WorkerMask, u16>,
    by_key: HashMap<(u32, u32, u32, u64), u16>,
    /// The last key and its set: consecutive tasks usually share both.
    last: Option<((u32, u32, u32, u64), u16)>,
}

impl<'m> Eligibility<'m> {
    fn new(machine: &'m Machine) -> Self {
        Eligibility {
            machine,
            retired: &[],
            refuse_retired_only: false,
            sets: Vec::new(),
            by_mask: HashMap::new(),
            by_key: HashMap::new(),
            last: None,
        }
    }

    /// The eligibility set of a task (kernel slot, restriction slot, cores, GPU fit): the
    /// last key's set without a lookup (consecutive tasks usually share it), else
    /// [`Eligibility::set_for_new_key`].
    #[inline(always)]
    fn set_for(
        &mut self,
        kernel_slot: u32,
        kernel: &Kernel,
        r: &Restriction,
        restriction_slot: u32,
        cores: u32,
        gpu_fit: u64,
    ) -> Result<u16, String> {
        let key = (kernel_slot, restriction_slot, cores, gpu_fit);
        if let Some((k, s)) = self.last {
            if k == key {
                return Ok(s);
            }
        }
        self.set_for_new_key(key, kernel, r, cores, gpu_fit)
    }

    #[inline(never)]
    fn set_for_new_key(
        &mut self,
        key: (u32, u32, u32, u64),
        kernel: &Kernel,
        r: &Restriction,
        cores: u32,
        gpu_fit: u64,
    ) -> Result<u16, String> {
        if let Some(&s) = self.by_key.get(&key) {
            self.last = Some((key, s));
            return Ok(s);
        }
        let mask = self.mask_for(kernel, r, cores, gpu_fit)?;
        let s = match self.by_mask.get(&mask) {
            Some(&s) => s,
            None => {
                if self.sets.len() >= u16::MAX as usize {
                    return Err("too many distinct restriction combinations in one graph".into());
                }
                let s = self.sets.len() as u16;
                let workers = self
                    .machine
                    .workers
                    .iter()
                    .map(|w| w.id)
                    .filter(|&w| mask.contains(w))
                    .collect();
                self.sets.push(EligibleSet {
                    workers,
                    mask: mask.clone(),
                });
                self.by_mask.insert(mask, s);
                s
            }
        };
        self.by_key.insert(key, s);
        self.last = Some((key, s));
        Ok(s)
    }

    /// Filters workers step by step so that an empty result says which step emptied it.
    /// Bit `g` set: every operand of the task can be bound on GPU `g` (stored data within the
    /// device's largest storage binding). Zero on machines without GPUs or for CPU-only
    /// kernels, so CPU-only graphs pay nothing.
    #[inline(always)]
    fn gpu_fit(&self, kernel: &Kernel, accesses: &[(u32, Access)], data: &[DatumInfo<'_>]) -> u64 {
        if self.machine.gpus.is_empty() || !kernel.has_gpu() {
            return 0;
        }
        if accesses.iter().any(|&(d, _)| data[d as usize].elem.is_none()) {
            return 0;
        }
        let largest = accesses.iter().map(|&(d, _)| data[d as usize].bytes).max().unwrap_or(0);
        let total: u64 = accesses.iter().map(|&(d, _)| data[d as usize].bytes).sum();
        let requires = kernel.gpu_impl().map_or(&[][..], |g| &g.requires[..]);
        self.machine
            .gpus
            .iter()
            .enumerate()
            .take(64)
            // Every operand within the largest binding, and all of them within the memory;
            // the device features the code needs.
            .filter(|(_, g)| {
                largest <= g.max_storage_binding
                    && g.memory_bytes.is_none_or(|m| total <= m)
                    && requires.iter().all(|f| g.features.contains(f))
            })
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    fn mask_for(&self, kernel: &Kernel, r: &Restriction, cores: u32, gpu_fit: u64) -> Result<WorkerMask, String> {
        let m = self.machine;
        let has_impl = |w: &crate::topology::WorkerInfo| match w.kind {
            DeviceKind::Cpu => kernel.has_cpu(),
            // The mask covers the first 64 GPUs (`gpu_fit`); past them, none fits.
            DeviceKind::Gpu => {
                kernel.has_gpu()
                    && m.gpu_index(w.id)
                        .is_some_and(|g| gpu_fit.checked_shr(g as u32).is_some_and(|m| m & 1 == 1))
            }
        };
        let mut cand: Vec<WorkerId> = m.workers.iter().filter(|w| has_impl(w)).map(|w| w.id).collect();
        if cand.is_empty() {
            let kinds = match (kernel.has_cpu(), kernel.has_gpu()) {
                (true, true) => "cpu, gpu",
                (true, false) => "cpu",
                (false, true) => "gpu",
                (false, false) => "none",
            };
            if kernel.has_gpu() && m.count(DeviceKind::Gpu) > 0 && !kernel.has_cpu() {
                return Err(format!(
                    "kernel '{}' runs only on GPUs, and {}",
                    kernel.name(),
                    no_gpu_fits(m)
                ));
            }
            return Err(format!(
                "kernel '{}' has implementations for [{kinds}], and this machine has {} cpu and {} gpu worker(s)",
                kernel.name(),
                m.count(DeviceKind::Cpu),
                m.count(DeviceKind::Gpu)
            ));
        }
        if let Some(kind) = r.device {
            cand.retain(|&w| m.workers[w.index()].kind == kind);
            if cand.is_empty() {
                if kind == DeviceKind::Gpu && kernel.has_gpu() && m.count(kind) > 0 && gpu_fit == 0 {
                    return Err(format!("it is restricted to gpu workers, and {}", no_gpu_fits(m)));
                }
                return Err(format!(
                    "it is restricted to {kind} workers; this machine has {} {kind} worker(s) able to run kernel '{}'",
                    m.count(kind),
                    kernel.name()
                ));
            }
        }
        if let Some(name) = &r.worker {
            let Some(named) = m.worker_by_name(name) else {
                let names: Vec<&str> = m.workers.iter().map(|w| w.name.as_str()).collect();
                return Err(format!(
                    "it is restricted to worker '{name}', which does not exist (workers: {})",
                    names.join(", ")
                ));
            };
            if !cand.contains(&named.id) {
                return Err(format!(
                    "it is restricted to worker '{name}', which cannot run kernel '{}' under its other restrictions",
                    kernel.name()
                ));
            }
            cand = vec![named.id];
        }
        if let Some(need) = r.gpu_memory {
            cand.retain(|&w| match m.gpu(w) {
                Some(g) => g.memory_bytes.unwrap_or(g.max_buffer_size) >= need,
                None => false,
            });
            if cand.is_empty() {
                return Err(format!(
                    "it needs a GPU with {need} bytes of memory; no allowed GPU has that much"
                ));
            }
        }
        if !r.features.is_empty() {
            cand.retain(|&w| r.features.iter().all(|f| m.workers[w.index()].features.contains(f)));
            if cand.is_empty() {
                let have = m.workers.first().map(|w| w.features.join(", ")).unwrap_or_default();
                return Err(format!(
                    "it requires feature(s) [{}]; no allowed worker has all of them (cpu0 has: {have})",
                    r.features.join(", ")
                ));
            }
        }
        if cores == 0 {
            return Err("it requests 0 cores; a task needs at least 1".into());
        }
        if cores > 1 {
            let fits = |w: WorkerId| {
                let class = m.workers[w.index()].class;
                m.workers[w.index()].kind == DeviceKind::Cpu
                    && m.classes[class.0 as usize].workers.len() >= cores as usize
            };
            cand.retain(|&w| fits(w));
            if cand.is_empty() {
                return Err(format!(
                    "it requests {cores} cores; this machine has {} CPU core(s)",
                    m.count(DeviceKind::Cpu)
                ));
            }
        }
        if !self.retired.is_empty() {
            let active: Vec<WorkerId> = cand.iter().copied().filter(|w| !self.retired.contains(w)).collect();
            if !active.is_empty() {
                cand = active;
            } else if self.refuse_retired_only {
                let names: Vec<&str> = cand.iter().map(|&w| m.workers[w.index()].name.as_str()).collect();
                return Err(format!(
                    "only retired worker(s) may run it ({}; Runtime::restore brings one back)",
                    names.join(", ")
                ));
            }
        }
        let mut mask = WorkerMask::empty(m.num_workers());
        for w in cand {
            mask.insert(w);
        }
        Ok(mask)
    }
}

/// Why no GPU may run a task whose operands fit none (`Eligibility::gpu_fit` is 0), for
/// the two refusals that end in it.
fn no_gpu_fits(m: &Machine) -> String {
    let largest_memory = m.gpus.iter().filter_map(|g| g.memory_bytes).max();
    format!(
        "no GPU can hold its operands (size-only data, an operand larger than the GPU's largest storage binding, or operands together larger than its memory{})",
        largest_memory.map(|b| format!(" of {b} bytes")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexec_kernels::{builtin, Signature};
    use std::sync::Arc;

    fn infos(g: &Graph) -> Vec<DatumInfo<'_>> {
        g.data
            .iter()
            .map(|d| match d {
                crate::graph::GraphDatum::Virtual { name, bytes } => DatumInfo {
                    name: name.as_str(),
                    elem: None,
                    bytes: *bytes,
                    read_only: false,
                },
                crate::graph::GraphDatum::Temp { name, elem, len } => DatumInfo {
                    name: name.as_str(),
                    elem: Some(*elem),
                    bytes: (*len * elem.size()) as u64,
                    read_only: false,
                },
                crate::graph::GraphDatum::Stored { id, .. } => DatumInfo {
                    name: if *id == 99 { "d99" } else { "d" },
                    elem: Some(ElemType::F32),
                    bytes: 16,
                    read_only: *id == 99,
                },
            })
            .collect()
    }

    #[test]
    fn builds_csr_and_roots_by_priority() {
        let mut g = Graph::new();
        let a = g.task(&builtin::noop()).add();
        let _b = g.task(&builtin::noop()).priority(5).add();
        let _c = g.task(&builtin::noop()).after(a).add();
        let c = compile(&g, &Machine::synthetic_cpus(2), &infos(&g)).unwrap();
        assert_eq!(c.roots, vec![1, 0]);
        assert_eq!(c.successors(0), &[2]);
        assert_eq!(c.edges.indegree, vec![0, 0, 1]);
        assert_eq!(c.plan.num_bands(), 2);
        assert_eq!(c.plan.band(1), 0);
        assert_eq!(c.plan.band(0), 1);
    }

    #[test]
    fn a_gpu_without_a_feature_the_code_requires_is_not_eligible() {
        use crate::topology::GpuDesc;
        let expr = hexec_kernels::expr::Expr::input(0) * 2.0;
        let kernel = expr.kernel::<f64>().unwrap();
        let workers_of = |features: Vec<String>| {
            let mut m = Machine::synthetic_cpus(2);
            let mut gpu = GpuDesc::modelled("model", 0);
            gpu.features = features;
            m.add_gpus(vec![gpu]);
            let mut g = Graph::new();
            let (x, y) = (g.temp::<f64>("x", 16), g.temp::<f64>("y", 16));
            g.task(&kernel).read(x).write(y).add();
            let c = compile(&g, &m, &infos(&g)).unwrap();
            let set = c.plan.set(c.plan.task_set(0));
            set.workers
                .iter()
                .map(|w| m.workers[w.index()].name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(workers_of(Vec::new()), ["cpu0", "cpu1"], "no SHADER_F64: CPUs only");
        assert_eq!(workers_of(vec!["f64".into()]), ["cpu0", "cpu1", "gpu0"]);
    }

    #[test]
    fn rejections_name_the_task() {
        let m = Machine::synthetic_cpus(2);
        let check = |g: &Graph, needle: &str| {
            let e = compile(g, &m, &infos(g)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
            assert!(e.contains("'t'"), "{e:?} should name the task");
        };
        let mut g = Graph::new();
        g.task(&builtin::noop()).name("t").on(DeviceKind::Gpu).add();
        check(&g, "restricted to gpu");
        let mut g = Graph::new();
        g.task(&builtin::noop()).name("t").on_worker("cpu7").add();
        check(&g, "does not exist (workers: cpu0, cpu1)");
        let mut g = Graph::new();
        g.task(&builtin::noop()).name("t").require_feature("quantum").add();
        check(&g, "quantum");
        let mut g = Graph::new();
        g.task(&builtin::noop()).name("t").cores(3).add();
        check(&g, "requests 3 cores");
        let mut g = Graph::new();
        g.task(&builtin::spin()).name("t").add();
        check(&g, "takes 1 parameter(s), 0 given");
        let mut g = Graph::new();
        let v = g.virtual_data("f", 4);
        g.task(&builtin::noop()).name("t").read(v).write(v).add();
        check(&g, "twice");
        let mut g = Graph::new();
        g.task(&builtin::noop())
            .name("t")
            .read(crate::graph::Data::<f32>::new(0, 99))
            .write(crate::graph::Data::<f32>::new(0, 1))
            .add();
        // read-only datum 99 is only read: fine; now write it.
        assert!(compile(&g, &m, &infos(&g)).is_ok());
        let mut g = Graph::new();
        g.task(&builtin::noop())
            .name("t")
            .write(crate::graph::Data::<f32>::new(0, 99))
            .add();
        check(&g, "read-only");
        let gpu_only = Arc::new(hexec_kernels::Kernel::declare("gpu_thing", Signature::any(0, 0)));
        let mut g = Graph::new();
        g.task(&gpu_only).name("t").add();
        check(&g, "kernel 'gpu_thing' has implementations for [none]");
    }

    #[test]
    fn large_duplicate_checks_and_shared_sets() {
        let mut g = Graph::new();
        let vs: Vec<_> = (0..40).map(|i| g.virtual_data(format!("v{i}"), 1)).collect();
        let mut b = g.task(&builtin::noop()).name("t");
        for v in &vs {
            b = b.read(*v);
        }
        b.read(vs[3]).add();
        let m = Machine::synthetic_cpus(3);
        let c = compile(&g, &m, &infos(&g)).unwrap();
        assert_eq!(c.plan.sets().len(), 1);
        let mut b = g.task(&builtin::noop()).name("t");
        for v in &vs {
            b = b.read(*v);
        }
        b.write(vs[7]).add();
        assert!(matches!(
            compile(&g, &m, &infos(&g)),
            Err(SubmitError::DuplicateAccess { .. })
        ));
    }

    #[test]
    fn many_priorities_fold_into_bands() {
        let mut g = Graph::new();
        for p in 0..100 {
            g.task(&builtin::noop()).priority(p).add();
        }
        let c = compile(&g, &Machine::synthetic_cpus(1), &infos(&g)).unwrap();
        assert_eq!(c.plan.num_bands(), MAX_BANDS);
        assert_eq!(c.plan.band(99), 0);
        assert_eq!(c.plan.band(0), MAX_BANDS - 1);
        // monotone: higher priority never in a lower band
        for t in 1..100u32 {
            assert!(c.plan.band(t) <= c.plan.band(t - 1));
        }
    }
}
