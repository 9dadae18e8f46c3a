//! The loaders under bad input: arbitrary bytes, mangled files and random structures never
//! panic, hang or allocate without bound; they load or say what is wrong. Bounded runs of
//! proptest here (CI); longer runs with `PROPTEST_CASES=100000 cargo test --test fuzz`.

use hexec::graph::formats::{parse, BuildOptions, Format};
use hexec::{Machine, Runtime};
use proptest::prelude::*;

const FORMATS: [Option<Format>; 6] = [
    None,
    Some(Format::Native),
    Some(Format::WfCommons),
    Some(Format::Stg),
    Some(Format::Dask),
    Some(Format::Cholesky),
];

const NATIVE: &str = r#"{
  "format": "hexec-graph", "version": 1, "name": "fuzz",
  "data": [
    {"name": "x", "type": "f32", "len": 8, "init": {"fill": 1.0}},
    {"name": "y", "type": "f32", "len": 8, "init": [1, 2, 3, 4, 5, 6, 7, 8]},
    {"name": "t", "type": "f32", "len": 8, "temp": true},
    {"name": "s", "type": "f32", "len": 1},
    {"name": "blob", "bytes": 64}
  ],
  "tasks": [
    {"name": "a", "kernel": "axpy", "params": [2.0], "access": [["x", "r"], ["y", "rw"]]},
    {"name": "f", "kernel": "fill", "params": [3.0], "access": [["t", "w"]]},
    {"name": "b", "kernel": "add", "access": [["y", "r"], ["t", "r"], ["x", "w"]], "after": ["a"]},
    {"name": "c", "kernel": "sum", "access": [["x", "r"], ["s", "w"]], "priority": 2},
    {"name": "d", "kernel": "noop", "access": [["blob", "rw"]], "device": "cpu"}
  ]
}"#;

/// Small valid files of the replayed formats (their tasks spin for recorded times, so the
/// fuzzers build them but do not run them).
const WFCOMMONS: &str = r#"{"name": "mini", "schemaVersion": "1.5", "workflow": {
  "specification": {
    "tasks": [
      {"name": "a", "id": "a_1", "parents": [], "children": ["b_1"], "inputFiles": ["in.txt"], "outputFiles": ["mid.dat"]},
      {"name": "b", "id": "b_1", "parents": ["a_1"], "children": [], "inputFiles": ["mid.dat"], "outputFiles": []}
    ],
    "files": [{"id": "in.txt", "sizeInBytes": 10}, {"id": "mid.dat", "sizeInBytes": 2000}]
  },
  "execution": {"makespanInSeconds": 3.0, "tasks": [{"id": "a_1", "runtimeInSeconds": 1.5}, {"id": "b_1", "runtimeInSeconds": 0.5}], "machines": []}
}}"#;
const STG: &str = "3\n  0  0  0\n  1  4  1  0\n  2  2  1  0\n  3  3  2  1  2\n  4  0  1  3\n# CP Length : 7\n";
const DASK: &str = r#"{"meta": {"name": "mini-dask"}, "tasks": [
  {"id": 0, "key": "sum", "func": "add", "deps": [1, 2], "duration_s": 0.0001, "output_bytes": 8},
  {"id": 1, "key": "a", "func": "f", "deps": [], "duration_s": 0.0, "output_bytes": 100},
  {"id": 2, "key": "b", "func": "f", "deps": [], "duration_s": 0.0, "output_bytes": 100}
]}"#;

fn rt() -> Runtime {
    Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .retries(0)
        .build()
        .unwrap()
}

/// Loads `bytes` in every format; whatever loads is built, and run when its kernels are
/// quick ones (no spin or sleep, whose parameters could ask for hours).
fn exercise(rt: &Runtime, bytes: &[u8]) {
    for format in FORMATS {
        let Ok(spec) = parse("fuzz", bytes, format) else {
            continue;
        };
        let _ = spec.build_virtual(&|_| hexec::kernels::builtin::noop(), &BuildOptions::default());
        let Ok(g) = spec.build(rt, &BuildOptions::default()) else {
            continue;
        };
        if spec
            .tasks
            .iter()
            .all(|t| !matches!(t.kernel.as_str(), "spin" | "sleep"))
        {
            let _ = rt.run(&g);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&rt(), &bytes);
    }

    #[test]
    fn mangled_files_of_every_format_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((0usize..4096, any::<u8>(), 0u8..3), 1..6)
    ) {
        let mut bytes = [NATIVE, WFCOMMONS, STG, DASK][which].as_bytes().to_vec();
        for (at, b, op) in edits {
            let at = at % bytes.len().max(1);
            match op {
                0 => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ => { bytes.remove(at); }
            }
        }
        exercise(&rt(), &bytes);
    }

    #[test]
    fn random_native_structures_load_or_explain(
        lens in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..64, Just(1 << 40), Just(u64::MAX)], 1..4),
        types in proptest::collection::vec(prop_oneof![Just("f32"), Just("u64"), Just("i32"), Just("q8")], 1..4),
        kernels in proptest::collection::vec(prop_oneof![Just("axpy"), Just("scale"), Just("sum"), Just("gemm"), Just("mix"), Just("nope")], 1..5),
        params in proptest::collection::vec(prop_oneof![Just(0.0f64), Just(-1.0), Just(1e300), Just(3.0)], 0..4),
        modes in proptest::collection::vec(prop_oneof![Just("r"), Just("w"), Just("rw"), Just("x")], 1..4),
    ) {
        let data: Vec<String> = lens.iter().zip(types.iter().cycle()).enumerate()
            .map(|(i, (len, ty))| format!(r#"{{"name": "d{i}", "type": "{ty}", "len": {len}}}"#))
            .collect();
        let tasks: Vec<String> = kernels.iter().enumerate().map(|(i, k)| {
            let access: Vec<String> = modes.iter().enumerate()
                .map(|(j, m)| format!(r#"["d{}", "{m}"]"#, (i + j) % lens.len()))
                .collect();
            let ps: Vec<String> = params.iter().map(|p| format!("{p:e}")).collect();
            let after = if i > 0 { format!(r#", "after": ["t{}"]"#, i - 1) } else { String::new() };
            format!(r#"{{"name": "t{i}", "kernel": "{k}", "params": [{}], "access": [{}]{after}}}"#, ps.join(", "), access.join(", "))
        }).collect();
        let doc = format!(r#"{{"format": "hexec-graph", "version": 1, "data": [{}], "tasks": [{}]}}"#, data.join(", "), tasks.join(", "));
        exercise(&rt(), doc.as_bytes());
    }
}

#[test]
fn huge_declared_sizes_are_refused_before_allocating() {
    let rt = rt();
    let doc = r#"{"format": "hexec-graph", "version": 1, "data": [{"name": "big", "type": "f64", "len": 1099511627776}], "tasks": []}"#;
    let e = parse("big.json", doc.as_bytes(), None)
        .unwrap()
        .build(&rt, &BuildOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("'big'"), "{e}");
    let chol = r#"{"generator": "x", "N": 1000000, "tasks": []}"#;
    let e = parse("chol.json", chol.as_bytes(), Some(Format::Cholesky)).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
}

/// Runs `f` on its own thread and fails the test if it does not return within `secs` (a
/// hang is a failure, not a stalled suite); a panic in `f` is the test's panic.
fn within<T: Send + 'static>(secs: u64, what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("did not end within {secs} s: {what}"),
    }
}

/// A small graph that uses what a machine offers: Cholesky tiles (flop-counted or modelled),
/// replayed tasks moving a datum between host and GPU.
fn sim_graph() -> hexec::graph::formats::GraphSpec {
    let mut g = hexec::graph::formats::cholesky::generate(2, 32);
    g.data.push(hexec::graph::formats::DataSpec {
        name: "x".into(),
        elem: None,
        len: None,
        bytes: Some(1 << 20),
        init: None,
        read_only: false,
        temp: false,
    });
    for (i, device) in ["cpu", "gpu", "cpu"].into_iter().enumerate() {
        let mut t = hexec::graph::formats::TaskSpec::replay(format!("r{i}"), 0.001);
        t.access = vec![("x".into(), "rw".into())];
        t.device = Some(device.into());
        g.tasks.push(t);
    }
    g
}

/// A machine that parsed: its models read, the graph built and simulated under two
/// policies. Ok or a clean error, never a panic; `within` bounds the time.
fn simulate_on(mut sm: hexec::sim::SimMachine) {
    let spec = sim_graph();
    if sm.load_models_for(&spec).is_err() {
        return;
    }
    let Ok(g) = spec.build_virtual(&|k| sm.kernel(k), &BuildOptions::default()) else {
        return;
    };
    for policy in [hexec::PolicyKind::Eager, hexec::PolicyKind::Locality] {
        if let Ok(r) = hexec::sim::simulate(&g, &sm, policy, &hexec::sim::SimOptions::default()) {
            assert!(r.run.makespan_s.is_finite() && r.run.makespan_s >= 0.0, "{r:?}");
        }
    }
}

/// Numbers a machine spec or a StarPU file might hold, sane and not.
fn odd_number() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0"),
        Just("1"),
        Just("2"),
        Just("24"),
        Just("-1"),
        Just("-0"),
        Just("2.5"),
        Just("1e12"),
        Just("1e-300"),
        Just("1e300"),
        Just("nan"),
        Just("-nan"),
        Just("inf"),
        Just("-inf"),
        Just("1024"),
        Just("1025"),
        Just("12GB/s"),
        Just("10us"),
        Just(""),
        Just("x"),
        Just("18446744073709551616"),
    ]
    .prop_map(str::to_string)
}

const SPEC_KEYS: [&str; 8] = ["cpus", "gpus", "gpu-speedup", "bw", "lat", "gflops", "tpus", ""];
const TOML_KEYS: [&str; 7] = [
    "cpus",
    "gpus",
    "gpu_speedup",
    "bandwidth_gbs",
    "latency_us",
    "cpu_gflops",
    "warp",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_machine_specs_parse_or_explain(
        parts in proptest::collection::vec((0usize..SPEC_KEYS.len(), odd_number()), 0..7),
    ) {
        let spec = parts.iter().map(|(k, v)| format!("{}:{v}", SPEC_KEYS[*k])).collect::<Vec<_>>().join(",");
        within(20, spec.clone(), move || {
            if let Ok(sm) = hexec::sim::SimMachine::parse(&spec) {
                simulate_on(sm);
            }
        });
    }

    #[test]
    fn mangled_machine_specs_parse_or_explain(
        edits in proptest::collection::vec((0usize..64, any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = b"cpus:4,gpus:2,gpu-speedup:8,bw:12GB/s,lat:10us,gflops:10".to_vec();
        for (at, b, op) in edits {
            let at = at % bytes.len().max(1);
            match op {
                0 => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ => { bytes.remove(at); }
            }
        }
        let spec = String::from_utf8_lossy(&bytes).into_owned();
        // A spec ending in .toml names a file: keep the fuzz on strings.
        prop_assume!(!spec.starts_with("starpu:") && !spec.ends_with(".toml"));
        within(20, spec.clone(), move || {
            if let Ok(sm) = hexec::sim::SimMachine::parse(&spec) {
                simulate_on(sm);
            }
        });
    }

    #[test]
    fn random_toml_machines_parse_or_explain(
        fields in proptest::collection::vec((0usize..TOML_KEYS.len(), odd_number()), 0..7),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        let text: String = fields.iter().map(|(k, v)| format!("{} = {v}\n", TOML_KEYS[*k])).collect();
        std::fs::write(&path, &text).unwrap();
        let spec = path.to_str().unwrap().to_string();
        within(20, text, move || {
            if let Ok(sm) = hexec::sim::SimMachine::parse(&spec) {
                simulate_on(sm);
            }
        });
    }
}

/// A valid codelet model (one CPU and one GPU combination, a 4 KiB and a 16 KiB row each).
const CODELET: &str = "45\n2\n1\n0\n0\n1\n1\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
0000abcd 12288 1 100 10 1 1 10\n0000abce 49152 1 800 10 1 1 10\n\
1\n1\n0\n1\n1\n2\n0 0 0 0 nan nan 0 0 0\nnan nan nan\n0\n\
0000abcd 12288 1 10 1 1 1 10\n0000abce 49152 1 80 1 1 1 10\n";

/// Writes a StarPU sampling directory for machine `m` and simulates on it.
fn starpu_case(config: &str, bandwidth: &str, latency: &str, codelets: &[(&str, Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    let bus = dir.path().join("sampling/bus");
    let models = dir.path().join("sampling/codelets/45");
    std::fs::create_dir_all(&bus).unwrap();
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(bus.join("m.config"), config).unwrap();
    std::fs::write(bus.join("m.bandwidth"), bandwidth).unwrap();
    std::fs::write(bus.join("m.latency"), latency).unwrap();
    for (name, bytes) in codelets {
        std::fs::write(models.join(format!("{name}.m")), bytes).unwrap();
    }
    let what = format!("{config:?} {bandwidth:?} {latency:?}");
    let path = dir.path().to_path_buf();
    within(20, what, move || {
        if let Ok(sm) = hexec::sim::SimMachine::from_starpu(&path, "m") {
            simulate_on(sm);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_starpu_bus_files_load_or_explain(
        counts in (odd_number(), prop_oneof![Just("0".to_string()), Just("1".to_string()), Just("2".to_string()), odd_number()]),
        bw in proptest::collection::vec(odd_number(), 0..10),
        lat in proptest::collection::vec(odd_number(), 0..10),
        width in 1usize..4,
    ) {
        let matrix = |v: &[String]| v.chunks(width).map(|r| r.join(" ") + "\n").collect::<String>();
        let config = format!("# cfg\n{} # Number of CPUs\n{} # Number of CUDA devices\n", counts.0, counts.1);
        starpu_case(&config, &matrix(&bw), &matrix(&lat), &[("chol_model_potrf", CODELET.as_bytes().to_vec())]);
    }

    #[test]
    fn mangled_starpu_codelets_load_or_explain(
        edits in proptest::collection::vec((0usize..512, any::<u8>(), 0u8..3), 1..6),
        fields in proptest::collection::vec(odd_number(), 8),
    ) {
        let mut bytes = CODELET.as_bytes().to_vec();
        for (at, b, op) in edits {
            let at = at % bytes.len().max(1);
            match op {
                0 => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ => { bytes.remove(at); }
            }
        }
        // And a row of odd numbers where a history entry goes.
        let odd_row = CODELET.replace("0000abcd 12288 1 10 1 1 1 10", &format!("0000abcd {}", fields.join(" ")));
        starpu_case(
            "4 # Number of CPUs\n1 # Number of CUDA devices\n",
            "0 5000\n5000 0\n",
            "0 10\n10 0\n",
            &[
                ("chol_model_potrf", bytes),
                ("chol_model_trsm", odd_row.into_bytes()),
                ("chol_model_gemm", CODELET.as_bytes().to_vec()),
            ],
        );
    }
}
