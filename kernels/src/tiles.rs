//! Tile kernels of the tiled arrays (`hexec::array`), for `f32` and `f64`: rectangular
//! row-major tiles whose shapes come in the task's parameters, so that the tiles at the
//! edges of a matrix whose size the tile size does not divide are handled like any other.
//!
//! - [`TileKernels::gemm`]: `C ← alpha·op(A)·op(B) + beta·C`; params `[m, n, k, alpha, beta,
//!   trans_a, trans_b]` (the shapes of `op(A)`: `m`×`k`, `op(B)`: `k`×`n`, `C`: `m`×`n`).
//! - [`TileKernels::potrf`]: the lower Cholesky factor of an `m`×`m` tile in place; params
//!   `[m, offset]`, where `offset` is the tile's first row in the matrix, so that a pivot that
//!   is not positive is named by its row in the matrix.
//! - [`TileKernels::trsm`]: a triangular solve in place; params `[m, n, which]` with `which`
//!   the index of a [`TriangularSolve`] (`X` is `m`×`n`).
//! - [`TileKernels::copy`]: `dst ← src` (equal lengths).
//! - [`TileKernels::sum_axis`]: the sums along one axis of an `m`×`n` tile into a vector,
//!   added to what the vector holds or replacing it; params `[m, n, axis, accumulate]`, `axis`
//!   1 for the row sums (`m` values), 0 for the column sums (`n` values).
//!
//! CPU implementations only (faer's, through [`crate::dense`]): the array module uses the
//! GPU-capable kernels of [`crate::builtin`] and [`crate::linalg`] for `f32` tiles where
//! their shapes allow.

use std::sync::{Arc, OnceLock};

use crate::context::CpuContext;
use crate::dense::{self, Real, TriangularSolve};
use crate::kernel::{Kernel, KernelError, Signature};
use crate::types::{Access, Element};

/// The element types of the tiled arrays: `f32` and `f64`.
pub trait Scalar: Real + Element {
    /// The tile kernels of this type.
    fn tile_kernels() -> &'static TileKernels;
    /// From an `f64` (rounded for `f32`).
    fn from_f64(v: f64) -> Self;
    /// To an `f64` (exact).
    fn to_f64(self) -> f64;
}

impl Scalar for f32 {
    fn tile_kernels() -> &'static TileKernels {
        static K: OnceLock<TileKernels> = OnceLock::new();
        K.get_or_init(TileKernels::new::<f32>)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Scalar for f64 {
    fn tile_kernels() -> &'static TileKernels {
        static K: OnceLock<TileKernels> = OnceLock::new();
        K.get_or_init(TileKernels::new::<f64>)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// The tile kernels of one element type (see the module docs).
pub struct TileKernels {
    /// General matrix product.
    pub gemm: Arc<Kernel>,
    /// Cholesky factor of a diagonal tile.
    pub potrf: Arc<Kernel>,
    /// Triangular solve.
    pub trsm: Arc<Kernel>,
    /// Copy.
    pub copy: Arc<Kernel>,
    /// Sums along an axis.
    pub sum_axis: Arc<Kernel>,
}

/// Parameter `i` as a size.
fn size(ctx: &CpuContext<'_>, i: usize, what: &str) -> Result<usize, KernelError> {
    let v = ctx.param(i)?;
    if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v) {
        return Err(KernelError::msg(format!("{what} = {v} is not a size")));
    }
    Ok(v as usize)
}

/// Checks that operand `i` (`len` elements) holds the `rows`×`cols` matrix it should.
fn holds(len: usize, rows: usize, cols: usize, what: &str) -> Result<(), KernelError> {
    if len < rows * cols {
        return Err(KernelError::msg(format!(
            "{what} is {rows}×{cols} ({} elements) but its tile has {len}",
            rows * cols
        )));
    }
    Ok(())
}

impl TileKernels {
    fn new<T: Scalar>() -> Self {
        let ty = T::ELEM;
        let (r, rw, w) = ((Access::Read, ty), (Access::ReadWrite, ty), (Access::Write, ty));
        let gemm = Kernel::cpu(format!("tile_gemm_{ty}"), Signature::exact(&[r, r, rw], 7), |ctx| {
            let (m, n, k) = (size(ctx, 0, "m")?, size(ctx, 1, "n")?, size(ctx, 2, "k")?);
            let (alpha, beta) = (T::from_f64(ctx.param(3)?), T::from_f64(ctx.param(4)?));
            let (ta, tb) = (ctx.param(5)? != 0.0, ctx.param(6)? != 0.0);
            let (a, b, c) = (ctx.read::<T>(0)?, ctx.read::<T>(1)?, ctx.write::<T>(2)?);
            holds(a.len(), m, k, "A")?;
            holds(b.len(), k, n, "B")?;
            holds(c.len(), m, n, "C")?;
            dense::gemm_ex(a, b, c, (m, n, k), alpha, beta, ta, tb);
            Ok(())
        });
        let potrf = Kernel::cpu(format!("tile_potrf_{ty}"), Signature::exact(&[rw], 2), |ctx| {
            let (m, offset) = (size(ctx, 0, "m")?, size(ctx, 1, "offset")?);
            let a = ctx.write::<T>(0)?;
            holds(a.len(), m, m, "the diagonal tile")?;
            dense::potrf_at(a, m).map_err(|pivot| {
                KernelError::msg(format!(
                    "the matrix is not symmetric positive definite: pivot {} (row {pivot} of this tile) is not positive",
                    offset + pivot
                ))
            })
        });
        let trsm = Kernel::cpu(format!("tile_trsm_{ty}"), Signature::exact(&[r, rw], 3), |ctx| {
            let (m, n) = (size(ctx, 0, "m")?, size(ctx, 1, "n")?);
            let which = match ctx.param(2)? as u32 {
                0 => TriangularSolve::RightLowerTransposed,
                1 => TriangularSolve::LeftLower,
                2 => TriangularSolve::LeftLowerTransposed,
                other => return Err(KernelError::msg(format!("no triangular solve number {other}"))),
            };
            let side = if which == TriangularSolve::RightLowerTransposed {
                n
            } else {
                m
            };
            let (l, x) = (ctx.read::<T>(0)?, ctx.write::<T>(1)?);
            holds(l.len(), side, side, "L")?;
            holds(x.len(), m, n, "X")?;
            dense::trsm_ex(l, x, m, n, which);
            Ok(())
        });
        let copy = Kernel::cpu(format!("tile_copy_{ty}"), Signature::exact(&[r, w], 0), |ctx| {
            let (src, dst) = (ctx.read::<T>(0)?, ctx.write::<T>(1)?);
            if src.len() != dst.len() {
                return Err(KernelError::msg(format!(
                    "copying {} elements into {}",
                    src.len(),
                    dst.len()
                )));
            }
            dst.copy_from_slice(src);
            Ok(())
        });
        let sum_axis = Kernel::cpu(format!("tile_sum_axis_{ty}"), Signature::exact(&[r, rw], 4), |ctx| {
            let (m, n) = (size(ctx, 0, "m")?, size(ctx, 1, "n")?);
            let (rows, accumulate) = (ctx.param(2)? != 0.0, ctx.param(3)? != 0.0);
            let (x, out) = (ctx.read::<T>(0)?, ctx.write::<T>(1)?);
            holds(x.len(), m, n, "the tile")?;
            let want = if rows { m } else { n };
            holds(out.len(), want, 1, "the sums")?;
            let out = &mut out[..want];
            if !accumulate {
                out.fill(T::ZERO);
            }
            for (i, row) in x[..m * n].chunks_exact(n).enumerate() {
                if rows {
                    out[i] += row.iter().copied().fold(T::ZERO, |a, v| a + v);
                } else {
                    out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
                }
            }
            Ok(())
        });
        TileKernels {
            gemm: Arc::new(gemm),
            potrf: Arc::new(potrf),
            trsm: Arc::new(trsm),
            copy: Arc::new(copy),
            sum_axis: Arc::new(sum_axis),
        }
    }

    /// Every kernel of both types (for the registry).
    pub fn all() -> Vec<Arc<Kernel>> {
        [f32::tile_kernels(), f64::tile_kernels()]
            .into_iter()
            .flat_map(|k| {
                [
                    k.gemm.clone(),
                    k.potrf.clone(),
                    k.trsm.clone(),
                    k.copy.clone(),
                    k.sum_axis.clone(),
                ]
            })
            .collect()
    }
}

/// Parameters of [`TileKernels::gemm`].
pub fn gemm_params(m: usize, n: usize, k: usize, alpha: f64, beta: f64, trans_a: bool, trans_b: bool) -> [f64; 7] {
    [
        m as f64,
        n as f64,
        k as f64,
        alpha,
        beta,
        f64::from(u8::from(trans_a)),
        f64::from(u8::from(trans_b)),
    ]
}

/// Parameters of [`TileKernels::trsm`].
pub fn trsm_params(m: usize, n: usize, which: TriangularSolve) -> [f64; 3] {
    let code = match which {
        TriangularSolve::RightLowerTransposed => 0.0,
        TriangularSolve::LeftLower => 1.0,
        TriangularSolve::LeftLowerTransposed => 2.0,
    };
    [m as f64, n as f64, code]
}
