//! The built-in kernels.
//!
//! - Synthetic, for benchmarks and graph replays: [`noop`], [`spin`] (busy-waits its first
//!   parameter in seconds), [`sleep`] (sleeps it). They accept any operands, so a replayed
//!   workflow can still declare the files each task reads and writes.
//! - Numeric over `f32` slices, each with a CPU and a GPU (WGSL) implementation: [`fill`],
//!   [`scale`], [`axpy`], [`add`], [`multiply`], the reductions [`sum`], [`min`], [`max`]
//!   (on CPUs they fold in independent lanes, which vectorise: eight `f64` ones for `sum`,
//!   sixteen for `min` and `max`), and [`gemm`] (on CPUs faer's, through [`crate::dense`]).
//! - [`mix`]: writes a hash of everything it reads into everything it writes (`u64`). Any
//!   reordering of dependent tasks changes the final values, which makes it the kernel of
//!   choice for checking that a schedule respected every dependency.
//!
//! The Cholesky tile kernels are in [`crate::linalg`]; the registry holds both sets.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::context::CpuContext;
use crate::gpu;
use crate::kernel::{Kernel, KernelError, Signature};
use crate::types::{Access, ElemType};

macro_rules! builtin {
    ($(#[$doc:meta])* $fn_name:ident, $make:expr) => {
        $(#[$doc])*
        pub fn $fn_name() -> Arc<Kernel> {
            static CELL: OnceLock<Arc<Kernel>> = OnceLock::new();
            CELL.get_or_init(|| Arc::new($make)).clone()
        }
    };
}

fn duration_param(ctx: &CpuContext<'_>) -> Result<Duration, KernelError> {
    let secs = ctx.param(0)?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        KernelError::msg(format!(
            "duration must be a finite, non-negative number of seconds, got {secs}"
        ))
    })
}

builtin!(
    /// Does nothing: the unit of per-task overhead.
    noop,
    Kernel::cpu("noop", Signature::any(0, usize::MAX), |_| Ok(()))
);

builtin!(
    /// Busy-waits `params[0]` seconds on the core it runs on (less if cancelled).
    spin,
    Kernel::cpu("spin", Signature::any(1, 1), |ctx| {
        let d = duration_param(ctx)?;
        let start = Instant::now();
        let mut polls = 0u32;
        while start.elapsed() < d {
            polls = polls.wrapping_add(1);
            if polls % 1024 == 0 && ctx.cancelled() {
                break;
            }
            std::hint::spin_loop();
        }
        Ok(())
    })
);

builtin!(
    /// Sleeps `params[0]` seconds (the core is free for the OS meanwhile, not for hexec),
    /// waking every millisecond to see whether it was cancelled.
    sleep,
    Kernel::cpu("sleep", Signature::any(1, 1), |ctx| {
        sleep_unless(duration_param(ctx)?, || ctx.cancelled());
        Ok(())
    })
);

/// Sleeps `d`, waking every millisecond to return early once `stop` says so: how a long
/// kernel honours [`CpuContext::cancelled`] (and how hexec's injected stragglers do).
pub fn sleep_unless(d: Duration, stop: impl Fn() -> bool) {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
        if stop() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(1)));
    }
}

builtin!(
    /// `x[i] = value` for every element of its one `f32` operand (write).
    fill,
    Kernel::cpu("fill", Signature::exact(&[(Access::Write, ElemType::F32)], 1), |ctx| {
        let v = ctx.param(0)? as f32;
        ctx.write::<f32>(0)?.fill(v);
        Ok(())
    })
    .with_gpu(gpu::elementwise(include_str!("../shaders/fill.wgsl"), 1, 0))
);

builtin!(
    /// `x[i] *= alpha` (read-write `f32`).
    scale,
    Kernel::cpu("scale", Signature::exact(&[(Access::ReadWrite, ElemType::F32)], 1), |ctx| {
        let a = ctx.param(0)? as f32;
        ctx.write::<f32>(0)?.iter_mut().for_each(|x| *x *= a);
        Ok(())
    })
    .with_gpu(gpu::elementwise(include_str!("../shaders/scale.wgsl"), 1, 0))
);

builtin!(
    /// `y[i] += alpha * x[i]`: reads `x`, read-writes `y`; both `f32` of equal length.
    axpy,
    Kernel::cpu(
        "axpy",
        Signature::exact(&[(Access::Read, ElemType::F32), (Access::ReadWrite, ElemType::F32)], 1),
        |ctx| {
            let a = ctx.param(0)? as f32;
            let x = ctx.read::<f32>(0)?;
            let y = ctx.write::<f32>(1)?;
            if x.len() != y.len() {
                return Err(KernelError::msg(format!("x has {} elements, y has {}", x.len(), y.len())));
            }
            y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
            Ok(())
        }
    )
    .with_gpu(gpu::elementwise(include_str!("../shaders/axpy.wgsl"), 2, 1))
);

builtin!(
    /// `z[i] = x[i] + y[i]`: reads `x` and `y`, writes `z`; all `f32` of equal length.
    add,
    Kernel::cpu(
        "add",
        Signature::exact(
            &[(Access::Read, ElemType::F32), (Access::Read, ElemType::F32), (Access::Write, ElemType::F32)],
            0
        ),
        |ctx| {
            let (x, y, z) = (ctx.read::<f32>(0)?, ctx.read::<f32>(1)?, ctx.write::<f32>(2)?);
            if x.len() != y.len() || x.len() != z.len() {
                return Err(KernelError::msg(format!(
                    "lengths differ: x {}, y {}, z {}",
                    x.len(),
                    y.len(),
                    z.len()
                )));
            }
            for ((z, x), y) in z.iter_mut().zip(x).zip(y) {
                *z = x + y;
            }
            Ok(())
        }
    )
    .with_gpu(gpu::map2("x + y"))
);

builtin!(
    /// `s[0] = sum(x)`: reads `x` (`f32`), writes `s` (`f32`, at least one element). Sums in
    /// `f64` so that the result does not depend on the slice length's rounding drift.
    sum,
    reduction_kernel("sum", |x| sum_f64(x) as f32)
);

/// SplitMix64's finaliser: a cheap, well-mixing bijection on `u64`.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

builtin!(
    /// Folds `params[0]` (a seed) and the contents of every readable `u64` operand, in operand
    /// order, into one hash; then fills every writable operand with values derived from it.
    mix,
    Kernel::cpu("mix", Signature::any(1, 1), |ctx| {
        let mut acc = mix64(ctx.param(0)?.to_bits());
        let mut outputs: Vec<&mut [u64]> = Vec::new();
        for i in 0..ctx.num_operands() {
            match ctx.operand(i)?.access() {
                Access::Read => {
                    for &w in ctx.read::<u64>(i)? {
                        acc = mix64(acc ^ w);
                    }
                }
                Access::ReadWrite => {
                    let s = ctx.write::<u64>(i)?;
                    for &w in s.iter() {
                        acc = mix64(acc ^ w);
                    }
                    outputs.push(s);
                }
                Access::Write => outputs.push(ctx.write::<u64>(i)?),
            }
        }
        for (k, out) in outputs.into_iter().enumerate() {
            let base = mix64(acc ^ k as u64);
            for (j, w) in out.iter_mut().enumerate() {
                *w = mix64(base.wrapping_add(j as u64));
            }
        }
        Ok(())
    })
);

builtin!(
    /// `z[i] = x[i] * y[i]`: reads `x` and `y`, writes `z`; all `f32` of equal length.
    multiply,
    Kernel::map2("multiply", "x * y", |x, y| x * y)
);

/// The sum of `x` in `f64`, over eight independent partial sums: a single running sum is one
/// long dependency chain that no compiler vectorises; eight lanes vectorise with the
/// baseline instruction set of any x86-64 or aarch64 machine (no `target-cpu` needed).
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// `f` over `x` in sixteen lanes (see [`sum_f64`]); `f` is generic, not a function pointer,
/// so that it is inlined into the loop.
fn fold_lanes<F: Fn(f32, f32) -> f32>(x: &[f32], init: f32, f: F) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    tail.iter().fold(acc.iter().copied().fold(init, &f), |a, &v| f(a, v))
}

/// A reduction kernel: reads `x` (`f32`), writes `reduce(x)` into `s[0]` (`f32`, at least
/// one element); on GPUs, WGSL's reduction `name`.
fn reduction_kernel<R>(name: &'static str, reduce: R) -> Kernel
where
    R: Fn(&[f32]) -> f32 + Send + Sync + 'static,
{
    Kernel::cpu(
        name,
        Signature::exact(&[(Access::Read, ElemType::F32), (Access::Write, ElemType::F32)], 0),
        move |ctx| {
            let x = ctx.read::<f32>(0)?;
            let out = ctx.write::<f32>(1)?;
            let Some(out) = out.first_mut() else {
                return Err(KernelError::msg(format!(
                    "the output of {name} needs at least one element"
                )));
            };
            *out = reduce(x);
            Ok(())
        },
    )
    .with_gpu(gpu::reduction(name))
}

fn fold_kernel<F>(name: &'static str, init: f32, f: F) -> Kernel
where
    F: Fn(f32, f32) -> f32 + Copy + Send + Sync + 'static,
{
    reduction_kernel(name, move |x| fold_lanes(x, init, f))
}

builtin!(
    /// `s[0] = min(x)` (`f32::MAX` for an empty `x`).
    min,
    fold_kernel("min", f32::MAX, f32::min)
);

builtin!(
    /// `s[0] = max(x)` (`f32::MIN` for an empty `x`).
    max,
    fold_kernel("max", f32::MIN, f32::max)
);

/// Checks GEMM operands against params `[m, n, k, alpha, beta]` and operand lengths; returns
/// `(m, n, k)`.
pub fn gemm_dims(params: &[f64], lens: &[u64]) -> Result<(usize, usize, usize), String> {
    let dim = |i: usize, what: &str| -> Result<usize, String> {
        let v = params
            .get(i)
            .copied()
            .ok_or_else(|| format!("missing parameter {what}"))?;
        if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v) {
            return Err(format!("{what} = {v} is not a size"));
        }
        Ok(v as usize)
    };
    let (m, n, k) = (dim(0, "m")?, dim(1, "n")?, dim(2, "k")?);
    let want = [(m * k, "A (m×k)"), (k * n, "B (k×n)"), (m * n, "C (m×n)")];
    for (i, (len, what)) in want.iter().enumerate() {
        let got = lens.get(i).copied().unwrap_or(0);
        if got < *len as u64 {
            return Err(format!("{what} needs {len} elements, operand {i} has {got}"));
        }
    }
    Ok((m, n, k))
}

builtin!(
    /// `C = alpha·A·B + beta·C`, row-major f32: reads A (m×k) and B (k×n), read-writes C
    /// (m×n); params `[m, n, k, alpha, beta]`.
    gemm,
    Kernel::cpu(
        "gemm",
        Signature::exact(
            &[(Access::Read, ElemType::F32), (Access::Read, ElemType::F32), (Access::ReadWrite, ElemType::F32)],
            5
        ),
        |ctx| {
            let (a, b, c) = (ctx.read::<f32>(0)?, ctx.read::<f32>(1)?, ctx.write::<f32>(2)?);
            let lens = [a.len() as u64, b.len() as u64, c.len() as u64];
            let (m, n, k) = gemm_dims(ctx.params(), &lens).map_err(KernelError::msg)?;
            let (alpha, beta) = (ctx.param(3)? as f32, ctx.param(4)? as f32);
            crate::dense::gemm(a, b, c, m, n, k, alpha, beta);
            Ok(())
        }
    )
    .with_gpu(gpu::gemm())
);

/// Every built-in kernel.
pub fn all() -> Vec<Arc<Kernel>> {
    vec![
        noop(),
        spin(),
        sleep(),
        fill(),
        scale(),
        axpy(),
        add(),
        multiply(),
        sum(),
        min(),
        max(),
        gemm(),
        mix(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::RawOperand;

    fn op<T: bytemuck::Pod>(v: &mut [T], elem: ElemType, access: Access) -> RawOperand<'_> {
        // SAFETY: `v` is a live, exclusively borrowed slice for the operand's lifetime; Vec<f32>
        // and Vec<u64> storage is aligned to at least 4, and the kernels below only view it as
        // the same element type.
        unsafe { RawOperand::new(v.as_mut_ptr().cast(), std::mem::size_of_val(v), elem, access) }
    }

    #[test]
    fn axpy_computes_and_checks_lengths() {
        let mut x = vec![1.0f32, 2.0, 3.0];
        let mut y = vec![10.0f32, 20.0, 30.0];
        let mut ops = [
            op(&mut x, ElemType::F32, Access::Read),
            op(&mut y, ElemType::F32, Access::ReadWrite),
        ];
        let ctx = CpuContext::new(&mut ops, &[2.0], 1);
        (axpy().cpu_impl().unwrap())(&ctx).unwrap();
        assert_eq!(y, vec![12.0, 24.0, 36.0]);

        let mut short = vec![0.0f32; 2];
        let mut y = vec![0.0f32; 3];
        let mut ops = [
            op(&mut short, ElemType::F32, Access::Read),
            op(&mut y, ElemType::F32, Access::ReadWrite),
        ];
        let ctx = CpuContext::new(&mut ops, &[1.0], 1);
        assert!((axpy().cpu_impl().unwrap())(&ctx).is_err());
    }

    #[test]
    fn context_refuses_conflicting_borrows_and_wrong_types() {
        let mut y = vec![0.0f32; 4];
        let mut ops = [op(&mut y, ElemType::F32, Access::ReadWrite)];
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let _w = ctx.write::<f32>(0).unwrap();
        assert!(matches!(
            ctx.read::<f32>(0),
            Err(KernelError::AlreadyBorrowed { index: 0 })
        ));
        assert!(matches!(
            ctx.write::<f32>(0),
            Err(KernelError::AlreadyBorrowed { index: 0 })
        ));
        assert!(matches!(ctx.read::<u32>(0), Err(KernelError::TypeMismatch { .. })));
        assert!(matches!(
            ctx.read::<f32>(1),
            Err(KernelError::MissingOperand { index: 1, count: 1 })
        ));
        let mut x = vec![0.0f32; 4];
        let mut ops = [op(&mut x, ElemType::F32, Access::Read)];
        let ctx = CpuContext::new(&mut ops, &[], 1);
        assert!(matches!(ctx.write::<f32>(0), Err(KernelError::AccessMismatch { .. })));
    }

    #[test]
    fn contexts_with_many_operands_track_borrows() {
        let mut bufs: Vec<Vec<u64>> = (0..70).map(|i| vec![i; 2]).collect();
        let mut ops: Vec<RawOperand<'_>> = bufs
            .iter_mut()
            .map(|b| op(b, ElemType::U64, Access::ReadWrite))
            .collect();
        let ctx = CpuContext::new(&mut ops, &[], 1);
        let last = ctx.write::<u64>(69).unwrap();
        assert!(matches!(
            ctx.read::<u64>(69),
            Err(KernelError::AlreadyBorrowed { index: 69 })
        ));
        assert_eq!(ctx.read::<u64>(65).unwrap(), &[65, 65]);
        assert!(matches!(
            ctx.write::<u64>(65),
            Err(KernelError::AlreadyBorrowed { index: 65 })
        ));
        last[0] = 7;
        drop(ctx);
        drop(ops);
        assert_eq!(bufs[69], vec![7, 69]);
    }

    #[test]
    fn mix_depends_on_inputs_and_seed() {
        let run = |seed: f64, input: u64| {
            let mut a = vec![input; 3];
            let mut out = vec![0u64; 2];
            let mut ops = [
                op(&mut a, ElemType::U64, Access::Read),
                op(&mut out, ElemType::U64, Access::Write),
            ];
            let params = [seed];
            let ctx = CpuContext::new(&mut ops, &params, 1);
            (mix().cpu_impl().unwrap())(&ctx).unwrap();
            out
        };
        assert_eq!(run(1.0, 5), run(1.0, 5));
        assert_ne!(run(1.0, 5), run(2.0, 5));
        assert_ne!(run(1.0, 5), run(1.0, 6));
    }

    #[test]
    fn spin_rejects_bad_durations_and_sum_sums() {
        let ctx = CpuContext::new(&mut [], &[-1.0], 1);
        assert!((spin().cpu_impl().unwrap())(&ctx).is_err());
        let ctx = CpuContext::new(&mut [], &[f64::NAN], 1);
        assert!((sleep().cpu_impl().unwrap())(&ctx).is_err());
        let mut x = vec![0.5f32; 10];
        let mut s = vec![0.0f32; 1];
        let mut ops = [
            op(&mut x, ElemType::F32, Access::Read),
            op(&mut s, ElemType::F32, Access::Write),
        ];
        let ctx = CpuContext::new(&mut ops, &[], 1);
        (sum().cpu_impl().unwrap())(&ctx).unwrap();
        assert_eq!(s[0], 5.0);
    }

    #[test]
    fn sleep_and_spin_stop_when_cancelled() {
        let yes = || true;
        for k in [sleep(), spin()] {
            let ctx = CpuContext::new(&mut [], &[60.0], 1).with_cancellation(&yes);
            let start = Instant::now();
            (k.cpu_impl().unwrap())(&ctx).unwrap();
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} ignored its cancellation",
                k.name()
            );
            assert!(ctx.saw_cancellation());
        }
        let ctx = CpuContext::new(&mut [], &[0.0], 1);
        assert!(
            !ctx.cancelled() && !ctx.saw_cancellation(),
            "no cancellation without a source"
        );
    }

    #[test]
    fn signatures_are_checked() {
        let sig = axpy().signature().clone();
        assert!(sig
            .check(
                &[
                    (Access::Read, Some(ElemType::F32)),
                    (Access::ReadWrite, Some(ElemType::F32))
                ],
                1
            )
            .is_ok());
        assert!(sig
            .check(&[(Access::Read, Some(ElemType::F32))], 1)
            .unwrap_err()
            .contains("2 operand"));
        assert!(sig
            .check(
                &[
                    (Access::Write, Some(ElemType::F32)),
                    (Access::ReadWrite, Some(ElemType::F32))
                ],
                1
            )
            .is_err());
        assert!(sig
            .check(
                &[
                    (Access::Read, Some(ElemType::F64)),
                    (Access::ReadWrite, Some(ElemType::F32))
                ],
                1
            )
            .is_err());
        assert!(sig
            .check(&[(Access::Read, None), (Access::ReadWrite, Some(ElemType::F32))], 1)
            .is_err());
        assert!(sig
            .check(
                &[
                    (Access::Read, Some(ElemType::F32)),
                    (Access::ReadWrite, Some(ElemType::F32))
                ],
                0
            )
            .is_err());
    }
}
