//! The discrete-event loop: idle workers ask the policy for work (in worker order, so runs
//! are deterministic), tasks end as events in time order, and each completion releases
//! successors through the policy exactly as the runtime's workers do (immediate successor
//! first, the rest placed).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Serialize;

use super::bound::{lower_bound, mixed_bound, LowerBound};
use super::SimMachine;
use crate::graph::{Graph, GraphDatum};
use crate::kernels::ElemType;
use crate::memory::{room_seconds, Coherence, Node, Transfers, SPILL_BANDWIDTH as DISK_BYTES_PER_S};
use crate::sched::compile::{compile, DatumInfo, SubmitError, Successors};
use crate::sched::{
    allowed_costs, build_policy, kind_index, rank_priorities, Pick, Plan, Policy, PolicyInputs, PolicyKind,
    ReadyQueues, RootGate, SimQueues,
};
use crate::topology::{DeviceKind, WorkerId};
use crate::trace::{NodeResidency, RunReport, TraceEvent, TraceLog, WorkerReport};

/// Options of a simulation.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// Record every task's simulated start and end.
    pub record_trace: bool,
    /// Each GPU's memory for data copies: past it, least-recently-used copies not used by
    /// the running task are evicted (written back to the host when the only valid copy).
    pub gpu_memory: Option<u64>,
    /// Host memory for data: past it, least-recently-used host copies not used by a running
    /// task are spilled to disk (written when the only valid copy, at
    /// `crate::memory::SPILL_BANDWIDTH`), as the runtime does.
    pub host_memory: Option<u64>,
    /// Turns off memory backpressure (root tasks held back under a limit), as
    /// `RuntimeBuilder::no_backpressure` does.
    pub no_backpressure: bool,
    /// Also solves the mixed (LP) lower bound ([`crate::sim::mixed_bound`]): tighter
    /// on machines of CPUs and GPUs, but it takes up to seconds, so it is asked for.
    pub lp_bound: bool,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The graph was refused.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The simulation stalled (a policy lost tasks).
    #[error("the simulation stalled at t = {time} s with {remaining} task(s) never started (a policy lost them)")]
    Stalled {
        /// Simulated time, seconds.
        time: f64,
        /// Tasks never started.
        remaining: usize,
    },
    /// A task's own operands fill a node's memory.
    #[error("task '{task}' needs datum {datum} on {node}, whose memory is full of the task's own operands")]
    NoRoom {
        /// The task's name.
        task: String,
        /// The datum's name.
        datum: String,
        /// The node's name.
        node: String,
    },
    /// A task cannot be priced on this machine: its model knows the kernel at another size.
    #[error("task '{task}' (kernel '{kernel}'): {why}")]
    Unpriced {
        /// The task's name.
        task: String,
        /// The kernel's name.
        kernel: String,
        /// Why.
        why: String,
    },
    /// A task's modelled cost is not a usable duration (a machine whose speeds make a
    /// finite input absurd, e.g. `gflops:1e-300`, or a model that slipped past its checks).
    #[error("task '{task}' (kernel '{kernel}'), modelled on a {class} worker of this machine: {why}")]
    Cost {
        /// The task's name.
        task: String,
        /// The kernel's name.
        kernel: String,
        /// The worker class's name.
        class: String,
        /// The cost, as modelled.
        seconds: f64,
        /// Why it is unusable.
        why: String,
    },
}

/// The summary of a simulated run: the runtime's summary plus the lower bound.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// The run's summary, as the runtime gives it.
    #[serde(flatten)]
    pub run: RunReport,
    /// The machine's name.
    pub machine: String,
    /// The lower bound, seconds.
    pub lower_bound_s: f64,
    /// The critical-path bound, seconds.
    pub critical_path_s: f64,
    /// The area bound, seconds.
    pub area_bound_s: f64,
    /// The mixed (LP) bound, seconds, when asked for and solved.
    pub mixed_bound_s: Option<f64>,
    /// Makespan divided by the lower bound (1 is optimal).
    pub makespan_over_bound: f64,
    /// The worker each task ran on.
    #[serde(skip)]
    pub placement: Vec<WorkerId>,
}

const KINDS: [DeviceKind; 2] = [DeviceKind::Cpu, DeviceKind::Gpu];

/// Simulates `graph` (built with [`SimMachine::kernel`] stand-ins) on `sm` under `policy`.
pub fn simulate(graph: &Graph, sm: &SimMachine, policy: PolicyKind, opts: &SimOptions) -> Result<SimReport, SimError> {
    simulate_sized(graph, sm, policy, opts, None)
}

/// [`simulate`], with the size in bytes of every datum when the caller knows them (a runtime
/// predicting a run of its own graph knows its stored data; otherwise they count as empty).
pub(crate) fn simulate_sized(
    graph: &Graph,
    sm: &SimMachine,
    policy: PolicyKind,
    opts: &SimOptions,
    sizes: Option<&[u64]>,
) -> Result<SimReport, SimError> {
    let data_bytes: Vec<u64> = match sizes {
        Some(s) => s.to_vec(),
        None => graph
            .data
            .iter()
            .map(|d| match d {
                GraphDatum::Virtual { bytes, .. } => *bytes,
                GraphDatum::Temp { elem, len, .. } => (*len * elem.size()) as u64,
                GraphDatum::Stored { .. } => 0,
            })
            .collect(),
    };
    let edges = Successors::of(graph);
    let infos: Vec<DatumInfo<'_>> = graph
        .data
        .iter()
        .zip(&data_bytes)
        .map(|(d, &bytes)| DatumInfo {
            name: match d {
                GraphDatum::Virtual { name, .. } | GraphDatum::Temp { name, .. } => name,
                GraphDatum::Stored { .. } => "stored",
            },
            // Every datum is plain bytes to the simulator, movable to any memory.
            elem: Some(ElemType::U8),
            bytes,
            read_only: false,
        })
        .collect();
    let costs = task_costs(graph, sm, &data_bytes)?;
    let mut g = graph.clone();
    if policy.uses_costs() && graph.tasks.iter().all(|t| t.priority == 0) {
        for (t, p) in rank_priorities(&edges, &costs).into_iter().enumerate() {
            g.tasks[t].priority = p;
        }
    }
    // A GPU memory limit also refuses, at submit, tasks whose operands cannot fit.
    let mut machine = sm.machine.clone();
    if let Some(limit) = opts.gpu_memory {
        machine.gpus.iter_mut().for_each(|g| g.memory_bytes = Some(limit));
    }
    let compiled = compile(&g, &machine, &infos)?;
    let plan = &compiled.plan;
    // Costs where the task may run at all.
    let kinds: Vec<DeviceKind> = sm.machine.workers.iter().map(|w| w.kind).collect();
    let allowed = allowed_costs(plan, &kinds, &costs);
    let (cpus, gpus) = (sm.machine.count(DeviceKind::Cpu), sm.machine.count(DeviceKind::Gpu));
    let mut bound = lower_bound(&edges, &allowed, cpus, gpus);
    if opts.lp_bound {
        bound = bound.with_mixed(mixed_bound(&edges, &allowed, cpus, gpus));
    }
    let mut st = State::new(&g, sm, &data_bytes, allowed, opts);
    st.admit_host_data();
    let placed = {
        let built = build_policy(
            policy,
            &PolicyInputs {
                machine: &sm.machine,
                plan,
                edges: &compiled.edges,
                costs: &st.costs,
                comm: &|p, t, from, to| st.comm(p, t, st.node_of[from.index()], st.node_of[to.index()]),
                mean_comm: &|p, t| st.mean_comm(p, t),
                host_memory_limited: opts.host_memory.is_some(),
                links_free: sm.links_free(),
            },
        );
        st.run(&built, &compiled.edges, &compiled.roots, plan)
    };
    placed?;
    let mut report = st.report(policy, sm, bound);
    report.run.fused_links = plan.fused_links() as u64;
    Ok(report)
}

/// Per task: `[cpu, gpu]` cost from the machine's models. Each must be a duration
/// ([`crate::limits::seconds`]): the event loop and the bounds assume finite, non-negative
/// times, and a makespan of 1e300 s or NaN says nothing.
fn task_costs(graph: &Graph, sm: &SimMachine, data_bytes: &[u64]) -> Result<Vec<[Option<f64>; 2]>, SimError> {
    let costs: Vec<[Option<f64>; 2]> = (0..graph.len())
        .map(|t| {
            let rec = &graph.tasks[t];
            let kernel = &graph.kernels[rec.kernel as usize];
            let size: u64 = graph.accesses[rec.accesses.range()]
                .iter()
                .map(|&(d, _)| data_bytes[d as usize])
                .sum();
            let recorded = crate::sched::recorded_seconds(graph, t);
            if let Some(why) = sm
                .models_unread(kernel.name())
                .or_else(|| sm.size_mismatch(kernel.name(), size))
            {
                return Err(SimError::Unpriced {
                    task: graph.task_name(t),
                    kernel: kernel.name().to_string(),
                    why,
                });
            }
            let mut c = [None, None];
            for (k, kind) in KINDS.iter().enumerate() {
                let has = match kind {
                    DeviceKind::Cpu => kernel.has_cpu(),
                    DeviceKind::Gpu => kernel.has_gpu(),
                };
                if has {
                    c[k] = sm.cost(kernel.name(), *kind, size, recorded);
                }
            }
            Ok(c)
        })
        .collect::<Result<_, SimError>>()?;
    for (t, c) in costs.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            let Some(seconds) = c[k] else { continue };
            if let Err(why) = crate::limits::seconds(seconds) {
                return Err(SimError::Cost {
                    task: graph.task_name(t),
                    kernel: graph.task_kernel(t).to_string(),
                    class: kind.to_string(),
                    seconds,
                    why,
                });
            }
        }
    }
    Ok(costs)
}

/// The simulated machine's state.
struct State<'a> {
    graph: &'a Graph,
    sm: &'a SimMachine,
    data_bytes: &'a [u64],
    costs: Vec<[Option<f64>; 2]>,
    kind_of: Vec<DeviceKind>,
    node_of: Vec<Node>,
    now: f64,
    coherence: Vec<Coherence>,
    /// `[datum][node]`: when the copy there is (or will be) complete.
    arrival: Vec<Vec<f64>>,
    /// `[from][to]`: when the link is free again (one copy at a time per direction).
    link_free: Vec<Vec<f64>>,
    /// GPU memory capacity for copies, if limited.
    gpu_cap: Option<u64>,
    /// Host memory capacity, if limited.
    host_cap: Option<u64>,
    /// `[datum][node]`: memory allocated there for the datum. Every datum starts with a host
    /// buffer (the program created it), which stays, stale or not, until it is spilled.
    alloc: Vec<Vec<bool>>,
    /// `[datum]`: the valid host copy is in a spill file, not in memory.
    on_disk: Vec<bool>,
    /// `[datum]`: accesses by tasks not yet finished, for temporaries (`u32::MAX` otherwise).
    temp_uses: Vec<u32>,
    /// Data-producing roots held back under a memory limit, as the runtime does.
    backpressure: bool,
    /// When the spill disk is free again (one transfer at a time).
    disk_free: f64,
    spilled: u64,
    /// `[datum][node]`: tasks running there that use the datum.
    pins: Vec<Vec<u32>>,
    /// `[datum][node]`: last use, for least-recently-used eviction.
    last_use: Vec<Vec<f64>>,
    /// Per node: bytes allocated, peak, evictions, bytes written back.
    used: Vec<u64>,
    peak: Vec<u64>,
    evictions: Vec<u64>,
    written_back: Vec<u64>,
    transfers: Transfers,
    busy: Vec<f64>,
    tasks: Vec<u64>,
    steals: Vec<u64>,
    placement: Vec<WorkerId>,
    events: Option<Vec<Vec<TraceEvent>>>,
}

/// The policy's window: the queues plus what the simulated machine knows.
struct View<'q, 's, 'a> {
    q: &'q mut SimQueues,
    st: &'s mut State<'a>,
}

impl ReadyQueues for View<'_, '_, '_> {
    fn push_local(&mut self, worker: WorkerId, task: u32) {
        self.q.push_local(worker, task)
    }
    fn push_mailbox(&mut self, worker: WorkerId, band: u8, task: u32) {
        self.q.push_mailbox(worker, band, task);
        // As in the runtime: a task placed on one worker starts its input copies now.
        let node = self.st.node_of[worker.index()];
        self.st.fetch_inputs(task, node);
    }
    fn push_shared(&mut self, set: u16, band: u8, task: u32) {
        self.q.push_shared(set, band, task)
    }
    fn pop_local(&mut self, worker: WorkerId) -> Option<u32> {
        self.q.pop_local(worker)
    }
    fn pop_mailbox(&mut self, worker: WorkerId, band: u8) -> Option<u32> {
        self.q.pop_mailbox(worker, band)
    }
    fn pop_shared(&mut self, worker: WorkerId, set: u16, band: u8, batch: bool) -> Option<u32> {
        self.q.pop_shared(worker, set, band, batch)
    }
    fn steal(&mut self, thief: WorkerId, victim: WorkerId) -> Option<u32> {
        self.q.steal(thief, victim)
    }
    fn push_planned(&mut self, worker: WorkerId, position: u32, task: u32) {
        self.q.push_planned(worker, position, task);
        let node = self.st.node_of[worker.index()];
        self.st.fetch_inputs(task, node);
    }
    fn pop_planned(&mut self, worker: WorkerId, upto: u32) -> Option<u32> {
        self.q.pop_planned(worker, upto)
    }
    fn now(&self) -> f64 {
        self.st.now
    }
    fn compute_time(&self, task: u32, worker: WorkerId) -> Option<f64> {
        self.st.costs[task as usize][kind_index(self.st.kind_of[worker.index()])]
    }
    fn transfer(&self, task: u32, worker: WorkerId) -> (f64, u64) {
        let (ready, resident) = self.st.inputs_ready(task, self.st.node_of[worker.index()]);
        ((ready - self.st.now).max(0.0), resident)
    }
}

impl<'a> State<'a> {
    fn new(
        graph: &'a Graph,
        sm: &'a SimMachine,
        data_bytes: &'a [u64],
        costs: Vec<[Option<f64>; 2]>,
        opts: &SimOptions,
    ) -> Self {
        let m = &sm.machine;
        let node_of = crate::memory::nodes_of(m);
        let gpus = sm.nodes() - 1;
        State {
            graph,
            sm,
            data_bytes,
            costs,
            kind_of: m.workers.iter().map(|w| w.kind).collect(),
            node_of,
            now: 0.0,
            coherence: (0..graph.data.len()).map(|_| Coherence::host_only(gpus)).collect(),
            arrival: vec![vec![0.0; gpus + 1]; graph.data.len()],
            link_free: vec![vec![0.0; gpus + 1]; gpus + 1],
            gpu_cap: opts.gpu_memory,
            host_cap: opts.host_memory,
            alloc: vec![vec![false; gpus + 1]; graph.data.len()],
            on_disk: vec![false; graph.data.len()],
            temp_uses: graph.temp_uses().unwrap_or_else(|| vec![u32::MAX; graph.data.len()]),
            backpressure: !opts.no_backpressure && (opts.gpu_memory.is_some() || opts.host_memory.is_some()),
            disk_free: 0.0,
            spilled: 0,
            pins: vec![vec![0; gpus + 1]; graph.data.len()],
            last_use: vec![vec![0.0; gpus + 1]; graph.data.len()],
            used: vec![0; gpus + 1],
            peak: vec![0; gpus + 1],
            evictions: vec![0; gpus + 1],
            written_back: vec![0; gpus + 1],
            transfers: Transfers::new(gpus),
            busy: vec![0.0; m.num_workers()],
            tasks: vec![0; m.num_workers()],
            steals: vec![0; m.num_workers()],
            placement: vec![WorkerId(u32::MAX); graph.len()],
            events: opts.record_trace.then(|| vec![Vec::new(); m.num_workers()]),
        }
    }

    fn link(&self, from: Node, to: Node, bytes: u64) -> f64 {
        if from == to || bytes == 0 {
            return 0.0;
        }
        self.sm.latency[from.index()][to.index()] + bytes as f64 / self.sm.bandwidth[from.index()][to.index()]
    }

    /// The best copy of datum `d` to `dst`: (source, end time), given link occupancy.
    fn plan_copy(&self, d: u32, dst: Node) -> Option<(Node, f64)> {
        let bytes = self.data_bytes[d as usize];
        self.coherence[d as usize]
            .valid_nodes()
            .map(|src| {
                let start = self
                    .now
                    .max(self.arrival[d as usize][src.index()])
                    .max(self.link_free[src.index()][dst.index()]);
                (src, start + self.link(src, dst, bytes))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Gives every datum its host buffer, in creation order, spilling earlier ones past the
    /// host limit as the runtime does when a program creates data. A datum larger than the
    /// limit is accounted over it (the runtime never spills those). Like the runtime, whose
    /// counters start with the run, what happens here is not counted.
    fn admit_host_data(&mut self) {
        for d in 0..self.data_bytes.len() {
            if self.temp_uses[d] != u32::MAX {
                continue; // a temporary has no memory until a task uses it
            }
            if !self.allocate(d as u32, Node::Host) {
                self.alloc[d][0] = true;
                self.used[0] += self.data_bytes[d];
            }
        }
        self.peak[0] = self.used[0];
        (self.evictions[0], self.written_back[0], self.spilled, self.disk_free) = (0, 0, 0, 0.0);
    }

    /// One disk transfer of `bytes` starting no earlier than `not_before`; returns its end.
    fn disk(&mut self, bytes: u64, not_before: f64) -> f64 {
        let start = self.now.max(self.disk_free).max(not_before);
        self.disk_free = start + bytes as f64 / DISK_BYTES_PER_S;
        self.disk_free
    }

    /// Allocates room for datum `d` on node `dst`, evicting least-recently-used copies not in
    /// use there (GPU copies written back to the host, host copies spilled to disk, when they
    /// are the only valid copy). False when the data in use leave no room.
    fn allocate(&mut self, d: u32, dst: Node) -> bool {
        let cap = match dst {
            Node::Host => self.host_cap,
            Node::Gpu(_) => self.gpu_cap,
        }
        .unwrap_or(u64::MAX);
        let n = dst.index();
        if self.alloc[d as usize][n] {
            return true;
        }
        let bytes = self.data_bytes[d as usize];
        while self.used[n] + bytes > cap {
            let victim = (0..self.alloc.len())
                .filter(|&v| v != d as usize && self.alloc[v][n] && self.pins[v][n] == 0)
                .filter(|&v| dst != Node::Host || self.data_bytes[v] <= cap)
                .min_by(|&a, &b| self.last_use[a][n].total_cmp(&self.last_use[b][n]));
            let Some(v) = victim else { return false };
            let c = &self.coherence[v];
            if dst == Node::Host {
                if c.is_valid(Node::Host) && !self.on_disk[v] {
                    if c.valid_nodes().count() == 1 {
                        let vb = self.data_bytes[v];
                        self.disk(vb, self.arrival[v][0]);
                        self.on_disk[v] = true;
                        self.written_back[0] += vb;
                        self.spilled += vb;
                    } else {
                        self.coherence[v].drop_copy(Node::Host);
                    }
                }
                self.free(v, 0);
                self.evictions[0] += 1;
                continue;
            }
            if c.is_valid(dst) && c.valid_nodes().count() == 1 {
                // The only valid copy: write it back to the host first, which needs room
                // there.
                if !self.allocate(v as u32, Node::Host) {
                    return false;
                }
                self.on_disk[v] = false;
                let vb = self.data_bytes[v];
                let start = self.now.max(self.arrival[v][n]).max(self.link_free[n][0]);
                let end = start + self.link(dst, Node::Host, vb);
                self.link_free[n][0] = end;
                self.arrival[v][0] = end;
                // The simulator's transfers are counted, never logged: no name is needed.
                self.transfers
                    .record(dst, Node::Host, vb, crate::limits::duration(end - start), "");
                self.coherence[v].record_read(Node::Host);
                self.written_back[n] += vb;
            }
            self.coherence[v].drop_copy(dst);
            self.free(v, n);
            self.evictions[n] += 1;
        }
        self.alloc[d as usize][n] = true;
        self.used[n] += bytes;
        self.peak[n] = self.peak[n].max(self.used[n]);
        true
    }

    /// Whether some limited node is above the runtime's high watermark.
    fn nearly_full(&self) -> bool {
        self.used.iter().enumerate().any(|(n, &used)| {
            let cap = if n == 0 { self.host_cap } else { self.gpu_cap };
            cap.is_some_and(|cap| used as f64 > crate::memory::HIGH_WATERMARK * cap as f64)
        })
    }

    /// Frees every copy of the temporaries whose last use was `task`, as the runtime does.
    fn free_dead_temps(&mut self, task: u32) {
        let rec = &self.graph.tasks[task as usize];
        for &(d, _) in &self.graph.accesses[rec.accesses.range()] {
            let d = d as usize;
            if self.temp_uses[d] == u32::MAX {
                continue;
            }
            self.temp_uses[d] -= 1;
            if self.temp_uses[d] == 0 {
                for n in 0..self.alloc[d].len() {
                    self.free(d, n);
                }
                self.coherence[d] = Coherence::host_only(self.alloc[d].len() - 1);
                self.on_disk[d] = false;
            }
        }
    }

    fn free(&mut self, d: usize, n: usize) {
        if std::mem::take(&mut self.alloc[d][n]) {
            self.used[n] -= self.data_bytes[d];
        }
    }

    /// Reads a spilled host copy back into memory; returns when it is there.
    fn unspill(&mut self, d: u32) -> f64 {
        if !self.allocate(d, Node::Host) {
            // No host room beside the data in use: read straight from the file.
            return self.now.max(self.disk_free) + self.data_bytes[d as usize] as f64 / DISK_BYTES_PER_S;
        }
        let end = self.disk(self.data_bytes[d as usize], 0.0);
        self.on_disk[d as usize] = false;
        self.arrival[d as usize][0] = end;
        end
    }

    /// Starts copying datum `d` to `dst` (if it is not there or on its way); returns when it
    /// will be there.
    fn fetch(&mut self, d: u32, dst: Node) -> f64 {
        if self.coherence[d as usize].is_valid(dst) {
            if dst == Node::Host && self.on_disk[d as usize] {
                return self.unspill(d);
            }
            return self.arrival[d as usize][dst.index()];
        }
        if !self.allocate(d, dst) {
            // No room beside the data in use: the task fetches it when it starts.
            return self.now;
        }
        let Some((mut src, mut end)) = self.plan_copy(d, dst) else {
            return self.now;
        };
        if src == Node::Host && self.on_disk[d as usize] {
            self.unspill(d);
            (src, end) = self.plan_copy(d, dst).expect("the host copy is valid");
        }
        let bytes = self.data_bytes[d as usize];
        let took = self.link(src, dst, bytes);
        self.link_free[src.index()][dst.index()] = end;
        self.arrival[d as usize][dst.index()] = end;
        self.transfers
            .record(src, dst, bytes, crate::limits::duration(took), "");
        self.coherence[d as usize].record_read(dst);
        end
    }

    /// Pins the task's operands on `node` and gives each room there (outputs too); returns a
    /// datum that cannot fit.
    fn pin_operands(&mut self, task: u32, node: Node) -> Option<u32> {
        let graph = self.graph;
        let rec = &graph.tasks[task as usize];
        for &(d, _) in &graph.accesses[rec.accesses.range()] {
            self.pins[d as usize][node.index()] += 1;
            self.last_use[d as usize][node.index()] = self.now;
        }
        graph.accesses[rec.accesses.range()]
            .iter()
            .find(|&&(d, _)| !self.allocate(d, node))
            .map(|&(d, _)| d)
    }

    fn unpin_operands(&mut self, task: u32, node: Node) {
        let rec = &self.graph.tasks[task as usize];
        for &(d, _) in &self.graph.accesses[rec.accesses.range()] {
            self.pins[d as usize][node.index()] -= 1;
        }
    }

    /// Starts the copies of `task`'s inputs to `node`; returns when all will be there.
    fn fetch_inputs(&mut self, task: u32, node: Node) -> f64 {
        let graph = self.graph;
        let rec = &graph.tasks[task as usize];
        let mut ready = self.now;
        for &(d, access) in &graph.accesses[rec.accesses.range()] {
            if access.reads() {
                ready = ready.max(self.fetch(d, node));
            }
        }
        ready
    }

    /// Copies what `producer` wrote that `consumer` reads to `node`, ahead of `consumer`'s
    /// placement (its other inputs may not exist yet).
    fn prefetch_output(&mut self, producer: u32, consumer: u32, node: Node) {
        if node == Node::Host {
            return;
        }
        let graph = self.graph;
        for d in graph.handed_over(producer, consumer) {
            self.fetch(d, node);
        }
    }

    /// When `task`'s inputs could all be at `node` (copies in flight or planned now), and the
    /// input bytes already there.
    fn inputs_ready(&self, task: u32, node: Node) -> (f64, u64) {
        let rec = &self.graph.tasks[task as usize];
        let (mut ready, mut resident) = (self.now, 0u64);
        for &(d, access) in &self.graph.accesses[rec.accesses.range()] {
            if !access.reads() {
                continue;
            }
            if self.coherence[d as usize].is_valid(node) {
                let at = self.arrival[d as usize][node.index()];
                if at <= self.now {
                    resident += self.data_bytes[d as usize];
                }
                ready = ready.max(at);
            } else if let Some((_, end)) = self.plan_copy(d, node) {
                ready = ready.max(end);
            }
        }
        // Room that must be made first.
        let cap = match node {
            Node::Host => self.host_cap,
            Node::Gpu(_) => self.gpu_cap,
        };
        if let Some(cap) = cap {
            let new_bytes = self.graph.accesses[rec.accesses.range()]
                .iter()
                .filter(|&&(d, _)| !self.alloc[d as usize][node.index()])
                .map(|&(d, _)| self.data_bytes[d as usize])
                .sum();
            ready += room_seconds(node, self.used[node.index()], new_bytes, cap, |b| {
                self.link(node, Node::Host, b)
            });
        }
        (ready, resident)
    }

    /// Bytes task `t` reads that `p` writes.
    fn shared_bytes(&self, p: u32, t: u32) -> u64 {
        self.graph.handed_over(p, t).map(|d| self.data_bytes[d as usize]).sum()
    }

    fn comm(&self, p: u32, t: u32, from: Node, to: Node) -> f64 {
        self.link(from, to, self.shared_bytes(p, t))
    }

    /// Mean host↔GPU cost of moving `p`'s outputs to `t` (for HEFT's ranks).
    fn mean_comm(&self, p: u32, t: u32) -> f64 {
        if self.sm.nodes() < 2 {
            return 0.0;
        }
        self.comm(p, t, Node::Host, Node::Gpu(0))
    }

    fn run<P: Policy>(&mut self, policy: &P, edges: &Successors, roots: &[u32], plan: &Plan) -> Result<(), SimError> {
        let nw = plan.num_workers();
        let n = self.graph.len();
        let follows_chains = policy.follows_fused_chains();
        let mut q = SimQueues::new(nw, plan.sets().len(), plan.num_bands());
        let gate = self.backpressure.then(|| {
            let mut held: Vec<u32> = roots.iter().copied().filter(|&r| self.graph.only_produces(r)).collect();
            policy.order_held_roots(&mut held);
            let gpus = self.kind_of.iter().filter(|&&k| k == DeviceKind::Gpu).count();
            RootGate::new(held, n, RootGate::slots(nw, gpus))
        });
        for &r in roots {
            if !gate.as_ref().is_some_and(|g| g.holds(r)) {
                policy.place(plan, &mut View { q: &mut q, st: self }, r, None);
            }
        }
        if let Some(gate) = &gate {
            let mut released = Vec::new();
            gate.release(self.nearly_full(), |r| released.push(r));
            for r in released {
                policy.place(plan, &mut View { q: &mut q, st: self }, r, None);
            }
        }
        let mut deps = edges.indegree.clone();
        let mut running: Vec<Option<(u32, f64)>> = vec![None; nw];
        let mut slot: Vec<Option<u32>> = vec![None; nw];
        let mut heap: BinaryHeap<Reverse<(u64, u64, u32)>> = BinaryHeap::new();
        let mut seq = 0u64;
        let mut done = 0usize;
        let mut ready = Vec::new();
        loop {
            for w in 0..nw {
                if running[w].is_some() {
                    continue;
                }
                let me = WorkerId(w as u32);
                let pick = match slot[w].take() {
                    Some(task) => Some(Pick {
                        task,
                        stolen_from: None,
                    }),
                    None => policy.next(plan, &mut View { q: &mut q, st: self }, me),
                };
                let Some(Pick { task, stolen_from }) = pick else {
                    continue;
                };
                self.steals[w] += u64::from(stolen_from.is_some());
                let node = self.node_of[w];
                if let Some(d) = self.pin_operands(task, node) {
                    self.unpin_operands(task, node);
                    if running.iter().any(Option::is_some) {
                        // Room is held by running tasks: wait for the next completion, as
                        // the runtime's workers do.
                        slot[w] = Some(task);
                        continue;
                    }
                    return Err(SimError::NoRoom {
                        task: self.graph.task_name(task as usize),
                        datum: self.graph.datum_label(d),
                        node: node.to_string(),
                    });
                }
                let start = self.fetch_inputs(task, node);
                let compute = self.costs[task as usize][kind_index(self.kind_of[w])].unwrap_or(0.0);
                let end = start + compute;
                self.busy[w] += compute;
                self.tasks[w] += 1;
                self.placement[task as usize] = me;
                if let Some(ev) = &mut self.events {
                    ev[w].push(TraceEvent {
                        task,
                        start_ns: (self.now * 1e9) as u64,
                        end_ns: (end * 1e9) as u64,
                        gpu_ns: None,
                        batch: None,
                    });
                }
                running[w] = Some((task, end));
                heap.push(Reverse((end.to_bits(), seq, w as u32)));
                seq += 1;
            }
            let Some(Reverse((bits, _, w))) = heap.pop() else { break };
            self.now = f64::from_bits(bits);
            let w = w as usize;
            let Some((task, _)) = running[w].take() else { continue };
            let node = self.node_of[w];
            let rec = &self.graph.tasks[task as usize];
            for &(d, access) in &self.graph.accesses[rec.accesses.range()] {
                self.pins[d as usize][node.index()] -= 1;
                if access.writes() {
                    let stale: Vec<Node> = self.coherence[d as usize]
                        .valid_nodes()
                        .filter(|&m| m != node)
                        .collect();
                    self.coherence[d as usize].record_write(node);
                    self.arrival[d as usize][node.index()] = self.now;
                    // A spilled copy is stale now; a stale host buffer stays allocated (the
                    // runtime keeps it until it is spilled), stale GPU copies are dropped.
                    self.on_disk[d as usize] = false;
                    for m in stale.into_iter().filter(|&m| m != Node::Host) {
                        self.free(d as usize, m.index());
                    }
                }
            }
            done += 1;
            ready.clear();
            for &s in edges.of_task(task) {
                deps[s as usize] -= 1;
                if deps[s as usize] == 0 {
                    ready.push(s);
                }
            }
            let me = WorkerId(w as u32);
            let best = policy.pick_immediate(plan, task, &ready, me, follows_chains, |s| {
                self.graph.tasks[s as usize].priority
            });
            if let Some(i) = best {
                slot[w] = Some(ready.swap_remove(i));
            }
            for &s in &ready {
                policy.place(plan, &mut View { q: &mut q, st: self }, s, Some(me));
            }
            // Early copies after the ready successors' own, as in the runtime.
            if policy.copies_ahead() {
                for &s in edges.of_task(task) {
                    if let (true, Some(e)) = (deps[s as usize] > 0, policy.expected_worker(s)) {
                        self.prefetch_output(task, s, self.node_of[e.index()]);
                    }
                }
            }
            self.free_dead_temps(task);
            if let Some(gate) = &gate {
                gate.finished(task);
                let mut released = Vec::new();
                gate.release(self.nearly_full(), |r| released.push(r));
                for r in released {
                    policy.place(plan, &mut View { q: &mut q, st: self }, r, None);
                }
            }
        }
        if done < n {
            return Err(SimError::Stalled {
                time: self.now,
                remaining: n - done,
            });
        }
        Ok(())
    }

    fn report(self, policy: PolicyKind, sm: &SimMachine, bound: LowerBound) -> SimReport {
        let m = &sm.machine;
        let makespan = self.now;
        let workers = m
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| WorkerReport {
                name: w.name.clone(),
                class: m.classes[w.class.0 as usize].name.clone(),
                tasks: self.tasks[i],
                busy_s: self.busy[i],
                steals: self.steals[i],
                kernel_s: None,
            })
            .collect();
        let mut residency: Vec<NodeResidency> = (0..sm.nodes())
            .map(|i| NodeResidency {
                node: Node::from_index(i).to_string(),
                data: 0,
                bytes: 0,
            })
            .collect();
        // Temporaries are gone after the run.
        let kept = self
            .coherence
            .iter()
            .enumerate()
            .filter(|&(d, _)| self.temp_uses[d] == u32::MAX);
        for (d, c) in kept {
            for node in c.valid_nodes() {
                residency[node.index()].data += 1;
                residency[node.index()].bytes += self.data_bytes[d];
            }
        }
        let run = RunReport {
            // Set by the caller, which holds the plan.
            fused_links: 0,
            warnings: Vec::new(),
            policy: policy.name().to_string(),
            tasks: self.graph.len(),
            completed: self.graph.len(),
            failed: 0,
            skipped: 0,
            cancelled: 0,
            retried: 0,
            speculated: 0,
            speculation_won: 0,
            recomputed: 0,
            deadline_s: None,
            predicted_s: None,
            deadline_met: None,
            makespan_s: makespan,
            steals: self.steals.iter().sum(),
            prefetched_tasks: 0,
            bytes_transferred: self.transfers.total_bytes(),
            transfers: self.transfers.links(),
            residency,
            memory: (0..sm.nodes())
                .map(|i| crate::trace::NodeMemory {
                    node: Node::from_index(i).to_string(),
                    capacity_bytes: if i > 0 { self.gpu_cap } else { self.host_cap },
                    peak_bytes: self.peak[i],
                    evictions: self.evictions[i],
                    written_back_bytes: self.written_back[i],
                    // Simulated workers run one task at a time and evict only for it.
                    ping_pongs: 0,
                })
                .collect(),
            evictions: self.evictions.iter().sum(),
            spilled_bytes: self.spilled,
            workers,
            failures: Vec::new(),
            trace: self.events.map(|per_worker| TraceLog {
                per_worker,
                transfers: Vec::new(),
            }),
        };
        SimReport {
            run,
            machine: sm.name.clone(),
            lower_bound_s: bound.bound_s,
            critical_path_s: bound.critical_path_s,
            area_bound_s: bound.area_s,
            mixed_bound_s: bound.mixed_s,
            makespan_over_bound: if bound.bound_s > 0.0 {
                makespan / bound.bound_s
            } else {
                1.0
            },
            placement: self.placement,
        }
    }
}
