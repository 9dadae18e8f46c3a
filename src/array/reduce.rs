//! Reductions: the sums of each row or column (a vector), and the sum of all elements.
//!
//! Tile by tile: each tile's sums are added into the output tile of its row (or column) of
//! tiles, one task after the other; they form a chain on that output tile, which fusion runs
//! on one worker (under every policy but `heft`, whose plan places each task). The total is the column sum of the row sums.

use super::{ArrayError, Matrix};
use crate::kernels::Scalar;

impl<'rt, T: Scalar> Matrix<'rt, T> {
    /// The sum of each row: a `rows`×1 matrix tiled as this one's rows.
    pub fn row_sums(&self) -> Result<Self, ArrayError> {
        self.sums(true)
    }

    /// The sum of each column: a 1×`cols` matrix tiled as this one's columns.
    pub fn col_sums(&self) -> Result<Self, ArrayError> {
        self.sums(false)
    }

    /// The sum of all elements, once computed (waits).
    pub fn sum(&self) -> Result<T, ArrayError> {
        let total = self.row_sums()?.col_sums()?;
        Ok(total.to_vec()?[0])
    }

    fn sums(&self, rows: bool) -> Result<Self, ArrayError> {
        let _together = self.rt.hold_submissions();
        let op = if rows { "row_sums" } else { "col_sums" };
        let name = Self::result_name(op, &[&self.name]);
        let mut out = if rows {
            self.like(name, self.rows, 1, self.tile_rows, 1)
        } else {
            self.like(name, 1, self.cols, 1, self.tile_cols)
        };
        let kernel = &T::tile_kernels().sum_axis;
        let (outer, inner) = if rows {
            (self.grid_rows(), self.grid_cols())
        } else {
            (self.grid_cols(), self.grid_rows())
        };
        for o in 0..outer {
            let (oi, oj) = if rows { (o, 0) } else { (0, o) };
            let dst = out.tile_or_zeros(oi, oj);
            let mut first = true;
            for k in 0..inner {
                let (ti, tj) = if rows { (o, k) } else { (k, o) };
                // A zero tile adds nothing.
                let Some(src) = self.tile(ti, tj) else { continue };
                let (m, n) = (self.tile_rows_of(ti), self.tile_cols_of(tj));
                let h = self
                    .rt
                    .task(kernel)
                    .name(format!("{op} {}[{oi},{oj}] += [{ti},{tj}]", out.name))
                    .read(src)
                    .read_write(dst)
                    .params(&[
                        m as f64,
                        n as f64,
                        f64::from(u8::from(rows)),
                        f64::from(u8::from(!first)),
                    ])
                    .submit()?;
                first = false;
                out.wrote(oi, oj, h);
            }
        }
        Ok(out)
    }
}
