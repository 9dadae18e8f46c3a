//! The machine hexec runs on: workers, their compatibility classes, memory nodes and the
//! order in which an idle worker looks at victims.
//!
//! [`Machine`] is plain data, so that the scheduler core and the simulator ([`crate::sim`])
//! can use machines that do not exist here. [`discover`] builds one from hwloc (the `hwloc` submodule is the only
//! module that touches the hwloc bindings), or, without the `hwloc` feature, from what the
//! standard library and `/proc/meminfo` tell (the `os` submodule: one NUMA node, no pinning).
//!
//! Invariants of a [`Machine`]:
//! - `workers[i].id == WorkerId(i)`, names are unique;
//! - each worker is in exactly one class, `classes[c].workers` lists them in id order;
//! - `victims[w]` lists every *other* worker of `w`'s class, closest first, and nothing else.

mod features;
// Discovery: hwloc's when the `hwloc` feature is on, else the OS fallback; both give the same
// `discover` and `HwTopology`; the errors (`TopologyError`) are shared.
#[cfg(feature = "hwloc")]
mod hwloc;
#[cfg(not(feature = "hwloc"))]
mod os;

use std::fmt;

use serde::Serialize;

#[cfg(feature = "hwloc")]
pub use hwloc::{discover, HwTopology};
#[cfg(not(feature = "hwloc"))]
pub use os::{discover, HwTopology};

/// Errors from topology discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// hwloc failed to load the topology.
    #[error("hwloc could not load this machine's topology: {0}")]
    Load(String),
    /// hwloc listed no cores (nor processing units).
    #[error("hwloc found no CPU cores")]
    NoCores,
    /// Without hwloc: the standard library could not tell the number of cores.
    #[error("the operating system did not tell this machine's core count: {0}")]
    Os(String),
    /// More cores asked for than the machine has.
    #[error("--cpus {asked} asks for more cores than this machine has ({available})")]
    TooManyCpus {
        /// The cores asked for.
        asked: usize,
        /// The cores this machine has.
        available: usize,
    },
    /// No cores asked for.
    #[error("--cpus 0: a run needs at least one CPU worker")]
    ZeroCpus,
}

/// Most tasks a GPU worker takes in one batch. Part of the machine's description because the
/// GPU module submits batches of this size and `sched`'s backpressure (`RootGate`) sizes its
/// rounds by it; both read it here, so neither layer imports the other.
pub const MAX_BATCH: usize = 16;

/// Index of a worker in its [`Machine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkerId(pub u32);

impl WorkerId {
    /// As an index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a compatibility class in its [`Machine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClassId(pub u16);

/// What kind of compute unit a worker drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A CPU core.
    Cpu,
    /// A GPU.
    Gpu,
}

impl DeviceKind {
    /// Parses `cpu` or `gpu`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cpu" => Some(DeviceKind::Cpu),
            "gpu" => Some(DeviceKind::Gpu),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
        })
    }
}

/// One worker: a CPU core (one thread pinned to it) or, later, a GPU.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
    /// Its index.
    pub id: WorkerId,
    /// Unique name such as `cpu0`; tasks can be restricted to it.
    pub name: String,
    /// CPU or GPU.
    pub kind: DeviceKind,
    /// Its class.
    pub class: ClassId,
    /// Index into [`Machine::numa_nodes`].
    pub numa: usize,
    /// OS indices of the processing units the worker's thread is pinned to (empty: not pinned).
    pub pus: Vec<u32>,
    /// Features a task may require (`avx2`, `fma`, ...).
    pub features: Vec<String>,
}

/// A set of interchangeable-in-kind workers. A thief only steals within its class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassInfo {
    /// Its index.
    pub id: ClassId,
    /// Its name (`cpu`, `gpu`).
    pub name: String,
    /// CPU or GPU.
    pub kind: DeviceKind,
    /// Its workers, in id order.
    pub workers: Vec<WorkerId>,
}

/// A host memory node.
#[derive(Clone, Debug, Serialize)]
pub struct NumaNode {
    /// The node's OS index.
    pub os_index: u32,
    /// Its memory, bytes (0: unknown).
    pub memory_bytes: u64,
    /// The workers on it.
    pub workers: Vec<WorkerId>,
}

/// A GPU as the machine model knows it (plain data; the opened device lives in the
/// runtime's `gpu` module).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuDesc {
    /// The adapter's name.
    pub name: String,
    /// `vulkan`, `metal`, `dx12`, ...
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (a software rasteriser such as lavapipe), ...
    pub device_type: String,
    /// PCI address, `DDDD:BB:DD.F`.
    pub pci_bus_id: String,
    /// Its driver.
    pub driver: String,
    /// Which physical adapter (after deduplication) this device was opened on.
    pub adapter_index: usize,
    /// Features tasks may require: `f16`, `subgroups`, `timestamp`.
    pub features: Vec<String>,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Largest storage binding, bytes.
    pub max_storage_binding: u64,
    /// Most invocations per workgroup.
    pub max_workgroup_invocations: u32,
    /// Device memory when known (host memory for CPU-type adapters).
    pub memory_bytes: Option<u64>,
    /// Nanoseconds per timestamp-query tick.
    pub timestamp_period_ns: f32,
    /// OS index of the NUMA node the device is attached to, when hwloc knows its PCI address.
    pub numa_os_index: Option<u32>,
}

impl GpuDesc {
    /// A modelled GPU (the simulator's machines, tests): named `name`, opened on adapter
    /// `adapter_index`, with no limits of its own (unbounded buffers and memory).
    pub fn modelled(name: &str, adapter_index: usize) -> GpuDesc {
        GpuDesc {
            name: name.into(),
            backend: "model".into(),
            device_type: "DiscreteGpu".into(),
            pci_bus_id: String::new(),
            driver: String::new(),
            adapter_index,
            features: Vec::new(),
            max_buffer_size: u64::MAX,
            max_storage_binding: u64::MAX,
            max_workgroup_invocations: 1024,
            memory_bytes: None,
            timestamp_period_ns: 1.0,
            numa_os_index: None,
        }
    }
}

/// Workers, classes and memory nodes of a machine.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Where this description came from (`hwloc`, `os` without the `hwloc` feature, `synthetic`).
    pub source: String,
    /// Workers, by id.
    pub workers: Vec<WorkerInfo>,
    /// Compatibility classes, by id.
    pub classes: Vec<ClassInfo>,
    /// Host memory nodes.
    pub numa_nodes: Vec<NumaNode>,
    /// Per worker: the other workers of its class, closest first.
    pub victims: Vec<Vec<WorkerId>>,
    /// Per GPU worker, in worker order after the CPU workers: its description.
    pub gpus: Vec<GpuDesc>,
}

impl Machine {
    /// A machine of `cpus` CPU workers on one memory node, not pinned; victims by index
    /// distance. For tests and models of machines that are not this one.
    pub fn synthetic_cpus(cpus: usize) -> Machine {
        let cores: Vec<CoreDesc> = (0..cpus)
            .map(|i| CoreDesc {
                numa: 0,
                pus: Vec::new(),
                closeness: vec![0; cpus],
                index: i,
            })
            .collect();
        Machine::from_cores("synthetic", cores, vec![(0, 0)], Vec::new())
    }

    /// The host's memory: the NUMA nodes' as hwloc reported it, else (synthetic machines)
    /// the operating system's total (`/proc/meminfo`), else unknown (`u64::MAX`).
    pub fn host_memory_bytes(&self) -> u64 {
        let numa: u64 = self.numa_nodes.iter().map(|n| n.memory_bytes).sum();
        if numa > 0 {
            return numa;
        }
        os_total_memory().unwrap_or(u64::MAX)
    }

    /// A machine of `nodes` NUMA nodes with `cores_per_node` cores each and equal memory
    /// (for tests and the simulator: no hwloc, no pinning). Cores on the same node are
    /// closer to each other than to the others.
    pub fn synthetic_numa(nodes: usize, cores_per_node: usize) -> Machine {
        let (nodes, per) = (nodes.max(1), cores_per_node.max(1));
        let cpus = nodes * per;
        let cores: Vec<CoreDesc> = (0..cpus)
            .map(|i| CoreDesc {
                numa: i / per,
                pus: Vec::new(),
                closeness: (0..cpus).map(|j| if i / per == j / per { 2 } else { 1 }).collect(),
                index: i,
            })
            .collect();
        let numa = (0..nodes).map(|n| (n as u32, 1u64 << 30)).collect();
        Machine::from_cores("synthetic", cores, numa, Vec::new())
    }

    /// Builds the CPU part of a machine from a list of cores; `closeness[j]` says how close
    /// core `j` is (higher is closer; hwloc's common-ancestor depth).
    fn from_cores(source: &str, cores: Vec<CoreDesc>, numa: Vec<(u32, u64)>, features: Vec<String>) -> Machine {
        let class = ClassId(0);
        let workers: Vec<WorkerInfo> = cores
            .iter()
            .enumerate()
            .map(|(i, c)| WorkerInfo {
                id: WorkerId(i as u32),
                name: format!("cpu{i}"),
                kind: DeviceKind::Cpu,
                class,
                numa: c.numa,
                pus: c.pus.clone(),
                features: features.clone(),
            })
            .collect();
        let victims = cores
            .iter()
            .enumerate()
            .map(|(i, me)| {
                let mut others: Vec<usize> = (0..cores.len()).filter(|&j| j != i).collect();
                // Closest first: deeper common ancestor, then same NUMA node, then nearest index.
                others.sort_by_key(|&j| {
                    (
                        std::cmp::Reverse(me.closeness[j]),
                        cores[j].numa != me.numa,
                        me.index.abs_diff(cores[j].index),
                    )
                });
                others.into_iter().map(|j| WorkerId(j as u32)).collect()
            })
            .collect();
        let numa_nodes = numa
            .iter()
            .enumerate()
            .map(|(n, &(os_index, memory_bytes))| NumaNode {
                os_index,
                memory_bytes,
                workers: workers.iter().filter(|w| w.numa == n).map(|w| w.id).collect(),
            })
            .collect();
        let classes = vec![ClassInfo {
            id: class,
            name: "cpu".into(),
            kind: DeviceKind::Cpu,
            workers: workers.iter().map(|w| w.id).collect(),
        }];
        Machine {
            source: source.into(),
            workers,
            classes,
            numa_nodes,
            victims,
            gpus: Vec::new(),
        }
    }

    /// Adds one GPU worker per description (named `gpu0`, `gpu1`, ...). GPUs with the same
    /// adapter name, backend and features form one class; a GPU's victims are the other GPUs
    /// of its class. A GPU sits on the NUMA node of its PCI slot when known, else on node 0.
    pub fn add_gpus(&mut self, gpus: Vec<GpuDesc>) {
        let first_new = self.workers.len();
        for (i, g) in gpus.into_iter().enumerate() {
            let class_name = format!("gpu:{} ({}; {})", g.name, g.backend, g.features.join(","));
            let class = match self.classes.iter().position(|c| c.name == class_name) {
                Some(c) => ClassId(c as u16),
                None => {
                    self.classes.push(ClassInfo {
                        id: ClassId(self.classes.len() as u16),
                        name: class_name,
                        kind: DeviceKind::Gpu,
                        workers: Vec::new(),
                    });
                    ClassId(self.classes.len() as u16 - 1)
                }
            };
            let id = WorkerId(self.workers.len() as u32);
            self.classes[class.0 as usize].workers.push(id);
            self.workers.push(WorkerInfo {
                id,
                name: format!("gpu{i}"),
                kind: DeviceKind::Gpu,
                class,
                numa: g
                    .numa_os_index
                    .and_then(|os| self.numa_nodes.iter().position(|n| n.os_index == os))
                    .unwrap_or(0),
                pus: Vec::new(),
                features: g.features.clone(),
            });
            self.gpus.push(g);
        }
        self.victims.resize(self.workers.len(), Vec::new());
        for w in &self.workers {
            if w.kind == DeviceKind::Gpu {
                let class = &self.classes[w.class.0 as usize];
                self.victims[w.id.index()] = class.workers.iter().copied().filter(|&v| v != w.id).collect();
            }
        }
        for w in &self.workers[first_new..] {
            if let Some(n) = self.numa_nodes.get_mut(w.numa) {
                n.workers.push(w.id);
            }
        }
    }

    /// The description of a GPU worker.
    pub fn gpu(&self, w: WorkerId) -> Option<&GpuDesc> {
        self.gpus.get(self.gpu_index(w)?)
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// The worker with this name.
    pub fn worker_by_name(&self, name: &str) -> Option<&WorkerInfo> {
        self.workers.iter().find(|w| w.name == name)
    }

    /// Number of workers of a kind.
    pub fn count(&self, kind: DeviceKind) -> usize {
        self.workers.iter().filter(|w| w.kind == kind).count()
    }

    /// The index in [`Machine::gpus`] of worker `w`, when it is a GPU worker (GPU workers
    /// follow the CPU workers, in the order of `gpus`).
    pub fn gpu_index(&self, w: WorkerId) -> Option<usize> {
        let first = self.workers.iter().position(|x| x.kind == DeviceKind::Gpu)?;
        w.index().checked_sub(first)
    }
}

/// A core as discovery sees it, before it becomes a worker.
struct CoreDesc {
    numa: usize,
    pus: Vec<u32>,
    closeness: Vec<usize>,
    index: usize,
}

/// How many of the `available` cores a run keeps: all, or the `--cpus` asked for (at least
/// one, at most `available`). Shared by both discovery back-ends.
fn cores_to_keep(cpus: Option<usize>, available: usize) -> Result<usize, TopologyError> {
    match cpus {
        Some(0) => Err(TopologyError::ZeroCpus),
        Some(n) if n > available => Err(TopologyError::TooManyCpus { asked: n, available }),
        Some(n) => Ok(n),
        None => Ok(available),
    }
}

/// The operating system's total memory (`MemTotal` in `/proc/meminfo`), when it tells.
fn os_total_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_machine_invariants() {
        let m = Machine::synthetic_cpus(5);
        assert_eq!(m.num_workers(), 5);
        for (i, w) in m.workers.iter().enumerate() {
            assert_eq!(w.id.index(), i);
            let v = &m.victims[i];
            assert_eq!(v.len(), 4);
            assert!(!v.contains(&w.id));
            // nearest index first when all are equally close
            assert_eq!(v[0].index().abs_diff(i), 1);
        }
        assert_eq!(m.classes[0].workers.len(), 5);
        assert_eq!(m.worker_by_name("cpu3").unwrap().id, WorkerId(3));
    }

    fn gpu(name: &str) -> GpuDesc {
        GpuDesc {
            name: name.into(),
            backend: "vulkan".into(),
            device_type: "DiscreteGpu".into(),
            pci_bus_id: String::new(),
            driver: String::new(),
            adapter_index: 0,
            features: vec!["f16".into()],
            max_buffer_size: 1 << 30,
            max_storage_binding: 1 << 27,
            max_workgroup_invocations: 256,
            memory_bytes: None,
            timestamp_period_ns: 1.0,
            numa_os_index: None,
        }
    }

    #[test]
    fn gpus_form_classes_and_steal_only_from_their_own() {
        let mut m = Machine::synthetic_cpus(2);
        m.add_gpus(vec![gpu("A"), gpu("B"), gpu("A")]);
        assert_eq!(m.num_workers(), 5);
        assert_eq!(m.classes.len(), 3);
        let names: Vec<&str> = m.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["cpu0", "cpu1", "gpu0", "gpu1", "gpu2"]);
        // gpu0 and gpu2 share a class; gpu1 is alone; CPUs never see GPUs as victims.
        assert_eq!(m.victims[2], vec![WorkerId(4)]);
        assert!(m.victims[3].is_empty());
        assert_eq!(m.victims[0], vec![WorkerId(1)]);
        assert_eq!(m.gpu(WorkerId(3)).unwrap().name, "B");
        assert!(m.gpu(WorkerId(1)).is_none());
    }

    #[test]
    fn victims_prefer_closer_cores() {
        // Cores 0,1 share a cache (closeness 3), 2,3 share another; all four share depth 1.
        let close = |a: usize, b: usize| if a / 2 == b / 2 { 3 } else { 1 };
        let cores = (0..4)
            .map(|i| CoreDesc {
                numa: i / 2,
                pus: vec![i as u32],
                closeness: (0..4).map(|j| close(i, j)).collect(),
                index: i,
            })
            .collect();
        let m = Machine::from_cores("test", cores, vec![(0, 1), (1, 1)], vec![]);
        assert_eq!(m.victims[0][0], WorkerId(1));
        assert_eq!(m.victims[3][0], WorkerId(2));
        assert_eq!(m.numa_nodes[1].workers, vec![WorkerId(2), WorkerId(3)]);
    }

    #[test]
    fn cpu_limit_is_checked() {
        let (all, _) = discover(None).unwrap();
        let (one, _) = discover(Some(1)).unwrap();
        assert_eq!(one.num_workers(), 1);
        assert!(one.victims[0].is_empty());
        assert!(matches!(discover(Some(0)), Err(TopologyError::ZeroCpus)));
        assert!(matches!(
            discover(Some(all.num_workers() + 1)),
            Err(TopologyError::TooManyCpus { .. })
        ));
    }
}
