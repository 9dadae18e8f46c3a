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
