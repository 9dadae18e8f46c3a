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
