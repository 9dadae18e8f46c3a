//! The CPU tile kernels' speed beside optimised references measured in the same run, behind
//! `hexec bench kernels`.
//!
//! Each built-in tile kernel (`gemm`, `gemm_nt`, `syrk`, `trsm`, `potrf`) is called as a task
//! calls it — through its [`Kernel`]'s CPU function and a [`CpuContext`] over row-major
//! tiles — on one thread, at tile sides 64 to 1024. The references run the same operation on
//! the same thread: faer's own routine on column-major matrices (its natural layout), and,
//! when `python3` with numpy is installed, numpy's BLAS (OpenBLAS on Debian) for GEMM,
//! limited to one thread. Figures move with the machine: compare only within one run.
//!
//! Floating-point operations counted: `2b³` for `gemm`, `gemm_nt` and `syrk` (the built-in
//! `syrk` updates the whole tile, as its GPU version does), `b³` for `trsm`, `b³/3` for
//! `potrf`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use faer::{Accum, Mat, Par};
use hexec_kernels::{builtin, linalg, Access, CpuContext, ElemType, Kernel, RawOperand};
use serde::Serialize;

use crate::graph::formats::cholesky::matrix_entry;

/// One kernel at one tile side.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub tile: usize,
    /// The built-in kernel, called as a task calls it.
    pub hexec_gflops: f64,
    /// faer's routine for the same operation on column-major matrices.
    pub faer_gflops: f64,
    /// numpy's BLAS (OpenBLAS on Debian, one thread), GEMM only, when numpy is installed.
    pub blas_gflops: Option<f64>,
    /// `hexec_gflops / faer_gflops`.
    pub ratio: f64,
}

/// What was measured, and what could not be.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub rows: Vec<KernelRow>,
    /// Lines saying what was skipped and why (e.g. no numpy).
    pub skipped: Vec<String>,
}

/// The tile sides measured by default.
pub const TILES: [usize; 5] = [64, 128, 256, 512, 1024];

/// Measures every tile kernel at each side in `tiles`, `reps` timed calls each (the median
/// is reported; each call is repeated for at least 20 ms).
pub fn measure(tiles: &[usize], reps: usize) -> Result<KernelReport, String> {
    if let Some(&b) = tiles.iter().find(|&&b| b == 0 || b > 4096) {
        return Err(format!("tile side {b} is out of range (1 to 4096)"));
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let blas = match numpy_gemm(tiles, reps) {
        Ok(v) => Some(v),
        Err(why) => {
            skipped.push(format!("skipped: numpy BLAS reference: {why}"));
            None
        }
    };
    let (gemm, gemm_nt, syrk, trsm, potrf) = (
        builtin::gemm(),
        linalg::gemm_nt(),
        linalg::syrk(),
        linalg::trsm(),
        linalg::potrf(),
    );
    for (ti, &b) in tiles.iter().enumerate() {
        let n3 = (b as f64).powi(3);
        let spd = spd(b);
        let a = values(b * b, 1);
        let c0 = values(b * b, 2);
        let mut l = spd.clone();
        linalg::potrf_cpu(&mut l, b)?;
        let cases: [(&str, f64); 5] = [
            ("gemm", 2.0 * n3),
            ("gemm_nt", 2.0 * n3),
            ("syrk", 2.0 * n3),
            ("trsm", n3),
            ("potrf", n3 / 3.0),
        ];
        for (name, flops) in cases {
            let mut c = c0.clone();
            let mut t = spd.clone();
            let params = [b as f64, b as f64, b as f64, 1.0, 0.0];
            let ours: Call<'_> = match name {
                "gemm" => Box::new(|| call(&gemm, &[&a, &a], &mut c, &params)),
                "gemm_nt" => Box::new(|| call(&gemm_nt, &[&a, &a], &mut c, &[])),
                "syrk" => Box::new(|| call(&syrk, &[&a], &mut c, &[])),
                "trsm" => Box::new(|| call(&trsm, &[&l], &mut c, &[])),
                // Each call factors a fresh copy: the copy is b² of b³/3 work.
                _ => Box::new(|| {
                    t.copy_from_slice(&spd);
                    call(&potrf, &[], &mut t, &[])
                }),
            };
            let (ours, reference, ratio) = time_pair(reps, ours, faer_reference(name, b)?)?;
            rows.push(KernelRow {
                kernel: name.to_string(),
                tile: b,
                hexec_gflops: flops / ours.as_secs_f64() / 1e9,
                faer_gflops: flops / reference.as_secs_f64() / 1e9,
                blas_gflops: (name == "gemm")
                    .then(|| blas.as_ref().map(|v| flops / v[ti] / 1e9))
                    .flatten(),
                ratio,
            });
        }
    }
    Ok(KernelReport { rows, skipped })
}

/// Calls `kernel` as a task does: `inputs` read, `out` read-written, row-major f32 tiles.
fn call(kernel: &Arc<Kernel>, inputs: &[&Vec<f32>], out: &mut [f32], params: &[f64]) -> Result<(), String> {
    let mut ops: Vec<RawOperand<'_>> = inputs
        .iter()
        .map(|v| {
            // SAFETY: `v` is a live Vec<f32> (4-byte aligned: the kernels view it only as f32)
            // that nothing writes while the operands are used (this call); read access only.
            unsafe { RawOperand::new(v.as_ptr() as *mut u8, v.len() * 4, ElemType::F32, Access::Read) }
        })
        .collect();
    // SAFETY: `out` is exclusively borrowed for this call and distinct from every input.
    ops.push(unsafe {
        RawOperand::new(
            out.as_mut_ptr() as *mut u8,
            out.len() * 4,
            ElemType::F32,
            Access::ReadWrite,
        )
    });
    let ctx = CpuContext::new(&mut ops, params, 1);
    let f = kernel
        .cpu_impl()
        .ok_or_else(|| format!("kernel {} has no CPU implementation", kernel.name()))?;
    f(&ctx).map_err(|e| format!("kernel {}: {e}", kernel.name()))
}

type Call<'a> = Box<dyn FnMut() -> Result<(), String> + 'a>;

/// faer's own routine for kernel `name` on column-major `b`×`b` matrices.
fn faer_reference(name: &str, b: usize) -> Result<Call<'static>, String> {
    use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
    let a = Mat::<f32>::from_fn(b, b, |i, j| ((i * 7 + j * 3) % 11) as f32 / 11.0 - 0.5);
    let mut c = Mat::<f32>::from_fn(b, b, |i, j| ((i + j) % 5) as f32);
    let spd = Mat::<f32>::from_fn(b, b, |i, j| matrix_entry(i, j, b));
    Ok(match name {
        "gemm" => Box::new(move || {
            faer::linalg::matmul::matmul(c.as_mut(), Accum::Replace, a.as_ref(), a.as_ref(), 1.0, Par::Seq);
            Ok(())
        }),
        "gemm_nt" | "syrk" => Box::new(move || {
            faer::linalg::matmul::matmul(c.as_mut(), Accum::Add, a.as_ref(), a.transpose(), -1.0, Par::Seq);
            Ok(())
        }),
        "trsm" => {
            let l = spd.llt(faer::Side::Lower).map_err(|e| format!("{e:?}"))?.L().to_owned();
            Box::new(move || {
                faer::linalg::triangular_solve::solve_lower_triangular_in_place(l.as_ref(), c.as_mut(), Par::Seq);
                Ok(())
            })
        }
        _ => {
            let mut t = spd.clone();
            let params = Default::default();
            let mut buf = faer::dyn_stack::MemBuffer::new(cholesky_in_place_scratch::<f32>(b, Par::Seq, params));
            Box::new(move || {
                t.copy_from(&spd);
                cholesky_in_place(
                    t.as_mut(),
                    Default::default(),
                    Par::Seq,
                    faer::dyn_stack::MemStack::new(&mut buf),
                    params,
                )
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
            })
        }
    })
}

/// Times `ours` and `reference` in turns, `reps` times each: the median time of one call of
/// each, and the median of the per-turn ratios `reference / ours` (taking turns makes the
/// ratio robust to whatever else the machine does meanwhile).
fn time_pair(reps: usize, mut ours: Call<'_>, mut reference: Call<'_>) -> Result<(Duration, Duration, f64), String> {
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    ours()?; // warm up: first-touch pages, faer's dispatch
    reference()?;
    for _ in 0..reps.max(1) {
        let x = time_one(&mut ours)?;
        let y = time_one(&mut reference)?;
        ratios.push(y.as_secs_f64() / x.as_secs_f64());
        a.push(x);
        b.push(y);
    }
    a.sort();
    b.sort();
    ratios.sort_by(f64::total_cmp);
    Ok((a[a.len() / 2], b[b.len() / 2], ratios[ratios.len() / 2]))
}

/// The time of one call of `f`, repeated until 20 ms have passed (so that a 64² tile is not
/// timed by one 10 µs call).
fn time_one(f: &mut Call<'_>) -> Result<Duration, String> {
    let start = Instant::now();
    let mut calls = 0u32;
    while calls == 0 || start.elapsed() < Duration::from_millis(20) {
        f()?;
        calls += 1;
    }
    Ok(start.elapsed() / calls)
}

/// Seconds per `b`×`b` f32 GEMM through numpy at each side, one BLAS thread.
fn numpy_gemm(tiles: &[usize], reps: usize) -> Result<Vec<f64>, String> {
    let script = format!(
        "import time, numpy as np\n\
         for b in {tiles:?}:\n\
         \x20   a = np.random.rand(b, b).astype(np.float32); c = np.empty((b, b), np.float32)\n\
         \x20   np.matmul(a, a, out=c)\n\
         \x20   best = []\n\
         \x20   for _ in range({reps}):\n\
         \x20       n = 0; t = time.perf_counter()\n\
         \x20       while n == 0 or time.perf_counter() - t < 2e-2:\n\
         \x20           np.matmul(a, a, out=c); n += 1\n\
         \x20       best.append((time.perf_counter() - t) / n)\n\
         \x20   best.sort(); print(best[len(best) // 2])\n",
        reps = reps.max(1)
    );
    // The first Python with numpy: a pyenv or venv `python3` ahead on the PATH may lack the
    // system's numpy (python3-numpy with OpenBLAS on Debian).
    let mut why = "python3 not found".to_string();
    let mut found = None;
    for python in ["python3", "/usr/bin/python3"] {
        let run = std::process::Command::new(python)
            .arg("-c")
            .arg(&script)
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .output();
        match run {
            Ok(out) if out.status.success() => {
                found = Some(out);
                break;
            }
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                why = if err.contains("No module named 'numpy'") {
                    "numpy is not installed (apt-get install python3-numpy libopenblas0)".to_string()
                } else {
                    err.lines().last().unwrap_or("python3 failed").to_string()
                };
            }
            Err(_) => {}
        }
    }
    let out = found.ok_or(why)?;
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>().map_err(|e| format!("numpy printed '{l}': {e}")))
        .collect::<Result<_, _>>()?;
    if v.len() != tiles.len() {
        return Err(format!("numpy printed {} figures for {} sizes", v.len(), tiles.len()));
    }
    Ok(v)
}

/// The symmetric, diagonally dominant `b`×`b` row-major matrix [`matrix_entry`].
fn spd(b: usize) -> Vec<f32> {
    (0..b * b).map(|k| matrix_entry(k / b, k % b, b)).collect()
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + seed * 13) % 11) as f32 / 11.0 - 0.5).collect()
}

/// The rows as a markdown table.
pub fn markdown(report: &KernelReport) -> String {
    let mut s = String::from(
        "| kernel | tile | hexec GFLOP/s | faer GFLOP/s | numpy BLAS GFLOP/s | hexec / faer |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &report.rows {
        s += &format!(
            "| {} | {} | {:.1} | {:.1} | {} | {:.0}% |\n",
            r.kernel,
            r.tile,
            r.hexec_gflops,
            r.faer_gflops,
            r.blas_gflops.map_or("-".to_string(), |v| format!("{v:.1}")),
            100.0 * r.ratio
        );
    }
    for line in &report.skipped {
        s += line;
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_measured_at_a_small_size() {
        let r = measure(&[16], 1).unwrap();
        let names: Vec<&str> = r.rows.iter().map(|r| r.kernel.as_str()).collect();
        assert_eq!(names, ["gemm", "gemm_nt", "syrk", "trsm", "potrf"]);
        assert!(r.rows.iter().all(|r| r.hexec_gflops > 0.0 && r.faer_gflops > 0.0));
        assert!(measure(&[0], 1).is_err());
    }
}
