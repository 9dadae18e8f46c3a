//! Loader tests on small fixtures written here, and on malformed input.

use super::*;
use crate::{Machine, Runtime};

fn rt() -> Runtime {
    Runtime::builder().machine(Machine::synthetic_cpus(2)).build().unwrap()
}

fn err_of(text: &str, format: Option<Format>) -> LoadError {
    parse("fixture", text.as_bytes(), format).unwrap_err()
}

const NATIVE: &str = r#"{
  "format": "hexec-graph", "version": 1, "name": "axpy-demo",
  "data": [
    {"name": "x", "type": "f32", "len": 4, "init": {"fill": 1.0}},
    {"name": "y", "type": "f32", "len": 4, "init": [1, 2, 3, 4]},
    {"name": "s", "type": "f32", "len": 1},
    {"name": "blob", "bytes": 4096}
  ],
  "tasks": [
    {"name": "sum", "kernel": "sum", "access": [["y", "r"], ["s", "w"]], "after": ["touch"]},
    {"name": "axpy", "kernel": "axpy", "params": [2.0], "access": [["x", "r"], ["y", "rw"]]},
    {"name": "touch", "kernel": "noop", "access": [["blob", "w"]], "after": ["axpy"], "priority": 3}
  ]
}"#;

#[test]
fn native_round_trip_and_run() {
    let spec = parse("fixture", NATIVE.as_bytes(), None).unwrap();
    assert_eq!(spec.tasks.len(), 3);
    let text = serde_json::to_string(&spec).unwrap();
    assert_eq!(parse("again", text.as_bytes(), None).unwrap(), spec);
    let rt = rt();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    assert_eq!(g.len(), 3);
    // "sum" is listed first but runs after "touch" (and so after "axpy"): topological order.
    assert_eq!(g.task_name(0), "axpy");
    assert_eq!(g.task_name(2), "sum");
    let report = rt.run(&g).unwrap();
    assert_eq!(report.completed, 3);
    // y = [3, 4, 5, 6] → s = 18
    let s = g.data.iter().find_map(|d| match d {
        crate::graph::GraphDatum::Stored { id, .. } if *id == 2 => Some(*id),
        _ => None,
    });
    assert_eq!(rt.read(rt.handle::<f32>(s.unwrap())).unwrap(), vec![18.0]);
}

#[test]
fn native_errors_name_position_and_reason() {
    let e = err_of(
        "{\"format\": \"hexec-graph\", \"version\": 1, \"tasks\": [ {\"name\": }]}",
        None,
    );
    assert!(e.position.starts_with("line 1, column"), "{e}");
    let e = err_of(r#"{"format": "hexec-graph", "version": 2, "tasks": []}"#, None);
    assert_eq!(e.position, "version");
    let e = err_of(
        r#"{"format": "hexec-graph", "version": 1, "tasks": [], "extra": 1}"#,
        None,
    );
    assert!(e.reason.contains("unknown field"), "{e}");

    let rt = rt();
    let build = |tasks: &str, data: &str| {
        let text = format!(r#"{{"format": "hexec-graph", "version": 1, "data": [{data}], "tasks": [{tasks}]}}"#);
        parse("f", text.as_bytes(), None)
            .unwrap()
            .build(&rt, &BuildOptions::default())
            .unwrap_err()
    };
    let e = build(r#"{"name": "a", "kernel": "nope"}"#, "");
    assert!(
        e.reason.contains("unknown kernel 'nope'") && e.position.contains("'a'"),
        "{e}"
    );
    let e = build(r#"{"name": "a", "kernel": "noop", "access": [["zz", "r"]]}"#, "");
    assert!(e.reason.contains("'zz'"), "{e}");
    let e = build(
        r#"{"name": "a", "kernel": "noop", "access": [["v", "x"]]}"#,
        r#"{"name": "v", "bytes": 1}"#,
    );
    assert!(e.reason.contains("not r, w or rw"), "{e}");
    let e = build(
        r#"{"name": "a", "kernel": "noop", "after": ["c"]}, {"name": "b", "kernel": "noop", "after": ["a"]}, {"name": "c", "kernel": "noop", "after": ["b"]}"#,
        "",
    );
    assert!(e.reason.contains("dependency cycle"), "{e}");
    let cycle = e.reason.split(": ").nth(1).unwrap();
    let names: Vec<&str> = cycle.split(" -> ").collect();
    assert_eq!(names.len(), 4, "{e}");
    assert_eq!(names[0], names[3]);
    for n in ["a", "b", "c"] {
        assert!(names.contains(&n), "{e}");
    }
    let e = build(
        r#"{"name": "a", "kernel": "noop"}, {"name": "a", "kernel": "noop"}"#,
        "",
    );
    assert!(e.reason.contains("already declared"), "{e}");
    let e = build(r#"{"name": "a", "kernel": "noop", "after": ["ghost"]}"#, "");
    assert!(e.reason.contains("'ghost'"), "{e}");
    let e = build(
        r#"{"name": "a", "kernel": "noop"}"#,
        r#"{"name": "v", "type": "f32", "len": 2, "init": [1]}"#,
    );
    assert!(e.reason.contains("1 values for 2 elements"), "{e}");
    let e = build(
        r#"{"name": "a", "kernel": "noop"}"#,
        r#"{"name": "v", "type": "u8", "len": 1, "init": [300]}"#,
    );
    assert!(e.reason.contains("out of range"), "{e}");
    let e = build(
        r#"{"name": "a", "kernel": "noop"}"#,
        r#"{"name": "v", "type": "f32", "bytes": 3}"#,
    );
    assert!(e.reason.contains("either"), "{e}");
    let e = build(r#"{"name": "a", "kernel": "noop", "device": "tpu"}"#, "");
    assert!(e.reason.contains("'tpu'"), "{e}");
}

const WF: &str = r#"{
  "name": "mini", "schemaVersion": "1.5",
  "workflow": {
    "specification": {
      "tasks": [
        {"name": "a", "id": "a_1", "parents": [], "children": ["b_1"], "inputFiles": ["in.txt"], "outputFiles": ["mid.dat"]},
        {"name": "b", "id": "b_1", "parents": ["a_1"], "children": [], "inputFiles": ["mid.dat"], "outputFiles": ["out.dat"]},
        {"name": "c", "id": "c_1", "parents": [], "children": [], "inputFiles": ["in.txt"], "outputFiles": []}
      ],
      "files": [{"id": "in.txt", "sizeInBytes": 10}, {"id": "mid.dat", "sizeInBytes": 2000}, {"id": "out.dat", "sizeInBytes": 5}]
    },
    "execution": {
      "makespanInSeconds": 3.0,
      "tasks": [{"id": "a_1", "runtimeInSeconds": 1.5}, {"id": "b_1", "runtimeInSeconds": 0.5}, {"id": "c_1", "runtimeInSeconds": 0.0}],
      "machines": []
    }
  }
}"#;

#[test]
fn wfcommons_tasks_files_and_runtimes() {
    let spec = parse("wf", WF.as_bytes(), None).unwrap();
    assert_eq!(spec.tasks.len(), 3);
    assert_eq!(spec.tasks[0].params, vec![1.5]);
    assert_eq!(spec.tasks[1].after, vec!["a_1".to_string()]);
    assert_eq!(
        spec.data.iter().find(|d| d.name == "mid.dat").unwrap().bytes,
        Some(2000)
    );
    let rt = rt();
    let g = spec
        .build(
            &rt,
            &BuildOptions {
                time_scale: 0.001,
                empty_tasks: false,
            },
        )
        .unwrap();
    let b = crate::graph::TaskId { graph: g.id, index: 1 };
    assert_eq!(g.dependencies(b).len(), 1);
    assert_eq!(&g.params[g.tasks[0].params.range()], &[0.0015]);
    assert_eq!(rt.run(&g).unwrap().completed, 3);

    let missing_file = WF.replace(
        r#"{"id": "out.dat", "sizeInBytes": 5}"#,
        r#"{"id": "other", "sizeInBytes": 5}"#,
    );
    let e = err_of(&missing_file, None);
    assert!(
        e.reason.contains("'out.dat'") && e.position.contains("tasks[1] ('b_1')"),
        "{e}"
    );
    let missing_rt = WF.replace(
        r#"{"id": "c_1", "runtimeInSeconds": 0.0}"#,
        r#"{"id": "zzz", "runtimeInSeconds": 0.0}"#,
    );
    let e = err_of(&missing_rt, None);
    assert!(
        e.reason.contains("runtimeInSeconds") && e.position.contains("c_1"),
        "{e}"
    );
    let e = err_of(&WF.replace("\"parents\": []", "\"parents\": 7"), None);
    assert!(e.position.starts_with("line "), "{e}");
}

const STG: &str = "3
  0  0  0
  1  4  1  0
  2  2  1  0
  3  3  2  1  2
  4  0  1  3
# CP Length : 7
";

#[test]
fn stg_parses_and_checks_its_critical_path() {
    let spec = parse("s.stg", STG.as_bytes(), None).unwrap();
    assert_eq!(spec.tasks.len(), 5);
    assert_eq!(spec.tasks[3].after, vec!["t1".to_string(), "t2".to_string()]);
    assert_eq!(spec.tasks[1].params, vec![4.0 * stg::STG_UNIT_S]);
    let rt = rt();
    let g = spec
        .build(
            &rt,
            &BuildOptions {
                time_scale: 0.01,
                empty_tasks: false,
            },
        )
        .unwrap();
    assert_eq!(rt.run(&g).unwrap().completed, 5);

    let e = err_of(&STG.replace("CP Length : 7", "CP Length : 9"), None);
    assert!(e.reason.contains("critical path") && e.reason.contains('7'), "{e}");
    let e = err_of(&STG.replace("  2  2  1  0", "  5  2  1  0"), None);
    assert_eq!(e.position, "line 4");
    let e = err_of(&STG.replace("  3  3  2  1  2", "  3  3  2  1  x"), None);
    assert!(e.reason.contains("'x'"), "{e}");
    let e = err_of(&STG.replace("  3  3  2  1  2", "  3  3  3  1  2"), None);
    assert!(e.reason.contains("announces 3"), "{e}");
    let e = err_of(&STG.replace("  4  0  1  3\n", ""), None);
    assert_eq!(e.position, "end of file");
    let e = err_of(&STG.replace("  2  2  1  0", "  2  2  1  2"), None);
    assert!(e.reason.contains("does not come before"), "{e}");
    let e = err_of("99999999999999\n", None);
    assert_eq!(e.position, "end of file");
}

#[cfg(feature = "gzip")] // Its test reads it gzipped.
const DASK: &str = r#"{"meta": {"name": "mini-dask"}, "tasks": [
  {"id": 0, "key": "sum", "func": "add", "deps": [1, 2], "duration_s": 0.0001, "output_bytes": 8},
  {"id": 1, "key": "a", "func": "f", "deps": [], "duration_s": 0.0, "output_bytes": 100},
  {"id": 2, "key": "b", "func": "f", "deps": [], "duration_s": 0.0, "output_bytes": 100}
]}"#;

#[test]
#[cfg(feature = "gzip")]
fn dask_plain_and_gzipped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mini.json.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    enc.write_all(DASK.as_bytes()).unwrap();
    enc.finish().unwrap();
    let spec = load(&path, None).unwrap();
    let plain = parse("x", DASK.as_bytes(), None).unwrap();
    assert_eq!(spec.tasks, plain.tasks);
    assert_eq!(spec.data, plain.data);
    assert_eq!(spec.source.as_deref(), Some(path.to_str().unwrap()));
    let rt = rt();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    // "sum" waits for both inputs.
    let sum = (0..g.len()).find(|&i| g.task_name(i) == "sum").unwrap();
    assert_eq!(
        g.dependencies(crate::graph::TaskId {
            graph: g.id,
            index: sum as u32
        })
        .len(),
        2
    );
    assert_eq!(rt.run(&g).unwrap().completed, 3);

    let e = err_of(&DASK.replace("[1, 2]", "[1, 7]"), None);
    assert!(e.reason.contains("task id 7") && e.position.contains("'sum'"), "{e}");
    let e = err_of(&DASK.replace("\"id\": 2,", "\"id\": 1,"), None);
    assert!(e.reason.contains("appears twice"), "{e}");
    let e = err_of(&DASK.replace("[1, 2]", "[0]"), None);
    assert!(e.reason.contains("itself"), "{e}");
    std::fs::write(dir.path().join("bad.gz"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
    let e = load(&dir.path().join("bad.gz"), None).unwrap_err();
    assert!(e.reason.contains("gzip"), "{e}");
    let e = load(&dir.path().join("absent.json"), None).unwrap_err();
    assert!(e.reason.contains("cannot open"), "{e}");
}

#[test]
fn detection_and_garbage() {
    assert!(err_of("hello", None).reason.contains("not a JSON object"));
    assert!(err_of("{\"tasks\": []}", None).reason.contains("unrecognised"));
    assert!(parse("x", &[0xff, 0xfe], None).unwrap_err().reason.contains("UTF-8"));
    assert_eq!("stg".parse::<Format>().unwrap(), Format::Stg);
    assert!("xml".parse::<Format>().is_err());
}

#[test]
fn native_temporaries_run_and_are_checked() {
    let text = r#"{
      "format": "hexec-graph", "version": 1,
      "data": [
        {"name": "t", "type": "f32", "len": 4, "temp": true},
        {"name": "out", "type": "f32", "len": 4}
      ],
      "tasks": [
        {"name": "fill", "kernel": "fill", "params": [2.5], "access": [["t", "w"]]},
        {"name": "add", "kernel": "axpy", "params": [2.0], "access": [["t", "r"], ["out", "rw"]]}
      ]
    }"#;
    let spec = parse("fixture", text.as_bytes(), None).unwrap();
    let rt = rt();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    assert!(g.data[0].is_temp());
    let report = rt.run(&g).unwrap();
    assert_eq!(report.residency[0].data, 1, "the temporary is gone");
    let out = match g.data[1] {
        crate::graph::GraphDatum::Stored { id, .. } => id,
        _ => unreachable!(),
    };
    assert_eq!(rt.read(rt.handle::<f32>(out)).unwrap(), vec![5.0; 4]);
    // The simulator sees the temporary too.
    assert!(spec
        .build_virtual(&|_| crate::kernels::builtin::noop(), &BuildOptions::default())
        .unwrap()
        .data[0]
        .is_temp());
    let bad = text.replace(r#""temp": true"#, r#""temp": true, "init": {"fill": 1.0}"#);
    let spec = parse("fixture", bad.as_bytes(), None).unwrap();
    let e = spec.build(&rt, &BuildOptions::default()).unwrap_err().to_string();
    assert!(e.contains("data[0] ('t')") && e.contains("temporary"), "{e}");
}

/// The store id of a file's stored datum, by position.
fn stored_id(g: &Graph, local: usize) -> u32 {
    match g.data[local] {
        crate::graph::GraphDatum::Stored { id, .. } => id,
        _ => unreachable!("datum {local} is stored"),
    }
}

#[test]
fn native_read_only_data_are_refused_to_writers() {
    let text = r#"{"format": "hexec-graph", "version": 1,
      "data": [{"name": "w", "type": "i32", "len": 3, "init": [1, 2, 3], "read_only": true}],
      "tasks": [{"name": "clobber", "kernel": "fill", "params": [0], "access": [["w", "w"]]}]}"#;
    let spec = parse("fixture", text.as_bytes(), None).unwrap();
    let rt = rt();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    // The init is the datum's contents, and the store refuses writes to it as to any
    // read-only datum.
    let h = rt.handle::<i32>(stored_id(&g, 0));
    assert_eq!(rt.read(h).unwrap(), vec![1, 2, 3]);
    assert!(matches!(rt.write(h, &[0; 3]), Err(crate::DataError::ReadOnly(_))));
    let e = rt.run(&g).unwrap_err().to_string();
    assert!(
        e.contains("'clobber'") && e.contains("'w'") && e.contains("read-only"),
        "{e}"
    );
}

#[test]
fn native_inits_are_checked_before_allocation_and_written_in_place() {
    let rt = rt();
    // A task reads "b" (or "s" and "d"), so that the graph holds the data.
    let build = |data: &str| {
        let names = if data.contains(r#""name": "s""#) {
            r#"["s", "r"], ["d", "r"]"#
        } else {
            r#"["b", "r"]"#
        };
        let text = format!(
            r#"{{"format": "hexec-graph", "version": 1, "data": [{data}], "tasks": [{{"name": "look", "kernel": "noop", "access": [{names}]}}]}}"#
        );
        parse("fixture", text.as_bytes(), None)
            .unwrap()
            .build(&rt, &BuildOptions::default())
    };
    let g = build(r#"{"name": "b", "type": "u8", "len": 5, "init": {"fill": 7}}"#).unwrap();
    assert_eq!(rt.read(rt.handle::<u8>(stored_id(&g, 0))).unwrap(), vec![7; 5]);
    for (data, why) in [
        (
            r#"{"name": "b", "type": "u8", "len": 5, "init": {"fill": 256}}"#,
            "out of range",
        ),
        (
            r#"{"name": "b", "type": "u32", "len": 2, "init": [1, 2.5]}"#,
            "not an integer",
        ),
        (
            r#"{"name": "b", "type": "f32", "len": 3, "init": [1, 2]}"#,
            "2 values for 3 elements",
        ),
        (
            r#"{"name": "b", "type": "i32", "len": 4, "init": {"spd": {"size": 2, "row": 0, "col": 0, "cols": 2}}}"#,
            "f32 or f64",
        ),
        (
            r#"{"name": "b", "type": "f32", "len": 4, "init": {"spd": {"size": 3, "row": 2, "col": 0, "cols": 2}}}"#,
            "within the 3x3 matrix",
        ),
        (
            r#"{"name": "b", "type": "f32", "len": 5, "init": {"spd": {"size": 8, "row": 0, "col": 0, "cols": 2}}}"#,
            "2 columns",
        ),
        (
            r#"{"name": "b", "type": "f32", "len": 1000000000000, "init": {"fill": 1}}"#,
            "more than this machine's memory",
        ),
    ] {
        let e = build(data).unwrap_err().to_string();
        assert!(e.contains("data[0] ('b')") && e.contains(why), "{data}: {e}");
    }
    // An spd block: the matrix TiledCholesky factorises, in f32 and in f64.
    let spd = r#"{"spd": {"size": 6, "row": 2, "col": 0, "cols": 3}}"#;
    let g = build(&format!(
        r#"{{"name": "s", "type": "f32", "len": 6, "init": {spd}}}, {{"name": "d", "type": "f64", "len": 6, "init": {spd}}}"#
    ))
    .unwrap();
    let s = rt.read(rt.handle::<f32>(stored_id(&g, 0))).unwrap();
    let d = rt.read(rt.handle::<f64>(stored_id(&g, 1))).unwrap();
    for r in 0..2 {
        for c in 0..3 {
            assert_eq!(s[r * 3 + c], crate::graph::formats::cholesky::matrix_entry(2 + r, c, 6));
            assert_eq!(
                d[r * 3 + c],
                crate::graph::formats::cholesky::matrix_entry_f64(2 + r, c, 6)
            );
        }
    }
    assert_eq!((s[2], s[0]), (1.0 + 6.0, 1.0 / 3.0), "entries (2, 2) and (2, 0)");
}

#[test]
fn generated_cholesky_runs_and_its_check_judges_the_factor() {
    let spec = cholesky::generate(3, 8);
    let text = serde_json::to_string(&spec).unwrap();
    assert_eq!(parse("again", text.as_bytes(), None).unwrap(), spec);
    let rt = rt();
    let (g, checks) = spec.build_checked(&rt, &BuildOptions::default()).unwrap();
    assert!(!checks.is_empty());
    // Before the run the tiles hold A: L = A is far from a factor.
    assert!(!checks.evaluate(&rt).unwrap()[0].ok);
    rt.run(&g).unwrap();
    let outcome = &checks.evaluate(&rt).unwrap()[0];
    assert!(outcome.ok && outcome.value < 1e-6, "{outcome}");

    // Malformed checks name the check and the reason.
    for (edit, why) in [
        (r#""tolerance":0.00001"#, r#""tolerance":-1"#, "positive"),
        (r#"["A[1,0]","A[1,1]"]"#, r#"["A[1,0]"]"#, "row 1"),
        (r#""A[2,2]"]]"#, r#""A[2,9]"]]"#, "'A[2,9]'"),
    ]
    .map(|(from, to, why)| ((from, to), why))
    {
        let bad = text.replace(edit.0, edit.1);
        assert_ne!(bad, text, "{edit:?}");
        let spec = parse("c.json", bad.as_bytes(), None).unwrap();
        let e = spec.build_checked(&rt, &BuildOptions::default()).unwrap_err();
        assert!(e.position == "check[0] (cholesky)" && e.reason.contains(why), "{e}");
        let e = spec
            .build_virtual(&|_| crate::kernels::builtin::noop(), &BuildOptions::default())
            .unwrap_err();
        assert!(e.reason.contains(why), "{e}");
    }
}

#[test]
#[cfg(feature = "gzip")]
fn gzip_is_decompressed_through_the_limit_as_it_streams() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // A small bomb: 4 MiB of spaces in a few kilobytes, against a 1 MiB limit.
    let bomb = dir.path().join("bomb.json.gz");
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![b' '; 4 << 20]).unwrap();
    let packed = z.finish().unwrap();
    assert!(packed.len() < 64 << 10);
    std::fs::write(&bomb, &packed).unwrap();
    let e = read_file_limited(&bomb, 1 << 20).unwrap_err();
    assert_eq!(e.file, bomb.display().to_string());
    assert!(
        e.reason
            .contains("decompressed data is larger than the 1048576-byte limit (1 MiB)"),
        "{e}"
    );
    // Within the limit it loads.
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(NATIVE.as_bytes()).unwrap();
    std::fs::write(&bomb, z.finish().unwrap()).unwrap();
    assert_eq!(read_file_limited(&bomb, 1 << 20).unwrap(), NATIVE.as_bytes());
    // A plain file over the limit is refused by its size.
    let plain = dir.path().join("big.json");
    std::fs::write(&plain, vec![b' '; 2048]).unwrap();
    let e = read_file_limited(&plain, 1024).unwrap_err();
    assert!(
        e.reason
            .contains("the file (2048 bytes) is larger than the 1024-byte limit (1 KiB)"),
        "{e}"
    );
    assert!(read_file_limited(dir.path(), 1024)
        .unwrap_err()
        .reason
        .contains("a directory"));
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let spec = parse("bom.json", format!("\u{feff}{NATIVE}").as_bytes(), None).unwrap();
    assert_eq!(spec.tasks.len(), 3);
    let stg = parse("bom.stg", "\u{feff}1\n0 0 0\n1 4 1 0\n2 0 1 1\n".as_bytes(), None).unwrap();
    assert_eq!(stg.tasks.len(), 3);
}

#[test]
fn replayed_durations_are_checked_after_the_time_scale() {
    let rt = rt();
    let doc = |p: &str| {
        format!(r#"{{"format":"hexec-graph","version":1,"tasks":[{{"name":"s","kernel":"spin","params":[{p}]}}]}}"#)
    };
    for (p, says) in [
        ("-1", "-1 s is not a duration"),
        ("1e300", "1e300 s is not a usable duration"),
    ] {
        let e = parse("d.json", doc(p).as_bytes(), None)
            .unwrap()
            .build(&rt, &BuildOptions::default())
            .unwrap_err();
        assert_eq!(e.position, "tasks[0] ('s')");
        assert!(e.reason.contains(says), "{e}");
    }
    let spec = parse("d.json", doc("1e6").as_bytes(), None).unwrap();
    let e = spec
        .build(
            &rt,
            &BuildOptions {
                time_scale: 1e4,
                empty_tasks: false,
            },
        )
        .unwrap_err();
    assert!(e.reason.contains("times the time scale 10000"), "{e}");
    let deadline = r#"{"format":"hexec-graph","version":1,"deadline_s":-2,"tasks":[]}"#;
    let e = parse("d.json", deadline.as_bytes(), None)
        .unwrap()
        .build(&rt, &BuildOptions::default())
        .unwrap_err();
    assert_eq!(e.position, "deadline_s");
}

#[test]
fn control_characters_in_names_are_escaped_in_errors() {
    let doc = "{\"format\":\"hexec-graph\",\"version\":1,\"tasks\":[{\"name\":\"a\\u001b[2Jb\",\"kernel\":\"nope\"}]}";
    let e = parse("c.json", doc.as_bytes(), None)
        .unwrap()
        .build(&rt(), &BuildOptions::default())
        .unwrap_err();
    assert_eq!(e.position, r"tasks[0] ('a\u{1b}[2Jb')");
    assert!(!e.to_string().contains('\u{1b}'));
}
