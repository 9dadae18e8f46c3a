//! Tiled arrays: every operation against a straightforward reference, for odd shapes and
//! tile sizes that do not divide them, in f32 and f64; failures that name the tile and the
//! pivot; tiles freed when their matrix drops.

use hexec::array::{ArrayError, Matrix};
use hexec::kernels::Scalar;
use hexec::topology::Machine;
use hexec::{Runtime, TaskError};

fn runtime() -> Runtime {
    Runtime::builder().machine(Machine::synthetic_cpus(2)).build().unwrap()
}

/// Deterministic values in [-1, 1).
fn noise(i: usize, j: usize, seed: usize) -> f64 {
    let h = hexec::kernels::builtin::mix64((i * 7919 + j * 104_729 + seed) as u64);
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// A symmetric positive definite matrix: noise made symmetric, plus n on the diagonal.
fn spd(n: usize) -> impl Fn(usize, usize) -> f64 {
    move |i, j| {
        let (a, b) = (i.min(j), i.max(j));
        noise(a, b, 1) + if i == j { n as f64 } else { 0.0 }
    }
}

fn naive(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

fn as_f64<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Largest |a − b| over the largest |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_matmul<T: Scalar>(tol: f64) {
    let rt = runtime();
    for (m, n, k, tile) in [(7, 5, 3, 2), (13, 11, 17, 4), (9, 9, 9, 9), (6, 4, 5, 16), (1, 1, 1, 1)] {
        let fa = |i: usize, j: usize| noise(i, j, 2);
        let fb = |i: usize, j: usize| noise(i, j, 3);
        let a = Matrix::from_fn(&rt, "A", m, k, tile, |i, j| T::from_f64(fa(i, j))).unwrap();
        let b = Matrix::from_fn(&rt, "B", k, n, tile, |i, j| T::from_f64(fb(i, j))).unwrap();
        let av: Vec<f64> = (0..m * k).map(|x| T::from_f64(fa(x / k, x % k)).to_f64()).collect();
        let bv: Vec<f64> = (0..k * n).map(|x| T::from_f64(fb(x / n, x % n)).to_f64()).collect();
        let want = naive(&av, &bv, m, n, k);
        let c = a.matmul(&b).unwrap();
        assert_eq!((c.rows(), c.cols()), (m, n));
        let got = as_f64(&c.to_vec().unwrap());
        assert!(rel_err(&got, &want) < tol, "{m}×{k}·{k}×{n} in tiles of {tile}");
        // Aᵀ·(A·B) against the reference, through the transposed product.
        let at_c = a.matmul_ex(true, &c, false).unwrap();
        let mut at = vec![0.0; k * m];
        for i in 0..m {
            for j in 0..k {
                at[j * m + i] = av[i * k + j];
            }
        }
        let want2 = naive(&at, &got, k, n, m);
        assert!(rel_err(&as_f64(&at_c.to_vec().unwrap()), &want2) < tol * 10.0);
    }
}

#[test]
fn matmul_matches_the_definition_for_odd_shapes_in_both_types() {
    check_matmul::<f32>(1e-5);
    check_matmul::<f64>(1e-13);
}

fn check_cholesky_and_solve<T: Scalar>(factor_tol: f64, solve_tol: f64) {
    let rt = runtime();
    for (n, tile, r) in [(37, 8, 1), (20, 5, 3), (9, 16, 2), (4, 1, 1)] {
        let f = spd(n);
        let a = Matrix::from_fn(&rt, "A", n, n, tile, |i, j| T::from_f64(f(i, j))).unwrap();
        let chol = a.cholesky().unwrap();
        let l = as_f64(&chol.factor().to_vec().unwrap());
        // L is lower triangular and L·Lᵀ = A.
        let mut lt = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                if j > i {
                    assert_eq!(l[i * n + j], 0.0, "L[{i},{j}] above the diagonal");
                }
                lt[j * n + i] = l[i * n + j];
            }
        }
        let av = as_f64(&a.to_vec().unwrap());
        let llt = naive(&l, &lt, n, n, n);
        let err = rel_err(&llt, &av);
        assert!(err < factor_tol, "n={n} tile={tile}: factor residual {err:e}");
        // A·X = B.
        let b = Matrix::from_fn(&rt, "B", n, r, tile, |i, j| T::from_f64(noise(i, j, 4))).unwrap();
        let x = chol.solve(&b).unwrap();
        let ax = naive(&av, &as_f64(&x.to_vec().unwrap()), n, r, n);
        let err = rel_err(&ax, &as_f64(&b.to_vec().unwrap()));
        assert!(err < solve_tol, "n={n} tile={tile}: solution residual {err:e}");
        // One call, same answer.
        let x2 = a.solve_spd(&b).unwrap();
        assert_eq!(as_f64(&x2.to_vec().unwrap()), as_f64(&x.to_vec().unwrap()));
    }
}

#[test]
fn cholesky_and_solve_match_the_matrix_in_both_types() {
    check_cholesky_and_solve::<f32>(1e-5, 1e-5);
    check_cholesky_and_solve::<f64>(1e-12, 1e-12);
}

#[test]
fn a_matrix_that_is_not_positive_definite_fails_naming_the_tile_and_the_pivot() {
    let rt = runtime();
    let n = 12;
    // Row 7 has a negative diagonal: pivot 7, in tile (1, 1) with tiles of 5.
    let f = spd(n);
    let a = Matrix::<f64>::from_fn(&rt, "A", n, n, 5, |i, j| if i == 7 && j == 7 { -50.0 } else { f(i, j) }).unwrap();
    let chol = a.cholesky().unwrap();
    let err = chol.factor().wait().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("potrf chol(A)[1,1]"), "{text}");
    assert!(text.contains("pivot 7"), "{text}");
    // A solution depending on it says which task failed.
    let b = Matrix::column(&rt, "b", 5, vec![1.0; n]).unwrap();
    let x = chol.solve(&b).unwrap();
    match x.to_vec().unwrap_err() {
        ArrayError::Task(TaskError::Skipped { cause, .. }) => assert!(cause.contains("potrf chol(A)[1,1]"), "{cause}"),
        other => panic!("expected a skipped task naming potrf, got {other}"),
    }
}

#[test]
fn shapes_that_do_not_fit_are_refused_naming_the_matrices() {
    let rt = runtime();
    let a = Matrix::<f32>::zeros(&rt, "A", 4, 3, 2).unwrap();
    let b = Matrix::<f32>::zeros(&rt, "B", 4, 3, 2).unwrap();
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(e.contains("'A' is 4×3") && e.contains("'B' is 4×3"), "{e}");
    let e = a.cholesky().unwrap_err().to_string();
    assert!(e.contains("square"), "{e}");
    let e = Matrix::<f32>::from_rows(&rt, "C", 2, 2, 2, vec![1.0; 3])
        .unwrap_err()
        .to_string();
    assert!(e.contains("'C' is 2×2 (4 elements); 3 were given"), "{e}");
    let e = Matrix::<f32>::zeros(&rt, "D", 2, 2, 0).unwrap_err().to_string();
    assert!(e.contains("tile size"), "{e}");
    let s = Matrix::<f64>::zeros(&rt, "S", 4, 4, 2).unwrap().cholesky().unwrap();
    let wrong = Matrix::<f64>::zeros(&rt, "b", 4, 1, 3).unwrap();
    let e = s.solve(&wrong).unwrap_err().to_string();
    assert!(e.contains("tiles of 2"), "{e}");
}

#[test]
fn a_dropped_matrix_frees_its_tiles_after_the_work_on_them() {
    let rt = runtime();
    let host = |rt: &Runtime| rt.memory_usage()[0].used_bytes;
    let before = host(&rt);
    let a = Matrix::<f64>::from_fn(&rt, "A", 64, 64, 16, spd(64)).unwrap();
    let x = {
        // The factor is dropped at once, while its tasks may still run: the solution must
        // not suffer.
        let b = Matrix::column(&rt, "b", 16, vec![1.0; 64]).unwrap();
        a.solve_spd(&b).unwrap()
    };
    let xv = x.to_vec().unwrap();
    assert!(xv.iter().all(|v| v.is_finite() && *v != 0.0));
    drop(x);
    drop(a);
    rt.wait_all().unwrap();
    assert_eq!(host(&rt), before, "every tile was freed");
}

#[test]
fn a_single_tile_matrix_takes_the_vector_and_gives_it_back_in_order() {
    let rt = runtime();
    let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let m = Matrix::from_rows(&rt, "M", 3, 4, 8, v.clone()).unwrap();
    assert_eq!(m.to_vec().unwrap(), v);
    let m = Matrix::from_rows(&rt, "M", 3, 4, 2, v.clone()).unwrap();
    assert_eq!(
        (m.grid_rows(), m.grid_cols(), m.tile_rows_of(1), m.tile_cols_of(1)),
        (2, 2, 1, 2)
    );
    assert_eq!(m.to_vec().unwrap(), v);
    let f = m.to_faer().unwrap();
    assert_eq!(f[(2, 3)], 11.0);
    let back = Matrix::from_faer(&rt, "F", 3, f.as_ref()).unwrap();
    assert_eq!(back.to_vec().unwrap(), v);
}

fn check_elementwise<T: Scalar>(tol: f64) {
    use hexec::kernels::expr::Expr;
    let rt = runtime();
    let (m, n, tile) = (7, 11, 3);
    let a = Matrix::<T>::from_fn(&rt, "a", m, n, tile, |i, j| T::from_f64(noise(i, j, 5) + 2.0)).unwrap();
    let b = Matrix::<T>::from_fn(&rt, "b", m, n, tile, |i, j| T::from_f64(noise(i, j, 6))).unwrap();
    let (av, bv) = (as_f64(&a.to_vec().unwrap()), as_f64(&b.to_vec().unwrap()));
    let expr = |x: Expr, y: Expr| ((x.clone() * 2.0 - y.clone()).abs().sqrt() + y.tanh()).max(0.25) / x;
    let want: Vec<f64> = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| expr(Expr::input(0), Expr::input(1)).eval_one(&[x, y]))
        .collect();
    let before = rt.stats();
    let fused = a.zip(&b, expr).eval_with(true).unwrap();
    let fv = as_f64(&fused.to_vec().unwrap());
    let tiles = (m.div_ceil(tile) * n.div_ceil(tile)) as u64;
    let mid = rt.stats();
    assert_eq!(mid.since(&before).completed, tiles, "one task per tile");
    let unfused = a.zip(&b, expr).eval_with(false).unwrap();
    let uv = as_f64(&unfused.to_vec().unwrap());
    // 2·x, −, abs, sqrt, tanh, +, max, / : eight operations.
    assert_eq!(
        rt.stats().since(&mid).completed,
        8 * tiles,
        "one task per operation and tile"
    );
    assert_eq!(fv, uv, "fused and unfused results are the same");
    assert!(rel_err(&fv, &want) < tol);
    // Operators on matrices and expressions, constants on either side, in either type.
    let c = ((&a + &b) * 0.5 - 1.0).eval().unwrap();
    let cv = as_f64(&c.to_vec().unwrap());
    let want: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| (x + y) * 0.5 - 1.0).collect();
    assert!(rel_err(&cv, &want) < tol);
    let d = (2.0 * &a - 1.0 / (1.0 + &b * 0.0)).eval().unwrap();
    let dv = as_f64(&d.to_vec().unwrap());
    let want: Vec<f64> = av.iter().map(|x| 2.0 * x - 1.0).collect();
    assert!(rel_err(&dv, &want) < tol);
    // Sums.
    let rows = as_f64(&a.row_sums().unwrap().to_vec().unwrap());
    let cols = as_f64(&a.col_sums().unwrap().to_vec().unwrap());
    let rows_want: Vec<f64> = (0..m).map(|i| av[i * n..(i + 1) * n].iter().sum()).collect();
    let cols_want: Vec<f64> = (0..n).map(|j| (0..m).map(|i| av[i * n + j]).sum()).collect();
    assert!(rel_err(&rows, &rows_want) < tol && rel_err(&cols, &cols_want) < tol);
    let total = a.sum().unwrap().to_f64();
    assert!((total - av.iter().sum::<f64>()).abs() < tol * av.iter().sum::<f64>().abs());
}

#[test]
fn elementwise_fused_and_unfused_agree_with_the_reference_and_sums_add_up() {
    check_elementwise::<f32>(1e-5);
    check_elementwise::<f64>(1e-13);
}

#[test]
fn wide_expressions_zero_tiles_and_bad_shapes() {
    let rt = runtime();
    // Nine matrices in one expression: more inputs than a kernel takes, evaluated in parts.
    let ms: Vec<Matrix<f64>> = (0..9)
        .map(|k| Matrix::from_fn(&rt, format!("m{k}"), 4, 5, 2, move |i, j| (i * 5 + j + k) as f64).unwrap())
        .collect();
    let mut sum = ms[0].lazy();
    for m in &ms[1..] {
        sum = sum + m;
    }
    let got = (sum.clone() * 2.0).eval().unwrap().to_vec().unwrap();
    let want: Vec<f64> = (0..20).map(|x| (2 * (9 * x + 36)) as f64).collect();
    assert_eq!(got, want, "a constant beside a part too wide for one kernel");
    let got = sum.eval_with(false).unwrap().to_vec().unwrap();
    assert_eq!(got, want.iter().map(|v| v / 2.0).collect::<Vec<_>>());
    // Expressions that read no element: constants of the matrix's shape, fused or not.
    for fuse in [true, false] {
        let ones = ms[0]
            .map(|_| hexec::kernels::expr::Expr::constant(4.0).sqrt())
            .eval_with(fuse)
            .unwrap();
        assert_eq!(ones.to_vec().unwrap(), vec![2.0; 20], "fuse {fuse}");
    }
    // A Cholesky factor's zero tiles read as zeros.
    let n = 6;
    let a = Matrix::<f64>::from_fn(&rt, "A", n, n, 4, spd(n)).unwrap();
    let chol = a.cholesky().unwrap();
    let l = chol.factor();
    let l2 = l.map(|x| x * 2.0 + 1.0).eval().unwrap();
    let (lv, l2v) = (l.to_vec().unwrap(), l2.to_vec().unwrap());
    assert!(lv.iter().zip(&l2v).all(|(x, y)| (x * 2.0 + 1.0 - y).abs() < 1e-12));
    // Shapes that differ, named.
    let b = Matrix::<f64>::zeros(&rt, "B", 6, 5, 4).unwrap();
    let e = (&a + &b).eval().unwrap_err().to_string();
    assert!(e.contains("'A' is 6×6") && e.contains("'B' is 6×5"), "{e}");
    // In place: the same factor as a copy's.
    let a2 = Matrix::<f64>::from_fn(&rt, "A2", n, n, 4, spd(n)).unwrap();
    let in_place = a2.into_cholesky().unwrap().into_factor().to_vec().unwrap();
    assert_eq!(in_place, lv);
}

#[test]
fn an_operation_runs_as_one_batch_and_a_small_cap_does_not_stop_it() {
    let rt = runtime();
    let a = Matrix::<f32>::from_fn(&rt, "A", 64, 64, 16, |i, j| (i + j) as f32).unwrap();
    // The submission flow's dispatcher is up and idle: without the hold, the first task
    // would start alone.
    rt.task(&hexec::kernels::builtin::noop())
        .submit()
        .unwrap()
        .wait()
        .unwrap();
    let before = rt.stats();
    let c = a.matmul(&a).unwrap();
    c.wait().unwrap();
    let d = rt.stats().since(&before);
    assert_eq!((d.runs, d.completed), (1, 64), "its 64 tasks in one batch");
    // With room for 4 unfinished tasks, the held batch starts at the cap instead of waiting.
    let small = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .max_submitted(4)
        .build()
        .unwrap();
    let a = Matrix::<f32>::from_fn(&small, "A", 64, 64, 16, |i, j| (i + j) as f32).unwrap();
    let c = a.matmul(&a).unwrap();
    assert_eq!(c.to_vec().unwrap().len(), 64 * 64);
}
