//! Adapter discovery and device opening.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::common::{AdapterSummary, GpuError, GpuRequest, ASK_FOR_SOFTWARE_GPUS};
use super::exec::Pipelines;
use super::poll::Poller;
use super::pool::BufferPool;
use crate::sync::MutexExt;
use crate::topology::GpuDesc;

/// Device health, shared with wgpu's callbacks.
#[derive(Debug, Default)]
pub(crate) struct Health {
    lost: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Health {
    pub fn mark_lost(&self, reason: String) {
        *self.reason.locked() = Some(reason);
        self.lost.store(true, Ordering::SeqCst);
    }

    pub fn lost(&self) -> Option<String> {
        if self.lost.load(Ordering::SeqCst) {
            Some(self.reason.locked().clone().unwrap_or_default())
        } else {
            None
        }
    }
}

/// An opened GPU.
pub struct GpuDevice {
    /// The device's description.
    pub desc: GpuDesc,
    /// The wgpu device (its type stays inside `gpu/`).
    pub(crate) device: wgpu::Device,
    /// Its queue.
    pub(crate) queue: wgpu::Queue,
    pub(crate) health: Arc<Health>,
    pub(crate) poller: Poller,
    pub(crate) pool: BufferPool,
    pub(crate) pipelines: Pipelines,
    pub(crate) query_sets: Mutex<Vec<wgpu::QuerySet>>,
    /// Kernel submissions so far (one per batch).
    pub(crate) submits: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("desc", &self.desc)
            .finish_non_exhaustive()
    }
}

impl GpuDevice {
    /// Why the device is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.health.lost()
    }

    /// Destroys the device: every later use fails with a device-lost error. For tests of
    /// device loss and for retiring a device.
    pub fn destroy(&self) {
        // Mark first: wgpu reports the loss through its callback only on a later poll, and
        // work submitted meanwhile must not count as done.
        self.health
            .mark_lost("device lost (Destroyed): destroyed by hexec".into());
        self.device.destroy();
    }

    /// Makes the device's poll thread panic at its next poll, as wgpu-core 30.0.2's assertion
    /// on submission indices does under load: for tests that a dead poller fails its device
    /// at once.
    #[doc(hidden)]
    pub fn inject_poll_panic(&self) {
        self.poller.inject_panic();
    }

    /// Pipelines compiled so far (they are kept for later tasks and runs).
    pub fn cached_pipelines(&self) -> usize {
        self.pipelines.len()
    }

    /// Batches submitted so far (each batch is one `queue.submit`).
    pub fn kernel_submits(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
    }

    /// Pooled buffers waiting for reuse.
    pub fn pooled_buffers(&self) -> usize {
        self.pool.idle()
    }

    /// Drops the pooled buffers (scratch, uniform, staging) and the cached timestamp query
    /// sets, for a retired device; the buffer bytes released.
    pub(crate) fn release_pooled(&self) -> u64 {
        self.query_sets.locked().clear();
        self.pool.clear()
    }
}

/// Features hexec asks for when the adapter has them, with the names tasks use.
const WANTED: [(wgpu::Features, &str); 4] = [
    (wgpu::Features::SHADER_F16, "f16"),
    (wgpu::Features::SHADER_F64, "f64"),
    (wgpu::Features::SUBGROUP, "subgroups"),
    (wgpu::Features::TIMESTAMP_QUERY, "timestamp"),
];

/// Every compute-capable adapter, deduplicated, hardware ones first (software ones are listed
/// by `hexec info` with a note that they are not used by default).
pub fn adapters() -> Vec<AdapterSummary> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    unique_adapters(&instance)
        .iter()
        .map(|a| {
            let info = a.get_info();
            AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend).to_lowercase(),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                software: is_software(&info),
            }
        })
        .collect()
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

/// Compute-capable adapters, deduplicated by PCI bus id (or by name and device id when the
/// bus id is unknown), preferring Vulkan, Metal or DX12 over GL; hardware adapters first.
fn unique_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let mut unique: Vec<wgpu::Adapter> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for a in adapters {
        let info = a.get_info();
        if !a
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            tracing::debug!(adapter = %info.name, "skipping adapter without compute shaders");
            continue;
        }
        let key = if info.device_pci_bus_id.is_empty() {
            format!("{}:{:x}:{:x}", info.name, info.vendor, info.device)
        } else {
            info.device_pci_bus_id.clone()
        };
        match seen.get(&key) {
            // Prefer Vulkan, Metal or DX12 over GL for the same physical device.
            Some(&i) if rank(info.backend) < rank(unique[i].get_info().backend) => unique[i] = a,
            Some(_) => {}
            None => {
                seen.insert(key, unique.len());
                unique.push(a);
            }
        }
    }
    // Stable: hardware adapters keep their order, software ones go last.
    unique.sort_by_key(|a| is_software(&a.get_info()));
    unique
}

/// Finds compute-capable adapters and opens the requested devices. Software adapters
/// (CPU-type, such as Mesa's lavapipe) are used only when `software` is true: they run on
/// the cores the CPU workers use, so treating one as a GPU sends it work the CPU workers
/// would do faster. `host_memory` is used as the memory of CPU-type adapters, which allocate
/// from host memory.
pub fn discover(request: GpuRequest, software: bool, host_memory: u64) -> Result<Vec<GpuDevice>, GpuError> {
    discover_noting_software(request, software, host_memory).map(|(devices, _)| devices)
}

/// [`discover`], and the names of the software adapters found but not opened (for errors that
/// can then say how to ask for them).
pub(crate) fn discover_noting_software(
    request: GpuRequest,
    software: bool,
    host_memory: u64,
) -> Result<(Vec<GpuDevice>, Vec<String>), GpuError> {
    if request == GpuRequest::None {
        return Ok((Vec::new(), Vec::new()));
    }
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let all = unique_adapters(&instance);
    // Software adapters left out (none when they were asked for): errors name them.
    let unused: Vec<String> = all
        .iter()
        .filter(|a| !software && is_software(&a.get_info()))
        .map(|a| a.get_info().name)
        .collect();
    let unique: Vec<wgpu::Adapter> = all
        .into_iter()
        .filter(|a| software || !is_software(&a.get_info()))
        .collect();
    let count = match request {
        GpuRequest::All => unique.len(),
        GpuRequest::Count(n) => n,
        GpuRequest::None => 0,
    };
    if count == 0 {
        if !unused.is_empty() {
            tracing::info!(adapters = ?unused, "software GPU adapters found but not used (ask for them with {ASK_FOR_SOFTWARE_GPUS})");
        }
        return Ok((Vec::new(), unused));
    }
    if unique.is_empty() {
        return Err(GpuError::NoAdapter {
            asked: count,
            hint: if unused.is_empty() {
                String::new()
            } else {
                format!(
                    " (software adapters found: {}; they are used only when asked for, with {ASK_FOR_SOFTWARE_GPUS})",
                    unused.join(", ")
                )
            },
        });
    }
    // Extra devices on the same adapter need their own `Adapter` values: enumerate again.
    let mut pool: Vec<Vec<wgpu::Adapter>> = unique.into_iter().map(|a| vec![a]).collect();
    let keys: Vec<String> = pool.iter().map(|v| adapter_key(&v[0])).collect();
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let slot = i % pool.len();
        let adapter = match pool[slot].pop() {
            Some(a) => a,
            None => pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                .into_iter()
                .find(|a| adapter_key(a) == keys[slot])
                .ok_or_else(|| GpuError::RequestDevice {
                    device: keys[slot].clone(),
                    message: "the adapter disappeared while opening a second device on it".into(),
                })?,
        };
        devices.push(open(&adapter, i, slot, host_memory)?);
    }
    Ok((devices, unused))
}

fn adapter_key(a: &wgpu::Adapter) -> String {
    let i = a.get_info();
    format!(
        "{}:{:x}:{:x}:{}:{:?}",
        i.name, i.vendor, i.device, i.device_pci_bus_id, i.backend
    )
}

fn rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 2,
        _ => 1,
    }
}

fn open(adapter: &wgpu::Adapter, index: usize, adapter_index: usize, host_memory: u64) -> Result<GpuDevice, GpuError> {
    let info = adapter.get_info();
    let available = adapter.features();
    let mut features = wgpu::Features::empty();
    let mut names = Vec::new();
    for (f, name) in WANTED {
        if available.contains(f) {
            features |= f;
            names.push(name.to_string());
        }
    }
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some(&format!("hexec gpu{index}")),
        required_features: features,
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| GpuError::RequestDevice {
        device: info.name.clone(),
        message: e.to_string(),
    })?;
    let health = Arc::new(Health::default());
    let h = health.clone();
    device.set_device_lost_callback(move |reason, message| {
        h.mark_lost(format!("device lost ({reason:?}): {message}"));
    });
    let h = health.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        // Errors are captured by scopes around each submission; anything escaping them is
        // logged, never a panic (wgpu's default handler panics).
        tracing::error!(error = %e, "uncaptured GPU error");
        if matches!(e, wgpu::Error::OutOfMemory { .. }) {
            h.mark_lost(format!("out of memory outside any task: {e}"));
        }
    }));
    let memory_bytes = (info.device_type == wgpu::DeviceType::Cpu).then_some(host_memory);
    let desc = GpuDesc {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend).to_lowercase(),
        device_type: format!("{:?}", info.device_type),
        pci_bus_id: info.device_pci_bus_id.clone(),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        adapter_index,
        features: names,
        max_buffer_size: limits.max_buffer_size,
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
        memory_bytes,
        timestamp_period_ns: queue.get_timestamp_period(),
        numa_os_index: None,
    };
    let poller = Poller::start(device.clone(), format!("gpu{index}"), health.clone());
    Ok(GpuDevice {
        desc,
        device,
        queue,
        health,
        poller,
        pool: BufferPool::default(),
        pipelines: Pipelines::default(),
        query_sets: Mutex::default(),
        submits: Default::default(),
    })
}
