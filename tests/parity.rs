//! One scheduling core, two drivers: given the same graph and the same performance model, a
//! policy makes the same placement decisions in the real runtime and in the simulator. (The
//! model here prices every task: with an incomplete one, the runtime on a machine with GPUs
//! also prices tasks by what the run has measured so far, which the simulator never needs.)

use hexec::graph::formats::{BuildOptions, DataSpec, GraphSpec, TaskSpec};
use hexec::sched::perfmodel::PerfModel;
use hexec::sim::{simulate, SimMachine, SimOptions};
use hexec::{Machine, PolicyKind, RunOptions, Runtime};

/// A small diamond-rich DAG whose tasks differ by the sizes of the data they touch, so that
/// the model gives them different costs.
fn graph() -> (GraphSpec, PerfModel) {
    let mut spec = GraphSpec::new(Some("parity".into()));
    let sizes = [1u64 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22];
    for (i, &b) in sizes.iter().enumerate() {
        spec.data.push(DataSpec {
            name: format!("d{i}"),
            elem: None,
            len: None,
            bytes: Some(b),
            init: None,
            read_only: false,
            temp: false,
        });
    }
    let mut model = PerfModel::new();
    let layout: [(&str, &[(usize, &str)]); 10] = [
        ("a", &[(0, "w")]),
        ("b", &[(1, "w")]),
        ("c", &[(2, "w")]),
        ("d", &[(0, "r"), (3, "w")]),
        ("e", &[(1, "r"), (4, "w")]),
        ("f", &[(2, "r"), (0, "rw")]),
        ("g", &[(3, "r"), (1, "rw")]),
        ("h", &[(4, "r"), (2, "rw")]),
        ("i", &[(0, "r"), (1, "r"), (3, "rw")]),
        ("j", &[(2, "r"), (3, "r"), (4, "rw")]),
    ];
    for (name, acc) in layout {
        let mut t = TaskSpec::replay(name.into(), 0.0005);
        t.access = acc.iter().map(|&(d, m)| (format!("d{d}"), m.to_string())).collect();
        let size: u64 = acc.iter().map(|&(d, _)| sizes[d]).sum();
        // Cost grows with size, well apart between tasks.
        for _ in 0..5 {
            model.record("spin", "cpu", size, 1e-4 * (size as f64).log2());
        }
        spec.tasks.push(t);
    }
    (spec, model)
}

#[test]
fn heft_places_identically_in_the_runtime_and_the_simulator() {
    let (spec, model) = graph();
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(3))
        .policy(PolicyKind::Heft)
        .perf_model(model.clone())
        .build()
        .unwrap();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let mut real = vec![usize::MAX; g.len()];
    for (w, events) in report.trace.as_ref().unwrap().per_worker.iter().enumerate() {
        for e in events {
            real[e.task as usize] = w;
        }
    }

    let mut sm = SimMachine::parse("cpus:3").unwrap();
    sm.model = model;
    let sg = spec.build_virtual(&|k| sm.kernel(k), &BuildOptions::default()).unwrap();
    let opts = SimOptions {
        record_trace: true,
        ..SimOptions::default()
    };
    let sim = simulate(&sg, &sm, PolicyKind::Heft, &opts).unwrap();
    let simulated: Vec<usize> = sim.placement.iter().map(|w| w.index()).collect();

    assert_eq!(real, simulated, "runtime and simulator placed tasks differently");
    // Each worker runs its tasks in the planned order in both drivers, whatever the real
    // durations (the runtime's spins are not the model's costs).
    let orders = |per_worker: &[Vec<hexec::trace::TraceEvent>]| -> Vec<Vec<u32>> {
        per_worker
            .iter()
            .map(|events| {
                let mut e: Vec<(u64, u32)> = events.iter().map(|e| (e.start_ns, e.task)).collect();
                e.sort_unstable();
                e.into_iter().map(|(_, t)| t).collect()
            })
            .collect()
    };
    assert_eq!(
        orders(&report.trace.as_ref().unwrap().per_worker),
        orders(&sim.run.trace.as_ref().unwrap().per_worker),
        "runtime and simulator ran a worker's tasks in different orders"
    );
    // And the plan is not trivial: it uses more than one worker.
    let mut used = simulated.clone();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() > 1, "{simulated:?}");
}

#[test]
fn the_runtime_learns_a_model_that_locality_then_uses() {
    let (spec, _) = graph();
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(2))
        .policy(PolicyKind::Locality)
        .build()
        .unwrap();
    let g = spec
        .build(
            &rt,
            &BuildOptions {
                time_scale: 0.2,
                empty_tasks: false,
            },
        )
        .unwrap();
    assert!(!rt.perf_model().knows("spin", "cpu"));
    rt.run(&g).unwrap();
    let model = rt.perf_model();
    assert!(model.knows("spin", "cpu"), "the first run calibrates the model");
    let t = model.expected("spin", "cpu", 1 << 10).unwrap();
    assert!((0.0001 * 0.9..0.05).contains(&t), "spin of 0.1 ms measured as {t}");
    // The second run plans with it (and still completes correctly).
    assert_eq!(rt.run(&g).unwrap().completed, g.len());
}

/// The order in which one worker runs the tasks of [`graph`] under `policy`: in the runtime
/// (its trace) and in the simulator (its simulated trace), both given the same model.
fn one_worker_orders(policy: PolicyKind) -> (Vec<u32>, Vec<u32>) {
    let (spec, model) = graph();
    let rt = Runtime::builder()
        .machine(Machine::synthetic_cpus(1))
        .policy(policy)
        .perf_model(model.clone())
        .build()
        .unwrap();
    let g = spec.build(&rt, &BuildOptions::default()).unwrap();
    let report = rt.run_with(&g, RunOptions::traced()).unwrap();
    let order = |events: &[hexec::trace::TraceEvent]| {
        let mut e: Vec<(u64, u32)> = events.iter().map(|e| (e.start_ns, e.task)).collect();
        e.sort_unstable();
        e.into_iter().map(|(_, t)| t).collect::<Vec<u32>>()
    };
    let real = order(&report.trace.as_ref().unwrap().per_worker[0]);

    let mut sm = SimMachine::parse("cpus:1").unwrap();
    sm.model = model;
    let sg = spec.build_virtual(&|k| sm.kernel(k), &BuildOptions::default()).unwrap();
    let opts = SimOptions {
        record_trace: true,
        ..SimOptions::default()
    };
    let sim = simulate(&sg, &sm, policy, &opts).unwrap();
    let simulated = order(&sim.run.trace.as_ref().unwrap().per_worker[0]);
    assert_eq!(real.len(), g.len());
    // Not the order the tasks were added in: the policy's decisions show.
    assert_ne!(real, (0..g.len() as u32).collect::<Vec<_>>());
    (real, simulated)
}

// With one worker the order of events is fixed: no two workers race for a queue, and the
// drivers differ only in how long a task takes, which no decision on one worker depends on
// (`locality`'s expected finishes shift by the same clock for every candidate). So every
// decision — which root first, the immediate successor (`Policy::pick_immediate`), what
// `next` takes from which queue — shows in the order the worker ran the tasks, and the two
// drivers must agree on it exactly.

#[test]
fn eager_runs_tasks_in_the_same_order_in_the_runtime_and_the_simulator() {
    let (real, simulated) = one_worker_orders(PolicyKind::Eager);
    assert_eq!(real, simulated);
}

#[test]
fn ws_runs_tasks_in_the_same_order_in_the_runtime_and_the_simulator() {
    let (real, simulated) = one_worker_orders(PolicyKind::Ws);
    assert_eq!(real, simulated);
}

#[test]
fn locality_runs_tasks_in_the_same_order_in_the_runtime_and_the_simulator() {
    let (real, simulated) = one_worker_orders(PolicyKind::Locality);
    assert_eq!(real, simulated);
}

#[test]
fn heteroprio_runs_tasks_in_the_same_order_in_the_runtime_and_the_simulator() {
    let (real, simulated) = one_worker_orders(PolicyKind::HeteroPrio);
    assert_eq!(real, simulated);
}

#[test]
fn heft_runs_tasks_in_the_same_order_in_the_runtime_and_the_simulator() {
    let (real, simulated) = one_worker_orders(PolicyKind::Heft);
    assert_eq!(real, simulated);
}
