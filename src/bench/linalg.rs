//! Tiled linear algebra on the runtime against dense libraries on the same cores, in the same
//! run, behind `hexec bench linalg`.
//!
//! Rows: Cholesky (`A = L·Lᵀ`, `n³/3` flops) and GEMM (`C = A·B`, `2n³` flops), in `f32` and
//! `f64`, for each size. Columns, each the median of `reps` timed runs taken in turns (so that
//! a noisy neighbour hurts them alike):
//! - hexec: [`crate::array`] on a runtime over every core and the GPUs `--gpus` asks for
//!   (all by default; `scripts/bench-linalg.sh` passes `--gpus none` for the CPU table), the matrix
//!   already in tiles, timed from the call to the last tile's completion
//!   ([`Matrix::into_cholesky`], [`Matrix::matmul`]);
//! - faer: its dense routine on a column-major matrix, parallel over the same cores (rayon);
//! - SciPy/OpenBLAS: `scipy.linalg.cholesky` (LAPACK `potrf`) and `numpy.matmul` (BLAS
//!   `gemm`) in a Python interpreter given with `--python` (`scripts/bench-linalg.sh` makes a
//!   virtual environment with both from PyPI), OpenBLAS on every core;
//! - StarPU 1.3: `cholesky_implicit` of Debian's `starpu-examples` with OpenBLAS, `dmdas`
//!   scheduler, the same tile size, one OpenBLAS thread per StarPU worker; `f32` Cholesky
//!   only (the example is single precision).
//!   A first run calibrates its performance models and is not counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use faer::{Mat, Par};
use serde::Serialize;

use super::{median, Skipped};
use crate::array::Matrix;
use crate::kernels::Scalar;
use crate::runtime::Runtime;
use crate::topology::DeviceKind;

/// What to measure.
#[derive(Clone, Debug)]
pub struct LinalgConfig {
    /// Matrix sizes.
    pub sizes: Vec<usize>,
    /// Tile size (the same for StarPU's blocks, which must divide the size); `None`:
    /// [`crate::array::default_tile`] of each type.
    pub tile: Option<usize>,
    /// Timed runs per column (the median is reported).
    pub reps: usize,
    /// Operations: `cholesky`, `gemm`.
    pub ops: Vec<String>,
    /// Element types: `f32`, `f64`.
    pub types: Vec<String>,
    /// The Python with numpy and SciPy, if any.
    pub python: Option<PathBuf>,
}

/// One operation, type and size.
#[derive(Clone, Debug, Serialize)]
pub struct LinalgRow {
    pub op: String,
    pub elem: String,
    pub n: usize,
    pub tile: usize,
    pub hexec_gflops: f64,
    pub faer_gflops: f64,
    pub scipy_gflops: Option<f64>,
    pub starpu_gflops: Option<f64>,
    /// Tasks hexec ran for one operation.
    pub tasks: usize,
}

/// The table and what could not be measured.
#[derive(Clone, Debug, Serialize)]
pub struct LinalgReport {
    pub cpus: usize,
    /// The GPUs the hexec column also ran on (names); the other columns run on CPUs only.
    pub gpus: Vec<String>,
    pub rows: Vec<LinalgRow>,
    pub skipped: Vec<Skipped>,
}

/// StarPU's tiled Cholesky example, where Debian's `starpu-examples` put it.
pub const STARPU_CHOLESKY: &str = "/usr/lib/x86_64-linux-gnu/starpu/examples/cholesky_implicit";

/// Flops of one operation.
fn flops(op: &str, n: usize) -> f64 {
    let n = n as f64;
    if op == "cholesky" {
        n * n * n / 3.0
    } else {
        2.0 * n * n * n
    }
}

/// The demo's symmetric positive definite matrix.
use crate::demo::solve::entry as spd_entry;

/// Seconds of one hexec run of `op` on `n`×`n` in tiles of `tile`, and its task count.
fn hexec_once<T: Scalar>(rt: &Runtime, op: &str, n: usize, tile: usize) -> Result<(f64, usize), String> {
    let err = |e: crate::array::ArrayError| e.to_string();
    let a = Matrix::<T>::from_fn(rt, "A", n, n, tile, |i, j| T::from_f64(spd_entry(i, j, n))).map_err(err)?;
    rt.wait_all().map_err(|e| e.to_string())?;
    let nt = n.div_ceil(tile);
    if op == "cholesky" {
        let start = Instant::now();
        let l = a.into_cholesky().map_err(err)?;
        l.factor().wait().map_err(err)?;
        let tasks = nt + nt * (nt - 1) / 2 + nt * (nt - 1) * (nt + 1) / 6;
        Ok((start.elapsed().as_secs_f64(), tasks))
    } else {
        let b = Matrix::<T>::from_fn(rt, "B", n, n, tile, |i, j| T::from_f64(spd_entry(j, i, n) * 0.5)).map_err(err)?;
        rt.wait_all().map_err(|e| e.to_string())?;
        let start = Instant::now();
        let c = a.matmul(&b).map_err(err)?;
        c.wait().map_err(err)?;
        Ok((start.elapsed().as_secs_f64(), nt * nt * nt))
    }
}

/// Seconds of one faer run of `op` on `n`×`n`, parallel over `cpus` threads.
fn faer_once<T: Scalar>(op: &str, n: usize, cpus: usize) -> Result<f64, String> {
    let par = Par::rayon(cpus);
    let a = Mat::<T>::from_fn(n, n, |i, j| T::from_f64(spd_entry(i, j, n)));
    if op == "cholesky" {
        use faer::dyn_stack::{MemBuffer, MemStack};
        use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
        let mut a = a;
        let params = Default::default();
        let mut buf = MemBuffer::new(cholesky_in_place_scratch::<T>(n, par, params));
        let start = Instant::now();
        cholesky_in_place(a.as_mut(), Default::default(), par, MemStack::new(&mut buf), params)
            .map_err(|e| format!("faer's Cholesky failed: {e:?}"))?;
        Ok(start.elapsed().as_secs_f64())
    } else {
        let b = Mat::<T>::from_fn(n, n, |i, j| T::from_f64(spd_entry(j, i, n) * 0.5));
        let mut c = Mat::<T>::zeros(n, n);
        let start = Instant::now();
        faer::linalg::matmul::matmul(c.as_mut(), faer::Accum::Replace, a.as_ref(), b.as_ref(), T::ONE, par);
        Ok(start.elapsed().as_secs_f64())
    }
}

/// The SciPy/OpenBLAS reference: a script that times `reps` runs and prints their seconds.
const SCIPY_SCRIPT: &str = r#"
import sys, time, numpy as np, scipy.linalg as la
op, elem, n, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dt = np.float32 if elem == "f32" else np.float64
rng = np.random.default_rng(1)
m = rng.random((n, n)) - 0.5
a = ((m + m.T) / 2 + n * np.eye(n)).astype(dt)
b = (rng.random((n, n)) - 0.5).astype(dt)
out = []
for _ in range(reps + 1):
    x = np.array(a, order="F")
    t = time.perf_counter()
    if op == "cholesky":
        la.cholesky(x, lower=True, overwrite_a=True, check_finite=False)
    else:
        np.matmul(x, b)
    out.append(time.perf_counter() - t)
print(" ".join(str(s) for s in out[1:]))
"#;

/// Median seconds of SciPy/OpenBLAS running `op`, or why not.
fn scipy(python: &Path, op: &str, elem: &str, n: usize, reps: usize) -> Result<f64, String> {
    let out = Command::new(python)
        .args(["-c", SCIPY_SCRIPT, op, elem, &n.to_string(), &reps.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unreadable timings from {}: {e}", python.display()))?;
    if times.is_empty() {
        return Err(format!("no timings from {}", python.display()));
    }
    Ok(median(times))
}

/// GFLOP/s of StarPU's `cholesky_implicit` on `n` in blocks of `tile`, or why not.
fn starpu(n: usize, tile: usize, cpus: usize) -> Result<f64, String> {
    if n % tile != 0 {
        return Err(format!("the tile size {tile} does not divide {n}"));
    }
    let out = Command::new(STARPU_CHOLESKY)
        .args(["-size", &n.to_string(), "-nblocks", &(n / tile).to_string()])
        .env("STARPU_SCHED", "dmdas")
        .env("STARPU_SILENT", "1")
        .env("STARPU_NCPU", cpus.to_string())
        // One BLAS thread per StarPU worker: OpenBLAS's own threads on top of StarPU's
        // oversubscribe the cores (a quarter of the speed measured on 2 cores).
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("STARPU_NCUDA", "0")
        .env("STARPU_NOPENCL", "0")
        .output()
        .map_err(|e| format!("{STARPU_CHOLESKY}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The last line: size, ms, GFlop/s.
    text.lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[0] == n.to_string()).then(|| f[2].parse::<f64>().ok())?
        })
        .ok_or_else(|| {
            format!(
                "no result line in cholesky_implicit's output: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

fn row<T: Scalar>(
    cfg: &LinalgConfig,
    rt: &Runtime,
    cpus: usize,
    op: &str,
    n: usize,
    skipped: &mut Vec<Skipped>,
) -> Result<LinalgRow, String> {
    let elem = T::ELEM.to_string();
    let label = format!("{op} {elem} n={n}");
    let tile = cfg.tile.unwrap_or_else(crate::array::default_tile::<T>);
    let (mut hexec, mut faer, mut star) = (Vec::new(), Vec::new(), Vec::new());
    let mut tasks = 0;
    let with_starpu = op == "cholesky" && elem == "f32";
    if with_starpu && Path::new(STARPU_CHOLESKY).exists() {
        // Calibrates dmdas's models; not counted.
        let _ = starpu(n, tile, cpus);
    }
    let mut starpu_why = None;
    // One untimed run of each warms caches, allocators, thread pools and the models.
    hexec_once::<T>(rt, op, n.min(1024), tile.min(256))?;
    faer_once::<T>(op, n.min(1024), cpus)?;
    for _ in 0..cfg.reps.max(1) {
        let (s, t) = hexec_once::<T>(rt, op, n, tile)?;
        hexec.push(s);
        tasks = t;
        faer.push(faer_once::<T>(op, n, cpus)?);
        if with_starpu && starpu_why.is_none() {
            if !Path::new(STARPU_CHOLESKY).exists() {
                starpu_why = Some(format!(
                    "{STARPU_CHOLESKY} is missing (apt-get install starpu-examples)"
                ));
            } else {
                match starpu(n, tile, cpus) {
                    Ok(g) => star.push(g),
                    Err(why) => starpu_why = Some(why),
                }
            }
        }
    }
    if let Some(why) = starpu_why {
        skipped.push(Skipped {
            row: format!("StarPU {label}"),
            why,
        });
        star.clear();
    }
    let scipy_gflops = match &cfg.python {
        Some(py) => match scipy(py, op, &elem, n, cfg.reps.max(1)) {
            Ok(s) => Some(flops(op, n) / s / 1e9),
            Err(why) => {
                skipped.push(Skipped {
                    row: format!("SciPy {label}"),
                    why,
                });
                None
            }
        },
        None => None,
    };
    let g = |s: f64| flops(op, n) / s / 1e9;
    Ok(LinalgRow {
        op: op.to_string(),
        elem,
        n,
        tile,
        hexec_gflops: g(median(hexec)),
        faer_gflops: g(median(faer)),
        scipy_gflops,
        starpu_gflops: (!star.is_empty()).then(|| median(star)),
        tasks,
    })
}

/// Measures every row of `cfg`, hexec on `rt`.
pub fn measure(cfg: &LinalgConfig, rt: &Runtime) -> Result<LinalgReport, String> {
    if cfg.tile == Some(0) {
        return Err("the tile size must be at least 1".into());
    }
    if let Some(op) = cfg.ops.iter().find(|o| !["cholesky", "gemm"].contains(&o.as_str())) {
        return Err(format!("unknown operation '{op}' (cholesky, gemm)"));
    }
    if let Some(t) = cfg.types.iter().find(|t| !["f32", "f64"].contains(&t.as_str())) {
        return Err(format!("unknown element type '{t}' (f32, f64)"));
    }
    let cpus = rt.machine().count(DeviceKind::Cpu).max(1);
    let mut report = LinalgReport {
        cpus,
        gpus: rt.gpus().iter().map(|g| g.desc.name.clone()).collect(),
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    if cfg.ops.iter().any(|o| o == "gemm") || cfg.types.iter().any(|t| t == "f64") {
        report.skipped.push(Skipped {
            row: "StarPU for GEMM and f64".into(),
            why: "StarPU's cholesky_implicit example is single-precision Cholesky only".into(),
        });
    }
    if cfg.python.is_none() {
        report.skipped.push(Skipped {
            row: "SciPy/OpenBLAS".into(),
            why: "no --python given (scripts/bench-linalg.sh makes one with numpy and SciPy)".into(),
        });
    }
    for op in &cfg.ops {
        for ty in &cfg.types {
            for &n in &cfg.sizes {
                let r = if ty == "f32" {
                    row::<f32>(cfg, rt, cpus, op, n, &mut report.skipped)?
                } else {
                    row::<f64>(cfg, rt, cpus, op, n, &mut report.skipped)?
                };
                report.rows.push(r);
            }
        }
    }
    Ok(report)
}

/// The report as a Markdown table (the README's), then the skipped lines.
pub fn markdown(r: &LinalgReport) -> String {
    let opt = |v: Option<f64>| v.map_or("—".to_string(), |g| format!("{g:.1}"));
    let on = if r.gpus.is_empty() {
        format!("{} CPU cores", r.cpus)
    } else {
        format!(
            "{} CPU cores (the hexec column also on {} GPU(s): {})",
            r.cpus,
            r.gpus.len(),
            r.gpus.join(", ")
        )
    };
    let mut s = format!(
        "GFLOP/s on {on} (median of the runs; each column in turns, same run)\n\n| operation | type | n | tile | tasks | hexec | faer (dense) | SciPy/OpenBLAS | StarPU dmdas | hexec / faer | hexec / StarPU |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.2} | {} |\n",
            row.op,
            row.elem,
            row.n,
            row.tile,
            row.tasks,
            row.hexec_gflops,
            row.faer_gflops,
            opt(row.scipy_gflops),
            opt(row.starpu_gflops),
            row.hexec_gflops / row.faer_gflops,
            row.starpu_gflops
                .map_or("—".to_string(), |g| format!("{:.2}", row.hexec_gflops / g)),
        ));
    }
    for k in &r.skipped {
        s.push_str(&format!("\n{k}"));
    }
    s
}

/// One chain length of the fusion benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct FusionRow {
    /// Elementwise operations in the chain.
    pub ops: usize,
    pub fused_ms: f64,
    pub unfused_ms: f64,
    pub fused_tasks: u64,
    pub unfused_tasks: u64,
    /// Bytes of the arrays each evaluation allocates (the result, and the intermediates
    /// without fusion).
    pub fused_bytes: u64,
    pub unfused_bytes: u64,
    /// Bytes copied between memory nodes (host and GPUs).
    pub fused_moved: u64,
    pub unfused_moved: u64,
}

/// Elementwise chains of 1 to `max_ops` operations (`x·1.0001 + 0.5`, repeated) on an
/// `n`×`n` f32 matrix in tiles of `tile`, evaluated fused and unfused in turns, `reps` times
/// each (median time; tasks and bytes of one evaluation).
pub fn fusion(rt: &Runtime, n: usize, tile: usize, max_ops: usize, reps: usize) -> Result<Vec<FusionRow>, String> {
    let err = |e: crate::array::ArrayError| e.to_string();
    let a = Matrix::<f32>::from_fn(rt, "x", n, n, tile, |i, j| ((i * 31 + j) % 97) as f32).map_err(err)?;
    a.wait().map_err(err)?;
    let bytes = (n * n * 4) as u64;
    let mut rows = Vec::new();
    for ops in 1..=max_ops {
        fn chain<'a, 'rt>(m: &'a Matrix<'rt, f32>, ops: usize) -> crate::array::Lazy<'a, 'rt, f32> {
            let mut e = m.lazy();
            for k in 0..ops {
                e = if k % 2 == 0 { e * 1.0001 } else { e + 0.5 };
            }
            e
        }
        let (mut fused, mut unfused) = (Vec::new(), Vec::new());
        let mut counts = [(0, 0); 2];
        // One untimed evaluation of each: kernels built and cached, pages first touched.
        for fuse in [true, false] {
            chain(&a, ops).eval_with(fuse).map_err(err)?.wait().map_err(err)?;
        }
        for _ in 0..reps.max(1) {
            for (i, fuse) in [true, false].into_iter().enumerate() {
                let before = rt.stats();
                let start = Instant::now();
                let out = chain(&a, ops).eval_with(fuse).map_err(err)?;
                out.wait().map_err(err)?;
                let took = start.elapsed().as_secs_f64() * 1e3;
                let d = rt.stats().since(&before);
                counts[i] = (d.completed, d.bytes_transferred);
                if fuse { &mut fused } else { &mut unfused }.push(took);
            }
        }
        rows.push(FusionRow {
            ops,
            fused_ms: median(fused),
            unfused_ms: median(unfused),
            fused_tasks: counts[0].0,
            unfused_tasks: counts[1].0,
            fused_bytes: bytes,
            unfused_bytes: bytes * ops as u64,
            fused_moved: counts[0].1,
            unfused_moved: counts[1].1,
        });
    }
    Ok(rows)
}

/// The fusion rows as a Markdown table.
pub fn fusion_markdown(rows: &[FusionRow]) -> String {
    let mut s = String::from(
        "| operations | fused ms | unfused ms | speed-up | tasks fused / unfused | arrays allocated fused / unfused (MiB) | bytes moved fused / unfused |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {} / {} | {} / {} | {} / {} |\n",
            r.ops,
            r.fused_ms,
            r.unfused_ms,
            r.unfused_ms / r.fused_ms,
            r.fused_tasks,
            r.unfused_tasks,
            r.fused_bytes >> 20,
            r.unfused_bytes >> 20,
            r.fused_moved,
            r.unfused_moved
        ));
    }
    s
}
