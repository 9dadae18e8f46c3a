//! Memory budgets: every memory node (the host, each GPU) has a capacity, and every copy of a
//! datum placed there is accounted. Past a GPU's capacity, copies are evicted in
//! least-recently-used order — clean ones dropped, the only valid copy written back to the
//! host first — skipping data pinned by tasks in flight. Past the host's capacity, host
//! copies are spilled the same way: written to a spill file when they are the only valid
//! copy, dropped otherwise (see [`super::spill`]); past 90% of the host's capacity the
//! background spiller ([`super::spiller`]) brings it down to 80%.
//!
//! Invariants:
//! - `used` of a node is the sum of the sizes of the copies allocated there (replica buffers,
//!   host buffers); a GPU copy is only allocated after `reserve` succeeded for it;
//! - eviction never blocks on a datum's lock (it skips data being used), and is never done
//!   while holding the lock of the datum that needs the room, so two workers making room for
//!   each other cannot deadlock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use super::data::{DataCell, PrepError};
use super::spill::SpillDir;
use super::spiller::SpillSignal;
use crate::gpu::GpuDevice;
use crate::memory::{Node, Transfers};
use crate::trace::NodeMemory;

pub(crate) use crate::memory::{HIGH_WATERMARK, LOW_WATERMARK};
use crate::sync::MutexExt;

/// A capacity as reported: `None` when unlimited (`u64::MAX`).
pub(crate) fn limit_of(capacity: u64) -> Option<u64> {
    (capacity != u64::MAX).then_some(capacity)
}

/// One node's budget.
#[derive(Debug, Default)]
pub(crate) struct NodeBudget {
    pub capacity: AtomicU64,
    pub used: AtomicU64,
    pub peak: AtomicU64,
    pub evictions: AtomicU64,
    pub written_back: AtomicU64,
    /// Tasks completed on this node (GPUs; for the host, any task, counted under a host
    /// limit): the epoch of ping-pong detection.
    pub completions: AtomicU64,
    /// Stagings of a batch on this node (GPUs): data marked wanted in the current one are
    /// evicted last.
    pub stage_epoch: AtomicU64,
    /// Copies evicted and brought back before any task completed here.
    pub ping_pongs: AtomicU64,
    /// While `completions` is below this, the node's worker runs one task at a time.
    pub serial_until: AtomicU64,
    /// Data with a copy here (on the host: every datum, when the host is limited), for
    /// eviction.
    resident: Mutex<Vec<Weak<DataCell>>>,
}

impl NodeBudget {
    /// Reserves `bytes` if they fit under the capacity now.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let cap = self.capacity.load(Ordering::Relaxed);
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(bytes);
            if next > cap {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Accounts bytes without a limit (host data the user creates).
    pub fn add(&self, bytes: u64) {
        let now = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }
}

fn above_high_watermark(nb: &NodeBudget) -> bool {
    let cap = nb.capacity.load(Ordering::Relaxed);
    cap != u64::MAX && nb.used.load(Ordering::Relaxed) as f64 > HIGH_WATERMARK * cap as f64
}

fn gpu_index(node: Node) -> usize {
    match node {
        Node::Gpu(g) => g as usize,
        Node::Host => usize::MAX,
    }
}

/// Bytes in use now on one memory node ([`Runtime::memory_usage`](crate::Runtime::memory_usage)).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeUsage {
    /// The node's name (`host`, `gpu0`).
    pub node: String,
    /// Bytes in use.
    pub used_bytes: u64,
    /// `None` when unlimited.
    pub capacity_bytes: Option<u64>,
}

/// The budgets of all nodes, indexed by [`Node::index`].
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    nodes: Vec<NodeBudget>,
    /// The host's share on each NUMA node (the host budget is their sum): a host buffer is
    /// charged to the node of the worker that brings it into memory (its pages are first
    /// touched there), data the program creates to node 0.
    numa: Vec<NodeBudget>,
    /// Per GPU: the NUMA node of its PCI slot (copies it writes back land there).
    gpu_numa: Vec<usize>,
    /// Where host copies go past the host's capacity (set when the host is limited).
    spill: Option<SpillDir>,
    spill_signal: Arc<SpillSignal>,
    /// Held by each CPU task while the host runs one task at a time (after a ping-pong).
    pub host_serial: Mutex<()>,
}

impl Budgets {
    /// Budgets for the host and `capacities.len() - 1` GPUs; the host's capacity is shared
    /// among NUMA nodes in proportion to `numa_weights` (their memory; equal shares when
    /// unknown); GPU `g` sits on NUMA node `gpu_numa[g]`. A limited host spills to `spill`.
    pub fn new(capacities: &[u64], numa_weights: &[u64], gpu_numa: Vec<usize>, spill: Option<SpillDir>) -> Self {
        let budget = |c: u64| NodeBudget {
            capacity: AtomicU64::new(c),
            ..NodeBudget::default()
        };
        let host = capacities.first().copied().unwrap_or(u64::MAX);
        let weights: Vec<u64> = if numa_weights.is_empty() || numa_weights.contains(&0) {
            vec![1; numa_weights.len().max(1)]
        } else {
            numa_weights.to_vec()
        };
        let total: u128 = weights.iter().map(|&w| w as u128).sum();
        let numa = weights
            .iter()
            .map(|&w| {
                budget(if host == u64::MAX {
                    host
                } else {
                    (host as u128 * w as u128 / total) as u64
                })
            })
            .collect();
        Budgets {
            nodes: capacities.iter().map(|&c| budget(c)).collect(),
            numa,
            gpu_numa,
            spill: spill.filter(|_| capacities.first().is_some_and(|&c| c != u64::MAX)),
            spill_signal: Arc::default(),
            host_serial: Mutex::new(()),
        }
    }

    /// Whether host copies may be spilled (the host is limited).
    pub fn spillable(&self) -> bool {
        self.spill.is_some()
    }

    pub fn spill_dir(&self) -> Option<&SpillDir> {
        self.spill.as_ref()
    }

    /// Accounts a new host buffer the user creates (on NUMA node 0 if it has room), spilling
    /// others to make room; when the rest is pinned by a running graph, it is accounted over
    /// the limit rather than refused. Returns the NUMA node charged.
    pub fn admit_host(&self, bytes: u64) -> usize {
        if self.spillable() {
            if let Ok(numa) = self.reserve_host(bytes, None, 0) {
                return numa;
            }
        }
        self.node(Node::Host).add(bytes);
        self.numa[0].add(bytes);
        0
    }

    /// The NUMA nodes the host's budget is shared among.
    pub fn numa_count(&self) -> usize {
        self.numa.len()
    }

    /// The largest share of the host's capacity on one NUMA node: no host buffer can be
    /// larger (its pages live on one node).
    pub fn largest_host_share(&self) -> u64 {
        self.numa
            .iter()
            .map(|n| n.capacity.load(Ordering::Relaxed))
            .max()
            .unwrap_or(u64::MAX)
    }

    /// The NUMA node of GPU `g`.
    pub fn gpu_numa(&self, g: usize) -> usize {
        self.gpu_numa.get(g).copied().unwrap_or(0)
    }

    /// Gives back a host buffer's bytes, charged to NUMA node `numa`.
    pub fn release_host(&self, bytes: u64, numa: usize) {
        self.node(Node::Host).release(bytes);
        self.numa[numa].release(bytes);
    }

    /// Reserves `bytes` on the host for `requester`, on NUMA node `preferred` if room can be
    /// made there, else on another (as the kernel falls back when a node is full), spilling
    /// least-recently-used unpinned host copies as needed. Returns the NUMA node charged.
    /// Fails, naming the sizes, when pinned data leave no room or a spill file cannot be
    /// written.
    pub fn reserve_host(&self, bytes: u64, requester: Option<&DataCell>, preferred: usize) -> Result<usize, PrepError> {
        let preferred = preferred.min(self.numa.len() - 1);
        let order = std::iter::once(preferred).chain((0..self.numa.len()).filter(|&n| n != preferred));
        let mut last = None;
        for numa in order {
            match self.reserve_host_on(bytes, requester, numa) {
                Ok(()) => return Ok(numa),
                Err(PrepError::NoRoom(m)) => last = Some(m),
                Err(e) => return Err(e),
            }
        }
        Err(PrepError::NoRoom(last.unwrap_or_default()))
    }

    fn reserve_host_on(&self, bytes: u64, requester: Option<&DataCell>, numa: usize) -> Result<(), PrepError> {
        let (nb, share) = (self.node(Node::Host), &self.numa[numa]);
        if bytes > share.capacity.load(Ordering::Relaxed) {
            return Err(PrepError::NoRoom(format!(
                "{bytes} bytes do not fit in the {} bytes of host memory limit on NUMA node {numa}",
                share.capacity.load(Ordering::Relaxed)
            )));
        }
        let mut busy: Vec<*const DataCell> = Vec::new();
        loop {
            // The node's share first, then the whole host: spill on whichever is short.
            let short_on = if !share.try_reserve(bytes) {
                Some(numa)
            } else if !nb.try_reserve(bytes) {
                share.release(bytes);
                None
            } else {
                if self.host_nearly_full() {
                    self.spill_signal.wake();
                }
                return Ok(());
            };
            if !self
                .spill_one(requester, &mut busy, short_on)
                .map_err(PrepError::Failed)?
            {
                let (what, b) = match short_on {
                    Some(n) => (format!(" on NUMA node {n}"), share),
                    None => (String::new(), nb),
                };
                return Err(PrepError::NoRoom(format!(
                    "host memory limit of {} bytes{what}: no room for {}{bytes} bytes beside {} bytes of data in use",
                    b.capacity.load(Ordering::Relaxed),
                    requester.map_or(String::new(), |r| format!("datum '{}' ", r.name)),
                    b.used.load(Ordering::Relaxed)
                )));
            }
        }
    }

    /// Whether the host, or its share on some NUMA node, is above its high watermark.
    pub fn host_nearly_full(&self) -> bool {
        self.nearly_full(Node::Host) || self.numa.iter().any(above_high_watermark)
    }

    /// Spills host copies, least recently used first, until the host and each NUMA node's
    /// share are at most at their low watermark, or nothing more can go (the rest is pinned
    /// or busy). For the background spiller.
    pub fn spill_to_low_watermark(&self) -> Result<(), String> {
        let low = |b: &NodeBudget| (b.capacity.load(Ordering::Relaxed) as f64 * LOW_WATERMARK) as u64;
        for (numa, share) in self.numa.iter().enumerate() {
            let mut busy: Vec<*const DataCell> = Vec::new();
            while share.used.load(Ordering::Relaxed) > low(share) {
                if !self.spill_one(None, &mut busy, Some(numa))? {
                    break;
                }
            }
        }
        let nb = self.node(Node::Host);
        let mut busy: Vec<*const DataCell> = Vec::new();
        while nb.used.load(Ordering::Relaxed) > low(nb) {
            if !self.spill_one(None, &mut busy, None)? {
                break;
            }
        }
        Ok(())
    }

    /// Spills the least-recently-used host copy that is in memory (on NUMA node `on`, if
    /// given), not `requester`, not in `busy`, and not larger than the limit (it could never
    /// come back). False when there is none; a copy pinned or locked right now is added to
    /// `busy` and the next one tried.
    fn spill_one(
        &self,
        requester: Option<&DataCell>,
        busy: &mut Vec<*const DataCell>,
        on: Option<usize>,
    ) -> Result<bool, String> {
        let nb = self.node(Node::Host);
        loop {
            let victim = {
                let mut resident = nb.resident.locked();
                resident.retain(|w| w.strong_count() > 0);
                resident
                    .iter()
                    .filter(|w| !busy.contains(&w.as_ptr()) && requester.is_none_or(|r| !std::ptr::eq(w.as_ptr(), r)))
                    .filter_map(Weak::upgrade)
                    .filter(|c| c.host_in_memory() && c.bytes() as u64 <= self.largest_host_share())
                    .filter(|c| on.is_none_or(|n| c.host_numa() == n))
                    .min_by_key(|c| (c.host_wanted(), c.last_host_use()))
            };
            let Some(victim) = victim else { return Ok(false) };
            match victim.spill_host()? {
                Some(written) => {
                    nb.evictions.fetch_add(1, Ordering::Relaxed);
                    nb.written_back.fetch_add(written, Ordering::Relaxed);
                    return Ok(true);
                }
                None => busy.push(Arc::as_ptr(&victim)),
            }
        }
    }

    /// Wakes the background spiller when the host passes its high watermark.
    pub fn spill_signal(&self) -> &Arc<SpillSignal> {
        &self.spill_signal
    }

    pub fn node(&self, n: Node) -> &NodeBudget {
        &self.nodes[n.index()]
    }

    /// Whether a limited node is above its high watermark ([`HIGH_WATERMARK`] of its capacity).
    pub fn nearly_full(&self, n: Node) -> bool {
        above_high_watermark(self.node(n))
    }

    /// Whether some node has a limit.
    pub fn any_limited(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.capacity.load(Ordering::Relaxed) != u64::MAX)
    }

    /// Whether some limited node (or NUMA share of the host) is above its high watermark.
    pub fn any_nearly_full(&self) -> bool {
        self.host_nearly_full() || (1..self.nodes.len()).any(|i| self.nearly_full(Node::from_index(i)))
    }

    /// Starts a run's peak measurement at the current use.
    pub fn reset_peaks(&self) {
        for n in self.nodes.iter().chain(&self.numa) {
            n.peak.store(n.used.load(Ordering::Relaxed), Ordering::Relaxed);
            n.evictions.store(0, Ordering::Relaxed);
            n.written_back.store(0, Ordering::Relaxed);
            n.ping_pongs.store(0, Ordering::Relaxed);
        }
        if let Some(dir) = &self.spill {
            let disk = dir.usage();
            disk.peak.store(disk.used.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Records that a copy evicted from `node` comes back before any task completed there:
    /// the data of the tasks in flight do not fit together. The node's workers then run one
    /// task at a time until a task completes, so that each task keeps its data until done.
    pub fn ping_pong(&self, node: Node) {
        let nb = self.node(node);
        nb.ping_pongs.fetch_add(1, Ordering::Relaxed);
        let now = nb.completions.load(Ordering::Acquire);
        nb.serial_until.fetch_max(now + 1, Ordering::AcqRel);
        tracing::debug!(%node, "eviction ping-pong: running one task at a time until one completes");
    }

    /// Whether `node`'s worker must run one task at a time (after a ping-pong).
    pub fn serial(&self, node: Node) -> bool {
        let nb = self.node(node);
        nb.completions.load(Ordering::Acquire) < nb.serial_until.load(Ordering::Acquire)
    }

    /// Bytes in use now on every node (the host, then each GPU).
    pub fn usage(&self) -> Vec<NodeUsage> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeUsage {
                node: Node::from_index(i).to_string(),
                used_bytes: n.used.load(Ordering::Relaxed),
                capacity_bytes: limit_of(n.capacity.load(Ordering::Relaxed)),
            })
            .collect()
    }

    /// The per-node report: the host, each GPU, the host's share on each NUMA node (when
    /// there are several), then the spill disk when the host is limited.
    pub fn report(&self) -> Vec<NodeMemory> {
        let disk = self.spill.as_ref().map(|dir| {
            let u = dir.usage();
            NodeMemory {
                node: "disk".into(),
                capacity_bytes: limit_of(u.capacity),
                peak_bytes: u.peak.load(Ordering::Relaxed),
                evictions: 0,
                written_back_bytes: 0,
                ping_pongs: 0,
            }
        });
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeMemory {
                node: Node::from_index(i).to_string(),
                capacity_bytes: limit_of(n.capacity.load(Ordering::Relaxed)),
                peak_bytes: n.peak.load(Ordering::Relaxed),
                evictions: n.evictions.load(Ordering::Relaxed),
                written_back_bytes: n.written_back.load(Ordering::Relaxed),
                ping_pongs: n.ping_pongs.load(Ordering::Relaxed),
            })
            .chain(
                self.numa
                    .iter()
                    .enumerate()
                    .filter(|_| self.numa.len() > 1)
                    .map(|(i, n)| NodeMemory {
                        node: format!("host/numa{i}"),
                        capacity_bytes: limit_of(n.capacity.load(Ordering::Relaxed)),
                        peak_bytes: n.peak.load(Ordering::Relaxed),
                        evictions: 0,
                        written_back_bytes: 0,
                        ping_pongs: 0,
                    }),
            )
            .chain(disk)
            .collect()
    }

    /// Reserves `bytes` on GPU node `node` for `requester`, evicting least-recently-used
    /// unpinned copies as needed. Fails, naming the sizes, when pinned data leave no room.
    pub fn reserve_on_gpu(
        &self,
        node: Node,
        bytes: u64,
        requester: &Arc<DataCell>,
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<(), PrepError> {
        let nb = self.node(node);
        loop {
            if nb.try_reserve(bytes) {
                return Ok(());
            }
            // Least recently used first, but data the batch being staged will read go last.
            let epoch = nb.stage_epoch.load(Ordering::Relaxed);
            let victim = {
                let mut resident = nb.resident.locked();
                resident.retain(|w| w.strong_count() > 0);
                resident
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|c| !Arc::ptr_eq(c, requester) && c.gpu.evictable(gpu_index(node)))
                    .min_by_key(|c| (c.gpu.wanted_in(gpu_index(node), epoch), c.gpu.last_use()))
            };
            let Some(victim) = victim else {
                return Err(PrepError::NoRoom(format!(
                    "{node} memory limit of {} bytes: no room for datum '{}' ({bytes} bytes) beside {} bytes of data in use",
                    nb.capacity.load(Ordering::Relaxed),
                    requester.name,
                    nb.used.load(Ordering::Relaxed)
                )));
            };
            let Node::Gpu(g) = node else {
                unreachable!("only GPU nodes evict")
            };
            match victim.evict_from_gpu(g as usize, gpus, transfers) {
                Ok(Some(written_back)) => {
                    nb.evictions.fetch_add(1, Ordering::Relaxed);
                    nb.written_back.fetch_add(written_back, Ordering::Relaxed);
                    nb.resident
                        .locked()
                        .retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&victim)));
                }
                // Busy right now: it will not be chosen again while pinned; try again.
                Ok(None) => std::thread::yield_now(),
                Err(e) => {
                    return Err(PrepError::Failed(format!(
                        "evicting datum '{}' from {node} failed: {e}",
                        victim.name
                    )))
                }
            }
        }
    }

    /// Records that `cell` now has a copy on GPU node `node`.
    pub fn register(&self, node: Node, cell: &Arc<DataCell>) {
        let mut resident = self.node(node).resident.locked();
        // Temporaries die with their run: prune dead entries whenever the list doubles, so
        // that it stays proportional to the live data without an eviction to prune it.
        if resident.len() >= 64 && resident.len().is_power_of_two() {
            resident.retain(|w| w.strong_count() > 0);
        }
        resident.push(Arc::downgrade(cell));
    }
}
