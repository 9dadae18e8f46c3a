//! What the rest of hexec sees of the GPU layer, whichever backend is compiled in (wgpu with
//! the `gpu` feature, none without it): how GPUs are asked for, the errors of opening them,
//! adapter summaries, and the shapes of a batch of kernels.

use std::time::Instant;

use hexec_kernels::gpu::GpuImpl;
use hexec_kernels::Access;

use super::GpuBuffer;
pub use crate::topology::MAX_BATCH;

/// Which GPUs a runtime opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuRequest {
    /// Every GPU adapter found (deduplicated).
    #[default]
    All,
    /// None: CPU only.
    None,
    /// Exactly this many devices. More than there are adapters opens several devices on the
    /// same adapters, round-robin: on a machine with one lavapipe adapter, `Count(2)` gives two
    /// independent devices, so that multi-GPU paths run for real in tests.
    Count(usize),
}

impl std::str::FromStr for GpuRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(GpuRequest::All),
            "none" | "0" => Ok(GpuRequest::None),
            n => n
                .parse::<usize>()
                .map(GpuRequest::Count)
                .map_err(|_| format!("--gpus takes a number, 'all' or 'none', not '{n}'")),
        }
    }
}

/// GPU errors.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// GPUs were asked for but none can be used.
    #[error("{asked} GPU(s) requested but this machine has none that wgpu can use for compute{hint}")]
    NoAdapter {
        /// How many were asked for.
        asked: usize,
        /// What else was found and how to use it (may be empty).
        hint: String,
    },
    /// GPUs were asked for from a build without the `gpu` feature.
    #[error(
        "{asked} GPU(s) requested but this hexec was built without its `gpu` feature (build it with `--features gpu`)"
    )]
    NotBuilt {
        /// How many were asked for.
        asked: usize,
    },
    /// A device could not be opened.
    #[error("could not open GPU '{device}': {message}")]
    RequestDevice {
        /// The adapter's name.
        device: String,
        /// wgpu's error.
        message: String,
    },
}

/// The environment variable that lets software adapters be used when the program does not
/// say ([`RuntimeBuilder::software_gpus`](crate::RuntimeBuilder::software_gpus)): `1`,
/// `true` or `yes`.
pub const SOFTWARE_GPUS_ENV: &str = "HEXEC_SOFTWARE_GPUS";

/// How a program or a user asks for software adapters, for the messages that mention them.
pub const ASK_FOR_SOFTWARE_GPUS: &str = "--software-gpus, HEXEC_SOFTWARE_GPUS=1 or RuntimeBuilder::software_gpus(true)";

/// Whether [`SOFTWARE_GPUS_ENV`] asks for software adapters.
pub fn software_gpus_from_env() -> bool {
    std::env::var(SOFTWARE_GPUS_ENV).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// A compute-capable adapter as discovery sees it, used or not.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    /// The adapter's name.
    pub name: String,
    /// Its backend (`vulkan`, `metal`, `dx12`, ...).
    pub backend: String,
    /// Its device type (`DiscreteGpu`, `Cpu`, ...).
    pub device_type: String,
    /// Its driver.
    pub driver: String,
    /// A CPU-type adapter (a software rasteriser such as Mesa's lavapipe): it runs on the
    /// same cores as the CPU workers, so it is opened only when asked for.
    pub software: bool,
}

/// One task of a batch.
// Read only by the wgpu backend.
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
pub(crate) struct BatchItem<'a> {
    pub kernel: &'a str,
    pub gpu_impl: &'a GpuImpl,
    pub ops: Vec<GpuOperand>,
    pub params: &'a [f64],
}

/// A task's kernel on the GPU's own clock: nanoseconds since the device's (arbitrary)
/// timestamp epoch, from the beginning of its first pass to the end of its last.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GpuSpan {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl GpuSpan {
    /// The kernel's time in seconds.
    pub fn seconds(self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 * 1e-9
    }
}

/// What became of a batch.
pub(crate) struct Finished {
    /// Per item: its kernel's span when timestamps were taken, or the error.
    pub results: Vec<Result<Option<GpuSpan>, String>>,
    /// Just before `queue.submit`: no task of the batch started on the GPU earlier.
    pub submitted_at: Instant,
    /// When the wait for the batch returned: every task had ended by then.
    pub done_at: Instant,
}

/// An operand as a dispatch binds it.
#[cfg_attr(not(feature = "gpu"), allow(dead_code))]
pub(crate) struct GpuOperand {
    pub buffer: GpuBuffer,
    pub elements: u64,
    pub access: Access,
}

/// What an out-of-memory error of a GPU call says: the workers read it to tell a shortage
/// (worth another attempt) from an error of the kernel's own code.
pub(crate) const OUT_OF_GPU_MEMORY: &str = "out of GPU memory";
