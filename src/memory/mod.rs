//! Where each datum's valid copies are: MSI-like coherence over memory nodes (the host and
//! each GPU), as pure state so that the runtime and the simulator share it.
//!
//! Invariants of a [`Coherence`]:
//! - at least one node holds a valid copy, except after the loss of the only one;
//! - a `Modified` copy is the only valid copy;
//! - reading on a node makes it `Shared` (copying from a valid node first), writing on a node
//!   makes it `Modified` and every other copy `Invalid`.

use std::fmt;

use crate::sync::MutexExt;
use crate::topology::Machine;

/// Spill disk bandwidth assumed by planning and the simulator, both ways, bytes/s: an
/// assumption on the safe side of what `hexec bench memory --host` shows on the development
/// VM, where spill files land in the page cache first (at 4x, 17.5 MiB written and read back
/// in about 8 ms). With it, the simulator's spilled bytes match the real runs within 10%.
pub const SPILL_BANDWIDTH: f64 = 2e9;

/// Share of a limited node's capacity past which it is nearly full: GPU workers prefer
/// consumers, data-producing roots are let in one at a time, and the background spiller
/// starts (runtime and simulator alike).
pub const HIGH_WATERMARK: f64 = 0.9;
/// Share down to which the background spiller empties the host.
pub const LOW_WATERMARK: f64 = 0.8;

/// Planning's estimate of the time to make room for `new_bytes` more on `node`, which holds
/// `used` of `capacity`: at worst every evicted byte is the only valid copy and is written
/// back — to the spill disk from the host, over `gpu_to_host` (bytes → seconds) from a GPU.
/// The runtime's cost view and the simulator both use it.
pub fn room_seconds(node: Node, used: u64, new_bytes: u64, capacity: u64, gpu_to_host: impl Fn(u64) -> f64) -> f64 {
    match ((used + new_bytes).saturating_sub(capacity), node) {
        (0, _) => 0.0,
        (overflow, Node::Host) => overflow as f64 / SPILL_BANDWIDTH,
        (overflow, Node::Gpu(_)) => gpu_to_host(overflow),
    }
}

/// The memory node of each worker of `machine`: a GPU worker's GPU ([`Machine::gpu_index`],
/// the one worker → GPU map), the host for the others. Read by the runtime and the simulator.
pub fn nodes_of(machine: &Machine) -> Vec<Node> {
    machine
        .workers
        .iter()
        .map(|w| machine.gpu_index(w.id).map_or(Node::Host, |g| Node::Gpu(g as u16)))
        .collect()
}

/// A memory node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Node {
    /// Host memory.
    Host,
    /// The memory of the GPU of this index.
    Gpu(u16),
}

impl Node {
    /// Dense index: host 0, GPU i at i + 1.
    pub fn index(self) -> usize {
        match self {
            Node::Host => 0,
            Node::Gpu(i) => i as usize + 1,
        }
    }

    /// The node of a dense index.
    pub fn from_index(i: usize) -> Node {
        if i == 0 {
            Node::Host
        } else {
            Node::Gpu((i - 1) as u16)
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Host => f.write_str("host"),
            Node::Gpu(i) => write!(f, "gpu{i}"),
        }
    }
}

/// Every copy of a datum is gone (the last one was on a lost device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no valid copy is left")]
pub struct NoValidCopy;

/// The state of one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyState {
    Invalid,
    Shared,
    Modified,
}

/// The copies of one datum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coherence {
    /// Indexed by [`Node::index`].
    copies: Vec<CopyState>,
}

impl Coherence {
    /// A datum that lives on the host only (as every datum starts), with `gpus` GPU nodes.
    pub fn host_only(gpus: usize) -> Self {
        let mut copies = vec![CopyState::Invalid; gpus + 1];
        copies[0] = CopyState::Modified;
        Coherence { copies }
    }

    /// The state on `node`.
    pub fn state(&self, node: Node) -> CopyState {
        self.copies.get(node.index()).copied().unwrap_or(CopyState::Invalid)
    }

    /// Whether `node` holds a valid copy.
    pub fn is_valid(&self, node: Node) -> bool {
        self.state(node) != CopyState::Invalid
    }

    /// Nodes with a valid copy.
    pub fn valid_nodes(&self) -> impl Iterator<Item = Node> + '_ {
        self.copies
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != CopyState::Invalid)
            .map(|(i, _)| Node::from_index(i))
    }

    /// Whether any GPU holds a valid copy.
    pub fn on_any_gpu(&self) -> bool {
        self.copies[1..].iter().any(|s| *s != CopyState::Invalid)
    }

    /// Where to copy from to read on `node`: `None` if `node` is valid already; otherwise
    /// the host if it is valid, else the first valid GPU. `Err` when no copy is valid.
    pub fn read_source(&self, node: Node) -> Result<Option<Node>, NoValidCopy> {
        if self.is_valid(node) {
            return Ok(None);
        }
        if self.is_valid(Node::Host) {
            return Ok(Some(Node::Host));
        }
        self.valid_nodes().next().map(Some).ok_or(NoValidCopy)
    }

    /// `node` now holds a copy made for reading.
    pub fn record_read(&mut self, node: Node) {
        for s in &mut self.copies {
            if *s == CopyState::Modified {
                *s = CopyState::Shared;
            }
        }
        self.copies[node.index()] = CopyState::Shared;
    }

    /// `node` wrote the datum: its copy is the only valid one.
    pub fn record_write(&mut self, node: Node) {
        self.copies.iter_mut().for_each(|s| *s = CopyState::Invalid);
        self.copies[node.index()] = CopyState::Modified;
    }

    /// `node`'s copy is gone (eviction, device loss); true if no valid copy remains.
    pub fn drop_copy(&mut self, node: Node) -> bool {
        self.copies[node.index()] = CopyState::Invalid;
        self.valid_nodes().next().is_none()
    }
}

/// Bytes moved between nodes during a run, per directed link.
#[derive(Debug)]
pub struct Transfers {
    /// When set, each transfer is also logged with times relative to this instant.
    log: Option<(std::time::Instant, std::sync::Mutex<Vec<TransferEvent>>)>,
    nodes: usize,
    bytes: Vec<std::sync::atomic::AtomicU64>,
    count: Vec<std::sync::atomic::AtomicU64>,
    nanos: Vec<std::sync::atomic::AtomicU64>,
}

/// One logged transfer (for traces).
#[derive(Clone, Debug, PartialEq)]
pub struct TransferEvent {
    /// Where it was copied from.
    pub from: Node,
    /// Where to.
    pub to: Node,
    /// The datum copied (its name in the store).
    pub datum: String,
    /// Bytes copied.
    pub bytes: u64,
    /// Start, ns since the run began.
    pub start_ns: u64,
    /// End, ns since the run began.
    pub end_ns: u64,
}

/// One link's totals.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct LinkReport {
    /// Source node.
    pub from: String,
    /// Destination node.
    pub to: String,
    /// Bytes copied.
    pub bytes: u64,
    /// Copies made.
    pub transfers: u64,
    /// Time spent copying, seconds.
    pub seconds: f64,
}

impl Transfers {
    /// Counters for `gpus` GPUs plus the host.
    pub fn new(gpus: usize) -> Self {
        let n = gpus + 1;
        let z = || (0..n * n).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        Transfers {
            log: None,
            nodes: n,
            bytes: z(),
            count: z(),
            nanos: z(),
        }
    }

    /// Also logs every transfer, timed from `since`.
    pub fn logged(mut self, since: std::time::Instant) -> Self {
        self.log = Some((since, std::sync::Mutex::new(Vec::new())));
        self
    }

    /// The logged transfers.
    pub fn take_log(&self) -> Vec<TransferEvent> {
        self.log
            .as_ref()
            .map(|(_, l)| std::mem::take(&mut *l.locked()))
            .unwrap_or_default()
    }

    /// Records one transfer of `datum`. The name is copied only when the log is on, so an
    /// untraced run allocates nothing here.
    pub fn record(&self, from: Node, to: Node, bytes: u64, took: std::time::Duration, datum: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = from.index() * self.nodes + to.index();
        if let (Some(b), Some(c), Some(t)) = (self.bytes.get(i), self.count.get(i), self.nanos.get(i)) {
            b.fetch_add(bytes, Relaxed);
            c.fetch_add(1, Relaxed);
            t.fetch_add(took.as_nanos() as u64, Relaxed);
        }
        if let Some((since, log)) = &self.log {
            let end = since.elapsed();
            let start = end.saturating_sub(took);
            log.locked().push(TransferEvent {
                from,
                to,
                datum: datum.to_owned(),
                bytes,
                start_ns: start.as_nanos() as u64,
                end_ns: end.as_nanos() as u64,
            });
        }
    }

    /// Total bytes moved.
    pub fn total_bytes(&self) -> u64 {
        self.bytes
            .iter()
            .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Links that carried anything.
    pub fn links(&self) -> Vec<LinkReport> {
        use std::sync::atomic::Ordering::Relaxed;
        (0..self.nodes * self.nodes)
            .filter(|&i| self.count[i].load(Relaxed) > 0)
            .map(|i| LinkReport {
                from: Node::from_index(i / self.nodes).to_string(),
                to: Node::from_index(i % self.nodes).to_string(),
                bytes: self.bytes[i].load(Relaxed),
                transfers: self.count[i].load(Relaxed),
                seconds: self.nanos[i].load(Relaxed) as f64 / 1e9,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invariants(c: &Coherence) {
        let valid: Vec<Node> = c.valid_nodes().collect();
        assert!(!valid.is_empty());
        let modified = c.copies.iter().filter(|s| **s == CopyState::Modified).count();
        assert!(modified <= 1);
        if modified == 1 {
            assert_eq!(valid.len(), 1, "a Modified copy is the only valid one: {c:?}");
        }
    }

    #[test]
    fn msi_transitions() {
        let mut c = Coherence::host_only(2);
        check_invariants(&c);
        assert_eq!(c.read_source(Node::Gpu(0)), Ok(Some(Node::Host)));
        c.record_read(Node::Gpu(0));
        check_invariants(&c);
        assert_eq!(c.state(Node::Host), CopyState::Shared);
        assert_eq!(c.read_source(Node::Gpu(0)), Ok(None));
        c.record_write(Node::Gpu(1));
        check_invariants(&c);
        assert!(!c.is_valid(Node::Host) && !c.is_valid(Node::Gpu(0)));
        assert_eq!(c.read_source(Node::Host), Ok(Some(Node::Gpu(1))));
        assert_eq!(c.read_source(Node::Gpu(0)), Ok(Some(Node::Gpu(1))));
        c.record_read(Node::Host);
        check_invariants(&c);
        assert_eq!(c.state(Node::Gpu(1)), CopyState::Shared);
        assert!(c.on_any_gpu());
        assert!(!c.drop_copy(Node::Gpu(1)));
        assert!(c.drop_copy(Node::Host));
        assert_eq!(c.read_source(Node::Gpu(0)), Err(NoValidCopy));
    }

    #[test]
    fn transfers_add_up_per_link() {
        let t = Transfers::new(2);
        t.record(Node::Host, Node::Gpu(1), 100, std::time::Duration::from_micros(5), "a");
        t.record(Node::Host, Node::Gpu(1), 50, std::time::Duration::from_micros(5), "b");
        t.record(Node::Gpu(0), Node::Host, 8, std::time::Duration::ZERO, "a");
        assert_eq!(t.total_bytes(), 158);
        let links = t.links();
        assert_eq!(links.len(), 2);
        assert!(links
            .iter()
            .any(|l| l.from == "host" && l.to == "gpu1" && l.bytes == 150 && l.transfers == 2));
    }
}
