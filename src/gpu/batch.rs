//! Batched execution: the tasks a GPU worker takes together are encoded into one command
//! buffer each (each under its own error scopes, so an error names its task) and handed to
//! the queue in a single submit, with GPU timestamps around each kernel when the device has
//! timestamp queries. The worker stages the next batch while this one runs. A finished batch
//! gives each task's kernel span on the GPU's own clock, with the CPU times just before its
//! submission and when its completion was seen, from which traces date the spans.

use std::sync::mpsc;
use std::time::Instant;

use hexec_kernels::gpu::{pack_params, Binding, GpuDims};

use super::common::{BatchItem, Finished, GpuSpan, MAX_BATCH};
use super::device::GpuDevice;
use super::exec::{scoped, SUBMIT_LIMIT};
use crate::sync::MutexExt;

/// A submitted batch, until [`GpuDevice::finish_batch`].
pub(crate) struct InFlight {
    /// Per item: `Ok` if submitted, or why it was not.
    submitted: Vec<Result<(), String>>,
    /// See [`Finished::submitted_at`].
    submitted_at: Instant,
    /// Uniform and scratch buffers to return to the pool.
    held: Vec<wgpu::Buffer>,
    /// Query set and readback buffers, when timing.
    timing: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuDevice {
    fn timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Encodes and submits a batch (one `queue.submit`).
    pub(crate) fn submit_batch(&self, items: &[BatchItem<'_>]) -> InFlight {
        let mut out = InFlight {
            submitted: Vec::with_capacity(items.len()),
            held: Vec::new(),
            timing: None,
            submitted_at: Instant::now(),
        };
        if let Some(reason) = self.lost() {
            out.submitted = items
                .iter()
                .map(|_| Err(format!("{} is lost: {reason}", self.desc.name)))
                .collect();
            return out;
        }
        let queries = (2 * items.len()) as u32;
        let timing = self.timestamps().then(|| {
            let qs = self.pool_query_set();
            let resolve = self.pool.take(
                &self.device,
                u64::from(queries) * 8,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                "timestamps",
            );
            let readback = self.pool.take(
                &self.device,
                u64::from(queries) * 8,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                "timestamps readback",
            );
            (qs, resolve, readback)
        });
        let mut buffers = Vec::with_capacity(items.len() + 1);
        for (i, item) in items.iter().enumerate() {
            match self.encode(item, i as u32, timing.as_ref().map(|t| &t.0), &mut out.held) {
                Ok(cb) => {
                    buffers.push(cb);
                    out.submitted.push(Ok(()));
                }
                Err(e) => out.submitted.push(Err(format!(
                    "kernel '{}' failed on {}: {e}",
                    item.kernel, self.desc.name
                ))),
            }
        }
        if let Some((qs, resolve, readback)) = &timing {
            let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timestamps"),
            });
            enc.resolve_query_set(qs, 0..queries, resolve, 0);
            enc.copy_buffer_to_buffer(resolve, 0, readback, 0, Some(u64::from(queries) * 8));
            buffers.push(enc.finish());
        }
        self.submits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        out.submitted_at = Instant::now();
        if let Err(e) = scoped(&self.device, || {
            self.queue.submit(buffers);
        }) {
            for s in out.submitted.iter_mut().filter(|s| s.is_ok()) {
                *s = Err(format!("submission failed on {}: {e}", self.desc.name));
            }
        }
        out.timing = timing;
        out
    }

    fn encode(
        &self,
        item: &BatchItem<'_>,
        index: u32,
        qs: Option<&wgpu::QuerySet>,
        held: &mut Vec<wgpu::Buffer>,
    ) -> Result<wgpu::CommandBuffer, String> {
        let g = item
            .gpu_impl
            .for_device(self.device.features().contains(wgpu::Features::SUBGROUP));
        let lens: Vec<u64> = item.ops.iter().map(|o| o.elements).collect();
        let dims = GpuDims {
            lens: &lens,
            params: item.params,
        };
        (g.check)(&dims)?;
        let pipelines = g
            .passes
            .iter()
            .map(|p| self.pipeline(item.kernel, g, p, &item.ops))
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
        let last = g.passes.len().saturating_sub(1);
        let encoded = scoped(&self.device, || {
            let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(item.kernel),
            });
            for (p, (pass, (pipeline, layout))) in g.passes.iter().zip(&pipelines).enumerate() {
                let entries: Vec<wgpu::BindGroupEntry<'_>> = pass
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: match b {
                            Binding::Params => uniform.as_entire_binding(),
                            Binding::Operand(o) => item.ops[*o].buffer.0.as_entire_binding(),
                            Binding::Scratch(s) => scratch[*s].as_entire_binding(),
                        },
                    })
                    .collect();
                let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(item.kernel),
                    layout,
                    entries: &entries,
                });
                let timestamp_writes = qs.map(|query_set| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: (p == 0).then_some(2 * index),
                    end_of_pass_write_index: (p == last).then_some(2 * index + 1),
                });
                let [x, y, z] = (pass.grid)(&dims);
                let mut cpass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(item.kernel),
                    timestamp_writes,
                });
                cpass.set_pipeline(pipeline);
                cpass.set_bind_group(0, &bind, &[]);
                cpass.dispatch_workgroups(x, y, z);
            }
            encoder.finish()
        });
        held.push(uniform);
        held.extend(scratch);
        encoded
    }

    /// Waits for a batch; per item, the kernel's span on the GPU clock when timestamps were
    /// taken, or the error.
    pub(crate) fn finish_batch(&self, f: InFlight) -> Finished {
        let waited = if f.submitted.iter().any(Result::is_ok) {
            self.wait_idle().and_then(|()| match self.lost() {
                Some(reason) => Err(reason),
                None => Ok(()),
            })
        } else {
            Ok(())
        };
        let done_at = Instant::now();
        let times = match (&waited, &f.timing) {
            (Ok(()), Some((_, _, readback))) => self.read_timestamps(readback, f.submitted.len()),
            _ => None,
        };
        let results = f
            .submitted
            .into_iter()
            .enumerate()
            .map(|(i, s)| match (s, &waited) {
                (Err(e), _) => Err(e),
                (Ok(()), Err(e)) => Err(format!("kernel failed on {}: {e}", self.desc.name)),
                (Ok(()), Ok(())) => Ok(times.as_ref().and_then(|t| t.get(i).copied())),
            })
            .collect();
        f.held.into_iter().for_each(|b| self.pool.give(b));
        if let Some((qs, resolve, readback)) = f.timing {
            self.give_query_set(qs);
            self.pool.give(resolve);
            self.pool.give(readback);
        }
        Finished {
            results,
            submitted_at: f.submitted_at,
            done_at,
        }
    }

    fn read_timestamps(&self, readback: &wgpu::Buffer, items: usize) -> Option<Vec<GpuSpan>> {
        let bytes = (items * 16) as u64;
        let (tx, rx) = mpsc::channel();
        readback.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poller.wait(rx, &self.health, SUBMIT_LIMIT).ok()?.ok()?;
        let ticks: Vec<u64> = {
            let view = readback.slice(..bytes).get_mapped_range().ok()?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        readback.unmap();
        let period = f64::from(self.desc.timestamp_period_ns);
        // Exact below 2^53 ticks with a period of 1 ns (lavapipe, most Vulkan drivers); the
        // rounding is monotonic otherwise, so spans keep their order.
        let ns = |t: u64| (t as f64 * period) as u64;
        Some(
            ticks
                .chunks(2)
                .map(|c| GpuSpan {
                    start_ns: ns(c[0]),
                    end_ns: ns(c[1]).max(ns(c[0])),
                })
                .collect(),
        )
    }

    fn pool_query_set(&self) -> wgpu::QuerySet {
        if let Some(q) = self.query_sets.locked().pop() {
            return q;
        }
        self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: (2 * MAX_BATCH) as u32,
        })
    }

    fn give_query_set(&self, q: wgpu::QuerySet) {
        self.query_sets.locked().push(q);
    }
}
