//! hexec: a GPU-aware heterogeneous task executor.
//!
//! hexec runs graphs of tasks on every compute unit of a machine. Each task names a kernel
//! and the data it reads and writes; dependencies follow from the order of those accesses.
//! A scheduling policy places each ready task on a worker it may run on (its *restrictions*)
//! and idle workers steal only from workers of their own class.
//!
//! Module map (see ARCHITECTURE.md for the invariants that span modules):
//! - [`graph`]: tasks, data handles, dependency inference, file formats;
//! - [`array`](mod@array): tiled f32/f64 matrices on the live runtime (products, Cholesky, solves,
//!   reductions, fused elementwise expressions);
//! - [`linalg`]: the tiled Cholesky as one graph (the test matrix, its residual);
//! - [`topology`]: the machine (hwloc discovery, or the OS's without the `hwloc` feature;
//!   workers, classes, victim order);
//! - [`sched`]: the policies, pure and deterministic, and the submit-time validation of a
//!   graph against a machine (their choice, [`PolicyKind`], and the performance models are
//!   public; the policy code and the validation are internal);
//! - [`gpu`]: GPUs through wgpu (discovery, devices, transfers, kernels);
//! - [`runtime`]: the real driver (threads, lock-free queues, data store);
//! - [`sim`]: the simulated driver (discrete events over modelled machines);
//! - [`trace`]: run summaries and Chrome/Perfetto traces;
//! - [`drivers`]: what needs both drivers (a runtime's simulated deadline prediction).
//!
//! Internal: `limits` (bounds on numbers from input, escaping names) and `memory` (coherence
//! of copies across memory nodes, transfer accounting; its report types are re-exported by
//! [`trace`]). Public for the `hexec` binary and the benchmarks but not a user API, hence
//! hidden from these docs: `bench` (the benchmarks behind `hexec bench`, with the `bench`
//! feature) and `demo` (the job behind `hexec demo`).
//!
//! Cargo features (README, "Using hexec as a library"), on by default unless said: `cli` (the
//! `hexec` binary, with `bench`, `gzip` and `toml`), `gpu` (GPU workers through wgpu),
//! `hwloc`, `gzip` (compressed graph files), `toml` (TOML machine files for the simulator),
//! and `bench` (on through `cli` only).

#![warn(missing_docs)]

pub mod array;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod demo;
pub mod drivers;
pub mod gpu;
pub mod graph;
pub(crate) mod limits;
pub mod linalg;
pub(crate) mod memory;
pub mod runtime;
pub mod sched;
pub mod sim;
mod sync;
pub mod topology;
pub mod trace;

/// The faer version hexec's arrays convert to and from ([`array::Matrix::from_faer`],
/// [`array::Matrix::to_faer`]), so that a program needs no faer dependency of its own.
pub use faer;
pub use hexec_kernels as kernels;

pub use graph::{Data, DataRef, Graph, Restriction, TaskBuilder, TaskId, TempData, VirtualData};
pub use runtime::{
    BuildError, CancelToken, DataError, GraphHandle, MemoryLimits, NodeUsage, RetireError, RetireOptions, RetireReport,
    RunError, RunOptions, Runtime, RuntimeBuilder, TaskError, TaskHandle,
};
pub use sched::compile::SubmitError;
pub use sched::PolicyKind;
pub use topology::{DeviceKind, Machine};
pub use trace::RunReport;
