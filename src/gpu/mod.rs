//! GPUs through wgpu: discovery (software adapters such as lavapipe only when asked for, see
//! [`SOFTWARE_GPUS_ENV`]), opened devices with their poll threads, buffer pools, pipeline
//! caches, the submit-time check of a kernel's GPU code, transfers and kernel execution.
//!
//! Built without the `gpu` feature, the same names come from `absent.rs`: no adapter is
//! found, `GpuRequest::All` opens none, asking for a count fails naming the missing feature,
//! and [`GpuDevice`] cannot exist, so the runtime's GPU paths compile but never run.
//!
//! Invariants:
//! - one [`GpuDevice`] per GPU worker; its `wgpu::Device` is only polled by its own poll
//!   thread (a blocking `device.poll` on a worker thread would stall `queue.submit` from
//!   other threads);
//! - every error wgpu can report (validation, out-of-memory, device loss) is caught through
//!   error scopes and the device-lost callback and returned as a value naming the kernel and
//!   the device; nothing here panics on a GPU error;
//! - wgpu's types stay in this module (ARCHITECTURE.md, Layers).

mod common;

#[cfg(feature = "gpu")]
mod batch;
#[cfg(feature = "gpu")]
mod device;
#[cfg(feature = "gpu")]
mod exec;
#[cfg(feature = "gpu")]
mod poll;
#[cfg(feature = "gpu")]
mod pool;

#[cfg(not(feature = "gpu"))]
mod absent;

pub use common::{
    software_gpus_from_env, AdapterSummary, GpuError, GpuRequest, ASK_FOR_SOFTWARE_GPUS, SOFTWARE_GPUS_ENV,
};
pub(crate) use common::{BatchItem, GpuOperand, GpuSpan, MAX_BATCH, OUT_OF_GPU_MEMORY};

#[cfg(not(feature = "gpu"))]
pub use absent::{adapters, discover, GpuBuffer, GpuDevice};
#[cfg(not(feature = "gpu"))]
pub(crate) use absent::{discover_noting_software, InFlight};
#[cfg(feature = "gpu")]
pub(crate) use batch::InFlight;
#[cfg(feature = "gpu")]
pub(crate) use device::discover_noting_software;
#[cfg(feature = "gpu")]
pub use device::{adapters, discover, GpuDevice};
#[cfg(feature = "gpu")]
pub use exec::GpuBuffer;
