//! Tiled dense linear algebra on the runtime: the tiled Cholesky factorisation `A = L·Lᵀ` of
//! an `n`×`n` grid of `b`×`b` f32 tiles, with the tile kernels of
//! [`hexec_kernels::linalg`] (`potrf` on CPUs; `trsm`, `syrk`, `gemm_nt` on CPUs or GPUs).
//!
//! The graph is the right-looking factorisation of [`crate::graph::formats::cholesky::steps`]
//! (which also builds it with size-only tiles for the simulator): for each `k`, `potrf` on
//! `A[k][k]`, `trsm` on the tiles below it, `syrk` on the trailing diagonal and `gemm_nt` on
//! the rest. Only the lower triangle is stored; after the run it holds `L`.

use crate::graph::formats::cholesky::steps;
use crate::graph::{Data, Graph};
use crate::kernels::linalg;
use crate::runtime::{DataError, Runtime};

/// A tiled Cholesky factorisation built on a runtime: the graph and its tiles.
pub struct TiledCholesky {
    /// The factorisation as a graph, to run.
    pub graph: Graph,
    n: usize,
    b: usize,
    /// The lower-triangle tiles, row by row: `(i, j)` with `j ≤ i`.
    tiles: Vec<Data<f32>>,
}

/// Where tile `(i, j)` (`j ≤ i`) sits among the lower-triangle tiles, row by row.
fn tile_index(i: usize, j: usize) -> usize {
    i * (i + 1) / 2 + j
}

/// Tile `(ti, tj)` of the `n·b`-sided matrix [`matrix_entry`], row-major.
fn initial_tile(ti: usize, tj: usize, n: usize, b: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; b * b];
    for r in 0..b {
        for c in 0..b {
            v[r * b + c] = matrix_entry(ti * b + r, tj * b + c, n * b);
        }
    }
    v
}

/// Entry `(i, j)` of the factorised matrix of side `size`: symmetric and diagonally dominant,
/// so positive definite. Graph files name it with the `spd` init kind
/// (`docs/graph-format.md`), which `hexec gen cholesky` writes.
pub fn matrix_entry(i: usize, j: usize, size: usize) -> f32 {
    1.0 / (1.0 + i.abs_diff(j) as f32) + if i == j { size as f32 } else { 0.0 }
}

/// [`matrix_entry`] in double precision (for f64 data).
pub fn matrix_entry_f64(i: usize, j: usize, size: usize) -> f64 {
    1.0 / (1.0 + i.abs_diff(j) as f64) + if i == j { size as f64 } else { 0.0 }
}

/// `‖A − L·Lᵀ‖_F / ‖A‖_F` of a tiled factorisation of an `n`×`n` grid of `b`×`b` tiles
/// (`‖A − L·Lᵀ‖_F` itself when `A` is zero). `l` holds the lower-triangle tiles of `L`, row
/// by row, row-major, each diagonal tile's upper triangle zero (as `potrf` leaves it); `a(i,
/// j)` gives tile `(i, j)` (`j ≤ i`) of the symmetric `A`. Computed tile by tile in double
/// precision with the tile kernel `C ← C − A·Bᵀ`, the tiles in parallel: as many flops as the
/// factorisation and no dense copy, so that checking a large factor costs no more than
/// computing it. The upper tiles count twice, by symmetry.
///
/// # Panics
/// If `l` does not hold `n(n+1)/2` tiles of `b²` elements, or `a` returns a tile of another
/// length (callers check the shapes first).
pub fn factor_residual(n: usize, b: usize, l: &[Vec<f32>], a: &(dyn Fn(usize, usize) -> Vec<f32> + Sync)) -> f64 {
    assert_eq!(l.len(), n * (n + 1) / 2, "one factor tile per lower-triangle tile");
    let l: Vec<Vec<f64>> = l.iter().map(|t| t.iter().map(|&x| f64::from(x)).collect()).collect();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..=i).map(move |j| (i, j))).collect();
    let tile = |&(i, j): &(usize, usize)| {
        let a_ij = a(i, j);
        assert_eq!(a_ij.len(), b * b, "tile ({i}, {j}) of A");
        let mut r: Vec<f64> = a_ij.iter().map(|&x| f64::from(x)).collect();
        for k in 0..=j {
            crate::kernels::dense::gemm_nt_sub(&l[tile_index(i, k)], &l[tile_index(j, k)], &mut r, b);
        }
        let weight = if i == j { 1.0 } else { 2.0 };
        let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
        let a_sq: f64 = a_ij.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        (weight * sq(&r), weight * a_sq)
    };
    // The tiles in parallel on scoped threads (no thread-pool dependency on the library's
    // path): tiles dealt round-robin, since the rows' costs grow with `j`.
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(pairs.len())
        .max(1);
    let (residual, norm) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pairs, tile) = (&pairs, &tile);
                s.spawn(move || {
                    pairs
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(tile)
                        .fold((0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold((0.0, 0.0), |x: (f64, f64), y| (x.0 + y.0, x.1 + y.1))
    });
    if norm > 0.0 {
        (residual / norm).sqrt()
    } else {
        residual.sqrt()
    }
}

impl TiledCholesky {
    /// The factorisation of the `n·b`-sided matrix [`matrix_entry`], as `n`×`n` tiles of
    /// `b`×`b`, its lower-triangle tiles created (initialised) in `rt`'s store. The policy
    /// places every task.
    pub fn new(rt: &Runtime, n: usize, b: usize) -> Self {
        Self::build(rt, n, b, None)
    }

    /// As [`TiledCholesky::new`], with `trsm`, `syrk` and `gemm_nt` restricted to `updates`
    /// workers (`potrf` stays on CPUs): for example, every update on the GPUs.
    pub fn with_updates_on(rt: &Runtime, n: usize, b: usize, updates: crate::DeviceKind) -> Self {
        Self::build(rt, n, b, Some(updates))
    }

    fn build(rt: &Runtime, n: usize, b: usize, updates: Option<crate::DeviceKind>) -> Self {
        let mut tiles = Vec::with_capacity(n * (n + 1) / 2);
        for ti in 0..n {
            for tj in 0..=ti {
                tiles.push(rt.data_named(format!("A[{ti},{tj}]"), initial_tile(ti, tj, n, b)));
            }
        }
        let t = |(i, j): (usize, usize)| tiles[tile_index(i, j)];
        let mut g = rt.graph();
        for step in steps(n) {
            let kernel = match step.kernel {
                "potrf" => linalg::potrf(),
                "trsm" => linalg::trsm(),
                "syrk" => linalg::syrk(),
                "gemm_nt" => linalg::gemm_nt(),
                other => unreachable!("steps names only the four tile kernels, not '{other}'"),
            };
            let mut task = g.task(&kernel).name(step.name);
            // `potrf` has a CPU implementation only: it stays wherever the policy puts it.
            if let (Some(kind), false) = (updates, step.kernel == "potrf") {
                task = task.on(kind);
            }
            for &r in &step.reads {
                task = task.read(t(r));
            }
            task.read_write(t(step.updates)).add();
        }
        TiledCholesky { graph: g, n, b, tiles }
    }

    /// The lower-triangle tiles, row by row.
    pub fn tiles(&self) -> &[Data<f32>] {
        &self.tiles
    }

    /// Bytes of all stored tiles.
    pub fn bytes(&self) -> u64 {
        (self.tiles.len() * self.b * self.b * 4) as u64
    }

    /// Writes the original matrix back into the tiles (to factorise again).
    pub fn reset(&self, rt: &Runtime) -> Result<(), DataError> {
        let (n, b) = (self.n, self.b);
        for ti in 0..n {
            for tj in 0..=ti {
                rt.write(self.tiles[tile_index(ti, tj)], &initial_tile(ti, tj, n, b))?;
            }
        }
        Ok(())
    }

    /// The factor `L` read back from the tiles, as a dense row-major matrix.
    pub fn factor(&self, rt: &Runtime) -> Result<Vec<f32>, DataError> {
        let (n, b) = (self.n, self.b);
        let size = n * b;
        let mut l = vec![0.0f32; size * size];
        for ti in 0..n {
            for tj in 0..=ti {
                let v = rt.read(self.tiles[tile_index(ti, tj)])?;
                for r in 0..b {
                    for c in 0..b {
                        l[(ti * b + r) * size + tj * b + c] = v[r * b + c];
                    }
                }
            }
        }
        Ok(l)
    }

    /// The largest `|(L·Lᵀ)[i][j] − A[i][j]|` over the lower triangle, relative to the
    /// largest entry of `A` (its diagonal): about 1e-6 for a correct f32 factorisation.
    pub fn residual(&self, rt: &Runtime) -> Result<f64, DataError> {
        let size = self.n * self.b;
        let l = self.factor(rt)?;
        let mut worst = 0.0f64;
        for i in 0..size {
            for j in 0..=i {
                let llt: f64 = (0..=j)
                    .map(|k| f64::from(l[i * size + k]) * f64::from(l[j * size + k]))
                    .sum();
                worst = worst.max((llt - f64::from(matrix_entry(i, j, size))).abs());
            }
        }
        Ok(worst / f64::from(matrix_entry(0, 0, size)))
    }
}
