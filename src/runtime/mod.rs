//! The real driver: a [`Runtime`] owns a machine description, its opened GPUs, a data store,
//! memory budgets (and a spill directory under a host limit), a performance model and a kernel
//! registry, and runs graphs on one worker thread per CPU core (pinned unless asked otherwise)
//! and one device worker thread per GPU.
//!
//! A run: resolve the graph's data, validate and compile the graph for this machine (any
//! error names the task), mark the data in use, place the roots, lend each worker thread (started
//! once with the runtime, `pool.rs`) its loop for the run, and gather their statistics into a
//! [`RunReport`]. Work submitted without waiting goes through `flow.rs`, which runs it in
//! batches in submission order.
//! No global state: runtimes can be created, used and dropped many times in one process.

mod budget;
mod cancel;
mod cores;
mod costs;
mod data;
mod end;
pub mod faults;
mod flow;
mod hostbuf;
mod lineage;
mod load;
mod pause;
mod pool;
mod queues;
mod replicas;
mod retire;
mod sleep;
mod speculate;
mod spill;
mod spiller;
mod stats;
mod watchdog;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hexec_kernels::{ElemType, Element, KernelRegistry};

use crate::gpu::{GpuDevice, GpuError, GpuRequest};
use crate::graph::{Data, Graph, GraphDatum, TaskBuilder};
use crate::memory::Transfers;
use crate::sched::compile::{compile_with_priorities, DatumInfo, SubmitError, Successors};
use crate::sched::perfmodel::{PerfModel, MAX_SAMPLES};
use crate::sched::predict::{PredictInput, Predictor};
use crate::sched::{build_policy, rank_priorities, Policy, PolicyInputs, PolicyKind, RootGate, TaskCost};
use crate::topology::{discover, Machine, TopologyError, WorkerId};
use crate::trace::{RunReport, TraceLog, WorkerReport};

use crate::sync::MutexExt;
pub use crate::trace::NodeMemory;
pub use budget::NodeUsage;
pub use cancel::CancelToken;
pub use data::DataError;
use data::{AcquiredData, DataStore};
pub use flow::{GraphHandle, TaskError, TaskHandle, DEFAULT_MAX_SUBMITTED};
use queues::{LocalQueues, SharedQueues};
pub use retire::{RetireError, RetireOptions, RetireReport, DEFAULT_RETIRE_WAIT};
pub use stats::{RuntimeStats, WorkerTotals};
use worker::{run_worker, BoundDatum, RunState, WorkerStats};

static NEXT_RUNTIME_ID: AtomicU64 = AtomicU64::new(1);

/// Why a run did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The graph was refused before anything ran.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// Some tasks failed; the report says which, and what else ran.
    #[error("{}", describe_failures(report))]
    TaskFailed {
        /// What ran, and the failures.
        report: Box<RunReport>,
    },
    /// No task finished for the stall timeout while work remained; `waiting` says what every
    /// unfinished task waited for. The run was stopped (tasks already running finished).
    #[error("the run stalled: {waiting}")]
    Stalled {
        /// What every unfinished task waited for.
        waiting: String,
        /// What ran.
        report: Box<RunReport>,
    },
    /// The run was cancelled through [`RunOptions::cancel`]: no task started after that,
    /// tasks already running finished. The report says what ran; the data are as those
    /// tasks left them.
    #[error("{}", describe_cancel(report))]
    Cancelled {
        /// What ran.
        report: Box<RunReport>,
    },
    /// Waited for from inside a task of the same runtime (`GraphHandle::wait`), which could
    /// never end.
    #[error("a task cannot wait for a graph submitted to its runtime (it would wait for itself)")]
    WaitInsideTask,
    /// A worker stopped on an internal error (a bug in hexec, not in a kernel).
    #[error("worker '{worker}' stopped on an internal error: {message}")]
    Internal {
        /// The worker's name.
        worker: String,
        /// The error.
        message: String,
    },
}

fn describe_cancel(r: &RunReport) -> String {
    let mut s = format!(
        "the run was cancelled: {} of {} task(s) completed, {} not run",
        r.completed, r.tasks, r.cancelled
    );
    if r.failed > 0 {
        s.push_str(&format!("; {} failed before that: {}", r.failed, describe_failures(r)));
    }
    s
}

fn describe_failures(r: &RunReport) -> String {
    let mut s = match r.failures.first() {
        Some(f) if f.attempts.len() > 1 => {
            let each: Vec<String> = f
                .attempts
                .iter()
                .enumerate()
                .map(|(i, a)| format!("attempt {} on {}: {}", i + 1, a.worker, a.message))
                .collect();
            format!(
                "task '{}' (kernel '{}') failed after {} attempts: {}",
                f.task,
                f.kernel,
                f.attempts.len(),
                each.join("; ")
            )
        }
        Some(f) => format!(
            "task '{}' (kernel '{}') failed on {}: {}",
            f.task, f.kernel, f.worker, f.message
        ),
        None => "a task failed".to_string(),
    };
    if r.failures.len() > 1 {
        s.push_str(&format!("; {} more task(s) failed", r.failures.len() - 1));
    }
    if r.skipped > 0 {
        s.push_str(&format!("; {} dependent task(s) were skipped", r.skipped));
    }
    if r.cancelled > 0 {
        s.push_str(&format!(
            "; the run stopped there, {} task(s) were not run",
            r.cancelled
        ));
    }
    s
}

impl RunError {
    /// The report of a run that started, if this error comes from one.
    pub fn report(&self) -> Option<&RunReport> {
        match self {
            RunError::TaskFailed { report } | RunError::Stalled { report, .. } | RunError::Cancelled { report } => {
                Some(report)
            }
            _ => None,
        }
    }
}

/// Errors building a runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Topology discovery failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// GPU discovery or opening failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The machine has no worker.
    #[error("the machine description has no worker")]
    NoWorkers,
    /// A host memory limit was set but the spill directory it needs cannot be made: the
    /// limit could not be kept, so the runtime is refused rather than run over it.
    #[error("host memory limit set, but {0}")]
    SpillDir(String),
    /// A worker's thread could not be started.
    #[error("could not start the thread of worker {worker}: {message}")]
    Spawn {
        /// The worker.
        worker: String,
        /// The system's error.
        message: String,
    },
}

/// What a run works on, prepared by `run_with`.
/// The submission flow's control of single tasks in a run.
#[derive(Default)]
pub(crate) struct TaskControl<'a> {
    /// Skipped from the start, as if a predecessor had failed (their dependents too): tasks
    /// that read data a failed task should have written.
    pub skipped: &'a [u32],
    /// Each task's cancellation state (`worker::CANCEL_*`), which its handle may change while
    /// the run goes on.
    pub cancels: Option<&'a [std::sync::atomic::AtomicU8]>,
}

struct RunData<'a> {
    compiled: &'a crate::sched::compile::CompiledGraph,
    bound: &'a [BoundDatum],
    cells: &'a [Option<Arc<data::DataCell>>],
    data_bytes: &'a [u64],
    /// Expected costs per task (planning policies only; empty otherwise).
    costs: Vec<TaskCost>,
    /// Each task's cost group ([`costs::model_costs`]), with `costs`.
    cost_groups: Vec<u32>,
    /// The run's deadline, and its predicted finish when every kernel has a model.
    deadline: Option<(std::time::Duration, Option<f64>)>,
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Record every task's start and end for [`crate::trace::write_chrome_trace`].
    pub record_trace: bool,
    /// After a task fails for good (its retries spent), go on with everything that does
    /// not depend on it and report every failure at the end. Without it, the run stops
    /// starting tasks at the first such failure (tasks already running finish).
    pub keep_going: bool,
    /// Stop the run with [`RunError::Stalled`] when no task finishes (nor fails an attempt)
    /// for this long while work remains (default: never). A kernel that never returns keeps
    /// its worker, so the error comes when it does; `on_stall` is called at once.
    pub stall_timeout: Option<std::time::Duration>,
    /// Called with the stall report as soon as a stall is detected (the CLI prints it and
    /// exits, since a kernel that never returns would keep the run from ending).
    pub on_stall: Option<fn(&str)>,
    /// A deadline for this run, over the graph's own ([`Graph::set_deadline`]).
    pub deadline: Option<std::time::Duration>,
    /// Re-run stragglers speculatively: a CPU worker with nothing to do runs a copy of a
    /// task that has run twice as long as expected, and at least 0.5 ms (the model's
    /// estimate, else its kernel's mean in this run); the first to finish wins. On whenever
    /// the run has a deadline. Not under a host memory limit (a straggler's buffers would
    /// escape the budget), nor for tasks touching temporaries.
    pub speculate: bool,
    /// Cancels the run from another thread ([`CancelToken::cancel`]): no task starts after
    /// that, running tasks finish, and the run returns [`RunError::Cancelled`] with the
    /// partial report. The CLI's SIGINT and SIGTERM handling goes through it.
    pub cancel: Option<CancelToken>,
}

impl RunOptions {
    /// Default options with a trace recorded.
    pub fn traced() -> Self {
        RunOptions {
            record_trace: true,
            ..RunOptions::default()
        }
    }

    /// Default options that keep going past a final failure.
    pub fn keep_going() -> Self {
        RunOptions {
            keep_going: true,
            ..RunOptions::default()
        }
    }
}

pub use crate::sched::predict::SIMULATED_PREDICTION_TASKS;

/// Retries of a failed task when the builder says nothing: up to four attempts in all.
pub const DEFAULT_RETRIES: u32 = 3;

/// Configures a [`Runtime`].
#[derive(Clone, Debug, Default)]
pub struct RuntimeBuilder {
    policy: PolicyKind,
    cpus: Option<usize>,
    no_pin: bool,
    machine: Option<Machine>,
    gpus: Option<GpuRequest>,
    software_gpus: Option<bool>,
    model: Option<PerfModel>,
    calibrate: bool,
    limits: MemoryLimits,
    no_backpressure: bool,
    spill_parent: Option<std::path::PathBuf>,
    retries: Option<u32>,
    retry_panics: bool,
    faults: faults::FaultPlan,
    replicate_gpu_results: bool,
    max_submitted: Option<usize>,
    no_fusion: bool,
}

/// Memory capacities a runtime enforces (`None`: the device's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Host memory for data: past it, host copies are spilled to files (see
    /// [`RuntimeBuilder::spill_dir`]).
    pub host: Option<u64>,
    /// Each GPU's memory for data copies: past it, copies are evicted.
    pub gpu: Option<u64>,
    /// The spill directory's disk space: past it, a spill fails with an error naming the
    /// datum and the limit, and the data stay in memory (default: what the disk holds).
    pub disk: Option<u64>,
}

impl std::str::FromStr for MemoryLimits {
    type Err = String;
    /// Parses `host=2GiB,gpu=256MiB,disk=10GiB` (units B, KiB, MiB, GiB, TiB, or none for bytes).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut l = MemoryLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not node=size (e.g. gpu=256MiB)"))?;
            let bytes = parse_bytes(v).ok_or_else(|| format!("'{v}' is not a size (e.g. 512MiB, 2GiB)"))?;
            match k {
                "host" => l.host = Some(bytes),
                "gpu" => l.gpu = Some(bytes),
                "disk" => l.disk = Some(bytes),
                other => return Err(format!("unknown memory node '{other}' (known: host, gpu, disk)")),
            }
        }
        Ok(l)
    }
}

/// `123`, `4KiB`, `256MiB`, `2GiB`, `1TiB` (also KB/MB/GB as powers of 1000).
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

impl RuntimeBuilder {
    /// The scheduling policy (default `locality`).
    pub fn policy(mut self, p: PolicyKind) -> Self {
        self.policy = p;
        self
    }

    /// Use only the first `n` cores.
    pub fn cpus(mut self, n: usize) -> Self {
        self.cpus = Some(n);
        self
    }

    /// Do not pin worker threads to their cores.
    pub fn no_pinning(mut self) -> Self {
        self.no_pin = true;
        self
    }

    /// Starts from this performance model (for example one saved by an earlier process).
    pub fn perf_model(mut self, m: PerfModel) -> Self {
        self.model = Some(m);
        self
    }

    /// Measure every task's kernel time into the performance model, whatever the policy
    /// (`locality` and `heft` always do).
    pub fn calibrate(mut self, on: bool) -> Self {
        self.calibrate = on;
        self
    }

    /// The directory under which this runtime's spill directory is made (default: the
    /// system's temporary directory). Used only with a host memory limit; it must exist
    /// ([`RuntimeBuilder::build`] fails otherwise, naming it). Spill directories there of
    /// hexec processes that no longer exist are removed when the runtime is built
    /// ([`remove_stale_spill_dirs`]).
    pub fn spill_dir(mut self, parent: impl Into<std::path::PathBuf>) -> Self {
        self.spill_parent = Some(parent.into());
        self
    }

    /// Tasks submitted and not finished, at most ([`DEFAULT_MAX_SUBMITTED`] by default; 0 is
    /// taken as 1): a
    /// producer that runs ahead waits in [`TaskBuilder::submit`] (or yields in
    /// `submit_async`), so a loop that submits millions of tasks runs in bounded memory.
    pub fn max_submitted(mut self, n: usize) -> Self {
        self.max_submitted = Some(n.max(1));
        self
    }

    /// How many times a failed task is tried again, preferring another worker that may run
    /// it (default [`DEFAULT_RETRIES`]; 0: a failure is final). Operands a CPU attempt reads
    /// and writes are saved before it runs and restored if it fails, so every attempt starts
    /// from the same inputs.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = Some(n);
        self
    }

    /// Tries panicking kernels again too (default: no; a panic is most often a bug that
    /// recurs, so it fails its task at once unless its kernel says otherwise with
    /// `Kernel::retry_panics`). Errors a kernel marks transient (`KernelError::transient`),
    /// lost devices, memory shortages and injected faults are always retried.
    pub fn retry_panics(mut self, on: bool) -> Self {
        self.retry_panics = on;
        self
    }

    /// Fuses the linear chains of every graph and task batch (on by default): where a task's
    /// only successor has it as its only predecessor and may run on the same workers, the
    /// worker that finishes the one runs the other next, with no placement, queueing or
    /// transfer in between, under every policy but `heft` (whose plan orders each worker); only
    /// where those workers are all of one device class. `false` turns it off (to measure it).
    pub fn fusion(mut self, on: bool) -> Self {
        self.no_fusion = !on;
        self
    }

    /// Keeps a host copy of every result a GPU writes (replication: a datum then survives the
    /// loss of the GPU; each GPU write costs a download). Per datum: [`Runtime::replicate`].
    pub fn replicate_gpu_results(mut self, on: bool) -> Self {
        self.replicate_gpu_results = on;
        self
    }

    /// Injects faults into every run (see [`faults`] for the plan's syntax).
    pub fn inject(mut self, plan: faults::FaultPlan) -> Self {
        self.faults = plan;
        self
    }

    /// Turns memory backpressure off: under a memory limit, data-producing root tasks are no
    /// longer held back, and GPU workers take data-producing tasks even when their memory is
    /// nearly full (to measure what backpressure saves).
    pub fn no_backpressure(mut self) -> Self {
        self.no_backpressure = true;
        self
    }

    /// Memory capacities: each GPU evicts data copies past its limit, the host spills them to
    /// files (in a directory made at [`RuntimeBuilder::build`]), and past the disk limit a
    /// spill is an error naming the datum.
    pub fn memory_limits(mut self, limits: MemoryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Which GPUs to open (default: all of them; none with [`RuntimeBuilder::machine`]).
    pub fn gpus(mut self, g: GpuRequest) -> Self {
        self.gpus = Some(g);
        self
    }

    /// Whether software GPU adapters (CPU-type, such as Mesa's lavapipe) may be opened as
    /// GPUs. Default: no, unless the environment variable `HEXEC_SOFTWARE_GPUS` is `1` (or
    /// `true`, `yes`): such
    /// an adapter runs on the cores the CPU workers use, so it is slower than they are, but
    /// on a machine without a GPU it runs every GPU path for real (tests, CI, demos).
    pub fn software_gpus(mut self, on: bool) -> Self {
        self.software_gpus = Some(on);
        self
    }

    /// Run on a described machine instead of discovering this one: one unpinned thread per
    /// worker. For tests and experiments.
    pub fn machine(mut self, m: Machine) -> Self {
        self.machine = Some(m);
        self
    }

    /// [`RuntimeBuilder::build`] with `predictor` for deadlines. `build` itself lives in
    /// `crate::drivers`, which passes the simulator's predictor: the runtime reaches the
    /// simulator only through this interface (ARCHITECTURE.md, Layers).
    pub(crate) fn build_with(self, predictor: Predictor) -> Result<Runtime, BuildError> {
        let gpu_request = self.gpus.unwrap_or(if self.machine.is_some() {
            GpuRequest::None
        } else {
            GpuRequest::All
        });
        let (mut machine, topology) = match self.machine {
            Some(m) => (m, None),
            None => {
                let (m, hw) = discover(self.cpus)?;
                (m, Some(hw))
            }
        };
        let host_memory = machine.numa_nodes.iter().map(|n| n.memory_bytes).sum();
        let (gpus, unused_software_gpus) = crate::gpu::discover_noting_software(
            gpu_request,
            self.software_gpus.unwrap_or_else(crate::gpu::software_gpus_from_env),
            host_memory,
        )?;
        let gpus: Vec<Arc<GpuDevice>> = gpus.into_iter().map(Arc::new).collect();
        let descs: Vec<_> = gpus
            .iter()
            .map(|g| {
                let mut d = g.desc.clone();
                d.numa_os_index = topology.as_ref().and_then(|t| t.pci_numa(&d.pci_bus_id));
                if let Some(limit) = self.limits.gpu {
                    d.memory_bytes = Some(d.memory_bytes.map_or(limit, |m| m.min(limit)));
                }
                d
            })
            .collect();
        let mut capacities = vec![self.limits.host.unwrap_or(u64::MAX)];
        capacities.extend(descs.iter().map(|d| {
            if self.limits.gpu.is_some() {
                d.memory_bytes.unwrap_or(u64::MAX)
            } else {
                u64::MAX
            }
        }));
        machine.add_gpus(descs);
        let hw = if self.no_pin { None } else { topology };
        if machine.num_workers() == 0 {
            return Err(BuildError::NoWorkers);
        }
        let id = NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed);
        // A host limit is kept by spilling: without a directory to spill to, it could not be,
        // so that is an error now rather than a run over the limit later.
        let spill = match self.limits.host {
            Some(_) => {
                let parent = self.spill_parent.unwrap_or_else(std::env::temp_dir);
                for stale in spill::remove_stale(&parent) {
                    tracing::info!(path = %stale.display(), "removed the spill directory of a process that no longer exists");
                }
                let dir = spill::SpillDir::create(&parent, self.limits.disk.unwrap_or(u64::MAX))
                    .map_err(BuildError::SpillDir)?;
                Some(dir)
            }
            None => None,
        };
        let numa_weights: Vec<u64> = machine.numa_nodes.iter().map(|n| n.memory_bytes).collect();
        let gpu_numa: Vec<usize> = machine
            .workers
            .iter()
            .filter(|w| w.kind == crate::DeviceKind::Gpu)
            .map(|w| w.numa)
            .collect();
        let budgets = Arc::new(budget::Budgets::new(&capacities, &numa_weights, gpu_numa, spill));
        let gpu_of_worker = machine.workers.iter().map(|w| machine.gpu_index(w.id)).collect();
        let names: Vec<String> = machine.workers.iter().map(|w| w.name.clone()).collect();
        let pus: Vec<Vec<u32>> = machine.workers.iter().map(|w| w.pus.clone()).collect();
        let pool = pool::WorkerPool::start(&names, &pus, hw.as_ref()).map_err(|(worker, e)| BuildError::Spawn {
            worker,
            message: e.to_string(),
        })?;
        Ok(Runtime::new(
            Engine {
                retiring: (0..names.len())
                    .map(|_| std::sync::atomic::AtomicU8::new(worker::ACTIVE))
                    .collect(),
                retire_locks: (0..names.len()).map(|_| Mutex::new(false)).collect(),
                totals: Mutex::default(),
                pool,
                predictor,
                id,
                machine,
                policy: self.policy,
                store: {
                    let store = DataStore::new(id, gpus.len(), budgets.clone());
                    if self.replicate_gpu_results {
                        store.default_replicas.store(2, Ordering::Relaxed);
                    }
                    store
                },
                forgotten_gpus: (0..gpus.len()).map(|_| AtomicBool::new(false)).collect(),
                unused_software_gpus,
                _spiller: spiller::Spiller::start(&budgets),
                budgets,
                gpus,
                gpu_of_worker,
                model: Mutex::new(self.model.unwrap_or_default()),
                calibrate: self.calibrate,
                backpressure: !self.no_backpressure,
                retries: self.retries.unwrap_or(DEFAULT_RETRIES),
                retry_panics: self.retry_panics,
                fusion: !self.no_fusion,
                faults: self.faults,
                links: Mutex::new((0.0, 0.0)),
            },
            self.max_submitted.unwrap_or(flow::DEFAULT_MAX_SUBMITTED),
        ))
    }
}

/// Removes, from `parent`, the spill directories (`hexec-spill-PID-...`) of hexec processes
/// that no longer exist, as a process killed with SIGKILL leaves them; returns what it
/// removed. Only real directories owned by this user are removed, never through a symbolic
/// link. [`RuntimeBuilder::build`] does this in the spill directory's parent when the host is
/// limited; the CLI also does it in the system's temporary directory at the start of `run`.
pub fn remove_stale_spill_dirs(parent: &std::path::Path) -> Vec<std::path::PathBuf> {
    spill::remove_stale(parent)
}

/// What runs graphs: the machine, the data store, the GPUs, the model and the worker
/// threads. Shared (`Arc`) by the [`Runtime`] handle and its submission dispatcher.
pub(crate) struct Engine {
    /// Predicts a graph's finish for deadlines (the simulator's, given by `crate::drivers`).
    predictor: Predictor,
    id: u64,
    machine: Machine,
    policy: PolicyKind,
    store: DataStore,
    gpus: Vec<Arc<GpuDevice>>,
    /// Per worker: its index in `gpus` ([`Machine::gpu_index`]), `None` for a CPU worker.
    gpu_of_worker: Vec<Option<usize>>,
    model: Mutex<PerfModel>,
    calibrate: bool,
    backpressure: bool,
    /// Retries of a failed task.
    retries: u32,
    retry_panics: bool,
    /// Fuse linear chains ([`RuntimeBuilder::fusion`]).
    fusion: bool,
    /// Per GPU: lost, and its copies already forgotten by every datum.
    forgotten_gpus: Vec<AtomicBool>,
    /// Software adapters found but not opened (not asked for): named in the error of a task
    /// that can run only on GPUs.
    unused_software_gpus: Vec<String>,
    /// Faults injected into runs.
    faults: faults::FaultPlan,
    budgets: Arc<budget::Budgets>,
    /// Spills host copies in the background past the host's high watermark (host limit only).
    _spiller: Option<spiller::Spiller>,
    /// Bytes and seconds of host↔GPU copies measured so far.
    links: Mutex<(f64, f64)>,
    /// One thread per worker, started here and lent to each run.
    pool: pool::WorkerPool,
    /// Per worker: `worker::ACTIVE`, `RETIRING` or `RETIRED` ([`Runtime::retire`]).
    retiring: Vec<std::sync::atomic::AtomicU8>,
    /// Per worker: held by a retire or a restore of it; whether its retirement's evacuation
    /// (a GPU's copies brought home and released) is done.
    retire_locks: Vec<Mutex<bool>>,
    /// Totals over every run ([`Runtime::stats`]).
    totals: Mutex<RuntimeStats>,
}

/// Runs task graphs on this machine's cores and GPUs.
///
/// ```
/// use hexec::{Runtime, kernels::builtin};
/// let rt = Runtime::builder().cpus(1).build()?;
/// let x = rt.data(vec![1.0f32; 4]);
/// let y = rt.data(vec![0.5f32; 4]);
/// let mut g = rt.graph();
/// g.task(&builtin::axpy()).read(x).read_write(y).param(2.0).add();
/// g.task(&builtin::scale()).read_write(y).param(10.0).add();
/// let report = rt.run(&g)?;
/// assert_eq!(report.completed, 2);
/// assert_eq!(rt.read(y)?, vec![25.0; 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Runtime {
    engine: Arc<Engine>,
    /// Tasks and graphs submitted without waiting, and the order of data operations.
    flow: Arc<flow::Flow>,
    /// Kernels by name, for graph files.
    registry: KernelRegistry,
}

impl Drop for Runtime {
    /// Waits for everything submitted to finish, then stops the submission dispatcher (the
    /// worker threads stop when the engine drops). Dropped inside one of its own tasks (the
    /// last handle held by a kernel), it cannot wait for that task's batch nor join its own
    /// thread: another thread does both once the batch has ended.
    fn drop(&mut self) {
        if self.flow.on_own_thread() {
            let (flow, engine) = (self.flow.clone(), self.engine.clone());
            let spawned = std::thread::Builder::new().name("hexec-drop".into()).spawn(move || {
                flow.shut_down();
                drop(engine);
            });
            if spawned.is_err() {
                tracing::error!("could not start a thread to shut the runtime down; its threads stay");
                std::mem::forget(self.engine.clone());
            }
            return;
        }
        self.flow.shut_down();
    }
}

impl Runtime {
    fn new(engine: Engine, max_submitted: usize) -> Runtime {
        let pool_key = engine.pool.key();
        let engine = Arc::new(engine);
        let flow = flow::Flow::new(max_submitted, pool_key);
        flow.set_engine(&engine);
        Runtime {
            engine,
            flow,
            registry: KernelRegistry::with_builtins(),
        }
    }

    /// A builder with defaults: every core (threads pinned), every hardware GPU (software ones
    /// such as lavapipe only on request, see [`RuntimeBuilder::software_gpus`]), policy
    /// `locality`, three retries of failures that may pass.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The kernels graph files may name.
    pub fn registry(&self) -> &KernelRegistry {
        &self.registry
    }

    /// Adds kernels graph files may name.
    pub fn registry_mut(&mut self) -> &mut KernelRegistry {
        &mut self.registry
    }

    /// Where host copies are spilled past the host limit (`None` without one). The directory
    /// (mode 0700, an unpredictable name) exists from [`RuntimeBuilder::build`] until the
    /// runtime is dropped.
    pub fn spill_directory(&self) -> Option<&std::path::Path> {
        self.engine.spill_directory()
    }

    /// The machine this runtime runs on.
    pub fn machine(&self) -> &Machine {
        self.engine.machine()
    }

    /// The opened GPUs, in worker order (`gpu0`, `gpu1`, ...).
    pub fn gpus(&self) -> &[Arc<GpuDevice>] {
        self.engine.gpus()
    }

    /// The policy in use.
    pub fn policy(&self) -> PolicyKind {
        self.engine.policy()
    }

    /// A new, empty graph.
    pub fn graph(&self) -> Graph {
        self.engine.graph()
    }

    /// Stores a host buffer; the handle goes into tasks. The vector's allocation becomes the
    /// datum's host buffer as it is: nothing is copied.
    pub fn data<T: Element>(&self, values: Vec<T>) -> Data<T> {
        self.engine.data(values)
    }

    /// Stores a named host buffer (the name appears in errors), without copying it.
    pub fn data_named<T: Element>(&self, name: impl Into<String>, values: Vec<T>) -> Data<T> {
        self.engine.data_named(name, values)
    }

    /// Stores a buffer that no task may write, without copying it.
    pub fn data_read_only<T: Element>(&self, name: impl Into<String>, values: Vec<T>) -> Data<T> {
        self.engine.data_read_only(name, values)
    }

    /// Frees a datum: its host buffer, its GPU copies, its spill file, and their room in the
    /// memory budgets. Handles are `Copy`, so nothing is freed when they drop: data live until
    /// freed (or taken) or until the runtime drops. Afterwards any use of the handle (a read,
    /// a write, a graph) is an error saying the datum was freed; freeing it again too.
    /// Waits for the submitted work that uses the datum (see [`Runtime::read`]).
    pub fn free<T: Element>(&self, h: Data<T>) -> Result<(), DataError> {
        self.after_pending(h, || self.engine.free(h))
    }

    /// Frees a datum once the work submitted so far that uses it has ended, without waiting
    /// for it: what a value going out of scope does (the tiles of a dropped
    /// [`crate::array::Matrix`]). From this call on the datum is freed as far as the program
    /// can see: submitting a task that uses it, or reading, writing or freeing it, is an
    /// error saying it was freed.
    pub fn free_when_done<T: Element>(&self, h: Data<T>) -> Result<(), DataError> {
        let cell = self.engine.store.typed_cell(h)?;
        if self.flow.is_doomed(h.id) {
            return Err(DataError::Freed(cell.name.clone()));
        }
        if self.flow.free_later(h.id) {
            return Ok(());
        }
        self.engine.free(h)
    }

    /// Frees a datum and hands back its values, without a copy when its host buffer can be a
    /// `Vec<T>` (the vector it was made from, or a buffer the store allocated for `T`): the
    /// valid copy is first brought home (from a GPU or a spill file). Waits for the submitted
    /// work that uses the datum (see [`Runtime::read`]).
    pub fn take<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        self.after_pending(h, || self.engine.take(h))
    }

    /// Calls `f` on a datum's values in place, without copying them: the host copy is made
    /// valid (brought home from a GPU, read back from a spill file into memory) and held
    /// there while `f` runs — no run may use the datum meanwhile, nothing spills or writes it.
    /// Waits for the submitted work that uses the datum first (see [`Runtime::read`]).
    pub fn read_with<T: Element, R>(&self, h: Data<T>, f: impl FnOnce(&[T]) -> R) -> Result<R, DataError> {
        let mut f = Some(f);
        self.after_pending(h, || {
            self.engine
                .read_with(h, |v| (f.take().expect("called once, when the datum is free"))(v))
        })
    }

    /// Bytes in use now on each memory node (the host, then each GPU): the copies of data
    /// allocated there.
    pub fn memory_usage(&self) -> Vec<NodeUsage> {
        self.engine.memory_usage()
    }

    /// Until the guard drops, the tasks submitted start together (see `flow::Flow::hold`):
    /// the array operations submit a whole operation under one. The holder must not wait
    /// for submitted work meanwhile.
    pub(crate) fn hold_submissions(&self) -> flow::FlowHold<'_> {
        self.flow.hold()
    }

    /// Whether linear chains of tasks are fused ([`RuntimeBuilder::fusion`]); array
    /// expressions follow it too ([`crate::array::Lazy::eval`]).
    pub fn fusion(&self) -> bool {
        self.engine.fusion
    }

    /// What the runtime has done since it was built, over every run, submitted task and
    /// graph: tasks and busy time per worker, bytes copied between memory nodes. Two
    /// snapshots subtract ([`RuntimeStats::since`]).
    pub fn stats(&self) -> RuntimeStats {
        self.engine.totals.locked().clone()
    }

    /// A handle for a datum created by [`Engine::data_filled`].
    pub(crate) fn handle<T>(&self, id: u32) -> Data<T> {
        self.engine.handle(id)
    }

    /// Copies a datum out, once the work submitted before this call that uses it has ended
    /// (tasks from [`Runtime::task`], graphs from [`Runtime::submit_graph`] or another
    /// thread's `run`). Values written by a task that failed are the previous ones.
    pub fn read<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        self.after_pending(h, || self.engine.read(h))
    }

    /// Copies a datum out now, or fails with [`DataError::Busy`] while submitted work still
    /// uses it: [`Runtime::read`] without waiting.
    pub fn try_read<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        self.refuse_doomed(h)?;
        if self.flow.datum_pending(h.id, None) {
            return Err(DataError::Busy(self.engine.store.typed_cell(h)?.name.clone()));
        }
        self.engine.read(h)
    }

    /// [`Runtime::read`] as a future: it waits through the task's waker, never blocking the
    /// executor's thread.
    pub fn read_async<T: Element>(
        &self,
        h: Data<T>,
    ) -> impl std::future::Future<Output = Result<Vec<T>, DataError>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Err(e) = self.refuse_doomed(h) {
                return std::task::Poll::Ready(Err(e));
            }
            if self.flow.datum_pending(h.id, Some(cx.waker())) {
                return std::task::Poll::Pending;
            }
            match self.engine.read(h) {
                // Taken by work submitted since (or held by `read_with`): try again soon.
                Err(DataError::Busy(_)) => {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
                r => std::task::Poll::Ready(r),
            }
        })
    }

    /// A datum freed without waiting ([`Runtime::free_when_done`]) is freed to the program
    /// already, though its submitted work still runs on it.
    fn refuse_doomed<T>(&self, h: Data<T>) -> Result<(), DataError> {
        if self.flow.is_doomed(h.id) {
            if let Some(cell) = self.engine.store.cell(h.rt, h.id) {
                return Err(DataError::Freed(cell.name.clone()));
            }
        }
        Ok(())
    }

    /// Runs `op` on datum `h` once the submitted work that uses it has ended; again if work
    /// submitted meanwhile by another thread took it first.
    fn after_pending<T, R>(&self, h: Data<T>, mut op: impl FnMut() -> Result<R, DataError>) -> Result<R, DataError> {
        self.refuse_doomed(h)?;
        loop {
            self.flow.wait_for_datum(h.id);
            match op() {
                Err(DataError::Busy(_)) if !self.flow.on_own_thread() && self.flow.datum_pending(h.id, None) => {}
                r => return r,
            }
        }
    }

    /// Keeps `copies` valid copies of a datum on distinct memory nodes after a GPU writes it
    /// (2: the GPU's and a host copy), so that losing the GPU loses no result.
    pub fn replicate<T: Element>(&self, h: Data<T>, copies: u8) -> Result<(), DataError> {
        self.after_pending(h, || self.engine.replicate(h, copies))
    }

    /// Overwrites a datum (same length), once the work submitted before that uses it has
    /// ended (see [`Runtime::read`]). Its new values are valid: tasks submitted after read
    /// them even if the datum's last writer had failed.
    pub fn write<T: Element>(&self, h: Data<T>, values: &[T]) -> Result<(), DataError> {
        self.after_pending(h, || self.engine.write(h, values))?;
        self.flow.apply_poison(vec![(h.id, None)]);
        Ok(())
    }

    /// Runs a graph to completion and blocks until it is done: [`Runtime::submit_graph`]
    /// and wait, without the graph leaving this thread. It starts after the work submitted
    /// before it (from any thread) has ended.
    pub fn run(&self, graph: &Graph) -> Result<RunReport, RunError> {
        self.run_with(graph, RunOptions::default())
    }

    /// Runs a graph with options (see [`Runtime::run`]).
    pub fn run_with(&self, graph: &Graph, opts: RunOptions) -> Result<RunReport, RunError> {
        self.flow.run_in_turn(graph, || {
            let result = self.engine.run_with(graph, opts);
            self.flow.after_run(graph, &result);
            result
        })
    }

    /// Submits a graph and returns at once; the handle waits for (or `.await`s) what
    /// [`Runtime::run`] would have returned. The graph runs after the work submitted before
    /// it, and before the work submitted after.
    pub fn submit_graph(&self, graph: Graph) -> GraphHandle {
        self.flow.submit_graph(&self.engine, graph, RunOptions::default())
    }

    /// [`Runtime::submit_graph`] with options.
    pub fn submit_graph_with(&self, graph: Graph, opts: RunOptions) -> GraphHandle {
        self.flow.submit_graph(&self.engine, graph, opts)
    }

    /// Starts a task to submit on its own: finish it with [`TaskBuilder::submit`]. Tasks
    /// submitted one by one run while the program goes on submitting; each depends on the
    /// earlier submissions (tasks, graphs, runs) that access its data, inferred from access
    /// order exactly as within a graph. With several threads submitting, the order that
    /// inference sees is the order in which their `submit` calls return.
    ///
    /// ```
    /// use hexec::{Runtime, kernels::builtin};
    /// let rt = Runtime::builder().cpus(2).build()?;
    /// let x = rt.data(vec![1.0f32; 1024]);
    /// let s = rt.data(vec![0.0f32; 1]);
    /// rt.task(&builtin::scale()).read_write(x).param(3.0).submit()?;
    /// let sum = rt.task(&builtin::sum()).read(x).write(s).submit()?; // after the scale
    /// sum.wait()?;
    /// assert_eq!(rt.read(s)?[0], 3072.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task(&self, kernel: &Arc<hexec_kernels::Kernel>) -> TaskBuilder<&Runtime> {
        TaskBuilder::new(self, kernel)
    }

    /// Retires a worker (`"gpu0"`, `"cpu1"`) while work goes on: nothing new is placed there,
    /// what is queued there moves to compatible workers, what runs there finishes, and for a
    /// GPU every datum whose only valid copy is on the device is brought home before its
    /// memory is released (nothing is recomputed, nothing lost). Refused, naming them, when
    /// submitted tasks may run only there ([`Runtime::retire_with`] with `force` fails them
    /// instead). [`Runtime::restore`] brings the worker back.
    pub fn retire(&self, worker: &str) -> Result<RetireReport, RetireError> {
        self.retire_with(worker, &RetireOptions::default())
    }

    /// [`Runtime::retire`] with options.
    pub fn retire_with(&self, worker: &str, opts: &RetireOptions) -> Result<RetireReport, RetireError> {
        let w = self.engine.worker_named(worker)?;
        let mut excluded = self.engine.retired();
        excluded.push(w);
        // From here on, new submissions are checked without the worker.
        let stranded =
            self.flow
                .exclude(&self.engine, excluded, opts.force)
                .map_err(|tasks| RetireError::SoleWorker {
                    worker: worker.to_string(),
                    tasks: retire::first_names(tasks),
                })?;
        let report = self.engine.retire_worker(w, opts, retire::first_names(stranded));
        self.flow.forget_eligibility(self.engine.retired());
        report
    }

    /// Brings a retired worker back: the next batches and runs may use it (a run under way
    /// goes on without it).
    pub fn restore(&self, worker: &str) -> Result<(), RetireError> {
        let w = self.engine.worker_named(worker)?;
        self.engine.restore_worker(w)?;
        self.flow.forget_eligibility(self.engine.retired());
        Ok(())
    }

    /// The workers retired (or retiring), by name.
    pub fn retired_workers(&self) -> Vec<String> {
        self.engine
            .retired()
            .into_iter()
            .map(|w| self.engine.machine.workers[w.index()].name.clone())
            .collect()
    }

    /// Blocks until everything submitted before this call has finished (failures are in
    /// each task's handle). Inside a task of this runtime it cannot (the task's own batch is
    /// among what it would wait for): [`TaskError::WaitInsideTask`].
    pub fn wait_all(&self) -> Result<(), TaskError> {
        if self.flow.on_own_thread() {
            return Err(TaskError::WaitInsideTask);
        }
        self.flow.wait_all();
        Ok(())
    }

    /// [`Runtime::wait_all`] as a future.
    pub fn wait_all_async(&self) -> impl std::future::Future<Output = ()> + '_ {
        let target = self.flow.next_seq();
        std::future::poll_fn(move |cx| {
            if self.flow.reached(target, Some(cx.waker())) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// A copy of the performance model (what runs have measured, plus what the builder gave).
    pub fn perf_model(&self) -> PerfModel {
        self.engine.perf_model()
    }
}

impl Engine {
    /// This runtime's identity (data handles carry it).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// [`Runtime::spill_directory`].
    pub fn spill_directory(&self) -> Option<&std::path::Path> {
        self.budgets.spill_dir().map(|d| d.path())
    }

    /// [`Runtime::machine`].
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// [`Runtime::gpus`].
    pub fn gpus(&self) -> &[Arc<GpuDevice>] {
        &self.gpus
    }

    /// [`Runtime::policy`].
    pub fn policy(&self) -> PolicyKind {
        self.policy
    }

    /// [`Runtime::graph`].
    pub fn graph(&self) -> Graph {
        Graph::new()
    }

    /// [`Runtime::data`].
    pub fn data<T: Element>(&self, values: Vec<T>) -> Data<T> {
        self.store.insert(None, values, false)
    }

    /// [`Runtime::data_named`].
    pub fn data_named<T: Element>(&self, name: impl Into<String>, values: Vec<T>) -> Data<T> {
        self.store.insert(Some(name.into()), values, false)
    }

    /// [`Runtime::data_read_only`].
    pub fn data_read_only<T: Element>(&self, name: impl Into<String>, values: Vec<T>) -> Data<T> {
        self.store.insert(Some(name.into()), values, true)
    }

    /// [`Runtime::free`].
    pub fn free<T: Element>(&self, h: Data<T>) -> Result<(), DataError> {
        self.store.free(h)
    }

    /// Frees doomed data (see [`Runtime::free_when_done`]) whose last batch has ended.
    pub(crate) fn free_ids(&self, ids: &[u32]) {
        for &id in ids {
            match self.store.free_id(id) {
                // Freed twice in a race with `free_when_done`: gone, as asked.
                Ok(()) | Err(DataError::Freed(_)) => {}
                Err(e) => tracing::warn!("a datum freed without waiting could not be freed: {e}"),
            }
        }
    }

    /// [`Runtime::take`].
    pub fn take<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        self.forget_lost_gpus();
        self.store.take(h, &self.gpus)
    }

    /// [`Runtime::read_with`].
    pub fn read_with<T: Element, R>(&self, h: Data<T>, f: impl FnOnce(&[T]) -> R) -> Result<R, DataError> {
        self.forget_lost_gpus();
        self.store.read_with(h, &self.gpus, f)
    }

    /// [`Runtime::memory_usage`].
    pub fn memory_usage(&self) -> Vec<NodeUsage> {
        self.budgets.usage()
    }

    /// Stores `len` elements of a type known only at run time (graph files), which `fill`
    /// writes in place (see [`data::DataStore::insert_filled`]). Refused, before anything is
    /// allocated, when the datum is larger than [`Engine::datum_limit`]: a file cannot make
    /// the process abort on allocation.
    pub(crate) fn data_filled(
        &self,
        name: String,
        elem: ElemType,
        len: usize,
        read_only: bool,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), String>,
    ) -> Result<u32, DataError> {
        self.check_datum_size(&name, elem, len)?;
        self.check_host_room_for(&name, elem, len)?;
        self.store.insert_filled(Some(name), elem, len, read_only, fill)
    }

    /// Refuses a datum of `len` elements of `elem` larger than [`Engine::datum_limit`] (its
    /// size computed without overflow): every size that comes from input passes here before
    /// its memory is allocated.
    pub(crate) fn check_datum_size(&self, name: &str, elem: ElemType, len: usize) -> Result<(), DataError> {
        let bytes = len as u128 * elem.size() as u128;
        let (limit, what) = self.datum_limit();
        if bytes > u128::from(limit) {
            return Err(DataError::OverMemory {
                name: name.to_string(),
                bytes,
                limit: what,
            });
        }
        Ok(())
    }

    /// Without a host memory limit nothing can spill, so data from input must fit beside the
    /// data already held: ten 9 GB data in a file on a 24 GB host are refused at the third,
    /// naming it, instead of the process being killed for memory. (Under a limit, data past
    /// it spill to disk.)
    fn check_host_room_for(&self, name: &str, elem: ElemType, len: usize) -> Result<(), DataError> {
        if self.budgets.spillable() {
            return Ok(());
        }
        let bytes = len as u128 * elem.size() as u128;
        let memory = u128::from(self.machine.host_memory_bytes());
        let used = u128::from(
            self.budgets
                .node(crate::memory::Node::Host)
                .used
                .load(Ordering::Relaxed),
        );
        if used + bytes > memory {
            return Err(DataError::OverMemory {
                name: name.to_string(),
                bytes,
                limit: format!(
                    "the {} bytes of this machine's memory ({memory} bytes) that data do not already hold \
                     (with a host memory limit, e.g. --mem host=16GiB, data past it spill to disk instead)",
                    memory.saturating_sub(used)
                ),
            });
        }
        Ok(())
    }

    /// The most bytes one datum may hold here, and what that limit is (for errors): the host
    /// memory hexec sees, since every datum passes through host memory; under a host memory
    /// limit, the limit or, on several NUMA nodes, the largest node's share of it (a host
    /// buffer lives on one node: [`data::DataCell`]'s `materialize` refuses anything larger).
    fn datum_limit(&self) -> (u64, String) {
        let memory = self.machine.host_memory_bytes();
        let limit = self
            .budgets
            .node(crate::memory::Node::Host)
            .capacity
            .load(Ordering::Relaxed);
        let share = self.budgets.largest_host_share().min(limit);
        if share >= memory {
            (memory, format!("this machine's memory ({memory} bytes)"))
        } else if share < limit {
            (
                share,
                format!("the largest NUMA node's share ({share} bytes) of the host memory limit of {limit} bytes"),
            )
        } else {
            (limit, format!("the host memory limit of {limit} bytes"))
        }
    }

    /// Refuses, before anything is allocated, a temporary larger than [`Engine::datum_limit`]
    /// (its memory is allocated only when a task first uses it, mid-run, where a failed
    /// allocation would abort the process). Its size is computed without overflow, so any
    /// `len` given to [`Graph::temp`] is safe to submit.
    fn check_temp_sizes(&self, graph: &Graph) -> Result<(), SubmitError> {
        for d in &graph.data {
            if let GraphDatum::Temp { name, elem, len } = d {
                if let Err(DataError::OverMemory { name, bytes, limit }) = self.check_datum_size(name, *elem, *len) {
                    return Err(SubmitError::DatumTooLarge {
                        datum: name,
                        bytes,
                        limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// [`Runtime::handle`].
    pub(crate) fn handle<T>(&self, id: u32) -> Data<T> {
        Data::new(self.id, id)
    }

    /// [`Runtime::read`].
    pub fn read<T: Element>(&self, h: Data<T>) -> Result<Vec<T>, DataError> {
        self.forget_lost_gpus();
        self.store.read(h, &self.gpus)
    }

    /// [`Runtime::replicate`].
    pub fn replicate<T: Element>(&self, h: Data<T>, copies: u8) -> Result<(), DataError> {
        self.store.typed_cell(h)?.set_replicas(copies);
        Ok(())
    }

    /// Drops, from every datum, the copies held by GPUs lost since last time: data whose only
    /// valid copy was there are marked lost (reads say so) until written again.
    fn forget_lost_gpus(&self) {
        for (g, dev) in self.gpus.iter().enumerate() {
            if dev.lost().is_some() && !self.forgotten_gpus[g].swap(true, Ordering::AcqRel) {
                let lost = self.store.all().iter().filter(|c| c.forget_gpu(g)).count();
                tracing::warn!(gpu = g, lost, "device lost: its copies are forgotten");
            }
        }
    }

    /// [`Runtime::write`].
    pub fn write<T: Element>(&self, h: Data<T>, values: &[T]) -> Result<(), DataError> {
        self.store.write(h, values)
    }

    /// Refuses a task with an operand larger than the host memory limit (every datum passes
    /// through host memory; on a machine with several NUMA nodes, than the largest node's
    /// share of it), or one that can run only on CPUs and whose operands together exceed it
    /// (they must all be in memory at once).
    fn check_host_room(&self, graph: &Graph, cells: &[Option<Arc<data::DataCell>>]) -> Result<(), SubmitError> {
        let limit = self
            .budgets
            .node(crate::memory::Node::Host)
            .capacity
            .load(Ordering::Relaxed);
        if limit == u64::MAX {
            return Ok(());
        }
        let (datum_max, datum_limit) = self.datum_limit();
        for (t, rec) in graph.tasks.iter().enumerate() {
            let kernel = &graph.kernels[rec.kernel as usize];
            let operands = || {
                graph.accesses[rec.accesses.range()]
                    .iter()
                    .filter_map(|&(d, _)| cells[d as usize].as_ref())
            };
            if let Some(c) = operands().find(|c| c.bytes() as u64 > datum_max) {
                return Err(SubmitError::InvalidTask {
                    task: graph.task_name(t),
                    message: format!("datum '{}' ({} bytes) is larger than {datum_limit}", c.name, c.bytes()),
                });
            }
            if kernel.has_gpu() && !self.gpus.is_empty() {
                continue;
            }
            let need: u64 = operands().map(|c| c.bytes() as u64).sum();
            if need > limit {
                return Err(SubmitError::InvalidTask {
                    task: graph.task_name(t),
                    message: format!(
                        "its operands need {need} bytes in host memory at once, more than the host memory limit of {limit} bytes"
                    ),
                });
            }
        }
        Ok(())
    }

    /// [`Runtime::run_with`].
    pub fn run_with(&self, graph: &Graph, opts: RunOptions) -> Result<RunReport, RunError> {
        self.run_flow(graph, opts, &TaskControl::default())
    }

    /// [`Engine::run_with`] for the submission flow, with its control of single tasks.
    pub(crate) fn run_flow(
        &self,
        graph: &Graph,
        opts: RunOptions,
        control: &TaskControl<'_>,
    ) -> Result<RunReport, RunError> {
        let result = self.run_flow_uncounted(graph, opts, control);
        let report = match &result {
            Ok(r) => Some(r),
            Err(e) => e.report(),
        };
        if let Some(r) = report {
            self.totals.locked().add(r);
        }
        result
    }

    /// [`Engine::run_flow`] without adding to the totals.
    fn run_flow_uncounted(
        &self,
        graph: &Graph,
        opts: RunOptions,
        control: &TaskControl<'_>,
    ) -> Result<RunReport, RunError> {
        // Runs take turns on the worker threads; a run's data are acquired during its turn,
        // so runs from several threads on the same data wait for each other, not fail.
        let turn = self.pool.turn();
        self.forget_lost_gpus();
        // Before `resolve` makes a cell for each temporary (whose size it computes).
        self.check_temp_sizes(graph)?;
        let cells = self.resolve(graph)?;
        self.check_host_room(graph, &cells)?;
        let infos: Vec<DatumInfo<'_>> = graph
            .data
            .iter()
            .zip(&cells)
            .map(|(d, cell)| match (d, cell) {
                (_, Some(c)) => DatumInfo {
                    name: &c.name,
                    elem: Some(c.elem),
                    bytes: c.bytes() as u64,
                    read_only: c.read_only,
                },
                (GraphDatum::Virtual { name, bytes }, None) => DatumInfo {
                    name,
                    elem: None,
                    bytes: *bytes,
                    read_only: false,
                },
                (GraphDatum::Stored { .. } | GraphDatum::Temp { .. }, None) => {
                    unreachable!("resolve binds every stored datum and temporary")
                }
            })
            .collect();
        let data_bytes: Vec<u64> = infos.iter().map(|i| i.bytes).collect();
        let planning = self.policy.uses_costs();
        let deadline = opts.deadline.or(graph.deadline);
        // Expected costs from the model, computed once for whoever needs them: planning
        // policies (and priorities from the critical path unless the graph sets its own), the
        // deadline's prediction, speculation's search for stragglers.
        let (task_costs, cost_groups) = if planning || deadline.is_some() || opts.speculate {
            costs::model_costs(graph, &self.model.locked(), &costs::task_sizes(graph, &data_bytes))
        } else {
            (Vec::new(), Vec::new())
        };
        let rank = |edges: &Successors| rank_priorities(edges, &task_costs);
        let priorities = (planning && graph.tasks.iter().all(|t| t.priority == 0))
            .then_some(&rank as &crate::sched::compile::RankFn<'_>);
        let mut compiled = compile_with_priorities(graph, &self.machine, &infos, priorities, &self.retired())
            .map_err(|e| self.hint_software_gpus(e))?;
        if !self.fusion {
            compiled.plan.unfuse();
        }
        self.check_gpu_code(graph, &compiled)?;
        let bound: Vec<BoundDatum> = cells
            .iter()
            .zip(&infos)
            .map(|(cell, info)| match cell {
                Some(c) => BoundDatum {
                    bytes: c.bytes(),
                    elem: info.elem,
                },
                None => BoundDatum {
                    bytes: info.bytes as usize,
                    elem: None,
                },
            })
            .collect();
        let _held = AcquiredData::acquire(cells.iter().flatten().cloned().collect())?;
        let deadline = deadline.map(|d| {
            let predicting = Instant::now();
            let predicted = self.predict(graph, &task_costs, &data_bytes);
            let took_ms = predicting.elapsed().as_secs_f64() * 1e3;
            match &predicted {
                Ok(p) if *p > d.as_secs_f64() => tracing::warn!(
                    predicted_s = p,
                    deadline_s = d.as_secs_f64(),
                    took_ms,
                    "the predicted finish misses the deadline"
                ),
                Ok(p) => tracing::info!(predicted_s = p, took_ms, "predicted the finish"),
                Err(why) => tracing::info!(%why, "no prediction for the deadline"),
            }
            (d, predicted.ok())
        });
        let data = RunData {
            compiled: &compiled,
            bound: &bound,
            cells: &cells,
            data_bytes: &data_bytes,
            costs: task_costs,
            cost_groups,
            deadline,
        };
        // HEFT's copy times: the link model between memory nodes, nothing within one.
        let nodes = crate::memory::nodes_of(&self.machine);
        let (bw, lat) = if self.policy == PolicyKind::Heft {
            self.link_model()
        } else {
            (1.0, 0.0)
        };
        let comm = |p: u32, t: u32| {
            let bytes = costs::shared_bytes(graph, &data_bytes, p, t);
            if bytes == 0 {
                0.0
            } else {
                lat + bytes as f64 / bw
            }
        };
        let policy = build_policy(
            self.policy,
            &PolicyInputs {
                machine: &self.machine,
                plan: &compiled.plan,
                edges: &compiled.edges,
                costs: &data.costs,
                comm: &|p, t, from, to| {
                    if nodes[from.index()] == nodes[to.index()] {
                        0.0
                    } else {
                        comm(p, t)
                    }
                },
                mean_comm: &|p, t| if self.gpus.is_empty() { 0.0 } else { comm(p, t) },
                host_memory_limited: self.budgets.spillable(),
                // A real copy always takes time.
                links_free: false,
            },
        );
        self.execute(&policy, graph, data, opts, &turn, control)
    }

    /// Finds the store cell of each of the graph's data (`None` for size-only data); makes
    /// new cells, without memory yet, for its temporaries.
    fn resolve(&self, graph: &Graph) -> Result<Vec<Option<Arc<data::DataCell>>>, SubmitError> {
        graph
            .data
            .iter()
            .enumerate()
            .map(|(local, d)| match d {
                GraphDatum::Virtual { .. } => Ok(None),
                GraphDatum::Temp { name, elem, len } => {
                    let cell = Arc::new(data::DataCell::temp(
                        name.clone(),
                        *elem,
                        *len,
                        self.gpus.len(),
                        self.budgets.clone(),
                    ));
                    if self.budgets.spillable() {
                        self.budgets.register(crate::memory::Node::Host, &cell);
                    }
                    Ok(Some(cell))
                }
                GraphDatum::Stored { rt, id } => self.store.cell(*rt, *id).map(Some).ok_or_else(|| {
                    let task = graph
                        .tasks
                        .iter()
                        .position(|t| {
                            graph.accesses[t.accesses.range()]
                                .iter()
                                .any(|&(x, _)| x as usize == local)
                        })
                        .map(|t| graph.task_name(t))
                        .unwrap_or_default();
                    let detail = if *rt != self.id {
                        "it was made by another runtime".to_string()
                    } else if let Some(freed) = self.store.freed(*rt, *id) {
                        freed.to_string()
                    } else {
                        "no such datum".to_string()
                    };
                    SubmitError::UnknownData {
                        task,
                        datum: graph.datum_label(local as u32),
                        detail,
                    }
                }),
            })
            .collect()
    }

    /// The finish of `graph` predicted from the performance models: the run simulated on a
    /// model of this machine (its workers, links and memory limits) under this runtime's
    /// policy, or for graphs over [`SIMULATED_PREDICTION_TASKS`] tasks, at best, the larger
    /// of the critical path and the work shared by all workers. Either way never below that
    /// bound. `costs` are the model's; an error names a kernel the model does not know yet.
    fn predict(&self, graph: &Graph, costs: &[TaskCost], data_bytes: &[u64]) -> Result<f64, String> {
        let model = self.model.locked().clone();
        let mut costs = costs.to_vec();
        // Synthetic kernels say how long they take: `spin` and `sleep` their first parameter.
        for (t, c) in costs.iter_mut().enumerate() {
            let recorded = crate::sched::recorded_seconds(graph, t);
            if let (true, Some(s)) = (c[0].is_none(), recorded) {
                c[0] = Some(s);
            }
        }
        if let Some(t) = costs.iter().position(|c| c.iter().all(Option::is_none)) {
            return Err(format!(
                "no performance model for kernel '{}' yet (a calibrated run measures one)",
                graph.task_kernel(t)
            ));
        }
        // Graphs built in code are not checked as files are: a negative or absurd time (a
        // `spin` of -1 s) predicts nothing, and the bounds and simulation need durations.
        for (t, c) in costs.iter().enumerate() {
            for s in c.iter().flatten() {
                crate::limits::seconds(*s).map_err(|why| {
                    format!(
                        "task '{}' (kernel '{}'): expected time {why}",
                        graph.task_name(t),
                        graph.task_kernel(t)
                    )
                })?;
            }
        }
        let (bandwidth, latency) = self.link_model();
        let capacity =
            |node: crate::memory::Node| budget::limit_of(self.budgets.node(node).capacity.load(Ordering::Relaxed));
        Ok((self.predictor)(&PredictInput {
            graph,
            machine: &self.machine,
            costs: &costs,
            model,
            bandwidth,
            latency,
            gpu_memory: (!self.gpus.is_empty())
                .then(|| capacity(crate::memory::Node::Gpu(0)))
                .flatten(),
            host_memory: capacity(crate::memory::Node::Host),
            backpressure: self.backpressure,
            policy: self.policy,
            gpus: self.gpus.len(),
            data_bytes,
        }))
    }

    /// Bandwidth (bytes/s) and latency (s) of host↔GPU copies: from the model's calibrated
    /// link (`hexec bench gpu --model`), else measured over earlier runs once a megabyte has
    /// moved, else the defaults.
    fn link_model(&self) -> (f64, f64) {
        let calibrated = self.model.locked().link("host", "gpu");
        if let Some(l) = calibrated.filter(|l| l.bandwidth > 0.0) {
            return (l.bandwidth, l.latency);
        }
        let (bytes, secs) = *self.links.locked();
        if bytes > 1e6 && secs > 0.0 {
            (bytes / secs, costs::DEFAULT_LATENCY)
        } else {
            (costs::DEFAULT_BANDWIDTH, costs::DEFAULT_LATENCY)
        }
    }

    /// Adds a run's measured kernel times to the model, and its transfers to the link model.
    fn learn(&self, graph: &Graph, data_bytes: &[u64], stats: &[WorkerStats], transfers: &Transfers) {
        let sizes = costs::task_sizes(graph, data_bytes);
        // A model keeps the last MAX_SAMPLES samples per (kernel, kind, size): group first, so
        // that a run of a million tasks records a few hundred samples, not a million.
        let mut groups: std::collections::HashMap<(u32, crate::DeviceKind, u64), std::collections::VecDeque<f64>> =
            std::collections::HashMap::new();
        for (w, st) in stats.iter().enumerate() {
            let kind = self.machine.workers[w].kind;
            for &(task, secs) in &st.samples {
                let g = groups
                    .entry((graph.tasks[task as usize].kernel, kind, sizes[task as usize]))
                    .or_default();
                if g.len() == MAX_SAMPLES {
                    g.pop_front();
                }
                g.push_back(secs);
            }
        }
        let mut model = self.model.locked();
        for ((kernel, kind, size), samples) in groups {
            let (name, class) = (graph.kernels[kernel as usize].name(), kind.to_string());
            for secs in samples {
                model.record(name, &class, size, secs);
            }
        }
        drop(model);
        let (bytes, secs) = transfers
            .links()
            .iter()
            .fold((0.0, 0.0), |(b, s), l| (b + l.bytes as f64, s + l.seconds));
        let mut links = self.links.locked();
        links.0 += bytes;
        links.1 += secs;
    }

    /// A task that may run only on GPUs, on a runtime without any, is told about the software
    /// adapters that were found but not opened, and how to ask for them.
    fn hint_software_gpus(&self, e: SubmitError) -> SubmitError {
        match e {
            SubmitError::Unsatisfiable { task, reason }
                if self.gpus.is_empty() && !self.unused_software_gpus.is_empty() && reason.contains("gpu") =>
            {
                SubmitError::Unsatisfiable {
                    task,
                    reason: format!(
                        "{reason} (software GPUs were found here ({}) but are used only when asked for: {})",
                        self.unused_software_gpus.join(", "),
                        crate::gpu::ASK_FOR_SOFTWARE_GPUS
                    ),
                }
            }
            other => other,
        }
    }

    /// Compiles, on each GPU a task may run on, the GPU code of its kernel (once per kernel
    /// and device: the devices cache what compiled), so that a shader that does not compile is
    /// refused here with the compiler's message, naming the first task that uses it, rather
    /// than failing on the GPU and quietly running on a CPU instead.
    fn check_gpu_code(
        &self,
        graph: &Graph,
        compiled: &crate::sched::compile::CompiledGraph,
    ) -> Result<(), SubmitError> {
        if self.gpus.is_empty() {
            return Ok(());
        }
        let mut checked = vec![false; graph.kernels.len() * self.gpus.len()];
        for (t, rec) in graph.tasks.iter().enumerate() {
            let k = rec.kernel as usize;
            let Some(code) = graph.kernels[k].gpu_impl() else {
                continue;
            };
            let plan = &compiled.plan;
            for &w in &plan.set(plan.task_set(t as u32)).workers {
                let Some(g) = self.gpu_of_worker[w.index()] else {
                    continue;
                };
                let seen = &mut checked[k * self.gpus.len() + g];
                if *seen {
                    continue;
                }
                *seen = true;
                self.gpus[g]
                    .check_code(graph.kernels[k].name(), code)
                    .map_err(|message| SubmitError::GpuCode {
                        task: graph.task_name(t),
                        kernel: graph.kernels[k].name().to_string(),
                        worker: self.machine.workers[w.index()].name.clone(),
                        message,
                    })?;
            }
        }
        Ok(())
    }

    /// Compiles `kernel`'s GPU code on every GPU whose worker is not retired (each device
    /// caches what compiled), for a task submitted alone; the refusal names the task.
    pub(crate) fn check_kernel_gpu_code(
        &self,
        kernel: &hexec_kernels::Kernel,
        task: &dyn Fn() -> String,
    ) -> Result<(), SubmitError> {
        let Some(code) = kernel.gpu_impl() else {
            return Ok(());
        };
        let retired = self.retired();
        for (w, g) in self.gpu_of_worker.iter().enumerate() {
            let Some(g) = *g else { continue };
            if retired.contains(&WorkerId(w as u32)) {
                continue;
            }
            self.gpus[g]
                .check_code(kernel.name(), code)
                .map_err(|message| SubmitError::GpuCode {
                    task: task(),
                    kernel: kernel.name().to_string(),
                    worker: self.machine.workers[w].name.clone(),
                    message,
                })?;
        }
        Ok(())
    }

    /// [`Runtime::perf_model`].
    pub fn perf_model(&self) -> PerfModel {
        self.model.locked().clone()
    }

    fn execute<P: Policy>(
        &self,
        policy: &P,
        graph: &Graph,
        data: RunData<'_>,
        opts: RunOptions,
        turn: &pool::Turn<'_>,
        control: &TaskControl<'_>,
    ) -> Result<RunReport, RunError> {
        let RunData {
            compiled,
            bound,
            cells,
            data_bytes,
            costs: task_costs,
            cost_groups,
            deadline,
        } = data;
        let planning = self.policy.uses_costs();
        // Times measured in this run for kernels the model has no time for: planning
        // policies only (the others place nothing by cost), on machines with GPUs, where
        // placement weighs one class against the other (on CPUs alone, learning cost 48
        // instructions per task on the 20,000-task chain, 6%, and decided nothing).
        let learned = (planning && !self.gpus.is_empty()).then(|| {
            costs::LearnedCosts::new(
                cost_groups,
                &task_costs,
                |t| graph.tasks[t as usize].kernel,
                graph.kernels.len(),
            )
        });
        let calibrate = self.calibrate || planning;
        let n = graph.len();
        let speculation = (opts.speculate || deadline.is_some())
            .then(|| {
                if self.budgets.spillable() {
                    tracing::warn!("no speculative re-execution under a host memory limit");
                    return None;
                }
                Some(speculate::Speculation::new(
                    n,
                    self.machine.num_workers(),
                    graph.kernels.len(),
                    task_costs.clone(),
                ))
            })
            .flatten();
        let plan = &compiled.plan;
        let (shared, deques) = SharedQueues::new(plan);
        let names: Vec<String> = self.machine.workers.iter().map(|w| w.name.clone()).collect();
        self.budgets.reset_peaks();
        let run_start = Instant::now();
        let run = RunState {
            graph,
            compiled,
            bound,
            cells,
            gpus: &self.gpus,
            gpu_of_worker: &self.gpu_of_worker,
            learned: learned.as_ref(),
            transfers: if opts.record_trace {
                Transfers::new(self.gpus.len()).logged(run_start)
            } else {
                Transfers::new(self.gpus.len())
            },
            queues: &shared,
            core_gate: (compiled.max_cores > 1)
                .then(|| cores::CoreGate::new(self.machine.count(crate::DeviceKind::Cpu))),
            worker_names: &names,
            worker_numa: self.machine.workers.iter().map(|w| w.numa).collect(),
            deps: compiled.edges.indegree.iter().map(|&d| AtomicU32::new(d)).collect(),
            poisoned: (0..n).map(|_| AtomicBool::new(false)).collect(),
            end: end::RunEnd::new(n),
            failures: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            start: run_start,
            prefetched: AtomicU64::new(0),
            record_trace: opts.record_trace,
            calibrate,
            budgets: &self.budgets,
            backpressure: self.backpressure,
            temp_uses: graph
                .temp_uses()
                .map_or_else(Vec::new, |u| u.into_iter().map(AtomicU32::new).collect()),
            roots: (self.backpressure && self.budgets.any_limited()).then(|| {
                let mut held: Vec<u32> = compiled
                    .roots
                    .iter()
                    .copied()
                    .filter(|&r| graph.only_produces(r))
                    .collect();
                policy.order_held_roots(&mut held);
                RootGate::new(held, n, RootGate::slots(self.machine.num_workers(), self.gpus.len()))
            }),
            counted_pins: self.budgets.spillable() || graph.data.iter().any(GraphDatum::is_temp),
            retries: self.retries,
            retry_panics: self.retry_panics,
            attempts: (0..n).map(|_| AtomicU32::new(0)).collect(),
            attempt_log: Mutex::new(Vec::new()),
            retried: AtomicU64::new(0),
            faults: (!self.faults.is_empty()).then_some(&self.faults),
            device_losses: (0..self.gpus.len())
                .map(|g| {
                    self.faults
                        .device_losses()
                        .filter(|&(d, _)| d == g)
                        .map(|(_, t)| t)
                        .min()
                })
                .collect(),
            keep_going: opts.keep_going,
            phases: watchdog::Phases::new(n, opts.stall_timeout.is_some()),
            dead: (0..names.len()).map(|_| AtomicBool::new(false)).collect(),
            // A stale host buffer stays in memory, untouched, only without a host limit;
            // temporaries are freed by their last user.
            lineage: lineage::Lineage::new(cells, !self.gpus.is_empty(), |d| {
                !self.budgets.spillable() && !graph.data[d].is_temp()
            }),
            recovery: (0..self.gpus.len())
                .map(|_| std::sync::atomic::AtomicU8::new(worker::RECOVERY_NONE))
                .collect(),
            worker_losses: names.iter().map(|w| self.faults.worker_loss(w)).collect(),
            stalled: Mutex::new(None),
            speculation,
            pause: pause::WritePause::new(names.len(), !self.gpus.is_empty()),
            task_cancel: control.cancels,
            retiring: &self.retiring,
        };
        let (bandwidth, latency) = self.link_model();
        let view = planning.then(|| costs::CostView {
            start: run_start,
            costs: task_costs,
            learned: learned.as_ref(),
            kind_of: self.machine.workers.iter().map(|w| w.kind).collect(),
            node_of: crate::memory::nodes_of(&self.machine),
            graph,
            cells,
            data_bytes,
            bandwidth,
            latency,
            budgets: &self.budgets,
        });
        // A task placed in a GPU's mailbox has its inputs copied there right away, while that
        // GPU may still be busy with earlier work.
        let prefetch = |task: u32, w: WorkerId| {
            if let Some(g) = run.prefetch_target(w) {
                run.prefetch_inputs(task, g);
            }
        };
        let prefetch: Option<queues::Prefetch<'_>> = if self.gpus.is_empty() { None } else { Some(&prefetch) };
        let mut locals: Vec<LocalQueues<'_>> = deques
            .into_iter()
            .enumerate()
            .map(|(i, d)| LocalQueues::new(WorkerId(i as u32), d, &shared, plan, prefetch, view.as_ref()))
            .collect();
        for &t in control.skipped {
            run.poisoned[t as usize].store(true, Ordering::Relaxed);
        }
        for &r in &compiled.roots {
            run.phases.set(r, watchdog::READY);
            if !run.roots.as_ref().is_some_and(|gate| gate.holds(r)) {
                policy.place(plan, &mut locals[0], r, None);
            }
        }
        if let Some(gate) = &run.roots {
            gate.release(self.budgets.any_nearly_full(), |r| {
                policy.place(plan, &mut locals[0], r, None)
            });
        }
        // Set when the run stopped because its token was cancelled (not by a failure).
        let cancelled_by_token = AtomicBool::new(false);
        if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) && n > 0 {
            // Before any worker starts: nothing runs.
            cancelled_by_token.store(true, Ordering::SeqCst);
            worker::cancel(&run);
        }
        let started = Instant::now();
        let stats: Vec<WorkerStats> = std::thread::scope(|s| {
            // Stopped by the end of the run (`done`), or stops it when nothing progresses.
            let watchdog = opts.stall_timeout.map(|timeout| {
                let run = &run;
                s.spawn(move || {
                    if let Some(report) = watchdog::watch(run, timeout) {
                        tracing::error!(%report, "run stalled");
                        if let Some(hook) = opts.on_stall {
                            hook(&report);
                        }
                        *run.stalled.locked() = Some(report);
                        worker::cancel(run);
                    }
                })
            });
            // Cancelled from outside: stops the run as a final failure does.
            let monitor = opts.cancel.as_ref().map(|token| {
                let (run, cancelled_by_token) = (&run, &cancelled_by_token);
                s.spawn(move || {
                    if token.wait(|| run.end.is_done()) {
                        cancelled_by_token.store(true, Ordering::SeqCst);
                        worker::cancel(run);
                    }
                })
            });
            // Each worker's loop on its persistent thread; the loops take their queues from
            // here (the pool calls the closure once per worker).
            let locals: Vec<Mutex<Option<LocalQueues<'_>>>> = locals.into_iter().map(|q| Mutex::new(Some(q))).collect();
            let outcomes = turn.run_scoped(|i| {
                let q = locals[i].locked().take().expect("each worker's queues are taken once");
                let me = WorkerId(i as u32);
                let run = &run;
                // Kernel panics are caught per task; a panic here is a bug in hexec. Stop the
                // run rather than leave the other workers waiting forever.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match run.gpu_of_worker[i] {
                    Some(g) => worker::run_gpu_worker(policy, run, q, me, g),
                    None => run_worker(policy, run, q, me),
                }))
                .map_err(|p| {
                    run.end.end(&run.queues.sleep);
                    hexec_kernels::panic_message(&*p)
                })
            });
            // The workers are gone; the end lets the watchdog and the monitor leave once woken.
            run.end.end(&run.queues.sleep);
            if let Some(token) = &opts.cancel {
                token.wake();
            }
            if let Some(w) = watchdog {
                let _ = w.join();
            }
            if let Some(m) = monitor {
                let _ = m.join();
            }
            let mut stats = Vec::with_capacity(outcomes.len());
            for (i, outcome) in outcomes.into_iter().enumerate() {
                let message = match outcome {
                    Ok(Ok(st)) => {
                        stats.push(st);
                        continue;
                    }
                    Ok(Err(message)) => message,
                    Err(p) => hexec_kernels::panic_message(&*p),
                };
                return Err(RunError::Internal {
                    worker: names[i].clone(),
                    message,
                });
            }
            Ok(stats)
        })?;
        let makespan = started.elapsed();
        if calibrate {
            self.learn(graph, data_bytes, &stats, &run.transfers);
        }
        let failures = run.failures.into_unpoisoned();
        let mut warnings = run.warnings.into_unpoisoned();
        for (g, dev) in self.gpus.iter().enumerate() {
            if let Some(reason) = dev.lost() {
                warnings.push(format!(
                    "gpu{g} ({}) is lost ({reason}): its tasks that may run elsewhere ran on the other workers",
                    dev.desc.name
                ));
            }
        }
        let sum = |f: fn(&WorkerStats) -> u64| stats.iter().map(f).sum::<u64>();
        let workers = stats
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let w = &self.machine.workers[i];
                WorkerReport {
                    name: w.name.clone(),
                    class: self.machine.classes[w.class.0 as usize].name.clone(),
                    tasks: st.tasks,
                    busy_s: st.wall.saturating_sub(st.idle).as_secs_f64(),
                    steals: st.steals,
                    kernel_s: (w.kind == crate::DeviceKind::Gpu && st.kernel_s > 0.0).then_some(st.kernel_s),
                }
            })
            .collect();
        let trace = opts.record_trace.then(|| TraceLog {
            per_worker: stats.iter().map(|s| s.events.clone()).collect(),
            transfers: run.transfers.take_log(),
        });
        let memory = self.budgets.report();
        let (completed, failed, skipped) = (
            sum(|s| s.completed) as usize,
            sum(|s| s.failed) as usize,
            sum(|s| s.skipped) as usize,
        );
        let report = RunReport {
            policy: policy.name().to_string(),
            fused_links: compiled.plan.fused_links() as u64,
            tasks: n,
            completed,
            failed,
            skipped,
            cancelled: n.saturating_sub(completed + failed + skipped),
            retried: run.retried.load(Ordering::Relaxed),
            recomputed: run.lineage.recomputed.load(Ordering::Relaxed),
            speculated: run
                .speculation
                .as_ref()
                .map_or(0, |s| s.launched.load(Ordering::Relaxed)),
            speculation_won: run.speculation.as_ref().map_or(0, |s| s.won.load(Ordering::Relaxed)),
            deadline_s: deadline.map(|(d, _)| d.as_secs_f64()),
            predicted_s: deadline.and_then(|(_, p)| p),
            deadline_met: deadline.map(|(d, _)| makespan <= d),
            makespan_s: makespan.as_secs_f64(),
            steals: sum(|s| s.steals),
            prefetched_tasks: run.prefetched.load(Ordering::Relaxed),
            bytes_transferred: run.transfers.total_bytes(),
            residency: residency(graph, cells, self.gpus.len()),
            evictions: memory.iter().map(|m| m.evictions).sum(),
            spilled_bytes: memory.first().map_or(0, |host| host.written_back_bytes),
            memory,
            transfers: run.transfers.links(),
            workers,
            failures,
            warnings,
            trace,
        };
        if let Some(waiting) = run.stalled.into_unpoisoned() {
            return Err(RunError::Stalled {
                waiting,
                report: Box::new(report),
            });
        }
        if cancelled_by_token.into_inner() {
            return Err(RunError::Cancelled {
                report: Box::new(report),
            });
        }
        if report.failed > 0 {
            return Err(RunError::TaskFailed {
                report: Box::new(report),
            });
        }
        Ok(report)
    }
}

/// Where the run's stored data have valid copies now: per memory node, the number of data and
/// their bytes.
fn residency(graph: &Graph, cells: &[Option<Arc<data::DataCell>>], gpus: usize) -> Vec<crate::trace::NodeResidency> {
    let mut per_node: Vec<crate::trace::NodeResidency> = (0..=gpus)
        .map(|i| crate::trace::NodeResidency {
            node: crate::memory::Node::from_index(i).to_string(),
            data: 0,
            bytes: 0,
        })
        .collect();
    // Temporaries are gone after the run.
    let kept = cells.iter().zip(&graph.data).filter(|(_, d)| !d.is_temp());
    for cell in kept.filter_map(|(c, _)| c.as_ref()) {
        for node in cell.valid_nodes() {
            if let Some(r) = per_node.get_mut(node.index()) {
                r.data += 1;
                r.bytes += cell.bytes() as u64;
            }
        }
    }
    per_node
}
