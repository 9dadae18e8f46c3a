//! Tiled Cholesky graphs: the generator behind `hexec gen cholesky`, and the loader of the
//! tiled-Cholesky DAG files in `shared/workloads/heterogeneous/cholesky_skylake_v100/dags`.
//!
//! Right-looking factorisation of an N×N grid of B×B single-precision tiles (the precision of
//! StarPU's Cholesky performance models): for each k, `potrf` on `A[k][k]`, `trsm` on the
//! tiles below it, then `syrk` on the diagonal and `gemm_nt` on the rest of the trailing
//! matrix ([`steps`]).
//!
//! The generator writes a graph that runs: f32 tiles whose `spd` init gives the blocks of
//! the positive definite matrix [`matrix_entry`], the tile kernels of
//! [`crate::linalg::TiledCholesky`], and a `cholesky` check that `hexec run` evaluates after
//! the run (the residual `‖A − L·Lᵀ‖/‖A‖`). The simulator reads the same file (it keeps only
//! the tiles' sizes; StarPU's `chol_model_gemm` prices `gemm_nt`). DAG files record no
//! contents: their tiles are size-only, for the simulator only.

use serde::Deserialize;

use super::{CheckSpec, DataSpec, GraphSpec, Init, LoadError, SpdBlock, TaskSpec};

/// The most tasks a Cholesky grid may have, in a DAG file (whose tiles are declared from
/// its `N` before its tasks are read) and in the generator: 2 million, which is 227 tiles
/// a side (the factorisation has about N³/6 tasks). Larger grids took gigabytes and tens of
/// seconds to declare (N = 4096 in a 37-byte file: 8.4 million tiles).
pub const MAX_TASKS: u64 = 2_000_000;

/// The number of tasks of the factorisation of an `n`×`n` grid ([`steps`]): `n` potrf,
/// `n(n−1)/2` trsm and syrk each, `n(n−1)(n−2)/6` gemm_nt; `None` past `u64`.
pub fn task_count(n: u64) -> Option<u64> {
    let pairs = n.checked_mul(n.saturating_sub(1))?;
    let gemms = pairs.checked_mul(n.saturating_sub(2))? / 6;
    n.checked_add(pairs)?.checked_add(gemms)
}

/// Whether an `n`×`n` grid is within [`MAX_TASKS`]; the error says what it would take.
pub fn check_grid(n: usize) -> Result<(), String> {
    match task_count(n as u64) {
        Some(t) if t <= MAX_TASKS => Ok(()),
        t => Err(format!(
            "{n} tiles per side is over the limit: its factorisation has {} tasks, at most {MAX_TASKS} are allowed",
            t.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string())
        )),
    }
}

/// Tile side used for DAG files, which do not record one (StarPU's measured 960).
pub const DEFAULT_TILE: usize = 960;

/// The largest `‖A − L·Lᵀ‖_F / ‖A‖_F` the generated check accepts. A correct f32
/// factorisation of the well-conditioned [`matrix_entry`] stays near 1e-7 at
/// every size hexec handles; one missing or misplaced tile update is far above.
pub const CHECK_TOLERANCE: f64 = 1e-5;

fn tile(i: usize, j: usize) -> String {
    format!("A[{i},{j}]")
}

/// The lower-triangle tiles of an `n`×`n` grid, size-only of `bytes` each (DAG files).
fn tiles(g: &mut GraphSpec, n: usize, bytes: u64) {
    for i in 0..n {
        for j in 0..=i {
            g.data.push(DataSpec {
                name: tile(i, j),
                elem: None,
                len: None,
                bytes: Some(bytes),
                init: None,
                read_only: false,
                temp: false,
            });
        }
    }
}

fn task(name: String, kernel: &str, access: Vec<(String, String)>) -> TaskSpec {
    let mut t = TaskSpec::replay(name, 0.0);
    t.kernel = kernel.into();
    t.params.clear();
    t.access = access;
    t
}

/// One task of the right-looking factorisation of an `n`×`n` grid: its name, its kernel
/// (`potrf`, `trsm`, `syrk` or `gemm_nt`, the registry's tile kernels), the tiles it reads and the tile it updates in place,
/// as (row, column) in the lower triangle.
pub struct Step {
    /// The task's name.
    pub name: String,
    /// The tile kernel.
    pub kernel: &'static str,
    /// The tiles it reads.
    pub reads: Vec<(usize, usize)>,
    /// The tile it updates.
    pub updates: (usize, usize),
}

/// The tasks of the tiled Cholesky of an `n`×`n` grid, in an order that respects their
/// dependencies: for each `k`, `potrf` on `A[k][k]`, `trsm` below it, then `syrk` on the
/// trailing diagonal and `gemm_nt` on the rest. The one description of the square-tile DAG,
/// for the generator here and for the runtime's [`crate::linalg::TiledCholesky`]; the array
/// module's factorisation (`array/linalg.rs`) is the same order over tiles of any shape,
/// with kernels chosen per tile shape and type.
pub fn steps(n: usize) -> impl Iterator<Item = Step> {
    let step = |name: String, kernel, reads: Vec<(usize, usize)>, updates| Step {
        name,
        kernel,
        reads,
        updates,
    };
    (0..n).flat_map(move |k| {
        let potrf = std::iter::once(step(format!("potrf({k})"), "potrf", vec![], (k, k)));
        let trsm = (k + 1..n).map(move |i| step(format!("trsm({i},{k})"), "trsm", vec![(k, k)], (i, k)));
        let trailing = (k + 1..n).flat_map(move |i| {
            std::iter::once(step(format!("syrk({i},{k})"), "syrk", vec![(i, k)], (i, i))).chain(
                (k + 1..i).map(move |j| step(format!("gemm_nt({i},{j},{k})"), "gemm_nt", vec![(i, k), (j, k)], (i, j))),
            )
        });
        potrf.chain(trsm).chain(trailing)
    })
}

/// The tiled Cholesky of `n_tiles`×`n_tiles` tiles of `tile_size`² f32, ready to run: tile
/// `(i, j)` starts as the block at `(i·b, j·b)` of the `n·b`-sided
/// [`matrix_entry`] (an `spd` init, a few bytes whatever the size), the tasks
/// are [`steps`], and a `cholesky` check compares `L·Lᵀ` with that matrix after the run.
pub fn generate(n_tiles: usize, tile_size: usize) -> GraphSpec {
    let mut g = GraphSpec::new(Some(format!("cholesky-{n_tiles}x{n_tiles}-b{tile_size}")));
    let (n, b) = (n_tiles as u64, tile_size as u64);
    let mut names = Vec::with_capacity(n_tiles);
    for i in 0..n_tiles {
        let mut row = Vec::with_capacity(i + 1);
        for j in 0..=i {
            g.data.push(DataSpec {
                name: tile(i, j),
                elem: Some("f32".into()),
                len: Some(b * b),
                bytes: None,
                init: Some(Init::Spd {
                    spd: SpdBlock {
                        size: n * b,
                        row: i as u64 * b,
                        col: j as u64 * b,
                        cols: b,
                    },
                }),
                read_only: false,
                temp: false,
            });
            row.push(tile(i, j));
        }
        names.push(row);
    }
    for s in steps(n_tiles) {
        let reads = s.reads.iter().map(|&(i, j)| (tile(i, j), "r".to_string()));
        let access = reads
            .chain([(tile(s.updates.0, s.updates.1), "rw".to_string())])
            .collect();
        g.tasks.push(task(s.name, s.kernel, access));
    }
    g.check.push(CheckSpec::Cholesky {
        tiles: names,
        tolerance: CHECK_TOLERANCE,
    });
    g
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "N")]
    n: usize,
    tasks: Vec<DagTask>,
}

#[derive(Deserialize)]
struct DagTask {
    id: u64,
    kernel: String,
    #[serde(default)]
    deps: Vec<u64>,
    writes: [usize; 2],
    #[serde(default)]
    reads: Vec<[usize; 2]>,
}

/// Loads a DAG file (`{"generator", "N", "tasks": [{"id", "kernel", "deps", "writes", "reads"}]}`).
pub(super) fn parse(file: &str, text: &str) -> Result<GraphSpec, LoadError> {
    let doc: Doc = serde_json::from_str(text).map_err(|e| LoadError::json(file, &e))?;
    // Every tile of the lower triangle is declared: bound the grid before allocating.
    check_grid(doc.n).map_err(|why| LoadError::new(file, "N", why))?;
    let mut g = GraphSpec::new(Some(file.to_string()));
    let bytes = (DEFAULT_TILE * DEFAULT_TILE * 4) as u64;
    tiles(&mut g, doc.n, bytes);
    let mut names = std::collections::HashMap::new();
    for (idx, t) in doc.tasks.iter().enumerate() {
        let pos = || format!("tasks[{idx}] (id {})", t.id);
        let kernel = t.kernel.to_lowercase();
        if !matches!(kernel.as_str(), "potrf" | "trsm" | "syrk" | "gemm") {
            return Err(LoadError::new(
                file,
                pos(),
                format!("unknown Cholesky kernel '{}'", t.kernel),
            ));
        }
        let in_range = |[i, j]: [usize; 2]| i < doc.n && j <= i;
        if !in_range(t.writes) || !t.reads.iter().all(|&x| in_range(x)) {
            return Err(LoadError::new(
                file,
                pos(),
                format!("a tile lies outside the lower triangle of {}x{} tiles", doc.n, doc.n),
            ));
        }
        let name = format!("{kernel}#{}", t.id);
        if names.insert(t.id, name.clone()).is_some() {
            return Err(LoadError::new(file, pos(), "task id appears twice"));
        }
        let mut access: Vec<(String, String)> = t.reads.iter().map(|&[i, j]| (tile(i, j), "r".to_string())).collect();
        access.push((tile(t.writes[0], t.writes[1]), "rw".into()));
        let mut spec = task(name, &kernel, access);
        spec.after = t
            .deps
            .iter()
            .map(|d| {
                names.get(d).cloned().ok_or_else(|| {
                    LoadError::new(
                        file,
                        pos(),
                        format!("depends on task id {d}, which is not listed before it"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        g.tasks.push(spec);
    }
    Ok(g)
}

/// Where tile `(i, j)` (`j ≤ i`) sits among the lower-triangle tiles, row by row.
pub(crate) fn tile_index(i: usize, j: usize) -> usize {
    i * (i + 1) / 2 + j
}

/// Entry `(i, j)` of the factorised matrix of side `size`: symmetric and diagonally dominant,
/// so positive definite. Graph files name it with the `spd` init kind
/// (`docs/graph-format.md`), which `hexec gen cholesky` writes.
pub fn matrix_entry(i: usize, j: usize, size: usize) -> f32 {
    1.0 / (1.0 + i.abs_diff(j) as f32) + if i == j { size as f32 } else { 0.0 }
}

/// [`matrix_entry`] in double precision (for f64 data).
pub fn matrix_entry_f64(i: usize, j: usize, size: usize) -> f64 {
    1.0 / (1.0 + i.abs_diff(j) as f64) + if i == j { size as f64 } else { 0.0 }
}

/// `‖A − L·Lᵀ‖_F / ‖A‖_F` of a tiled factorisation of an `n`×`n` grid of `b`×`b` tiles
/// (`‖A − L·Lᵀ‖_F` itself when `A` is zero). `l` holds the lower-triangle tiles of `L`, row
/// by row, row-major, each diagonal tile's upper triangle zero (as `potrf` leaves it); `a(i,
/// j)` gives tile `(i, j)` (`j ≤ i`) of the symmetric `A`. Computed tile by tile in double
/// precision with the tile kernel `C ← C − A·Bᵀ`, the tiles in parallel: as many flops as the
/// factorisation and no dense copy, so that checking a large factor costs no more than
/// computing it. The upper tiles count twice, by symmetry.
///
/// # Panics
/// If `l` does not hold `n(n+1)/2` tiles of `b²` elements, or `a` returns a tile of another
/// length (callers check the shapes first).
pub fn factor_residual(n: usize, b: usize, l: &[Vec<f32>], a: &(dyn Fn(usize, usize) -> Vec<f32> + Sync)) -> f64 {
    assert_eq!(l.len(), n * (n + 1) / 2, "one factor tile per lower-triangle tile");
    let l: Vec<Vec<f64>> = l.iter().map(|t| t.iter().map(|&x| f64::from(x)).collect()).collect();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..=i).map(move |j| (i, j))).collect();
    let tile = |&(i, j): &(usize, usize)| {
        let a_ij = a(i, j);
        assert_eq!(a_ij.len(), b * b, "tile ({i}, {j}) of A");
        let mut r: Vec<f64> = a_ij.iter().map(|&x| f64::from(x)).collect();
        for k in 0..=j {
            hexec_kernels::dense::gemm_nt_sub(&l[tile_index(i, k)], &l[tile_index(j, k)], &mut r, b);
        }
        let weight = if i == j { 1.0 } else { 2.0 };
        let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
        let a_sq: f64 = a_ij.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        (weight * sq(&r), weight * a_sq)
    };
    // The tiles in parallel on scoped threads (no thread-pool dependency on the library's
    // path): tiles dealt round-robin, since the rows' costs grow with `j`.
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(pairs.len())
        .max(1);
    let (residual, norm) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pairs, tile) = (&pairs, &tile);
                s.spawn(move || {
                    pairs
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(tile)
                        .fold((0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold((0.0, 0.0), |x: (f64, f64), y| (x.0 + y.0, x.1 + y.1))
    });
    if norm > 0.0 {
        (residual / norm).sqrt()
    } else {
        residual.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_counts_and_shapes() {
        for n in [1usize, 2, 5, 10] {
            let g = generate(n, 64);
            // n potrf, n(n-1)/2 trsm and syrk, n(n-1)(n-2)/6 gemm
            let gemms = if n >= 2 { n * (n - 1) * (n - 2) / 6 } else { 0 };
            assert_eq!(g.tasks.len(), n + n * (n - 1) + gemms);
            assert_eq!(g.data.len(), n * (n + 1) / 2);
        }
        let g = generate(3, 64);
        assert_eq!(g.tasks[0].name, "potrf(0)");
        assert_eq!(g.tasks.iter().filter(|t| t.kernel == "gemm_nt").count(), 1);
        assert!(g
            .tasks
            .iter()
            .all(|t| ["potrf", "trsm", "syrk", "gemm_nt"].contains(&t.kernel.as_str())));
    }

    #[test]
    fn grids_are_bounded_by_their_task_count() {
        for n in [0u64, 1, 2, 5, 10, 40] {
            assert_eq!(task_count(n), Some(steps(n as usize).count() as u64), "{n}");
        }
        assert!(check_grid(227).is_ok());
        let e = check_grid(228).unwrap_err();
        assert!(e.contains("over the limit") && e.contains("2000000"), "{e}");
        assert!(check_grid(usize::MAX).unwrap_err().contains("2^64"));
        let e = parse("c.json", r#"{"generator": "x", "N": 4096, "tasks": []}"#).unwrap_err();
        assert_eq!(e.position, "N");
        assert!(e.reason.contains("4096 tiles per side is over the limit"), "{e}");
    }

    #[test]
    fn dag_files_load_and_reject_bad_tiles() {
        let text = r#"{"generator": "x", "N": 2, "n_tasks": 3, "tasks": [
            {"id": 0, "kernel": "POTRF", "deps": [], "writes": [0, 0], "reads": []},
            {"id": 1, "kernel": "TRSM", "deps": [0], "writes": [1, 0], "reads": [[0, 0]]},
            {"id": 2, "kernel": "SYRK", "deps": [1], "writes": [1, 1], "reads": [[1, 0]]}]}"#;
        let g = parse("c.json", text).unwrap();
        assert_eq!(g.tasks.len(), 3);
        assert_eq!(g.tasks[2].after, vec!["trsm#1".to_string()]);
        let e = parse("c.json", &text.replace("[1, 1]", "[0, 1]")).unwrap_err();
        assert!(e.reason.contains("lower triangle"), "{e}");
        let e = parse("c.json", &text.replace("SYRK", "LU")).unwrap_err();
        assert!(e.reason.contains("'LU'"), "{e}");
    }
}
