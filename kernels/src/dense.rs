//! Dense row-major matrix routines for the CPU tile kernels, on `faer`.
//!
//! hexec's data are row-major (element `(i, j)` of an `m`×`n` matrix at `i·n + j`, as the
//! WGSL kernels read them); faer is column-major at heart. A row-major matrix read as a
//! column-major one is its transpose, so each routine is written on the transposes
//! (`C = A·B` ⇔ `Cᵀ = Bᵀ·Aᵀ`) and faer sees contiguous column-major operands: no copies,
//! no strided inner loops.
//!
//! Why faer: it picks its SIMD instruction set at run time (SSE to AVX-512 on x86-64, NEON
//! on aarch64) through `pulp`, so these kernels are fast in an ordinary `cargo build
//! --release` without `-C target-cpu=native` (a plain loop over `f32::mul_add` compiled
//! without the FMA feature becomes a library call per element: 0.5 GFLOP/s). Every routine
//! runs on the calling thread (`Par::Seq`): hexec runs one task per core.
//!
//! Generic over [`Real`] (`f32`, `f64`).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltError};
use faer::{Accum, MatMut, MatRef, Par};

/// The element types the dense routines work on.
pub trait Real:
    faer::traits::RealField + Copy + bytemuck::Pod + PartialOrd + std::fmt::Display + std::ops::MulAssign
{
    /// `-1` in this type.
    const MINUS_ONE: Self;
    /// `0` in this type.
    const ZERO: Self;
    /// `1` in this type.
    const ONE: Self;
}

impl Real for f32 {
    const MINUS_ONE: Self = -1.0;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Real for f64 {
    const MINUS_ONE: Self = -1.0;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// The transpose of the row-major `rows`×`cols` matrix in `s`, as faer sees it.
fn t<T: Real>(s: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef::from_column_major_slice(&s[..rows * cols], cols, rows)
}

fn t_mut<T: Real>(s: &mut [T], rows: usize, cols: usize) -> MatMut<'_, T> {
    MatMut::from_column_major_slice_mut(&mut s[..rows * cols], cols, rows)
}

/// `C ← alpha·A·B + beta·C` with `A` `m`×`k`, `B` `k`×`n`, `C` `m`×`n`, row-major. As in
/// BLAS, `beta = 0` ignores what `C` held (NaNs included).
///
/// # Panics
/// If a slice is shorter than its matrix (callers check the lengths first).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(a: &[T], b: &[T], c: &mut [T], m: usize, n: usize, k: usize, alpha: T, beta: T) {
    let accum = if beta == T::ZERO {
        Accum::Replace
    } else {
        if beta != T::ONE {
            for v in &mut c[..m * n] {
                *v *= beta;
            }
        }
        Accum::Add
    };
    // Cᵀ = Bᵀ·Aᵀ.
    faer::linalg::matmul::matmul(t_mut(c, m, n), accum, t(b, k, n), t(a, m, k), alpha, Par::Seq);
}

/// `C ← C − A·Bᵀ` on `b`×`b` row-major tiles (the trailing update of a tiled Cholesky).
pub fn gemm_nt_sub<T: Real>(a: &[T], b_: &[T], c: &mut [T], b: usize) {
    // Cᵀ ← Cᵀ − B·Aᵀ; the transposed view of B is B.
    faer::linalg::matmul::matmul(
        t_mut(c, b, b),
        Accum::Add,
        t(b_, b, b).transpose(),
        t(a, b, b),
        T::MINUS_ONE,
        Par::Seq,
    );
}

/// In-place lower Cholesky factor of a symmetric positive definite `b`×`b` row-major tile
/// (only its lower triangle is read); the strict upper triangle is zeroed.
pub fn potrf<T: Real>(a: &mut [T], b: usize) -> Result<(), String> {
    let a = &mut a[..b * b];
    // faer factors column-major matrices fastest (a row-major view ran at a fifth of the
    // speed). Mirroring the lower triangle into the upper one makes the tile symmetric, so
    // its column-major view is the same matrix; the factor then lands in the column-major
    // lower triangle, which is the row-major upper one, and is mirrored back. Both mirrors
    // are b² moves against b³/3 of work.
    mirror(a, b, true);
    let params = Default::default();
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<T>(b, Par::Seq, params));
    let view = MatMut::from_column_major_slice_mut(&mut *a, b, b);
    match cholesky_in_place(view, Default::default(), Par::Seq, MemStack::new(&mut buf), params) {
        Ok(_) => {}
        Err(LltError::NonPositivePivot { index }) => {
            return Err(format!(
                "the tile is not positive definite (pivot {index} is not positive): the matrix is not symmetric positive definite"
            ))
        }
    }
    mirror(a, b, false);
    for i in 0..b {
        for v in &mut a[i * b + i + 1..(i + 1) * b] {
            *v = T::ZERO;
        }
    }
    Ok(())
}

/// Copies the strict lower triangle of the row-major `b`×`b` matrix `a` onto the upper one
/// (`down_to_up`), or the upper onto the lower; in 32×32 blocks, so that the strided side
/// stays in cache.
fn mirror<T: Real>(a: &mut [T], b: usize, down_to_up: bool) {
    const BLOCK: usize = 32;
    for bi in (0..b).step_by(BLOCK) {
        for bj in (0..=bi).step_by(BLOCK) {
            for i in bi..(bi + BLOCK).min(b) {
                for j in bj..(bj + BLOCK).min(i) {
                    // (i, j) is below the diagonal, (j, i) above.
                    if down_to_up {
                        a[j * b + i] = a[i * b + j];
                    } else {
                        a[i * b + j] = a[j * b + i];
                    }
                }
            }
        }
    }
}

/// `X ← X·L⁻ᵀ` on `b`×`b` row-major tiles, `L` lower triangular (its upper triangle is not
/// read).
pub fn trsm_right_lower_t<T: Real>(l: &[T], x: &mut [T], b: usize) {
    // X·Lᵀ = B ⇔ L·Xᵀ = Bᵀ, and Xᵀ is X's column-major view.
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(t(l, b, b).transpose(), t_mut(x, b, b), Par::Seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_the_definition_on_odd_shapes() {
        let (m, n, k) = (7, 5, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 5) as f64 - 2.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 3) as f64 * 0.5).collect();
        let want = naive(&a, &b, m, n, k);
        let mut c = vec![f64::NAN; m * n];
        gemm(&a, &b, &mut c, m, n, k, 1.0, 0.0);
        assert_eq!(c, want, "beta = 0 ignores NaNs in C");
        let mut c = vec![1.0; m * n];
        gemm(&a, &b, &mut c, m, n, k, 2.0, 3.0);
        for (got, w) in c.iter().zip(&want) {
            assert_eq!(*got, 2.0 * w + 3.0);
        }
        let (a32, b32): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&v| v as f32).collect(),
            b.iter().map(|&v| v as f32).collect(),
        );
        let mut c32 = vec![0.0f32; m * n];
        gemm(&a32, &b32, &mut c32, m, n, k, 1.0, 0.0);
        assert!(c32.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() < 1e-5));
    }
}
