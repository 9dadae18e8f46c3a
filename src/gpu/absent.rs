//! The GPU layer of a build without the `gpu` feature: the names the wgpu backend gives the
//! rest of the crate, with no adapter to find. [`GpuDevice`] and [`GpuBuffer`] hold an
//! uninhabited field, so none can be made and every method body is `match self.never {}`:
//! the runtime's GPU paths type-check and are dead code, with no `cfg` outside this module.

// Which of these placeholders the crate calls depends on the other features (the benchmarks
// call more of them than the runtime).
#![allow(dead_code)]

use hexec_kernels::gpu::GpuImpl;

use super::common::{AdapterSummary, BatchItem, Finished, GpuError, GpuRequest};
use crate::topology::GpuDesc;

/// A value that cannot exist.
#[derive(Clone, Copy, Debug)]
enum Never {}

/// An opened GPU; none can exist in this build.
#[derive(Debug)]
pub struct GpuDevice {
    /// The device's description.
    pub desc: GpuDesc,
    never: Never,
}

/// A buffer on a GPU; none can exist in this build.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    never: Never,
}

/// A submitted batch; none can exist in this build.
pub(crate) struct InFlight {
    never: Never,
}

impl GpuDevice {
    /// Why the device is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        match self.never {}
    }

    /// Destroys the device.
    pub fn destroy(&self) {
        match self.never {}
    }

    #[doc(hidden)]
    pub fn inject_poll_panic(&self) {
        match self.never {}
    }

    /// Pipelines compiled so far.
    pub fn cached_pipelines(&self) -> usize {
        match self.never {}
    }

    /// Batches submitted so far.
    pub fn kernel_submits(&self) -> u64 {
        match self.never {}
    }

    /// Pooled buffers waiting for reuse.
    pub fn pooled_buffers(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn release_pooled(&self) -> u64 {
        match self.never {}
    }

    pub(crate) fn check_code(&self, _kernel: &str, _g: &GpuImpl) -> Result<(), String> {
        match self.never {}
    }

    pub(crate) fn submit_batch(&self, _items: &[BatchItem<'_>]) -> InFlight {
        match self.never {}
    }

    pub(crate) fn finish_batch(&self, f: InFlight) -> Finished {
        match f.never {}
    }

    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        match self.never {}
    }

    pub(crate) fn flush_uploads(&self) {
        match self.never {}
    }

    pub(crate) fn upload(&self, _dst: &GpuBuffer, _bytes: &[u8]) -> Result<(), String> {
        match self.never {}
    }

    pub(crate) fn download(&self, _src: &GpuBuffer, _dst: &mut [u8]) -> Result<(), String> {
        match self.never {}
    }

    pub(crate) fn create_replica(&self, _bytes: u64, _label: &str) -> Result<GpuBuffer, String> {
        match self.never {}
    }
}

/// No adapter is found in this build.
pub fn adapters() -> Vec<AdapterSummary> {
    Vec::new()
}

/// Opens no GPU: `All` and `None` give none; a count fails, naming the missing feature.
pub fn discover(request: GpuRequest, software: bool, host_memory: u64) -> Result<Vec<GpuDevice>, GpuError> {
    discover_noting_software(request, software, host_memory).map(|(devices, _)| devices)
}

/// [`discover`], with no software adapter to name.
pub(crate) fn discover_noting_software(
    request: GpuRequest,
    _software: bool,
    _host_memory: u64,
) -> Result<(Vec<GpuDevice>, Vec<String>), GpuError> {
    match request {
        GpuRequest::Count(n) if n > 0 => Err(GpuError::NotBuilt { asked: n }),
        _ => Ok((Vec::new(), Vec::new())),
    }
}
