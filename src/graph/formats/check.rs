//! Checks of a graph file's results (the native format's `check` section): what `hexec run`
//! evaluates after a run that completed, so that a file can say what a correct result is.
//!
//! One kind so far, `cholesky`: the lower-triangle tiles of a factor `L`, named row by row,
//! against the matrix `A` their `init` gave them — `‖A − L·Lᵀ‖_F / ‖A‖_F` at most
//! `tolerance` ([`crate::graph::formats::cholesky::factor_residual`]). `hexec gen cholesky` writes one.

use std::collections::HashMap;

use hexec_kernels::ElemType;
use serde::{Deserialize, Serialize};

use super::{DataSpec, GraphSpec, Init};
use crate::graph::DataRef;

/// One check of a native file's `check` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckSpec {
    /// `{"cholesky": {"tiles": [["A[0,0]"], ["A[1,0]", "A[1,1]"]], "tolerance": 1e-5}}`: the
    /// tiles (stored, square, f32, one size) hold `L` after the run and held `A` (their
    /// `init`; zeros without one) before it.
    Cholesky {
        /// The tiles, row by row (lower triangle).
        tiles: Vec<Vec<String>>,
        /// The largest residual accepted.
        tolerance: f64,
    },
}

impl CheckSpec {
    fn kind(&self) -> &'static str {
        match self {
            CheckSpec::Cholesky { .. } => "cholesky",
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckOutcome {
    /// `cholesky`.
    pub check: String,
    /// What `value` measures, for people.
    pub measure: String,
    /// The measure found.
    pub value: f64,
    /// The largest value accepted.
    pub tolerance: f64,
    /// `value ≤ tolerance` (a NaN is not).
    pub ok: bool,
}

impl std::fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "check {}: {} = {:.3e} (tolerance {:.1e}): {}",
            self.check,
            self.measure,
            self.value,
            self.tolerance,
            if self.ok { "OK" } else { "FAILED" }
        )
    }
}

/// A file's checks, bound to the data a build made ([`GraphSpec::build_checked`]).
#[derive(Clone, Debug, Default)]
pub struct Checks {
    checks: Vec<Bound>,
}

#[derive(Clone, Debug)]
enum Bound {
    Cholesky {
        n: usize,
        b: usize,
        /// Per lower-triangle tile, row by row: the store id and the initial contents.
        tiles: Vec<(u32, Option<Init>)>,
        tolerance: f64,
    },
}

/// A position in the file (`check[0]`) and why the check is wrong.
type CheckError = (String, String);

/// The tile side and shape of a `cholesky` check, or why the file's check is wrong.
fn cholesky_shape<'s>(
    spec: &'s GraphSpec,
    tiles: &'s [Vec<String>],
    tolerance: f64,
) -> Result<(usize, Vec<&'s DataSpec>), String> {
    if !(tolerance.is_finite() && tolerance > 0.0) {
        return Err(format!("tolerance must be a positive number, got {tolerance}"));
    }
    if tiles.is_empty() {
        return Err("\"tiles\" names no tile".into());
    }
    let by_name: HashMap<&str, &DataSpec> = spec.data.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut side = None;
    let mut out = Vec::with_capacity(tiles.len() * (tiles.len() + 1) / 2);
    for (i, row) in tiles.iter().enumerate() {
        if row.len() != i + 1 {
            return Err(format!(
                "row {i} of \"tiles\" names {} tiles; the lower triangle's row {i} has {}",
                row.len(),
                i + 1
            ));
        }
        for name in row {
            let d = by_name
                .get(name.as_str())
                .ok_or_else(|| format!("tile '{name}' is not a declared datum"))?;
            let len = match (d.elem.as_deref().and_then(ElemType::parse), d.len, d.temp) {
                (Some(ElemType::F32), Some(len), false) => len,
                _ => {
                    return Err(format!(
                        "tile '{name}' is not stored f32 data (\"type\": \"f32\", a \"len\", not \"temp\")"
                    ))
                }
            };
            let b = (len as f64).sqrt().round() as u64;
            if b == 0 || b * b != len {
                return Err(format!(
                    "tile '{name}' has {len} elements, not the square of a tile side"
                ));
            }
            if *side.get_or_insert(b) != b {
                return Err(format!(
                    "tile '{name}' has {len} elements, unlike the first tile's {}",
                    side.unwrap_or(b).pow(2)
                ));
            }
            out.push(*d);
        }
    }
    Ok((side.unwrap_or(0) as usize, out))
}

/// Checks the `check` section against the spec's data (for a simulator, which cannot run it).
pub(super) fn validate(spec: &GraphSpec) -> Result<(), CheckError> {
    for (k, c) in spec.check.iter().enumerate() {
        match c {
            CheckSpec::Cholesky { tiles, tolerance } => {
                cholesky_shape(spec, tiles, *tolerance).map_err(|why| (position(k, c), why))?;
            }
        }
    }
    Ok(())
}

fn position(k: usize, c: &CheckSpec) -> String {
    format!("check[{k}] ({})", c.kind())
}

/// Binds the `check` section to the data a build made (`data`, by name).
pub(crate) fn bind(spec: &GraphSpec, data: &HashMap<&str, DataRef>) -> Result<Checks, CheckError> {
    let mut checks = Vec::with_capacity(spec.check.len());
    for (k, c) in spec.check.iter().enumerate() {
        match c {
            CheckSpec::Cholesky { tiles, tolerance } => {
                let (b, specs) = cholesky_shape(spec, tiles, *tolerance).map_err(|why| (position(k, c), why))?;
                let n = tiles.len();
                let tiles = specs
                    .into_iter()
                    .map(|d| match data.get(d.name.as_str()) {
                        Some(DataRef::Stored { id, .. }) => Ok((*id, d.init.clone())),
                        _ => Err((position(k, c), format!("tile '{}' is not stored data", d.name))),
                    })
                    .collect::<Result<_, _>>()?;
                checks.push(Bound::Cholesky {
                    n,
                    b,
                    tiles,
                    tolerance: *tolerance,
                });
            }
        }
    }
    Ok(Checks { checks })
}

impl Checks {
    /// Whether the file has no check.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Evaluates every check on data read through `read` (a stored datum's id to its f32
    /// contents), after a run that completed. `Checks::evaluate` (in `runtime`) reads a
    /// runtime's store: `graph` reads no store itself.
    pub fn evaluate_with<E>(&self, read: &dyn Fn(u32) -> Result<Vec<f32>, E>) -> Result<Vec<CheckOutcome>, E> {
        self.checks.iter().map(|c| c.evaluate(read)).collect()
    }
}

impl Bound {
    fn evaluate<E>(&self, read: &dyn Fn(u32) -> Result<Vec<f32>, E>) -> Result<CheckOutcome, E> {
        match self {
            Bound::Cholesky { n, b, tiles, tolerance } => {
                let l = tiles.iter().map(|&(id, _)| read(id)).collect::<Result<Vec<_>, _>>()?;
                let len = b * b;
                // `A` again from the tiles' init (shapes were checked when the file was built).
                let a = |i: usize, j: usize| {
                    let mut tile = vec![0.0f32; len];
                    if let Some(init) = &tiles[i * (i + 1) / 2 + j].1 {
                        // Checked and written once already when the datum was made.
                        let _ = init.write_into(ElemType::F32, bytemuck::cast_slice_mut(&mut tile));
                    }
                    tile
                };
                let value = crate::graph::formats::cholesky::factor_residual(*n, *b, &l, &a);
                Ok(CheckOutcome {
                    check: "cholesky".into(),
                    measure: "residual ‖A − L·Lᵀ‖/‖A‖".into(),
                    value,
                    tolerance: *tolerance,
                    ok: value <= *tolerance,
                })
            }
        }
    }
}
