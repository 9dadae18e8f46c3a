//! The runtime's data store: host buffers behind typed handles, and the replicas of each
//! datum on GPUs with their coherence state.
//!
//! Invariants:
//! - a [`DataCell`]'s host buffer is a [`HostBuf`] aligned for its element type (the user's
//!   own `Vec` allocation, or one the store makes) and at least `bytes()` long, held by its
//!   [`HostSlot`], which also says who may touch the bytes (its own invariants: a user's
//!   claim, the run that holds the claim, spilling with no pin held). Without a host memory
//!   limit, a stored datum's is allocated once and never moves; with one, or for a graph's
//!   temporary, it may be spilled (written to a
//!   spill file when it is the only valid copy, else dropped) and allocated again later, both
//!   with `coherence` locked and only while no task or user access holds a host pin on it, so
//!   a pointer handed out by [`DataCell::pin_host`] stays valid until its `unpin_host`;
//! - the host's coherence state covers the host buffer and the spill file together: a valid
//!   host copy lives in exactly one of them; a spill file exists only while the host copy is
//!   valid and not in memory. A valid host copy held in neither reads as zeros: a temporary
//!   not yet written, or discarded after its last use ([`DataCell::discard`]);
//! - during a run, every cell the graph uses is claimed by it ([`AcquiredData`]); user-side
//!   reads and writes ([`DataStore::read`], [`DataStore::write`]) claim the cell too and refuse
//!   one already claimed, so the only accesses
//!   to its bytes are the run's kernels, ordered by the graph's dependencies (readers share,
//!   a writer is alone), and the copies made for them below;
//! - `coherence` says which copies are valid; `host_valid` and `on_gpu` mirror it for the
//!   lock-free fast path of CPU tasks and are only changed with `coherence` locked. Copies
//!   into a node are made with `coherence` locked, and only into a node whose copy is invalid,
//!   which no reader uses.
//! - speculative re-execution (runs without a host limit only): a losing attempt may still
//!   read or write a host buffer after its task was completed by the winner. The winner
//!   counts it on every datum the task touches (`stragglers`) before releasing successors;
//!   while that count is not zero, whoever would overwrite the host buffer in place (a task
//!   writing it, a download from a GPU) writes a fresh copy instead and the old buffer is
//!   retired, freed when the last straggler lets go. So no buffer is written while a loser
//!   still uses it, nor freed under it.
//! - a freed datum ([`DataStore::free`]) keeps its claim for good and `freed` set: it is
//!   out of the store, holds no copy anywhere, and every later access (a stale `Arc` of a
//!   concurrent read or run included) fails to acquire it and says it was freed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::budget::Budgets;
use super::hostbuf::{elem_align, HostBuf, HostSlot, UserClaim};
use super::replicas::GpuReplicas;
use super::spill::SpillFile;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use hexec_kernels::{ElemType, Element};

use crate::gpu::GpuDevice;
use crate::graph::Data;
use crate::memory::{Coherence, Node, Transfers};
use crate::sched::compile::SubmitError;
use crate::sync::{MutexExt, RwLockExt};

/// Errors of user-side data access.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The handle is of another runtime.
    #[error("datum {0:?} belongs to another runtime")]
    ForeignHandle(String),
    /// The datum holds another element type.
    #[error("datum '{name}' holds {actual}, not {requested}")]
    TypeMismatch {
        /// The datum's name.
        name: String,
        /// The type it holds.
        actual: ElemType,
        /// The type asked for.
        requested: ElemType,
    },
    /// The datum is in use by a run.
    #[error("datum '{0}' is in use by a running graph")]
    Busy(String),
    /// Data of another length given for a datum.
    #[error("datum '{name}' has {len} elements; {given} were given")]
    LengthMismatch {
        /// The datum's name.
        name: String,
        /// Its length.
        len: usize,
        /// The length given.
        given: usize,
    },
    /// The datum is read-only.
    #[error("datum '{0}' is read-only")]
    ReadOnly(String),
    /// A datum larger than this platform can address.
    #[error("datum '{name}' would need {bytes} bytes, more than this platform can address")]
    TooLarge {
        /// The datum's name.
        name: String,
        /// The bytes it would need.
        bytes: u128,
    },
    /// `limit` says what it exceeds: this machine's memory, or the host memory limit.
    #[error("datum '{name}' would need {bytes} bytes, more than {limit}")]
    OverMemory {
        /// The datum's name.
        name: String,
        /// The bytes it would need.
        bytes: u128,
        /// What it exceeds.
        limit: String,
    },
    /// A copy to the host failed.
    #[error("datum '{name}' could not be brought to the host: {reason}")]
    Transfer {
        /// The datum's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The store could not hold the datum (spilling failed).
    #[error("datum '{name}' could not be stored: {reason}")]
    Store {
        /// The datum's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The datum was freed ([`Runtime::free`](crate::Runtime::free) or
    /// [`Runtime::take`](crate::Runtime::take)); its handle names nothing any more.
    #[error("datum '{0}' was freed")]
    Freed(String),
}

/// Why a datum could not be made ready on a GPU.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PrepError {
    /// The GPU's memory is full of data in use: wait for tasks to finish, then retry.
    NoRoom(String),
    /// The host's memory is full of data pinned by running CPU tasks or reads: retry soon.
    HostBusy(String),
    /// Anything else (a failed copy, a lost device).
    Failed(String),
}

impl std::fmt::Display for PrepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepError::NoRoom(m) | PrepError::HostBusy(m) | PrepError::Failed(m) => f.write_str(m),
        }
    }
}

/// One stored datum.
pub(crate) struct DataCell {
    pub name: String,
    pub elem: ElemType,
    pub len: usize,
    pub read_only: bool,
    /// The host buffer (out of memory while spilled or dropped, host limit only), with the
    /// address lock-free readers use.
    host: HostSlot,
    /// The alignment of buffers the store allocates for this datum (its element type's).
    align: usize,
    /// Freed: out of the store, no copies, claimed for good (module invariants).
    freed: AtomicBool,
    /// The NUMA node the host buffer's bytes are charged to (while it is in memory).
    numa: AtomicU32,
    /// Logical time of the last host use, for least-recently-used spilling.
    host_use: AtomicU64,
    /// CPU tasks pinning their operands now that include this datum: spilled last.
    host_wanted: AtomicU32,
    /// The host's completion count when this datum was last spilled to a file, to detect
    /// ping-pong (`u64::MAX`: not spilled since last read back).
    spilled_at: AtomicU64,
    /// The spill file holding the valid host copy while the buffer is out of memory.
    spilled: Mutex<Option<SpillFile>>,
    coherence: Mutex<Coherence>,
    /// The copies on GPUs, with their pins and eviction marks.
    pub gpu: GpuReplicas,
    host_valid: AtomicBool,
    on_gpu: AtomicBool,
    /// The runtime's memory budgets (copies are accounted there).
    budgets: Arc<Budgets>,
    /// Valid copies to keep after a GPU writes it: 2 keeps a host copy too (replication).
    replicas_wanted: std::sync::atomic::AtomicU8,
    /// The GPU whose loss took the only valid copy (`u16::MAX`: none); cleared by a write.
    lost_with: std::sync::atomic::AtomicU16,
    /// Being recomputed from its lineage after a device loss: readers wait.
    pub recovering: AtomicBool,
    /// Losing attempts of speculated tasks that may still use the host buffers (module
    /// invariants); changed with `retired` locked.
    stragglers: AtomicU32,
    /// Host buffers replaced while stragglers may use them, freed when the last straggler
    /// lets go.
    retired: Mutex<Vec<HostBuf>>,
    /// Downloads into the host buffer so far (lineage dates the host's value by them).
    downloads: AtomicU32,
}

/// The logical clock of data uses (GPU copies, host pins) that orders least-recently-used
/// evictions and spills.
static USE_CLOCK: AtomicU64 = AtomicU64::new(0);

impl DataCell {
    /// A graph's temporary: no memory until first used, then zeroed; its host buffer goes
    /// through pins like a spillable one, so that [`DataCell::discard`] can free it.
    pub fn temp(name: String, elem: ElemType, len: usize, gpus: usize, budgets: Arc<Budgets>) -> Self {
        Self::with_buffer(name, elem, len, false, None, true, gpus, budgets)
    }

    /// Frees every copy of a temporary after its last use: the host buffer, the spill file,
    /// the GPU replicas (their room goes back to the budgets). It then reads as zeros.
    /// Called when no task uses it any more, so no pin is held.
    pub fn discard(&self) {
        let mut c = self.coherence.locked();
        debug_assert_eq!(self.host.pins(), 0, "discarding a pinned datum");
        // No pin is held, so no one uses the buffer it frees.
        drop(self.drop_copies_locked(&mut c));
        self.host_valid.store(true, Ordering::Release);
    }

    /// Drops every copy (coherence locked, no pin held, no run using the datum): the host
    /// buffer, handed back, the spill file, the GPU replicas, each one's room in its budget.
    /// Coherence is reset to the host alone; `host_valid` is the caller's to set.
    fn drop_copies_locked(&self, c: &mut Coherence) -> Option<HostBuf> {
        let bytes = self.bytes() as u64;
        let host = self.set_host(None);
        if host.is_some() {
            self.budgets.release_host(bytes, self.host_numa());
        }
        if let Some(file) = self.spilled.locked().take() {
            file.remove();
        }
        let mut replicas = self.gpu.slots();
        for (g, r) in replicas.iter_mut().enumerate() {
            // Dropping the buffer releases it: no submission in flight uses a datum no run
            // holds.
            if r.take().is_some() {
                self.budgets.node(Node::Gpu(g as u16)).release(bytes);
            }
        }
        *c = Coherence::host_only(replicas.len());
        self.on_gpu.store(false, Ordering::Release);
        host
    }

    /// A datum of `len` elements whose host buffer is `buf` (at least `len` elements long,
    /// aligned for `elem`), accounted in the host budget.
    fn from_buf(
        name: String,
        elem: ElemType,
        len: usize,
        buf: HostBuf,
        read_only: bool,
        gpus: usize,
        budgets: Arc<Budgets>,
    ) -> Self {
        debug_assert!(buf.len() >= len * elem.size());
        debug_assert_eq!(buf.as_ptr() as usize % elem_align(elem), 0);
        let numa = budgets.admit_host((len * elem.size()) as u64);
        let spillable = budgets.spillable();
        let cell = Self::with_buffer(name, elem, len, read_only, Some(buf), spillable, gpus, budgets);
        cell.numa.store(numa as u32, Ordering::Relaxed);
        cell
    }

    /// A cell owning the host buffer `buf` (`None`: not in memory, reads as zeros), valid on
    /// the host only.
    #[allow(clippy::too_many_arguments)]
    fn with_buffer(
        name: String,
        elem: ElemType,
        len: usize,
        read_only: bool,
        buf: Option<HostBuf>,
        spillable: bool,
        gpus: usize,
        budgets: Arc<Budgets>,
    ) -> Self {
        DataCell {
            name,
            elem,
            len,
            read_only,
            host: HostSlot::new(buf, spillable),
            align: elem_align(elem),
            freed: AtomicBool::new(false),
            numa: AtomicU32::new(0),
            host_use: AtomicU64::new(0),
            host_wanted: AtomicU32::new(0),
            spilled_at: AtomicU64::new(u64::MAX),
            spilled: Mutex::new(None),
            coherence: Mutex::new(Coherence::host_only(gpus)),
            gpu: GpuReplicas::new(gpus),
            host_valid: AtomicBool::new(true),
            on_gpu: AtomicBool::new(false),
            budgets,
            replicas_wanted: std::sync::atomic::AtomicU8::new(1),
            lost_with: std::sync::atomic::AtomicU16::new(u16::MAX),
            recovering: AtomicBool::new(false),
            stragglers: AtomicU32::new(0),
            retired: Mutex::new(Vec::new()),
            downloads: AtomicU32::new(0),
        }
    }

    /// Downloads into the host buffer so far.
    pub fn downloads(&self) -> u32 {
        self.downloads.load(Ordering::Acquire)
    }

    /// A losing attempt may go on using the host buffer: keep it from being overwritten or
    /// freed until [`DataCell::straggler_done`].
    pub fn hold_for_straggler(&self) {
        let _retired = self.retired.locked();
        self.stragglers.fetch_add(1, Ordering::AcqRel);
    }

    /// A losing attempt no longer uses the host buffers: the last one frees the retired ones.
    pub fn straggler_done(&self) {
        let mut retired = self.retired.locked();
        if self.stragglers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last straggler that could use them is done.
            retired.clear();
        }
    }

    /// Before the host buffer is overwritten in place: if a straggler may still use it, moves
    /// to a fresh copy (same bytes) and retires the old one. Called with `coherence` locked, or
    /// by the one task allowed to write the datum now (graph dependencies), so that nothing
    /// else swaps the pointer meanwhile. Without stragglers this is one atomic load.
    pub fn unshare_host(&self) {
        if self.stragglers.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut retired = self.retired.locked();
        if self.stragglers.load(Ordering::Acquire) == 0 {
            return;
        }
        // SAFETY: stragglers only read or write their own retired or replaced buffers, and no
        // task writes this one now (the caller's promise): its bytes are stable while copied.
        if let Some(old) = unsafe { self.host.replace_with_copy(self.bytes(), self.align) } {
            retired.push(old);
        }
    }

    /// Makes `new` the host buffer (`None`: out of memory), returning the old one. Callers
    /// hold `coherence` (or are the only user of the cell) and no host pin is held on the old
    /// buffer, or they retire it instead of dropping it.
    fn set_host(&self, new: Option<HostBuf>) -> Option<HostBuf> {
        self.host.replace(new)
    }

    /// Makes `buf` (from [`DataCell::blank_host`] or [`DataCell::host_copy`]) the host buffer
    /// and the host copy the only valid one: the result of a speculative attempt that won. The
    /// old buffer is retired, since the loser may still write it (the caller holds it for the
    /// straggler first).
    pub fn install_host(&self, buf: HostBuf) {
        debug_assert_eq!(buf.len(), self.bytes());
        let mut c = self.coherence.locked();
        let mut retired = self.retired.locked();
        if let Some(old) = self.set_host(Some(buf)) {
            // Freed now unless a straggler may still use it (the loser, if any, is held for).
            if self.stragglers.load(Ordering::Acquire) != 0 {
                retired.push(old);
            }
        }
        drop(retired);
        c.record_write(Node::Host);
        self.lost_with.store(u16::MAX, Ordering::Release);
        self.on_gpu.store(false, Ordering::Release);
        self.host_valid.store(true, Ordering::Release);
    }

    /// A copy of the host buffer (a speculative attempt's private operands), `None` while it
    /// is out of memory.
    ///
    /// # Safety
    /// The caller's run holds the datum and no task of it writes the datum meanwhile.
    pub unsafe fn host_copy(&self) -> Option<HostBuf> {
        // SAFETY: the caller's promise is `copy`'s.
        unsafe { self.host.copy(self.bytes(), self.align) }
    }

    /// A zeroed buffer the size and alignment of the host buffer (a private operand).
    pub fn blank_host(&self) -> HostBuf {
        HostBuf::zeroed(self.bytes(), self.align)
    }

    /// Keeps `copies` valid copies on distinct memory nodes after a GPU writes the datum (2:
    /// the GPU's and the host's), so that losing the GPU loses no result.
    pub fn set_replicas(&self, copies: u8) {
        self.replicas_wanted.store(copies.max(1), Ordering::Relaxed);
    }

    /// Valid copies to keep after a GPU writes the datum.
    pub fn replicas_wanted(&self) -> u8 {
        self.replicas_wanted.load(Ordering::Relaxed)
    }

    /// GPU `g` is lost: its copy goes (and its room in the budget). If it was the only valid
    /// copy the datum is lost until written again, and reads say so. True when lost.
    pub fn forget_gpu(&self, g: usize) -> bool {
        let mut c = self.coherence.locked();
        self.forget_gpu_locked(&mut c, g)
    }

    fn forget_gpu_locked(&self, c: &mut Coherence, g: usize) -> bool {
        let node = Node::Gpu(g as u16);
        if self.gpu.slots()[g].take().is_some() {
            self.budgets.node(node).release(self.bytes() as u64);
        }
        let was_valid = c.is_valid(node);
        c.drop_copy(node);
        self.on_gpu.store(c.on_any_gpu(), Ordering::Release);
        let lost = was_valid && c.valid_nodes().next().is_none();
        if lost {
            self.lost_with.store(g as u16, Ordering::Release);
        }
        lost
    }

    /// For `Runtime::retire`: brings the copy on GPU `g` home when it is the only valid one,
    /// then drops it and its room on the device; returns the bytes copied. The caller has
    /// made sure that nothing runs on `g` any more (its worker has left its last task).
    pub fn evacuate_gpu(&self, g: usize, gpus: &[Arc<GpuDevice>], transfers: &Transfers) -> Result<u64, String> {
        let mut c = self.coherence.locked();
        let node = Node::Gpu(g as u16);
        let mut copied = 0;
        if c.is_valid(node) && c.valid_nodes().all(|n| n == node) {
            self.fetch_to_host(&mut c, 0, gpus, transfers)
                .map_err(|e| e.to_string())?;
            copied = self.bytes() as u64;
        }
        self.forget_gpu_locked(&mut c, g);
        Ok(copied)
    }

    /// Whether a device loss took its only valid copy (and nothing wrote it since).
    pub fn is_lost(&self) -> bool {
        self.lost_with.load(Ordering::Acquire) != u16::MAX
    }

    /// Whether some node holds a valid copy.
    pub fn has_valid_copy(&self) -> bool {
        self.coherence.locked().valid_nodes().next().is_some()
    }

    /// Why the datum cannot be read, when a device loss took its only valid copy.
    fn lost_error(&self) -> Option<String> {
        let g = self.lost_with.load(Ordering::Acquire);
        (g != u16::MAX).then(|| {
            format!(
                "datum '{}' was lost with gpu{g}: its only valid copy was there (keep a host replica with Runtime::replicate to survive a device loss)",
                self.name
            )
        })
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * self.elem.size()
    }

    /// Raw pointer to the host bytes; null while spilled. Callers hold `coherence` or a host
    /// pin, or the cell is not spillable.
    fn as_mut_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    /// Brings the host buffer into memory (coherence locked): allocated after reserving room
    /// in the host budget (on NUMA node `numa`, the node of the thread that will touch it,
    /// when it has room), and filled from the spill file when that holds the valid copy.
    fn materialize(&self, _locked: &mut Coherence, numa: usize) -> Result<(), PrepError> {
        if self.host.in_memory() {
            return Ok(());
        }
        let bytes = self.bytes() as u64;
        let limit = self.budgets.largest_host_share();
        if bytes > limit {
            return Err(PrepError::Failed(format!(
                "datum '{}' ({bytes} bytes) is larger than the host memory limit of {limit} bytes (on one NUMA node)",
                self.name
            )));
        }
        let numa = self
            .budgets
            .reserve_host(bytes, Some(self), numa)
            .map_err(|e| match e {
                PrepError::NoRoom(m) => PrepError::HostBusy(m),
                other => other,
            })?;
        self.numa.store(numa as u32, Ordering::Relaxed);
        let mut buf = self.blank_host();
        let mut spilled = self.spilled.locked();
        if let Some(file) = spilled.as_ref() {
            if let Err(e) = file.read_into(&self.name, buf.bytes_mut()) {
                self.budgets.release_host(bytes, numa);
                return Err(PrepError::Failed(e));
            }
            if let Some(file) = spilled.take() {
                file.remove();
            }
            // Back before any task completed since it was spilled?
            let host = self.budgets.node(Node::Host);
            if self.spilled_at.swap(u64::MAX, Ordering::Relaxed) == host.completions.load(Ordering::Acquire) {
                self.budgets.ping_pong(Node::Host);
            }
        }
        self.set_host(Some(buf));
        Ok(())
    }

    /// The host bytes, in memory and valid when `read`, kept there until
    /// [`DataCell::unpin_host`]; a buffer brought into memory is charged to NUMA node `numa`
    /// (the caller's). Without a host limit this is only the fetch.
    pub fn pin_host(
        &self,
        read: bool,
        numa: usize,
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<*mut u8, PrepError> {
        if !self.host.counts_pins() {
            if read && !gpus.is_empty() {
                self.ensure_host(gpus, transfers).map_err(PrepError::Failed)?;
            }
            return Ok(self.as_mut_ptr());
        }
        let mut c = self.coherence.locked();
        if read && !c.is_valid(Node::Host) {
            self.fetch_to_host(&mut c, numa, gpus, transfers)?;
        } else {
            if !read {
                // A write-only access overwrites every byte: the spilled copy need not come back.
                if let Some(file) = self.spilled.locked().take() {
                    file.remove();
                }
            }
            self.materialize(&mut c, numa)?;
        }
        self.host_use
            .store(USE_CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Ok(self.host.pin())
    }

    /// Ends a [`DataCell::pin_host`].
    pub fn unpin_host(&self) {
        self.host.unpin();
    }

    /// Copies the valid bytes into `out` (user reads) without bringing a spilled datum back
    /// into memory: from the host buffer, else from the spill file or a GPU directly. The
    /// caller holds `claim`.
    pub fn copy_out(
        &self,
        claim: &UserClaim<'_>,
        out: &mut [u8],
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<(), String> {
        let mut c = self.coherence.locked();
        if self.host.in_memory() {
            if !c.is_valid(Node::Host) {
                self.fetch_to_host(&mut c, 0, gpus, transfers)
                    .map_err(|e| e.to_string())?;
            }
            // In memory, and it stays there: spilling needs `coherence`.
            claim.with_bytes(self.bytes(), |host| {
                out.copy_from_slice(host.expect("checked in memory above"))
            });
            return Ok(());
        }
        match c.read_source(Node::Host) {
            Ok(None) => match self.spilled.locked().as_ref() {
                Some(file) => file.read_into(&self.name, out),
                None => Err(format!(
                    "datum '{}' has neither a host buffer nor a spill file",
                    self.name
                )),
            },
            Ok(Some(Node::Gpu(g))) => {
                let replicas = self.gpu.slots();
                match (gpus.get(g as usize), replicas.get(g as usize)) {
                    (Some(dev), Some(Some(buf))) => dev.download(buf, out),
                    _ => Err(format!(
                        "datum '{}' is valid only on gpu{g}, which holds no buffer for it",
                        self.name
                    )),
                }
            }
            Ok(Some(Node::Host)) => unreachable!("the host is never a source for the host"),
            Err(e) => Err(self
                .lost_error()
                .unwrap_or_else(|| format!("datum '{}': {e}", self.name))),
        }
    }

    /// Overwrites the whole datum with `bytes` (user writes): into the host buffer, or, while
    /// it is spilled, into a new spill file. GPU copies become stale. The caller holds `claim`.
    pub fn copy_in(&self, claim: &UserClaim<'_>, bytes: &[u8]) -> Result<(), String> {
        let mut c = self.coherence.locked();
        // Checked and written with `coherence` held, so the buffer cannot leave in between.
        if !claim.overwrite(bytes) {
            let dir = self.budgets.spill_dir().ok_or("the runtime has no spill directory")?;
            let file = dir.write(&self.name, bytes)?;
            if let Some(old) = self.spilled.locked().replace(file) {
                old.remove();
            }
        }
        c.record_write(Node::Host);
        self.lost_with.store(u16::MAX, Ordering::Release);
        self.on_gpu.store(false, Ordering::Release);
        self.host_valid.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether memory is allocated for the datum on `node` (valid or not).
    pub fn has_copy_on(&self, node: Node) -> bool {
        match node {
            Node::Host => self.host_in_memory(),
            Node::Gpu(g) => self.gpu.slots()[g as usize].is_some(),
        }
    }

    /// Whether the host buffer is in memory now.
    pub fn host_in_memory(&self) -> bool {
        self.host.in_memory()
    }

    /// A CPU task is about to pin this datum (`true`) or is done pinning (`false`): while
    /// wanted, spilling takes it last.
    pub fn want_host(&self, wanted: bool) {
        if wanted {
            self.host_wanted.fetch_add(1, Ordering::AcqRel);
        } else {
            self.host_wanted.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether a CPU task is pinning its operands, this datum among them.
    pub fn host_wanted(&self) -> bool {
        self.host_wanted.load(Ordering::Acquire) != 0
    }

    /// The NUMA node its host buffer is charged to.
    pub fn host_numa(&self) -> usize {
        self.numa.load(Ordering::Relaxed) as usize
    }

    /// Logical time of its last host use.
    pub fn last_host_use(&self) -> u64 {
        self.host_use.load(Ordering::Relaxed)
    }

    /// Takes the host buffer out of memory: written to a spill file when it holds the only
    /// valid copy, dropped otherwise. `Ok(None)`: pinned or locked right now (nothing done);
    /// `Ok(Some(bytes))`: done, with the bytes written to disk.
    pub fn spill_host(&self) -> Result<Option<u64>, String> {
        let Ok(mut c) = self.coherence.try_lock() else {
            return Ok(None);
        };
        let sole = c.is_valid(Node::Host) && c.valid_nodes().count() == 1;
        let mut file = None;
        let taken = self.host.take_unpinned(self.bytes(), |host| {
            if sole {
                let dir = self.budgets.spill_dir().ok_or("the runtime has no spill directory")?;
                file = Some(dir.write(&self.name, host)?);
            }
            Ok::<(), String>(())
        })?;
        if taken.is_none() {
            // Pinned, in use, or not in memory: nothing done.
            return Ok(None);
        }
        let mut written = 0;
        if let Some(file) = file {
            *self.spilled.locked() = Some(file);
            // Only a spill during a run can ping-pong (data spilled when the program created
            // more than fits are simply read back when needed).
            let at = if self.host.is_claimed() {
                self.budgets.node(Node::Host).completions.load(Ordering::Acquire)
            } else {
                u64::MAX
            };
            self.spilled_at.store(at, Ordering::Relaxed);
            written = self.bytes() as u64;
        } else if c.is_valid(Node::Host) {
            // A GPU holds a valid copy: the host's is clean and simply goes.
            c.drop_copy(Node::Host);
            self.host_valid.store(false, Ordering::Release);
        }
        self.budgets.release_host(self.bytes() as u64, self.host_numa());
        Ok(Some(written))
    }

    /// Marks the cell used by a run; false if it already was.
    pub fn acquire(&self) -> bool {
        self.host.claim()
    }

    /// Ends a run's use.
    pub fn release(&self) {
        self.host.release();
    }

    /// Makes the host copy valid, downloading it from a GPU if needed.
    pub fn ensure_host(&self, gpus: &[Arc<GpuDevice>], transfers: &Transfers) -> Result<(), String> {
        if self.host_valid.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut c = self.coherence.locked();
        self.fetch_to_host(&mut c, 0, gpus, transfers)
            .map_err(|e| e.to_string())
    }

    /// Makes the host copy valid (coherence locked): from the spill file, or downloaded from
    /// a GPU; a buffer brought into memory is charged to NUMA node `numa`.
    fn fetch_to_host(
        &self,
        c: &mut Coherence,
        numa: usize,
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<(), PrepError> {
        let mut source = c.read_source(Node::Host);
        // A copy on a lost GPU is gone: forget it and look again (or say the datum is lost).
        while let Ok(Some(Node::Gpu(g))) = source {
            if gpus.get(g as usize).is_none_or(|d| d.lost().is_none()) {
                break;
            }
            self.forget_gpu_locked(c, g as usize);
            source = c.read_source(Node::Host);
        }
        let Node::Gpu(g) = (match source {
            Ok(None) => return self.materialize(c, numa),
            Ok(Some(src)) => src,
            Err(_) if self.recovering.load(Ordering::Acquire) => {
                // Recomputed right now from its lineage: wait for it like for room.
                return Err(PrepError::HostBusy(format!(
                    "datum '{}' is being recomputed after a device loss",
                    self.name
                )));
            }
            Err(e) => {
                let why = self
                    .lost_error()
                    .unwrap_or_else(|| format!("datum '{}': {e}", self.name));
                return Err(PrepError::Failed(why));
            }
        }) else {
            unreachable!("the host is never a source for the host");
        };
        let replicas = self.gpu.slots();
        let (Some(dev), Some(Some(buf))) = (gpus.get(g as usize), replicas.get(g as usize)) else {
            return Err(PrepError::Failed(format!(
                "datum '{}' is valid only on gpu{g}, which holds no buffer for it",
                self.name
            )));
        };
        self.materialize(c, numa)?;
        // A straggler may still read the bytes about to be overwritten: give it the old buffer.
        self.unshare_host();
        let started = Instant::now();
        // SAFETY: the host copy is invalid, so no kernel reads it (CPU readers wait for this
        // lock), and no task writes the datum concurrently with a reader (dependencies).
        unsafe {
            self.host
                .with_ordered_bytes_mut(self.bytes(), |host| dev.download(buf, host))
        }
        .expect("materialized above")
        .map_err(PrepError::Failed)?;
        self.downloads.fetch_add(1, Ordering::AcqRel);
        transfers.record(
            Node::Gpu(g),
            Node::Host,
            self.bytes() as u64,
            started.elapsed(),
            &self.name,
        );
        c.record_read(Node::Host);
        self.host_valid.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether `node` holds a valid copy.
    pub fn is_valid_on(&self, node: Node) -> bool {
        match node {
            Node::Host => self.host_valid.load(Ordering::Acquire),
            _ => self.coherence.locked().is_valid(node),
        }
    }

    /// Nodes holding a valid copy.
    pub fn valid_nodes(&self) -> Vec<Node> {
        self.coherence.locked().valid_nodes().collect()
    }

    /// The host wrote the datum: GPU copies are stale.
    pub fn host_written(&self) {
        if self.on_gpu.load(Ordering::Acquire) || self.lost_with.load(Ordering::Acquire) != u16::MAX {
            let mut c = self.coherence.locked();
            c.record_write(Node::Host);
            self.lost_with.store(u16::MAX, Ordering::Release);
            self.on_gpu.store(false, Ordering::Release);
            self.host_valid.store(true, Ordering::Release);
        }
    }

    /// Drops the copy on GPU `g`, writing it back to the host first when it is the only valid
    /// one. `Ok(None)`: the datum is in use right now (nothing done); `Ok(Some(bytes))`: done,
    /// with the bytes written back.
    pub fn evict_from_gpu(
        &self,
        g: usize,
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<Option<u64>, String> {
        let Ok(mut c) = self.coherence.try_lock() else {
            return Ok(None);
        };
        if !self.gpu.evictable(g) {
            return Ok(None);
        }
        let node = Node::Gpu(g as u16);
        let mut written_back = 0;
        if c.is_valid(node) && c.valid_nodes().count() == 1 {
            match self.fetch_to_host(&mut c, self.budgets.gpu_numa(g), gpus, transfers) {
                Ok(()) => {}
                // No host room for the write-back right now: try another victim.
                Err(PrepError::HostBusy(_)) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
            written_back = self.bytes() as u64;
        }
        let had = self.gpu.slots()[g].take().is_some();
        c.drop_copy(node);
        if had {
            let nb = self.budgets.node(node);
            nb.release(self.bytes() as u64);
            self.gpu.evicted(g, nb.completions.load(Ordering::Acquire));
        }
        self.on_gpu.store(c.on_any_gpu(), Ordering::Release);
        self.host_valid.store(c.is_valid(Node::Host), Ordering::Release);
        Ok(Some(written_back))
    }

    /// The buffer of GPU `g`'s replica, made valid for reading when `read` (uploading from the
    /// host, or through the host from another GPU). A new replica first gets room in the GPU's
    /// budget, evicting other data if `may_evict` (prefetches do not: evicting one prefetched
    /// copy for another moves data back and forth before any task has used it).
    pub fn ensure_gpu(
        self: &Arc<Self>,
        g: usize,
        read: bool,
        may_evict: bool,
        gpus: &[Arc<GpuDevice>],
        transfers: &Transfers,
    ) -> Result<crate::gpu::GpuBuffer, PrepError> {
        let node = Node::Gpu(g as u16);
        let bytes = self.bytes() as u64;
        let missing = !self.gpu.has(g);
        if missing {
            if may_evict {
                self.budgets.reserve_on_gpu(node, bytes, self, gpus, transfers)?;
            } else if !self.budgets.node(node).try_reserve(bytes) {
                return Err(PrepError::NoRoom(format!(
                    "no free room on {node} for datum '{}' without evicting",
                    self.name
                )));
            }
        }
        let mut c = self.coherence.locked();
        let buffer = {
            let mut replicas = self.gpu.slots();
            match &replicas[g] {
                Some(b) => {
                    if missing {
                        // Another worker made the replica meanwhile: give our room back.
                        self.budgets.node(node).release(bytes);
                    }
                    b.clone()
                }
                None => match gpus[g].create_replica(bytes, &self.name) {
                    Ok(b) => {
                        replicas[g] = Some(b.clone());
                        // Back before any task completed there since it was evicted?
                        let completions = self.budgets.node(node).completions.load(Ordering::Acquire);
                        if self.gpu.back_without_progress(g, completions) {
                            self.budgets.ping_pong(node);
                        }
                        self.budgets.register(node, self);
                        b
                    }
                    Err(e) => {
                        self.budgets.node(node).release(bytes);
                        return Err(PrepError::Failed(e));
                    }
                },
            }
        };
        self.gpu.touch(USE_CLOCK.fetch_add(1, Ordering::Relaxed));
        if read && !c.is_valid(node) {
            let numa = self.budgets.gpu_numa(g);
            if c.is_valid(Node::Host) {
                self.materialize(&mut c, numa)?;
            } else {
                self.fetch_to_host(&mut c, numa, gpus, transfers)?;
            }
            let started = Instant::now();
            // SAFETY: the host copy is valid and only read here; writers of the datum are
            // ordered after this task's readers by the graph's dependencies.
            unsafe {
                self.host
                    .with_ordered_bytes(self.bytes(), |host| gpus[g].upload(&buffer, host))
            }
            .expect("made valid in memory above")
            .map_err(PrepError::Failed)?;
            transfers.record(Node::Host, node, self.bytes() as u64, started.elapsed(), &self.name);
            c.record_read(node);
            self.on_gpu.store(true, Ordering::Release);
        }
        Ok(buffer)
    }

    /// GPU `g` wrote the datum: its copy is the only valid one.
    pub fn gpu_written(&self, g: usize) {
        let mut c = self.coherence.locked();
        c.record_write(Node::Gpu(g as u16));
        self.lost_with.store(u16::MAX, Ordering::Release);
        if let Some(stale) = self.spilled.locked().take() {
            stale.remove();
        }
        self.host_valid.store(false, Ordering::Release);
        self.on_gpu.store(true, Ordering::Release);
    }
}

impl Drop for DataCell {
    fn drop(&mut self) {
        // Whatever copies it still holds go, and their room with them (a freed cell has none).
        let bytes = self.bytes() as u64;
        if self.host.take().is_some() {
            self.budgets.release_host(bytes, self.host_numa());
        }
        if let Some(file) = self.spilled.get_mut_unpoisoned().take() {
            file.remove();
        }
        let replicas = self.gpu.slots_mut();
        for (g, r) in replicas.iter().enumerate() {
            if r.is_some() {
                self.budgets.node(Node::Gpu(g as u16)).release(bytes);
            }
        }
        // Retired buffers drop with the cell: with the cell gone, no run (and so no straggler)
        // uses them.
    }
}

impl DataCell {
    /// Whether the datum was freed.
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Acquire)
    }

    /// Claims the datum for a user access, or says why not: freed, or used by a run.
    fn acquire_for_user(&self) -> Result<UserClaim<'_>, DataError> {
        if let Some(claim) = self.host.claim_for_user() {
            return Ok(claim);
        }
        Err(if self.is_freed() {
            DataError::Freed(self.name.clone())
        } else {
            DataError::Busy(self.name.clone())
        })
    }

    /// Frees every copy (the caller holds the claim, kept for good): the host
    /// buffer, returned rather than dropped (for `take`), the spill file, the GPU replicas,
    /// each one's room in its budget. Afterwards the cell is marked freed.
    fn free_copies(&self) -> Option<HostBuf> {
        let mut c = self.coherence.locked();
        self.freed.store(true, Ordering::Release);
        debug_assert_eq!(self.host.pins(), 0, "freeing a pinned datum");
        let host = self.drop_copies_locked(&mut c);
        // No run holds the datum, so no straggler uses its retired buffers.
        self.retired.locked().clear();
        self.host_valid.store(false, Ordering::Release);
        host
    }
}

/// Names of freed data kept for error messages, at most this many (the oldest are forgotten,
/// so that a program freeing data for ever does not grow).
const FREED_NAMES: usize = 4096;

/// The store's table: live data by id, and the names of recently freed ones.
#[derive(Default)]
struct Cells {
    live: HashMap<u32, Arc<DataCell>>,
    /// The next id; ids are never reused, so a stale handle never names a newer datum.
    next: u32,
    freed: BTreeMap<u32, String>,
}

/// The data of one runtime.
pub(crate) struct DataStore {
    rt: u64,
    gpus: usize,
    /// Valid copies new data keep after a GPU writes them (see `DataCell::set_replicas`).
    pub default_replicas: std::sync::atomic::AtomicU8,
    budgets: Arc<Budgets>,
    cells: RwLock<Cells>,
}

/// Ends a user access's host pin, also when the caller's closure panics.
struct UserPin<'a>(&'a DataCell);

impl Drop for UserPin<'_> {
    fn drop(&mut self) {
        self.0.unpin_host();
    }
}

impl DataStore {
    pub fn new(rt: u64, gpus: usize, budgets: Arc<Budgets>) -> Self {
        DataStore {
            rt,
            gpus,
            default_replicas: std::sync::atomic::AtomicU8::new(1),
            budgets,
            cells: RwLock::new(Cells::default()),
        }
    }

    /// Stores `values` as a new datum, keeping the vector's own allocation (no copy).
    pub fn insert<T: Element>(&self, name: Option<String>, values: Vec<T>, read_only: bool) -> Data<T> {
        let len = values.len();
        let buf = HostBuf::from_vec(values);
        let id = self.push(name, |name| {
            DataCell::from_buf(name, T::ELEM, len, buf, read_only, self.gpus, self.budgets.clone())
        });
        Data::new(self.rt, id)
    }

    /// Every datum of the store (to forget the copies of a lost GPU).
    pub fn all(&self) -> Vec<Arc<DataCell>> {
        let cells = self.cells.read_locked();
        cells.live.values().cloned().collect()
    }

    /// Adds the cell `make` builds under its name (or `data#ID`); returns its id.
    fn push(&self, name: Option<String>, make: impl FnOnce(String) -> DataCell) -> u32 {
        let mut cells = self.cells.write_locked();
        let id = cells.next;
        let cell = Arc::new(make(name.unwrap_or_else(|| format!("data#{id}"))));
        cell.set_replicas(self.default_replicas.load(Ordering::Relaxed));
        if self.budgets.spillable() {
            self.budgets.register(Node::Host, &cell);
        }
        cells.live.insert(id, cell);
        cells.next = id.checked_add(1).expect("fewer than 2^32 data over a runtime's life");
        id
    }

    /// Stores `len` elements of `elem` whose contents `fill` writes in place into the zeroed
    /// buffer (the bytes of the final buffer, aligned for `elem`, so that they may be cast to
    /// it): nothing of another type or size is built on the way, and a read-only datum
    /// gets its contents before anyone may be refused writing it.
    pub fn insert_filled(
        &self,
        name: Option<String>,
        elem: ElemType,
        len: usize,
        read_only: bool,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), String>,
    ) -> Result<u32, DataError> {
        let bytes = (len as u128) * elem.size() as u128;
        let label = name.clone().unwrap_or_else(|| "unnamed".into());
        if bytes > isize::MAX as u128 {
            return Err(DataError::TooLarge { name: label, bytes });
        }
        let bytes = bytes as usize;
        let mut buf = HostBuf::zeroed(bytes, elem_align(elem));
        fill(buf.bytes_mut()).map_err(|reason| DataError::Store { name: label, reason })?;
        Ok(self.push(name, |name| {
            DataCell::from_buf(name, elem, len, buf, read_only, self.gpus, self.budgets.clone())
        }))
    }

    pub fn cell(&self, rt: u64, id: u32) -> Option<Arc<DataCell>> {
        if rt != self.rt {
            return None;
        }
        let cells = self.cells.read_locked();
        cells.live.get(&id).cloned()
    }

    /// Why datum `id` of runtime `rt` is not in the store, when it was freed: the error
    /// naming it.
    pub fn freed(&self, rt: u64, id: u32) -> Option<DataError> {
        if rt != self.rt {
            return None;
        }
        let cells = self.cells.read_locked();
        (id < cells.next && !cells.live.contains_key(&id)).then(|| {
            DataError::Freed(
                cells
                    .freed
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("data#{id} (name forgotten)")),
            )
        })
    }

    pub fn typed_cell<T: Element>(&self, h: Data<T>) -> Result<Arc<DataCell>, DataError> {
        let Some(cell) = self.cell(h.rt, h.id) else {
            return Err(self
                .freed(h.rt, h.id)
                .unwrap_or_else(|| DataError::ForeignHandle(format!("{h:?}"))));
        };
        if cell.elem != T::ELEM {
            return Err(DataError::TypeMismatch {
                name: cell.name.clone(),
                actual: cell.elem,
                requested: T::ELEM,
            });
        }
        Ok(cell)
    }

    /// Copies a datum out, bringing the valid copy home from a GPU first if needed.
    pub fn read<T: Element>(&self, h: Data<T>, gpus: &[Arc<GpuDevice>]) -> Result<Vec<T>, DataError> {
        let cell = self.typed_cell(h)?;
        // Claimed for the copy, so that no run starts on this datum meanwhile.
        let claim = cell.acquire_for_user()?;
        let mut out = vec![T::zeroed(); cell.len];
        let copied = cell.copy_out(
            &claim,
            bytemuck::cast_slice_mut(&mut out),
            gpus,
            &Transfers::new(gpus.len()),
        );
        copied.map(|()| out).map_err(|reason| DataError::Transfer {
            name: cell.name.clone(),
            reason,
        })
    }

    /// Calls `f` on the datum's host copy in place: made valid and brought into memory first,
    /// then held there (pinned, claimed) while `f` runs, so that nothing spills, evicts or
    /// writes it meanwhile.
    pub fn read_with<T: Element, R>(
        &self,
        h: Data<T>,
        gpus: &[Arc<GpuDevice>],
        f: impl FnOnce(&[T]) -> R,
    ) -> Result<R, DataError> {
        let cell = self.typed_cell(h)?;
        let claim = cell.acquire_for_user()?;
        cell.pin_host(true, 0, gpus, &Transfers::new(gpus.len()))
            .map_err(|e| DataError::Transfer {
                name: cell.name.clone(),
                reason: e.to_string(),
            })?;
        // Unpinned when `f` returns or unwinds, then the claim is released (drop order).
        let _pin = UserPin(&cell);
        if cell.len == 0 {
            return Ok(f(&[]));
        }
        // The pin keeps the valid copy in memory; the buffer is aligned for `T` (the datum's
        // own type): the cast cannot fail.
        Ok(claim.with_bytes(cell.bytes(), |bytes| {
            f(bytemuck::cast_slice(bytes.expect("pinned in memory")))
        }))
    }

    /// Frees a datum and hands back its values: the buffer itself when it can be a `Vec<T>`
    /// (the user's own allocation, or one the store made for `T`), else a copy.
    pub fn take<T: Element>(&self, h: Data<T>, gpus: &[Arc<GpuDevice>]) -> Result<Vec<T>, DataError> {
        let cell = self.typed_cell(h)?;
        let claim = cell.acquire_for_user()?;
        // The valid copy home and in memory; no pin is kept: the claim keeps everyone else
        // off until the datum is freed below (and is kept for good then).
        if let Err(e) = cell.pin_host(true, 0, gpus, &Transfers::new(gpus.len())) {
            return Err(DataError::Transfer {
                name: cell.name.clone(),
                reason: e.to_string(),
            });
        }
        cell.unpin_host();
        claim.keep();
        let host = self.remove(&cell, h.id);
        Ok(match host {
            Some(buf) => {
                let mut v = buf.into_vec::<T>();
                v.truncate(cell.len);
                v
            }
            None => vec![T::zeroed(); cell.len],
        })
    }

    /// Frees a datum: every copy, on every node, and its room in the budgets. Refused while
    /// a run (or a user access) uses it; the handle then names a freed datum.
    pub fn free<T: Element>(&self, h: Data<T>) -> Result<(), DataError> {
        let cell = self.typed_cell(h)?;
        cell.acquire_for_user()?.keep();
        drop(self.remove(&cell, h.id));
        Ok(())
    }

    /// Frees datum `id` of this store, whatever its type ([`DataStore::free`]).
    pub fn free_id(&self, id: u32) -> Result<(), DataError> {
        let Some(cell) = self.cell(self.rt, id) else {
            return Err(self
                .freed(self.rt, id)
                .unwrap_or_else(|| DataError::ForeignHandle(format!("data#{id}"))));
        };
        cell.acquire_for_user()?.keep();
        drop(self.remove(&cell, id));
        Ok(())
    }

    /// Takes an acquired cell out of the store and frees its copies, returning its host
    /// buffer. The claim stays held for good.
    fn remove(&self, cell: &DataCell, id: u32) -> Option<HostBuf> {
        {
            let mut cells = self.cells.write_locked();
            cells.live.remove(&id);
            cells.freed.insert(id, cell.name.clone());
            while cells.freed.len() > FREED_NAMES {
                cells.freed.pop_first();
            }
        }
        cell.free_copies()
    }

    /// Overwrites a datum (same length); GPU copies become stale.
    pub fn write<T: Element>(&self, h: Data<T>, values: &[T]) -> Result<(), DataError> {
        let cell = self.typed_cell(h)?;
        if cell.read_only {
            return Err(DataError::ReadOnly(cell.name.clone()));
        }
        if values.len() != cell.len {
            return Err(DataError::LengthMismatch {
                name: cell.name.clone(),
                len: cell.len,
                given: values.len(),
            });
        }
        let claim = cell.acquire_for_user()?;
        // Types and lengths were checked above.
        cell.copy_in(&claim, bytemuck::cast_slice(values))
            .map_err(|reason| DataError::Store {
                name: cell.name.clone(),
                reason,
            })
    }
}

/// The cells a run uses, claimed until dropped.
pub(crate) struct AcquiredData {
    cells: Vec<Arc<DataCell>>,
}

impl AcquiredData {
    /// Acquires every cell, or none if one is busy. `cells` holds no cell twice (a graph's
    /// data table is deduplicated).
    pub fn acquire(cells: Vec<Arc<DataCell>>) -> Result<Self, SubmitError> {
        let mut held = AcquiredData {
            cells: Vec::with_capacity(cells.len()),
        };
        for c in cells {
            if !c.acquire() {
                let datum = format!("'{}'", c.name);
                // Freed between the graph's resolution and now: say so, not "busy".
                return Err(if c.is_freed() {
                    SubmitError::DataFreed { datum }
                } else {
                    SubmitError::DataBusy { datum }
                });
            }
            held.cells.push(c);
        }
        Ok(held)
    }
}

impl Drop for AcquiredData {
    fn drop(&mut self) {
        for c in &self.cells {
            c.release();
        }
    }
}
