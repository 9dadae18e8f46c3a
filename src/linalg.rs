//! Tiled dense linear algebra on the runtime: the tiled Cholesky factorisation `A = L·Lᵀ` of
//! an `n`×`n` grid of `b`×`b` f32 tiles, with the tile kernels of
//! [`hexec_kernels::linalg`] (`potrf` on CPUs; `trsm`, `syrk`, `gemm_nt` on CPUs or GPUs).
//!
//! The graph is the right-looking factorisation, as in [`crate::graph::formats::cholesky`]
//! (which builds the same shape with size-only tiles for the simulator): for each `k`,
//! `potrf` on `A[k][k]`, `trsm` on the tiles below it, `syrk` on the trailing diagonal and
//! `gemm_nt` on the rest. Only the lower triangle is stored; after the run it holds `L`.

use crate::graph::{Data, Graph, TaskBuilder};
use crate::kernels::linalg;
use crate::runtime::{DataError, Runtime};

/// A tiled Cholesky factorisation built on a runtime: the graph and its tiles.
pub struct TiledCholesky {
    pub graph: Graph,
    n: usize,
    b: usize,
    /// The lower-triangle tiles, row by row: `(i, j)` with `j ≤ i`.
    tiles: Vec<Data<f32>>,
}

fn restrict(updates: Option<crate::DeviceKind>, task: TaskBuilder<'_>) -> TaskBuilder<'_> {
    match updates {
        Some(kind) => task.on(kind),
        None => task,
    }
}

/// Entry `(i, j)` of the factorised matrix of side `size`: symmetric and diagonally dominant,
/// so positive definite.
pub fn matrix_entry(i: usize, j: usize, size: usize) -> f32 {
    1.0 / (1.0 + i.abs_diff(j) as f32) + if i == j { size as f32 } else { 0.0 }
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
        let size = n * b;
        let mut tiles = Vec::with_capacity(n * (n + 1) / 2);
        for ti in 0..n {
            for tj in 0..=ti {
                let mut v = vec![0.0f32; b * b];
                for r in 0..b {
                    for c in 0..b {
                        v[r * b + c] = matrix_entry(ti * b + r, tj * b + c, size);
                    }
                }
                tiles.push(rt.data_named(format!("A[{ti},{tj}]"), v));
            }
        }
        let t = |i: usize, j: usize| tiles[i * (i + 1) / 2 + j];
        let mut g = rt.graph();
        for k in 0..n {
            g.task(&linalg::potrf())
                .name(format!("potrf({k})"))
                .read_write(t(k, k))
                .add();
            for i in k + 1..n {
                restrict(updates, g.task(&linalg::trsm()).name(format!("trsm({i},{k})")))
                    .read(t(k, k))
                    .read_write(t(i, k))
                    .add();
            }
            for i in k + 1..n {
                restrict(updates, g.task(&linalg::syrk()).name(format!("syrk({i},{k})")))
                    .read(t(i, k))
                    .read_write(t(i, i))
                    .add();
                for j in k + 1..i {
                    restrict(updates, g.task(&linalg::gemm_nt()).name(format!("gemm({i},{j},{k})")))
                        .read(t(i, k))
                        .read(t(j, k))
                        .read_write(t(i, j))
                        .add();
                }
            }
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
                let mut v = vec![0.0f32; b * b];
                for r in 0..b {
                    for c in 0..b {
                        v[r * b + c] = matrix_entry(ti * b + r, tj * b + c, n * b);
                    }
                }
                rt.write(self.tiles[ti * (ti + 1) / 2 + tj], &v)?;
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
                let v = rt.read(self.tiles[ti * (ti + 1) / 2 + tj])?;
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
