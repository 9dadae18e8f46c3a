//! The simulator and the planning policies, deterministically.

use hexec::graph::formats::{self, cholesky, BuildOptions, GraphSpec, TaskSpec};
use hexec::sim::{simulate, SimMachine, SimOptions};
use hexec::{DeviceKind, PolicyKind};

mod common;
use common::{sirocco_copy, STARPU};

fn independent(n: usize, seconds: f64) -> GraphSpec {
    let mut g = GraphSpec::new(Some("independent".into()));
    for i in 0..n {
        g.tasks.push(TaskSpec::replay(format!("t{i}"), seconds));
    }
    g
}

fn build(spec: &GraphSpec, sm: &SimMachine) -> hexec::Graph {
    spec.build_virtual(&|k| sm.kernel(k), &BuildOptions::default()).unwrap()
}

#[test]
fn independent_tasks_ten_times_faster_on_gpus_reach_the_ideal_speedup() {
    let sm = SimMachine::parse("cpus:8,gpus:2,gpu-speedup:10").unwrap();
    let g = build(&independent(2000, 0.01), &sm);
    let r = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    let serial = 2000.0 * 0.01;
    let speedup = serial / r.run.makespan_s;
    let ideal = 8.0 + 10.0 * 2.0;
    assert!(speedup >= 0.9 * ideal, "speedup {speedup:.2} vs ideal {ideal}");
    assert!(r.run.makespan_s >= r.lower_bound_s * (1.0 - 1e-9));
}

#[test]
fn cpu_only_and_gpu_only_kernels_land_where_they_can() {
    // gemm has a StarPU-style flop model on both; spin (replayed) only on CPUs here because
    // the machine gives no GPU speedup for recorded durations... use a spec with none.
    let sm = SimMachine::parse("cpus:4,gpus:2,gpu-speedup:8").unwrap();
    let mut spec = cholesky::generate(6, 256);
    let mut pause = TaskSpec::replay("pause".into(), 0.001);
    pause.device = Some("cpu".into());
    spec.tasks.push(pause);
    let mut g_only = TaskSpec::replay("gpu-only".into(), 0.001);
    g_only.device = Some("gpu".into());
    spec.tasks.push(g_only);
    let g = build(&spec, &sm);
    for policy in PolicyKind::ALL {
        let r = simulate(&g, &sm, policy, &SimOptions::default()).unwrap();
        let n = g.len();
        let kind = |t: usize| sm.machine.workers[r.placement[t].index()].kind;
        assert_eq!(kind(n - 2), DeviceKind::Cpu, "{policy}");
        assert_eq!(kind(n - 1), DeviceKind::Gpu, "{policy}");
    }
}

/// `locality` on a machine whose links cost nothing runs its plan as planned, each worker
/// taking its tasks in planned order. A chain of CPU-only tasks would be handed link by link to
/// the worker that finished the last one (a fused chain), which the plan may not have planned
/// there: its planned worker would wait for it for ever. Run as planned, chains are not
/// followed, and the run completes.
#[test]
fn a_plan_run_as_planned_completes_with_fused_chains() {
    const CHAIN: usize = 12;
    let mut sm = SimMachine::parse("cpus:2,gpus:1,gpu-speedup:2").unwrap();
    sm.free_links();
    let mut spec = cholesky::generate(6, 256);
    for i in 0..CHAIN {
        let mut t = TaskSpec::replay(format!("chain{i}"), 0.0005);
        t.device = Some("cpu".into());
        if i > 0 {
            t.after = vec![format!("chain{}", i - 1)];
        }
        spec.tasks.push(t);
    }
    let g = build(&spec, &sm);
    let r = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    assert!(
        r.run.fused_links >= CHAIN as u64 - 1,
        "the chain is fused: {}",
        r.run.fused_links
    );
    assert_eq!(r.run.steals, 0, "run as planned: nothing is stolen");
    let heft = simulate(&g, &sm, PolicyKind::Heft, &SimOptions::default()).unwrap();
    assert!(r.run.makespan_s <= heft.run.makespan_s * (1.0 + 1e-9));
}

#[test]
fn data_stays_on_the_gpu_that_holds_it() {
    // A chain of updates to one tile: after the first lands on a GPU, the rest stay there.
    let sm = SimMachine::parse("cpus:4,gpus:4,gpu-speedup:20,bw:10").unwrap();
    let mut spec = GraphSpec::new(None);
    spec.data.push(formats::DataSpec {
        name: "tile".into(),
        elem: None,
        len: None,
        bytes: Some(64 << 20),
        init: None,
        read_only: false,
        temp: false,
    });
    for i in 0..20 {
        let mut t = TaskSpec::replay(format!("u{i}"), 0.02);
        t.access = vec![("tile".into(), "rw".into())];
        spec.tasks.push(t);
    }
    let g = build(&spec, &sm);
    let r = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    let first = r.placement[0];
    assert_eq!(sm.machine.workers[first.index()].kind, DeviceKind::Gpu);
    assert!(r.placement.iter().all(|&w| w == first), "{:?}", r.placement);
    assert_eq!(
        r.run.transfers.len(),
        1,
        "one upload, no ping-pong: {:?}",
        r.run.transfers
    );
}

#[test]
fn starpu_machines_load_and_cholesky_simulates_near_the_bound() {
    if !std::path::Path::new(STARPU).exists() {
        eprintln!("SKIPPED: {STARPU} not present");
        return;
    }
    let mut sm = SimMachine::parse(&format!("starpu:{STARPU}:sirocco")).unwrap();
    assert_eq!(sm.machine.count(DeviceKind::Gpu), 4);
    assert_eq!(sm.machine.count(DeviceKind::Cpu), 20);
    let spec = cholesky::generate(10, 960);
    sm.load_models_for(&spec).unwrap();
    let g = build(&spec, &sm);
    let loc = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    let rnd = simulate(&g, &sm, PolicyKind::Random, &SimOptions::default()).unwrap();
    assert!(
        loc.run.makespan_s < rnd.run.makespan_s,
        "locality {} vs random {}",
        loc.run.makespan_s,
        rnd.run.makespan_s
    );
    assert!(loc.makespan_over_bound >= 1.0 - 1e-9);
}

/// A codelet model as other StarPU builds and machines write it: the linear regression split
/// over two lines (fscanf does not care), `nan`, `-nan` and `inf` in the regressions, a
/// multiple regression with coefficients, a row without flops, NaN sums, and a row whose
/// mean is NaN (unusable, if anyone needed it).
pub const ODD_MODEL: &str = "##################\n# Performance Model Version\n45\n\n# COMBs\n1\n# COMB_0\n1\n1\n0\n1\n\
# number of implementations\n1\n# number of entries\n3\n\
0.000000e+00   \t0.000000e+00   \t0.000000e+00   \t0.000000e+00   \n-nan           \tnan            \t0\t0              \t0              \n\
# a\t\tb\t\tc\nnan            \tnan            \tnan            \n\
# multiple-regression-base\n2\tinf\t-nan\n\
# hash\t\tsize\t\tflops\t\tmean (us)\tdev (us)\tsum\t\tsum2\t\tn\n\
0badf00d\t4096           \tnan            \t1.000000e+01   \t-nan           \tnan\tnan\t12\n\
0badf00e\t8192           \t2.000000e+01   \t1.000000e+00   \t20\t400\t1\n\
0badf00f\t16384          \t0.0            \tnan            \t0.0            \t0\t0\t5\n";

#[test]
fn starpu_directories_load_only_the_models_a_graph_needs() {
    let Some(dir) = sirocco_copy() else { return };
    let models = dir.path().join("sampling/codelets/45");
    // An unused codelet file that is odd (and unusable), one that is a dangling link, and a
    // needed one (gemm) replaced by a symbolic link to a copy elsewhere.
    std::fs::write(models.join("odd_codelet.sirocco"), ODD_MODEL).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), models.join("gone.sirocco")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(models.join("chol_model_gemm.sirocco"), elsewhere.join("gemm.model")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("gemm.model"), models.join("chol_model_gemm.sirocco")).unwrap();

    let machine = format!("starpu:{}:sirocco", dir.path().display());
    let spec = cholesky::generate(6, 960);
    let mut sm = SimMachine::parse(&machine).unwrap();
    let skipped = sm.load_models_for(&spec).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    for k in [
        "chol_model_potrf",
        "chol_model_trsm",
        "chol_model_syrk",
        "chol_model_gemm",
    ] {
        assert!(sm.model.knows(k, "gpu") && sm.model.knows(k, "cpu"), "{k}");
    }
    assert!(!sm.model.knows("odd_codelet", "gpu"), "unused models are not read");
    let g = build(&spec, &sm);
    let r = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    assert_eq!(r.run.completed, g.len());
    assert!(r.makespan_over_bound.is_finite() && r.makespan_over_bound >= 1.0 - 1e-9);

    // The odd file read as a needed model: every field accepted, the NaN mean refused
    // with its file and line.
    let mut sm = SimMachine::parse(&machine).unwrap();
    let err = sm.load_models(["odd_codelet"]).unwrap_err();
    assert!(
        err.contains("odd_codelet.sirocco:25:") && err.contains("mean time 'nan'"),
        "{err}"
    );
    let fine = ODD_MODEL.replace("0.0            \tnan  ", "0.0            \t3.0  ");
    std::fs::write(models.join("odd_codelet.sirocco"), fine).unwrap();
    let mut sm = SimMachine::parse(&machine).unwrap();
    let skipped = sm.load_models(["odd_codelet"]).unwrap();
    let notes: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("odd_codelet.sirocco:23:") && n.contains("deviation '-nan'")),
        "{notes:?}"
    );
    assert!(sm.model.knows("odd_codelet", "gpu"));
    let t = sm.model.expected("odd_codelet", "gpu", 8192).unwrap();
    assert!((t - 20e-6).abs() < 1e-12, "the 7-field row: mean 20 µs, got {t}");

    // A needed model with a negative duration, a dangling link where a needed model should
    // be, and a negative bandwidth: errors naming the file (and line), never a panic.
    let potrf = models.join("chol_model_potrf.sirocco");
    let text = std::fs::read_to_string(&potrf).unwrap();
    let (i, row) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("25ebb669"))
        .unwrap();
    let fields: Vec<&str> = row.split_whitespace().collect();
    let bad = row.replacen(fields[3], "-1.8e+04", 1);
    std::fs::write(&potrf, text.replacen(row, &bad, 1)).unwrap();
    let mut sm = SimMachine::parse(&machine).unwrap();
    let err = sm.load_models_for(&spec).unwrap_err();
    assert!(
        err.contains(&format!("chol_model_potrf.sirocco:{}:", i + 1)) && err.contains("not a duration"),
        "{err}"
    );
    std::fs::remove_file(models.join("chol_model_trsm.sirocco")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), models.join("chol_model_trsm.sirocco")).unwrap();
    let err = sm.load_models(["trsm"]).unwrap_err();
    assert!(err.contains("chol_model_trsm.sirocco: cannot read"), "{err}");
    let bw = dir.path().join("sampling/bus/sirocco.bandwidth");
    let text = std::fs::read_to_string(&bw).unwrap();
    std::fs::write(&bw, text.replacen("1.051768e+04", "-1.051768e+04", 1)).unwrap();
    let err = SimMachine::parse(&machine).unwrap_err();
    assert!(
        err.contains("sirocco.bandwidth:2:") && err.contains("node 0 to node 1"),
        "{err}"
    );
}

#[test]
fn every_policy_finishes_every_graph_above_its_bound() {
    let sm = SimMachine::parse("cpus:3,gpus:1,gpu-speedup:4").unwrap();
    let g = build(&cholesky::generate(8, 512), &sm);
    for policy in PolicyKind::ALL {
        let r = simulate(
            &g,
            &sm,
            policy,
            &SimOptions {
                record_trace: true,
                ..SimOptions::default()
            },
        )
        .unwrap();
        assert_eq!(r.run.completed, g.len());
        assert!(
            r.run.makespan_s >= r.lower_bound_s * (1.0 - 1e-9),
            "{policy}: {} < {}",
            r.run.makespan_s,
            r.lower_bound_s
        );
        let events: usize = r.run.trace.as_ref().unwrap().per_worker.iter().map(Vec::len).sum();
        assert_eq!(events, g.len());
        // Same inputs, same schedule.
        let again = simulate(&g, &sm, policy, &SimOptions::default()).unwrap();
        assert_eq!(again.placement, r.placement, "{policy} is deterministic");
    }
}

#[test]
fn gpu_memory_limits_hold_in_simulation() {
    let sm = SimMachine::parse("cpus:2,gpus:2,gpu-speedup:20").unwrap();
    let g = build(&cholesky::generate(12, 512), &sm);
    let tile = 512 * 512 * 4u64;
    let free = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
    let limit = 8 * tile;
    let opts = SimOptions {
        gpu_memory: Some(limit),
        ..SimOptions::default()
    };
    for policy in PolicyKind::ALL {
        let r = simulate(&g, &sm, policy, &opts).unwrap();
        assert_eq!(r.run.completed, g.len(), "{policy}");
        for m in r.run.memory.iter().filter(|m| m.node != "host") {
            assert!(m.peak_bytes <= limit, "{policy}: {m:?}");
        }
    }
    let limited = simulate(&g, &sm, PolicyKind::Locality, &opts).unwrap();
    let free_peak = free
        .run
        .memory
        .iter()
        .filter(|m| m.node != "host")
        .map(|m| m.peak_bytes)
        .max()
        .unwrap();
    assert!(
        free_peak > limit,
        "the working set ({free_peak} bytes) exceeds the limit"
    );
    assert!(limited.run.evictions > 0);
    // A task whose operands exceed the limit is refused at submit.
    let tiny = SimOptions {
        gpu_memory: Some(tile),
        ..SimOptions::default()
    };
    let only_gpu = SimMachine::parse("cpus:0,gpus:1,gpu-speedup:20").unwrap();
    let g2 = build(&cholesky::generate(3, 512), &only_gpu);
    let e = simulate(&g2, &only_gpu, PolicyKind::Eager, &tiny)
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory"), "{e}");
}

#[test]
fn host_memory_limits_hold_in_simulation() {
    let tile = 256 * 256 * 4u64;
    for machine in ["cpus:3", "cpus:2,gpus:1,gpu-speedup:10"] {
        let sm = SimMachine::parse(machine).unwrap();
        let g = build(&cholesky::generate(8, 256), &sm);
        let free = simulate(&g, &sm, PolicyKind::Locality, &SimOptions::default()).unwrap();
        let total = 36 * tile; // the lower triangle of 8x8 tiles
        assert_eq!(free.run.memory[0].peak_bytes, total, "every datum has a host buffer");
        assert_eq!(free.run.spilled_bytes, 0);
        let limit = total / 4;
        for gpu_memory in [None, Some(6 * tile)] {
            let opts = SimOptions {
                host_memory: Some(limit),
                gpu_memory,
                ..SimOptions::default()
            };
            for policy in PolicyKind::ALL {
                let r = simulate(&g, &sm, policy, &opts).unwrap();
                assert_eq!(r.run.completed, g.len(), "{machine} {policy}");
                let host = &r.run.memory[0];
                assert_eq!(host.capacity_bytes, Some(limit));
                assert!(host.peak_bytes <= limit, "{machine} {policy}: {host:?}");
                assert!(
                    r.run.spilled_bytes > 0 && host.evictions > 0,
                    "{machine} {policy}: {host:?}"
                );
            }
        }
    }
}

/// `tiles` temporaries produced then reduced pairwise into a stored result, 1 ms per task.
fn produce_and_reduce(tiles: usize, tile_bytes: u64) -> GraphSpec {
    let mut g = GraphSpec::new(Some("produce-reduce".into()));
    for i in 0..=tiles {
        g.data.push(formats::DataSpec {
            name: if i == tiles { "out".into() } else { format!("t{i}") },
            elem: None,
            len: None,
            bytes: Some(tile_bytes),
            init: None,
            read_only: false,
            temp: i < tiles,
        });
    }
    let mut task = |name: String, access: Vec<(String, &str)>| {
        let mut t = TaskSpec::replay(name, 1e-3);
        t.access = access.into_iter().map(|(d, m)| (d, m.to_string())).collect();
        g.tasks.push(t);
    };
    for i in 0..tiles {
        task(format!("produce{i}"), vec![(format!("t{i}"), "w")]);
    }
    let mut stride = 1;
    while stride < tiles {
        for i in (0..tiles).step_by(2 * stride) {
            if i + stride < tiles {
                let (a, b) = (format!("t{i}"), format!("t{}", i + stride));
                task(format!("reduce{i}+{}", i + stride), vec![(b, "r"), (a, "rw")]);
            }
        }
        stride *= 2;
    }
    task("store".into(), vec![("t0".into(), "r"), ("out".into(), "rw")]);
    g
}

#[test]
fn temporaries_are_freed_and_backpressure_holds_producers_back_in_simulation() {
    let (tiles, tile) = (64, 1u64 << 20);
    let sm = SimMachine::parse("cpus:2").unwrap();
    let g = build(&produce_and_reduce(tiles, tile), &sm);
    for policy in PolicyKind::ALL {
        let free = simulate(&g, &sm, policy, &SimOptions::default()).unwrap();
        assert_eq!(free.run.residency[0].data, 1, "{policy}: only the result is left");
        if policy != PolicyKind::Heft {
            // (HEFT's static plan runs every producer first: all tiles are live at once.)
            assert!(
                free.run.memory[0].peak_bytes < (tiles as u64 + 1) * tile,
                "{policy}: temporaries are freed"
            );
        }
        let limit = 16 * tile; // a quarter of the tiles
        let with = |no_backpressure| {
            simulate(
                &g,
                &sm,
                policy,
                &SimOptions {
                    host_memory: Some(limit),
                    no_backpressure,
                    ..SimOptions::default()
                },
            )
            .unwrap()
            .run
        };
        let (on, off) = (with(false), with(true));
        for r in [&on, &off] {
            assert_eq!(r.completed, g.len(), "{policy}");
            assert!(r.memory[0].peak_bytes <= limit, "{policy}");
        }
        assert!(
            on.spilled_bytes <= off.spilled_bytes,
            "{policy}: held-back producers spill {} bytes, free-running ones {}",
            on.spilled_bytes,
            off.spilled_bytes
        );
        if policy == PolicyKind::Locality {
            // The default policy runs producers ahead of consumers (their upward rank is
            // higher): without backpressure the produced tiles pile up and spill.
            assert_eq!(on.spilled_bytes, 0);
            assert!(off.spilled_bytes > 0);
        }
        eprintln!(
            "{policy}: unlimited peak {} MiB; 16 MiB limit: spilled {} MiB with backpressure, {} MiB without",
            free.run.memory[0].peak_bytes >> 20,
            on.spilled_bytes >> 20,
            off.spilled_bytes >> 20
        );
    }
}

/// Links with values no machine spec accepts (set on the struct directly): copies in the
/// simulation never panic on them (`Duration::from_secs_f64` did, on a negative or NaN
/// time), whatever number comes out.
#[test]
fn odd_link_values_set_in_code_never_panic_the_simulation() {
    let mut spec = GraphSpec::new(Some("copies".into()));
    spec.data.push(formats::DataSpec {
        name: "x".into(),
        elem: None,
        len: None,
        bytes: Some(1 << 20),
        init: None,
        read_only: false,
        temp: false,
    });
    for (i, device) in ["cpu", "gpu", "cpu", "gpu"].into_iter().enumerate() {
        let mut t = TaskSpec::replay(format!("t{i}"), 0.001);
        t.access = vec![("x".into(), "rw".into())];
        t.device = Some(device.into());
        spec.tasks.push(t);
    }
    for (lat, bw) in [
        (-1.0, 1e9),
        (f64::NAN, 1e9),
        (1e-5, -1.0),
        (1e-5, f64::NAN),
        (1e300, 1e-300),
    ] {
        let mut sm = SimMachine::parse("cpus:2,gpus:1,gpu-speedup:2").unwrap();
        for (i, row) in sm.latency.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                if i != j {
                    *v = lat;
                }
            }
        }
        for (i, row) in sm.bandwidth.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                if i != j {
                    *v = bw;
                }
            }
        }
        let g = build(&spec, &sm);
        for policy in [PolicyKind::Eager, PolicyKind::Locality, PolicyKind::Heft] {
            let _ = simulate(&g, &sm, policy, &SimOptions::default());
        }
    }
}

#[test]
fn absurd_model_costs_are_refused_by_the_simulation() {
    // A finite spec whose flop speed makes a Cholesky tile take 10^290 s.
    let sm = SimMachine::parse("cpus:2,gflops:1e-300").unwrap();
    let g = build(&cholesky::generate(2, 64), &sm);
    let e = simulate(&g, &sm, PolicyKind::Eager, &SimOptions::default()).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("potrf(0)") && e.contains("over the 1e9 s limit"), "{e}");
}
