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
    faer::traits::RealField
    + Copy
    + bytemuck::Pod
    + PartialOrd
    + std::fmt::Display
    + std::ops::MulAssign
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::DivAssign
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
    gemm_ex(a, b, c, (m, n, k), alpha, beta, false, false);
}

/// `C ← C − A·Bᵀ` on `b`×`b` row-major tiles (the trailing update of a tiled Cholesky).
pub fn gemm_nt_sub<T: Real>(a: &[T], b_: &[T], c: &mut [T], b: usize) {
    gemm_ex(a, b_, c, (b, b, b), T::MINUS_ONE, T::ONE, false, true);
}

/// In-place lower Cholesky factor of a symmetric positive definite `b`×`b` row-major tile
/// (only its lower triangle is read); the strict upper triangle is zeroed.
pub fn potrf<T: Real>(a: &mut [T], b: usize) -> Result<(), String> {
    potrf_at(a, b).map_err(|index| {
        format!(
            "the tile is not positive definite (pivot {index} is not positive): the matrix is not symmetric positive definite"
        )
    })
}

/// [`potrf`], failing with the row of the first pivot that is not positive.
pub fn potrf_at<T: Real>(a: &mut [T], b: usize) -> Result<(), usize> {
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
        Err(LltError::NonPositivePivot { index }) => return Err(index),
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
    trsm_ex(l, x, b, b, TriangularSolve::RightLowerTransposed);
}

/// `C ← alpha·op(A)·op(B) + beta·C`, row-major: `op(A)` is `m`×`k` (`A` stored `k`×`m` when
/// `trans_a`), `op(B)` is `k`×`n` (`B` stored `n`×`k` when `trans_b`), `C` is `m`×`n`. As in
/// BLAS, `beta = 0` ignores what `C` held.
///
/// # Panics
/// If a slice is shorter than its matrix (callers check the lengths first).
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex<T: Real>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    (m, n, k): (usize, usize, usize),
    alpha: T,
    beta: T,
    trans_a: bool,
    trans_b: bool,
) {
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
    // Cᵀ = op(B)ᵀ·op(A)ᵀ. A row-major stored matrix seen column-major is its transpose, so
    // op(A)ᵀ is that view when A is not transposed, and the view transposed back when it is.
    let at = if trans_a { t(a, k, m).transpose() } else { t(a, m, k) };
    let bt = if trans_b { t(b, n, k).transpose() } else { t(b, k, n) };
    faer::linalg::matmul::matmul(t_mut(c, m, n), accum, bt, at, alpha, Par::Seq);
}

/// Which triangular system [`trsm_ex`] solves, `L` lower triangular (its upper triangle is
/// not read), `X` row-major `m`×`n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriangularSolve {
    /// `X ← X·L⁻ᵀ`, `L` `n`×`n` (the panel update of a tiled Cholesky).
    RightLowerTransposed,
    /// `X ← L⁻¹·X`, `L` `m`×`m` (forward substitution).
    LeftLower,
    /// `X ← L⁻ᵀ·X`, `L` `m`×`m` (backward substitution with the factor).
    LeftLowerTransposed,
}

/// Solves the triangular system `which` in place.
///
/// # Panics
/// If a slice is shorter than its matrix (callers check the lengths first).
pub fn trsm_ex<T: Real>(l: &[T], x: &mut [T], m: usize, n: usize, which: TriangularSolve) {
    use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
    match which {
        // X·Lᵀ = B ⇔ L·Xᵀ = Bᵀ, and Xᵀ is X's column-major view.
        TriangularSolve::RightLowerTransposed => {
            solve_lower_triangular_in_place(t(l, n, n).transpose(), t_mut(x, m, n), Par::Seq)
        }
        // X is the transpose of its column-major view: a strided view, which faer takes.
        TriangularSolve::LeftLower => {
            solve_lower_triangular_in_place(t(l, m, m).transpose(), t_mut(x, m, n).transpose_mut(), Par::Seq)
        }
        TriangularSolve::LeftLowerTransposed => {
            solve_upper_triangular_in_place(t(l, m, m), t_mut(x, m, n).transpose_mut(), Par::Seq)
        }
    }
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

    fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut t = vec![0.0; a.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn gemm_ex_transposes_either_operand() {
        let (m, n, k) = (5, 3, 4);
        let a: Vec<f64> = (0..m * k).map(|i| (i % 7) as f64 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 5) as f64 * 0.25).collect();
        let want = naive(&a, &b, m, n, k);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = if ta { transpose(&a, m, k) } else { a.clone() };
            let sb = if tb { transpose(&b, k, n) } else { b.clone() };
            let mut c = vec![1.0; m * n];
            gemm_ex(&sa, &sb, &mut c, (m, n, k), -1.0, 1.0, ta, tb);
            for (got, w) in c.iter().zip(&want) {
                assert!((got - (1.0 - w)).abs() < 1e-12, "ta={ta} tb={tb}");
            }
        }
    }

    #[test]
    fn trsm_ex_solves_each_system() {
        let l = |s: usize| -> Vec<f64> {
            let mut l = vec![0.0; s * s];
            for i in 0..s {
                for j in 0..=i {
                    l[i * s + j] = if i == j {
                        2.0 + i as f64
                    } else {
                        0.5 - (i + j) as f64 * 0.1
                    };
                }
                // Garbage above the diagonal is never read.
                for j in i + 1..s {
                    l[i * s + j] = 99.0;
                }
            }
            l
        };
        let lower = |l: &[f64], s: usize| -> Vec<f64> {
            let mut c = l.to_vec();
            for i in 0..s {
                for j in i + 1..s {
                    c[i * s + j] = 0.0;
                }
            }
            c
        };
        let (m, n) = (4, 3);
        let x0: Vec<f64> = (0..m * n).map(|i| i as f64 - 5.0).collect();
        // X·Lᵀ = X0 with L n×n.
        let ln = l(n);
        let mut x = x0.clone();
        trsm_ex(&ln, &mut x, m, n, TriangularSolve::RightLowerTransposed);
        let back = naive(&x, &transpose(&lower(&ln, n), n, n), m, n, n);
        assert!(back.iter().zip(&x0).all(|(a, b)| (a - b).abs() < 1e-10));
        // L·X = X0 and Lᵀ·X = X0 with L m×m.
        let lm = l(m);
        let mut x = x0.clone();
        trsm_ex(&lm, &mut x, m, n, TriangularSolve::LeftLower);
        let back = naive(&lower(&lm, m), &x, m, n, m);
        assert!(back.iter().zip(&x0).all(|(a, b)| (a - b).abs() < 1e-10));
        let mut x = x0.clone();
        trsm_ex(&lm, &mut x, m, n, TriangularSolve::LeftLowerTransposed);
        let back = naive(&transpose(&lower(&lm, m), m, m), &x, m, n, m);
        assert!(back.iter().zip(&x0).all(|(a, b)| (a - b).abs() < 1e-10));
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
