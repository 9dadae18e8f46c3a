//! Tile kernels of the tiled Cholesky factorisation (`A = L·Lᵀ`), on square row-major f32
//! tiles of side `b` (every operand holds `b²` elements; `b` is derived from the lengths):
//!
//! - [`potrf`]: `A ← L` with `L·Lᵀ = A`, the lower Cholesky factor of a diagonal tile (the
//!   upper triangle is zeroed). CPU only: it is a chain of `b` dependent steps, the part of
//!   the factorisation a GPU does worst, and the one StarPU users also keep on CPUs.
//! - [`trsm`]: `X ← X·L⁻ᵀ` for a tile below the diagonal (reads `L`, read-writes `X`).
//! - [`syrk`]: `C ← C − A·Aᵀ` for a diagonal tile of the trailing matrix.
//! - [`gemm_nt`]: `C ← C − A·Bᵀ` for an off-diagonal tile of the trailing matrix.
//!
//! The CPU versions are faer's (see [`crate::dense`]); the GPU versions are in
//! `shaders/cholesky.wgsl` and `shaders/gemm_nt.wgsl`.

use std::sync::{Arc, OnceLock};

use crate::gpu::{self, Binding, GpuDims, GpuImpl, GpuPass, COMMON_WGSL};
use crate::kernel::{Kernel, KernelError, Signature};
use crate::types::{Access, ElemType};

macro_rules! kernel {
    ($(#[$doc:meta])* $fn_name:ident, $make:expr) => {
        $(#[$doc])*
        pub fn $fn_name() -> Arc<Kernel> {
            static CELL: OnceLock<Arc<Kernel>> = OnceLock::new();
            CELL.get_or_init(|| Arc::new($make)).clone()
        }
    };
}

/// The tile side `b` of operands of `b²` elements each, or why not.
pub fn tile_side(lens: &[u64]) -> Result<usize, String> {
    let first = *lens.first().ok_or("no operands")?;
    let b = (first as f64).sqrt().round() as u64;
    if b * b != first || b == 0 {
        return Err(format!("operand 0 has {first} elements, not the square of a tile side"));
    }
    if b > 4096 {
        return Err(format!("tile side {b} is over 4096"));
    }
    if let Some((i, &l)) = lens.iter().enumerate().find(|&(_, &l)| l != first) {
        return Err(format!(
            "operand {i} has {l} elements; every tile must have {first} ({b}×{b})"
        ));
    }
    Ok(b as usize)
}

fn side_of(ctx: &crate::CpuContext<'_>) -> Result<usize, KernelError> {
    let lens: Vec<u64> = (0..ctx.num_operands())
        .map(|i| ctx.operand(i).map(|o| (o.len_bytes() / 4) as u64))
        .collect::<Result<_, _>>()?;
    tile_side(&lens).map_err(KernelError::msg)
}

/// `C ← C − A·Bᵀ` on `b`×`b` row-major tiles.
pub fn gemm_nt_cpu(a: &[f32], b_: &[f32], c: &mut [f32], b: usize) {
    crate::dense::gemm_nt_sub(a, b_, c, b);
}

/// In-place lower Cholesky factor of a `b`×`b` row-major tile; the upper triangle is zeroed.
pub fn potrf_cpu(a: &mut [f32], b: usize) -> Result<(), String> {
    crate::dense::potrf(a, b)
}

/// `X ← X·L⁻ᵀ` on `b`×`b` row-major tiles, `L` lower triangular.
pub fn trsm_cpu(l: &[f32], x: &mut [f32], b: usize) {
    crate::dense::trsm_right_lower_t(l, x, b);
}

fn check_tiles(d: &GpuDims<'_>) -> Result<(), String> {
    tile_side(d.lens).map(|_| ())
}

fn gemm_nt_gpu(bindings: [usize; 3]) -> GpuImpl {
    GpuImpl {
        source: format!("{COMMON_WGSL}\n{}", include_str!("../shaders/gemm_nt.wgsl")).into(),
        passes: vec![GpuPass {
            entry: "gemm_nt".into(),
            bindings: vec![
                Binding::Params,
                Binding::Operand(bindings[0]),
                Binding::Operand(bindings[1]),
                Binding::Operand(bindings[2]),
            ],
            grid: Arc::new(|d| {
                // One workgroup per 64 x 64 block of C (see gemm_nt.wgsl).
                let b = tile_side(d.lens).unwrap_or(1) as u64;
                let g = b.div_ceil(64).max(1) as u32;
                [g, g, 1]
            }),
        }],
        scratch: Arc::new(|_| Vec::new()),
        check: Arc::new(check_tiles),
        with_subgroups: None,
        requires: Vec::new(),
    }
}

kernel!(
    /// `A ← L`, the lower Cholesky factor of one tile (read-write). CPU only.
    potrf,
    Kernel::cpu("potrf", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 0), |ctx| {
        let b = side_of(ctx)?;
        potrf_cpu(ctx.write::<f32>(0)?, b).map_err(KernelError::msg)
    })
);

kernel!(
    /// `X ← X·L⁻ᵀ`: reads `L` (lower triangular), read-writes `X`.
    trsm,
    Kernel::cpu(
        "trsm",
        Signature::exact(&[(Access::Read, ElemType::F32), (Access::ReadWrite, ElemType::F32)], 0),
        |ctx| {
            let b = side_of(ctx)?;
            trsm_cpu(ctx.read::<f32>(0)?, ctx.write::<f32>(1)?, b);
            Ok(())
        }
    )
    .with_gpu(GpuImpl {
        source: format!("{COMMON_WGSL}\n{}", include_str!("../shaders/cholesky.wgsl")).into(),
        passes: vec![GpuPass {
            entry: "trsm".into(),
            bindings: vec![Binding::Params, Binding::Operand(0), Binding::Operand(1)],
            // One workgroup per row.
            grid: Arc::new(|d| gpu::grid_1d(tile_side(d.lens).unwrap_or(1) as u64, 1)),
        }],
        scratch: Arc::new(|_| Vec::new()),
        check: Arc::new(check_tiles),
        with_subgroups: None,
        requires: Vec::new(),
    })
);

kernel!(
    /// `C ← C − A·Aᵀ`: reads `A`, read-writes `C`.
    syrk,
    Kernel::cpu(
        "syrk",
        Signature::exact(&[(Access::Read, ElemType::F32), (Access::ReadWrite, ElemType::F32)], 0),
        |ctx| {
            let b = side_of(ctx)?;
            let a = ctx.read::<f32>(0)?;
            gemm_nt_cpu(a, a, ctx.write::<f32>(1)?, b);
            Ok(())
        }
    )
    .with_gpu(gemm_nt_gpu([0, 0, 1]))
);

kernel!(
    /// `C ← C − A·Bᵀ`: reads `A` and `B`, read-writes `C`.
    gemm_nt,
    Kernel::cpu(
        "gemm_nt",
        Signature::exact(
            &[
                (Access::Read, ElemType::F32),
                (Access::Read, ElemType::F32),
                (Access::ReadWrite, ElemType::F32)
            ],
            0
        ),
        |ctx| {
            let b = side_of(ctx)?;
            gemm_nt_cpu(ctx.read::<f32>(0)?, ctx.read::<f32>(1)?, ctx.write::<f32>(2)?, b);
            Ok(())
        }
    )
    .with_gpu(gemm_nt_gpu([0, 1, 2]))
);

/// The four Cholesky tile kernels.
pub fn all() -> Vec<Arc<Kernel>> {
    vec![potrf(), trsm(), syrk(), gemm_nt()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symmetric, diagonally dominant (so positive definite) `n`×`n` matrix.
    fn spd(n: usize) -> Vec<f32> {
        let mut a = vec![0.0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = 1.0 / (1.0 + i.abs_diff(j) as f32) + if i == j { n as f32 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn potrf_factors_and_refuses_an_indefinite_tile() {
        for n in [1, 2, 7, 33] {
            let a = spd(n);
            let mut l = a.clone();
            potrf_cpu(&mut l, n).unwrap();
            for i in 0..n {
                for j in 0..n {
                    let llt: f32 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                    assert!((llt - a[i * n + j]).abs() < 1e-4 * a[i * n + i], "n={n} ({i},{j})");
                    if j > i {
                        assert_eq!(l[i * n + j], 0.0);
                    }
                }
            }
        }
        let mut bad = vec![1.0f32, 2.0, 2.0, 1.0];
        assert!(potrf_cpu(&mut bad, 2).unwrap_err().contains("pivot 1"));
    }

    #[test]
    fn trsm_inverts_the_factor_and_gemm_nt_subtracts() {
        let n = 9;
        let mut l = spd(n);
        potrf_cpu(&mut l, n).unwrap();
        // X = B·L⁻ᵀ ⇒ X·Lᵀ = B.
        let b: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut x = b.clone();
        trsm_cpu(&l, &mut x, n);
        let mut c = b.clone();
        // c = B − X·Lᵀ must vanish.
        gemm_nt_cpu(&x, &l, &mut c, n);
        assert!(c.iter().all(|v| v.abs() < 1e-4), "{c:?}");
    }

    #[test]
    fn tile_side_checks_squares_and_equal_lengths() {
        assert_eq!(tile_side(&[16, 16]), Ok(4));
        assert!(tile_side(&[15]).unwrap_err().contains("square"));
        assert!(tile_side(&[16, 9]).unwrap_err().contains("operand 1"));
    }
}
