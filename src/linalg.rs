//! Tiled dense linear algebra on the runtime: the tiled Cholesky factorisation `A = L·Lᵀ` of
//! an `n`×`n` grid of `b`×`b` f32 tiles, with the tile kernels of
//! [`hexec_kernels::linalg`] (`potrf` on CPUs; `trsm`, `syrk`, `gemm_nt` on CPUs or GPUs).
//!
//! The graph is the right-looking factorisation of [`crate::graph::formats::cholesky::steps`]
//! (which also builds it with size-only tiles for the simulator): for each `k`, `potrf` on
//! `A[k][k]`, `trsm` on the tiles below it, `syrk` on the trailing diagonal and `gemm_nt` on
//! the rest. Only the lower triangle is stored; after the run it holds `L`.

// The matrix and the residual are pure arithmetic over the graph file's `spd` init, so they
// live with the Cholesky DAG in `graph` (which may not import this module, built on the runtime).
pub use crate::graph::formats::cholesky::{factor_residual, matrix_entry, matrix_entry_f64};
use crate::graph::formats::cholesky::{steps, tile_index};
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
