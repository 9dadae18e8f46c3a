//! GPUs through wgpu: discovery (software adapters such as lavapipe only when asked for, see
//! [`SOFTWARE_GPUS_ENV`]), opened devices with their poll threads, buffer pools, pipeline
//! caches, the submit-time check of a kernel's GPU code, transfers and kernel execution.
//!
//! Invariants:
//! - one [`GpuDevice`] per GPU worker; its `wgpu::Device` is only polled by its own poll
//!   thread (a blocking `device.poll` on a worker thread would stall `queue.submit` from
//!   other threads);
//! - every error wgpu can report (validation, out-of-memory, device loss) is caught through
//!   error scopes and the device-lost callback and returned as a value naming the kernel and
//!   the device; nothing here panics on a GPU error.

mod batch;
mod device;
mod exec;
mod poll;
mod pool;

pub(crate) use batch::{BatchItem, GpuSpan, InFlight, MAX_BATCH};
pub(crate) use device::discover_noting_software;
pub use device::{
    adapters, discover, software_gpus_from_env, AdapterSummary, GpuDevice, GpuError, GpuRequest, ASK_FOR_SOFTWARE_GPUS,
    SOFTWARE_GPUS_ENV,
};
pub use exec::GpuBuffer;
pub(crate) use exec::{GpuOperand, OUT_OF_GPU_MEMORY};
