//! Running kernels on a device: cached shader modules and pipelines, pooled uniform and
//! scratch buffers, error scopes around every submission, uploads and downloads.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use hexec_kernels::gpu::{pack_params, Binding, GpuDims, GpuImpl, GpuPass};
use hexec_kernels::Access;

use super::device::GpuDevice;

/// The longest hexec waits for one submission before calling it stuck.
const SUBMIT_LIMIT: Duration = Duration::from_secs(600);

/// An operand as a dispatch binds it.
pub(crate) struct GpuOperand<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub elements: u64,
    pub access: Access,
}

type PipelineKey = (Arc<str>, String, Vec<bool>);

/// Compiled modules and pipelines of one device, kept across tasks and runs.
#[derive(Default)]
pub(crate) struct Pipelines {
    modules: Mutex<HashMap<Arc<str>, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>>,
}

impl Pipelines {
    /// Number of cached pipelines.
    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T, String> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let m = pollster::block_on(oom.pop());
    match v.or(m) {
        Some(wgpu::Error::OutOfMemory { .. }) => Err("out of GPU memory".to_string()),
        Some(e) => Err(e.to_string()),
        None => Ok(out),
    }
}

impl GpuDevice {
    fn pipeline(
        &self,
        kernel: &str,
        g: &GpuImpl,
        pass: &GpuPass,
        ops: &[GpuOperand<'_>],
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
        if let Some(p) = self
            .pipelines
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = {
            let mut modules = self.pipelines.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(&g.source) {
                Some(m) => m.clone(),
                None => {
                    let m = scoped(&self.device, || {
                        self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(kernel),
                            source: wgpu::ShaderSource::Wgsl(g.source.to_string().into()),
                        })
                    })
                    .map_err(|e| {
                        format!(
                            "shader of kernel '{kernel}' does not compile on {}: {e}",
                            self.desc.name
                        )
                    })?;
                    modules.insert(g.source.clone(), m.clone());
                    m
                }
            }
        };
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
        self.pipelines
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, built.clone());
        Ok(built)
    }

    /// Runs one kernel: binds operands (already valid on this device), dispatches every pass
    /// in one submission, and waits for it. Errors name the kernel and the device.
    pub(crate) fn dispatch(
        &self,
        kernel: &str,
        g: &GpuImpl,
        ops: &[GpuOperand<'_>],
        params: &[f64],
    ) -> Result<(), String> {
        if let Some(reason) = self.lost() {
            return Err(format!("{} is lost: {reason}", self.desc.name));
        }
        let lens: Vec<u64> = ops.iter().map(|o| o.elements).collect();
        let dims = GpuDims { lens: &lens, params };
        (g.check)(&dims)?;
        let pipelines = g
            .passes
            .iter()
            .map(|p| self.pipeline(kernel, g, p, ops))
            .collect::<Result<Vec<_>, _>>()?;
        let uniform = self.pool.take(
            &self.device,
            64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            "params",
        );
        self.queue.write_buffer(&uniform, 0, &pack_params(&dims));
        let scratch: Vec<wgpu::Buffer> = (g.scratch)(&dims)
            .into_iter()
            .map(|bytes| {
                self.pool
                    .take(&self.device, bytes.max(4), wgpu::BufferUsages::STORAGE, "scratch")
            })
            .collect();
        let submitted = scoped(&self.device, || {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(kernel) });
            for (pass, (pipeline, layout)) in g.passes.iter().zip(&pipelines) {
                let entries: Vec<wgpu::BindGroupEntry<'_>> = pass
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: match b {
                            Binding::Params => uniform.as_entire_binding(),
                            Binding::Operand(o) => ops[*o].buffer.as_entire_binding(),
                            Binding::Scratch(s) => scratch[*s].as_entire_binding(),
                        },
                    })
                    .collect();
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel),
                    layout,
                    entries: &entries,
                });
                let [x, y, z] = (pass.grid)(&dims);
                let mut cpass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(kernel),
                    timestamp_writes: None,
                });
                cpass.set_pipeline(pipeline);
                cpass.set_bind_group(0, &bind, &[]);
                cpass.dispatch_workgroups(x, y, z);
            }
            self.queue.submit([encoder.finish()]);
        });
        let waited = submitted
            .and_then(|()| self.wait_idle())
            .and_then(|()| match self.lost() {
                Some(reason) => Err(reason),
                None => Ok(()),
            });
        self.pool.give(uniform);
        scratch.into_iter().for_each(|b| self.pool.give(b));
        waited.map_err(|e| format!("kernel '{kernel}' failed on {}: {e}", self.desc.name))
    }

    /// Waits until everything submitted so far has finished.
    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poller.wait(rx, &self.health, SUBMIT_LIMIT)
    }

    /// Copies host bytes into a device buffer (padded to 4 bytes) and waits for it.
    pub(crate) fn upload(&self, dst: &wgpu::Buffer, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        scoped(&self.device, || {
            if bytes.len() % 4 == 0 {
                self.queue.write_buffer(dst, 0, bytes);
            } else {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().next_multiple_of(4), 0);
                self.queue.write_buffer(dst, 0, &padded);
            }
            self.queue.submit([]);
        })?;
        self.wait_idle()
    }

    /// Copies the first `dst.len()` bytes of a device buffer to the host.
    pub(crate) fn download(&self, src: &wgpu::Buffer, dst: &mut [u8]) -> Result<(), String> {
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
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, Some(size));
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
    pub(crate) fn create_replica(&self, bytes: u64, label: &str) -> Result<wgpu::Buffer, String> {
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
        .map_err(|e| format!("cannot allocate {bytes} bytes on {}: {e}", self.desc.name))
    }
}
