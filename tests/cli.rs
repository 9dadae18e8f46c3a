//! The command line, as a user runs it.

use std::process::Command;

mod common;
use common::sirocco_copy;

fn hexec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hexec"))
}

/// `text` written to `g.json` in a fresh temporary directory (kept while the `TempDir` lives).
fn graph_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.json");
    std::fs::write(&graph, text).unwrap();
    (dir, graph)
}

const GRAPH: &str = r#"{
  "format": "hexec-graph", "version": 1,
  "data": [{"name": "x", "type": "f32", "len": 8, "init": {"fill": 2.0}}, {"name": "s", "type": "f32", "len": 1}],
  "tasks": [
    {"name": "scale", "kernel": "scale", "params": [3.0], "access": [["x", "rw"]]},
    {"name": "sum", "kernel": "sum", "access": [["x", "r"], ["s", "w"]]},
    {"name": "pause", "kernel": "spin", "params": [0.001]}
  ]
}"#;

#[test]
fn run_prints_the_summary_json_and_writes_a_trace() {
    let (dir, graph) = graph_file(GRAPH);
    let trace = dir.path().join("t.json");
    let out = hexec()
        .args(["run", "--json", "--cpus", "1", "--trace"])
        .arg(&trace)
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["tasks", "failed", "makespan_s", "policy", "steals", "workers"] {
        assert!(v.get(key).is_some(), "summary lacks {key}: {v}");
    }
    assert_eq!(v["tasks"], 3);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["policy"], "locality");
    let w = &v["workers"][0];
    for key in ["name", "class", "tasks", "busy_s"] {
        assert!(w.get(key).is_some(), "worker lacks {key}: {w}");
    }
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    assert_eq!(
        t["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] != "transfer")
            .count(),
        3
    );
}

#[test]
fn a_failing_task_exits_1_with_the_summary() {
    let (_dir, graph) = graph_file(GRAPH);
    // A negative duration is refused at load now: fail the task by injection instead.
    let out = hexec()
        .args([
            "run",
            "--json",
            "--policy",
            "eager",
            "--inject",
            "panic:kernel=spin:p=1",
        ])
        .arg(&graph)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"], 1);
    assert_eq!(v["policy"], "eager");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'pause'") && err.contains("spin"), "{err}");
}

#[test]
fn malformed_files_exit_2_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("broken.stg");
    std::fs::write(&graph, "2\n0 0 0\n1 5 1 0\n2 x 1 1\n3 0 1 2\n").unwrap();
    let out = hexec().arg("run").arg(&graph).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.stg") && err.contains("line 4") && err.contains("'x'"),
        "{err}"
    );
    let out = hexec().args(["run", "--cpus", "100000"]).arg(&graph).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cpus 100000"));
}

#[test]
fn info_and_demo() {
    let out = hexec().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["workers"].as_array().unwrap().is_empty());
    assert_eq!(v["workers"][0]["class"], 0);
    let out = hexec()
        .args(["demo", "--blockwise", "--tiles", "9", "--tile-len", "100", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["check"]["ok"], true);
    assert_eq!(v["tasks"], 9 * 3 + 8);
}

/// The main job: `A·x = b` by tiled Cholesky, in both types, with its figures; bad options
/// refused naming the option.
#[test]
fn demo_solves_a_linear_system_and_reports_its_residuals() {
    let out = hexec()
        .args(["demo", "--n", "96", "--tile", "40", "--gpus", "none", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["n"].as_u64(), v["tiles"].as_u64(), v["elem"].as_str()),
        (Some(96), Some(3), Some("f32"))
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["factor_residual"].as_f64().unwrap() < 1e-5, "{v}");
    // copies 6 + potrf 3 + trsm 3 + syrk/gemm 4, then the solve's tasks.
    assert!(v["work"]["completed"].as_u64().unwrap() > 16, "{v}");
    let out = hexec()
        .args(["demo", "--n", "70", "--tile", "16", "--type", "f64", "--gpus", "none"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "70×70 f64",
        "tiles of 16",
        "GFLOP/s",
        "cpu0",
        "bytes moved",
        "relative residuals",
        "result OK",
    ] {
        assert!(text.contains(needle), "missing '{needle}': {text}");
    }
    // A tile larger than the matrix is the matrix.
    let out = hexec()
        .args(["demo", "--n", "50", "--tile", "100000", "--gpus", "none"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1×1 tiles of 50"), "{text}");
    for (args, says) in [
        (&["demo", "--type", "f16"][..], "--type f16"),
        (&["demo", "--tile", "0"][..], "--tile 0"),
        (
            &["demo", "--deadline", "1s"][..],
            "--deadline applies to the blockwise demo",
        ),
        (&["demo", "--n", "100000000"][..], "more than this machine's"),
        (&["demo", "--blockwise", "--tiles", "0"][..], "--tiles 0"),
    ] {
        let out = hexec().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
#[cfg_attr(not(feature = "gpu"), ignore = "uses a GPU: needs the `gpu` feature")]
fn bench_gpu_reports_every_figure() {
    let out = hexec()
        .args(["bench", "gpu", "--software-gpus", "--quick", "--reps", "1", "--json"])
        .output()
        .unwrap();
    if out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("no GPU") {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["metric"].as_str().unwrap())
        .collect();
    for m in [
        "gemm f32",
        "axpy (elementwise)",
        "sum (reduction)",
        "host→device bandwidth",
        "device→host latency",
    ] {
        assert!(metrics.contains(&m), "missing {m}: {metrics:?}");
    }
    assert!(v.as_array().unwrap().iter().all(|f| f["value"].as_f64().unwrap() > 0.0));
}

#[test]
#[cfg_attr(not(feature = "gpu"), ignore = "uses a GPU: needs the `gpu` feature")]
fn bench_memory_stays_within_limits_and_matches_the_simulator() {
    let out = hexec()
        .args([
            "bench",
            "memory",
            "--software-gpus",
            "--tiles",
            "64",
            "--tile-len",
            "256",
            "--reps",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    if out.status.code() == Some(2) && String::from_utf8_lossy(&out.stderr).contains("no GPU") {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["results_match"], true, "{r}");
        if let Some(limit) = r["limit_bytes"].as_u64() {
            assert!(r["peak_gpu_bytes"].as_u64().unwrap() <= limit, "{r}");
            let (real, sim) = (
                r["peak_gpu_bytes"].as_f64().unwrap(),
                r["simulated_peak_gpu_bytes"].as_f64().unwrap(),
            );
            assert!((real - sim).abs() <= 0.1 * real, "simulated peak within 10%: {r}");
        }
    }
}

#[test]
fn bench_memory_host_spills_within_the_limit() {
    for temps in [false, true] {
        let mut args = vec![
            "bench",
            "memory",
            "--host",
            "--tiles",
            "32",
            "--tile-len",
            "256",
            "--reps",
            "1",
            "--json",
        ];
        if temps {
            args.push("--temps");
        }
        let out = hexec().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 5);
        check_host_rows(rows, temps);
    }
}

fn check_host_rows(rows: &[serde_json::Value], temps: bool) {
    for r in rows {
        assert_eq!(r["results_match"], true, "{r}");
        assert_eq!(r["temps"], temps, "{r}");
        if let Some(limit) = r["limit_bytes"].as_u64() {
            assert!(r["peak_host_bytes"].as_u64().unwrap() <= limit, "{r}");
            // Kept tiles exceed the limit, so some must spill; temporaries may all fit.
            assert!(temps || r["spilled_bytes"].as_u64().unwrap() > 0, "{r}");
            // Kept tiles fill the limit in both; the peak of temporaries below the limit
            // depends on how two real threads interleave, which the simulator does not copy.
            if !temps {
                let (real, sim) = (
                    r["peak_host_bytes"].as_f64().unwrap(),
                    r["simulated_peak_host_bytes"].as_f64().unwrap(),
                );
                assert!((real - sim).abs() <= 0.1 * real, "simulated host peak within 10%: {r}");
            }
        }
    }
}

#[test]
fn run_injects_faults_retries_them_and_refuses_a_bad_plan() {
    let (_dir, graph) = graph_file(GRAPH);
    // Every first attempt fails (seeded draws), every second passes: all three tasks retry.
    let out = hexec()
        .args(["run", "--json", "--cpus", "2", "--gpus", "none", "--retries", "3"])
        .args(["--inject", "panic:p=1,seed=1"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(!out.status.success(), "p=1 fails every attempt");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Two independent tasks may both be failing when the run stops.
    assert!(v["failed"].as_u64().unwrap() >= 1, "{v}");
    for f in v["failures"].as_array().unwrap() {
        assert_eq!(f["attempts"].as_array().unwrap().len(), 4, "{v}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed after 4 attempts") && err.contains("injected fault"),
        "{err}"
    );

    let out = hexec()
        .args(["run", "--json", "--cpus", "2", "--gpus", "none", "--retries", "20"])
        .args(["--inject", "panic:p=0.5,seed=4"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completed"], 3, "{v}");
    // The text summary says what failure handling did.
    let out = hexec()
        .args(["run", "--cpus", "2", "--gpus", "none", "--retries", "20"])
        .args(["--inject", "panic:p=0.5,seed=4"])
        .arg(&graph)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("attempt(s) retried"), "{text}");

    let out = hexec()
        .args(["run", "--inject", "meteor:p=1"])
        .arg(&graph)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown fault 'meteor'"), "{err}");
}

#[test]
fn run_stops_a_stalled_run_with_what_each_task_waits_for() {
    let (_dir, graph) = graph_file(
        r#"{"format": "hexec-graph", "version": 1, "tasks": [
            {"name": "long", "kernel": "spin", "params": [1.0]},
            {"name": "next", "kernel": "noop", "after": ["long"]}]}"#,
    );
    let out = hexec()
        .args(["run", "--cpus", "1", "--gpus", "none", "--stall-timeout", "200ms"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stalled") && err.contains("'next' waits for 'long'"),
        "{err}"
    );
    let bad = hexec()
        .args(["run", "--stall-timeout", "soon"])
        .arg(&graph)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
#[cfg_attr(not(feature = "gpu"), ignore = "uses a GPU: needs the `gpu` feature")]
fn bench_soak_recovers_every_fault_with_identical_results() {
    let out = hexec()
        .args([
            "bench",
            "soak",
            "--software-gpus",
            "--tasks",
            "4000",
            "--tiles",
            "40",
            "--fail-rate",
            "0.05",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["results_identical"], true, "{r}");
        assert!(r["retried"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn run_reports_a_missed_deadline() {
    let (_dir, graph) = graph_file(GRAPH);
    let out = hexec()
        .args(["run", "--json", "--cpus", "1", "--gpus", "none", "--deadline", "1us"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deadline_met"], false, "{v}");
    assert!(v["deadline_s"].as_f64().unwrap() > 0.0, "{v}");
    let out = hexec()
        .args(["run", "--cpus", "1", "--gpus", "none", "--deadline", "1us"])
        .arg(&graph)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deadline 0.000 s") && text.contains("MISSED"), "{text}");
}

/// Software adapters (lavapipe here) are listed but not used unless asked for.
#[test]
#[cfg_attr(not(feature = "gpu"), ignore = "uses a GPU: needs the `gpu` feature")]
fn software_gpus_are_used_only_when_asked_for() {
    let out = hexec().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let adapters = v["adapters"].as_array().expect("info --json lists adapters");
    let software = adapters.iter().filter(|a| a["software"] == true).count();
    let hardware = v["hardware_gpus"].as_u64().unwrap() as usize;
    assert_eq!(v["gpus"].as_array().unwrap().len(), hardware, "{v}");
    if software == 0 {
        eprintln!("SKIPPED (in part): no software adapter; install mesa-vulkan-drivers for lavapipe");
        return;
    }
    let text = hexec().args(["info"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("(not used)") && text.contains("--software-gpus"),
        "{text}"
    );
    let with = hexec().args(["info", "--json", "--software-gpus"]).output().unwrap();
    let w: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(w["gpus"].as_array().unwrap().len(), hardware + software, "{w}");
    let env = hexec()
        .args(["info", "--json"])
        .env("HEXEC_SOFTWARE_GPUS", "1")
        .output()
        .unwrap();
    let e: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    assert_eq!(e["gpus"].as_array().unwrap().len(), hardware + software, "{e}");
    if hardware == 0 {
        let demo = hexec()
            .args(["demo", "--software-gpus", "--n", "64", "--tile", "16"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&demo.stdout);
        assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
        assert!(
            text.contains("software GPU"),
            "the demo says it uses a software GPU: {text}"
        );
    }
}

/// What a terminal user sees: no panic on a closed pipe, no colour codes into a file, no
/// Mesa noise, help text for every option, only the options a command uses, a version.
#[test]
fn the_command_line_behaves_in_pipes_and_help() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' info --json | head -c 1 >/dev/null",
            env!("CARGO_BIN_EXE_hexec")
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "closed pipe: {err}");

    let out = hexec()
        .args(["-vv", "info"])
        .env_remove("XDG_RUNTIME_DIR")
        .env("HEXEC_SOFTWARE_GPUS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in a log that is not a terminal: {err:?}"
    );
    assert!(!err.contains("XDG_RUNTIME_DIR"), "Mesa's noise: {err}");

    let version = hexec().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("hexec "));

    let info_help = String::from_utf8_lossy(&hexec().args(["info", "--help"]).output().unwrap().stdout).to_string();
    for run_only in ["--policy", "--retries", "--inject", "--deadline", "--mem"] {
        assert!(
            !info_help.contains(run_only),
            "info --help lists {run_only}: {info_help}"
        );
    }
    let commands: &[&[&str]] = &[
        &[],
        &["info"],
        &["run"],
        &["demo"],
        &["sim"],
        &["gen", "cholesky"],
        &["bench", "memory"],
        &["bench", "soak"],
        &["bench", "schedule"],
        &["bench", "gpu"],
        &["bench", "overhead"],
        &["bench", "linalg"],
        &["bench", "fusion"],
        &["bench", "stream"],
        &["bench", "kernels"],
    ];
    for cmd in commands {
        let help = hexec().args(*cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            // "  -v, --verbose...  More log output": a flag, two spaces, its description.
            let described = line.trim().split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
            assert!(described, "`hexec {}` option without help: {line}", cmd.join(" "));
        }
    }
}

/// A codelet model of the kind that used to stop the loader ("'nan nan nan' is not a flag"):
/// its linear regression split over two lines, `-nan` and `inf` fields, a row without flops
/// and a row with a NaN mean.
const ODD_MODEL: &str = "45\n1\n1\n1\n0\n1\n1\n2\n0.0 0.0 0.0 0.0\n-nan nan 0 0 0\nnan nan nan\n2 inf -nan\n\
0badf00d 4096 nan 1.0e+01 -nan nan nan 12\n0badf00f 16384 0.0 nan 0.0 0 0 5\n";

#[test]
fn sim_reads_only_the_starpu_models_the_graph_needs() {
    let Some(dir) = sirocco_copy() else { return };
    let models = dir.path().join("sampling/codelets/45");
    // An unused odd codelet, and a needed model that is a symbolic link to a file elsewhere.
    std::fs::write(models.join("odd_codelet.sirocco"), ODD_MODEL).unwrap();
    std::fs::rename(models.join("chol_model_gemm.sirocco"), dir.path().join("gemm.model")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gemm.model"), models.join("chol_model_gemm.sirocco")).unwrap();
    let graph = dir.path().join("chol.json");
    let out = hexec()
        .args(["gen", "cholesky", "--tiles", "4", "-o"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let machine = format!("starpu:{}:sirocco", dir.path().display());
    let sim = || {
        hexec()
            .args(["sim", "--json", "--machine", &machine])
            .arg(&graph)
            .output()
            .unwrap()
    };
    let out = sim();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["machine"], "starpu:sirocco");
    assert_eq!(v["completed"], 20);

    // A needed model with a NaN deviation: used, with a visible warning naming the line.
    let potrf = models.join("chol_model_potrf.sirocco");
    let text = std::fs::read_to_string(&potrf).unwrap();
    let (i, row) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("25ebb669"))
        .unwrap();
    let fields: Vec<&str> = row.split_whitespace().collect();
    std::fs::write(&potrf, text.replacen(row, &row.replacen(fields[4], "-nan", 1), 1)).unwrap();
    let out = sim();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("chol_model_potrf.sirocco:{}:", i + 1)) && err.contains("deviation '-nan'"),
        "{err}"
    );
    // A needed model with a NaN mean: refused, naming file and line.
    std::fs::write(&potrf, text.replacen(row, &row.replacen(fields[3], "nan", 1), 1)).unwrap();
    let out = sim();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("chol_model_potrf.sirocco:{}:", i + 1)) && err.contains("mean time 'nan'"),
        "{err}"
    );
}

#[test]
fn bench_schedule_without_workloads_fails_saying_where_it_looked() {
    let empty = tempfile::tempdir().unwrap();
    let out = hexec()
        .args(["bench", "schedule", "--quick"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("| workload |"),
        "no empty table"
    );
    assert!(
        err.contains("skipped: cholesky 10x10 (b=960) on starpu:sirocco: ../shared/workloads/heterogeneous/starpu_perfmodels not found"),
        "{err}"
    );
    assert!(err.contains("skipped: STG rand100 on cpus:4: "), "{err}");
    assert!(
        err.contains("no workload found under ../shared/workloads") && err.contains("--workloads DIR"),
        "{err}"
    );
}

#[test]
fn bench_schedule_prints_a_skipped_line_for_each_missing_input() {
    let empty = tempfile::tempdir().unwrap();
    let workloads = tempfile::tempdir().unwrap();
    let stg = workloads.path().join("stg/rand100");
    std::fs::create_dir_all(&stg).unwrap();
    std::fs::write(stg.join("rand0000.stg"), "2\n0 0 0\n1 5 1 0\n2 3 1 1\n3 0 1 2\n").unwrap();
    let out = hexec()
        .args(["bench", "schedule", "--quick", "--workloads"])
        .arg(workloads.path())
        .current_dir(empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| STG rand100 | cpus:4 | 1 | 4 |"), "{text}");
    assert!(text.contains("| STG rand100 | cpus:16 | 1 | 4 |"), "{text}");
    for row in [
        "cholesky 10x10 (b=960) on starpu:sirocco",
        "cholesky 10x10 (b=960) on starpu:attila",
        "STG rand1000 on cpus:4",
        "STG rand1000 on cpus:16",
        "WfCommons on cpus:16",
        "WfCommons on cpus:64",
    ] {
        assert!(text.contains(&format!("skipped: {row}: ")), "{row}: {text}");
    }
}

#[test]
fn bench_overhead_prints_a_skipped_line_for_missing_dask_graphs() {
    let empty = tempfile::tempdir().unwrap();
    let out = hexec()
        .args(["bench", "overhead", "--reps", "1", "--cpus", "1", "--no-large"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| chain 100000 |"), "{text}");
    for name in ["tree-15", "merge-10000"] {
        assert!(
            text.contains(&format!(
                "skipped: dask {name}: ../shared/workloads/dask/{name}.json.gz not found"
            )) && text.contains("--dask-dir"),
            "{text}"
        );
    }
}

/// A GPU attempt that fails and is run on a CPU instead is a warning the summary prints. (The
/// CPU worker is slowed so that the GPU worker surely takes some of the tasks first.)
#[test]
#[cfg_attr(not(feature = "gpu"), ignore = "uses a GPU: needs the `gpu` feature")]
fn run_prints_a_warning_for_each_gpu_to_cpu_fallback() {
    let data: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"name": "x{i}", "type": "f32", "len": 64, "init": {{"fill": 1.0}}}}"#))
        .collect();
    let tasks: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"name": "s{i}", "kernel": "scale", "params": [2.0], "access": [["x{i}", "rw"]]}}"#))
        .collect();
    let (_dir, graph) = graph_file(&format!(
        r#"{{"format": "hexec-graph", "version": 1, "data": [{}], "tasks": [{}]}}"#,
        data.join(","),
        tasks.join(",")
    ));
    let out = hexec()
        .args([
            "run",
            "--software-gpus",
            "--cpus",
            "1",
            "--policy",
            "eager",
            "--inject",
            "gpu-error:p=1,slow:cpu0:delay=20ms",
        ])
        .arg(&graph)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("0 gpu worker") || !text.contains("gpu0") {
        eprintln!("SKIPPED: no GPU adapter");
        return;
    }
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let warnings = text.matches("warning: task").count();
    assert!(
        warnings > 0,
        "the GPU took some tasks and each ran on the CPU instead: {text}"
    );
    assert!(text.contains("failed on gpu0 and runs on cpu0 instead"), "{text}");
}

/// `sim --trace` says where the trace went; a demo whose run failed says so instead of
/// calling its (unfinished) result wrong.
#[test]
fn sim_says_where_its_trace_went_and_a_failed_demo_says_it_failed() {
    let (dir, graph) = graph_file(
        r#"{"format": "hexec-graph", "version": 1, "tasks": [{"name": "a", "kernel": "spin", "params": [0.001]}]}"#,
    );
    let trace = dir.path().join("sim-trace.json");
    let out = hexec()
        .args(["sim", "--machine", "cpus:2", "--trace"])
        .arg(&trace)
        .arg(&graph)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(trace.exists());
    assert!(
        text.contains("trace written to") && text.contains("sim-trace.json"),
        "{text}"
    );

    let out = hexec()
        .args([
            "demo",
            "--blockwise",
            "--cpus",
            "1",
            "--gpus",
            "none",
            "--tiles",
            "4",
            "--tile-len",
            "64",
        ])
        .args(["--retries", "0", "--inject", "panic:kernel=axpy:p=1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("WRONG"), "{text}");
    assert!(text.contains("result not checked: the run failed"), "{text}");
}

/// `n` one-megabyte data, each updated by a task sleeping `secs`: under `--mem host=16MiB`
/// most of them live in spill files.
fn spilling_naps(n: usize, secs: f64) -> String {
    let data: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"name": "d{i}", "type": "f32", "len": 262144, "init": {{"fill": 1.0}}}}"#))
        .collect();
    let tasks: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"name": "nap{i}", "kernel": "sleep", "params": [{secs}], "access": [["d{i}", "rw"]]}}"#))
        .collect();
    format!(
        r#"{{"format": "hexec-graph", "version": 1, "data": [{}], "tasks": [{}]}}"#,
        data.join(","),
        tasks.join(",")
    )
}

/// The spill directories (`hexec-spill-*`) in `dir`.
fn spill_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("hexec-spill-"))
        .collect()
}

/// A memory limit that cannot be kept (no spill directory can be made) is an error before
/// the run, naming the path, not a run over the limit with a warning.
#[test]
fn a_host_limit_with_no_spill_directory_exits_2_naming_the_path() {
    let (dir, graph) = graph_file(&spilling_naps(24, 0.0));
    let not_a_dir = dir.path().join("tmpfile");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let out = hexec()
        .args(["run", "--gpus", "none", "--cpus", "1", "--mem", "host=16MiB"])
        .arg(&graph)
        .env("TMPDIR", &not_a_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&not_a_dir.display().to_string()) && err.contains("spill"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// SIGTERM during a spilling run: no new task starts, the running ones end, the partial
/// summary is printed, the spill directory is removed, and hexec exits 143.
#[cfg(unix)]
#[test]
fn sigterm_stops_a_spilling_run_prints_the_summary_and_removes_the_spill_directory() {
    use std::time::{Duration, Instant};
    let (dir, graph) = graph_file(&spilling_naps(40, 0.2));
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = hexec()
        .args(["run", "--gpus", "none", "--cpus", "2", "--mem", "host=16MiB"])
        .arg(&graph)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Started: its spill directory holds files (40 MiB of data over a 16 MiB limit).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spilled = spill_dirs(&tmp)
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut f| f.next().is_some()));
        if spilled {
            break;
        }
        assert!(Instant::now() < deadline, "the run never spilled");
        assert!(child.try_wait().unwrap().is_none(), "hexec ended before spilling");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill sends SIGTERM to our own child, whose pid is valid until we wait for it.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(143), "{stdout}\n{stderr}");
    // Running naps end within 0.2 s; well under the 5 s grace.
    assert!(sent.elapsed() < Duration::from_secs(4), "{:?}", sent.elapsed());
    assert!(
        stdout.contains("40 tasks:") && stdout.contains("not run (stopped)"),
        "{stdout}"
    );
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(spill_dirs(&tmp).is_empty(), "left behind: {:?}", spill_dirs(&tmp));
}

/// At start, spill directories of hexec processes that no longer exist (killed with SIGKILL)
/// are removed; one of a live process is kept.
#[cfg(unix)]
#[test]
fn spill_directories_of_dead_processes_are_removed_at_start() {
    let (dir, graph) = graph_file(GRAPH);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = tmp.join(format!("hexec-spill-{dead}-x"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("0.bin"), [0u8; 64]).unwrap();
    let live = tmp.join(format!("hexec-spill-{}-y", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let out = hexec()
        .args(["run", "--gpus", "none", "--cpus", "1"])
        .arg(&graph)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stale.exists(), "the dead process's directory was kept");
    assert!(live.exists(), "a live process's directory was removed");
}

/// Runs `hexec run --gpus none` on a graph file holding `text`; returns the exit code, stdout
/// and stderr.
fn run_file(text: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let (_dir, graph) = graph_file(text);
    let out = hexec()
        .args(["run", "--gpus", "none"])
        .args(extra)
        .arg(&graph)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_refuses_a_task_that_writes_read_only_data() {
    let graph = r#"{"format": "hexec-graph", "version": 1,
      "data": [{"name": "weights", "type": "f32", "len": 4, "init": {"fill": 1}, "read_only": true}],
      "tasks": [{"name": "clobber", "kernel": "fill", "params": [2], "access": [["weights", "w"]]}]}"#;
    let (code, _, err) = run_file(graph, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'clobber'") && err.contains("'weights'") && err.contains("read-only"),
        "{err}"
    );
    // Reading it is fine, and its init is its contents.
    let reader = graph.replace(
        r#""fill", "params": [2], "access": [["weights", "w"]]"#,
        r#""noop", "access": [["weights", "r"]]"#,
    );
    let (code, _, err) = run_file(&reader, &[]);
    assert_eq!(code, Some(0), "{err}");
    // Size-only data cannot be read-only: refused rather than ignored.
    let (code, _, err) = run_file(
        &graph.replace(r#""type": "f32", "len": 4, "init": {"fill": 1}"#, r#""bytes": 16"#),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("g.json") && err.contains("'weights'") && err.contains("read_only"),
        "{err}"
    );
}

#[test]
fn run_refuses_data_larger_than_the_machine_before_allocating_them() {
    // A temporary of 4 TB: allocated only when first written, mid-run, where a failed
    // allocation used to abort the process.
    let temp = r#"{"format": "hexec-graph", "version": 1,
      "data": [{"name": "huge", "type": "f32", "len": 1000000000000, "temp": true},
               {"name": "s", "type": "f32", "len": 1}],
      "tasks": [{"name": "fill", "kernel": "fill", "params": [1], "access": [["huge", "w"]]},
                {"name": "sum", "kernel": "sum", "access": [["huge", "r"], ["s", "w"]]}]}"#;
    let (code, _, err) = run_file(temp, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("g.json")
            && err.contains("'huge'")
            && err.contains("4000000000000 bytes")
            && err.contains("memory"),
        "{err}"
    );
    // A stored datum with an init, the same.
    let stored = temp.replace(r#""temp": true"#, r#""init": {"fill": 2}"#);
    let (code, _, err) = run_file(&stored, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'huge'") && err.contains("4000000000000 bytes"), "{err}");
    // Under a host memory limit, a datum larger than the limit is refused before it exists.
    let small = temp.replace("1000000000000", "1048576");
    for text in [
        small.clone(),
        small.replace(r#""temp": true"#, r#""init": {"fill": 2}"#),
    ] {
        let (code, _, err) = run_file(&text, &["--mem", "host=1MiB"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("'huge'")
                && err.contains("4194304 bytes")
                && err.contains("host memory limit of 1048576 bytes"),
            "{err}"
        );
    }
}

#[test]
fn a_fill_init_writes_the_datum_in_place() {
    // 256 MiB of u8 under a 1 GiB address-space limit: filled in its own buffer (it used to
    // be built as 2 GiB of f64 first, and the allocation aborted).
    let graph = r#"{"format": "hexec-graph", "version": 1,
      "data": [{"name": "bytes", "type": "u8", "len": 268435456, "init": {"fill": 1}}],
      "tasks": [{"name": "look", "kernel": "noop", "access": [["bytes", "r"]]}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.json");
    std::fs::write(&path, graph).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" run --gpus none "$1""#)
        .arg(env!("CARGO_BIN_EXE_hexec"))
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 completed"));
}

#[test]
fn gen_cholesky_writes_a_graph_that_runs_and_checks_its_factor() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("f.json");
    let out = hexec()
        .args(["gen", "cholesky", "--tiles", "3", "--tile-size", "16", "-o"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&graph).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kernels: std::collections::BTreeSet<&str> = spec["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(kernels, ["gemm_nt", "potrf", "syrk", "trsm"].into_iter().collect());

    let (code, stdout, err) = run_file(&text, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("10 completed"), "{stdout}");
    assert!(
        stdout.contains("check cholesky: residual") && stdout.contains(": OK"),
        "{stdout}"
    );
    let (code, stdout, err) = run_file(&text, &["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let check = &v["checks"][0];
    assert_eq!(check["check"], "cholesky");
    assert_eq!(check["ok"], true);
    assert!(check["value"].as_f64().unwrap() < 1e-5, "{check}");

    // A missing update: the run completes, the check fails it (exit 1, with the residual).
    let mut dropped = spec.clone();
    dropped["tasks"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "trsm(2,0)");
    let (code, stdout, err) = run_file(&dropped.to_string(), &[]);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(
        stdout.contains("FAILED") && err.contains("check cholesky failed: residual"),
        "{stdout}{err}"
    );

    // A tile that is not positive definite: potrf refuses it, the run fails (exit 1).
    let mut corrupt = spec.clone();
    let tile = corrupt["data"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["name"] == "A[1,1]")
        .unwrap();
    tile["init"] = serde_json::json!({"fill": -1.0});
    let (code, _, err) = run_file(&corrupt.to_string(), &["--retries", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("potrf(1)") && err.contains("positive definite"), "{err}");

    // A check naming a tile the file does not declare: refused before running.
    let bad = text.replacen("\"A[2,2]\"\n", "\"B[2,2]\"\n", 1);
    assert_ne!(bad, text);
    let (code, _, err) = run_file(&bad, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("check[0] (cholesky)") && err.contains("'B[2,2]'"), "{err}");

    // The simulator still reads the file (sizes only).
    let out = hexec()
        .args(["sim", "--json", "--machine", "cpus:4,gpus:1,gpu-speedup:4"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completed"], 10);
}

/// Without a host memory limit nothing can spill: data in a file that do not fit together in
/// the machine's memory are refused, naming the first that does not fit, before the process
/// could be killed for memory. (Each datum alone fits; the buffers are zeroed lazily, so the
/// two that are accepted cost no resident memory here.)
#[test]
fn run_refuses_data_that_do_not_fit_together_without_a_limit() {
    let info = hexec().args(["info", "--json", "--gpus", "none"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let memory: u64 = v["numa_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["memory_bytes"].as_u64().unwrap())
        .sum();
    let len = memory * 2 / 5; // u8: 40% of the memory each
    let (code, _, err) = run_file(
        &format!(
            r#"{{"format": "hexec-graph", "version": 1, "data": [
              {{"name": "a", "type": "u8", "len": {len}}},
              {{"name": "b", "type": "u8", "len": {len}}},
              {{"name": "c", "type": "u8", "len": {len}}}],
             "tasks": [{{"name": "t", "kernel": "noop"}}]}}"#
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'c'") && err.contains("--mem host="), "{err}");
}

/// Runs `cmd` and waits at most `secs` for it: a command that does not end is killed and
/// the test fails (a hang must fail, not stall the suite until nextest's timeout).
fn output_within(mut cmd: Command, secs: u64) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained on threads, so that a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Expects exit code 2 (refused input) within 20 s, with no panic, and returns stderr.
fn refused(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, 20);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

#[test]
fn run_refuses_negative_durations_instead_of_hanging_in_the_deadline_prediction() {
    let dir = tempfile::tempdir().unwrap();
    // Three tasks of -1 s with a deadline: the prediction's area bound doubled for ever.
    let graph = dir.path().join("neg.json");
    let task = |n: &str| format!(r#"{{"name":"{n}","kernel":"spin","params":[-1]}}"#);
    std::fs::write(
        &graph,
        format!(
            r#"{{"format":"hexec-graph","version":1,"deadline_s":1,"tasks":[{},{},{}]}}"#,
            task("a"),
            task("b"),
            task("c")
        ),
    )
    .unwrap();
    let mut cmd = hexec();
    cmd.args(["run", "--gpus", "none", "--stall-timeout", "1s"]).arg(&graph);
    let err = refused(cmd);
    assert!(
        err.contains("tasks[0] ('a')") && err.contains("'spin' duration"),
        "{err}"
    );

    // A model file with negative samples, and a deadline: refused naming the sample.
    let ok = dir.path().join("ok.json");
    std::fs::write(&ok, GRAPH).unwrap();
    let model = dir.path().join("model.json");
    std::fs::write(
        &model,
        r#"{"histories":{"spin":{"cpu":{"buckets":{"0":{"samples":[-1,-1,-1],"next":3,"size":1,"count":3}}}}}}"#,
    )
    .unwrap();
    let mut cmd = hexec();
    cmd.args(["run", "--gpus", "none", "--deadline", "1s", "--model"])
        .arg(&model)
        .arg(&ok);
    let err = refused(cmd);
    assert!(
        err.contains("model.json: histories.spin.cpu.buckets[0].samples[0]") && err.contains("-1 s"),
        "{err}"
    );
}

#[test]
fn sim_refuses_odd_machine_specs_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.json");
    // Tasks that copy data between host and GPU, so links are used.
    std::fs::write(
        &graph,
        r#"{"format":"hexec-graph","version":1,"data":[{"name":"x","bytes":1000000}],
            "tasks":[{"name":"a","kernel":"spin","params":[0.001],"access":[["x","rw"]]},
                     {"name":"b","kernel":"spin","params":[0.001],"access":[["x","rw"]],"device":"gpu"}]}"#,
    )
    .unwrap();
    for (spec, says) in [
        ("cpus:2,gpus:1,gpu-speedup:-1", "gpu-speedup -1"),
        ("cpus:2,gflops:-1", "gflops -1"),
        ("cpus:2,gflops:0", "gflops 0"),
        ("cpus:2,gpus:1,gpu-speedup:2,lat:-1000000", "lat -1000000 µs"),
        ("cpus:2,gpus:1,gpu-speedup:2,lat:nan", "lat NaN µs"),
        ("cpus:2,gpus:1,gpu-speedup:2,bw:-1", "bw -1 GB/s"),
        ("cpus:2,gpus:1,gpu-speedup:2,bw:0", "bw 0 GB/s"),
        ("cpus:1e12", "over the limit of 1024"),
        ("cpus:2,gpus:1e12,gpu-speedup:2", "over the limit of 1024"),
        ("cpus:-1", "not a whole number"),
        ("cpus:2.5", "not a whole number"),
    ] {
        let mut cmd = hexec();
        cmd.args(["sim", "--machine", spec]).arg(&graph);
        let err = refused(cmd);
        assert!(err.contains(says), "{spec}: {err}");
    }
    let toml = dir.path().join("m.toml");
    for (text, says) in [
        ("cpus = 1000000000000\n", "over the limit of 1024 workers"),
        ("cpus = 2\ngpus = 1\ngpu_speedup = -1.0\n", "gpu_speedup -1"),
        ("cpus = 2\nlatency_us = -5.0\n", "latency_us -5 µs"),
        ("cpus = 2\nbandwidth_gbs = nan\n", "bandwidth_gbs NaN"),
    ] {
        std::fs::write(&toml, text).unwrap();
        let mut cmd = hexec();
        cmd.args(["sim", "--machine"]).arg(&toml).arg(&graph);
        let err = refused(cmd);
        assert!(err.contains(says), "{text}: {err}");
    }
}

#[test]
fn absurd_durations_costs_and_grids_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            write(
                "huge.json",
                r#"{"format":"hexec-graph","version":1,"tasks":[{"name":"a","kernel":"spin","params":[1e300]}]}"#,
            ),
            "over the 1e9 s limit",
        ),
        (
            write(
                "neg.json",
                r#"{"format":"hexec-graph","version":1,"tasks":[{"name":"a","kernel":"sleep","params":[-1]}]}"#,
            ),
            "negative, NaN or infinite",
        ),
        // u64::MAX milliseconds.
        (
            write("max.stg", "1\n0 0 0\n1 18446744073709551615 1 0\n2 0 1 1\n"),
            "line 3: cost 18446744073709551615 is over the limit",
        ),
        // 37 bytes that used to declare 8.4 million tiles.
        (
            write("chol.json", r#"{"generator":"x","N":4096,"tasks":[]}"#),
            "N: 4096 tiles per side is over the limit",
        ),
    ];
    for (path, says) in &cases {
        for cmd in ["run", "sim"] {
            let mut c = hexec();
            c.arg(cmd);
            if cmd == "run" {
                c.args(["--gpus", "none"]);
            } else {
                c.args(["--machine", "cpus:2"]);
            }
            let err = refused({
                c.arg(path);
                c
            });
            assert!(err.contains(says), "{cmd} {}: {err}", path.display());
        }
    }
    let mut cmd = hexec();
    cmd.args(["gen", "cholesky", "--tiles", "4096"]);
    let err = refused(cmd);
    assert!(err.contains("--tiles: 4096 tiles per side is over the limit"), "{err}");
}

#[test]
fn devices_and_files_over_the_limit_are_refused_without_reading_them() {
    let mut cmd = hexec();
    cmd.args(["run", "--gpus", "none", "/dev/zero"]);
    let err = refused(cmd);
    assert!(err.contains("/dev/zero: file: not a graph file: a device"), "{err}");
    // A sparse 2 GiB file: refused by its size, not read.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big).unwrap().set_len(2 << 30).unwrap();
    let mut cmd = hexec();
    cmd.args(["sim", "--machine", "cpus:1"]).arg(&big);
    let err = refused(cmd);
    assert!(
        err.contains("the file (2147483648 bytes) is larger than the 1073741824-byte limit (1 GiB)"),
        "{err}"
    );
}

#[test]
fn escape_sequences_in_names_are_escaped_and_a_byte_order_mark_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.json");
    // A BOM, then a task whose name clears the screen, with an unknown kernel.
    std::fs::write(
        &graph,
        "\u{feff}{\"format\":\"hexec-graph\",\"version\":1,\"tasks\":[{\"name\":\"a\\u001b[2J\\nb\",\"kernel\":\"nope\"}]}",
    )
    .unwrap();
    let mut cmd = hexec();
    cmd.args(["run", "--gpus", "none"]).arg(&graph);
    let err = refused(cmd);
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(
        err.contains(r"tasks[0] ('a\u{1b}[2J\nb'): unknown kernel 'nope'"),
        "{err}"
    );
    // A failing task's name in the run's messages: escaped too.
    std::fs::write(
        &graph,
        "\u{feff}{\"format\":\"hexec-graph\",\"version\":1,\"tasks\":[{\"name\":\"x\\u001b]0;pwned\\u0007\",\"kernel\":\"spin\",\"params\":[0]}]}",
    )
    .unwrap();
    let out = output_within(
        {
            let mut c = hexec();
            c.args(["run", "--gpus", "none", "--inject", "panic:kernel=spin:p=1"])
                .arg(&graph);
            c
        },
        60,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    assert!(stderr.contains(r"x\u{1b}]0;pwned\u{7}"), "{stderr}");
    // With the BOM, a valid file runs.
    std::fs::write(&graph, format!("\u{feff}{GRAPH}")).unwrap();
    let out = output_within(
        {
            let mut c = hexec();
            c.args(["run", "--gpus", "none"]).arg(&graph);
            c
        },
        60,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A minimal StarPU sampling directory for machine `m`: `cpus` CPUs and one GPU, the given
/// latency matrix, and a potrf model.
fn starpu_dir(cpus: &str, latency: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bus = dir.path().join("sampling/bus");
    let models = dir.path().join("sampling/codelets/45");
    std::fs::create_dir_all(&bus).unwrap();
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(
        bus.join("m.config"),
        format!("# Current configuration\n{cpus} # Number of CPUs\n1 # Number of CUDA devices\n"),
    )
    .unwrap();
    std::fs::write(bus.join("m.bandwidth"), "# to 0 1\n0 5000\n5000 0\n").unwrap();
    std::fs::write(bus.join("m.latency"), latency).unwrap();
    std::fs::write(
        models.join("chol_model_potrf.m"),
        "45\n2\n1\n0\n0\n1\n1\n1\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n0000abcd 3686400 1 1000 10 1 1 10\n\
         1\n1\n0\n1\n1\n1\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n0000abcd 3686400 1 100 1 1 1 10\n",
    )
    .unwrap();
    dir
}

#[test]
fn starpu_machines_refuse_bad_values_and_never_open_a_fifo() {
    let graph_dir = tempfile::tempdir().unwrap();
    let graph = graph_dir.path().join("chol.json");
    let out = hexec()
        .args(["gen", "cholesky", "--tiles", "2", "--tile-size", "960", "-o"])
        .arg(&graph)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sim = |dir: &tempfile::TempDir| {
        let mut c = hexec();
        c.args(["sim", "--machine", &format!("starpu:{}:m", dir.path().display())])
            .arg(&graph);
        c
    };
    let good_latency = "0 10\n10 0\n";
    // 10^12 CPUs: refused before anything is sized by them.
    let err = refused(sim(&starpu_dir("1000000000000", good_latency)));
    assert!(
        err.contains("m.config") && err.contains("over the limit of 1024 workers"),
        "{err}"
    );
    // Negative and NaN latencies: refused, naming the file's line.
    for bad in ["0 -1000000\n10 0\n", "0 nan\n10 0\n"] {
        let err = refused(sim(&starpu_dir("4", bad)));
        assert!(err.contains("m.latency:1: latency from node 0 to node 1"), "{err}");
    }
    // A FIFO among the codelet files, named as a needed model: never opened (the open would
    // block for ever), left out as a model that is not there.
    let dir = starpu_dir("4", good_latency);
    let fifo = dir.path().join("sampling/codelets/45/chol_model_trsm.m");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = output_within(sim(&dir), 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no model of kernel 'trsm'"), "{err}");
}

#[test]
fn run_retires_a_worker_mid_run_and_says_what_it_did() {
    // Sixty 10 ms sleeps on two workers: the run is under way at 20 ms.
    let tasks: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"name": "nap{i}", "kernel": "sleep", "params": [0.01]}}"#))
        .collect();
    let graph = format!(
        r#"{{"format": "hexec-graph", "version": 1, "data": [], "tasks": [{}]}}"#,
        tasks.join(",")
    );
    let (_dir, path) = graph_file(&graph);
    let out = hexec()
        .args(["run", "--cpus", "2", "--gpus", "none", "--retire", "cpu1@20ms"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("retired cpu1 at"), "{text}");
    assert!(text.contains("60 completed"), "{text}");
    // Bad input names what is wrong.
    for (arg, says) in [
        ("cpu1", "WORKER@TIME"),
        ("@5ms", "names no worker"),
        ("cpu1@soon", "not a duration"),
    ] {
        let out = hexec()
            .args(["run", "--cpus", "1", "--gpus", "none", "--retire", arg])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    // An unknown worker is bad input too, refused before the run.
    let out = hexec()
        .args(["run", "--cpus", "1", "--gpus", "none", "--retire", "gpu7@1ms"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--retire gpu7: no worker is named so (workers: cpu0)"),
        "{err}"
    );
}

#[test]
fn bench_stream_reports_every_figure() {
    let out = hexec()
        .args([
            "bench", "stream", "--cpus", "1", "--tasks", "300", "--reps", "1", "--long", "3000", "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{v}");
    assert!(rows.iter().all(|r| r["ns_per_task"].as_f64().unwrap() > 0.0), "{v}");
    assert!(v["latency_wait_us"][0].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_await_us"][0].as_f64().unwrap() > 0.0, "{v}");
    let curve = v["rss_curve"].as_array().unwrap();
    assert!(curve.is_empty() || curve.last().unwrap()[0] == 3000, "{v}");
    // StarPU is measured when installed, else said to be skipped.
    assert!(
        !v["starpu"].as_array().unwrap().is_empty() || !v["skipped"].as_array().unwrap().is_empty(),
        "{v}"
    );
}

/// `bench linalg` and `bench fusion` on small sizes: every row measured, references that are
/// not there said so, bad options refused.
#[test]
fn bench_linalg_and_fusion_report_their_rows() {
    let out = hexec()
        .args([
            "bench", "linalg", "--sizes", "96", "--tile", "32", "--reps", "1", "--types", "f32,f64",
        ])
        .args(["--gpus", "none", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    for r in rows {
        assert!(
            r["hexec_gflops"].as_f64().unwrap() > 0.0 && r["faer_gflops"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    let skipped = v["skipped"].to_string();
    assert!(skipped.contains("SciPy"), "no --python: said so: {skipped}");
    let out = hexec().args(["bench", "linalg", "--ops", "lu"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown operation 'lu'"));

    let out = hexec()
        .args([
            "bench", "fusion", "--n", "64", "--tile", "32", "--ops", "3", "--reps", "1", "--gpus", "none", "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(r["fused_tasks"], 4, "{r}");
        assert_eq!(r["unfused_tasks"], 4 * (k as u64 + 1), "{r}");
    }
}
