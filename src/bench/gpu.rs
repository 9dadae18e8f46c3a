//! Per-device GPU figures: GEMM GFLOP/s at several sizes, the tiled Cholesky's GPU tile kernels
//! (the `C ← C − A·Bᵀ` update and the triangular solve) at tile sizes, elementwise and reduction
//! GB/s, host-to-device and device-to-host bandwidth and latency.
//!
//! Kernel figures use GPU timestamp queries when the device has them (kernel time only) and
//! also report wall time (submission to completion seen by the host). Each figure is the
//! median of the repetitions after one warm-up.

use super::median;
use std::time::Instant;

use serde::Serialize;

use crate::gpu::{BatchItem, GpuDevice, GpuOperand};
use crate::kernels::{builtin, Access};

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct GpuFigure {
    pub device: String,
    pub metric: String,
    /// The problem size (matrix side, elements, or bytes).
    pub size: u64,
    pub value: f64,
    pub unit: String,
    /// How the time was taken: `gpu timestamps` or `wall`.
    pub timing: String,
}

/// Runs one kernel `reps` times on device-resident operands; returns (kernel seconds from
/// timestamps if available, wall seconds), medians.
fn time_kernel(
    dev: &GpuDevice,
    kernel: &str,
    ops: &[(crate::gpu::GpuBuffer, u64, Access)],
    params: &[f64],
    reps: usize,
) -> Result<(Option<f64>, f64), String> {
    let k = match kernel {
        "gemm" => builtin::gemm(),
        "gemm_nt" => crate::kernels::linalg::gemm_nt(),
        "trsm" => crate::kernels::linalg::trsm(),
        "axpy" => builtin::axpy(),
        "sum" => builtin::sum(),
        other => return Err(format!("no benchmark for kernel '{other}'")),
    };
    let gpu_impl = k.gpu_impl().ok_or("kernel has no GPU implementation")?;
    let mut gpu_times = Vec::new();
    let mut wall_times = Vec::new();
    for rep in 0..=reps {
        let item = BatchItem {
            kernel,
            gpu_impl,
            ops: ops
                .iter()
                .map(|(b, n, a)| GpuOperand {
                    buffer: b.clone(),
                    elements: *n,
                    access: *a,
                })
                .collect(),
            params,
        };
        let t = Instant::now();
        let f = dev.submit_batch(std::slice::from_ref(&item));
        let r = dev.finish_batch(f).results.pop().ok_or("no result")??;
        if rep > 0 {
            wall_times.push(t.elapsed().as_secs_f64());
            if let Some(s) = r {
                gpu_times.push(s.seconds());
            }
        }
    }
    Ok(((!gpu_times.is_empty()).then(|| median(gpu_times)), median(wall_times)))
}

fn buffer(dev: &GpuDevice, floats: u64, fill: f32) -> Result<crate::gpu::GpuBuffer, String> {
    let b = dev.create_replica(floats * 4, "bench")?;
    dev.upload(&b, bytemuck::cast_slice(&vec![fill; floats as usize]))?;
    dev.wait_idle()?;
    Ok(b)
}

/// Measures every figure on one device. `quick` uses smaller sizes.
pub fn measure(dev: &GpuDevice, quick: bool, reps: usize) -> Result<Vec<GpuFigure>, String> {
    let name = format!("{} ({})", dev.desc.name, dev.desc.backend);
    let mut out = Vec::new();
    let mut push = |metric: &str, size: u64, value: f64, unit: &str, timing: &str| {
        out.push(GpuFigure {
            device: name.clone(),
            metric: metric.into(),
            size,
            value,
            unit: unit.into(),
            timing: timing.into(),
        })
    };
    let pick = |gpu: Option<f64>, wall: f64| match gpu {
        Some(g) if g > 0.0 => (g, "gpu timestamps"),
        _ => (wall, "wall"),
    };
    let max_floats = dev.desc.max_storage_binding / 4;
    let sides: &[u64] = if quick { &[128, 256] } else { &[256, 512, 1024, 2048] };
    for &n in sides {
        if n * n > max_floats {
            continue;
        }
        let (a, b, c) = (
            buffer(dev, n * n, 1.0)?,
            buffer(dev, n * n, 0.5)?,
            buffer(dev, n * n, 0.0)?,
        );
        let ops = [
            (a, n * n, Access::Read),
            (b, n * n, Access::Read),
            (c, n * n, Access::ReadWrite),
        ];
        let params = [n as f64, n as f64, n as f64, 1.0, 0.0];
        let (gpu, wall) = time_kernel(dev, "gemm", &ops, &params, reps)?;
        let (t, how) = pick(gpu, wall);
        push("gemm f32", n, 2.0 * (n as f64).powi(3) / t / 1e9, "GFLOP/s", how);
    }
    // The Cholesky's tile kernels on a GPU, at the tile sides the demo and the bench use.
    let tiles: &[u64] = if quick { &[128] } else { &[256, 512, 1024] };
    for &b in tiles {
        let (x, y, z) = (
            buffer(dev, b * b, 0.25)?,
            buffer(dev, b * b, 0.5)?,
            buffer(dev, b * b, 0.0)?,
        );
        let ops = [
            (x.clone(), b * b, Access::Read),
            (y, b * b, Access::Read),
            (z.clone(), b * b, Access::ReadWrite),
        ];
        let (gpu, wall) = time_kernel(dev, "gemm_nt", &ops, &[], reps)?;
        let (t, how) = pick(gpu, wall);
        push(
            "tile update C−A·Bᵀ f32",
            b,
            2.0 * (b as f64).powi(3) / t / 1e9,
            "GFLOP/s",
            how,
        );
        // L = the identity (only its diagonal and lower triangle are read), so that the
        // repeated solves stay finite.
        let mut l = vec![0f32; (b * b) as usize];
        for i in 0..b as usize {
            l[i * b as usize + i] = 1.0;
        }
        dev.upload(&x, bytemuck::cast_slice(&l))?;
        dev.wait_idle()?;
        let ops = [(x, b * b, Access::Read), (z, b * b, Access::ReadWrite)];
        let (gpu, wall) = time_kernel(dev, "trsm", &ops, &[], reps)?;
        let (t, how) = pick(gpu, wall);
        push("tile solve X·L⁻ᵀ f32", b, (b as f64).powi(3) / t / 1e9, "GFLOP/s", how);
    }
    let elems = (if quick { 1u64 << 20 } else { 1u64 << 24 }).min(max_floats);
    let (x, y) = (buffer(dev, elems, 1.0)?, buffer(dev, elems, 2.0)?);
    let ops = [(x.clone(), elems, Access::Read), (y, elems, Access::ReadWrite)];
    let (gpu, wall) = time_kernel(dev, "axpy", &ops, &[0.5], reps)?;
    let (t, how) = pick(gpu, wall);
    push("axpy (elementwise)", elems, 12.0 * elems as f64 / t / 1e9, "GB/s", how);
    let s = buffer(dev, 1, 0.0)?;
    let ops = [(x, elems, Access::Read), (s, 1, Access::Write)];
    let (gpu, wall) = time_kernel(dev, "sum", &ops, &[], reps)?;
    let (t, how) = pick(gpu, wall);
    push("sum (reduction)", elems, 4.0 * elems as f64 / t / 1e9, "GB/s", how);

    for (bytes, what) in [(4u64, "latency"), (elems * 4, "bandwidth")] {
        let dst = dev.create_replica(bytes, "bench")?;
        let host = vec![1u8; bytes as usize];
        let mut back = vec![0u8; bytes as usize];
        let mut up = Vec::new();
        let mut down = Vec::new();
        for rep in 0..=reps {
            let t = Instant::now();
            dev.upload(&dst, &host)?;
            dev.flush_uploads();
            dev.wait_idle()?;
            let u = t.elapsed().as_secs_f64();
            let t = Instant::now();
            dev.download(&dst, &mut back)?;
            let d = t.elapsed().as_secs_f64();
            if rep > 0 {
                up.push(u);
                down.push(d);
            }
        }
        let (u, d) = (median(up), median(down));
        if what == "latency" {
            push("host→device latency", bytes, u * 1e6, "µs", "wall");
            push("device→host latency", bytes, d * 1e6, "µs", "wall");
        } else {
            push("host→device bandwidth", bytes, bytes as f64 / u / 1e9, "GB/s", "wall");
            push("device→host bandwidth", bytes, bytes as f64 / d / 1e9, "GB/s", "wall");
        }
    }
    Ok(out)
}

/// The host↔GPU links the figures measured, as (from, to, bytes/s, latency s), slowest device
/// first when several were measured.
pub fn links(figures: &[GpuFigure]) -> Vec<(&'static str, &'static str, f64, f64)> {
    let find = |metric: &str, pick: fn(f64, f64) -> f64| {
        figures
            .iter()
            .filter(|f| f.metric == metric)
            .map(|f| f.value)
            .reduce(pick)
    };
    let mut out = Vec::new();
    for (from, to, bw, lat) in [
        ("host", "gpu", "host→device bandwidth", "host→device latency"),
        ("gpu", "host", "device→host bandwidth", "device→host latency"),
    ] {
        if let (Some(b), Some(l)) = (find(bw, f64::min), find(lat, f64::max)) {
            out.push((from, to, b * 1e9, l * 1e-6));
        }
    }
    out
}

/// Formats figures as a Markdown table.
pub fn markdown(figures: &[GpuFigure]) -> String {
    let mut s = String::from("| device | metric | size | value | timing |\n|---|---|---:|---:|---|\n");
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} {} | {} |\n",
            f.device, f.metric, f.size, f.value, f.unit, f.timing
        ));
    }
    s
}
