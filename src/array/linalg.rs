//! The task graphs of the array operations, all in one place: the tiled matrix product, the
//! right-looking tiled Cholesky factorisation and the two triangular solves that use it.
//!
//! Each operation submits its tasks in an order that is valid sequentially (dependencies
//! come from the tiles they access, as for any submitted task) and returns at once.
//!
//! Kernels: `f32` tiles use the GPU-capable kernels where their shapes fit
//! ([`builtin::gemm`] for products without transposes, [`linalg::trsm`], [`linalg::syrk`] and
//! [`linalg::gemm_nt`] for the full square tiles of a Cholesky factorisation), so a policy may
//! place them on a GPU; everything else — `f64`, the edge tiles of a matrix the tile size does
//! not divide, the solves, `potrf` — uses the CPU kernels of
//! [`crate::kernels::tiles::TileKernels`].

use std::sync::Arc;

use super::{ArrayError, Matrix};
use crate::graph::{Data, DataRef};
use crate::kernels::dense::TriangularSolve;
use crate::kernels::tiles::{gemm_params, trsm_params};
use crate::kernels::{builtin, linalg, ElemType, Kernel, Scalar};
use crate::runtime::TaskHandle;

/// One tile product `C ← alpha·op(A)·op(B) + beta·C` (shapes as in
/// [`crate::kernels::dense::gemm_ex`]).
struct TileGemm<T: Scalar> {
    a: Data<T>,
    b: Data<T>,
    c: Data<T>,
    mnk: (usize, usize, usize),
    alpha: f64,
    beta: f64,
    trans_a: bool,
    trans_b: bool,
}

impl<T: Scalar> TileGemm<T> {
    /// Submits it, with the GPU-capable `f32` kernel when one computes exactly this.
    fn submit(self, rt: &crate::Runtime, name: String) -> Result<TaskHandle, ArrayError> {
        let (m, n, k) = self.mnk;
        let f32_tiles = T::ELEM == ElemType::F32;
        let update = self.alpha == -1.0 && self.beta == 1.0;
        let square = m == n && n == k;
        let (kernel, params): (Arc<Kernel>, Vec<f64>) = if f32_tiles && !self.trans_a && !self.trans_b {
            (
                builtin::gemm(),
                vec![m as f64, n as f64, k as f64, self.alpha, self.beta],
            )
        } else if f32_tiles && update && square && !self.trans_a && self.trans_b {
            if DataRef::from(self.a) == DataRef::from(self.b) {
                // C − A·Aᵀ: syrk reads A once.
                let h = rt
                    .task(&linalg::syrk())
                    .name(name)
                    .read(self.a)
                    .read_write(self.c)
                    .submit()?;
                return Ok(h);
            }
            (linalg::gemm_nt(), Vec::new())
        } else {
            let p = gemm_params(m, n, k, self.alpha, self.beta, self.trans_a, self.trans_b);
            (T::tile_kernels().gemm.clone(), p.to_vec())
        };
        Ok(rt
            .task(&kernel)
            .name(name)
            .read(self.a)
            .read(self.b)
            .read_write(self.c)
            .params(&params)
            .submit()?)
    }
}

/// The lower Cholesky factor `L` of a symmetric positive definite matrix (`A = L·Lᵀ`), from
/// [`Matrix::cholesky`]: the tiles above the diagonal are zero tiles.
#[derive(Debug)]
pub struct Cholesky<'rt, T: Scalar> {
    l: Matrix<'rt, T>,
}

impl<'rt, T: Scalar> Cholesky<'rt, T> {
    /// The factor `L`.
    pub fn factor(&self) -> &Matrix<'rt, T> {
        &self.l
    }

    /// The factor, taken out.
    pub fn into_factor(self) -> Matrix<'rt, T> {
        self.l
    }

    /// `X` with `A·X = B` (`B` `n`×`r`, its tile rows those of `A`): `L·Y = B` forward, then
    /// `Lᵀ·X = Y` backward, on a copy of `B`.
    pub fn solve(&self, b: &Matrix<'rt, T>) -> Result<Matrix<'rt, T>, ArrayError> {
        let l = &self.l;
        let _together = l.rt.hold_submissions();
        if b.rows != l.rows || b.tile_rows != l.tile_rows {
            return Err(ArrayError::Shape {
                op: "solve",
                message: format!(
                    "the factor is {}×{} in tiles of {}; the right-hand side '{}' is {}×{} in tiles of {} rows: it needs {} rows in tiles of {}",
                    l.rows, l.cols, l.tile_rows, b.name, b.rows, b.cols, b.tile_rows, l.rows, l.tile_rows
                ),
            });
        }
        let name = Matrix::<T>::result_name("solve", &[&l.name, &b.name]);
        let mut x = b.copy_named(name)?;
        let kernels = T::tile_kernels();
        let (nt, ct) = (l.grid_rows(), x.grid_cols());
        let trsm = |x: &mut Matrix<'rt, T>, i: usize, j: usize, which: TriangularSolve, label: &str| {
            let (m, r) = (x.tile_rows_of(i), x.tile_cols_of(j));
            let xt = x.tile(i, j).expect("a copy has every tile");
            let h =
                l.rt.task(&kernels.trsm)
                    .name(format!("{label} {}[{i},{j}]", x.name))
                    .read(l.tile(i, i).expect("a factor has its diagonal"))
                    .read_write(xt)
                    .params(&trsm_params(m, r, which))
                    .submit()?;
            x.wrote(i, j, h);
            Ok::<(), ArrayError>(())
        };
        // Forward: Y_i = L_ii⁻¹·(B_i − Σ_{j<i} L_ij·Y_j), then backward:
        // X_i = L_ii⁻ᵀ·(Y_i − Σ_{j>i} L_jiᵀ·X_j). The same sweep, mirrored.
        for forward in [true, false] {
            let (label, which) = if forward {
                ("forward", TriangularSolve::LeftLower)
            } else {
                ("backward", TriangularSolve::LeftLowerTransposed)
            };
            for k in 0..nt {
                let i = if forward { k } else { nt - 1 - k };
                let done = if forward { 0..i } else { i + 1..nt };
                for c in 0..ct {
                    for j in done.clone() {
                        // L_ij, or L_jiᵀ backward: both j's rows of X by i's.
                        let (a, name) = if forward {
                            (l.tile(i, j), format!("{}[{i},{j}]", l.name))
                        } else {
                            (l.tile(j, i), format!("{}[{j},{i}]ᵀ", l.name))
                        };
                        let g = TileGemm {
                            a: a.expect("the factor's lower tiles"),
                            b: x.tile(j, c).expect("a copy has every tile"),
                            c: x.tile(i, c).expect("a copy has every tile"),
                            mnk: (x.tile_rows_of(i), x.tile_cols_of(c), l.tile_rows_of(j)),
                            alpha: -1.0,
                            beta: 1.0,
                            trans_a: !forward,
                            trans_b: false,
                        };
                        let h = g.submit(l.rt, format!("{label} {}[{i},{c}] -= {name}·[{j},{c}]", x.name))?;
                        x.wrote(i, c, h);
                    }
                    trsm(&mut x, i, c, which, label)?;
                }
            }
        }
        Ok(x)
    }
}

impl<'rt, T: Scalar> Matrix<'rt, T> {
    /// A copy of this matrix (same tiling), named `name`: one copy task per tile.
    pub(crate) fn copy_named(&self, name: String) -> Result<Self, ArrayError> {
        let _together = self.rt.hold_submissions();
        let mut out = self.like(name, self.rows, self.cols, self.tile_rows, self.tile_cols);
        let copy = &T::tile_kernels().copy;
        for ti in 0..self.grid_rows() {
            for tj in 0..self.grid_cols() {
                let Some(src) = self.tile(ti, tj) else { continue };
                let len = self.tile_rows_of(ti) * self.tile_cols_of(tj);
                out.set_tile(ti, tj, vec![T::ZERO; len]);
                let dst = out.tile(ti, tj).expect("just set");
                let h = self
                    .rt
                    .task(copy)
                    .name(format!("copy {}[{ti},{tj}]", out.name))
                    .read(src)
                    .write(dst)
                    .submit()?;
                out.wrote(ti, tj, h);
            }
        }
        Ok(out)
    }

    /// A copy of this matrix (same tiling).
    pub fn copy(&self) -> Result<Self, ArrayError> {
        self.copy_named(Self::result_name("copy", &[&self.name]))
    }

    /// `self · other`: tile rows of `self`, tile columns of `other`; the tile columns of
    /// `self` must be the tile rows of `other`.
    pub fn matmul(&self, other: &Matrix<'rt, T>) -> Result<Self, ArrayError> {
        self.matmul_ex(false, other, false)
    }

    /// `selfᵀ · other` (`trans_self`), `self · otherᵀ` (`trans_other`), or both, with the
    /// same tiling rules on the transposed operands.
    pub fn matmul_ex(&self, trans_self: bool, other: &Matrix<'rt, T>, trans_other: bool) -> Result<Self, ArrayError> {
        let _together = self.rt.hold_submissions();
        // The operands as the product sees them: shape and tile shape of op(X).
        let op = |x: &Matrix<'rt, T>, t: bool| {
            if t {
                (x.cols, x.rows, x.tile_cols, x.tile_rows)
            } else {
                (x.rows, x.cols, x.tile_rows, x.tile_cols)
            }
        };
        let (m, k, tm, tk) = op(self, trans_self);
        let (k2, n, tk2, tn) = op(other, trans_other);
        if k != k2 || tk != tk2 {
            return Err(ArrayError::Shape {
                op: "matmul",
                message: format!(
                    "'{}' is {m}×{k} in tiles of {tm}×{tk} and '{}' is {k2}×{n} in tiles of {tk2}×{tn} (as multiplied): the inner sizes and tile sizes must match",
                    self.name, other.name
                ),
            });
        }
        let name = Self::result_name("matmul", &[&self.name, &other.name]);
        let mut c = self.like(name, m, n, tm, tn);
        // op(X)'s tile (i, j) is X's (j, i) when transposed.
        let at = |x: &Matrix<'rt, T>, t: bool, i: usize, j: usize| if t { x.tile(j, i) } else { x.tile(i, j) };
        for i in 0..c.grid_rows() {
            for j in 0..c.grid_cols() {
                let mut first = true;
                for p in 0..k.div_ceil(tk) {
                    let (Some(a), Some(b)) = (at(self, trans_self, i, p), at(other, trans_other, p, j)) else {
                        // A zero tile adds nothing.
                        continue;
                    };
                    let ct = c.tile_or_zeros(i, j);
                    let kp = tk.min(k - p * tk);
                    let g = TileGemm {
                        a,
                        b,
                        c: ct,
                        mnk: (c.tile_rows_of(i), c.tile_cols_of(j), kp),
                        alpha: 1.0,
                        beta: if first { 0.0 } else { 1.0 },
                        trans_a: trans_self,
                        trans_b: trans_other,
                    };
                    first = false;
                    let h = g.submit(self.rt, format!("gemm {}[{i},{j}] += [{i},{p}]·[{p},{j}]", c.name))?;
                    c.wrote(i, j, h);
                }
            }
        }
        Ok(c)
    }

    /// The lower Cholesky factor of this symmetric positive definite matrix (its lower
    /// triangle is read), computed on a copy; square tiles. A pivot that is not positive
    /// fails the `potrf` task of its diagonal tile, naming the pivot's row in the matrix,
    /// and the tasks after it are skipped naming that one: [`Matrix::wait`] or reading the
    /// factor or a solution says so.
    pub fn cholesky(&self) -> Result<Cholesky<'rt, T>, ArrayError> {
        self.check_square("cholesky")?;
        let _together = self.rt.hold_submissions();
        let name = Self::result_name("chol", &[&self.name]);
        // The lower triangle's tiles, copied.
        let mut l = self.like(name, self.rows, self.cols, self.tile_rows, self.tile_cols);
        let nt = self.grid_rows();
        let copy = &T::tile_kernels().copy;
        for i in 0..nt {
            for j in 0..=i {
                let src = self.tile(i, j);
                let dst = l.tile_or_zeros(i, j);
                if let Some(src) = src {
                    let h = self
                        .rt
                        .task(copy)
                        .name(format!("copy {}[{i},{j}]", l.name))
                        .read(src)
                        .write(dst)
                        .submit()?;
                    l.wrote(i, j, h);
                }
            }
        }
        l.factor_in_place()
    }

    /// [`Matrix::cholesky`] in this matrix's own tiles: no copy; the tiles above the
    /// diagonal are freed.
    pub fn into_cholesky(mut self) -> Result<Cholesky<'rt, T>, ArrayError> {
        self.check_square("cholesky")?;
        let rt = self.rt;
        let _together = rt.hold_submissions();
        let nt = self.grid_rows();
        for i in 0..nt {
            for j in 0..nt {
                if j > i {
                    if let Some(t) = self.tiles[i * nt + j].take() {
                        let _ = self.rt.free_when_done(t);
                    }
                    self.writers[i * nt + j] = None;
                } else {
                    self.tile_or_zeros(i, j);
                }
            }
        }
        self.factor_in_place()
    }

    fn check_square(&self, op: &'static str) -> Result<(), ArrayError> {
        if self.rows != self.cols || self.tile_rows != self.tile_cols {
            return Err(ArrayError::Shape {
                op,
                message: format!(
                    "'{}' is {}×{} in tiles of {}×{}: the factorisation needs a square matrix in square tiles",
                    self.name, self.rows, self.cols, self.tile_rows, self.tile_cols
                ),
            });
        }
        Ok(())
    }

    /// The right-looking factorisation over this matrix's lower tiles (all present).
    fn factor_in_place(mut self) -> Result<Cholesky<'rt, T>, ArrayError> {
        let rt = self.rt;
        let l = &mut self;
        let nt = l.grid_rows();
        let kernels = T::tile_kernels();
        let b = l.tile_rows;
        let f32_tiles = T::ELEM == ElemType::F32;
        for k in 0..nt {
            let mk = l.tile_rows_of(k);
            let lkk = l.tile(k, k).expect("made above");
            let h = rt
                .task(&kernels.potrf)
                .name(format!("potrf {}[{k},{k}]", l.name))
                .read_write(lkk)
                .params(&[mk as f64, (k * b) as f64])
                .submit()?;
            l.wrote(k, k, h);
            for i in k + 1..nt {
                let lik = l.tile(i, k).expect("made above");
                let name = format!("trsm {}[{i},{k}]", l.name);
                let h = if f32_tiles && l.tile_rows_of(i) == b && mk == b {
                    rt.task(&linalg::trsm()).name(name).read(lkk).read_write(lik).submit()?
                } else {
                    let p = trsm_params(l.tile_rows_of(i), mk, TriangularSolve::RightLowerTransposed);
                    rt.task(&kernels.trsm)
                        .name(name)
                        .read(lkk)
                        .read_write(lik)
                        .params(&p)
                        .submit()?
                };
                l.wrote(i, k, h);
            }
            for i in k + 1..nt {
                for j in k + 1..=i {
                    let g = TileGemm {
                        a: l.tile(i, k).expect("made above"),
                        b: l.tile(j, k).expect("made above"),
                        c: l.tile(i, j).expect("made above"),
                        mnk: (l.tile_rows_of(i), l.tile_rows_of(j), mk),
                        alpha: -1.0,
                        beta: 1.0,
                        trans_a: false,
                        trans_b: true,
                    };
                    let what = if i == j { "syrk" } else { "gemm" };
                    let h = g.submit(rt, format!("{what} {}[{i},{j}] -= [{i},{k}]·[{j},{k}]ᵀ", l.name))?;
                    l.wrote(i, j, h);
                }
            }
        }
        Ok(Cholesky { l: self })
    }

    /// `X` with `self·X = b`, for a symmetric positive definite `self`: [`Matrix::cholesky`]
    /// then [`Cholesky::solve`].
    pub fn solve_spd(&self, b: &Matrix<'rt, T>) -> Result<Self, ArrayError> {
        self.cholesky()?.solve(b)
    }
}
