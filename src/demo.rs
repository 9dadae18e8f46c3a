//! The demo job `hexec demo` runs: a blockwise array computation over every core, checked
//! against the closed-form answer.
//!
//! For tiles `i = 0..T` of length `L`: `y_i = 1`, `x_i = i + 1`; `y_i += 2 x_i` (axpy);
//! `y_i *= 0.5` (scale); `s_i = sum(y_i)`; then a pairwise tree of `add` tasks reduces the
//! `s_i`. Every `y_i` ends as `i + 1.5`, so the total is `L · Σ (i + 1.5)`.

use crate::graph::{Data, Graph};
use crate::kernels::builtin;
use crate::runtime::{DataError, Runtime};

/// The demo graph and where its answer lands.
pub struct Demo {
    pub graph: Graph,
    pub total: Data<f32>,
    pub expected: f64,
}

/// Builds the demo on `rt` with `tiles` tiles of `tile_len` elements.
pub fn blockwise(rt: &Runtime, tiles: usize, tile_len: usize) -> Demo {
    let tiles = tiles.max(1);
    let mut g = rt.graph();
    let mut partial: Vec<Data<f32>> = Vec::with_capacity(tiles);
    for i in 0..tiles {
        let x = rt.data_named(format!("x{i}"), vec![(i + 1) as f32; tile_len]);
        let y = rt.data_named(format!("y{i}"), vec![1.0f32; tile_len]);
        let s = rt.data_named(format!("s{i}"), vec![0.0f32; 1]);
        g.task(&builtin::axpy())
            .name(format!("axpy{i}"))
            .read(x)
            .read_write(y)
            .param(2.0)
            .add();
        g.task(&builtin::scale())
            .name(format!("scale{i}"))
            .read_write(y)
            .param(0.5)
            .add();
        g.task(&builtin::sum()).name(format!("sum{i}")).read(y).write(s).add();
        partial.push(s);
    }
    let mut level = 0;
    while partial.len() > 1 {
        let mut next = Vec::with_capacity(partial.len().div_ceil(2));
        for (k, pair) in partial.chunks(2).enumerate() {
            match pair {
                [a, b] => {
                    let out = rt.data_named(format!("r{level}.{k}"), vec![0.0f32; 1]);
                    g.task(&builtin::add())
                        .name(format!("add{level}.{k}"))
                        .read(*a)
                        .read(*b)
                        .write(out)
                        .add();
                    next.push(out);
                }
                [a] => next.push(*a),
                _ => unreachable!("chunks(2) yields one or two"),
            }
        }
        partial = next;
        level += 1;
    }
    let expected = tile_len as f64 * (0..tiles).map(|i| i as f64 + 1.5).sum::<f64>();
    Demo {
        graph: g,
        total: partial[0],
        expected,
    }
}

impl Demo {
    /// Reads the result and compares it with the closed form (relative tolerance 1e-6).
    pub fn check(&self, rt: &Runtime) -> Result<(f64, bool), DataError> {
        let got = f64::from(rt.read(self.total)?[0]);
        Ok((got, (got - self.expected).abs() <= 1e-6 * self.expected.abs().max(1.0)))
    }
}

/// `hexec demo`'s main job: `A·x = b` for a random symmetric positive definite matrix, by
/// tiled Cholesky on every device of the runtime ([`crate::array`]), checked by residuals.
pub mod solve {
    use std::time::{Duration, Instant};

    use serde::Serialize;

    use crate::array::{ArrayError, Matrix};
    use crate::kernels::builtin::mix64;
    use crate::kernels::Scalar;
    use crate::runtime::{Runtime, RuntimeStats};

    /// What to solve.
    #[derive(Clone, Debug)]
    pub struct SolveConfig {
        /// The matrix's side.
        pub n: usize,
        /// The tile side.
        pub tile: usize,
        /// Largest relative residual accepted.
        pub tolerance: f64,
    }

    /// What happened.
    #[derive(Clone, Debug, Serialize)]
    pub struct SolveReport {
        pub n: usize,
        pub tile: usize,
        pub elem: String,
        /// Tiles per side.
        pub tiles: usize,
        pub factor_s: f64,
        pub factor_gflops: f64,
        pub solve_s: f64,
        /// Tasks run by the factorisation and the solve, per worker, and bytes moved.
        pub work: RuntimeStats,
        /// `‖L·Lᵀ·v − A·v‖ / ‖A·v‖` for a random `v`.
        pub factor_residual: f64,
        /// `‖A·x − b‖ / ‖b‖`.
        pub solution_residual: f64,
        pub tolerance: f64,
        pub ok: bool,
    }

    /// Element `(i, j)` of the demo's matrix: symmetric values in [-0.5, 0.5) off the
    /// diagonal, `n` on it (diagonally dominant, so positive definite and well conditioned).
    pub fn entry(i: usize, j: usize, n: usize) -> f64 {
        let (a, b) = (i.min(j), i.max(j));
        if a == b {
            return n as f64;
        }
        unit(mix64(((a as u64) << 32) ^ b as u64 ^ 0x5eed))
    }

    /// A hash as a value in [-0.5, 0.5).
    fn unit(h: u64) -> f64 {
        (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    fn norm<T: Scalar>(v: &[T]) -> f64 {
        v.iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>().sqrt()
    }

    fn diff_norm<T: Scalar>(a: &[T], b: &[T]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x.to_f64() - y.to_f64()).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Runs the demo in `T` on `rt`; `progress` is called about every 100 ms while the
    /// factorisation runs, with the tiles finished and the tiles to compute, and stops the
    /// demo when it returns false (`Ok(None)`: the tasks submitted are cancelled).
    pub fn run<T: Scalar>(
        rt: &Runtime,
        cfg: &SolveConfig,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<SolveReport>, ArrayError> {
        let (n, tile) = (cfg.n, cfg.tile);
        let a = Matrix::<T>::from_fn(rt, "A", n, n, tile, |i, j| T::from_f64(entry(i, j, n)))?;
        let b = Matrix::<T>::from_fn(rt, "b", n, 1, tile, |i, _| T::from_f64(unit(mix64(i as u64 ^ 0xb))))?;
        let v = Matrix::<T>::from_fn(rt, "v", n, 1, tile, |i, _| T::from_f64(unit(mix64(i as u64 ^ 0x7))))?;
        let before = rt.stats();
        let start = Instant::now();
        let chol = a.cholesky()?;
        // Progress every 100 ms; the end is seen within a millisecond or so, so that the
        // factor's time is its own, not the polling's.
        let mut shown = Instant::now() - Duration::from_secs(1);
        loop {
            let (done, total) = chol.factor().progress();
            if done == total {
                break;
            }
            if shown.elapsed() >= Duration::from_millis(100) {
                if !progress(done, total) {
                    chol.factor().cancel();
                    return Ok(None);
                }
                shown = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        chol.factor().wait()?;
        let factor_s = start.elapsed().as_secs_f64();
        let (done, total) = chol.factor().progress();
        progress(done, total);
        let solving = Instant::now();
        let x = chol.solve(&b)?;
        x.wait()?;
        let solve_s = solving.elapsed().as_secs_f64();
        let work = rt.stats().since(&before);
        // Residuals, on the runtime too.
        let ax = a.matmul(&x)?.to_vec()?;
        let bv = b.to_vec()?;
        let solution_residual = diff_norm(&ax, &bv) / norm(&bv);
        let l = chol.factor();
        let ltv = l.matmul_ex(true, &v, false)?;
        let lltv = l.matmul(&ltv)?.to_vec()?;
        let av = a.matmul(&v)?.to_vec()?;
        let factor_residual = diff_norm(&lltv, &av) / norm(&av);
        let nt = n.div_ceil(tile);
        Ok(Some(SolveReport {
            n,
            tile,
            elem: T::ELEM.to_string(),
            tiles: nt,
            factor_s,
            factor_gflops: (n as f64).powi(3) / 3.0 / factor_s / 1e9,
            solve_s,
            work,
            factor_residual,
            solution_residual,
            tolerance: cfg.tolerance,
            ok: factor_residual <= cfg.tolerance && solution_residual <= cfg.tolerance,
        }))
    }
}
