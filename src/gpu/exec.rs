//! Running kernels on a device: cached shader modules and pipelines, pooled uniform and
//! scratch buffers, error scopes around every submission, uploads and downloads.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use hexec_kernels::gpu::{Binding, GpuImpl, GpuPass};

use super::common::{GpuOperand, OUT_OF_GPU_MEMORY};
use super::device::GpuDevice;
use crate::sync::MutexExt;

/// The longest hexec waits for one submission before calling it stuck.
pub(crate) const SUBMIT_LIMIT: Duration = Duration::from_secs(600);

/// A buffer on a GPU (a datum's replica) as the rest of the crate holds it: wgpu's type
/// stays inside `gpu/` (ARCHITECTURE.md, Layers), so a wgpu upgrade touches this module only.
/// A clone shares the buffer (wgpu buffers are reference-counted).
#[derive(Clone, Debug)]
pub struct GpuBuffer(pub(super) wgpu::Buffer);

type PipelineKey = (Arc<str>, String, Vec<bool>);

/// Compiled modules and pipelines of one device, kept across tasks and runs.
#[derive(Default)]
pub(crate) struct Pipelines {
    modules: Mutex<HashMap<Arc<str>, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
    /// Sources that passed [`GpuDevice::check_code`].
    checked: Mutex<std::collections::HashSet<Arc<str>>>,
}

impl Pipelines {
    /// Number of cached pipelines.
    pub fn len(&self) -> usize {
        self.pipelines.locked().len()
    }
}

pub(crate) fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T, String> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let m = pollster::block_on(oom.pop());
    match v.or(m) {
        Some(wgpu::Error::OutOfMemory { .. }) => Err(OUT_OF_GPU_MEMORY.to_string()),
        Some(e) => Err(e.to_string()),
        None => Ok(out),
    }
}

impl GpuDevice {
    /// `source` compiled for this device, once (kept for later tasks and runs).
    fn module(&self, kernel: &str, source: &Arc<str>) -> Result<wgpu::ShaderModule, String> {
        let mut modules = self.pipelines.modules.locked();
        if let Some(m) = modules.get(source) {
            return Ok(m.clone());
        }
        let m = scoped(&self.device, || {
            self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel),
                source: wgpu::ShaderSource::Wgsl(source.to_string().into()),
            })
        })
        .map_err(|e| format!("does not compile on {}: {e}", self.desc.name))?;
        modules.insert(source.clone(), m.clone());
        Ok(m)
    }

    /// Checks that kernel `kernel`'s GPU code compiles for this device and has the entry
    /// point of each of its passes: the submit-time check, so that code that cannot run is
    /// refused with the compiler's message before anything runs, instead of failing every
    /// task that tries it. Cached: a source is compiled once per device.
    pub(crate) fn check_code(&self, kernel: &str, g: &GpuImpl) -> Result<(), String> {
        let g = g.for_device(self.desc.features.iter().any(|f| f == "subgroups"));
        if self.pipelines.checked.locked().contains(&g.source) {
            return Ok(());
        }
        // The parser's own message says where and what; wgpu's validation error only says
        // that parsing failed.
        let parsed = wgpu::naga::front::wgsl::parse_str(&g.source).map_err(|e| {
            format!(
                "does not compile on {}: {}",
                self.desc.name,
                e.emit_to_string(&g.source)
            )
        })?;
        for pass in &g.passes {
            if !parsed.entry_points.iter().any(|e| e.name == pass.entry) {
                let known: Vec<&str> = parsed.entry_points.iter().map(|e| e.name.as_str()).collect();
                return Err(format!(
                    "has no entry point '{}' (the shader has: {})",
                    pass.entry,
                    known.join(", ")
                ));
            }
        }
        self.module(kernel, &g.source)?;
        self.pipelines.checked.locked().insert(g.source.clone());
        Ok(())
    }

    pub(crate) fn pipeline(
        &self,
        kernel: &str,
        g: &GpuImpl,
        pass: &GpuPass,
        ops: &[GpuOperand],
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout), String> {
        let read_write: Vec<bool> = pass
            .bindings
            .iter()
            .map(|b| match b {
                Binding::Params => false,
                Binding::Operand(i) => ops.get(*i).is_some_and(|o| o.access.writes()),
                Binding::Scratch(_) => true,
            })
            .collect();
        let key = (g.source.clone(), pass.entry.clone(), read_write.clone());
        if let Some(p) = self.pipelines.pipelines.locked().get(&key) {
            return Ok(p.clone());
        }
        let module = self
            .module(kernel, &g.source)
            .map_err(|e| format!("shader of kernel '{kernel}' {e}"))?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = pass
            .bindings
            .iter()
            .zip(&read_write)
            .enumerate()
            .map(|(i, (b, &rw))| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Params => wgpu::BufferBindingType::Uniform,
                        _ => wgpu::BufferBindingType::Storage { read_only: !rw },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let built = scoped(&self.device, || {
            let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(kernel),
                entries: &entries,
            });
            let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(&pass.entry),
                compilation_options: Default::default(),
                cache: None,
            });
            (pipeline, layout)
        })
        .map_err(|e| {
            format!(
                "pipeline '{}' of kernel '{kernel}' is invalid on {}: {e}",
                pass.entry, self.desc.name
            )
        })?;
        self.pipelines.pipelines.locked().insert(key, built.clone());
        Ok(built)
    }

    /// Waits until everything submitted so far has finished.
    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poller.wait(rx, &self.health, SUBMIT_LIMIT)
    }

    /// Submits the uploads queued so far now, instead of with the next kernel or download
    /// (the transfer benchmark's latency figures).
    #[cfg(feature = "bench")]
    pub(crate) fn flush_uploads(&self) {
        self.queue.submit([]);
    }

    /// Copies host bytes into a device buffer (padded to 4 bytes), queued before the next submit.
    pub(crate) fn upload(&self, dst: &GpuBuffer, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        // Queued, not waited for: the queue applies it before any later submission, which is
        // every use of `dst` (kernels on this device, downloads from it).
        scoped(&self.device, || {
            if bytes.len() % 4 == 0 {
                self.queue.write_buffer(&dst.0, 0, bytes);
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().next_multiple_of(4), 0);
                self.queue.write_buffer(&dst.0, 0, &padded);
            }
        })
    }

    /// Copies the first `dst.len()` bytes of a device buffer to the host.
    pub(crate) fn download(&self, src: &GpuBuffer, dst: &mut [u8]) -> Result<(), String> {
        if dst.is_empty() {
            return Ok(());
        }
        if let Some(reason) = self.lost() {
            return Err(format!("{} is lost: {reason}", self.desc.name));
        }
        let size = (dst.len() as u64).next_multiple_of(4);
        let staging = self.pool.take(
            &self.device,
            size,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "staging",
        );
        let result = scoped(&self.device, || {
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("download"),
            });
            encoder.copy_buffer_to_buffer(&src.0, 0, &staging, 0, Some(size));
            self.queue.submit([encoder.finish()]);
        })
        .and_then(|()| {
            let (tx, rx) = mpsc::channel();
            staging.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.poller
                .wait(rx, &self.health, SUBMIT_LIMIT)?
                .map_err(|e| e.to_string())
        })
        .and_then(|()| {
            let view = staging.slice(..size).get_mapped_range().map_err(|e| e.to_string())?;
            dst.copy_from_slice(&view[..dst.len()]);
            drop(view);
            staging.unmap();
            Ok(())
        });
        self.pool.give(staging);
        result
    }

    /// A device buffer able to hold `bytes` bytes of data (at least 4), for a datum's replica.
    pub(crate) fn create_replica(&self, bytes: u64, label: &str) -> Result<GpuBuffer, String> {
        if bytes > self.desc.max_buffer_size {
            return Err(format!(
                "{bytes} bytes exceed {}'s largest buffer ({} bytes)",
                self.desc.name, self.desc.max_buffer_size
            ));
        }
        scoped(&self.device, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
        .map(GpuBuffer)
        .map_err(|e| format!("cannot allocate {bytes} bytes on {}: {e}", self.desc.name))
    }
}
