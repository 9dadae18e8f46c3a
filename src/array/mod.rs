//! Tiled arrays on the live runtime: matrices (and vectors, one column wide) of `f32` or `f64`
//! split into tiles, each tile a datum of the runtime's store.
//!
//! Operations submit their tasks as they are called ([`Runtime::task`]), each operation's
//! together (its tasks start as one batch, so that the policy sees its whole graph), and
//! return at once:
//! a program mixes them with its own tasks, and nothing waits until a result is read
//! ([`Matrix::to_vec`], [`Matrix::wait`]). Dependencies between operations follow from the
//! tiles they read and write, as for any submitted task. The task graphs of the operations are
//! in [`linalg`] (matrix product, Cholesky factorisation, triangular solves), [`elementwise`]
//! (expressions, fused or one operation at a time) and [`reduce`] (sums).
//!
//! ```
//! use hexec::array::Matrix;
//! let rt = hexec::Runtime::builder().build()?;
//! // A symmetric positive definite 5×5 matrix in 2×2 tiles (the last tile row is 1 high).
//! let n = 5;
//! let a = Matrix::from_fn(&rt, "A", n, n, 2, |i, j| if i == j { 10.0 } else { 1.0 / (1 + i + j) as f64 })?;
//! let b = Matrix::from_fn(&rt, "b", n, 1, 2, |i, _| i as f64)?;
//! let x = a.cholesky()?.solve(&b)?;
//! let ax = a.matmul(&x)?;
//! let (ax, b) = (ax.to_vec()?, b.to_vec()?);
//! assert!(ax.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-12));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Invariants:
//! - a matrix owns its tiles: they are freed when it drops ([`Runtime::free_when_done`]: after
//!   the work submitted on them, without waiting), and only its own operations write them;
//! - tile `(i, j)` is `tile_rows(i)`×`tile_cols(j)` row-major; every tile but those of the last
//!   tile row and column has the nominal tile shape. A tile that is known to be zero (above
//!   the diagonal of a triangular factor) has no datum (`None`) and reads as zeros;
//! - `writers[t]` is the handle of the last task submitted that writes tile `t`, if any: the
//!   tile's value is final once it has ended, and its failure is the tile's.

pub mod elementwise;
pub mod linalg;
pub mod reduce;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::graph::Data;
use crate::kernels::Scalar;
use crate::runtime::{DataError, Runtime, TaskError, TaskHandle};
use crate::sched::compile::SubmitError;

pub use elementwise::{IntoLazy, Lazy};
pub use linalg::Cholesky;

/// Why an array operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// The shapes of the operands do not fit the operation.
    #[error("{op}: {message}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What does not fit.
        message: String,
    },
    /// A task of the operation could not be submitted.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// A task that computes the array failed (or was skipped, naming the one that failed).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A tile could not be read or written.
    #[error(transparent)]
    Data(#[from] DataError),
}

/// A tile side for `T` that suits the CPU tile kernels: about 288 KiB per tile (256 for
/// `f32`, 192 for `f64`), so that the three tiles of a product stay near the core's L2 cache.
/// Measured on a 2-core EPYC (`hexec bench linalg --tile N`, n = 4096): GEMM reached 0.89 of
/// faer's dense routine at these sides against 0.77–0.84 at 512; a large Cholesky
/// (n ≥ 10,000) prefers 512, where its trailing updates dominate.
pub fn default_tile<T: Scalar>() -> usize {
    let side = ((288 * 1024 / std::mem::size_of::<T>()) as f64).sqrt();
    ((side / 32.0).round() as usize * 32).max(32)
}

/// Names of matrices created without one.
static UNNAMED: AtomicU64 = AtomicU64::new(0);

/// A tiled matrix of `T` (`f32` or `f64`) on a runtime (see the module docs).
pub struct Matrix<'rt, T: Scalar> {
    rt: &'rt Runtime,
    name: String,
    rows: usize,
    cols: usize,
    /// The nominal tile shape.
    tile_rows: usize,
    tile_cols: usize,
    /// Tile `(i, j)` at `i * grid_cols + j`; `None`: a zero tile without a datum.
    tiles: Vec<Option<Data<T>>>,
    /// The last task submitted that writes each tile.
    writers: Vec<Option<TaskHandle>>,
}

impl<T: Scalar> std::fmt::Debug for Matrix<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matrix")
            .field("name", &self.name)
            .field("shape", &(self.rows, self.cols))
            .field("tile", &(self.tile_rows, self.tile_cols))
            .field("elem", &T::ELEM)
            .finish_non_exhaustive()
    }
}

impl<T: Scalar> Drop for Matrix<'_, T> {
    fn drop(&mut self) {
        for t in self.tiles.iter().flatten() {
            // Freed after the work submitted on it; an error means it is gone already.
            let _ = self.rt.free_when_done(*t);
        }
    }
}

/// Checks a shape and a tile size; the error names the matrix.
fn check_shape<T>(op: &'static str, name: &str, rows: usize, cols: usize, tile: usize) -> Result<(), ArrayError> {
    let shape = |message: String| ArrayError::Shape { op, message };
    if tile == 0 {
        return Err(shape(format!("matrix '{name}': the tile size must be at least 1")));
    }
    if rows == 0 || cols == 0 {
        return Err(shape(format!(
            "matrix '{name}' is {rows}×{cols}: arrays have at least one element"
        )));
    }
    if rows
        .checked_mul(cols)
        .is_none_or(|n| n.checked_mul(std::mem::size_of::<T>()).is_none())
    {
        return Err(shape(format!(
            "matrix '{name}' is {rows}×{cols}: too many elements to address"
        )));
    }
    Ok(())
}

impl<'rt, T: Scalar> Matrix<'rt, T> {
    /// A `rows`×`cols` matrix in `tile`×`tile` tiles (smaller at the last tile row and
    /// column) whose element `(i, j)` is `f(i, j)`, named `name` in errors.
    pub fn from_fn(
        rt: &'rt Runtime,
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        tile: usize,
        f: impl Fn(usize, usize) -> T,
    ) -> Result<Self, ArrayError> {
        let name = name.into();
        check_shape::<T>("from_fn", &name, rows, cols, tile)?;
        let mut m = Self::empty(rt, name, rows, cols, tile, tile);
        for ti in 0..m.grid_rows() {
            for tj in 0..m.grid_cols() {
                let (r0, c0) = (ti * m.tile_rows, tj * m.tile_cols);
                let (h, w) = (m.tile_rows_of(ti), m.tile_cols_of(tj));
                let mut v = Vec::with_capacity(h * w);
                for r in 0..h {
                    v.extend((0..w).map(|c| f(r0 + r, c0 + c)));
                }
                m.set_tile(ti, tj, v);
            }
        }
        Ok(m)
    }

    /// A `rows`×`cols` matrix from its elements in row-major order (`values[i·cols + j]`),
    /// copied into `tile`×`tile` tiles; a matrix of one tile takes `values` without a copy.
    pub fn from_rows(
        rt: &'rt Runtime,
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        tile: usize,
        values: Vec<T>,
    ) -> Result<Self, ArrayError> {
        let name = name.into();
        check_shape::<T>("from_rows", &name, rows, cols, tile)?;
        if values.len() != rows * cols {
            return Err(ArrayError::Shape {
                op: "from_rows",
                message: format!(
                    "matrix '{name}' is {rows}×{cols} ({} elements); {} were given",
                    rows * cols,
                    values.len()
                ),
            });
        }
        if rows <= tile && cols <= tile {
            let mut m = Self::empty(rt, name, rows, cols, tile, tile);
            m.set_tile(0, 0, values);
            return Ok(m);
        }
        Self::from_fn(rt, name, rows, cols, tile, |i, j| values[i * cols + j])
    }

    /// A column vector (an `n`×1 matrix) of `values` in tiles of `tile` elements.
    pub fn column(rt: &'rt Runtime, name: impl Into<String>, tile: usize, values: Vec<T>) -> Result<Self, ArrayError> {
        let n = values.len();
        Self::from_rows(rt, name, n, 1, tile, values)
    }

    /// A `rows`×`cols` matrix of zeros in `tile`×`tile` tiles.
    pub fn zeros(
        rt: &'rt Runtime,
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        tile: usize,
    ) -> Result<Self, ArrayError> {
        let name = name.into();
        check_shape::<T>("zeros", &name, rows, cols, tile)?;
        let mut m = Self::empty(rt, name, rows, cols, tile, tile);
        for ti in 0..m.grid_rows() {
            for tj in 0..m.grid_cols() {
                let len = m.tile_rows_of(ti) * m.tile_cols_of(tj);
                m.set_tile(ti, tj, vec![T::ZERO; len]);
            }
        }
        Ok(m)
    }

    /// A matrix of `faer`'s (copied into tiles).
    pub fn from_faer(
        rt: &'rt Runtime,
        name: impl Into<String>,
        tile: usize,
        m: faer::MatRef<'_, T>,
    ) -> Result<Self, ArrayError> {
        Self::from_fn(rt, name, m.nrows(), m.ncols(), tile, |i, j| m[(i, j)])
    }

    /// The matrix without tiles yet (every one a zero tile).
    fn empty(rt: &'rt Runtime, name: String, rows: usize, cols: usize, tile_rows: usize, tile_cols: usize) -> Self {
        let n = rows.div_ceil(tile_rows) * cols.div_ceil(tile_cols);
        Matrix {
            rt,
            name,
            rows,
            cols,
            tile_rows,
            tile_cols,
            tiles: vec![None; n],
            writers: vec![None; n],
        }
    }

    /// A new matrix of this one's shape and tiling, without tiles yet, named `name`.
    fn like(&self, name: String, rows: usize, cols: usize, tile_rows: usize, tile_cols: usize) -> Self {
        Self::empty(self.rt, name, rows, cols, tile_rows, tile_cols)
    }

    /// A name for a result: `op(name)`, or a numbered one for long chains.
    fn result_name(op: &str, of: &[&str]) -> String {
        let joined = of.join(",");
        if joined.len() > 40 {
            return format!("M{}", UNNAMED.fetch_add(1, Ordering::Relaxed));
        }
        format!("{op}({joined})")
    }

    /// Stores `values` as tile `(ti, tj)`.
    fn set_tile(&mut self, ti: usize, tj: usize, values: Vec<T>) {
        let name = format!("{}[{ti},{tj}]", self.name);
        let t = ti * self.grid_cols() + tj;
        self.tiles[t] = Some(self.rt.data_named(name, values));
    }

    /// Tile `(ti, tj)`, made (zeroed) if it is a zero tile.
    fn tile_or_zeros(&mut self, ti: usize, tj: usize) -> Data<T> {
        let t = ti * self.grid_cols() + tj;
        if let Some(d) = self.tiles[t] {
            return d;
        }
        let len = self.tile_rows_of(ti) * self.tile_cols_of(tj);
        self.set_tile(ti, tj, vec![T::ZERO; len]);
        self.tiles[t].expect("just set")
    }

    /// Tile `(ti, tj)`'s datum; `None` for a zero tile.
    pub fn tile(&self, ti: usize, tj: usize) -> Option<Data<T>> {
        self.tiles[ti * self.grid_cols() + tj]
    }

    /// Records `h` as the last writer of tile `(ti, tj)`.
    fn wrote(&mut self, ti: usize, tj: usize, h: TaskHandle) {
        let t = ti * self.grid_cols() + tj;
        self.writers[t] = Some(h);
    }

    /// The runtime the matrix lives on.
    pub fn runtime(&self) -> &'rt Runtime {
        self.rt
    }

    /// Its name (tiles are named `name[i,j]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The nominal tile shape (rows, columns).
    pub fn tile_shape(&self) -> (usize, usize) {
        (self.tile_rows, self.tile_cols)
    }

    /// Tile rows.
    pub fn grid_rows(&self) -> usize {
        self.rows.div_ceil(self.tile_rows)
    }

    /// Tile columns.
    pub fn grid_cols(&self) -> usize {
        self.cols.div_ceil(self.tile_cols)
    }

    /// Rows of the tiles of tile row `ti`.
    pub fn tile_rows_of(&self, ti: usize) -> usize {
        self.tile_rows.min(self.rows - ti * self.tile_rows)
    }

    /// Columns of the tiles of tile column `tj`.
    pub fn tile_cols_of(&self, tj: usize) -> usize {
        self.tile_cols.min(self.cols - tj * self.tile_cols)
    }

    /// Waits for every task submitted so far that computes this matrix; the first failure
    /// among them (a skipped task names the one that failed).
    pub fn wait(&self) -> Result<(), ArrayError> {
        for h in self.writers.iter().flatten() {
            h.wait()?;
        }
        Ok(())
    }

    /// The elements in row-major order, once computed (waits).
    pub fn to_vec(&self) -> Result<Vec<T>, ArrayError> {
        self.wait()?;
        let mut out = vec![T::ZERO; self.rows * self.cols];
        for ti in 0..self.grid_rows() {
            for tj in 0..self.grid_cols() {
                let Some(d) = self.tile(ti, tj) else { continue };
                let (r0, c0, w) = (ti * self.tile_rows, tj * self.tile_cols, self.tile_cols_of(tj));
                self.rt.read_with(d, |v| {
                    for (r, row) in v.chunks_exact(w).enumerate() {
                        let at = (r0 + r) * self.cols + c0;
                        out[at..at + w].copy_from_slice(row);
                    }
                })?;
            }
        }
        Ok(out)
    }

    /// The matrix as `faer`'s, once computed (waits).
    pub fn to_faer(&self) -> Result<faer::Mat<T>, ArrayError> {
        let v = self.to_vec()?;
        Ok(faer::Mat::from_fn(self.rows, self.cols, |i, j| v[i * self.cols + j]))
    }
}

impl<T: Scalar> Matrix<'_, T> {
    /// Cancels the tasks that would finish this matrix's tiles (those not started are
    /// dropped, with their dependents; running CPU kernels see the request).
    pub fn cancel(&self) {
        for h in self.writers.iter().flatten() {
            h.cancel();
        }
    }

    /// Tiles whose last writer has finished, and tiles computed by tasks (for progress).
    pub fn progress(&self) -> (usize, usize) {
        let computed = self.writers.iter().flatten();
        let done = computed.clone().filter(|h| h.is_finished()).count();
        (done, computed.count())
    }
}
